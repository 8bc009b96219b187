//! The upstream pool for the common case: plain HTTP/1.1 to a shared upstream (no TLS, no
//! PROXY header, no upgrade). hyper's own client connections (`client::conn::http1`), with
//! an idle list per upstream kept here rather than in hyper-util's pooled client, which
//! hashes the upstream's name on every checkout and return and spawns a task per response
//! to put the connection back.
//!
//! A connection goes back on its list once its response body has been read to the end
//! ([`GiveBack`], dropped with the body); one whose body is abandoned is closed. Idle ones
//! past the idle timeout are closed by a reaper task; one the upstream closed while idle is
//! skipped at checkout; a request a dead connection refused unsent goes once more, on a new
//! connection. Its read buffer is held near [`UPSTREAM_BUF_BYTES`]. Each connection holds a slot under `max_upstream_connections`; at the cap
//! the pool closes its least recently used idle connection to make room ([`Evict`]).

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Instant;
use tower_service::Service;
use tracing::debug;

use super::body::RequestBody;
use super::client::UPSTREAM_BUF_BYTES;
use super::connect::Capped;
use super::slots::{Evict, SlotsFull, Slotted};

/// What a request body must be to go through the pool.
pub(super) trait PoolBody:
    Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + Unpin + 'static
{
}

impl<B> PoolBody for B where
    B: Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + Unpin
        + 'static
{
}

