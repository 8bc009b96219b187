//! Addresses and networks: listen addresses, and the entries of the two trusted lists. A
//! trusted entry is a CIDR without host bits, or one bare address, taken as /32 or /128.
//! Anything else is refused, never guessed: these lists decide who is believed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net};

use super::{Cx, shown};
use crate::config::error::{ConfigError, Family, ValueError};
use crate::config::file::OneOrMany;
use crate::config::keys::nearest;
use crate::config::warning::WarningKind;

/// rpxy's built-in provider lists (`rpxy-trusted-proxies`). trustgate ships none.
const PROVIDERS: &[&str] = &["cloudflare", "cloudfront", "fastly"];

/// `listen_address_v4`/`_v6`: addresses of one family, duplicates dropped (as rpxy
/// does), the wildcard only alone.
pub(super) fn listen_addresses(
    cx: &Cx<'_>,
    key: &str,
    list: &OneOrMany,
    family: Family,
) -> Result<Vec<IpAddr>, ConfigError> {
    let entries = list.entries(key);
    if entries.is_empty() {
        return Err(cx.invalid(
            key,
            "[]".into(),
            ValueError::EmptyList {
                what_to_do: "give at least one address, or remove the key for the default",
            },
        ));
    }
    let mut found: Vec<(String, IpAddr)> = Vec::with_capacity(entries.len());
    for (entry_key, text) in entries {
        let ip =
            listen_address(text, family).map_err(|p| cx.invalid(&entry_key, shown(text), p))?;
        if !found.iter().any(|(_, seen)| *seen == ip) {
            found.push((entry_key, ip));
        }
    }
    if found.len() > 1
        && let Some((entry_key, wildcard)) = found.iter().find(|(_, ip)| ip.is_unspecified())
    {
        return Err(cx.invalid(
            entry_key,
            shown(&wildcard.to_string()),
            ValueError::WildcardInList {
                wildcard: *wildcard,
            },
        ));
    }
    Ok(found.into_iter().map(|(_, ip)| ip).collect())
}

/// One listen address; IPv6 may be written with brackets (`[::1]`).
fn listen_address(text: &str, family: Family) -> Result<IpAddr, ValueError> {
    let unbracketed = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    let v4 = text.parse::<Ipv4Addr>();
    let v6 = unbracketed.parse::<Ipv6Addr>();
    match (family, v4, v6) {
        (Family::V4, Ok(a), _) => Ok(IpAddr::V4(a)),
        (Family::V6, _, Ok(a)) => Ok(IpAddr::V6(a)),
        (Family::V4, _, Ok(_)) => Err(ValueError::WrongFamily {
            family: Family::V6,
            key: "listen_address_v6",
        }),
        (Family::V6, Ok(_), _) => Err(ValueError::WrongFamily {
            family: Family::V4,
            key: "listen_address_v4",
        }),
        (family, Err(_), Err(_)) => Err(ValueError::NotAnAddress { family }),
    }
}

/// One entry of a trusted list, with a warning for a `/0`.
pub(super) fn network(cx: &mut Cx<'_>, key: &str, text: &str) -> Result<IpNet, ConfigError> {
    let net = parse_network(text).map_err(|p| cx.invalid(key, shown(text), p))?;
    warn_if_everyone(cx, key, net);
    Ok(net)
}

/// `trusted_forwarded_proxies`: networks as in `network`, plus rpxy's provider names,
/// which are warned about and trust nobody. An empty list is allowed (trust nobody).
pub(super) fn forwarded_proxies(
    cx: &mut Cx<'_>,
    list: &OneOrMany,
) -> Result<Vec<IpNet>, ConfigError> {
    let mut nets = Vec::new();
    for (key, text) in list.entries("trusted_forwarded_proxies") {
        match parse_network(text) {
            Ok(net) => {
                warn_if_everyone(cx, &key, net);
                nets.push(net);
            }
            Err(ValueError::NotANetwork) if looks_like_a_name(text) => {
                let name = text.trim().to_ascii_lowercase();
                if !PROVIDERS.contains(&name.as_str()) {
                    let nearest = nearest(&name, PROVIDERS.iter().copied());
                    return Err(cx.invalid(
                        key,
                        shown(text),
                        ValueError::UnknownProvider { nearest },
                    ));
                }
                cx.warn(
                    key,
                    WarningKind::ProviderIgnored {
                        name: text.to_owned(),
                    },
                );
            }
            Err(problem) => return Err(cx.invalid(key, shown(text), problem)),
        }
    }
    Ok(nets)
}

