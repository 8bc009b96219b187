//! The pool's own tests, against upstreams on 127.0.0.1 that count their connections.

use std::convert::Infallible;
use std::sync::atomic::AtomicUsize;

use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::super::client::{UPSTREAM_BUF_BYTES, hyper_builders};
use super::super::slots::Slots;
use super::*;

type TestPool = Pool<Empty<Bytes>>;

/// Connections an upstream accepted.
type Accepted = Arc<AtomicUsize>;

fn count(accepted: &Accepted) -> usize {
    accepted.load(Ordering::SeqCst)
}

/// How an upstream reads its connections.
#[derive(Clone, Copy)]
enum Speaks {
    Http1,
    H2c,
    /// A PROXY header, then HTTP/1.1; answers with the client the header named.
    ProxyThenHttp1,
}

/// An upstream answering `hello` on every request; counts its connections. Over h2c, each
/// response waits until `together` requests are in flight, so they are concurrent.
async fn upstream(speaks: Speaks, together: usize) -> (Uri, Accepted) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Accepted::default();
    let counted = Arc::clone(&accepted);
    let barrier = Arc::new(tokio::sync::Barrier::new(together.max(1)));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let barrier = Arc::clone(&barrier);
                    async move {
                        if matches!(speaks, Speaks::H2c) {
                            barrier.wait().await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hello"))))
                    }
                });
                match speaks {
                    Speaks::Http1 => {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                    Speaks::H2c => {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                    Speaks::ProxyThenHttp1 => {
                        let deadlines = crate::proxy_protocol::Deadlines {
                            first_byte: Instant::now() + Duration::from_secs(5),
                            header: Duration::from_secs(5),
                        };
                        let limits = crate::proxy_protocol::Limits::default();
                        let Ok((info, stream)) =
                            crate::proxy_protocol::read_header(stream, deadlines, &limits).await
                        else {
                            return;
                        };
                        let client = format!("{:?}", info.client());
                        let service = service_fn(move |_req| {
                            let client = client.clone();
                            async move {
                                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(client))))
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            });
        }
    });
    let uri = format!("http://{addr}/path?q=1").parse().expect("uri");
    (uri, accepted)
}

/// A pool under a cap of `max` connections, waiting at most 200 ms at it.
fn pool(idle_timeout: Duration, max: usize) -> (TestPool, Arc<Slots>) {
    let slots = Slots::new(max, crate::metrics::UpstreamCounters::default());
    let connector = Connector::new(Duration::from_millis(200), None, Arc::clone(&slots))
        .expect("the TLS config builds");
    let pool = TestPool::new(
        Arc::new(connector),
        Arc::new(hyper_builders()),
        idle_timeout,
    );
    (pool, slots)
}

fn key<'a>(uri: &'a Uri, protocol: Protocol, header: Option<&'a [u8]>) -> Key<'a> {
    Key {
        authority: uri.authority().expect("an authority"),
        protocol,
        tls: false,
        header,
    }
}

fn get(uri: &Uri) -> Request<Empty<Bytes>> {
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = uri.clone();
    req
}

async fn request_with(pool: &TestPool, key: &Key<'_>, uri: &Uri) -> Bytes {
    let (response, give_back) = pool.send(key, get(uri)).await.expect("a response");
    let body = PooledBody::new(response.into_body(), Some(give_back));
    body.collect().await.expect("the body").to_bytes()
}

async fn request(pool: &TestPool, uri: &Uri) -> Bytes {
    request_with(pool, &key(uri, Protocol::Http1, None), uri).await
}

/// An upstream that answers every connection's first request with `response`, then
/// closes it.
async fn raw_upstream(response: Vec<u8>) -> Uri {
    raw_upstream_counted(response).await.0
}

/// [`raw_upstream`], counting the request heads it read.
async fn raw_upstream_counted(response: Vec<u8>) -> (Uri, Accepted) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let response: Arc<[u8]> = response.into();
    let heads = Accepted::default();
    let counted = Arc::clone(&heads);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let response = Arc::clone(&response);
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(&response).await;
            });
        }
    });
    (format!("http://{addr}/").parse().expect("uri"), heads)
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
    let refused = pool
        .send(&key(&over, Protocol::Http1, None), get(&over))
        .await
        .expect_err("a head over the ceiling");
    assert!(matches!(refused, UpstreamError::Send(_)), "{refused:?}");
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_not_used_and_the_request_goes_once() {
    let (uri, heads) = raw_upstream_counted(head_with(1)).await;
    let (pool, slots) = pool(Duration::from_secs(30), 8);
    for sent in 1..=3 {
        // The one before was pooled, then closed by the upstream: skipped, or refused
        // unsent and sent again; either way on a new connection, and once.
        assert_eq!(request(&pool, &uri).await, "ok");
        assert_eq!(count(&heads), sent);
    }
    assert!(
        slots.stats().open <= 1,
        "closed connections gave their slots back"
    );
}

