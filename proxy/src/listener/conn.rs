//! A connection's life after accept: the connection limits, the user-space trust check
//! (a direct source's first bytes screened for a PROXY signature instead of a header),
//! the PROXY header under its deadlines (the first byte from accept, the header from its
//! first byte), the per-client limit and TLS by SNI on the TLS port; then `serving` (HTTP
//! over the forwarder). Each phase's future is boxed and freed when the phase ends.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::debug;

use super::clock::Activity;
use super::direct::{self, Screened};
use super::serving::{Http, ToServe, handling_deadline, serve_http, unboxed};
use super::{Protocol, Runtime, Server};
use crate::forward::{ConnContext, ConnPools};
use crate::metrics::{Metrics, TimeoutKind};
use crate::proxy_protocol::{self, Deadlines, ReadError, Rewind, read_header};
use crate::trust::{Class, normalize};

/// How long a client may take over the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new connection waits for the slot of the idle connection it had shed.
const SHED_WAIT: Duration = Duration::from_secs(1);

/// A connection as the accept loop hands it to [`Server::connection`].
pub(super) struct Accepted {
    pub(super) stream: TcpStream,
    pub(super) peer: SocketAddr,
    /// The listener's address.
    pub(super) local: SocketAddr,
    pub(super) protocol: Protocol,
}

/// What is known of a connection once its PROXY header is read.
struct Facts {
    peer: SocketAddr,
    /// The client: the PROXY header's source, else the peer.
    client: SocketAddr,
    local: SocketAddr,
    proxy: Option<Arc<proxy_protocol::ProxyInfo>>,
    protocol: Protocol,
}

