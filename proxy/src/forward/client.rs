//! The upstream client: hyper-util's pooled legacy client over hyper-rustls (ring provider;
//! upstream certificates verified against the Mozilla roots of webpki-roots), one pool per
//! protocol choice, the choice itself (rpxy's rules), and the response timeout that becomes
//! a 504. Connection failures surface as errors; the caller turns them into a 502.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Request, Response, Version, header};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::{ClientConfig, RootCertStore};
use tokio::sync::oneshot;

use super::body::RequestBody;
use crate::config::UpstreamHttp;

type Pool = Client<HttpsConnector<HttpConnector>, RequestBody>;

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
}

/// The connection and response bounds of the upstream client.
#[derive(Clone, Copy, Debug)]
pub(super) struct Bounds {
    pub(super) connect: Duration,
    pub(super) response: Duration,
    pub(super) pool_idle: Duration,
}

/// The pools, one per [`Protocol`].
#[derive(Debug)]
pub(super) struct UpstreamClient {
    http1: Pool,
    alpn: Pool,
    http2: Pool,
    response_timeout: Duration,
}

impl UpstreamClient {
    /// Builds the pools; `roots` replaces the Mozilla roots when given.
    pub(super) fn new(
        bounds: Bounds,
        roots: Option<RootCertStore>,
    ) -> Result<UpstreamClient, rustls::Error> {
        let roots = roots.unwrap_or_else(|| RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
        let tls =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(bounds.connect));
        let builder = || {
            HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_or_http()
        };
        let pool = || {
            let mut b = Client::builder(TokioExecutor::new());
            b.pool_idle_timeout(bounds.pool_idle)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new());
            b
        };
        Ok(UpstreamClient {
            http1: pool().build(builder().enable_http1().wrap_connector(http.clone())),
            alpn: pool().build(
                builder()
                    .enable_http1()
                    .enable_http2()
                    .wrap_connector(http.clone()),
            ),
            http2: pool()
                .http2_only(true)
                .build(builder().enable_http2().wrap_connector(http)),
            response_timeout: bounds.response,
        })
    }

    /// Sends `request` and waits for the response head. The response timeout starts once
    /// the request body has been sent (`body_done`), so a slow upload is not a slow
    /// upstream; connecting is bounded by the connect timeout.
    pub(super) async fn send(
        &self,
        request: Request<RequestBody>,
        protocol: Protocol,
        body_done: oneshot::Receiver<()>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let pool = match protocol {
            Protocol::Http1 => &self.http1,
            Protocol::Alpn => &self.alpn,
            Protocol::Http2 => &self.http2,
        };
        let mut response = pool.request(request);
        tokio::select! {
            biased;
            result = &mut response => return result.map_err(UpstreamError::Request),
            // Sent, failed or dropped: the wait for the head starts now either way.
            _ = body_done => {}
        }
        match tokio::time::timeout(self.response_timeout, response).await {
            Ok(result) => result.map_err(UpstreamError::Request),
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
