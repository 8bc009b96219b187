//! PROXY v2 TLVs as request headers (an app's `proxy_protocol_tlv_headers`): every
//! configured name is removed from the client's request, always, then set from the
//! connection's TLV when it has one. Values are percent-encoded (see [`encode`]), so any
//! bytes make a safe header value that decodes back to exactly those bytes; a value whose
//! encoding is over [`VALUE_MAX_BYTES`] is left out, never cut.

use http::{HeaderMap, HeaderValue};
use tracing::debug;

use crate::config::{TlvField, TlvHeader};
use crate::proxy_protocol::{Ssl, Tlv, Tlvs};

/// The longest header value a TLV may become, after encoding. Longer ones are left out
/// rather than truncated: a cut value could equal another (a shorter certificate CN).
pub(super) const VALUE_MAX_BYTES: usize = 1024;

/// A TLV's value before it is written as text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Raw<'a> {
    Bytes(&'a [u8]),
    Number(u64),
}

/// Removes every header of `mapping` from `headers`, then sets those whose TLV is in
/// `tlvs`. Call after the hop-by-hop headers are gone, so that no `Connection` header
/// can name one of these away.
pub(super) fn apply(headers: &mut HeaderMap, mapping: &[TlvHeader], tlvs: Tlvs<'_>) {
    for entry in mapping {
        headers.remove(&entry.name);
    }
    if tlvs.is_empty() {
        return;
    }
    for entry in mapping {
        let Some(raw) = raw(entry.tlv, tlvs) else {
            continue;
        };
        let text = match raw {
            Raw::Number(n) => Some(n.to_string()),
            Raw::Bytes(bytes) => encode(bytes),
        };
        let value = text.and_then(|t| HeaderValue::try_from(t).ok());
        match value {
            Some(value) => {
                headers.insert(entry.name.clone(), value);
            }
            None => {
                debug!(
                    header = %entry.name,
                    tlv = entry.tlv.key(),
                    "TLV value too long for a header; left out"
                );
            }
        }
    }
}

/// The value of `field` in `tlvs`, through the parser's accessors. Text fields are read
/// as bytes, so a value that is not UTF-8 is encoded rather than lost.
fn raw(field: TlvField, tlvs: Tlvs<'_>) -> Option<Raw<'_>> {
    let bytes = match field {
        TlvField::Alpn => tlvs.alpn(),
        TlvField::Authority => tlvs.find(Tlv::AUTHORITY),
        TlvField::UniqueId => tlvs.unique_id(),
        TlvField::Netns => tlvs.find(Tlv::NETNS),
        TlvField::SslVersion => tlvs.ssl()?.find(Ssl::VERSION),
        // A CN is an identity only once the load balancer verified its certificate.
        TlvField::SslCn => tlvs.ssl().filter(|s| s.verify() == 0)?.find(Ssl::CN),
        TlvField::SslCipher => tlvs.ssl()?.find(Ssl::CIPHER),
        TlvField::SslSigAlg => tlvs.ssl()?.find(Ssl::SIG_ALG),
        TlvField::SslKeyAlg => tlvs.ssl()?.find(Ssl::KEY_ALG),
        TlvField::SslGroup => tlvs.ssl()?.find(Ssl::GROUP),
        TlvField::SslSigScheme => tlvs.ssl()?.find(Ssl::SIG_SCHEME),
        TlvField::AwsVpceId => tlvs.aws_vpce_id().map(str::as_bytes),
        TlvField::SslVerify => return tlvs.ssl().map(|s| Raw::Number(s.verify().into())),
        TlvField::AzureLinkId => return tlvs.azure_link_id().map(|n| Raw::Number(n.into())),
        TlvField::GcpPscConnectionId => return tlvs.gcp_psc_connection_id().map(Raw::Number),
    };
    bytes.map(Raw::Bytes)
}

/// `bytes` as a header value, or `None` when that is over [`VALUE_MAX_BYTES`].
///
/// Visible ASCII other than `%` is kept, and so is a space that is neither first nor
/// last; every other byte (control bytes, CR, LF, DEL, non-ASCII, `%`, a leading or
/// trailing space, which HTTP would trim) becomes `%XX`, upper-case hex. The mapping is
/// one-to-one: percent-decoding the value gives back exactly `bytes`, so two different
/// TLVs never arrive as the same header value.
pub(super) fn encode(bytes: &[u8]) -> Option<String> {
    let last = bytes.len().saturating_sub(1);
    let kept = |i: usize, b: u8| match b {
        b'%' => false,
        b' ' => i != 0 && i != last,
        b => b.is_ascii_graphic(),
    };
    let length: usize = bytes
        .iter()
        .enumerate()
        .map(|(i, &b)| if kept(i, b) { 1 } else { 3 })
        .sum();
    if length > VALUE_MAX_BYTES {
        return None;
    }
    let mut out = String::with_capacity(length);
    for (i, &b) in bytes.iter().enumerate() {
        if kept(i, b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(hex_digit(b >> 4));
            out.push(hex_digit(b & 0x0F));
        }
    }
    Some(out)
}

fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789ABCDEF"[usize::from(nibble & 0x0F)])
}

