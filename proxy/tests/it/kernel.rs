//! The eBPF programs on crafted frames, through BPF_PROG_TEST_RUN on the loaded object:
//! every case asserts the verdict and which counter moved. Needs CAP_BPF; without it
//! each test skips loudly (and fails where TRUSTGATE_REQUIRE_ALL is set).

mod model;

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::common::catalogue::{
    self, Case, MALFORMED, NONE, OTHER_PORT, PORT, SEEN4_DROPPED, SEEN4_PASSED, SEEN6_DROPPED,
    SEEN6_PASSED, TRUSTED_PREFIXES, TRUSTED4, TRUSTED6, UNTRUSTED4, UNTRUSTED6, Verdict,
};
use crate::common::{
    self,
    frames::{self, *},
};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use proxy::kernel::{Kernel, KernelError, Plan, Program, ProgramCounters, XdpMode};
use proxy::trust::{Class, TrustList};
use proxy_common::Counter;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

fn list(nets: &[&str]) -> TrustList {
    TrustList::new(nets.iter().map(|s| s.parse().expect("test prefix")))
}

fn default_list() -> TrustList {
    list(&TRUSTED_PREFIXES)
}

const DIRECT4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
const DIRECT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xd, 0, 0, 0, 0, 0x20);
/// Inside the PROXY /24, carved out as DIRECT by a /32.
const CARVED4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 99);
/// Inside the DIRECT /64, carved out as PROXY by a /128.
const CARVED6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xd, 0, 0, 0, 0, 0x99);

/// PROXY: [`default_list`] and 2001:db8:d::99/128; DIRECT: 198.51.100.0/24,
/// 192.0.2.99/32 and 2001:db8:d::/64. Each family nests one class in the other.
fn classed_list() -> TrustList {
    let p = ["192.0.2.0/24", "2001:db8::/64", "2001:db8:d::99/128"];
    let d = ["198.51.100.0/24", "192.0.2.99/32", "2001:db8:d::/64"];
    let net = |s: &&str| s.parse().expect("test prefix");
    TrustList::with_classes(
        p.iter()
            .map(|s| (net(s), Class::Proxy))
            .chain(d.iter().map(|s| (net(s), Class::Direct))),
    )
    .expect("no prefix in both classes")
}

/// A loaded program (not attached anywhere) and a way to run it and read counters.
struct Harness {
    kernel: Kernel,
    program: Program,
}

impl Harness {
    fn xdp(trust: &TrustList) -> Option<Harness> {
        Self::start(
            Plan::Xdp {
                interfaces: Vec::new(),
                attach: XdpMode::Auto,
            },
            trust,
            Program::Xdp,
        )
    }

    /// The L3 XDP program (frames start at the IP header), loaded beside the Ethernet
    /// one as `Kernel::start` does when an interface needs it.
    fn xdp_l3(trust: &TrustList) -> Option<Harness> {
        let mut h = Self::xdp(trust)?;
        h.kernel.load_xdp_l3().expect("loading the L3 XDP program");
        h.program = Program::XdpL3;
        Some(h)
    }

    fn socket(trust: &TrustList) -> Option<Harness> {
        Self::start(Plan::Socket, trust, Program::Socket)
    }

    fn start(plan: Plan, trust: &TrustList, program: Program) -> Option<Harness> {
        match Kernel::start(plan, trust, &[PORT], false) {
            Ok(kernel) => {
                // Socket mode falls back to classic BPF silently when eBPF cannot load;
                // these tests are about the eBPF program, so that is a skip too.
                if kernel.counters(program).ok().flatten().is_none() {
                    common::skip("the eBPF socket filter did not load (no CAP_BPF?)");
                    return None;
                }
                Some(Harness { kernel, program })
            }
            Err(err @ (KernelError::Permission { .. } | KernelError::ObjectMissing)) => {
                common::skip(&format!("cannot load the eBPF object: {err}"));
                None
            }
            Err(err) => panic!("loading the eBPF object failed: {err:#?}"),
        }
    }

    fn counters(&self) -> ProgramCounters {
        self.kernel
            .counters(self.program)
            .expect("reading counters")
            .expect("program loaded")
    }

    /// Runs `frame`, asserts the verdict, and returns which counters moved.
    fn run(&self, frame: &[u8]) -> (u32, Vec<Counter>) {
        let before = self.counters();
        let (verdict, _) = self
            .kernel
            .test_run(self.program, frame, 1)
            .expect("BPF_PROG_TEST_RUN");
        let after = self.counters();
        let moved = Counter::ALL
            .into_iter()
            .filter(|c| after.get(*c) != before.get(*c))
            .collect();
        (verdict, moved)
    }

    fn assert_xdp(&self, frame: &[u8], verdict: u32, moved: &[Counter], case: &str) {
        let (got, got_moved) = self.run(frame);
        assert_eq!(got, verdict, "{case}: verdict (1 = drop, 2 = pass)");
        assert_eq!(got_moved, moved, "{case}: counters that moved");
    }

    /// Runs a catalogued case on the XDP program and asserts what the catalogue says.
    fn assert_case(&self, case: &Case) {
        let verdict = match case.verdict {
            Verdict::Pass => XDP_PASS,
            Verdict::Drop => XDP_DROP,
        };
        self.assert_xdp(&case.frame, verdict, case.moved, case.name);
    }
}

/// A passed SYN from a DIRECT-class source.
const SEEN4_DIRECT: &[Counter] = &[
    Counter::SynSeenV4,
    Counter::SynPassedV4,
    Counter::SynPassedDirect,
];
const SEEN6_DIRECT: &[Counter] = &[
    Counter::SynSeenV6,
    Counter::SynPassedV6,
    Counter::SynPassedDirect,
];

#[test]
fn xdp_trusted_syn_passes_untrusted_syn_drops() {
    let Some(h) = Harness::xdp(&default_list()) else {
        return;
    };
    for case in [
        catalogue::syn4_trusted(),
        catalogue::syn4_untrusted(),
        catalogue::syn6_trusted(),
        catalogue::syn6_untrusted(),
    ] {
        h.assert_case(&case);
    }
}

