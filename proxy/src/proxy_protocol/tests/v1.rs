//! v1: the specification's examples and limits, then each rule of section 2.1 with a
//! line that keeps it and one that breaks it.

use std::net::{Ipv6Addr, SocketAddr};

use super::{assert_incomplete, error, header};
use crate::proxy_protocol::{Addresses, Command, Field, ParseError, Version};

fn tcp(line: &str) -> (SocketAddr, SocketAddr) {
    let header = header(line.as_bytes());
    assert_eq!(header.version(), Version::V1);
    assert_eq!(header.command(), Command::Proxy);
    assert!(header.tlvs().is_empty());
    (
        header.client().expect("client"),
        header.destination().expect("destination"),
    )
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test address")
}

/// A TCP6 line with `source` as the source address.
fn tcp6_source(source: &str) -> String {
    format!("PROXY TCP6 {source} ::1 1 2\r\n")
}

#[test]
fn spec_example_is_parsed_and_the_request_after_it_is_not_consumed() {
    let input = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n";
    let (header, used) = crate::proxy_protocol::parse(input, &Default::default())
        .expect("valid")
        .expect("complete");
    assert_eq!(
        &input[used..],
        b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n"
    );
    assert_eq!(header.client(), Some(addr("192.168.0.1:56324")));
    assert_eq!(header.destination(), Some(addr("192.168.0.11:443")));
}

#[test]
fn longest_tcp4_line_of_56_bytes_is_accepted() {
    let line = "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
    assert_eq!(line.len(), 56);
    assert_eq!(
        tcp(line),
        (addr("255.255.255.255:65535"), addr("255.255.255.255:65535"))
    );
}

#[test]
fn longest_canonical_tcp6_line_of_104_bytes_is_accepted() {
    let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let line = format!("PROXY TCP6 {full} {full} 65535 65535\r\n");
    assert_eq!(line.len(), 104);
    let max = SocketAddr::new(Ipv6Addr::from(u128::MAX).into(), 65535);
    assert_eq!(tcp(&line), (max, max));
}

#[test]
fn unknown_short_form_of_15_bytes_keeps_the_peer_address() {
    let header = header(b"PROXY UNKNOWN\r\n");
    assert_eq!(header.addresses(), Addresses::Unspecified);
    assert_eq!(header.client(), None);
    assert_eq!(header.destination(), None);
}

#[test]
fn unknown_worst_case_of_107_bytes_is_accepted_and_108_rejected() {
    let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let line = format!("PROXY UNKNOWN {full} {full} 65535 65535\r\n");
    assert_eq!(line.len(), 107);
    assert_eq!(header(line.as_bytes()).client(), None);

    let line = format!("PROXY UNKNOWN {full} {full} 65535 655350\r\n");
    assert_eq!(line.len(), 108);
    assert_eq!(error(line.as_bytes()), ParseError::V1TooLong);
    // Decided once 107 bytes are in: no CRLF can end the line within the limit.
    assert_eq!(error(&line.as_bytes()[..107]), ParseError::V1TooLong);
    assert_incomplete(&line.as_bytes()[..106]);
}

#[test]
fn tcp6_line_of_107_bytes_is_accepted_and_108_rejected() {
    let source = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255";
    let line = format!("PROXY TCP6 {source} ffff:ffff:ffff:ffff:ffff:fff:1.2.3.4 65535 65535\r\n");
    assert_eq!(line.len(), 107);
    tcp(&line);
    let line = format!("PROXY TCP6 {source} ffff:ffff:ffff:ffff:ffff:ffff:1.2.3.4 65535 65535\r\n");
    assert_eq!(line.len(), 108);
    assert_eq!(error(line.as_bytes()), ParseError::V1TooLong);
}

#[test]
fn unknown_ignores_anything_before_the_crlf() {
    for line in [
        &b"PROXY UNKNOWN \r\n"[..],
        b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY UNKNOWN garbage \x00\x7f\xff  tabs\tand spaces\r\n",
        b"PROXY UNKNOWN 256.0.0.1 080 +80\r\n",
    ] {
        assert_eq!(header(line).addresses(), Addresses::Unspecified, "{line:?}");
    }
}

