//! A direct source's first bytes (`direct_sources`: no PROXY header, the peer is the
//! client): [`screen`] reads until they are known not to open a PROXY header, v1 or v2,
//! and hands every byte it read to the next layer through a [`Rewind`]. A connection that
//! does open with a signature is reported, for the caller to refuse and count: a direct
//! source must never be able to name another client. No policy, counting or logging here.

use std::fmt;
use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use crate::proxy_protocol::{
    Deadlines, FirstRead, Rewind, Signature, Version, first_read, signature_at,
};

/// The first read's buffer: a whole ordinary request head or TLS ClientHello, so that the
/// next layer gets it in one piece (see `serving::sniff`), as it would without the screen.
const SCREEN_BYTES: usize = 4096;

/// How a direct source's connection opens.
pub(super) enum Screened<S> {
    /// Not with a PROXY signature: the stream, replaying the bytes read.
    Plain(Rewind<S>),
    /// With the signature of this version.
    Signature(Version),
    /// Closed before sending a byte: a TCP health check.
    NoData,
    /// No byte before the first-byte deadline.
    NoFirstByte,
    /// Closed before its first bytes told (`received` of them, all a signature's prefix).
    Closed { received: usize },
    /// The header deadline (from the first byte) came before its first bytes told.
    Timeout { received: usize },
}

impl<S> fmt::Debug for Screened<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Screened::Plain(stream) => {
                write!(f, "Plain({} bytes to replay)", stream.buffered().len())
            }
            Screened::Signature(version) => write!(f, "Signature({version:?})"),
            Screened::NoData => write!(f, "NoData"),
            Screened::NoFirstByte => write!(f, "NoFirstByte"),
            Screened::Closed { received } => write!(f, "Closed({received} bytes)"),
            Screened::Timeout { received } => write!(f, "Timeout({received} bytes)"),
        }
    }
}

