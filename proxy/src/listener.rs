//! The listening sockets: binding the ones a config names (`bind`: the kernel filter
//! attached and the port protected before `listen()`), one accept loop per socket
//! (`Listener::run`, backing off on errors it cannot help), and the `Gate` every
//! accepted connection goes through: a slot under `max_clients` (`shed`: the idle
//! connection goes first), then the current runtime, then `connection::serve`. A
//! connection's life is `connection`'s; the running server, its reloads and drain are
//! `server`'s.

mod bind;
mod shed;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tracing::{Instrument, debug, debug_span, info, warn};

pub use bind::{Bound, bind_all};
pub(crate) use bind::{Reserved, reserve, wanted};
use shed::Shed;

use crate::connection::{self, Activity, Admission, PerIp, Runtime, Shared};
use crate::kernel::KernelError;
use crate::metrics::{Metrics, Throttle};

/// Accept-error backoff: first and longest pause.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long a new connection waits for the slot of the idle connection it had shed.
const SHED_WAIT: Duration = Duration::from_secs(1);

/// Why a listener could not be bound or made to listen.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("listening on {addr} (bound, but listen() failed)")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("attaching the kernel filter to {addr}")]
    Filter {
        addr: SocketAddr,
        #[source]
        source: Box<KernelError>,
    },
    #[error("protecting the listen ports with XDP")]
    Ports {
        #[source]
        source: Box<KernelError>,
    },
}

/// What an accepted connection goes through, shared by every listener: the runtime new
/// connections get (swapped whole on reload), the slots under `max_clients` and the
/// connections that could be shed for one, the per-client counts, the counters, and the
/// drain signal. A connection gets from it only an [`Admission`] and its runtime.
pub(crate) struct Gate {
    runtime: ArcSwap<Runtime>,
    metrics: Arc<Metrics>,
    /// One permit per open connection (`max_clients`); holding them all means drained.
    slots: Arc<Semaphore>,
    max_clients: usize,
    per_ip: Arc<PerIp>,
    /// Every open connection, to pick one to shed when `max_clients` is reached.
    shed: Arc<Shed>,
    /// Set when draining starts; every listener and HTTP connection watches it.
    stop: watch::Sender<bool>,
}

impl Gate {
    /// The gate of a process whose first runtime is `runtime`: it counts into that
    /// runtime's metrics, which every later runtime carries on, and `max_clients` keeps
    /// its value from this one.
    pub(crate) fn new(runtime: Runtime) -> Gate {
        let max_clients = runtime.limits.max_clients;
        Gate {
            metrics: Arc::clone(runtime.forwarder.metrics()),
            runtime: ArcSwap::from_pointee(runtime),
            slots: Arc::new(Semaphore::new(max_clients)),
            max_clients,
            per_ip: Arc::new(PerIp::default()),
            shed: Arc::new(Shed::default()),
            stop: watch::channel(false).0,
        }
    }

    /// The counters.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The runtime new connections get.
    pub(crate) fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Makes `runtime` the one new connections get; those running keep theirs.
    pub(crate) fn switch(&self, runtime: Runtime) {
        self.runtime.store(Arc::new(runtime));
    }

    /// Starts draining: every listener stops accepting, every connection finishes its
    /// in-flight requests and closes.
    pub(crate) fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Completes once every connection has closed.
    pub(crate) async fn closed(&self) {
        let all = u32::try_from(self.max_clients).unwrap_or(u32::MAX);
        let _all = self.slots.acquire_many(all).await;
    }

    /// How many connections are open.
    pub(crate) fn open(&self) -> usize {
        self.max_clients - self.slots.available_permits()
    }

    /// What a connection accepted now takes along (see [`Admission`]).
    fn shared(&self) -> Shared {
        Shared {
            metrics: Arc::clone(&self.metrics),
            per_ip: Arc::clone(&self.per_ip),
            stop: self.stop.subscribe(),
        }
    }

    /// A connection's task: its slot, then `connection::serve` with the current runtime,
    /// until it ends or is picked to be shed. What it holds beside the connection's own
    /// future is small, and that future boxes each phase and frees it when it ends: a
    /// spawned task is allocated whole at the size of its largest state, and an idle
    /// keep-alive connection (10,000 of them may be open) would otherwise carry the
    /// header reader's space for its whole life. Written as a function returning an
    /// `async move` block, not an `async fn`: an `async fn` keeps a copy of its arguments
    /// beside the locals it moves them into. The admission comes boxed: a future keeps
    /// the space of what it was given for its whole life, even once that is moved out.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would keep a second copy of its arguments"
    )]
    fn connection(
        self: Arc<Self>,
        admission: Box<Admission>,
    ) -> impl Future<Output = ()> + Send + 'static {
        async move {
            self.metrics.accepted.inc();
            let Some(_slot) = self.admit().await else {
                self.metrics.refused_max_clients.inc();
                debug!("refused: max_clients reached, and no idle connection to shed");
                return;
            };
            let _active = Active::new(&self.metrics);
            let activity = Activity::new();
            let _listed = self.shed.list(&activity);
            let runtime = self.runtime();
            tokio::select! {
                () = connection::serve(admission, Arc::clone(&activity), runtime) => {}
                () = activity.shed_picked() => {
                    self.metrics.shed.inc();
                    debug!("shed: idle while max_clients was reached");
                }
            }
        }
    }

    /// A slot for a new connection: a free one, else the slot of the connection idle
    /// longest, which is told to close (see `shed`); `None` when every connection has a
    /// request in flight, or the shed one did not let go within [`SHED_WAIT`].
    async fn admit(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() {
            return Some(slot);
        }
        if !self.shed.shed_oldest_idle() {
            return None;
        }
        // Boxed: this wait is rare, and inline it would add its size to every
        // connection's task for the connection's whole life.
        let slot = tokio::time::timeout(SHED_WAIT, Arc::clone(&self.slots).acquire_owned());
        Box::pin(slot).await.ok()?.ok()
    }
}

