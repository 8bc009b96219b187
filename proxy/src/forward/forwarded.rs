//! The forwarding chain behind `X-Forwarded-For`, `X-Real-IP` and `Forwarded` (RFC 7239),
//! with rpxy's trust rule: a chain a client sends is believed only when that client is in
//! `trusted_forwarded_proxies`, and then only from the last untrusted hop on. Otherwise the
//! chain is the client alone. Pure functions on header maps; the client address is the one
//! recovered from the PROXY header.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, header};

use crate::header_names::X_FORWARDED_FOR;
use crate::trust::TrustList;

/// One hop of the chain: who a proxy received the request from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Hop {
    pub(super) ip: IpAddr,
    pub(super) port: Option<u16>,
}

impl Hop {
    fn new(ip: IpAddr, port: Option<u16>) -> Hop {
        Hop {
            ip: ip.to_canonical(),
            port,
        }
    }
}

/// The chain to send upstream, oldest hop first, ending with `client`.
///
/// When `client` is not trusted, or what it sent cannot be read, the chain is `client`
/// alone: nothing a client sends can pose as a hop. When it is trusted, the hops it sent
/// (`X-Forwarded-For`, else `Forwarded`) are kept from the last untrusted one on, so a
/// forged prefix is cut at the trust boundary.
pub(super) fn chain(headers: &HeaderMap, client: SocketAddr, trusted: &TrustList) -> Vec<Hop> {
    let last = Hop::new(client.ip(), Some(client.port()));
    if !trusted.contains(last.ip) {
        return vec![last];
    }
    let Some(mut hops) = received(headers) else {
        return vec![last];
    };
    hops.push(last);
    let boundary = hops.iter().rposition(|h| !trusted.contains(h.ip));
    // Every hop trusted: keep them all. Otherwise start at the last untrusted one.
    hops.drain(..boundary.unwrap_or(0));
    hops
}

/// The hops a client sent: `None` when it sent none, or any of them is unreadable.
fn received(headers: &HeaderMap) -> Option<Vec<Hop>> {
    if headers.contains_key(X_FORWARDED_FOR) {
        return list(headers, X_FORWARDED_FOR)?
            .iter()
            .map(|token| node(token))
            .collect();
    }
    if headers.contains_key(header::FORWARDED) {
        return list(headers, header::FORWARDED.as_str())?
            .iter()
            .map(|element| forwarded_for(element).and_then(|v| node(&v)))
            .collect();
    }
    None
}

/// The comma-separated members of every line of a header, quotes respected.
fn list(headers: &HeaderMap, name: &str) -> Option<Vec<String>> {
    let mut members = Vec::new();
    for value in headers.get_all(name) {
        let text = value.to_str().ok()?;
        members.extend(
            split_unquoted(text, ',')
                .into_iter()
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_owned),
        );
    }
    (!members.is_empty()).then_some(members)
}

/// Splits at `separator` outside quoted strings.
fn split_unquoted(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// The unquoted value of the one `for=` of a `Forwarded` element.
fn forwarded_for(element: &str) -> Option<String> {
    let mut found = None;
    for pair in split_unquoted(element, ';') {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        if key.trim().eq_ignore_ascii_case("for") {
            if found.is_some() {
                return None;
            }
            found = Some(unquote(value.trim())?);
        }
    }
    found
}

fn unquote(value: &str) -> Option<String> {
    let Some(inner) = value.strip_prefix('"') else {
        return Some(value.to_owned());
    };
    let inner = inner.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut escaped = false;
    for c in inner.chars() {
        match c {
            _ if escaped => {
                out.push(c);
                escaped = false;
            }
            '\\' => escaped = true,
            c => out.push(c),
        }
    }
    (!escaped).then_some(out)
}

/// A node: `ip`, `[ipv6]`, `[ipv6]:port` or `ipv4:port`. `unknown` and obfuscated
/// identifiers (RFC 7239 §6) are not addresses and make the chain unreadable.
fn node(token: &str) -> Option<Hop> {
    let token = token.trim();
    if let Ok(ip) = token.parse::<IpAddr>() {
        return Some(Hop::new(ip, None));
    }
    if let Some(rest) = token.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let ip = ip.parse::<IpAddr>().ok().filter(IpAddr::is_ipv6)?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse().ok()?),
        };
        return Some(Hop::new(ip, port));
    }
    let addr = token
        .parse::<SocketAddr>()
        .ok()
        .filter(SocketAddr::is_ipv4)?;
    Some(Hop::new(addr.ip(), Some(addr.port())))
}

/// `X-Forwarded-For`: the chain's addresses, bare (IPv6 unbracketed), without ports.
pub(super) fn x_forwarded_for(chain: &[Hop]) -> String {
    // Room for IPv4 hops and their separators, so the common case allocates once.
    let mut out = String::with_capacity(chain.len() * 17);
    for (i, hop) in chain.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        push_ip(&mut out, hop.ip);
    }
    out
}

