//! Property tests: generated headers (every v1 text form of IPv6, every v2 command,
//! family and transport, random TLVs with CRC32C anywhere) encode and parse back to what
//! was generated; arbitrary and mutated bytes never panic and keep the prefix rule.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::collection::vec;
use proptest::prelude::*;

use super::{crc32c_reference, tlv};
use crate::proxy_protocol::{Addresses, Command, Fallback, Limits, Version, parse};

/// How a v1 line writes an IPv6 address.
#[derive(Clone, Copy, Debug)]
pub(super) enum Form {
    /// `std`'s RFC 5952 form: lower case, longest zero run as `::`.
    Compressed,
    /// Eight groups without leading zeros.
    Full,
    /// Eight groups of four upper-case digits.
    Padded,
    /// Six groups and a dotted quad.
    DottedTail,
}

fn ipv6_text(ip: Ipv6Addr, form: Form) -> String {
    let groups = ip.segments();
    match form {
        Form::Compressed => ip.to_string(),
        Form::Full => groups.map(|g| format!("{g:x}")).join(":"),
        Form::Padded => groups.map(|g| format!("{g:04X}")).join(":"),
        Form::DottedTail => {
            let [.., a, b, c, d] = ip.octets();
            let head: Vec<String> = groups[..6].iter().map(|g| format!("{g:x}")).collect();
            format!("{}:{a}.{b}.{c}.{d}", head.join(":"))
        }
    }
}

/// A header to encode, and what parsing it must give.
#[derive(Clone, Debug)]
pub(super) enum Generated {
    V1Tcp {
        source: SocketAddr,
        destination: SocketAddr,
        forms: (Form, Form),
    },
    V1Unknown {
        rest: String,
    },
    V2 {
        command: u8,
        family: u8,
        transport: u8,
        block: Vec<u8>,
        tlvs: Vec<(u8, Vec<u8>)>,
        crc_at: Option<usize>,
        /// Raw bytes after the TLVs, inside the length and the checksum (for mutations).
        tail: Vec<u8>,
    },
}

/// What a parser must report for a valid header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Expected {
    pub(super) version: Version,
    pub(super) command: Command,
    pub(super) addresses: Addresses,
    /// In wire order, the CRC32C TLV with its computed value.
    pub(super) tlvs: Vec<(u8, Vec<u8>)>,
    pub(super) len: usize,
}

impl Generated {
    pub(super) fn encode(&self) -> (Vec<u8>, Expected) {
        match self {
            Self::V1Tcp {
                source,
                destination,
                forms,
            } => {
                let (protocol, src, dst) = match (source.ip(), destination.ip()) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => ("TCP4", s.to_string(), d.to_string()),
                    (IpAddr::V6(s), IpAddr::V6(d)) => {
                        ("TCP6", ipv6_text(s, forms.0), ipv6_text(d, forms.1))
                    }
                    _ => unreachable!("the strategy pairs addresses of one family"),
                };
                let line = format!(
                    "PROXY {protocol} {src} {dst} {} {}\r\n",
                    source.port(),
                    destination.port()
                );
                let expected = Expected {
                    version: Version::V1,
                    command: Command::Proxy,
                    addresses: Addresses::Tcp {
                        source: *source,
                        destination: *destination,
                    },
                    tlvs: vec![],
                    len: line.len(),
                };
                (line.into_bytes(), expected)
            }
            Self::V1Unknown { rest } => {
                let line = format!("PROXY UNKNOWN{rest}\r\n");
                let expected = Expected {
                    version: Version::V1,
                    command: Command::Proxy,
                    addresses: Addresses::Unspecified,
                    tlvs: vec![],
                    len: line.len(),
                };
                (line.into_bytes(), expected)
            }
            Self::V2 {
                command,
                family,
                transport,
                block,
                tlvs,
                crc_at,
                tail,
            } => {
                let mut tlvs = tlvs.clone();
                if let Some(at) = crc_at {
                    tlvs.insert((*at).min(tlvs.len()), (0x03, vec![0; 4]));
                }
                let mut out = super::SIG.to_vec();
                out.extend([0x20 | command, family << 4 | transport]);
                let mut area: Vec<u8> = tlvs
                    .iter()
                    .flat_map(|(kind, value)| tlv(*kind, value))
                    .collect();
                area.extend(tail);
                let length =
                    u16::try_from(block.len() + area.len()).expect("strategy bounds the size");
                out.extend(length.to_be_bytes());
                out.extend(block);
                out.extend(&area);
                if let Some(i) = tlvs.iter().position(|(kind, _)| *kind == 0x03) {
                    let value_at = 16
                        + block.len()
                        + tlvs[..i].iter().map(|(_, v)| 3 + v.len()).sum::<usize>()
                        + 3;
                    let crc = crc32c_reference(&out).to_be_bytes();
                    out[value_at..value_at + 4].copy_from_slice(&crc);
                    tlvs[i].1 = crc.to_vec();
                }
                let expected = Expected {
                    version: Version::V2,
                    command: if *command == 0 {
                        Command::Local
                    } else {
                        Command::Proxy
                    },
                    addresses: v2_addresses(*command, *family, *transport, block),
                    tlvs,
                    len: out.len(),
                };
                (out, expected)
            }
        }
    }
}

