//! The eBPF programs' cost per frame, as the kernel measures it: BPF_PROG_TEST_RUN runs
//! the loaded program `REPEAT` times on one crafted frame and reports the mean time per
//! run. Each frame kind is measured `ROUNDS` times; the table gives the median and the
//! spread. Run with `cargo xtask bench kernel` (needs CAP_BPF).

#[path = "../tests/it/common/frames.rs"]
#[expect(
    dead_code,
    reason = "the benchmark uses only some of the frame builders"
)]
mod frames;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use frames::*;
use proxy::kernel::{Kernel, Plan, Program, XdpMode};
use proxy::trust::TrustList;

const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 7;
const PORT: u16 = 443;
const TRUSTED4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const UNTRUSTED4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const TRUSTED6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
const UNTRUSTED6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 7);

fn cases() -> Vec<(&'static str, Vec<u8>)> {
    let syn = tcp(PORT, SYN);
    let chain4 = [
        ext(HOPOPTS, DSTOPTS, 0),
        ext(DSTOPTS, ROUTING, 1),
        ext(ROUTING, FRAGMENT, 0),
        ext(FRAGMENT, TCP, 0),
        syn.clone(),
    ]
    .concat();
    vec![
        ("IPv4 SYN, trusted", tcp4(TRUSTED4, PORT, SYN)),
        ("IPv4 SYN, untrusted (drop)", tcp4(UNTRUSTED4, PORT, SYN)),
        ("IPv6 SYN, trusted", tcp6(TRUSTED6, PORT, SYN)),
        ("IPv6 SYN, untrusted (drop)", tcp6(UNTRUSTED6, PORT, SYN)),
        (
            "IPv4 ACK with data, untrusted",
            tcp4(UNTRUSTED4, PORT, ACK | PSH),
        ),
        ("IPv4 SYN to an unprotected port", tcp4(UNTRUSTED4, 22, SYN)),
        (
            "IPv4-mapped IPv6 SYN, untrusted",
            tcp6(UNTRUSTED4.to_ipv6_mapped(), PORT, SYN),
        ),
        (
            "802.1Q, IPv4 SYN, untrusted",
            eth(
                &[ETH_P_8021Q],
                ETH_P_IP,
                &ipv4(UNTRUSTED4, TCP, 0, Frag::default(), &syn),
            ),
        ),
        (
            "802.1ad+802.1Q, IPv4 SYN, untrusted",
            eth(
                &[ETH_P_8021AD, ETH_P_8021Q],
                ETH_P_IP,
                &ipv4(UNTRUSTED4, TCP, 0, Frag::default(), &syn),
            ),
        ),
        (
            "IPv4 with 40 bytes of options, SYN, untrusted",
            eth(
                &[],
                ETH_P_IP,
                &ipv4(UNTRUSTED4, TCP, 10, Frag::default(), &syn),
            ),
        ),
        (
            "IPv4 first fragment, SYN, untrusted",
            eth(
                &[],
                ETH_P_IP,
                &ipv4(
                    UNTRUSTED4,
                    TCP,
                    0,
                    Frag {
                        more: true,
                        offset: 0,
                    },
                    &syn,
                ),
            ),
        ),
        (
            "IPv4 tiny first fragment, untrusted",
            eth(
                &[],
                ETH_P_IP,
                &ipv4(
                    UNTRUSTED4,
                    TCP,
                    0,
                    Frag {
                        more: true,
                        offset: 0,
                    },
                    &syn[..8],
                ),
            ),
        ),
        (
            "IPv4 tiny first fragment padded to 60 bytes, untrusted",
            pad(
                &eth(
                    &[],
                    ETH_P_IP,
                    &ipv4(
                        UNTRUSTED4,
                        TCP,
                        0,
                        Frag {
                            more: true,
                            offset: 0,
                        },
                        &syn[..8],
                    ),
                ),
                60,
                0,
            ),
        ),
        (
            "IPv4 non-first fragment",
            eth(
                &[],
                ETH_P_IP,
                &ipv4(
                    UNTRUSTED4,
                    TCP,
                    0,
                    Frag {
                        more: false,
                        offset: 1,
                    },
                    &[0u8; 12],
                ),
            ),
        ),
        (
            "IPv6, 4 extension headers, SYN, untrusted",
            eth(&[], ETH_P_IPV6, &ipv6(UNTRUSTED6, HOPOPTS, &chain4)),
        ),
        (
            "IPv4 SYN cut in the TCP header, untrusted",
            tcp4(UNTRUSTED4, PORT, SYN)[..14 + 20 + 10].to_vec(),
        ),
        (
            "UDP",
            eth(
                &[],
                ETH_P_IP,
                &ipv4(UNTRUSTED4, UDP, 0, Frag::default(), &[0u8; 8]),
            ),
        ),
    ]
}

fn measure(kernel: &Kernel, program: Program, frame: &[u8]) -> (u32, Vec<Duration>) {
    let mut verdict = 0;
    let mut times: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let (v, t) = kernel
                .test_run(program, frame, REPEAT)
                .expect("BPF_PROG_TEST_RUN");
            verdict = v;
            t
        })
        .collect();
    times.sort();
    (verdict, times)
}

fn row(name: &str, program: &str, verdict: &str, times: &[Duration]) {
    let ns = |d: &Duration| d.as_nanos();
    println!(
        "| {name} | {program} | {verdict} | {} | {}–{} |",
        ns(&times[times.len() / 2]),
        ns(&times[0]),
        ns(&times[times.len() - 1])
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument selects nothing here.
    let trust = TrustList::new(
        ["192.0.2.0/24", "10.0.0.0/8", "2001:db8::/64"].map(|s| s.parse().expect("prefix")),
    );
    let xdp_plan = Plan::Xdp {
        interfaces: Vec::new(),
        attach: XdpMode::Auto,
    };
    let xdp = match Kernel::start(xdp_plan, &trust, &[PORT], false) {
        Ok(k) => k,
        Err(err) => {
            eprintln!("kernel bench skipped: {err}");
            return;
        }
    };
    let socket =
        Kernel::start(Plan::Socket, &trust, &[], false).expect("loading the socket filter");
    println!(
        "BPF_PROG_TEST_RUN, {REPEAT} runs per round, {ROUNDS} rounds; ns per frame as the kernel reports it.\n"
    );
    println!("| frame | program | verdict | median ns | min–max ns |");
    println!("| --- | --- | --- | ---: | ---: |");
    for (name, frame) in cases() {
        let (verdict, times) = measure(&xdp, Program::Xdp, &frame);
        let verdict = match verdict {
            1 => "drop",
            2 => "pass",
            _ => "other",
        };
        row(name, "XDP", verdict, &times);
    }
    for (name, frame) in cases().into_iter().take(4) {
        let (verdict, times) = measure(&socket, Program::Socket, &frame);
        row(
            name,
            "socket filter",
            if verdict == 0 { "drop" } else { "pass" },
            &times,
        );
    }
}
