//! The PROXY receiver over loopback TCP, against senders nobody here wrote: HAProxy 2.6
//! (`send-proxy`, `send-proxy-v2` with CRC32C, unique-id, authority and SSL TLVs, its
//! LOCAL health checks), nginx's stream module and `curl --haproxy-protocol`. Each header
//! must be accepted with the right addresses and TLVs, and the bytes behind it must reach
//! the next layer intact. A missing tool skips loudly (fails under TRUSTGATE_REQUIRE_ALL).

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::certs::{self, CLIENT_CN};
use common::peers;
use proxy::proxy_protocol::{Command, Deadlines, Limits, ProxyInfo, Rewind, Version, read_header};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

/// Bounds every wait on a peer, so a broken peer fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(15);

const HTTP_OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

/// The path of `name`, or `None` after a loud skip line.
fn tool(name: &str) -> Option<PathBuf> {
    let found = common::find_tool(name);
    if found.is_none() {
        common::skip(&format!("`{name}` is not installed"));
    }
    found
}

async fn listen(ip: &str) -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind((ip, 0)).await.expect("bind our listener");
    let addr = listener.local_addr().expect("local address");
    (listener, addr)
}

/// Accepts one connection and reads its PROXY header under a deadline.
async fn accept_header(listener: &TcpListener) -> (ProxyInfo, Rewind<TcpStream>, SocketAddr) {
    let (stream, peer) = timeout(WAIT, listener.accept())
        .await
        .expect("a peer connects in time")
        .expect("accept");
    let deadlines = Deadlines {
        first_byte: Instant::now() + WAIT,
        header: WAIT,
    };
    let (info, rest) = read_header(stream, deadlines, &Limits::default())
        .await
        .unwrap_or_else(|e| panic!("header from {peer}: {e:#} ({})", e.kind()));
    (info, rest, peer)
}

/// Reads until `end` has arrived; returns everything read.
async fn read_until(stream: &mut (impl AsyncRead + Unpin), end: &[u8]) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while !seen.windows(end.len()).any(|w| w == end) {
        let n = timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("data in time")
            .expect("read");
        assert_ne!(
            n,
            0,
            "EOF before {:?}; got {:?}",
            String::from_utf8_lossy(end),
            String::from_utf8_lossy(&seen)
        );
        seen.extend(&buf[..n]);
    }
    seen
}

/// A client connects to `front` and says hello; the header that arrives at `listener`
/// must name that client and `front`, and the hello must follow it, then the reply must
/// travel back.
async fn relay(front: SocketAddr, listener: &TcpListener) -> ProxyInfo {
    let mut client = TcpStream::connect(front)
        .await
        .expect("connect to the peer");
    client
        .write_all(b"hello from the client")
        .await
        .expect("write");
    let (info, mut rest, _) = accept_header(listener).await;
    assert_eq!(
        info.client(),
        Some(client.local_addr().expect("local address"))
    );
    assert_eq!(info.destination(), Some(front));
    assert_eq!(
        read_until(&mut rest, b"client").await,
        b"hello from the client"
    );
    rest.write_all(b"hello from the server")
        .await
        .expect("write back");
    let mut reply = [0u8; 21];
    timeout(WAIT, client.read_exact(&mut reply))
        .await
        .expect("reply in time")
        .expect("read reply");
    assert_eq!(&reply, b"hello from the server");
    info
}

/// Answers the HTTP/1.1 request behind the header with `200 ok`.
async fn serve_ok(rest: &mut Rewind<TcpStream>) {
    let request = read_until(rest, b"\r\n\r\n").await;
    assert!(
        request.starts_with(b"GET / HTTP/1.1\r\n"),
        "{}",
        String::from_utf8_lossy(&request)
    );
    rest.write_all(HTTP_OK).await.expect("respond");
    rest.shutdown().await.expect("shutdown");
}

