//! The header names trustgate itself sets, removes or rewrites on every request. A leaf
//! module (it imports only `http`), shared by the forwarder, which manages these headers,
//! and the config's validation, which refuses them as the names of configured headers.

use http::header::{self, HeaderName};

/// The `X-Forwarded-For` header name.
pub(crate) const X_FORWARDED_FOR: &str = "x-forwarded-for";
pub(crate) const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the ones RFC 2616 §13.5.1 listed, plus
/// `HTTP2-Settings`, which only an h2c upgrade uses and h2c is never tunnelled), removed
/// in both directions whatever `Connection` says.
pub(crate) const HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HTTP2_SETTINGS,
];

/// Whether the forwarder sets, removes or rewrites `name` itself on every request: the
/// hop-by-hop headers, `Host`, the client-identity headers, `Upgrade-Insecure-Requests`
/// and the framing header `Content-Length`. No configured header may take such a name.
pub(crate) fn is_managed(name: &HeaderName) -> bool {
    let managed = [
        header::HOST,
        header::FORWARDED,
        HeaderName::from_static(X_FORWARDED_FOR),
        X_REAL_IP,
        X_FORWARDED_PROTO,
        X_FORWARDED_PORT,
        X_FORWARDED_HOST,
        header::UPGRADE_INSECURE_REQUESTS,
        header::CONTENT_LENGTH,
    ];
    HOP_BY_HOP.contains(name) || managed.contains(name)
}