/// Every frame the kernel benchmark times, with the verdict and counters it is timed for.
#[test]
fn xdp_gives_every_catalogued_frame_its_verdict_and_counters() {
    let Some(h) = Harness::xdp(&default_list()) else {
        return;
    };
    for case in catalogue::all() {
        h.assert_case(&case);
    }
}

/// The catalogued frames the benchmark also times on the socket filter: same verdicts,
/// same counters.
#[test]
fn socket_filter_gives_its_catalogued_frames_their_verdicts_and_counters() {
    let Some(h) = Harness::socket(&default_list()) else {
        return;
    };
    for case in catalogue::all().into_iter().filter(|c| c.socket) {
        let (verdict, moved) = h.run(&case.frame);
        let expect = match case.verdict {
            Verdict::Pass => (case.frame.len() - 14) as u32,
            Verdict::Drop => 0,
        };
        assert_eq!(verdict, expect, "{}: bytes kept (0 = drop)", case.name);
        assert_eq!(moved, case.moved, "{}: counters", case.name);
    }
}

/// Both programs on the classed list: PROXY and DIRECT sources pass, each counted under
/// its class (the longest prefix's), everyone else drops; mapped sources go by the IPv4
/// trie.
fn classes_pass_and_count_apart(h: &Harness) {
    let cases = [
        (tcp4(TRUSTED4, PORT, SYN), true, SEEN4_PASSED, "proxy v4"),
        (tcp4(DIRECT4, PORT, SYN), true, SEEN4_DIRECT, "direct v4"),
        (
            tcp4(CARVED4, PORT, SYN),
            true,
            SEEN4_DIRECT,
            "direct /32 inside a proxy /24",
        ),
        (
            tcp6(DIRECT4.to_ipv6_mapped(), PORT, SYN),
            true,
            SEEN4_DIRECT,
            "mapped direct",
        ),
        (
            tcp4(UNTRUSTED4, PORT, SYN),
            false,
            SEEN4_DROPPED,
            "neither v4",
        ),
        (tcp6(TRUSTED6, PORT, SYN), true, SEEN6_PASSED, "proxy v6"),
        (tcp6(DIRECT6, PORT, SYN), true, SEEN6_DIRECT, "direct v6"),
        (
            tcp6(CARVED6, PORT, SYN),
            true,
            SEEN6_PASSED,
            "proxy /128 inside a direct /64",
        ),
        (
            tcp6(UNTRUSTED6, PORT, SYN),
            false,
            SEEN6_DROPPED,
            "neither v6",
        ),
        (tcp4(DIRECT4, PORT, ACK), true, NONE, "direct ACK"),
    ];
    for (frame, pass, moved, name) in cases {
        let (verdict, got_moved) = h.run(&frame);
        let want = match (h.program, pass) {
            (Program::Xdp | Program::XdpL3, true) => XDP_PASS,
            (Program::Xdp | Program::XdpL3, false) => XDP_DROP,
            (Program::Socket, true) => (frame.len() - 14) as u32,
            (Program::Socket, false) => 0,
        };
        assert_eq!(verdict, want, "{name}: verdict");
        assert_eq!(got_moved, moved, "{name}: counters that moved");
    }
    let c = h.counters();
    assert_eq!(c.get(Counter::SynPassedProxy), 3, "proxy SYNs passed");
    assert_eq!(c.get(Counter::SynPassedDirect), 4, "direct SYNs passed");
    // The class counters split the passed SYNs, no more and no less.
    assert_eq!(
        c.get(Counter::SynPassedV4) + c.get(Counter::SynPassedV6),
        c.get(Counter::SynPassedProxy) + c.get(Counter::SynPassedDirect)
    );
}

#[test]
fn xdp_passes_both_classes_counted_apart_and_drops_the_rest() {
    let Some(h) = Harness::xdp(&classed_list()) else {
        return;
    };
    classes_pass_and_count_apart(&h);
}

#[test]
fn socket_filter_passes_both_classes_counted_apart_and_drops_the_rest() {
    let Some(h) = Harness::socket(&classed_list()) else {
        return;
    };
    classes_pass_and_count_apart(&h);
}

#[test]
fn xdp_reload_moves_a_prefix_between_classes_in_place() {
    let net = |s: &str| s.parse().expect("test prefix");
    let with = |class_of_host| {
        TrustList::with_classes([
            (net("192.0.2.0/24"), Class::Proxy),
            (net("198.51.100.20/32"), class_of_host),
        ])
        .expect("no conflict")
    };
    let Some(mut h) = Harness::xdp(&with(Class::Proxy)) else {
        return;
    };
    h.assert_xdp(
        &tcp4(DIRECT4, PORT, SYN),
        XDP_PASS,
        SEEN4_PASSED,
        "as proxy",
    );
    h.kernel.sync(&with(Class::Direct)).expect("sync");
    h.assert_xdp(
        &tcp4(DIRECT4, PORT, SYN),
        XDP_PASS,
        SEEN4_DIRECT,
        "moved to direct",
    );
    h.kernel.sync(&with(Class::Proxy)).expect("sync");
    h.assert_xdp(
        &tcp4(DIRECT4, PORT, SYN),
        XDP_PASS,
        SEEN4_PASSED,
        "moved back to proxy",
    );
    h.kernel.sync(&list(&["192.0.2.0/24"])).expect("sync");
    h.assert_xdp(
        &tcp4(DIRECT4, PORT, SYN),
        XDP_DROP,
        SEEN4_DROPPED,
        "removed",
    );
}

#[test]
fn xdp_passes_every_other_segment_from_untrusted_sources() {
    let Some(h) = Harness::xdp(&default_list()) else {
        return;
    };
    for (flags, name) in [
        (SYN | ACK, "SYN-ACK"),
        (ACK, "ACK"),
        (RST, "RST"),
        (PSH | ACK, "data"),
        (0, "no flags"),
    ] {
        h.assert_xdp(&tcp4(UNTRUSTED4, PORT, flags), XDP_PASS, NONE, name);
        h.assert_xdp(&tcp6(UNTRUSTED6, PORT, flags), XDP_PASS, NONE, name);
    }
}

