//! The bodies in both directions, each bounded in time. The request body on its way
//! upstream: streamed frame by frame, never collected; cut off with an error once it
//! passes `request_max_body_size` (which the caller turns into a 413) or pauses longer
//! than `request_body_timeout` (a 408); recording how it failed ([`BodyFate`]), so the
//! upstream client can tell the client's fault from the upstream's without looking into
//! hyper's error; and reporting when it has been sent whole or abandoned, which starts
//! the upstream response timeout. The upstream's response body
//! on its way down ([`UpstreamBody`]): ended with an error when it pauses longer than
//! `upstream_read_timeout`, which hyper turns into a cut-short response. Request trailers
//! lose the names a client may not set (see `hygiene`). A request body read to its end
//! fires the [`BodyEnd`] the listener set on its request, if any.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::deadline::Deadline;
use crate::metrics::{TimeoutCounts, TimeoutKind};

use super::hygiene::NameGuard;

/// Told when a request body has been read to its end (see [`BodyEnd`]).
pub(crate) trait BodyEnded: Send + Sync {
    fn body_ended(&self);
}

/// A request extension the listener sets on an HTTP/1.1 request with a body: fired once,
/// when the forwarder has read the body to its end, so the listener knows hyper's read
/// side is at a request boundary again. A body cut short or abandoned never fires it.
#[derive(Clone)]
pub(crate) struct BodyEnd(Arc<dyn BodyEnded>);

impl BodyEnd {
    pub(crate) fn new(told: Arc<dyn BodyEnded>) -> BodyEnd {
        BodyEnd(told)
    }

    /// The body has been read to its end.
    pub(crate) fn fire(self) {
        self.0.body_ended();
    }
}

impl std::fmt::Debug for BodyEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BodyEnd")
    }
}

/// Why the request body stopped.
#[derive(Debug, thiserror::Error)]
pub(super) enum RequestBodyError {
    #[error("request body is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("reading the request body from the client failed")]
    Read(#[source] hyper::Error),
    #[error("the client sent no more of its request body for {0:?} (request_body_timeout)")]
    TimedOut(Duration),
}

/// A body that must not pause for longer than `limit` between two frames. The timer is
/// made on the first pause only: most bodies never pause.
#[derive(Debug)]
struct Pause {
    limit: Duration,
    /// When the last frame came (or the body was first polled).
    last: Option<Instant>,
    deadline: Deadline,
}

impl Pause {
    fn new(limit: Duration) -> Pause {
        Pause {
            limit,
            last: None,
            deadline: Deadline::default(),
        }
    }

    /// A frame came (or the body ended): the next pause starts now.
    fn progressed(&mut self) {
        self.last = None;
    }

    /// The body returned `Pending`: whether it has now paused for longer than the limit.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let last = *self.last.get_or_insert_with(Instant::now);
        self.deadline.passed(last + self.limit, cx)
    }
}

/// The client's body, as sent upstream.
#[derive(Debug)]
pub(super) struct RequestBody {
    inner: Incoming,
    limit: Option<u64>,
    seen: u64,
    fate: BodyFate,
    pause: Pause,
    /// Fired (or dropped, which the receiver sees the same way) once the body has ended,
    /// failed, or been dropped by the upstream client.
    done: Option<oneshot::Sender<()>>,
    /// Filters the trailers, when set (see [`RequestBody::guarding_trailers`]).
    names: Option<Arc<NameGuard>>,
    /// Fired once the body has been read to its end (see [`RequestBody::telling`]).
    end: Option<BodyEnd>,
}

/// The caller's view of a [`RequestBody`] in flight.
#[derive(Debug)]
pub(super) struct BodyWatch {
    /// Resolves once the body is finished with, either way.
    pub(super) done: oneshot::Receiver<()>,
    pub(super) fate: BodyFate,
}

/// How the client's request body failed, when it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum BodyFailure {
    #[error("the request body passed request_max_body_size")]
    TooLarge,
    #[error("reading the request body from the client failed")]
    Read,
    #[error("the client paused its request body for longer than request_body_timeout")]
    TimedOut,
}

/// Set once, when the body fails; read by the upstream client after a failed request.
#[derive(Clone, Debug, Default)]
pub(super) struct BodyFate(Arc<AtomicU8>);

impl BodyFate {
    pub(super) fn get(&self) -> Option<BodyFailure> {
        match self.0.load(Ordering::Acquire) {
            1 => Some(BodyFailure::TooLarge),
            2 => Some(BodyFailure::Read),
            3 => Some(BodyFailure::TimedOut),
            _ => None,
        }
    }

    fn set(&self, failure: BodyFailure) {
        let code = match failure {
            BodyFailure::TooLarge => 1,
            BodyFailure::Read => 2,
            BodyFailure::TimedOut => 3,
        };
        self.0.store(code, Ordering::Release);
    }
}

