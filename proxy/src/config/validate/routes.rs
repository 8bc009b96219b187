//! `[[apps.NAME.reverse_proxy]]` and its `upstream = [...]`: path prefixes, upstream
//! URIs (host[:port] only, scheme from `tls`), load balancing and `upstream_options`.
//! rpxy methods trustgate lacks are replaced with a warning; unknown ones are refused.

use http::Uri;

use super::{Cx, shown};
use crate::config::error::{ConfigError, ValueError};
use crate::config::file::{
    Choice, LoadBalanceFile, ProxyVersionFile, RouteFile, UpstreamFile, UpstreamOptionFile,
};
use crate::config::warning::WarningKind;
use crate::config::{HostHeader, LoadBalance, Route, Upstream, UpstreamHttp, UpstreamOptions};
use crate::proxy_protocol::Version;

/// One route; `key` is its path, like `apps.web.reverse_proxy[0]`.
pub(super) fn route(cx: &mut Cx<'_>, key: &str, file: RouteFile) -> Result<Route, ConfigError> {
    let path = match file.path {
        None => "/".to_owned(),
        Some(p) => absolute(cx, &format!("{key}.path"), p)?,
    };
    let replace_path = file
        .replace_path
        .map(|p| absolute(cx, &format!("{key}.replace_path"), p))
        .transpose()?;
    let upstream_key = format!("{key}.upstream");
    let Some(upstream_files) = file.upstream else {
        return Err(cx.missing(
            upstream_key,
            "where this route sends requests: upstream = [{ location = \"host:port\" }]",
        ));
    };
    if upstream_files.is_empty() {
        return Err(cx.invalid(
            upstream_key,
            "[]".into(),
            ValueError::EmptyList {
                what_to_do: "give at least one { location = \"host:port\" }",
            },
        ));
    }
    let upstreams = upstream_files
        .into_iter()
        .enumerate()
        .map(|(j, u)| upstream(cx, &format!("{upstream_key}[{j}]"), u))
        .collect::<Result<Vec<_>, _>>()?;
    let lb_key = format!("{key}.load_balance");
    let method = match &file.load_balance {
        None => LoadBalanceFile::None,
        Some(method) => cx.choice(&lb_key, method)?,
    };
    let load_balance = match method {
        LoadBalanceFile::None => LoadBalance::First,
        LoadBalanceFile::RoundRobin => LoadBalance::RoundRobin,
        LoadBalanceFile::Random => LoadBalance::Random,
        // Sticky sessions are round robin plus a cookie; without health checks,
        // primary/backup is always the first upstream.
        LoadBalanceFile::Sticky => replaced(cx, lb_key, "sticky", LoadBalance::RoundRobin),
        LoadBalanceFile::PrimaryBackup => {
            replaced(cx, lb_key, "primary_backup", LoadBalance::First)
        }
    };
    let options = upstream_options(
        cx,
        &format!("{key}.upstream_options"),
        file.upstream_options,
    )?;
    Ok(Route {
        path,
        replace_path,
        upstreams,
        load_balance,
        options,
    })
}

fn replaced(
    cx: &mut Cx<'_>,
    key: String,
    method: &'static str,
    instead: LoadBalance,
) -> LoadBalance {
    cx.warn(key, WarningKind::LoadBalanceReplaced { method, instead });
    instead
}

fn upstream(cx: &Cx<'_>, key: &str, file: UpstreamFile) -> Result<Upstream, ConfigError> {
    let send_proxy_protocol = match &file.send_proxy_protocol {
        None => None,
        Some(version) => Some(
            match cx.choice(format!("{key}.send_proxy_protocol"), version)? {
                ProxyVersionFile::V1 => Version::V1,
                ProxyVersionFile::V2 => Version::V2,
            },
        ),
    };
    let key = format!("{key}.location");
    let Some(location) = file.location else {
        return Err(cx.missing(
            key,
            "the upstream's host[:port], e.g. location = \"127.0.0.1:8081\"",
        ));
    };
    let invalid = |problem| cx.invalid(&key, shown(&location), problem);
    if location.is_empty() {
        return Err(invalid(ValueError::Empty));
    }
    if location.contains("://") {
        return Err(invalid(ValueError::UpstreamScheme));
    }
    let scheme = if file.tls == Some(true) {
        "https"
    } else {
        "http"
    };
    let uri: Uri = format!("{scheme}://{location}")
        .parse()
        .map_err(|cause| invalid(ValueError::UpstreamUri { cause }))?;
    let has_path = !matches!(uri.path(), "" | "/") || uri.query().is_some();
    let parts = uri.into_parts();
    let (Some(scheme), Some(authority)) = (parts.scheme, parts.authority) else {
        // Only a path can be left where `scheme://` has no authority after it.
        return Err(invalid(ValueError::UpstreamPath));
    };
    if has_path || location.ends_with('/') {
        return Err(invalid(ValueError::UpstreamPath));
    }
    Ok(Upstream {
        scheme,
        authority,
        send_proxy_protocol,
    })
}

