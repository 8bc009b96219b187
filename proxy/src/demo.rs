//! The demo upstream (`demo-upstream`): answers every request with 200 and a plain-text
//! echo of what it received (request line, `:authority`, every header, the body's size),
//! so `curl` through trustgate shows `X-Forwarded-For`; echoes WebSocket messages when
//! asked to upgrade. HTTP/1.1 and h2c. For trying trustgate and for tests; the proxy
//! itself never calls it.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tracing::debug;

/// Pause after a failed `accept()` (EMFILE and the like) before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves connections from `listener` until `shutdown` completes; connections already
/// accepted run on. Accept errors back off and retry.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                tokio::spawn(async move {
                    if let Err(error) = connection(stream).await {
                        debug!(%peer, %error, "demo connection ended with an error");
                    }
                });
            }
            Err(error) => {
                debug!(%error, "demo accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn connection(stream: TcpStream) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(stream), service_fn(respond))
        .await
}

async fn respond(mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(accept) = websocket_accept(req.headers()) {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            match upgrade.await {
                Ok(upgraded) => echo(TokioIo::new(upgraded)).await,
                Err(error) => debug!(%error, "demo websocket upgrade failed"),
            }
        });
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        return Ok(response);
    }
    let mut text = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
    if let Some(authority) = req.uri().authority() {
        text.push_str(&format!(":authority: {authority}\n"));
    }
    for (name, value) in req.headers() {
        text.push_str(&format!(
            "{name}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    // Counted frame by frame: a large upload is read, never held.
    let mut body = req.into_body();
    let mut bytes = 0usize;
    let mut complete = true;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => bytes += frame.data_ref().map_or(0, Bytes::len),
            Err(_) => {
                complete = false;
                break;
            }
        }
    }
    text.push_str(&format!(
        "\nbody: {bytes} bytes{}\n",
        if complete { "" } else { " (cut)" }
    ));
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(response)
}

/// `Sec-WebSocket-Accept` for a WebSocket handshake request, else `None`.
fn websocket_accept(headers: &HeaderMap) -> Option<HeaderValue> {
    let upgrade = headers.get(header::UPGRADE)?;
    if !upgrade.as_bytes().eq_ignore_ascii_case(b"websocket") {
        return None;
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?;
    HeaderValue::from_str(&derive_accept_key(key.as_bytes())).ok()
}

async fn echo(io: TokioIo<hyper::upgrade::Upgraded>) {
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    while let Some(message) = ws.next().await {
        let message = match message {
            Ok(m) if m.is_text() || m.is_binary() => m,
            Ok(m) if m.is_close() => break,
            Ok(_) => continue,
            Err(error) => {
                debug!(%error, "demo websocket read failed");
                break;
            }
        };
        if let Err(error) = ws.send(message).await {
            debug!(%error, "demo websocket write failed");
            break;
        }
    }
    // The peer may already be gone.
    let _closed = ws.close(None).await;
}