#[test]
fn xdp_passes_syn_to_unprotected_port_and_non_tcp() {
    let Some(h) = Harness::xdp(&default_list()) else {
        return;
    };
    h.assert_case(&catalogue::syn4_unprotected_port());
    h.assert_xdp(
        &tcp6(UNTRUSTED6, OTHER_PORT, SYN),
        XDP_PASS,
        NONE,
        "v6 other port",
    );
    h.assert_case(&catalogue::udp4());
    let arp = eth(&[], 0x0806, &[0u8; 28]);
    h.assert_xdp(&arp, XDP_PASS, NONE, "arp");
}

#[test]
fn xdp_looks_through_one_and_two_vlan_tags_but_not_three() {
    let Some(h) = Harness::xdp(&default_list()) else {
        return;
    };
    let trusted = ipv4(TRUSTED4, TCP, 0, Frag::default(), &frames::tcp(PORT, SYN));
    h.assert_case(&catalogue::vlan_syn4_untrusted());
    h.assert_case(&catalogue::qinq_syn4_untrusted());
    h.assert_xdp(
        &eth(&[ETH_P_8021AD, ETH_P_8021Q], ETH_P_IP, &trusted),
        XDP_PASS,
        SEEN4_PASSED,
        "QinQ trusted",
    );
    let v6 = ipv6(UNTRUSTED6, TCP, &frames::tcp(PORT, SYN));
    h.assert_xdp(
        &eth(&[ETH_P_8021Q], ETH_P_IPV6, &v6),
        XDP_DROP,
        SEEN6_DROPPED,
        "802.1Q v6",
    );
    let three = eth(
        &[ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q],
        ETH_P_IP,
        &trusted,
    );
    h.assert_xdp(&three, XDP_DROP, MALFORMED, "three tags fail closed");
    // A tag cut short.
    let cut = eth(&[], ETH_P_8021Q, &[0u8; 2]);
    h.assert_xdp(&cut, XDP_DROP, MALFORMED, "cut VLAN tag");
}

#[test]
fn xdp_skips_ipv4_options() {
    let Some(h) = Harness::xdp(&default_list()) else {
        return;
    };
    for words in [1u8, 4, 10] {
        let untrusted = eth(
            &[],
            ETH_P_IP,
            &ipv4(
                UNTRUSTED4,
                TCP,
                words,
                Frag::default(),
                &frames::tcp(PORT, SYN),
            ),
        );
        h.assert_xdp(
            &untrusted,
            XDP_DROP,
            SEEN4_DROPPED,
            &format!("{words} option words"),
        );
        let trusted = eth(
            &[],
            ETH_P_IP,
            &ipv4(
                TRUSTED4,
                TCP,
                words,
                Frag::default(),
                &frames::tcp(PORT, SYN),
            ),
        );
        h.assert_xdp(
            &trusted,
            XDP_PASS,
            SEEN4_PASSED,
            &format!("{words} option words, trusted"),
        );
        // The options hide an ACK: the program must read the real flags, past them.
        let ack = eth(
            &[],
            ETH_P_IP,
            &ipv4(
                UNTRUSTED4,
                TCP,
                words,
                Frag::default(),
                &frames::tcp(PORT, ACK),
            ),
        );
        h.assert_xdp(&ack, XDP_PASS, NONE, &format!("{words} option words, ACK"));
    }
    let mut bad_ihl = ipv4(UNTRUSTED4, TCP, 0, Frag::default(), &frames::tcp(PORT, SYN));
    bad_ihl[0] = 0x44;
    h.assert_xdp(
        &eth(&[], ETH_P_IP, &bad_ihl),
        XDP_DROP,
        MALFORMED,
        "IHL below 5",
    );
}

#[test]
fn xdp_judges_first_fragments_and_passes_later_ones() {
    let Some(h) = Harness::xdp(&default_list()) else {
        return;
    };
    let first = Frag {
        more: true,
        offset: 0,
    };
    h.assert_case(&catalogue::first_fragment_untrusted());
    h.assert_case(&catalogue::tiny_first_fragment_untrusted());
    let tiny_trusted = eth(
        &[],
        ETH_P_IP,
        &ipv4(TRUSTED4, TCP, 0, first, &frames::tcp(PORT, SYN)[..8]),
    );
    h.assert_xdp(
        &tiny_trusted,
        XDP_PASS,
        NONE,
        "tiny first fragment, trusted",
    );
    h.assert_case(&catalogue::later_fragment());
}

