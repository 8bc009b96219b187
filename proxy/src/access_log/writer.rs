//! The writer thread: drains the queue into one buffer, writes it with one `write`
//! (more only if the kernel takes part of it), then applies reopen, switch and stop
//! requests. Under load it sleeps a [`TICK`] between batches instead of parking on the
//! queue, so that workers sending records never have to wake it (no system call on the
//! request path); it parks only when a drain found the queue empty.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::format::Formatter;
use super::{Message, Output, Shared, open_append};
use crate::chain::Chain;
use crate::config::AccessFormat;

/// How long the writer lets records gather while they keep coming.
pub(super) const TICK: Duration = Duration::from_millis(10);
/// A batch is written once it holds this much, even before the queue is drained.
const BATCH_BYTES: usize = 64 * 1024;
/// At most one warning per this period about failing writes.
const WARN_PERIOD: Duration = Duration::from_secs(60);

pub(super) struct Writer {
    output: Output,
    format: Formatter,
    shared: Arc<Shared>,
    batch: Vec<u8>,
    /// Records in `batch`, counted as dropped if its write fails.
    batched: u64,
    /// Asked to stop: the writer returns after this drain.
    stopping: bool,
    last_warning: Option<Instant>,
}

impl Writer {
    pub(super) fn new(output: Output, format: AccessFormat, shared: Arc<Shared>) -> Writer {
        Writer {
            output,
            format: Formatter::new(format),
            shared,
            batch: Vec::with_capacity(BATCH_BYTES + 4096),
            batched: 0,
            stopping: false,
            last_warning: None,
        }
    }

    /// Runs until stopped or until every sender is gone, writing what was queued.
    pub(super) fn run(mut self, queue: &Receiver<Message>) {
        loop {
            let Ok(first) = queue.recv() else {
                return;
            };
            let mut next = Some(first);
            loop {
                let open = self.drain(next.take(), queue);
                self.flush();
                self.control();
                if self.stopping || !open {
                    return;
                }
                std::thread::sleep(TICK);
                match queue.try_recv() {
                    Ok(message) => next = Some(message),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
        }
    }

    /// Formats `first` and whatever else is queued; false when every sender is gone.
    fn drain(&mut self, first: Option<Message>, queue: &Receiver<Message>) -> bool {
        let mut message = first;
        loop {
            match message.take() {
                Some(Message::Record(record)) => {
                    self.format.write(&mut self.batch, &record);
                    self.batched += 1;
                    if self.batch.len() >= BATCH_BYTES {
                        self.flush();
                    }
                }
                // What was queued before the request is written as before it; what
                // follows goes by the new settings.
                Some(Message::Wake) => {
                    self.flush();
                    self.control();
                }
                None => {}
            }
            message = match queue.try_recv() {
                Ok(m) => Some(m),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            };
        }
    }

    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let written = match &mut self.output {
            Output::Stderr(stderr) => stderr.write_all(&self.batch),
            Output::File { file, .. } => file.write_all(&self.batch),
        };
        if let Err(error) = written {
            self.shared.dropped.inc_by(self.batched);
            self.warn_write(&error);
        }
        self.batch.clear();
        self.batched = 0;
    }

    fn warn_write(&mut self, error: &io::Error) {
        let now = Instant::now();
        if self
            .last_warning
            .is_some_and(|at| now.duration_since(at) < WARN_PERIOD)
        {
            return;
        }
        self.last_warning = Some(now);
        let path = match &self.output {
            Output::Stderr(_) => "-".into(),
            Output::File { path, .. } => path.display().to_string(),
        };
        warn!(
            path,
            error = %error,
            dropped = self.shared.dropped.get(),
            "access log write failed; its records are dropped and counted"
        );
    }

    /// Applies what was asked since it last looked.
    fn control(&mut self) {
        let (reopen, switch, stop) = {
            let mut c = self.shared.control();
            (std::mem::take(&mut c.reopen), c.switch.take(), c.stop)
        };
        if let Some((output, format)) = switch {
            self.output = output;
            self.format = Formatter::new(format);
        } else if reopen && let Output::File { file, path } = &mut self.output {
            match open_append(path) {
                Ok(new) => {
                    *file = new;
                    info!(path = %path.display(), "access log reopened");
                }
                Err(error) => {
                    warn!(error = %Chain(&error), "access log not reopened; writing on to the old file")
                }
            }
        }
        self.stopping |= stop;
    }
}