/// The meaning of a v2 address block, as section 2.2 describes it.
fn v2_addresses(command: u8, family: u8, transport: u8, block: &[u8]) -> Addresses {
    let ip = |bytes: &[u8]| -> IpAddr {
        match bytes.len() {
            4 => Ipv4Addr::from(<[u8; 4]>::try_from(bytes).expect("4")).into(),
            _ => Ipv6Addr::from(<[u8; 16]>::try_from(bytes).expect("16")).into(),
        }
    };
    let port = |bytes: &[u8]| u16::from_be_bytes([bytes[0], bytes[1]]);
    match (command, family, transport) {
        (0, ..) | (_, 0, _) | (_, _, 0) => Addresses::Unspecified,
        (_, 3, _) => Addresses::Fallback(Fallback::Unix),
        (_, _, 2) => Addresses::Fallback(Fallback::Datagram),
        (_, 1, _) => Addresses::Tcp {
            source: SocketAddr::new(ip(&block[0..4]), port(&block[8..10])),
            destination: SocketAddr::new(ip(&block[4..8]), port(&block[10..12])),
        },
        _ => Addresses::Tcp {
            source: SocketAddr::new(ip(&block[0..16]), port(&block[32..34])),
            destination: SocketAddr::new(ip(&block[16..32]), port(&block[34..36])),
        },
    }
}

/// IPv6 addresses rich in zero groups, so that every `::` position comes up.
fn ipv6() -> impl Strategy<Value = Ipv6Addr> {
    prop::array::uniform8(prop_oneof![2 => Just(0u16), 1 => Just(0xffff), 3 => any::<u16>()])
        .prop_map(Ipv6Addr::from)
}

fn form() -> impl Strategy<Value = Form> {
    prop_oneof![
        Just(Form::Compressed),
        Just(Form::Full),
        Just(Form::Padded),
        Just(Form::DottedTail)
    ]
}

fn v1_tcp() -> impl Strategy<Value = Generated> {
    let v4 = (
        any::<Ipv4Addr>(),
        any::<u16>(),
        any::<Ipv4Addr>(),
        any::<u16>(),
    )
        .prop_map(|(s, sp, d, dp)| Generated::V1Tcp {
            source: SocketAddr::new(s.into(), sp),
            destination: SocketAddr::new(d.into(), dp),
            forms: (Form::Compressed, Form::Compressed),
        });
    let v6 = (ipv6(), any::<u16>(), ipv6(), any::<u16>(), form(), form())
        .prop_map(|(s, sp, d, dp, fs, fd)| Generated::V1Tcp {
            source: SocketAddr::new(s.into(), sp),
            destination: SocketAddr::new(d.into(), dp),
            forms: (fs, fd),
        })
        .prop_filter("a line fits in 107 bytes", |g| g.encode().0.len() <= 107);
    prop_oneof![v4, v6]
}

