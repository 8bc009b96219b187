//! v2: the fixed 16 bytes (signature, each nibble, the length and its ceiling), each
//! family's address block, the commands, and what each combination means.

use std::net::{Ipv6Addr, SocketAddr};

use super::{SIG, assert_incomplete, error, header, inet, inet6, tlv, v2};
use crate::proxy_protocol::{Addresses, Command, Fallback, Limits, ParseError, Version, parse};

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test address")
}

fn tcp4_block() -> Vec<u8> {
    inet([192, 0, 2, 1], [198, 51, 100, 2], 56324, 443)
}

fn tcp6_block() -> Vec<u8> {
    let source = "2001:db8::1".parse::<Ipv6Addr>().expect("literal").octets();
    let destination = "2001:db8::2".parse::<Ipv6Addr>().expect("literal").octets();
    inet6(source, destination, 40000, 8443)
}

#[test]
fn proxy_tcp4_gives_the_relayed_endpoints() {
    let input = v2(0x21, 0x11, &tcp4_block());
    let header = header(&input);
    assert_eq!(header.version(), Version::V2);
    assert_eq!(header.command(), Command::Proxy);
    assert_eq!(header.client(), Some(addr("192.0.2.1:56324")));
    assert_eq!(header.destination(), Some(addr("198.51.100.2:443")));
    assert!(header.tlvs().is_empty());
}

#[test]
fn proxy_tcp6_gives_the_relayed_endpoints() {
    let input = v2(0x21, 0x21, &tcp6_block());
    let header = header(&input);
    assert_eq!(header.client(), Some(addr("[2001:db8::1]:40000")));
    assert_eq!(header.destination(), Some(addr("[2001:db8::2]:8443")));
}

#[test]
fn header_is_exactly_16_plus_length_bytes_and_the_rest_is_left() {
    let mut input = v2(0x21, 0x11, &[tcp4_block(), tlv(0x04, &[0; 5])].concat());
    let length = input.len();
    input.extend(b"\x16\x03\x01 TLS follows");
    let (_, used) = parse(&input, &Limits::default())
        .expect("valid")
        .expect("complete");
    assert_eq!(used, length);
    assert_eq!(used, 16 + 12 + 8);
}

#[test]
fn local_keeps_the_peer_address_and_consumes_its_whole_length() {
    let block = tcp4_block();
    let tlvs = [tlv(0x02, b"example.com"), tlv(0x04, &[0; 3])].concat();
    for (fam, payload) in [
        (0x00, tlvs.clone()),
        (0x11, [block.clone(), tlvs.clone()].concat()),
    ] {
        let input = v2(0x20, fam, &payload);
        let header = header(&input);
        assert_eq!(header.command(), Command::Local);
        assert_eq!(header.addresses(), Addresses::Unspecified);
        assert_eq!(header.client(), None);
        assert_eq!(header.destination(), None);
        assert_eq!(
            header.tlvs().authority(),
            Some("example.com"),
            "fam {fam:#04x}"
        );
    }
    assert_eq!(header(&v2(0x20, 0x00, &[])).client(), None);
}

#[test]
fn unspec_family_or_transport_keeps_the_peer_address() {
    for (fam, payload) in [
        (0x00, vec![]),
        (0x01, vec![]),
        (0x02, vec![]),
        (0x10, tcp4_block()),
        (0x20, tcp6_block()),
    ] {
        let input = v2(0x21, fam, &payload);
        let header = header(&input);
        assert_eq!(header.addresses(), Addresses::Unspecified, "fam {fam:#04x}");
        assert_eq!(header.fallback(), None);
    }
    // With UNSPEC family there is no address block: TLVs start at once.
    let input = v2(0x21, 0x00, &tlv(0x02, b"h"));
    let header = header(&input);
    assert_eq!(header.tlvs().authority(), Some("h"));
}

#[test]
fn udp_and_unix_fall_back_to_the_peer_address_and_say_so() {
    let unix = [vec![b'/'; 108], vec![b'/'; 108]].concat();
    for (fam, payload, reason) in [
        (0x12, tcp4_block(), Fallback::Datagram),
        (0x22, tcp6_block(), Fallback::Datagram),
        (0x31, unix.clone(), Fallback::Unix),
        (0x32, unix.clone(), Fallback::Unix),
    ] {
        let input = v2(0x21, fam, &[payload, tlv(0x05, b"id")].concat());
        let header = header(&input);
        assert_eq!(header.fallback(), Some(reason), "fam {fam:#04x}");
        assert_eq!(header.client(), None);
        assert_eq!(header.destination(), None);
        assert_eq!(header.tlvs().unique_id(), Some(&b"id"[..]));
    }
}

