//! Version 2, the binary header: 12-byte signature, version/command, family/transport,
//! a big-endian length, then the address block and TLVs. Every field is judged as soon as
//! its byte arrives (the length before its bytes do); the header is always exactly
//! 16 + length bytes, whatever the command.

use super::endpoints::{Endpoints, TCP4_BYTES, TCP6_BYTES};
use super::{Command, Fallback, Header, Limits, ParseError, Version, tlv};

/// The byte that starts every v2 header.
pub(super) const FIRST_BYTE: u8 = 0x0D;
/// The protocol signature.
pub(super) const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/transport and length.
pub(super) const FIXED_BYTES: usize = 16;

const VERSION_COMMAND_AT: usize = 12;
const FAMILY_TRANSPORT_AT: usize = 13;
const LENGTH_AT: usize = 14;

pub(super) const VERSION_2: u8 = 2;
const COMMAND_LOCAL: u8 = 0;
pub(super) const COMMAND_PROXY: u8 = 1;

/// Address families (high nibble of byte 13); 0 is AF_UNSPEC.
pub(super) const AF_INET: u8 = 1;
pub(super) const AF_INET6: u8 = 2;
const AF_UNIX: u8 = 3;

/// Transports (low nibble of byte 13); 0 is UNSPEC.
pub(super) const TRANSPORT_STREAM: u8 = 1;
const TRANSPORT_DGRAM: u8 = 2;

/// The AF_UNIX address block: two 108-byte addresses (the IP ones are in `endpoints`).
const UNIX_BLOCK_BYTES: usize = 2 * 108;

/// Parses a v2 header at the start of `buf` (whose first byte is 0x0D).
#[inline]
pub(super) fn parse<'a>(
    buf: &'a [u8],
    limits: &Limits,
) -> Result<Option<(Header<'a>, usize)>, ParseError> {
    let Some(fixed) = buf.first_chunk::<FIXED_BYTES>() else {
        return check_prefix(buf).map(|()| None);
    };
    if fixed[..VERSION_COMMAND_AT] != SIGNATURE {
        let offset = signature_mismatch(buf).unwrap_or_default();
        return Err(ParseError::BadSignature { offset });
    }
    let command = command(fixed[VERSION_COMMAND_AT])?;
    // Judged in byte order, as `check_prefix` judges a shorter buffer, so that the verdict
    // does not depend on the split (a LOCAL header's family is not judged at all).
    let family_transport = match command {
        Command::Local => None,
        Command::Proxy => Some(family_transport(fixed[FAMILY_TRANSPORT_AT])?),
    };
    let length = usize::from(u16::from_be_bytes([fixed[LENGTH_AT], fixed[LENGTH_AT + 1]]));
    if length > limits.max_v2_len {
        return Err(ParseError::V2TooLong {
            length,
            max: limits.max_v2_len,
        });
    }
    let Some((family, transport)) = family_transport else {
        return local(buf, length);
    };
    let block = block_bytes(family);
    if length < block {
        return Err(ParseError::V2ShortAddresses {
            length,
            needed: block,
        });
    }
    let total = FIXED_BYTES + length;
    let Some(header) = buf.get(..total) else {
        return Ok(None);
    };
    let tlvs_at = FIXED_BYTES + block;
    tlv::validate(header, tlvs_at)?;
    let endpoints = match command {
        Command::Local => Endpoints::UNSPECIFIED,
        Command::Proxy => endpoints(family, transport, &header[FIXED_BYTES..tlvs_at]),
    };
    let header = Header {
        version: Version::V2,
        command,
        endpoints,
        tlvs: tlv::Tlvs::from_validated(&header[tlvs_at..]),
        mixed_families: false,
    };
    Ok(Some((header, total)))
}

