//! Routing: which app answers a request (Host; on the TLS listener the app whose
//! certificate was served, which the Host must name), which of its routes (longest path prefix, on a segment boundary), the
//! path sent upstream (`replace_path`) and the HTTPS redirect. Built once from a
//! [`Config`]; only the balancers' counters change after that.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Uri};

use super::ConnContext;
use super::balance::Balancer;
use super::hygiene::NameGuard;
use super::refusal::Refusal;
use super::request::RequestHost;
use crate::config::{App, Config, Route, TlvHeader, UpstreamOptions};
use crate::proxy_protocol::Version;

/// Every app's routes, and how requests find them.
#[derive(Debug)]
pub(super) struct Router {
    apps: Vec<AppRoutes>,
    by_name: HashMap<String, usize>,
    default_app: Option<usize>,
    public_https_port: Option<u16>,
}

/// One app, ready to route.
#[derive(Debug)]
pub(super) struct AppRoutes {
    pub(super) name: String,
    pub(super) server_name: String,
    /// Served on the TLS listener.
    pub(super) tls: bool,
    /// Plain-HTTP requests get a 301 to HTTPS.
    pub(super) https_redirection: bool,
    /// PROXY v2 TLVs sent as headers; these names are removed from every request.
    pub(super) tlv_headers: Vec<TlvHeader>,
    /// Which client-sent names its requests lose, in the head and in trailers.
    pub(super) names: Arc<NameGuard>,
    /// Longest path first.
    routes: Vec<RouteEntry>,
}

/// One route, ready to forward.
#[derive(Debug)]
pub(super) struct RouteEntry {
    pub(super) path: String,
    pub(super) replace_path: Option<String>,
    /// Never empty.
    pub(super) upstreams: Vec<Target>,
    balancer: Balancer,
    pub(super) options: UpstreamOptions,
}

/// One upstream of a route.
#[derive(Debug)]
pub(super) struct Target {
    pub(super) scheme: Scheme,
    pub(super) authority: Authority,
    pub(super) tls: bool,
    /// Each new connection starts with a PROXY header of this version.
    pub(super) send_proxy_protocol: Option<Version>,
}

impl Router {
    pub(super) fn new(config: &Config) -> Router {
        let apps: Vec<AppRoutes> = config
            .apps
            .iter()
            .map(|app| AppRoutes::new(app, config.headers.underscores_in_headers))
            .collect();
        let by_name = apps
            .iter()
            .enumerate()
            .map(|(i, app)| (app.server_name.clone(), i))
            .collect();
        let default_app = config
            .default_app()
            .and_then(|d| apps.iter().position(|a| a.name == d.name));
        Router {
            apps,
            by_name,
            default_app,
            public_https_port: config.listeners.public_https_port,
        }
    }

    /// The app that answers a request with this host on this connection.
    ///
    /// TLS listener: the app whose certificate was served (by SNI; without SNI,
    /// `default_tls_app` or the only TLS app), and the Host, when there is one, must name
    /// the same server (421 otherwise, as rpxy and nginx do).
    /// Plain listener: the Host picks the app, else `default_app`, else 404.
    pub(super) fn app_for(
        &self,
        host: Option<&RequestHost>,
        conn: &ConnContext,
    ) -> Result<&AppRoutes, Refusal> {
        if conn.tls {
            let served = conn.served_name.as_deref().ok_or(Refusal::Misdirected)?;
            if host.is_some_and(|h| h.name != served) {
                return Err(Refusal::Misdirected);
            }
            return self
                .by_name
                .get(served)
                .map(|&i| &self.apps[i])
                .filter(|app| app.tls)
                .ok_or(Refusal::Misdirected);
        }
        host.and_then(|h| self.by_name.get(&h.name))
            .or(self.default_app.as_ref())
            .map(|&i| &self.apps[i])
            .ok_or(Refusal::NotFound)
    }

