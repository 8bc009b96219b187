//! TLVs: overruns by one byte at each level, CRC32C good, bad, wrong-sized and repeated,
//! the UNIQUE_ID bound, the SSL TLV, the typed accessors, and the owned copy.

use super::{error, header, inet, tlv, v2, v2_with_crc};
use crate::proxy_protocol::{Limits, ParseError, ProxyInfo, Ssl, Tlv, parse};

fn block() -> Vec<u8> {
    inet([10, 0, 0, 1], [10, 0, 0, 2], 1234, 443)
}

/// A PROXY TCP4 header with `tlvs` after the addresses.
fn with_tlvs(tlvs: &[u8]) -> Vec<u8> {
    v2(0x21, 0x11, &[block(), tlvs.to_vec()].concat())
}

/// Offset of the first TLV in [`with_tlvs`].
const TLVS_AT: usize = 16 + 12;

fn ssl_value(client: u8, verify: u32, subs: &[u8]) -> Vec<u8> {
    let mut value = vec![client];
    value.extend(verify.to_be_bytes());
    value.extend(subs);
    value
}

#[test]
fn tlv_that_fits_exactly_is_accepted_and_one_byte_more_overruns() {
    header(&with_tlvs(&tlv(0x01, b"h2")));
    let mut input = with_tlvs(&tlv(0x01, b"h2"));
    input[TLVS_AT + 2] = 3;
    assert_eq!(error(&input), ParseError::TlvOverrun { offset: TLVS_AT });

    let mut input = with_tlvs(&[tlv(0x04, b""), tlv(0x01, b"h2")].concat());
    input[TLVS_AT + 3 + 2] = 3;
    assert_eq!(
        error(&input),
        ParseError::TlvOverrun {
            offset: TLVS_AT + 3
        }
    );
}

#[test]
fn bytes_too_few_for_a_tlv_head_overrun() {
    for tail in [&[0x04][..], &[0x04, 0x00]] {
        let input = with_tlvs(&[tlv(0x01, b"h2"), tail.to_vec()].concat());
        assert_eq!(
            error(&input),
            ParseError::TlvOverrun {
                offset: TLVS_AT + 5
            }
        );
    }
}

#[test]
fn tlvs_are_read_in_order_and_unknown_types_are_skipped() {
    let tlvs = [
        tlv(0xF0, b"experiment"),
        tlv(0x01, b"h2"),
        tlv(0xFF, b""),
        tlv(0x04, &[0; 7]),
        tlv(0x01, b"http/1.1"),
    ]
    .concat();
    let input = with_tlvs(&tlvs);
    let header = header(&input);
    let seen: Vec<_> = header
        .tlvs()
        .iter()
        .map(|t| (t.kind(), t.value()))
        .collect();
    assert_eq!(
        seen,
        [
            (0xF0, &b"experiment"[..]),
            (0x01, b"h2"),
            (0xFF, b""),
            (0x04, &[0; 7]),
            (0x01, b"http/1.1")
        ]
    );
    assert_eq!(
        header.tlvs().alpn(),
        Some(&b"h2"[..]),
        "the first of duplicates"
    );
    assert_eq!(header.tlvs().find(0x42), None);
}

#[test]
fn crc32c_that_matches_is_accepted() {
    let input = v2_with_crc(0x21, 0x11, &block(), &tlv(0x01, b"h2"), &tlv(0x05, b"abc"));
    let header = header(&input);
    assert_eq!(
        header
            .tlvs()
            .crc32c()
            .map(u32::to_be_bytes)
            .as_ref()
            .map(<[u8; 4]>::as_slice),
        Some(&input[36..40])
    );
    assert_eq!(header.tlvs().unique_id(), Some(&b"abc"[..]));
}

#[test]
fn crc32c_covers_the_whole_header_on_both_sides_of_the_field() {
    let good = v2_with_crc(0x21, 0x11, &block(), &tlv(0x01, b"h2"), &tlv(0x05, b"abc"));
    // Flips that keep the structure valid: address block and TLV values.
    let content = (16..28).chain(31..33).chain(43..46);
    // The CRC32C TLV's own type byte (33) cannot be covered: flipped, the TLV is no
    // longer a checksum.
    for at in (0..good.len()).filter(|at| *at != 33) {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        let result = parse(&bad, &Limits::default());
        assert!(
            !matches!(result, Ok(Some(_))),
            "bit flipped at byte {at} accepted"
        );
        if content.clone().any(|c| c == at) {
            assert_eq!(
                result.map_err(|e| e.kind()),
                Err("crc_mismatch"),
                "bit flipped at byte {at}"
            );
        }
    }
}

