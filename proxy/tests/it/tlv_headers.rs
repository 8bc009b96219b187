//! `proxy_protocol_tlv_headers` end to end: curl → HAProxy (`send-proxy-v2` with
//! `proxy-v2-options`, plain TCP or terminating TLS with a client certificate) → the
//! trustgate binary → the demo upstream, whose echo shows the headers it received. The
//! TLVs HAProxy sends must arrive as the configured headers, and headers of those names
//! sent by curl must not arrive, whether or not the TLV came. Skips loudly without
//! HAProxy or curl (fails under TRUSTGATE_REQUIRE_ALL).

use crate::common;

use std::net::SocketAddr;
use std::path::Path;

use common::certs::{self, CLIENT_CN, Certificates};
use common::forwarder::echoed;
use common::gateway::Gateway;
use common::peers;
use common::testconfig::{App, KernelFilter, ProxyProtocol, TestConfig};
use common::upstream::demo_in_background;

/// The headers curl sends, each named like one the app maps, with a forged value.
const SPOOFED: [(&str, &str); 5] = [
    ("X-Request-Id", "spoofed-id"),
    ("x-request-id", "spoofed-id-2"),
    ("X-PP-Authority", "evil.example"),
    ("X-Client-CN", "admin"),
    ("X-Client-Verify", "99"),
];

/// trustgate on an ephemeral loopback port, PROXY protocol from 127.0.0.1 (no kernel
/// filter: it is not what this tests), one app mapping TLVs to headers.
fn config(upstream: SocketAddr) -> String {
    TestConfig::new()
        .listen_port(0)
        .listen_v4("127.0.0.1")
        .default_app("app")
        .app(
            "app",
            App::new("app.example")
                .tlv_header("unique_id", "X-Request-Id")
                .tlv_header("authority", "X-PP-Authority")
                .tlv_header("alpn", "X-PP-ALPN")
                .tlv_header("ssl_version", "X-Client-TLS-Version")
                .tlv_header("ssl_cn", "X-Client-CN")
                .tlv_header("ssl_verify", "X-Client-Verify")
                .upstream(upstream),
        )
        .proxy_protocol(
            ProxyProtocol::trusting(["127.0.0.1/32"])
                .timeout(1000)
                .kernel_filter(KernelFilter::mode("off")),
        )
        .render()
}

/// HAProxy in TCP mode: a `ready` frontend to wait on, and `listen` (bind and server
/// lines) relaying to trustgate.
fn haproxy_config(ready: SocketAddr, listen: &str) -> String {
    format!(
        "global\n    pidfile {{dir}}/haproxy.pid\n    nbthread 1\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\
         frontend ready\n    bind {ready}\n    tcp-request connection reject\n\
         listen front\n{listen}\n"
    )
}

fn loopback_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], peers::free_port("127.0.0.1")))
}

