//! The v2 TLV area: one checking pass at parse time ([`validate`]: no TLV or SSL sub-TLV
//! overruns, UNIQUE_ID at most 128 bytes, CRC32C 4 bytes and matching), then borrowed,
//! infallible iteration and typed accessors over the checked bytes. Unknown types are
//! skipped; duplicates are allowed (except CRC32C) and accessors return the first.

use super::ParseError;

/// Bytes of a TLV's type and length.
pub(super) const TLV_HEAD_BYTES: usize = 3;
/// Bytes of the SSL TLV's `client` and `verify` fields, before its sub-TLVs.
const SSL_HEAD_BYTES: usize = 5;
/// The longest UNIQUE_ID value the specification allows.
pub(crate) const UNIQUE_ID_MAX_BYTES: usize = 128;
pub(super) const CRC32C_BYTES: usize = 4;
/// The subtype byte that starts the AWS and Azure TLVs' values.
const CLOUD_SUBTYPE_ID: u8 = 0x01;

/// A checked v2 TLV area. Constructed only from bytes `validate` accepted, which is
/// what lets iteration and the accessors be infallible. The default is empty (v1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tlvs<'a> {
    area: &'a [u8],
}

/// One TLV: its type byte and its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tlv<'a> {
    kind: u8,
    value: &'a [u8],
}

/// Iterates over the TLVs of a checked area, in wire order.
#[derive(Clone, Debug)]
pub struct TlvIter<'a> {
    rest: &'a [u8],
}

impl Tlv<'_> {
    /// `PP2_TYPE_ALPN`: the negotiated application protocol.
    pub(crate) const ALPN: u8 = 0x01;
    /// `PP2_TYPE_AUTHORITY`: the host name the client asked for (TLS SNI).
    pub(crate) const AUTHORITY: u8 = 0x02;
    /// `PP2_TYPE_CRC32C`: checksum of the whole header.
    pub(crate) const CRC32C: u8 = 0x03;
    /// `PP2_TYPE_NOOP`: padding.
    pub const NOOP: u8 = 0x04;
    /// `PP2_TYPE_UNIQUE_ID`: an opaque connection id of at most 128 bytes.
    pub(crate) const UNIQUE_ID: u8 = 0x05;
    /// `PP2_TYPE_SSL`: the client's TLS session, see [`Ssl`].
    pub(crate) const SSL: u8 = 0x20;
    /// `PP2_TYPE_NETNS`: the network namespace's name.
    pub(crate) const NETNS: u8 = 0x30;
    /// Google Cloud Private Service Connect: the PSC connection id, a big-endian u64.
    pub(crate) const GCP: u8 = 0xE0;
    /// AWS: subtype 0x01 followed by the VPC endpoint id.
    pub(crate) const AWS: u8 = 0xEA;
    /// Azure: subtype 0x01 followed by the private endpoint's LINKID, a little-endian u32.
    pub(crate) const AZURE: u8 = 0xEE;
}

impl<'a> Tlv<'a> {
    /// A TLV to encode (see [`encode_v2`](super::encode_v2)).
    pub const fn new(kind: u8, value: &'a [u8]) -> Self {
        Self { kind, value }
    }

    /// The type byte.
    #[inline]
    pub(crate) fn kind(&self) -> u8 {
        self.kind
    }

    /// The value bytes.
    #[inline]
    pub fn value(&self) -> &'a [u8] {
        self.value
    }
}

impl<'a> Iterator for TlvIter<'a> {
    type Item = Tlv<'a>;

    #[inline]
    fn next(&mut self) -> Option<Tlv<'a>> {
        // The area was validated; were it not, iteration would stop, never panic.
        let (&kind, rest) = self.rest.split_first()?;
        let (length, rest) = rest.split_first_chunk::<2>()?;
        let (value, rest) = rest.split_at_checked(usize::from(u16::from_be_bytes(*length)))?;
        self.rest = rest;
        Some(Tlv { kind, value })
    }
}

impl<'a> IntoIterator for Tlvs<'a> {
    type Item = Tlv<'a>;
    type IntoIter = TlvIter<'a>;

    #[inline]
    fn into_iter(self) -> TlvIter<'a> {
        self.iter()
    }
}