#[test]
fn crc32c_mismatch_reports_both_values() {
    let mut input = v2_with_crc(0x21, 0x11, &block(), &[], &[]);
    let received = u32::from_be_bytes(input[31..35].try_into().expect("4 bytes")) ^ 1;
    input[31..35].copy_from_slice(&received.to_be_bytes());
    assert_eq!(
        error(&input),
        ParseError::CrcMismatch {
            received,
            computed: received ^ 1
        }
    );
}

#[test]
fn crc32c_of_a_local_health_check_is_checked_too() {
    // HAProxy's health checks: LOCAL, UNSPEC, CRC32C straight after the fixed part.
    let input = v2_with_crc(0x20, 0x00, &[], &[], &[]);
    assert!(header(&input).tlvs().crc32c().is_some());
    let mut bad = input.clone();
    bad[19] ^= 0x80;
    assert_eq!(error(&bad).kind(), "crc_mismatch");
}

#[test]
fn crc32c_of_any_size_but_4_is_rejected() {
    for size in [0, 3, 5, 8] {
        let input = with_tlvs(&tlv(0x03, &vec![0; size]));
        assert_eq!(
            error(&input),
            ParseError::CrcBadLength {
                offset: TLVS_AT,
                length: size
            }
        );
    }
}

#[test]
fn a_second_crc32c_is_rejected() {
    let input = v2_with_crc(0x21, 0x11, &block(), &[], &tlv(0x03, &[0; 4]));
    assert_eq!(
        error(&input),
        ParseError::CrcDuplicate {
            offset: TLVS_AT + 7
        }
    );
}

#[test]
fn unique_id_of_128_bytes_is_accepted_and_129_rejected() {
    for size in [0, 1, 128] {
        let id = vec![b'x'; size];
        assert_eq!(
            header(&with_tlvs(&tlv(0x05, &id))).tlvs().unique_id(),
            Some(&id[..])
        );
    }
    assert_eq!(
        error(&with_tlvs(&tlv(0x05, &[b'x'; 129]))),
        ParseError::UniqueIdTooLong {
            offset: TLVS_AT,
            length: 129
        }
    );
}

#[test]
fn ssl_tlv_gives_its_flags_verify_result_and_every_subtype() {
    let subs = [
        tlv(Ssl::VERSION, b"TLSv1.3"),
        tlv(Ssl::CN, b"client.example"),
        tlv(Ssl::CIPHER, b"TLS_AES_256_GCM_SHA384"),
        tlv(Ssl::SIG_ALG, b"RSA-SHA256"),
        tlv(Ssl::KEY_ALG, b"EC256"),
        tlv(Ssl::GROUP, b"X25519"),
        tlv(Ssl::SIG_SCHEME, b"ecdsa_secp256r1_sha256"),
        tlv(Ssl::CLIENT_CERT, b"\x30\x82"),
        tlv(0x2F, b"future"),
    ]
    .concat();
    let input = with_tlvs(&tlv(Tlv::SSL, &ssl_value(0x07, 0, &subs)));
    let header = header(&input);
    let ssl = header.tlvs().ssl().expect("SSL TLV");
    assert!(ssl.client().ssl() && ssl.client().cert_conn() && ssl.client().cert_sess());
    assert_eq!(ssl.client().bits(), 0x07);
    assert_eq!(ssl.verify(), 0);
    assert_eq!(ssl.version(), Some("TLSv1.3"));
    assert_eq!(ssl.cn(), Some("client.example"));
    assert_eq!(ssl.cipher(), Some("TLS_AES_256_GCM_SHA384"));
    assert_eq!(ssl.sig_alg(), Some("RSA-SHA256"));
    assert_eq!(ssl.key_alg(), Some("EC256"));
    assert_eq!(ssl.group(), Some("X25519"));
    assert_eq!(ssl.sig_scheme(), Some("ecdsa_secp256r1_sha256"));
    assert_eq!(ssl.client_cert(), Some(&b"\x30\x82"[..]));
    assert_eq!(ssl.sub_tlvs().count(), 9);
}

#[test]
fn ssl_tlv_without_client_flags_or_subtypes_is_accepted() {
    // What HAProxy sends with `proxy-v2-options ssl` for a plain-TCP client.
    let input = with_tlvs(&tlv(Tlv::SSL, &ssl_value(0, 0, &[])));
    let ssl = header(&input).tlvs().ssl().expect("SSL TLV");
    assert!(!ssl.client().ssl());
    assert_eq!(ssl.sub_tlvs().count(), 0);
    assert_eq!(ssl.version(), None);
}

