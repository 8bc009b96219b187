//! What trustgate's eBPF programs and its user space must agree on: program and map
//! names, the layout of map keys and values, the counter slots, and the verdict table.
//! `#![no_std]` so the eBPF crate can use it; the `user` feature adds the `aya::Pod`
//! impls that user space needs to read and write the maps. Layouts are kernel ABI.
#![no_std]

/// Name of the XDP program for Ethernet-framed devices, which walks from the Ethernet
/// header (the function name in proxy-ebpf).
pub const XDP_PROGRAM: &str = "trustgate_xdp";
/// Name of the XDP program for L3 devices (tun, WireGuard, IP tunnels, PPP), whose
/// frames start at the IP header (the function name in proxy-ebpf).
pub const XDP_L3_PROGRAM: &str = "trustgate_xdp_l3";
/// Name of the socket-filter program (the function name in proxy-ebpf).
pub const SOCKET_PROGRAM: &str = "trustgate_socket";

/// LPM trie of admitted IPv4 prefixes: key `Key<Ipv4Bytes>`, value a [`Class`] byte
/// ([`CLASS_PROXY`] or [`CLASS_DIRECT`]).
pub const TRUSTED_V4_MAP: &str = "TRUSTED_V4";
/// LPM trie of admitted IPv6 prefixes: key `Key<Ipv6Bytes>`, value a [`Class`] byte.
pub const TRUSTED_V6_MAP: &str = "TRUSTED_V6";
/// Array of [`PORT_SLOTS`] flags, indexed by TCP destination port (host byte order):
/// [`PORT_PROTECTED`] where the XDP program judges SYNs, 0 elsewhere.
pub const PROTECTED_PORTS_MAP: &str = "PROTECTED_PORTS";
/// Per-CPU counters of the XDP program, indexed by [`Counter`].
pub const XDP_COUNTERS_MAP: &str = "XDP_COUNTERS";
/// Per-CPU counters of the socket filter, indexed by [`Counter`].
pub const SOCKET_COUNTERS_MAP: &str = "SOCKET_COUNTERS";
/// One-slot array holding the [`FilterConfig`] both programs read.
pub const CONFIG_MAP: &str = "CONFIG";

/// Capacity of each trusted-prefix trie. The loader refuses longer lists.
pub const MAX_TRUSTED_PREFIXES: u32 = 4096;
/// Size of the protected-ports array: one slot per TCP port.
pub const PORT_SLOTS: u32 = 65536;

/// The data part of an IPv4 LPM key: the address in network byte order.
pub type Ipv4Bytes = [u8; 4];
/// The data part of an IPv6 LPM key: the address in network byte order.
pub type Ipv6Bytes = [u8; 16];
/// Value of a protected port's slot in [`PROTECTED_PORTS_MAP`].
pub const PORT_PROTECTED: u8 = 1;

/// Trie value of a prefix of `trusted_proxies`: its SYNs pass, and each connection must
/// open with a PROXY header. 1, the value every trusted prefix had before classes.
pub const CLASS_PROXY: u8 = 1;
/// Trie value of a prefix of `direct_sources`: its SYNs pass, and its connections must
/// not open with a PROXY header (the peer is the client).
pub const CLASS_DIRECT: u8 = 2;

/// Who a source is, as the tries say: the longest prefix holding it decides. A source no
/// prefix holds, or one whose value is no known class, is nobody: its SYNs are dropped.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// A load balancer that sends a PROXY header ([`CLASS_PROXY`]).
    Proxy = CLASS_PROXY,
    /// A client allowed to connect as itself ([`CLASS_DIRECT`]).
    Direct = CLASS_DIRECT,
}

impl Class {
    /// The trie value.
    pub const fn value(self) -> u8 {
        self as u8
    }

    /// The class a trie value stands for; `None` (fail closed) for any other byte.
    pub const fn from_value(value: u8) -> Option<Class> {
        match value {
            CLASS_PROXY => Some(Class::Proxy),
            CLASS_DIRECT => Some(Class::Direct),
            _ => None,
        }
    }

    /// A stable lowercase name, used for metrics labels and `trustgate check`.
    pub const fn name(self) -> &'static str {
        match self {
            Class::Proxy => "proxy",
            Class::Direct => "direct",
        }
    }
}