fn upstream_options(
    cx: &Cx<'_>,
    key: &str,
    options: Option<Vec<Choice<UpstreamOptionFile>>>,
) -> Result<UpstreamOptions, ConfigError> {
    let mut out = UpstreamOptions {
        host: HostHeader::Original,
        http_version: UpstreamHttp::Auto,
        forwarded_header: false,
        upgrade_insecure_requests: false,
    };
    let options = options.unwrap_or_default();
    let (mut keep_host, mut set_host, mut h1, mut h2) = (false, false, false, false);
    for (i, option) in options.iter().enumerate() {
        match cx.choice(format!("{key}[{i}]"), option)? {
            UpstreamOptionFile::KeepOriginalHost => keep_host = true,
            UpstreamOptionFile::SetUpstreamHost => set_host = true,
            UpstreamOptionFile::ForceHttp11Upstream => h1 = true,
            UpstreamOptionFile::ForceHttp2Upstream => h2 = true,
            UpstreamOptionFile::ForwardedHeader => out.forwarded_header = true,
            UpstreamOptionFile::UpgradeInsecureRequests => out.upgrade_insecure_requests = true,
        }
    }
    if h1 && h2 {
        let written: Vec<&String> = options.iter().map(|o| &o.text).collect();
        return Err(cx.invalid(key, shown(&written), ValueError::Http11AndHttp2));
    }
    if set_host && !keep_host {
        out.host = HostHeader::Upstream;
    }
    out.http_version = match (h1, h2) {
        (true, _) => UpstreamHttp::Http11,
        (_, true) => UpstreamHttp::Http2,
        _ => UpstreamHttp::Auto,
    };
    Ok(out)
}

