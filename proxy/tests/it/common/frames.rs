//! Builds the frames the kernel tests and benchmarks feed to the eBPF programs with
//! BPF_PROG_TEST_RUN: Ethernet (with VLAN tags), IPv4 (with options and fragments),
//! IPv6 (with extension headers) and TCP. Checksums are left zero there: the programs do
//! not read them. [`syn4_checksummed`] and [`Tcp4::parse`] are for a real kernel (a tun
//! device), which checks them. Shared by `tests/it/kernel.rs`, `tests/it/kernel_netns.rs`
//! and `benches/kernel.rs` (through `#[path]`).

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;

pub const HOPOPTS: u8 = 0;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ROUTING: u8 = 43;
pub const FRAGMENT: u8 = 44;
pub const AH: u8 = 51;
pub const DSTOPTS: u8 = 60;

/// A 20-byte TCP header.
pub fn tcp(dport: u16, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&1u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t
}

/// IPv4 fragmentation fields.
#[derive(Clone, Copy, Default)]
pub struct Frag {
    pub more: bool,
    /// In 8-byte units.
    pub offset: u16,
}

/// An IPv4 packet with `options_words` 32-bit words of NOP options.
pub fn ipv4(src: Ipv4Addr, proto: u8, options_words: u8, frag: Frag, payload: &[u8]) -> Vec<u8> {
    let header = 20 + 4 * usize::from(options_words);
    let mut p = vec![0u8; header];
    p[0] = 0x40 | (5 + options_words);
    let total = (header + payload.len()) as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    let frag_field = (u16::from(frag.more) << 13) | frag.offset;
    p[6..8].copy_from_slice(&frag_field.to_be_bytes());
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&Ipv4Addr::new(198, 51, 100, 1).octets());
    for b in &mut p[20..] {
        *b = 1; // NOP option
    }
    p.extend_from_slice(payload);
    p
}

/// An IPv6 extension header of kind `kind` pointing at `next`, with `units` 8-byte
/// units beyond the first (AH counts in 4-byte units, two less, as the RFC says).
pub fn ext(kind: u8, next: u8, units: u8) -> Vec<u8> {
    match kind {
        FRAGMENT => {
            let mut e = vec![0u8; 8];
            e[0] = next;
            e
        }
        AH => {
            // Length in 4-byte units minus 2: `units` 8-byte units beyond 8 bytes.
            let len = 8 + 8 * usize::from(units);
            let mut e = vec![0u8; len];
            e[0] = next;
            e[1] = (len / 4 - 2) as u8;
            e
        }
        _ => {
            let len = 8 + 8 * usize::from(units);
            let mut e = vec![0u8; len];
            e[0] = next;
            e[1] = units;
            // PadN filling the options area.
            e[2] = 1;
            e[3] = (len - 4) as u8;
            e
        }
    }
}

/// A non-first IPv6 fragment header (offset in 8-byte units).
pub fn ext_fragment(next: u8, offset: u16, more: bool) -> Vec<u8> {
    let mut e = vec![0u8; 8];
    e[0] = next;
    let field = (offset << 3) | u16::from(more);
    e[2..4].copy_from_slice(&field.to_be_bytes());
    e
}

/// An IPv6 packet whose first next-header is `next`, followed by `payload` (the
/// extension headers and the upper layer).
pub fn ipv6(src: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    p[6] = next;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(
        &"2001:db8:ffff::1"
            .parse::<Ipv6Addr>()
            .expect("literal")
            .octets(),
    );
    p.extend_from_slice(payload);
    p
}

/// An Ethernet frame with the given VLAN tag protocol ids (outermost first).
pub fn eth(vlans: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for (i, tpid) in vlans.iter().enumerate() {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(100 + i as u16).to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An untagged IPv4 TCP frame.
pub fn tcp4(src: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    eth(
        &[],
        ETH_P_IP,
        &ipv4(src, TCP, 0, Frag::default(), &tcp(dport, flags)),
    )
}

/// An untagged IPv6 TCP frame with no extension headers.
pub fn tcp6(src: Ipv6Addr, dport: u16, flags: u8) -> Vec<u8> {
    eth(&[], ETH_P_IPV6, &ipv6(src, TCP, &tcp(dport, flags)))
}

/// `frame` padded with `byte` to `len` bytes (a NIC pads to 60; anything may trail a
/// datagram). The IP length fields are left as they were.
pub fn pad(frame: &[u8], len: usize, byte: u8) -> Vec<u8> {
    let mut f = frame.to_vec();
    if f.len() < len {
        f.resize(len, byte);
    }
    f
}

/// `frame` followed by `tail` (say, a SYN header outside the datagram).
pub fn trailed(frame: &[u8], tail: &[u8]) -> Vec<u8> {
    [frame, tail].concat()
}

/// Rewrites the IPv4 total length of the untagged frame `frame`.
pub fn with_ipv4_total(frame: &[u8], total: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[14 + 2..14 + 4].copy_from_slice(&total.to_be_bytes());
    f
}

/// Rewrites the IPv6 payload length of the untagged frame `frame`.
pub fn with_ipv6_payload(frame: &[u8], payload: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[14 + 4..14 + 6].copy_from_slice(&payload.to_be_bytes());
    f
}

/// The Internet checksum (RFC 1071) of `data`, continuing from `sum`.
pub fn checksum(data: &[u8], mut sum: u32) -> u16 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The addressing and flags of an IPv4 TCP segment read off a tun device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tcp4 {
    pub src: Ipv4Addr,
    pub sport: u16,
    pub dst: Ipv4Addr,
    pub dport: u16,
    pub flags: u8,
}

impl Tcp4 {
    /// `None` for anything but a whole IPv4 TCP header (IPv6 router solicitations and
    /// the like also come out of a tun device).
    pub fn parse(p: &[u8]) -> Option<Tcp4> {
        let version_ihl = *p.first()?;
        let ihl = usize::from(version_ihl & 0x0f) * 4;
        if version_ihl >> 4 != 4 || ihl < 20 || *p.get(9)? != TCP {
            return None;
        }
        let t = p.get(ihl..ihl + 20)?;
        let addr = |at: usize| -> Option<Ipv4Addr> {
            let b: [u8; 4] = p.get(at..at + 4)?.try_into().ok()?;
            Some(Ipv4Addr::from(b))
        };
        Some(Tcp4 {
            src: addr(12)?,
            sport: u16::from_be_bytes([t[0], t[1]]),
            dst: addr(16)?,
            dport: u16::from_be_bytes([t[2], t[3]]),
            flags: t[13],
        })
    }
}