#[test]
fn unknown_still_needs_crlf_not_a_lone_cr_or_lf() {
    assert_eq!(
        error(b"PROXY UNKNOWN\n"),
        ParseError::V1BadLineEnd { offset: 13 }
    );
    assert_eq!(
        error(b"PROXY UNKNOWN\rX"),
        ParseError::V1BadLineEnd { offset: 14 }
    );
    assert_eq!(
        error(b"PROXY UNKNOWN abc\ndef\r\n"),
        ParseError::V1BadLineEnd { offset: 17 }
    );
    assert_eq!(
        error(b"PROXY UNKNOWN abc\rdef\r\n"),
        ParseError::V1BadLineEnd { offset: 18 }
    );
    assert_eq!(
        error(b"PROXY UNKNOWNX\r\n"),
        ParseError::V1BadProtocol { offset: 13 }
    );
}

#[test]
fn protocol_must_be_tcp4_tcp6_or_unknown_in_capitals() {
    for (line, offset) in [
        ("PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", 9),
        ("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", 7),
        ("PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", 6),
        ("PROXY TCP44 1.2.3.4 5.6.7.8 1 2\r\n", 10),
        ("PROXY UNKNOWn\r\n", 12),
    ] {
        assert_eq!(
            error(line.as_bytes()),
            ParseError::V1BadProtocol { offset },
            "{line:?}"
        );
    }
    assert_eq!(
        error(b"PROXY TCP4\r\n"),
        ParseError::V1BadLineEnd { offset: 10 }
    );
    assert_eq!(error(b"PROXY \r\n"), ParseError::V1BadLineEnd { offset: 6 });
}

#[test]
fn signature_must_be_proxy_in_capitals() {
    assert_eq!(error(b"PROXX TCP4"), ParseError::BadSignature { offset: 4 });
    assert_eq!(error(b"Proxy TCP4"), ParseError::BadSignature { offset: 1 });
    assert_eq!(
        error(b"PROXYTCP4"),
        ParseError::V1BadSeparator { offset: 5 }
    );
    assert_incomplete(b"PROX");
}

