//! The classic-BPF fallback of the socket filter, generated from a [`TrustList`] and
//! attached with SO_ATTACH_FILTER, which needs no privilege. Same decision as the eBPF
//! program: an initial SYN (SYN set, ACK clear) passes only from a source some prefix
//! holds, of either class (PROXY or DIRECT: the class matters to user space only, so any
//! match accepts and the longest-prefix order is moot); every other segment passes. It
//! keeps no counters (classic BPF has no maps).
//!
//! On a TCP socket the filter runs with `skb->data` at the TCP header, so the flags are
//! at absolute offset 13; addresses are read relative to the network header
//! (SKF_NET_OFF), and the family from the `protocol` ancillary field.

use std::net::{Ipv4Addr, Ipv6Addr};

use socket2::SockFilter;

use crate::trust::TrustList;

/// The kernel's limit on a classic filter's length (BPF_MAXINSNS).
pub(crate) const MAX_INSTRUCTIONS: usize = 4096;

const BPF_LD: u16 = 0x00;
const BPF_W: u16 = 0x00;
const BPF_H: u16 = 0x08;
const BPF_B: u16 = 0x10;
const BPF_ABS: u16 = 0x20;
const BPF_ALU: u16 = 0x04;
const BPF_AND: u16 = 0x50;
const BPF_K: u16 = 0x00;
const BPF_JMP: u16 = 0x05;
const BPF_JA: u16 = 0x00;
const BPF_JEQ: u16 = 0x10;
const BPF_RET: u16 = 0x06;
const BPF_MISC: u16 = 0x07;
const BPF_TAX: u16 = 0x00;
const BPF_TXA: u16 = 0x80;

const SKF_AD_OFF: i32 = -0x1000;
const SKF_AD_PROTOCOL: i32 = 0;
const SKF_NET_OFF: i32 = -0x100000;

const TCP_FLAGS_OFFSET: u32 = 13;
const TCP_SYN_ACK: u32 = 0x12;
const TCP_SYN: u32 = 0x02;
const ETH_P_IPV6: u32 = 0x86dd;
const IPV4_SRC_OFFSET: i32 = 12;
const IPV6_SRC_OFFSET: i32 = 8;

/// Return value that keeps the whole packet.
const ACCEPT: u32 = u32::MAX;
/// Return value that drops it.
const DROP: u32 = 0;

/// The generated program is longer than the kernel accepts.
#[derive(Debug, thiserror::Error)]
#[error(
    "the trusted list needs a classic BPF filter of {needed} instructions; the kernel accepts {MAX_INSTRUCTIONS}: shorten trusted_proxies or use the eBPF modes"
)]
pub struct TooLong {
    pub(crate) needed: usize,
}

/// Builds the filter for `trust`.
pub(crate) fn program(trust: &TrustList) -> Result<Vec<SockFilter>, TooLong> {
    let mut p = vec![
        // A = tcp flags & (SYN|ACK); anything but an initial SYN is accepted.
        stmt(BPF_LD | BPF_B | BPF_ABS, TCP_FLAGS_OFFSET),
        stmt(BPF_ALU | BPF_AND | BPF_K, TCP_SYN_ACK),
        jump(BPF_JMP | BPF_JEQ | BPF_K, TCP_SYN, 1, 0),
        stmt(BPF_RET | BPF_K, ACCEPT),
        // Dispatch on the family: IPv6 jumps over the IPv4 block.
        stmt(
            BPF_LD | BPF_H | BPF_ABS,
            offset(SKF_AD_OFF + SKF_AD_PROTOCOL),
        ),
        jump(BPF_JMP | BPF_JEQ | BPF_K, ETH_P_IPV6, 0, 1),
    ];
    let ja_to_v6 = p.len();
    p.push(stmt(BPF_JMP | BPF_JA, 0));
    let v4_start = p.len();
    v4_block(
        &mut p,
        trust
            .v4()
            .iter()
            .map(|(n, _)| (n.network(), n.prefix_len())),
    );
    let v6_start = p.len();
    p[ja_to_v6] = stmt(BPF_JMP | BPF_JA, (v6_start - v4_start) as u32);
    v6_block(
        &mut p,
        trust
            .v6()
            .iter()
            .map(|(n, _)| (n.network(), n.prefix_len())),
    );
    if p.len() > MAX_INSTRUCTIONS {
        return Err(TooLong { needed: p.len() });
    }
    Ok(p)
}

