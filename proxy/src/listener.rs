//! The listeners and the life of a connection: bind (with the kernel filter attached
//! before `listen()`), the accept loop with backoff, connection limits, and the
//! connection task — user-space trust check, PROXY header under its deadline, TLS by
//! SNI, then hyper-util's HTTP/1.1 + h2 server over the forwarder. Also graceful drain.
//! Connection errors end their task and are logged once, at debug: outsiders trigger
//! them at will, so they are counted and summarised (see `metrics`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tracing::{Instrument, debug, debug_span, error, info, warn};

use crate::config::{Config, KernelFilterConfig, Limits, Listeners};
use crate::forward::{ConnContext, ConnPools, ForwardError, Forwarder};
use crate::kernel::{Kernel, KernelError};
use crate::metrics::{Metrics, SUMMARY_INTERVAL, Snapshot};
use crate::proxy_protocol::{self, read_header};
use crate::tls::{Tls, TlsError};
use crate::trust::{TrustList, normalize};

/// How long a client may take over the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
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
    /// What the config asked to bind and how to filter: a reload that changes them only
    /// warns (they take effect at the next start).
    listeners: Listeners,
    kernel_filter: Option<KernelFilterConfig>,
    tls: Tls,
    proxy: Option<ProxySettings>,
    limits: Limits,
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
            listeners: config.listeners.clone(),
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
        })
    }
}

/// Which protocol a listening socket speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Https,
}

/// A bound, listening socket, with the kernel filter already attached.
pub struct Bound {
    listener: TcpListener,
    addr: SocketAddr,
    protocol: Protocol,
}

impl Bound {
    /// The local address (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }
}

/// Binds every configured listener. The kernel socket filter (socket mode) is attached
/// before `listen()`, so no connection is ever accepted unfiltered; in XDP mode the
/// bound ports (port 0 becomes a real one here) are the protected ones.
pub fn bind_all(config: &Config, kernel: Option<&mut Kernel>) -> Result<Vec<Bound>, ListenerError> {
    let mut kernel = kernel;
    let filter_required = config
        .proxy_protocol
        .as_ref()
        .is_none_or(|p| p.kernel_filter.required);
    let mut bound = Vec::new();
    let listeners = &config.listeners;
    let all = listeners
        .plain
        .iter()
        .map(|a| (*a, Protocol::Http))
        .chain(listeners.tls.iter().map(|a| (*a, Protocol::Https)));
    for (addr, protocol) in all {
        let socket = bind_one(
            addr,
            config.limits.tcp_listen_backlog,
            kernel.as_deref_mut(),
            filter_required,
        )?;
        let listener = TcpListener::from_std(socket.into())
            .map_err(|source| ListenerError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ListenerError::Bind { addr, source })?;
        info!(listener = %addr, protocol = ?protocol, "listening");
        bound.push(Bound {
            listener,
            addr,
            protocol,
        });
    }
    if let Some(kernel) = kernel {
        let ports: Vec<u16> = bound.iter().map(|b| b.addr.port()).collect();
        kernel
            .set_ports(&ports)
            .map_err(|source| ListenerError::Ports {
                source: Box::new(source),
            })?;
    }
    Ok(bound)
}