    /// `Location` of the 301 that sends a plain-HTTP request for `app` to HTTPS: the app's
    /// server name, the public HTTPS port unless it is 443, and the path and query.
    /// `None` when there is no TLS listener to send it to.
    pub(super) fn redirect_location(&self, app: &AppRoutes, uri: &Uri) -> Option<HeaderValue> {
        let port = self.public_https_port?;
        let path = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let location = match port {
            443 => format!("https://{}{path}", app.server_name),
            port => format!("https://{}:{port}{path}", app.server_name),
        };
        // Server names and URI paths are visible ASCII, so this cannot fail; a refusal
        // would still be the safe answer.
        HeaderValue::from_str(&location).ok()
    }
}

impl AppRoutes {
    fn new(app: &App, underscores_in_headers: bool) -> AppRoutes {
        let routes = app.routes.iter().map(RouteEntry::new).collect();
        AppRoutes {
            name: app.name.clone(),
            server_name: app.server_name.clone(),
            tls: app.tls.is_some(),
            https_redirection: app.tls.as_ref().is_some_and(|t| t.https_redirection),
            tlv_headers: app.tlv_headers.clone(),
            names: NameGuard::new(
                underscores_in_headers,
                app.tlv_headers.iter().map(|t| t.name.clone()).collect(),
            ),
            routes,
        }
    }

    /// The route serving `path`: the longest route path that equals it or is followed in
    /// it by a `/` (so `/api` serves `/api` and `/api/x`, not `/apix`).
    pub(super) fn route_for(&self, path: &str) -> Option<&RouteEntry> {
        self.routes.iter().find(|r| prefix_matches(&r.path, path))
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
    }
}

impl RouteEntry {
    fn new(route: &Route) -> RouteEntry {
        let upstreams = route
            .upstreams
            .iter()
            .map(|u| Target {
                scheme: u.scheme.clone(),
                authority: u.authority.clone(),
                tls: u.tls(),
                send_proxy_protocol: u.send_proxy_protocol,
            })
            .collect();
        RouteEntry {
            path: route.path.clone(),
            replace_path: route.replace_path.clone(),
            upstreams,
            balancer: Balancer::new(route.load_balance),
            options: route.options,
        }
    }

    /// The upstream for the next request.
    pub(super) fn pick(&self) -> &Target {
        &self.upstreams[self.balancer.pick(self.upstreams.len())]
    }