/// curl's arguments for `url` with every [`SPOOFED`] header, from local port `port`.
fn spoofing_curl(curl: &Path, port: u16, extra: &[&str], url: &str) -> String {
    let port = port.to_string();
    let mut args: Vec<String> = vec!["--local-port".into(), port];
    for (name, value) in SPOOFED {
        args.push("-H".into());
        args.push(format!("{name}: {value}"));
    }
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args.push(url.to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = peers::curl(curl, &args);
    assert!(
        out.status.success(),
        "curl failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the demo's echo is text")
}

/// No forged value reached the upstream, and each mapped header came at most once.
fn assert_no_spoofed_value(echo: &str) {
    for (name, value) in SPOOFED {
        let line = format!("{}: {value}", name.to_ascii_lowercase());
        assert!(
            !echo.contains(&line),
            "{line:?} reached the upstream:\n{echo}"
        );
    }
    for name in [
        "x-request-id",
        "x-pp-authority",
        "x-client-cn",
        "x-client-verify",
    ] {
        let count = echo
            .lines()
            .filter(|l| l.starts_with(&format!("{name}:")))
            .count();
        assert!(count <= 1, "{name} arrived {count} times:\n{echo}");
    }
}

#[test]
fn unique_id_reaches_the_upstream_and_spoofed_headers_without_a_tlv_do_not() {
    let (Some(haproxy), Some(curl)) = (common::tool("haproxy"), common::tool("curl")) else {
        return;
    };
    let (_demo_runtime, upstream) = demo_in_background();
    let gw = Gateway::start(&config(upstream), 1);
    let (front, ready) = (loopback_port(), loopback_port());
    let listen = format!(
        "    bind {front}\n    unique-id-format uid-%cp\n    \
         server gw {} send-proxy-v2 proxy-v2-options unique-id,authority",
        gw.listeners[0]
    );
    let _haproxy = peers::haproxy(&haproxy, &haproxy_config(ready, &listen), ready);
    let port = peers::free_port("127.0.0.1");
    let resolve = format!("app.example:{}:127.0.0.1", front.port());
    let url = format!("http://app.example:{}/", front.port());
    let echo = spoofing_curl(&curl, port, &["--resolve", &resolve], &url).to_ascii_lowercase();
    let want = format!("uid-{port}");
    assert_eq!(echoed(&echo, "x-request-id"), Some(want.as_str()), "{echo}");
    // A plain TCP client sends no SNI, so HAProxy sends no AUTHORITY and no SSL TLV:
    // the forged headers are removed and nothing takes their place.
    for absent in [
        "x-pp-authority",
        "x-client-cn",
        "x-client-verify",
        "x-pp-alpn",
    ] {
        assert_eq!(echoed(&echo, absent), None, "{absent}:\n{echo}");
    }
    assert_no_spoofed_value(&echo);
}

#[test]
fn tls_terminated_by_haproxy_sends_authority_alpn_and_the_verified_client_cn() {
    let (Some(haproxy), Some(curl)) = (common::tool("haproxy"), common::tool("curl")) else {
        return;
    };
    let certs_dir = tempfile::TempDir::new().expect("temp dir");
    let Certificates {
        ca,
        server_pem,
        client_cert,
        client_key,
    } = certs::certificates(certs_dir.path());
    let (_demo_runtime, upstream) = demo_in_background();
    let gw = Gateway::start(&config(upstream), 1);
    let (front, ready) = (loopback_port(), loopback_port());
    let listen = format!(
        "    bind {front} ssl crt {} ca-file {} verify optional alpn http/1.1\n    \
         unique-id-format uid-%cp\n    \
         server gw {} send-proxy-v2 proxy-v2-options unique-id,authority,ssl,cert-cn",
        server_pem.display(),
        ca.display(),
        gw.listeners[0]
    );
    let _haproxy = peers::haproxy(&haproxy, &haproxy_config(ready, &listen), ready);
    let port = peers::free_port("127.0.0.1");
    let (cert, key) = (
        client_cert.display().to_string(),
        client_key.display().to_string(),
    );
    let resolve = format!("app.example:{}:127.0.0.1", front.port());
    let echo = spoofing_curl(
        &curl,
        port,
        &[
            "--insecure",
            "--http1.1",
            "--cert",
            &cert,
            "--key",
            &key,
            "--resolve",
            &resolve,
        ],
        &format!("https://app.example:{}/", front.port()),
    );
    let lower = echo.to_ascii_lowercase();
    let uid = format!("uid-{port}");
    assert_eq!(echoed(&lower, "x-request-id"), Some(uid.as_str()), "{echo}");
    assert_eq!(
        echoed(&lower, "x-pp-authority"),
        Some("app.example"),
        "{echo}"
    );
    assert_eq!(echoed(&lower, "x-pp-alpn"), Some("http/1.1"), "{echo}");
    assert_eq!(echoed(&echo, "x-client-cn"), Some(CLIENT_CN), "{echo}");
    assert_eq!(echoed(&lower, "x-client-verify"), Some("0"), "{echo}");
    let version = echoed(&echo, "x-client-tls-version").unwrap_or_default();
    assert!(version.starts_with("TLSv1."), "{version:?}:\n{echo}");
    assert_no_spoofed_value(&lower);
}