fn bind_one(
    addr: SocketAddr,
    backlog: u32,
    kernel: Option<&mut Kernel>,
    filter_required: bool,
) -> Result<Socket, ListenerError> {
    let err = |source| ListenerError::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    if addr.is_ipv6() {
        // `[::]` and `0.0.0.0` may then share a port; each family has its own socket.
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    if let Some(kernel) = kernel {
        match kernel.protect_listener(&socket) {
            Ok(_) => {}
            Err(err) if !filter_required => {
                error!(listener = %addr, error = %err, "kernel filter not attached (kernel_filter.required = false): only user space checks peers on this listener");
            }
            Err(source) => {
                return Err(ListenerError::Filter {
                    addr,
                    source: Box::new(source),
                });
            }
        }
    }
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    socket.listen(backlog).map_err(err)?;
    Ok(socket)
}

/// The running proxy: its current runtime, counters and connection limits.
pub struct Server {
    runtime: ArcSwap<Runtime>,
    metrics: Arc<Metrics>,
    /// One permit per open connection (`max_clients`); holding them all means drained.
    slots: Arc<Semaphore>,
    max_clients: usize,
    per_ip: Arc<PerIp>,
    /// Set when draining starts; every HTTP connection watches it.
    stop: watch::Sender<bool>,
    /// The kernel filter, updated on reload and read by scrapes; taken at exit.
    kernel: Mutex<Option<Kernel>>,
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
            stop: watch::channel(false).0,
            kernel: Mutex::new(kernel),
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

    /// Applies a new config to new connections: the kernel's trusted list is updated in
    /// place first, then user space switches, so a prefix is never trusted by user
    /// space before the kernel lets it in, and removed from both within the call.
    /// Connections already running keep their runtime. Listener addresses, the filter
    /// mode and `max_clients` keep the values the process started with.
    pub fn reload(&self, config: &Config) -> Result<(), ListenerError> {
        let current = self.runtime.load_full();
        let runtime = Runtime::new(config, Some(&current))?;
        if runtime.listeners != current.listeners {
            warn!(
                "reload: listen addresses or ports changed; they take effect at the next restart"
            );
        }
        if runtime.kernel_filter != current.kernel_filter {
            warn!(
                "reload: kernel_filter settings changed; the trusted list is applied now, the rest at the next restart"
            );
        }
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
        Ok(())
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
        let mut loops = Vec::new();
        for bound in listeners {
            let server = Arc::clone(&self);
            loops.push(tokio::spawn(async move { server.accept_loop(bound).await }));
        }
        let summary = tokio::spawn(summarize(Arc::clone(&self.metrics)));
        shutdown.await;
        self.stop.send_replace(true);
        // Each loop drops its listening socket as it ends: after this, new connections
        // are refused by the kernel.
        for l in loops {
            let _ = l.await;
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

    async fn accept_loop(self: Arc<Self>, bound: Bound) {
        let mut stop = self.stop.subscribe();
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            let accepted = tokio::select! {
                biased;
                _ = stop.changed() => break,
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
                    warn!(listener = %bound.addr, error = %err, retry_ms = backoff.as_millis() as u64, "accept failed");
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
    }

    async fn connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
        protocol: Protocol,
    ) {
        let accepted_at = Instant::now();
        let metrics = &self.metrics;
        metrics.accepted.fetch_add(1, Ordering::Relaxed);
        let Ok(_slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            metrics.refused_max_clients.fetch_add(1, Ordering::Relaxed);
            debug!("refused: max_clients reached");
            return;
        };
        let _active = Active::new(metrics);
        let _ = stream.set_nodelay(true);
        let runtime = self.runtime.load_full();
        let Some(proxy) = &runtime.proxy else {
            return self
                .admitted(stream, peer, peer, local, None, protocol, runtime.clone())
                .await;
        };
        if !proxy.trust.contains(peer.ip()) {
            metrics.refused_untrusted.fetch_add(1, Ordering::Relaxed);
            debug!("refused: peer is not a trusted proxy");
            return;
        }
        match read_header(stream, accepted_at + proxy.timeout, &proxy.limits).await {
            Ok((info, stream)) => {
                let client = info
                    .client()
                    .map_or(peer, |c| SocketAddr::new(normalize(c.ip()), c.port()));
                debug!(client = %client, version = ?info.version(), "PROXY header read");
                let info = Some(Arc::new(info));
                self.admitted(stream, peer, client, local, info, protocol, runtime.clone())
                    .await
            }
            Err(err) => {
                metrics.header_error(err.kind());
                debug!(error = %err, kind = err.kind(), "refused: PROXY header");
            }
        }
    }

    /// Past the trust check and the header: per-client limit, TLS, HTTP.
    #[expect(
        clippy::too_many_arguments,
        reason = "the connection's facts, passed once down the pipeline"
    )]
    async fn admitted<S>(
        &self,
        stream: S,
        peer: SocketAddr,
        client: SocketAddr,
        local: SocketAddr,
        proxy: Option<Arc<proxy_protocol::ProxyInfo>>,
        protocol: Protocol,
        runtime: Arc<Runtime>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let _per_ip = match runtime.limits.max_clients_per_ip {
            None => None,
            Some(max) => match self.per_ip.enter(client.ip(), max) {
                Some(guard) => Some(guard),
                None => {
                    self.metrics.refused_per_ip.fetch_add(1, Ordering::Relaxed);
                    debug!(client = %client, "refused: max_clients_per_ip reached");
                    return;
                }
            },
        };
        let mut ctx = ConnContext {
            client,
            peer,
            local,
            tls: protocol == Protocol::Https,
            sni: None,
            proxy,
            upstream_pools: ConnPools::default(),
        };
        match protocol {
            Protocol::Http => serve_http(stream, ctx, &runtime, self.stop.subscribe()).await,
            Protocol::Https => {
                let handshake =
                    tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, runtime.tls.accept(stream)).await;
                match handshake {
                    Ok(Ok((stream, sni))) => {
                        ctx.sni = Some(sni);
                        serve_http(stream, ctx, &runtime, self.stop.subscribe()).await
                    }
                    Ok(Err(err)) => {
                        self.metrics.tls_error(err.kind());
                        debug!(client = %client, error = %err, "TLS handshake failed");
                    }
                    Err(_) => {
                        self.metrics.tls_error("timeout");
                        debug!(client = %client, "TLS handshake timed out");
                    }
                }
            }
        }
    }
}