/// The datagram cases, shared by both programs: (frame, source trusted, counters an
/// enforcing program moves, whether it drops, name). Padding, trailing bytes and a
/// length field shorter than the frame never change a verdict: only the bytes inside
/// the IP datagram are judged.
fn datagram_cases() -> Vec<(Vec<u8>, &'static [Counter], bool, String)> {
    let first = Frag {
        more: true,
        offset: 0,
    };
    let syn = frames::tcp(PORT, SYN);
    let tiny = |src| eth(&[], ETH_P_IP, &ipv4(src, TCP, 0, first, &syn[..8]));
    // Pads of zeros (flags 0, what a NIC adds), of 0xff, and of the rest of a SYN
    // header: read as the rest of the TCP header, each would give a different verdict.
    let syn_pad: Vec<u8> = syn.iter().cycle().take(1500).copied().collect();
    let mut cases = Vec::new();
    for (src, trusted) in [(UNTRUSTED4, false), (TRUSTED4, true)] {
        let who = if trusted { "trusted" } else { "untrusted" };
        let cut = |moved: &'static [Counter]| if trusted { NONE } else { moved };
        for (len, byte) in [(60, 0u8), (1500, 0u8), (1500, 0xff)] {
            cases.push((
                pad(&tiny(src), len, byte),
                cut(MALFORMED),
                !trusted,
                format!("tiny first fragment padded to {len} with {byte:#x}, {who}"),
            ));
        }
        cases.push((
            trailed(&tiny(src), &syn_pad[8..]),
            cut(MALFORMED),
            !trusted,
            format!("tiny first fragment, the rest of a SYN in its pad, {who}"),
        ));
        // The total length ends at the IP header; a whole SYN header follows it.
        let header_only = with_ipv4_total(&tcp4(src, PORT, SYN), 20);
        cases.push((
            header_only,
            cut(MALFORMED),
            !trusted,
            format!("IPv4 total length 20, a SYN in the pad, {who}"),
        ));
        // The total length ends inside the TCP header.
        let cut_tcp = with_ipv4_total(&tcp4(src, PORT, SYN), 20 + 13);
        cases.push((
            cut_tcp,
            cut(MALFORMED),
            !trusted,
            format!("IPv4 total length ends before the TCP flags, {who}"),
        ));
        // A whole datagram with trailing garbage is judged on the datagram.
        cases.push((
            pad(&tcp4(src, PORT, SYN), 1500, 0xff),
            if trusted { SEEN4_PASSED } else { SEEN4_DROPPED },
            !trusted,
            format!("IPv4 SYN with a 1500-byte pad, {who}"),
        ));
        cases.push((
            trailed(&tcp4(src, PORT, ACK), &syn),
            NONE,
            false,
            format!("IPv4 ACK, a SYN header trailing it, {who}"),
        ));
    }
    for (src, trusted) in [(UNTRUSTED6, false), (TRUSTED6, true)] {
        let who = if trusted { "trusted" } else { "untrusted" };
        let cut = |moved: &'static [Counter]| if trusted { NONE } else { moved };
        cases.push((
            with_ipv6_payload(&tcp6(src, PORT, SYN), 10),
            cut(MALFORMED),
            !trusted,
            format!("IPv6 payload length ends inside the TCP header, {who}"),
        ));
        cases.push((
            pad(&with_ipv6_payload(&tcp6(src, PORT, SYN), 13), 1500, 0),
            cut(MALFORMED),
            !trusted,
            format!("IPv6 payload length before the TCP flags, padded, {who}"),
        ));
        cases.push((
            pad(&tcp6(src, PORT, SYN), 1500, 0xff),
            if trusted { SEEN6_PASSED } else { SEEN6_DROPPED },
            !trusted,
            format!("IPv6 SYN with a 1500-byte pad, {who}"),
        ));
    }
    // A total length that ends inside the IP header: not even the source is inside
    // the datagram, so a trusted-looking source does not help.
    cases.push((
        with_ipv4_total(&tcp4(TRUSTED4, PORT, SYN), 19),
        MALFORMED,
        true,
        "IPv4 total length shorter than its header, trusted-looking".into(),
    ));
    cases
}

#[test]
fn xdp_judges_the_datagram_not_the_frame() {
    let Some(h) = Harness::xdp(&default_list()) else {
        return;
    };
    for (frame, moved, drops, name) in datagram_cases() {
        let verdict = if drops { XDP_DROP } else { XDP_PASS };
        h.assert_xdp(&frame, verdict, moved, &name);
    }
}

#[test]
fn socket_filter_judges_the_datagram_not_the_frame() {
    let Some(h) = Harness::socket(&default_list()) else {
        return;
    };
    for (frame, moved, drops, name) in datagram_cases() {
        let (verdict, got_moved) = h.run(&frame);
        let expect = if drops { 0 } else { (frame.len() - 14) as u32 };
        assert_eq!(verdict, expect, "{name}: bytes kept (0 = drop)");
        assert_eq!(got_moved, moved, "{name}: counters");
    }
}

#[test]
fn xdp_walks_each_ipv6_extension_header() {
    let Some(h) = Harness::xdp(&default_list()) else {
        return;
    };
    let syn = frames::tcp(PORT, SYN);
    for (kind, name) in [
        (HOPOPTS, "hop-by-hop"),
        (ROUTING, "routing"),
        (FRAGMENT, "fragment"),
        (DSTOPTS, "destination options"),
        (AH, "authentication header"),
    ] {
        let payload = [ext(kind, TCP, 1), syn.clone()].concat();
        h.assert_xdp(
            &eth(&[], ETH_P_IPV6, &ipv6(UNTRUSTED6, kind, &payload)),
            XDP_DROP,
            SEEN6_DROPPED,
            name,
        );
        h.assert_xdp(
            &eth(&[], ETH_P_IPV6, &ipv6(TRUSTED6, kind, &payload)),
            XDP_PASS,
            SEEN6_PASSED,
            name,
        );
    }
}

#[test]
fn xdp_walks_a_chain_of_extension_headers_up_to_its_limit() {
    let Some(h) = Harness::xdp(&default_list()) else {
        return;
    };
    let syn = frames::tcp(PORT, SYN);
    let chain = |n: usize| {
        let kinds = [
            HOPOPTS, DSTOPTS, ROUTING, FRAGMENT, DSTOPTS, ROUTING, DSTOPTS, DSTOPTS, DSTOPTS,
            DSTOPTS,
        ];
        let mut payload = Vec::new();
        for i in 0..n {
            let next = if i + 1 < n { kinds[i + 1] } else { TCP };
            payload.extend(ext(kinds[i], next, (i % 3) as u8));
        }
        payload.extend(&syn);
        ipv6(UNTRUSTED6, kinds[0], &payload)
    };
    let limit = proxy_common::MAX_IPV6_EXT_HEADERS;
    h.assert_xdp(
        &eth(&[], ETH_P_IPV6, &chain(4)),
        XDP_DROP,
        SEEN6_DROPPED,
        "chain of 4",
    );
    h.assert_xdp(
        &eth(&[], ETH_P_IPV6, &chain(limit)),
        XDP_DROP,
        SEEN6_DROPPED,
        "chain at the limit",
    );
    h.assert_xdp(
        &eth(&[], ETH_P_IPV6, &chain(limit + 1)),
        XDP_DROP,
        MALFORMED,
        "chain past the limit",
    );
    // Past the limit from a trusted source: passes (the source is known and trusted).
    let mut trusted = chain(limit + 1);
    trusted[8..24].copy_from_slice(&TRUSTED6.octets());
    h.assert_xdp(
        &eth(&[], ETH_P_IPV6, &trusted),
        XDP_PASS,
        NONE,
        "trusted chain past the limit",
    );
    // A non-first IPv6 fragment carries no TCP header.
    let later = ipv6(
        UNTRUSTED6,
        FRAGMENT,
        &[ext_fragment(TCP, 3, false), vec![0u8; 16]].concat(),
    );
    h.assert_xdp(
        &eth(&[], ETH_P_IPV6, &later),
        XDP_PASS,
        NONE,
        "non-first v6 fragment",
    );
}

