//! The upstream client: the choice of protocol (rpxy's rules), every setting of hyper's
//! client connections ([`hyper_builders`]), the one upstream error type and the status
//! each kind of failure answers ([`UpstreamError::status`]), the connection-private pools
//! of upstreams that take a PROXY header ([`ConnPools`]), and the response timeout that
//! becomes a 504. The connections themselves are the connector's (`connect`) and the
//! pool's (`pool`); every one of them holds a place in one [`Slots`].

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{HeaderMap, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use tokio::sync::oneshot;

use super::body::{BodyFailure, BodyFate, RequestBody};
use super::connect::Connector;
use super::pool::{GiveBack, Key, Pool};
use super::slots::{Slots, SlotsFull, Turns};
use crate::config::UpstreamHttp;

/// The ceiling on an upstream HTTP/1.1 connection's read buffer (hyper's `max_buf_size`,
/// whose default is about 400 KiB). A response body is read in pieces of at most this
/// much, and each piece handed down pins its buffer until the client has taken it, so
/// this bounds the memory a flowing response holds: about 120 KiB per download at 32 KiB,
/// about 170 KiB at 64 KiB, for 10-25% more throughput (`cargo xtask bench download`,
/// docs/benchmarks.md). It also bounds a response head: an upstream head larger than this
/// fails the request (a 502; nginx's default `proxy_buffer_size` is 4–8 KiB).
pub(super) const UPSTREAM_BUF_BYTES: usize = 32 << 10;

/// An h2 upstream stream's receive window: the response bytes one stream may hold here
/// while its client does not read (HTTP/2's own default is 64 KiB - 1).
const H2_STREAM_WINDOW_BYTES: u32 = 64 << 10;

/// An h2 upstream connection's receive window: the protocol's largest, so that streams
/// whose clients stopped reading shut only their own windows, never the connection's.
const H2_CONNECTION_WINDOW_BYTES: u32 = (1 << 31) - 1;

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
    pub(super) fn alpn(self) -> Vec<Vec<u8>> {
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

/// Every setting of hyper's upstream client connections, HTTP/1.1 and h2, made once per
/// forwarder by [`hyper_builders`].
#[derive(Debug)]
pub(super) struct Builders {
    pub(super) h1: http1::Builder,
    pub(super) h2: http2::Builder<TokioExecutor>,
}

/// All of hyper's client builder settings, in one place so they are easy to change.
pub(super) fn hyper_builders() -> Builders {
    let mut h1 = http1::Builder::new();
    h1.max_buf_size(UPSTREAM_BUF_BYTES);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        // What one h2 upstream stream may buffer here while its client does not read:
        // the stream's window (hyper's default is 2 MiB), and what waits to be sent up.
        .initial_stream_window_size(H2_STREAM_WINDOW_BYTES)
        .max_send_buf_size(UPSTREAM_BUF_BYTES)
        // Streams of all clients share a connection: its window is the protocol's
        // largest, so that the stream windows, not the connection's, bound what clients
        // that stop reading hold (hyper's default 5 MiB is two and a half of its
        // default stream windows).
        .initial_connection_window_size(H2_CONNECTION_WINDOW_BYTES);
    Builders { h1, h2 }
}

/// Why an upstream request got no response. [`UpstreamError::status`] is the answer.
#[derive(Debug, thiserror::Error)]
pub(super) enum UpstreamError {
    #[error(transparent)]
    Full(#[from] SlotsFull),
    #[error(
        "connecting to the upstream failed (check that it listens; upstream_connect_timeout bounds the wait)"
    )]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("writing the PROXY header to the upstream failed")]
    ProxyHeader(#[source] std::io::Error),
    #[error(
        "the TLS handshake with the upstream failed (is it `tls = true` on both sides, with a certificate for its name?)"
    )]
    Tls(#[source] std::io::Error),
    #[error("the upstream's host is not a name a TLS certificate can carry")]
    ServerName(#[source] rustls::pki_types::InvalidDnsNameError),
    #[error("the PROXY header and TLS handshake took longer than {0:?} (upstream_connect_timeout)")]
    ConnectTimeout(Duration),
    #[error(
        "waited longer than {0:?} (upstream_connect_timeout) for another request's connection to this h2 upstream"
    )]
    DialWait(Duration),
    #[error("the upstream request has no authority")]
    NoAuthority,
    #[error("the HTTP handshake with the upstream failed")]
    Handshake(#[source] hyper::Error),
    #[error("the request to the upstream failed")]
    Send(#[source] hyper::Error),
    #[error(
        "no response from the upstream within {0:?} of sending the request (upstream_read_timeout)"
    )]
    Timeout(Duration),
    /// The client's body failed the request, whatever hyper then reported.
    #[error(transparent)]
    ClientBody(BodyFailure),
}