impl<'a> Tlvs<'a> {
    /// Wraps bytes that [`validate`] accepted, or a copy of them.
    pub(super) fn from_validated(area: &'a [u8]) -> Self {
        Self { area }
    }

    /// The TLVs in wire order.
    #[inline]
    pub fn iter(&self) -> TlvIter<'a> {
        TlvIter { rest: self.area }
    }

    /// The raw bytes of the area.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.area
    }

    /// True when the header carried no TLV.
    pub(crate) fn is_empty(&self) -> bool {
        self.area.is_empty()
    }

    /// The value of the first TLV of type `kind`.
    pub(crate) fn find(&self, kind: u8) -> Option<&'a [u8]> {
        self.iter()
            .find(|tlv| tlv.kind == kind)
            .map(|tlv| tlv.value)
    }

    /// `PP2_TYPE_ALPN`, e.g. `b"h2"`.
    pub fn alpn(&self) -> Option<&'a [u8]> {
        self.find(Tlv::ALPN)
    }

    /// `PP2_TYPE_AUTHORITY` (the SNI), when it is UTF-8 as the specification requires.
    pub fn authority(&self) -> Option<&'a str> {
        self.find(Tlv::AUTHORITY).and_then(utf8)
    }

    /// `PP2_TYPE_CRC32C`, already checked against the header.
    pub fn crc32c(&self) -> Option<u32> {
        self.find(Tlv::CRC32C)
            .and_then(|value| value.try_into().ok())
            .map(u32::from_be_bytes)
    }

    /// `PP2_TYPE_UNIQUE_ID` (at most 128 bytes, checked).
    pub fn unique_id(&self) -> Option<&'a [u8]> {
        self.find(Tlv::UNIQUE_ID)
    }

    /// `PP2_TYPE_SSL`, with its sub-TLVs already checked.
    pub fn ssl(&self) -> Option<Ssl<'a>> {
        let value = self.find(Tlv::SSL)?;
        let (&client, rest) = value.split_first()?;
        let (verify, sub_tlvs) = rest.split_first_chunk::<4>()?;
        Some(Ssl {
            client: SslClient(client),
            verify: u32::from_be_bytes(*verify),
            sub_tlvs,
        })
    }

    /// `PP2_TYPE_NETNS`, when UTF-8.
    pub fn netns(&self) -> Option<&'a str> {
        self.find(Tlv::NETNS).and_then(utf8)
    }

    /// The AWS VPC endpoint id (type 0xEA, subtype 0x01), e.g. `vpce-08d2bf15fac5001c9`.
    pub fn aws_vpce_id(&self) -> Option<&'a str> {
        self.cloud_subtype(Tlv::AWS).and_then(utf8)
    }

    /// The Azure private endpoint LINKID (type 0xEE, subtype 0x01).
    pub fn azure_link_id(&self) -> Option<u32> {
        self.cloud_subtype(Tlv::AZURE)
            .and_then(|value| value.try_into().ok())
            .map(u32::from_le_bytes)
    }

    /// The Google Cloud PSC connection id (type 0xE0, 8 bytes).
    pub fn gcp_psc_connection_id(&self) -> Option<u64> {
        self.find(Tlv::GCP)
            .and_then(|value| value.try_into().ok())
            .map(u64::from_be_bytes)
    }

    /// The rest of the first TLV of type `kind` whose value starts with subtype 0x01.
    fn cloud_subtype(&self, kind: u8) -> Option<&'a [u8]> {
        self.iter().find_map(|tlv| match tlv.value.split_first() {
            Some((&CLOUD_SUBTYPE_ID, rest)) if tlv.kind == kind => Some(rest),
            _ => None,
        })
    }
}

/// The `PP2_TYPE_SSL` TLV: how the client reached the load balancer over TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ssl<'a> {
    client: SslClient,
    verify: u32,
    sub_tlvs: &'a [u8],
}

/// The SSL TLV's `client` bit field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SslClient(u8);

impl SslClient {
    /// `PP2_CLIENT_SSL`: the client connected over TLS.
    pub fn ssl(&self) -> bool {
        self.0 & 0x01 != 0
    }

    /// `PP2_CLIENT_CERT_CONN`: the client presented a certificate on this connection.
    pub fn cert_conn(&self) -> bool {
        self.0 & 0x02 != 0
    }

