//! Header rewriting on the way up and down: hop-by-hop headers removed (those `Connection`
//! names too), client identity set from the recovered client address (`X-Forwarded-*`,
//! `X-Real-IP`, `Forwarded`; see `forwarded` for the chain), then `Host` and the route's
//! options. Every value set here passes `HeaderValue` validation, so none carries CR or LF.

use std::net::SocketAddr;

use http::header::{self, HeaderName, InvalidHeaderValue};
use http::uri::Authority;
use http::{HeaderMap, HeaderValue};

use super::forwarded::{self, ThisHop};
use crate::config::{HostHeader, UpstreamOptions};
use crate::header_names::{
    HOP_BY_HOP, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PORT, X_FORWARDED_PROTO, X_REAL_IP,
};
use crate::trust::TrustList;

/// A header value the proxy built is not a valid value.
#[derive(Debug, thiserror::Error)]
#[error("value built for header `{name}` is not a valid header value")]
pub(super) struct HeaderError {
    name: HeaderName,
    #[source]
    source: InvalidHeaderValue,
}

/// A value for `name`, refused when it holds CR, LF or another control byte.
pub(super) fn value(name: &HeaderName, text: &str) -> Result<HeaderValue, HeaderError> {
    HeaderValue::from_str(text).map_err(|source| HeaderError {
        name: name.clone(),
        source,
    })
}

/// A value for `name` holding `text`: the request's own `Host` value when that is the same
/// text (sharing its bytes), else a new one.
fn host_value(
    headers: &HeaderMap,
    name: &HeaderName,
    text: &str,
) -> Result<HeaderValue, HeaderError> {
    match headers.get(header::HOST) {
        Some(own) if own.as_bytes() == text.as_bytes() => Ok(own.clone()),
        _ => value(name, text),
    }
}

/// Removes the hop-by-hop headers: those `Connection` names, then the fixed list. The map
/// is scanned once for the fixed names (most requests carry none, most responses only
/// `Connection`), and only those present are removed.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        // `Connection` is on the list, so there are no named ones either.
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        // `close`, and names on the list (`keep-alive`, `upgrade`): the usual tokens,
        // skipped before the cost of parsing them as names.
        .filter(|token| {
            !token.eq_ignore_ascii_case("close")
                && !HOP_BY_HOP
                    .iter()
                    .any(|name| token.eq_ignore_ascii_case(name.as_str()))
        })
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .collect();
    for name in &named {
        headers.remove(name);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Whether the `TE` header asks for trailers, the one `TE` value passed on.
fn te_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let name = t.split(';').next().unwrap_or_default();
            name.trim().eq_ignore_ascii_case("trailers")
        })
}

/// What the proxy knows of the client side of a request.
pub(super) struct Downstream<'a> {
    /// The client, as recovered from the PROXY header (else the TCP peer).
    pub(super) client: SocketAddr,
    /// The address the client connected to (the PROXY destination when there is one).
    pub(super) front: SocketAddr,
    pub(super) tls: bool,
    /// The host the client asked for, as received; `None` when it named none.
    pub(super) host: Option<&'a str>,
}

impl Downstream<'_> {
    fn proto(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }
}