    /// The path and query sent upstream: with `replace_path`, the matched prefix is
    /// replaced (joined with exactly one `/`); otherwise unchanged. `uri` matched this
    /// route.
    pub(super) fn upstream_path(&self, uri: &Uri) -> Option<PathAndQuery> {
        let original = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let Some(replace) = &self.replace_path else {
            return PathAndQuery::from_str(original).ok();
        };
        let rest = original.strip_prefix(self.path.as_str())?;
        let joined = match (replace.ends_with('/'), rest.strip_prefix('/')) {
            (true, Some(tail)) => format!("{replace}{tail}"),
            _ => format!("{replace}{rest}"),
        };
        PathAndQuery::from_str(&joined).ok()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::config::parse_str;
    use crate::forward::ConnPools;

    const CONFIG: &str = r#"
listen_port = 8080
listen_port_tls = 8443
default_app = "fallback"

[apps.web]
server_name = "web.example"
tls = { tls_cert_path = "c.pem", tls_cert_key_path = "k.pem", https_redirection = false }
[[apps.web.reverse_proxy]]
upstream = [{ location = "127.0.0.1:1001" }]
[[apps.web.reverse_proxy]]
path = "/api"
replace_path = "/v2"
upstream = [{ location = "127.0.0.1:1002" }]
[[apps.web.reverse_proxy]]
path = "/api/admin"
upstream = [{ location = "127.0.0.1:1003" }]
[[apps.web.reverse_proxy]]
path = "/static/"
replace_path = "/"
upstream = [{ location = "127.0.0.1:1004" }]

[apps.secure]
server_name = "secure.example"
tls = { tls_cert_path = "c.pem", tls_cert_key_path = "k.pem" }
[[apps.secure.reverse_proxy]]
upstream = [{ location = "127.0.0.1:2001" }]

[apps.fallback]
server_name = "fallback.example"
[[apps.fallback.reverse_proxy]]
upstream = [{ location = "127.0.0.1:3001" }]
"#;

    fn router(text: &str) -> Router {
        let (config, _) = parse_str(text, "test.toml").expect("test config is valid");
        Router::new(&config)
    }

    fn conn(tls: bool, served: Option<&str>) -> ConnContext {
        let addr: SocketAddr = "192.0.2.1:1234".parse().expect("test address");
        ConnContext {
            client: addr,
            peer: addr,
            local: "127.0.0.1:8080".parse().expect("test address"),
            tls,
            served_name: served.map(str::to_owned),
            proxy: None,
            upstream_pools: ConnPools::default(),
        }
    }

    fn host(raw: &str) -> RequestHost {
        RequestHost::parse(raw).expect("test host is valid")
    }

    fn app_name(r: &Router, h: Option<&str>, c: &ConnContext) -> Result<String, Refusal> {
        let h = h.map(host);
        r.app_for(h.as_ref(), c).map(|a| a.name.clone())
    }

    #[test]
    fn plain_listener_routes_by_host_then_default_app() {
        let r = router(CONFIG);
        let c = conn(false, None);
        assert_eq!(app_name(&r, Some("web.example"), &c), Ok("web".into()));
        assert_eq!(
            app_name(&r, Some("SECURE.example"), &c),
            Ok("secure".into())
        );
        assert_eq!(
            app_name(&r, Some("unknown.example"), &c),
            Ok("fallback".into())
        );
        assert_eq!(app_name(&r, None, &c), Ok("fallback".into()));
    }

    #[test]
    fn unknown_host_without_default_app_is_not_found() {
        let r = router(&CONFIG.replace("default_app = \"fallback\"\n", ""));
        let c = conn(false, None);
        assert_eq!(
            app_name(&r, Some("unknown.example"), &c),
            Err(Refusal::NotFound)
        );
        assert_eq!(app_name(&r, None, &c), Err(Refusal::NotFound));
    }

    #[test]
    fn tls_listener_routes_by_sni_and_refuses_another_host() {
        let r = router(CONFIG);
        let c = conn(true, Some("web.example"));
        assert_eq!(app_name(&r, Some("web.example:8443"), &c), Ok("web".into()));
        assert_eq!(app_name(&r, None, &c), Ok("web".into()));
        assert_eq!(
            app_name(&r, Some("secure.example"), &c),
            Err(Refusal::Misdirected)
        );
        // default_app is for plain HTTP only.
        assert_eq!(
            app_name(&r, Some("unknown.example"), &c),
            Err(Refusal::Misdirected)
        );
    }

    #[test]
    fn tls_listener_serves_only_tls_apps() {
        let r = router(CONFIG);
        let served = conn(true, Some("fallback.example"));
        assert_eq!(
            app_name(&r, Some("fallback.example"), &served),
            Err(Refusal::Misdirected)
        );
        // No app known to have been served (only a hand-built context): refused.
        let none = conn(true, None);
        assert_eq!(
            app_name(&r, Some("secure.example"), &none),
            Err(Refusal::Misdirected)
        );
    }

    #[test]
    fn after_a_handshake_without_sni_the_host_must_name_the_served_app() {
        // The listener puts the default TLS app's name in the context when there was no
        // SNI: a Host naming another TLS app is misdirected, as with SNI.
        let r = router(CONFIG);
        let served = conn(true, Some("secure.example"));
        assert_eq!(
            app_name(&r, Some("secure.example"), &served),
            Ok("secure".into())
        );
        assert_eq!(app_name(&r, None, &served), Ok("secure".into()));
        assert_eq!(
            app_name(&r, Some("web.example"), &served),
            Err(Refusal::Misdirected)
        );
    }

    fn web(r: &Router) -> &AppRoutes {
        r.app_for(Some(&host("web.example")), &conn(false, None))
            .expect("web app")
    }

    fn route_path(r: &Router, path: &str) -> Option<String> {
        web(r).route_for(path).map(|route| route.path.clone())
    }

    #[test]
    fn longest_prefix_on_a_segment_boundary_wins() {
        let r = router(CONFIG);
        assert_eq!(
            route_path(&r, "/api/admin/users").as_deref(),
            Some("/api/admin")
        );
        assert_eq!(route_path(&r, "/api/admin").as_deref(), Some("/api/admin"));
        assert_eq!(route_path(&r, "/api/adminx").as_deref(), Some("/api"));
        assert_eq!(route_path(&r, "/api").as_deref(), Some("/api"));
        assert_eq!(route_path(&r, "/apix").as_deref(), Some("/"));
        assert_eq!(route_path(&r, "/static/a.css").as_deref(), Some("/static/"));
        assert_eq!(route_path(&r, "/").as_deref(), Some("/"));
    }

    #[test]
    fn no_matching_route_is_none() {
        let r = router(&CONFIG.replace(
            "[[apps.web.reverse_proxy]]\nupstream = [{ location = \"127.0.0.1:1001\" }]\n",
            "",
        ));
        assert_eq!(route_path(&r, "/other"), None);
        assert_eq!(route_path(&r, "/api/x").as_deref(), Some("/api"));
    }

    fn rewritten(r: &Router, path: &str) -> String {
        let uri: Uri = path.parse().expect("test uri");
        let route = web(r).route_for(uri.path()).expect("a route");
        route.upstream_path(&uri).expect("rewritable").to_string()
    }

    #[test]
    fn replace_path_swaps_the_matched_prefix_and_keeps_the_query() {
        let r = router(CONFIG);
        assert_eq!(rewritten(&r, "/api/users?id=1"), "/v2/users?id=1");
        assert_eq!(rewritten(&r, "/api"), "/v2");
        assert_eq!(rewritten(&r, "/api?x"), "/v2?x");
        assert_eq!(rewritten(&r, "/static/css/a.css"), "/css/a.css");
        // No replace_path: unchanged.
        assert_eq!(rewritten(&r, "/api/admin/x?y=1"), "/api/admin/x?y=1");
        assert_eq!(rewritten(&r, "/index.html"), "/index.html");
    }

    #[test]
    fn redirect_goes_to_the_public_https_port() {
        let text = CONFIG.replace("https_redirection = false", "https_redirection = true");
        let r = router(&text);
        let uri: Uri = "/a/b?c=d".parse().expect("test uri");
        let location = r.redirect_location(web(&r), &uri).expect("a location");
        assert_eq!(location, "https://web.example:8443/a/b?c=d");
        assert!(web(&r).https_redirection);

        let r = router(&text.replace("listen_port_tls = 8443", "listen_port_tls = 443"));
        let location = r.redirect_location(web(&r), &uri).expect("a location");
        assert_eq!(location, "https://web.example/a/b?c=d");

        let public = text.replace(
            "listen_port_tls = 8443",
            "listen_port_tls = 8443\npublic_https_port = 9443",
        );
        let r = router(&public);
        let location = r.redirect_location(web(&r), &uri).expect("a location");
        assert_eq!(location, "https://web.example:9443/a/b?c=d");
    }

    #[test]
    fn redirection_follows_the_app_setting() {
        let r = router(CONFIG);
        assert!(!web(&r).https_redirection);
        let secure = r
            .app_for(Some(&host("secure.example")), &conn(false, None))
            .expect("secure app");
        assert!(secure.https_redirection, "defaults to true with both ports");
    }
}