#[test]
fn xdp_fails_closed_on_frames_cut_at_every_length() {
    let Some(h) = Harness::xdp(&default_list()) else {
        return;
    };
    for (frame, ip_end, name) in [
        (tcp4(UNTRUSTED4, PORT, SYN), 14 + 20, "v4"),
        (tcp6(UNTRUSTED6, PORT, SYN), 14 + 40, "v6"),
    ] {
        let full = frame.len();
        for len in 14..full {
            // Whatever is cut (IP header, TCP header), an untrusted SYN never passes.
            let (verdict, moved) = h.run(&frame[..len]);
            assert_eq!(verdict, XDP_DROP, "{name} cut at {len} of {full}");
            assert_eq!(moved, MALFORMED, "{name} cut at {len}: counters");
            let _ = ip_end;
        }
    }
    for (frame, ip_end, name) in [
        (tcp4(TRUSTED4, PORT, SYN), 14 + 20, "trusted v4"),
        (tcp6(TRUSTED6, PORT, SYN), 14 + 40, "trusted v6"),
    ] {
        for len in 14..frame.len() {
            let (verdict, _) = h.run(&frame[..len]);
            // Before the source address is whole nothing is known: drop. After it, a
            // trusted source passes even with its TCP header cut.
            let expect = if len < ip_end { XDP_DROP } else { XDP_PASS };
            assert_eq!(verdict, expect, "{name} cut at {len}");
        }
    }
}

#[test]
fn xdp_judges_ipv4_mapped_sources_by_the_ipv4_trie() {
    let Some(h) = Harness::xdp(&default_list()) else {
        return;
    };
    let mapped_trusted = TRUSTED4.to_ipv6_mapped();
    h.assert_xdp(
        &tcp6(mapped_trusted, PORT, SYN),
        XDP_PASS,
        SEEN4_PASSED,
        "mapped trusted",
    );
    h.assert_case(&catalogue::syn_mapped_untrusted());
    // An IPv6 prefix covering the mapped range does not trust mapped sources.
    let Some(h6) = Harness::xdp(&list(&["::ffff:0.0.0.0/96"])) else {
        return;
    };
    h6.assert_xdp(
        &tcp6(mapped_trusted, PORT, SYN),
        XDP_DROP,
        SEEN4_DROPPED,
        "mapped vs v6 prefix",
    );
}

#[test]
fn xdp_prefix_lengths_zero_full_and_overlapping() {
    let Some(all) = Harness::xdp(&list(&["0.0.0.0/0", "::/0"])) else {
        return;
    };
    all.assert_xdp(
        &tcp4(UNTRUSTED4, PORT, SYN),
        XDP_PASS,
        SEEN4_PASSED,
        "/0 v4",
    );
    all.assert_xdp(
        &tcp6(UNTRUSTED6, PORT, SYN),
        XDP_PASS,
        SEEN6_PASSED,
        "/0 v6",
    );
    let Some(hosts) = Harness::xdp(&list(&["192.0.2.10/32", "2001:db8::10/128"])) else {
        return;
    };
    hosts.assert_xdp(
        &tcp4(TRUSTED4, PORT, SYN),
        XDP_PASS,
        SEEN4_PASSED,
        "/32 exact",
    );
    hosts.assert_xdp(
        &tcp4(Ipv4Addr::new(192, 0, 2, 11), PORT, SYN),
        XDP_DROP,
        SEEN4_DROPPED,
        "/32 neighbour",
    );
    hosts.assert_xdp(
        &tcp6(TRUSTED6, PORT, SYN),
        XDP_PASS,
        SEEN6_PASSED,
        "/128 exact",
    );
    hosts.assert_xdp(
        &tcp6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x11), PORT, SYN),
        XDP_DROP,
        SEEN6_DROPPED,
        "/128 neighbour",
    );
    let Some(overlap) = Harness::xdp(&list(&["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32"])) else {
        return;
    };
    for addr in [
        Ipv4Addr::new(10, 9, 9, 9),
        Ipv4Addr::new(10, 1, 9, 9),
        Ipv4Addr::new(10, 1, 2, 3),
    ] {
        overlap.assert_xdp(
            &tcp4(addr, PORT, SYN),
            XDP_PASS,
            SEEN4_PASSED,
            &format!("overlap {addr}"),
        );
    }
    overlap.assert_xdp(
        &tcp4(Ipv4Addr::new(11, 1, 2, 3), PORT, SYN),
        XDP_DROP,
        SEEN4_DROPPED,
        "outside overlap",
    );
}

#[test]
fn xdp_with_an_empty_trie_drops_every_syn_to_a_protected_port() {
    let Some(h) = Harness::xdp(&TrustList::default()) else {
        return;
    };
    h.assert_xdp(
        &tcp4(TRUSTED4, PORT, SYN),
        XDP_DROP,
        SEEN4_DROPPED,
        "empty v4",
    );
    h.assert_xdp(
        &tcp6(TRUSTED6, PORT, SYN),
        XDP_DROP,
        SEEN6_DROPPED,
        "empty v6",
    );
    h.assert_xdp(
        &tcp4(TRUSTED4, OTHER_PORT, SYN),
        XDP_PASS,
        NONE,
        "empty, other port",
    );
}

#[test]
fn xdp_trie_updates_in_place_take_effect() {
    let Some(mut h) = Harness::xdp(&list(&["192.0.2.0/24"])) else {
        return;
    };
    h.assert_xdp(
        &tcp4(UNTRUSTED4, PORT, SYN),
        XDP_DROP,
        SEEN4_DROPPED,
        "before",
    );
    h.kernel
        .sync(&list(&["192.0.2.0/24", "203.0.113.0/24"]))
        .expect("sync");
    h.assert_xdp(
        &tcp4(UNTRUSTED4, PORT, SYN),
        XDP_PASS,
        SEEN4_PASSED,
        "added",
    );
    h.kernel.sync(&list(&["203.0.113.0/24"])).expect("sync");
    h.assert_xdp(
        &tcp4(TRUSTED4, PORT, SYN),
        XDP_DROP,
        SEEN4_DROPPED,
        "removed",
    );
}

