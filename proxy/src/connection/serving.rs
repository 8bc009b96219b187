//! One connection's HTTP, once it is admitted (and past TLS): h2 told from HTTP/1.1 on a
//! plain connection (`sniff`), hyper's server over the timed stream (`clock::Timed`) with
//! the forwarder as its service, and the watch over its waits (`drive`). HTTP/1.1 is
//! served one hyper connection at a time, let go between requests (`serve_h1`,
//! `next_request`). Every future here that lives as long as the connection is kept small:
//! see [`serve_http`].

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::Either;
use http::Request;
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::{HttpService, service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

use super::clock::{self, Activity, Expiry, StreamClock, StreamExec, Timed, Tracked, WaitLimits};
use super::per_ip::PerIpGuard;
use super::runtime::Runtime;
use crate::chain::Chain;
use crate::forward::ConnContext;
use crate::metrics::TimeoutKind;
use crate::proxy_protocol::Rewind;

/// How long an h2 connection may be silent before it is sent a PING, and how long the
/// PING's answer may take: a peer that is gone is noticed even while streams wait.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// What an h2 connection starts with (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The most read at once while telling h2 from HTTP/1.1: a whole ordinary request head,
/// so that hyper gets it in one piece (see [`sniff`]).
const SNIFF_BYTES: usize = 4096;

/// The HTTP a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Http {
    One,
    Two,
}

/// What [`serve_http`] serves a connection with. It comes boxed, and is unpacked and
/// freed as the future starts: a future keeps the space of what it was given for its
/// whole life, even once that is moved out, and this one lives as long as the connection.
pub(super) struct ToServe<S> {
    /// The client stream, with what was read of it and is still to be replayed.
    pub(super) stream: Rewind<S>,
    /// Known on TLS (by ALPN); `None`: sniffed from the first bytes.
    pub(super) http: Option<Http>,
    /// Where `connection_handling_timeout`, counted from the start of HTTP, ends it.
    pub(super) deadline: Option<Instant>,
    pub(super) ctx: ConnContext,
    pub(super) runtime: Arc<Runtime>,
    /// Turns true when the server drains.
    pub(super) stop: watch::Receiver<bool>,
    /// The connection's count against `max_clients_per_ip`, held to its end.
    pub(super) per_ip: Option<PerIpGuard>,
    pub(super) activity: Arc<Activity>,
}

/// `boxed`'s value, its allocation freed now: moving out of a `Box` binding frees the
/// allocation only where the binding goes out of scope, which for a future's argument is
/// the future's end.
#[allow(clippy::boxed_local, reason = "taking the box is the point")]
pub(super) fn unboxed<T>(boxed: Box<T>) -> T {
    *boxed
}

/// Reads a plain connection's first bytes, as many as have arrived (up to
/// [`SNIFF_BYTES`]), until they are known to be the h2 preface or not to be. The bytes are
/// put back in `stream`, to be replayed to the server. This is what hyper-util's `auto`
/// server does, but that reads the
/// first 24 bytes apart, and hyper's HTTP/1.1 reader, given a first piece too short for a
/// whole request head, then doubles its read buffer to 16 KB (a reallocation on every new
/// connection, and 8 KB more held by every idle one).
async fn sniff<S>(stream: &mut Rewind<S>) -> std::io::Result<Http>
where
    S: AsyncRead + Unpin,
{
    let mut buf = Vec::with_capacity(SNIFF_BYTES);
    let http = loop {
        let read = stream.read_buf(&mut buf).await?;
        let seen = buf.get(..H2_PREFACE.len()).unwrap_or(&buf);
        if read == 0 || !H2_PREFACE.starts_with(seen) {
            break Http::One;
        }
        if seen.len() == H2_PREFACE.len() {
            break Http::Two;
        }
    };
    stream.replay_owned(buf);
    Ok(http)
}

