//! Upstream servers for the tests: the shipped demo upstream, one that counts what
//! reaches it, a generic one that runs a closure per request (HTTP/1.1 and h2c, upgrades
//! allowed), optionally behind TLS and counting its connections, one that reads a PROXY header first and reports its
//! connections' ends, one that reports each request's headers and trailers, and a raw
//! one that answers fixed bytes. All bind 127.0.0.1:0 and return their address.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use proxy::proxy_protocol::{Deadlines, Limits, read_header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

/// What a test upstream answers with.
pub type UpBody = BoxBody<Bytes, Infallible>;

/// A 200 with `text` as its body.
pub fn text(text: impl Into<Bytes>) -> Response<UpBody> {
    Response::new(Full::new(text.into()).boxed())
}

/// Binds 127.0.0.1:0.
pub async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("bound address");
    (listener, addr)
}

/// The demo upstream, running until the test ends.
pub async fn demo() -> SocketAddr {
    let (listener, addr) = bind().await;
    tokio::spawn(proxy::demo::serve(listener, std::future::pending()));
    addr
}

/// The demo upstream on a runtime of its own, for tests that block (on the trustgate
/// binary, on real peers); it serves until the returned runtime is dropped.
pub fn demo_in_background() -> (tokio::runtime::Runtime, SocketAddr) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime for the demo upstream");
    let addr = runtime.block_on(demo());
    (runtime, addr)
}

/// A self-signed certificate for 127.0.0.1, as a server config and as a root store.
pub fn self_signed() -> (Arc<rustls::ServerConfig>, rustls::RootCertStore) {
    let certified = super::certs::self_signed("127.0.0.1").expect("a certificate");
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der())
        .expect("a private key");
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert.clone()], key)
    .expect("a server config");
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("the certificate as a root");
    (Arc::new(server), roots)
}

/// An upstream that takes a PROXY header on every connection (then TLS with `tls`),
/// answers each request with the client that header named, and sends that client on the
/// returned channel when the connection ends.
pub async fn proxy_reading(
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (SocketAddr, mpsc::UnboundedReceiver<SocketAddr>) {
    let tls = tls.map(TlsAcceptor::from);
    let (listener, addr) = bind().await;
    let (ended, ends) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let ended = ended.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let wait = std::time::Duration::from_secs(5);
                let deadlines = Deadlines {
                    first_byte: tokio::time::Instant::now() + wait,
                    header: wait,
                };
                let Ok((info, stream)) = read_header(stream, deadlines, &Limits::default()).await
                else {
                    return;
                };
                let Some(client) = info.client() else { return };
                let service = service_fn(move |_req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(text(client.to_string()))
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                // Connection errors are the test's to observe from the client side.
                let _ended = match tls {
                    None => {
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(stream) => {
                            builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await
                        }
                        Err(_) => return,
                    },
                };
                let _ = ended.send(client);
            });
        }
    });
    (addr, ends)
}

/// An upstream that answers every request with 200 `ok` and counts the requests it
/// received: the count is what "never reaches an upstream" is asserted on.
pub async fn counting() -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let addr = serve(move |_req| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { text("ok") }
    })
    .await;
    (addr, hits)
}

/// What a [`recording`] upstream received of one request.
#[derive(Debug)]
pub struct Received {
    pub version: Version,
    pub headers: HeaderMap,
    /// The trailers, when the body ended with some.
    pub trailers: Option<HeaderMap>,
}

/// An upstream that sends what it received of each request on the returned channel
/// (after reading the whole body), then answers 200 `ok`, or 101 with the same `Upgrade`
/// when asked to upgrade: an upstream that would switch to anything.
pub async fn recording() -> (SocketAddr, mpsc::UnboundedReceiver<Received>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = serve(move |req: Request<Incoming>| {
        let tx = tx.clone();
        async move {
            let (parts, body) = req.into_parts();
            let trailers = body
                .collect()
                .await
                .ok()
                .and_then(|c| c.trailers().cloned());
            let upgrade = parts.headers.get(header::UPGRADE).cloned();
            let _ = tx.send(Received {
                version: parts.version,
                headers: parts.headers,
                trailers,
            });
            let Some(upgrade) = upgrade else {
                return text("ok");
            };
            let mut response = text("");
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            response.headers_mut().insert(header::UPGRADE, upgrade);
            response.headers_mut().insert(
                header::CONNECTION,
                http::HeaderValue::from_static("upgrade"),
            );
            response
        }
    })
    .await;
    (addr, rx)
}