/// How deep the XDP program walks IPv6 extension headers before it gives up and
/// treats the frame as malformed (dropped when the source is untrusted).
pub const MAX_IPV6_EXT_HEADERS: usize = 8;
/// How many VLAN tags (802.1Q / 802.1ad) the XDP program looks through.
pub const MAX_VLAN_TAGS: usize = 2;

/// Settings both programs read from [`CONFIG_MAP`] slot 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterConfig {
    /// Bit set of `CONFIG_*` flags. All zero (the state of a fresh map) enforces.
    pub flags: u32,
}

/// [`FilterConfig::flags`]: count what would be dropped, but pass it. For rolling the
/// filter out on a live host before enforcing it.
pub const CONFIG_OBSERVE_ONLY: u32 = 1;

#[cfg(feature = "user")]
// SAFETY: `FilterConfig` is `repr(C)`, a single `u32`, with no padding and no invalid
// bit patterns.
unsafe impl aya::Pod for FilterConfig {}

/// The counter slots of [`XDP_COUNTERS_MAP`] and [`SOCKET_COUNTERS_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Initial SYNs (SYN set, ACK clear) from IPv4 sources to a protected port.
    SynSeenV4 = 0,
    /// ... of which the source was trusted and the SYN passed.
    SynPassedV4 = 1,
    /// ... of which the source was untrusted and the SYN dropped.
    SynDroppedV4 = 2,
    /// Initial SYNs from IPv6 sources (IPv4-mapped ones count as IPv4).
    SynSeenV6 = 3,
    /// ... passed.
    SynPassedV6 = 4,
    /// ... dropped.
    SynDroppedV6 = 5,
    /// Frames dropped because they could not be parsed far enough to judge them:
    /// cut short, too many VLAN tags or IPv6 extension headers, a tiny first fragment.
    DroppedMalformed = 6,
    /// Untrusted SYNs that observe-only mode let through.
    ObservedOnly = 7,
    /// Passed SYNs (either family) whose source is of [`Class::Proxy`].
    SynPassedProxy = 8,
    /// Passed SYNs (either family) whose source is of [`Class::Direct`].
    SynPassedDirect = 9,
}

/// Number of counter slots (the size of each counters map).
pub const COUNTER_SLOTS: u32 = 10;

impl Counter {
    /// Every counter, in slot order.
    pub const ALL: [Counter; COUNTER_SLOTS as usize] = [
        Counter::SynSeenV4,
        Counter::SynPassedV4,
        Counter::SynDroppedV4,
        Counter::SynSeenV6,
        Counter::SynPassedV6,
        Counter::SynDroppedV6,
        Counter::DroppedMalformed,
        Counter::ObservedOnly,
        Counter::SynPassedProxy,
        Counter::SynPassedDirect,
    ];

    /// Where this counter is exposed: its family (after the `trustgate_` prefix; counters
    /// get `_total`) and its labels besides `program`. One place names every kernel series,
    /// so adding a counter is one edit here and one bump in the eBPF crate.
    pub const fn series(self) -> Series {
        match self {
            Counter::SynSeenV4 => (KERNEL_SYNS, &[("family", "ipv4"), ("outcome", "seen")]),
            Counter::SynPassedV4 => (KERNEL_SYNS, &[("family", "ipv4"), ("outcome", "passed")]),
            Counter::SynDroppedV4 => (KERNEL_SYNS, &[("family", "ipv4"), ("outcome", "dropped")]),
            Counter::SynSeenV6 => (KERNEL_SYNS, &[("family", "ipv6"), ("outcome", "seen")]),
            Counter::SynPassedV6 => (KERNEL_SYNS, &[("family", "ipv6"), ("outcome", "passed")]),
            Counter::SynDroppedV6 => (KERNEL_SYNS, &[("family", "ipv6"), ("outcome", "dropped")]),
            Counter::DroppedMalformed => ("kernel_dropped_malformed", &[]),
            Counter::ObservedOnly => ("kernel_observed_only", &[]),
            Counter::SynPassedProxy => (KERNEL_SYNS_PASSED, CLASS_PROXY_LABEL),
            Counter::SynPassedDirect => (KERNEL_SYNS_PASSED, CLASS_DIRECT_LABEL),
        }
    }
}