/// Serves HTTP/1.1 (with upgrades) or h2 on one connection: `http`, else what [`sniff`]
/// finds. Every wait is bounded (see `clock`): the request head, keep-alive and h2 idle
/// by the watchdog, writes by [`Timed`], h2 streams by [`StreamExec`], bodies by the
/// forwarder. When `stop` turns true, the connection finishes its in-flight requests and
/// closes (h2 GOAWAY, HTTP/1.1 `Connection: close` after the current response); one still
/// waiting for its first bytes closes at once. `connection_handling_timeout` bounds it all.
///
/// This future lives as long as the connection, idle or not, so what it holds is kept
/// small: every wait that ends before the connection does (the sniff, each hyper
/// connection and its watch) is boxed and freed when it ends, its inputs come boxed (see
/// [`ToServe`]), and it is written as a function returning an `async move` block, which
/// (unlike an `async fn`) keeps no second copy of its arguments.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would keep a second copy of its arguments"
)]
pub(super) fn serve_http<S>(mut serving: Box<ToServe<S>>) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async move {
        let http = match serving.http {
            Some(http) => http,
            None => {
                let ToServe {
                    stream,
                    deadline,
                    ctx,
                    runtime,
                    stop,
                    ..
                } = &mut *serving;
                let first = Instant::now() + runtime.timeouts.request_header;
                let first = deadline.map_or(first, |d| d.min(first));
                let sniffed = tokio::select! {
                    sniffed = Box::pin(within(Some(first), sniff(stream))) => sniffed,
                    () = stopped(stop) => return,
                };
                match sniffed {
                    Some(Ok(http)) => http,
                    Some(Err(err)) => {
                        debug!(client = %ctx.client, error = %Chain(&err), "connection failed before its first request");
                        return;
                    }
                    None => {
                        runtime
                            .forwarder
                            .metrics()
                            .timeouts
                            .bump(TimeoutKind::RequestHeader);
                        debug!(client = %ctx.client, "no request before request_header_timeout; closing");
                        return;
                    }
                }
            }
        };
        // Awaited as made: a future kept in a binding first would be stored twice.
        serve_sniffed(serving, http).await
    }
}

/// When `connection_handling_timeout`, if set, ends a connection whose HTTP starts now.
pub(super) fn handling_deadline(runtime: &Runtime) -> Option<Instant> {
    let limit = runtime.limits.connection_handling_timeout;
    limit.map(|limit| Instant::now() + limit)
}

/// [`serve_http`] once the protocol is known: hyper's server for it over the timed
/// stream, with the forwarder as the service. HTTP/1.1's future is returned as it is, to
/// be held inline by the caller; h2's is boxed (an h2 connection is large, and rarer).
fn serve_sniffed<S>(serving: Box<ToServe<S>>, http: Http) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ToServe {
        stream,
        http: _,
        deadline,
        ctx,
        runtime,
        mut stop,
        per_ip,
        activity,
    } = unboxed(serving);
    let timeouts = &runtime.timeouts;
    let forwarder = Arc::clone(&runtime.forwarder);
    let ctx = Arc::new(ctx);
    let requests = Arc::clone(&activity);
    let heads = http == Http::One;
    let service = service_fn(move |mut req: Request<Incoming>| {
        let forwarder = Arc::clone(&forwarder);
        let ctx = Arc::clone(&ctx);
        let in_flight = requests.begin();
        if heads {
            requests.watch_request(&mut req);
        }
        async move {
            let response = forwarder.handle(req, &ctx).await;
            let clock = StreamClock::current();
            Ok::<_, Infallible>(response.map(|body| Tracked::new(body, in_flight, clock)))
        }
    });
    let limits = &runtime.wait_limits;
    let io = Timed::new(stream, Arc::clone(&activity), heads, Arc::clone(limits));
    let watch = Watch {
        activity,
        heads,
        limits: Arc::clone(limits),
        _per_ip: per_ip,
    };
    match http {
        Http::One => {
            let limit = runtime.limits.request_max_header_size;
            Either::Left(serve_h1(io, service, limit, deadline, stop, watch))
        }
        Http::Two => {
            let exec = StreamExec {
                send: timeouts.send,
                counts: Arc::clone(&watch.limits.counts),
            };
            let conn = http2::Builder::new(exec)
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(H2_PING_INTERVAL))
                .keep_alive_timeout(H2_PING_TIMEOUT)
                .max_concurrent_streams(runtime.limits.max_concurrent_streams)
                .max_header_list_size(runtime.limits.request_max_header_size)
                .max_send_buf_size(DOWNSTREAM_BUF_BYTES)
                .serve_connection(TokioIo::new(io), service);
            Either::Right(Box::pin(async move {
                let mut conn = Box::pin(conn);
                let graceful = http2::Connection::graceful_shutdown;
                drive(&mut conn, graceful, deadline, &mut stop, &watch).await;
            }))
        }
    }
}

