//! The access log's way off the request path: a worker builds a [`Record`] (one
//! allocation, no formatting) and hands it to [`AccessLog::record`], which never waits:
//! the bounded queue full, the record is dropped and counted
//! (`trustgate_access_log_dropped_total`). One writer thread formats records in the
//! configured format and writes them in batches, one `write` per batch; it owns the file,
//! reopens it on [`AccessLog::reopen`] (SIGUSR1) and switches on
//! [`AccessLog::reconfigure`] (a reload). Event logs stay with `tracing`, on stderr.

mod format;
mod writer;

use std::fs::{File, OpenOptions};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::uri::Authority;
use http::{Method, Version};
use prometheus_client::metrics::counter::Counter;

use crate::config::{AccessDestination, AccessFormat, AccessLogConfig};

/// Records the queue holds while the writer is busy: at a batch per
/// [`writer::TICK`], room for 400 000 requests a second before any is dropped.
pub(crate) const QUEUE_RECORDS: usize = 4096;

/// Why the access log could not start or switch to a new file. The open error is written
/// into the message (before the advice), so it is a field and not a `source()`.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    #[error(
        "cannot open the access log {path:?} for appending: {cause}; create its directory or \
         give trustgate write access to it"
    )]
    Open { path: PathBuf, cause: io::Error },
    #[error("cannot start the access log's writer thread")]
    Spawn(#[source] io::Error),
}

/// The handle workers log through; clones (one reference count) share one queue and
/// one writer.
#[derive(Clone)]
pub struct AccessLog(Arc<Handle>);

struct Handle {
    queue: SyncSender<Message>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

/// What the writer is asked to do besides writing, read after each batch.
#[derive(Default)]
struct Control {
    reopen: bool,
    switch: Option<(Output, AccessFormat)>,
    stop: bool,
}

struct Shared {
    /// The process's `trustgate_access_log_dropped_total` (`Metrics::access_log_dropped`).
    dropped: Counter,
    control: Mutex<Control>,
    /// Receives `()` when the writer has written everything and stopped.
    stopped: Mutex<Receiver<()>>,
}

impl Shared {
    fn control(&self) -> std::sync::MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[expect(
    clippy::large_enum_variant,
    reason = "the queue's slots are allocated once; boxing would allocate per record"
)]
enum Message {
    Record(Record),
    /// Look at [`Control`] now (the writer may be parked on an empty queue).
    Wake,
}

/// Where the writer writes.
enum Output {
    Stderr(io::Stderr),
    File { file: File, path: PathBuf },
}

impl Output {
    fn open(destination: &AccessDestination) -> Result<Output, AccessLogError> {
        match destination {
            AccessDestination::Stderr => Ok(Output::Stderr(io::stderr())),
            AccessDestination::File(path) => Ok(Output::File {
                file: open_append(path)?,
                path: path.clone(),
            }),
        }
    }
}

fn open_append(path: &Path) -> Result<File, AccessLogError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|cause| AccessLogError::Open {
            path: path.to_owned(),
            cause,
        })
}

