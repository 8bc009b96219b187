//! File structs → [`Config`]: every default and cross-field check. Top-level keys,
//! listeners, limits and metrics are here; `net` (addresses, trusted networks),
//! `proxy_protocol` (with the kernel filter), `apps` and `routes` hold the rest. Reads no
//! file (certificates are checked by `Config::check_files`). The first problem found is
//! returned; warnings are appended as they are found.

mod apps;
mod net;
mod proxy_protocol;
mod routes;
mod timeouts;
mod tlv_headers;

use std::fmt::Debug;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::error::{ConfigError, Family, ValueError};
use super::file::{AccessLogFile, BodySize, Choice, ConfigFile, MetricsFile};
use super::keys;
use super::warning::{Warning, WarningKind};
use super::{
    AccessDestination, AccessFormat, AccessLogConfig, Config, HeaderRules, Limits, Listeners,
    REQUEST_MAX_HEADER_SIZE_MAX, REQUEST_MAX_HEADER_SIZE_MIN,
};
use crate::trust::TrustList;

/// rpxy's defaults, so that an rpxy config behaves the same.
const DEFAULT_TCP_LISTEN_BACKLOG: u32 = 1024;
const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 64;
const DEFAULT_MAX_CLIENTS: u32 = 512;
const DEFAULT_REQUEST_MAX_BODY_BYTES: u64 = 256 * 1024 * 1024;
/// Upstream requests in flight per downstream connection: what browsers open to one
/// HTTP/1.1 origin (6), with room for a little more.
const DEFAULT_MAX_UPSTREAM_PER_CLIENT: u32 = 8;
/// Four times the h2 default trustgate had before (hyper's 16 KiB), and nginx's
/// `large_client_header_buffers` total (4 × 8k) twice over.
const DEFAULT_REQUEST_MAX_HEADER_BYTES: u32 = 64 * 1024;
/// The only upgrade tunnelled unless the operator lists others.
const DEFAULT_UPGRADE_PROTOCOLS: [&str; 1] = ["websocket"];