fn warn_if_everyone(cx: &mut Cx<'_>, key: &str, net: IpNet) {
    if net.prefix_len() == 0 {
        cx.warn(key, WarningKind::TrustsEveryone { net });
    }
}

/// A CIDR without host bits, or one address.
fn parse_network(text: &str) -> Result<IpNet, ValueError> {
    let net = if text.contains('/') {
        text.parse::<IpNet>().map_err(|_| ValueError::NotANetwork)?
    } else {
        IpNet::from(
            text.parse::<IpAddr>()
                .map_err(|_| ValueError::NotANetwork)?,
        )
    };
    if net.trunc() != net {
        return Err(ValueError::HostBitsSet {
            network: net.trunc(),
            host: IpNet::from(net.addr()),
        });
    }
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
    {
        let ipv4 = Ipv4Net::new(v4, v6.prefix_len() - 96)
            .expect("a prefix of 96..=128 less 96 is a valid IPv4 prefix length");
        return Err(ValueError::Ipv4Mapped { ipv4 });
    }
    Ok(net)
}

/// What rpxy would read as a provider alias rather than a malformed network.
fn looks_like_a_name(text: &str) -> bool {
    let t = text.trim();
    !t.is_empty()
        && t.chars().any(|c| c.is_ascii_alphabetic())
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::warning::Warning;
    use std::path::Path;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test network")
    }

    fn with_cx<T>(f: impl FnOnce(&mut Cx<'_>) -> T) -> (T, Vec<Warning>) {
        let mut warnings = Vec::new();
        let mut cx = Cx {
            file: Path::new("t.toml"),
            warnings: &mut warnings,
        };
        let out = f(&mut cx);
        (out, warnings)
    }

    fn one(s: &str) -> OneOrMany {
        OneOrMany::One(s.into())
    }

    fn many(v: &[&str]) -> OneOrMany {
        OneOrMany::Many(v.iter().map(|s| s.to_string()).collect())
    }

    fn problem(r: Result<impl std::fmt::Debug, ConfigError>) -> (String, ValueError) {
        match r {
            Err(ConfigError::Invalid { key, problem, .. }) => (key, problem),
            other => panic!("expected an invalid value, got {other:?}"),
        }
    }

    #[test]
    fn cidr_without_host_bits_is_accepted() {
        assert_eq!(
            parse_network("10.0.0.0/8").expect("valid"),
            net("10.0.0.0/8")
        );
        assert_eq!(
            parse_network("2001:db8::/32").expect("valid"),
            net("2001:db8::/32")
        );
    }

    #[test]
    fn bare_address_is_a_host_prefix() {
        assert_eq!(
            parse_network("192.0.2.7").expect("valid"),
            net("192.0.2.7/32")
        );
        assert_eq!(parse_network("::1").expect("valid"), net("::1/128"));
    }

    #[test]
    fn host_bits_are_refused_with_the_network_and_the_host() {
        match parse_network("10.0.0.1/8") {
            Err(ValueError::HostBitsSet { network, host }) => {
                assert_eq!(network, net("10.0.0.0/8"));
                assert_eq!(host, net("10.0.0.1/32"));
            }
            other => panic!("expected host bits set, got {other:?}"),
        }
        assert!(matches!(
            parse_network("2001:db8::1/64"),
            Err(ValueError::HostBitsSet { .. })
        ));
    }

    #[test]
    fn malformed_networks_are_refused() {
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "",
            "10.0.0.0/",
            "::1/129",
            " 10.0.0.0/8",
        ] {
            assert!(
                matches!(parse_network(bad), Err(ValueError::NotANetwork)),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn mapped_ipv6_prefix_is_refused_in_favour_of_ipv4() {
        match parse_network("::ffff:10.0.0.0/104") {
            Err(ValueError::Ipv4Mapped { ipv4 }) => assert_eq!(ipv4.to_string(), "10.0.0.0/8"),
            other => panic!("expected mapped refusal, got {other:?}"),
        }
        // Shorter than /96 it is an ordinary IPv6 prefix.
        assert!(parse_network("::/64").is_ok());
    }

    #[test]
    fn zero_prefix_loads_with_a_warning() {
        let (r, w) = with_cx(|cx| network(cx, "k[0]", "0.0.0.0/0"));
        assert_eq!(r.expect("valid"), net("0.0.0.0/0"));
        assert_eq!(
            w[0].kind,
            WarningKind::TrustsEveryone {
                net: net("0.0.0.0/0")
            }
        );
        let (_, w) = with_cx(|cx| network(cx, "k[0]", "0.0.0.0/1"));
        assert!(w.is_empty());
    }

    #[test]
    fn provider_names_warn_and_trust_nobody() {
        let (r, w) = with_cx(|cx| forwarded_proxies(cx, &many(&["Cloudflare", "10.0.0.0/8"])));
        assert_eq!(r.expect("valid"), vec![net("10.0.0.0/8")]);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].key, "trusted_forwarded_proxies[0]");
    }

    #[test]
    fn unknown_provider_is_refused_with_the_nearest_name() {
        let (r, _) = with_cx(|cx| forwarded_proxies(cx, &one("cloudfare")));
        let (key, p) = problem(r);
        assert_eq!(key, "trusted_forwarded_proxies");
        assert!(matches!(
            p,
            ValueError::UnknownProvider {
                nearest: Some("cloudflare")
            }
        ));
    }

    #[test]
    fn forwarded_proxies_refuse_host_bits_and_allow_an_empty_list() {
        let (r, _) = with_cx(|cx| forwarded_proxies(cx, &many(&["192.168.0.0/16", "10.1.2.3/8"])));
        let (key, p) = problem(r);
        assert_eq!(key, "trusted_forwarded_proxies[1]");
        assert!(matches!(p, ValueError::HostBitsSet { .. }));
        let (r, _) = with_cx(|cx| forwarded_proxies(cx, &many(&[])));
        assert!(r.expect("empty is allowed").is_empty());
    }

    #[test]
    fn listen_addresses_parse_dedupe_and_take_brackets() {
        let (r, _) = with_cx(|cx| {
            listen_addresses(
                cx,
                "v4",
                &many(&["10.0.0.1", "10.0.0.1", "10.0.0.2"]),
                Family::V4,
            )
        });
        assert_eq!(r.expect("valid").len(), 2);
        let (r, _) = with_cx(|cx| listen_addresses(cx, "v6", &one("[::1]"), Family::V6));
        assert_eq!(r.expect("valid"), vec![IpAddr::V6(Ipv6Addr::LOCALHOST)]);
    }

    #[test]
    fn lone_wildcard_is_accepted_but_not_in_a_list() {
        let (r, _) = with_cx(|cx| listen_addresses(cx, "v4", &one("0.0.0.0"), Family::V4));
        assert!(r.is_ok());
        let (r, _) = with_cx(|cx| {
            listen_addresses(
                cx,
                "listen_address_v4",
                &many(&["10.0.0.1", "0.0.0.0"]),
                Family::V4,
            )
        });
        let (key, p) = problem(r);
        assert_eq!(key, "listen_address_v4[1]");
        assert!(matches!(p, ValueError::WildcardInList { .. }));
        let (r, _) = with_cx(|cx| listen_addresses(cx, "v6", &many(&["::", "::1"]), Family::V6));
        assert!(matches!(problem(r).1, ValueError::WildcardInList { .. }));
    }

    #[test]
    fn listen_address_of_the_other_family_names_the_right_key() {
        assert!(matches!(
            listen_address("::1", Family::V4),
            Err(ValueError::WrongFamily {
                key: "listen_address_v6",
                ..
            })
        ));
        assert!(matches!(
            listen_address("127.0.0.1", Family::V6),
            Err(ValueError::WrongFamily {
                key: "listen_address_v4",
                ..
            })
        ));
        assert!(matches!(
            listen_address("localhost", Family::V4),
            Err(ValueError::NotAnAddress { family: Family::V4 })
        ));
    }

    #[test]
    fn empty_listen_address_list_is_refused() {
        let (r, _) = with_cx(|cx| listen_addresses(cx, "v4", &many(&[]), Family::V4));
        assert!(matches!(problem(r).1, ValueError::EmptyList { .. }));
    }
}
