//! The trusted-proxies list: the set of load-balancer prefixes allowed to connect and
//! to speak the PROXY protocol. One `TrustList` is the single source of truth for both
//! user space (the check after `accept()`) and the kernel maps the eBPF programs read.
//! IPv4-mapped IPv6 peers (`::ffff:a.b.c.d`) are judged as the IPv4 address they carry.

use std::fmt;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A set of trusted prefixes, split by family, in the order they were given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustList {
    v4: Vec<Ipv4Net>,
    v6: Vec<Ipv6Net>,
}

impl TrustList {
    /// Builds a list from prefixes. Duplicates are kept out; order is otherwise kept.
    pub fn new(prefixes: impl IntoIterator<Item = IpNet>) -> Self {
        let mut list = TrustList::default();
        for net in prefixes {
            match net {
                IpNet::V4(n) if !list.v4.contains(&n) => list.v4.push(n),
                IpNet::V6(n) if !list.v6.contains(&n) => list.v6.push(n),
                _ => {}
            }
        }
        list
    }

    /// Whether `addr` lies in a trusted prefix. An IPv4-mapped IPv6 address is judged
    /// by the IPv4 prefixes only, as the kernel programs do.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match normalize(addr) {
            IpAddr::V4(a) => self.v4.iter().any(|n| n.contains(&a)),
            IpAddr::V6(a) => self.v6.iter().any(|n| n.contains(&a)),
        }
    }

    /// The IPv4 prefixes.
    pub fn v4(&self) -> &[Ipv4Net] {
        &self.v4
    }

    /// The IPv6 prefixes.
    pub fn v6(&self) -> &[Ipv6Net] {
        &self.v6
    }

    /// Number of prefixes of both families.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether the list trusts nobody.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Display for TrustList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for net in self
            .v4
            .iter()
            .map(|n| IpNet::V4(*n))
            .chain(self.v6.iter().map(|n| IpNet::V6(*n)))
        {
            if !first {
                f.write_str(", ")?;
            }
            write!(f, "{net}")?;
            first = false;
        }
        Ok(())
    }
}

/// Turns an IPv4-mapped IPv6 address into the IPv4 address it carries; any other
/// address is returned as it is.
pub fn normalize(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(a),
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(nets: &[&str]) -> TrustList {
        TrustList::new(nets.iter().map(|s| s.parse().expect("test prefix")))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn contains_inside_and_not_outside_a_prefix() {
        let l = list(&["10.0.0.0/8", "2001:db8::/32"]);
        assert!(l.contains(ip("10.255.0.1")));
        assert!(!l.contains(ip("11.0.0.1")));
        assert!(l.contains(ip("2001:db8::1")));
        assert!(!l.contains(ip("2001:db9::1")));
    }

    #[test]
    fn mapped_ipv6_is_judged_as_ipv4() {
        let l = list(&["192.0.2.0/24"]);
        assert!(l.contains(ip("::ffff:192.0.2.7")));
        assert!(!l.contains(ip("::ffff:198.51.100.7")));
        // An IPv6 prefix covering the mapped range does not trust it: the kernel
        // judges mapped sources by the IPv4 trie, and so do we.
        let l6 = list(&["::ffff:0:0/96"]);
        assert!(!l6.contains(ip("::ffff:192.0.2.7")));
    }

    #[test]
    fn zero_prefix_trusts_its_whole_family_only() {
        let l = list(&["0.0.0.0/0"]);
        assert!(l.contains(ip("203.0.113.9")));
        assert!(!l.contains(ip("2001:db8::1")));
    }

    #[test]
    fn host_prefixes_match_exactly() {
        let l = list(&["127.0.0.1/32", "::1/128"]);
        assert!(l.contains(ip("127.0.0.1")));
        assert!(!l.contains(ip("127.0.0.2")));
        assert!(l.contains(ip("::1")));
        assert!(!l.contains(ip("::2")));
    }

    #[test]
    fn duplicates_are_kept_once_and_display_lists_all() {
        let l = list(&["10.0.0.0/8", "10.0.0.0/8", "::1/128"]);
        assert_eq!(l.len(), 2);
        assert_eq!(l.to_string(), "10.0.0.0/8, ::1/128");
    }

    #[test]
    fn empty_list_trusts_nobody() {
        let l = TrustList::default();
        assert!(l.is_empty());
        assert!(!l.contains(ip("127.0.0.1")));
    }
}
