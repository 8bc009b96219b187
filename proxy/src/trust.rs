//! Who may connect, and as what: the prefixes of `trusted_proxies` ([`Class::Proxy`]:
//! must send a PROXY header) and `direct_sources` ([`Class::Direct`]: must not). One
//! `TrustList` is the single source of truth for user space (the check after `accept()`)
//! and the kernel tries the eBPF programs read, and both decide the same way: the longest
//! prefix holding an address gives its class. IPv4-mapped IPv6 peers (`::ffff:a.b.c.d`)
//! are judged as the IPv4 address they carry.

use std::fmt;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
pub use proxy_common::Class;

/// Admitted prefixes and their class, split by family, in the order they were given.
/// No prefix appears twice (with one class or two).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustList {
    v4: Vec<(Ipv4Net, Class)>,
    v6: Vec<(Ipv6Net, Class)>,
}

/// The same prefix was given with two classes: which one the longest-prefix match should
/// give is undecidable. Indexes are positions in the sequence given to
/// [`TrustList::with_classes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{net} is listed both as {} (entry {first}) and as {} (entry {second}): keep it in one list",
    first_class.name(),
    second_class.name()
)]
pub struct ClassConflict {
    pub(crate) net: IpNet,
    pub(crate) first: usize,
    pub(crate) first_class: Class,
    pub(crate) second: usize,
    pub(crate) second_class: Class,
}

impl TrustList {
    /// A list of [`Class::Proxy`] prefixes (`trusted_proxies` alone, or
    /// `trusted_forwarded_proxies`). Duplicates are kept out; order is otherwise kept.
    pub fn new(prefixes: impl IntoIterator<Item = IpNet>) -> Self {
        Self::with_classes(prefixes.into_iter().map(|n| (n, Class::Proxy)))
            .expect("one class cannot conflict with itself")
    }

    /// A list of prefixes with their classes. A prefix given twice with the same class is
    /// kept once; given with two classes, it is refused. Nested prefixes of different
    /// classes are fine: the longest prefix decides (see [`TrustList::class`]).
    pub fn with_classes(
        entries: impl IntoIterator<Item = (IpNet, Class)>,
    ) -> Result<Self, ClassConflict> {
        let mut list = TrustList::default();
        // Where each kept prefix came from, for the conflict's message.
        let mut origin: Vec<(IpNet, usize, Class)> = Vec::new();
        for (i, (net, class)) in entries.into_iter().enumerate() {
            if let Some(&(_, first, first_class)) = origin.iter().find(|(n, ..)| *n == net) {
                if first_class == class {
                    continue;
                }
                return Err(ClassConflict {
                    net,
                    first,
                    first_class,
                    second: i,
                    second_class: class,
                });
            }
            origin.push((net, i, class));
            match net {
                IpNet::V4(n) => list.v4.push((n, class)),
                IpNet::V6(n) => list.v6.push((n, class)),
            }
        }
        Ok(list)
    }

    /// The class of the longest prefix holding `addr`, or `None` when no prefix does (the
    /// kernel drops its SYNs). An IPv4-mapped IPv6 address is judged by the IPv4
    /// prefixes only, as the kernel programs do.
    pub(crate) fn class(&self, addr: IpAddr) -> Option<Class> {
        match normalize(addr) {
            IpAddr::V4(a) => longest(self.v4.iter().filter(|(n, _)| n.contains(&a)), |n| {
                n.prefix_len()
            }),
            IpAddr::V6(a) => longest(self.v6.iter().filter(|(n, _)| n.contains(&a)), |n| {
                n.prefix_len()
            }),
        }
    }

    /// Whether `addr` lies in an admitted prefix of either class.
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.class(addr).is_some()
    }

    /// The IPv4 prefixes and their classes.
    pub(crate) fn v4(&self) -> &[(Ipv4Net, Class)] {
        &self.v4
    }

    /// The IPv6 prefixes and their classes.
    pub(crate) fn v6(&self) -> &[(Ipv6Net, Class)] {
        &self.v6
    }

    /// The prefixes of one class, IPv4 first, in the order given.
    pub(crate) fn of_class(&self, class: Class) -> Vec<IpNet> {
        let v4 = self.v4.iter().map(|(n, c)| (IpNet::V4(*n), *c));
        let v6 = self.v6.iter().map(|(n, c)| (IpNet::V6(*n), *c));
        v4.chain(v6)
            .filter(|(_, c)| *c == class)
            .map(|(n, _)| n)
            .collect()
    }

    /// Number of prefixes of both families and classes.
    pub(crate) fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether the list admits nobody.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The class of the entry with the longest prefix among `matching`.
