//! Configuration: rpxy's TOML format, read and checked into a typed [`Config`] before
//! anything starts. `file` mirrors the TOML, `keys` decides which keys exist (unknown keys
//! are errors, rpxy features trustgate lacks are [`Warning`]s), `validate` applies every
//! default and cross-field check. After [`load`], nothing downstream handles a string or
//! an `Option` where a typed value fits.

mod error;
mod file;
mod keys;
mod summary;
mod validate;
mod warning;

use std::fmt;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::HeaderName;
use http::uri::{Authority, Scheme};
use serde::Deserialize;

use crate::proxy_protocol::Version;
use crate::trust::TrustList;

pub use error::{ConfigError, Family, KeyHint, ValueError};
pub use warning::{Warning, WarningKind};

/// How [`load_with`] treats the files a config names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Check that each certificate, key and CA file can be opened (the default). Off only
    /// to validate a config written for another machine.
    pub check_files: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { check_files: true }
    }
}

/// Reads and validates the config file at `path`, including that the files it names
/// can be opened. Warnings are returned, not logged.
pub fn load(path: impl AsRef<Path>) -> Result<(Config, Vec<Warning>), ConfigError> {
    load_with(path, LoadOptions::default())
}

/// [`load`] with options.
pub fn load_with(
    path: impl AsRef<Path>,
    options: LoadOptions,
) -> Result<(Config, Vec<Warning>), ConfigError> {
    let path = path.as_ref();
    let text = fs::read_to_string(path).map_err(|cause| ConfigError::Read {
        path: path.to_owned(),
        cause,
    })?;
    let (config, warnings) = parse_str(&text, path)?;
    if options.check_files {
        config.check_files()?;
    }
    Ok((config, warnings))
}

/// Validates config text; `path` is used in messages and kept as [`Config::source`].
/// Touches no file: the certificate paths are not checked (see [`Config::check_files`]).
pub fn parse_str(
    text: &str,
    path: impl AsRef<Path>,
) -> Result<(Config, Vec<Warning>), ConfigError> {
    let path = path.as_ref();
    let (file, mut warnings) = keys::deserialize(text, path)?;
    let config = validate::validate(file, path, &mut warnings)?;
    Ok((config, warnings))
}

/// A validated configuration: what trustgate will run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file this was read from.
    pub source: PathBuf,
    pub listeners: Listeners,
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// Peers whose `X-Forwarded-For`/`Forwarded` headers are believed (rpxy's
    /// `trusted_forwarded_proxies`). Empty: such headers are rebuilt from the client
    /// address. Provider names are not expanded (see [`WarningKind::ProviderIgnored`]).
    pub trusted_forwarded_proxies: TrustList,
    /// Replace query-string values with `<redacted>` in the access log (the request's
    /// and the Referer's, in every format).
    pub redact_query_in_access_log: bool,
    /// `[access_log]`: whether, where and in which format requests are logged.
    pub access_log: AccessLogConfig,
    /// Which client-sent header names and upgrades are passed on.
    pub headers: HeaderRules,
    /// Sorted by name; names and server names are unique and lowercase.
    pub apps: Vec<App>,
    /// The app that answers plain-HTTP requests whose Host matches no app; always the
    /// name of an entry of `apps`.
    pub default_app: Option<String>,
    /// `default_tls_app`: the app whose certificate a ClientHello without SNI gets; always
    /// the name of an entry of `apps` with `tls`. See [`Config::no_sni_app`].
    pub default_tls_app: Option<String>,
    /// `tls_ticket_key_file`: the session-ticket keys, shared by the instances of a fleet.
    /// `None` (also when there is no TLS listener): each process makes its own.
    pub tls_ticket_key_file: Option<PathBuf>,
    /// `[experimental.tcp_recv_proxy_protocol]`: present when every connection must
    /// start with a PROXY header from a trusted load balancer.
    pub proxy_protocol: Option<ProxyProtocolConfig>,
    /// Where the Prometheus endpoint listens (`[metrics] listen`); none when absent.
    pub metrics_listen: Option<SocketAddr>,
}