#[test]
fn each_family_needs_a_length_covering_its_address_block() {
    for (fam, needed) in [
        (0x11, 12),
        (0x12, 12),
        (0x21, 36),
        (0x22, 36),
        (0x31, 216),
        (0x32, 216),
    ] {
        for command in [0x20, 0x21] {
            header(&v2(command, fam, &vec![0; needed]));
        }
        assert_eq!(
            error(&v2(0x21, fam, &vec![0; needed - 1])),
            ParseError::V2ShortAddresses {
                length: needed - 1,
                needed
            },
            "fam {fam:#04x}"
        );
        // LOCAL: the block is discarded, so it may be short (spec 2.2).
        let bytes = v2(0x20, fam, &vec![0; needed - 1]);
        let local = header(&bytes);
        assert_eq!(local.command(), Command::Local);
        assert_eq!(local.client(), None);
    }
}

#[test]
fn short_length_is_rejected_before_the_payload_arrives() {
    let input = v2(0x21, 0x21, &[0; 35]);
    assert_eq!(error(&input[..16]).kind(), "v2_short_addresses");
}

#[test]
fn version_other_than_2_is_rejected_as_soon_as_its_byte_arrives() {
    for version in (0..16u8).filter(|v| *v != 2) {
        let mut input = SIG.to_vec();
        input.push(version << 4 | 1);
        assert_eq!(error(&input), ParseError::V2BadVersion { version });
    }
}

#[test]
fn commands_other_than_local_and_proxy_are_rejected() {
    for command in 2..16u8 {
        let mut input = SIG.to_vec();
        input.push(0x20 | command);
        assert_eq!(error(&input), ParseError::V2BadCommand { command });
    }
}

#[test]
fn families_and_transports_outside_the_spec_are_rejected_unless_local() {
    for family in 4..16u8 {
        let mut input = SIG.to_vec();
        input.extend([0x21, family << 4 | 1]);
        assert_eq!(error(&input), ParseError::V2BadFamily { family });
        // LOCAL discards the family with the block: whatever it says, the header stands.
        let bytes = v2(0x20, family << 4 | 1, &[0; 12]);
        let local = header(&bytes);
        assert_eq!((local.command(), local.client()), (Command::Local, None));
    }
    for transport in 3..16u8 {
        let mut input = SIG.to_vec();
        input.extend([0x21, 0x10 | transport]);
        assert_eq!(error(&input), ParseError::V2BadTransport { transport });
        let bytes = v2(0x20, 0x10 | transport, &[0; 12]);
        let local = header(&bytes);
        assert_eq!((local.command(), local.client()), (Command::Local, None));
    }
}

#[test]
fn each_signature_byte_is_checked_as_it_arrives() {
    for offset in 1..12 {
        let mut input = SIG.to_vec();
        input[offset] ^= 0x20;
        assert_eq!(
            error(&input[..=offset]),
            ParseError::BadSignature { offset }
        );
        assert_incomplete(&input[..offset]);
    }
}

#[test]
fn length_ceiling_is_inclusive_and_judged_from_the_fixed_part() {
    let limits = Limits {
        max_v2_len: 100,
        ..Limits::default()
    };
    let payload = [tcp4_block(), tlv(0x04, &[0; 85])].concat();
    assert_eq!(payload.len(), 100);
    let input = v2(0x21, 0x11, &payload);
    assert!(matches!(parse(&input, &limits), Ok(Some((_, 116)))));

    let input = v2(0x21, 0x11, &[tcp4_block(), tlv(0x04, &[0; 86])].concat());
    let too_long = ParseError::V2TooLong {
        length: 101,
        max: 100,
    };
    assert_eq!(parse(&input, &limits), Err(too_long));
    assert_eq!(parse(&input[..16], &limits), Err(too_long));
}

#[test]
fn default_ceiling_is_4096_bytes_of_payload() {
    assert_eq!(Limits::default().max_v2_len, 4096);
    let at = v2(0x21, 0x00, &tlv(0x04, &[0; 4093]));
    header(&at);
    let above = v2(0x21, 0x00, &tlv(0x04, &[0; 4094]));
    assert_eq!(error(&above).kind(), "v2_too_long");
}

#[test]
fn partial_header_needs_more_bytes() {
    let input = v2(0x21, 0x21, &[tcp6_block(), tlv(0x01, b"h2")].concat());
    for end in 1..input.len() {
        assert_incomplete(&input[..end]);
    }
}

#[test]
fn length_larger_than_the_data_waits_instead_of_failing() {
    // The `proxy-protocol` crate panics here; a receiver just needs more bytes.
    let mut input = v2(0x21, 0x11, &tcp4_block());
    input[14..16].copy_from_slice(&1000u16.to_be_bytes());
    assert_incomplete(&input);
}

/// Found by the fuzzer: a PROXY header with a bad transport and a length over the
/// ceiling fails on the transport whether the length has arrived or not.
#[test]
fn a_bad_transport_is_judged_before_the_length_split_or_whole() {
    let input = v2(0x21, 0x0b, &[]);
    let mut whole = input.clone();
    whole[14..16].copy_from_slice(&16396u16.to_be_bytes());
    assert_eq!(
        error(&whole[..15]),
        ParseError::V2BadTransport { transport: 11 }
    );
    assert_eq!(error(&whole), ParseError::V2BadTransport { transport: 11 });
}