/// Turns the file into a `Config`, or names the first thing wrong with it.
pub(crate) fn validate(
    file: ConfigFile,
    path: &Path,
    warnings: &mut Vec<Warning>,
) -> Result<Config, ConfigError> {
    let mut cx = Cx {
        file: path,
        warnings,
    };
    let (listeners, ports) = listeners(&mut cx, &file)?;
    let timeouts = timeouts::timeouts(&cx, &file)?;
    let experimental = file.experimental.unwrap_or_default();
    if experimental.ignore_sni_consistency == Some(true) {
        cx.warn(
            "experimental.ignore_sni_consistency",
            WarningKind::SniConsistencyKept,
        );
    }
    let max_clients = at_least_one(
        &cx,
        "max_clients",
        file.max_clients.unwrap_or(DEFAULT_MAX_CLIENTS),
        "every connection would be refused",
    )?;
    let limits = Limits {
        tcp_listen_backlog: file
            .tcp_listen_backlog
            .unwrap_or(DEFAULT_TCP_LISTEN_BACKLOG),
        max_concurrent_streams: at_least_one(
            &cx,
            "max_concurrent_streams",
            file.max_concurrent_streams
                .unwrap_or(DEFAULT_MAX_CONCURRENT_STREAMS),
            "HTTP/2 clients could send no request",
        )?,
        max_clients: to_usize(max_clients),
        max_clients_per_ip: file.max_clients_per_ip.filter(|n| *n > 0).map(to_usize),
        max_upstream_connections: to_usize(at_least_one(
            &cx,
            "max_upstream_connections",
            file.max_upstream_connections.unwrap_or(max_clients),
            "no request could reach an upstream",
        )?),
        max_upstream_connections_per_client: to_usize(at_least_one(
            &cx,
            "max_upstream_connections_per_client",
            file.max_upstream_connections_per_client
                .unwrap_or(DEFAULT_MAX_UPSTREAM_PER_CLIENT),
            "no request could reach an upstream",
        )?),
        request_max_body_size: match &file.request_max_body_size {
            None => Some(DEFAULT_REQUEST_MAX_BODY_BYTES),
            Some(size) => body_size(&cx, size)?,
        },
        request_max_header_size: match &file.request_max_header_size {
            None => DEFAULT_REQUEST_MAX_HEADER_BYTES,
            Some(size) => header_size(&cx, size)?,
        },
        connection_handling_timeout: experimental
            .connection_handling_timeout
            .filter(|s| *s > 0)
            .map(Duration::from_secs),
    };
    let headers = HeaderRules {
        underscores_in_headers: file.underscores_in_headers.unwrap_or(false),
        upgrade_protocols: match &file.upgrade_protocols {
            None => DEFAULT_UPGRADE_PROTOCOLS.map(str::to_owned).to_vec(),
            Some(list) => upgrade_protocols(&cx, list)?,
        },
    };
    let trusted_forwarded_proxies = match &file.trusted_forwarded_proxies {
        None => TrustList::default(),
        Some(list) => TrustList::new(net::forwarded_proxies(&mut cx, list)?),
    };
    let proxy_protocol = experimental
        .tcp_recv_proxy_protocol
        .map(|pp| proxy_protocol::proxy_protocol(&mut cx, pp, timeouts.request_header))
        .transpose()?;
    let apps::Apps {
        apps,
        default_app,
        default_tls_app,
    } = apps::apps(
        &mut cx,
        file.apps,
        file.default_app,
        file.default_tls_app,
        ports,
    )?;
    let tls_ticket_key_file = match file.tls_ticket_key_file {
        None => None,
        Some(path) if path.is_empty() => {
            return Err(cx.invalid("tls_ticket_key_file", shown(&path), ValueError::Empty));
        }
        Some(_) if ports.tls.is_none() => {
            cx.warn("tls_ticket_key_file", WarningKind::TicketKeysUnused);
            None
        }
        Some(path) => Some(PathBuf::from(path)),
    };
    if proxy_protocol.is_none() {
        for app in apps.iter().filter(|a| !a.tlv_headers.is_empty()) {
            let key = format!(
                "{}.proxy_protocol_tlv_headers",
                super::keys::join("apps", &app.name)
            );
            cx.warn(key, WarningKind::TlvHeadersNeverSet);
        }
    }
    let metrics_listen = file
        .metrics
        .map(|m| metrics(&cx, m, &listeners))
        .transpose()?;
    if let Some(addr) = metrics_listen
        && !addr.ip().to_canonical().is_loopback()
    {
        cx.warn("metrics.listen", WarningKind::MetricsReachable { addr });
    }
    let access_log = match file.access_log {
        None => AccessLogConfig::default(),
        Some(a) => access_log(&cx, a)?,
    };
    Ok(Config {
        source: path.to_owned(),
        listeners,
        limits,
        timeouts,
        trusted_forwarded_proxies,
        redact_query_in_access_log: file.redact_query_in_access_log.unwrap_or(false),
        access_log,
        headers,
        apps,
        default_app,
        default_tls_app,
        tls_ticket_key_file,
        proxy_protocol,
        metrics_listen,
    })
}

/// The file name for messages, and where warnings go.
struct Cx<'a> {
    file: &'a Path,
    warnings: &'a mut Vec<Warning>,
}

impl Cx<'_> {
    fn invalid(&self, key: impl Into<String>, value: String, problem: ValueError) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            key: key.into(),
            value,
            problem,
        }
    }

    fn missing(&self, key: impl Into<String>, why: &'static str) -> ConfigError {
        ConfigError::Missing {
            file: self.file.to_owned(),
            key: key.into(),
            why,
        }
    }

    /// The variant `choice` names, or an error listing the allowed names (serde's, in
    /// declaration order) and the nearest one.
    fn choice<T: Copy + DeserializeOwned>(
        &self,
        key: impl Into<String>,
        choice: &Choice<T>,
    ) -> Result<T, ConfigError> {
        choice.value.ok_or_else(|| {
            let allowed = keys::names::<T>();
            let nearest = keys::nearest(&choice.text.to_ascii_lowercase(), allowed.iter().copied());
            self.invalid(
                key,
                shown(&choice.text),
                ValueError::UnknownChoice { allowed, nearest },
            )
        })
    }

    fn warn(&mut self, key: impl Into<String>, kind: WarningKind) {
        self.warnings.push(Warning {
            file: self.file.to_owned(),
            key: key.into(),
            kind,
        });
    }
}

