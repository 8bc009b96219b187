//! A connection's clock: what it waits for and since when, so that every wait after the
//! PROXY header is bounded. [`Activity`] counts the requests in flight (the service marks
//! them, [`InFlight`]) and knows when the connection last went idle; [`Timed`] wraps the
//! client stream, notes the first byte of each HTTP/1 request head, fails writes that make
//! no progress for `send_timeout`, and answers 408 when the watchdog ([`expiry`]) finds a
//! head late. [`StreamExec`] runs h2 streams, ending one whose window stays shut.
//! HTTP/1: [`Activity::watch_request`] and [`Timed`] also find the moment a connection has
//! been idle long enough ([`RELEASE_AFTER`]) for its hyper connection to be let go (see
//! `serving::serve_h1`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::{Method, Request, header};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::debug;

use crate::deadline::Deadline;
use crate::forward::{BodyEnd, BodyEnded};
use crate::metrics::{TimeoutCounts, TimeoutKind};

/// How long an HTTP/1 connection stays idle between requests before its hyper connection,
/// and with it hyper's read and write buffers (16 KiB), is let go. A client that keeps
/// sending never waits this long and pays nothing; one that pauses pays for a new hyper
/// connection (a few allocations) at its next request.
pub(super) const RELEASE_AFTER: Duration = Duration::from_millis(100);

/// What a client is told when its request head came too slowly (RFC 9110 §15.5.9).
const REQUEST_TIMEOUT_RESPONSE: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// Milliseconds from `epoch` to now, plus one, so that 0 can mean "not yet".
fn stamp(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis())
        .unwrap_or(u64::MAX - 1)
        .saturating_add(1)
}

/// The instant of a [`stamp`].
fn at(epoch: Instant, stamp: u64) -> Instant {
    epoch + Duration::from_millis(stamp.saturating_sub(1))
}

/// What one client connection is doing, shared by its stream wrapper, its service and its
/// watchdog.
#[derive(Debug)]
pub(crate) struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    /// [`stamp`] of the moment the last request ended; 0: none has ended yet.
    idle_since: AtomicU64,
    /// [`stamp`] of the first byte read while no request was in flight (HTTP/1 only): a
    /// request head has begun. 0: none has.
    head_since: AtomicU64,
    /// Set by the watchdog when a begun head is late; [`Timed`] then answers 408.
    late: AtomicBool,
    /// The task reading the connection, woken to see `late`.
    reader: AtomicWaker,
    /// Set once the connection is picked to be shed; `shed` wakes its task.
    shedding: AtomicBool,
    shed: Notify,
    /// HTTP/1: request bodies begun and not yet read to their end. While one is, hyper
    /// may still be reading it, so the connection is not between requests.
    bodies_open: AtomicUsize,
    /// HTTP/1: set for good once a request asks to switch protocols (`Upgrade`,
    /// `CONNECT`): hyper hands such a connection to the tunnel, never back.
    upgrading: AtomicBool,
    /// HTTP/1: set by [`Timed`] once the connection has been idle for [`RELEASE_AFTER`];
    /// cleared by the serving loop when it has acted on it (or found a request begun).
    release_due: AtomicBool,
}

