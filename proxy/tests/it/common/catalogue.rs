//! The named frames the kernel tests assert and the kernel benchmark times, each written
//! once with the verdict and counters the XDP program owes it under [`TRUSTED_PREFIXES`]
//! with [`PORT`] protected. `tests/it/kernel.rs` asserts every case (and uses each in the
//! test of its area); `benches/kernel.rs` includes this file through `#[path]`, beside
//! `frames.rs`, and checks each verdict before it times the frame.

use std::net::{Ipv4Addr, Ipv6Addr};

use proxy_common::Counter;

use super::frames::*;

/// The protected port.
pub const PORT: u16 = 8443;
/// A port the programs do not protect.
pub const OTHER_PORT: u16 = 22;
/// The trust list the verdicts are for.
pub const TRUSTED_PREFIXES: [&str; 2] = ["192.0.2.0/24", "2001:db8::/64"];

pub const TRUSTED4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const UNTRUSTED4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
pub const TRUSTED6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
pub const UNTRUSTED6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 7);

/// A passed SYN from a PROXY-class source (every prefix of [`TRUSTED_PREFIXES`]).
pub const SEEN4_PASSED: &[Counter] = &[
    Counter::SynSeenV4,
    Counter::SynPassedV4,
    Counter::SynPassedProxy,
];
pub const SEEN4_DROPPED: &[Counter] = &[Counter::SynSeenV4, Counter::SynDroppedV4];
pub const SEEN6_PASSED: &[Counter] = &[
    Counter::SynSeenV6,
    Counter::SynPassedV6,
    Counter::SynPassedProxy,
];
pub const SEEN6_DROPPED: &[Counter] = &[Counter::SynSeenV6, Counter::SynDroppedV6];
pub const MALFORMED: &[Counter] = &[Counter::DroppedMalformed];
pub const NONE: &[Counter] = &[];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
}

/// One frame and what the XDP program must do with it.
pub struct Case {
    pub name: &'static str,
    pub frame: Vec<u8>,
    pub verdict: Verdict,
    /// The counters one run moves, in `Counter::ALL` order.
    pub moved: &'static [Counter],
    /// Also a case for the socket filter, which owes it the same verdict and counters:
    /// an untagged frame whose IP header the socket program sees first.
    pub socket: bool,
}

fn case(name: &'static str, frame: Vec<u8>, verdict: Verdict, moved: &'static [Counter]) -> Case {
    Case {
        name,
        frame,
        verdict,
        moved,
        socket: false,
    }
}

/// Every case, in the benchmark's table order.
pub fn all() -> Vec<Case> {
    vec![
        syn4_trusted(),
        syn4_untrusted(),
        syn6_trusted(),
        syn6_untrusted(),
        data4_untrusted(),
        syn4_unprotected_port(),
        syn_mapped_untrusted(),
        vlan_syn4_untrusted(),
        qinq_syn4_untrusted(),
        options_syn4_untrusted(),
        first_fragment_untrusted(),
        tiny_first_fragment_untrusted(),
        tiny_first_fragment_padded_untrusted(),
        later_fragment(),
        ext_chain_syn6_untrusted(),
        syn4_cut_in_tcp_untrusted(),
        udp4(),
    ]
}

pub fn syn4_trusted() -> Case {
    Case {
        socket: true,
        ..case(
            "IPv4 SYN, trusted",
            tcp4(TRUSTED4, PORT, SYN),
            Verdict::Pass,
            SEEN4_PASSED,
        )
    }
}

pub fn syn4_untrusted() -> Case {
    Case {
        socket: true,
        ..case(
            "IPv4 SYN, untrusted (drop)",
            tcp4(UNTRUSTED4, PORT, SYN),
            Verdict::Drop,
            SEEN4_DROPPED,
        )
    }
}

pub fn syn6_trusted() -> Case {
    Case {
        socket: true,
        ..case(
            "IPv6 SYN, trusted",
            tcp6(TRUSTED6, PORT, SYN),
            Verdict::Pass,
            SEEN6_PASSED,
        )
    }
}

pub fn syn6_untrusted() -> Case {
    Case {
        socket: true,
        ..case(
            "IPv6 SYN, untrusted (drop)",
            tcp6(UNTRUSTED6, PORT, SYN),
            Verdict::Drop,
            SEEN6_DROPPED,
        )
    }
}

pub fn data4_untrusted() -> Case {
    case(
        "IPv4 ACK with data, untrusted",
        tcp4(UNTRUSTED4, PORT, ACK | PSH),
        Verdict::Pass,
        NONE,
    )
}

pub fn syn4_unprotected_port() -> Case {
    case(
        "IPv4 SYN to an unprotected port",
        tcp4(UNTRUSTED4, OTHER_PORT, SYN),
        Verdict::Pass,
        NONE,
    )
}

