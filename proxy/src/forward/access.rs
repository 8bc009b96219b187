//! The access record of one request: started when the request arrives, completed when
//! the response body ends, fails or is dropped (so that `bytes`, response body bytes, and
//! the duration cover the whole exchange), then handed to the [`AccessLog`]. Building it
//! costs one allocation; formatting happens on the access log's writer.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, Request, header};
use hyper::body::{Body, Frame, SizeHint};

use crate::access_log::{AccessLog, Record};

/// A record in the making.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) record: Record,
    started: Instant,
}

impl Pending {
    /// Starts the record of `req` from `client` (recovered) through `peer`.
    pub(super) fn start<B>(
        req: &Request<B>,
        client: std::net::SocketAddr,
        peer: std::net::SocketAddr,
        redact: bool,
    ) -> Pending {
        let headers = req.headers();
        let path = req.uri().path_and_query().map_or("/", PathAndQuery::as_str);
        let host_hint = req
            .uri()
            .authority()
            .map(|a| a.as_str().len())
            .or_else(|| headers.get(header::HOST).map(|h| h.len()))
            .unwrap_or(0);
        let mut record = Record::new(
            client,
            peer,
            req.method().clone(),
            req.version(),
            path,
            value(headers, header::REFERER),
            value(headers, header::USER_AGENT),
            host_hint,
        );
        record.redact = redact;
        Pending {
            record,
            started: Instant::now(),
        }
    }
}

fn value(headers: &HeaderMap, name: header::HeaderName) -> &[u8] {
    headers.get(name).map_or(&[], |v| v.as_bytes())
}

/// A response body that counts its bytes and writes the access line when it ends, fails
/// or is dropped, whichever comes first.
#[derive(Debug)]
pub(super) struct AccessBody<B> {
    inner: B,
    record: Option<(Pending, AccessLog)>,
    bytes: u64,
}

impl<B> AccessBody<B> {
    pub(super) fn new(inner: B, record: Pending, log: AccessLog) -> AccessBody<B> {
        AccessBody {
            inner,
            record: Some((record, log)),
            bytes: 0,
        }
    }

    fn finish(&mut self) {
        if let Some((
            Pending {
                mut record,
                started,
            },
            log,
        )) = self.record.take()
        {
            record.bytes = self.bytes;
            record.duration = started.elapsed();
            record.time = SystemTime::now();
            log.record(record);
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
