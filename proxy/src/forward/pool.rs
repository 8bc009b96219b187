//! The upstream pool: every upstream connection, HTTP/1.1 or h2, plain or TLS, with or
//! without a PROXY header, is made by the [`Connector`] and kept here, keyed by
//! {authority, protocol, TLS or not, PROXY header bytes or none} ([`Key`]). One pool is
//! shared by the forwarder; each downstream connection that sends to upstreams taking a
//! PROXY header gets one of its own ([`Pool::private`], held by `ConnPools`), so a
//! connection that carries one client's header is never offered to another connection's
//! request, and closes with its downstream connection. hyper's own client connections
//! (`client::conn::{http1,http2}`), configured in one place (`client::hyper_builders`).
//!
//! HTTP/1.1: a connection carries one request at a time and goes back on its key's idle
//! list once its response body has been read to the end ([`GiveBack`], dropped with the
//! body); one whose body is abandoned, or that switched protocols, is not. h2: one
//! connection per key carries every stream; concurrent requests that find none wait for
//! the one being dialled rather than each opening one. Idle connections (h2: with no
//! stream open) past the idle timeout are closed by a reaper task; one the upstream
//! closed while idle is skipped at checkout; a request a reused connection refused
//! unsent goes once more, on a new connection. Each connection holds a slot under
//! `max_upstream_connections`; at the cap the shared pool closes its least recently used
//! idle connection to make room ([`Evict`]).

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper::rt::{Read, Write};
use tokio::time::Instant;
use tracing::debug;

use super::body::RequestBody;
use super::client::{Builders, Protocol, UpstreamError};
use super::connect::{Connector, Stream};
use super::slots::{Evict, Slotted};

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

/// Everything that makes an upstream connection reusable for a request. The TLS settings
/// are the connector's, per `protocol` (its ALPN offer).
#[derive(Clone, Copy, Debug)]
pub(super) struct Key<'a> {
    pub(super) authority: &'a Authority,
    pub(super) protocol: Protocol,
    pub(super) tls: bool,
    /// The PROXY header the connection starts with; none for upstreams that take none.
    pub(super) header: Option<&'a [u8]>,
}

/// Upstream connections by key. Clones share them.
#[derive(Debug)]
pub(super) struct Pool<B = RequestBody> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for Pool<B> {
    fn clone(&self) -> Self {
        Pool {
            inner: Arc::clone(&self.inner),
        }
    }
}

#[derive(Debug)]
struct Inner<B> {
    connector: Arc<Connector>,
    builders: Arc<Builders>,
    idle_timeout: Duration,
    entries: Mutex<Entries<B>>,
}

#[derive(Debug)]
struct Entries<B> {
    /// One per key ever used. Never removed while the pool lives, so a [`GiveBack`] can
    /// name its entry by index; there are few (the config's upstreams × protocols, or a
    /// downstream connection's few headers), so a list, not a map.
    list: Vec<Entry<B>>,
    reaper_started: bool,
}

#[derive(Debug)]
struct Entry<B> {
    authority: Authority,
    protocol: Protocol,
    tls: bool,
    header: Option<Box<[u8]>>,
    /// HTTP/1.1 connections at rest, most recently used last.
    idle: Vec<Idle<B>>,
    /// The h2 connection this key's streams share, once one is open.
    h2: Option<H2<B>>,
    /// Held while an h2 connection for this key is dialled.
    dial: Arc<tokio::sync::Mutex<()>>,
}

impl<B> Entry<B> {
    fn is(&self, key: &Key<'_>) -> bool {
        self.protocol == key.protocol
            && self.tls == key.tls
            && self.authority == *key.authority
            && self.header.as_deref() == key.header
    }
}

#[derive(Debug)]
struct Idle<B> {
    sender: http1::SendRequest<B>,
    since: Instant,
}

#[derive(Debug)]
struct H2<B> {
    sender: http2::SendRequest<B>,
    streams: Arc<Streams>,
}

impl<B> H2<B> {
    /// Whether it can take a stream now.
    fn usable(&self) -> bool {
        !self.sender.is_closed() && self.sender.is_ready()
    }
}

/// The streams open on an h2 connection, and since when it has had none.
#[derive(Debug)]
struct Streams {
    open: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Streams {
    fn new() -> Arc<Streams> {
        Arc::new(Streams {
            open: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        })
    }

    fn take(self: &Arc<Self>) -> Arc<Streams> {
        self.open.fetch_add(1, Ordering::AcqRel);
        Arc::clone(self)
    }

    fn release(&self) {
        if self.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self
                .idle_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        }
    }

