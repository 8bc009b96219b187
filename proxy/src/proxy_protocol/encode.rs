//! The encoder, for upstreams that take a PROXY header: a v1 line, or a v2 PROXY header
//! (STREAM over INET or INET6, the caller's TLVs, then a CRC32C TLV) naming a TCP source
//! and destination. Both endpoints are first put in one family, so every header it writes
//! is one [`parse`](super::parse) accepts and reads back to the same endpoints.

use std::net::{IpAddr, SocketAddr};

use super::Version;
use super::tlv::{CRC32C_BYTES, TLV_HEAD_BYTES, Tlv};
use super::v2::{
    AF_INET, AF_INET6, COMMAND_PROXY, FIXED_BYTES, SIGNATURE, TRANSPORT_STREAM, VERSION_2,
};

/// Why a v2 header could not be built from the TLVs given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("v2: addresses and TLVs take {length} bytes, more than the 16-bit length field holds")]
    TooLong { length: usize },
    #[error("v2: a CRC32C TLV was given; the encoder adds the one checksum itself")]
    CrcGiven,
}

/// A PROXY header saying that `source` connected to `destination` over TCP: a v1 line
/// (`PROXY TCP4|TCP6 …\r\n`, at most 107 bytes), or a v2 header whose only TLV is the
/// CRC32C of the whole header.
///
/// The header is IPv4 when both endpoints are IPv4 or IPv4-mapped IPv6, else IPv6 (an
/// IPv4 endpoint then written as IPv4-mapped).
pub fn encode(version: Version, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    match version {
        Version::V1 => encode_v1(source, destination),
        Version::V2 => encode_v2(source, destination, &[])
            .expect("an address block alone is far below the 16-bit length"),
    }
}

fn encode_v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (source, destination) = one_family(source, destination);
    let protocol = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {protocol} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

/// A v2 PROXY header for `source` → `destination` carrying `tlvs` in order, then a
/// CRC32C TLV over the whole header. Fails when the total does not fit the length field
/// or when `tlvs` holds a CRC32C of its own (a second one would make the header invalid).
pub fn encode_v2(
    source: SocketAddr,
    destination: SocketAddr,
    tlvs: &[Tlv<'_>],
) -> Result<Vec<u8>, EncodeError> {
    if tlvs.iter().any(|t| t.kind() == Tlv::CRC32C) {
        return Err(EncodeError::CrcGiven);
    }
    let (source, destination) = one_family(source, destination);
    let (family, block_bytes) = match source.ip() {
        IpAddr::V4(_) => (AF_INET, 2 * 4 + 2 * 2),
        IpAddr::V6(_) => (AF_INET6, 2 * 16 + 2 * 2),
    };
    let crc_tlv_bytes = TLV_HEAD_BYTES + CRC32C_BYTES;
    let length = block_bytes
        + tlvs
            .iter()
            .map(|t| TLV_HEAD_BYTES + t.value().len())
            .sum::<usize>()
        + crc_tlv_bytes;
    let length_field = u16::try_from(length).map_err(|_| EncodeError::TooLong { length })?;
    let mut out = Vec::with_capacity(FIXED_BYTES + length);
    out.extend_from_slice(&SIGNATURE);
    out.push((VERSION_2 << 4) | COMMAND_PROXY);
    out.push((family << 4) | TRANSPORT_STREAM);
    out.extend_from_slice(&length_field.to_be_bytes());
    // One family (the source's), so the two addresses fill the block.
    for ip in [source.ip(), destination.ip()] {
        match ip {
            IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
            IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    for tlv in tlvs {
        push_tlv(&mut out, tlv.kind(), tlv.value());
    }
    let crc_at = out.len() + TLV_HEAD_BYTES;
    push_tlv(&mut out, Tlv::CRC32C, &[0; CRC32C_BYTES]);
    let crc = crc32c::crc32c(&out);
    out[crc_at..].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// Appends one TLV; its value is known to fit the 16-bit length (the total does).
fn push_tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    let length = u16::try_from(value.len()).expect("the header's total length was checked");
    out.push(kind);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(value);
}

/// Both endpoints in one family: IPv4 when both are IPv4 or IPv4-mapped IPv6, else IPv6,
/// with an IPv4 address mapped into it.
fn one_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (source, destination) = (canonical(source), canonical(destination));
    if source.is_ipv4() == destination.is_ipv4() {
        return (source, destination);
    }
    let as_ipv6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(ip.to_ipv6_mapped().into(), a.port()),
        IpAddr::V6(_) => a,
    };
    (as_ipv6(source), as_ipv6(destination))
}
