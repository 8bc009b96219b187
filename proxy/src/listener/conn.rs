//! A connection's life after accept: the connection limits, the user-space trust check,
//! the PROXY header under its deadline (from accept), TLS by SNI on the TLS port, then
//! hyper-util's HTTP/1.1 + h2 server over the forwarder, closing gracefully on drain.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

use super::{Protocol, Runtime, Server};
use crate::forward::{ConnContext, ConnPools};
use crate::metrics::Metrics;
use crate::proxy_protocol::{self, read_header};
use crate::trust::normalize;

/// How long a client may take over the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Server {
    /// A connection's task up to its PROXY header; [`Server::admitted`] from there on,
    /// boxed: a spawned task is allocated whole at the size of its largest state, and the
    /// TLS and HTTP states are about 9 KB, which every connection still waiting for its
    /// header (a slow-header flood holds thousands) would otherwise carry. Boxed, the
    /// waiting task is under 1 KB.
    pub(super) async fn connection(
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
            return Box::pin(self.admitted(
                stream,
                peer,
                peer,
                local,
                None,
                protocol,
                runtime.clone(),
            ))
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
                Box::pin(self.admitted(
                    stream,
                    peer,
                    client,
                    local,
                    info,
                    protocol,
                    runtime.clone(),
                ))
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
        // Each protocol's HTTP state is boxed on its own: a plain connection's (about
        // 4 KB) would otherwise be allocated at the size of a TLS one's (about 7.5 KB).
        match protocol {
            Protocol::Http => {
                Box::pin(serve_http(stream, ctx, &runtime, self.stop.subscribe())).await
            }
            Protocol::Https => {
                let handshake =
                    tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, runtime.tls.accept(stream)).await;
                match handshake {
                    Ok(Ok((stream, sni))) => {
                        ctx.sni = Some(sni);
                        Box::pin(serve_http(stream, ctx, &runtime, self.stop.subscribe())).await
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
pub(super) struct PerIp {
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
