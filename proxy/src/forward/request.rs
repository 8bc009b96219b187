//! What a request names before any app is chosen: its host (the URI authority, else the
//! single Host header; both must agree) and whether its path is safe to match on its raw
//! text (no dot segment, however spelt: see [`has_dot_segment`]). Malformed input is a [`Refusal::BadRequest`], never a panic.

use std::str::FromStr;

use http::uri::Authority;
use http::{HeaderMap, Uri, Version, header};

use super::refusal::Refusal;

/// The host a request is addressed to: the URI authority (HTTP/2, or an absolute-form
/// HTTP/1 target), else the Host header. An HTTP/1.1 request must carry a Host header
/// even in absolute form (empty is allowed there: the authority is used).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct RequestHost {
    /// Lowercased, without port or trailing dot; IPv6 literals keep their brackets.
    pub(super) name: String,
    /// As received (with its port), for `X-Forwarded-Host`, `Forwarded: host=` and the
    /// access log. A valid authority, so it holds no CR, LF or other control byte.
    pub(super) original: Authority,
}

impl RequestHost {
    pub(super) fn parse(raw: &str) -> Result<RequestHost, Refusal> {
        let authority = Authority::from_str(raw).map_err(|_| Refusal::BadRequest)?;
        if authority.as_str().contains('@') {
            return Err(Refusal::BadRequest);
        }
        let host = authority.host();
        // `Authority` accepts any text after the last `:`; only a port may be there.
        let port_ok = match authority.as_str().strip_prefix(host) {
            Some("") => true,
            Some(rest) => rest
                .strip_prefix(':')
                .is_some_and(|p| p.is_empty() || p.parse::<u16>().is_ok()),
            None => false,
        };
        if !port_ok {
            return Err(Refusal::BadRequest);
        }
        let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        if name.is_empty() {
            return Err(Refusal::BadRequest);
        }
        Ok(RequestHost {
            name,
            original: authority,
        })
    }
}

/// The request's host. `Ok(None)` when it names none (possible before HTTP/1.1).
pub(super) fn request_host(
    uri: &Uri,
    headers: &HeaderMap,
    version: Version,
) -> Result<Option<RequestHost>, Refusal> {
    let mut values = headers.get_all(header::HOST).iter();
    let from_header = match (values.next(), values.next()) {
        // RFC 9112 §3.2: an HTTP/1.1 request without Host gets a 400, whatever its form.
        (None, _) if version == Version::HTTP_11 => return Err(Refusal::BadRequest),
        (None, _) => None,
        (Some(_), Some(_)) => return Err(Refusal::BadRequest),
        (Some(v), None) if v.is_empty() => None,
        (Some(v), None) => {
            let text = v.to_str().map_err(|_| Refusal::BadRequest)?;
            Some(RequestHost::parse(text)?)
        }
    };
    let from_uri = uri
        .authority()
        .map(|a| RequestHost::parse(a.as_str()))
        .transpose()?;
    match (from_uri, from_header) {
        // RFC 9113 §8.3.1: a Host that names another entity than :authority is malformed.
        (Some(u), Some(h)) if u.name != h.name => Err(Refusal::BadRequest),
        (Some(u), _) => Ok(Some(u)),
        (None, Some(h)) => Ok(Some(h)),
        // An empty Host and no authority: nothing names the host.
        (None, None) if version == Version::HTTP_11 => Err(Refusal::BadRequest),
        (None, None) => Ok(None),
    }
}

/// Whether a path holds a `.` or `..` segment as some upstream might read it. Such paths
/// could climb out of a route's prefix (or its `replace_path`) on the upstream, so they
/// are refused rather than matched on their raw text. Covered, in any combination:
///
/// - segments split at `/`, `\` (Windows and IIS servers), `%2f` and `%5c` (servers that
///   decode before splitting), either case;
/// - dots literal or `%2e`, either case;
/// - a segment's `;` parameters (Tomcat and Jetty strip them: `/..;/` is `/../`), from the
///   first `;` or `%3b` on.
///
/// Not covered: double encoding (`%252e`), overlong UTF-8 (`%c0%ae`), NUL and other
/// decodings an upstream may do after trustgate's check; the query is not a path.
pub(super) fn has_dot_segment(path: &str) -> bool {
    let mut rest = path.as_bytes();
    loop {
        let (segment, next) = split_segment(rest);
        if is_dot_segment(without_params(segment)) {
            return true;
        }
        match next {
            Some(next) => rest = next,
            None => return false,
        }
    }
}

/// The bytes up to the first separator (`/`, `\`, `%2f`, `%5c`), and what follows it.
fn split_segment(path: &[u8]) -> (&[u8], Option<&[u8]>) {
    let mut i = 0;
    while i < path.len() {
        let sep = match &path[i..] {
            [b'/' | b'\\', ..] => 1,
            [b'%', b'2', b'f' | b'F', ..] | [b'%', b'5', b'c' | b'C', ..] => 3,
            _ => 0,
        };
        if sep > 0 {
            return (&path[..i], Some(&path[i + sep..]));
        }
        i += 1;
    }
    (path, None)
}