#[test]
fn observe_only_counts_but_passes() {
    let plan = Plan::Xdp {
        interfaces: Vec::new(),
        attach: XdpMode::Auto,
    };
    let kernel = match Kernel::start(plan, &default_list(), &[PORT], true) {
        Ok(k) => k,
        Err(err) => return common::skip(&format!("cannot load the eBPF object: {err}")),
    };
    let h = Harness {
        kernel,
        program: Program::Xdp,
    };
    h.assert_xdp(
        &tcp4(UNTRUSTED4, PORT, SYN),
        XDP_PASS,
        &[Counter::SynSeenV4, Counter::ObservedOnly],
        "observed",
    );
}

#[test]
fn socket_filter_judges_syns_by_source_only() {
    let Some(h) = Harness::socket(&default_list()) else {
        return;
    };
    let keep = |frame: &[u8]| (frame.len() - 14) as u32;
    let cases = [
        (tcp4(TRUSTED4, PORT, SYN), true, SEEN4_PASSED, "trusted v4"),
        (
            tcp4(UNTRUSTED4, PORT, SYN),
            false,
            SEEN4_DROPPED,
            "untrusted v4",
        ),
        // No port map: the socket is the protected port.
        (
            tcp4(UNTRUSTED4, OTHER_PORT, SYN),
            false,
            SEEN4_DROPPED,
            "untrusted v4, any port",
        ),
        (tcp6(TRUSTED6, PORT, SYN), true, SEEN6_PASSED, "trusted v6"),
        (
            tcp6(UNTRUSTED6, PORT, SYN),
            false,
            SEEN6_DROPPED,
            "untrusted v6",
        ),
        (
            tcp6(TRUSTED4.to_ipv6_mapped(), PORT, SYN),
            true,
            SEEN4_PASSED,
            "mapped trusted",
        ),
        (tcp4(UNTRUSTED4, PORT, ACK), true, NONE, "untrusted ACK"),
        (
            tcp4(UNTRUSTED4, PORT, SYN | ACK),
            true,
            NONE,
            "untrusted SYN-ACK",
        ),
        (tcp6(UNTRUSTED6, PORT, RST), true, NONE, "untrusted RST"),
    ];
    for (frame, pass, moved, name) in cases {
        let (verdict, got_moved) = h.run(&frame);
        let expect = if pass { keep(&frame) } else { 0 };
        assert_eq!(verdict, expect, "{name}: bytes kept (0 = drop)");
        assert_eq!(got_moved, moved, "{name}: counters");
    }
    let ext_chain = ipv6(
        UNTRUSTED6,
        HOPOPTS,
        &[
            ext(HOPOPTS, DSTOPTS, 0),
            ext(DSTOPTS, TCP, 2),
            frames::tcp(PORT, SYN),
        ]
        .concat(),
    );
    let (verdict, moved) = h.run(&eth(&[], ETH_P_IPV6, &ext_chain));
    assert_eq!(
        (verdict, moved.as_slice()),
        (0, SEEN6_DROPPED),
        "v6 behind extension headers"
    );
    let cut = &tcp4(UNTRUSTED4, PORT, SYN)[..14 + 20 + 10];
    let (verdict, moved) = h.run(cut);
    assert_eq!(
        (verdict, moved.as_slice()),
        (0, MALFORMED),
        "cut TCP header"
    );
}

/// A valid frame, then mutations of it: the property tests' input.
#[derive(Clone, Debug)]
struct Mutant {
    family: MutantFamily,
    trusted: bool,
    tags: Vec<u16>,
    /// IPv4 options, in 32-bit words.
    options: u8,
    /// IPv4 fragment fields (more fragments, offset in 8-byte units).
    fragment: (bool, u16),
    /// IPv6 extension headers: kind and length units (a fragment header's units are
    /// its offset; odd ones set the M flag).
    chain: Vec<(u8, u8)>,
    flags: u8,
    to_port: bool,
    mutations: Vec<Mutation>,
}

#[derive(Clone, Copy, Debug)]
enum MutantFamily {
    V4,
    V6,
    Mapped,
}

#[derive(Clone, Debug)]
enum Mutation {
    /// Keep this many bytes past the IP header's start.
    Cut(usize),
    /// Pad to this length with this byte.
    Pad(usize, u8),
    /// Append the rest of a SYN header, as if the pad carried one.
    TrailSyn,
    /// Move the IP length field (IPv4 total, IPv6 payload) by this much.
    Length(i32),
    /// Set the IP length field.
    LengthTo(u16),
    /// Set the IPv4 IHL.
    Ihl(u8),
    /// Set the IPv4 fragment fields.
    Fragment(bool, u16),
    /// Overwrite one byte past the IP header's start.
    Byte(usize, u8),
}

fn mutant(max_tags: usize) -> impl Strategy<Value = Mutant> {
    let family = prop_oneof![
        Just(MutantFamily::V4),
        Just(MutantFamily::V6),
        Just(MutantFamily::Mapped)
    ];
    let tag = prop_oneof![Just(ETH_P_8021Q), Just(ETH_P_8021AD)];
    let kind = prop_oneof![
        Just(HOPOPTS),
        Just(ROUTING),
        Just(DSTOPTS),
        Just(AH),
        Just(FRAGMENT)
    ];
    let flags = prop_oneof![
        4 => Just(SYN),
        1 => Just(SYN | ACK),
        1 => Just(ACK),
        1 => Just(0u8),
        1 => any::<u8>(),
    ];
    let mutation = prop_oneof![
        1 => (0usize..100).prop_map(Mutation::Cut),
        2 => (0usize..1500, prop_oneof![Just(0u8), Just(0xffu8), any::<u8>()])
            .prop_map(|(len, byte)| Mutation::Pad(len, byte)),
        1 => Just(Mutation::TrailSyn),
        3 => (-40i32..=40).prop_map(Mutation::Length),
        1 => any::<u16>().prop_map(Mutation::LengthTo),
        1 => (0u8..16).prop_map(Mutation::Ihl),
        1 => (any::<bool>(), prop_oneof![Just(0u16), Just(1), Just(2), any::<u16>()])
            .prop_map(|(more, offset)| Mutation::Fragment(more, offset)),
        1 => (0usize..100, any::<u8>()).prop_map(|(at, byte)| Mutation::Byte(at, byte)),
    ];
    (
        family,
        any::<bool>(),
        prop::collection::vec(tag, 0..=max_tags),
        0u8..=10,
        (any::<bool>(), prop_oneof![3 => Just(0u16), 1 => 1u16..4]),
        prop_oneof![
            2 => Just(Vec::new()),
            1 => prop::collection::vec((kind, 0u8..4), 0..=10),
        ],
        flags,
        prop_oneof![4 => Just(true), 1 => Just(false)],
        prop::collection::vec(mutation, 0..=3),
    )
        .prop_map(
            |(family, trusted, tags, options, fragment, chain, flags, to_port, mutations)| Mutant {
                family,
                trusted,
                tags,
                options,
                fragment,
                chain,
                flags,
                to_port,
                mutations,
            },
        )
}

