//! The forwarder end to end: a `Forwarder` behind a stand-in listener (its connections
//! relayed, by their PROXY header, from a client at 203.0.113.7) in front of real upstreams
//! started here. HTTP/1.1 and h2c upstreams, 502/504/413, balancing, WebSocket, client
//! identity, streaming both ways, TLS upstream verification.

use crate::common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::forwarder::{
    HOST, ReqBody, app, config, config_to, echoed, get, get_from, post, proxy, proxy_with, route,
    send, send_h2, text,
};
use common::testconfig::{App, Route, TestConfig, Tls, Upstream};
use common::upstream::{self, UpBody};
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use http_body_util::Empty;
use http_body_util::channel::Channel;
use hyper::body::Incoming;
use proxy::forward::ForwardOptions;
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// Generous bound on tests that would hang if streaming broke.
const HANG_GUARD: Duration = Duration::from_secs(60);

#[tokio::test]
async fn http1_request_reaches_the_upstream_with_the_client_identity() {
    let demo = upstream::demo().await;
    let p = proxy(&config_to(&[demo])).await;
    let response = send(p.addr, get("/hello?x=1")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let echo = text(response).await;
    assert!(echo.starts_with("GET /hello?x=1 HTTP/1.1\n"), "{echo}");
    assert_eq!(echoed(&echo, "host"), Some("app.example"));
    assert_eq!(echoed(&echo, "x-forwarded-for"), Some("203.0.113.7"));
    assert_eq!(echoed(&echo, "x-real-ip"), Some("203.0.113.7"));
    assert_eq!(echoed(&echo, "x-forwarded-proto"), Some("http"));
    // The port the client connected to, from the PROXY header.
    assert_eq!(echoed(&echo, "x-forwarded-port"), Some("443"));
    assert_eq!(echoed(&echo, "x-forwarded-host"), Some("app.example"));
    assert_eq!(echoed(&echo, "forwarded"), None, "only with the option");
}

#[tokio::test]
async fn untrusted_clients_forwarding_headers_are_not_passed_on() {
    let demo = upstream::demo().await;
    let p = proxy(&config_to(&[demo])).await;
    let req = Request::get("/")
        .header(header::HOST, "app.example")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("forwarded", "for=6.6.6.6")
        .body(Empty::new().boxed())
        .expect("test request");
    let echo = text(send(p.addr, req).await).await;
    assert!(!echo.contains("6.6.6.6"), "{echo}");
    assert_eq!(echoed(&echo, "x-forwarded-for"), Some("203.0.113.7"));
    assert_eq!(echoed(&echo, "x-forwarded-proto"), Some("http"));
}

#[tokio::test]
async fn trusted_clients_chain_is_extended_and_forwarded_added() {
    let demo = upstream::demo().await;
    let forwarded = route(&[demo]).upstream_option("forwarded_header");
    let p = proxy(
        &config(App::new(HOST).route(forwarded)).trusted_forwarded_proxies(["203.0.113.0/24"]),
    )
    .await;
    let req = Request::get("/")
        .header(header::HOST, "app.example")
        .header("x-forwarded-for", "198.51.100.1")
        .body(Empty::new().boxed())
        .expect("test request");
    let echo = text(send(p.addr, req).await).await;
    assert_eq!(
        echoed(&echo, "x-forwarded-for"),
        Some("198.51.100.1, 203.0.113.7")
    );
    assert_eq!(echoed(&echo, "x-real-ip"), Some("198.51.100.1"));
    assert_eq!(
        echoed(&echo, "forwarded"),
        Some(
            "for=198.51.100.1, for=\"203.0.113.7:4711\";by=\"198.51.100.1:443\";proto=http;host=app.example"
        )
    );
}

#[tokio::test]
async fn http2_upstream_is_spoken_with_prior_knowledge_when_forced() {
    let demo = upstream::demo().await;
    let p = proxy(&config(
        App::new(HOST).route(route(&[demo]).upstream_option("force_http2_upstream")),
    ))
    .await;
    let echo = text(send(p.addr, get("/h2")).await).await;
    assert!(echo.starts_with("GET http://"), "{echo}");
    assert!(
        echo.lines()
            .next()
            .is_some_and(|l| l.ends_with(" HTTP/2.0")),
        "{echo}"
    );
    assert_eq!(echoed(&echo, "host"), Some("app.example"));
}

/// An upstream whose every answer waits until `together` requests are in flight at
/// once; counts its connections.
async fn answering_together(
    together: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let barrier = Arc::new(tokio::sync::Barrier::new(together));
    let handler = move |_req: Request<Incoming>| {
        let barrier = Arc::clone(&barrier);
        async move {
            barrier.wait().await;
            upstream::text("ok")
        }
    };
    match tls {
        None => upstream::serve_counting(handler).await,
        Some(tls) => upstream::serve_tls_counting(handler, tls).await,
    }
}

/// `N` requests, each on a downstream connection of its own, all at once.
async fn at_once(addr: SocketAddr, n: usize) -> Vec<(StatusCode, String)> {
    let all = (0..n).map(|_| async move {
        let response = send(addr, get("/")).await;
        (response.status(), text(response).await)
    });
    tokio::time::timeout(HANG_GUARD, futures_util::future::join_all(all))
        .await
        .expect("every request answered")
}

#[tokio::test]
async fn concurrent_requests_to_an_h2c_upstream_share_one_connection() {
    const N: usize = 6;
    let (up, connections) = answering_together(N, None).await;
    let p = proxy(&config(
        App::new(HOST).route(route(&[up]).upstream_option("force_http2_upstream")),
    ))
    .await;
    let answers = at_once(p.addr, N).await;
    assert!(
        answers
            .iter()
            .all(|(s, body)| *s == StatusCode::OK && body == "ok"),
        "{answers:?}"
    );
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "one upstream connection for {N} streams"
    );
}

