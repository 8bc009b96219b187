//! Apps, routes and upstreams: `[apps.NAME]`, its `tls`, `[[apps.NAME.reverse_proxy]]`
//! and `upstream = [...]`, with rpxy's rules (TLS-only listeners need TLS on every app,
//! `https_redirection` needs both ports) and trustgate's (unique server names and paths,
//! routes sorted longest prefix first).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{Cx, Ports, routes, shown, tlv_headers};
use crate::config::error::{ConfigError, ValueError};
use crate::config::file::{AppFile, TlsFile};
use crate::config::keys::{join, nearest};
use crate::config::warning::WarningKind;
use crate::config::{App, AppTls, Route};

/// All apps, sorted by name, and the checked app names of the top level.
pub(super) struct Apps {
    pub(crate) apps: Vec<App>,
    pub(crate) default_app: Option<String>,
    pub(crate) default_tls_app: Option<String>,
}

/// All apps, sorted by name, with the checked `default_app` and `default_tls_app`.
pub(super) fn apps(
    cx: &mut Cx<'_>,
    apps: Option<BTreeMap<String, AppFile>>,
    default_app: Option<String>,
    default_tls_app: Option<String>,
    ports: Ports,
) -> Result<Apps, ConfigError> {
    let no_apps = || ConfigError::NoApps {
        file: cx.file.to_owned(),
    };
    let apps = apps.unwrap_or_default();
    if apps.is_empty() {
        return Err(no_apps());
    }
    let mut served: Vec<App> = Vec::with_capacity(apps.len());
    let mut not_served: Vec<String> = Vec::new();
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for (table_name, file) in apps {
        let name = table_name.to_ascii_lowercase();
        if let Some(other) = names.insert(name.clone(), table_name.clone()) {
            return Err(cx.invalid(
                "apps",
                shown(&table_name),
                ValueError::DuplicateApp { other },
            ));
        }
        let key = join("apps", &table_name);
        match app(cx, &key, name.clone(), file, ports)? {
            Some(app) => {
                if let Some(other) = served.iter().find(|a| a.server_name == app.server_name) {
                    return Err(cx.invalid(
                        format!("{key}.server_name"),
                        shown(&app.server_name),
                        ValueError::DuplicateServerName {
                            other: other.name.clone(),
                        },
                    ));
                }
                served.push(app);
            }
            None => not_served.push(name),
        }
    }
    if served.is_empty() {
        return Err(no_apps());
    }
    served.sort_by(|a, b| a.name.cmp(&b.name));
    let named = Named {
        served: &served,
        not_served: &not_served,
    };
    let default_app = default_app
        .map(|written| named.check(cx, "default_app", &written, |_| true))
        .transpose()?;
    let default_tls_app = default_tls_app
        .map(|written| {
            let name = named.check(cx, "default_tls_app", &written, |a| a.tls.is_some())?;
            match served.iter().find(|a| a.name == name) {
                Some(app) if app.tls.is_none() => Err(cx.invalid(
                    "default_tls_app",
                    shown(&written),
                    ValueError::NotTlsApp {
                        tls_listener: ports.tls.is_some(),
                    },
                )),
                _ => Ok(name),
            }
        })
        .transpose()?;
    Ok(Apps {
        apps: served,
        default_app,
        default_tls_app,
    })
}

/// The apps a top-level key may name.
struct Named<'a> {
    served: &'a [App],
    not_served: &'a [String],
}

impl Named<'_> {
    /// The lowercased name `written` when it names a served app; else an error on `key`
    /// suggesting the nearest app among those `eligible` accepts.
    fn check(
        &self,
        cx: &Cx<'_>,
        key: &'static str,
        written: &str,
        eligible: impl Fn(&App) -> bool,
    ) -> Result<String, ConfigError> {
        let name = written.to_ascii_lowercase();
        if self.served.iter().any(|a| a.name == name) {
            return Ok(name);
        }
        let problem = if self.not_served.contains(&name) {
            ValueError::DroppedApp
        } else {
            // The key names an app; a server name there is a likely slip.
            let candidates = || self.served.iter().filter(|a| eligible(a));
            let by_server_name = candidates().find(|a| a.server_name == name);
            let nearest = by_server_name
                .map(|a| a.name.as_str())
                .or_else(|| nearest(&name, candidates().map(|a| a.name.as_str())));
            ValueError::UnknownApp {
                nearest: nearest.map(str::to_owned),
            }
        };
        Err(cx.invalid(key, shown(written), problem))
    }
}