    /// Since when no stream has been open, if none is.
    fn idle_since(&self) -> Option<Instant> {
        let since = *self
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (self.open.load(Ordering::Acquire) == 0).then_some(since)
    }
}

/// Runs an upstream connection's task (hyper's `Connection`, HTTP/1.1 or h2) until it
/// ends; how it ended is logged at debug.
fn drive<F>(conn: F, what: &'static str)
where
    F: std::future::Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(error) = conn.await {
            debug!(%error, "{what} ended with an error");
        }
    });
}

/// A connection a request can go on.
enum Conn<B> {
    H1(http1::SendRequest<B>),
    /// A clone of the key's shared sender, with its stream counted.
    H2(http2::SendRequest<B>, Arc<Streams>),
}

impl<B: PoolBody> Pool<B> {
    /// The shared pool: made by `connector`, whose slots it is asked to make room in.
    pub(super) fn new(
        connector: Arc<Connector>,
        builders: Arc<Builders>,
        idle_timeout: Duration,
    ) -> Pool<B> {
        let pool = Pool::unregistered(connector, builders, idle_timeout);
        let evict: Arc<dyn Evict> = Arc::clone(&pool.inner) as Arc<dyn Evict>;
        pool.inner
            .connector
            .capped
            .slots
            .register(Arc::downgrade(&evict));
        pool
    }

    /// An empty pool with this one's connector and settings, for one downstream
    /// connection. Not asked to make room at the cap: its connections close with the
    /// downstream connection or after the idle timeout.
    pub(super) fn private(&self) -> Pool<B> {
        Pool::unregistered(
            Arc::clone(&self.inner.connector),
            Arc::clone(&self.inner.builders),
            self.inner.idle_timeout,
        )
    }

    fn unregistered(
        connector: Arc<Connector>,
        builders: Arc<Builders>,
        idle_timeout: Duration,
    ) -> Pool<B> {
        Pool {
            inner: Arc::new(Inner {
                connector,
                builders,
                idle_timeout,
                entries: Mutex::new(Entries {
                    list: Vec::new(),
                    reaper_started: false,
                }),
            }),
        }
    }

    /// Sends `request` (its URI absolute) on a connection for `key`, reused or new, and
    /// returns the response head with what puts the connection back.
    pub(super) async fn send(
        &self,
        key: &Key<'_>,
        mut request: Request<B>,
    ) -> Result<(Response<Incoming>, GiveBack<B>), UpstreamError> {
        let uri = request.uri().clone();
        let mut fresh = false;
        loop {
            let found = if fresh {
                None
            } else {
                self.checkout(key).await
            };
            let (index, conn) = match found {
                Some(found) => found,
                // Boxed: connecting (TLS and h2 handshakes included) takes kilobytes of
                // state, which would otherwise make every request's future that large,
                // and the future of each request of a keep-alive connection is kept in
                // place for the connection's life (and moved, for h2 streams).
                None => Box::pin(self.connect(key, &uri, fresh)).await?,
            };
            let mut give_back = GiveBack {
                pool: Arc::downgrade(&self.inner),
                index,
                held: None,
            };
            let sent = match conn {
                Conn::H1(mut sender) => {
                    // To an origin server the request line carries the path only (the
                    // Host header, set by `headers::prepare_request`, names the server).
                    *request.uri_mut() = uri
                        .path_and_query()
                        .cloned()
                        .map_or_else(Uri::default, Uri::from);
                    *request.version_mut() = Version::HTTP_11;
                    let sent = sender.try_send_request(request).await;
                    // A connection that switched protocols is the tunnel's now.
                    if sent
                        .as_ref()
                        .is_ok_and(|r| r.status() != StatusCode::SWITCHING_PROTOCOLS)
                    {
                        give_back.held = Some(Held::H1(sender));
                    }
                    sent
                }
                Conn::H2(mut sender, streams) => {
                    give_back.held = Some(Held::H2(streams));
                    *request.uri_mut() = uri.clone();
                    *request.version_mut() = Version::HTTP_2;
                    sender.try_send_request(request).await
                }
            };
            match sent {
                Ok(response) => return Ok((response, give_back)),
                Err(mut err) => match err.take_message() {
                    // Refused unsent: the connection was dead. Once more, on a new one.
                    Some(unsent) if !fresh => {
                        debug!(error = %err.into_error(), "pooled upstream connection was closed; retrying");
                        request = unsent;
                        fresh = true;
                    }
                    _ => return Err(UpstreamError::Send(err.into_error())),
                },
            }
        }
    }