/// A kernel counter's place in the exposition: its family and its labels besides `program`.
pub type Series = (&'static str, &'static [(&'static str, &'static str)]);

const KERNEL_SYNS: &str = "kernel_syns";
const KERNEL_SYNS_PASSED: &str = "kernel_syns_passed";
const CLASS_PROXY_LABEL: &[(&str, &str)] = &[("class", Class::Proxy.name())];
const CLASS_DIRECT_LABEL: &[(&str, &str)] = &[("class", Class::Direct.name())];

/// The kernel's counter families, in exposition order, with their help text; every
/// [`Counter::series`] names one of them.
pub const KERNEL_FAMILIES: [(&str, &str); 4] = [
    (
        KERNEL_SYNS,
        "Initial SYNs to protected ports judged in the kernel",
    ),
    (
        KERNEL_SYNS_PASSED,
        "Initial SYNs passed in the kernel, by the class of their source (proxy: \
         trusted_proxies, direct: direct_sources)",
    ),
    (
        "kernel_dropped_malformed",
        "Frames dropped because they could not be judged",
    ),
    (
        "kernel_observed_only",
        "Untrusted SYNs let through by observe_only",
    ),
];

/// IP family of a judged segment. IPv4-mapped IPv6 sources are [`Family::V4`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// What the parser learnt about a frame, as far as the trust decision cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Not something the filter judges: not IP, not TCP, a non-first fragment, or a TCP
    /// segment that is not an initial SYN (SYN-ACK, ACK, RST, data).
    Other,
    /// An initial SYN (SYN set, ACK clear).
    Syn {
        family: Family,
        port_protected: bool,
    },
    /// The frame claims to carry IP or TCP but is cut short, or hides its TCP header
    /// behind more headers than the parser walks. It may be a SYN to a protected port.
    Truncated,
}

/// Verdict of a program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
}

/// A verdict and the counters it moves (at most three: "seen", the outcome, and the
/// passed SYN's class).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub seen: Option<Counter>,
    pub outcome: Option<Counter>,
    /// [`Counter::SynPassedProxy`] or [`Counter::SynPassedDirect`] for a judged SYN that
    /// passed because of its source's class.
    pub class: Option<Counter>,
}