/// `[access_log]`. The default is on, to stderr, in `text`: what trustgate always did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// False with `off = true`; `path` and `format` are still checked then, so that
    /// turning it back on by a reload cannot fail on them.
    pub on: bool,
    pub destination: AccessDestination,
    pub format: AccessFormat,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            on: true,
            destination: AccessDestination::Stderr,
            format: AccessFormat::Text,
        }
    }
}

/// Where access records go (`access_log.path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessDestination {
    /// `-` or no `path`: standard error, beside the event log.
    Stderr,
    /// A file, opened for appending (created if missing) and reopened on SIGUSR1.
    File(PathBuf),
}

/// How each access record is written (`access_log.format`).
/// The serde names are `format`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessFormat {
    /// `key=value` fields after a timestamp and `INFO trustgate::access: access`, as the
    /// `tracing` event that the access log used to be.
    Text,
    /// One JSON object per line, with fixed field names.
    Json,
    /// Apache's and nginx's `combined` format, the client from the PROXY header as
    /// `$remote_addr`, times in UTC.
    Combined,
}

impl AccessFormat {
    /// Its value of `format`.
    pub(crate) fn name(self) -> &'static str {
        keys::variant_name::<Self>(self as usize)
    }
}

/// The sockets to bind. Every address is paired with each configured port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listeners {
    /// Plain HTTP (`listen_port`). IPv6 sockets must be bound with `IPV6_V6ONLY`, so that
    /// `[::]` and `0.0.0.0` can share a port.
    pub plain: Vec<SocketAddr>,
    /// TLS (`listen_port_tls`).
    pub tls: Vec<SocketAddr>,
    /// The HTTPS port clients see, for redirects: `public_https_port`, else
    /// `listen_port_tls`. `None` exactly when there is no TLS listener.
    pub public_https_port: Option<u16>,
}

impl Listeners {
    /// The distinct local ports, plain then TLS: the ports the kernel filter protects.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = Vec::new();
        for addr in self.plain.iter().chain(&self.tls) {
            if !ports.contains(&addr.port()) {
                ports.push(addr.port());
            }
        }
        ports
    }
}

/// Connection and request limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub tcp_listen_backlog: u32,
    /// HTTP/2 streams per connection; at least 1.
    pub max_concurrent_streams: u32,
    /// Connections in total; at least 1.
    pub max_clients: usize,
    /// Connections per client address (the recovered one under the PROXY protocol);
    /// `None`: no per-client cap.
    pub max_clients_per_ip: Option<usize>,
    /// Upstream connections the process may hold, open or idle, every pool together;
    /// at least 1. With `max_clients`, what the descriptor budget is made of.
    pub max_upstream_connections: usize,
    /// Upstream requests one downstream connection may have in flight (h2 streams
    /// beyond it wait); at least 1.
    pub max_upstream_connections_per_client: usize,
    /// Largest request body in bytes; `None`: unlimited.
    pub request_max_body_size: Option<u64>,
    /// Largest HTTP/1 request head (request line, headers, final CRLF; also the chunked
    /// trailer section) in bytes, answered 431; also the HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`.
    /// Between [`REQUEST_MAX_HEADER_SIZE_MIN`] and [`REQUEST_MAX_HEADER_SIZE_MAX`].
    pub request_max_header_size: u32,
    /// Hard limit on a connection's life, idle or not; `None`: no limit.
    pub connection_handling_timeout: Option<Duration>,
}

