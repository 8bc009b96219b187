//! A direct source's first bytes (`direct_sources`: no PROXY header, the peer is the
//! client): [`screen`] reads until they are known not to open a PROXY header, v1 or v2,
//! and hands every byte it read to the next layer through a [`Rewind`]. A connection that
//! does open with a signature is reported, for the caller to refuse and count: a direct
//! source must never be able to name another client. No policy, counting or logging here.

use std::fmt;
use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use crate::proxy_protocol::{Rewind, Version};

/// What a v1 header opens with: the word and its space (`PROXY TCP4 …`). An HTTP method
/// named `PROXY` would be refused too; no client sends one.
const V1_SIGNATURE: &[u8] = b"PROXY ";
/// What a v2 header opens with (HAProxy's `doc/proxy-protocol.txt` §2.2).
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// The first read's buffer: a whole ordinary request head or TLS ClientHello, so that the
/// next layer gets it in one piece (see `conn::sniff`), as it would without the screen.
const SCREEN_BYTES: usize = 4096;

/// How a direct source's connection opens.
pub(super) enum Screened<S> {
    /// Not with a PROXY signature: the stream, replaying the bytes read.
    Plain(Rewind<S>),
    /// With the signature of this version.
    Signature(Version),
    /// Closed before its first bytes told (`received` of them, all a signature's prefix).
    Closed { received: usize },
    /// `deadline` came before its first bytes told.
    Timeout { received: usize },
}

impl<S> fmt::Debug for Screened<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Screened::Plain(stream) => {
                write!(f, "Plain({} bytes to replay)", stream.buffered().len())
            }
            Screened::Signature(version) => write!(f, "Signature({version:?})"),
            Screened::Closed { received } => write!(f, "Closed({received} bytes)"),
            Screened::Timeout { received } => write!(f, "Timeout({received} bytes)"),
        }
    }
}

/// What the bytes so far say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    Plain,
    Signature(Version),
    /// A prefix of a signature (the empty one included): more bytes decide.
    Undecided,
}

/// Reads `stream`, which must be at the start of the connection, until its first bytes
/// tell whether it opens with a PROXY signature, or until `deadline` (the one the PROXY
/// header read has, so a direct source gets no longer to open than a load balancer).
/// Decides at the first byte that rules both signatures out; consumes nothing: what was
/// read is replayed by the returned [`Rewind`].
pub(super) async fn screen<S>(mut stream: S, deadline: Instant) -> io::Result<Screened<S>>
where
    S: AsyncRead + Unpin,
{
    let mut buf = Vec::with_capacity(SCREEN_BYTES);
    let read = tokio::time::timeout_at(deadline, async {
        loop {
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(None);
            }
            match check(&buf) {
                Check::Undecided => {}
                decided => return Ok(Some(decided)),
            }
        }
    })
    .await;
    let received = buf.len();
    Ok(match read {
        Err(_elapsed) => Screened::Timeout { received },
        Ok(Err(err)) => return Err(err),
        Ok(Ok(None)) => Screened::Closed { received },
        Ok(Ok(Some(Check::Signature(version)))) => Screened::Signature(version),
        Ok(Ok(Some(_plain))) => Screened::Plain(Rewind::new(stream, buf, 0)),
    })
}

fn check(bytes: &[u8]) -> Check {
    let mut undecided = false;
    for (signature, version) in [(V1_SIGNATURE, Version::V1), (V2_SIGNATURE, Version::V2)] {
        if bytes.starts_with(signature) {
            return Check::Signature(version);
        }
        undecided |= signature.starts_with(bytes);
    }
    if undecided {
        Check::Undecided
    } else {
        Check::Plain
    }
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
        let far = Instant::now() + Duration::from_secs(3600);
        screen(stream, far).await.expect("reads from memory")
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
        assert!(v1.starts_with(V1_SIGNATURE));
        assert!(parse(v1, &Limits::default()).expect("valid").is_some());
        let v2 = crate::proxy_protocol::encode_v2(
            "192.0.2.1:1000".parse().expect("literal"),
            "192.0.2.2:80".parse().expect("literal"),
            &[],
        )
        .expect("encodes");
        assert!(v2.starts_with(V2_SIGNATURE));
        // One byte off either signature is already not a header the parser would take.
        assert!(parse(b"PROXX ", &Limits::default()).is_err());
    }

    #[test]
    fn check_decides_at_the_first_byte_that_rules_both_out() {
        assert_eq!(check(b""), Check::Undecided);
        assert_eq!(check(b"G"), Check::Plain);
        assert_eq!(
            check(&[0x16, 0x03, 0x01]),
            Check::Plain,
            "a TLS ClientHello"
        );
        assert_eq!(check(b"P"), Check::Undecided);
        assert_eq!(check(b"PO"), Check::Plain, "POST");
        assert_eq!(check(b"PRI"), Check::Plain, "the h2 preface");
        assert_eq!(
            check(b"PROXY"),
            Check::Undecided,
            "the space is still to come"
        );
        assert_eq!(check(b"PROXY "), Check::Signature(Version::V1));
        assert_eq!(check(b"PROXYZ"), Check::Plain);
        assert_eq!(check(b"\r\n\r\n\0\r\nQUI"), Check::Undecided);
        assert_eq!(check(V2_SIGNATURE), Check::Signature(Version::V2));
        assert_eq!(check(b"\r\n\r\n\0\r\nQUIT\r"), Check::Plain);
        assert_eq!(check(b"\r\nGET"), Check::Plain);
    }

    #[tokio::test]
    async fn a_signature_split_over_reads_is_found() {
        assert!(matches!(
            screened(&[b"P", b"RO", b"XY", b" TCP4 "]).await,
            Screened::Signature(Version::V1)
        ));
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
        assert!(matches!(
            screened(&[]).await,
            Screened::Closed { received: 0 }
        ));
        assert!(matches!(
            screened(&[b"PROX"]).await,
            Screened::Closed { received: 4 }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn an_undecided_prefix_waits_only_until_the_deadline() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"PROX").await.expect("in memory");
        let deadline = Instant::now() + Duration::from_millis(50);
        let screened = screen(server, deadline).await.expect("in memory");
        assert!(
            matches!(screened, Screened::Timeout { received: 4 }),
            "{screened:?}"
        );
        assert_eq!(Instant::now(), deadline);
        // Nothing at all before the deadline is a timeout too.
        let (_client, server) = tokio::io::duplex(64);
        let deadline = Instant::now() + Duration::from_millis(50);
        let screened = screen(server, deadline).await.expect("in memory");
        assert!(matches!(screened, Screened::Timeout { received: 0 }));
    }
}
