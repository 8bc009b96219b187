//! Why a config file was refused. Every message names the file and the key path, shows
//! the offending value when there is one, and says what to do. `Display` is complete on
//! its own and prints each cause once: a library error (io, TOML, URI) is a typed `cause`
//! field written into the message where it reads best, not a `source()`, so that a chain
//! printer (`main`'s report, [`crate::chain::Chain`]) does not print it a second time.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net};
use thiserror::Error;

/// A config file that cannot be run.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read the config file: {cause}")]
    Read { path: PathBuf, cause: io::Error },
    /// Not valid TOML, or a value of the wrong TOML type (the message shows the line).
    #[error("{path}: {cause}")]
    Syntax {
        path: PathBuf,
        cause: toml::de::Error,
    },
    /// A key that neither rpxy nor trustgate knows.
    #[error("{file}: unknown key {key}{hint}")]
    UnknownKey {
        file: PathBuf,
        key: String,
        hint: KeyHint,
    },
    /// A required key is absent.
    #[error("{file}: {key} is missing: {why}")]
    Missing {
        file: PathBuf,
        key: String,
        why: &'static str,
    },
    /// A key's value is wrong on its own or against another key.
    #[error("{file}: {key} = {value}: {problem}")]
    Invalid {
        file: PathBuf,
        key: String,
        /// The value as written (strings quoted).
        value: String,
        problem: ValueError,
    },
    /// A file named by the config (certificate, key, CA) cannot be read.
    #[error("{file}: {key} = {path:?}: cannot read this file: {cause}")]
    File {
        file: PathBuf,
        key: String,
        path: PathBuf,
        cause: io::Error,
    },
    /// The access log file cannot be opened for appending.
    #[error(
        "{file}: access_log.path = {path:?}: cannot open this file for appending: {cause}; \
         create its directory or give trustgate write access to it, or write path = \"-\" \
         to log to stderr"
    )]
    AccessLogFile {
        file: PathBuf,
        path: PathBuf,
        cause: io::Error,
    },
    /// Neither `listen_port` nor `listen_port_tls` is set.
    #[error(
        "{file}: neither listen_port nor listen_port_tls is set: set listen_port (plain HTTP), \
         listen_port_tls (HTTPS), or both"
    )]
    NoListener { file: PathBuf },
    /// No `[apps.NAME]` table, or every app was left out.
    #[error(
        "{file}: no app to serve: add an [apps.NAME] table with server_name and \
         [[apps.NAME.reverse_proxy]] (see config.toml)"
    )]
    NoApps { file: PathBuf },
}

/// What `UnknownKey` suggests instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyHint {
    /// A known key at the same place, close in spelling (full path).
    Nearest(String),
    /// The same key name is known in another table (its path, `*` for an app name).
    BelongsIn(&'static str),
    /// Nothing close.
    Nothing,
}

impl fmt::Display for KeyHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyHint::Nearest(key) => write!(f, "; did you mean {key}?"),
            KeyHint::BelongsIn("") => {
                f.write_str("; this is a top-level key: move it above the first [table]")
            }
            KeyHint::BelongsIn(table) => write!(f, "; this key belongs in [{table}]"),
            KeyHint::Nothing => f.write_str(
                "; it is neither an rpxy nor a trustgate key (see docs/config.md); \
                 unknown keys are refused so that a typo cannot silently change behaviour",
            ),
        }
    }
}