impl AccessLog {
    /// Opens the destination of `config` and starts the writer, which counts the records
    /// it drops in `dropped`. Started even when the log is off, so that a reload can turn
    /// it on.
    pub(crate) fn start(
        config: &AccessLogConfig,
        dropped: Counter,
    ) -> Result<AccessLog, AccessLogError> {
        let output = Output::open(&config.destination)?;
        let (queue, records) = mpsc::sync_channel(QUEUE_RECORDS);
        let (done, stopped) = mpsc::channel();
        let shared = Arc::new(Shared {
            dropped,
            control: Mutex::new(Control::default()),
            stopped: Mutex::new(stopped),
        });
        let writer = writer::Writer::new(output, config.format, Arc::clone(&shared));
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                writer.run(&records);
                let _ = done.send(());
            })
            .map_err(AccessLogError::Spawn)?;
        Ok(AccessLog(Arc::new(Handle { queue, shared })))
    }

    /// Queues `record`, or drops and counts it when the queue is full. Never blocks.
    pub(crate) fn record(&self, record: Record) {
        match self.0.queue.try_send(Message::Record(record)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.0.shared.dropped.inc();
            }
        }
    }

    /// Records dropped since start: queue full, or lost to a failed write.
    pub(crate) fn dropped(&self) -> u64 {
        self.0.shared.dropped.get()
    }

    /// Reopens the file by its path after the records queued so far (logrotate's
    /// `postrotate`); nothing for stderr. The writer logs "access log reopened".
    pub(crate) fn reopen(&self) {
        self.0.shared.control().reopen = true;
        self.wake();
    }

    /// Switches to the destination and format of `config` (a reload), after the records
    /// queued so far. The new file is opened here, so a failure leaves the old one.
    pub(crate) fn reconfigure(&self, config: &AccessLogConfig) -> Result<(), AccessLogError> {
        let output = Output::open(&config.destination)?;
        self.0.shared.control().switch = Some((output, config.format));
        self.wake();
        Ok(())
    }

    /// Writes what is queued and stops the writer, waiting at most `timeout` (a writer
    /// stuck on a full pipe is left behind). Records sent afterwards are dropped.
    pub(crate) fn close(&self, timeout: Duration) {
        self.0.shared.control().stop = true;
        self.wake();
        let stopped = self
            .0
            .shared
            .stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let _ = stopped.recv_timeout(timeout);
    }

    /// A full queue means the writer is busy and reads the control after its batch.
    fn wake(&self) {
        let _ = self.0.queue.try_send(Message::Wake);
    }
}

/// One request as the access log tells it. Built on the worker with one allocation
/// (the request's texts, back to back); formatted by the writer.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) client: SocketAddr,
    pub(crate) peer: SocketAddr,
    pub(crate) method: Method,
    pub(crate) version: Version,
    pub(crate) status: u16,
    /// The upstream chosen, once there is one (shares the config's bytes).
    pub(crate) upstream: Option<Authority>,
    /// Response body bytes sent.
    pub(crate) bytes: u64,
    pub(crate) duration: Duration,
    /// When the response ended.
    pub(crate) time: SystemTime,
    /// Redact query values of the path and the Referer when formatting.
    pub(crate) redact: bool,
    /// Path and query, Referer, User-Agent, host, in that order.
    text: Vec<u8>,
    path_end: usize,
    referer_end: usize,
    agent_end: usize,
}

impl Record {
    /// A record of a request to `path` (`path_and_query`) with its Referer and User-Agent
    /// header values; room is kept for a host of `host_hint` bytes (see [`Record::set_host`]).
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site, every field named"
    )]
    pub(crate) fn new(
        client: SocketAddr,
        peer: SocketAddr,
        method: Method,
        version: Version,
        path: &str,
        referer: &[u8],
        agent: &[u8],
        host_hint: usize,
    ) -> Record {
        let mut text = Vec::with_capacity(path.len() + referer.len() + agent.len() + host_hint);
        text.extend_from_slice(path.as_bytes());
        let path_end = text.len();
        text.extend_from_slice(referer);
        let referer_end = text.len();
        text.extend_from_slice(agent);
        let agent_end = text.len();
        Record {
            client,
            peer,
            method,
            version,
            status: 200,
            upstream: None,
            bytes: 0,
            duration: Duration::ZERO,
            time: SystemTime::UNIX_EPOCH,
            redact: false,
            text,
            path_end,
            referer_end,
            agent_end,
        }
    }

    /// The host the request named, as received (replaces any set before).
    pub(crate) fn set_host(&mut self, host: &str) {
        self.text.truncate(self.agent_end);
        self.text.extend_from_slice(host.as_bytes());
    }

    pub(crate) fn path(&self) -> &[u8] {
        &self.text[..self.path_end]
    }

    /// Empty when the request had none.
    pub(crate) fn referer(&self) -> &[u8] {
        &self.text[self.path_end..self.referer_end]
    }

    /// Empty when the request had none.
    pub(crate) fn user_agent(&self) -> &[u8] {
        &self.text[self.referer_end..self.agent_end]
    }

    /// Empty when the request named none.
    pub(crate) fn host(&self) -> &[u8] {
        &self.text[self.agent_end..]
    }
}
