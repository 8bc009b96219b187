//! The caps on the upstream side. [`Slots`] is `max_upstream_connections`: every upstream
//! connection of every pool, open or idle, holds a [`Slot`] for its whole life (its IO
//! object carries it, through TLS and upgrades, and gives it back when the socket closes).
//! At the cap, idle pooled connections are closed first to make room, then a connect waits
//! a bounded time and fails with [`SlotsFull`]. [`Turns`] is
//! `max_upstream_connections_per_client`: the upstream requests one downstream connection
//! may have in flight; the rest (h2 streams) wait their turn.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::rt::{Read, ReadBufCursor, Write};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::metrics::UpstreamCounters;

/// No upstream connection could be had within the wait: the process holds
/// `max_upstream_connections` of them and none was idle to close.
#[derive(Debug, thiserror::Error)]
#[error("all {max} upstream connections (max_upstream_connections) stayed busy for {waited:?}")]
pub(super) struct SlotsFull {
    pub(super) max: usize,
    pub(super) waited: Duration,
}

/// A pool that can close an idle connection to make room under the cap.
pub(super) trait Evict: Send + Sync {
    /// Closes one or more idle connections; false when it had none.
    fn evict_idle(&self) -> bool;
}

/// The cap's counts at one instant, as the unit tests read them.
#[cfg(test)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct UpstreamStats {
    /// Upstream connections open now (idle pooled ones included).
    pub(super) open: u64,
    /// `max_upstream_connections`.
    pub(super) max: u64,
    /// Connects that found the cap reached and had to wait.
    pub(super) waited: u64,
    /// Requests answered 503 because no connection freed up within the wait.
    pub(super) refused: u64,
    /// Requests that waited for their connection's `max_upstream_connections_per_client`.
    pub(super) waited_per_client: u64,
}

/// The process-wide cap on upstream connections. Shared by the forwarders a reload
/// replaces, so connections an old one still holds count against the new one's cap;
/// the cap keeps its startup value, like `max_clients` (the open-file limit was sized
/// for it at start).
pub(super) struct Slots {
    max: usize,
    /// Signalled once per slot given back.
    freed: Notify,
    /// The pools to ask for idle connections at the cap, in order.
    pools: Mutex<Vec<Weak<dyn Evict>>>,
    /// The process's series for the cap; `counters.open` is the count of slots taken
    /// (never more than `max`) that the cap enforces.
    counters: UpstreamCounters,
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots")
            .field("open", &self.counters.open.get())
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl Slots {
    pub(super) fn new(max: usize, counters: UpstreamCounters) -> Arc<Slots> {
        counters.max.set(i64::try_from(max).unwrap_or(i64::MAX));
        Arc::new(Slots {
            max,
            freed: Notify::new(),
            pools: Mutex::new(Vec::new()),
            counters,
        })
    }

    /// Adds a pool to ask for idle connections at the cap; it is held weakly and
    /// forgotten once dropped.
    pub(super) fn register(&self, pool: Weak<dyn Evict>) {
        let mut pools = self.lock_pools();
        pools.retain(|p| p.strong_count() > 0);
        pools.push(pool);
    }

    #[cfg(test)]
    pub(super) fn stats(&self) -> UpstreamStats {
        let c = &self.counters;
        UpstreamStats {
            open: u64::try_from(c.open.get()).unwrap_or(0),
            max: self.max as u64,
            waited: c.waited.get(),
            refused: c.refused.get(),
            waited_per_client: c.waited_per_client.get(),
        }
    }

    /// A slot for a new connection: at once when one is free; else after idle
    /// connections were closed to make room or a busy one closed, within `wait`.
    pub(super) async fn take(self: &Arc<Self>, wait: Duration) -> Result<Slot, SlotsFull> {
        if let Some(slot) = self.try_take() {
            return Ok(slot);
        }
        self.counters.waited.inc();
        let waiting = async {
            loop {
                let freed = self.freed.notified();
                let mut freed = std::pin::pin!(freed);
                // Registered before looking, so a slot given back in between wakes us.
                freed.as_mut().enable();
                if let Some(slot) = self.try_take() {
                    return slot;
                }
                // The closed connection's slot comes back once its task drops the socket.
                self.evict_one();
                freed.await;
            }
        };
        match tokio::time::timeout(wait, waiting).await {
            Ok(slot) => Ok(slot),
            Err(_elapsed) => {
                self.counters.refused.inc();
                Err(SlotsFull {
                    max: self.max,
                    waited: wait,
                })
            }
        }
    }

    fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let max = i64::try_from(self.max).unwrap_or(i64::MAX);
        self.counters
            .open
            .inner()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .ok()?;
        Some(Slot {
            slots: Arc::clone(self),
        })
    }