/// Why a request got no response through the pool.
#[derive(Debug, thiserror::Error)]
pub(super) enum PlainError {
    #[error("the upstream request has no authority")]
    NoAuthority,
    #[error("no room for an upstream connection")]
    Full(#[from] SlotsFull),
    #[error("connecting to the upstream failed")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the HTTP/1.1 handshake with the upstream failed")]
    Handshake(#[source] hyper::Error),
    #[error("the request to the upstream failed")]
    Send(#[source] hyper::Error),
}

/// Plain HTTP/1.1 upstream connections, idle ones listed per upstream. Clones share them.
#[derive(Debug)]
pub(super) struct PlainPool<B = RequestBody> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for PlainPool<B> {
    fn clone(&self) -> Self {
        PlainPool {
            inner: Arc::clone(&self.inner),
        }
    }
}

#[derive(Debug)]
struct Inner<B> {
    http: HttpConnector,
    capped: Capped,
    idle_timeout: Duration,
    idle: Mutex<IdleLists<B>>,
}

#[derive(Debug)]
struct IdleLists<B> {
    /// Per upstream, most recently used last. Few upstreams, so a list, not a map.
    by_upstream: Vec<(Authority, Vec<Idle<B>>)>,
    reaper_started: bool,
}

#[derive(Debug)]
struct Idle<B> {
    sender: SendRequest<B>,
    since: Instant,
}

impl<B: PoolBody> PlainPool<B> {
    /// `http` makes the TCP connections (its connect timeout and `TCP_NODELAY` apply),
    /// each under `capped`, which is asked to close idle ones of this pool at the cap.
    pub(super) fn new(http: HttpConnector, idle_timeout: Duration, capped: Capped) -> PlainPool<B> {
        let inner = Arc::new(Inner {
            http,
            capped,
            idle_timeout,
            idle: Mutex::new(IdleLists {
                by_upstream: Vec::new(),
                reaper_started: false,
            }),
        });
        let evict: Arc<dyn Evict> = Arc::clone(&inner) as Arc<dyn Evict>;
        inner.capped.slots.register(Arc::downgrade(&evict));
        PlainPool { inner }
    }

    /// Sends `request` (its URI absolute, `http`) on an idle connection to its upstream,
    /// else a new one, and returns the response head with what puts the connection back.
    pub(super) async fn send(
        &self,
        mut request: Request<B>,
    ) -> Result<(Response<Incoming>, GiveBack<B>), PlainError> {
        let uri = request.uri().clone();
        let authority = uri.authority().cloned().ok_or(PlainError::NoAuthority)?;
        // HTTP/1.1 to an origin server: the request line carries the path only (the Host
        // header, set by `headers::prepare_request`, names the server).
        *request.uri_mut() = uri
            .path_and_query()
            .cloned()
            .map_or_else(Uri::default, Uri::from);
        let mut fresh = false;
        loop {
            let idle = if fresh {
                None
            } else {
                self.checkout(&authority).await
            };
            let mut sender = match idle {
                Some(sender) => sender,
                None => self.connect(&uri).await?,
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let give_back = GiveBack {
                        pool: Arc::downgrade(&self.inner),
                        authority,
                        sender: Some(sender),
                    };
                    return Ok((response, give_back));
                }
                Err(mut err) => match err.take_message() {
                    // Refused unsent: the connection was dead. Once more, on a new one.
                    Some(unsent) if !fresh => {
                        debug!(error = %err.into_error(), "pooled upstream connection was closed; retrying");
                        request = unsent;
                        fresh = true;
                    }
                    _ => return Err(PlainError::Send(err.into_error())),
                },
            }
        }
    }

    /// An idle connection to `authority` that is ready for a request, if there is one.
    async fn checkout(&self, authority: &Authority) -> Option<SendRequest<B>> {
        loop {
            let idle = {
                let mut lists = self.inner.lock();
                let (_, list) = lists.by_upstream.iter_mut().find(|(a, _)| a == authority)?;
                list.pop()?
            };
            if idle.since.elapsed() > self.inner.idle_timeout || idle.sender.is_closed() {
                continue;
            }
            let mut sender = idle.sender;
            // Ready as soon as its connection task has seen the last response end.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    /// A new connection to the upstream `uri` names, its task spawned.
    async fn connect(&self, uri: &Uri) -> Result<SendRequest<B>, PlainError> {
        self.start_reaper();
        let slot = self.inner.capped.slot().await?;
        let io = self
            .inner
            .http
            .clone()
            .call(uri.clone())
            .await
            .map_err(|e| PlainError::Connect(e.into()))?;
        let io = Slotted::new(io, slot, None);
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(UPSTREAM_BUF_BYTES)
            .handshake(io)
            .await
            .map_err(PlainError::Handshake)?;
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                debug!(%error, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Starts, once, the task that closes connections idle for longer than the timeout.
    /// It holds the pool weakly and ends with it.
    fn start_reaper(&self) {
        {
            let mut lists = self.inner.lock();
            if lists.reaper_started {
                return;
            }
            lists.reaper_started = true;
        }
        let pool = Arc::downgrade(&self.inner);
        let period = (self.inner.idle_timeout / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let Some(inner) = pool.upgrade() else {
                    return;
                };
                let mut lists = inner.lock();
                for (_, list) in &mut lists.by_upstream {
                    list.retain(|idle| {
                        idle.since.elapsed() <= inner.idle_timeout && !idle.sender.is_closed()
                    });
                }
                lists.by_upstream.retain(|(_, list)| !list.is_empty());
            }
        });
    }

    /// How many connections are idle, all upstreams together.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        let lists = self.inner.lock();
        lists.by_upstream.iter().map(|(_, l)| l.len()).sum()
    }
}

impl<B: Send> Evict for Inner<B> {
    /// Closes the least recently used idle connection, of any upstream.
    fn evict_idle(&self) -> bool {
        let mut lists = self.lock();
        let oldest = lists
            .by_upstream
            .iter()
            .enumerate()
            .filter_map(|(i, (_, list))| Some((i, list.first()?.since)))
            .min_by_key(|(_, since)| *since);
        let Some((i, _)) = oldest else {
            return false;
        };
        // Dropping its sender ends the connection's task, which closes the socket and
        // gives its slot back.
        drop(lists.by_upstream[i].1.remove(0));
        true
    }
}

impl<B> Inner<B> {
    /// The idle lists. A panic while holding the lock leaves them whole (pushes and pops
    /// only), so a poisoned lock is still safe to use.
    fn lock(&self) -> std::sync::MutexGuard<'_, IdleLists<B>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Puts a connection back on its idle list when dropped, if its response body was read to
/// the end ([`GiveBack::body_done`]); otherwise the connection closes with it.
#[derive(Debug)]
pub(super) struct GiveBack<B = RequestBody> {
    pool: Weak<Inner<B>>,
    authority: Authority,
    sender: Option<SendRequest<B>>,
}

impl<B> GiveBack<B> {
    /// Returns the connection now: its response body has ended.
    fn body_done(&mut self) {
        let (Some(sender), Some(inner)) = (self.sender.take(), self.pool.upgrade()) else {
            return;
        };
        if sender.is_closed() {
            return;
        }
        let idle = Idle {
            sender,
            since: Instant::now(),
        };
        let mut lists = inner.lock();
        match lists
            .by_upstream
            .iter_mut()
            .find(|(a, _)| *a == self.authority)
        {
            Some((_, list)) => list.push(idle),
            None => lists.by_upstream.push((self.authority.clone(), vec![idle])),
        }
    }
}

/// A response body that gives its connection back once it has been read to the end.
#[derive(Debug)]
pub(super) struct PooledBody<B, R = RequestBody> {
    inner: B,
    give_back: Option<GiveBack<R>>,
}

impl<B: Body, R> PooledBody<B, R> {
    pub(super) fn new(inner: B, give_back: Option<GiveBack<R>>) -> PooledBody<B, R> {
        let mut body = PooledBody { inner, give_back };
        // An empty body may never be polled.
        if body.inner.is_end_stream() {
            body.ended();
        }
        body
    }

    fn ended(&mut self) {
        if let Some(mut give_back) = self.give_back.take() {
            give_back.body_done();
        }
    }
}

impl<B, R> Body for PooledBody<B, R>
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
            Poll::Ready(None) => this.ended(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.ended(),
            // A failed body leaves the connection in no state to reuse.
            Poll::Ready(Some(Err(_))) => this.give_back = None,
            _ => {}
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
    use std::convert::Infallible;

    use http_body_util::{BodyExt, Empty, Full};
    use hyper::server::conn::http1 as server;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::super::slots::Slots;
    use super::*;

    /// An upstream answering `hello` on every request; counts its connections.
    async fn upstream() -> (Uri, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(|_req| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hello"))))
                    });
                    let _ = server::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let uri = format!("http://{addr}/path?q=1").parse().expect("uri");
        (uri, accepted)
    }

    type TestPool = PlainPool<Empty<Bytes>>;

    /// A pool under a cap of `max` connections, waiting at most 200 ms at it.
    fn pool(idle_timeout: Duration, max: usize) -> (TestPool, Arc<Slots>) {
        let slots = Slots::new(max);
        let capped = Capped {
            slots: Arc::clone(&slots),
            wait: Duration::from_millis(200),
            count: None,
        };
        (
            TestPool::new(HttpConnector::new(), idle_timeout, capped),
            slots,
        )
    }

    async fn request(pool: &TestPool, uri: &Uri) -> Bytes {
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = uri.clone();
        let (response, give_back) = pool.send(req).await.expect("a response");
        let body = PooledBody::new(response.into_body(), Some(give_back));
        body.collect().await.expect("the body").to_bytes()
    }

    /// An upstream that answers every connection's first request with `response`.
    async fn raw_upstream(response: Vec<u8>) -> Uri {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let response: Arc<[u8]> = response.into();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let response = Arc::clone(&response);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = stream.write_all(&response).await;
                });
            }
        });
        format!("http://{addr}/").parse().expect("uri")
    }

    /// A response head with one header of `value_bytes` bytes.
    fn head_with(value_bytes: usize) -> Vec<u8> {
        let mut r = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-big: ".to_vec();
        r.resize(r.len() + value_bytes, b'a');
        r.extend_from_slice(b"\r\n\r\nok");
        r
    }

    #[tokio::test]
    async fn the_read_buffer_ceiling_bounds_a_response_head() {
        let (pool, _) = pool(Duration::from_secs(30), 8);
        let under = raw_upstream(head_with(UPSTREAM_BUF_BYTES / 2)).await;
        assert_eq!(request(&pool, &under).await, "ok");
        // hyper's default ceiling (about 400 KiB) would take this head; ours does not. The
        // ceiling is checked between reads and one read may fill the buffer's spare
        // capacity past it, so the head is well over it.
        let over = raw_upstream(head_with(4 * UPSTREAM_BUF_BYTES)).await;
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = over;
        let refused = pool.send(req).await.expect_err("a head over the ceiling");
        assert!(matches!(refused, PlainError::Send(_)), "{refused:?}");
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_body_is_read() {
        let (uri, accepted) = upstream().await;
        let (pool, _) = pool(Duration::from_secs(30), 8);
        for _ in 0..5 {
            assert_eq!(request(&pool, &uri).await, "hello");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn an_abandoned_body_closes_its_connection() {
        let (uri, accepted) = upstream().await;
        let (pool, _) = pool(Duration::from_secs(30), 8);
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = uri.clone();
        let (response, give_back) = pool.send(req).await.expect("a response");
        // A body with data still to read, dropped unread.
        let body = PooledBody {
            inner: response.into_body(),
            give_back: Some(give_back),
        };
        drop(body);
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(request(&pool, &uri).await, "hello");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_past_the_timeout_are_closed() {
        let (uri, accepted) = upstream().await;
        let (pool, _) = pool(Duration::from_secs(2), 8);
        assert_eq!(request(&pool, &uri).await, "hello");
        assert_eq!(pool.idle_count(), 1);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(pool.idle_count(), 0, "the reaper closed it");
        assert_eq!(request(&pool, &uri).await, "hello");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn at_the_cap_an_idle_connection_makes_room_and_a_busy_one_does_not() {
        let (uri, accepted) = upstream().await;
        let (pool, slots) = pool(Duration::from_secs(30), 1);
        assert_eq!(request(&pool, &uri).await, "hello");
        assert_eq!((pool.idle_count(), slots.stats().open), (1, 1));
        // The one connection is busy: a second request finds no room within the wait.
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = uri.clone();
        let (busy, give_back) = pool.send(req).await.expect("the idle one is reused");
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = "http://127.0.0.1:1/".parse().expect("uri");
        let refused = pool.send(req).await.expect_err("no room at the cap");
        assert!(matches!(refused, PlainError::Full(_)), "{refused:?}");
        assert_eq!(slots.stats().refused, 1);
        let body = PooledBody::new(busy.into_body(), Some(give_back));
        body.collect().await.expect("the body");
        assert_eq!(pool.idle_count(), 1, "idle again");
        // Idle now: a request to another upstream closes it to make room.
        let (other, other_accepted) = upstream().await;
        assert_eq!(request(&pool, &other).await, "hello");
        assert_eq!(pool.idle_count(), 1, "only the new one is idle");
        assert_eq!(slots.stats().open, 1, "never more than the cap");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(other_accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