/// X = source; for each prefix: A = X & mask; if A == net return ACCEPT. Then DROP.
fn v4_block(p: &mut Vec<SockFilter>, prefixes: impl Iterator<Item = (Ipv4Addr, u8)>) {
    p.push(stmt(
        BPF_LD | BPF_W | BPF_ABS,
        offset(SKF_NET_OFF + IPV4_SRC_OFFSET),
    ));
    p.push(stmt(BPF_MISC | BPF_TAX, 0));
    for (net, len) in prefixes {
        if len == 0 {
            p.push(stmt(BPF_RET | BPF_K, ACCEPT));
            continue;
        }
        p.push(stmt(BPF_MISC | BPF_TXA, 0));
        p.push(stmt(BPF_ALU | BPF_AND | BPF_K, mask(len)));
        p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, u32::from(net), 0, 1));
        p.push(stmt(BPF_RET | BPF_K, ACCEPT));
    }
    p.push(stmt(BPF_RET | BPF_K, DROP));
}

/// For each prefix, compare the source word by word; a mismatch jumps to the next
/// prefix, a full match returns ACCEPT. Then DROP.
fn v6_block(p: &mut Vec<SockFilter>, prefixes: impl Iterator<Item = (Ipv6Addr, u8)>) {
    for (net, len) in prefixes {
        let words: Vec<(usize, u32, u32)> = net
            .octets()
            .chunks_exact(4)
            .enumerate()
            .map(|(i, c)| (i, u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .filter_map(|(i, word)| {
                let bits = u32::from(len).saturating_sub(32 * i as u32).min(32);
                (bits > 0).then(|| (i, word, mask(bits as u8)))
            })
            .collect();
        // Each word costs three instructions; the ACCEPT follows the last.
        let block = words.len() * 3;
        for (n, (i, word, m)) in words.iter().enumerate() {
            p.push(stmt(
                BPF_LD | BPF_W | BPF_ABS,
                offset(SKF_NET_OFF + IPV6_SRC_OFFSET + 4 * *i as i32),
            ));
            p.push(stmt(BPF_ALU | BPF_AND | BPF_K, *m));
            // On mismatch skip the rest of this block and its ACCEPT.
            let skip = block - 3 * (n + 1) + 1;
            p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, *word & *m, 0, skip as u8));
        }
        p.push(stmt(BPF_RET | BPF_K, ACCEPT));
    }
    p.push(stmt(BPF_RET | BPF_K, DROP));
}

fn mask(len: u8) -> u32 {
    match len {
        0 => 0,
        l if l >= 32 => u32::MAX,
        l => u32::MAX << (32 - u32::from(l)),
    }
}

fn offset(k: i32) -> u32 {
    k as u32
}

fn stmt(code: u16, k: u32) -> SockFilter {
    SockFilter::new(code, 0, 0, k)
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> SockFilter {
    SockFilter::new(code, jt, jf, k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(nets: &[&str]) -> TrustList {
        TrustList::new(nets.iter().map(|s| s.parse().expect("test prefix")))
    }

    #[test]
    fn masks_cover_prefix_lengths() {
        assert_eq!(mask(0), 0);
        assert_eq!(mask(8), 0xff00_0000);
        assert_eq!(mask(32), u32::MAX);
    }

    #[test]
    fn program_length_grows_with_the_list() {
        let small = program(&list(&["127.0.0.1/32"])).expect("fits");
        let big = program(&list(&["127.0.0.1/32", "10.0.0.0/8", "2001:db8::/32"])).expect("fits");
        // 7 preamble + (2 + 4 + 1) v4 + (1) v6 = 15 for the small one.
        assert_eq!(small.len(), 15);
        // +4 for the second v4 prefix, +4 for a /32 v6 prefix (one word).
        assert_eq!(big.len(), 23);
    }

    #[test]
    fn direct_prefixes_are_admitted_like_proxy_ones() {
        use crate::trust::Class;
        let both = TrustList::with_classes([
            ("127.0.0.1/32".parse().expect("test prefix"), Class::Proxy),
            ("10.0.0.0/8".parse().expect("test prefix"), Class::Direct),
            ("2001:db8::/32".parse().expect("test prefix"), Class::Direct),
        ])
        .expect("no conflict");
        let same = list(&["127.0.0.1/32", "10.0.0.0/8", "2001:db8::/32"]);
        // SockFilter shows nothing of its fields; a filter that left the direct prefixes
        // out would be 8 instructions shorter (the netns tests run both for real).
        assert_eq!(
            program(&both).expect("fits").len(),
            program(&same).expect("fits").len()
        );
    }

    #[test]
    fn too_many_prefixes_is_an_error_not_a_truncated_filter() {
        let nets: Vec<String> = (0..400u32)
            .map(|i| format!("2001:db8:{:x}::/128", i))
            .collect();
        let refs: Vec<&str> = nets.iter().map(String::as_str).collect();
        let err = program(&list(&refs)).expect_err("400 /128s need 13 instructions each");
        assert!(err.needed > MAX_INSTRUCTIONS);
    }
}
