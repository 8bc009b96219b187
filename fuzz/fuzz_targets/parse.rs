//! Fuzzes `proxy_protocol::parse`. No input may panic, hang or read outside itself, and
//! every answer must hold together: a complete header fits in the input and parses the
//! same on its own; its accessors and its owned copy can be read; a prefix either needs
//! more bytes or gets the same verdict; a lower length ceiling only ever adds rejections.
#![no_main]

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use proxy::proxy_protocol::{Header, Limits, ParseError, ProxyInfo, Tlvs, parse};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let whole = parse(data, &limits);
    if let Ok(Some((header, used))) = whole {
        assert!(used <= data.len());
        assert_eq!(parse(&data[..used], &limits), whole);
        read_everything(&header);
        let info = ProxyInfo::from(header);
        assert_eq!(info.client(), header.client());
        assert_eq!(info.tlvs(), header.tlvs());
    }
    for cut in [1, 13, 16, data.len() / 2, data.len().saturating_sub(1)] {
        if cut < data.len() {
            let prefix = parse(&data[..cut], &limits);
            assert!(
                prefix == Ok(None) || prefix == whole,
                "cut at {cut}: {prefix:?} vs {whole:?}"
            );
        }
    }
    let tight = parse(
        data,
        &Limits {
            max_v2_len: 64,
            ..Limits::default()
        },
    );
    assert!(tight == whole || matches!(tight, Err(ParseError::V2TooLong { .. })));
    // Accepting mixed-family v1 lines only ever turns rejections into headers, and keeps
    // the prefix rule.
    let mixed_limits = Limits {
        accept_v1_mixed_families: true,
        ..Limits::default()
    };
    let mixed = parse(data, &mixed_limits);
    if let Ok(Some((header, _))) = whole {
        assert_eq!(mixed, Ok(Some((header, header_len(&whole)))));
    }
    if let Ok(Some((header, used))) = mixed {
        assert!(used <= data.len());
        read_everything(&header);
    }
    for cut in [1, 13, data.len() / 2, data.len().saturating_sub(1)] {
        if cut < data.len() {
            let prefix = parse(&data[..cut], &mixed_limits);
            assert!(
                prefix == Ok(None) || prefix == mixed,
                "mixed, cut at {cut}: {prefix:?} vs {mixed:?}"
            );
        }
    }
});

fn header_len(parsed: &Result<Option<(Header<'_>, usize)>, ParseError>) -> usize {
    match parsed {
        Ok(Some((_, used))) => *used,
        _ => 0,
    }
}

fn read_everything(header: &Header<'_>) {
    black_box((header.version(), header.command(), header.addresses()));
    black_box((header.client(), header.destination(), header.fallback()));
    read_tlvs(header.tlvs());
}

fn read_tlvs(tlvs: Tlvs<'_>) {
    let total: usize = tlvs.iter().map(|t| 3 + t.value().len()).sum();
    assert_eq!(
        total,
        tlvs.as_bytes().len(),
        "iteration covers the area exactly"
    );
    black_box((tlvs.alpn(), tlvs.authority(), tlvs.crc32c(), tlvs.netns()));
    black_box((
        tlvs.aws_vpce_id(),
        tlvs.azure_link_id(),
        tlvs.gcp_psc_connection_id(),
    ));
    assert!(tlvs.unique_id().is_none_or(|id| id.len() <= 128));
    if let Some(ssl) = tlvs.ssl() {
        black_box((ssl.client().bits(), ssl.verify(), ssl.version(), ssl.cn()));
        black_box((ssl.cipher(), ssl.sig_alg(), ssl.key_alg(), ssl.group()));
        black_box((ssl.sig_scheme(), ssl.client_cert()));
        assert!(ssl.sub_tlvs().count() <= tlvs.as_bytes().len() / 3);
    }
}