/// One app, or `None` when it cannot be served (ACME-only certificate).
fn app(
    cx: &mut Cx<'_>,
    key: &str,
    name: String,
    file: AppFile,
    ports: Ports,
) -> Result<Option<App>, ConfigError> {
    let Some(server_name) = file.server_name else {
        return Err(cx.missing(
            format!("{key}.server_name"),
            "the host name this app answers to (Host header and TLS SNI), e.g. \
             server_name = \"example.com\"",
        ));
    };
    let server_name =
        non_blank(cx, &format!("{key}.server_name"), server_name)?.to_ascii_lowercase();
    let tls = match file.tls {
        Some(tls_file) => match tls(cx, &format!("{key}.tls"), tls_file, ports)? {
            Tls::Serve(tls) => Some(tls),
            Tls::Unused => None,
            Tls::NotServed => return Ok(None),
        },
        None if ports.plain.is_none() => {
            return Err(cx.missing(
                format!("{key}.tls"),
                "only listen_port_tls is set, so every app is served over TLS: give \
                 tls = { tls_cert_path = \"...\", tls_cert_key_path = \"...\" }",
            ));
        }
        None => None,
    };
    let tlv_headers = tlv_headers::tlv_headers(
        cx,
        &format!("{key}.proxy_protocol_tlv_headers"),
        file.proxy_protocol_tlv_headers,
    )?;
    let routes_key = format!("{key}.reverse_proxy");
    let Some(route_files) = file.reverse_proxy else {
        return Err(cx.missing(
            routes_key,
            "where this app's requests go: [[apps.NAME.reverse_proxy]] with \
             upstream = [{ location = \"host:port\" }]",
        ));
    };
    if route_files.is_empty() {
        return Err(cx.invalid(
            routes_key,
            "[]".into(),
            ValueError::EmptyList {
                what_to_do: "give at least one route with an upstream",
            },
        ));
    }
    let mut routes: Vec<(String, Route)> = Vec::with_capacity(route_files.len());
    for (i, route_file) in route_files.into_iter().enumerate() {
        let route_key = format!("{routes_key}[{i}]");
        let route = routes::route(cx, &route_key, route_file)?;
        if routes.iter().any(|(_, r)| r.path == route.path) {
            return Err(cx.invalid(
                format!("{route_key}.path"),
                shown(&route.path),
                ValueError::DuplicateRoute,
            ));
        }
        routes.push((route_key, route));
    }
    let mut routes: Vec<Route> = routes.into_iter().map(|(_, r)| r).collect();
    routes.sort_by(|a, b| {
        b.path
            .len()
            .cmp(&a.path.len())
            .then_with(|| a.path.cmp(&b.path))
    });
    Ok(Some(App {
        name,
        server_name,
        tls,
        routes,
        tlv_headers,
    }))
}

enum Tls {
    Serve(AppTls),
    /// No TLS listener: the app is served on the plain port only.
    Unused,
    /// ACME-only: the app is left out.
    NotServed,
}