#[tokio::test]
async fn requests_to_a_tls_upstream_that_chose_h2_share_its_connection() {
    const N: usize = 6;
    let (server, roots) = upstream::self_signed();
    // The first request opens the connection (ALPN decides h2), the rest multiplex on it.
    let (up, connections) = answering_together(1, Some(Arc::clone(&server))).await;
    let text_config =
        config(App::new("app.example").route(Route::new().upstream(Upstream::at(up).tls(true))));
    let options = ForwardOptions {
        upstream_roots: Some(roots),
        ..ForwardOptions::default()
    };
    let p = proxy_with(&text_config, options).await;
    assert_eq!(send(p.addr, get("/")).await.status(), StatusCode::OK);
    let answers = at_once(p.addr, N).await;
    assert!(
        answers.iter().all(|(s, _)| *s == StatusCode::OK),
        "{answers:?}"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn http2_client_reaches_a_plain_upstream_over_http11_with_its_authority_as_host() {
    let demo = upstream::demo().await;
    let p = proxy(&config_to(&[demo])).await;
    let req = Request::get("http://app.example/from-h2")
        .body(Empty::new().boxed())
        .expect("test request");
    let response = send_h2(p.addr, req).await;
    assert_eq!(response.status(), StatusCode::OK);
    let echo = text(response).await;
    assert!(echo.starts_with("GET /from-h2 HTTP/1.1\n"), "{echo}");
    assert_eq!(echoed(&echo, "host"), Some("app.example"));
    assert_eq!(echoed(&echo, "x-forwarded-host"), Some("app.example"));
}

#[tokio::test]
async fn unreachable_upstream_is_a_502() {
    let down = upstream::closed_port().await;
    let p = proxy(&config_to(&[down])).await;
    let response = send(p.addr, get("/")).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let stats = p.forwarder.metrics();
    assert_eq!(stats.upstream_errors.get(), 1);
    assert_eq!(stats.responses.each_ref().map(|c| c.get()), [0, 0, 0, 0, 1]);
}

#[tokio::test]
async fn upstream_without_a_response_head_in_time_is_a_504() {
    let answered = Arc::new(Notify::new());
    let release = answered.clone();
    let silent = upstream::serve(move |_req| {
        let release = release.clone();
        async move {
            // Answers only once the test is over.
            release.notified().await;
            upstream::text("late")
        }
    })
    .await;
    let p = proxy(&config_to(&[silent]).upstream_read_timeout(0.2)).await;
    let response = send(p.addr, get("/")).await;
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(p.forwarder.metrics().upstream_timeouts.get(), 1);
    answered.notify_waiters();
}

/// An upstream that counts the requests that reach it and echoes their body size.
async fn counting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let addr = upstream::serve(move |req: Request<Incoming>| {
        let seen = seen.clone();
        async move {
            seen.fetch_add(1, Ordering::SeqCst);
            match req.into_body().collect().await {
                Ok(body) => upstream::text(format!("{} bytes", body.to_bytes().len())),
                Err(_) => upstream::text("cut"),
            }
        }
    })
    .await;
    (addr, count)
}

#[tokio::test]
async fn declared_body_over_the_limit_is_a_413_that_never_reaches_the_upstream() {
    let (up, count) = counting_upstream().await;
    let p = proxy(&config_to(&[up]).request_max_body_size(1024)).await;
    let response = send(p.addr, post("/", vec![b'a'; 1025])).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(count.load(Ordering::SeqCst), 0);
    let response = send(p.addr, post("/", vec![b'a'; 1024])).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response).await, "1024 bytes");
    assert_eq!(p.forwarder.metrics().bodies_too_large.get(), 1);
}

