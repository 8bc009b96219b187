//! One connection's life, from the admission the listener's gate gives it to its close:
//! the user-space trust check (a direct source's first bytes screened for a PROXY
//! signature instead of a header: `direct`), the PROXY header under its deadlines (the
//! first byte from accept, the header from its first byte), the per-client limit
//! (`per_ip`) and TLS by SNI on the TLS port; then `serving` (HTTP/1.1 and h2 over the
//! forwarder), every wait timed by the connection's clock (`clock`). It is served by one
//! generation, the [`Runtime`] it was admitted with (`runtime`). Each phase's future is
//! boxed and freed when the phase ends. Connection errors end their task and are logged
//! once, at debug: outsiders trigger them at will.

mod clock;
mod direct;
mod per_ip;
mod runtime;
mod serving;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

pub(crate) use clock::Activity;
use direct::Screened;
pub(crate) use per_ip::PerIp;
pub use runtime::{Runtime, RuntimeError};
use serving::{Http, ToServe, handling_deadline, serve_http, unboxed};

use crate::chain::Chain;
use crate::forward::{ConnContext, ConnPools};
use crate::metrics::{Metrics, TimeoutKind};
use crate::proxy_protocol::{self, Deadlines, ReadError, Rewind, read_header};
use crate::trust::{Class, normalize};

/// Which protocol a listening socket speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Protocol {
    Http,
    Https,
}

/// How long a client may take over the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection as the listener's gate admits it: the accepted stream, where it came
/// from and on which listener, and what it shares with every other connection.
pub(crate) struct Admission {
    pub(crate) stream: TcpStream,
    pub(crate) peer: SocketAddr,
    /// The listener's address.
    pub(crate) local: SocketAddr,
    pub(crate) protocol: Protocol,
    pub(crate) shared: Shared,
}

/// What every connection shares: the counters, the open connections per client address,
/// and the drain signal.
pub(crate) struct Shared {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) per_ip: Arc<PerIp>,
    /// Turns true when the server drains.
    pub(crate) stop: watch::Receiver<bool>,
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

/// A connection's life once it holds a slot: [`screened`] (the trust check and the
/// PROXY header), then [`admitted`], served by `runtime`; `activity` is its clock, which
/// the gate also watches to shed it. Each phase is boxed and freed when it ends: a
/// spawned task is allocated whole at the size of its largest state, and an idle
/// keep-alive connection would otherwise carry the header reader's space for its whole
/// life. Written as a function returning an `async move` block, not an `async fn`: an
/// `async fn` keeps a copy of its arguments beside the locals it moves them into. The
/// admission comes boxed: a future keeps the space of what it was given for its whole
/// life, even once that is moved out.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would keep a second copy of its arguments"
)]
pub(crate) fn serve(
    admission: Box<Admission>,
    activity: Arc<Activity>,
    runtime: Arc<Runtime>,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        // One expression, so that no binding keeps the screened values' space through
        // the wait that follows.
        let admitted = Box::pin(screened(admission, runtime)).await.and_then(
            |(stream, facts, runtime, shared)| admitted(stream, facts, runtime, shared, activity),
        );
        if let Some(admitted) = admitted {
            admitted.await;
        }
    }
}

/// The user-space trust check and the PROXY header (a direct source's first bytes
/// screened instead): the stream with what was read of it to replay, what is known of
/// the connection, the generation it is served by and what it shares with the others;
/// `None` when refused (counted and logged here). The slot is held by the caller.
async fn screened(
    admission: Box<Admission>,
    runtime: Arc<Runtime>,
) -> Option<(Rewind<TcpStream>, Facts, Arc<Runtime>, Shared)> {
    let Admission {
        stream,
        peer,
        local,
        protocol,
        shared,
    } = unboxed(admission);
    let accepted_at = Instant::now();
    let metrics = &*shared.metrics;
    let _ = stream.set_nodelay(true);
    let facts = |client, proxy| Facts {
        peer,
        client,
        local,
        proxy,
        protocol,
    };
    let Some(proxy) = &runtime.proxy else {
        let facts = facts(peer, None);
        return Some((Rewind::new(stream, Vec::new(), 0), facts, runtime, shared));
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
                Some((stream, facts, runtime, shared))
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
                metrics.timeouts.bump(TimeoutKind::ProxyFirstByte);
                debug!("direct source: no byte before first_byte_timeout; closing");
                None
            }
            Ok(Screened::Closed { received }) => {
                debug!(received, "direct source closed before its first bytes told");
                None
            }
            Ok(Screened::Timeout { received }) => {
                metrics.timeouts.bump(TimeoutKind::DirectFirstBytes);
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
                Some((stream, facts, runtime, shared))
            }
            // A trusted proxy that connects and closes is checking that the port is up.
            Err(ReadError::NoData) => {
                metrics.closed_no_data.inc();
                debug!("closed before any byte: a health check");
                None
            }
            Err(ReadError::NoFirstByte) => {
                metrics.timeouts.bump(TimeoutKind::ProxyFirstByte);
                debug!("no byte before first_byte_timeout; closing");
                None
            }
            Err(err) => {
                metrics.header_error(err.kind());
                debug!(error = %Chain(&err), kind = err.kind(), "refused: PROXY header");
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
    stream: Rewind<TcpStream>,
    facts: Facts,
    runtime: Arc<Runtime>,
    shared: Shared,
    activity: Arc<Activity>,
) -> Option<Pin<Box<dyn Future<Output = ()> + Send + 'static>>> {
    let Shared {
        metrics,
        per_ip,
        stop,
    } = shared;
    let Facts {
        peer,
        client,
        local,
        proxy,
        protocol,
    } = facts;
    let per_ip = match runtime.limits.max_clients_per_ip {
        None => None,
        Some(max) => match per_ip.enter(client.ip(), max) {
            Some(guard) => Some(guard),
            None => {
                metrics.refused_per_ip.inc();
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
        stop,
        per_ip,
        activity,
    });
    Some(match protocol {
        Protocol::Http => Box::pin(serve_http(serving)),
        Protocol::Https => Box::pin(serve_tls(serving, metrics)),
    })
}

/// The TLS handshake (bounded by [`TLS_HANDSHAKE_TIMEOUT`]), then HTTP over it. Boxed
/// by the caller: the handshake's state (about 3.5 KB) would otherwise be part of every
/// plain connection's task too.
async fn serve_tls(serving: Box<ToServe<TcpStream>>, metrics: Arc<Metrics>) {
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
    let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, runtime.tls.accept(stream)).await;
    match handshake {
        Ok(Ok((stream, served))) => {
            metrics.tls_handshake(stream.get_ref().1.handshake_kind());
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
            metrics.tls_error(err.kind());
            debug!(client = %ctx.client, error = %Chain(&err), "TLS handshake failed");
        }
        Err(_) => {
            metrics.tls_error("timeout");
            debug!(client = %ctx.client, "TLS handshake timed out");
        }
    }
}