/// Counts an open connection while alive.
struct Active<'a>(&'a Metrics);

impl<'a> Active<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.active.inc();
        Active(metrics)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.dec();
    }
}

/// One listening socket's accept loop (mini-redis's `server::Listener`): each accepted
/// connection goes through the [`Gate`] in a task of its own.
pub(crate) struct Listener {
    bound: Bound,
    gate: Arc<Gate>,
    /// Turns true when a reload drops this listener alone.
    own_stop: watch::Receiver<bool>,
}

impl Listener {
    pub(crate) fn new(bound: Bound, gate: Arc<Gate>, own_stop: watch::Receiver<bool>) -> Self {
        Listener {
            bound,
            gate,
            own_stop,
        }
    }

    /// Accepts until the drain or `own_stop`, then stops listening and closes the
    /// socket. A transient error is retried at once; any other (out of descriptors or
    /// memory) is counted and retried after a backoff from [`ACCEPT_BACKOFF_MIN`] to
    /// [`ACCEPT_BACKOFF_MAX`]: the listener is never given up.
    pub(crate) async fn run(self) {
        let Listener {
            bound,
            gate,
            mut own_stop,
        } = self;
        let mut stop = gate.stop.subscribe();
        let mut backoff = ACCEPT_BACKOFF_MIN;
        // Peers can run the process out of descriptors again and again.
        let mut throttle = Throttle::default();
        let mut detach_throttle = Throttle::default();
        loop {
            let accepted = tokio::select! {
                biased;
                _ = stop.changed() => break,
                _ = own_stop.changed() => break,
                accepted = bound.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    if bound.detach_accepted {
                        detach_inherited(&gate.metrics, &stream, &bound, &mut detach_throttle);
                    }
                    let span = debug_span!("conn", peer = %peer, listener = %bound.addr);
                    let admission = Box::new(Admission {
                        stream,
                        peer,
                        local: bound.addr,
                        protocol: bound.protocol,
                        shared: gate.shared(),
                    });
                    let connection = Arc::clone(&gate).connection(admission);
                    tokio::spawn(connection.instrument(span));
                }
                Err(err) if is_transient(&err) => continue,
                Err(err) => {
                    // Out of descriptors or memory: pause, never give up the listener.
                    gate.metrics.accept_errors.inc();
                    let retry_ms = backoff.as_millis() as u64;
                    match throttle.allow(tokio::time::Instant::now()) {
                        Some(suppressed) => {
                            warn!(listener = %bound.addr, error = %err, retry_ms, suppressed, "accept failed")
                        }
                        None => {
                            debug!(listener = %bound.addr, error = %err, retry_ms, "accept failed")
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
        // Stop listening now, even though the kernel filter holds a duplicate of this
        // socket: on Linux, shutting a listening socket down closes it for new
        // connections (refused with a RST) and resets those not yet accepted.
        if let Err(err) = socket2::SockRef::from(&bound.listener).shutdown(std::net::Shutdown::Both)
        {
            debug!(listener = %bound.addr, error = %err, "shutting the listener down");
        }
        // Closed before the task ends: what a reload waits for before it unprotects the
        // port (`Server::retire`).
        let local = bound.addr;
        drop(bound);
        info!(listener = %local, "listener closed");
    }
}

/// Takes the socket filter an accepted socket inherited off it. A failure is counted
/// and logged (one warning per interval): the connection goes on with the filter,
/// which passes everything but SYNs.
fn detach_inherited(
    metrics: &Metrics,
    stream: &tokio::net::TcpStream,
    bound: &Bound,
    throttle: &mut Throttle,
) {
    let Err(err) = crate::kernel::detach_inherited(stream) else {
        return;
    };
    metrics.filter_detach_errors.inc();
    match throttle.allow(tokio::time::Instant::now()) {
        Some(suppressed) => {
            warn!(listener = %bound.addr, error = %err, suppressed, "detaching the inherited socket filter from an accepted socket failed; it keeps the filter")
        }
        None => {
            debug!(listener = %bound.addr, error = %err, "detaching the inherited socket filter failed")
        }
    }
}

/// Errors after which accepting again at once is right: the failed connection was the
/// peer's problem, not ours.
fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The most a connection's task future may take (its `Future` alone, before tokio's
    /// task header and the `conn` span): 240 bytes, as measured before the layers were
    /// split (issue 13), when the task was `Server::connection`. What every open
    /// connection holds for its whole life.
    const CONNECTION_TASK_MAX_BYTES: usize = 240;

    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let text = "listen_port = 80\n[apps.a]\nserver_name = \"a.example\"\n\
            reverse_proxy = [{ upstream = [{ location = \"127.0.0.1:8081\" }] }]\n";
        let (config, _) = crate::config::parse_str(text, "t.toml").expect("a valid config");
        let runtime = Runtime::new(&config, None).expect("the runtime of a valid config");
        let gate = Arc::new(Gate::new(runtime));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind on loopback");
        let local = listener.local_addr().expect("a bound address");
        let stream = tokio::net::TcpStream::connect(local)
            .await
            .expect("connect on loopback");
        let peer = stream.local_addr().expect("a connected address");
        let admission = Box::new(Admission {
            stream,
            peer,
            local,
            protocol: crate::connection::Protocol::Http,
            shared: gate.shared(),
        });
        let task = Arc::clone(&gate).connection(admission);
        let size = std::mem::size_of_val(&task);
        assert!(
            size <= CONNECTION_TASK_MAX_BYTES,
            "a connection's task future is {size} bytes"
        );
    }
}
