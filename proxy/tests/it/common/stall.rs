//! h2 (prior knowledge) clients behind a load balancer whose streams hold request bodies
//! open: each body sends a few bytes, then stalls until the test ends or releases it.
//! What a client with many slow uploads looks like to the proxy.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::channel::{Channel, Sender};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// The bytes each stalled body sends before it stalls.
pub const FIRST_BYTES: &[u8] = b"part";

/// One h2 connection with its stalled streams.
pub struct Stalled {
    /// The bodies' senders: dropped, each body ends (normally) and its request completes.
    pub bodies: Vec<Sender<Bytes, Infallible>>,
    /// Each stream's answer status, once it comes (`None`: the stream failed).
    pub answers: JoinSet<Option<StatusCode>>,
}

/// Opens an h2 connection to `addr` that first sends `proxy_header`, and on it `streams`
/// POSTs to `path`, each body sending [`FIRST_BYTES`] and then nothing more.
pub async fn open(addr: SocketAddr, proxy_header: &[u8], streams: usize, path: &str) -> Stalled {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    stream
        .write_all(proxy_header)
        .await
        .expect("write the PROXY header");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    let mut bodies = Vec::with_capacity(streams);
    let mut answers = JoinSet::new();
    for _ in 0..streams {
        let (mut body, channel) = Channel::<Bytes, Infallible>::new(1);
        body.send_data(Bytes::from_static(FIRST_BYTES))
            .await
            .expect("the first bytes fit the channel");
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("http://app.test{path}"))
            .body(channel)
            .expect("a request");
        let mut sender = sender.clone();
        answers.spawn(async move {
            let response = sender.send_request(req).await.ok()?;
            Some(response.status())
        });
        bodies.push(body);
    }
    Stalled { bodies, answers }
}
