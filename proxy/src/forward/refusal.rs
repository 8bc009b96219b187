//! [`Refusal`]: a request the proxy answers itself. A leaf of `forward`, used by the
//! request's reading (`request`) and by routing (`route`), so neither imports the other.

use http::StatusCode;

/// Why a request is answered by the proxy instead of an upstream. An expected outcome of
/// routing, not an error: each maps to one status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Missing (HTTP/1.1), repeated, malformed or self-contradicting Host; a path with
    /// dot-segments.
    BadRequest,
    /// No app for the Host on the plain listener and no `default_app`, or no route.
    NotFound,
    /// On the TLS listener: the Host names another server than the app whose certificate
    /// was served.
    Misdirected,
}

impl Refusal {
    pub(super) fn status(self) -> StatusCode {
        match self {
            Refusal::BadRequest => StatusCode::BAD_REQUEST,
            Refusal::NotFound => StatusCode::NOT_FOUND,
            Refusal::Misdirected => StatusCode::MISDIRECTED_REQUEST,
        }
    }
}