/// Why the watchdog ends a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Expiry {
    /// No complete request head within `request_header_timeout`; `begun` when some of it
    /// had come, so that a 408 can be answered.
    RequestHeader { begun: bool },
    /// Idle between requests (HTTP/1.1) or with no stream open (h2).
    Keepalive,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            late: AtomicBool::new(false),
            reader: AtomicWaker::new(),
            shedding: AtomicBool::new(false),
            shed: Notify::new(),
            bodies_open: AtomicUsize::new(0),
            upgrading: AtomicBool::new(false),
            release_due: AtomicBool::new(false),
        })
    }

    /// Since when the connection has had no request in flight; `None` while one is, or
    /// once it has been picked to be shed.
    pub(crate) fn idle_from(&self) -> Option<Instant> {
        if !self.idle() || self.shedding.load(Ordering::Acquire) {
            return None;
        }
        match self.idle_since.load(Ordering::Acquire) {
            0 => Some(self.epoch),
            since => Some(at(self.epoch, since)),
        }
    }

    /// Picks the connection to be shed; false if it already was.
    pub(crate) fn shed(&self) -> bool {
        if self.shedding.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.shed.notify_one();
        true
    }

    /// Completes once the connection has been picked to be shed.
    pub(crate) async fn shed_picked(&self) {
        self.shed.notified().await;
    }

    /// A request has begun; it is in flight until the guard is dropped (with its
    /// response body, or when the request is abandoned).
    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }

    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// HTTP/1: notes what of `req` decides whether its connection can later be let go of
    /// between requests (see [`Activity::releasable_from`]): a request that asks to switch
    /// protocols pins the connection to its hyper connection for good; one with a body
    /// carries a [`BodyEnd`] for the forwarder to fire once the body is read to its end.
    pub(super) fn watch_request<B: Body>(self: &Arc<Self>, req: &mut Request<B>) {
        if req.method() == Method::CONNECT || req.headers().contains_key(header::UPGRADE) {
            self.upgrading.store(true, Ordering::Release);
        }
        if !req.body().is_end_stream() {
            self.bodies_open.fetch_add(1, Ordering::AcqRel);
            let end: Arc<dyn BodyEnded> = Arc::clone(self) as Arc<dyn BodyEnded>;
            req.extensions_mut().insert(BodyEnd::new(end));
        }
    }

    /// HTTP/1: since when the connection has been between requests in every respect that
    /// lets its hyper connection be let go without losing or misreading a byte: no request
    /// in flight, every request body read to its end (so hyper's read side is at a request
    /// boundary), no byte of the next head read yet, no upgrade asked for, at least one
    /// request served. `None` otherwise.
    fn releasable_from(&self) -> Option<Instant> {
        if self.upgrading.load(Ordering::Acquire)
            || self.bodies_open.load(Ordering::Acquire) != 0
            || self.head_since.load(Ordering::Relaxed) != 0
            || self.idle_since.load(Ordering::Acquire) == 0
        {
            return None;
        }
        self.idle_from()
    }

    /// HTTP/1: whether the connection is still releasable now that its release came due
    /// (it may have begun a request since); clears the mark either way when it is not.
    pub(super) fn take_release(&self) -> bool {
        let releasable = self.releasable_from().is_some();
        if !releasable {
            self.release_due.store(false, Ordering::Release);
        }
        releasable
    }

    /// HTTP/1: the release is over (the hyper connection is gone); the next one starts
    /// clean.
    pub(super) fn end_release(&self) {
        self.release_due.store(false, Ordering::Release);
    }

    /// Completes once [`Timed`] has found the connection idle for [`RELEASE_AFTER`]. It
    /// registers no waker: [`Timed`] wakes the task when it sets the mark.
    pub(super) async fn release_due(&self) {
        std::future::poll_fn(|_| {
            if self.release_due.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    /// Bytes were read: the start of a request head, if none is in flight.
    fn read_some(&self) {
        if self.idle() && self.head_since.load(Ordering::Relaxed) == 0 {
            self.head_since.store(stamp(self.epoch), Ordering::Relaxed);
        }
    }

    /// When the connection expires if nothing changes, and why; `None` while a request is
    /// in flight (its own timeouts bound it then). HTTP/1 (`heads`): the first request's
    /// head is due `header` after accept; a later one's `header` after its first byte;
    /// between requests the keep-alive deadline runs. h2: the keep-alive deadline,
    /// whenever no stream is open.
    fn deadline(
        &self,
        heads: bool,
        header: Duration,
        keepalive: Duration,
    ) -> Option<(Instant, Expiry)> {
        if !self.idle() {
            return None;
        }
        let idle_since = self.idle_since.load(Ordering::Acquire);
        if !heads {
            return Some((at(self.epoch, idle_since) + keepalive, Expiry::Keepalive));
        }
        let head_since = self.head_since.load(Ordering::Relaxed);
        let begun = head_since != 0;
        if idle_since == 0 {
            // The first request: its head is due `header` after accept, however late its
            // first byte came.
            return Some((self.epoch + header, Expiry::RequestHeader { begun }));
        }
        if begun {
            let due = at(self.epoch, head_since) + header;
            return Some((due, Expiry::RequestHeader { begun }));
        }
        Some((at(self.epoch, idle_since) + keepalive, Expiry::Keepalive))
    }

    /// Ends a begun request head that the watchdog found late: [`Timed`] answers 408 on
    /// its next read, and the connection ends.
    pub(super) fn expire_head(&self) {
        self.late.store(true, Ordering::Release);
        self.reader.wake();
    }
}

impl BodyEnded for Activity {
    fn body_ended(&self) {
        self.bodies_open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request in flight (see [`Activity::begin`]).
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.head_since.store(0, Ordering::Relaxed);
        activity
            .idle_since
            .store(stamp(activity.epoch), Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Completes when the connection has waited too long for its next request, with why.
/// Sleeps to the current deadline, or for the shorter of the two timeouts if that comes
/// first, and looks again: it never fires late, and costs one timer per connection.
pub(super) async fn expiry(
    activity: &Activity,
    heads: bool,
    header: Duration,
    keepalive: Duration,
) -> Expiry {
    loop {
        match expiry_or_wake(activity, heads, header, keepalive, Instant::now()) {
            Ok(expired) => return expired,
            Err(wake) => tokio::time::sleep_until(wake).await,
        }
    }
}

/// One look of [`expiry`] at `now`: the wait that has expired, or when to look again.
pub(super) fn expiry_or_wake(
    activity: &Activity,
    heads: bool,
    header: Duration,
    keepalive: Duration,
    now: Instant,
) -> Result<Expiry, Instant> {
    let shortest = header.min(keepalive);
    match activity.deadline(heads, header, keepalive) {
        Some((deadline, why)) if deadline <= now => Ok(why),
        // A request beginning or ending after this look can only set a deadline at
        // least `shortest` from now: waking by then is never late.
        Some((deadline, _)) => Err(deadline.min(now + shortest)),
        None => Err(now + shortest),
    }
}

/// The waits a connection's watchdog and [`Timed`] bound, and where their expiries are
/// counted: one per generation, shared by its connections (each idle connection would
/// otherwise carry its own copy).
pub(crate) struct WaitLimits {
    /// `request_header_timeout`, `keepalive_timeout`, `send_timeout`.
    pub(super) header: Duration,
    pub(super) keepalive: Duration,
    pub(super) send: Duration,
    pub(super) counts: Arc<TimeoutCounts>,
}

impl WaitLimits {
    /// Counts and logs a wait that ran out (`expired`), before the connection is closed
    /// or answered.
    pub(super) fn count_expiry(&self, expired: Expiry) {
        let kind = match expired {
            Expiry::Keepalive => TimeoutKind::Keepalive,
            Expiry::RequestHeader { .. } => TimeoutKind::RequestHeader,
        };
        self.counts.bump(kind);
        debug!(
            timeout = kind.label(),
            "connection waited too long; closing"
        );
    }
}

/// The client stream, timed: see the module header.
pub(super) struct Timed<S> {
    inner: S,
    activity: Arc<Activity>,
    /// HTTP/1: reads while idle begin a request head.
    heads: bool,
    /// Since when a write has been stalled, while one is.
    stalled: Option<Instant>,
    stall: Deadline,
    /// `send` bounds a stalled write.
    limits: Arc<WaitLimits>,
    /// HTTP/1: hyper is reading through this stream (not the serving loop between two
    /// hyper connections), so an idle read may find the connection due for release.
    serving: bool,
    release: Deadline,
}

impl<S> Timed<S> {
    pub(super) fn new(
        inner: S,
        activity: Arc<Activity>,
        heads: bool,
        limits: Arc<WaitLimits>,
    ) -> Timed<S> {
        Timed {
            inner,
            activity,
            heads,
            stalled: None,
            stall: Deadline::default(),
            limits,
            serving: true,
            release: Deadline::default(),
        }
    }

    /// HTTP/1: whether hyper reads through the stream from now on (see
    /// [`Activity::release_due`]). Out of service, the release timer is freed.
    pub(super) fn set_serving(&mut self, serving: bool) {
        self.serving = serving;
        if !serving {
            self.release = Deadline::default();
        }
    }

    /// The wrapped stream.
    pub(super) fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped stream.
    pub(super) fn get_ref(&self) -> &S {
        &self.inner
    }

    /// HTTP/1, under hyper: once the connection has been releasable for
    /// [`RELEASE_AFTER`], marks it due and wakes the task for the serving loop to see it;
    /// until then, the task is woken when that time comes.
    fn check_release(&mut self, cx: &mut Context<'_>) {
        if self.serving
            && let Some(since) = self.activity.releasable_from()
            && self.release.passed(since + RELEASE_AFTER, cx)
        {
            self.activity.release_due.store(true, Ordering::Release);
            cx.waker().wake_by_ref();
        }
    }

    /// A write returned `Pending`: runs the stall clock (started at the first such
    /// write), failing once it has run for `send_timeout`.
    fn check_stall(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let since = *self.stalled.get_or_insert_with(Instant::now);
        let send = self.limits.send;
        let expired = self.stall.passed(since + send, cx);
        if expired {
            self.limits.counts.bump(TimeoutKind::Send);
            debug!(send_timeout = ?send, "client took no bytes: send_timeout");
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "send_timeout: the client took no bytes",
            ));
        }
        Ok(())
    }

    /// What a write returned, with the stall clock run or stopped.
    fn timed<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending => match self.check_stall(cx) {
                Ok(()) => Poll::Pending,
                Err(err) => Poll::Ready(Err(err)),
            },
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Timed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.activity.late.load(Ordering::Acquire) {
            // The head is late and nothing of a response has been written for it: a 408
            // fits in any socket buffer, and is tried once; then the connection ends.
            let _best_effort = Pin::new(&mut this.inner).poll_write(cx, REQUEST_TIMEOUT_RESPONSE);
            let _best_effort = Pin::new(&mut this.inner).poll_flush(cx);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request_header_timeout",
            )));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) if this.heads && buf.filled().len() > before => {
                this.activity.read_some();
            }
            Poll::Pending if this.heads => {
                this.activity.reader.register(cx.waker());
                this.check_release(cx);
            }
            _ => {}
        }
        polled
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Timed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.timed(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.timed(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        if polled.is_ready() && this.heads {
            // hyper flushes as a response ends: the release clock starts here, since hyper
            // may not read again before the next request arrives.
            this.check_release(cx);
        }
        this.timed(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.activity.release_due.load(Ordering::Acquire) {
            // hyper is being let go of, not the connection: its bytes are out (hyper
            // flushes before it ends), and the stream stays open for the next request.
            let polled = Pin::new(&mut this.inner).poll_flush(cx);
            return this.timed(cx, polled);
        }
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.timed(cx, polled)
    }
}

tokio::task_local! {
    /// The send clock of the h2 stream whose task is running (see [`StreamExec`]).
    static STREAM: Arc<StreamClock>;
}

/// When an h2 stream's response body last handed hyper a frame that hyper has not come
/// back for: hyper polls the body again as soon as the stream has window, so a long wait
/// here is a client that keeps its window shut.
#[derive(Debug)]
pub(super) struct StreamClock {
    epoch: Instant,
    /// [`stamp`] of the frame handed over; 0 while the body is being polled.
    waiting: AtomicU64,
}

impl StreamClock {
    /// The clock of the h2 stream this task runs, if it runs one.
    pub(super) fn current() -> Option<Arc<StreamClock>> {
        STREAM.try_with(Arc::clone).ok()
    }

    fn handed_over(&self) {
        self.waiting.store(stamp(self.epoch), Ordering::Relaxed);
    }

    fn polled(&self) {
        self.waiting.store(0, Ordering::Relaxed);
    }

    fn waiting_since(&self) -> Option<Instant> {
        match self.waiting.load(Ordering::Relaxed) {
            0 => None,
            since => Some(at(self.epoch, since)),
        }
    }
}

/// hyper's executor for one h2 connection: each stream runs in a task of its own (as
/// with `TokioExecutor`), with a [`StreamClock`] its response body marks, and ends —
/// hyper then resets the stream — once a frame has waited `send_timeout` for window.
#[derive(Clone, Debug)]
pub(super) struct StreamExec {
    pub(super) send: Duration,
    pub(super) counts: Arc<TimeoutCounts>,
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        let clock = Arc::new(StreamClock {
            epoch: Instant::now(),
            waiting: AtomicU64::new(0),
        });
        // Built in place and moved once, into the task: a stream's future is several KB.
        tokio::spawn(SendBound {
            stream: STREAM.scope(Arc::clone(&clock), stream),
            clock,
            stall: Deadline::default(),
            send: self.send,
            counts: Arc::clone(&self.counts),
        });
    }
}

