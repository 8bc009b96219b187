//! The PROXY protocol (HAProxy's `doc/proxy-protocol.txt`, versions 1 and 2), both ways.
//! [`parse`] is sans-IO and zero-copy: it answers *complete header of N bytes*, *need more
//! bytes* or *invalid, because …*, and rejects at the first byte no valid header can have.
//! [`read_header`] applies it to a connection under a deadline; [`encode`] writes headers
//! for upstreams. Trust decisions, counting and logging belong to the caller.

mod encode;
mod endpoints;
mod info;
mod read;
mod tlv;
mod v1;
mod v2;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;

use endpoints::Endpoints;

pub use encode::{EncodeError, encode, encode_v2};
pub use info::ProxyInfo;
pub use read::{Deadlines, FirstRead, ReadError, Rewind, first_read, read_header};
pub use tlv::{Ssl, SslClient, Tlv, TlvIter, Tlvs};

/// Bounds the parser applies beyond the specification's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest v2 length field accepted: the bytes after the 16-byte fixed part
    /// (addresses and TLVs). A larger value is rejected as soon as the length is read,
    /// before its bytes arrive, so it bounds the reader's buffer.
    pub max_v2_len: usize,
    /// Accept a v1 line whose two addresses differ in family, or differ from its
    /// `TCP4`/`TCP6` word (nginx stream writes such lines when it relays a client address
    /// it learnt from a PROXY header of its own). Both are then kept as IPv6, the IPv4
    /// one mapped; [`Header::mixed_families`] says so.
    pub accept_v1_mixed_families: bool,
}

/// The default ceiling on the v2 length field, in bytes.
pub const DEFAULT_MAX_V2_LEN: usize = 4096;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_v2_len: DEFAULT_MAX_V2_LEN,
            accept_v1_mixed_families: false,
        }
    }
}

/// Which of the two header formats was received.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// The text line (`PROXY TCP4 …\r\n`).
    V1,
    /// The binary header.
    V2,
}

/// The v2 command. A v1 line is always [`Command::Proxy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// The load balancer opened the connection itself (a health check): the connection's
    /// own endpoints apply and any address block is discarded.
    Local,
    /// The connection is relayed on behalf of a client.
    Proxy,
}

/// What the header says about the relayed connection's endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Addresses {
    /// Use the connection's own endpoints: v2 LOCAL, v1 `UNKNOWN`, or a v2 family or
    /// transport of UNSPEC.
    Unspecified,
    /// TCP over IPv4 or IPv6, as relayed by the sender.
    Tcp {
        /// The client: the relayed connection's source.
        source: SocketAddr,
        /// The address the client connected to.
        destination: SocketAddr,
    },
    /// A valid v2 combination trustgate does not serve. As the specification asks, it
    /// falls back to UNSPEC behaviour: the connection's own endpoints apply.
    Fallback(Fallback),
}

/// Why a valid v2 header fell back to the connection's own endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fallback {
    /// AF_UNIX addresses (stream or datagram).
    Unix,
    /// UDP over IPv4 or IPv6.
    Datagram,
}

impl Addresses {
    /// The relayed client address, when the header carries one trustgate uses.
    #[inline]
    pub fn client(&self) -> Option<SocketAddr> {
        match *self {
            Self::Tcp { source, .. } => Some(source),
            Self::Unspecified | Self::Fallback(_) => None,
        }
    }

    /// The relayed destination address, when the header carries one trustgate uses.
    #[inline]
    pub fn destination(&self) -> Option<SocketAddr> {
        match *self {
            Self::Tcp { destination, .. } => Some(destination),
            Self::Unspecified | Self::Fallback(_) => None,
        }
    }

    /// Set when a valid header carried addresses trustgate does not use.
    #[inline]
    pub fn fallback(&self) -> Option<Fallback> {
        match *self {
            Self::Fallback(reason) => Some(reason),
            Self::Unspecified | Self::Tcp { .. } => None,
        }
    }
}