/// Rewrites a request's headers for the upstream `authority`: hop-by-hop headers out
/// (`Upgrade` and `Connection: upgrade` back in when tunnelling `upgrade`, `TE: trailers`
/// kept), client identity, `Host`, then the route's options.
pub(super) fn prepare_request(
    headers: &mut HeaderMap,
    downstream: &Downstream<'_>,
    trusted: &TrustList,
    options: &UpstreamOptions,
    authority: &Authority,
    upgrade: Option<&HeaderValue>,
) -> Result<(), HeaderError> {
    // Room for the headers set below, so the map grows at most once.
    headers.reserve(8);
    let trailers = te_trailers(headers);
    strip_hop_by_hop(headers);
    if let Some(protocol) = upgrade {
        headers.insert(header::UPGRADE, protocol.clone());
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    identity(headers, downstream, trusted, options.forwarded_header)?;
    // The upstream's own name when the route asks for it, or when the client named none.
    let host = match (options.host, downstream.host) {
        (HostHeader::Original, Some(host)) => host,
        _ => authority.as_str(),
    };
    let host = host_value(headers, &header::HOST, host)?;
    headers.insert(header::HOST, host);
    if options.upgrade_insecure_requests {
        headers
            .entry(header::UPGRADE_INSECURE_REQUESTS)
            .or_insert(HeaderValue::from_static("1"));
    }
    Ok(())
}

/// Sets the client-identity headers. A client outside `trusted_forwarded_proxies` has every
/// `X-Forwarded-*`, `Forwarded` and `X-Real-IP` header it sent removed first.
fn identity(
    headers: &mut HeaderMap,
    downstream: &Downstream<'_>,
    trusted: &TrustList,
    forwarded_option: bool,
) -> Result<(), HeaderError> {
    let chain = forwarded::chain(headers, downstream.client, trusted);
    let client_trusted = trusted.contains(downstream.client.ip());
    let had_forwarded = headers.contains_key(header::FORWARDED);
    if !client_trusted {
        let sent: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("x-forwarded-"))
            .cloned()
            .collect();
        for name in sent {
            headers.remove(name);
        }
    }
    headers.remove(header::FORWARDED);
    let xff = value(
        &HeaderName::from_static(X_FORWARDED_FOR),
        &forwarded::x_forwarded_for(&chain),
    )?;
    // The first hop is the whole chain when nothing before it was believed.
    let real_ip = match chain.as_slice() {
        [_] => xff.clone(),
        [first, ..] => value(&X_REAL_IP, &forwarded::ip_text(first.ip))?,
        [] => HeaderValue::from_static(""),
    };
    headers.insert(HeaderName::from_static(X_FORWARDED_FOR), xff);
    headers.insert(X_REAL_IP, real_ip);
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(downstream.proto()),
    );
    headers.insert(X_FORWARDED_PORT, HeaderValue::from(downstream.front.port()));
    match downstream.host {
        Some(host) => headers.insert(
            X_FORWARDED_HOST,
            host_value(headers, &X_FORWARDED_HOST, host)?,
        ),
        None => headers.remove(X_FORWARDED_HOST),
    };
    // As rpxy: with the option, always; without it, a Forwarded a trusted client sent is
    // updated rather than passed on without this hop.
    if forwarded_option || (client_trusted && had_forwarded) {
        let this = ThisHop {
            by: downstream.front,
            proto: downstream.proto(),
            host: downstream.host,
        };
        let text = forwarded::forwarded(&chain, &this);
        headers.insert(header::FORWARDED, value(&header::FORWARDED, &text)?);
    }
    Ok(())
}

