//! trustgate end to end, as a user runs it: the real binary with a config file, the demo
//! upstream behind it, and real peers in front — HAProxy (`send-proxy`,
//! `send-proxy-v2`, TLS passed through), nginx's stream module and `curl
//! --haproxy-protocol` — with clients in a network namespace at addresses of their own,
//! so the address the upstream sees can only have come from the PROXY header.
//! Needs root for the namespace; skips loudly without (fails in CI).

use crate::common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::gateway::{self, Gateway, field, message};
use common::netns::Lab;
use common::peers::{self, Peer};
use common::testconfig::{App, KernelFilter, ProxyProtocol, TestConfig, Tls};

/// How long a refused connection may take to be closed, or a request to be answered.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

fn tool(name: &str) -> Option<PathBuf> {
    let found = common::find_tool(name);
    if found.is_none() {
        common::skip(&format!("`{name}` is not installed"));
    }
    found
}

fn lab() -> Option<Lab> {
    Lab::new()
        .map_err(|why| common::skip(&format!("cannot build a network namespace: {why}")))
        .ok()
}

/// The demo upstream on a free loopback port; Drop kills it.
struct Upstream {
    child: Child,
    addr: SocketAddr,
}

impl Upstream {
    fn start() -> Upstream {
        let addr: SocketAddr = format!("127.0.0.1:{}", peers::free_port("127.0.0.1"))
            .parse()
            .expect("addr");
        let child = Command::new(env!("CARGO_BIN_EXE_demo-upstream"))
            .args(["--listen", &addr.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the demo upstream");
        let upstream = Upstream { child, addr };
        wait_listening(addr);
        upstream
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls connect until `addr` accepts, within [`ANSWER_TIMEOUT`].
fn wait_listening(addr: SocketAddr) {
    let deadline = std::time::Instant::now() + ANSWER_TIMEOUT;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(50)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "{addr} never started listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A trustgate config: plain HTTP on an ephemeral port of 127.0.0.1 (and TLS on `tls`
/// with the test certificate, when given), one app routing to `upstream`, PROXY
/// protocol from `trusted`, and the kernel filter in `mode`.
fn config(
    upstream: SocketAddr,
    trusted: &[&str],
    mode: &str,
    tls: Option<(u16, &ServerCert)>,
) -> String {
    config_with(upstream, proxy_protocol(trusted, mode), tls)
}

/// The PROXY table of [`config`]: headers from `trusted` within 200 ms, the kernel
/// filter in `mode`.
fn proxy_protocol(trusted: &[&str], mode: &str) -> ProxyProtocol {
    ProxyProtocol::trusting(trusted)
        .timeout(200)
        .kernel_filter(KernelFilter::mode(mode))
}

/// [`config`] with the PROXY table `pp`.
fn config_with(upstream: SocketAddr, pp: ProxyProtocol, tls: Option<(u16, &ServerCert)>) -> String {
    let mut app = App::new("localhost").upstream(upstream);
    let mut config = TestConfig::new().listen_port(0);
    if let Some((port, certs)) = tls {
        app = app.tls(Tls::files(&certs.cert, &certs.key).https_redirection(false));
        config = config.listen_port_tls(port);
    }
    config
        .listen_v4("127.0.0.1")
        .default_app("app")
        .app("app", app)
        .proxy_protocol(pp)
        .render()
}

/// A self-signed X.509 v3 certificate for `localhost` (rustls refuses v1 ones).
struct ServerCert {
    cert: PathBuf,
    key: PathBuf,
    _dir: tempfile::TempDir,
}

fn server_cert() -> ServerCert {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = common::certs::write_self_signed(dir.path(), "localhost");
    ServerCert {
        cert,
        key,
        _dir: dir,
    }
}

fn haproxy_config(frontends: &str) -> String {
    format!(
        "global\n    pidfile {{dir}}/haproxy.pid\n    nbthread 1\n\
         defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\
         {frontends}"
    )
}

/// Runs curl inside the lab's namespace, from `src`.
fn curl_in(lab: &Lab, curl: &PathBuf, src: IpAddr, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", &lab.ns])
        .arg(curl)
        .args(["-sS", "--max-time", "10", "--interface", &src.to_string()])
        .args(args)
        .output()
        .expect("running curl in the namespace")
}

fn body(out: &Output) -> String {
    assert!(
        out.status.success(),
        "curl failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
}

/// The value the upstream received for `header`, from the demo upstream's echo.
fn header(body: &str, name: &str) -> Option<String> {
    let prefix = format!("{name}: ");
    body.lines()
        .find_map(|l| l.trim().strip_prefix(&prefix).map(|v| v.trim().to_string()))
}

/// Waits for the access-log line of one request and returns its `client` field.
fn access_client(gw: &mut Gateway) -> String {
    let event = gw
        .wait_for(gateway::is_access, ANSWER_TIMEOUT)
        .unwrap_or_else(|| panic!("no access-log line; log:\n{}", gw.log()));
    event
        .get("client")
        .and_then(|c| c.as_str())
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn haproxy_send_proxy_v1_and_v2_carry_the_namespace_client_v4_and_v6() {
    let (Some(haproxy), Some(curl)) = (tool("haproxy"), tool("curl")) else {
        return;
    };
    let Some(lab) = lab() else { return };
    let upstream = Upstream::start();
    let mut gw = Gateway::start(&config(upstream.addr, &["127.0.0.1/32"], "socket", None), 1);
    let ours = gw.listeners[0];
    let p = [0; 4].map(|_| peers::free_port("127.0.0.1"));
    let frontends = format!(
        "frontend v1_4\n    bind {h4}:{p0}\n    default_backend v1\n\
         frontend v2_4\n    bind {h4}:{p1}\n    default_backend v2\n\
         frontend v1_6\n    bind [{h6}]:{p2}\n    default_backend v1\n\
         frontend v2_6\n    bind [{h6}]:{p3}\n    default_backend v2\n\
         backend v1\n    server ours {ours} send-proxy\n\
         backend v2\n    server ours {ours} send-proxy-v2\n",
        h4 = lab.host4,
        h6 = lab.host6,
        p0 = p[0],
        p1 = p[1],
        p2 = p[2],
        p3 = p[3],
    );
    let ready = SocketAddr::new(lab.host4.into(), p[0]);
    let _haproxy: Peer = peers::haproxy(&haproxy, &haproxy_config(&frontends), ready);
    let cases = [
        (
            IpAddr::from(lab.trusted4),
            format!("http://{}:{}/v1", lab.host4, p[0]),
            "v1 over IPv4",
        ),
        (
            lab.trusted4.into(),
            format!("http://{}:{}/v2", lab.host4, p[1]),
            "v2 over IPv4",
        ),
        (
            lab.trusted6.into(),
            format!("http://[{}]:{}/v1", lab.host6, p[2]),
            "v1 over IPv6",
        ),
        (
            lab.trusted6.into(),
            format!("http://[{}]:{}/v2", lab.host6, p[3]),
            "v2 over IPv6",
        ),
    ];
    for (client, url, case) in cases {
        let out = curl_in(
            &lab,
            &curl,
            client,
            &["-H", "X-Forwarded-For: 203.0.113.66", &url],
        );
        let body = body(&out);
        assert_eq!(
            header(&body, "x-forwarded-for"),
            Some(client.to_string()),
            "{case}: {body}"
        );
        assert_eq!(
            header(&body, "x-real-ip"),
            Some(client.to_string()),
            "{case}: {body}"
        );
        assert_eq!(
            access_client(&mut gw),
            client.to_string(),
            "{case}: access log"
        );
    }
}

#[test]
fn h2_prior_knowledge_and_tls_alpn_h2_through_haproxy() {
    let (Some(haproxy), Some(curl)) = (tool("haproxy"), tool("curl")) else {
        return;
    };
    let Some(lab) = lab() else { return };
    let certs = server_cert();
    let upstream = Upstream::start();
    let tls_port = peers::free_port("127.0.0.1");
    let mut gw = Gateway::start(
        &config(
            upstream.addr,
            &["127.0.0.1/32"],
            "socket",
            Some((tls_port, &certs)),
        ),
        2,
    );
    let plain = gw
        .listeners
        .iter()
        .find(|a| a.port() != tls_port)
        .copied()
        .expect("plain listener");
    let [p0, p1] = [0; 2].map(|_| peers::free_port("127.0.0.1"));
    let frontends = format!(
        "frontend plain\n    bind {h4}:{p0}\n    default_backend plain\n\
         frontend tls\n    bind {h4}:{p1}\n    default_backend tls\n\
         backend plain\n    server ours {plain} send-proxy-v2\n\
         backend tls\n    server ours 127.0.0.1:{tls_port} send-proxy-v2\n",
        h4 = lab.host4,
    );
    let _haproxy = peers::haproxy(
        &haproxy,
        &haproxy_config(&frontends),
        SocketAddr::new(lab.host4.into(), p0),
    );
    let client = IpAddr::from(lab.trusted4);
    let h2c = curl_in(
        &lab,
        &curl,
        client,
        &[
            "--http2-prior-knowledge",
            "-w",
            "\nversion=%{http_version}\n",
            &format!("http://{}:{p0}/h2c", lab.host4),
        ],
    );
    let h2c = body(&h2c);
    assert!(h2c.contains("version=2"), "h2 with prior knowledge: {h2c}");
    assert_eq!(
        header(&h2c, "x-forwarded-for"),
        Some(client.to_string()),
        "h2c: {h2c}"
    );
    let resolve = format!("localhost:{p1}:{}", lab.host4);
    let tls = curl_in(
        &lab,
        &curl,
        client,
        &[
            "-k",
            "--http2",
            "--resolve",
            &resolve,
            "-w",
            "\nversion=%{http_version}\n",
            &format!("https://localhost:{p1}/tls"),
        ],
    );
    let tls = body(&tls);
    assert!(tls.contains("version=2"), "h2 by ALPN over TLS: {tls}");
    assert_eq!(
        header(&tls, "x-forwarded-for"),
        Some(client.to_string()),
        "TLS: {tls}"
    );
    assert_eq!(
        header(&tls, "x-forwarded-proto"),
        Some("https".into()),
        "TLS: {tls}"
    );
    let _ = access_client(&mut gw);
}

#[test]
fn nginx_stream_proxy_protocol_carries_the_namespace_client() {
    let (Some(nginx), Some(curl)) = (tool("nginx"), tool("curl")) else {
        return;
    };
    if !std::path::Path::new(peers::NGINX_STREAM_MODULE).exists() {
        return common::skip("nginx's stream module (libnginx-mod-stream) is not installed");
    }
    let Some(lab) = lab() else { return };
    let upstream = Upstream::start();
    let mut gw = Gateway::start(&config(upstream.addr, &["127.0.0.1/32"], "socket", None), 1);
    let port = peers::free_port("127.0.0.1");
    let stream = format!(
        "server {{ listen {h4}:{port}; proxy_pass {ours}; proxy_protocol on; }}",
        h4 = lab.host4,
        ours = gw.listeners[0]
    );
    let _nginx = peers::nginx(&nginx, &stream, SocketAddr::new(lab.host4.into(), port));
    let out = curl_in(
        &lab,
        &curl,
        lab.trusted4.into(),
        &[&format!("http://{}:{port}/nginx", lab.host4)],
    );
    let body = body(&out);
    assert_eq!(
        header(&body, "x-forwarded-for"),
        Some(lab.trusted4.to_string()),
        "{body}"
    );
    assert_eq!(access_client(&mut gw), lab.trusted4.to_string());
}

#[test]
fn curl_haproxy_protocol_directly() {
    let Some(curl) = tool("curl") else { return };
    let upstream = Upstream::start();
    let mut gw = Gateway::start(&config(upstream.addr, &["127.0.0.1/32"], "off", None), 1);
    let out = Command::new(curl)
        .args([
            "-sS",
            "--max-time",
            "10",
            "--haproxy-protocol",
            "-H",
            "X-Real-IP: 203.0.113.66",
        ])
        .arg(format!("http://{}/direct?token=1", gw.listeners[0]))
        .output()
        .expect("curl");
    let body = body(&out);
    assert_eq!(
        header(&body, "x-forwarded-for"),
        Some("127.0.0.1".into()),
        "{body}"
    );
    assert_eq!(
        header(&body, "x-real-ip"),
        Some("127.0.0.1".into()),
        "{body}"
    );
    assert_eq!(access_client(&mut gw), "127.0.0.1");
}

#[test]
fn untrusted_peer_never_reaches_the_upstream() {
    let Some(curl) = tool("curl") else { return };
    let upstream = Upstream::start();
    // Trust someone else: curl's 127.0.0.1 is an outsider. With the filter off, user
    // space refuses it; with the socket filter, the kernel drops its SYN.
    for (mode, expect_exit) in [("off", None), ("socket", Some(28))] {
        let mut gw = Gateway::start(&config(upstream.addr, &["127.0.0.2/32"], mode, None), 1);
        let out = Command::new(&curl)
            .args([
                "-sS",
                "--connect-timeout",
                "1",
                "--max-time",
                "3",
                "--haproxy-protocol",
            ])
            .arg(format!("http://{}/", gw.listeners[0]))
            .output()
            .expect("curl");
        assert!(
            !out.status.success(),
            "{mode}: an untrusted peer got an answer: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        if let Some(code) = expect_exit {
            assert_eq!(
                out.status.code(),
                Some(code),
                "{mode}: the kernel should drop the SYN (connect timeout)"
            );
        } else {
            let refused = gw.wait_for(
                |e| message(e) == Some("refused: peer is not a trusted proxy"),
                ANSWER_TIMEOUT,
            );
            assert!(
                refused.is_some(),
                "{mode}: no refusal logged:\n{}",
                gw.log()
            );
        }
        gw.signal(nix::sys::signal::Signal::SIGTERM);
        gw.wait_exit(ANSWER_TIMEOUT);
        let forwarded = gw.seen.iter().any(gateway::is_access);
        assert!(!forwarded, "{mode}: a request was forwarded:\n{}", gw.log());
    }
}

#[test]
fn trusted_peer_without_a_valid_header_in_time_is_closed_and_counted() {
    let upstream = Upstream::start();
    let mut gw = Gateway::start(&config(upstream.addr, &["127.0.0.1/32"], "off", None), 1);
    let addr = gw.listeners[0];
    let cases: [(&[u8], &str); 3] = [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "no header"),
        (
            b"PROXY TCP4 256.0.0.1 127.0.0.1 1 2\r\nGET / HTTP/1.1\r\n\r\n",
            "bad v1 address",
        ),
        (
            b"PROXY TCP4 192.0.2.1 127.0.0.1 1",
            "stalls past the timeout",
        ),
    ];
    for (bytes, case) in cases {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(ANSWER_TIMEOUT))
            .expect("timeout");
        stream.write_all(bytes).expect("write");
        let mut buf = Vec::new();
        // The proxy closes without a byte of HTTP.
        let n = stream.read_to_end(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "{case}: got {:?}", String::from_utf8_lossy(&buf));
        let event = gw
            .wait_for(
                |e| message(e) == Some("refused: PROXY header"),
                ANSWER_TIMEOUT,
            )
            .unwrap_or_else(|| panic!("{case}: no refusal logged:\n{}", gw.log()));
        let kind = field(&event, "kind").unwrap_or_default();
        if case == "stalls past the timeout" {
            assert_eq!(kind, "timeout", "{case}");
        } else {
            assert_ne!(
                kind, "timeout",
                "{case}: rejected at once, not at the deadline"
            );
        }
    }
}

#[test]
fn websocket_echo_through_haproxy_and_trustgate() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let Some(haproxy) = tool("haproxy") else {
        return;
    };
    let upstream = Upstream::start();
    let gw = Gateway::start(&config(upstream.addr, &["127.0.0.1/32"], "socket", None), 1);
    let front = peers::free_port("127.0.0.1");
    let frontends = format!(
        "frontend ws\n    bind 127.0.0.1:{front}\n    default_backend ws\n\
         backend ws\n    server ours {} send-proxy-v2\n",
        gw.listeners[0]
    );
    let ready = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), front);
    let _haproxy = peers::haproxy(&haproxy, &haproxy_config(&frontends), ready);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let url = format!("ws://localhost:{front}/echo");
        let (mut ws, response) = tokio_tungstenite::connect_async(url)
            .await
            .expect("WebSocket handshake");
        assert_eq!(response.status(), 101);
        for text in ["hello", "through the PROXY header and back"] {
            ws.send(Message::text(text)).await.expect("send");
            let echoed = ws.next().await.expect("a message").expect("no error");
            assert_eq!(echoed, Message::text(text));
        }
        ws.send(Message::binary(vec![0u8, 1, 2, 255]))
            .await
            .expect("send");
        let echoed = ws.next().await.expect("a message").expect("no error");
        assert_eq!(echoed, Message::binary(vec![0u8, 1, 2, 255]));
    });
}

#[test]
fn check_prints_the_plan_and_exits_zero_or_names_the_bad_key() {
    let run = |text: &str| {
        let (_dir, path) = common::gateway::write_config(text);
        Command::new(env!("CARGO_BIN_EXE_trustgate"))
            .args(["check", "-c"])
            .arg(&path)
            .output()
            .expect("trustgate check")
    };
    let check_upstream: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let good = config(check_upstream, &["10.0.0.0/8"], "socket", None);
    let out = run(&good);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("10.0.0.0/8") && stdout.contains("kernel filter"),
        "{stdout}"
    );
    let bad = config(check_upstream, &["10.0.0.1/8"], "socket", None);
    let out = run(&bad);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("trusted_proxies") && stderr.contains("10.0.0.0/8"),
        "{stderr}"
    );
    let misspelt = config_with(
        check_upstream,
        proxy_protocol(&["10.0.0.0/8"], "socket").misspell_trusted_proxies("trusted_proxy"),
        None,
    );
    let out = run(&misspelt);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("did you mean"), "{stderr}");
}
