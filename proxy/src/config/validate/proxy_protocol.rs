//! `[experimental.tcp_recv_proxy_protocol]` and its `kernel_filter` table: the trusted
//! load balancers, the direct sources, the header timeout, and where the kernel enforces
//! the lists. A setting that the chosen mode would ignore is refused, since it shows a
//! misunderstanding; so is a network in both lists, whose class would be undecidable.

use std::time::Duration;

use ipnet::IpNet;

use super::{Cx, net, shown};
use crate::config::error::{ConfigError, ValueError};
use crate::config::file::{KernelFilterFile, KernelModeFile, ProxyProtocolFile};
use crate::config::keys;
use crate::config::{KernelFilterConfig, KernelFilterMode, ProxyProtocolConfig, XdpMode};
use crate::trust::{Class, TrustList};

const DEFAULT_PROXY_HEADER_TIMEOUT: Duration = Duration::from_millis(50);
/// How long a connection may wait for its first byte: NLB and others send the header
/// with the client's first data, and a browser's preconnect sends nothing for a while.
const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(5);
/// What `timeout = 0` means, as in rpxy.
const ZERO_PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Linux's IFNAMSIZ less the terminating NUL.
const MAX_INTERFACE_NAME_BYTES: usize = 15;

const PROXY_PROTOCOL: &str = "experimental.tcp_recv_proxy_protocol";
const KERNEL_FILTER: &str = "experimental.tcp_recv_proxy_protocol.kernel_filter";

/// `request_header_timeout` bounds the wait for the first byte too: the default first-byte
/// timeout is the shorter of the two, and a longer one configured is refused.
pub(super) fn proxy_protocol(
    cx: &mut Cx<'_>,
    pp: ProxyProtocolFile,
    request_header_timeout: Duration,
) -> Result<ProxyProtocolConfig, ConfigError> {
    let key = format!("{PROXY_PROTOCOL}.trusted_proxies");
    let Some(list) = pp.trusted_proxies else {
        return Err(cx.missing(
            key,
            "PROXY headers are accepted only from the load balancers listed here: \
             list them (trusted_proxies = [\"10.0.0.0/8\"]), or remove the table",
        ));
    };
    if list.is_empty() {
        return Err(cx.invalid(
            key,
            "[]".into(),
            ValueError::EmptyList {
                what_to_do: "list the load balancers allowed to send PROXY headers, or \
                             remove [experimental.tcp_recv_proxy_protocol]",
            },
        ));
    }
    // Every entry of both lists, with its key and text, in the order TrustList sees them.
    let mut entries: Vec<(String, &str, IpNet, Class)> = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let entry_key = format!("{key}[{i}]");
        let net = net::network(cx, &entry_key, entry)?;
        entries.push((entry_key, entry, net, Class::Proxy));
    }
    let direct_key = format!("{PROXY_PROTOCOL}.direct_sources");
    for (i, entry) in pp.direct_sources.iter().flatten().enumerate() {
        let entry_key = format!("{direct_key}[{i}]");
        let net = net::network(cx, &entry_key, entry)?;
        entries.push((entry_key, entry, net, Class::Direct));
    }
    let trust = TrustList::with_classes(entries.iter().map(|(_, _, net, class)| (*net, *class)))
        .map_err(|conflict| {
            let (first_key, first_text, ..) = &entries[conflict.first];
            let (second_key, second_text, ..) = &entries[conflict.second];
            cx.invalid(
                second_key,
                shown(second_text),
                ValueError::InBothLists {
                    other: first_key.clone(),
                    other_value: (*first_text).to_owned(),
                },
            )
        })?;
    let timeout = match pp.timeout {
        None => DEFAULT_PROXY_HEADER_TIMEOUT,
        Some(0) => ZERO_PROXY_HEADER_TIMEOUT,
        Some(ms) => Duration::from_millis(ms),
    };
    let first_byte_key = || format!("{PROXY_PROTOCOL}.first_byte_timeout");
    let first_byte_timeout = match pp.first_byte_timeout {
        None => DEFAULT_FIRST_BYTE_TIMEOUT.min(request_header_timeout),
        Some(0) => {
            return Err(cx.invalid(first_byte_key(), "0".into(), ValueError::ZeroMillis));
        }
        Some(ms) if Duration::from_millis(ms) > request_header_timeout => {
            return Err(cx.invalid(
                first_byte_key(),
                ms.to_string(),
                ValueError::FirstByteAfterHeaderTimeout {
                    header: request_header_timeout,
                },
            ));
        }
        Some(ms) => Duration::from_millis(ms),
    };
    Ok(ProxyProtocolConfig {
        trust,
        timeout,
        first_byte_timeout,
        accept_v1_mixed_families: pp.accept_v1_mixed_families.unwrap_or(false),
        kernel_filter: kernel_filter(cx, pp.kernel_filter)?,
    })
}