fn v1_unknown() -> impl Strategy<Value = Generated> {
    let words = vec("[!-~]{1,6}", 0..10).prop_map(|words| words.join(" "));
    prop_oneof![Just(String::new()), "[ -~]{0,90}", words].prop_map(|rest| Generated::V1Unknown {
        rest: if rest.is_empty() {
            rest
        } else {
            format!(" {rest}")
        },
    })
}

fn ssl_value() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u8>(),
        any::<u32>(),
        vec((0x21..=0x28u8, vec(any::<u8>(), 0..24)), 0..5),
    )
        .prop_map(|(client, verify, subs)| {
            let mut value = vec![client];
            value.extend(verify.to_be_bytes());
            for (kind, sub) in subs {
                value.extend(tlv(kind, &sub));
            }
            value
        })
}

pub(super) fn tlv_entry() -> impl Strategy<Value = (u8, Vec<u8>)> {
    let plain = any::<u8>().prop_filter("CRC32C, UNIQUE_ID and SSL have rules", |k| {
        ![0x03, 0x05, 0x20].contains(k)
    });
    prop_oneof![
        4 => (plain, vec(any::<u8>(), 0..48)),
        1 => vec(any::<u8>(), 0..=128).prop_map(|v| (0x05, v)),
        1 => ssl_value().prop_map(|v| (0x20, v)),
    ]
}

pub(super) fn v2() -> impl Strategy<Value = Generated> {
    let shape = prop_oneof![
        Just((0u8, 0u8)),
        Just((1, 1)),
        Just((1, 2)),
        Just((2, 1)),
        Just((2, 2)),
        Just((3, 1)),
        Just((3, 2)),
        Just((1, 0)),
        Just((0, 1)),
    ];
    (
        0..=1u8,
        shape,
        vec(tlv_entry(), 0..6),
        prop::option::of(0..6usize),
    )
        .prop_flat_map(|(command, (family, transport), tlvs, crc_at)| {
            let size = [0, 12, 36, 216][usize::from(family)];
            vec(any::<u8>(), size).prop_map(move |block| Generated::V2 {
                command,
                family,
                transport,
                block,
                tlvs: tlvs.clone(),
                crc_at,
                tail: vec![],
            })
        })
}

pub(super) fn any_header() -> impl Strategy<Value = Generated> {
    prop_oneof![2 => v1_tcp(), 1 => v1_unknown(), 3 => v2()]
}

/// What `parse` reports, in the shape of [`Expected`].
pub(super) fn parsed(input: &[u8]) -> Option<Expected> {
    let (header, len) = parse(input, &Limits::default()).ok()??;
    Some(Expected {
        version: header.version(),
        command: header.command(),
        addresses: header.addresses(),
        tlvs: header
            .tlvs()
            .iter()
            .map(|t| (t.kind(), t.value().to_vec()))
            .collect(),
        len,
    })
}

proptest! {
    #[test]
    fn generated_headers_parse_back_to_what_was_encoded(generated in any_header(), trailer in vec(any::<u8>(), 0..32)) {
        let (mut bytes, expected) = generated.encode();
        bytes.extend(&trailer);
        prop_assert_eq!(parsed(&bytes), Some(expected));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_keep_the_prefix_rule(bytes in vec(any::<u8>(), 0..300)) {
        check_prefix_rule(&bytes)?;
    }

    #[test]
    fn mutated_headers_never_panic_and_keep_the_prefix_rule(
        generated in any_header(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let (mut bytes, _) = generated.encode();
        for (at, value) in flips {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        check_prefix_rule(&bytes)?;
    }
}

fn check_prefix_rule(bytes: &[u8]) -> Result<(), TestCaseError> {
    let limits = Limits::default();
    let whole = parse(bytes, &limits);
    if let Ok(Some((_, used))) = whole {
        prop_assert!(used <= bytes.len());
    }
    for end in 0..bytes.len() {
        let prefix = parse(&bytes[..end], &limits);
        prop_assert!(
            prefix == Ok(None) || prefix == whole,
            "cut at {}: {:?} vs {:?}",
            end,
            prefix,
            whole
        );
    }
    Ok(())
}