/// The verdict table, shared by both programs and by user space's tests, so that the
/// kernel and user space cannot disagree on what is dropped. `class` is what the tries
/// say of the source ([`Class::from_value`] of the longest prefix's value). Both classes
/// pass; `None` drops. Fails closed: a [`Segment::Truncated`] frame passes only when its
/// source is known and of a class (`class` is `None` when the source could not be read).
pub const fn decide(segment: Segment, class: Option<Class>, observe_only: bool) -> Decision {
    let trusted = class.is_some();
    let class_counter = match class {
        Some(Class::Proxy) => Some(Counter::SynPassedProxy),
        Some(Class::Direct) => Some(Counter::SynPassedDirect),
        None => None,
    };
    let mut passed_class = None;
    let (verdict, seen, outcome) = match segment {
        Segment::Other => (Verdict::Pass, None, None),
        Segment::Syn {
            port_protected: false,
            ..
        } => (Verdict::Pass, None, None),
        Segment::Syn { family, .. } => {
            let (seen, passed, dropped) = match family {
                Family::V4 => (
                    Counter::SynSeenV4,
                    Counter::SynPassedV4,
                    Counter::SynDroppedV4,
                ),
                Family::V6 => (
                    Counter::SynSeenV6,
                    Counter::SynPassedV6,
                    Counter::SynDroppedV6,
                ),
            };
            if trusted {
                passed_class = class_counter;
                (Verdict::Pass, Some(seen), Some(passed))
            } else {
                (Verdict::Drop, Some(seen), Some(dropped))
            }
        }
        Segment::Truncated if trusted => (Verdict::Pass, None, None),
        Segment::Truncated => (Verdict::Drop, None, Some(Counter::DroppedMalformed)),
    };
    if observe_only && matches!(verdict, Verdict::Drop) {
        return Decision {
            verdict: Verdict::Pass,
            seen,
            outcome: Some(Counter::ObservedOnly),
            class: None,
        };
    }
    Decision {
        verdict,
        seen,
        outcome,
        class: passed_class,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_one_series_of_a_known_family() {
        let mut seen: [Option<Series>; COUNTER_SLOTS as usize] = [None; COUNTER_SLOTS as usize];
        for (i, counter) in Counter::ALL.into_iter().enumerate() {
            let (family, labels) = counter.series();
            assert!(
                KERNEL_FAMILIES.iter().any(|(f, _)| *f == family),
                "{counter:?}: {family} is not in KERNEL_FAMILIES"
            );
            assert!(
                !seen.contains(&Some((family, labels))),
                "{counter:?} shares a series"
            );
            seen[i] = Some((family, labels));
        }
    }

    const SYN4: Segment = Segment::Syn {
        family: Family::V4,
        port_protected: true,
    };
    const SYN6: Segment = Segment::Syn {
        family: Family::V6,
        port_protected: true,
    };
    const PROXY: Option<Class> = Some(Class::Proxy);
    const DIRECT: Option<Class> = Some(Class::Direct);

    #[test]
    fn trusted_syn_passes_and_counts() {
        let d = decide(SYN4, PROXY, false);
        assert_eq!(d.verdict, Verdict::Pass);
        assert_eq!(d.seen, Some(Counter::SynSeenV4));
        assert_eq!(d.outcome, Some(Counter::SynPassedV4));
        assert_eq!(d.class, Some(Counter::SynPassedProxy));
        assert_eq!(
            decide(SYN6, PROXY, false).outcome,
            Some(Counter::SynPassedV6)
        );
    }

    #[test]
    fn direct_syn_passes_and_counts_as_direct() {
        let d = decide(SYN6, DIRECT, false);
        assert_eq!(d.verdict, Verdict::Pass);
        assert_eq!(
            (d.seen, d.outcome, d.class),
            (
                Some(Counter::SynSeenV6),
                Some(Counter::SynPassedV6),
                Some(Counter::SynPassedDirect)
            )
        );
    }

    #[test]
    fn only_known_class_values_are_classes() {
        assert_eq!(Class::from_value(CLASS_PROXY), Some(Class::Proxy));
        assert_eq!(Class::from_value(CLASS_DIRECT), Some(Class::Direct));
        for v in [0u8, 3, 0xff] {
            assert_eq!(Class::from_value(v), None, "{v}");
        }
        for c in [Class::Proxy, Class::Direct] {
            assert_eq!(Class::from_value(c.value()), Some(c));
        }
    }

    #[test]
    fn untrusted_syn_to_protected_port_is_dropped() {
        let d = decide(SYN6, None, false);
        assert_eq!(d.verdict, Verdict::Drop);
        assert_eq!(d.seen, Some(Counter::SynSeenV6));
        assert_eq!(d.outcome, Some(Counter::SynDroppedV6));
        assert_eq!(d.class, None);
    }

    #[test]
    fn untrusted_syn_to_other_port_passes_uncounted() {
        let seg = Segment::Syn {
            family: Family::V4,
            port_protected: false,
        };
        let d = decide(seg, None, false);
        assert_eq!(d.verdict, Verdict::Pass);
        assert_eq!((d.seen, d.outcome), (None, None));
    }

    #[test]
    fn other_segments_pass() {
        assert_eq!(decide(Segment::Other, None, false).verdict, Verdict::Pass);
    }

    #[test]
    fn truncated_fails_closed_unless_trusted() {
        let d = decide(Segment::Truncated, None, false);
        assert_eq!(d.verdict, Verdict::Drop);
        assert_eq!(d.outcome, Some(Counter::DroppedMalformed));
        assert_eq!(
            decide(Segment::Truncated, DIRECT, false).verdict,
            Verdict::Pass
        );
    }

    #[test]
    fn observe_only_passes_what_it_would_drop() {
        let d = decide(SYN4, None, true);
        assert_eq!(d.verdict, Verdict::Pass);
        assert_eq!(d.seen, Some(Counter::SynSeenV4));
        assert_eq!(d.outcome, Some(Counter::ObservedOnly));
        assert_eq!(d.class, None, "an observed SYN is of no class");
    }

    #[test]
    fn counter_slots_match_their_index() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }
}