/// What is wrong with one value.
#[derive(Debug, Error)]
pub enum ValueError {
    #[error("not an {family} address{}", family.example())]
    NotAnAddress { family: Family },
    #[error("this is an {family} address: put it in {key}")]
    WrongFamily { family: Family, key: &'static str },
    #[error(
        "the wildcard address {wildcard} cannot be combined with other addresses: \
         give it alone, or list only specific addresses"
    )]
    WildcardInList { wildcard: IpAddr },
    #[error("the list is empty: {what_to_do}")]
    EmptyList { what_to_do: &'static str },
    #[error("listen_port_tls must differ from listen_port")]
    SamePorts,
    #[error("must be at least {min}: with 0, {why}")]
    TooSmall { min: u64, why: &'static str },
    #[error(
        "not an IP network: write a CIDR like \"10.0.0.0/8\" or \"2001:db8::/32\", or one \
         address (taken as /32 or /128)"
    )]
    NotANetwork,
    #[error("host bits set; did you mean \"{network}\"? (for the one host, write \"{host}\")")]
    HostBitsSet { network: IpNet, host: IpNet },
    #[error(
        "an IPv4-mapped IPv6 prefix never matches: mapped peers are judged as IPv4; \
         write \"{ipv4}\" instead"
    )]
    Ipv4Mapped { ipv4: Ipv4Net },
    #[error(
        "neither an IP network nor a provider name trustgate recognises{}",
        Suggestion(*nearest)
    )]
    UnknownProvider { nearest: Option<&'static str> },
    #[error("must be one of {}{}", Choices(allowed), Suggestion(*nearest))]
    UnknownChoice {
        allowed: &'static [&'static str],
        nearest: Option<&'static str>,
    },
    #[error(
        "only used with mode = \"xdp\" (mode is \"{mode}\"): remove this key, or set mode = \"xdp\""
    )]
    OnlyForXdp { mode: &'static str },
    #[error(
        "only used with mode = \"socket\" (mode is \"{mode}\"): remove this key, or set mode = \"socket\""
    )]
    OnlyForSocket { mode: &'static str },
    #[error(
        "mode = \"xdp\" needs interfaces = [\"eth0\", ...] naming where to attach; \
         or use mode = \"socket\", which needs no interface"
    )]
    XdpNeedsInterfaces,
    #[error("not an interface name: 1 to 15 bytes, no '/' and no whitespace")]
    BadInterfaceName,
    #[error("listed twice")]
    Duplicate,
    #[error(
        "the same network as {other} = \"{other_value}\": a source either sends a PROXY header \
         (trusted_proxies) or connects as itself (direct_sources), never both; keep it in one \
         list (a narrower prefix of one list inside a broader one of the other is allowed: \
         the longest prefix decides)"
    )]
    InBothLists { other: String, other_value: String },
    #[error(
        "not a size: write bytes (1048576), a number with k, m or g (\"10m\" = 10 MiB), \
         or \"unlimited\""
    )]
    BadSize,
    #[error(
        "not a header size: write bytes (65536) or a number with k (\"64k\" = 64 KiB), \
         from {min} to {max} bytes"
    )]
    BadHeaderSize { min: u32, max: u32 },
    #[error(
        "not a protocol name: an HTTP token such as \"websocket\" (letters, digits and \
         !#$%&'*+-.^_`|~), without a version"
    )]
    NotAToken,
    #[error(
        "h2c is never tunnelled: every later request on the upgraded connection would skip \
         routing, identity headers and the path checks; remove it"
    )]
    H2cUpgrade,
    #[error("not an address and port: write \"127.0.0.1:9464\" or \"[::1]:9464\"")]
    BadSocketAddr,
    #[error("this port is also a proxy listen port on an overlapping address: pick another")]
    PortTaken,
    #[error("must be more than 0: every wait is bounded (write seconds, such as 60 or 0.5)")]
    ZeroTimeout,
    #[error("must be more than 0 milliseconds: every wait is bounded (such as 5000)")]
    ZeroMillis,
    #[error(
        "is longer than request_header_timeout ({header:?}), which also bounds the wait for \
         the first byte: lower it, or raise request_header_timeout"
    )]
    FirstByteAfterHeaderTimeout { header: std::time::Duration },
    #[error("not a timeout: write seconds from 0.001 to 86400, such as 60 or 0.5")]
    BadTimeout,
    #[error("must start with \"/\"")]
    PathNotAbsolute,
    #[error("must not be empty")]
    Empty,
    #[error("must not contain whitespace")]
    Whitespace,
    #[error("another route of this app has the same path: merge them or change one")]
    DuplicateRoute,
    #[error("write host[:port] without a scheme; https upstreams are chosen with tls = true")]
    UpstreamScheme,
    #[error("an upstream is host[:port] only; rewrite paths with replace_path")]
    UpstreamPath,
    #[error("not a host[:port]: {cause}")]
    UpstreamUri { cause: http::uri::InvalidUri },
    #[error("force_http11_upstream and force_http2_upstream exclude each other: keep one")]
    Http11AndHttp2,
    #[error(
        "https_redirection needs both listen_port and listen_port_tls: remove it, or set \
         both ports"
    )]
    RedirectNeedsBothPorts,
    #[error("public_https_port needs listen_port_tls: remove it, or set listen_port_tls")]
    PublicPortNeedsTls,
    #[error(
        "https_redirection_port is rpxy's old name of public_https_port, which is also set: remove one"
    )]
    RenamedKeyTwice,
    #[error("app {other} has the same server_name: each server name belongs to one app")]
    DuplicateServerName { other: String },
    #[error("app names are case-insensitive, and [apps.{other}] is the same name")]
    DuplicateApp { other: String },
    #[error("no app of that name{}", Suggestion(nearest.as_deref()))]
    UnknownApp { nearest: Option<String> },
    #[error("that app is not served (see the warning about its ACME certificate)")]
    DroppedApp,
    #[error(
        "that app is not served over TLS{}: name an app with a tls table, or remove this key",
        if *tls_listener { " (it has no tls table)" } else { " (listen_port_tls is not set)" }
    )]
    NotTlsApp { tls_listener: bool },
    #[error("not an HTTP header name: letters, digits and !#$%&'*+-.^_`|~ only")]
    BadHeaderName {
        #[source]
        source: http::header::InvalidHeaderName,
    },
    #[error(
        "trustgate sets or removes this header itself (Host, X-Forwarded-For/-Proto/-Port/-Host, \
         X-Real-IP, Forwarded, hop-by-hop headers, Content-Length): pick another name"
    )]
    ManagedHeaderName,
    #[error(
        "the {other} TLV already goes to this header (names are case-insensitive): give each its own"
    )]
    DuplicateHeaderName { other: &'static str },
}

/// An address family, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn example(self) -> &'static str {
        match self {
            Family::V4 => " (like \"127.0.0.1\")",
            Family::V6 => " (like \"::1\" or \"[::1]\")",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

struct Suggestion<'a>(Option<&'a str>);

impl fmt::Display for Suggestion<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(s) => write!(f, "; did you mean \"{s}\"?"),
            None => Ok(()),
        }
    }
}

struct Choices(&'static [&'static str]);

impl fmt::Display for Choices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "\"{c}\"")?;
        }
        Ok(())
    }
}