/// A complete, valid header, borrowing the bytes it was parsed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    version: Version,
    command: Command,
    endpoints: Endpoints,
    /// The v2 TLV area, already checked: no TLV overruns, CRC32C matches. Empty for v1.
    tlvs: Tlvs<'a>,
    /// A v1 line accepted by [`Limits::accept_v1_mixed_families`] only.
    mixed_families: bool,
}

impl<'a> Header<'a> {
    /// The header format.
    #[inline]
    pub fn version(&self) -> Version {
        self.version
    }

    /// LOCAL or PROXY.
    #[inline]
    pub fn command(&self) -> Command {
        self.command
    }

    /// The endpoints the header describes.
    pub fn addresses(&self) -> Addresses {
        self.endpoints.addresses()
    }

    /// The relayed client address; `None` for LOCAL, `UNKNOWN`, UNSPEC and the
    /// UNIX/DGRAM fallback, where the connection's own peer address applies.
    #[inline]
    pub fn client(&self) -> Option<SocketAddr> {
        self.endpoints.endpoint(0)
    }

    /// The relayed destination address; `None` whenever [`Header::client`] is.
    #[inline]
    pub fn destination(&self) -> Option<SocketAddr> {
        self.endpoints.endpoint(1)
    }

    /// Set when a valid UNIX or DGRAM header fell back to the peer address.
    pub fn fallback(&self) -> Option<Fallback> {
        self.endpoints.fallback_reason()
    }

    /// The TLVs (v2 only), with typed accessors.
    #[inline]
    pub fn tlvs(&self) -> Tlvs<'a> {
        self.tlvs
    }

    /// Whether this v1 line's addresses differed in family (accepted only by
    /// [`Limits::accept_v1_mixed_families`]).
    #[inline]
    pub(crate) fn mixed_families(&self) -> bool {
        self.mixed_families
    }
}

/// Parses a PROXY header at the start of `buf`.
///
/// - `Ok(Some((header, n)))`: the header is exactly `buf[..n]`; what follows belongs to
///   the next layer.
/// - `Ok(None)`: every byte so far can begin a valid header; call again with more.
/// - `Err(e)`: no continuation can make this a valid header. The error is decided by the
///   first offending byte, so a header split anywhere fails the same way as in one piece.
///
/// Neither allocates nor copies; nothing in `buf` can make it panic.
#[inline]
pub fn parse<'a>(
    buf: &'a [u8],
    limits: &Limits,
) -> Result<Option<(Header<'a>, usize)>, ParseError> {
    match buf.first() {
        None => Ok(None),
        Some(&v1::FIRST_BYTE) => v1::parse(buf, limits),
        Some(&v2::FIRST_BYTE) => v2::parse(buf, limits),
        Some(_) => Err(ParseError::BadSignature { offset: 0 }),
    }
}

/// What the bytes at the start of a buffer are, as far as the two signatures go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signature {
    /// A whole signature (v1's `PROXY ` or v2's twelve bytes).
    Found(Version),
    /// A proper prefix of one (or nothing yet): more bytes decide.
    Maybe,
    /// Neither: no continuation makes them a signature.
    None,
}

/// The longest signature, in bytes (v2's).
pub(crate) const SIGNATURE_MAX_BYTES: usize = v2::SIGNATURE.len();

/// Whether `bytes` begin with a PROXY signature. For a second header behind the first,
/// and for connections that must not send one.
pub(crate) fn signature_at(bytes: &[u8]) -> Signature {
    let mut maybe = false;
    for (signature, version) in [
        (v1::SIGNATURE_WITH_SPACE, Version::V1),
        (&v2::SIGNATURE[..], Version::V2),
    ] {
        let n = bytes.len().min(signature.len());
        if bytes[..n] == signature[..n] {
            if n == signature.len() {
                return Signature::Found(version);
            }
            maybe = true;
        }
    }
    if maybe {
        Signature::Maybe
    } else {
        Signature::None
    }
}

/// One of the two address fields of a v1 line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    /// The first address or port.
    Source,
    /// The second address or port.
    Destination,
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Source => "source",
            Self::Destination => "destination",
        })
    }
}