    /// A connection for `key` that is ready for a request, if there is one: the shared
    /// h2 one, else an idle HTTP/1.1 one.
    async fn checkout(&self, key: &Key<'_>) -> Option<(usize, Conn<B>)> {
        if key.protocol != Protocol::Http1
            && let Some(found) = self.shared_h2(key)
        {
            return Some(found);
        }
        if key.protocol == Protocol::Http2 {
            return None;
        }
        loop {
            let (index, idle) = {
                let mut entries = self.inner.lock();
                let index = entries.list.iter().position(|e| e.is(key))?;
                (index, entries.list[index].idle.pop()?)
            };
            if idle.since.elapsed() > self.inner.idle_timeout || idle.sender.is_closed() {
                continue;
            }
            let mut sender = idle.sender;
            // Ready as soon as its connection task has seen the last response end.
            if sender.ready().await.is_ok() {
                return Some((index, Conn::H1(sender)));
            }
        }
    }

    /// The key's h2 connection, with one more stream counted, if it can take one.
    fn shared_h2(&self, key: &Key<'_>) -> Option<(usize, Conn<B>)> {
        let entries = self.inner.lock();
        let index = entries.list.iter().position(|e| e.is(key))?;
        let h2 = entries.list[index].h2.as_ref().filter(|h2| h2.usable())?;
        Some((index, Conn::H2(h2.sender.clone(), h2.streams.take())))
    }

    /// A new connection for `key`. An h2 key dials one at a time: a request that waited
    /// for another's dial takes the connection it made, unless it is a `retry` (the
    /// shared connection just refused it).
    async fn connect(
        &self,
        key: &Key<'_>,
        uri: &Uri,
        retry: bool,
    ) -> Result<(usize, Conn<B>), UpstreamError> {
        self.start_reaper();
        if key.protocol != Protocol::Http2 {
            return self.dial(key, uri).await;
        }
        let dial = {
            let mut entries = self.inner.lock();
            let index = entries.index(key);
            Arc::clone(&entries.list[index].dial)
        };
        // Bounded: behind an upstream that never answers, each waiter would otherwise
        // queue behind every earlier one's whole connect timeout.
        let timeout = self.inner.connector.timeout();
        let Ok(_dialling) = tokio::time::timeout(timeout, dial.lock()).await else {
            return Err(UpstreamError::DialWait(timeout));
        };
        if !retry && let Some(found) = self.shared_h2(key) {
            return Ok(found);
        }
        self.dial(key, uri).await
    }

    async fn dial(&self, key: &Key<'_>, uri: &Uri) -> Result<(usize, Conn<B>), UpstreamError> {
        let connector = &self.inner.connector;
        let slot = connector.capped.slot().await?;
        let stream = connector
            .connect(uri, key.tls, key.protocol, key.header)
            .await?;
        let forced = key.protocol == Protocol::Http2;
        let conn = match stream {
            Stream::Plain(io) if !forced => self.http1(Slotted::new(io, slot)).await?,
            Stream::Plain(io) => self.http2(Slotted::new(io, slot)).await?,
            Stream::Tls { io, h2 } if !(forced || h2) => self.http1(Slotted::new(io, slot)).await?,
            Stream::Tls { io, .. } => self.http2(Slotted::new(io, slot)).await?,
        };
        let mut entries = self.inner.lock();
        let index = entries.index(key);
        if let Conn::H2(sender, streams) = &conn {
            // The key's streams go on this one from now on; one it replaces (an
            // ALPN race) serves the streams it has and closes.
            entries.list[index].h2 = Some(H2 {
                sender: sender.clone(),
                streams: Arc::clone(streams),
            });
        }
        Ok((index, conn))
    }

    async fn http1<T>(&self, io: T) -> Result<Conn<B>, UpstreamError>
    where
        T: Read + Write + Unpin + Send + 'static,
    {
        let (sender, conn) = self
            .inner
            .builders
            .h1
            .handshake(io)
            .await
            .map_err(UpstreamError::Handshake)?;
        drive(conn.with_upgrades(), "upstream connection");
        Ok(Conn::H1(sender))
    }

    async fn http2<T>(&self, io: T) -> Result<Conn<B>, UpstreamError>
    where
        T: Read + Write + Unpin + Send + 'static,
    {
        let (sender, conn) = self
            .inner
            .builders
            .h2
            .handshake(io)
            .await
            .map_err(UpstreamError::Handshake)?;
        drive(conn, "upstream h2 connection");
        Ok(Conn::H2(sender, Streams::new().take()))
    }