/// A request whose body is sent in `chunks` with no length declared (chunked).
fn streamed(chunks: &[usize]) -> Request<ReqBody> {
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(chunks.len() + 1);
    for &n in chunks {
        tx.try_send(hyper::body::Frame::data(Bytes::from(vec![b'b'; n])))
            .expect("channel has room for every chunk");
    }
    drop(tx);
    Request::post("/")
        .header(header::HOST, "app.example")
        .body(body.boxed())
        .expect("test request")
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_a_413() {
    let (up, _count) = counting_upstream().await;
    let p = proxy(&config_to(&[up]).request_max_body_size(1024)).await;
    let response = send(p.addr, streamed(&[1000, 24])).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response).await, "1024 bytes");
    let response = send(p.addr, streamed(&[1000, 25])).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(p.forwarder.metrics().bodies_too_large.get(), 1);
}

#[tokio::test]
async fn round_robin_takes_three_upstreams_in_turn() {
    let mut upstreams = Vec::new();
    for id in 0..3 {
        upstreams.push(
            upstream::serve(move |_req| async move { upstream::text(format!("{id}")) }).await,
        );
    }
    let p = proxy(&config(
        App::new(HOST).route(route(&upstreams).load_balance("round_robin")),
    ))
    .await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(text(send(p.addr, get("/")).await).await);
    }
    assert_eq!(seen, ["0", "1", "2", "0", "1", "2"]);
}

#[tokio::test]
async fn websocket_echoes_through_the_proxy() {
    let demo = upstream::demo().await;
    let p = proxy(&config_to(&[demo])).await;
    let stream = TcpStream::connect(p.addr)
        .await
        .expect("connect to the proxy");
    let (mut ws, response) = tokio_tungstenite::client_async("ws://app.example/chat", stream)
        .await
        .expect("WebSocket handshake through the proxy");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::text("hello")).await.expect("send text");
    let echo = ws
        .next()
        .await
        .expect("a message")
        .expect("a readable message");
    assert_eq!(echo, Message::text("hello"));
    ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send binary");
    let echo = ws
        .next()
        .await
        .expect("a message")
        .expect("a readable message");
    assert_eq!(echo, Message::binary(vec![1u8, 2, 3]));
    ws.close(None).await.expect("close");
}

const MIB: usize = 1024 * 1024;