/// An address as `X-Forwarded-For` and `X-Real-IP` carry it: bare, IPv6 unbracketed.
pub(super) fn ip_text(ip: IpAddr) -> String {
    let mut out = String::with_capacity(15);
    push_ip(&mut out, ip);
    out
}

/// Appends `ip` in its usual text form. IPv4, nearly every client, is written digit by
/// digit: `Ipv4Addr`'s `Display` goes through the formatter's padding support and cost
/// more than the rest of the header rewrite together.
fn push_ip(out: &mut String, ip: IpAddr) {
    let IpAddr::V4(v4) = ip else {
        out.push_str(&ip.to_string());
        return;
    };
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
}

/// What this proxy adds to the last element of `Forwarded`.
pub(super) struct ThisHop<'a> {
    /// The interface the request came in on: the address the client connected to.
    pub(super) by: SocketAddr,
    pub(super) proto: &'static str,
    /// The Host the client asked for, as received.
    pub(super) host: Option<&'a str>,
}

/// `Forwarded` (RFC 7239): one element per hop; the last one, this proxy's, also carries
/// `by`, `proto` and `host`. Values that are not tokens (ports, IPv6 literals) are quoted.
pub(super) fn forwarded(chain: &[Hop], this: &ThisHop<'_>) -> String {
    let mut elements: Vec<String> = chain
        .iter()
        .map(|h| format!("for={}", quoted_node(h)))
        .collect();
    if let Some(last) = elements.last_mut() {
        let by = Hop::new(this.by.ip(), Some(this.by.port()));
        last.push_str(&format!(";by={};proto={}", quoted_node(&by), this.proto));
        if let Some(host) = this.host {
            last.push_str(";host=");
            last.push_str(&token_or_quoted(host));
        }
    }
    elements.join(", ")
}

/// A node as RFC 7239 §6 writes it: IPv6 in brackets, quoted whenever it is not a bare
/// IPv4 address.
fn quoted_node(hop: &Hop) -> String {
    match (hop.ip, hop.port) {
        (IpAddr::V4(ip), None) => ip.to_string(),
        (IpAddr::V4(ip), Some(port)) => format!("\"{ip}:{port}\""),
        (IpAddr::V6(ip), None) => format!("\"[{ip}]\""),
        (IpAddr::V6(ip), Some(port)) => format!("\"[{ip}]:{port}\""),
    }
}

