//! The running service: the current runtime (a new one per reload, each connection
//! keeping the one it started with), applying a new config ([`Server::apply`]: new
//! listeners bound and protected before they listen, the kernel's trusted list updated
//! in place before user space switches, listeners re-bound where their addresses
//! changed), the accept loops, and graceful drain. In XDP mode it keeps the protected
//! ports in step with the listening sockets: a socket listens only while its port is
//! protected (`Listening`).

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::chain::Chain;
use crate::config::Config;
use crate::connection::{Protocol, Runtime, RuntimeError};
use crate::kernel::{Kernel, KernelError};
use crate::listener::{self, Bound, Gate, Listener, ListenerError, Reserved};
use crate::metrics::{Metrics, SUMMARY_INTERVAL, Snapshot};

/// Why a new config could not be applied (or the listeners could not start).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServerError {
    #[error(transparent)]
    Listener(#[from] ListenerError),
    #[error("updating the kernel's trusted list")]
    Sync {
        #[source]
        source: Box<KernelError>,
    },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// A listener being served: what the config asked for, and how to stop it alone.
struct Serving {
    /// The configured address (its port may be 0) and protocol: what reload compares.
    wanted: (SocketAddr, Protocol),
    /// The bound address.
    local: SocketAddr,
    pub(crate) stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The sockets that may be listening, which the XDP-protected ports are computed from.
///
/// Invariant (XDP mode): a socket listens only while its port is in the protected set.
/// A new socket's port joins the set between its bind and its `listen()`
/// ([`Server::add_listeners`], [`listener::bind_all`]); a stopped listener stays in `closing` until
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

/// The running proxy: the gate its connections go through (current runtime, counters,
/// connection limits, drain signal), the kernel filter and the listeners.
pub struct Server {
    gate: Arc<Gate>,
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
        Arc::new(Server {
            gate: Arc::new(Gate::new(runtime)),
            kernel: Mutex::new(kernel),
            listening: Mutex::new(Listening::default()),
        })
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.gate.metrics()
    }

    /// The runtime new connections get.
    pub(crate) fn runtime(&self) -> Arc<Runtime> {
        self.gate.runtime()
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
    pub(crate) fn apply(self: &Arc<Self>, config: &Config) -> Result<(), ServerError> {
        let current = self.gate.runtime();
        let runtime = Runtime::new(config, Some(&current))?;
        if runtime.kernel_filter != current.kernel_filter {
            warn!(
                "reload: kernel_filter settings changed; the trusted list is applied now, the rest at the next restart"
            );
        }
        let wanted: Vec<(SocketAddr, Protocol)> = listener::wanted(config);
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
            return Err(ServerError::Sync {
                source: Box::new(source),
            });
        }
        // Only now, after the kernel's list: a prefix is never trusted by user space
        // before the kernel lets it in.
        self.gate.switch(runtime);
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
                let socket = listener::reserve(addr, protocol, config, kernel.as_deref_mut())?;
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
            warn!(error = %Chain(&err), "updating the XDP-protected ports failed; ports no longer listened on stay protected until the next update");
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
            warn!(listener = %local, error = %Chain(&err), "updating the XDP-protected ports failed; the closed listener's port stays protected until the next update");
        }
    }

    /// Starts accepting on `bound`.
    fn serve_listener(self: &Arc<Self>, bound: Bound) {
        let (stop, own_stop) = watch::channel(false);
        let wanted = (bound.configured, bound.protocol);
        let local = bound.addr;
        let listener = Listener::new(bound, Arc::clone(&self.gate), own_stop);
        let task = tokio::spawn(listener.run());
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
        let summary = tokio::spawn(summarize(Arc::clone(self.gate.metrics())));
        shutdown.await;
        self.gate.stop();
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
        match tokio::time::timeout(grace, self.gate.closed()).await {
            Ok(_) => {
                info!("drained");
                0
            }
            Err(_) => {
                let open = self.gate.open();
                warn!(
                    open,
                    grace_s = grace.as_secs(),
                    "grace period over; closing the remaining connections"
                );
                open
            }
        }
    }
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
