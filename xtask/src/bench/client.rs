//! Clients the scenarios open themselves, straight to a receiving proxy on loopback
//! (a trusted source): each connection writes its own PROXY v1 header, as the load
//! balancer would, in the same write as whatever follows it.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Result, bail};

use super::peers;

/// Connects to `port` with `timeout` on every step and writes a PROXY v1 header for client
/// number `i`, then `rest`, in one write: nginx rejects a PROXY header that arrives in
/// more than one segment.
pub fn connect(port: u16, i: usize, rest: &[u8], timeout: Duration) -> Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&peers::local(port), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let client_port = 1024 + (i % 60000);
    let mut bytes = format!("PROXY TCP4 192.0.2.1 127.0.0.1 {client_port} {port}\r\n").into_bytes();
    bytes.extend_from_slice(rest);
    s.write_all(&bytes)?;
    Ok(s)
}

/// [`connect`]s, sends `GET /`, and reads the whole `200 ok`; returns the connection,
/// still open for keep-alive.
pub fn get(port: u16, i: usize, timeout: Duration) -> Result<TcpStream> {
    let mut s = connect(
        port,
        i,
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        timeout,
    )?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !(buf.starts_with(b"HTTP/1.1 200") && buf.ends_with(b"ok")) {
        let got = s.read(&mut chunk)?;
        if got == 0 {
            bail!(
                "closed before the response ended: {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
        buf.extend_from_slice(&chunk[..got]);
    }
    Ok(s)
}

/// Whether the proxy still holds `conn` open: nothing to read, no end of stream. Leaves
/// the connection non-blocking.
pub fn still_open(mut conn: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    conn.set_nonblocking(true).is_ok()
        && matches!(conn.read(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock)
}