impl RequestBody {
    /// `inner`, at most `limit` bytes long, pausing at most `timeout` between frames.
    pub(super) fn new(
        inner: Incoming,
        limit: Option<u64>,
        timeout: Duration,
    ) -> (RequestBody, BodyWatch) {
        let (tx, rx) = oneshot::channel();
        let fate = BodyFate::default();
        let mut body = RequestBody {
            inner,
            limit,
            seen: 0,
            fate: fate.clone(),
            pause: Pause::new(timeout),
            done: Some(tx),
            names: None,
            end: None,
        };
        if body.inner.is_end_stream() {
            body.finish();
        }
        (body, BodyWatch { done: rx, fate })
    }

    /// Trailers pass through `names`: none of the names it refuses reaches the upstream.
    pub(super) fn guarding_trailers(mut self, names: Arc<NameGuard>) -> RequestBody {
        self.names = Some(names);
        self
    }

    /// `end` is fired once the body has been read to its end (at once if it already has).
    pub(super) fn telling(mut self, end: Option<BodyEnd>) -> RequestBody {
        self.end = end;
        if self.inner.is_end_stream() {
            self.ended();
        }
        self
    }

    /// The body has been read to its end: tells whoever asked to know.
    fn ended(&mut self) {
        if let Some(end) = self.end.take() {
            end.fire();
        }
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
            if this.pause.expired(cx) {
                this.fate.set(BodyFailure::TimedOut);
                this.finish();
                return Poll::Ready(Some(Err(RequestBodyError::TimedOut(this.pause.limit))));
            }
            return Poll::Pending;
        };
        this.pause.progressed();
        match polled {
            None => {
                this.finish();
                this.ended();
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                this.fate.set(BodyFailure::Read);
                this.finish();
                Poll::Ready(Some(Err(RequestBodyError::Read(e))))
            }
            Some(Ok(frame)) => {
                let len = frame.data_ref().map_or(0, Bytes::len);
                this.seen = this.seen.saturating_add(len as u64);
                if let Some(limit) = this.limit.filter(|&l| this.seen > l) {
                    this.fate.set(BodyFailure::TooLarge);
                    this.finish();
                    return Poll::Ready(Some(Err(RequestBodyError::TooLarge { limit })));
                }
                if this.inner.is_end_stream() {
                    this.finish();
                    this.ended();
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

/// Why the body sent to the client ended early.
#[derive(Debug, thiserror::Error)]
pub enum ResponseBodyError {
    #[error("reading the response body from the upstream failed")]
    Upstream(#[source] hyper::Error),
    #[error("the upstream sent no more of its response body for {0:?} (upstream_read_timeout)")]
    TimedOut(Duration),
}

/// An upstream's response body, ended with [`ResponseBodyError::TimedOut`] when it pauses
/// for longer than `upstream_read_timeout` (counted).
#[derive(Debug)]
pub(super) struct UpstreamBody<B = Incoming> {
    inner: B,
    pause: Pause,
    counts: Arc<TimeoutCounts>,
}

impl<B> UpstreamBody<B> {
    pub(super) fn new(inner: B, timeout: Duration, counts: Arc<TimeoutCounts>) -> Self {
        UpstreamBody {
            inner,
            pause: Pause::new(timeout),
            counts,
        }
    }
}

impl<B> Body for UpstreamBody<B>
where
    B: Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    type Data = Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending if this.pause.expired(cx) => {
                this.counts.bump(TimeoutKind::UpstreamRead);
                Poll::Ready(Some(Err(ResponseBodyError::TimedOut(this.pause.limit))))
            }
            Poll::Pending => Poll::Pending,
            Poll::Ready(polled) => {
                this.pause.progressed();
                Poll::Ready(polled.map(|r| r.map_err(ResponseBodyError::Upstream)))
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use futures_util::StreamExt;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    /// A body that yields one frame, then nothing, ever.
    fn stalled() -> impl Body<Data = Bytes, Error = Infallible> + Unpin {
        let frames = futures_util::stream::iter([Ok(Frame::data(Bytes::from_static(b"ab")))])
            .chain(futures_util::stream::pending());
        StreamBody::new(Box::pin(frames))
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_longer_than_the_limit_ends_the_body() {
        let mut pause = Pause::new(Duration::from_secs(60));
        let mut body = std::pin::pin!(stalled());
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().expect("data"), "ab");
        pause.progressed();
        let t0 = Instant::now();
        let ended = std::future::poll_fn(|cx| match body.as_mut().poll_frame(cx) {
            Poll::Pending if pause.expired(cx) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => panic!("the stalled body yielded"),
        });
        ended.await;
        assert_eq!(Instant::now() - t0, Duration::from_secs(60));
    }
}