pin_project_lite::pin_project! {
    /// An h2 stream's task: the stream, ended once a frame has waited `send` for window.
    struct SendBound<F: Future> {
        #[pin]
        stream: tokio::task::futures::TaskLocalFuture<Arc<StreamClock>, F>,
        clock: Arc<StreamClock>,
        stall: Deadline,
        send: Duration,
        counts: Arc<TimeoutCounts>,
    }
}

impl<F: Future<Output = ()>> Future for SendBound<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.stream.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        let Some(since) = this.clock.waiting_since() else {
            return Poll::Pending;
        };
        if !this.stall.passed(since + *this.send, cx) {
            return Poll::Pending;
        }
        this.counts.bump(TimeoutKind::Send);
        debug!(send_timeout = ?this.send, "h2 stream window stayed shut: send_timeout");
        Poll::Ready(())
    }
}

/// A response body on its way to the client: holds its request [`InFlight`], and marks
/// the h2 stream's [`StreamClock`] as it hands frames over.
pub(super) struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
    clock: Option<Arc<StreamClock>>,
}

impl<B> Tracked<B> {
    pub(super) fn new(inner: B, in_flight: InFlight, clock: Option<Arc<StreamClock>>) -> Self {
        Tracked {
            inner,
            _in_flight: in_flight,
            clock,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if let Some(clock) = &this.clock {
            clock.polled();
        }
        let polled = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let (Some(clock), Some(Ok(frame))) = (&this.clock, &polled)
            && frame.is_data()
        {
            clock.handed_over();
        }
        Poll::Ready(polled)
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

    const HEADER: Duration = Duration::from_secs(60);
    const KEEPALIVE: Duration = Duration::from_secs(75);

    #[tokio::test(start_paused = true)]
    async fn the_first_request_gets_the_head_timeout_from_the_start() {
        let a = Activity::new();
        let t0 = Instant::now();
        assert_eq!(
            expiry(&a, true, HEADER, KEEPALIVE).await,
            Expiry::RequestHeader { begun: false }
        );
        assert_eq!(Instant::now() - t0, HEADER);
        // A first byte that comes late does not move the first head's deadline.
        let a = Activity::new();
        let t0 = Instant::now();
        tokio::time::advance(HEADER - Duration::from_secs(1)).await;
        a.read_some();
        assert_eq!(
            expiry(&a, true, HEADER, KEEPALIVE).await,
            Expiry::RequestHeader { begun: true }
        );
        assert_eq!(Instant::now() - t0, HEADER);
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_head_is_timed_from_its_first_byte_and_whole() {
        let a = Activity::new();
        drop(a.begin());
        let t0 = Instant::now();
        tokio::time::advance(Duration::from_secs(10)).await;
        a.read_some();
        tokio::time::advance(Duration::from_secs(30)).await;
        // More bytes do not move the deadline: the head has one deadline, not one per read.
        a.read_some();
        assert_eq!(
            expiry(&a, true, HEADER, KEEPALIVE).await,
            Expiry::RequestHeader { begun: true }
        );
        assert_eq!(Instant::now() - t0, Duration::from_secs(70));
    }

    #[tokio::test(start_paused = true)]
    async fn between_requests_the_keepalive_timeout_runs_and_in_flight_stops_it() {
        let a = Activity::new();
        let request = a.begin();
        a.read_some(); // body bytes: not a head
        tokio::time::advance(Duration::from_secs(500)).await;
        assert_eq!(
            a.deadline(true, HEADER, KEEPALIVE),
            None,
            "busy: no deadline"
        );
        drop(request);
        let ended = Instant::now();
        assert_eq!(expiry(&a, true, HEADER, KEEPALIVE).await, Expiry::Keepalive);
        assert_eq!(Instant::now() - ended, KEEPALIVE);
    }

    #[tokio::test(start_paused = true)]
    async fn h2_only_knows_the_keepalive_timeout() {
        let a = Activity::new();
        a.read_some();
        let t0 = Instant::now();
        assert_eq!(
            expiry(&a, false, HEADER, KEEPALIVE).await,
            Expiry::Keepalive
        );
        assert_eq!(Instant::now() - t0, KEEPALIVE);
    }
}