#[tokio::test]
async fn large_response_streams_through_without_being_held() {
    // The upstream sends a first chunk and then waits until the client has it: a proxy
    // that buffered the body would never deliver it, and the test would hang.
    let (first_seen_tx, first_seen_rx) = oneshot::channel::<()>();
    let gate = Arc::new(Mutex::new(Some(first_seen_rx)));
    let up = upstream::serve(move |_req| {
        let gate = gate.clone();
        async move {
            let (mut tx, body) = Channel::<Bytes, Infallible>::new(4);
            let first_seen = gate.lock().expect("gate lock").take();
            tokio::spawn(async move {
                let _sent = tx.send_data(Bytes::from(vec![0u8; MIB])).await;
                if let Some(seen) = first_seen {
                    let _ = seen.await;
                }
                for i in 1..50u8 {
                    if tx.send_data(Bytes::from(vec![i; MIB])).await.is_err() {
                        return;
                    }
                }
            });
            Response::new(UpBody::new(body))
        }
    })
    .await;
    let p = proxy(&config_to(&[up])).await;
    let run = async {
        let mut body = send(p.addr, get("/big")).await.into_body();
        let mut total = 0usize;
        let mut sum = 0u64;
        let mut first_seen = Some(first_seen_tx);
        while let Some(frame) = body.frame().await {
            let data = frame.expect("a body frame").into_data().unwrap_or_default();
            total += data.len();
            sum += data.iter().map(|&b| u64::from(b)).sum::<u64>();
            if total >= MIB
                && let Some(tx) = first_seen.take()
            {
                let _ = tx.send(());
            }
        }
        (total, sum)
    };
    let (total, sum) = tokio::time::timeout(HANG_GUARD, run)
        .await
        .expect("the body streams instead of hanging");
    assert_eq!(total, 50 * MIB);
    let expected: u64 = (1..50u64).map(|i| i * MIB as u64).sum();
    assert_eq!(sum, expected);
}

#[tokio::test]
async fn request_body_streams_to_the_upstream_before_it_ends() {
    // The client holds back the rest of its body until the upstream has the first part.
    let (first_tx, mut first_rx) = mpsc::channel::<()>(1);
    let up = upstream::serve(move |req: Request<Incoming>| {
        let first_tx = first_tx.clone();
        async move {
            let mut body = req.into_body();
            let mut total = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                total += frame.data_ref().map_or(0, Bytes::len);
                if total >= MIB {
                    let _ = first_tx.try_send(());
                }
            }
            upstream::text(format!("{total} bytes"))
        }
    })
    .await;
    let p = proxy(&config_to(&[up])).await;
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(2);
    let req = Request::post("/upload")
        .header(header::HOST, "app.example")
        .body(body.boxed())
        .expect("test request");
    let sender = tokio::spawn(async move {
        tx.send_data(Bytes::from(vec![7u8; MIB]))
            .await
            .expect("first chunk");
        first_rx
            .recv()
            .await
            .expect("the upstream saw the first chunk");
        for _ in 1..20 {
            tx.send_data(Bytes::from(vec![7u8; MIB]))
                .await
                .expect("next chunk");
        }
    });
    let response = tokio::time::timeout(HANG_GUARD, send(p.addr, req))
        .await
        .expect("the body streams instead of hanging");
    assert_eq!(text(response).await, format!("{} bytes", 20 * MIB));
    sender.await.expect("sender task");
}

