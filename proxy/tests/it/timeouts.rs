//! Every wait after the PROXY header is bounded, played by the hostile client behind a
//! trusted load balancer against the real binary with short configured timeouts: a
//! connection that sends nothing, a request head dripped slower than its deadline, an
//! idle keep-alive connection, an idle h2 connection, a request body that stops, an
//! upstream body that stops, a client that stops reading (HTTP/1.1, and an h2 stream with
//! its window shut), a silent WebSocket; and connections that only hold a slot, which
//! must not lock a normal client out; and the PROXY receiver's own waits (the header
//! counted from its first byte, the first byte bounded apart, health checks that close
//! without a byte). Each test asserts what the upstream did or did not
//! receive, and the `trustgate_timeouts_total` kind it was counted as. nginx is the
//! reference for each default (`client_header_timeout`, `keepalive_timeout`,
//! `client_body_timeout`, `proxy_read_timeout`, `send_timeout`).

use crate::common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::gateway::Gateway;
use common::lb;
use common::probe::room_for;
use common::scrape::{self, Scrape};
use common::testconfig::{App, KernelFilter, ProxyProtocol, TestConfig};
use common::upstream::{self, UpBody};
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::block_in_place;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// The timeout under test, wherever one is.
const LIMIT: Duration = Duration::from_secs(1);
/// How long after its deadline a connection may still be open (scheduling on two busy
/// cores, the watchdog's millisecond stamps).
const SLACK: Duration = Duration::from_secs(2);
/// How long the counters may take to show what the client already saw.
const SETTLE: Duration = Duration::from_secs(10);
/// The bound on anything a test waits for that should come at once.
const PROMPT: Duration = Duration::from_secs(5);

/// The binary on loopback, trusting 127.0.0.1, one app routed to `upstream`, with `top`
/// (the timeouts under test) at the top level and a 1 s PROXY header `timeout`.
fn start(upstream: SocketAddr, top: TestConfig) -> (Gateway, SocketAddr) {
    start_with(
        upstream,
        top,
        ProxyProtocol::trusting(["127.0.0.1/32"]).timeout(1000),
    )
}

/// [`start`] with `pp` as the PROXY table (its `timeout` and the like; the kernel
/// filter is set off here).
fn start_with(upstream: SocketAddr, top: TestConfig, pp: ProxyProtocol) -> (Gateway, SocketAddr) {
    let text = top
        .listen_port(0)
        .listen_v4("127.0.0.1")
        .default_app("app")
        .app("app", App::new("app.test").upstream(upstream))
        .proxy_protocol(pp.kernel_filter(KernelFilter::mode("off")))
        .metrics("127.0.0.1:0")
        .render();
    block_in_place(|| {
        let mut gw = Gateway::start(&text, 1);
        let metrics = gw.metrics_listener();
        (gw, metrics)
    })
}

fn timeouts(s: &Scrape, kind: &str) -> u64 {
    s.get(&format!("trustgate_timeouts_total{{kind=\"{kind}\"}}"))
}

/// Waits until `kind` has been counted `n` times and no connection is open.
async fn counted(metrics: SocketAddr, kind: &str, n: u64) -> Scrape {
    scrape::until(metrics, kind, SETTLE, |s| {
        timeouts(s, kind) == n && s.active() == 0
    })
    .await
}

/// A connection that has sent its PROXY header (naming a client), and `then`.
async fn relayed(addr: SocketAddr, then: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut out = lb::client_header(addr);
    out.extend_from_slice(then);
    stream.write_all(&out).await.expect("write");
    stream
}

/// Reads to the end (EOF or reset) within `limit`; the bytes, and when it ended.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Instant>) {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let closed = tokio::time::timeout(limit, read).await.ok();
    (got, closed)
}

