//! The encoder: exact bytes for known headers (the checksum from the bitwise reference),
//! every generated pair of endpoints read back by `parse` and by the independent `ppp`
//! crate, TLVs kept in order before the checksum, and the length bound on both sides.

use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;

use super::{crc32c_reference, inet, tlv, v2};
use crate::proxy_protocol::{Command, EncodeError, Limits, Tlv, Version, encode, encode_v2, parse};

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test address")
}

/// Parses `bytes` as one complete header, with the length ceiling at the protocol's own.
fn parsed_whole(bytes: &[u8]) -> crate::proxy_protocol::Header<'_> {
    let limits = Limits {
        max_v2_len: usize::from(u16::MAX),
        ..Limits::default()
    };
    match parse(bytes, &limits) {
        Ok(Some((header, used))) if used == bytes.len() => header,
        other => panic!("{bytes:?} should be one whole header, got {other:?}"),
    }
}

#[test]
fn v1_line_names_source_then_destination() {
    let line = encode(
        Version::V1,
        addr("203.0.113.7:4711"),
        addr("198.51.100.1:443"),
    );
    assert_eq!(line, b"PROXY TCP4 203.0.113.7 198.51.100.1 4711 443\r\n");
    let line = encode(
        Version::V1,
        addr("[2001:db8::7]:4711"),
        addr("[2001:db8::1]:443"),
    );
    assert_eq!(line, b"PROXY TCP6 2001:db8::7 2001:db8::1 4711 443\r\n");
}

#[test]
fn v2_header_is_proxy_stream_with_a_checksum_from_the_reference() {
    let header = encode(
        Version::V2,
        addr("203.0.113.7:4711"),
        addr("198.51.100.1:443"),
    );
    let block = inet([203, 0, 113, 7], [198, 51, 100, 1], 4711, 443);
    let mut expected = v2(0x21, 0x11, &[block, tlv(0x03, &[0; 4])].concat());
    let crc = crc32c_reference(&expected);
    let at = expected.len() - 4;
    expected[at..].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(header, expected);
    assert_eq!(parsed_whole(&header).tlvs().crc32c(), Some(crc));
}

#[test]
fn longest_v1_line_fits_the_107_byte_limit() {
    let ip = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let line = encode(
        Version::V1,
        addr(&format!("[{ip}]:65535")),
        addr(&format!("[{ip}]:65535")),
    );
    assert_eq!(line.len(), 104);
    assert_eq!(
        parsed_whole(&line).client(),
        Some(addr(&format!("[{ip}]:65535")))
    );
}

#[test]
fn tlvs_are_sent_in_order_before_the_checksum() {
    let tlvs = [
        Tlv::new(Tlv::AUTHORITY, b"app.example"),
        Tlv::new(Tlv::UNIQUE_ID, b"id-1"),
        Tlv::new(Tlv::NOOP, b""),
    ];
    let bytes =
        encode_v2(addr("[2001:db8::7]:1"), addr("[2001:db8::1]:2"), &tlvs).expect("small TLVs fit");
    let header = parsed_whole(&bytes);
    let kinds: Vec<u8> = header.tlvs().iter().map(|t| t.kind()).collect();
    assert_eq!(
        kinds,
        [Tlv::AUTHORITY, Tlv::UNIQUE_ID, Tlv::NOOP, Tlv::CRC32C]
    );
    assert_eq!(header.tlvs().authority(), Some("app.example"));
    assert_eq!(header.tlvs().unique_id(), Some(&b"id-1"[..]));
}

#[test]
fn v2_length_is_bounded_by_its_16_bit_field() {
    // 12 address bytes, a 3-byte TLV head, the 7-byte checksum TLV: 22 bytes besides
    // the value.
    let (s, d) = (addr("192.0.2.1:1"), addr("192.0.2.2:2"));
    let largest = vec![b'x'; 65_535 - 22];
    let bytes = encode_v2(s, d, &[Tlv::new(0xE5, &largest)]).expect("exactly fits");
    assert_eq!(bytes.len(), 16 + 65_535);
    assert_eq!(parsed_whole(&bytes).tlvs().find(0xE5), Some(&largest[..]));
    let over = vec![b'x'; 65_535 - 21];
    assert_eq!(
        encode_v2(s, d, &[Tlv::new(0xE5, &over)]),
        Err(EncodeError::TooLong { length: 65_536 })
    );
}

