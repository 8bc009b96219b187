//! A `Forwarder` behind a minimal hyper server, standing in for the listener: every
//! connection presents itself as relayed by a load balancer whose PROXY header named
//! [`CLIENT`] connecting to [`FRONT`]. Plus the HTTP/1.1 and h2c clients the forwarding
//! tests speak with, and the configs of one app for [`HOST`] they start from. Binds 127.0.0.1:0.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use proxy::forward::{ConnContext, ConnPools, ForwardOptions, Forwarder};
use proxy::proxy_protocol::{self, ProxyInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::testconfig::{App, Route, TestConfig, Upstream};
use super::upstream;

/// The client the PROXY header names.
pub const CLIENT: &str = "203.0.113.7:4711";
/// The address the client connected to, as the PROXY header names it.
pub const FRONT: &str = "198.51.100.1:443";
/// The host of the one app of [`config`].
pub const HOST: &str = "app.example";

/// What a test sends.
pub type ReqBody = BoxBody<Bytes, Infallible>;

/// A running forwarder.
pub struct Proxy {
    pub addr: SocketAddr,
    pub forwarder: Arc<Forwarder>,
}

/// A config on port 8080 (which the forwarder never binds) with the one app `app`,
/// which should be for [`HOST`] (see [`app`]).
pub fn config(app: App) -> TestConfig {
    TestConfig::new().listen_port(8080).app("app", app)
}

/// [`config`] of [`app`]: one plain app whose `/` route goes to `upstreams`.
pub fn config_to(upstreams: &[SocketAddr]) -> TestConfig {
    config(app(upstreams))
}

/// The app for [`HOST`] with the one [`route`] to `upstreams`.
pub fn app(upstreams: &[SocketAddr]) -> App {
    App::new(HOST).route(route(upstreams))
}

/// A route of every path to the plain `upstreams`.
pub fn route(upstreams: &[SocketAddr]) -> Route {
    upstreams
        .iter()
        .fold(Route::new(), |route, a| route.upstream(Upstream::at(a)))
}

/// [`proxy_with`] the default options.
pub async fn proxy(config: &TestConfig) -> Proxy {
    proxy_with(config, ForwardOptions::default()).await
}

fn proxy_info() -> Arc<ProxyInfo> {
    let client: SocketAddr = CLIENT.parse().expect("test client address");
    let front: SocketAddr = FRONT.parse().expect("test front address");
    let line = format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        client.ip(),
        front.ip(),
        client.port(),
        front.port()
    );
    let (header, _) = proxy_protocol::parse(line.as_bytes(), &proxy_protocol::Limits::default())
        .expect("a valid PROXY header")
        .expect("a complete PROXY header");
    Arc::new(ProxyInfo::from(header))
}

/// Serves a forwarder for `config` on 127.0.0.1:0.
pub async fn proxy_with(config: &TestConfig, options: ForwardOptions) -> Proxy {
    let (config, _warnings) = proxy::config::parse_str(&config.render(), "forward-test.toml")
        .expect("test config is valid");
    let forwarder = Arc::new(Forwarder::with_options(&config, options).expect("forwarder builds"));
    let (listener, addr) = upstream::bind().await;
    let serving = forwarder.clone();
    let info = proxy_info();
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let conn = Arc::new(ConnContext {
                client: CLIENT.parse().expect("test client address"),
                peer,
                local: addr,
                tls: false,
                served_name: None,
                proxy: Some(info.clone()),
                upstream_pools: ConnPools::default(),
            });
            let forwarder = serving.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let forwarder = forwarder.clone();
                    let conn = conn.clone();
                    async move { Ok::<_, Infallible>(forwarder.handle(req, &conn).await) }
                });
                // Connection errors are the test's to observe from the client side.
                let _ended = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Proxy { addr, forwarder }
}

/// `GET path` for [`HOST`].
pub fn get(path: &str) -> Request<ReqBody> {
    Request::get(path)
        .header(header::HOST, HOST)
        .body(Empty::new().boxed())
        .expect("test request")
}

/// `GET path` for `host`.
pub fn get_from(host: &str, path: &str) -> Request<ReqBody> {
    Request::get(path)
        .header(header::HOST, host)
        .body(Empty::new().boxed())
        .expect("test request")
}

/// `POST path` for [`HOST`] with `body` (its length declared).
pub fn post(path: &str, body: impl Into<Bytes>) -> Request<ReqBody> {
    Request::post(path)
        .header(header::HOST, HOST)
        .body(Full::new(body.into()).boxed())
        .expect("test request")
}

/// Sends `req` over a fresh HTTP/1.1 connection.
pub async fn send(addr: SocketAddr, req: Request<ReqBody>) -> Response<Incoming> {
    let stream = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    sender.send_request(req).await.expect("a response")
}

/// An HTTP/1.1 connection to `addr` that first sends `proxy_header`, as a load balancer
/// relaying a client would; requests on it reuse the one connection.
pub async fn connect_relayed(
    addr: SocketAddr,
    proxy_header: &[u8],
) -> hyper::client::conn::http1::SendRequest<ReqBody> {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    stream
        .write_all(proxy_header)
        .await
        .expect("write the PROXY header");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    sender
}

/// Sends `req` over a fresh HTTP/2 (prior knowledge) connection.
pub async fn send_h2(addr: SocketAddr, req: Request<ReqBody>) -> Response<Incoming> {
    let stream = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    sender.send_request(req).await.expect("a response")
}

/// The whole body, as text.
pub async fn text(response: Response<Incoming>) -> String {
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("the whole body")
        .to_bytes();
    String::from_utf8(bytes.to_vec()).expect("a text body")
}

/// The demo upstream's echo of one header, if it saw it.
pub fn echoed<'a>(echo: &'a str, name: &str) -> Option<&'a str> {
    echo.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

/// Writes `bytes` on a fresh connection to `addr` and reads until the peer closes: the
/// raw exchange, for requests no client library would send. Send `Connection: close`. A
/// reset after the answer (the peer closing with some of `bytes` unread) ends the read:
/// Linux hands over what had arrived before the reset first.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write the request");
    let mut answer = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            answer.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), read)
        .await
        .expect("the peer closes the connection");
    String::from_utf8_lossy(&answer).into_owned()
}