#[cfg(test)]
mod tests {
    use http::header::HeaderName;
    use proptest::prelude::*;

    use super::*;
    use crate::proxy_protocol::{Limits, ProxyInfo, encode_v2, parse};

    /// A connection's PROXY v2 header carrying `tlvs`, as the listener keeps it.
    fn info(tlvs: &[Tlv<'_>]) -> ProxyInfo {
        let (s, d) = ("203.0.113.7:4711", "198.51.100.1:443");
        let bytes = encode_v2(
            s.parse().expect("test address"),
            d.parse().expect("test address"),
            tlvs,
        )
        .expect("test TLVs fit");
        let (header, _) = parse(&bytes, &Limits::default())
            .expect("a valid header")
            .expect("a complete header");
        ProxyInfo::from(header)
    }

    /// The SSL TLV's value: client bits, verify, then sub-TLVs.
    fn ssl(verify: u32, subs: &[(u8, &[u8])]) -> Vec<u8> {
        let mut out = vec![0x07];
        out.extend(verify.to_be_bytes());
        for (kind, value) in subs {
            out.push(*kind);
            out.extend(u16::try_from(value.len()).expect("fits").to_be_bytes());
            out.extend(*value);
        }
        out
    }

    fn mapping(pairs: &[(TlvField, &str)]) -> Vec<TlvHeader> {
        pairs
            .iter()
            .map(|(tlv, name)| TlvHeader {
                tlv: *tlv,
                name: HeaderName::from_bytes(name.as_bytes()).expect("test name"),
            })
            .collect()
    }

    fn all_fields() -> Vec<TlvHeader> {
        TlvField::all()
            .iter()
            .map(|f| TlvHeader {
                tlv: *f,
                name: HeaderName::from_bytes(format!("x-{}", f.key().replace('_', "-")).as_bytes())
                    .expect("test name"),
            })
            .collect()
    }

    fn get<'m>(map: &'m HeaderMap, name: &str) -> Option<&'m str> {
        map.get(name).map(|v| v.to_str().expect("visible ASCII"))
    }

    /// Percent-decoding, independent of [`encode`].
    fn decode(text: &str) -> Vec<u8> {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ASCII");
                out.push(u8::from_str_radix(hex, 16).expect("two hex digits"));
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        out
    }

    #[test]
    fn every_field_reaches_its_header() {
        let aws = [&[0x01][..], b"vpce-08d2bf15fac5001c9"].concat();
        let azure = [&[0x01][..], &0x1234_5678u32.to_le_bytes()].concat();
        let gcp = 0x0102_0304_0506_0708u64.to_be_bytes();
        let ssl = ssl(
            0,
            &[
                (Ssl::VERSION, b"TLSv1.3"),
                (Ssl::CN, b"client one"),
                (Ssl::CIPHER, b"TLS_AES_128_GCM_SHA256"),
                (Ssl::SIG_ALG, b"ECDSA-SHA256"),
                (Ssl::KEY_ALG, b"EC256"),
                (Ssl::GROUP, b"X25519"),
                (Ssl::SIG_SCHEME, b"ecdsa_secp256r1_sha256"),
            ],
        );
        let info = info(&[
            Tlv::new(Tlv::ALPN, b"h2"),
            Tlv::new(Tlv::AUTHORITY, b"app.example"),
            Tlv::new(Tlv::UNIQUE_ID, b"uid-4711"),
            Tlv::new(Tlv::NETNS, b"blue"),
            Tlv::new(Tlv::SSL, &ssl),
            Tlv::new(Tlv::AWS, &aws),
            Tlv::new(Tlv::AZURE, &azure),
            Tlv::new(Tlv::GCP, &gcp),
        ]);
        let mut headers = HeaderMap::new();
        apply(&mut headers, &all_fields(), info.tlvs());
        let expected = [
            ("x-alpn", "h2"),
            ("x-authority", "app.example"),
            ("x-unique-id", "uid-4711"),
            ("x-netns", "blue"),
            ("x-ssl-version", "TLSv1.3"),
            ("x-ssl-cn", "client one"),
            ("x-ssl-cipher", "TLS_AES_128_GCM_SHA256"),
            ("x-ssl-sig-alg", "ECDSA-SHA256"),
            ("x-ssl-key-alg", "EC256"),
            ("x-ssl-group", "X25519"),
            ("x-ssl-sig-scheme", "ecdsa_secp256r1_sha256"),
            ("x-ssl-verify", "0"),
            ("x-aws-vpce-id", "vpce-08d2bf15fac5001c9"),
            ("x-azure-link-id", "305419896"),
            ("x-gcp-psc-connection-id", "72623859790382856"),
        ];
        for (name, value) in expected {
            assert_eq!(get(&headers, name), Some(value), "{name}");
        }
        assert_eq!(headers.len(), expected.len());
    }

    #[test]
    fn client_headers_of_mapped_names_are_removed_even_without_tlvs() {
        let map = mapping(&[
            (TlvField::Authority, "x-pp-authority"),
            (TlvField::SslCn, "x-client-cn"),
        ]);
        let spoofed = || {
            let mut h = HeaderMap::new();
            for (k, v) in [
                ("x-pp-authority", "evil.example"),
                ("X-Client-CN", "admin"),
                ("x-client-cn", "root"),
                ("x-other", "kept"),
            ] {
                h.append(
                    HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    HeaderValue::from_static(v),
                );
            }
            h
        };
        // No PROXY v2 header at all (v1, or none).
        let mut headers = spoofed();
        apply(&mut headers, &map, Tlvs::default());
        assert_eq!(get(&headers, "x-pp-authority"), None);
        assert_eq!(get(&headers, "x-client-cn"), None);
        assert_eq!(get(&headers, "x-other"), Some("kept"));
        // A v2 header with other TLVs only.
        let mut headers = spoofed();
        apply(
            &mut headers,
            &map,
            info(&[Tlv::new(Tlv::UNIQUE_ID, b"u")]).tlvs(),
        );
        assert_eq!(get(&headers, "x-client-cn"), None);
        // A v2 header with the TLV: one value, ours.
        let mut headers = spoofed();
        let carried = info(&[Tlv::new(Tlv::AUTHORITY, b"app.example")]);
        apply(&mut headers, &map, carried.tlvs());
        let values: Vec<_> = headers.get_all("x-pp-authority").iter().collect();
        assert_eq!(values, [&HeaderValue::from_static("app.example")]);
    }

    #[test]
    fn cn_of_an_unverified_certificate_is_not_sent() {
        let map = mapping(&[(TlvField::SslCn, "x-cn"), (TlvField::SslVerify, "x-verify")]);
        let unverified = ssl(20, &[(Ssl::CN, b"admin")]);
        let mut headers = HeaderMap::new();
        apply(
            &mut headers,
            &map,
            info(&[Tlv::new(Tlv::SSL, &unverified)]).tlvs(),
        );
        assert_eq!(get(&headers, "x-cn"), None);
        assert_eq!(get(&headers, "x-verify"), Some("20"));
    }

    #[test]
    fn control_bytes_and_non_ascii_are_percent_encoded() {
        let cases: [(&[u8], &str); 8] = [
            (b"app.example", "app.example"),
            (b"a\r\nx-evil: 1", "a%0D%0Ax-evil: 1"),
            (b"nul\0tab\tdel\x7f", "nul%00tab%09del%7F"),
            ("Müller".as_bytes(), "M%C3%BCller"),
            (b"\xff\xfe", "%FF%FE"),
            (b"100%", "100%25"),
            (b" padded ", "%20padded%20"),
            (b"John Smith", "John Smith"),
        ];
        for (bytes, text) in cases {
            assert_eq!(encode(bytes).as_deref(), Some(text), "{bytes:?}");
        }
        assert_eq!(encode(b"").as_deref(), Some(""));
        assert_eq!(encode(b" ").as_deref(), Some("%20"));
        // A value that looks encoded is itself encoded, so the two cannot be confused.
        assert_ne!(encode(b"%41"), encode(b"A"));
    }

    #[test]
    fn values_are_bounded_after_encoding_and_never_cut() {
        let at_limit = vec![b'a'; VALUE_MAX_BYTES];
        assert_eq!(encode(&at_limit).map(|s| s.len()), Some(VALUE_MAX_BYTES));
        assert_eq!(encode(&vec![b'a'; VALUE_MAX_BYTES + 1]), None);
        // 341 bytes that each take three: 1023; one more byte of either kind is over.
        let encoded = vec![b'\n'; VALUE_MAX_BYTES / 3];
        assert!(encode(&encoded).is_some());
        assert_eq!(
            encode(&[&encoded[..], b"a"].concat()).map(|s| s.len()),
            Some(1024)
        );
        assert_eq!(encode(&[&encoded[..], b"\n"].concat()), None);
        // Too long: the header is left out, and the client's is still removed.
        let long_cn = vec![b'c'; VALUE_MAX_BYTES + 1];
        let cn = ssl(0, &[(Ssl::CN, &long_cn)]);
        let mut headers = HeaderMap::new();
        headers.insert("x-cn", HeaderValue::from_static("admin"));
        let map = mapping(&[(TlvField::SslCn, "x-cn")]);
        let limits = Limits::default();
        let bytes = encode_v2(
            "192.0.2.1:1".parse().expect("addr"),
            "192.0.2.2:2".parse().expect("addr"),
            &[Tlv::new(Tlv::SSL, &cn)],
        )
        .expect("fits");
        let (header, _) = parse(&bytes, &limits).expect("valid").expect("complete");
        apply(&mut headers, &map, ProxyInfo::from(header).tlvs());
        assert_eq!(get(&headers, "x-cn"), None);
    }

    proptest! {
        #[test]
        fn encoding_is_a_valid_header_value_that_decodes_to_the_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let text = encode(&bytes).expect("300 bytes encode within the bound");
            let value = HeaderValue::from_str(&text).expect("a valid header value");
            prop_assert!(text.bytes().all(|b| b == b' ' || b.is_ascii_graphic()));
            prop_assert!(!text.starts_with(' ') && !text.ends_with(' '));
            prop_assert_eq!(value.as_bytes(), text.as_bytes());
            prop_assert_eq!(decode(&text), bytes);
        }
    }
}
