//! The upstream client: hyper-util's pooled legacy client over hyper-rustls (ring provider;
//! upstream certificates verified against the Mozilla roots of webpki-roots), shared pools
//! per protocol choice, the connection-private pools of upstreams that take a PROXY header
//! ([`ConnPools`]), the choice of protocol itself (rpxy's rules), and the response timeout
//! that becomes a 504. Connection failures surface as errors; the caller makes them 502s
//! (503 when `max_upstream_connections` left no room). Every pool's connections come
//! from one [`Slots`].

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderMap, Request, Response, Version, header};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::{ClientConfig, RootCertStore};
use tokio::sync::oneshot;

use super::body::RequestBody;
use super::connect::{Capped, Connector};
use super::plain::{GiveBack, PlainError, PlainPool};
use super::slots::{Evict, OpenCount, Slots, Turns};
use crate::config::UpstreamHttp;

/// The ceiling on an upstream HTTP/1.1 connection's read buffer (hyper's `max_buf_size`,
/// whose default is about 400 KiB). A response body is read in pieces of at most this
/// much, and each piece handed down pins its buffer until the client has taken it, so
/// this bounds the memory a flowing response holds: about 120 KiB per download at 32 KiB,
/// about 170 KiB at 64 KiB, for 10-25% more throughput (`cargo xtask bench download`,
/// README). It also bounds a response head: an upstream head larger than this fails the
/// request (a 502; nginx's default `proxy_buffer_size` is 4–8 KiB).
pub(super) const UPSTREAM_BUF_BYTES: usize = 32 << 10;

/// A pool of upstream connections (hyper-util keys it by scheme and authority).
pub(super) type Pool = Client<HttpsConnector<Connector>, RequestBody>;

/// How a request travels upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Protocol {
    /// HTTP/1.1; over TLS, no ALPN offer beyond it.
    Http1,
    /// HTTP/1.1 on plain connections; over TLS, h2 when the upstream picks it by ALPN.
    Alpn,
    /// HTTP/2: prior knowledge (h2c) on plain connections, ALPN `h2` over TLS.
    Http2,
}

impl Protocol {
    /// The version the request is given; with [`Protocol::Alpn`] a connection that
    /// negotiated h2 sends it as HTTP/2 anyway.
    pub(super) fn version(self) -> Version {
        match self {
            Protocol::Http1 | Protocol::Alpn => Version::HTTP_11,
            Protocol::Http2 => Version::HTTP_2,
        }
    }

    /// What the TLS handshake offers by ALPN.
    fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            Protocol::Http1 => vec![b"http/1.1".to_vec()],
            Protocol::Alpn => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Protocol::Http2 => vec![b"h2".to_vec()],
        }
    }
}

/// The protocol for a request, by rpxy's rules: an upgrade (WebSocket) needs HTTP/1.1; a
/// `force_` option wins; gRPC needs HTTP/2; a plain-HTTP upstream gets HTTP/1.1; over TLS
/// an HTTP/2 client is kept on HTTP/2 and anything else goes by ALPN.
pub(super) fn protocol(
    option: UpstreamHttp,
    upstream_tls: bool,
    request: Version,
    headers: &HeaderMap,
    upgrade: bool,
) -> Protocol {
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    match option {
        _ if upgrade => Protocol::Http1,
        UpstreamHttp::Http11 => Protocol::Http1,
        UpstreamHttp::Http2 => Protocol::Http2,
        UpstreamHttp::Auto if grpc => Protocol::Http2,
        UpstreamHttp::Auto if !upstream_tls => Protocol::Http1,
        UpstreamHttp::Auto if request == Version::HTTP_2 => Protocol::Http2,
        UpstreamHttp::Auto => Protocol::Alpn,
    }
}

