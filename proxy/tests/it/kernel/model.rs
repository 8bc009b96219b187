//! What the kernel keeps of a frame, written from the RFCs and Linux's receive path
//! (`ip_rcv_core`, `ipv6_rcv`, reassembly, `tcp_v4_rcv`), independently of the eBPF
//! walk: the oracle of the property tests in `kernel.rs`. Checksums are taken as right
//! (an attacker computes them). Wherever the kernel's reassembly could still turn a
//! frame into a SYN, the model says so: that is what the filter must judge.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// What the kernel makes of a frame, as far as the filter's promise goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Kept {
    /// Dropped by the kernel, or kept as something that neither is nor can become an
    /// initial SYN to the port.
    Harmless,
    /// An initial SYN to the port from `src` (IPv4-mapped sources as IPv4), or a
    /// first fragment whose reassembly may become one.
    Syn { src: IpAddr },
}

/// The kernel's view of `frame`, starting at its Ethernet header, for SYNs to `port`
/// (`None`: any port, as on a listening socket).
/// Also returns how many VLAN tags it went through.
pub fn ethernet(frame: &[u8], port: Option<u16>) -> (Kept, usize) {
    let Some(mut ethertype) = be16(frame, 12) else {
        return (Kept::Harmless, 0);
    };
    let mut l3 = 14;
    let mut tags = 0;
    while ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Some(inner) = be16(frame, l3 + 2) else {
            return (Kept::Harmless, tags);
        };
        ethertype = inner;
        l3 += 4;
        tags += 1;
    }
    let packet = &frame[l3..];
    let kept = match ethertype {
        ETH_P_IP => ipv4(packet, port),
        ETH_P_IPV6 => ipv6(packet, port),
        _ => Kept::Harmless,
    };
    (kept, tags)
}

fn ipv4(p: &[u8], port: Option<u16>) -> Kept {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return Kept::Harmless;
    }
    let header = usize::from(p[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    // ip_rcv_core: IHL >= 5, the frame holds the whole datagram, the total length
    // holds the header; then the frame is trimmed to the total length.
    if header < 20 || p.len() < total || total < header {
        return Kept::Harmless;
    }
    let datagram = &p[..total];
    let field = u16::from_be_bytes([p[6], p[7]]);
    let (more, offset) = (field & 0x2000 != 0, field & 0x1fff);
    if p[9] != 6 || offset != 0 {
        // Not TCP, or a later fragment: overlapping a first fragment's TCP header gets
        // the whole datagram dropped.
        return Kept::Harmless;
    }
    let src = IpAddr::V4(Ipv4Addr::new(p[12], p[13], p[14], p[15]));
    tcp(&datagram[header..], port, src, more)
}

fn ipv6(p: &[u8], port: Option<u16>) -> Kept {
    if p.len() < 40 || p[0] >> 4 != 6 {
        return Kept::Harmless;
    }
    let payload = usize::from(u16::from_be_bytes([p[4], p[5]]));
    // A zero payload length is a jumbogram (a hop-by-hop option gives the length, and
    // it must exceed 65,535, more than any frame here) or a datagram of no payload.
    if payload == 0 || p.len() < 40 + payload {
        return Kept::Harmless;
    }
    let datagram = &p[..40 + payload];
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&p[8..24]);
    let src = IpAddr::V6(Ipv6Addr::from(octets)).to_canonical();
    let mut next = p[6];
    let mut at = 40;
    let mut first_fragment = false;
    loop {
        let rest = &datagram[at.min(datagram.len())..];
        let len = match next {
            6 => return tcp(rest, port, src, first_fragment),
            0 | 43 | 60 | 51 => {
                let (Some(&after), Some(&units)) = (rest.first(), rest.get(1)) else {
                    return cut(first_fragment, src);
                };
                // AH counts 4-byte units, less two; the others 8-byte units, less one.
                let len = if next == 51 {
                    (usize::from(units) + 2) * 4
                } else {
                    (usize::from(units) + 1) * 8
                };
                next = after;
                len
            }
            44 => {
                // The offset field, once inside this fragment, is what reassembly will
                // see (a later fragment overlapping it gets the datagram dropped).
                if rest.len() < 4 {
                    return cut(first_fragment, src);
                }
                let field = u16::from_be_bytes([rest[2], rest[3]]);
                if field >> 3 != 0 {
                    return Kept::Harmless;
                }
                first_fragment |= field & 1 != 0;
                next = rest[0];
                8
            }
            _ => return Kept::Harmless,
        };
        at += len;
        if at > datagram.len() {
            // This fragment ends inside the header; what follows it is already named,
            // and only TCP or more headers could still make a SYN.
            return match next {
                6 | 0 | 43 | 60 | 51 | 44 => cut(first_fragment, src),
                _ => Kept::Harmless,
            };
        }
    }
}

/// A header chain cut inside the datagram: a first fragment's reassembly may supply
/// the rest; anything else is dropped.
fn cut(first_fragment: bool, src: IpAddr) -> Kept {
    if first_fragment {
        Kept::Syn { src }
    } else {
        Kept::Harmless
    }
}

fn tcp(segment: &[u8], port: Option<u16>, src: IpAddr, first_fragment: bool) -> Kept {
    if segment.len() < 20 {
        // A first fragment that cuts the TCP header: reassembly decides what it is.
        return cut(first_fragment, src);
    }
    let dport = u16::from_be_bytes([segment[2], segment[3]]);
    if segment[13] & 0x12 == 0x02 && port.is_none_or(|p| p == dport) {
        Kept::Syn { src }
    } else {
        Kept::Harmless
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}
