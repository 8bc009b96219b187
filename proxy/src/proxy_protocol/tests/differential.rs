//! Differential test against the `ppp` crate. Generated headers, valid and broken in named
//! ways, each with the verdict the specification asks for: trustgate must give that
//! verdict every time; where `ppp` gives another, the case must be one of [`KNOWN`], which
//! says why the specification sides with trustgate.

use std::net::SocketAddr;

use ppp::PartialResult;
use proptest::prelude::*;

use super::roundtrip::{Expected, Generated, any_header, parsed};
use super::tlv;
use crate::proxy_protocol::Addresses;

/// The cases where `ppp` 2.3 and the specification part ways, with the specification's
/// reason. trustgate follows the specification in each.
const KNOWN: &[(&str, &str)] = &[
    (
        "v1 port with a plus sign",
        "2.1: ports are decimal integers in [0..65535]; `+80` is not one (ppp uses u16::from_str, which takes a sign)",
    ),
    (
        "v1 UNKNOWN followed by more than four fields",
        "2.1: for UNKNOWN the receiver must ignore anything before the CRLF (ppp splits the line into at most 7 fields and then waits for a newline that has already arrived)",
    ),
    (
        "v1 UNKNOWN followed by a lone CR",
        "2.1: the receiver must not tolerate a single CR or LF to end the line (ppp drops the rest of an UNKNOWN line at the first CR)",
    ),
    (
        "v2 CRC32C mismatch",
        "2.2.3: if the checksum does not match, the receiver MUST treat the connection as invalid (ppp does not check it)",
    ),
    (
        "v2 CRC32C of a size other than 4",
        "2.2.3: the value is a 32-bit number; a field of another size cannot match (ppp does not check it)",
    ),
    (
        "v2 UNIQUE_ID over 128 bytes",
        "2.2.5: the unique ID is an opaque byte sequence of up to 128 bytes (ppp does not check it)",
    ),
    (
        "v2 SSL TLV shorter than its 5-byte head",
        "2.2.6: the SSL value starts with `client` (1 byte) and `verify` (4 bytes) (ppp does not look inside)",
    ),
    (
        "v2 SSL sub-TLV overrun",
        "2.2.6: the SSL TLV's length covers its sub-TLVs, which are TLVs in the same format (ppp does not look inside)",
    ),
    (
        "v2 TLVs after an AF_UNSPEC address block",
        "2.2: AF_UNSPEC carries no address, so the bytes after the 16-byte header are TLVs, as HAProxy sends them with LOCAL health checks and CRC32C (ppp treats the whole payload as address bytes)",
    ),
    (
        "v2 LOCAL with a family or transport outside the spec",
        "2.2: with LOCAL the receiver must discard the protocol block, including the family, and use the real connection endpoints (ppp rejects the family first)",
    ),
    (
        "v2 LOCAL with a length short of its family's block",
        "2.2: with LOCAL the address block is discarded, so its length is not judged (ppp requires it)",
    ),
    (
        "v2 length over trustgate's ceiling",
        "not a spec rule: trustgate's configurable bound (default 4096) on the v2 length, so memory per pending header is bounded (ppp takes any length up to 65535)",
    ),
];

const UNSPEC_TLVS: &str = "v2 TLVs after an AF_UNSPEC address block";

/// A parser's answer, in terms both parsers can give.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    Accept {
        len: usize,
        /// The relayed TCP endpoints, when the header is to be used for them.
        endpoints: Option<(SocketAddr, SocketAddr)>,
        tlvs: Vec<(u8, Vec<u8>)>,
    },
    Reject,
    Incomplete,
}

impl From<Expected> for Verdict {
    fn from(expected: Expected) -> Self {
        let endpoints = match expected.addresses {
            Addresses::Tcp {
                source,
                destination,
            } => Some((source, destination)),
            Addresses::Unspecified | Addresses::Fallback(_) => None,
        };
        Self::Accept {
            len: expected.len,
            endpoints,
            tlvs: expected.tlvs,
        }
    }
}

fn ours(bytes: &[u8]) -> Verdict {
    match crate::proxy_protocol::parse(bytes, &Default::default()) {
        Ok(None) => Verdict::Incomplete,
        Err(_) => Verdict::Reject,
        Ok(Some(_)) => parsed(bytes).map_or(Verdict::Reject, Verdict::from),
    }
}