/// An upstream that reads each connection's request head (to its blank line) and answers
/// `response` byte for byte, then closes: for responses hyper would never build.
pub async fn raw(response: &'static [u8]) -> SocketAddr {
    let (listener, addr) = bind().await;
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(response).await;
            });
        }
    });
    addr
}

/// An address nothing listens on: bound, then released.
pub async fn closed_port() -> SocketAddr {
    let (listener, addr) = bind().await;
    drop(listener);
    addr
}

/// An upstream that answers each request with `handler`.
pub async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<UpBody>> + Send + 'static,
{
    serve_on(handler, None, Arc::default()).await
}

/// [`serve`], counting the connections it accepts (HTTP/1.1 and h2c alike).
pub async fn serve_counting<F, Fut>(handler: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<UpBody>> + Send + 'static,
{
    let accepted = Arc::new(AtomicUsize::new(0));
    (
        serve_on(handler, None, Arc::clone(&accepted)).await,
        accepted,
    )
}

/// [`serve_tls`], counting the connections it accepts.
pub async fn serve_tls_counting<F, Fut>(
    handler: F,
    tls: Arc<rustls::ServerConfig>,
) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<UpBody>> + Send + 'static,
{
    let accepted = Arc::new(AtomicUsize::new(0));
    let acceptor = Some(TlsAcceptor::from(tls));
    (
        serve_on(handler, acceptor, Arc::clone(&accepted)).await,
        accepted,
    )
}

/// [`serve`] behind TLS with `tls`.
pub async fn serve_tls<F, Fut>(handler: F, tls: Arc<rustls::ServerConfig>) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<UpBody>> + Send + 'static,
{
    serve_on(handler, Some(TlsAcceptor::from(tls)), Arc::default()).await
}

async fn serve_on<F, Fut>(
    handler: F,
    tls: Option<TlsAcceptor>,
    accepted: Arc<AtomicUsize>,
) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<UpBody>> + Send + 'static,
{
    let (listener, addr) = bind().await;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            accepted.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                // Connection errors are the test's to observe from the client side.
                let _ended = match tls {
                    None => {
                        builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .await
                    }
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(stream) => {
                            builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .await
                        }
                        Err(_) => return,
                    },
                };
            });
        }
    });
    addr
}

/// What a [`body_reading`] upstream saw: its connections open now and at most at once,
/// and the request heads it received. Tests wait on it with [`Seen::until`].
#[derive(Debug, Default)]
pub struct Seen {
    open: AtomicUsize,
    peak: AtomicUsize,
    requests: AtomicUsize,
    changed: tokio::sync::Notify,
}

impl Seen {
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Waits until `done` holds, woken by each change; panics naming `what` after
    /// `timeout`.
    pub async fn until(
        &self,
        what: &str,
        timeout: std::time::Duration,
        done: impl Fn(&Seen) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            // Registered before looking, so a change in between is not missed.
            changed.as_mut().enable();
            if done(self) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!(
                    "{what}: not within {timeout:?} (upstream: {} open, peak {}, {} requests)",
                    self.open(),
                    self.peak(),
                    self.requests()
                );
            }
        }
    }

    fn opened(&self) {
        let open = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(open, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    fn closed(&self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    fn requested(&self) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

/// An upstream (HTTP/1.1 and h2c) that reads each request body to its end before it
/// answers 200 `ok`, so a stalled body holds its connection; it counts its connections
/// and requests in [`Seen`].
pub async fn body_reading() -> (SocketAddr, Arc<Seen>) {
    let (listener, addr) = bind().await;
    let seen = Arc::new(Seen::default());
    let counts = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            counts.opened();
            let counts = Arc::clone(&counts);
            tokio::spawn(async move {
                let per_request = Arc::clone(&counts);
                let service = service_fn(move |req: Request<Incoming>| {
                    per_request.requested();
                    async move {
                        // A body that fails (the proxy gave up on it) gets no answer anyway.
                        let _body = req.into_body().collect().await;
                        Ok::<_, Infallible>(text("ok"))
                    }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                // Connection errors are the test's to observe from the client side.
                let _ended = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                counts.closed();
            });
        }
    });
    (addr, seen)
}