#[test]
fn a_second_checksum_is_refused() {
    let crc = Tlv::new(Tlv::CRC32C, &[0; 4]);
    assert_eq!(
        encode_v2(addr("192.0.2.1:1"), addr("192.0.2.2:2"), &[crc]),
        Err(EncodeError::CrcGiven)
    );
}

#[test]
fn mixed_families_become_one() {
    let mapped = encode(
        Version::V1,
        addr("[::ffff:203.0.113.7]:4711"),
        addr("198.51.100.1:443"),
    );
    assert_eq!(mapped, b"PROXY TCP4 203.0.113.7 198.51.100.1 4711 443\r\n");
    let v6 = encode(
        Version::V1,
        addr("203.0.113.7:4711"),
        addr("[2001:db8::1]:443"),
    );
    assert_eq!(
        v6,
        b"PROXY TCP6 ::ffff:203.0.113.7 2001:db8::1 4711 443\r\n"
    );
    let both_mapped = encode(
        Version::V1,
        addr("[::ffff:203.0.113.7]:4711"),
        addr("[::ffff:198.51.100.1]:443"),
    );
    assert_eq!(
        both_mapped,
        b"PROXY TCP4 203.0.113.7 198.51.100.1 4711 443\r\n"
    );
}

fn any_endpoint() -> impl Strategy<Value = SocketAddr> {
    let ip = prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
        any::<[u8; 4]>().prop_map(|o| IpAddr::from(std::net::Ipv4Addr::from(o).to_ipv6_mapped())),
    ];
    (ip, any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

/// The endpoint with an IPv4-mapped address written as IPv4, to compare across families.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// `ppp`'s reading of a header: version 1 or 2, and the TCP endpoints.
fn ppp_reads(bytes: &[u8]) -> Option<(u8, SocketAddr, SocketAddr)> {
    match ppp::HeaderResult::parse(bytes) {
        ppp::HeaderResult::V1(Ok(h)) => match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => Some((
                1,
                SocketAddr::new(a.source_address.into(), a.source_port),
                SocketAddr::new(a.destination_address.into(), a.destination_port),
            )),
            ppp::v1::Addresses::Tcp6(a) => Some((
                1,
                SocketAddr::new(a.source_address.into(), a.source_port),
                SocketAddr::new(a.destination_address.into(), a.destination_port),
            )),
            ppp::v1::Addresses::Unknown => None,
        },
        ppp::HeaderResult::V2(Ok(h)) if h.command == ppp::v2::Command::Proxy => match h.addresses {
            ppp::v2::Addresses::IPv4(a) => Some((
                2,
                SocketAddr::new(a.source_address.into(), a.source_port),
                SocketAddr::new(a.destination_address.into(), a.destination_port),
            )),
            ppp::v2::Addresses::IPv6(a) => Some((
                2,
                SocketAddr::new(a.source_address.into(), a.source_port),
                SocketAddr::new(a.destination_address.into(), a.destination_port),
            )),
            _ => None,
        },
        _ => None,
    }
}

proptest! {
    #[test]
    fn every_encoded_header_parses_back_to_its_endpoints(
        source in any_endpoint(),
        destination in any_endpoint(),
        v2 in any::<bool>(),
    ) {
        let version = if v2 { Version::V2 } else { Version::V1 };
        let bytes = encode(version, source, destination);
        let header = parsed_whole(&bytes);
        prop_assert_eq!(header.version(), version);
        prop_assert_eq!(header.command(), Command::Proxy);
        let (client, front) = (
            header.client().expect("a TCP client"),
            header.destination().expect("a TCP destination"),
        );
        prop_assert_eq!(canonical(client), canonical(source));
        prop_assert_eq!(canonical(front), canonical(destination));
        prop_assert_eq!(header.tlvs().crc32c().is_some(), v2);
        // Same family on the wire, and IPv6 only when an address needs it.
        let needs_v6 = [source, destination]
            .iter()
            .any(|a| canonical(*a).is_ipv6());
        prop_assert_eq!(client.is_ipv6(), needs_v6);
    }

    #[test]
    fn ppp_reads_every_encoded_header_as_the_endpoints_given(
        source in any_endpoint(),
        destination in any_endpoint(),
        v2 in any::<bool>(),
    ) {
        let version = if v2 { Version::V2 } else { Version::V1 };
        let bytes = encode(version, source, destination);
        let (read_version, client, front) = ppp_reads(&bytes).expect("ppp accepts it");
        prop_assert_eq!(read_version, if v2 { 2 } else { 1 });
        prop_assert_eq!(canonical(client), canonical(source));
        prop_assert_eq!(canonical(front), canonical(destination));
    }
}
