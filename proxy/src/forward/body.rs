//! The request body on its way upstream: streamed frame by frame, never collected; cut
//! off with an error once it passes `request_max_body_size` (which the caller turns into
//! a 413); and reporting when it has been sent whole or abandoned, which starts the
//! upstream response timeout. Trailers lose the names a client may not set (see
//! `hygiene`).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::oneshot;

use super::hygiene::NameGuard;

/// Why the request body stopped.
#[derive(Debug, thiserror::Error)]
pub(super) enum RequestBodyError {
    #[error("request body is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("reading the request body from the client failed")]
    Read(#[source] hyper::Error),
}

/// The client's body, as sent upstream.
#[derive(Debug)]
pub(super) struct RequestBody {
    inner: Incoming,
    limit: Option<u64>,
    seen: u64,
    over: OverLimit,
    /// Fired (or dropped, which the receiver sees the same way) once the body has ended,
    /// failed, or been dropped by the upstream client.
    done: Option<oneshot::Sender<()>>,
    /// Filters the trailers, when set (see [`RequestBody::guarding_trailers`]).
    names: Option<Arc<NameGuard>>,
}

/// The caller's view of a [`RequestBody`] in flight.
#[derive(Debug)]
pub(super) struct BodyWatch {
    /// Resolves once the body is finished with, either way.
    pub(super) done: oneshot::Receiver<()>,
    pub(super) over: OverLimit,
}

/// Set when the body was cut off for passing the limit.
#[derive(Clone, Debug, Default)]
pub(super) struct OverLimit(Arc<AtomicBool>);

impl OverLimit {
    pub(super) fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

impl RequestBody {
    pub(super) fn new(inner: Incoming, limit: Option<u64>) -> (RequestBody, BodyWatch) {
        let (tx, rx) = oneshot::channel();
        let over = OverLimit::default();
        let mut body = RequestBody {
            inner,
            limit,
            seen: 0,
            over: over.clone(),
            done: Some(tx),
            names: None,
        };
        if body.inner.is_end_stream() {
            body.finish();
        }
        (body, BodyWatch { done: rx, over })
    }

    /// Trailers pass through `names`: none of the names it refuses reaches the upstream.
    pub(super) fn guarding_trailers(mut self, names: Arc<NameGuard>) -> RequestBody {
        self.names = Some(names);
        self
    }

    /// A frame as sent upstream: trailers cleaned, data as it came.
    fn clean(&self, mut frame: Frame<Bytes>) -> Frame<Bytes> {
        if let (Some(names), Some(trailers)) = (&self.names, frame.trailers_mut()) {
            names.clean_trailers(trailers);
        }
        frame
    }

    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            // The receiver may be gone (the request was abandoned); nothing to tell then.
            let _unheard = done.send(());
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = self.get_mut();
        let Poll::Ready(polled) = Pin::new(&mut this.inner).poll_frame(cx) else {
            return Poll::Pending;
        };
        match polled {
            None => {
                this.finish();
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                this.finish();
                Poll::Ready(Some(Err(RequestBodyError::Read(e))))
            }
            Some(Ok(frame)) => {
                let len = frame.data_ref().map_or(0, Bytes::len);
                this.seen = this.seen.saturating_add(len as u64);
                if let Some(limit) = this.limit.filter(|&l| this.seen > l) {
                    this.over.set();
                    this.finish();
                    return Poll::Ready(Some(Err(RequestBodyError::TooLarge { limit })));
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(this.clean(frame))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