/// How long each wait may last. Every one is bounded: only the tunnel's can be turned
/// off. Defaults are nginx's where it has the same wait (see `validate::timeouts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From the start of HTTP (after the PROXY header and TLS), and from the first byte of
    /// each later request, to the end of the request head (nginx `client_header_timeout`).
    pub request_header: Duration,
    /// An idle connection between requests: HTTP/1.1 keep-alive, or h2 with no open stream
    /// (nginx `keepalive_timeout`).
    pub keepalive: Duration,
    /// Between two reads of a request body (nginx `client_body_timeout`).
    pub request_body: Duration,
    /// Connecting to an upstream.
    pub upstream_connect: Duration,
    /// From the end of the request body to the upstream's response head, and between two
    /// reads of the upstream's body (nginx `proxy_read_timeout`).
    pub upstream_read: Duration,
    /// A write to the client that makes no progress: a socket that takes nothing, or an h2
    /// stream whose window stays shut (nginx `send_timeout`).
    pub send: Duration,
    /// An upgraded connection (WebSocket) with no byte in either direction; `None`: never.
    pub tunnel_idle: Option<Duration>,
}

/// The smallest `request_max_header_size`: room for an ordinary request line and headers.
pub(crate) const REQUEST_MAX_HEADER_SIZE_MIN: u32 = 1 << 10;
/// The largest `request_max_header_size`: hyper's HTTP/1 read buffer (about 400 KB by
/// default) would otherwise cut the head first.
pub(crate) const REQUEST_MAX_HEADER_SIZE_MAX: u32 = 256 << 10;

/// Top-level header hygiene: what a client may send upstream by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRules {
    /// `underscores_in_headers`: pass on request headers whose name holds `_` (default
    /// false). Even then, a name that folds (`_` as `-`) onto a header trustgate manages
    /// or an app's TLV header is dropped.
    pub underscores_in_headers: bool,
    /// `upgrade_protocols`: the `Upgrade` protocols tunnelled, lowercase tokens without
    /// a version (default `["websocket"]`). Never `h2c`.
    pub upgrade_protocols: Vec<String>,
}

/// One `[apps.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    /// The table name, lowercased.
    pub name: String,
    /// The host this app answers to (Host header, TLS SNI), lowercased.
    pub server_name: String,
    /// Present when the app is served on the TLS listener.
    pub tls: Option<AppTls>,
    /// Longest path first, so the first route whose `path` prefixes the request path wins.
    /// Never empty; paths are unique within the app.
    pub routes: Vec<Route>,
    /// `proxy_protocol_tlv_headers`, in [`TlvField`] order. Header names are unique,
    /// and none is a header trustgate sets or removes itself. Client-sent headers of these
    /// names are removed from every request of the app, whether or not the TLV came.
    pub tlv_headers: Vec<TlvHeader>,
}

/// One entry of `proxy_protocol_tlv_headers`: a TLV of the connection's PROXY v2 header
/// sent upstream as a request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlvHeader {
    pub tlv: TlvField,
    /// Lowercase, as `HeaderName` keeps it.
    pub name: HeaderName,
}

/// A PROXY v2 TLV (or a field of the SSL TLV) that can become a request header. The
/// serde names are its keys in `proxy_protocol_tlv_headers`; the order of the variants is
/// the order in which headers are set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlvField {
    /// `PP2_TYPE_ALPN`.
    Alpn,
    /// `PP2_TYPE_AUTHORITY`: the SNI the client sent the load balancer.
    Authority,
    /// `PP2_TYPE_UNIQUE_ID`.
    UniqueId,
    /// `PP2_TYPE_NETNS`.
    Netns,
    /// `PP2_SUBTYPE_SSL_VERSION`.
    SslVersion,
    /// `PP2_SUBTYPE_SSL_CN`, only when the SSL TLV's `verify` is 0 (certificate verified).
    SslCn,
    /// `PP2_SUBTYPE_SSL_CIPHER`.
    SslCipher,
    /// `PP2_SUBTYPE_SSL_SIG_ALG`.
    SslSigAlg,
    /// `PP2_SUBTYPE_SSL_KEY_ALG`.
    SslKeyAlg,
    /// `PP2_SUBTYPE_SSL_GROUP`.
    SslGroup,
    /// `PP2_SUBTYPE_SSL_SIG_SCHEME`.
    SslSigScheme,
    /// The SSL TLV's `verify` field, in decimal (0: the client certificate verified).
    SslVerify,
    /// AWS VPC endpoint id (type 0xEA, subtype 0x01).
    AwsVpceId,
    /// Azure private endpoint LINKID (type 0xEE, subtype 0x01), in decimal.
    AzureLinkId,
    /// Google Cloud PSC connection id (type 0xE0), in decimal.
    GcpPscConnectionId,
}

