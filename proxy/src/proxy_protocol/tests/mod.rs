//! Unit tests of the parser and the reader, one file per area; the helpers that build
//! and check headers live here. Expected CRC32C values come from a bitwise reference
//! implementation, not from the crate the parser uses.

mod differential;
mod encode;
mod read;
mod roundtrip;
mod split;
mod tlv;
mod v1;
mod v2;

use super::{Header, Limits, ParseError, parse};

/// Parses `bytes`, which must be exactly one complete header.
fn header(bytes: &[u8]) -> Header<'_> {
    match parse(bytes, &Limits::default()) {
        Ok(Some((header, used))) => {
            assert_eq!(
                used,
                bytes.len(),
                "consumed length of {:?}",
                String::from_utf8_lossy(bytes)
            );
            header
        }
        other => panic!(
            "{:?} should parse, got {other:?}",
            String::from_utf8_lossy(bytes)
        ),
    }
}

/// Parses `bytes`, which must be rejected.
fn error(bytes: &[u8]) -> ParseError {
    match parse(bytes, &Limits::default()) {
        Err(e) => e,
        other => panic!(
            "{:?} should be rejected, got {other:?}",
            String::from_utf8_lossy(bytes)
        ),
    }
}

/// Parses `bytes`, which must be a proper prefix of some valid header.
fn assert_incomplete(bytes: &[u8]) {
    match parse(bytes, &Limits::default()) {
        Ok(None) => {}
        other => panic!(
            "{:?} should need more bytes, got {other:?}",
            String::from_utf8_lossy(bytes)
        ),
    }
}

/// The v2 signature.
const SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 header: signature, `ver_cmd`, `fam`, the payload's length, the payload.
fn v2(ver_cmd: u8, fam: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = SIG.to_vec();
    out.extend([ver_cmd, fam]);
    out.extend(
        u16::try_from(payload.len())
            .expect("test payloads fit")
            .to_be_bytes(),
    );
    out.extend(payload);
    out
}

/// One TLV.
fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend(
        u16::try_from(value.len())
            .expect("test values fit")
            .to_be_bytes(),
    );
    out.extend(value);
    out
}

/// The INET address block: addresses then ports.
fn inet(source: [u8; 4], destination: [u8; 4], source_port: u16, destination_port: u16) -> Vec<u8> {
    let mut out = source.to_vec();
    out.extend(destination);
    out.extend(source_port.to_be_bytes());
    out.extend(destination_port.to_be_bytes());
    out
}

/// The INET6 address block.
fn inet6(
    source: [u8; 16],
    destination: [u8; 16],
    source_port: u16,
    destination_port: u16,
) -> Vec<u8> {
    let mut out = source.to_vec();
    out.extend(destination);
    out.extend(source_port.to_be_bytes());
    out.extend(destination_port.to_be_bytes());
    out
}

/// A v2 header whose payload is `block`, `before`, a CRC32C TLV, then `after`, with the
/// checksum filled in as a sender does.
fn v2_with_crc(ver_cmd: u8, fam: u8, block: &[u8], before: &[u8], after: &[u8]) -> Vec<u8> {
    let mut payload = [block, before].concat();
    let crc_at = 16 + payload.len() + 3;
    payload.extend(tlv(0x03, &[0; 4]));
    payload.extend(after);
    let mut out = v2(ver_cmd, fam, &payload);
    let crc = crc32c_reference(&out);
    out[crc_at..crc_at + 4].copy_from_slice(&crc.to_be_bytes());
    out
}

/// CRC32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit (RFC 4960, app. B).
fn crc32c_reference(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn reference_crc32c_matches_the_published_check_value() {
    // The standard check value of CRC-32C over "123456789".
    assert_eq!(crc32c_reference(b"123456789"), 0xE306_9283);
}

#[test]
fn empty_input_needs_more_bytes() {
    assert_incomplete(b"");
}

#[test]
fn first_byte_that_starts_neither_version_is_rejected_at_once() {
    for first in (0..=255u8).filter(|b| *b != b'P' && *b != 0x0D) {
        assert_eq!(
            error(&[first]),
            ParseError::BadSignature { offset: 0 },
            "first byte {first:#04x}"
        );
    }
    assert_eq!(error(b"GET / HTTP/1.1\r\n").kind(), "bad_signature");
    assert_eq!(error(b"\x16\x03\x01\x02\x00").kind(), "bad_signature");
}

#[test]
fn error_kinds_are_distinct_labels() {
    let errors = [
        ParseError::BadSignature { offset: 0 },
        ParseError::V1TooLong,
        ParseError::V1BadLineEnd { offset: 0 },
        ParseError::V1BadProtocol { offset: 0 },
        ParseError::V1BadSeparator { offset: 0 },
        ParseError::V1BadAddress {
            field: super::Field::Source,
            offset: 0,
        },
        ParseError::V1FamilyMismatch {
            field: super::Field::Source,
            offset: 0,
        },
        ParseError::V1BadPort {
            field: super::Field::Source,
            offset: 0,
        },
        ParseError::V2BadVersion { version: 0 },
        ParseError::V2BadCommand { command: 0 },
        ParseError::V2BadFamily { family: 0 },
        ParseError::V2BadTransport { transport: 0 },
        ParseError::V2TooLong { length: 0, max: 0 },
        ParseError::V2ShortAddresses {
            length: 0,
            needed: 0,
        },
        ParseError::TlvOverrun { offset: 0 },
        ParseError::SslTooShort {
            offset: 0,
            length: 0,
        },
        ParseError::SslOverrun { offset: 0 },
        ParseError::UniqueIdTooLong {
            offset: 0,
            length: 0,
        },
        ParseError::CrcBadLength {
            offset: 0,
            length: 0,
        },
        ParseError::CrcDuplicate { offset: 0 },
        ParseError::CrcMismatch {
            received: 0,
            computed: 0,
        },
    ];
    let mut kinds: Vec<_> = errors.iter().map(ParseError::kind).collect();
    assert!(kinds.iter().all(|k| {
        k.bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit())
    }));
    kinds.sort_unstable();
    kinds.dedup();
    assert_eq!(kinds.len(), errors.len());
}