/// A value as it would be written in TOML, for messages: strings and lists quoted.
fn shown(value: &(impl Debug + ?Sized)) -> String {
    format!("{value:?}")
}

/// The listen ports, for the checks that depend on which listeners exist.
#[derive(Debug, Clone, Copy)]
struct Ports {
    plain: Option<u16>,
    tls: Option<u16>,
}

impl Ports {
    fn both(self) -> bool {
        self.plain.is_some() && self.tls.is_some()
    }
}

fn listeners(cx: &mut Cx<'_>, file: &ConfigFile) -> Result<(Listeners, Ports), ConfigError> {
    let ports = Ports {
        plain: file.listen_port,
        tls: file.listen_port_tls,
    };
    if ports.plain.is_none() && ports.tls.is_none() {
        return Err(ConfigError::NoListener {
            file: cx.file.to_owned(),
        });
    }
    if let (Some(plain), Some(tls)) = (ports.plain, ports.tls)
        && plain == tls
        && plain != 0
    {
        return Err(cx.invalid("listen_port_tls", tls.to_string(), ValueError::SamePorts));
    }
    let public = match (file.public_https_port, file.https_redirection_port) {
        (Some(_), Some(old)) => {
            return Err(cx.invalid(
                "https_redirection_port",
                old.to_string(),
                ValueError::RenamedKeyTwice,
            ));
        }
        (None, Some(old)) => {
            cx.warn(
                "https_redirection_port",
                WarningKind::Renamed {
                    new: "public_https_port",
                },
            );
            Some(("https_redirection_port", old))
        }
        (Some(port), None) => Some(("public_https_port", port)),
        (None, None) => None,
    };
    if let Some((key, port)) = public
        && ports.tls.is_none()
    {
        return Err(cx.invalid(key, port.to_string(), ValueError::PublicPortNeedsTls));
    }

    let mut ips: Vec<IpAddr> = match &file.listen_address_v4 {
        None => vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)],
        Some(list) => net::listen_addresses(cx, "listen_address_v4", list, Family::V4)?,
    };
    match &file.listen_address_v6 {
        Some(list) => ips.extend(net::listen_addresses(
            cx,
            "listen_address_v6",
            list,
            Family::V6,
        )?),
        None if file.listen_ipv6 == Some(true) => ips.push(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        None => {}
    }
    let sockets = |port: Option<u16>| -> Vec<SocketAddr> {
        port.map(|p| ips.iter().map(|ip| SocketAddr::new(*ip, p)).collect())
            .unwrap_or_default()
    };
    let listeners = Listeners {
        plain: sockets(ports.plain),
        tls: sockets(ports.tls),
        public_https_port: ports.tls.map(|tls| public.map_or(tls, |(_, p)| p)),
    };
    Ok((listeners, ports))
}

fn at_least_one(
    cx: &Cx<'_>,
    key: &'static str,
    n: u32,
    why: &'static str,
) -> Result<u32, ConfigError> {
    if n == 0 {
        return Err(cx.invalid(key, "0".into(), ValueError::TooSmall { min: 1, why }));
    }
    Ok(n)
}

fn to_usize(n: u32) -> usize {
    usize::try_from(n).expect("trustgate runs on targets whose usize holds a u32")
}

/// `request_max_body_size`: `None` is unlimited (`0` or `"unlimited"`).
fn body_size(cx: &Cx<'_>, size: &BodySize) -> Result<Option<u64>, ConfigError> {
    const KEY: &str = "request_max_body_size";
    let bad = || cx.invalid(KEY, shown_size(size), ValueError::BadSize);
    if let BodySize::Text(text) = size
        && text.trim().eq_ignore_ascii_case("unlimited")
    {
        return Ok(None);
    }
    let n = bytes(size).ok_or_else(bad)?;
    Ok((n > 0).then_some(n))
}