    /// `PP2_CLIENT_CERT_SESS`: the client presented a certificate in this TLS session.
    pub fn cert_sess(&self) -> bool {
        self.0 & 0x04 != 0
    }

    /// The raw bits, unknown ones included.
    pub fn bits(&self) -> u8 {
        self.0
    }
}

impl Ssl<'_> {
    /// `PP2_SUBTYPE_SSL_VERSION`, e.g. `TLSv1.3`.
    pub(crate) const VERSION: u8 = 0x21;
    /// `PP2_SUBTYPE_SSL_CN`: the client certificate's Common Name.
    pub(crate) const CN: u8 = 0x22;
    /// `PP2_SUBTYPE_SSL_CIPHER`, e.g. `ECDHE-RSA-AES128-GCM-SHA256`.
    pub(crate) const CIPHER: u8 = 0x23;
    /// `PP2_SUBTYPE_SSL_SIG_ALG`: the algorithm that signed the frontend's certificate.
    pub(crate) const SIG_ALG: u8 = 0x24;
    /// `PP2_SUBTYPE_SSL_KEY_ALG`: the algorithm of the frontend certificate's key.
    pub(crate) const KEY_ALG: u8 = 0x25;
    /// `PP2_SUBTYPE_SSL_GROUP`: the key exchange group, e.g. `X25519`.
    pub(crate) const GROUP: u8 = 0x26;
    /// `PP2_SUBTYPE_SSL_SIG_SCHEME`: the TLS signature scheme, e.g. `rsa_pss_rsae_sha256`.
    pub(crate) const SIG_SCHEME: u8 = 0x27;
    /// `PP2_SUBTYPE_SSL_CLIENT_CERT`: the client certificate, DER.
    pub const CLIENT_CERT: u8 = 0x28;
}

impl<'a> Ssl<'a> {
    /// The `client` bit field.
    pub fn client(&self) -> SslClient {
        self.client
    }

    /// The `verify` field: zero when the client presented a certificate and it verified.
    pub fn verify(&self) -> u32 {
        self.verify
    }

    /// The sub-TLVs in wire order.
    pub fn sub_tlvs(&self) -> TlvIter<'a> {
        TlvIter {
            rest: self.sub_tlvs,
        }
    }

    /// The value of the first sub-TLV of type `kind`.
    pub(crate) fn find(&self, kind: u8) -> Option<&'a [u8]> {
        self.sub_tlvs()
            .find(|tlv| tlv.kind == kind)
            .map(|tlv| tlv.value)
    }

    /// The TLS version, e.g. `TLSv1.3`.
    pub fn version(&self) -> Option<&'a str> {
        self.find(Self::VERSION).and_then(utf8)
    }

    /// The client certificate's Common Name.
    pub fn cn(&self) -> Option<&'a str> {
        self.find(Self::CN).and_then(utf8)
    }

    /// The cipher suite's name.
    pub fn cipher(&self) -> Option<&'a str> {
        self.find(Self::CIPHER).and_then(utf8)
    }

    /// The algorithm that signed the frontend's certificate.
    pub fn sig_alg(&self) -> Option<&'a str> {
        self.find(Self::SIG_ALG).and_then(utf8)
    }

    /// The algorithm of the frontend certificate's key.
    pub fn key_alg(&self) -> Option<&'a str> {
        self.find(Self::KEY_ALG).and_then(utf8)
    }

    /// The key exchange group.
    pub fn group(&self) -> Option<&'a str> {
        self.find(Self::GROUP).and_then(utf8)
    }

    /// The TLS signature scheme.
    pub fn sig_scheme(&self) -> Option<&'a str> {
        self.find(Self::SIG_SCHEME).and_then(utf8)
    }

    /// The client certificate (DER).
    pub fn client_cert(&self) -> Option<&'a [u8]> {
        self.find(Self::CLIENT_CERT)
    }
}

fn utf8(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok()
}