/// Judged by the IPv4 trie, and counted as IPv4.
pub fn syn_mapped_untrusted() -> Case {
    case(
        "IPv4-mapped IPv6 SYN, untrusted",
        tcp6(UNTRUSTED4.to_ipv6_mapped(), PORT, SYN),
        Verdict::Drop,
        SEEN4_DROPPED,
    )
}

pub fn vlan_syn4_untrusted() -> Case {
    case(
        "802.1Q, IPv4 SYN, untrusted",
        eth(
            &[ETH_P_8021Q],
            ETH_P_IP,
            &untrusted_syn_packet(0, Frag::default()),
        ),
        Verdict::Drop,
        SEEN4_DROPPED,
    )
}

pub fn qinq_syn4_untrusted() -> Case {
    case(
        "802.1ad+802.1Q, IPv4 SYN, untrusted",
        eth(
            &[ETH_P_8021AD, ETH_P_8021Q],
            ETH_P_IP,
            &untrusted_syn_packet(0, Frag::default()),
        ),
        Verdict::Drop,
        SEEN4_DROPPED,
    )
}

/// 10 words, the most IHL allows.
pub fn options_syn4_untrusted() -> Case {
    case(
        "IPv4 with 40 bytes of options, SYN, untrusted",
        eth(&[], ETH_P_IP, &untrusted_syn_packet(10, Frag::default())),
        Verdict::Drop,
        SEEN4_DROPPED,
    )
}

/// A first fragment carrying the whole TCP header.
pub fn first_fragment_untrusted() -> Case {
    case(
        "IPv4 first fragment, SYN, untrusted",
        eth(&[], ETH_P_IP, &untrusted_syn_packet(0, FIRST)),
        Verdict::Drop,
        SEEN4_DROPPED,
    )
}

/// A first fragment cut before the TCP flags: no verdict can be read, so it fails closed.
pub fn tiny_first_fragment_untrusted() -> Case {
    case(
        "IPv4 tiny first fragment, untrusted",
        tiny_first_fragment(),
        Verdict::Drop,
        MALFORMED,
    )
}

/// As a NIC pads it: the pad must not be read as the rest of the TCP header.
pub fn tiny_first_fragment_padded_untrusted() -> Case {
    case(
        "IPv4 tiny first fragment padded to 60 bytes, untrusted",
        pad(&tiny_first_fragment(), 60, 0),
        Verdict::Drop,
        MALFORMED,
    )
}

/// A non-first fragment carries no TCP header.
pub fn later_fragment() -> Case {
    let later = Frag {
        more: false,
        offset: 1,
    };
    case(
        "IPv4 non-first fragment",
        eth(&[], ETH_P_IP, &ipv4(UNTRUSTED4, TCP, 0, later, &[0u8; 12])),
        Verdict::Pass,
        NONE,
    )
}

pub fn ext_chain_syn6_untrusted() -> Case {
    let chain = [
        ext(HOPOPTS, DSTOPTS, 0),
        ext(DSTOPTS, ROUTING, 1),
        ext(ROUTING, FRAGMENT, 0),
        ext(FRAGMENT, TCP, 0),
        tcp(PORT, SYN),
    ]
    .concat();
    case(
        "IPv6, 4 extension headers, SYN, untrusted",
        eth(&[], ETH_P_IPV6, &ipv6(UNTRUSTED6, HOPOPTS, &chain)),
        Verdict::Drop,
        SEEN6_DROPPED,
    )
}

pub fn syn4_cut_in_tcp_untrusted() -> Case {
    case(
        "IPv4 SYN cut in the TCP header, untrusted",
        tcp4(UNTRUSTED4, PORT, SYN)[..14 + 20 + 10].to_vec(),
        Verdict::Drop,
        MALFORMED,
    )
}

pub fn udp4() -> Case {
    case(
        "UDP",
        eth(
            &[],
            ETH_P_IP,
            &ipv4(UNTRUSTED4, UDP, 0, Frag::default(), &[0u8; 8]),
        ),
        Verdict::Pass,
        NONE,
    )
}

const FIRST: Frag = Frag {
    more: true,
    offset: 0,
};

/// An untrusted IPv4 SYN to [`PORT`] with `options_words` of options.
fn untrusted_syn_packet(options_words: u8, frag: Frag) -> Vec<u8> {
    ipv4(UNTRUSTED4, TCP, options_words, frag, &tcp(PORT, SYN))
}

/// An untrusted first fragment holding only the first 8 bytes of a SYN's TCP header.
fn tiny_first_fragment() -> Vec<u8> {
    eth(
        &[],
        ETH_P_IP,
        &ipv4(UNTRUSTED4, TCP, 0, FIRST, &tcp(PORT, SYN)[..8]),
    )
}
