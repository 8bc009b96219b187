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

/// LPM trie of trusted IPv4 prefixes: key `Key<Ipv4Bytes>`, value [`TRUSTED`].
pub const TRUSTED_V4_MAP: &str = "TRUSTED_V4";
/// LPM trie of trusted IPv6 prefixes: key `Key<Ipv6Bytes>`, value [`TRUSTED`].
pub const TRUSTED_V6_MAP: &str = "TRUSTED_V6";
/// Array of [`PORT_SLOTS`] flags, indexed by TCP destination port (host byte order):
/// [`TRUSTED`] where the XDP program judges SYNs, 0 elsewhere.
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
/// Value stored for every trusted prefix (and every protected port).
pub const TRUSTED: u8 = 1;

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
}

/// Number of counter slots (the size of each counters map).
pub const COUNTER_SLOTS: u32 = 8;

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
    ];

    /// A stable snake_case name, used for metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::SynSeenV4 => "syn_seen_v4",
            Counter::SynPassedV4 => "syn_passed_v4",
            Counter::SynDroppedV4 => "syn_dropped_v4",
            Counter::SynSeenV6 => "syn_seen_v6",
            Counter::SynPassedV6 => "syn_passed_v6",
            Counter::SynDroppedV6 => "syn_dropped_v6",
            Counter::DroppedMalformed => "dropped_malformed",
            Counter::ObservedOnly => "observed_only",
        }
    }
}

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

/// A verdict and the counters it moves (at most two: "seen" and the outcome).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub seen: Option<Counter>,
    pub outcome: Option<Counter>,
}

/// The verdict table, shared by both programs and by user space's tests, so that the
/// kernel and user space cannot disagree on what is dropped. Fails closed: a
/// [`Segment::Truncated`] frame passes only when its source is known and trusted
/// (`trusted` is `false` when the source could not be read at all).
pub const fn decide(segment: Segment, trusted: bool, observe_only: bool) -> Decision {
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
        };
    }
    Decision {
        verdict,
        seen,
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYN4: Segment = Segment::Syn {
        family: Family::V4,
        port_protected: true,
    };
    const SYN6: Segment = Segment::Syn {
        family: Family::V6,
        port_protected: true,
    };

    #[test]
    fn trusted_syn_passes_and_counts() {
        let d = decide(SYN4, true, false);
        assert_eq!(d.verdict, Verdict::Pass);
        assert_eq!(d.seen, Some(Counter::SynSeenV4));
        assert_eq!(d.outcome, Some(Counter::SynPassedV4));
        assert_eq!(
            decide(SYN6, true, false).outcome,
            Some(Counter::SynPassedV6)
        );
    }

    #[test]
    fn untrusted_syn_to_protected_port_is_dropped() {
        let d = decide(SYN6, false, false);
        assert_eq!(d.verdict, Verdict::Drop);
        assert_eq!(d.seen, Some(Counter::SynSeenV6));
        assert_eq!(d.outcome, Some(Counter::SynDroppedV6));
    }

    #[test]
    fn untrusted_syn_to_other_port_passes_uncounted() {
        let seg = Segment::Syn {
            family: Family::V4,
            port_protected: false,
        };
        let d = decide(seg, false, false);
        assert_eq!(d.verdict, Verdict::Pass);
        assert_eq!((d.seen, d.outcome), (None, None));
    }

    #[test]
    fn other_segments_pass() {
        assert_eq!(decide(Segment::Other, false, false).verdict, Verdict::Pass);
    }

    #[test]
    fn truncated_fails_closed_unless_trusted() {
        let d = decide(Segment::Truncated, false, false);
        assert_eq!(d.verdict, Verdict::Drop);
        assert_eq!(d.outcome, Some(Counter::DroppedMalformed));
        assert_eq!(
            decide(Segment::Truncated, true, false).verdict,
            Verdict::Pass
        );
    }

    #[test]
    fn observe_only_passes_what_it_would_drop() {
        let d = decide(SYN4, false, true);
        assert_eq!(d.verdict, Verdict::Pass);
        assert_eq!(d.seen, Some(Counter::SynSeenV4));
        assert_eq!(d.outcome, Some(Counter::ObservedOnly));
    }

    #[test]
    fn counter_slots_match_their_index() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }
}