#[tokio::test]
async fn a_connection_is_reused_once_its_body_is_read() {
    let (uri, accepted) = upstream(Speaks::Http1, 1).await;
    let (pool, _) = pool(Duration::from_secs(30), 8);
    for _ in 0..5 {
        assert_eq!(request(&pool, &uri).await, "hello");
    }
    assert_eq!(count(&accepted), 1);
    assert_eq!(pool.idle_count(), 1);
}

#[tokio::test]
async fn an_abandoned_body_closes_its_connection() {
    let (uri, accepted) = upstream(Speaks::Http1, 1).await;
    let (pool, _) = pool(Duration::from_secs(30), 8);
    let (response, give_back) = pool
        .send(&key(&uri, Protocol::Http1, None), get(&uri))
        .await
        .expect("a response");
    // A body with data still to read, dropped unread.
    let body = PooledBody {
        inner: response.into_body(),
        give_back: Some(give_back),
    };
    drop(body);
    assert_eq!(pool.idle_count(), 0);
    assert_eq!(request(&pool, &uri).await, "hello");
    assert_eq!(count(&accepted), 2);
}

#[tokio::test(start_paused = true)]
async fn idle_connections_past_the_timeout_are_closed() {
    let (uri, accepted) = upstream(Speaks::Http1, 1).await;
    let (pool, _) = pool(Duration::from_secs(2), 8);
    assert_eq!(request(&pool, &uri).await, "hello");
    assert_eq!(pool.idle_count(), 1);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(pool.idle_count(), 0, "the reaper closed it");
    assert_eq!(request(&pool, &uri).await, "hello");
    assert_eq!(count(&accepted), 2);
}

#[tokio::test]
async fn at_the_cap_an_idle_connection_makes_room_and_a_busy_one_does_not() {
    let (uri, accepted) = upstream(Speaks::Http1, 1).await;
    let (pool, slots) = pool(Duration::from_secs(30), 1);
    assert_eq!(request(&pool, &uri).await, "hello");
    assert_eq!((pool.idle_count(), slots.stats().open), (1, 1));
    // The one connection is busy: a second request finds no room within the wait.
    let (busy, give_back) = pool
        .send(&key(&uri, Protocol::Http1, None), get(&uri))
        .await
        .expect("the idle one is reused");
    let elsewhere: Uri = "http://127.0.0.1:1/".parse().expect("uri");
    let refused = pool
        .send(&key(&elsewhere, Protocol::Http1, None), get(&elsewhere))
        .await
        .expect_err("no room at the cap");
    assert!(matches!(refused, UpstreamError::Full(_)), "{refused:?}");
    assert_eq!(slots.stats().refused, 1);
    let body = PooledBody::new(busy.into_body(), Some(give_back));
    body.collect().await.expect("the body");
    assert_eq!(pool.idle_count(), 1, "idle again");
    // Idle now: a request to another upstream closes it to make room.
    let (other, other_accepted) = upstream(Speaks::Http1, 1).await;
    assert_eq!(request(&pool, &other).await, "hello");
    assert_eq!(pool.idle_count(), 1, "only the new one is idle");
    assert_eq!(slots.stats().open, 1, "never more than the cap");
    assert_eq!(count(&accepted), 1);
    assert_eq!(count(&other_accepted), 1);
}

#[tokio::test]
async fn concurrent_h2_requests_share_one_upstream_connection() {
    const STREAMS: usize = 8;
    let (uri, accepted) = upstream(Speaks::H2c, STREAMS).await;
    let (pool, slots) = pool(Duration::from_secs(30), STREAMS);
    let h2 = key(&uri, Protocol::Http2, None);
    // Every response waits for all of them to be in flight: they are concurrent.
    let all = (0..STREAMS).map(|_| request_with(&pool, &h2, &uri));
    let bodies = tokio::time::timeout(Duration::from_secs(10), futures_util::future::join_all(all))
        .await
        .expect("all answered");
    assert!(bodies.iter().all(|b| b == "hello"), "{bodies:?}");
    assert_eq!(count(&accepted), 1, "one connection for every stream");
    assert_eq!(slots.stats().open, 1, "counted once under the cap");
    assert_eq!(pool.idle_count(), 1, "no stream open on it now");
    // Later requests go on it too.
    let more = (0..STREAMS).map(|_| request_with(&pool, &h2, &uri));
    futures_util::future::join_all(more).await;
    assert_eq!(count(&accepted), 1);
}