impl Mutant {
    /// The frame, and where its IP header starts.
    fn frame(&self) -> (Vec<u8>, usize) {
        let dport = if self.to_port { PORT } else { OTHER_PORT };
        let tcp = frames::tcp(dport, self.flags);
        let (ethertype, mut packet) = match self.family {
            MutantFamily::V4 => {
                let src = if self.trusted { TRUSTED4 } else { UNTRUSTED4 };
                let (more, offset) = self.fragment;
                let frag = Frag { more, offset };
                (ETH_P_IP, ipv4(src, TCP, self.options, frag, &tcp))
            }
            MutantFamily::V6 | MutantFamily::Mapped => {
                let src = match (self.family, self.trusted) {
                    (MutantFamily::V6, true) => TRUSTED6,
                    (MutantFamily::V6, false) => UNTRUSTED6,
                    (_, true) => TRUSTED4.to_ipv6_mapped(),
                    (_, false) => UNTRUSTED4.to_ipv6_mapped(),
                };
                let kinds: Vec<u8> = self.chain.iter().map(|(k, _)| *k).collect();
                let mut payload = Vec::new();
                for (i, (kind, units)) in self.chain.iter().enumerate() {
                    let next = kinds.get(i + 1).copied().unwrap_or(TCP);
                    payload.extend(match *kind {
                        FRAGMENT => ext_fragment(next, u16::from(*units / 2), units % 2 == 1),
                        kind => ext(kind, next, *units),
                    });
                }
                payload.extend_from_slice(&tcp);
                let first = kinds.first().copied().unwrap_or(TCP);
                (ETH_P_IPV6, ipv6(src, first, &payload))
            }
        };
        let l3 = 14 + 4 * self.tags.len();
        let v4 = matches!(self.family, MutantFamily::V4);
        for m in &self.mutations {
            match *m {
                Mutation::Cut(keep) => packet.truncate(keep),
                Mutation::Pad(len, byte) => packet = pad(&packet, len.saturating_sub(l3), byte),
                Mutation::TrailSyn => packet.extend_from_slice(&frames::tcp(PORT, SYN)[8..]),
                Mutation::Length(delta) => {
                    let at = if v4 { 2 } else { 4 };
                    if let Some(field) = packet.get_mut(at..at + 2) {
                        let now = i32::from(u16::from_be_bytes([field[0], field[1]]));
                        let new = (now + delta).clamp(0, 65535) as u16;
                        field.copy_from_slice(&new.to_be_bytes());
                    }
                }
                Mutation::LengthTo(len) => {
                    let at = if v4 { 2 } else { 4 };
                    if let Some(field) = packet.get_mut(at..at + 2) {
                        field.copy_from_slice(&len.to_be_bytes());
                    }
                }
                Mutation::Ihl(ihl) if v4 => {
                    if let Some(b) = packet.first_mut() {
                        *b = 0x40 | ihl;
                    }
                }
                Mutation::Fragment(more, offset) if v4 => {
                    if let Some(field) = packet.get_mut(6..8) {
                        let value = (u16::from(more) << 13) | (offset & 0x1fff);
                        field.copy_from_slice(&value.to_be_bytes());
                    }
                }
                Mutation::Byte(at, byte) => {
                    if let Some(b) = packet.get_mut(at) {
                        *b = byte;
                    }
                }
                Mutation::Ihl(_) | Mutation::Fragment(..) => {}
            }
        }
        (eth(&self.tags, ethertype, &packet), l3)
    }
}

/// Runs `cases` mutants through `program` and checks them against the kernel model:
/// whenever what the kernel keeps is (or may become) an initial SYN from an untrusted
/// source, the verdict is drop; from a trusted source (within the walk's two VLAN
/// tags), pass. Asserts that both kinds were generated often enough to mean something.
fn mutants_against_the_model(h: &Harness, cases: u32) {
    let trust = default_list();
    let socket = h.program == Program::Socket;
    let seen_untrusted = std::cell::Cell::new(0u32);
    let seen_trusted = std::cell::Cell::new(0u32);
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    // A listening socket never sees VLAN tags: the kernel has taken them off.
    let max_tags = if socket { 0 } else { 3 };
    let result = runner.run(&mutant(max_tags), |m| {
        let (frame, _) = m.frame();
        let port = if socket { None } else { Some(PORT) };
        let (kept, tags) = model::ethernet(&frame, port);
        let model::Kept::Syn { src } = kept else {
            return Ok(());
        };
        let (verdict, _) = h
            .kernel
            .test_run(h.program, &frame, 1)
            .map_err(|e| TestCaseError::fail(format!("BPF_PROG_TEST_RUN: {e}")))?;
        let dropped = if socket {
            verdict == 0
        } else {
            verdict == XDP_DROP
        };
        if trust.contains(src) {
            seen_trusted.set(seen_trusted.get() + 1);
            if tags <= 2 {
                prop_assert!(!dropped, "a trusted SYN was dropped: {frame:02x?}");
            }
        } else {
            seen_untrusted.set(seen_untrusted.get() + 1);
            prop_assert!(dropped, "an untrusted SYN passed: {frame:02x?}");
        }
        Ok(())
    });
    if let Err(err) = result {
        panic!("{err}");
    }
    eprintln!(
        "{cases} mutants: the model kept {} untrusted and {} trusted SYNs",
        seen_untrusted.get(),
        seen_trusted.get()
    );
    let floor = cases / 20;
    assert!(
        seen_untrusted.get() >= floor && seen_trusted.get() >= floor,
        "too few SYNs kept by the model to mean anything: {} untrusted, {} trusted of {cases}",
        seen_untrusted.get(),
        seen_trusted.get()
    );
}