#[tokio::test]
async fn proxy_answers_no_route_and_redirect_itself() {
    let demo = upstream::demo().await;
    let text_config = config(
        App::new("app.example")
            .tls(Tls::files("c.pem", "k.pem"))
            .upstream(demo),
    )
    .listen_port_tls(8443)
    .app(
        "api",
        App::new("api.example").route(Route::new().path("/v1").upstream(Upstream::at(demo))),
    );
    let p = proxy(&text_config).await;
    let response = send(p.addr, get("/a?b=c")).await;
    assert_eq!(response.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        response
            .headers()
            .get(header::LOCATION)
            .map(|v| v.as_bytes()),
        Some(&b"https://app.example:8443/a?b=c"[..])
    );
    let to_api = |path: &str| get_from("api.example", path);
    assert_eq!(send(p.addr, to_api("/v1/x")).await.status(), StatusCode::OK);
    assert_eq!(
        send(p.addr, to_api("/v2")).await.status(),
        StatusCode::NOT_FOUND
    );
    let unknown = get_from("nobody.example", "/");
    assert_eq!(send(p.addr, unknown).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        send(p.addr, to_api("/v1/../admin")).await.status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn tls_upstream_is_verified() {
    let (server, roots) = upstream::self_signed();
    let up = upstream::serve_tls(
        |req: Request<Incoming>| async move { upstream::text(format!("{:?}", req.version())) },
        server,
    )
    .await;
    let text_config =
        config(App::new("app.example").route(Route::new().upstream(Upstream::at(up).tls(true))));
    // Not signed by a Mozilla root: refused.
    let p = proxy(&text_config).await;
    assert_eq!(
        send(p.addr, get("/")).await.status(),
        StatusCode::BAD_GATEWAY
    );
    // Trusted: served, over h2 as the upstream chose by ALPN.
    let options = ForwardOptions {
        upstream_roots: Some(roots),
        ..ForwardOptions::default()
    };
    let p = proxy_with(&text_config, options).await;
    let response = send(p.addr, get("/")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response).await, "HTTP/2.0");
}

/// A request for [`common::forwarder::HOST`] carrying `headers`.
fn get_with(headers: &[(&str, &str)]) -> Request<ReqBody> {
    let mut req = get("/");
    for (name, value) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
            http::HeaderValue::from_str(value).expect("test header value"),
        );
    }
    req
}

/// The one request a recording upstream got.
async fn received(rx: &mut mpsc::UnboundedReceiver<upstream::Received>) -> upstream::Received {
    tokio::time::timeout(HANG_GUARD, rx.recv())
        .await
        .expect("the upstream got a request in time")
        .expect("the upstream is running")
}

fn names(headers: &http::HeaderMap) -> Vec<&str> {
    let mut names: Vec<&str> = headers.keys().map(http::HeaderName::as_str).collect();
    names.sort_unstable();
    names
}

/// nginx drops such names by default (`underscores_in_headers off`): CGI, WSGI and Rack
/// fold `_` into `-`, so the application would read `X_Forwarded_For` as the real one.
#[tokio::test]
async fn underscored_request_headers_never_reach_the_upstream() {
    let (up, mut rx) = upstream::recording().await;
    let p = proxy(&config_to(&[up])).await;
    let req = get_with(&[
        ("X_Forwarded_For", "6.6.6.6"),
        ("X_Request_Id", "forged"),
        ("X-Request-Id", "real"),
    ]);
    assert_eq!(send(p.addr, req).await.status(), StatusCode::OK);
    let got = received(&mut rx).await;
    assert!(
        !names(&got.headers).iter().any(|n| n.contains('_')),
        "{got:?}"
    );
    assert_eq!(got.headers["x-forwarded-for"], "203.0.113.7");
    assert_eq!(got.headers["x-request-id"], "real");
}

#[tokio::test]
async fn allowed_underscores_pass_unless_they_fold_onto_a_managed_or_tlv_header() {
    let (up, mut rx) = upstream::recording().await;
    let p =
        proxy(&config(app(&[up]).tlv_header("ssl_cn", "x-client-cn")).underscores_in_headers(true))
            .await;
    let req = get_with(&[
        ("X_Forwarded_For", "6.6.6.6"),
        ("X_Real_IP", "6.6.6.6"),
        ("X_Forwarded_Server", "evil"),
        ("X_Client_CN", "admin"),
        ("X_App_Flag", "1"),
    ]);
    assert_eq!(send(p.addr, req).await.status(), StatusCode::OK);
    let got = received(&mut rx).await;
    let underscored: Vec<&str> = names(&got.headers)
        .into_iter()
        .filter(|n| n.contains('_'))
        .collect();
    assert_eq!(underscored, ["x_app_flag"]);
    assert!(!got.headers.contains_key("x-client-cn"), "{got:?}");
    assert_eq!(got.headers["x-real-ip"], "203.0.113.7");
}