async fn run_curl(curl: &Path, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(curl)
        .args(["--silent", "--show-error", "--max-time", "15"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start curl")
}

async fn curl_says_ok(child: tokio::process::Child) {
    let out = timeout(WAIT, child.wait_with_output())
        .await
        .expect("curl ends")
        .expect("curl output");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"ok");
}

/// Starts HAProxy in TCP mode with `listen` as the body of its `listen front` section,
/// plus a `ready` frontend that only accepts (and drops) connections, to await it by.
fn start_haproxy(program: &Path, listen: &str) -> peers::Peer {
    let ready = peers::free_addr("127.0.0.1");
    let config = format!(
        "global\n    pidfile {{dir}}/haproxy.pid\n    nbthread 1\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\
         frontend ready\n    bind {ready}\n    tcp-request connection reject\n\
         listen front\n{listen}\n"
    );
    peers::haproxy(program, &config, ready)
}

#[tokio::test]
async fn app_data_sent_with_the_header_reaches_the_next_layer_over_tcp() {
    let (listener, addr) = listen("127.0.0.1").await;
    let v2_tcp4 = [
        &b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x13"[..],
        &[192, 0, 2, 1, 192, 0, 2, 2, 0x1f, 0x90, 0x01, 0xbb],
        b"\x04\x00\x04noop",
    ]
    .concat();
    for header in [
        &b"PROXY TCP6 2001:db8::1 2001:db8::2 8080 443\r\n"[..],
        &v2_tcp4,
    ] {
        let mut client = TcpStream::connect(addr).await.expect("connect");
        client
            .write_all(&[header, b"GET / HTTP/1.1\r\n\r\n"].concat())
            .await
            .expect("one write");
        let (info, mut rest, _) = accept_header(&listener).await;
        assert_eq!(info.destination().map(|d| d.port()), Some(443));
        assert_eq!(
            read_until(&mut rest, b"\r\n\r\n").await,
            b"GET / HTTP/1.1\r\n\r\n"
        );
        rest.write_all(b"pong").await.expect("write");
        let mut pong = [0u8; 4];
        client.read_exact(&mut pong).await.expect("read");
        assert_eq!(&pong, b"pong");
    }
}

#[tokio::test]
async fn curl_v1_header_over_ipv4_names_curls_own_connection() {
    let Some(curl) = tool("curl") else { return };
    let (listener, addr) = listen("127.0.0.1").await;
    let child = run_curl(&curl, &["--haproxy-protocol", &format!("http://{addr}/")]).await;
    let (info, mut rest, peer) = accept_header(&listener).await;
    assert_eq!(info.version(), Version::V1);
    assert_eq!(info.client(), Some(peer));
    assert_eq!(info.destination(), Some(addr));
    serve_ok(&mut rest).await;
    curl_says_ok(child).await;
}

#[tokio::test]
async fn curl_v1_header_over_ipv6_names_curls_own_connection() {
    let Some(curl) = tool("curl") else { return };
    let (listener, addr) = listen("::1").await;
    let child = run_curl(&curl, &["--haproxy-protocol", &format!("http://{addr}/")]).await;
    let (info, mut rest, peer) = accept_header(&listener).await;
    assert_eq!(info.client(), Some(peer));
    assert_eq!(info.destination(), Some(addr));
    serve_ok(&mut rest).await;
    curl_says_ok(child).await;
}

#[tokio::test]
async fn haproxy_send_proxy_relays_the_client_in_a_v1_line() {
    let Some(haproxy) = tool("haproxy") else {
        return;
    };
    let (listener, ours) = listen("127.0.0.1").await;
    let front = peers::free_addr("127.0.0.1");
    let listen = format!("    bind {front}\n    server ours {ours} send-proxy");
    let _haproxy = start_haproxy(&haproxy, &listen);
    let info = relay(front, &listener).await;
    assert_eq!(info.version(), Version::V1);
}

#[tokio::test]
async fn haproxy_send_proxy_v2_carries_a_valid_crc32c_and_the_unique_id() {
    let Some(haproxy) = tool("haproxy") else {
        return;
    };
    let (listener, ours) = listen("127.0.0.1").await;
    let front = peers::free_addr("127.0.0.1");
    let listen = format!(
        "    bind {front}\n    unique-id-format uid-%cp\n    \
         server ours {ours} send-proxy-v2 proxy-v2-options crc32c,unique-id,authority"
    );
    let _haproxy = start_haproxy(&haproxy, &listen);
    let info = relay(front, &listener).await;
    assert_eq!(info.version(), Version::V2);
    assert_eq!(info.command(), Command::Proxy);
    let client_port = info.client().expect("client").port();
    assert_eq!(
        info.tlvs().unique_id(),
        Some(format!("uid-{client_port}").as_bytes())
    );
    assert!(
        info.tlvs().crc32c().is_some(),
        "CRC32C sent, and it matched"
    );
    assert_eq!(
        info.tlvs().authority(),
        None,
        "no SNI on a plain TCP client"
    );
}

#[tokio::test]
async fn haproxy_send_proxy_v2_over_ipv6_relays_the_ipv6_client() {
    let Some(haproxy) = tool("haproxy") else {
        return;
    };
    let (listener, ours) = listen("127.0.0.1").await;
    let front = peers::free_addr("::1");
    let listen = format!("    bind {front}\n    server ours {ours} send-proxy-v2");
    let _haproxy = start_haproxy(&haproxy, &listen);
    let info = relay(front, &listener).await;
    assert_eq!(info.version(), Version::V2);
    assert!(info.client().is_some_and(|c| c.is_ipv6()));
}

#[tokio::test]
async fn haproxy_over_tls_sends_authority_alpn_and_ssl_tlvs_with_the_client_cn() {
    let (Some(haproxy), Some(curl)) = (tool("haproxy"), tool("curl")) else {
        return;
    };
    let certs_dir = tempfile::TempDir::new().expect("temp dir");
    let certs = certs::certificates(certs_dir.path());
    let (listener, ours) = listen("127.0.0.1").await;
    let front = peers::free_addr("127.0.0.1");
    let listen = format!(
        "    bind {front} ssl crt {pem} ca-file {ca} verify optional alpn http/1.1\n    \
         unique-id-format uid-%cp\n    \
         server ours {ours} send-proxy-v2 proxy-v2-options \
         crc32c,unique-id,authority,ssl,cert-cn,ssl-cipher,cert-sig,cert-key",
        pem = certs.server_pem.display(),
        ca = certs.ca.display(),
    );
    let _haproxy = start_haproxy(&haproxy, &listen);
    let client_cert = certs.client_cert.display().to_string();
    let client_key = certs.client_key.display().to_string();
    let child = run_curl(
        &curl,
        &[
            "--insecure",
            "--http1.1",
            "--cert",
            &client_cert,
            "--key",
            &client_key,
            "--resolve",
            &format!("app.example:{}:127.0.0.1", front.port()),
            &format!("https://app.example:{}/", front.port()),
        ],
    )
    .await;
    let (info, mut rest, _) = accept_header(&listener).await;
    let tlvs = info.tlvs();
    let client = info.client().expect("client");
    assert_eq!(client.ip(), front.ip());
    assert_eq!(info.destination(), Some(front));
    assert_eq!(tlvs.authority(), Some("app.example"));
    assert_eq!(tlvs.alpn(), Some(&b"http/1.1"[..]));
    assert_eq!(
        tlvs.unique_id(),
        Some(format!("uid-{}", client.port()).as_bytes())
    );
    assert!(tlvs.crc32c().is_some());
    let ssl = tlvs.ssl().expect("SSL TLV");
    assert!(
        ssl.client().ssl() && ssl.client().cert_conn() && ssl.client().cert_sess(),
        "{:?}",
        ssl.client()
    );
    assert_eq!(ssl.verify(), 0, "the client certificate verified");
    assert_eq!(ssl.cn(), Some(CLIENT_CN));
    assert!(
        ssl.version().is_some_and(|v| v.starts_with("TLSv1.")),
        "{:?}",
        ssl.version()
    );
    assert!(
        ssl.cipher().is_some() && ssl.sig_alg().is_some() && ssl.key_alg().is_some(),
        "{ssl:?}"
    );
    serve_ok(&mut rest).await;
    curl_says_ok(child).await;
}

#[tokio::test]
async fn haproxy_health_check_sends_a_local_header_with_crc32c() {
    let Some(haproxy) = tool("haproxy") else {
        return;
    };
    let (listener, ours) = listen("127.0.0.1").await;
    let front = peers::free_addr("127.0.0.1");
    let listen = format!(
        "    bind {front}\n    \
         server ours {ours} send-proxy-v2 proxy-v2-options crc32c check check-send-proxy inter 100ms"
    );
    let _haproxy = start_haproxy(&haproxy, &listen);
    let (info, _, _) = accept_header(&listener).await;
    assert_eq!(info.command(), Command::Local);
    assert_eq!(info.client(), None, "LOCAL keeps the peer address");
    assert!(info.tlvs().crc32c().is_some());
}

#[tokio::test]
async fn nginx_stream_proxy_protocol_relays_the_client_in_a_v1_line() {
    let Some(nginx) = tool("nginx") else { return };
    if !Path::new(peers::NGINX_STREAM_MODULE).is_file() {
        return common::skip("nginx's stream module (libnginx-mod-stream) is not installed");
    }
    let (listener, ours) = listen("127.0.0.1").await;
    let front = peers::free_addr("127.0.0.1");
    let ready = peers::free_addr("127.0.0.1");
    let stream = format!(
        "server {{ listen {front}; proxy_pass {ours}; proxy_protocol on; }}\n\
         server {{ listen {ready}; return ready; }}"
    );
    let _nginx = peers::nginx(&nginx, &stream, ready);
    let info = relay(front, &listener).await;
    assert_eq!(info.version(), Version::V1);
}