fn absolute(cx: &Cx<'_>, key: &str, path: String) -> Result<String, ConfigError> {
    if !path.starts_with('/') {
        return Err(cx.invalid(key, shown(&path), ValueError::PathNotAbsolute));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{err, invalid, ok};
    use super::*;
    use crate::config::warning::Warning;

    const PLAIN: &str = "listen_port = 80\n";

    fn app(top: &str, body: &str) -> String {
        format!("{top}[apps.a]\nserver_name = \"a.example\"\n{body}")
    }

    fn route(body: &str) -> (Route, Vec<Warning>) {
        let (c, w) = ok(&app(PLAIN, &format!("[[apps.a.reverse_proxy]]\n{body}")));
        (
            c.apps.into_iter().next().expect("one app").routes.remove(0),
            w,
        )
    }

    fn route_err(body: &str) -> (String, ValueError) {
        invalid(&app(PLAIN, &format!("[[apps.a.reverse_proxy]]\n{body}")))
    }

    const UP: &str = "upstream = [{ location = \"127.0.0.1:8081\" }]\n";

    #[test]
    fn paths_must_be_absolute() {
        let (key, p) = route_err(&format!("path = \"maps\"\n{UP}"));
        assert_eq!(key, "apps.a.reverse_proxy[0].path");
        assert!(matches!(p, ValueError::PathNotAbsolute));
        let (key, _) = route_err(&format!("path = \"/maps\"\nreplace_path = \"x\"\n{UP}"));
        assert_eq!(key, "apps.a.reverse_proxy[0].replace_path");
        let (r, _) = route(&format!("path = \"/maps\"\nreplace_path = \"/x\"\n{UP}"));
        assert_eq!(r.replace_path.as_deref(), Some("/x"));
    }

    #[test]
    fn upstreams_are_host_and_port_with_scheme_from_tls() {
        let (r, _) =
            route("upstream = [{ location = \"h:8081\" }, { location = \"h2\", tls = true }]");
        let uris: Vec<String> = r.upstreams.iter().map(|u| u.to_string()).collect();
        assert_eq!(uris, ["http://h:8081/", "https://h2/"]);
        assert!(!r.upstreams[0].tls() && r.upstreams[1].tls());
        let cases = [
            ("http://h", "scheme"),
            ("h/base", "path"),
            ("h/", "path"),
            ("h?q", "path"),
            ("a b", "uri"),
            ("", "empty"),
        ];
        for (location, kind) in cases {
            let (key, p) = route_err(&format!("upstream = [{{ location = \"{location}\" }}]"));
            assert_eq!(key, "apps.a.reverse_proxy[0].upstream[0].location");
            let matched = match kind {
                "scheme" => matches!(p, ValueError::UpstreamScheme),
                "path" => matches!(p, ValueError::UpstreamPath),
                "uri" => matches!(p, ValueError::UpstreamUri { .. }),
                _ => matches!(p, ValueError::Empty),
            };
            assert!(matched, "{location:?} gave {p:?}");
        }
    }

    #[test]
    fn upstreams_may_ask_for_a_proxy_header_of_either_version() {
        let (r, _) = route(
            "upstream = [{ location = \"h:1\" }, { location = \"h:2\", send_proxy_protocol = \"v1\" }, \
             { location = \"h:3\", send_proxy_protocol = \"v2\", tls = true }]",
        );
        let versions: Vec<_> = r.upstreams.iter().map(|u| u.send_proxy_protocol).collect();
        assert_eq!(versions, [None, Some(Version::V1), Some(Version::V2)]);
        for bad in ["V3", "2", "true", "send-proxy-v2"] {
            let (key, p) = route_err(&format!(
                "upstream = [{{ location = \"h\", send_proxy_protocol = \"{bad}\" }}]"
            ));
            assert_eq!(
                key,
                "apps.a.reverse_proxy[0].upstream[0].send_proxy_protocol"
            );
            assert!(
                matches!(p, ValueError::UnknownChoice { .. }),
                "{bad}: {p:?}"
            );
        }
        let (_, p) = route_err("upstream = [{ location = \"h\", send_proxy_protocol = \"V2 \" }]");
        assert!(matches!(
            p,
            ValueError::UnknownChoice {
                nearest: Some("v2"),
                ..
            }
        ));
    }

    #[test]
    fn a_route_needs_upstreams_with_locations() {
        let text = app(PLAIN, "[[apps.a.reverse_proxy]]\npath = \"/\"\n");
        assert!(
            matches!(err(&text), ConfigError::Missing { key, .. } if key.ends_with("[0].upstream"))
        );
        assert!(matches!(
            route_err("upstream = []").1,
            ValueError::EmptyList { .. }
        ));
        let text = app(
            PLAIN,
            "[[apps.a.reverse_proxy]]\nupstream = [{ tls = true }]\n",
        );
        assert!(
            matches!(err(&text), ConfigError::Missing { key, .. } if key.ends_with("upstream[0].location"))
        );
    }

    #[test]
    fn load_balance_methods_and_replacements() {
        let lb = |v: &str| route(&format!("{UP}load_balance = \"{v}\""));
        assert_eq!(route(UP).0.load_balance, LoadBalance::First);
        assert_eq!(lb("none").0.load_balance, LoadBalance::First);
        assert_eq!(lb("round_robin").0.load_balance, LoadBalance::RoundRobin);
        assert_eq!(lb("random").0.load_balance, LoadBalance::Random);
        let (r, w) = lb("sticky");
        assert_eq!(r.load_balance, LoadBalance::RoundRobin);
        assert_eq!(w[0].key, "apps.a.reverse_proxy[0].load_balance");
        let (r, w) = lb("primary_backup");
        assert_eq!(r.load_balance, LoadBalance::First);
        assert_eq!(w.len(), 1);
        let (key, p) = route_err(&format!("{UP}load_balance = \"round-robin\""));
        assert_eq!(key, "apps.a.reverse_proxy[0].load_balance");
        assert!(matches!(
            p,
            ValueError::UnknownChoice {
                nearest: Some("round_robin"),
                ..
            }
        ));
    }

    #[test]
    fn upstream_options_set_flags_and_refuse_conflicts() {
        let opts = |list: &str| route(&format!("{UP}upstream_options = [{list}]")).0.options;
        let o = route(UP).0.options;
        assert_eq!(
            (o.host, o.http_version),
            (HostHeader::Original, UpstreamHttp::Auto)
        );
        assert!(!o.forwarded_header && !o.upgrade_insecure_requests);
        let o = opts(
            "\"set_upstream_host\", \"force_http11_upstream\", \"forwarded_header\", \"upgrade_insecure_requests\"",
        );
        assert_eq!(
            (o.host, o.http_version),
            (HostHeader::Upstream, UpstreamHttp::Http11)
        );
        assert!(o.forwarded_header && o.upgrade_insecure_requests);
        let o = opts("\"keep_original_host\", \"set_upstream_host\", \"force_http2_upstream\"");
        assert_eq!(
            (o.host, o.http_version),
            (HostHeader::Original, UpstreamHttp::Http2)
        );
        let (key, p) = route_err(&format!(
            "{UP}upstream_options = [\"force_http11_upstream\", \"force_http2_upstream\"]"
        ));
        assert_eq!(key, "apps.a.reverse_proxy[0].upstream_options");
        assert!(matches!(p, ValueError::Http11AndHttp2));
        let (key, p) = route_err(&format!(
            "{UP}upstream_options = [\"forwarded_header\", \"keep_orginal_host\"]"
        ));
        assert_eq!(key, "apps.a.reverse_proxy[0].upstream_options[1]");
        assert!(matches!(
            p,
            ValueError::UnknownChoice {
                nearest: Some("keep_original_host"),
                ..
            }
        ));
    }
}
