//! `serve_h1` letting go of an idle connection's hyper connection, over an in-memory
//! stream with the clock paused. What shows that hyper's buffers are gone is the room of
//! the read the connection waits on: hyper waits with its 8 KiB read buffer, the serving
//! loop with its small stack buffer.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::watch;

use super::clock::{Activity, RELEASE_AFTER, Timed, Tracked, WaitLimits};
use super::{NEXT_HEAD_FIRST_READ_BYTES, Watch, serve_h1};
use crate::forward::BodyEnd;
use crate::metrics::{TimeoutCounts, TimeoutKind};
use crate::proxy_protocol::Rewind;

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
const POST: &[u8] = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
const KEEPALIVE: Duration = Duration::from_secs(75);
/// The most `serve_h1`'s future may take here, over an in-memory stream: 576 bytes today.
/// Over a `TcpStream` it is 32 bytes more, and `serve_http` adds 24: past this bound, an
/// idle plain connection's serving future would leave jemalloc's 640-byte class.
const SERVE_H1_MAX_BYTES: usize = 584;
/// `request_max_header_size`'s default.
const REQUEST_MAX_HEADER_SIZE: u32 = 64 << 10;

/// The server side of the connection, noting the room of every read that had to wait.
struct Probe {
    inner: DuplexStream,
    waits: Arc<Mutex<Vec<usize>>>,
}

impl AsyncRead for Probe {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let room = buf.remaining();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if polled.is_pending() {
            self.waits.lock().expect("not poisoned").push(room);
        }
        polled
    }
}

impl AsyncWrite for Probe {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A connection served by `serve_h1`, answering "ok" to every request after reading its
/// body; a body is reported read to its end when `tell_body_end` (as the forwarder does).
struct Served {
    client: DuplexStream,
    waits: Arc<Mutex<Vec<usize>>>,
    counts: Arc<TimeoutCounts>,
    _stop: watch::Sender<bool>,
}

fn serve(tell_body_end: bool) -> Served {
    let (client, server) = tokio::io::duplex(64 << 10);
    let waits = Arc::new(Mutex::new(Vec::new()));
    let activity = Activity::new();
    let counts = Arc::new(TimeoutCounts::default());
    let limits = Arc::new(WaitLimits {
        header: Duration::from_secs(60),
        keepalive: KEEPALIVE,
        send: Duration::from_secs(30),
        counts: Arc::clone(&counts),
    });
    let io = Timed::new(
        Rewind::new(
            Probe {
                inner: server,
                waits: Arc::clone(&waits),
            },
            Vec::new(),
            0,
        ),
        Arc::clone(&activity),
        true,
        Arc::clone(&limits),
    );
    let requests = Arc::clone(&activity);
    let service = service_fn(move |mut req: Request<Incoming>| {
        let in_flight = requests.begin();
        requests.watch_request(&mut req);
        async move {
            let end = req.extensions_mut().remove::<BodyEnd>();
            let body = req.into_body().collect().await;
            assert!(body.is_ok(), "the body is read whole");
            if let Some(end) = end.filter(|_| tell_body_end) {
                end.fire();
            }
            let body = Tracked::new(Full::new(Bytes::from_static(b"ok")), in_flight, None);
            Ok::<_, Infallible>(Response::new(body))
        }
    });
    let (stop_tx, stop) = watch::channel(false);
    let watch = Watch {
        activity,
        heads: true,
        limits,
        _per_ip: None,
    };
    let serving = serve_h1(io, service, REQUEST_MAX_HEADER_SIZE, None, stop, watch);
    // What every idle keep-alive connection holds, besides its task (`cargo xtask bench
    // memory`): one allocation, of the 640-byte class with the size `serve_http` adds.
    let size = std::mem::size_of_val(&serving);
    assert!(
        size <= SERVE_H1_MAX_BYTES,
        "serve_h1's future is {size} bytes"
    );
    tokio::spawn(serving);
    Served {
        client,
        waits,
        counts,
        _stop: stop_tx,
    }
}

impl Served {
    /// Sends `requests` in one write and reads until `n` responses have come whole.
    async fn exchange(&mut self, requests: &[u8], n: usize) -> String {
        self.client.write_all(requests).await.expect("in memory");
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        while String::from_utf8_lossy(&got).matches("\r\n\r\nok").count() < n {
            let read = self.client.read(&mut chunk).await.expect("in memory");
            assert!(
                read > 0,
                "closed early; got {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&chunk[..read]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    /// The room of the read the connection is waiting on now.
    fn waiting_with(&self) -> usize {
        *self
            .waits
            .lock()
            .expect("not poisoned")
            .last()
            .expect("the connection has waited")
    }

    /// Lets the connection sit idle for `idle`, then says what it waits with.
    async fn idle_for(&self, idle: Duration) -> usize {
        tokio::time::sleep(idle).await;
        self.waiting_with()
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_lets_hyper_go_and_serves_its_next_requests() {
    let mut conn = serve(true);
    let first = conn.exchange(GET, 1).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first:?}");
    assert!(
        conn.idle_for(RELEASE_AFTER / 2).await >= 8 << 10,
        "just after a request, hyper still waits with its buffer"
    );
    assert_eq!(
        conn.idle_for(RELEASE_AFTER).await,
        NEXT_HEAD_FIRST_READ_BYTES,
        "idle past RELEASE_AFTER, the connection waits holding no hyper buffer"
    );
    // Two pipelined requests after the release: both answered, in order, and the
    // connection is kept alive (no `connection: close`).
    let both = conn.exchange(&[GET, GET].concat(), 2).await;
    assert_eq!(both.matches("HTTP/1.1 200").count(), 2, "{both:?}");
    assert!(
        !both.to_ascii_lowercase().contains("connection: close"),
        "{both:?}"
    );
    // And again, with a body read to its end.
    assert_eq!(
        conn.idle_for(RELEASE_AFTER * 2).await,
        NEXT_HEAD_FIRST_READ_BYTES
    );
    let posted = conn.exchange(POST, 1).await;
    assert!(posted.starts_with("HTTP/1.1 200"), "{posted:?}");
    assert_eq!(
        conn.idle_for(RELEASE_AFTER * 2).await,
        NEXT_HEAD_FIRST_READ_BYTES
    );
    let last = conn.exchange(GET, 1).await;
    assert!(last.starts_with("HTTP/1.1 200"), "{last:?}");
}

#[tokio::test(start_paused = true)]
async fn a_connection_whose_body_was_not_read_to_its_end_keeps_hyper() {
    let mut conn = serve(false);
    let posted = conn.exchange(POST, 1).await;
    assert!(posted.starts_with("HTTP/1.1 200"), "{posted:?}");
    assert!(
        conn.idle_for(RELEASE_AFTER * 5).await >= 8 << 10,
        "hyper alone knows where its read side is: it keeps the connection"
    );
    let next = conn.exchange(GET, 1).await;
    assert!(next.starts_with("HTTP/1.1 200"), "{next:?}");
}

#[tokio::test(start_paused = true)]
async fn a_released_connection_still_closes_at_the_keepalive_timeout() {
    let mut conn = serve(true);
    conn.exchange(GET, 1).await;
    assert_eq!(
        conn.idle_for(RELEASE_AFTER * 2).await,
        NEXT_HEAD_FIRST_READ_BYTES
    );
    tokio::time::sleep(KEEPALIVE).await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(1), conn.client.read_to_end(&mut rest))
        .await
        .expect("closed by then");
    assert_eq!(read.expect("in memory"), 0, "closed without a word");
    assert_eq!(conn.counts.get(TimeoutKind::Keepalive), 1);
}