#[test]
fn ssl_tlv_shorter_than_its_5_byte_head_is_rejected() {
    assert_eq!(
        error(&with_tlvs(&tlv(Tlv::SSL, &[1, 0, 0, 0]))),
        ParseError::SslTooShort {
            offset: TLVS_AT,
            length: 4
        }
    );
}

#[test]
fn ssl_sub_tlv_overrunning_by_one_byte_is_rejected() {
    let mut sub = tlv(Ssl::VERSION, b"TLSv1.2");
    sub[2] += 1;
    let input = with_tlvs(&[tlv(Tlv::SSL, &ssl_value(1, 0, &sub)), tlv(0x04, &[0; 4])].concat());
    assert_eq!(
        error(&input),
        ParseError::SslOverrun {
            offset: TLVS_AT + 3 + 5
        }
    );
}

#[test]
fn ssl_sub_tlv_area_with_stray_bytes_is_rejected() {
    let subs = [tlv(Ssl::VERSION, b"1.2"), vec![0xFF, 0xFF]].concat();
    let input = with_tlvs(&tlv(Tlv::SSL, &ssl_value(1, 0, &subs)));
    assert_eq!(
        error(&input),
        ParseError::SslOverrun {
            offset: TLVS_AT + 3 + 5 + 6
        }
    );
}

#[test]
fn string_tlvs_and_cloud_tlvs_have_typed_accessors() {
    let tlvs = [
        tlv(Tlv::AUTHORITY, b"www.example.com"),
        tlv(Tlv::NETNS, b"blue"),
        tlv(Tlv::AWS, b"\x01vpce-08d2bf15fac5001c9"),
        tlv(Tlv::AZURE, &[0x01, 0x2e, 0x16, 0, 0]),
        tlv(Tlv::GCP, &0x0123_4567_89ab_cdefu64.to_be_bytes()),
    ]
    .concat();
    let input = with_tlvs(&tlvs);
    let header = header(&input);
    let tlvs = header.tlvs();
    assert_eq!(tlvs.authority(), Some("www.example.com"));
    assert_eq!(tlvs.netns(), Some("blue"));
    assert_eq!(tlvs.aws_vpce_id(), Some("vpce-08d2bf15fac5001c9"));
    assert_eq!(tlvs.azure_link_id(), Some(5678));
    assert_eq!(tlvs.gcp_psc_connection_id(), Some(0x0123_4567_89ab_cdef));
    assert_eq!(tlvs.crc32c(), None);
    assert_eq!(tlvs.ssl(), None);
}

#[test]
fn malformed_values_of_optional_types_are_absent_not_errors() {
    let tlvs = [
        tlv(Tlv::AUTHORITY, b"\xff\xfe"),
        tlv(Tlv::AWS, b"\x02other-subtype"),
        tlv(Tlv::AZURE, &[0x01, 0x2e]),
        tlv(Tlv::GCP, &[1, 2, 3]),
    ]
    .concat();
    let input = with_tlvs(&tlvs);
    let header = header(&input);
    let tlvs = header.tlvs();
    assert_eq!(tlvs.authority(), None);
    assert_eq!(tlvs.find(Tlv::AUTHORITY), Some(&b"\xff\xfe"[..]));
    assert_eq!(tlvs.aws_vpce_id(), None);
    assert_eq!(tlvs.azure_link_id(), None);
    assert_eq!(tlvs.gcp_psc_connection_id(), None);
}

#[test]
fn owned_info_keeps_addresses_and_tlvs_with_the_same_accessors() {
    let input = v2_with_crc(
        0x21,
        0x11,
        &block(),
        &tlv(Tlv::AUTHORITY, b"a.example"),
        &tlv(Tlv::UNIQUE_ID, b"u"),
    );
    let header = header(&input);
    let info = ProxyInfo::from(header);
    assert_eq!(info.version(), header.version());
    assert_eq!(info.command(), header.command());
    assert_eq!(info.client(), header.client());
    assert_eq!(info.destination(), header.destination());
    assert_eq!(info.fallback(), None);
    assert_eq!(info.tlvs().as_bytes(), header.tlvs().as_bytes());
    assert_eq!(info.tlvs().authority(), Some("a.example"));
    assert_eq!(info.tlvs().unique_id(), Some(&b"u"[..]));
    assert_eq!(info.tlvs().crc32c(), header.tlvs().crc32c());
}