/// Serves HTTP/1.1 on one connection, one hyper connection at a time. Once the connection
/// has been between requests for [`clock::RELEASE_AFTER`] (see `Activity::releasable_from`
/// for what "between" takes), its hyper connection is shut down gracefully with the
/// stream kept open ([`Timed`] swallows the shutdown), and with it go hyper's read and
/// write buffers: an idle keep-alive connection then holds no per-request buffer. The
/// next request's first bytes are awaited by [`next_request`] with nothing but a small
/// buffer, under the keep-alive timeout and the drain, then a new hyper connection
/// serves them, those bytes (and any hyper had read ahead) replayed first. A connection
/// that asked to upgrade, or whose request body was not read to its end, keeps its hyper
/// connection. Like [`serve_http`], a function returning an `async move` block, so it
/// holds one copy of its arguments.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would keep a second copy of its arguments"
)]
fn serve_h1<S, Svc, B>(
    mut io: Timed<Rewind<S>>,
    mut service: Svc,
    request_max_header_size: u32,
    deadline: Option<Instant>,
    mut stop: watch::Receiver<bool>,
    watch: Watch,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Svc: HttpService<Incoming, ResBody = B> + Unpin + Send + 'static,
    Svc::Future: Send,
    Svc::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    async move {
        loop {
            io.set_serving(true);
            let mut conn = h1_connection(io, service, request_max_header_size);
            let driven = Box::pin(drive(
                &mut conn,
                http1::UpgradeableConnection::graceful_shutdown,
                deadline,
                &mut stop,
                &watch,
            ))
            .await;
            watch.activity.end_release();
            if driven != Driven::Released {
                return;
            }
            match released(conn) {
                Some(released) => (io, service) = released,
                None => return,
            }
            io.set_serving(false);
            if !io.get_ref().buffered().is_empty() {
                continue;
            }
            if !next_request(&mut io, deadline, &mut stop, &watch).await {
                return;
            }
        }
    }
}

/// hyper's HTTP/1.1 connection (with upgrades) over a downstream stream.
type H1Connection<S, Svc> = http1::UpgradeableConnection<TokioIo<Timed<Rewind<S>>>, Svc>;

/// A hyper HTTP/1.1 connection (with upgrades) over `io`, boxed: [`drive`] and the
/// futures that wrap it would otherwise each hold a copy of its space.
fn h1_connection<S, Svc, B>(
    io: Timed<Rewind<S>>,
    service: Svc,
    request_max_header_size: u32,
) -> Pin<Box<H1Connection<S, Svc>>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Svc: HttpService<Incoming, ResBody = B>,
    Svc::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = http1::Builder::new();
    builder
        .max_header_size(to_usize(request_max_header_size))
        .max_buf_size(h1_buf_bytes(request_max_header_size));
    Box::pin(
        builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades(),
    )
}

/// The stream and service of a hyper connection let go of between requests, with any
/// bytes hyper had read ahead put back to be replayed; `None` if hyper gives them back
/// no longer (an upgrade took them).
fn released<S, Svc, B>(conn: Pin<Box<H1Connection<S, Svc>>>) -> Option<(Timed<Rewind<S>>, Svc)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Svc: HttpService<Incoming, ResBody = B> + Unpin,
    Svc::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let parts = Pin::into_inner(conn).into_parts()?;
    let mut io = parts.io.into_inner();
    // `read_buf` is a view of hyper's whole read buffer: copied out of, then dropped
    // with the rest of `parts`, so the buffer does not live on through the wait.
    io.get_mut().replay(&parts.read_buf);
    Some((io, parts.service))
}

