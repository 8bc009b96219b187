//! A minimal blocking HTTP/1.1 exchange over a stream the test already holds (such as a
//! socket created inside a network namespace): optionally a PROXY v1 line first, then
//! requests on the same keep-alive connection. Enough for tests; not a general client.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One keep-alive connection.
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    /// Wraps `stream`, sending a PROXY v1 header naming `client` -> `front` first when
    /// given.
    pub fn new(mut stream: TcpStream, proxy: Option<(SocketAddr, SocketAddr)>) -> io::Result<Conn> {
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        if let Some((client, front)) = proxy {
            let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
            let line = format!(
                "PROXY {family} {} {} {} {}\r\n",
                client.ip(),
                front.ip(),
                client.port(),
                front.port()
            );
            stream.write_all(line.as_bytes())?;
        }
        Ok(Conn {
            reader: BufReader::new(stream),
        })
    }

    /// Sends `GET path` and returns the status and the body.
    pub fn get(&mut self, path: &str) -> io::Result<(u16, String)> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n");
        self.reader.get_mut().write_all(request.as_bytes())?;
        let mut status_line = String::new();
        if self.reader.read_line(&mut status_line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().map_err(io::Error::other)?;
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}