/// `Upgrade: h2c` answered 101 would turn the connection into raw h2 straight to the
/// upstream, past routing, identity headers and the path checks for every later request.
#[tokio::test]
async fn h2c_upgrade_is_forwarded_as_a_plain_request_without_upgrade() {
    let (up, mut rx) = upstream::recording().await;
    let top = config_to(&[up]).upgrade_protocols(["websocket", "x-custom"]);
    let p = proxy(&top).await;
    let req = get_with(&[
        ("connection", "Upgrade, HTTP2-Settings"),
        ("upgrade", "h2c"),
        ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
    ]);
    let response = send(p.addr, req).await;
    assert_eq!(response.status(), StatusCode::OK);
    let got = received(&mut rx).await;
    for name in ["upgrade", "http2-settings", "connection"] {
        assert!(!got.headers.contains_key(name), "{name} reached: {got:?}");
    }
}

#[tokio::test]
async fn only_listed_upgrade_protocols_reach_the_upstream() {
    let (up, mut rx) = upstream::recording().await;
    let upgrade = [("connection", "upgrade"), ("upgrade", "x-custom")];
    let p = proxy(&config_to(&[up])).await;
    assert_eq!(
        send(p.addr, get_with(&upgrade)).await.status(),
        StatusCode::OK
    );
    let got = received(&mut rx).await;
    assert!(!got.headers.contains_key("upgrade"), "{got:?}");

    let top = config_to(&[up]).upgrade_protocols(["websocket", "X-Custom"]);
    let p = proxy(&top).await;
    let response = send(p.addr, get_with(&upgrade)).await;
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let got = received(&mut rx).await;
    assert_eq!(got.headers["upgrade"], "x-custom");
}

/// Trailers a client may not set: identity, `Host`, framing, a TLV name, an `_` name.
const FORGED_TRAILERS: [(&str, &str); 7] = [
    ("x-forwarded-for", "6.6.6.6"),
    ("x-real-ip", "6.6.6.6"),
    ("forwarded", "for=6.6.6.6"),
    ("host", "evil.example"),
    ("x-client-cn", "admin"),
    ("x_request_id", "forged"),
    ("x-forwarded-server", "evil"),
];

/// A POST with a small body ending in [`FORGED_TRAILERS`] plus `x-checksum: abc`; the
/// `Trailer` header declares them all, which an HTTP/1.1 client needs to send them.
fn post_with_trailers() -> Request<ReqBody> {
    let mut trailers = http::HeaderMap::new();
    for (name, value) in FORGED_TRAILERS.iter().chain(&[("x-checksum", "abc")]) {
        trailers.insert(
            http::HeaderName::from_static(name),
            http::HeaderValue::from_static(value),
        );
    }
    let declared: Vec<String> = trailers.keys().map(|n| n.as_str().to_owned()).collect();
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(2);
    tx.try_send(hyper::body::Frame::data(Bytes::from_static(b"body")))
        .expect("room for the data");
    tx.try_send(hyper::body::Frame::trailers(trailers))
        .expect("room for the trailers");
    Request::post("http://app.example/")
        .header(header::HOST, "app.example")
        .header(header::TRAILER, declared.join(", "))
        .header(header::TE, "trailers")
        .body(body.boxed())
        .expect("test request")
}

/// The one app with `route`, mapping the `ssl_cn` TLV to `x-client-cn`.
fn trailer_config(route: Route) -> TestConfig {
    config(
        App::new(HOST)
            .route(route)
            .tlv_header("ssl_cn", "x-client-cn"),
    )
}

