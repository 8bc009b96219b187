//! The bounds-checked walk from the start of a frame (XDP) or of the network header
//! (socket filter) to the TCP flags: Ethernet with up to two VLAN tags, IPv4 with
//! options, IPv6 with a bounded walk over extension headers. The only place in the
//! crate that reads packet memory, and only through [`Bytes::load`]. It tells what the
//! frame is; what to do with it is `decide`'s business.
//!
//! Every byte judged past the IP header's first bytes lies inside the IP datagram:
//! loads are bounded by the IPv4 total length or the IPv6 payload length
//! ([`Datagram`]), never by the frame alone. A frame is often longer than its datagram
//! (Ethernet pads to 60 bytes; anything may trail), and the kernel trims that tail
//! before TCP or reassembly sees it, so a verdict read from it would judge bytes the
//! kernel throws away (a padded tiny first fragment looked like a whole non-SYN
//! header). A length of 0 means "the whole packet": the kernel keeps such a datagram
//! only when it built it itself (a GSO super-packet, BIG TCP) and drops any other.

use core::ffi::c_void;

use aya_ebpf::EbpfContext;
use aya_ebpf::bindings::bpf_hdr_start_off::BPF_HDR_START_NET;
use aya_ebpf::helpers::bpf_skb_load_bytes_relative;
use aya_ebpf::programs::{SkBuffContext, XdpContext};
use proxy_common::{Ipv4Bytes, Ipv6Bytes, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS};

const ETH_HEADER_BYTES: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

const IPV4_MIN_HEADER_BYTES: usize = 20;
const IPV6_HEADER_BYTES: usize = 40;
/// A TCP header must be whole inside the datagram for the segment to be judged: a
/// first fragment that cuts it (RFC 1858's tiny fragment), padded or not, is
/// `Truncated`, never read past.
const TCP_HEADER_BYTES: usize = 20;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Offsets past this are not followed (they are treated as cut short). It keeps every
/// offset bounded for the verifier; no header chain we judge legitimately gets there.
const MAX_OFFSET_BYTES: usize = 8192;

/// A source address as found in the packet, in network byte order.
#[derive(Clone, Copy)]
pub enum Addr {
    V4(Ipv4Bytes),
    V6(Ipv6Bytes),
}

/// What the walk found.
pub enum Frame {
    /// Nothing the filter judges: not IP, not TCP, a non-first fragment, or a TCP
    /// segment other than an initial SYN.
    Other,
    /// An initial SYN (SYN set, ACK clear).
    Syn { src: Addr, dport: u16 },
    /// Claims IP (or TCP) but is cut short (by the frame or by the datagram's own
    /// length), or hides its TCP header deeper than the walk goes. `src` is known
    /// when the IP header was whole.
    Truncated { src: Option<Addr> },
}

/// Packet bytes at an offset, or `None` when the packet is shorter.
pub trait Bytes {
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
}

/// An XDP frame, read directly from packet memory.
pub struct XdpBytes<'a>(pub &'a XdpContext);

impl Bytes for XdpBytes<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if offset > MAX_OFFSET_BYTES {
            return None;
        }
        let start = self.0.data();
        if start + offset + N > self.0.data_end() {
            return None;
        }
        // SAFETY: `[start + offset, start + offset + N)` lies inside the packet: it ends
        // at or before `data_end`, checked just above (the check the verifier needs), and
        // `read_unaligned` makes no alignment assumption.
        Some(unsafe { core::ptr::read_unaligned((start + offset) as *const [u8; N]) })
    }
}

/// A socket buffer, read relative to its network header with
/// `bpf_skb_load_bytes_relative`: on a TCP socket `skb->data` points at the TCP
/// header, under BPF_PROG_TEST_RUN at the IP header; the network header is the same
/// in both.
pub struct SkbBytes<'a>(pub &'a SkBuffContext);

impl Bytes for SkbBytes<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if offset > MAX_OFFSET_BYTES {
            return None;
        }
        let mut buf = [0u8; N];
        // SAFETY: the helper writes at most `N` bytes into `buf`, which is `N` bytes
        // long, and reads the skb the context points to; it fails, writing nothing we
        // use, when the packet is shorter.
        let ret = unsafe {
            bpf_skb_load_bytes_relative(
                self.0.as_ptr() as *const c_void,
                offset as u32,
                buf.as_mut_ptr() as *mut c_void,
                N as u32,
                BPF_HDR_START_NET,
            )
        };
        (ret == 0).then_some(buf)
    }
}

/// The bytes of one IP datagram inside a frame: loads that end past `end` (an offset
/// in the frame) fail as if the frame ended there.
struct Datagram<'a, B> {
    bytes: &'a B,
    end: usize,
}

impl<B: Bytes> Bytes for Datagram<'_, B> {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if offset > MAX_OFFSET_BYTES || offset + N > self.end {
            return None;
        }
        self.bytes.load(offset)
    }
}

/// Where a datagram that starts at `start` and whose header says `length` bytes ends
/// (0: the whole packet, see the module comment).
#[inline(always)]
fn datagram_end(start: usize, length: u16) -> usize {
    match length {
        0 => usize::MAX,
        n => start + usize::from(n),
    }
}