/// Reads `stream`, which must be at the start of the connection, until its first bytes
/// tell whether it opens with a PROXY signature, with the deadlines a PROXY header read
/// has: the first byte within `deadlines.first_byte`, then `deadlines.header` from it, so
/// a direct source gets no longer to open than a load balancer. Decides at the first
/// byte that rules both signatures out; consumes nothing: what was read is replayed by
/// the returned [`Rewind`].
pub(super) async fn screen<S>(mut stream: S, deadlines: Deadlines) -> io::Result<Screened<S>>
where
    S: AsyncRead + Unpin,
{
    let mut buf = Vec::with_capacity(SCREEN_BYTES);
    match first_read(&mut stream, &mut buf, deadlines.first_byte).await? {
        FirstRead::Late => return Ok(Screened::NoFirstByte),
        FirstRead::Closed => return Ok(Screened::NoData),
        FirstRead::Data => {}
    }
    let deadline = Instant::now() + deadlines.header;
    let read = tokio::time::timeout_at(deadline, async {
        loop {
            match signature_at(&buf) {
                Signature::Maybe => {}
                decided => return Ok(Some(decided)),
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(None);
            }
        }
    })
    .await;
    let received = buf.len();
    Ok(match read {
        Err(_elapsed) => Screened::Timeout { received },
        Ok(Err(err)) => return Err(err),
        Ok(Ok(None)) => Screened::Closed { received },
        Ok(Ok(Some(Signature::Found(version)))) => Screened::Signature(version),
        Ok(Ok(Some(_plain))) => Screened::Plain(Rewind::new(stream, buf, 0)),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::proxy_protocol::{Limits, parse};

    /// Runs `screen` over `parts`, each handed out by a read of its own, then EOF.
    async fn screened(parts: &[&'static [u8]]) -> Screened<Box<dyn AsyncRead + Unpin + Send>> {
        let mut stream: Box<dyn AsyncRead + Unpin + Send> = Box::new(&b""[..]);
        for part in parts.iter().rev() {
            stream = Box::new(AsyncReadExt::chain(*part, stream));
        }
        screen(stream, far()).await.expect("reads from memory")
    }

    fn far() -> Deadlines {
        Deadlines {
            first_byte: Instant::now() + Duration::from_secs(3600),
            header: Duration::from_secs(3600),
        }
    }

    async fn replayed(parts: &[&'static [u8]]) -> Vec<u8> {
        match screened(parts).await {
            Screened::Plain(mut stream) => {
                let mut all = Vec::new();
                stream
                    .read_to_end(&mut all)
                    .await
                    .expect("reads from memory");
                all
            }
            other => panic!("{parts:?} should be plain, got {other:?}"),
        }
    }

    #[test]
    fn signatures_are_what_the_parser_reads() {
        let v1 = b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 80\r\n";
        assert_eq!(signature_at(v1), Signature::Found(Version::V1));
        assert!(parse(v1, &Limits::default()).expect("valid").is_some());
        let v2 = crate::proxy_protocol::encode_v2(
            "192.0.2.1:1000".parse().expect("literal"),
            "192.0.2.2:80".parse().expect("literal"),
            &[],
        )
        .expect("encodes");
        assert_eq!(signature_at(&v2), Signature::Found(Version::V2));
        // One byte off either signature is already not a header the parser would take.
        assert!(parse(b"PROXX ", &Limits::default()).is_err());
    }

    #[test]
    fn the_check_decides_at_the_first_byte_that_rules_both_out() {
        assert_eq!(signature_at(b""), Signature::Maybe);
        assert_eq!(signature_at(b"G"), Signature::None);
        assert_eq!(
            signature_at(&[0x16, 0x03, 0x01]),
            Signature::None,
            "a TLS ClientHello"
        );
        assert_eq!(signature_at(b"P"), Signature::Maybe);
        assert_eq!(signature_at(b"PO"), Signature::None, "POST");
        assert_eq!(signature_at(b"PRI"), Signature::None, "the h2 preface");
        assert_eq!(
            signature_at(b"PROXY"),
            Signature::Maybe,
            "the space is still to come"
        );
        assert_eq!(signature_at(b"PROXY "), Signature::Found(Version::V1));
        assert_eq!(signature_at(b"PROXYZ"), Signature::None);
        assert_eq!(signature_at(b"\r\n\r\n\0\r\nQUI"), Signature::Maybe);
        assert_eq!(signature_at(b"\r\n\r\n\0\r\nQUIT\r"), Signature::None);
        assert_eq!(signature_at(b"\r\nGET"), Signature::None);
    }

    #[tokio::test]
    async fn a_signature_split_over_reads_is_found() {
        assert!(matches!(
            screened(&[b"P", b"RO", b"XY", b" TCP4 "]).await,
            Screened::Signature(Version::V1)
        ));
        const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
        let (head, tail) = V2_SIGNATURE.split_at(5);
        let (head, tail): (&'static [u8], &'static [u8]) = (head, tail);
        assert!(matches!(
            screened(&[head, tail, b"\x21"]).await,
            Screened::Signature(Version::V2)
        ));
    }

    #[tokio::test]
    async fn plain_bytes_are_replayed_whole_even_when_decided_late() {
        let request: &'static [u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(replayed(&[request]).await, request);
        assert_eq!(
            replayed(&[b"P", b"R", b"I * HTTP/2.0\r\n"]).await,
            b"PRI * HTTP/2.0\r\n"
        );
        assert_eq!(replayed(&[b"PROXY", b"Z"]).await, b"PROXYZ");
    }

    #[tokio::test]
    async fn eof_before_the_bytes_tell_is_closed() {
        assert!(matches!(screened(&[]).await, Screened::NoData));
        assert!(matches!(
            screened(&[b"PROX"]).await,
            Screened::Closed { received: 4 }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn an_undecided_prefix_waits_only_until_the_deadline() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"PROX").await.expect("in memory");
        let start = Instant::now();
        let deadlines = Deadlines {
            first_byte: start + Duration::from_secs(5),
            header: Duration::from_millis(50),
        };
        let screened = screen(server, deadlines).await.expect("in memory");
        assert!(
            matches!(screened, Screened::Timeout { received: 4 }),
            "{screened:?}"
        );
        assert_eq!(Instant::now(), start + Duration::from_millis(50));
        // Nothing at all: the first-byte deadline, however late the first byte may be.
        let (_client, server) = tokio::io::duplex(64);
        let start = Instant::now();
        let deadlines = Deadlines {
            first_byte: start + Duration::from_secs(5),
            header: Duration::from_millis(50),
        };
        let screened = screen(server, deadlines).await.expect("in memory");
        assert!(matches!(screened, Screened::NoFirstByte));
        assert_eq!(Instant::now(), start + Duration::from_secs(5));
    }
}