#[tokio::test]
async fn forged_trailers_never_reach_an_h2_upstream() {
    let (up, mut rx) = upstream::recording().await;
    let p = proxy(&trailer_config(
        route(&[up]).upstream_option("force_http2_upstream"),
    ))
    .await;
    for h2_client in [false, true] {
        let response = if h2_client {
            send_h2(p.addr, post_with_trailers()).await
        } else {
            send(p.addr, post_with_trailers()).await
        };
        assert_eq!(response.status(), StatusCode::OK, "h2 client: {h2_client}");
        let got = received(&mut rx).await;
        assert_eq!(got.version, http::Version::HTTP_2);
        let trailers = got.trailers.expect("the trailers arrived");
        assert_eq!(names(&trailers), ["x-checksum"], "h2 client: {h2_client}");
    }
}

/// hyper's HTTP/1.1 client sends only the trailers a `Trailer` header names, and that
/// header is hop-by-hop: none arrive today. Asserted so that this stays true of the
/// forged ones if trailers toward HTTP/1.1 upstreams are ever passed on.
#[tokio::test]
async fn forged_trailers_never_reach_an_http11_upstream() {
    let (up, mut rx) = upstream::recording().await;
    let p = proxy(&trailer_config(route(&[up]))).await;
    for h2_client in [false, true] {
        let response = if h2_client {
            send_h2(p.addr, post_with_trailers()).await
        } else {
            send(p.addr, post_with_trailers()).await
        };
        assert_eq!(response.status(), StatusCode::OK, "h2 client: {h2_client}");
        let got = received(&mut rx).await;
        assert_eq!(got.version, http::Version::HTTP_11);
        let trailers = got.trailers.unwrap_or_default();
        for (name, _) in FORGED_TRAILERS {
            assert!(!trailers.contains_key(name), "{name} reached: {trailers:?}");
        }
    }
}

/// An HTTP/1.1 head of exactly `len` bytes, `Connection: close`, padded by one header.
fn head_of(len: usize) -> Vec<u8> {
    let start = "GET / HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\nX-Pad: ";
    let end = "\r\n\r\n";
    let pad = len - start.len() - end.len();
    format!("{start}{}{end}", "p".repeat(pad)).into_bytes()
}

/// trustgate's own listener (no PROXY protocol, no kernel filter) in front of `upstream`.
/// `top` holds the top-level keys under test.
fn listener_for(upstream: SocketAddr, top: TestConfig) -> common::inprocess::InProcess {
    let text = top
        .listen_port(0)
        .listen_v4("127.0.0.1")
        .app("app", app(&[upstream]))
        .render();
    common::inprocess::InProcess::start(&text, proxy::kernel::Plan::Off)
        .expect("no kernel filter to load")
}

/// Both sides of `request_max_header_size` on the real listener: a head of exactly the
/// limit is forwarded, one byte more is a 431 that never reaches the upstream.
#[tokio::test]
async fn http1_head_over_request_max_header_size_is_a_431_the_upstream_never_sees() {
    for (top, limit) in [
        (TestConfig::new(), 64 * 1024),
        (TestConfig::new().request_max_header_size("8k"), 8 * 1024),
    ] {
        let (up, hits) = upstream::counting().await;
        let gate = listener_for(up, top);
        let addr = gate.listeners[0];
        let answer = common::forwarder::raw_exchange(addr, &head_of(limit)).await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{limit}: {answer}");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        let answer = common::forwarder::raw_exchange(addr, &head_of(limit + 1)).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{limit} + 1: {answer}");
        assert_eq!(
            hits.load(Ordering::SeqCst),
            1,
            "the upstream saw nothing more"
        );
    }
}

