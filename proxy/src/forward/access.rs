//! The access log: one `info` event per request on target `trustgate::access`, written
//! when the response body ends or is dropped, so that `bytes` (response body bytes) and
//! `duration_ms` cover the whole exchange. Query values are redacted on request. Nothing
//! here logs above `info`, since every request is a client's to trigger.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Method, StatusCode, Uri, Version};
use hyper::body::{Body, Frame, SizeHint};

/// The log target, so access lines can be routed apart from the rest.
pub const ACCESS_TARGET: &str = "trustgate::access";

const REDACTED: &str = "<redacted>";

/// What the access line says about one request.
#[derive(Debug)]
pub(super) struct AccessRecord {
    client: SocketAddr,
    peer: SocketAddr,
    method: Method,
    path: String,
    version: Version,
    started: Instant,
    /// The host the request named, as received.
    pub(super) host: Option<String>,
    /// The upstream chosen (its authority), once there is one.
    pub(super) upstream: Option<String>,
    pub(super) status: StatusCode,
}

impl AccessRecord {
    pub(super) fn start(
        client: SocketAddr,
        peer: SocketAddr,
        method: &Method,
        uri: &Uri,
        version: Version,
        redact: bool,
    ) -> AccessRecord {
        let path = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        AccessRecord {
            client,
            peer,
            method: method.clone(),
            path: if redact {
                redact_query(path)
            } else {
                path.to_owned()
            },
            version,
            started: Instant::now(),
            host: None,
            upstream: None,
            status: StatusCode::OK,
        }
    }

    fn emit(&self, bytes: u64) {
        let duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::info!(
            target: ACCESS_TARGET,
            client = %self.client.ip(),
            client_port = self.client.port(),
            peer = %self.peer,
            method = %self.method,
            host = self.host.as_deref().unwrap_or("-"),
            path = %self.path,
            version = ?self.version,
            status = self.status.as_u16(),
            upstream = self.upstream.as_deref().unwrap_or("-"),
            bytes,
            duration_ms,
            "access"
        );
    }
}

/// `path?a=1&b` → `path?a=<redacted>&b`: keys stay, values go.
pub(super) fn redact_query(path_and_query: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_owned();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) => format!("{key}={REDACTED}"),
            None => pair.to_owned(),
        })
        .collect();
    format!("{path}?{}", pairs.join("&"))
}

/// A response body that counts its bytes and writes the access line when it ends, fails
/// or is dropped, whichever comes first.
#[derive(Debug)]
pub(super) struct AccessBody<B> {
    inner: B,
    record: Option<AccessRecord>,
    bytes: u64,
}

impl<B> AccessBody<B> {
    pub(super) fn new(inner: B, record: AccessRecord) -> AccessBody<B> {
        AccessBody {
            inner,
            record: Some(record),
            bytes: 0,
        }
    }

    fn finish(&mut self) {
        if let Some(record) = self.record.take() {
            record.emit(self.bytes);
        }
    }
}

impl<B> Drop for AccessBody<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<B> Body for AccessBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Pending => {}
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, Bytes::len);
                this.bytes = this.bytes.saturating_add(len as u64);
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None | Some(Err(_))) => this.finish(),
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_redacted_and_keys_kept() {
        assert_eq!(
            redact_query("/a?token=s3cret&flag&x=1=2"),
            "/a?token=<redacted>&flag&x=<redacted>"
        );
        assert_eq!(redact_query("/a/b"), "/a/b");
        assert_eq!(redact_query("/a?"), "/a?");
    }

    #[test]
    fn record_keeps_the_path_redacted_or_not() {
        let uri: Uri = "/p?k=v".parse().expect("test uri");
        let addr: SocketAddr = "192.0.2.1:1".parse().expect("test addr");
        let r = AccessRecord::start(addr, addr, &Method::GET, &uri, Version::HTTP_11, true);
        assert_eq!(r.path, "/p?k=<redacted>");
        let r = AccessRecord::start(addr, addr, &Method::GET, &uri, Version::HTTP_11, false);
        assert_eq!(r.path, "/p?k=v");
    }
}
