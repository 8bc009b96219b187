//! trustgate's eBPF programs: entry points only. All judge initial TCP SYNs by their
//! source against the prefix tries, pass those of either class (PROXY or DIRECT) and drop
//! the rest, so an outsider gets no SYN-ACK and no RST. Parsing is in `parse`, the
//! decision and counters in `decide`, the maps in `maps`. No program ever rewrites a
//! packet.
#![no_std]
#![no_main]

mod decide;
mod maps;
mod parse;

use aya_ebpf::bindings::xdp_action::{XDP_DROP, XDP_PASS};
use aya_ebpf::macros::{socket_filter, xdp};
use aya_ebpf::programs::{SkBuffContext, XdpContext};
use proxy_common::Verdict;

/// XDP on an interface: judges initial SYNs to the protected ports (the
/// `PROTECTED_PORTS` map); everything else passes untouched.
#[xdp]
pub fn trustgate_xdp(ctx: XdpContext) -> u32 {
    match decide::xdp(&ctx) {
        Verdict::Pass => XDP_PASS,
        Verdict::Drop => XDP_DROP,
    }
}

/// XDP on an L3 device (no link-layer header: tun, WireGuard, IP-in-IP, GRE, SIT, PPP):
/// the same judgement, ports and counters as [`trustgate_xdp`], walked from the IP
/// header. User space attaches it only to devices whose link type says their frames
/// start there; on an Ethernet device it would read a MAC address as an IP header.
#[xdp]
pub fn trustgate_xdp_l3(ctx: XdpContext) -> u32 {
    match decide::xdp_l3(&ctx) {
        Verdict::Pass => XDP_PASS,
        Verdict::Drop => XDP_DROP,
    }
}

/// Socket filter on a listening socket (and, by inheritance, the sockets it accepts):
/// every SYN it sees is for that listener, so no port map is consulted. Returning 0
/// drops the packet; returning the length keeps all of it.
#[socket_filter]
pub fn trustgate_socket(ctx: SkBuffContext) -> i64 {
    match decide::socket(&ctx) {
        Verdict::Pass => i64::from(ctx.len()),
        Verdict::Drop => 0,
    }
}

/// The object's license: GPL-compatible, as the kernel requires for some helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects any path to here that
    // it cannot prove dead, and there is no unwinding in eBPF.
    loop {}
}