fn tls(cx: &mut Cx<'_>, key: &str, file: TlsFile, ports: Ports) -> Result<Tls, ConfigError> {
    if let Some(redirect) = file.https_redirection
        && !ports.both()
    {
        return Err(cx.invalid(
            format!("{key}.https_redirection"),
            redirect.to_string(),
            ValueError::RedirectNeedsBothPorts,
        ));
    }
    if ports.tls.is_none() {
        cx.warn(key, WarningKind::TlsUnused);
        return Ok(Tls::Unused);
    }
    if file.acme == Some(true) {
        let acme_key = format!("{key}.acme");
        if file.tls_cert_path.is_none() && file.tls_cert_key_path.is_none() {
            cx.warn(acme_key, WarningKind::AcmeAppNotServed);
            return Ok(Tls::NotServed);
        }
        cx.warn(acme_key, WarningKind::AcmeIgnored);
    }
    let path = |cx: &Cx<'_>, name: &str, value: Option<String>| -> Result<PathBuf, ConfigError> {
        let key = format!("{key}.{name}");
        match value {
            Some(v) if v.is_empty() => Err(cx.invalid(key, shown(&v), ValueError::Empty)),
            Some(v) => Ok(PathBuf::from(v)),
            None => Err(cx.missing(
                key,
                "listen_port_tls is set and this app has a tls table, so it needs \
                 tls_cert_path (PEM chain) and tls_cert_key_path (PEM key); or remove the \
                 tls table to serve it over plain HTTP only",
            )),
        }
    };
    Ok(Tls::Serve(AppTls {
        cert_path: path(cx, "tls_cert_path", file.tls_cert_path)?,
        key_path: path(cx, "tls_cert_key_path", file.tls_cert_key_path)?,
        client_ca_path: file
            .client_ca_cert_path
            .map(|ca| path(cx, "client_ca_cert_path", Some(ca)))
            .transpose()?,
        // rpxy's default: redirect whenever both listeners exist.
        https_redirection: file.https_redirection.unwrap_or(ports.both()),
    }))
}

