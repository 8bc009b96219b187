//! The listeners and the running server: binding (`bind`), the accept loop with backoff,
//! a connection's life (`conn`: trust check, PROXY header under its deadline, TLS by SNI,
//! HTTP/1.1 and h2 over the forwarder; `direct`: the PROXY-signature screen of a direct
//! source's first bytes), its waits (`clock`: head, keep-alive, h2 idle and
//! send deadlines), slots (`shed`: the idle connection goes first at `max_clients`),
//! reload (new runtime, kernel trusted list in place,
//! listeners re-bound where their addresses changed) and graceful drain. In XDP mode it
//! keeps the protected ports in step with the listening sockets: a socket listens only
//! while its port is protected ([`Listening`]). Connection errors end their task and are
//! logged once, at debug: outsiders trigger them at will.

mod bind;
mod clock;
mod conn;
mod direct;
mod serving;
mod shed;

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, debug_span, info, warn};

use bind::Reserved;
pub use bind::{Bound, bind_all};
use clock::WaitLimits;
use conn::{Accepted, PerIp};
use shed::Shed;

use crate::access_log::AccessLog;
use crate::config::{Config, KernelFilterConfig, Limits, Timeouts};
use crate::forward::{ForwardError, ForwardOptions, Forwarder};
use crate::kernel::{Kernel, KernelError};
use crate::metrics::{Metrics, SUMMARY_INTERVAL, Snapshot, Throttle};
use crate::proxy_protocol;
use crate::tls::{Tls, TlsError};
use crate::trust::TrustList;

/// Accept-error backoff: first and longest pause.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Why the listeners could not start (or a new config could not be applied).
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
    #[error("updating the kernel's trusted list")]
    Sync {
        #[source]
        source: Box<KernelError>,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Forward(#[from] ForwardError),
}

/// The PROXY-protocol part of the runtime settings.
struct ProxySettings {
    trust: TrustList,
    timeout: Duration,
    first_byte_timeout: Duration,
    limits: proxy_protocol::Limits,
}

/// Everything a new connection needs from the current config. Swapped whole on reload;
/// a connection keeps the one it started with.
pub struct Runtime {
    pub(crate) forwarder: Arc<Forwarder>,
    /// How to filter: a reload that changes the mode only warns (it takes effect at the
    /// next start); the trusted list is applied at once.
    kernel_filter: Option<KernelFilterConfig>,
    tls: Tls,
    proxy: Option<ProxySettings>,
    limits: Limits,
    timeouts: Timeouts,
    /// What each connection's watchdog reads (see `clock::WaitLimits`).
    wait_limits: Arc<WaitLimits>,
}

impl Runtime {
    /// Builds the runtime of a validated config (reads the certificates and the ticket
    /// key file). On reload, `previous` is the runtime it replaces: the counters, the TLS
    /// session cache and ticket keys carry on from it.
    pub fn new(config: &Config, previous: Option<&Runtime>) -> Result<Runtime, ListenerError> {
        let forwarder = match previous {
            Some(previous) => Forwarder::succeeding(config, &previous.forwarder)?,
            None => Forwarder::new(config)?,
        };
        Runtime::build(config, forwarder, previous)
    }

    /// The first runtime of a process that logs requests to `access_log` and counts
    /// into `metrics` (reloads carry both on).
    pub fn with_access_log(
        config: &Config,
        access_log: AccessLog,
        metrics: Arc<Metrics>,
    ) -> Result<Runtime, ListenerError> {
        let options = ForwardOptions {
            access_log: Some(access_log),
            metrics: Some(metrics),
            ..ForwardOptions::default()
        };
        Runtime::build(config, Forwarder::with_options(config, options)?, None)
    }

    fn build(
        config: &Config,
        forwarder: Forwarder,
        previous: Option<&Runtime>,
    ) -> Result<Runtime, ListenerError> {
        let wait_limits = Arc::new(WaitLimits {
            header: config.timeouts.request_header,
            keepalive: config.timeouts.keepalive,
            send: config.timeouts.send,
            counts: Arc::clone(&forwarder.metrics().timeouts),
        });
        Ok(Runtime {
            forwarder: Arc::new(forwarder),
            kernel_filter: config
                .proxy_protocol
                .as_ref()
                .map(|p| p.kernel_filter.clone()),
            tls: Tls::new(config, previous.map(|p| &p.tls))?,
            proxy: config.proxy_protocol.as_ref().map(|p| ProxySettings {
                trust: p.trust.clone(),
                timeout: p.timeout,
                first_byte_timeout: p.first_byte_timeout,
                limits: proxy_protocol::Limits {
                    accept_v1_mixed_families: p.accept_v1_mixed_families,
                    ..proxy_protocol::Limits::default()
                },
            }),
            limits: config.limits.clone(),
            timeouts: config.timeouts,
            wait_limits,
        })
    }
}

/// Which protocol a listening socket speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Https,
}