/// Why bytes are not a valid PROXY header. Offsets count from the first byte of the
/// header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("byte {offset} matches neither the v1 nor the v2 signature")]
    BadSignature { offset: usize },
    #[error("v1 line has no CRLF within its first {max} bytes", max = v1::MAX_LEN)]
    V1TooLong,
    #[error("v1 line: byte {offset} is a CR or LF that does not end the line as CRLF")]
    V1BadLineEnd { offset: usize },
    #[error("v1 line: byte {offset} is not part of TCP4, TCP6 or UNKNOWN")]
    V1BadProtocol { offset: usize },
    #[error("v1 line: byte {offset} is a space where none may be, or not the single space")]
    V1BadSeparator { offset: usize },
    #[error("v1 line: {field} address is malformed at byte {offset}")]
    V1BadAddress { field: Field, offset: usize },
    #[error("v1 line: {field} address at byte {offset} is of the other family")]
    V1FamilyMismatch { field: Field, offset: usize },
    #[error("v1 line: {field} port is malformed at byte {offset}")]
    V1BadPort { field: Field, offset: usize },
    #[error("v2: version {version} is not 2")]
    V2BadVersion { version: u8 },
    #[error("v2: command {command} is neither LOCAL (0) nor PROXY (1)")]
    V2BadCommand { command: u8 },
    #[error("v2: address family {family} is not UNSPEC, INET, INET6 or UNIX")]
    V2BadFamily { family: u8 },
    #[error("v2: transport {transport} is not UNSPEC, STREAM or DGRAM")]
    V2BadTransport { transport: u8 },
    #[error("v2: length {length} is above the configured ceiling of {max}")]
    V2TooLong { length: usize, max: usize },
    #[error("v2: length {length} cannot hold the family's {needed}-byte address block")]
    V2ShortAddresses { length: usize, needed: usize },
    #[error("v2: TLV at byte {offset} runs past the end of the header")]
    TlvOverrun { offset: usize },
    #[error("v2: SSL TLV at byte {offset} has {length} bytes, fewer than its 5-byte head")]
    SslTooShort { offset: usize, length: usize },
    #[error("v2: SSL sub-TLV at byte {offset} runs past the end of the SSL TLV")]
    SslOverrun { offset: usize },
    #[error("v2: UNIQUE_ID TLV at byte {offset} has {length} bytes, more than 128")]
    UniqueIdTooLong { offset: usize, length: usize },
    #[error("v2: CRC32C TLV at byte {offset} has {length} bytes, not 4")]
    CrcBadLength { offset: usize, length: usize },
    #[error("v2: second CRC32C TLV at byte {offset}")]
    CrcDuplicate { offset: usize },
    #[error("v2: CRC32C is {received:#010x}, the header's is {computed:#010x}")]
    CrcMismatch { received: u32, computed: u32 },
}

impl ParseError {
    /// A stable label for metrics: one per rule, never containing data from the peer.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadSignature { .. } => "bad_signature",
            Self::V1TooLong => "v1_too_long",
            Self::V1BadLineEnd { .. } => "v1_bad_line_end",
            Self::V1BadProtocol { .. } => "v1_bad_protocol",
            Self::V1BadSeparator { .. } => "v1_bad_separator",
            Self::V1BadAddress { .. } => "v1_bad_address",
            Self::V1FamilyMismatch { .. } => "v1_family_mismatch",
            Self::V1BadPort { .. } => "v1_bad_port",
            Self::V2BadVersion { .. } => "v2_bad_version",
            Self::V2BadCommand { .. } => "v2_bad_command",
            Self::V2BadFamily { .. } => "v2_bad_family",
            Self::V2BadTransport { .. } => "v2_bad_transport",
            Self::V2TooLong { .. } => "v2_too_long",
            Self::V2ShortAddresses { .. } => "v2_short_addresses",
            Self::TlvOverrun { .. } => "tlv_overrun",
            Self::SslTooShort { .. } => "ssl_too_short",
            Self::SslOverrun { .. } => "ssl_overrun",
            Self::UniqueIdTooLong { .. } => "unique_id_too_long",
            Self::CrcBadLength { .. } => "crc_bad_length",
            Self::CrcDuplicate { .. } => "crc_duplicate",
            Self::CrcMismatch { .. } => "crc_mismatch",
        }
    }
}