impl UpstreamError {
    /// The status the client gets: its body's fault (413, 400, 408), no room under
    /// `max_upstream_connections` (503), the upstream too slow (504), else 502.
    pub(super) fn status(&self) -> StatusCode {
        match self {
            UpstreamError::ClientBody(BodyFailure::TooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
            UpstreamError::ClientBody(BodyFailure::Read) => StatusCode::BAD_REQUEST,
            UpstreamError::ClientBody(BodyFailure::TimedOut) => StatusCode::REQUEST_TIMEOUT,
            UpstreamError::Full(_) => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::Connect(_)
            | UpstreamError::ProxyHeader(_)
            | UpstreamError::Tls(_)
            | UpstreamError::ServerName(_)
            | UpstreamError::ConnectTimeout(_)
            | UpstreamError::DialWait(_)
            | UpstreamError::NoAuthority
            | UpstreamError::Handshake(_)
            | UpstreamError::Send(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

/// The connection and response bounds of the upstream client.
#[derive(Clone, Copy, Debug)]
pub(super) struct Bounds {
    /// Also how long a connect waits for room under `max_upstream_connections`.
    pub(super) connect: Duration,
    pub(super) response: Duration,
    pub(super) pool_idle: Duration,
}

/// What one downstream connection holds of the upstream side: its private pool, for
/// upstreams with `send_proxy_protocol`, whose connections start with a header naming
/// that connection's client (made on first use, dropped with the downstream connection,
/// which closes its idle connections), and its turns under
/// `max_upstream_connections_per_client`. A connection that carries one client's header
/// is therefore never offered to another connection's request, while the requests of
/// one client connection (keep-alive, h2 streams) still reuse it. Held in the
/// connection's `ConnContext`, and made on first use: an idle connection that never
/// needed them holds no allocation for them.
#[derive(Debug, Default)]
pub struct ConnPools {
    private: OnceLock<Pool>,
    pub(super) turns: Turns,
}

/// The shared pool and what private ones are made from.
#[derive(Debug)]
pub(super) struct UpstreamClient {
    shared: Pool,
    response_timeout: Duration,
    slots: Arc<Slots>,
}

impl UpstreamClient {
    /// Builds the connector and the shared pool, its connections under `slots`; `roots`
    /// replaces the Mozilla roots when given.
    pub(super) fn new(
        bounds: Bounds,
        roots: Option<RootCertStore>,
        slots: Arc<Slots>,
    ) -> Result<UpstreamClient, rustls::Error> {
        let connector = Connector::new(bounds.connect, roots, Arc::clone(&slots))?;
        let shared = Pool::new(
            Arc::new(connector),
            Arc::new(hyper_builders()),
            bounds.pool_idle,
        );
        Ok(UpstreamClient {
            shared,
            response_timeout: bounds.response,
            slots,
        })
    }

    /// The cap every pool's connections are under.
    pub(super) fn slots(&self) -> &Arc<Slots> {
        &self.slots
    }

    /// The pool for `key`: `conn`'s private one when the key carries a PROXY header,
    /// else the shared one.
    pub(super) fn pool<'a>(&'a self, key: &Key<'_>, conn: &'a ConnPools) -> &'a Pool {
        match key.header {
            Some(_) => conn.private.get_or_init(|| self.shared.private()),
            None => &self.shared,
        }
    }

    /// Sends `request` through `pool` for `key` and waits for the response head, with
    /// what gives its connection back once the body has been read. The response timeout
    /// starts once the request body has been sent (`body_done`), so a slow upload is not
    /// a slow upstream; connecting is bounded by the connect timeout. A failure after the
    /// client's body failed is that body's ([`UpstreamError::ClientBody`]).
    pub(super) async fn send(
        &self,
        pool: &Pool,
        key: &Key<'_>,
        request: Request<RequestBody>,
        body_done: oneshot::Receiver<()>,
        fate: &BodyFate,
    ) -> Result<(Response<Incoming>, GiveBack), UpstreamError> {
        self.bounded(pool.send(key, request), body_done)
            .await
            .map_err(|error| match fate.get() {
                Some(failure) => UpstreamError::ClientBody(failure),
                None => error,
            })
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

    #[test]
    fn each_failure_answers_its_status() {
        let status = |e: UpstreamError| e.status().as_u16();
        assert_eq!(
            status(UpstreamError::ClientBody(BodyFailure::TooLarge)),
            413
        );
        assert_eq!(status(UpstreamError::ClientBody(BodyFailure::Read)), 400);
        assert_eq!(
            status(UpstreamError::ClientBody(BodyFailure::TimedOut)),
            408
        );
        let full = SlotsFull {
            max: 1,
            waited: Duration::from_secs(1),
        };
        assert_eq!(status(UpstreamError::Full(full)), 503);
        assert_eq!(status(UpstreamError::Timeout(Duration::from_secs(1))), 504);
        assert_eq!(
            status(UpstreamError::ConnectTimeout(Duration::from_secs(1))),
            502
        );
        assert_eq!(status(UpstreamError::NoAuthority), 502);
    }

    #[test]
    fn only_keys_with_a_proxy_header_go_to_the_connections_own_pool() {
        let bounds = Bounds {
            connect: Duration::from_secs(1),
            response: Duration::from_secs(1),
            pool_idle: Duration::from_secs(1),
        };
        let client = UpstreamClient::new(
            bounds,
            None,
            Slots::new(8, crate::metrics::UpstreamCounters::default()),
        )
        .expect("client builds");
        let authority = http::uri::Authority::from_static("127.0.0.1:1");
        let key = |header| Key {
            authority: &authority,
            protocol: Protocol::Http1,
            tls: false,
            header,
        };
        let (mine, theirs) = (ConnPools::default(), ConnPools::default());
        let header = &b"PROXY TCP4 192.0.2.1 192.0.2.9 1 80\r\n"[..];
        let private = client.pool(&key(Some(header)), &mine) as *const Pool;
        assert_eq!(
            private,
            client.pool(&key(Some(header)), &mine) as *const Pool
        );
        assert_ne!(
            private,
            client.pool(&key(Some(header)), &theirs) as *const Pool
        );
        assert_ne!(private, client.pool(&key(None), &mine) as *const Pool);
        assert_eq!(
            client.pool(&key(None), &mine) as *const Pool,
            client.pool(&key(None), &theirs) as *const Pool,
            "one shared pool"
        );
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