fn non_blank(cx: &Cx<'_>, key: &str, value: String) -> Result<String, ConfigError> {
    if value.is_empty() {
        return Err(cx.invalid(key, shown(&value), ValueError::Empty));
    }
    if value.chars().any(char::is_whitespace) {
        return Err(cx.invalid(key, shown(&value), ValueError::Whitespace));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{APP, err, invalid, ok};
    use super::*;

    const PLAIN: &str = "listen_port = 80\n";
    const BOTH: &str = "listen_port = 80\nlisten_port_tls = 443\n";
    const CERTS: &str = "tls_cert_path = \"c.pem\", tls_cert_key_path = \"k.pem\"";

    fn app(top: &str, body: &str) -> String {
        format!("{top}[apps.a]\nserver_name = \"a.example\"\n{body}")
    }

    fn routes(body: &str) -> Vec<Route> {
        let (c, _) = ok(&app(PLAIN, body));
        c.apps.into_iter().next().expect("one app").routes
    }

    const UP: &str = "upstream = [{ location = \"127.0.0.1:8081\" }]\n";

    #[test]
    fn at_least_one_app_is_required() {
        assert!(matches!(err(PLAIN), ConfigError::NoApps { .. }));
        assert!(matches!(
            err(&format!("{PLAIN}[apps]")),
            ConfigError::NoApps { .. }
        ));
    }

    #[test]
    fn server_name_is_required_lowercased_and_unique() {
        let text = format!("{PLAIN}[apps.a]\nreverse_proxy = [{{ {UP} }}]");
        assert!(
            matches!(err(&text), ConfigError::Missing { key, .. } if key == "apps.a.server_name")
        );
        let (c, _) = ok(&format!("{PLAIN}{}", APP.replace("a.example", "A.Example")));
        assert_eq!(c.apps[0].server_name, "a.example");
        let text = format!("{PLAIN}{APP}{}", APP.replace("apps.a", "apps.b"));
        let (key, p) = invalid(&text);
        assert_eq!(key, "apps.b.server_name");
        assert!(matches!(p, ValueError::DuplicateServerName { other } if other == "a"));
        let (_, p) = invalid(&format!("{PLAIN}{}", APP.replace("a.example", "a example")));
        assert!(matches!(p, ValueError::Whitespace));
        let (_, p) = invalid(&format!("{PLAIN}{}", APP.replace("a.example", "")));
        assert!(matches!(p, ValueError::Empty));
    }

    #[test]
    fn app_names_are_lowercased_and_may_not_collide() {
        let (c, _) = ok(&format!("{PLAIN}{}", APP.replace("apps.a", "apps.Web")));
        assert_eq!(c.apps[0].name, "web");
        let second = APP
            .replace("apps.a", "apps.web")
            .replace("a.example", "b.example");
        let (key, p) = invalid(&format!(
            "{PLAIN}{}{second}",
            APP.replace("apps.a", "apps.Web")
        ));
        assert_eq!(key, "apps");
        assert!(matches!(p, ValueError::DuplicateApp { .. }));
    }

    #[test]
    fn tls_only_listeners_need_tls_on_every_app() {
        let text = format!("listen_port_tls = 443\n{APP}");
        assert!(matches!(err(&text), ConfigError::Missing { key, .. } if key == "apps.a.tls"));
        let text = format!("listen_port_tls = 443\n{APP}tls = {{ {CERTS} }}\n");
        let (c, _) = ok(&text);
        let tls = c.apps[0].tls.as_ref().expect("tls");
        assert_eq!(tls.cert_path, PathBuf::from("c.pem"));
        assert_eq!(tls.key_path, PathBuf::from("k.pem"));
        assert!(!tls.https_redirection, "no plain listener to redirect from");
    }

    #[test]
    fn tls_without_a_tls_listener_is_unused_with_a_warning() {
        let (c, w) = ok(&format!("{PLAIN}{APP}tls = {{ {CERTS} }}\n"));
        assert_eq!(c.apps[0].tls, None);
        assert_eq!(w[0].key, "apps.a.tls");
        assert_eq!(w[0].kind, WarningKind::TlsUnused);
    }

    #[test]
    fn https_redirection_needs_both_ports_and_defaults_to_true() {
        let text = format!("{PLAIN}{APP}tls = {{ {CERTS}, https_redirection = false }}\n");
        let (key, p) = invalid(&text);
        assert_eq!(key, "apps.a.tls.https_redirection");
        assert!(matches!(p, ValueError::RedirectNeedsBothPorts));
        let (c, _) = ok(&format!("{BOTH}{APP}tls = {{ {CERTS} }}\n"));
        assert!(c.apps[0].tls.as_ref().expect("tls").https_redirection);
        let (c, _) = ok(&format!(
            "{BOTH}{APP}tls = {{ {CERTS}, https_redirection = false }}\n"
        ));
        assert!(!c.apps[0].tls.as_ref().expect("tls").https_redirection);
    }

    #[test]
    fn certificate_and_key_paths_are_required_and_ca_is_kept() {
        let text = format!("{BOTH}{APP}tls = {{ tls_cert_path = \"c.pem\" }}\n");
        assert!(
            matches!(err(&text), ConfigError::Missing { key, .. } if key == "apps.a.tls.tls_cert_key_path")
        );
        let text = format!("{BOTH}{APP}tls = {{ tls_cert_key_path = \"k.pem\" }}\n");
        assert!(
            matches!(err(&text), ConfigError::Missing { key, .. } if key == "apps.a.tls.tls_cert_path")
        );
        let text = format!("{BOTH}{APP}tls = {{ {CERTS}, client_ca_cert_path = \"\" }}\n");
        assert!(matches!(invalid(&text).1, ValueError::Empty));
        let text = format!("{BOTH}{APP}tls = {{ {CERTS}, client_ca_cert_path = \"my ca.pem\" }}\n");
        let tls = ok(&text).0.apps.remove(0).tls.expect("tls");
        assert_eq!(tls.client_ca_path, Some(PathBuf::from("my ca.pem")));
    }

    #[test]
    fn acme_only_app_is_left_out_with_a_warning() {
        let acme_app = APP
            .replace("apps.a", "apps.b")
            .replace("a.example", "b.example")
            + "tls = { acme = true }\n";
        let (c, w) = ok(&format!("{BOTH}{APP}{acme_app}"));
        assert_eq!(c.apps.len(), 1);
        assert_eq!(w[0].key, "apps.b.tls.acme");
        assert_eq!(w[0].kind, WarningKind::AcmeAppNotServed);
        let (key, p) = invalid(&format!("{BOTH}default_app = \"b\"\n{APP}{acme_app}"));
        assert_eq!(key, "default_app");
        assert!(matches!(p, ValueError::DroppedApp));
        assert!(matches!(
            err(&format!("{BOTH}{acme_app}")),
            ConfigError::NoApps { .. }
        ));
    }

    #[test]
    fn acme_beside_certificate_files_uses_the_files() {
        let (c, w) = ok(&format!("{BOTH}{APP}tls = {{ {CERTS}, acme = true }}\n"));
        assert!(c.apps[0].tls.is_some());
        assert_eq!(w[0].kind, WarningKind::AcmeIgnored);
        let (_, w) = ok(&format!("{BOTH}{APP}tls = {{ {CERTS}, acme = false }}\n"));
        assert!(w.is_empty());
    }

    #[test]
    fn an_app_needs_routes() {
        let text = format!("{PLAIN}[apps.a]\nserver_name = \"a\"\n");
        assert!(
            matches!(err(&text), ConfigError::Missing { key, .. } if key == "apps.a.reverse_proxy")
        );
        let (key, p) = invalid(&format!(
            "{PLAIN}[apps.a]\nserver_name = \"a\"\nreverse_proxy = []\n"
        ));
        assert_eq!(key, "apps.a.reverse_proxy");
        assert!(matches!(p, ValueError::EmptyList { .. }));
    }

    #[test]
    fn routes_are_sorted_longest_prefix_first_and_paths_are_unique() {
        let body = format!(
            "[[apps.a.reverse_proxy]]\n{UP}[[apps.a.reverse_proxy]]\npath = \"/a\"\n{UP}\
             [[apps.a.reverse_proxy]]\npath = \"/a/b\"\nreplace_path = \"/x\"\n{UP}"
        );
        let paths: Vec<String> = routes(&body).into_iter().map(|r| r.path).collect();
        assert_eq!(paths, ["/a/b", "/a", "/"]);
        let dup =
            format!("[[apps.a.reverse_proxy]]\n{UP}[[apps.a.reverse_proxy]]\npath = \"/\"\n{UP}");
        let (key, p) = invalid(&app(PLAIN, &dup));
        assert_eq!(key, "apps.a.reverse_proxy[1].path");
        assert!(matches!(p, ValueError::DuplicateRoute));
    }

    #[test]
    fn default_tls_app_must_name_an_app_with_tls() {
        let tls_app = APP
            .replace("apps.a", "apps.secure")
            .replace("a.example", "secure.example")
            + &format!("tls = {{ {CERTS} }}\n");
        let (c, _) = ok(&format!(
            "{BOTH}default_tls_app = \"Secure\"\n{APP}{tls_app}"
        ));
        assert_eq!(c.default_tls_app.as_deref(), Some("secure"));
        // A plain-only app is named: refused, saying why.
        let (key, p) = invalid(&format!("{BOTH}default_tls_app = \"a\"\n{APP}{tls_app}"));
        assert_eq!(key, "default_tls_app");
        assert!(matches!(p, ValueError::NotTlsApp { tls_listener: true }));
        // A misspelling: the nearest TLS app, not the nearest app.
        let (_, p) = invalid(&format!(
            "{BOTH}default_tls_app = \"secur\"\n{APP}{tls_app}"
        ));
        assert!(matches!(p, ValueError::UnknownApp { nearest: Some(n) } if n == "secure"));
        // Its server name: the app it belongs to.
        let (_, p) = invalid(&format!(
            "{BOTH}default_tls_app = \"secure.example\"\n{APP}{tls_app}"
        ));
        assert!(matches!(p, ValueError::UnknownApp { nearest: Some(n) } if n == "secure"));
        // No TLS listener: no app has TLS.
        let (_, p) = invalid(&format!("{PLAIN}default_tls_app = \"a\"\n{APP}"));
        assert!(matches!(
            p,
            ValueError::NotTlsApp {
                tls_listener: false
            }
        ));
    }

    #[test]
    fn default_app_must_name_an_app_case_insensitively() {
        let (c, _) = ok(&format!("{PLAIN}default_app = \"A\"\n{APP}"));
        assert_eq!(c.default_app.as_deref(), Some("a"));
        assert_eq!(c.default_app().map(|a| a.name.as_str()), Some("a"));
        let (key, p) = invalid(&format!("{PLAIN}default_app = \"b\"\n{APP}"));
        assert_eq!(key, "default_app");
        assert!(matches!(p, ValueError::UnknownApp { nearest: Some(n) } if n == "a"));
    }
}