/// The h2 side takes the same limit as `SETTINGS_MAX_HEADER_LIST_SIZE` (hyper's default
/// is 16 KiB): a 40 KiB header list passes, an 80 KiB one never reaches the upstream.
#[tokio::test]
async fn h2_header_list_is_bounded_by_request_max_header_size() {
    let (up, hits) = upstream::counting().await;
    let gate = listener_for(up, TestConfig::new());
    let addr = gate.listeners[0];
    let with_pad = |len: usize| {
        Request::get("http://app.example/")
            .header("x-pad", "p".repeat(len))
            .body(Empty::new().boxed())
            .expect("test request")
    };
    let response = send_h2(addr, with_pad(40 * 1024)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    let refused = sender.send_request(with_pad(80 * 1024)).await;
    if let Ok(response) = &refused {
        assert_eq!(
            response.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the upstream saw nothing more"
    );
}

/// RFC 9112 §6.3: with `Transfer-Encoding`, `Content-Length` is ignored, and a proxy
/// passing the message on must drop it. hyper's client keeps it in the response
/// headers, so the client would get the chunked body framed by a stale length.
#[tokio::test]
async fn response_framed_by_transfer_encoding_loses_its_content_length() {
    let up = upstream::raw(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\
          Connection: close\r\n\r\na\r\n0123456789\r\n0\r\n\r\n",
    )
    .await;
    let p = proxy(&config_to(&[up])).await;
    let answer = common::forwarder::raw_exchange(
        p.addr,
        b"GET / HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (head, body) = answer.split_once("\r\n\r\n").expect("a whole head");
    assert!(head.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(
        !head.to_ascii_lowercase().contains("content-length: 3"),
        "{answer}"
    );
    assert!(body.contains("0123456789"), "{answer}");
}

/// RFC 9113 §8.2.3: h2 clients may split `cookie` into crumbs; an HTTP/1.1 upstream
/// must get them as one field joined with "; ".
#[tokio::test]
async fn h2_cookie_crumbs_reach_an_http11_upstream_as_one_header() {
    let (up, mut rx) = upstream::recording().await;
    let p = proxy(&config_to(&[up])).await;
    let req = Request::get("http://app.example/")
        .header(header::COOKIE, "a=1")
        .header(header::COOKIE, "b=2")
        .header(header::COOKIE, "c=3")
        .body(Empty::new().boxed())
        .expect("test request");
    assert_eq!(send_h2(p.addr, req).await.status(), StatusCode::OK);
    let got = received(&mut rx).await;
    assert_eq!(got.version, http::Version::HTTP_11);
    let cookies: Vec<&[u8]> = got
        .headers
        .get_all(header::COOKIE)
        .iter()
        .map(http::HeaderValue::as_bytes)
        .collect();
    assert_eq!(cookies, [b"a=1; b=2; c=3"]);
}

/// RFC 9112 §3.2: an HTTP/1.1 request without `Host` is a 400, absolute-form or not.
#[tokio::test]
async fn absolute_form_http11_request_without_host_is_a_400_the_upstream_never_sees() {
    let (up, hits) = upstream::counting().await;
    let p = proxy(&config_to(&[up])).await;
    let exchange = |req: &'static str| common::forwarder::raw_exchange(p.addr, req.as_bytes());
    let answer = exchange("GET http://app.example/ HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    let answer = exchange(
        "GET http://app.example/ HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

/// Dot segments an upstream would still read as `..` (Tomcat's `;` parameters, IIS's
/// backslashes, servers that decode `%2f` before splitting) are a 400 that never leaves
/// the proxy; sent as raw bytes so no client library normalises them first.
#[tokio::test]
async fn dot_segments_behind_params_backslashes_or_encoded_slashes_never_reach_the_upstream() {
    let (up, hits) = upstream::counting().await;
    let p = proxy(&config_to(&[up])).await;
    for path in [
        "/s/..;/x",
        "/s/.;p=1/x",
        "/s\\..\\x",
        "/s%2f..%2fx",
        "/s%2F%2e%2e%2Fx",
        "/s%5c..%5cx",
        "/s/%2e%2e;/x",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n");
        let answer = common::forwarder::raw_exchange(p.addr, req.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{path}: {answer}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    let req = "GET /s/a;b/x%2fy\\z HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n";
    let answer = common::forwarder::raw_exchange(p.addr, req.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}