/// Why no response came back.
#[derive(Debug, thiserror::Error)]
pub(super) enum UpstreamError {
    #[error("no response from the upstream within {0:?} of sending the request")]
    Timeout(Duration),
    #[error("request to the upstream failed")]
    Request(#[source] hyper_util::client::legacy::Error),
    #[error(transparent)]
    Plain(PlainError),
}

/// The connection and response bounds of the upstream client.
#[derive(Clone, Copy, Debug)]
pub(super) struct Bounds {
    /// Also how long a connect waits for room under `max_upstream_connections`.
    pub(super) connect: Duration,
    pub(super) response: Duration,
    pub(super) pool_idle: Duration,
}

/// Upstream connections private to one downstream connection: those to upstreams with
/// `send_proxy_protocol`, whose first bytes name that connection's client. One pool per
/// protocol and header, made on first use and dropped with the downstream connection,
/// which closes its idle connections. A connection that carries one client's header is
/// therefore never offered to another client's request, while the requests of one
/// client connection (keep-alive, h2 streams) still reuse it. Also the connection's
/// turns under `max_upstream_connections_per_client`. Clones share the pools.
#[derive(Clone, Debug, Default)]
pub struct ConnPools {
    pools: Arc<Mutex<Vec<PrivatePool>>>,
    pub(super) turns: Turns,
}

#[derive(Debug)]
struct PrivatePool {
    protocol: Protocol,
    /// The PROXY header every connection of `pool` started with.
    header: Arc<[u8]>,
    pool: Pool,
}

impl PartialEq for ConnPools {
    /// The same pools, i.e. the same downstream connection.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.pools, &other.pools)
    }
}

impl Eq for ConnPools {}

impl ConnPools {
    /// The pool for `protocol` whose connections start with `header`, made by `make`
    /// when there is none yet. Keyed by the header bytes themselves, so a pool can only
    /// ever be handed to requests that would send the identical header.
    fn get_or_make(
        &self,
        protocol: Protocol,
        header: &[u8],
        make: impl FnOnce(Arc<[u8]>) -> Pool,
    ) -> Pool {
        // A panic elsewhere while holding the lock leaves the list whole (a push or a
        // read), so a poisoned lock is still safe to use.
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = pools
            .iter()
            .find(|p| p.protocol == protocol && *p.header == *header)
        {
            return found.pool.clone();
        }
        let header: Arc<[u8]> = header.into();
        let pool = make(Arc::clone(&header));
        pools.push(PrivatePool {
            protocol,
            header,
            pool: pool.clone(),
        });
        pool
    }

    /// How many private pools the connection has made.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// What every pool is made from.
#[derive(Debug)]
struct PoolMaker {
    http: HttpConnector,
    /// One TLS config per [`Protocol`] (they differ in their ALPN offer), in the order
    /// `Http1`, `Alpn`, `Http2`.
    tls: [Arc<ClientConfig>; 3],
    pool_idle: Duration,
    capped: Capped,
}

impl PoolMaker {
    fn pool(
        &self,
        protocol: Protocol,
        header: Option<Arc<[u8]>>,
        count: Option<OpenCount>,
    ) -> Pool {
        let tls = match protocol {
            Protocol::Http1 => &self.tls[0],
            Protocol::Alpn => &self.tls[1],
            Protocol::Http2 => &self.tls[2],
        };
        let capped = Capped {
            count,
            ..self.capped.clone()
        };
        let connector = Connector::new(self.http.clone(), header, capped);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(self.pool_idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http1_max_buf_size(UPSTREAM_BUF_BYTES)
            .http2_only(protocol == Protocol::Http2);
        builder.build(HttpsConnector::from((connector, Arc::clone(tls))))
    }
}

/// hyper-util's shared pools, one per [`Protocol`] in the order of `PoolMaker::tls`.
/// hyper-util cannot close one idle connection on demand, so at the cap all three are
/// replaced by empty ones: their idle connections close once no request holds the old
/// pools, and in-flight ones are not reused.
#[derive(Debug)]
struct SharedPools {
    pools: ArcSwap<[Pool; 3]>,
    maker: PoolMaker,
    /// Connections open through these pools, old ones included.
    open: OpenCount,
}

impl SharedPools {
    fn make(maker: &PoolMaker, open: &OpenCount) -> [Pool; 3] {
        [Protocol::Http1, Protocol::Alpn, Protocol::Http2]
            .map(|protocol| maker.pool(protocol, None, Some(open.clone())))
    }
}

impl Evict for SharedPools {
    fn evict_idle(&self) -> bool {
        if self.open.get() == 0 {
            return false;
        }
        self.pools
            .store(Arc::new(SharedPools::make(&self.maker, &self.open)));
        true
    }
}

/// The shared pools, one per [`Protocol`], and what private ones are made from.
#[derive(Debug)]
pub(super) struct UpstreamClient {
    /// Plain HTTP/1.1 to shared upstreams, the common case (see `plain`).
    plain: PlainPool,
    shared: Arc<SharedPools>,
    response_timeout: Duration,
    slots: Arc<Slots>,
}

impl UpstreamClient {
    /// Builds the pools, their connections under `slots`; `roots` replaces the Mozilla
    /// roots when given.
    pub(super) fn new(
        bounds: Bounds,
        roots: Option<RootCertStore>,
        slots: Arc<Slots>,
    ) -> Result<UpstreamClient, rustls::Error> {
        let roots = roots.unwrap_or_else(|| RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
        let tls =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let with_alpn = |protocol: Protocol| {
            let mut config = tls.clone();
            config.alpn_protocols = protocol.alpn();
            Arc::new(config)
        };
        let mut http = HttpConnector::new();
        // The scheme decides TLS (hyper-rustls); this connector only makes TCP.
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(bounds.connect));
        let capped = Capped {
            slots: Arc::clone(&slots),
            wait: bounds.connect,
            count: None,
        };
        let maker = PoolMaker {
            http,
            tls: [Protocol::Http1, Protocol::Alpn, Protocol::Http2].map(with_alpn),
            pool_idle: bounds.pool_idle,
            capped: capped.clone(),
        };
        // The plain pool registers first, so it is asked first: it closes one idle
        // connection, where the shared pools can only close all of theirs.
        let plain = PlainPool::new(maker.http.clone(), bounds.pool_idle, capped);
        let open = OpenCount::default();
        let shared = Arc::new(SharedPools {
            pools: ArcSwap::from_pointee(SharedPools::make(&maker, &open)),
            maker,
            open,
        });
        let evict: Arc<dyn Evict> = Arc::clone(&shared) as Arc<dyn Evict>;
        slots.register(Arc::downgrade(&evict));
        Ok(UpstreamClient {
            plain,
            shared,
            response_timeout: bounds.response,
            slots,
        })
    }