fn kernel_filter(
    cx: &Cx<'_>,
    kf: Option<KernelFilterFile>,
) -> Result<KernelFilterConfig, ConfigError> {
    let Some(kf) = kf else {
        return Ok(KernelFilterConfig {
            mode: KernelFilterMode::Socket,
            required: true,
            observe_only: false,
            detach_accepted: true,
        });
    };
    let mode_key = format!("{KERNEL_FILTER}.mode");
    let chosen = match &kf.mode {
        None => KernelModeFile::Socket,
        Some(m) => cx.choice(&mode_key, m)?,
    };
    let mode = keys::variant_name::<KernelModeFile>(chosen as usize);
    if let Some(detach) = kf.detach_accepted
        && chosen != KernelModeFile::Socket
    {
        return Err(cx.invalid(
            format!("{KERNEL_FILTER}.detach_accepted"),
            shown(&detach),
            ValueError::OnlyForSocket { mode },
        ));
    }
    let interfaces_key = format!("{KERNEL_FILTER}.interfaces");
    let xdp_mode_key = format!("{KERNEL_FILTER}.xdp_mode");
    let mode = if chosen == KernelModeFile::Xdp {
        let interfaces = kf.interfaces.unwrap_or_default();
        if interfaces.is_empty() {
            return Err(cx.invalid(mode_key, shown("xdp"), ValueError::XdpNeedsInterfaces));
        }
        for (i, name) in interfaces.iter().enumerate() {
            let key = || format!("{interfaces_key}[{i}]");
            let bad_name = name.is_empty()
                || name.len() > MAX_INTERFACE_NAME_BYTES
                || name.contains('/')
                || name.chars().any(char::is_whitespace);
            if bad_name {
                return Err(cx.invalid(key(), shown(name), ValueError::BadInterfaceName));
            }
            if interfaces[..i].contains(name) {
                return Err(cx.invalid(key(), shown(name), ValueError::Duplicate));
            }
        }
        let xdp_mode = match &kf.xdp_mode {
            None => XdpMode::Auto,
            Some(m) => cx.choice(&xdp_mode_key, m)?,
        };
        KernelFilterMode::Xdp {
            interfaces,
            xdp_mode,
        }
    } else {
        if let Some(list) = &kf.interfaces {
            return Err(cx.invalid(interfaces_key, shown(list), ValueError::OnlyForXdp { mode }));
        }
        if let Some(m) = &kf.xdp_mode {
            return Err(cx.invalid(
                xdp_mode_key,
                shown(&m.text),
                ValueError::OnlyForXdp { mode },
            ));
        }
        if chosen == KernelModeFile::Off {
            KernelFilterMode::Off
        } else {
            KernelFilterMode::Socket
        }
    };
    Ok(KernelFilterConfig {
        mode,
        required: kf.required.unwrap_or(true),
        observe_only: kf.observe_only.unwrap_or(false),
        detach_accepted: kf.detach_accepted.unwrap_or(true),
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{APP, err, invalid, ok};
    use super::*;

    fn with_pp(kernel_filter: &str) -> String {
        format!(
            "listen_port = 8080\n{APP}[experimental.tcp_recv_proxy_protocol]\n\
             trusted_proxies = [\"10.0.0.0/8\"]\n{kernel_filter}"
        )
    }

    fn kf(body: &str) -> String {
        with_pp(&format!(
            "[experimental.tcp_recv_proxy_protocol.kernel_filter]\n{body}"
        ))
    }

    #[test]
    fn first_byte_timeout_defaults_to_5_s_and_is_bounded_by_the_head_timeout() {
        let pp = |extra: &str| {
            format!(
                "listen_port = 8080\n{extra}\n{APP}[experimental.tcp_recv_proxy_protocol]\n\
                 trusted_proxies = [\"10.0.0.0/8\"]\n"
            )
        };
        let c = ok(&pp("")).0.proxy_protocol.expect("pp");
        assert_eq!(c.first_byte_timeout, Duration::from_secs(5));
        assert_eq!(c.timeout, Duration::from_millis(50));
        assert!(!c.accept_v1_mixed_families);
        let c = ok(&format!(
            "{}first_byte_timeout = 2500\naccept_v1_mixed_families = true\n",
            pp("")
        ))
        .0
        .proxy_protocol
        .expect("pp");
        assert_eq!(c.first_byte_timeout, Duration::from_millis(2500));
        assert!(c.accept_v1_mixed_families);
        let (key, p) = invalid(&format!("{}first_byte_timeout = 0\n", pp("")));
        assert_eq!(
            key,
            "experimental.tcp_recv_proxy_protocol.first_byte_timeout"
        );
        assert!(matches!(p, ValueError::ZeroMillis));
        let c = ok(&pp("request_header_timeout = 2"))
            .0
            .proxy_protocol
            .expect("pp");
        assert_eq!(
            c.first_byte_timeout,
            Duration::from_secs(2),
            "the default is capped"
        );
        let (key, p) = invalid(&format!(
            "{}first_byte_timeout = 3000\n",
            pp("request_header_timeout = 2")
        ));
        assert_eq!(
            key,
            "experimental.tcp_recv_proxy_protocol.first_byte_timeout"
        );
        assert!(matches!(p, ValueError::FirstByteAfterHeaderTimeout { .. }));
    }

    #[test]
    fn proxy_protocol_needs_a_non_empty_trusted_list() {
        let base = format!("listen_port = 80\n{APP}[experimental.tcp_recv_proxy_protocol]\n");
        match err(&format!("{base}timeout = 50")) {
            ConfigError::Missing { key, .. } => {
                assert_eq!(key, "experimental.tcp_recv_proxy_protocol.trusted_proxies");
            }
            other => panic!("expected missing, got {other}"),
        }
        let (_, p) = invalid(&format!("{base}trusted_proxies = []"));
        assert!(matches!(p, ValueError::EmptyList { .. }));
        let (key, p) = invalid(&format!(
            "{base}trusted_proxies = [\"10.0.0.0/8\", \"10.0.0.1/8\"]"
        ));
        assert_eq!(
            key,
            "experimental.tcp_recv_proxy_protocol.trusted_proxies[1]"
        );
        assert!(matches!(p, ValueError::HostBitsSet { .. }));
        let (c, _) = ok(&format!(
            "{base}trusted_proxies = [\"10.0.0.0/8\", \"192.0.2.1\"]"
        ));
        let pp = c.proxy_protocol.expect("configured");
        assert_eq!(pp.trust.to_string(), "10.0.0.0/8, 192.0.2.1/32");
    }

    fn with_direct(trusted: &str, direct: &str) -> String {
        format!(
            "listen_port = 8080\n{APP}[experimental.tcp_recv_proxy_protocol]\n\
             trusted_proxies = {trusted}\ndirect_sources = {direct}\n"
        )
    }

    #[test]
    fn direct_sources_are_classed_apart_from_the_load_balancers() {
        let (c, _) = ok(&with_direct(
            "[\"192.0.2.0/24\"]",
            "[\"198.51.100.0/24\", \"2001:db8::1\"]",
        ));
        let trust = c.proxy_protocol.expect("configured").trust;
        let ip = |s: &str| s.parse().expect("literal");
        assert_eq!(trust.class(ip("192.0.2.1")), Some(Class::Proxy));
        assert_eq!(trust.class(ip("198.51.100.1")), Some(Class::Direct));
        assert_eq!(trust.class(ip("2001:db8::1")), Some(Class::Direct));
        assert_eq!(trust.class(ip("2001:db8::2")), None);
        // Absent or empty: nobody connects without a header.
        for direct in ["", "direct_sources = []"] {
            let (c, _) = ok(&with_pp(direct));
            let trust = c.proxy_protocol.expect("configured").trust;
            assert!(trust.of_class(Class::Direct).is_empty(), "{direct:?}");
        }
    }

    #[test]
    fn direct_sources_entries_are_checked_like_trusted_proxies() {
        let (key, p) = invalid(&with_direct(
            "[\"192.0.2.0/24\"]",
            "[\"10.0.0.0/8\", \"10.0.0.1/8\"]",
        ));
        assert_eq!(
            key,
            "experimental.tcp_recv_proxy_protocol.direct_sources[1]"
        );
        assert!(matches!(p, ValueError::HostBitsSet { .. }));
        let (key, p) = invalid(&with_direct("[\"192.0.2.0/24\"]", "[\"pods\"]"));
        assert_eq!(
            key,
            "experimental.tcp_recv_proxy_protocol.direct_sources[0]"
        );
        assert!(matches!(p, ValueError::NotANetwork));
        let (_, p) = invalid(&with_direct(
            "[\"192.0.2.0/24\"]",
            "[\"::ffff:10.0.0.0/104\"]",
        ));
        assert!(matches!(p, ValueError::Ipv4Mapped { .. }));
        // Direct sources alone admit no load balancer: trusted_proxies is still required.
        let base = format!("listen_port = 80\n{APP}[experimental.tcp_recv_proxy_protocol]\n");
        assert!(matches!(
            err(&format!("{base}direct_sources = [\"10.0.0.0/8\"]")),
            ConfigError::Missing { .. }
        ));
    }

    #[test]
    fn a_network_in_both_lists_is_refused_naming_both_entries() {
        // The same network, however it is written: "192.0.2.7" is 192.0.2.7/32.
        for (trusted, direct, at) in [
            (
                "[\"10.0.0.0/8\", \"192.0.2.7\"]",
                "[\"192.0.2.7/32\"]",
                (1, 0),
            ),
            (
                "[\"2001:db8::/32\"]",
                "[\"10.0.0.0/8\", \"2001:db8::/32\"]",
                (0, 1),
            ),
        ] {
            let text = with_direct(trusted, direct);
            let (key, p) = invalid(&text);
            assert_eq!(
                key,
                format!(
                    "experimental.tcp_recv_proxy_protocol.direct_sources[{}]",
                    at.1
                )
            );
            let ValueError::InBothLists { other, .. } = &p else {
                panic!("expected InBothLists, got {p}");
            };
            assert_eq!(
                *other,
                format!(
                    "experimental.tcp_recv_proxy_protocol.trusted_proxies[{}]",
                    at.0
                )
            );
            let message = err(&text).to_string();
            assert!(
                message.contains("trusted_proxies[") && message.contains("direct_sources["),
                "{message}"
            );
        }
    }

    #[test]
    fn nested_networks_of_the_two_lists_are_allowed_and_the_longest_prefix_decides() {
        let ip = |s: &str| s.parse().expect("literal");
        // A health checker inside the load balancers' subnet...
        let (c, warnings) = ok(&with_direct("[\"10.0.0.0/8\"]", "[\"10.9.0.5\"]"));
        assert!(warnings.is_empty(), "{warnings:?}");
        let trust = c.proxy_protocol.expect("configured").trust;
        assert_eq!(trust.class(ip("10.9.0.5")), Some(Class::Direct));
        assert_eq!(trust.class(ip("10.9.0.6")), Some(Class::Proxy));
        // ... and a load balancer inside a direct pod CIDR.
        let (c, _) = ok(&with_direct("[\"10.244.3.7\"]", "[\"10.244.0.0/16\"]"));
        let trust = c.proxy_protocol.expect("configured").trust;
        assert_eq!(trust.class(ip("10.244.3.7")), Some(Class::Proxy));
        assert_eq!(trust.class(ip("10.244.3.8")), Some(Class::Direct));
    }

    #[test]
    fn header_timeout_defaults_to_50ms_and_zero_means_5s() {
        let timeout = |line: &str| {
            ok(&with_pp(line))
                .0
                .proxy_protocol
                .expect("configured")
                .timeout
        };
        assert_eq!(timeout(""), Duration::from_millis(50));
        assert_eq!(timeout("timeout = 0"), Duration::from_secs(5));
        assert_eq!(timeout("timeout = 200"), Duration::from_millis(200));
    }

    #[test]
    fn kernel_filter_defaults_to_a_required_socket_filter() {
        let (c, _) = ok(&with_pp(""));
        let want = KernelFilterConfig {
            mode: KernelFilterMode::Socket,
            required: true,
            observe_only: false,
            detach_accepted: true,
        };
        assert_eq!(c.proxy_protocol.expect("configured").kernel_filter, want);
        let (c, _) = ok(&kf("required = false\nobserve_only = true"));
        let k = c.proxy_protocol.expect("configured").kernel_filter;
        assert_eq!(
            (k.mode, k.required, k.observe_only),
            (KernelFilterMode::Socket, false, true)
        );
        let (c, _) = ok(&kf("mode = \"off\""));
        assert_eq!(
            c.proxy_protocol.expect("configured").kernel_filter.mode,
            KernelFilterMode::Off
        );
    }

    #[test]
    fn unknown_modes_are_refused_with_the_nearest() {
        let (key, p) = invalid(&kf("mode = \"sockets\""));
        assert_eq!(
            key,
            "experimental.tcp_recv_proxy_protocol.kernel_filter.mode"
        );
        assert!(matches!(
            p,
            ValueError::UnknownChoice {
                nearest: Some("socket"),
                ..
            }
        ));
        let (_, p) = invalid(&kf("mode = \"XDP\"\ninterfaces = [\"eth0\"]"));
        assert!(matches!(
            p,
            ValueError::UnknownChoice {
                nearest: Some("xdp"),
                ..
            }
        ));
        let (key, p) = invalid(&kf(
            "mode = \"xdp\"\ninterfaces = [\"eth0\"]\nxdp_mode = \"driver\"",
        ));
        assert_eq!(
            key,
            "experimental.tcp_recv_proxy_protocol.kernel_filter.xdp_mode"
        );
        assert!(matches!(p, ValueError::UnknownChoice { .. }));
    }

    #[test]
    fn xdp_settings_outside_xdp_mode_are_refused() {
        for mode in ["", "mode = \"socket\"\n", "mode = \"off\"\n"] {
            let (key, p) = invalid(&kf(&format!("{mode}interfaces = [\"eth0\"]")));
            assert!(key.ends_with("kernel_filter.interfaces"));
            assert!(matches!(p, ValueError::OnlyForXdp { .. }));
            let (key, _) = invalid(&kf(&format!("{mode}xdp_mode = \"native\"")));
            assert!(key.ends_with("kernel_filter.xdp_mode"));
        }
    }

    #[test]
    fn detach_accepted_is_a_socket_mode_setting() {
        let detach = |text: &str| {
            ok(&kf(text))
                .0
                .proxy_protocol
                .expect("configured")
                .kernel_filter
                .detach_accepted
        };
        assert!(detach(""));
        assert!(!detach("detach_accepted = false"));
        assert!(detach("mode = \"socket\"\ndetach_accepted = true"));
        for mode in [
            "mode = \"off\"\n",
            "mode = \"xdp\"\ninterfaces = [\"eth0\"]\n",
        ] {
            let (key, p) = invalid(&kf(&format!("{mode}detach_accepted = false")));
            assert!(key.ends_with("kernel_filter.detach_accepted"), "{key}");
            assert!(matches!(p, ValueError::OnlyForSocket { .. }));
        }
    }

    #[test]
    fn xdp_needs_valid_distinct_interfaces() {
        let (key, p) = invalid(&kf("mode = \"xdp\""));
        assert!(key.ends_with("kernel_filter.mode"));
        assert!(matches!(p, ValueError::XdpNeedsInterfaces));
        assert!(matches!(
            invalid(&kf("mode = \"xdp\"\ninterfaces = []")).1,
            ValueError::XdpNeedsInterfaces
        ));
        let long = "a".repeat(MAX_INTERFACE_NAME_BYTES + 1);
        for bad in [long.as_str(), "", "eth 0", "a/b"] {
            let (key, p) = invalid(&kf(&format!(
                "mode = \"xdp\"\ninterfaces = [\"eth0\", \"{bad}\"]"
            )));
            assert!(key.ends_with("kernel_filter.interfaces[1]"));
            assert!(matches!(p, ValueError::BadInterfaceName), "{bad:?}");
        }
        let (_, p) = invalid(&kf("mode = \"xdp\"\ninterfaces = [\"eth0\", \"eth0\"]"));
        assert!(matches!(p, ValueError::Duplicate));
        let longest = "a".repeat(MAX_INTERFACE_NAME_BYTES);
        let (c, _) = ok(&kf(&format!(
            "mode = \"xdp\"\ninterfaces = [\"eth0\", \"{longest}\"]\nxdp_mode = \"generic\""
        )));
        let want = KernelFilterMode::Xdp {
            interfaces: vec!["eth0".into(), longest],
            xdp_mode: XdpMode::Generic,
        };
        assert_eq!(
            c.proxy_protocol.expect("configured").kernel_filter.mode,
            want
        );
    }
}