/// `ppp`'s answer, read as a `ppp` user would: parse, then walk the TLVs.
fn theirs(bytes: &[u8]) -> Verdict {
    let result = ppp::HeaderResult::parse(bytes);
    if result.is_incomplete() {
        return Verdict::Incomplete;
    }
    match result {
        ppp::HeaderResult::V1(Ok(header)) => {
            let endpoints = match header.addresses {
                ppp::v1::Addresses::Tcp4(a) => Some((
                    SocketAddr::new(a.source_address.into(), a.source_port),
                    SocketAddr::new(a.destination_address.into(), a.destination_port),
                )),
                ppp::v1::Addresses::Tcp6(a) => Some((
                    SocketAddr::new(a.source_address.into(), a.source_port),
                    SocketAddr::new(a.destination_address.into(), a.destination_port),
                )),
                ppp::v1::Addresses::Unknown => None,
            };
            Verdict::Accept {
                len: header.header.len(),
                endpoints,
                tlvs: vec![],
            }
        }
        ppp::HeaderResult::V2(Ok(header)) => {
            let Ok(tlvs) = header
                .tlvs()
                .map(|t| t.map(|t| (t.kind, t.value.to_vec())))
                .collect::<Result<Vec<_>, _>>()
            else {
                return Verdict::Reject;
            };
            let relayed = header.command == ppp::v2::Command::Proxy
                && header.protocol == ppp::v2::Protocol::Stream;
            let endpoints = match header.addresses {
                ppp::v2::Addresses::IPv4(a) if relayed => Some((
                    SocketAddr::new(a.source_address.into(), a.source_port),
                    SocketAddr::new(a.destination_address.into(), a.destination_port),
                )),
                ppp::v2::Addresses::IPv6(a) if relayed => Some((
                    SocketAddr::new(a.source_address.into(), a.source_port),
                    SocketAddr::new(a.destination_address.into(), a.destination_port),
                )),
                _ => None,
            };
            Verdict::Accept {
                len: header.len(),
                endpoints,
                tlvs,
            }
        }
        ppp::HeaderResult::V1(Err(_)) | ppp::HeaderResult::V2(Err(_)) => Verdict::Reject,
    }
}

/// A named case and the verdict the specification asks for.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    spec: Verdict,
}

