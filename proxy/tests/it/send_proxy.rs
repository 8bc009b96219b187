//! `send_proxy_protocol` end to end: the test, as a load balancer, relays made-up clients
//! to the trustgate binary with PROXY v1 lines; trustgate forwards to HAProxy in HTTP
//! mode with `accept-proxy`, which answers with the source and destination it recovered
//! (`%[src]`, `%[dst]`) and how many requests its connection has carried. HAProxy must
//! see each client (v1 and v2, IPv4 and IPv6; it checks the v2 CRC32C), and two clients
//! alternating on kept-alive connections must never share an upstream connection. Skips
//! loudly without HAProxy (fails under TRUSTGATE_REQUIRE_ALL). In process, with an
//! upstream that reads the header itself: a client's upstream connection is closed when
//! the client's connection ends, not kept until the pool's idle timeout, and a TLS
//! upstream gets the header before the handshake.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::forwarder::{self, CLIENT, HOST, ReqBody, connect_relayed, get, text};
use common::gateway::Gateway;
use common::peers::{self, Peer};
use common::testconfig::{App, KernelFilter, ProxyProtocol, Route, TestConfig, Upstream};
use hyper::client::conn::http1::SendRequest;
use proxy::forward::ForwardOptions;

/// HAProxy as the upstream: it takes a PROXY header on every connection and answers
/// each request itself with what it recovered.
fn haproxy_upstream(haproxy: &std::path::Path, listen: SocketAddr) -> Peer {
    let config = format!(
        "global\n    pidfile {{dir}}/haproxy.pid\n    nbthread 1\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n    \
         timeout server 30s\n    timeout http-keep-alive 30s\n\
         frontend upstream\n    bind {listen} accept-proxy\n    \
         http-request set-var(sess.requests) var(sess.requests,0),add(1)\n    \
         http-request return status 200 content-type text/plain \
         lf-string \"src=%[src]:%[src_port] dst=%[dst]:%[dst_port] request=%[var(sess.requests)]\\n\" \
         hdr X-Src \"%[src]\"\n"
    );
    peers::haproxy(haproxy, &config, listen)
}

/// trustgate on an ephemeral loopback port, PROXY protocol from 127.0.0.1, with `/v1`
/// and `/v2` sending that version to `upstream`.
fn config(upstream: SocketAddr) -> String {
    let sending = |path: &str, version: &str| {
        Route::new()
            .path(path)
            .upstream(Upstream::at(upstream).send_proxy_protocol(version))
    };
    TestConfig::new()
        .listen_port(0)
        .listen_v4("127.0.0.1")
        .default_app("app")
        .app(
            "app",
            App::new("app.example")
                .route(sending("/v1", "v1"))
                .route(sending("/v2", "v2")),
        )
        .proxy_protocol(
            ProxyProtocol::trusting(["127.0.0.1/32"])
                .timeout(1000)
                .kernel_filter(KernelFilter::mode("off")),
        )
        .render()
}

/// Starts HAProxy and trustgate; `None` after a loud skip.
fn chain() -> Option<(Peer, Gateway, tokio::runtime::Runtime)> {
    let haproxy = common::tool("haproxy")?;
    let listen = SocketAddr::from(([127, 0, 0, 1], peers::free_port("127.0.0.1")));
    let upstream = haproxy_upstream(&haproxy, listen);
    let gw = Gateway::start(&config(listen), 1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the clients");
    Some((upstream, gw, runtime))
}

/// GETs `path` on `conn` and returns HAProxy's answer.
async fn ask(conn: &mut SendRequest<ReqBody>, path: &str) -> String {
    let response = conn.send_request(get(path)).await.expect("a response");
    assert_eq!(response.status(), 200, "{path}");
    text(response).await
}

#[test]
fn upstream_sees_the_relayed_client_over_v1_and_v2_for_both_families() {
    let Some((_upstream, gw, runtime)) = chain() else {
        return;
    };
    let cases = [
        (
            "PROXY TCP4 203.0.113.7 198.51.100.1 4711 443\r\n",
            "src=203.0.113.7:4711 dst=198.51.100.1:443",
        ),
        (
            "PROXY TCP6 2001:db8::7 2001:db8::1 4711 8443\r\n",
            "src=2001:db8::7:4711 dst=2001:db8::1:8443",
        ),
    ];
    runtime.block_on(async {
        for (line, seen) in cases {
            for path in ["/v1", "/v2"] {
                let mut conn = connect_relayed(gw.listeners[0], line.as_bytes()).await;
                let answer = ask(&mut conn, path).await;
                assert!(
                    answer.starts_with(&format!("{seen} request=1")),
                    "{path} after {line:?}: {answer}"
                );
            }
        }
    });
}

#[test]
fn alternating_clients_never_share_an_upstream_connection() {
    let Some((_upstream, gw, runtime)) = chain() else {
        return;
    };
    runtime.block_on(async {
        let clients = [
            (
                "203.0.113.7:4711",
                "PROXY TCP4 203.0.113.7 198.51.100.1 4711 443\r\n",
            ),
            (
                "198.51.100.9:5555",
                "PROXY TCP4 198.51.100.9 198.51.100.1 5555 443\r\n",
            ),
        ];
        for path in ["/v1", "/v2"] {
            let mut conns = Vec::new();
            for (_, line) in clients {
                conns.push(connect_relayed(gw.listeners[0], line.as_bytes()).await);
            }
            for round in 1..=3 {
                for (i, (client, _)) in clients.iter().enumerate() {
                    let answer = ask(&mut conns[i], path).await;
                    // Each client's own connection upstream, reused by its next request.
                    let want = format!("src={client} dst=198.51.100.1:443 request={round}");
                    assert!(
                        answer.starts_with(&want),
                        "{path}, round {round}, client {client}: {answer}"
                    );
                }
            }
        }
    });
}

#[tokio::test]
async fn a_clients_upstream_connection_closes_when_its_connection_does() {
    let (upstream, mut ends) = common::upstream::proxy_reading(None).await;
    let config = forwarder::config(
        App::new(HOST)
            .route(Route::new().upstream(Upstream::at(upstream).send_proxy_protocol("v2"))),
    );
    let proxy = forwarder::proxy(&config).await;
    // The in-process forwarder presents every connection as relayed for CLIENT itself,
    // so this one carries no header of its own.
    let mut conn = connect_relayed(proxy.addr, b"").await;
    for _ in 0..2 {
        let response = conn.send_request(get("/")).await.expect("a response");
        assert_eq!(text(response).await, CLIENT);
    }
    assert!(ends.try_recv().is_err(), "kept open between requests");
    drop(conn);
    // Well within the 20 s pool idle timeout: only the client's leaving can close it.
    let ended = tokio::time::timeout(Duration::from_secs(5), ends.recv())
        .await
        .expect("the upstream connection closes with the client's")
        .expect("an end reported");
    assert_eq!(ended.to_string(), CLIENT);
}

#[tokio::test]
async fn tls_upstream_reads_the_header_before_the_handshake() {
    let (server, roots) = common::upstream::self_signed();
    let (upstream, _ends) = common::upstream::proxy_reading(Some(server)).await;
    let config =
        forwarder::config(App::new(HOST).route(
            Route::new().upstream(Upstream::at(upstream).tls(true).send_proxy_protocol("v1")),
        ));
    let options = ForwardOptions {
        upstream_roots: Some(roots),
        ..ForwardOptions::default()
    };
    let proxy = forwarder::proxy_with(&config, options).await;
    let response = forwarder::send(proxy.addr, get("/")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(text(response).await, CLIENT);
}