#[tokio::test]
async fn at_the_cap_an_h2_connection_with_no_stream_makes_room() {
    let (uri, accepted) = upstream(Speaks::H2c, 1).await;
    let (pool, slots) = pool(Duration::from_secs(30), 1);
    let h2 = key(&uri, Protocol::Http2, None);
    assert_eq!(request_with(&pool, &h2, &uri).await, "hello");
    assert_eq!((pool.idle_count(), slots.stats().open), (1, 1));
    let (other, other_accepted) = upstream(Speaks::Http1, 1).await;
    assert_eq!(request(&pool, &other).await, "hello");
    assert_eq!(slots.stats().open, 1, "never more than the cap");
    assert_eq!((count(&accepted), count(&other_accepted)), (1, 1));
}

#[tokio::test]
async fn proxy_keyed_connections_are_never_shared_across_downstream_connections() {
    let (uri, accepted) = upstream(Speaks::ProxyThenHttp1, 1).await;
    let (shared, _) = pool(Duration::from_secs(30), 8);
    let header = crate::proxy_protocol::encode(
        crate::proxy_protocol::Version::V1,
        "192.0.2.1:1000".parse().expect("addr"),
        "192.0.2.9:80".parse().expect("addr"),
    );
    let proxied = key(&uri, Protocol::Http1, Some(&header));
    let (mine, theirs) = (shared.private(), shared.private());
    for _ in 0..3 {
        let client = request_with(&mine, &proxied, &uri).await;
        assert_eq!(client, "Some(192.0.2.1:1000)");
    }
    assert_eq!(
        count(&accepted),
        1,
        "one downstream connection's requests reuse it"
    );
    // The very same header bytes from another downstream connection: its own connection.
    request_with(&theirs, &proxied, &uri).await;
    assert_eq!(count(&accepted), 2);
    assert_eq!((mine.idle_count(), theirs.idle_count()), (1, 1));
    assert_eq!(shared.idle_count(), 0, "none went to the shared pool");
    // Another header on the same downstream connection is another key.
    let other = crate::proxy_protocol::encode(
        crate::proxy_protocol::Version::V1,
        "192.0.2.2:2000".parse().expect("addr"),
        "192.0.2.9:80".parse().expect("addr"),
    );
    let client = request_with(&mine, &key(&uri, Protocol::Http1, Some(&other)), &uri).await;
    assert_eq!(client, "Some(192.0.2.2:2000)");
    assert_eq!(count(&accepted), 3);
    // Dropping a downstream connection's pool closes its idle connections.
    drop(theirs);
    assert_eq!(mine.idle_count(), 2);
}

/// Behind an h2 upstream that never completes a connect (its accept queue is full, so the
/// kernel drops further SYNs), requests waiting for another's dial give up after the
/// connect timeout too, instead of queueing behind each earlier request's whole timeout.
#[tokio::test]
async fn waiting_for_another_h2_dial_is_bounded_by_the_connect_timeout() {
    const REQUESTS: usize = 6;
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind("127.0.0.1:0".parse().expect("an address"))
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    let _never_accepting = socket.listen(0).expect("listen");
    // Fill the accept queue; whatever does not fit is what the pool's connects will meet.
    let _queued: Vec<_> = (0..3)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).ok()
        })
        .collect();
    let uri: Uri = format!("http://{addr}/").parse().expect("a URI");
    // The test pool's connect timeout is 200 ms.
    let (pool, _slots) = pool(Duration::from_secs(30), REQUESTS);
    let h2 = key(&uri, Protocol::Http2, None);
    let started = tokio::time::Instant::now();
    let all = (0..REQUESTS).map(|_| async {
        let result = pool.send(&h2, get(&uri)).await;
        (started.elapsed(), result.err())
    });
    let outcomes = futures_util::future::join_all(all).await;
    let slowest = outcomes.iter().map(|(t, _)| *t).max().expect("requests");
    assert!(
        outcomes.iter().all(|(_, err)| err.is_some()),
        "no request could have been answered"
    );
    assert!(
        outcomes
            .iter()
            .any(|(_, err)| matches!(err, Some(UpstreamError::DialWait(_)))),
        "the waiters gave up waiting"
    );
    // Unbounded, the last would wait REQUESTS x 200 ms = 1.2 s.
    assert!(
        slowest < Duration::from_millis(600),
        "the slowest request took {slowest:?}"
    );
}
