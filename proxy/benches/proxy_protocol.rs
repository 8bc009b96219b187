//! `parse` against the `ppp` and `proxy-header` crates, side by side in one run, on v1
//! TCP4, v1 TCP6, v2 IPv4, and v2 IPv6 with three TLVs and CRC32C. Each parser parses,
//! then yields both addresses and walks every TLV, as a receiver must. trustgate's parser
//! also checks the CRC32C; the other two do not, so the same header with a NOOP in its
//! place is measured too, for a like-for-like row. After the run, the medians over
//! several interleaved rounds and the ratios are printed as a Markdown table.

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use criterion::{BenchmarkId, Criterion};
use proxy::proxy_protocol::{Limits, parse};

const V1_TCP4: &[u8] = b"PROXY TCP4 203.0.113.195 192.168.100.200 56324 443\r\n";
const V1_TCP6: &[u8] =
    b"PROXY TCP6 2001:db8:85a3::8a2e:370:7334 2001:db8:1234:5678::1 56324 443\r\n";
const SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
    let length = u16::try_from(value.len())
        .expect("short value")
        .to_be_bytes();
    [&[kind][..], &length, value].concat()
}

fn v2(fam: u8, block: &[u8], tlvs: &[u8]) -> Vec<u8> {
    let length = u16::try_from(block.len() + tlvs.len())
        .expect("short header")
        .to_be_bytes();
    [SIGNATURE, &[0x21, fam], &length, block, tlvs].concat()
}

fn v2_ipv4() -> Vec<u8> {
    v2(
        0x11,
        &[203, 0, 113, 195, 192, 168, 100, 200, 0xdc, 0x04, 0x01, 0xbb],
        &[],
    )
}

/// IPv6 with ALPN, AUTHORITY and UNIQUE_ID, and with `crc` a CRC32C first, in HAProxy's
/// order. The checksum TLV is then a NOOP of the same size, so both are 112 bytes.
fn v2_ipv6_tlvs(crc: bool) -> Vec<u8> {
    let source: std::net::Ipv6Addr = "2001:db8:85a3::8a2e:370:7334".parse().expect("literal");
    let destination: std::net::Ipv6Addr = "2001:db8:1234:5678::1".parse().expect("literal");
    let block = [
        &source.octets()[..],
        &destination.octets(),
        &[0xdc, 0x04, 0x01, 0xbb],
    ]
    .concat();
    let tlvs = [
        tlv(if crc { 0x03 } else { 0x04 }, &[0; 4]),
        tlv(0x01, b"h2"),
        tlv(0x02, b"www.example.com"),
        tlv(0x05, b"4f2a9c1e-0d3b-4c6e-9a8f-1b2c3d4e5f60"),
    ]
    .concat();
    let mut header = v2(0x21, &block, &tlvs);
    if crc {
        let crc_at = 16 + block.len() + 3;
        let crc = crc32c::crc32c(&header);
        header[crc_at..crc_at + 4].copy_from_slice(&crc.to_be_bytes());
    }
    header
}

/// Client, destination, and the number of TLVs walked.
type Parsed = (Option<SocketAddr>, Option<SocketAddr>, usize);

fn trustgate(input: &[u8]) -> Parsed {
    let (header, _) = parse(input, &Limits::default())
        .expect("valid")
        .expect("complete");
    let tlvs = header.tlvs().iter().count();
    (header.client(), header.destination(), tlvs)
}

fn ppp(input: &[u8]) -> Parsed {
    match ppp::HeaderResult::parse(input) {
        ppp::HeaderResult::V1(Ok(header)) => match header.addresses {
            ppp::v1::Addresses::Tcp4(a) => (
                Some(SocketAddr::new(a.source_address.into(), a.source_port)),
                Some(SocketAddr::new(
                    a.destination_address.into(),
                    a.destination_port,
                )),
                0,
            ),
            ppp::v1::Addresses::Tcp6(a) => (
                Some(SocketAddr::new(a.source_address.into(), a.source_port)),
                Some(SocketAddr::new(
                    a.destination_address.into(),
                    a.destination_port,
                )),
                0,
            ),
            ppp::v1::Addresses::Unknown => (None, None, 0),
        },
        ppp::HeaderResult::V2(Ok(header)) => {
            let tlvs = header
                .tlvs()
                .map(|t| t.map(|_| 1))
                .sum::<Result<usize, _>>()
                .expect("valid TLVs");
            let (client, destination) = match header.addresses {
                ppp::v2::Addresses::IPv4(a) => (
                    SocketAddr::new(a.source_address.into(), a.source_port),
                    SocketAddr::new(a.destination_address.into(), a.destination_port),
                ),
                ppp::v2::Addresses::IPv6(a) => (
                    SocketAddr::new(a.source_address.into(), a.source_port),
                    SocketAddr::new(a.destination_address.into(), a.destination_port),
                ),
                _ => panic!("the benchmark's headers are TCP"),
            };
            (Some(client), Some(destination), tlvs)
        }
        other => panic!("ppp rejected a benchmark header: {other:?}"),
    }
}