/// Walks a frame from its Ethernet header (XDP).
#[inline(always)]
pub fn ethernet<B: Bytes>(b: &B) -> Frame {
    let Some(eth) = b.load::<ETH_HEADER_BYTES>(0) else {
        // Shorter than an Ethernet header: it carries no IP packet.
        return Frame::Other;
    };
    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut offset = ETH_HEADER_BYTES;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let Some(tag) = b.load::<4>(offset) else {
            return Frame::Truncated { src: None };
        };
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        offset += 4;
    }
    match ethertype {
        // More tags than the walk looks through: it could hide anything.
        ETH_P_8021Q | ETH_P_8021AD => Frame::Truncated { src: None },
        ETH_P_IP => ipv4(b, offset),
        ETH_P_IPV6 => ipv6(b, offset),
        _ => Frame::Other,
    }
}

/// Walks a packet from its IP header (socket filter, XDP on an L3 device), the family
/// read from the version nibble.
#[inline(always)]
pub fn ip<B: Bytes>(b: &B) -> Frame {
    // Four bytes, not one: on XDP a one-byte load at offset 0 compiles to a plain
    // `data >= data_end` test, which the verifier (6.18) does not take as proof that the
    // byte is there. No IP packet is shorter than 20 bytes.
    let Some([first, ..]) = b.load::<4>(0) else {
        return Frame::Truncated { src: None };
    };
    match first >> 4 {
        4 => ipv4(b, 0),
        6 => ipv6(b, 0),
        _ => Frame::Other,
    }
}

#[inline(always)]
fn ipv4<B: Bytes>(b: &B, offset: usize) -> Frame {
    let Some(h) = b.load::<IPV4_MIN_HEADER_BYTES>(offset) else {
        return Frame::Truncated { src: None };
    };
    let header_bytes = usize::from(h[0] & 0x0f) * 4;
    let total = u16::from_be_bytes([h[2], h[3]]);
    if h[0] >> 4 != 4
        || header_bytes < IPV4_MIN_HEADER_BYTES
        || (total != 0 && usize::from(total) < header_bytes)
    {
        // Not a header the kernel accepts; and when the total length ends inside the
        // header, even the source lies outside the datagram.
        return Frame::Truncated { src: None };
    }
    let src = Addr::V4([h[12], h[13], h[14], h[15]]);
    let fragment_offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
    if fragment_offset != 0 || h[9] != IPPROTO_TCP {
        // A non-first fragment carries no TCP header; the kernel drops any that would
        // overlap the first fragment's (whose whole TCP header `tcp` requires).
        return Frame::Other;
    }
    let datagram = Datagram {
        bytes: b,
        end: datagram_end(offset, total),
    };
    tcp(&datagram, offset + header_bytes, src)
}

#[inline(always)]
fn ipv6<B: Bytes>(b: &B, l3: usize) -> Frame {
    let Some(h) = b.load::<IPV6_HEADER_BYTES>(l3) else {
        return Frame::Truncated { src: None };
    };
    if h[0] >> 4 != 6 {
        return Frame::Truncated { src: None };
    }
    let mut addr = [0u8; 16];
    addr.copy_from_slice(&h[8..24]);
    let src = Addr::V6(addr);
    let payload = u16::from_be_bytes([h[4], h[5]]);
    let b = &Datagram {
        bytes: b,
        end: datagram_end(l3 + IPV6_HEADER_BYTES, payload),
    };
    let mut next = h[6];
    let mut offset = l3 + IPV6_HEADER_BYTES;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let header_bytes = match next {
            IPPROTO_TCP => return tcp(b, offset, src),
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let Some(e) = b.load::<2>(offset) else {
                    return Frame::Truncated { src: Some(src) };
                };
                next = e[0];
                (usize::from(e[1]) + 1) * 8
            }
            IPPROTO_AH => {
                let Some(e) = b.load::<2>(offset) else {
                    return Frame::Truncated { src: Some(src) };
                };
                next = e[0];
                (usize::from(e[1]) + 2) * 4
            }
            IPPROTO_FRAGMENT => {
                let Some(e) = b.load::<4>(offset) else {
                    return Frame::Truncated { src: Some(src) };
                };
                if u16::from_be_bytes([e[2], e[3]]) & 0xfff8 != 0 {
                    return Frame::Other;
                }
                next = e[0];
                8
            }
            _ => return Frame::Other,
        };
        offset += header_bytes;
    }
    match next {
        IPPROTO_TCP => tcp(b, offset, src),
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT => {
            Frame::Truncated { src: Some(src) }
        }
        _ => Frame::Other,
    }
}

#[inline(always)]
fn tcp<B: Bytes>(b: &B, offset: usize, src: Addr) -> Frame {
    let Some(t) = b.load::<TCP_HEADER_BYTES>(offset) else {
        return Frame::Truncated { src: Some(src) };
    };
    if t[13] & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return Frame::Other;
    }
    Frame::Syn {
        src,
        dport: u16::from_be_bytes([t[2], t[3]]),
    }
}