#[test]
fn xdp_drops_every_untrusted_syn_the_kernel_would_keep() {
    let Some(h) = Harness::xdp(&default_list()) else {
        return;
    };
    mutants_against_the_model(&h, 4000);
}

#[test]
fn socket_filter_drops_every_untrusted_syn_the_kernel_would_keep() {
    let Some(h) = Harness::socket(&default_list()) else {
        return;
    };
    mutants_against_the_model(&h, 4000);
}

/// A bare IPv4 SYN (no Ethernet header), as an L3 device presents it.
fn ip4(src: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    ipv4(src, TCP, 0, Frag::default(), &frames::tcp(dport, flags))
}

/// A bare IPv6 SYN.
fn ip6(src: Ipv6Addr, dport: u16, flags: u8) -> Vec<u8> {
    ipv6(src, TCP, &frames::tcp(dport, flags))
}

#[test]
fn xdp_l3_judges_bare_ip_syns_trusted_pass_untrusted_drop() {
    let Some(h) = Harness::xdp_l3(&default_list()) else {
        return;
    };
    h.assert_xdp(
        &ip4(TRUSTED4, PORT, SYN),
        XDP_PASS,
        SEEN4_PASSED,
        "trusted v4",
    );
    h.assert_xdp(
        &ip4(UNTRUSTED4, PORT, SYN),
        XDP_DROP,
        SEEN4_DROPPED,
        "untrusted v4",
    );
    h.assert_xdp(
        &ip6(TRUSTED6, PORT, SYN),
        XDP_PASS,
        SEEN6_PASSED,
        "trusted v6",
    );
    h.assert_xdp(
        &ip6(UNTRUSTED6, PORT, SYN),
        XDP_DROP,
        SEEN6_DROPPED,
        "untrusted v6",
    );
    h.assert_xdp(
        &ip6(UNTRUSTED4.to_ipv6_mapped(), PORT, SYN),
        XDP_DROP,
        SEEN4_DROPPED,
        "mapped untrusted",
    );
    // Options and extension headers are walked as behind Ethernet.
    let opts = ipv4(UNTRUSTED4, TCP, 3, Frag::default(), &frames::tcp(PORT, SYN));
    h.assert_xdp(&opts, XDP_DROP, SEEN4_DROPPED, "v4 options");
    let ext_chain = ipv6(
        UNTRUSTED6,
        HOPOPTS,
        &[ext(HOPOPTS, TCP, 1), frames::tcp(PORT, SYN)].concat(),
    );
    h.assert_xdp(&ext_chain, XDP_DROP, SEEN6_DROPPED, "v6 hop-by-hop");
}

#[test]
fn xdp_l3_passes_every_other_segment_and_other_ports() {
    let Some(h) = Harness::xdp_l3(&default_list()) else {
        return;
    };
    for (flags, name) in [
        (SYN | ACK, "SYN-ACK"),
        (ACK, "ACK"),
        (RST, "RST"),
        (0, "none"),
    ] {
        h.assert_xdp(&ip4(UNTRUSTED4, PORT, flags), XDP_PASS, NONE, name);
        h.assert_xdp(&ip6(UNTRUSTED6, PORT, flags), XDP_PASS, NONE, name);
    }
    h.assert_xdp(
        &ip4(UNTRUSTED4, OTHER_PORT, SYN),
        XDP_PASS,
        NONE,
        "v4 other port",
    );
    h.assert_xdp(
        &ip6(UNTRUSTED6, OTHER_PORT, SYN),
        XDP_PASS,
        NONE,
        "v6 other port",
    );
    let udp = ipv4(UNTRUSTED4, UDP, 0, Frag::default(), &[0u8; 8]);
    h.assert_xdp(&udp, XDP_PASS, NONE, "udp");
}

#[test]
fn xdp_l3_fails_closed_on_cut_packets() {
    let Some(h) = Harness::xdp_l3(&default_list()) else {
        return;
    };
    // BPF_PROG_TEST_RUN takes no XDP frame shorter than an Ethernet header (14 bytes).
    for (packet, name) in [
        (ip4(UNTRUSTED4, PORT, SYN), "v4"),
        (ip6(UNTRUSTED6, PORT, SYN), "v6"),
    ] {
        for len in 14..packet.len() {
            let (verdict, moved) = h.run(&packet[..len]);
            assert_eq!(verdict, XDP_DROP, "{name} cut at {len}");
            assert_eq!(moved, MALFORMED, "{name} cut at {len}: counters");
        }
    }
}

#[test]
fn xdp_and_xdp_l3_share_their_counters() {
    let Some(h) = Harness::xdp_l3(&default_list()) else {
        return;
    };
    let before = h
        .kernel
        .counters(Program::Xdp)
        .expect("read")
        .expect("loaded");
    h.assert_xdp(
        &ip4(UNTRUSTED4, PORT, SYN),
        XDP_DROP,
        SEEN4_DROPPED,
        "untrusted v4",
    );
    let after = h
        .kernel
        .counters(Program::Xdp)
        .expect("read")
        .expect("loaded");
    assert_eq!(
        after.get(Counter::SynDroppedV4),
        before.get(Counter::SynDroppedV4) + 1,
        "the L3 walk's drop shows in the XDP counters"
    );
}

#[test]
fn xdp_l3_is_not_loaded_unless_asked_for() {
    let Some(h) = Harness::xdp(&default_list()) else {
        return;
    };
    // No interface needed it: `start` loaded the Ethernet walk only.
    assert!(matches!(
        h.kernel
            .test_run(Program::XdpL3, &ip4(UNTRUSTED4, PORT, SYN), 1),
        Err(KernelError::NotLoaded(Program::XdpL3))
    ));
    assert!(h.kernel.counters(Program::XdpL3).expect("read").is_none());
}