/// `request_max_header_size`: between the bounds, never unlimited.
fn header_size(cx: &Cx<'_>, size: &BodySize) -> Result<u32, ConfigError> {
    bytes(size)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| (REQUEST_MAX_HEADER_SIZE_MIN..=REQUEST_MAX_HEADER_SIZE_MAX).contains(n))
        .ok_or_else(|| {
            cx.invalid(
                "request_max_header_size",
                shown_size(size),
                ValueError::BadHeaderSize {
                    min: REQUEST_MAX_HEADER_SIZE_MIN,
                    max: REQUEST_MAX_HEADER_SIZE_MAX,
                },
            )
        })
}

fn shown_size(size: &BodySize) -> String {
    match size {
        BodySize::Bytes(n) => n.to_string(),
        BodySize::Text(text) => shown(text),
    }
}

/// A size in bytes: a non-negative integer, or digits with a binary `k`, `m` or `g`
/// suffix (`k` = 1024 bytes). `None` for anything else, and on overflow.
fn bytes(size: &BodySize) -> Option<u64> {
    let text = match size {
        BodySize::Bytes(n) => return u64::try_from(*n).ok(),
        BodySize::Text(text) => text.trim().to_ascii_lowercase(),
    };
    let (digits, unit) = match text.char_indices().last() {
        Some((i, 'k')) => (&text[..i], 1u64 << 10),
        Some((i, 'm')) => (&text[..i], 1 << 20),
        Some((i, 'g')) => (&text[..i], 1 << 30),
        _ => (text.as_str(), 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(unit)
}

/// `upgrade_protocols`: HTTP tokens naming a protocol (no `/version`), lowercased,
/// each once; never `h2c`, whose tunnel would carry later requests past every check.
fn upgrade_protocols(cx: &Cx<'_>, list: &[String]) -> Result<Vec<String>, ConfigError> {
    let mut protocols: Vec<String> = Vec::with_capacity(list.len());
    for (i, raw) in list.iter().enumerate() {
        let key = format!("upgrade_protocols[{i}]");
        let token = raw.to_ascii_lowercase();
        if token.is_empty() || !token.bytes().all(is_tchar) {
            return Err(cx.invalid(key, shown(raw), ValueError::NotAToken));
        }
        if token == "h2c" {
            return Err(cx.invalid(key, shown(raw), ValueError::H2cUpgrade));
        }
        if protocols.contains(&token) {
            return Err(cx.invalid(key, shown(raw), ValueError::Duplicate));
        }
        protocols.push(token);
    }
    Ok(protocols)
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `[access_log]`: `path` (`-` is stderr), `format`, `off`.
fn access_log(cx: &Cx<'_>, a: AccessLogFile) -> Result<AccessLogConfig, ConfigError> {
    let destination = match a.path {
        None => AccessDestination::Stderr,
        Some(p) if p == "-" => AccessDestination::Stderr,
        Some(p) if p.is_empty() => {
            return Err(cx.invalid("access_log.path", shown(&p), ValueError::Empty));
        }
        Some(p) => AccessDestination::File(PathBuf::from(p)),
    };
    let format = match &a.format {
        None => AccessFormat::Text,
        Some(format) => cx.choice("access_log.format", format)?,
    };
    Ok(AccessLogConfig {
        on: !a.off.unwrap_or(false),
        destination,
        format,
    })
}

fn metrics(cx: &Cx<'_>, m: MetricsFile, listeners: &Listeners) -> Result<SocketAddr, ConfigError> {
    const KEY: &str = "metrics.listen";
    let Some(text) = m.listen else {
        return Err(cx.missing(
            KEY,
            "where the Prometheus endpoint listens, e.g. listen = \"127.0.0.1:9464\"; or \
             remove [metrics]",
        ));
    };
    let addr: SocketAddr = text
        .parse()
        .map_err(|_| cx.invalid(KEY, shown(&text), ValueError::BadSocketAddr))?;
    // Port 0 asks the kernel for a free port, which can never be one already in use.
    let overlaps = |l: &SocketAddr| {
        addr.port() != 0
            && l.port() == addr.port()
            && l.is_ipv4() == addr.is_ipv4()
            && (l.ip() == addr.ip() || l.ip().is_unspecified() || addr.ip().is_unspecified())
    };
    if listeners.plain.iter().chain(&listeners.tls).any(overlaps) {
        return Err(cx.invalid(KEY, shown(&text), ValueError::PortTaken));
    }
    Ok(addr)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::config::{Config, parse_str};

    /// One servable app, to append after the top-level keys.
    pub(crate) const APP: &str = "[apps.a]\nserver_name = \"a.example\"\n\
        reverse_proxy = [{ upstream = [{ location = \"127.0.0.1:8081\" }] }]\n";

    pub(crate) fn ok(text: &str) -> (Config, Vec<Warning>) {
        parse_str(text, "t.toml").unwrap_or_else(|e| panic!("should load: {e}\n{text}"))
    }

    pub(crate) fn err(text: &str) -> ConfigError {
        match parse_str(text, "t.toml") {
            Ok(_) => panic!("should be refused:\n{text}"),
            Err(e) => e,
        }
    }

    /// The key and the problem of an `Invalid` error.
    pub(crate) fn invalid(text: &str) -> (String, ValueError) {
        match err(text) {
            ConfigError::Invalid { key, problem, .. } => (key, problem),
            other => panic!("expected an invalid value, got {other}"),
        }
    }

    #[test]
    fn a_listen_port_is_required() {
        assert!(matches!(err(APP), ConfigError::NoListener { .. }));
        ok(&format!("listen_port = 8080\n{APP}"));
    }

    #[test]
    fn plain_and_tls_ports_must_differ() {
        let (key, p) = invalid(&format!("listen_port = 80\nlisten_port_tls = 80\n{APP}"));
        assert_eq!(key, "listen_port_tls");
        assert!(matches!(p, ValueError::SamePorts));
        ok(&format!("listen_port = 80\nlisten_port_tls = 443\n{APP}"));
    }

    #[test]
    fn listeners_default_to_every_ipv4_address() {
        let (c, _) = ok(&format!("listen_port = 8080\n{APP}"));
        assert_eq!(
            c.listeners.plain,
            vec!["0.0.0.0:8080".parse().expect("addr")]
        );
        assert!(c.listeners.tls.is_empty());
        assert_eq!(c.listeners.public_https_port, None);
    }

    #[test]
    fn listen_ipv6_adds_the_ipv6_wildcard_unless_addresses_are_given() {
        let (c, _) = ok(&format!("listen_port = 80\nlisten_ipv6 = true\n{APP}"));
        assert_eq!(c.listeners.plain.len(), 2);
        assert_eq!(c.listeners.plain[1], "[::]:80".parse().expect("addr"));
        let text = format!(
            "listen_port = 80\nlisten_port_tls = 443\nlisten_ipv6 = true\n\
             listen_address_v4 = \"127.0.0.1\"\nlisten_address_v6 = [\"::1\"]\n{APP}"
        );
        let (c, _) = ok(&text);
        let want: Vec<SocketAddr> = ["127.0.0.1:443", "[::1]:443"]
            .iter()
            .map(|s| s.parse().expect("addr"))
            .collect();
        assert_eq!(c.listeners.tls, want);
        assert_eq!(c.listeners.ports(), vec![80, 443]);
    }

    #[test]
    fn public_https_port_needs_tls_and_defaults_to_the_tls_port() {
        let (key, p) = invalid(&format!("listen_port = 80\npublic_https_port = 443\n{APP}"));
        assert_eq!(key, "public_https_port");
        assert!(matches!(p, ValueError::PublicPortNeedsTls));
        let (c, _) = ok(&format!("listen_port = 80\nlisten_port_tls = 8443\n{APP}"));
        assert_eq!(c.listeners.public_https_port, Some(8443));
        let text =
            format!("listen_port = 80\nlisten_port_tls = 8443\npublic_https_port = 443\n{APP}");
        assert_eq!(ok(&text).0.listeners.public_https_port, Some(443));
    }

    #[test]
    fn old_redirection_port_name_is_read_with_a_warning_but_not_beside_the_new_one() {
        let text = format!(
            "listen_port = 80\nlisten_port_tls = 8443\nhttps_redirection_port = 443\n{APP}"
        );
        let (c, w) = ok(&text);
        assert_eq!(c.listeners.public_https_port, Some(443));
        assert_eq!(
            w[0].kind,
            WarningKind::Renamed {
                new: "public_https_port"
            }
        );
        let text = format!(
            "listen_port = 80\nlisten_port_tls = 8443\npublic_https_port = 443\n\
             https_redirection_port = 443\n{APP}"
        );
        assert!(matches!(invalid(&text).1, ValueError::RenamedKeyTwice));
    }

    #[test]
    fn limits_default_as_in_rpxy_and_zero_clients_or_streams_are_refused() {
        let (c, _) = ok(&format!("listen_port = 80\n{APP}"));
        let l = c.limits;
        assert_eq!(
            (
                l.tcp_listen_backlog,
                l.max_concurrent_streams,
                l.max_clients
            ),
            (1024, 64, 512)
        );
        assert_eq!(l.max_clients_per_ip, None);
        assert_eq!(l.request_max_body_size, Some(256 << 20));
        assert_eq!(l.connection_handling_timeout, None);
        for key in ["max_clients", "max_concurrent_streams"] {
            let (k, p) = invalid(&format!("listen_port = 80\n{key} = 0\n{APP}"));
            assert_eq!(k, key);
            assert!(matches!(p, ValueError::TooSmall { min: 1, .. }));
            ok(&format!("listen_port = 80\n{key} = 1\n{APP}"));
        }
        assert_eq!(
            (
                l.max_upstream_connections,
                l.max_upstream_connections_per_client
            ),
            (512, 8)
        );
        let (c, _) = ok(&format!("listen_port = 80\nmax_clients_per_ip = 0\n{APP}"));
        assert_eq!(c.limits.max_clients_per_ip, None);
        let (c, _) = ok(&format!("listen_port = 80\nmax_clients_per_ip = 4\n{APP}"));
        assert_eq!(c.limits.max_clients_per_ip, Some(4));
    }

    #[test]
    fn body_size_takes_bytes_suffixes_and_unlimited() {
        let size = |v: &str| {
            let text = format!("listen_port = 80\nrequest_max_body_size = {v}\n{APP}");
            ok(&text).0.limits.request_max_body_size
        };
        assert_eq!(size("1048576"), Some(1 << 20));
        assert_eq!(size("\"10m\""), Some(10 << 20));
        assert_eq!(size("\"256k\""), Some(256 << 10));
        assert_eq!(size("\"1G\""), Some(1 << 30));
        assert_eq!(size("\"512\""), Some(512));
        assert_eq!(size("0"), None);
        assert_eq!(size("\"unlimited\""), None);
        for bad in [
            "-1",
            "\"10x\"",
            "\"m\"",
            "\"1.5m\"",
            "\"99999999999999g\"",
            "\"\"",
        ] {
            let (key, p) = invalid(&format!(
                "listen_port = 80\nrequest_max_body_size = {bad}\n{APP}"
            ));
            assert_eq!(key, "request_max_body_size");
            assert!(matches!(p, ValueError::BadSize), "{bad}");
        }
    }

    #[test]
    fn header_size_defaults_to_64k_and_is_bounded_on_both_sides() {
        let size = |v: &str| {
            let text = format!("listen_port = 80\nrequest_max_header_size = {v}\n{APP}");
            ok(&text).0.limits.request_max_header_size
        };
        assert_eq!(
            ok(&format!("listen_port = 80\n{APP}"))
                .0
                .limits
                .request_max_header_size,
            64 << 10
        );
        assert_eq!(size("\"32k\""), 32 << 10);
        assert_eq!(size("1024"), 1024);
        assert_eq!(size("\"256k\""), 256 << 10);
        for bad in [
            "1023",
            "262145",
            "0",
            "-1",
            "\"unlimited\"",
            "\"1m\"",
            "\"64x\"",
        ] {
            let (key, p) = invalid(&format!(
                "listen_port = 80\nrequest_max_header_size = {bad}\n{APP}"
            ));
            assert_eq!(key, "request_max_header_size");
            assert!(
                matches!(
                    p,
                    ValueError::BadHeaderSize {
                        min: 1024,
                        max: 262_144
                    }
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn underscores_are_dropped_and_only_websocket_upgrades_by_default() {
        let (c, _) = ok(&format!("listen_port = 80\n{APP}"));
        assert!(!c.headers.underscores_in_headers);
        assert_eq!(c.headers.upgrade_protocols, ["websocket"]);
        let text = format!(
            "listen_port = 80\nunderscores_in_headers = true\n\
             upgrade_protocols = [\"WebSocket\", \"x-custom.1\"]\n{APP}"
        );
        let (c, _) = ok(&text);
        assert!(c.headers.underscores_in_headers);
        assert_eq!(c.headers.upgrade_protocols, ["websocket", "x-custom.1"]);
        let (c, _) = ok(&format!("listen_port = 80\nupgrade_protocols = []\n{APP}"));
        assert!(c.headers.upgrade_protocols.is_empty());
    }

    #[test]
    fn upgrade_protocols_must_be_tokens_listed_once_and_never_h2c() {
        let refused = |list: &str| {
            invalid(&format!(
                "listen_port = 80\nupgrade_protocols = {list}\n{APP}"
            ))
        };
        let (key, p) = refused("[\"websocket\", \"H2C\"]");
        assert_eq!(key, "upgrade_protocols[1]");
        assert!(matches!(p, ValueError::H2cUpgrade));
        for bad in [
            "[\"\"]",
            "[\"web socket\"]",
            "[\"websocket/13\"]",
            "[\"a,b\"]",
        ] {
            let (key, p) = refused(bad);
            assert_eq!(key, "upgrade_protocols[0]", "{bad}");
            assert!(matches!(p, ValueError::NotAToken), "{bad}");
        }
        let (key, p) = refused("[\"websocket\", \"WEBSOCKET\"]");
        assert_eq!(key, "upgrade_protocols[1]");
        assert!(matches!(p, ValueError::Duplicate));
    }

    #[test]
    fn connection_timeout_is_seconds_and_zero_means_none() {
        let timeout = |v: u64| {
            let text =
                format!("listen_port = 80\n{APP}[experimental]\nconnection_handling_timeout = {v}");
            ok(&text).0.limits.connection_handling_timeout
        };
        assert_eq!(timeout(0), None);
        assert_eq!(timeout(30), Some(Duration::from_secs(30)));
    }

    #[test]
    fn ignoring_sni_consistency_is_warned_and_keeping_it_is_silent() {
        let text =
            |v| format!("listen_port = 80\n{APP}[experimental]\nignore_sni_consistency = {v}");
        assert_eq!(ok(&text(true)).1[0].kind, WarningKind::SniConsistencyKept);
        assert!(ok(&text(false)).1.is_empty());
    }

    #[test]
    fn access_log_defaults_to_text_on_stderr_and_takes_a_path_a_format_and_off() {
        let base = format!("listen_port = 8080\n{APP}");
        assert_eq!(ok(&base).0.access_log, AccessLogConfig::default());
        let a = |body: &str| ok(&format!("{base}[access_log]\n{body}")).0.access_log;
        let c = a("path = \"/var/log/tg.log\"\nformat = \"combined\"");
        assert!(c.on);
        assert_eq!(
            c.destination,
            AccessDestination::File(PathBuf::from("/var/log/tg.log"))
        );
        assert_eq!(c.format, AccessFormat::Combined);
        assert_eq!(a("path = \"-\"").destination, AccessDestination::Stderr);
        assert_eq!(a("format = \"json\"").format, AccessFormat::Json);
        let off = a("off = true\nformat = \"json\"");
        assert!(!off.on);
        assert_eq!(off.format, AccessFormat::Json);
    }

    #[test]
    fn access_log_format_names_the_nearest_and_path_is_not_empty() {
        let base = format!("listen_port = 8080\n{APP}[access_log]\n");
        let (key, p) = invalid(&format!("{base}format = \"combind\""));
        assert_eq!(key, "access_log.format");
        assert!(matches!(
            p,
            ValueError::UnknownChoice {
                nearest: Some("combined"),
                ..
            }
        ));
        let message = err(&format!("{base}format = \"combind\"")).to_string();
        assert!(message.contains("did you mean \"combined\"?"), "{message}");
        let (key, p) = invalid(&format!("{base}path = \"\""));
        assert_eq!(key, "access_log.path");
        assert!(matches!(p, ValueError::Empty));
        let message = err(&format!("{base}fromat = \"json\"")).to_string();
        assert!(
            message.contains("did you mean access_log.format?"),
            "{message}"
        );
    }

    #[test]
    fn metrics_listen_is_a_socket_address_off_the_proxy_ports() {
        let m = |line: &str| format!("listen_port = 8080\n{APP}[metrics]\n{line}");
        assert_eq!(
            ok(&format!("listen_port = 8080\n{APP}")).0.metrics_listen,
            None
        );
        let (c, _) = ok(&m("listen = \"127.0.0.1:9464\""));
        assert_eq!(
            c.metrics_listen,
            Some("127.0.0.1:9464".parse().expect("addr"))
        );
        assert!(matches!(err(&m("")), ConfigError::Missing { .. }));
        assert!(matches!(
            invalid(&m("listen = \"9464\"")).1,
            ValueError::BadSocketAddr
        ));
        assert!(matches!(
            invalid(&m("listen = \"127.0.0.1:8080\"")).1,
            ValueError::PortTaken
        ));
        let text = format!(
            "listen_port = 8080\nlisten_address_v4 = \"10.0.0.1\"\n{APP}[metrics]\nlisten = \"127.0.0.1:8080\""
        );
        ok(&text);
    }

    #[test]
    fn metrics_on_a_reachable_address_is_warned_and_on_loopback_is_silent() {
        let m = |addr: &str| format!("listen_port = 8080\n{APP}[metrics]\nlisten = \"{addr}\"");
        for addr in [
            "0.0.0.0:9464",
            "10.0.0.1:9464",
            "[::]:9464",
            "[2001:db8::1]:9464",
        ] {
            let warnings = ok(&m(addr)).1;
            assert_eq!(warnings.len(), 1, "{addr}: {warnings:?}");
            assert_eq!(warnings[0].key, "metrics.listen");
            assert_eq!(
                warnings[0].kind,
                WarningKind::MetricsReachable {
                    addr: addr.parse().expect("addr")
                }
            );
            let text = warnings[0].to_string();
            assert!(
                text.contains("kernel filter") && text.contains("127.0.0.1"),
                "{text}"
            );
        }
        for addr in [
            "127.0.0.1:9464",
            "127.0.0.2:9464",
            "[::1]:9464",
            "[::ffff:127.0.0.1]:9464",
        ] {
            assert!(ok(&m(addr)).1.is_empty(), "{addr}");
        }
    }

    #[test]
    fn metrics_and_proxy_on_port_zero_do_not_clash() {
        let text = format!(
            "listen_port = 0\nlisten_address_v4 = \"127.0.0.1\"\n{APP}[metrics]\nlisten = \"127.0.0.1:0\""
        );
        let (c, _) = ok(&text);
        assert_eq!(c.metrics_listen, Some("127.0.0.1:0".parse().expect("addr")));
    }

    #[test]
    fn upstream_connections_default_to_max_clients_and_zero_is_refused() {
        let (c, _) = ok(&format!("listen_port = 80\nmax_clients = 100\n{APP}"));
        assert_eq!(c.limits.max_upstream_connections, 100);
        let text = format!(
            "listen_port = 80\nmax_clients = 100\nmax_upstream_connections = 7\n\
             max_upstream_connections_per_client = 3\n{APP}"
        );
        let l = ok(&text).0.limits;
        assert_eq!(
            (
                l.max_upstream_connections,
                l.max_upstream_connections_per_client
            ),
            (7, 3)
        );
        for key in [
            "max_upstream_connections",
            "max_upstream_connections_per_client",
        ] {
            let (k, p) = invalid(&format!("listen_port = 80\n{key} = 0\n{APP}"));
            assert_eq!(k, key);
            assert!(matches!(p, ValueError::TooSmall { min: 1, .. }));
            let l = ok(&format!("listen_port = 80\n{key} = 1\n{APP}")).0.limits;
            let got = match key {
                "max_upstream_connections" => l.max_upstream_connections,
                _ => l.max_upstream_connections_per_client,
            };
            assert_eq!(got, 1, "{key}");
        }
    }
}