    /// Starts, once, the task that closes connections idle for longer than the timeout.
    /// It holds the pool weakly and ends with it.
    fn start_reaper(&self) {
        {
            let mut entries = self.inner.lock();
            if entries.reaper_started {
                return;
            }
            entries.reaper_started = true;
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
                let timeout = inner.idle_timeout;
                let mut entries = inner.lock();
                for entry in &mut entries.list {
                    entry
                        .idle
                        .retain(|idle| idle.since.elapsed() <= timeout && !idle.sender.is_closed());
                    let stale = entry.h2.as_ref().is_some_and(|h2| {
                        h2.sender.is_closed()
                            || h2
                                .streams
                                .idle_since()
                                .is_some_and(|since| since.elapsed() > timeout)
                    });
                    if stale {
                        entry.h2 = None;
                    }
                }
            }
        });
    }

    /// How many connections are at rest: idle HTTP/1.1 ones, and h2 ones with no stream.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        let entries = self.inner.lock();
        let h1: usize = entries.list.iter().map(|e| e.idle.len()).sum();
        let h2 = entries
            .list
            .iter()
            .filter_map(|e| e.h2.as_ref())
            .filter(|h2| h2.streams.idle_since().is_some())
            .count();
        h1 + h2
    }
}

impl<B> Entries<B> {
    /// The index of `key`'s entry, made when there is none.
    fn index(&mut self, key: &Key<'_>) -> usize {
        if let Some(index) = self.list.iter().position(|e| e.is(key)) {
            return index;
        }
        self.list.push(Entry {
            authority: key.authority.clone(),
            protocol: key.protocol,
            tls: key.tls,
            header: key.header.map(Box::from),
            idle: Vec::new(),
            h2: None,
            dial: Arc::default(),
        });
        self.list.len() - 1
    }
}

impl<B: Send> Evict for Inner<B> {
    /// Closes the least recently used connection at rest, of any key.
    fn evict_idle(&self) -> bool {
        let mut entries = self.lock();
        let mut oldest: Option<(Instant, usize, bool)> = None;
        for (i, entry) in entries.list.iter().enumerate() {
            let h1 = entry.idle.first().map(|idle| (idle.since, i, false));
            let h2 = entry
                .h2
                .as_ref()
                .and_then(|h2| h2.streams.idle_since())
                .map(|since| (since, i, true));
            for candidate in [h1, h2].into_iter().flatten() {
                if oldest.is_none_or(|(since, ..)| candidate.0 < since) {
                    oldest = Some(candidate);
                }
            }
        }
        let Some((_, i, h2)) = oldest else {
            return false;
        };
        // Dropping its (last) sender ends the connection's task, which closes the socket
        // and gives its slot back.
        if h2 {
            entries.list[i].h2 = None;
        } else {
            drop(entries.list[i].idle.remove(0));
        }
        true
    }
}

impl<B> Inner<B> {
    /// The entries. A panic while holding the lock leaves them whole (pushes, pops and
    /// replacements only), so a poisoned lock is still safe to use.
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries<B>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a response holds of its connection.
#[derive(Debug)]
enum Held<B> {
    /// The connection itself, until the body ends.
    H1(http1::SendRequest<B>),
    /// Its stream's place in the connection's count.
    H2(Arc<Streams>),
}

/// Puts an HTTP/1.1 connection back on its idle list when dropped, if its response body
/// was read to the end ([`GiveBack::body_done`]; otherwise the connection closes with it);
/// ends an h2 stream's count either way.
#[derive(Debug)]
pub(super) struct GiveBack<B = RequestBody> {
    pool: Weak<Inner<B>>,
    /// The key's entry in the pool.
    index: usize,
    held: Option<Held<B>>,
}

impl<B> GiveBack<B> {
    /// Returns the connection now: its response body has ended.
    fn body_done(&mut self) {
        let sender = match self.held.take() {
            None => return,
            Some(Held::H2(streams)) => return streams.release(),
            Some(Held::H1(sender)) => sender,
        };
        let Some(inner) = self.pool.upgrade() else {
            return;
        };
        if sender.is_closed() {
            return;
        }
        let idle = Idle {
            sender,
            since: Instant::now(),
        };
        if let Some(entry) = inner.lock().list.get_mut(self.index) {
            entry.idle.push(idle);
        }
    }
}

impl<B> Drop for GiveBack<B> {
    fn drop(&mut self) {
        if let Some(Held::H2(streams)) = self.held.take() {
            streams.release();
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
#[path = "pool_tests.rs"]
mod tests;