/// Serves HTTP/1.1 and h2 (by ALPN or prior knowledge) on one connection. When `stop`
/// turns true, the connection finishes its in-flight requests and closes (h2 GOAWAY,
/// HTTP/1.1 `Connection: close` after the current response).
async fn serve_http<S>(
    stream: S,
    ctx: ConnContext,
    runtime: &Runtime,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let forwarder = Arc::clone(&runtime.forwarder);
    let ctx = Arc::new(ctx);
    let service = service_fn(move |req| {
        let forwarder = Arc::clone(&forwarder);
        let ctx = Arc::clone(&ctx);
        async move { Ok::<_, Infallible>(forwarder.handle(req, &ctx).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(runtime.limits.max_concurrent_streams);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    let drained = async {
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => result,
            () = stopped(&mut stop) => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    };
    let result = match runtime.limits.connection_handling_timeout {
        Some(limit) => match tokio::time::timeout(limit, drained).await {
            Ok(result) => result,
            Err(_) => {
                debug!("connection_handling_timeout reached; closing");
                return;
            }
        },
        None => drained.await,
    };
    if let Err(err) = result {
        debug!(error = %err, "connection ended with an error");
    }
}

/// Completes when draining starts (never, if the server is gone without draining).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
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

/// Counts an open connection while alive.
struct Active<'a>(&'a Metrics);

impl<'a> Active<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.active.fetch_add(1, Ordering::Relaxed);
        Active(metrics)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Open connections per client address (the recovered one under the PROXY protocol).
#[derive(Default)]
struct PerIp {
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    /// Counts a connection from `ip`, unless `max` are open already.
    fn enter(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PerIpGuard> {
        let ip = normalize(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(ip).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(PerIpGuard {
            table: Arc::clone(self),
            ip,
        })
    }
}

struct PerIpGuard {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for PerIpGuard {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_limit_counts_and_releases() {
        let table = Arc::new(PerIp::default());
        let ip: IpAddr = "192.0.2.1".parse().expect("literal");
        let a = table.enter(ip, 2).expect("first");
        let _b = table.enter(ip, 2).expect("second");
        assert!(table.enter(ip, 2).is_none(), "third is over the limit");
        // The mapped form is the same client.
        assert!(
            table
                .enter("::ffff:192.0.2.1".parse().expect("literal"), 2)
                .is_none()
        );
        drop(a);
        assert!(table.enter(ip, 2).is_some(), "a slot was released");
    }

    #[test]
    fn per_ip_table_forgets_clients_with_no_connection() {
        let table = Arc::new(PerIp::default());
        let guard = table
            .enter("2001:db8::1".parse().expect("literal"), 1)
            .expect("enter");
        drop(guard);
        assert!(table.open.lock().expect("lock").is_empty());
    }
}