/// A LOCAL header (the balancer's own connection, a health check): the specification
/// says to discard the address block, family included, so neither the family byte nor a
/// length too short for its block makes it invalid. Where the family is one whose block
/// the length covers, the TLVs after it are checked as a PROXY header's are (a CRC32C
/// must match); otherwise everything after the fixed part goes with the block.
fn local(buf: &[u8], length: usize) -> Result<Option<(Header<'_>, usize)>, ParseError> {
    let total = FIXED_BYTES + length;
    let Some(header) = buf.get(..total) else {
        return Ok(None);
    };
    let tlvs = match family_transport(header[FAMILY_TRANSPORT_AT]) {
        Ok((family, _)) if length >= block_bytes(family) => {
            let tlvs_at = FIXED_BYTES + block_bytes(family);
            tlv::validate(header, tlvs_at)?;
            tlv::Tlvs::from_validated(&header[tlvs_at..])
        }
        _ => tlv::Tlvs::default(),
    };
    let header = Header {
        version: Version::V2,
        command: Command::Local,
        endpoints: Endpoints::UNSPECIFIED,
        tlvs,
        mixed_families: false,
    };
    Ok(Some((header, total)))
}

/// Judges the first 16 bytes before all of them are in: a signature byte that differs,
/// then the version/command and family/transport bytes as they arrive (a LOCAL header's
/// family is not judged). The length needs both of its bytes, so it waits for [`parse`].
fn check_prefix(buf: &[u8]) -> Result<(), ParseError> {
    if let Some(offset) = signature_mismatch(buf) {
        return Err(ParseError::BadSignature { offset });
    }
    if let Some(&byte) = buf.get(VERSION_COMMAND_AT)
        && command(byte)? == Command::Local
    {
        return Ok(());
    }
    if let Some(&byte) = buf.get(FAMILY_TRANSPORT_AT) {
        family_transport(byte)?;
    }
    Ok(())
}

/// The first byte that differs from the signature, if any.
fn signature_mismatch(buf: &[u8]) -> Option<usize> {
    buf.iter()
        .zip(SIGNATURE)
        .position(|(byte, expected)| *byte != expected)
}

fn command(byte: u8) -> Result<Command, ParseError> {
    let version = byte >> 4;
    if version != VERSION_2 {
        return Err(ParseError::V2BadVersion { version });
    }
    match byte & 0x0F {
        COMMAND_LOCAL => Ok(Command::Local),
        COMMAND_PROXY => Ok(Command::Proxy),
        command => Err(ParseError::V2BadCommand { command }),
    }
}

fn family_transport(byte: u8) -> Result<(u8, u8), ParseError> {
    let family = byte >> 4;
    let transport = byte & 0x0F;
    if family > AF_UNIX {
        return Err(ParseError::V2BadFamily { family });
    }
    if transport > TRANSPORT_DGRAM {
        return Err(ParseError::V2BadTransport { transport });
    }
    Ok((family, transport))
}

/// The family's address block, which the length must cover and the TLVs follow. The
/// family alone decides it, whatever the transport and the command.
fn block_bytes(family: u8) -> usize {
    match family {
        AF_INET => TCP4_BYTES,
        AF_INET6 => TCP6_BYTES,
        AF_UNIX => UNIX_BLOCK_BYTES,
        _ => 0,
    }
}

/// The meaning of a PROXY command's address block (`block` is exactly its size).
#[inline]
fn endpoints(family: u8, transport: u8, block: &[u8]) -> Endpoints {
    match (family, transport, block) {
        (AF_UNIX, TRANSPORT_STREAM | TRANSPORT_DGRAM, _) => Endpoints::fallback(Fallback::Unix),
        (AF_INET | AF_INET6, TRANSPORT_DGRAM, _) => Endpoints::fallback(Fallback::Datagram),
        (AF_INET, TRANSPORT_STREAM, block) if let Ok(wire) = block.try_into() => {
            Endpoints::wire4(wire)
        }
        (AF_INET6, TRANSPORT_STREAM, block) if let Ok(wire) = block.try_into() => {
            Endpoints::wire6(wire)
        }
        // AF_UNSPEC or TRANSPORT_UNSPEC: the address information is to be ignored. (The
        // TCP arms always match: the length was checked to cover the block.)
        _ => Endpoints::UNSPECIFIED,
    }
}
