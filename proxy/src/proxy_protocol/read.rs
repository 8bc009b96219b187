//! Reading a PROXY header from a connection: [`read_header`] waits for the first byte,
//! then reads under the header's deadline (counted from that first byte) until [`parse`]
//! answers, and refuses a second header right behind the first; [`Rewind`] hands the bytes
//! that came after the header to the next layer (TLS or HTTP) before reading the stream
//! again. It owns no policy: the caller decides what the result means, counts and logs
//! it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tracing::debug;

use super::{Limits, ParseError, ProxyInfo, parse};

/// The first read's buffer. Holds any v1 line and the v2 headers load balancers send;
/// it doubles when a longer v2 header is announced, up to the configured ceiling.
const INITIAL_BUF_BYTES: usize = 512;

/// The two waits of [`read_header`].
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    /// When the connection must have sent its first byte.
    pub first_byte: Instant,
    /// How long the header may take from its first byte.
    pub header: Duration,
}

/// Why no header was read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("connection closed before sending a byte (a TCP health check)")]
    NoData,
    #[error("no byte before the first-byte deadline")]
    NoFirstByte,
    #[error("connection closed after {received} bytes, before the PROXY header was complete")]
    Eof { received: usize },
    #[error("no complete PROXY header before the deadline ({received} bytes received)")]
    Timeout { received: usize },
    #[error(
        "a second PROXY header ({version:?}) follows the first: a load balancer passed a client's header through"
    )]
    Nested { version: super::Version },
    #[error("invalid PROXY header")]
    Invalid(#[from] ParseError),
    #[error("reading the PROXY header")]
    Io(#[from] io::Error),
}

impl ReadError {
    /// A stable label for metrics: `no_data`, `first_byte_timeout`, `eof`, `timeout`,
    /// `nested_header`, `io`, or the [`ParseError::kind`].
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoData => "no_data",
            Self::NoFirstByte => "first_byte_timeout",
            Self::Eof { .. } => "eof",
            Self::Timeout { .. } => "timeout",
            Self::Nested { .. } => "nested_header",
            Self::Invalid(e) => e.kind(),
            Self::Io(_) => "io",
        }
    }
}

/// Reads a PROXY header from `stream`, which must be at the start of the connection.
///
/// Waits for the first byte until `deadlines.first_byte` (a load balancer may send the
/// header only with the client's first data, however late that comes; a connection that
/// closes before any byte is [`ReadError::NoData`], a health check). From that first
/// byte, the header has `deadlines.header`. Reads whatever arrives, in any number of
/// segments, and calls [`parse`] on all of it after each read; fails at once on a byte
/// no valid header can have, or on EOF. A second PROXY signature right after the header
/// is refused ([`ReadError::Nested`]); bytes that may still become one are waited for
/// until the header's deadline, then passed on. Consumes exactly the header: the bytes
/// read past it are replayed by the returned [`Rewind`] before the stream is read again.
/// Memory is bounded by the v2 length ceiling in `limits`.
pub async fn read_header<S>(
    mut stream: S,
    deadlines: Deadlines,
    limits: &Limits,
) -> Result<(ProxyInfo, Rewind<S>), ReadError>
where
    S: AsyncRead + Unpin,
{
    let mut buf = Vec::with_capacity(INITIAL_BUF_BYTES);
    match first_read(&mut stream, &mut buf, deadlines.first_byte).await? {
        FirstRead::Late => return Err(ReadError::NoFirstByte),
        FirstRead::Closed => return Err(ReadError::NoData),
        FirstRead::Data => {}
    }
    let deadline = Instant::now() + deadlines.header;
    let read =
        tokio::time::timeout_at(deadline, read_until_parsed(&mut stream, &mut buf, limits)).await;
    let (info, used) = match read {
        Ok(result) => result?,
        Err(_elapsed) => {
            return Err(ReadError::Timeout {
                received: buf.len(),
            });
        }
    };
    let behind = tokio::time::timeout_at(deadline, nested(&mut stream, &mut buf, used)).await;
    if let Ok(found) = behind {
        found?;
    }
    if let Some(fallback) = info.fallback() {
        debug!(
            ?fallback,
            "PROXY header addresses not used; keeping the peer address"
        );
    }
    Ok((info, Rewind::new(stream, buf, used)))
}

/// How a connection's first read ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstRead {
    /// Bytes arrived (in the buffer).
    Data,
    /// The peer closed without a byte: a TCP health check.
    Closed,
    /// Nothing by the deadline.
    Late,
}