fn assert_closed_in_time(what: &str, started: Instant, closed: Option<Instant>, limit: Duration) {
    let closed = closed.unwrap_or_else(|| panic!("{what}: still open {:?} on", limit + SLACK));
    let after = closed - started;
    assert!(
        after >= limit,
        "{what}: closed after {after:?}, before {limit:?}"
    );
    assert!(
        after <= limit + SLACK,
        "{what}: closed only after {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_after_its_proxy_header_is_closed_at_the_head_timeout() {
    let (upstream, hits) = upstream::counting().await;
    let (gw, metrics) = start(
        upstream,
        TestConfig::new()
            .request_header_timeout(1)
            .keepalive_timeout(30),
    );
    let started = Instant::now();
    let mut stream = relayed(gw.listeners[0], b"").await;
    let (got, closed) = read_to_close(&mut stream, LIMIT + SLACK).await;
    assert_closed_in_time("silent connection", started, closed, LIMIT);
    assert!(got.is_empty(), "nothing is answered to nothing: {got:?}");
    counted(metrics, "request_header", 1).await;
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_dripped_past_its_deadline_gets_408_and_never_reaches_the_upstream() {
    let (upstream, hits) = upstream::counting().await;
    let (gw, metrics) = start(upstream, TestConfig::new().request_header_timeout(1));
    let mut stream = relayed(gw.listeners[0], b"").await;
    let started = Instant::now();
    // A byte every 100 ms: a timeout per read would never fire; the head's deadline does.
    let head = b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let (mut reader, mut writer) = stream.split();
    let drip = async {
        for byte in head {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let mut got = Vec::new();
    let read = async {
        let _ = reader.read_to_end(&mut got).await;
        Instant::now()
    };
    let (closed, ()) = tokio::join!(tokio::time::timeout(LIMIT + SLACK, read), drip);
    assert_closed_in_time("dripped head", started, closed.ok(), LIMIT);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "answered {text:?}");
    counted(metrics, "request_header", 1).await;
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the upstream saw nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_at_the_keepalive_timeout() {
    let (upstream, hits) = upstream::counting().await;
    let (gw, metrics) = start(
        upstream,
        TestConfig::new()
            .keepalive_timeout(1)
            .request_header_timeout(30),
    );
    // Taken before the request: the proxy's idle clock starts once it has answered, which
    // is before this side has read the answer (by as long as this task waits to run).
    let idle_from = Instant::now();
    let mut stream = lb::hold(gw.listeners[0], PROMPT).await;
    let (got, closed) = read_to_close(&mut stream, LIMIT + SLACK).await;
    assert_closed_in_time("idle keep-alive", idle_from, closed, LIMIT);
    assert!(got.is_empty(), "closed without a word: {got:?}");
    counted(metrics, "keepalive", 1).await;
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the one request");
}

/// Longer than the proxy's `RELEASE_AFTER` (100 ms): an HTTP/1.1 connection idle this long
/// has let go of its hyper connection, and the next bytes meet a new one.
const PAST_RELEASE: Duration = Duration::from_millis(400);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_idle_past_its_release_serves_pipelined_requests_and_times_heads() {
    let (upstream, hits) = upstream::counting().await;
    let (gw, metrics) = start(
        upstream,
        TestConfig::new()
            .request_header_timeout(1)
            .keepalive_timeout(30),
    );
    let mut stream = lb::hold(gw.listeners[0], PROMPT).await;
    for round in 0..2 {
        // The pause is what is under test: the connection sits idle past its release.
        tokio::time::sleep(PAST_RELEASE).await;
        let two = [lb::keep_alive_request("/a"), lb::keep_alive_request("/b")].concat();
        stream.write_all(&two).await.expect("write");
        for which in ["/a", "/b"] {
            let status = tokio::time::timeout(PROMPT, lb::read_answer(&mut stream))
                .await
                .expect("an answer in time")
                .expect("an answer");
            assert!(lb::is_ok(&status), "round {round}, {which}: {status}");
        }
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        5,
        "the holder's request and four more"
    );
    // A head begun after a release is timed from its first byte, as any other.
    tokio::time::sleep(PAST_RELEASE).await;
    let started = Instant::now();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: app")
        .await
        .expect("write");
    let (got, closed) = read_to_close(&mut stream, LIMIT + SLACK).await;
    assert_closed_in_time("head begun after a release", started, closed, LIMIT);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "answered {text:?}");
    counted(metrics, "request_header", 1).await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        5,
        "the late head never reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_connection_with_no_open_stream_gets_goaway_at_the_keepalive_timeout() {
    let (upstream, hits) = upstream::counting().await;
    let (gw, metrics) = start(
        upstream,
        TestConfig::new()
            .keepalive_timeout(1)
            .request_header_timeout(30),
    );
    let stream = relayed(gw.listeners[0], b"").await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let req = Request::get("http://app.test/")
        .body(Empty::<Bytes>::new())
        .expect("request");
    // Before the request, as in the HTTP/1.1 test: the proxy's idle clock starts before
    // this side has the whole answer.
    let idle_from = Instant::now();
    let response = sender.send_request(req).await.expect("a response");
    assert_eq!(response.status(), 200);
    let _ = response.into_body().collect().await.expect("the body");
    // GOAWAY with no stream open: hyper's client connection then ends cleanly.
    let ended = tokio::time::timeout(LIMIT + SLACK, conn).await;
    let ended_at = Instant::now();
    let ended = ended.expect("the connection ended").expect("its task");
    assert!(ended.is_ok(), "ended by GOAWAY, not an error: {ended:?}");
    assert_closed_in_time("idle h2", idle_from, Some(ended_at), LIMIT);
    counted(metrics, "keepalive", 1).await;
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

/// An upstream that reads each request's body to its end and reports what it got: the
/// bytes, or that the body failed (cut short).
async fn body_reporting() -> (SocketAddr, mpsc::UnboundedReceiver<Result<usize, String>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = upstream::serve(move |req: Request<hyper::body::Incoming>| {
        let tx = tx.clone();
        async move {
            let got = match req.into_body().collect().await {
                Ok(body) => Ok(body.to_bytes().len()),
                Err(e) => Err(e.to_string()),
            };
            let _ = tx.send(got);
            upstream::text("read")
        }
    })
    .await;
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stops_gets_408_and_the_upstream_sees_it_cut_short() {
    let (upstream, mut bodies) = body_reporting().await;
    let (gw, metrics) = start(upstream, TestConfig::new().request_body_timeout(1));
    let head = b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000\r\n\r\n0123456789";
    let mut stream = relayed(gw.listeners[0], head).await;
    let started = Instant::now();
    let (got, closed) = read_to_close(&mut stream, LIMIT + SLACK).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "answered {text:?}");
    assert_closed_in_time("stalled body", started, closed, LIMIT);
    let seen = tokio::time::timeout(PROMPT, bodies.recv())
        .await
        .expect("the upstream got the request")
        .expect("a report");
    assert!(seen.is_err(), "the upstream saw a whole body: {seen:?}");
    counted(metrics, "request_body", 1).await;
}

/// An upstream that answers every request with a 1 MiB length, sends 64 KiB of it, then
/// nothing; raw bytes, so nothing in between can finish the body.
async fn stalling_upstream() -> SocketAddr {
    let (listener, addr) = upstream::bind().await;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n";
                let _ = stream.write_all(head).await;
                let _ = stream.write_all(&[b'x'; 64 * 1024]).await;
                // Holds the connection open, silent, until the proxy gives up on it.
                let _ = stream.read(&mut buf).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_body_that_stops_is_cut_at_the_upstream_read_timeout() {
    let upstream = stalling_upstream().await;
    let (gw, metrics) = start(upstream, TestConfig::new().upstream_read_timeout(1));
    let mut stream = relayed(gw.listeners[0], &lb::get("/big")).await;
    let started = Instant::now();
    let (got, closed) = read_to_close(&mut stream, LIMIT + SLACK).await;
    let text = String::from_utf8_lossy(&got[..got.len().min(64)]);
    assert!(text.starts_with("HTTP/1.1 200"), "answered {text:?}");
    assert_closed_in_time("stalled upstream body", started, closed, LIMIT);
    assert!(
        got.len() < 1024 * 1024,
        "the body ends short of its length ({} bytes), never looks complete",
        got.len()
    );
    counted(metrics, "upstream_read", 1).await;
}

/// An upstream whose every response is an endless body of 64 KiB chunks; counts the
/// chunks it got rid of, and reports when a body is dropped (the proxy gave up on it).
async fn endless_upstream() -> (SocketAddr, Arc<AtomicUsize>, mpsc::UnboundedReceiver<()>) {
    let sent = Arc::new(AtomicUsize::new(0));
    let (dropped_tx, dropped) = mpsc::unbounded_channel();
    let counter = Arc::clone(&sent);
    let addr = upstream::serve(move |_req| {
        let counter = Arc::clone(&counter);
        let dropped = dropped_tx.clone();
        async move {
            let on_drop = DropSignal(dropped);
            let chunks = futures_util::stream::repeat_with(move || {
                let _held = &on_drop;
                counter.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'y'; 64 * 1024])))
            });
            Response::new(UpBody::new(StreamBody::new(chunks)))
        }
    })
    .await;
    (addr, sent, dropped)
}

struct DropSignal(mpsc::UnboundedSender<()>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_at_the_send_timeout() {
    let (upstream, sent, mut dropped) = endless_upstream().await;
    let (gw, metrics) = start(upstream, TestConfig::new().send_timeout(1));
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("a small receive buffer");
    let mut stream = socket.connect(gw.listeners[0]).await.expect("connect");
    let mut out = lb::client_header(gw.listeners[0]);
    out.extend(lb::get("/download"));
    stream.write_all(&out).await.expect("write");
    // The client reads nothing: the proxy's writes stall once the buffers are full.
    let started = Instant::now();
    tokio::time::timeout(LIMIT * 3 + SLACK, dropped.recv())
        .await
        .expect("the proxy gave the download up")
        .expect("a drop report");
    let given_up = started.elapsed();
    counted(metrics, "send", 1).await;
    let chunks = sent.load(Ordering::SeqCst);
    assert!(
        chunks < 1024,
        "the proxy read on regardless: {chunks} chunks of 64 KiB"
    );
    let (_got, closed) = read_to_close(&mut stream, PROMPT).await;
    assert!(closed.is_some(), "the client connection is closed");
    eprintln!("stalled download given up after {given_up:?}, {chunks} chunks read upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_stream_whose_window_stays_shut_is_reset_at_the_send_timeout() {
    let (upstream, _sent, mut dropped) = endless_upstream().await;
    let (gw, metrics) = start(
        upstream,
        TestConfig::new().send_timeout(1).keepalive_timeout(30),
    );
    let stream = relayed(gw.listeners[0], b"").await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let get = || {
        Request::get("http://app.test/download")
            .body(Empty::<Bytes>::new())
            .expect("request")
    };
    // The body is never read: the stream's window shuts at 64 KiB and stays shut. Timed
    // from before the request: the proxy may be stalled before this side has the head.
    let started = Instant::now();
    let unread = sender.send_request(get()).await.expect("a response head");
    assert_eq!(unread.status(), 200);
    tokio::time::timeout(LIMIT + SLACK, dropped.recv())
        .await
        .expect("the proxy gave the stream up")
        .expect("a drop report");
    assert!(
        started.elapsed() >= LIMIT,
        "given up before the send timeout"
    );
    let s = scrape::until(metrics, "send", SETTLE, |s| timeouts(s, "send") == 1).await;
    assert_eq!(s.active(), 1, "the connection itself stays open");
    // The stream was reset: its body ends with an error, never as complete.
    let mut body = unread.into_body();
    let outcome = tokio::time::timeout(PROMPT, async {
        loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    })
    .await
    .expect("the reset reaches the client");
    assert!(outcome.is_err(), "the body looked complete");
    // And the connection still serves.
    sender
        .ready()
        .await
        .expect("the connection is still usable");
    let again = sender.send_request(get()).await.expect("a second stream");
    assert_eq!(again.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_websocket_is_closed_at_the_tunnel_idle_timeout_and_an_active_one_is_not() {
    let demo = upstream::demo().await;
    let (gw, metrics) = start(demo, TestConfig::new().tunnel_idle_timeout(1));
    let stream = relayed(gw.listeners[0], b"").await;
    let (mut ws, response) = tokio_tungstenite::client_async("ws://app.test/chat", stream)
        .await
        .expect("WebSocket handshake through the proxy");
    assert_eq!(response.status(), 101);
    // Active for three idle timeouts: a message every 300 ms, each echoed.
    let active_until = Instant::now() + LIMIT * 3;
    let mut sent = 0;
    let mut silent_from = Instant::now();
    while Instant::now() < active_until {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Before the message: the proxy's idle clock restarts with it and with its echo,
        // both before the echo reaches this side.
        let sending_at = Instant::now();
        ws.send(Message::text(format!("m{sent}")))
            .await
            .expect("send");
        let echo = tokio::time::timeout(PROMPT, ws.next())
            .await
            .expect("an echo in time")
            .expect("a message")
            .expect("a readable message");
        assert_eq!(echo, Message::text(format!("m{sent}")));
        silent_from = sending_at;
        sent += 1;
    }
    assert_eq!(timeouts(&scrape::scrape(metrics).await, "tunnel_idle"), 0);
    // Then silent: closed on both sides.
    let end = tokio::time::timeout(LIMIT + SLACK, ws.next()).await;
    let ended_at = Instant::now();
    match end.expect("the tunnel was closed") {
        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {}
        Some(Ok(other)) => panic!("an unexpected message: {other:?}"),
    }
    assert_closed_in_time("silent tunnel", silent_from, Some(ended_at), LIMIT);
    counted(metrics, "tunnel_idle", 1).await;
    assert!(sent >= 5, "the active tunnel carried {sent} messages");
}

/// Connections that fill `max_clients` (its default, 512) and more.
const HOARDERS: usize = 520;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_send_only_a_proxy_header_do_not_lock_out_a_normal_client() {
    if !room_for(4 * HOARDERS as u64) {
        return;
    }
    let (upstream, hits) = upstream::counting().await;
    // The head timeout is long: it is not what lets the normal client in.
    let (gw, metrics) = start(upstream, TestConfig::new().request_header_timeout(60));
    let addr = gw.listeners[0];
    let mut hoarders = Vec::with_capacity(HOARDERS);
    for _ in 0..HOARDERS {
        hoarders.push(relayed(addr, b"").await);
    }
    // A hoarder is counted accepted before it has a slot: until the last one has shed
    // (or been refused), 512 are active while its shed is still to come.
    let full = scrape::until(metrics, "the hoarders in", SETTLE, |s| {
        s.accepted() >= HOARDERS as u64
            && s.active() == 512
            && s.get("trustgate_connections_shed_total") + s.refused("max_clients")
                >= (HOARDERS - 512) as u64
    })
    .await;
    // Each hoarder past 512 shed an older one (or, on a machine too busy to close the shed
    // one within a second, was refused): none of them waits for a timeout.
    let shed_by_hoarders = full.get("trustgate_connections_shed_total");
    let refused_hoarders = full.refused("max_clients");
    assert!(shed_by_hoarders >= 1, "{full:#?}");
    assert!(
        shed_by_hoarders + refused_hoarders >= (HOARDERS - 512) as u64,
        "{full:#?}"
    );
    let started = Instant::now();
    let latencies = lb::requests_ok(addr, 20, PROMPT, "with every slot hoarded").await;
    let took = started.elapsed();
    let after = scrape::scrape(metrics).await;
    // The first sheds a hoarder; the next ones find its slot free again, or shed another
    // when it is not yet.
    let shed = after.get("trustgate_connections_shed_total") - shed_by_hoarders;
    assert!(
        (1..=20).contains(&shed),
        "{shed} hoarders shed for 20 requests"
    );
    assert_eq!(
        after.refused("max_clients"),
        refused_hoarders,
        "no normal client was refused"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        20,
        "only the normal requests went up"
    );
    assert!(
        latencies.iter().all(|l| *l < Duration::from_secs(2)),
        "a normal client waited: {latencies:?}"
    );
    eprintln!("20 normal requests past {HOARDERS} hoarders in {took:?}: {latencies:?}");
    drop(hoarders);
}

/// The binary with the PROXY receiver's defaults (`timeout` 50 ms from the first byte,
/// the first byte within 5 s) but for `pp`, the PROXY table trusting 127.0.0.1.
fn start_with_receiver_defaults(upstream: SocketAddr, pp: ProxyProtocol) -> (Gateway, SocketAddr) {
    start_with(upstream, TestConfig::new(), pp)
}

/// The PROXY table trusting 127.0.0.1, every other key at its default.
fn loopback() -> ProxyProtocol {
    ProxyProtocol::trusting(["127.0.0.1/32"])
}

fn closed_no_data(s: &Scrape) -> u64 {
    s.get("trustgate_connections_closed_total{reason=\"no_data\"}")
}

/// AWS NLB sends the v2 header with the client's first data: a client that connects
/// and waits (a browser's preconnect) must not be closed by the 50 ms header timeout,
/// which counts from the header's first byte. A header whose own bytes straggle is still
/// refused at 50 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_sent_late_with_the_first_request_is_served_under_the_default_timeout() {
    let (upstream, hits) = upstream::counting().await;
    let (gw, metrics) = start_with_receiver_defaults(upstream, loopback());
    let addr = gw.listeners[0];
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut out = lb::client_header(addr);
    out.extend_from_slice(&lb::get("/late"));
    stream.write_all(&out).await.expect("write");
    let answer = lb::read_answer(&mut stream).await.expect("an answer");
    assert!(lb::is_ok(&answer), "late header: {answer}");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the upstream served it");
    // The header's bytes themselves get 50 ms from the first one.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let header = lb::client_header(addr);
    stream.write_all(&header[..4]).await.expect("write");
    let started = Instant::now();
    let (got, closed) = read_to_close(&mut stream, PROMPT).await;
    assert!(
        got.is_empty(),
        "a straggling header is not answered: {got:?}"
    );
    let closed = closed.expect("closed at the header timeout");
    assert!(closed - started >= Duration::from_millis(50));
    scrape::until(metrics, "the straggler counted", SETTLE, |s| {
        s.header_errors("timeout") == 1
    })
    .await;
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

/// A trusted proxy that connects and closes without a byte is a TCP health check:
/// counted apart, never as a header error, never warned about.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_close_probes_count_as_health_checks_not_header_errors() {
    let (upstream, hits) = upstream::counting().await;
    let (mut gw, metrics) = start_with_receiver_defaults(upstream, loopback());
    for _ in 0..20 {
        let stream = TcpStream::connect(gw.listeners[0]).await.expect("connect");
        drop(stream);
    }
    let s = scrape::until(metrics, "20 health checks", SETTLE, |s| {
        closed_no_data(s) == 20 && s.active() == 0
    })
    .await;
    assert!(
        s.header_errors_by_kind().values().all(|v| *v == 0),
        "no header error: {:?}",
        s.header_errors_by_kind()
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    block_in_place(|| {
        gw.signal(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(true));
    });
    assert!(gw.alarms().is_empty(), "warned: {:#?}", gw.alarms());
}

/// The wait for the first byte has its own bound and its own count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_sends_a_byte_is_closed_at_first_byte_timeout() {
    let (upstream, hits) = upstream::counting().await;
    let (gw, metrics) = start_with_receiver_defaults(upstream, loopback().first_byte_timeout(1000));
    let started = Instant::now();
    let mut stream = TcpStream::connect(gw.listeners[0]).await.expect("connect");
    let (got, closed) = read_to_close(&mut stream, LIMIT + SLACK).await;
    assert_closed_in_time("silent from accept", started, closed, LIMIT);
    assert!(got.is_empty());
    let s = counted(metrics, "proxy_first_byte", 1).await;
    assert_eq!(s.header_errors("timeout"), 0, "not a header timeout");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

/// HAProxy's plain TCP check (`check port`: connect, then close) against the PROXY port:
/// HAProxy sees the port up, and trustgate counts no header error and warns about
/// nothing. (HAProxy resets its check connection as soon as it is established; on Linux
/// such a connection leaves the accept queue before `accept()` returns it, so user space
/// never sees these checks: measured here, HAProxy reports L4OK while nothing is
/// accepted. Checkers that close with a FIN are counted as `no_data`, above.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_tcp_checks_pass_and_are_never_header_errors() {
    let Some(haproxy) = common::tool("haproxy") else {
        return;
    };
    let (upstream, _hits) = upstream::counting().await;
    let (mut gw, metrics) = start_with_receiver_defaults(upstream, loopback());
    let ours = gw.listeners[0];
    let front = common::peers::free_addr("127.0.0.1");
    let ready = common::peers::free_addr("127.0.0.1");
    let config = format!(
        "global\n    pidfile {{dir}}/haproxy.pid\n    nbthread 1\n    \
         stats socket {{dir}}/stats.sock mode 600 level admin\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\
         frontend ready\n    bind {ready}\n    tcp-request connection reject\n\
         listen front\n    bind {front}\n    \
         server ours {ours} send-proxy-v2 check port {port} inter 100ms\n",
        port = ours.port()
    );
    let haproxy = block_in_place(|| common::peers::haproxy(&haproxy, &config, ready));
    let socket = haproxy.dir().join("stats.sock");
    // Passed checks: the server's check status is L4OK, several times over.
    let deadline = Instant::now() + SETTLE;
    let status = loop {
        let status = block_in_place(|| haproxy_check_status(&socket));
        if status.as_deref() == Some("L4OK") || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        status.as_deref(),
        Some("L4OK"),
        "HAProxy's check of trustgate"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = scrape::scrape(metrics).await;
    assert!(
        s.header_errors_by_kind().values().all(|v| *v == 0),
        "no header error: {:?}",
        s.header_errors_by_kind()
    );
    drop(haproxy);
    block_in_place(|| {
        gw.signal(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(true));
    });
    assert!(gw.alarms().is_empty(), "warned: {:#?}", gw.alarms());
}

/// The `check_status` of the one server, from HAProxy's stats socket.
fn haproxy_check_status(socket: &std::path::Path) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    stream.write_all(b"show stat\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let mut lines = text.lines();
    let names: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
    let column = names.iter().position(|n| *n == "check_status")?;
    let server = lines.find(|l| l.split(',').nth(1) == Some("ours"))?;
    server.split(',').nth(column).map(str::to_owned)
}