    /// The cap every pool's connections are under.
    pub(super) fn slots(&self) -> &Arc<Slots> {
        &self.slots
    }

    /// The pool a request goes through: for an upstream that takes a PROXY header,
    /// `private`'s pool for exactly that header; else a shared one. `None` is the plain
    /// HTTP/1.1 pool, for a `plain` request (no TLS, no upgrade) to such an upstream.
    pub(super) fn pool(
        &self,
        protocol: Protocol,
        private: Option<(&ConnPools, &[u8])>,
        plain: bool,
    ) -> Option<Pool> {
        let pool = match private {
            Some((pools, header)) => pools.get_or_make(protocol, header, |header| {
                self.shared.maker.pool(protocol, Some(header), None)
            }),
            None => {
                let shared = self.shared.pools.load();
                match protocol {
                    Protocol::Http1 if plain => return None,
                    Protocol::Http1 => shared[0].clone(),
                    Protocol::Alpn => shared[1].clone(),
                    Protocol::Http2 => shared[2].clone(),
                }
            }
        };
        Some(pool)
    }

    /// Sends `request` through `pool` and waits for the response head. The response
    /// timeout starts once the request body has been sent (`body_done`), so a slow upload
    /// is not a slow upstream; connecting is bounded by the connect timeout.
    /// Through the plain pool (`pool` is `None`), the response comes with what gives its
    /// connection back once the body has been read.
    pub(super) async fn send(
        &self,
        pool: Option<&Pool>,
        request: Request<RequestBody>,
        body_done: oneshot::Receiver<()>,
    ) -> Result<(Response<Incoming>, Option<GiveBack>), UpstreamError> {
        match pool {
            None => {
                let sent = async {
                    let (response, give_back) = self
                        .plain
                        .send(request)
                        .await
                        .map_err(UpstreamError::Plain)?;
                    Ok((response, Some(give_back)))
                };
                self.bounded(sent, body_done).await
            }
            Some(pool) => {
                let sent = async {
                    let response = pool.request(request).await;
                    Ok((response.map_err(UpstreamError::Request)?, None))
                };
                self.bounded(sent, body_done).await
            }
        }
    }

