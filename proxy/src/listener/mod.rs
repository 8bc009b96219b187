//! The listeners and the running server: binding (`bind`), the accept loop with backoff,
//! a connection's life (`conn`: trust check, PROXY header under its deadline, TLS by SNI,
//! HTTP/1.1 and h2 over the forwarder), its waits (`clock`: head, keep-alive, h2 idle and
//! send deadlines), slots (`shed`: the idle connection goes first at `max_clients`),
//! reload (new runtime, kernel trusted list in place,
//! listeners re-bound where their addresses changed) and graceful drain. Connection
//! errors end their task and are logged once, at debug: outsiders trigger them at will.

mod bind;
mod clock;
mod conn;
mod shed;

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, debug_span, info, warn};

pub use bind::{Bound, bind_all};
use conn::PerIp;
use shed::Shed;

use crate::config::{Config, KernelFilterConfig, Limits, Timeouts};
use crate::forward::{ForwardError, Forwarder};
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
}

impl Runtime {
    /// Builds the runtime of a validated config (reads the certificates). On reload,
    /// `previous` is the runtime it replaces: the counters carry on from it.
    pub fn new(config: &Config, previous: Option<&Runtime>) -> Result<Runtime, ListenerError> {
        let forwarder = match previous {
            Some(previous) => Forwarder::succeeding(config, &previous.forwarder)?,
            None => Forwarder::new(config)?,
        };
        Ok(Runtime {
            forwarder: Arc::new(forwarder),
            kernel_filter: config
                .proxy_protocol
                .as_ref()
                .map(|p| p.kernel_filter.clone()),
            tls: Tls::new(config)?,
            proxy: config.proxy_protocol.as_ref().map(|p| ProxySettings {
                trust: p.trust.clone(),
                timeout: p.timeout,
                limits: proxy_protocol::Limits::default(),
            }),
            limits: config.limits.clone(),
            timeouts: config.timeouts,
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
    /// The kernel filter, updated on reload and read by scrapes; taken at exit.
    kernel: Mutex<Option<Kernel>>,
    /// The listeners being served.
    serving: Mutex<Vec<Serving>>,
}

impl Server {
    pub fn new(runtime: Runtime, kernel: Option<Kernel>, metrics: Arc<Metrics>) -> Arc<Server> {
        let max_clients = runtime.limits.max_clients;
        Arc::new(Server {
            runtime: ArcSwap::from_pointee(runtime),
            metrics,
            slots: Arc::new(Semaphore::new(max_clients)),
            max_clients,
            per_ip: Arc::new(PerIp::default()),
            shed: Arc::new(Shed::default()),
            stop: watch::channel(false).0,
            kernel: Mutex::new(kernel),
            serving: Mutex::new(Vec::new()),
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

    /// The addresses being listened on.
    fn local_addrs(&self) -> Vec<SocketAddr> {
        lock(&self.serving).iter().map(|s| s.local).collect()
    }

    /// Applies a new config to new connections. New listeners are bound first (a port
    /// that cannot be bound fails the reload before anything changed); then the kernel's
    /// trusted list is updated in place, then user space switches, so a prefix is never
    /// trusted by user space before the kernel lets it in. Listeners the config no longer
    /// names stop (their open connections carry on). Connections already running keep
    /// their runtime. The filter mode and `max_clients` keep their startup values.
    pub fn reload(self: &Arc<Self>, config: &Config) -> Result<(), ListenerError> {
        let current = self.runtime.load_full();
        let runtime = Runtime::new(config, Some(&current))?;
        if runtime.kernel_filter != current.kernel_filter {
            warn!(
                "reload: kernel_filter settings changed; the trusted list is applied now, the rest at the next restart"
            );
        }
        let wanted: Vec<(SocketAddr, Protocol)> = bind::wanted(config);
        let serving: HashSet<(SocketAddr, Protocol)> =
            lock(&self.serving).iter().map(|s| s.wanted).collect();
        let added: Vec<Bound> = {
            let mut kernel = self.kernel.lock().unwrap_or_else(|p| p.into_inner());
            wanted
                .iter()
                .filter(|w| !serving.contains(w))
                .map(|&(addr, protocol)| bind::bind_one(addr, protocol, config, kernel.as_mut()))
                .collect::<Result<_, _>>()?
        };
        let trust = config
            .proxy_protocol
            .as_ref()
            .map(|p| p.trust.clone())
            .unwrap_or_default();
        self.with_kernel(|kernel| kernel.sync(&trust))
            .transpose()
            .map_err(|source| ListenerError::Sync {
                source: Box::new(source),
            })?;
        self.runtime.store(Arc::new(runtime));
        for bound in added {
            self.serve_listener(bound);
        }
        let wanted: HashSet<(SocketAddr, Protocol)> = wanted.into_iter().collect();
        let gone: Vec<Serving> = {
            let mut serving = lock(&self.serving);
            let (keep, gone) = serving.drain(..).partition(|s| wanted.contains(&s.wanted));
            *serving = keep;
            gone
        };
        for gone in gone {
            info!(listener = %gone.local, "no longer in the config: closing");
            gone.stop.send_replace(true);
            self.with_kernel(|kernel| kernel.forget_listener(gone.local));
        }
        let ports: Vec<u16> = self.local_addrs().iter().map(SocketAddr::port).collect();
        self.with_kernel(|kernel| kernel.set_ports(&ports))
            .transpose()
            .map_err(|source| ListenerError::Ports {
                source: Box::new(source),
            })?;
        Ok(())
    }

    /// Starts accepting on `bound`.
    fn serve_listener(self: &Arc<Self>, bound: Bound) {
        let (stop, own_stop) = watch::channel(false);
        let wanted = (bound.configured, bound.protocol);
        let local = bound.addr;
        let server = Arc::clone(self);
        let task = tokio::spawn(async move { server.accept_loop(bound, own_stop).await });
        lock(&self.serving).push(Serving {
            wanted,
            local,
            stop,
            task,
        });
    }

    /// Serves `listeners` until `shutdown` completes, then stops accepting and lets
    /// in-flight requests finish for up to `grace`; returns how many connections were
    /// still open when the grace period ended.
    pub async fn run(
        self: Arc<Self>,
        listeners: Vec<Bound>,
        shutdown: impl Future<Output = ()>,
        grace: Duration,
    ) -> usize {
        for bound in listeners {
            self.serve_listener(bound);
        }
        let summary = tokio::spawn(summarize(Arc::clone(&self.metrics)));
        shutdown.await;
        self.stop.send_replace(true);
        // Each loop shuts its listening socket down as it ends: after this, new
        // connections are refused by the kernel.
        let tasks: Vec<JoinHandle<()>> = lock(&self.serving).drain(..).map(|s| s.task).collect();
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
                    let server = Arc::clone(&self);
                    let span = debug_span!("conn", peer = %peer, listener = %bound.addr);
                    tokio::spawn(
                        async move {
                            server
                                .connection(stream, peer, bound.addr, bound.protocol)
                                .await
                        }
                        .instrument(span),
                    );
                }
                Err(err) if is_transient(&err) => continue,
                Err(err) => {
                    // Out of descriptors or memory: pause, never give up the listener.
                    self.metrics.accept_errors.fetch_add(1, Ordering::Relaxed);
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
        let local = bound.addr;
        drop(bound);
        info!(listener = %local, "listener closed");
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