/// Waits, holding no hyper connection, for the first bytes of the next request on `io`,
/// and puts them back to be replayed: `true` when they came, `false` when the connection
/// is done (closed by the client, failed, drained, idle past `keepalive_timeout`, or at
/// `connection_handling_timeout`). One timer serves both deadlines, and the drain is
/// watched by `changed()`: this is the state an idle keep-alive connection is in, so it
/// is kept small.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would keep a second copy of its arguments"
)]
fn next_request<'a, S>(
    io: &'a mut Timed<Rewind<S>>,
    deadline: Option<Instant>,
    stop: &'a mut watch::Receiver<bool>,
    watch: &'a Watch,
) -> impl Future<Output = bool> + Send + 'a
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async move {
        let mut first = [0u8; NEXT_HEAD_FIRST_READ_BYTES];
        let mut stop_gone = false;
        loop {
            if *stop.borrow_and_update() {
                return false;
            }
            let Some(wake) = idle_wake(watch, deadline) else {
                return false;
            };
            tokio::select! {
                read = io.read(&mut first) => {
                    return match read {
                        Ok(0) => false,
                        Ok(n) => {
                            io.get_mut().replay(first.get(..n).unwrap_or_default());
                            true
                        }
                        Err(err) => {
                            debug!(error = %Chain(&err), "connection failed between requests");
                            false
                        }
                    };
                }
                changed = stop.changed(), if !stop_gone => stop_gone = changed.is_err(),
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

/// When [`next_request`] looks again: the next time the keep-alive may have run out, or
/// `deadline` if sooner; `None` (counted and logged) when one of them already has.
fn idle_wake(watch: &Watch, deadline: Option<Instant>) -> Option<Instant> {
    let now = Instant::now();
    let limits = &*watch.limits;
    match clock::expiry_or_wake(&watch.activity, true, limits.header, limits.keepalive, now) {
        Ok(expired) => {
            limits.count_expiry(expired);
            None
        }
        Err(_) if deadline.is_some_and(|deadline| deadline <= now) => {
            debug!("connection_handling_timeout reached; closing");
            None
        }
        Err(wake) => Some(deadline.map_or(wake, |deadline| deadline.min(wake))),
    }
}

/// What [`serve_h1`] reads of the next request while it holds no hyper connection, in
/// the connection's future (held by every idle connection, so small); hyper reads the
/// rest. A request head after an idle spell costs one read more than under hyper.
const NEXT_HEAD_FIRST_READ_BYTES: usize = 16;

/// The ceiling on what a downstream connection buffers: an HTTP/1.1 connection's read
/// buffer and its queue of bytes waiting to be written (hyper's `max_buf_size`, whose
/// default is about 400 KiB), an h2 stream's send buffer (`max_send_buf_size`, also
/// 400 KiB by default). With the upstream's ceiling (`forward`) it bounds the memory a
/// flowing response holds.
const DOWNSTREAM_BUF_BYTES: usize = 64 << 10;

/// The HTTP/1.1 buffer ceiling: [`DOWNSTREAM_BUF_BYTES`], or more when
/// `request_max_header_size` is larger, since a request head must fit in the buffer.
fn h1_buf_bytes(request_max_header_size: u32) -> usize {
    DOWNSTREAM_BUF_BYTES.max(to_usize(request_max_header_size))
}

/// A `u32` limit as hyper's `usize`.
fn to_usize(n: u32) -> usize {
    usize::try_from(n).expect("trustgate runs on targets whose usize holds a u32")
}

/// `future`'s output, or `None` if `deadline` comes first.
async fn within<F: Future>(deadline: Option<Instant>, future: F) -> Option<F::Output> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, future).await.ok(),
        None => Some(future.await),
    }
}

/// What [`drive`] watches a connection's waits with.
struct Watch {
    activity: Arc<Activity>,
    /// HTTP/1: requests have heads to time.
    heads: bool,
    limits: Arc<WaitLimits>,
    /// Held for the connection's life: its count against `max_clients_per_ip`.
    _per_ip: Option<PerIpGuard>,
}

