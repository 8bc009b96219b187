//! What a load balancer writes, built byte by byte: PROXY v1 lines, v2 headers with any
//! command, length field and TLVs (hostile ones included), and a plain HTTP/1.1 request
//! to send behind them; plus clients that send such requests, one per connection or
//! several on a kept-alive one, and read the answers.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, command PROXY.
pub const V2_PROXY: u8 = 0x21;
/// Version 2, command LOCAL.
pub const V2_LOCAL: u8 = 0x20;
/// TCP over IPv4.
pub const V2_TCP4: u8 = 0x11;
/// `PP2_TYPE_NOOP`.
pub const TLV_NOOP: u8 = 0x04;
/// `PP2_TYPE_CRC32C`.
pub const TLV_CRC32C: u8 = 0x03;
/// `PP2_TYPE_UNIQUE_ID`.
pub const TLV_UNIQUE_ID: u8 = 0x05;

/// A v1 line for a TCP connection from `src` to `dst` (both of one family).
pub fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// The v1 header a load balancer sends for a client at 192.0.2.1 connecting to `front`.
pub fn client_header(front: SocketAddr) -> Vec<u8> {
    v1("192.0.2.1:40000".parse().expect("literal"), front)
}

/// A v2 PROXY header for a TCP connection from `src` to `dst` (IPv4 or IPv6), with
/// `tlvs` after the addresses.
pub fn v2(src: SocketAddr, dst: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut block = Vec::new();
    let family = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            block.extend(s.ip().octets());
            block.extend(d.ip().octets());
            V2_TCP4
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            block.extend(s.ip().octets());
            block.extend(d.ip().octets());
            0x21
        }
        _ => panic!("v2: {src} and {dst} are of different families"),
    };
    block.extend(src.port().to_be_bytes());
    block.extend(dst.port().to_be_bytes());
    block.extend(tlvs);
    let len = u16::try_from(block.len()).expect("a v2 header's body fits its length field");
    v2_raw(V2_PROXY, family, len, &block)
}

/// A v2 header with the given command byte, family byte and length field, followed by
/// `body` whatever its real length.
pub fn v2_raw(command: u8, family: u8, len: u16, body: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(command);
    out.push(family);
    out.extend(len.to_be_bytes());
    out.extend(body);
    out
}

/// One TLV.
pub fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
    let len = u16::try_from(value.len()).expect("a TLV value fits its length field");
    let mut out = vec![kind];
    out.extend(len.to_be_bytes());
    out.extend(value);
    out
}

/// A v2 TCP4 address block: 192.0.2.1:40000 to 127.0.0.1:80.
pub fn v4_block() -> Vec<u8> {
    let mut b = vec![192, 0, 2, 1, 127, 0, 0, 1];
    b.extend(40000u16.to_be_bytes());
    b.extend(80u16.to_be_bytes());
    b
}

/// A v2 PROXY TCP4 header whose length field and body (a [`v4_block`], then NOOP TLVs)
/// are exactly `len` bytes; `len` is at least 15.
pub fn v2_noop_flood_of(len: usize) -> Vec<u8> {
    let mut body = v4_block();
    let area = len - body.len();
    // `area / 3 - 1` empty TLVs, then one carrying the remainder, so every byte is used.
    body.extend(noop_flood(area / 3 - 1));
    body.extend(tlv(TLV_NOOP, &vec![0; area % 3]));
    assert_eq!(body.len(), len);
    v2_raw(V2_PROXY, V2_TCP4, u16::try_from(len).expect("fits"), &body)
}

/// `count` empty NOOP TLVs.
pub fn noop_flood(count: usize) -> Vec<u8> {
    tlv(TLV_NOOP, &[]).repeat(count)
}

/// A GET for `path` that asks the proxy to close after answering.
pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Sends `header` then a GET for `path` to `addr` on a new connection and reads the
/// whole answer (the request asks for the connection to close), within `timeout`.
pub async fn request(
    addr: SocketAddr,
    header: &[u8],
    path: &str,
    timeout: Duration,
) -> io::Result<String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut out = header.to_vec();
        out.extend(get(path));
        stream.write_all(&out).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time")))
}

/// Sends `count` requests to `addr` with [`client_header`], one connection each, one
/// after another; returns their latencies. Panics, naming `case`, unless each is a 200.
pub async fn requests_ok(
    addr: SocketAddr,
    count: usize,
    timeout: Duration,
    case: &str,
) -> Vec<Duration> {
    let header = client_header(addr);
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let t = Instant::now();
        let answer = request(addr, &header, "/normal", timeout)
            .await
            .unwrap_or_else(|e| panic!("{case}: request {i} failed: {e}"));
        assert!(is_ok(&answer), "{case}: request {i}: {answer:?}");
        latencies.push(t.elapsed());
    }
    latencies
}

/// Opens a connection to `addr` with [`client_header`] and completes one keep-alive
/// request on it (within `timeout`); returns the open connection.
pub async fn hold(addr: SocketAddr, timeout: Duration) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(&client_header(addr))
        .await
        .expect("write the header");
    let status = tokio::time::timeout(timeout, keep_alive_get(&mut stream, "/hold"))
        .await
        .expect("an answer in time")
        .expect("an answer");
    assert!(status.starts_with("HTTP/1.1 200"), "holder: {status}");
    stream
}

/// Whether an HTTP/1.1 answer is a 200.
pub fn is_ok(answer: &str) -> bool {
    answer.starts_with("HTTP/1.1 200")
}

/// Sends a keep-alive GET for `path` on `stream` (after whatever it already carried) and
/// reads one answer: the head, then a `Content-Length` body. Returns the status line.
pub async fn keep_alive_get(stream: &mut TcpStream, path: &str) -> io::Result<String> {
    stream.write_all(&keep_alive_request(path)).await?;
    read_answer(stream).await
}

/// A keep-alive GET for `path`.
pub fn keep_alive_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n").into_bytes()
}

/// Opens a connection to `addr` with [`client_header`] and a keep-alive GET for `path`,
/// and returns it without reading: its request is in flight until the answer is read
/// with [`read_answer`].
pub async fn busy(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut out = client_header(addr);
    out.extend(keep_alive_request(path));
    stream.write_all(&out).await.expect("write the request");
    stream
}

/// Reads one answer on `stream`: the head, then a `Content-Length` body. Returns the
/// status line.
pub async fn read_answer(stream: &mut TcpStream) -> io::Result<String> {
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    // Bounded by the answer's size: a head and a short body, at most 64 KiB.
    while answer.len() < 64 * 1024 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before a whole answer",
            ));
        }
        answer.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some(end) = text.find("\r\n\r\n") {
            let head = &text[..end];
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            if answer.len() >= end + 4 + length {
                return Ok(head.lines().next().unwrap_or_default().to_string());
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "answer too long",
    ))
}