impl TlvField {
    #[cfg(test)]
    /// Every field, in the order headers are set.
    pub(crate) fn all() -> Vec<TlvField> {
        keys::names::<Self>()
            .iter()
            .filter_map(|key| keys::variant(key))
            .collect()
    }

    /// Its key in `proxy_protocol_tlv_headers`.
    pub(crate) fn key(self) -> &'static str {
        keys::variant_name::<Self>(self as usize)
    }
}

/// An app's certificate and TLS behaviour. Paths are as written (relative ones are
/// relative to the working directory, as in rpxy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppTls {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// Client certificates must chain to this CA (mutual TLS). The TLS layer must refuse
    /// clients without one; it must never ignore this.
    pub client_ca_path: Option<PathBuf>,
    /// Answer plain-HTTP requests for this app with a 301 to HTTPS.
    pub https_redirection: bool,
}

/// One `[[apps.NAME.reverse_proxy]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Path prefix this route serves; starts with `/` (`/` when not given).
    pub path: String,
    /// Replaces the matched prefix before forwarding; starts with `/`.
    pub replace_path: Option<String>,
    /// Never empty.
    pub upstreams: Vec<Upstream>,
    pub load_balance: LoadBalance,
    pub options: UpstreamOptions,
}

/// One upstream server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `http`, or `https` for `tls = true`.
    pub scheme: Scheme,
    /// `location`: host and optional port.
    pub authority: Authority,
    /// `send_proxy_protocol`: each new connection to this upstream starts with a PROXY
    /// header of this version naming the client and the address it connected to.
    pub send_proxy_protocol: Option<Version>,
}

impl Upstream {
    /// Whether requests go to this upstream over TLS.
    pub fn tls(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }
}

impl fmt::Display for Upstream {
    /// As a URI whose path is `/`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}/", self.scheme, self.authority)
    }
}

/// How a route picks among its upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadBalance {
    /// Always the first (rpxy's `"none"`, the default).
    First,
    RoundRobin,
    Random,
}

impl fmt::Display for LoadBalance {
    /// rpxy's spelling.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LoadBalance::First => "none",
            LoadBalance::RoundRobin => "round_robin",
            LoadBalance::Random => "random",
        })
    }
}

/// A route's `upstream_options`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamOptions {
    pub host: HostHeader,
    pub http_version: UpstreamHttp,
    /// Add (or update) an RFC 7239 `Forwarded` header.
    pub forwarded_header: bool,
    /// Send `Upgrade-Insecure-Requests: 1` upstream.
    pub upgrade_insecure_requests: bool,
}

/// The `Host` header sent upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostHeader {
    /// The client's (the default, and `keep_original_host`, which wins over
    /// `set_upstream_host` as in rpxy).
    Original,
    /// The upstream's authority (`set_upstream_host`).
    Upstream,
}

/// The HTTP version spoken upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamHttp {
    /// Whatever the client spoke, or ALPN on a TLS upstream.
    Auto,
    /// `force_http11_upstream`.
    Http11,
    /// `force_http2_upstream`.
    Http2,
}

/// `[experimental.tcp_recv_proxy_protocol]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocolConfig {
    /// Who may connect, by class: the load balancers that must send a PROXY header
    /// (`trusted_proxies`, never empty) and the sources that must not
    /// (`direct_sources`); the longest prefix decides.
    pub trust: TrustList,
    /// How long the header may take from its first byte (`timeout` ms; 50 ms by default,
    /// 5 s for `0`).
    pub timeout: Duration,
    /// How long a connection may wait before its first byte (`first_byte_timeout` ms,
    /// 5 s by default; never more than `request_header_timeout`).
    pub first_byte_timeout: Duration,
    /// Accept v1 lines whose addresses differ in family (`accept_v1_mixed_families`).
    pub accept_v1_mixed_families: bool,
    pub kernel_filter: KernelFilterConfig,
}