/// The generated header as is, then broken in each way that applies to it.
fn cases(generated: &Generated) -> Vec<Case> {
    let (bytes, expected) = generated.encode();
    let valid = match generated {
        Generated::V1Unknown { rest } if rest.split(' ').count() > 5 => {
            "v1 UNKNOWN followed by more than four fields"
        }
        Generated::V2 { family: 0, .. } if !expected.tlvs.is_empty() => UNSPEC_TLVS,
        _ => "valid",
    };
    let mut cases = vec![
        Case {
            name: valid,
            bytes: bytes.clone(),
            spec: expected.into(),
        },
        Case {
            name: "truncated",
            bytes: bytes[..bytes.len() - 1].to_vec(),
            spec: Verdict::Incomplete,
        },
    ];
    let mut case = |name, bytes: Vec<u8>, spec| cases.push(Case { name, bytes, spec });
    match generated {
        Generated::V1Tcp { .. } => {
            let line = String::from_utf8(bytes).expect("v1 lines are ASCII");
            let fields: Vec<&str> = line.trim_end_matches("\r\n").split(' ').collect();
            let [
                _,
                protocol,
                source,
                destination,
                source_port,
                destination_port,
            ] = fields[..]
            else {
                unreachable!("a v1 TCP line has six fields")
            };
            let render = |protocol: &str, source: &str, source_port: &str, end: &str| {
                format!(
                    "PROXY {protocol} {source} {destination} {source_port} {destination_port}{end}"
                )
                .into_bytes()
            };
            let reject = |case: &mut dyn FnMut(&'static str, Vec<u8>, Verdict), name, bytes| {
                case(name, bytes, Verdict::Reject)
            };
            reject(
                &mut case,
                "v1 port with a leading zero",
                render(protocol, source, &format!("0{source_port}"), "\r\n"),
            );
            reject(
                &mut case,
                "v1 port with a plus sign",
                render(protocol, source, &format!("+{source_port}"), "\r\n"),
            );
            reject(
                &mut case,
                "v1 port above 65535",
                render(protocol, source, "65536", "\r\n"),
            );
            reject(
                &mut case,
                "v1 trailing space",
                render(protocol, source, source_port, " \r\n"),
            );
            reject(
                &mut case,
                "v1 lone LF",
                render(protocol, source, source_port, "\n"),
            );
            reject(
                &mut case,
                "v1 CR without LF",
                render(protocol, source, source_port, "\rX"),
            );
            reject(
                &mut case,
                "v1 double space",
                render(protocol, &format!("{source} "), source_port, "\r\n"),
            );
            reject(
                &mut case,
                "v1 tab separator",
                render(protocol, &format!("{source}\t"), source_port, "\r\n"),
            );
            reject(
                &mut case,
                "v1 lower-case protocol",
                render(&protocol.to_lowercase(), source, source_port, "\r\n"),
            );
            if protocol == "TCP4" {
                let (first, rest) = source.split_once('.').expect("dotted quad");
                reject(
                    &mut case,
                    "v1 octet above 255",
                    render(protocol, &format!("256.{rest}"), source_port, "\r\n"),
                );
                reject(
                    &mut case,
                    "v1 octet with a leading zero",
                    render(protocol, &format!("0{first}.{rest}"), source_port, "\r\n"),
                );
                reject(
                    &mut case,
                    "v1 three octets",
                    render(protocol, rest, source_port, "\r\n"),
                );
                reject(
                    &mut case,
                    "v1 TCP6 with IPv4 addresses",
                    render("TCP6", source, source_port, "\r\n"),
                );
            } else {
                reject(
                    &mut case,
                    "v1 IPv6 zone id",
                    render(protocol, &format!("{source}%eth0"), source_port, "\r\n"),
                );
                reject(
                    &mut case,
                    "v1 TCP4 with IPv6 addresses",
                    render("TCP4", source, source_port, "\r\n"),
                );
            }
            let long = format!(
                "PROXY UNKNOWN {source} {destination} {source_port} {destination_port}\r\n"
            );
            let len = long.len();
            let spec = if len <= 107 {
                Verdict::Accept {
                    len,
                    endpoints: None,
                    tlvs: vec![],
                }
            } else {
                Verdict::Reject
            };
            case("v1 UNKNOWN long form", long.into_bytes(), spec);
        }
        Generated::V1Unknown { rest } => {
            let padded = format!("PROXY UNKNOWN {}\r\n", "x".repeat(92));
            case(
                "v1 UNKNOWN of 108 bytes",
                padded.into_bytes(),
                Verdict::Reject,
            );
            let line = format!("PROXY UNKNOWN {}\rX\r\n", rest.trim_start());
            if line.len() <= 107 {
                case(
                    "v1 UNKNOWN followed by a lone CR",
                    line.into_bytes(),
                    Verdict::Reject,
                );
            }
        }
        Generated::V2 {
            command,
            family,
            transport,
            block,
            tlvs,
            crc_at,
            ..
        } => {
            for (name, at, value) in [
                ("v2 version 1", 12, 0x10 | bytes[12] & 0x0F),
                ("v2 version 3", 12, 0x30 | bytes[12] & 0x0F),
                ("v2 command 2", 12, 0x22),
                ("v2 command 15", 12, 0x2F),
                ("v2 family 4", 13, 0x40 | bytes[13] & 0x0F),
                ("v2 transport 3", 13, bytes[13] & 0xF0 | 0x03),
            ] {
                let mut broken = bytes.clone();
                broken[at] = value;
                // LOCAL discards the family byte with the block (and the TLVs, which
                // can no longer be located).
                let family_byte = at == 13;
                if *command == 0 && family_byte {
                    let len = broken.len();
                    case(
                        "v2 LOCAL with a family or transport outside the spec",
                        broken,
                        Verdict::Accept {
                            len,
                            endpoints: None,
                            tlvs: vec![],
                        },
                    );
                } else {
                    case(name, broken, Verdict::Reject);
                }
            }
            if !block.is_empty() {
                let mut short = bytes[..16 + block.len() - 1].to_vec();
                short[14..16]
                    .copy_from_slice(&u16::try_from(block.len() - 1).expect("small").to_be_bytes());
                if *command == 0 {
                    let len = short.len();
                    case(
                        "v2 LOCAL with a length short of its family's block",
                        short,
                        Verdict::Accept {
                            len,
                            endpoints: None,
                            tlvs: vec![],
                        },
                    );
                } else {
                    case(
                        "v2 length short of the address block",
                        short,
                        Verdict::Reject,
                    );
                }
            }
            // ppp sees no TLVs after an AF_UNSPEC block, so it misses every TLV fault there.
            let tlv_case = |name| if *family == 0 { UNSPEC_TLVS } else { name };
            // The same header with raw bytes after its TLVs, its checksum recomputed.
            let with_tail = |tail: Vec<u8>| {
                let generated = Generated::V2 {
                    command: *command,
                    family: *family,
                    transport: *transport,
                    block: block.clone(),
                    tlvs: tlvs.clone(),
                    crc_at: *crc_at,
                    tail,
                };
                generated.encode().0
            };
            let ssl = [
                vec![1, 0, 0, 0, 0],
                vec![0x21, 0x00, 0x09],
                b"TLSv1.3".to_vec(),
            ]
            .concat();
            for (name, tail) in [
                ("v2 TLV overrun by one byte", vec![0x04, 0x00, 0x03, 0, 0]),
                ("v2 stray bytes after the TLVs", vec![0x04, 0x00]),
                ("v2 UNIQUE_ID over 128 bytes", tlv(0x05, &[7; 129])),
                (
                    "v2 SSL TLV shorter than its 5-byte head",
                    tlv(0x20, &[1, 0, 0]),
                ),
                ("v2 SSL sub-TLV overrun", tlv(0x20, &ssl)),
                ("v2 length over trustgate's ceiling", tlv(0x04, &[0; 4096])),
            ] {
                case(tlv_case(name), with_tail(tail), Verdict::Reject);
            }
            if crc_at.is_some() {
                let mut bad = bytes.clone();
                let at = crc_value_at(&bad, block.len());
                bad[at] ^= 0x01;
                case(tlv_case("v2 CRC32C mismatch"), bad, Verdict::Reject);
            } else {
                case(
                    tlv_case("v2 CRC32C of a size other than 4"),
                    with_tail(tlv(0x03, &[0; 3])),
                    Verdict::Reject,
                );
                case(
                    tlv_case("v2 CRC32C mismatch"),
                    with_tail(tlv(0x03, &[0xde, 0xad, 0xbe, 0xef])),
                    Verdict::Reject,
                );
            }
        }
    }
    cases
}