#[test]
fn fields_are_separated_by_exactly_one_space() {
    tcp("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n");
    for (line, offset) in [
        ("PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", 6),
        ("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", 11),
        ("PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", 19),
        ("PROXY TCP4 1.2.3.4 5.6.7.8  1 2\r\n", 27),
        ("PROXY TCP4 1.2.3.4 5.6.7.8 1  2\r\n", 29),
        ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", 30),
    ] {
        assert_eq!(
            error(line.as_bytes()),
            ParseError::V1BadSeparator { offset },
            "{line:?}"
        );
    }
    assert_eq!(
        error(b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n"),
        ParseError::V1BadAddress {
            field: Field::Source,
            offset: 18
        }
    );
}

#[test]
fn line_ends_with_crlf_only() {
    assert_eq!(
        error(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"),
        ParseError::V1BadLineEnd { offset: 30 }
    );
    assert_eq!(
        error(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX"),
        ParseError::V1BadLineEnd { offset: 31 }
    );
    assert_eq!(
        error(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n"),
        ParseError::V1BadLineEnd { offset: 31 }
    );
    assert_eq!(
        error(b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"),
        ParseError::V1BadLineEnd { offset: 28 }
    );
    assert_incomplete(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r");
}

#[test]
fn ipv4_is_four_decimal_octets_up_to_255_without_leading_zeros() {
    assert_eq!(
        tcp("PROXY TCP4 0.0.0.0 10.200.0.255 0 1\r\n").0,
        addr("0.0.0.0:0")
    );
    assert_eq!(
        tcp("PROXY TCP4 0.0.0.0 10.200.0.255 0 1\r\n").1,
        addr("10.200.0.255:1")
    );
    let bad = |source: &str, offset: usize| {
        let line = format!("PROXY TCP4 {source} 5.6.7.8 1 2\r\n");
        assert_eq!(
            error(line.as_bytes()),
            ParseError::V1BadAddress {
                field: Field::Source,
                offset: 11 + offset
            },
            "{source:?}"
        );
    };
    bad("256.0.2.1", 2);
    bad("1.2.3.300", 8);
    bad("01.2.3.4", 1);
    bad("1.2.3.00", 7);
    bad("1.2.3", 5);
    bad("1.2.3.4.5", 7);
    bad("1..2.3", 2);
    bad(".1.2.3", 0);
    bad("-1.2.3.4", 0);
    bad("+1.2.3.4", 0);
    bad("1.2.3.a", 6);
    bad("0x1.2.3.4", 1);
    bad("1.2.3.4/32", 7);
    bad("1.2.3.1000", 9);
}

#[test]
fn tcp4_with_an_ipv6_address_is_a_family_mismatch() {
    assert_eq!(
        error(b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n"),
        ParseError::V1FamilyMismatch {
            field: Field::Source,
            offset: 11
        }
    );
    assert_eq!(
        error(b"PROXY TCP4 1.2.3.4 12:34::1 1 2\r\n"),
        ParseError::V1FamilyMismatch {
            field: Field::Destination,
            offset: 21
        }
    );
    assert_eq!(
        error(b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n"),
        ParseError::V1FamilyMismatch {
            field: Field::Source,
            offset: 12
        }
    );
    assert_eq!(
        error(b"PROXY TCP6 ::1 10.0.0.1 1 2\r\n"),
        ParseError::V1FamilyMismatch {
            field: Field::Destination,
            offset: 17
        }
    );
}

#[test]
fn ipv6_in_every_rfc_4291_text_form_is_accepted() {
    for text in [
        "::",
        "::1",
        "1::",
        "1::8",
        "1:2:3:4:5:6:7::",
        "::2:3:4:5:6:7:8",
        "1:2:3:4:5:6:7:8",
        "2001:DB8::FF00:42:8329",
        "2001:0db8:0000:0000:0000:ff00:0042:8329",
        "2001:db8:0:0:1:0:0:1",
        "fe80::1:2",
        "::ffff:192.0.2.128",
        "::192.0.2.128",
        "1:2:3:4:5:6:1.2.3.4",
        "1::6:1.2.3.4",
        "::0.0.0.0",
        "0:0:0:0:0:0:0:0",
        "aBcD:EF01::",
    ] {
        let expected: Ipv6Addr = text.parse().expect("std parses it too");
        assert_eq!(
            tcp(&tcp6_source(text)).0,
            SocketAddr::new(expected.into(), 1),
            "{text}"
        );
    }
}

#[test]
fn ipv6_that_is_not_exactly_128_bits_is_rejected() {
    for (text, at) in [
        ("1:2:3:4:5:6:7", 13),
        ("1:2:3:4:5:6:7:8:9", 15),
        ("1:2:3:4:5:6:7:8::", 15),
        ("::1:2:3:4:5:6:7:8", 15),
        ("1::2:3:4:5:6:7:8", 14),
        (":::", 2),
        ("1:::2", 3),
        ("1::2::3", 5),
        (":1::", 1),
        ("1::2:", 5),
        ("12345::", 4),
        ("1:2:3:4:5:6:7:1.2.3.4", 14),
        ("1:2:3:4:5:1.2.3.4", 10),
        ("::ffff:1.2.3.256", 15),
        ("::ffff:1.2.3.04", 14),
        ("::ffff:1.2.3", 12),
        ("::ffff:1234.1.2.3", 10),
        ("::ffff:1.2.3.4.5", 14),
        ("::g", 2),
        ("fe80::1%eth0", 7),
        ("[::1]", 0),
        ("-1::", 0),
    ] {
        assert_eq!(
            error(tcp6_source(text).as_bytes()),
            ParseError::V1BadAddress {
                field: Field::Source,
                offset: 11 + at
            },
            "{text}"
        );
    }
}

#[test]
fn ports_are_decimal_up_to_65535_without_sign_or_leading_zeros() {
    assert_eq!(
        tcp("PROXY TCP4 1.2.3.4 5.6.7.8 0 65535\r\n").1.port(),
        65535
    );
    assert_eq!(tcp("PROXY TCP4 1.2.3.4 5.6.7.8 0 65535\r\n").0.port(), 0);
    for (port, offset) in [
        ("65536", 4),
        ("99999", 4),
        ("080", 1),
        ("00", 1),
        ("+80", 0),
        ("-1", 0),
        ("8a", 1),
        ("0x50", 1),
        ("100000", 5),
    ] {
        let line = format!("PROXY TCP4 1.2.3.4 5.6.7.8 {port} 2\r\n");
        assert_eq!(
            error(line.as_bytes()),
            ParseError::V1BadPort {
                field: Field::Source,
                offset: 27 + offset
            },
            "{port}"
        );
        let line = format!("PROXY TCP4 1.2.3.4 5.6.7.8 1 {port}\r\n");
        assert_eq!(
            error(line.as_bytes()),
            ParseError::V1BadPort {
                field: Field::Destination,
                offset: 29 + offset
            },
            "{port}"
        );
    }
}

#[test]
fn bytes_no_valid_line_can_have_are_rejected_before_the_crlf() {
    for prefix in [
        &b"PROXY TCP4 256"[..],
        b"PROXY TCP4 1.2.3.4 5.6.7.8 080",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 +",
        b"PROXY TCP6 12345",
        b"PROXY TCP6 1:2:3:4:5:6:7:8:",
        b"PROXY TCP4 ::",
        b"PROXY  ",
        b"PROXY TCP4 1.2.3.4\n",
        b"PROXY UDP",
    ] {
        error(prefix);
    }
}

#[test]
fn prefixes_of_a_valid_line_need_more_bytes() {
    let line = b"PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 65535 0\r\n";
    for end in 1..line.len() {
        assert_incomplete(&line[..end]);
    }
    header(line);
}

/// `accept_v1_mixed_families`: nginx stream writes lines whose addresses differ in family
/// when it relays an address it learnt from a PROXY header of its own.
#[test]
fn mixed_families_only_when_accepted_and_then_as_mapped_ipv6() {
    use crate::proxy_protocol::{Limits, parse};
    let mixed = Limits {
        accept_v1_mixed_families: true,
        ..Limits::default()
    };
    let lines = [
        (
            "PROXY TCP4 1.2.3.4 2001:db8::1 1 2\r\n",
            "[::ffff:1.2.3.4]:1",
            "[2001:db8::1]:2",
        ),
        (
            "PROXY TCP6 2001:db8::7 5.6.7.8 1 2\r\n",
            "[2001:db8::7]:1",
            "[::ffff:5.6.7.8]:2",
        ),
        // Both of the other family than the word says: kept as they are.
        (
            "PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            "1.2.3.4:1",
            "5.6.7.8:2",
        ),
    ];
    for (line, client, destination) in lines {
        let bytes = line.as_bytes();
        assert!(
            parse(bytes, &Limits::default()).is_err(),
            "{line:?} is refused by default"
        );
        let (header, used) = parse(bytes, &mixed).expect("accepted").expect("complete");
        assert_eq!(used, bytes.len());
        assert!(header.mixed_families(), "{line:?}");
        assert_eq!(header.client(), Some(addr(client)), "{line:?}");
        assert_eq!(header.destination(), Some(addr(destination)), "{line:?}");
        // Any prefix waits for more: the verdict does not depend on the split.
        for cut in 1..bytes.len() {
            assert!(
                matches!(parse(&bytes[..cut], &mixed), Ok(None)),
                "{line:?} cut at {cut}"
            );
        }
    }
    // Same-family lines are not counted as mixed; garbage is still garbage.
    let (header, _) = parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", &mixed)
        .expect("valid")
        .expect("complete");
    assert!(!header.mixed_families());
    assert_eq!(
        parse(b"PROXY TCP4 1.2.3.x 5.6.7.8 1 2\r\n", &mixed)
            .expect_err("bad address")
            .kind(),
        "v1_bad_address"
    );
}