/// Checks the TLV area of `header` (a complete v2 header), which starts at byte `start`:
/// every TLV within the header, UNIQUE_ID at most 128 bytes, SSL at least its 5-byte head
/// with sub-TLVs within it, and at most one CRC32C, of 4 bytes, matching the CRC32C of
/// the whole header computed with that field zeroed.
pub(super) fn validate(header: &[u8], start: usize) -> Result<(), ParseError> {
    let mut pos = start;
    let mut crc_at = None;
    while pos < header.len() {
        let (kind, value) = split_tlv(header, pos).ok_or(ParseError::TlvOverrun { offset: pos })?;
        let value_at = pos + TLV_HEAD_BYTES;
        match kind {
            Tlv::CRC32C if value.len() != CRC32C_BYTES => {
                return Err(ParseError::CrcBadLength {
                    offset: pos,
                    length: value.len(),
                });
            }
            Tlv::CRC32C if crc_at.is_some() => {
                return Err(ParseError::CrcDuplicate { offset: pos });
            }
            Tlv::CRC32C => crc_at = Some(value_at),
            Tlv::UNIQUE_ID if value.len() > UNIQUE_ID_MAX_BYTES => {
                return Err(ParseError::UniqueIdTooLong {
                    offset: pos,
                    length: value.len(),
                });
            }
            Tlv::SSL => validate_ssl(header, pos, value.len())?,
            _ => {}
        }
        pos = value_at + value.len();
    }
    match crc_at {
        Some(at) => check_crc(header, at),
        None => Ok(()),
    }
}

/// The type and value of the TLV at `pos` in `bytes`, if it fits.
fn split_tlv(bytes: &[u8], pos: usize) -> Option<(u8, &[u8])> {
    let (&kind, rest) = bytes.get(pos..)?.split_first()?;
    let (length, rest) = rest.split_first_chunk::<2>()?;
    let value = rest.get(..usize::from(u16::from_be_bytes(*length)))?;
    Some((kind, value))
}

/// Checks the SSL TLV at `pos` whose value has `length` bytes.
fn validate_ssl(header: &[u8], pos: usize, length: usize) -> Result<(), ParseError> {
    if length < SSL_HEAD_BYTES {
        return Err(ParseError::SslTooShort {
            offset: pos,
            length,
        });
    }
    let end = pos + TLV_HEAD_BYTES + length;
    let within = header
        .get(..end)
        .ok_or(ParseError::TlvOverrun { offset: pos })?;
    let mut sub = pos + TLV_HEAD_BYTES + SSL_HEAD_BYTES;
    while sub < end {
        let (_, value) = split_tlv(within, sub).ok_or(ParseError::SslOverrun { offset: sub })?;
        sub += TLV_HEAD_BYTES + value.len();
    }
    Ok(())
}

/// The longest v2 header: 16 bytes and a 16-bit length.
const MAX_HEADER_BYTES: usize = 16 + u16::MAX as usize;

/// Zero bytes for the checksum's correction term (see [`check_crc`]). A zeroed static
/// lives in .bss: no size in the binary, and its pages all map the one zero page.
static ZEROS: [u8; MAX_HEADER_BYTES] = [0; MAX_HEADER_BYTES];

/// Compares the CRC32C at `at` with the one of `header` computed with those 4 bytes zeroed.
///
/// CRC32C is linear, so that checksum is the checksum of the header as received, corrected
/// by the field's own contribution: its 4 bytes followed by the bytes after it as zeros,
/// run from a zero register (which equals starting the register at the field's
/// little-endian value and running 4 more zero bytes). The two passes do not depend on
/// each other, so the CPU overlaps them; zeroing the field in a copy of the header cost
/// more than the second pass (measured on a 112-byte header).
fn check_crc(header: &[u8], at: usize) -> Result<(), ParseError> {
    let field = header
        .get(at..at + CRC32C_BYTES)
        .and_then(|value| <[u8; CRC32C_BYTES]>::try_from(value).ok())
        .expect("validate() saw 4 value bytes at `at`");
    let received = u32::from_be_bytes(field);
    // `at + 4 <= header.len() <= MAX_HEADER_BYTES`: in bounds.
    let zeros = &ZEROS[..header.len() - at];
    let contribution = !crc32c::crc32c_append(!u32::from_le_bytes(field), zeros);
    let computed = crc32c::crc32c(header) ^ contribution;
    if computed == received {
        Ok(())
    } else {
        Err(ParseError::CrcMismatch { received, computed })
    }
}
