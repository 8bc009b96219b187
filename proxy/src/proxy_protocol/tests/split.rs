//! Splitting: for valid and invalid headers alike, every prefix either needs more bytes
//! or gets exactly the verdict of the whole input, so the reader's answer never depends
//! on how TCP segmented the header. The same vectors seed the fuzzer.

use super::{SIG, inet, inet6, tlv, v2, v2_with_crc};
use crate::proxy_protocol::{Limits, parse};

/// Headers valid and invalid, each followed by a few bytes of application data.
pub(super) fn vectors() -> Vec<Vec<u8>> {
    let block4 = inet([127, 0, 0, 1], [127, 0, 0, 2], 50000, 443);
    let block6 = inet6(
        [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        [0; 16],
        1,
        65535,
    );
    let ssl = [
        vec![0x07, 0, 0, 0, 0],
        tlv(0x21, b"TLSv1.3"),
        tlv(0x22, b"cn"),
    ]
    .concat();
    let text: [&[u8]; 16] = [
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
        b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
        b"PROXY TCP6 ::ffff:1.2.3.4 2001:db8::1 0 1\r\n",
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
        b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 655350\r\n",
        b"PROXY TCP4 256.0.2.1 1.2.3.4 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 +80 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 080 2\r\n",
        b"PROXY TCP4 ::1 ::1 1 2\r\n",
        b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
        b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n",
        b"PROXY  TCP4 1.2.3.4 1.2.3.4 1 2\r\n",
        b"PROXY UNKNOWN a\rb\r\n",
    ];
    let mut bad_crc = v2_with_crc(0x21, 0x11, &block4, &[], &tlv(0x02, b"x"));
    bad_crc[30] ^= 1;
    let binary = [
        v2(0x21, 0x11, &block4),
        v2(
            0x21,
            0x21,
            &[block6.clone(), tlv(0x01, b"h2"), tlv(0x20, &ssl)].concat(),
        ),
        v2_with_crc(
            0x21,
            0x21,
            &block6,
            &tlv(0x02, b"example.com"),
            &tlv(0x05, b"id"),
        ),
        v2_with_crc(0x20, 0x00, &[], &[], &[]),
        v2(0x20, 0x11, &[block4.clone(), tlv(0x04, &[0; 3])].concat()),
        v2(0x21, 0x12, &block4),
        v2(0x21, 0x31, &[0; 216]),
        v2(0x21, 0x00, &[]),
        bad_crc,
        v2(0x21, 0x11, &block4[..11]),
        v2(
            0x21,
            0x11,
            &[block4.clone(), vec![0x01, 0x00, 0x05, b'h']].concat(),
        ),
        v2(0x21, 0x11, &[block4.clone(), tlv(0x05, &[0; 129])].concat()),
        v2(0x21, 0x11, &[block4.clone(), tlv(0x03, &[0; 3])].concat()),
        v2(
            0x21,
            0x11,
            &[
                block4.clone(),
                tlv(0x20, &[1, 0, 0, 0, 0, 0x21, 0, 9, b'x']),
            ]
            .concat(),
        ),
        v2(0x31, 0x11, &block4),
        v2(0x23, 0x11, &block4),
        v2(0x21, 0x41, &block4),
        v2(0x21, 0x13, &block4),
        [&SIG[..11], b"X"].concat(),
    ];
    text.iter()
        .map(|t| t.to_vec())
        .chain(binary)
        .map(|mut header| {
            header.extend(b"GET / HTTP/1.1\r\n");
            header
        })
        .collect()
}

#[test]
fn every_prefix_needs_more_bytes_or_gets_the_whole_input_verdict() {
    let limits = Limits::default();
    for input in vectors() {
        let whole = parse(&input, &limits);
        for end in 0..input.len() {
            match parse(&input[..end], &limits) {
                Ok(None) => {}
                prefix => assert_eq!(
                    prefix,
                    whole,
                    "{:?} cut at {end}",
                    String::from_utf8_lossy(&input)
                ),
            }
        }
    }
}

#[test]
fn valid_headers_need_more_bytes_until_their_last_byte_arrives() {
    let limits = Limits::default();
    let mut valid = 0;
    for input in vectors() {
        let Ok(Some((_, used))) = parse(&input, &limits) else {
            continue;
        };
        valid += 1;
        for end in 0..used {
            assert_eq!(parse(&input[..end], &limits), Ok(None), "cut at {end}");
        }
        for end in used..=input.len() {
            assert_eq!(
                parse(&input[..end], &limits),
                parse(&input, &limits),
                "cut at {end}"
            );
        }
    }
    assert!(valid >= 12, "the vectors keep valid headers ({valid})");
}

#[test]
fn invalid_headers_are_rejected_whatever_follows_them() {
    let limits = Limits::default();
    for input in vectors() {
        if let Err(e) = parse(&input, &limits) {
            let mut longer = input.clone();
            longer.extend([0u8; 200]);
            assert_eq!(parse(&longer, &limits), Err(e));
        }
    }
}

/// Writes the vectors as the fuzzer's seed corpus (`fuzz/seeds/parse`, committed).
#[test]
#[ignore = "writes files; run by hand when the vectors change"]
fn write_fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/parse");
    std::fs::create_dir_all(&dir).expect("create the seed directory");
    for (i, input) in vectors().iter().enumerate() {
        std::fs::write(dir.join(format!("vector-{i:02}")), input).expect("write a seed");
    }
}