    /// `response`, failing with a timeout if it is not there within the response timeout
    /// of `body_done`.
    async fn bounded<T>(
        &self,
        response: impl Future<Output = Result<T, UpstreamError>>,
        body_done: oneshot::Receiver<()>,
    ) -> Result<T, UpstreamError> {
        let mut response = std::pin::pin!(response);
        tokio::select! {
            biased;
            result = &mut response => return result,
            // Sent, failed or dropped: the wait for the head starts now either way.
            _ = body_done => {}
        }
        match tokio::time::timeout(self.response_timeout, response).await {
            Ok(result) => result,
            Err(_elapsed) => Err(UpstreamError::Timeout(self.response_timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn grpc() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        h
    }

    #[test]
    fn plain_upstream_gets_http1_unless_forced_or_grpc() {
        let none = HeaderMap::new();
        let auto = UpstreamHttp::Auto;
        assert_eq!(
            protocol(auto, false, Version::HTTP_2, &none, false),
            Protocol::Http1
        );
        assert_eq!(
            protocol(auto, false, Version::HTTP_11, &grpc(), false),
            Protocol::Http2
        );
        let forced = UpstreamHttp::Http2;
        assert_eq!(
            protocol(forced, false, Version::HTTP_11, &none, false),
            Protocol::Http2
        );
    }

    #[test]
    fn tls_upstream_keeps_http2_and_negotiates_the_rest() {
        let none = HeaderMap::new();
        let auto = UpstreamHttp::Auto;
        assert_eq!(
            protocol(auto, true, Version::HTTP_2, &none, false),
            Protocol::Http2
        );
        assert_eq!(
            protocol(auto, true, Version::HTTP_11, &none, false),
            Protocol::Alpn
        );
        let h1 = UpstreamHttp::Http11;
        assert_eq!(
            protocol(h1, true, Version::HTTP_2, &grpc(), false),
            Protocol::Http1
        );
    }

    fn client() -> UpstreamClient {
        let bounds = Bounds {
            connect: Duration::from_secs(1),
            response: Duration::from_secs(1),
            pool_idle: Duration::from_secs(1),
        };
        UpstreamClient::new(bounds, None, Slots::new(8)).expect("client builds")
    }

    #[tokio::test]
    async fn a_connection_gets_one_private_pool_per_protocol_and_header() {
        let client = client();
        let mine = ConnPools::default();
        let (a, b) = (
            &b"PROXY TCP4 192.0.2.1 192.0.2.9 1 80\r\n"[..],
            &b"PROXY TCP4 192.0.2.2 192.0.2.9 2 80\r\n"[..],
        );
        client.pool(Protocol::Http1, Some((&mine, a)), true);
        client.pool(Protocol::Http1, Some((&mine, a)), true);
        assert_eq!(mine.len(), 1, "the same header reuses its pool");
        client.pool(Protocol::Http2, Some((&mine, a)), true);
        client.pool(Protocol::Http1, Some((&mine, b)), true);
        assert_eq!(mine.len(), 3, "another protocol or header gets its own");
        let theirs = ConnPools::default();
        client.pool(Protocol::Http1, Some((&theirs, a)), true);
        assert_eq!(
            (mine.len(), theirs.len()),
            (3, 1),
            "pools are per connection"
        );
        client.pool(Protocol::Http1, None, false);
        assert!(
            client.pool(Protocol::Http1, None, true).is_none(),
            "plain HTTP/1.1 goes to the plain pool"
        );
        assert_eq!(
            (mine.len(), theirs.len()),
            (3, 1),
            "shared pools are not private"
        );
        assert_eq!(mine, mine.clone());
        assert_ne!(mine, theirs);
    }

    #[test]
    fn alpn_offers_follow_the_protocol() {
        assert_eq!(Protocol::Http1.alpn(), [b"http/1.1".to_vec()]);
        assert_eq!(
            Protocol::Alpn.alpn(),
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert_eq!(Protocol::Http2.alpn(), [b"h2".to_vec()]);
    }

    #[test]
    fn upgrades_always_go_over_http1() {
        let none = HeaderMap::new();
        for option in [
            UpstreamHttp::Auto,
            UpstreamHttp::Http11,
            UpstreamHttp::Http2,
        ] {
            for tls in [false, true] {
                let p = protocol(option, tls, Version::HTTP_11, &none, true);
                assert_eq!(p, Protocol::Http1, "{option:?} tls={tls}");
            }
        }
    }
}