impl Server {
    /// A connection's task: its slot, then [`Server::screened`] (the trust check and the
    /// PROXY header), then [`Server::admitted`]. Each phase is boxed and freed when it
    /// ends: a spawned task is allocated whole at the size of its largest state, and an
    /// idle keep-alive connection (10,000 of them may be open) would otherwise carry the
    /// header reader's space for its whole life. Written as a function returning an
    /// `async move` block, not an `async fn`: an `async fn` keeps a copy of its arguments
    /// beside the locals it moves them into. The connection comes boxed: a future keeps
    /// the space of what it was given for its whole life, even once that is moved out.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would keep a second copy of its arguments"
    )]
    pub(super) fn connection(
        self: Arc<Self>,
        accepted: Box<Accepted>,
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
            let served = async {
                // One expression, so that no binding keeps the screened values' space
                // through the wait that follows.
                let admitted =
                    Box::pin(self.screened(accepted))
                        .await
                        .and_then(|(stream, facts, runtime)| {
                            self.admitted(stream, facts, runtime, Arc::clone(&activity))
                        });
                if let Some(admitted) = admitted {
                    admitted.await;
                }
            };
            tokio::select! {
                () = served => {}
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

    /// The user-space trust check and the PROXY header (a direct source's first bytes
    /// screened instead): the stream with what was read of it to replay, what is known of
    /// the connection, and the generation it is served by; `None` when refused (counted
    /// and logged here). The slot is held by the caller.
    async fn screened(
        &self,
        accepted: Box<Accepted>,
    ) -> Option<(Rewind<TcpStream>, Facts, Arc<Runtime>)> {
        let Accepted {
            stream,
            peer,
            local,
            protocol,
        } = unboxed(accepted);
        let accepted_at = Instant::now();
        let metrics = &self.metrics;
        let _ = stream.set_nodelay(true);
        let runtime = self.runtime.load_full();
        let facts = |client, proxy| Facts {
            peer,
            client,
            local,
            proxy,
            protocol,
        };
        let Some(proxy) = &runtime.proxy else {
            let facts = facts(peer, None);
            return Some((Rewind::new(stream, Vec::new(), 0), facts, runtime));
        };
        let deadlines = Deadlines {
            first_byte: accepted_at + proxy.first_byte_timeout,
            header: proxy.timeout,
        };
        match proxy.trust.class(peer.ip()) {
            None => {
                metrics.refused_untrusted.inc();
                debug!("refused: peer is not a trusted proxy");
                None
            }
            Some(Class::Direct) => match direct::screen(stream, deadlines).await {
                Ok(Screened::Plain(stream)) => {
                    debug!("direct source: no PROXY header, the peer is the client");
                    let facts = facts(peer, None);
                    Some((stream, facts, runtime))
                }
                Ok(Screened::Signature(version)) => {
                    metrics.refused_direct_header.inc();
                    debug!(version = ?version, "refused: a direct source sent a PROXY header");
                    None
                }
                Ok(Screened::NoData) => {
                    metrics.closed_no_data.inc();
                    debug!("direct source closed before any byte: a health check");
                    None
                }
                Ok(Screened::NoFirstByte) => {
                    let timeouts = &runtime.forwarder.metrics().timeouts;
                    timeouts.bump(TimeoutKind::ProxyFirstByte);
                    debug!("direct source: no byte before first_byte_timeout; closing");
                    None
                }
                Ok(Screened::Closed { received }) => {
                    debug!(received, "direct source closed before its first bytes told");
                    None
                }
                Ok(Screened::Timeout { received }) => {
                    let timeouts = &runtime.forwarder.metrics().timeouts;
                    timeouts.bump(TimeoutKind::DirectFirstBytes);
                    debug!(received, "direct source: first bytes too late; closing");
                    None
                }
                Err(err) => {
                    debug!(error = %err, "direct source: reading its first bytes failed");
                    None
                }
            },
            Some(Class::Proxy) => match read_header(stream, deadlines, &proxy.limits).await {
                Ok((info, stream)) => {
                    if info.mixed_families() {
                        metrics.v1_mixed_families.inc();
                    }
                    let client = info
                        .client()
                        .map_or(peer, |c| SocketAddr::new(normalize(c.ip()), c.port()));
                    debug!(client = %client, version = ?info.version(), "PROXY header read");
                    let facts = facts(client, Some(Arc::new(info)));
                    Some((stream, facts, runtime))
                }
                // A trusted proxy that connects and closes is checking that the port is up.
                Err(ReadError::NoData) => {
                    metrics.closed_no_data.inc();
                    debug!("closed before any byte: a health check");
                    None
                }
                Err(ReadError::NoFirstByte) => {
                    let timeouts = &runtime.forwarder.metrics().timeouts;
                    timeouts.bump(TimeoutKind::ProxyFirstByte);
                    debug!("no byte before first_byte_timeout; closing");
                    None
                }
                Err(err) => {
                    metrics.header_error(err.kind());
                    debug!(error = %err, kind = err.kind(), "refused: PROXY header");
                    None
                }
            },
        }
    }

    /// Past the trust check and the header: the per-client limit (`None` when refused),
    /// then the connection's TLS and HTTP as a future. A plain connection's HTTP is
    /// served inline in it (the caller boxes it); a TLS one is boxed on its own, so a
    /// plain connection does not carry the size of the handshake. The limit and the
    /// context are settled before the future is made, so it keeps no copy of them, and
    /// it comes boxed, so the caller's future holds only the pointer.
    fn admitted(
        &self,
        stream: Rewind<TcpStream>,
        facts: Facts,
        runtime: Arc<Runtime>,
        activity: Arc<Activity>,
    ) -> Option<Pin<Box<dyn Future<Output = ()> + Send + '_>>> {
        let Facts {
            peer,
            client,
            local,
            proxy,
            protocol,
        } = facts;
        let per_ip = match runtime.limits.max_clients_per_ip {
            None => None,
            Some(max) => match self.per_ip.enter(client.ip(), max) {
                Some(guard) => Some(guard),
                None => {
                    self.metrics.refused_per_ip.inc();
                    debug!(client = %client, "refused: max_clients_per_ip reached");
                    return None;
                }
            },
        };
        let ctx = ConnContext {
            client,
            peer,
            local,
            tls: protocol == Protocol::Https,
            served_name: None,
            proxy,
            upstream_pools: ConnPools::default(),
        };
        let serving = Box::new(ToServe {
            stream,
            http: None,
            deadline: handling_deadline(&runtime),
            ctx,
            runtime,
            stop: self.stop.subscribe(),
            per_ip,
            activity,
        });
        Some(match protocol {
            Protocol::Http => Box::pin(serve_http(serving)),
            Protocol::Https => Box::pin(self.serve_tls(serving)),
        })
    }

    /// The TLS handshake (bounded by [`TLS_HANDSHAKE_TIMEOUT`]), then HTTP over it. Boxed
    /// by the caller: the handshake's state (about 3.5 KB) would otherwise be part of every
    /// plain connection's task too.
    async fn serve_tls(&self, serving: Box<ToServe<TcpStream>>) {
        let ToServe {
            stream,
            http: _,
            deadline: _,
            mut ctx,
            runtime,
            stop,
            per_ip,
            activity,
        } = unboxed(serving);
        let handshake =
            tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, runtime.tls.accept(stream)).await;
        match handshake {
            Ok(Ok((stream, served))) => {
                self.metrics
                    .tls_handshake(stream.get_ref().1.handshake_kind());
                ctx.served_name = Some(served);
                // ALPN decides; a client that offered none speaks HTTP/1.1 (RFC 9113 §3.3:
                // h2 over TLS is always negotiated).
                let http = match stream.get_ref().1.alpn_protocol() {
                    Some(b"h2") => Http::Two,
                    _ => Http::One,
                };
                let serving = Box::new(ToServe {
                    stream: Rewind::new(stream, Vec::new(), 0),
                    http: Some(http),
                    deadline: handling_deadline(&runtime),
                    ctx,
                    runtime,
                    stop,
                    per_ip,
                    activity,
                });
                Box::pin(serve_http(serving)).await
            }
            Ok(Err(err)) => {
                self.metrics.tls_error(err.kind());
                debug!(client = %ctx.client, error = %err, "TLS handshake failed");
            }
            Err(_) => {
                self.metrics.tls_error("timeout");
                debug!(client = %ctx.client, "TLS handshake timed out");
            }
        }
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

pub(super) struct PerIpGuard {
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