fn longest<'a, N: 'a>(
    matching: impl Iterator<Item = &'a (N, Class)>,
    len: impl Fn(&N) -> u8,
) -> Option<Class> {
    matching.max_by_key(|(n, _)| len(n)).map(|(_, c)| *c)
}

/// The prefixes, `, `-separated; a direct one is followed by ` (direct)`.
impl fmt::Display for TrustList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v4 = self.v4.iter().map(|(n, c)| (IpNet::V4(*n), *c));
        let v6 = self.v6.iter().map(|(n, c)| (IpNet::V6(*n), *c));
        for (i, (net, class)) in v4.chain(v6).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{net}")?;
            if class == Class::Direct {
                f.write_str(" (direct)")?;
            }
        }
        Ok(())
    }
}

/// Turns an IPv4-mapped IPv6 address into the IPv4 address it carries; any other
/// address is returned as it is.
pub(crate) fn normalize(addr: IpAddr) -> IpAddr {
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

    fn classed(proxy: &[&str], direct: &[&str]) -> TrustList {
        let p = proxy
            .iter()
            .map(|s| (s.parse().expect("test prefix"), Class::Proxy));
        let d = direct
            .iter()
            .map(|s| (s.parse().expect("test prefix"), Class::Direct));
        TrustList::with_classes(p.chain(d)).expect("no conflict")
    }

    #[test]
    fn class_is_that_of_the_longest_prefix_either_way_round() {
        // A direct pod CIDR with the in-cluster load balancer carved out of it...
        let l = classed(
            &["10.0.5.7/32", "2001:db8::7/128"],
            &["10.0.0.0/16", "2001:db8::/64"],
        );
        assert_eq!(l.class(ip("10.0.5.7")), Some(Class::Proxy));
        assert_eq!(l.class(ip("10.0.5.8")), Some(Class::Direct));
        assert_eq!(l.class(ip("2001:db8::7")), Some(Class::Proxy));
        assert_eq!(l.class(ip("2001:db8::8")), Some(Class::Direct));
        assert_eq!(l.class(ip("10.1.0.1")), None);
        // ... and a health checker carved out of the load balancers' subnet, whatever
        // the order the entries came in.
        let l = classed(&["192.0.2.0/24"], &["192.0.2.9/32"]);
        assert_eq!(l.class(ip("192.0.2.9")), Some(Class::Direct));
        assert_eq!(l.class(ip("::ffff:192.0.2.9")), Some(Class::Direct));
        assert_eq!(l.class(ip("192.0.2.10")), Some(Class::Proxy));
        assert!(l.contains(ip("192.0.2.9")) && l.contains(ip("192.0.2.10")));
    }

    #[test]
    fn the_same_prefix_in_two_classes_is_refused_and_located() {
        let entries = [
            ("10.0.0.0/8", Class::Proxy),
            ("192.0.2.0/24", Class::Proxy),
            ("10.0.0.0/8", Class::Proxy),
            ("192.0.2.0/24", Class::Direct),
        ];
        let err = TrustList::with_classes(
            entries
                .iter()
                .map(|(s, c)| (s.parse().expect("test prefix"), *c)),
        )
        .expect_err("192.0.2.0/24 is in both");
        assert_eq!((err.first, err.second), (1, 3));
        assert_eq!(
            (err.first_class, err.second_class),
            (Class::Proxy, Class::Direct)
        );
        assert_eq!(err.net.to_string(), "192.0.2.0/24");
    }

    #[test]
    fn of_class_and_display_tell_the_classes_apart() {
        let l = classed(&["10.0.0.0/8", "::1/128"], &["10.1.0.0/16"]);
        assert_eq!(l.len(), 3);
        let direct: Vec<String> = l
            .of_class(Class::Direct)
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(direct, ["10.1.0.0/16"]);
        assert_eq!(l.of_class(Class::Proxy).len(), 2);
        assert_eq!(l.to_string(), "10.0.0.0/8, 10.1.0.0/16 (direct), ::1/128");
    }

    #[test]
    fn empty_list_trusts_nobody() {
        let l = TrustList::default();
        assert!(l.is_empty());
        assert!(!l.contains(ip("127.0.0.1")));
        assert_eq!(l.class(ip("127.0.0.1")), None);
    }
}