/// Offset of the CRC32C value in a generated v2 header whose address block has
/// `block` bytes.
fn crc_value_at(header: &[u8], block: usize) -> usize {
    let mut pos = 16 + block;
    while header[pos] != 0x03 {
        pos += 3 + usize::from(u16::from_be_bytes([header[pos + 1], header[pos + 2]]));
    }
    pos + 3
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let ours = ours(&case.bytes);
    prop_assert_eq!(
        &ours,
        &case.spec,
        "trustgate on {:?}: {:?}",
        case.name,
        String::from_utf8_lossy(&case.bytes)
    );
    let theirs = theirs(&case.bytes);
    if theirs != ours {
        prop_assert!(
            KNOWN.iter().any(|(name, _)| *name == case.name),
            "new disagreement with ppp on {:?}: ppp {:?}, spec {:?}, input {:?}",
            case.name,
            theirs,
            ours,
            String::from_utf8_lossy(&case.bytes)
        );
    }
    Ok(())
}

proptest! {
    #[test]
    fn trustgate_gives_the_spec_verdict_and_ppp_differs_only_in_known_cases(generated in any_header()) {
        for case in cases(&generated) {
            check(&case)?;
        }
    }
}

/// Each listed disagreement still happens, so the list stays true as `ppp` changes.
#[test]
fn every_known_disagreement_is_still_one() {
    let examples: &[(&str, &[u8])] = &[
        ("v1 port with a plus sign", b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 443\r\n"),
        ("v1 UNKNOWN followed by more than four fields", b"PROXY UNKNOWN a b c d e f\r\n"),
        ("v1 UNKNOWN followed by a lone CR", b"PROXY UNKNOWN a\rb\r\n"),
        ("v2 CRC32C mismatch", b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x13\x01\x02\x03\x04\x05\x06\x07\x08\x00\x01\x00\x02\x03\x00\x04\xde\xad\xbe\xef"),
        ("v2 CRC32C of a size other than 4", b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x12\x01\x02\x03\x04\x05\x06\x07\x08\x00\x01\x00\x02\x03\x00\x03\x00\x00\x00"),
        ("v2 SSL TLV shorter than its 5-byte head", b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x11\x01\x02\x03\x04\x05\x06\x07\x08\x00\x01\x00\x02\x20\x00\x02\x00\x00"),
        ("v2 SSL sub-TLV overrun", b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x17\x01\x02\x03\x04\x05\x06\x07\x08\x00\x01\x00\x02\x20\x00\x08\x01\x00\x00\x00\x00\x21\x00\x09"),
        ("v2 TLVs after an AF_UNSPEC address block", b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x05\x02\x00\x02hi"),
        ("v2 LOCAL with a family or transport outside the spec", b"\r\n\r\n\0\r\nQUIT\n\x20\x41\x00\x00"),
        ("v2 LOCAL with a length short of its family's block", b"\r\n\r\n\0\r\nQUIT\n\x20\x11\x00\x04\x01\x02\x03\x04"),
    ];
    let generated = [
        (
            "v2 UNIQUE_ID over 128 bytes",
            super::v2(0x21, 0x11, &[vec![0; 12], tlv(0x05, &[1; 129])].concat()),
        ),
        (
            "v2 length over trustgate's ceiling",
            super::v2(0x21, 0x00, &tlv(0x04, &[0; 4094])),
        ),
    ];
    for (name, bytes) in examples
        .iter()
        .map(|(n, b)| (*n, b.to_vec()))
        .chain(generated)
    {
        assert!(
            KNOWN.iter().any(|(known, _)| *known == name),
            "{name} is listed"
        );
        assert_ne!(
            ours(&bytes),
            theirs(&bytes),
            "{name}: ppp now agrees; drop it from KNOWN"
        );
    }
    assert_eq!(
        examples.len() + 2,
        KNOWN.len(),
        "every KNOWN entry has an example"
    );
}