/// The first read of a connection into `buf`, waiting for it until `deadline`: the one
/// wait both a PROXY header and a direct source's first bytes start with.
pub async fn first_read<S>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> io::Result<FirstRead>
where
    S: AsyncRead + Unpin,
{
    match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
        Err(_elapsed) => Ok(FirstRead::Late),
        Ok(Err(err)) => Err(err),
        Ok(Ok(0)) => Ok(FirstRead::Closed),
        Ok(Ok(_)) => Ok(FirstRead::Data),
    }
}

/// Reads into `buf` (which holds the first bytes already) until it starts with a
/// complete header; returns it and its length.
async fn read_until_parsed<S>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    limits: &Limits,
) -> Result<(ProxyInfo, usize), ReadError>
where
    S: AsyncRead + Unpin,
{
    loop {
        if let Some((header, used)) = parse(buf, limits)? {
            return Ok((ProxyInfo::from(header), used));
        }
        if buf.len() == buf.capacity() {
            // Only reached while `parse` waits for an announced length within the
            // ceiling, so the buffer stays below twice the largest header allowed.
            buf.reserve(buf.len());
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(ReadError::Eof {
                received: buf.len(),
            });
        }
    }
}

/// Whether a second PROXY header follows the one in `buf[..used]`: reads more while the
/// bytes after it are a proper prefix of a signature (at most a signature's length), and
/// stops at EOF or a read error (what came is passed on, and the next layer meets the
/// end or the error itself: HAProxy resets its LOCAL health checks right after the
/// header, which must still count as a header read). `Err(Nested)` when one follows.
async fn nested<S>(stream: &mut S, buf: &mut Vec<u8>, used: usize) -> Result<(), ReadError>
where
    S: AsyncRead + Unpin,
{
    loop {
        match super::signature_at(buf.get(used..).unwrap_or_default()) {
            super::Signature::Found(version) => return Err(ReadError::Nested { version }),
            super::Signature::None => return Ok(()),
            super::Signature::Maybe => {}
        }
        buf.reserve(super::SIGNATURE_MAX_BYTES);
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
    }
}

/// A stream that first replays the bytes read past the PROXY header, then reads the
/// inner stream. Writes, flushes and shutdown go straight to the inner stream.
#[derive(Debug)]
pub struct Rewind<S> {
    inner: S,
    /// `buffered[pos..]` is still to be replayed; freed once replayed.
    buffered: Vec<u8>,
    pos: usize,
}

impl<S> Rewind<S> {
    /// A stream that replays `buffered[pos..]`, then reads `inner`.
    pub(crate) fn new(inner: S, buffered: Vec<u8>, pos: usize) -> Self {
        let mut rewind = Self {
            inner,
            buffered,
            pos,
        };
        rewind.release_if_replayed();
        rewind
    }

    /// The bytes still to be replayed before the inner stream is read.
    pub(crate) fn buffered(&self) -> &[u8] {
        self.buffered.get(self.pos..).unwrap_or_default()
    }

    /// The inner stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner stream. Reading it directly skips the bytes still buffered.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Puts `bytes` back, to be replayed before what is still buffered.
    pub(crate) fn replay(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut buffered = Vec::with_capacity(bytes.len() + self.buffered().len());
        buffered.extend_from_slice(bytes);
        buffered.extend_from_slice(self.buffered());
        self.buffered = buffered;
        self.pos = 0;
    }

    /// Puts `bytes` back, to be replayed before what is still buffered; taken as they are
    /// when nothing is (the usual case: no copy).
    pub(crate) fn replay_owned(&mut self, bytes: Vec<u8>) {
        if self.buffered().is_empty() {
            self.buffered = bytes;
            self.pos = 0;
            self.release_if_replayed();
        } else {
            self.replay(&bytes);
        }
    }

    /// The inner stream and the bytes not yet replayed.
    pub fn into_parts(mut self) -> (S, Vec<u8>) {
        self.buffered.drain(..self.pos);
        (self.inner, self.buffered)
    }

    fn release_if_replayed(&mut self) {
        if self.pos >= self.buffered.len() {
            self.buffered = Vec::new();
            self.pos = 0;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let pending = this.buffered();
        if pending.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, out);
        }
        let n = pending.len().min(out.remaining());
        out.put_slice(&pending[..n]);
        this.pos += n;
        this.release_if_replayed();
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
