//! Header names a client may not send upstream, in the head and in trailers: names with
//! `_` (CGI, WSGI and Rack fold `_` into `-`, so `X_Forwarded_For` would be read as
//! `X-Forwarded-For`), managed names and the app's TLV names in trailers, and h2 cookie
//! crumbs joined for HTTP/1.1. Decides by name only; values are `headers`' business.

use std::sync::Arc;

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue};
use tracing::debug;

use crate::header_names::is_managed;

/// One app's view of which client-sent names are dropped; shared by its requests'
/// bodies, which filter their trailers with it.
#[derive(Debug)]
pub(super) struct NameGuard {
    /// `underscores_in_headers`.
    underscores: bool,
    /// The app's TLV header names: set by trustgate, never by the client.
    tlv: Vec<HeaderName>,
}

impl NameGuard {
    pub(super) fn new(underscores: bool, tlv: Vec<HeaderName>) -> Arc<NameGuard> {
        Arc::new(NameGuard { underscores, tlv })
    }

    /// Whether `name` is one trustgate sets itself or would be read as one: managed or
    /// `x-forwarded-*`, or a TLV name of the app, compared with `_` folded into `-`.
    fn protected(&self, name: &HeaderName) -> bool {
        let text = name.as_str();
        if !text.contains('_') && !self.tlv.iter().any(|t| t.as_str().contains('_')) {
            return is_managed(name) || text.starts_with("x-forwarded-") || self.tlv.contains(name);
        }
        let folded = fold(text);
        HeaderName::from_bytes(folded.as_bytes()).is_ok_and(|f| is_managed(&f))
            || folded.starts_with("x-forwarded-")
            || self.tlv.iter().any(|t| fold(t.as_str()) == folded)
    }

    /// Whether a request head may carry `name`: without `_`, or with `_` allowed and not
    /// folding onto a protected name. The head's managed names are `headers`' to rewrite.
    fn head_allows(&self, name: &HeaderName) -> bool {
        let text = name.as_str();
        if text.contains('_') {
            return self.underscores && !self.protected(name);
        }
        // A hyphenated name that folds onto a TLV name written with `_`.
        !self
            .tlv
            .iter()
            .any(|t| t.as_str().contains('_') && fold(t.as_str()) == text)
    }

    /// Removes the head's headers whose names are refused (see [`NameGuard::head_allows`]).
    /// Costs one scan of the names when there is nothing to remove.
    pub(super) fn clean_head(&self, headers: &mut HeaderMap) {
        let tlv_underscored = self.tlv.iter().any(|t| t.as_str().contains('_'));
        if !tlv_underscored && !headers.keys().any(|k| k.as_str().contains('_')) {
            return;
        }
        remove_where(headers, "request header dropped", |n| !self.head_allows(n));
    }

    /// Removes from trailers every protected name and every name [`NameGuard::clean_head`]
    /// would remove: a trailer must not set what the head may not.
    pub(super) fn clean_trailers(&self, trailers: &mut HeaderMap) {
        remove_where(trailers, "request trailer dropped", |n| {
            self.protected(n) || !self.head_allows(n)
        });
    }
}

/// `name` lowercased (as `HeaderName` already is) with `_` as `-`.
fn fold(name: &str) -> String {
    name.replace('_', "-")
}

/// Removes the names `refused` picks, each logged at debug: clients choose them, so
/// they are never logged louder.
fn remove_where(
    headers: &mut HeaderMap,
    what: &'static str,
    refused: impl Fn(&HeaderName) -> bool,
) {
    let names: Vec<HeaderName> = headers.keys().filter(|n| refused(n)).cloned().collect();
    for name in names {
        debug!(header = %name, "{what}");
        headers.remove(&name);
    }
}

/// Joins several `cookie` fields into one with `"; "` (RFC 9113 §8.2.3): h2 clients may
/// split cookies into crumbs, which an HTTP/1.1 upstream must get as one field.
pub(super) fn join_cookie_crumbs(headers: &mut HeaderMap) {
    let mut crumbs = headers.get_all(header::COOKIE).iter();
    if crumbs.next().is_none() || crumbs.next().is_none() {
        return;
    }
    let mut joined: Vec<u8> = Vec::new();
    for crumb in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(crumb.as_bytes());
    }
    // Each crumb was a valid value and "; " is visible ASCII, so the join is one too.
    match HeaderValue::from_bytes(&joined) {
        Ok(value) => {
            headers.insert(header::COOKIE, value);
        }
        Err(error) => debug!(%error, "cookie crumbs not joinable; passed on as they came"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::headers::tests::headers;

    fn names(map: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names
    }

    fn tlv(names: &[&'static str]) -> Vec<HeaderName> {
        names.iter().map(|n| HeaderName::from_static(n)).collect()
    }

    #[test]
    fn underscored_names_are_dropped_by_default() {
        let guard = NameGuard::new(false, Vec::new());
        let mut map = headers(&[
            ("x_forwarded_for", "6.6.6.6"),
            ("x_request_id", "forged"),
            ("x-request-id", "kept"),
            ("accept", "*/*"),
        ]);
        guard.clean_head(&mut map);
        assert_eq!(names(&map), ["accept", "x-request-id"]);
    }

    #[test]
    fn allowed_underscores_still_never_fold_onto_managed_or_tlv_names() {
        let guard = NameGuard::new(true, tlv(&["x-client-cn"]));
        let mut map = headers(&[
            ("x_forwarded_for", "6.6.6.6"),
            ("X_Real_IP", "6.6.6.6"),
            ("x_forwarded_server", "evil"),
            ("host_", "x"),
            ("x_client_cn", "forged"),
            ("http2_settings", "AAA"),
            ("x_app_flag", "1"),
        ]);
        guard.clean_head(&mut map);
        assert_eq!(names(&map), ["host_", "x_app_flag"]);
    }

    #[test]
    fn a_tlv_name_with_underscores_protects_its_hyphenated_spelling() {
        let guard = NameGuard::new(true, tlv(&["x_client_cn"]));
        let mut map = headers(&[("x-client-cn", "forged"), ("x-other", "1")]);
        guard.clean_head(&mut map);
        assert_eq!(names(&map), ["x-other"]);
    }

    #[test]
    fn trailers_lose_managed_tlv_and_underscored_names() {
        let guard = NameGuard::new(false, tlv(&["x-client-cn"]));
        let mut map = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-server", "evil"),
            ("x-real-ip", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("host", "evil.example"),
            ("content-length", "0"),
            ("x-client-cn", "admin"),
            ("x_request_id", "forged"),
            ("grpc-status", "0"),
            ("x-checksum", "abc"),
        ]);
        guard.clean_trailers(&mut map);
        assert_eq!(names(&map), ["grpc-status", "x-checksum"]);
        let allowed = NameGuard::new(true, Vec::new());
        let mut map = headers(&[("x_forwarded_for", "6.6.6.6"), ("x_app", "1")]);
        allowed.clean_trailers(&mut map);
        assert_eq!(names(&map), ["x_app"]);
    }

    #[test]
    fn cookie_crumbs_are_joined_in_order() {
        let mut map = headers(&[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")]);
        join_cookie_crumbs(&mut map);
        let all: Vec<&[u8]> = map
            .get_all(header::COOKIE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        assert_eq!(all, [b"a=1; b=2; c=3"]);
        let mut one = headers(&[("cookie", "a=1; b=2")]);
        join_cookie_crumbs(&mut one);
        assert_eq!(
            one.get(header::COOKIE).map(HeaderValue::as_bytes),
            Some(&b"a=1; b=2"[..])
        );
    }
}