fn proxy_header(input: &[u8]) -> Parsed {
    let (header, _) = proxy_header::ProxyHeader::parse(input, proxy_header::ParseConfig::default())
        .expect("valid");
    let tlvs = header
        .tlvs()
        .map(|t| t.map(|_| 1))
        .sum::<Result<usize, _>>()
        .expect("valid TLVs");
    let address = header.proxied_address();
    (
        address.map(|a| a.source),
        address.map(|a| a.destination),
        tlvs,
    )
}

const PARSERS: [&str; 3] = ["trustgate", "ppp", "proxy-header"];
/// Rounds of the three parsers, in rotating order; the table reports medians over them,
/// as this machine is shared and its speed drifts within a run.
const ROUNDS: usize = 5;

fn cases() -> [(&'static str, Vec<u8>); 5] {
    [
        ("v1_tcp4", V1_TCP4.to_vec()),
        ("v1_tcp6", V1_TCP6.to_vec()),
        ("v2_ipv4", v2_ipv4()),
        ("v2_ipv6_3tlvs_crc32c", v2_ipv6_tlvs(true)),
        ("v2_ipv6_3tlvs_noop", v2_ipv6_tlvs(false)),
    ]
}

fn parsers(c: &mut Criterion) {
    let cases = cases();
    for (name, input) in &cases {
        let expected = trustgate(input);
        assert_eq!(ppp(input), expected, "{name}: ppp agrees");
        assert_eq!(proxy_header(input), expected, "{name}: proxy-header agrees");
    }
    for round in 1..=ROUNDS {
        for (name, input) in &cases {
            let mut group = c.benchmark_group(*name);
            group.warm_up_time(Duration::from_millis(300));
            group.measurement_time(Duration::from_secs(1));
            for i in 0..PARSERS.len() {
                let parser = PARSERS[(i + round) % PARSERS.len()];
                let id = BenchmarkId::new(parser, round);
                match parser {
                    "trustgate" => {
                        group.bench_function(id, |b| b.iter(|| trustgate(black_box(input))))
                    }
                    "ppp" => group.bench_function(id, |b| b.iter(|| ppp(black_box(input)))),
                    _ => group.bench_function(id, |b| b.iter(|| proxy_header(black_box(input)))),
                };
            }
            group.finish();
        }
    }
}

fn main() {
    let started = SystemTime::now();
    let mut criterion = Criterion::default().configure_from_args();
    parsers(&mut criterion);
    criterion.final_summary();
    if !std::env::args().any(|a| a == "--test" || a == "--list") {
        print_ratios(started);
    }
}

/// Where criterion saved its estimates: `$CRITERION_HOME`, `$CARGO_TARGET_DIR/criterion`,
/// or `criterion` in the target directory this benchmark was built in.
fn criterion_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return Some(home.into());
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(target).join("criterion"));
    }
    // The benchmark runs as <target>/<profile>/deps/<name>.
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.parent()?.join("criterion"))
}

/// The median of `case/parser/round`, in nanoseconds, if measured since `started`.
fn median_ns(
    dir: &Path,
    case: &str,
    parser: &str,
    round: usize,
    started: SystemTime,
) -> Option<f64> {
    let path = dir
        .join(case)
        .join(parser)
        .join(round.to_string())
        .join("new/estimates.json");
    if std::fs::metadata(&path).and_then(|m| m.modified()).ok()? < started {
        return None;
    }
    let estimates: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    estimates["median"]["point_estimate"].as_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Prints, per header, each parser's median time over the rounds and the median over the
/// rounds of how many times longer the other parsers took than trustgate (with the range).
fn print_ratios(started: SystemTime) {
    let Some(dir) = criterion_dir() else {
        eprintln!("criterion's output directory not found; no ratio table");
        return;
    };
    println!(
        "\n| header | trustgate | ppp | proxy-header | ppp / trustgate | proxy-header / trustgate |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (case, _) in cases() {
        let rounds: Vec<[f64; 3]> = (1..=ROUNDS)
            .filter_map(|round| {
                let [a, b, c] = PARSERS.map(|parser| median_ns(&dir, case, parser, round, started));
                Some([a?, b?, c?])
            })
            .collect();
        if rounds.is_empty() {
            continue; // filtered out of this run
        }
        let time = |i: usize| median(rounds.iter().map(|r| r[i]).collect());
        let ratio = |i: usize| {
            let ratios: Vec<f64> = rounds.iter().map(|r| r[i] / r[0]).collect();
            let (low, high) = ratios
                .iter()
                .fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
            format!("{:.2} ({low:.2}–{high:.2})", median(ratios))
        };
        println!(
            "| {case} | {:.1} ns | {:.1} ns | {:.1} ns | {} | {} |",
            time(0),
            time(1),
            time(2),
            ratio(1),
            ratio(2)
        );
    }
    println!("\nMedians over {ROUNDS} rounds; ratios are per round (range in brackets).");
}