/// Rewrites an upstream response's headers for the client: hop-by-hop headers out, with
/// `Upgrade` and `Connection: upgrade` kept on a 101 that switches protocols. A response
/// framed by `Transfer-Encoding` loses its `Content-Length` too (RFC 9112 §6.3: the
/// encoding wins), which hyper's client keeps and its server would frame the body by.
pub(super) fn prepare_response(headers: &mut HeaderMap, upgraded: bool) {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    let protocol = upgraded
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    strip_hop_by_hop(headers);
    if let Some(protocol) = protocol {
        headers.insert(header::UPGRADE, protocol);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::str::FromStr;

    use ipnet::IpNet;

    use super::*;
    use crate::config::UpstreamHttp;

    /// A map of `pairs`, in order, repeats appended (also used by `hygiene`'s tests).
    pub(in crate::forward) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).expect("test name"),
                HeaderValue::from_str(v).expect("test value"),
            );
        }
        map
    }

    fn options() -> UpstreamOptions {
        UpstreamOptions {
            host: HostHeader::Original,
            http_version: UpstreamHttp::Auto,
            forwarded_header: false,
            upgrade_insecure_requests: false,
        }
    }

    fn trusted(nets: &[&str]) -> TrustList {
        TrustList::new(nets.iter().map(|n| n.parse::<IpNet>().expect("test net")))
    }

    fn downstream(client: &str, host: Option<&'static str>) -> Downstream<'static> {
        Downstream {
            client: client.parse().expect("test address"),
            front: "192.0.2.1:443".parse().expect("test address"),
            tls: true,
            host,
        }
    }

    fn prepare(map: &mut HeaderMap, d: &Downstream<'_>, nets: &[&str], options: &UpstreamOptions) {
        let authority = Authority::from_static("10.0.0.9:8081");
        prepare_request(map, d, &trusted(nets), options, &authority, None)
            .expect("headers prepared");
    }

    fn get<'m>(map: &'m HeaderMap, name: &str) -> Option<&'m str> {
        map.get(name).map(|v| v.to_str().expect("ascii value"))
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut map = headers(&[
            ("connection", "keep-alive, X-Secret, close"),
            ("connection", "x-other"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("te", "gzip"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-kept", "3"),
            ("content-length", "5"),
        ]);
        strip_hop_by_hop(&mut map);
        let mut left: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-length", "x-kept"]);
    }

    #[test]
    fn te_trailers_survives_and_other_te_does_not() {
        let mut map = headers(&[("te", "gzip, trailers;q=1")]);
        prepare(
            &mut map,
            &downstream("203.0.113.7:5000", None),
            &[],
            &options(),
        );
        assert_eq!(get(&map, "te"), Some("trailers"));
        let mut map = headers(&[("te", "gzip")]);
        prepare(
            &mut map,
            &downstream("203.0.113.7:5000", None),
            &[],
            &options(),
        );
        assert_eq!(get(&map, "te"), None);
    }

    #[test]
    fn upgrade_is_kept_only_when_tunnelling() {
        let mut map = headers(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        let authority = Authority::from_static("u:1");
        let d = downstream("203.0.113.7:5000", None);
        let ws = HeaderValue::from_static("websocket");
        prepare_request(
            &mut map,
            &d,
            &trusted(&[]),
            &options(),
            &authority,
            Some(&ws),
        )
        .expect("prepared");
        assert_eq!(get(&map, "upgrade"), Some("websocket"));
        assert_eq!(get(&map, "connection"), Some("upgrade"));

        let mut map = headers(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        prepare(&mut map, &d, &[], &options());
        assert_eq!(get(&map, "upgrade"), None);
        assert_eq!(get(&map, "connection"), None);
    }

    #[test]
    fn untrusted_client_forwarding_headers_are_replaced() {
        let mut map = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-port", "1"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-server", "evil"),
            ("x-real-ip", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        prepare(
            &mut map,
            &downstream("203.0.113.7:5000", Some("a.example")),
            &["10.0.0.0/8"],
            &options(),
        );
        assert_eq!(get(&map, "x-forwarded-for"), Some("203.0.113.7"));
        assert_eq!(get(&map, "x-real-ip"), Some("203.0.113.7"));
        assert_eq!(get(&map, "x-forwarded-proto"), Some("https"));
        assert_eq!(get(&map, "x-forwarded-port"), Some("443"));
        assert_eq!(get(&map, "x-forwarded-host"), Some("a.example"));
        assert_eq!(get(&map, "x-forwarded-server"), None);
        assert_eq!(get(&map, "forwarded"), None);
    }

    #[test]
    fn trusted_client_chain_is_appended_and_real_ip_is_its_origin() {
        let mut map = headers(&[
            ("x-forwarded-for", "198.51.100.10"),
            ("x-forwarded-server", "edge"),
        ]);
        prepare(
            &mut map,
            &downstream("10.1.2.3:5000", Some("a.example")),
            &["10.0.0.0/8"],
            &options(),
        );
        assert_eq!(
            get(&map, "x-forwarded-for"),
            Some("198.51.100.10, 10.1.2.3")
        );
        assert_eq!(get(&map, "x-real-ip"), Some("198.51.100.10"));
        assert_eq!(get(&map, "x-forwarded-server"), Some("edge"));
    }

    #[test]
    fn trusted_clients_forwarded_is_updated_even_without_the_option() {
        let mut map = headers(&[("forwarded", "for=198.51.100.10")]);
        prepare(
            &mut map,
            &downstream("10.1.2.3:5000", None),
            &["10.0.0.0/8"],
            &options(),
        );
        assert_eq!(
            get(&map, "forwarded"),
            Some("for=198.51.100.10, for=\"10.1.2.3:5000\";by=\"192.0.2.1:443\";proto=https")
        );
        assert_eq!(
            get(&map, "x-forwarded-for"),
            Some("198.51.100.10, 10.1.2.3")
        );
    }

    #[test]
    fn forwarded_option_adds_forwarded_with_quoted_ipv6() {
        let mut map = HeaderMap::new();
        let opts = UpstreamOptions {
            forwarded_header: true,
            ..options()
        };
        prepare(
            &mut map,
            &downstream("[2001:db8::7]:5000", Some("a.example:8443")),
            &[],
            &opts,
        );
        assert_eq!(
            get(&map, "forwarded"),
            Some(
                "for=\"[2001:db8::7]:5000\";by=\"192.0.2.1:443\";proto=https;\
                 host=\"a.example:8443\""
            )
        );
        assert_eq!(get(&map, "x-forwarded-for"), Some("2001:db8::7"));
        assert_eq!(get(&map, "x-real-ip"), Some("2001:db8::7"));
    }

    #[test]
    fn host_is_the_original_or_the_upstreams() {
        let d = downstream("203.0.113.7:5000", Some("a.example:8080"));
        let mut map = headers(&[("host", "a.example:8080")]);
        prepare(&mut map, &d, &[], &options());
        assert_eq!(get(&map, "host"), Some("a.example:8080"));

        // HTTP/2 requests carry no Host header: the authority becomes one.
        let mut map = HeaderMap::new();
        prepare(&mut map, &d, &[], &options());
        assert_eq!(get(&map, "host"), Some("a.example:8080"));

        let mut map = headers(&[("host", "a.example:8080")]);
        let opts = UpstreamOptions {
            host: HostHeader::Upstream,
            ..options()
        };
        prepare(&mut map, &d, &[], &opts);
        assert_eq!(get(&map, "host"), Some("10.0.0.9:8081"));
        assert_eq!(get(&map, "x-forwarded-host"), Some("a.example:8080"));
    }

    #[test]
    fn connection_cannot_strip_identity_headers() {
        let mut map = headers(&[("connection", "x-forwarded-for, x-real-ip, host")]);
        prepare(
            &mut map,
            &downstream("203.0.113.7:5000", Some("a.example")),
            &[],
            &options(),
        );
        assert_eq!(get(&map, "x-forwarded-for"), Some("203.0.113.7"));
        assert_eq!(get(&map, "x-real-ip"), Some("203.0.113.7"));
        assert_eq!(get(&map, "host"), Some("a.example"));
    }

    #[test]
    fn upgrade_insecure_requests_is_added_with_the_option() {
        let d = downstream("203.0.113.7:5000", None);
        let mut map = HeaderMap::new();
        prepare(&mut map, &d, &[], &options());
        assert_eq!(get(&map, "upgrade-insecure-requests"), None);
        let opts = UpstreamOptions {
            upgrade_insecure_requests: true,
            ..options()
        };
        prepare(&mut map, &d, &[], &opts);
        assert_eq!(get(&map, "upgrade-insecure-requests"), Some("1"));
    }

    #[test]
    fn values_with_cr_or_lf_are_refused() {
        let name = HeaderName::from_static("x-test");
        for bad in ["a\r\nx-evil: 1", "a\nb", "a\rb", "a\0b"] {
            assert!(value(&name, bad).is_err(), "{bad:?}");
        }
        assert!(value(&name, "a b\tc").is_ok());
        // A Host smuggling CR/LF never becomes a header.
        let d = downstream("203.0.113.7:5000", Some("a.example\r\nx-evil: 1"));
        let authority = Authority::from_str("u:1").expect("authority");
        let mut map = HeaderMap::new();
        let err = prepare_request(&mut map, &d, &trusted(&[]), &options(), &authority, None);
        assert!(err.is_err());
        assert!(map.get("x-evil").is_none());
    }

    #[test]
    fn response_keeps_upgrade_only_on_a_switch() {
        let pairs = [
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-accept", "abc"),
            ("keep-alive", "timeout=5"),
        ];
        let mut map = headers(&pairs);
        prepare_response(&mut map, true);
        assert_eq!(get(&map, "upgrade"), Some("websocket"));
        assert_eq!(get(&map, "connection"), Some("upgrade"));
        assert_eq!(get(&map, "sec-websocket-accept"), Some("abc"));
        assert_eq!(get(&map, "keep-alive"), None);
        let mut map = headers(&pairs);
        prepare_response(&mut map, false);
        assert_eq!(get(&map, "upgrade"), None);
        assert_eq!(get(&map, "connection"), None);
    }
}