/// A value as an RFC 9110 token when it is one, else a quoted string.
fn token_or_quoted(value: &str) -> String {
    let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !value.is_empty() && value.chars().all(is_tchar) {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use ipnet::IpNet;

    use super::*;

    fn trusted(nets: &[&str]) -> TrustList {
        TrustList::new(nets.iter().map(|n| n.parse::<IpNet>().expect("test net")))
    }

    #[test]
    fn ip_text_matches_display_for_every_octet_width() {
        for octet in [0u8, 7, 9, 10, 42, 99, 100, 109, 199, 200, 255] {
            let ip = IpAddr::from([octet, 255 - octet, 1, octet]);
            assert_eq!(ip_text(ip), ip.to_string());
        }
        let v6: IpAddr = "2001:db8::1".parse().expect("ip");
        assert_eq!(ip_text(v6), "2001:db8::1");
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("test name"),
                HeaderValue::from_str(v).expect("test value"),
            );
        }
        map
    }

    fn xff(pairs: &[(&str, &str)], client: &str, nets: &[&str]) -> String {
        x_forwarded_for(&chain(&headers(pairs), addr(client), &trusted(nets)))
    }

    #[test]
    fn untrusted_client_chain_is_the_client_alone() {
        let sent = [("x-forwarded-for", "6.6.6.6, 7.7.7.7")];
        assert_eq!(xff(&sent, "203.0.113.7:5000", &[]), "203.0.113.7");
        assert_eq!(
            xff(&sent, "203.0.113.7:5000", &["10.0.0.0/8"]),
            "203.0.113.7"
        );
        let forwarded = [("forwarded", "for=6.6.6.6")];
        assert_eq!(xff(&forwarded, "203.0.113.7:5000", &[]), "203.0.113.7");
    }

    #[test]
    fn trusted_client_chain_is_kept_and_appended() {
        let sent = [("x-forwarded-for", "198.51.100.10, 10.9.0.4")];
        assert_eq!(
            xff(&sent, "10.1.2.3:5000", &["10.0.0.0/8"]),
            "198.51.100.10, 10.9.0.4, 10.1.2.3"
        );
    }

    #[test]
    fn trusted_chain_is_cut_at_the_last_untrusted_hop() {
        let sent = [("x-forwarded-for", "1.1.1.1, 198.51.100.10, 203.0.113.20")];
        assert_eq!(
            xff(&sent, "10.1.2.3:5000", &["10.0.0.0/8"]),
            "203.0.113.20, 10.1.2.3"
        );
    }

    #[test]
    fn all_trusted_chain_is_kept_whole() {
        let sent = [("x-forwarded-for", "10.0.0.1, 10.0.0.2")];
        assert_eq!(
            xff(&sent, "10.1.2.3:5000", &["10.0.0.0/8"]),
            "10.0.0.1, 10.0.0.2, 10.1.2.3"
        );
    }

    #[test]
    fn trusted_chain_spans_several_header_lines() {
        let sent = [
            ("x-forwarded-for", "198.51.100.10"),
            ("x-forwarded-for", "10.9.0.4"),
        ];
        assert_eq!(
            xff(&sent, "10.1.2.3:5000", &["10.0.0.0/8"]),
            "198.51.100.10, 10.9.0.4, 10.1.2.3"
        );
    }

    #[test]
    fn unreadable_chain_from_a_trusted_client_is_dropped() {
        for bad in [
            "unknown",
            "198.51.100.10, garbage",
            "_hidden",
            "[1.2.3.4]",
            "",
        ] {
            let sent = [("x-forwarded-for", bad)];
            assert_eq!(
                xff(&sent, "10.1.2.3:5000", &["10.0.0.0/8"]),
                "10.1.2.3",
                "{bad}"
            );
        }
    }

    #[test]
    fn forwarded_is_read_when_x_forwarded_for_is_absent() {
        let sent = [(
            "forwarded",
            "for=198.51.100.10;proto=https, for=\"[2001:db8::7]:4711\";by=x",
        )];
        assert_eq!(
            xff(&sent, "10.1.2.3:5000", &["10.0.0.0/8", "2001:db8::/32"]),
            "198.51.100.10, 2001:db8::7, 10.1.2.3"
        );
        let two_for = [("forwarded", "for=1.2.3.4;for=5.6.7.8")];
        assert_eq!(xff(&two_for, "10.1.2.3:5000", &["10.0.0.0/8"]), "10.1.2.3");
    }

    #[test]
    fn nodes_with_ports_and_brackets_are_read() {
        assert_eq!(
            node("1.2.3.4:80"),
            Some(Hop::new("1.2.3.4".parse().expect("ip"), Some(80)))
        );
        assert_eq!(
            node("[::1]"),
            Some(Hop::new("::1".parse().expect("ip"), None))
        );
        assert_eq!(
            node("[::1]:8"),
            Some(Hop::new("::1".parse().expect("ip"), Some(8)))
        );
        assert_eq!(
            node("2001:db8::1"),
            Some(Hop::new("2001:db8::1".parse().expect("ip"), None))
        );
        for bad in ["[::1]:", "[::1]x", "1.2.3.4:99999", "unknown", "[::1"] {
            assert_eq!(node(bad), None, "{bad}");
        }
    }

    #[test]
    fn ipv4_mapped_addresses_are_written_as_ipv4() {
        assert_eq!(xff(&[], "[::ffff:192.0.2.9]:5000", &[]), "192.0.2.9");
        let sent = [("x-forwarded-for", "::ffff:198.51.100.1")];
        assert_eq!(
            xff(&sent, "[::ffff:10.0.0.1]:5000", &["10.0.0.0/8"]),
            "198.51.100.1, 10.0.0.1"
        );
    }

    #[test]
    fn ipv6_is_bare_in_x_forwarded_for() {
        assert_eq!(xff(&[], "[2001:db8::1]:443", &[]), "2001:db8::1");
    }

    fn this(by: &str, host: Option<&'static str>) -> ThisHop<'static> {
        ThisHop {
            by: addr(by),
            proto: "https",
            host,
        }
    }

    #[test]
    fn forwarded_quotes_ports_and_brackets_ipv6() {
        let chain = [Hop::new("2001:db8::1".parse().expect("ip"), Some(4711))];
        assert_eq!(
            forwarded(&chain, &this("[2001:db8::ff]:443", Some("a.example"))),
            "for=\"[2001:db8::1]:4711\";by=\"[2001:db8::ff]:443\";proto=https;host=a.example"
        );
        let chain = [
            Hop::new("198.51.100.10".parse().expect("ip"), None),
            Hop::new("2001:db8::2".parse().expect("ip"), None),
            Hop::new("192.0.2.7".parse().expect("ip"), Some(5000)),
        ];
        assert_eq!(
            forwarded(&chain, &this("192.0.2.1:443", Some("a.example:8443"))),
            "for=198.51.100.10, for=\"[2001:db8::2]\", \
             for=\"192.0.2.7:5000\";by=\"192.0.2.1:443\";proto=https;host=\"a.example:8443\""
        );
    }

    #[test]
    fn forwarded_omits_host_when_there_is_none() {
        let chain = [Hop::new("192.0.2.7".parse().expect("ip"), None)];
        assert_eq!(
            forwarded(&chain, &this("192.0.2.1:80", None)),
            "for=192.0.2.7;by=\"192.0.2.1:80\";proto=https"
        );
    }

    #[test]
    fn quoted_values_escape_quotes_and_backslashes() {
        assert_eq!(token_or_quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(token_or_quoted(""), "\"\"");
        assert_eq!(unquote("\"a\\\"b\""), Some("a\"b".to_owned()));
        assert_eq!(unquote("\"open"), None);
    }
}