/// `[experimental.tcp_recv_proxy_protocol.kernel_filter]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFilterConfig {
    pub mode: KernelFilterMode,
    /// Refuse to start when the filter cannot be loaded (default true).
    pub required: bool,
    /// Count what would be dropped but pass it (default false).
    pub observe_only: bool,
    /// Socket mode: take the filter that an accepted socket inherits from its listener
    /// off it right after accept (default true). The filter judges SYNs only; on an
    /// established connection it would run on every packet and pass it.
    pub detach_accepted: bool,
}

/// Where the trusted list is enforced in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelFilterMode {
    /// No kernel filter; only the check after `accept()`.
    Off,
    /// A socket filter on each listening socket (the default).
    Socket,
    /// XDP on the named interfaces (never empty).
    Xdp {
        interfaces: Vec<String>,
        xdp_mode: XdpMode,
    },
}

/// How XDP is attached. The serde names are `xdp_mode`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, else generic.
    Auto,
    Native,
    Generic,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(keys::variant_name::<Self>(*self as usize))
    }
}

impl Config {
    /// The app named by `default_app`.
    pub fn default_app(&self) -> Option<&App> {
        let name = self.default_app.as_deref()?;
        self.apps.iter().find(|a| a.name == name)
    }

    /// The app whose certificate a ClientHello without SNI (or with an IP address as its
    /// SNI) gets: `default_tls_app`, else the only app with TLS when there is exactly one.
    /// `None`: such handshakes are refused.
    pub(crate) fn no_sni_app(&self) -> Option<&App> {
        if let Some(name) = self.default_tls_app.as_deref() {
            return self.apps.iter().find(|a| a.name == name);
        }
        let mut tls = self.apps.iter().filter(|a| a.tls.is_some());
        match (tls.next(), tls.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        }
    }

    /// Checks that every certificate, key and CA file the config names, and the ticket key
    /// file, is a file that can be opened, and that the access log file can be opened for
    /// appending (it is created if missing, as `nginx -t` does). Errors name the key and the path. (What the
    /// files hold is checked where they are read, by `tls`.)
    pub(crate) fn check_files(&self) -> Result<(), ConfigError> {
        if let AccessDestination::File(path) = &self.access_log.destination {
            appendable(path).map_err(|cause| ConfigError::AccessLogFile {
                file: self.source.clone(),
                path: path.clone(),
                cause,
            })?;
        }
        if let Some(path) = &self.tls_ticket_key_file {
            openable(path).map_err(|cause| ConfigError::File {
                file: self.source.clone(),
                key: "tls_ticket_key_file".into(),
                path: path.clone(),
                cause,
            })?;
        }
        for app in &self.apps {
            let Some(tls) = &app.tls else { continue };
            let key = |name: &str| format!("{}.tls.{name}", keys::join("apps", &app.name));
            let files = [
                ("tls_cert_path", Some(&tls.cert_path)),
                ("tls_cert_key_path", Some(&tls.key_path)),
                ("client_ca_cert_path", tls.client_ca_path.as_ref()),
            ];
            for (name, path) in files {
                let Some(path) = path else { continue };
                openable(path).map_err(|cause| ConfigError::File {
                    file: self.source.clone(),
                    key: key(name),
                    path: path.clone(),
                    cause,
                })?;
            }
        }
        Ok(())
    }

    /// What would run, for `trustgate check`: the same text as `Display`.
    pub fn summary(&self) -> String {
        self.to_string()
    }
}

fn appendable(path: &Path) -> io::Result<()> {
    let file = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?;
    if file.metadata()?.is_dir() {
        return Err(io::ErrorKind::IsADirectory.into());
    }
    Ok(())
}

fn openable(path: &Path) -> io::Result<()> {
    let file = fs::File::open(path)?;
    if file.metadata()?.is_dir() {
        return Err(io::ErrorKind::IsADirectory.into());
    }
    Ok(())
}