/// Runs a server connection to its end, or to `deadline`; when `stop` turns true, starts
/// its graceful shutdown and lets it finish. When the watchdog finds it idle or its
/// request head late, ends it: an idle HTTP/1.1 connection is closed, a late head is
/// answered 408 first, an idle h2 connection gets GOAWAY (both bounded by
/// `send_timeout`). An HTTP/1 connection found due for release (see [`serve_h1`]) is
/// shut down gracefully and reported [`Driven::Released`] if it ends cleanly. The
/// connection comes boxed: each future that wraps it here would
/// otherwise hold a copy of its space (an h2 connection is 1.5 KB), making the
/// connection's task several times larger, and slower to move.
async fn drive<C>(
    conn: &mut Pin<Box<C>>,
    shutdown: fn(Pin<&mut C>),
    deadline: Option<Instant>,
    stop: &mut watch::Receiver<bool>,
    watch: &Watch,
) -> Driven
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    let activity = &*watch.activity;
    let limits = &*watch.limits;
    let drained = async {
        let expired = loop {
            tokio::select! {
                result = conn.as_mut() => return Some((result, Driven::Ended)),
                () = stopped(stop) => {
                    shutdown(conn.as_mut());
                    return Some((conn.as_mut().await, Driven::Ended));
                }
                () = activity.release_due() => {
                    if activity.take_release() {
                        shutdown(conn.as_mut());
                        return Some((conn.as_mut().await, Driven::Released));
                    }
                }
                expired = clock::expiry(activity, watch.heads, limits.header, limits.keepalive) => break expired,
            }
        };
        limits.count_expiry(expired);
        match expired {
            Expiry::RequestHeader { begun: true } => activity.expire_head(),
            _ if watch.heads => return None,
            _ => shutdown(conn.as_mut()),
        }
        within(Some(Instant::now() + limits.send), conn.as_mut())
            .await
            .map(|result| (result, Driven::Ended))
    };
    match within(deadline, drained).await {
        None => {
            debug!("connection_handling_timeout reached; closing");
            Driven::Ended
        }
        Some(None) => Driven::Ended,
        Some(Some((Err(err), _))) => {
            debug!(error = %Chain(&err), "connection ended with an error");
            Driven::Ended
        }
        Some(Some((Ok(()), driven))) => driven,
    }
}

/// How [`drive`] left a hyper connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Driven {
    /// It ended (or was ended): the client connection is done.
    Ended,
    /// It was let go of between requests (HTTP/1); the client connection goes on.
    Released,
}

/// Completes when draining starts (never, if the server is gone without draining).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
#[path = "release_tests.rs"]
mod release_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http1_buffer_ceiling_is_64k_unless_a_head_may_be_larger() {
        use crate::config::{REQUEST_MAX_HEADER_SIZE_MAX, REQUEST_MAX_HEADER_SIZE_MIN};
        assert_eq!(h1_buf_bytes(REQUEST_MAX_HEADER_SIZE_MIN), 64 << 10);
        assert_eq!(h1_buf_bytes(64 << 10), 64 << 10);
        assert_eq!(
            h1_buf_bytes(REQUEST_MAX_HEADER_SIZE_MAX),
            to_usize(REQUEST_MAX_HEADER_SIZE_MAX)
        );
    }

    /// Runs `sniff` over `parts`, each handed out by a read of its own; returns what it
    /// found and everything the stream then yields.
    async fn sniffed(parts: &[&'static [u8]]) -> (Http, Vec<u8>) {
        let mut stream: Box<dyn AsyncRead + Unpin + Send> = Box::new(&b""[..]);
        for part in parts.iter().rev() {
            stream = Box::new(AsyncReadExt::chain(*part, stream));
        }
        let mut replay = Rewind::new(stream, Vec::new(), 0);
        let http = sniff(&mut replay).await.expect("reads from memory");
        let mut all = Vec::new();
        replay
            .read_to_end(&mut all)
            .await
            .expect("reads from memory");
        (http, all)
    }

    #[tokio::test]
    async fn sniff_tells_h2_from_http1_and_replays_every_byte() {
        let request: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(sniffed(&[request]).await, (Http::One, request.to_vec()));
        let (head, tail) = H2_PREFACE.split_at(5);
        let (http, all) = sniffed(&[head, tail, b"frames"]).await;
        assert_eq!(http, Http::Two);
        assert_eq!(all, [H2_PREFACE, b"frames"].concat());
        // A preface that goes wrong halfway is HTTP/1.1 (hyper answers it with a 400).
        let (http, all) = sniffed(&[b"PRI * HTTP/1.1\r\n"]).await;
        assert_eq!(
            (http, all.as_slice()),
            (Http::One, &b"PRI * HTTP/1.1\r\n"[..])
        );
        // EOF before anything.
        assert_eq!(sniffed(&[]).await, (Http::One, Vec::new()));
        // EOF inside the preface.
        assert_eq!(sniffed(&[head]).await, (Http::One, head.to_vec()));
    }
}