    /// Asks the pools, in order, to close idle connections until one did.
    fn evict_one(&self) -> bool {
        let pools: Vec<Arc<dyn Evict>> =
            self.lock_pools().iter().filter_map(Weak::upgrade).collect();
        pools.iter().any(|pool| pool.evict_idle())
    }

    /// The pool list. A panic while holding the lock leaves it whole (pushes and
    /// retains only), so a poisoned lock is still safe to use.
    fn lock_pools(&self) -> std::sync::MutexGuard<'_, Vec<Weak<dyn Evict>>> {
        self.pools.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn waited_per_client(&self) {
        self.counters.waited_per_client.inc();
    }
}

/// One upstream connection's place under the cap, given back when dropped.
#[derive(Debug)]
pub(super) struct Slot {
    slots: Arc<Slots>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots
            .counters
            .open
            .inner()
            .fetch_sub(1, Ordering::AcqRel);
        self.slots.freed.notify_one();
    }
}

/// An upstream connection's IO holding its [`Slot`], given back when the socket is
/// dropped.
#[derive(Debug)]
pub(super) struct Slotted<T> {
    io: T,
    _slot: Slot,
}

impl<T> Slotted<T> {
    pub(super) fn new(io: T, slot: Slot) -> Slotted<T> {
        Slotted { io, _slot: slot }
    }
}

impl<T: Read + Unpin> Read for Slotted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Slotted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

/// The per-connection cap on upstream requests in flight, made on first use with the
/// cap of the forwarder that first uses it.
#[derive(Debug, Default)]
pub(super) struct Turns(OnceLock<Arc<Semaphore>>);

impl Turns {
    /// A turn to send a request upstream, held until its response has ended: at once
    /// when fewer than `cap` are in flight, else once one ends. Unbounded wait: only this
    /// connection's own requests hold the turns, and a stream reset drops the wait.
    pub(super) fn take(
        &self,
        cap: usize,
        slots: &Slots,
    ) -> impl Future<Output = Option<OwnedSemaphorePermit>> + use<> {
        let semaphore = Arc::clone(
            self.0
                .get_or_init(|| Arc::new(Semaphore::new(cap.clamp(1, Semaphore::MAX_PERMITS)))),
        );
        let now = Arc::clone(&semaphore).try_acquire_owned().ok();
        if now.is_none() {
            slots.waited_per_client();
        }
        async move {
            match now {
                Some(permit) => Some(permit),
                // The semaphore is never closed; `None` would only drop the cap.
                None => semaphore.acquire_owned().await.ok(),
            }
        }
    }
}

/// A response body holding its request's turn until it ends or is dropped.
#[derive(Debug)]
pub(super) struct WithTurn<B> {
    inner: B,
    turn: Option<OwnedSemaphorePermit>,
}