/// A listener being served: what the config asked for, and how to stop it alone.
struct Serving {
    /// The configured address (its port may be 0) and protocol: what reload compares.
    wanted: (SocketAddr, Protocol),
    /// The bound address.
    local: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The sockets that may be listening, which the XDP-protected ports are computed from.
///
/// Invariant (XDP mode): a socket listens only while its port is in the protected set.
/// A new socket's port joins the set between its bind and its `listen()`
/// ([`Server::add_listeners`], [`bind_all`]); a stopped listener stays in `closing` until
/// its accept loop has ended, which drops the socket, and only then is the set
/// recomputed ([`Server::closed`]). Every update of the set is computed from all the
/// sockets here (plus the ones being added) while the kernel lock is held, so concurrent
/// reloads and closes never take out a port some socket still listens on: a port two
/// sockets share (`0.0.0.0:p` and `[::]:p`, or an old and a new address) stays while
/// either is open.
#[derive(Default)]
struct Listening {
    serving: Vec<Serving>,
    /// The bound addresses of listeners told to stop whose socket may still be open.
    closing: Vec<SocketAddr>,
}

impl Listening {
    /// The ports of every socket that may be listening, and of `adding`, each once.
    fn ports(&self, adding: impl IntoIterator<Item = SocketAddr>) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .serving
            .iter()
            .map(|s| s.local)
            .chain(self.closing.iter().copied())
            .chain(adding)
            .map(|a| a.port())
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}

/// The running proxy: its current runtime, counters and connection limits.
pub struct Server {
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
    /// The kernel filter, updated on reload and read by scrapes; taken at exit. Lock it
    /// before `listening` when both are needed.
    kernel: Mutex<Option<Kernel>>,
    /// The listeners being served, and those still closing.
    listening: Mutex<Listening>,
}

impl Server {
    /// The server of `runtime`; it shares the runtime's counters (`Forwarder::metrics`),
    /// which every later runtime carries on.
    pub fn new(runtime: Runtime, kernel: Option<Kernel>) -> Arc<Server> {
        let max_clients = runtime.limits.max_clients;
        Arc::new(Server {
            metrics: Arc::clone(runtime.forwarder.metrics()),
            runtime: ArcSwap::from_pointee(runtime),
            slots: Arc::new(Semaphore::new(max_clients)),
            max_clients,
            per_ip: Arc::new(PerIp::default()),
            shed: Arc::new(Shed::default()),
            stop: watch::channel(false).0,
            kernel: Mutex::new(kernel),
            listening: Mutex::new(Listening::default()),
        })
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The runtime new connections get.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Runs `f` on the kernel filter, if one is loaded.
    pub fn with_kernel<T>(&self, f: impl FnOnce(&mut Kernel) -> T) -> Option<T> {
        let mut kernel = self.kernel.lock().unwrap_or_else(|p| p.into_inner());
        kernel.as_mut().map(f)
    }

    /// Takes the kernel filter out, so that dropping it detaches now (at exit).
    pub fn take_kernel(&self) -> Option<Kernel> {
        self.kernel.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Applies a new config to new connections. New listeners are bound first, without
    /// listening (a port that cannot be bound fails the reload before anything changed);
    /// their ports join the XDP-protected set, and only then do they listen. Then the
    /// kernel's trusted list is updated in place, then user space switches, so a prefix is
    /// never trusted by user space before the kernel lets it in. Listeners the config no
    /// longer names stop (their open connections carry on); a stopped listener's port
    /// leaves the protected set once its socket has closed, unless another socket still
    /// listens on it. A failed reload leaves the listeners and the protected set as they
    /// were. Connections already running keep their runtime. The filter mode and
    /// `max_clients` keep their startup values.
    pub fn reload(self: &Arc<Self>, config: &Config) -> Result<(), ListenerError> {
        let current = self.runtime.load_full();
        let runtime = Runtime::new(config, Some(&current))?;
        if runtime.kernel_filter != current.kernel_filter {
            warn!(
                "reload: kernel_filter settings changed; the trusted list is applied now, the rest at the next restart"
            );
        }
        let wanted: Vec<(SocketAddr, Protocol)> = bind::wanted(config);
        // Held to the end, so that no listener closing meanwhile recomputes the protected
        // ports from a half-updated list.
        let mut kernel = lock(&self.kernel);
        let added = self.add_listeners(kernel.as_mut(), config, &wanted)?;
        let trust = config
            .proxy_protocol
            .as_ref()
            .map(|p| p.trust.clone())
            .unwrap_or_default();
        if let Some(k) = kernel.as_mut()
            && let Err(source) = k.sync(&trust)
        {
            let opened: Vec<SocketAddr> = added.iter().map(|b| b.addr).collect();
            drop(added);
            self.unprotect(Some(k), &opened);
            return Err(ListenerError::Sync {
                source: Box::new(source),
            });
        }
        self.runtime.store(Arc::new(runtime));
        for bound in added {
            self.serve_listener(bound);
        }
        let wanted: HashSet<(SocketAddr, Protocol)> = wanted.into_iter().collect();
        let gone: Vec<Serving> = {
            let mut listening = lock(&self.listening);
            let (keep, gone) = listening
                .serving
                .drain(..)
                .partition(|s| wanted.contains(&s.wanted));
            listening.serving = keep;
            gone
        };
        for gone in gone {
            self.retire(kernel.as_mut(), gone);
        }
        Ok(())
    }

    /// Opens the listeners of `wanted` not served yet: binds them, adds their ports to the
    /// protected set, then makes them listen. On failure every socket opened here is
    /// closed again and the set is as it was. Call with the kernel lock held.
    fn add_listeners(
        &self,
        mut kernel: Option<&mut Kernel>,
        config: &Config,
        wanted: &[(SocketAddr, Protocol)],
    ) -> Result<Vec<Bound>, ListenerError> {
        let serving: HashSet<(SocketAddr, Protocol)> = lock(&self.listening)
            .serving
            .iter()
            .map(|s| s.wanted)
            .collect();
        let mut opened = Vec::new();
        let mut open = || {
            let mut reserved: Vec<Reserved> = Vec::new();
            for &(addr, protocol) in wanted.iter().filter(|w| !serving.contains(w)) {
                let socket = bind::reserve(addr, protocol, config, kernel.as_deref_mut())?;
                opened.push(socket.local_addr());
                reserved.push(socket);
            }
            if let Some(kernel) = kernel.as_deref_mut()
                && !reserved.is_empty()
            {
                let ports = lock(&self.listening).ports(opened.iter().copied());
                kernel
                    .set_ports(&ports)
                    .map_err(|source| ListenerError::Ports {
                        source: Box::new(source),
                    })?;
            }
            reserved
                .into_iter()
                .map(Reserved::listen)
                .collect::<Result<Vec<_>, _>>()
        };
        // On failure the sockets opened so far are dropped (closed) with `open`'s locals.
        let added = open();
        if added.is_err() {
            self.unprotect(kernel, &opened);
        }
        added
    }

    /// After the sockets bound to `closed` were dropped: the kernel lets go of them (the
    /// socket filter's duplicate descriptors), and the protected set is recomputed from
    /// the sockets still open. Call with the kernel lock held.
    fn unprotect(&self, kernel: Option<&mut Kernel>, closed: &[SocketAddr]) {
        let Some(kernel) = kernel else { return };
        for local in closed {
            kernel.forget_listener(*local);
        }
        let ports = lock(&self.listening).ports([]);
        if let Err(err) = kernel.set_ports(&ports) {
            warn!(error = %err, "updating the XDP-protected ports failed; ports no longer listened on stay protected until the next update");
        }
    }

    /// Stops a listener the config no longer names. Its port stays protected until the
    /// accept loop has ended: [`Server::closed`] then takes it out. Call with the kernel
    /// lock held.
    fn retire(self: &Arc<Self>, kernel: Option<&mut Kernel>, gone: Serving) {
        info!(listener = %gone.local, "no longer in the config: closing");
        gone.stop.send_replace(true);
        if let Some(kernel) = kernel {
            kernel.forget_listener(gone.local);
        }
        lock(&self.listening).closing.push(gone.local);
        let server = Arc::clone(self);
        tokio::spawn(async move {
            // The accept loop drops its socket before it ends; a task that panicked has
            // dropped it too.
            let _ = gone.task.await;
            server.closed(gone.local);
        });
    }

    /// The socket of a retired listener on `local` has closed: the protected set is
    /// recomputed without it (its port stays while another socket uses it).
    fn closed(&self, local: SocketAddr) {
        let mut kernel = lock(&self.kernel);
        let ports = {
            let mut listening = lock(&self.listening);
            if let Some(i) = listening.closing.iter().position(|c| *c == local) {
                listening.closing.swap_remove(i);
            }
            listening.ports([])
        };
        if let Some(kernel) = kernel.as_mut()
            && let Err(err) = kernel.set_ports(&ports)
        {
            warn!(listener = %local, error = %err, "updating the XDP-protected ports failed; the closed listener's port stays protected until the next update");
        }
    }

    /// Starts accepting on `bound`.
    fn serve_listener(self: &Arc<Self>, bound: Bound) {
        let (stop, own_stop) = watch::channel(false);
        let wanted = (bound.configured, bound.protocol);
        let local = bound.addr;
        let server = Arc::clone(self);
        let task = tokio::spawn(async move { server.accept_loop(bound, own_stop).await });
        lock(&self.listening).serving.push(Serving {
            wanted,
            local,
            stop,
            task,
        });
    }

    /// Starts an accept loop on each of `listeners`, which a reload then counts as
    /// served. Call it before anything can reload (the reload task, SIGHUP): a reload
    /// that came first would bind the same addresses again, and fail.
    pub fn serve(self: &Arc<Self>, listeners: Vec<Bound>) {
        for bound in listeners {
            self.serve_listener(bound);
        }
    }

    /// Serves until `shutdown` completes, then stops accepting and lets in-flight
    /// requests finish for up to `grace`; returns how many connections were still open
    /// when the grace period ended.
    pub async fn run(
        self: Arc<Self>,
        shutdown: impl Future<Output = ()>,
        grace: Duration,
    ) -> usize {
        let summary = tokio::spawn(summarize(Arc::clone(&self.metrics)));
        shutdown.await;
        self.stop.send_replace(true);
        // Each loop shuts its listening socket down as it ends: after this, new
        // connections are refused by the kernel.
        let tasks: Vec<JoinHandle<()>> = lock(&self.listening)
            .serving
            .drain(..)
            .map(|s| s.task)
            .collect();
        for task in tasks {
            let _ = task.await;
        }
        info!("draining: listeners closed, waiting for in-flight requests");
        summary.abort();
        let all = u32::try_from(self.max_clients).unwrap_or(u32::MAX);
        match tokio::time::timeout(grace, self.slots.acquire_many(all)).await {
            Ok(_) => {
                info!("drained");
                0
            }
            Err(_) => {
                let open = self.max_clients - self.slots.available_permits();
                warn!(
                    open,
                    grace_s = grace.as_secs(),
                    "grace period over; closing the remaining connections"
                );
                open
            }
        }
    }

    async fn accept_loop(self: Arc<Self>, bound: Bound, mut own_stop: watch::Receiver<bool>) {
        let mut stop = self.stop.subscribe();
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
                        self.detach_inherited(&stream, &bound, &mut detach_throttle);
                    }
                    let server = Arc::clone(&self);
                    let span = debug_span!("conn", peer = %peer, listener = %bound.addr);
                    let accepted = Box::new(Accepted {
                        stream,
                        peer,
                        local: bound.addr,
                        protocol: bound.protocol,
                    });
                    let connection = server.connection(accepted);
                    tokio::spawn(connection.instrument(span));
                }
                Err(err) if is_transient(&err) => continue,
                Err(err) => {
                    // Out of descriptors or memory: pause, never give up the listener.
                    self.metrics.accept_errors.inc();
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

impl Server {
    /// Takes the socket filter an accepted socket inherited off it. A failure is counted
    /// and logged (one warning per interval): the connection goes on with the filter,
    /// which passes everything but SYNs.
    fn detach_inherited(
        &self,
        stream: &tokio::net::TcpStream,
        bound: &Bound,
        throttle: &mut Throttle,
    ) {
        let Err(err) = crate::kernel::detach_inherited(stream) else {
            return;
        };
        self.metrics.filter_detach_errors.inc();
        match throttle.allow(tokio::time::Instant::now()) {
            Some(suppressed) => {
                warn!(listener = %bound.addr, error = %err, suppressed, "detaching the inherited socket filter from an accepted socket failed; it keeps the filter")
            }
            None => {
                debug!(listener = %bound.addr, error = %err, "detaching the inherited socket filter failed")
            }
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

async fn summarize(metrics: Arc<Metrics>) {
    let mut last = Snapshot::default();
    let mut tick = tokio::time::interval(SUMMARY_INTERVAL);
    tick.tick().await;
    loop {
        tick.tick().await;
        last = metrics.summarize(&last);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a thread panicked while holding it; the data (a list of
    // listeners) is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
