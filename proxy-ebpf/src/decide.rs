//! From a parsed frame to a verdict: map lookups (the source's class in the prefix
//! tries, protected ports, config), the shared verdict table `proxy_common::decide`, and
//! the per-CPU counters. IPv4-mapped IPv6 sources are judged by the IPv4 trie, as user
//! space does; a trie value that is no known class counts as no entry (fail closed).

use aya_ebpf::maps::PerCpuArray;
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::programs::{SkBuffContext, XdpContext};
use proxy_common::{CONFIG_OBSERVE_ONLY, Class, Counter, Family, Segment, Verdict};

use crate::maps::{CONFIG, PROTECTED_PORTS, SOCKET_COUNTERS, TRUSTED_V4, TRUSTED_V6, XDP_COUNTERS};
use crate::parse::{self, Addr, Frame, SkbBytes, XdpBytes};

/// The XDP program's decision: only SYNs to a protected port are judged.
#[inline(always)]
pub fn xdp(ctx: &XdpContext) -> Verdict {
    judge(parse::ethernet(&XdpBytes(ctx)), &XDP_COUNTERS, true)
}

/// The XDP decision on an L3 device, whose frames start at the IP header: the same
/// judgement and counters as [`xdp`].
#[inline(always)]
pub fn xdp_l3(ctx: &XdpContext) -> Verdict {
    judge(parse::ip(&XdpBytes(ctx)), &XDP_COUNTERS, true)
}

/// The socket filter's decision: the socket is the protected port.
#[inline(always)]
pub fn socket(ctx: &SkBuffContext) -> Verdict {
    judge(parse::ip(&SkbBytes(ctx)), &SOCKET_COUNTERS, false)
}

#[inline(always)]
fn judge(frame: Frame, counters: &PerCpuArray<u64>, check_port: bool) -> Verdict {
    let (segment, class) = match frame {
        Frame::Other => return Verdict::Pass,
        Frame::Syn { src, dport } => {
            let port_protected = !check_port
                || PROTECTED_PORTS
                    .get(u32::from(dport))
                    .is_some_and(|p| *p != 0);
            let (family, class) = if port_protected {
                lookup(src)
            } else {
                (Family::V4, None)
            };
            (
                Segment::Syn {
                    family,
                    port_protected,
                },
                class,
            )
        }
        Frame::Truncated { src } => (
            Segment::Truncated,
            match src {
                Some(src) => lookup(src).1,
                None => None,
            },
        ),
    };
    let observe_only = match CONFIG.get(0) {
        Some(config) => config.flags & CONFIG_OBSERVE_ONLY != 0,
        None => false,
    };
    let decision = proxy_common::decide(segment, class, observe_only);
    bump(counters, decision.seen);
    bump(counters, decision.outcome);
    bump(counters, decision.class);
    decision.verdict
}

/// The source's family for the counters, and the class of the longest prefix holding it.
#[inline(always)]
fn lookup(src: Addr) -> (Family, Option<Class>) {
    match src {
        Addr::V4(a) => (Family::V4, class(TRUSTED_V4.get(Key::new(32, a)))),
        Addr::V6(a) => {
            let mapped = a[..10] == [0u8; 10] && a[10] == 0xff && a[11] == 0xff;
            if mapped {
                let v4 = [a[12], a[13], a[14], a[15]];
                (Family::V4, class(TRUSTED_V4.get(Key::new(32, v4))))
            } else {
                (Family::V6, class(TRUSTED_V6.get(Key::new(128, a))))
            }
        }
    }
}

/// The class a trie value names; `None` for no entry and for an unknown value.
#[inline(always)]
fn class(value: Option<&u8>) -> Option<Class> {
    match value {
        Some(v) => Class::from_value(*v),
        None => None,
    }
}

#[inline(always)]
fn bump(counters: &PerCpuArray<u64>, counter: Option<Counter>) {
    let Some(counter) = counter else { return };
    if let Some(slot) = counters.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer comes from a successful per-CPU array lookup, so it is
        // valid for this CPU's slot, and nothing else on this CPU runs the program
        // concurrently while it holds it.
        unsafe { *slot += 1 };
    }
}