impl<B: Body> WithTurn<B> {
    pub(super) fn new(inner: B, turn: Option<OwnedSemaphorePermit>) -> WithTurn<B> {
        let mut body = WithTurn { inner, turn };
        // An empty body may never be polled.
        if body.inner.is_end_stream() {
            body.turn = None;
        }
        body
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for WithTurn<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) || this.inner.is_end_stream() {
            this.turn = None;
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
    use std::sync::atomic::AtomicBool;

    use super::*;

    const WAIT: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn slots_up_to_the_cap_are_given_at_once_and_one_more_is_not() {
        let slots = Slots::new(3, UpstreamCounters::default());
        let held: Vec<Slot> = (0..3)
            .map(|_| slots.try_take().expect("under the cap"))
            .collect();
        assert_eq!(slots.stats().open, 3);
        assert!(slots.try_take().is_none(), "the cap holds");
        drop(held);
        assert_eq!(slots.stats().open, 0, "dropped slots come back");
        assert!(slots.try_take().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_a_connect_waits_the_bound_then_is_refused_and_counted() {
        let slots = Slots::new(1, UpstreamCounters::default());
        let _busy = slots.take(WAIT).await.expect("the first");
        let started = tokio::time::Instant::now();
        let full = slots.take(WAIT).await.expect_err("the cap is reached");
        assert_eq!(started.elapsed(), WAIT, "waited exactly the bound");
        assert_eq!((full.max, full.waited), (1, WAIT));
        let stats = slots.stats();
        assert_eq!((stats.open, stats.waited, stats.refused), (1, 1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_connect_gets_the_slot_a_closing_connection_gives_back() {
        let slots = Slots::new(1, UpstreamCounters::default());
        let busy = slots.take(WAIT).await.expect("the first");
        let waiter = tokio::spawn({
            let slots = Arc::clone(&slots);
            async move { slots.take(WAIT).await.map(|_slot| ()) }
        });
        tokio::task::yield_now().await;
        drop(busy);
        waiter.await.expect("no panic").expect("the freed slot");
        assert_eq!(slots.stats().refused, 0);
    }

    /// A pool with one idle connection, whose slot it gives back when asked.
    struct OneIdle {
        slot: Mutex<Option<Slot>>,
        asked: AtomicBool,
    }

    impl Evict for OneIdle {
        fn evict_idle(&self) -> bool {
            self.asked.store(true, Ordering::Relaxed);
            self.slot
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
                .is_some()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_an_idle_connection_is_closed_to_make_room() {
        let slots = Slots::new(1, UpstreamCounters::default());
        let pool = Arc::new(OneIdle {
            slot: Mutex::new(Some(slots.try_take().expect("the idle one"))),
            asked: AtomicBool::new(false),
        });
        let weak: Weak<dyn Evict> = Arc::downgrade(&(Arc::clone(&pool) as Arc<dyn Evict>));
        slots.register(weak);
        let started = tokio::time::Instant::now();
        let _slot = slots.take(WAIT).await.expect("room was made");
        assert_eq!(started.elapsed(), Duration::ZERO, "no wait for the bound");
        assert!(pool.asked.load(Ordering::Relaxed));
        assert_eq!(slots.stats().open, 1);
    }

    #[tokio::test]
    async fn a_connection_gets_its_cap_of_turns_and_the_next_waits_for_one() {
        let slots = Slots::new(1, UpstreamCounters::default());
        let turns = Turns::default();
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(turns.take(2, &slots).await.expect("a turn"));
        }
        assert_eq!(slots.stats().waited_per_client, 0);
        let third = turns.take(2, &slots);
        assert_eq!(slots.stats().waited_per_client, 1, "the third waits");
        let mut third = std::pin::pin!(third);
        let early = futures_util::future::poll_immediate(third.as_mut()).await;
        assert!(early.is_none(), "no turn while both are held");
        held.pop();
        assert!(
            third.await.is_some(),
            "a turn given back goes to the waiter"
        );
    }

    #[tokio::test]
    async fn a_response_body_gives_its_turn_back_when_it_ends() {
        let slots = Slots::new(1, UpstreamCounters::default());
        let turns = Turns::default();
        let turn = turns.take(1, &slots).await;
        let body = WithTurn::new(http_body_util::Full::new(Bytes::from("x")), turn);
        assert!(body.turn.is_some(), "held while the body is unread");
        let collected = http_body_util::BodyExt::collect(body).await;
        assert_eq!(collected.expect("infallible").to_bytes(), "x");
        assert!(
            turns.take(1, &slots).await.is_some(),
            "given back at the end"
        );
        let empty = WithTurn::new(
            http_body_util::Empty::<Bytes>::new(),
            turns.take(1, &slots).await,
        );
        assert!(empty.turn.is_none(), "an empty body holds none");
    }
}