/// A segment without its `;` parameters (literal `;` or `%3b`).
fn without_params(segment: &[u8]) -> &[u8] {
    let cut = (0..segment.len())
        .find(|&i| matches!(&segment[i..], [b';', ..] | [b'%', b'3', b'b' | b'B', ..]));
    cut.map_or(segment, |i| &segment[..i])
}

/// `.` or `..`, each dot literal or `%2e` (either case).
fn is_dot_segment(mut segment: &[u8]) -> bool {
    let mut dots = 0;
    loop {
        segment = match segment {
            [] => return dots > 0,
            _ if dots == 2 => return false,
            [b'.', rest @ ..] => rest,
            [b'%', b'2', b'e' | b'E', rest @ ..] => rest,
            _ => return false,
        };
        dots += 1;
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use http::header::HeaderName;

    use super::*;

    fn host(raw: &str) -> RequestHost {
        RequestHost::parse(raw).expect("test host is valid")
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_str(k).expect("test header name"),
                HeaderValue::from_str(v).expect("test header value"),
            );
        }
        map
    }

    #[test]
    fn host_is_lowercased_without_port_or_trailing_dot() {
        let h = host("WEB.Example.:8080");
        assert_eq!(h.name, "web.example");
        assert_eq!(h.original, "WEB.Example.:8080");
        assert_eq!(host("[::1]:80").name, "[::1]");
    }

    #[test]
    fn host_comes_from_authority_then_header() {
        let h2: Uri = "https://web.example/x".parse().expect("test uri");
        let got = request_host(&h2, &HeaderMap::new(), Version::HTTP_2).expect("valid");
        assert_eq!(got.expect("a host").name, "web.example");
        let origin: Uri = "/x".parse().expect("test uri");
        let got = request_host(
            &origin,
            &headers(&[("host", "a.example")]),
            Version::HTTP_11,
        );
        assert_eq!(got.expect("valid").expect("a host").name, "a.example");
    }

    #[test]
    fn host_that_contradicts_authority_is_refused() {
        let uri: Uri = "https://web.example/x".parse().expect("test uri");
        let mismatch = headers(&[("host", "other.example")]);
        assert_eq!(
            request_host(&uri, &mismatch, Version::HTTP_2),
            Err(Refusal::BadRequest)
        );
        let same_name = headers(&[("host", "web.example:443")]);
        assert!(request_host(&uri, &same_name, Version::HTTP_2).is_ok());
    }

    #[test]
    fn absolute_form_http11_needs_a_host_header_and_http10_does_not() {
        let uri: Uri = "http://web.example/x".parse().expect("test uri");
        let none = HeaderMap::new();
        assert_eq!(
            request_host(&uri, &none, Version::HTTP_11),
            Err(Refusal::BadRequest)
        );
        let got = request_host(&uri, &none, Version::HTTP_10).expect("valid");
        assert_eq!(got.expect("a host").name, "web.example");
        let empty = headers(&[("host", "")]);
        let got = request_host(&uri, &empty, Version::HTTP_11).expect("valid");
        assert_eq!(got.expect("a host").name, "web.example");
        // HTTP/2 names its host in :authority and carries no Host header.
        assert!(request_host(&uri, &none, Version::HTTP_2).is_ok());
    }

    #[test]
    fn missing_repeated_or_malformed_host_is_a_bad_request() {
        let uri: Uri = "/".parse().expect("test uri");
        let none = HeaderMap::new();
        assert_eq!(
            request_host(&uri, &none, Version::HTTP_11),
            Err(Refusal::BadRequest)
        );
        assert_eq!(request_host(&uri, &none, Version::HTTP_10), Ok(None));
        let twice = headers(&[("host", "a.example"), ("host", "b.example")]);
        assert_eq!(
            request_host(&uri, &twice, Version::HTTP_11),
            Err(Refusal::BadRequest)
        );
        for bad in ["user@a.example", "a example", "a.example:port", ":80"] {
            let h = headers(&[("host", bad)]);
            assert_eq!(
                request_host(&uri, &h, Version::HTTP_11),
                Err(Refusal::BadRequest),
                "{bad}"
            );
        }
    }

    #[test]
    fn dot_segments_are_detected_even_encoded() {
        for bad in ["/..", "/a/../b", "/a/./b", "/%2e%2E/x", "/.%2e/", "/a/%2E"] {
            assert!(has_dot_segment(bad), "{bad}");
        }
        for ok in [
            "/",
            "/a.b",
            "/..a",
            "/a/...",
            "/%2e%2e%2e",
            "/.well-known/x",
            "/a;b/c",
            "/a/..x;/b",
            "/a%2fb%5Cc",
            "/%3b..",
            "/a/.../x;y",
        ] {
            assert!(!has_dot_segment(ok), "{ok}");
        }
    }

    #[test]
    fn dot_segments_hidden_by_params_backslashes_or_encoded_slashes_are_detected() {
        for bad in [
            "/s/..;/x",
            "/s/.;jsessionid=1/x",
            "/s/..%3b/x",
            "/s/%2e%2E;x/y",
            "/s\\..\\x",
            "/s\\.",
            "/s%2f..%2fx",
            "/s%2F..%2Fx",
            "/s%5c..%5cx",
            "/s%5C%2e%2e%5Cx",
            "/s/..\\x",
            "/s%2f%2e%2e",
            "/..;",
        ] {
            assert!(has_dot_segment(bad), "{bad}");
        }
    }
}
