//! The config file as written: serde structs that mirror rpxy's TOML key for key, every
//! value optional; a string naming one of a fixed set is a [`Choice`] of a serde enum.
//! No defaults and no checks live here (`validate` does that). Undeclared keys are
//! refused by `keys`; rpxy's keys trustgate lacks are declared as [`Unsupported`].

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeOwned};
use serde::{Deserialize, Deserializer};

use super::{AccessFormat, TlvField, XdpMode, keys};

/// The whole file. Field names are the TOML keys.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ConfigFile {
    pub(crate) listen_port: Option<u16>,
    pub(crate) listen_port_tls: Option<u16>,
    pub(crate) listen_address_v4: Option<OneOrMany>,
    pub(crate) listen_address_v6: Option<OneOrMany>,
    pub(crate) listen_ipv6: Option<bool>,
    pub(crate) public_https_port: Option<u16>,
    /// rpxy's earlier name for `public_https_port`.
    pub(crate) https_redirection_port: Option<u16>,
    pub(crate) tcp_listen_backlog: Option<u32>,
    pub(crate) max_concurrent_streams: Option<u32>,
    pub(crate) max_clients: Option<u32>,
    pub(crate) max_clients_per_ip: Option<u32>,
    /// trustgate's own key.
    pub(crate) max_upstream_connections: Option<u32>,
    /// trustgate's own key.
    pub(crate) max_upstream_connections_per_client: Option<u32>,
    pub(crate) trusted_forwarded_proxies: Option<OneOrMany>,
    pub(crate) request_max_body_size: Option<BodySize>,
    /// nginx's name (`underscores_in_headers`).
    pub(crate) underscores_in_headers: Option<bool>,
    /// trustgate's own key.
    pub(crate) upgrade_protocols: Option<Vec<String>>,
    /// trustgate's own key.
    pub(crate) request_max_header_size: Option<BodySize>,
    pub(crate) redact_query_in_access_log: Option<bool>,
    /// trustgate's own keys: how long each wait may last (see `validate::timeouts`).
    pub(crate) request_header_timeout: Option<Seconds>,
    pub(crate) keepalive_timeout: Option<Seconds>,
    pub(crate) request_body_timeout: Option<Seconds>,
    pub(crate) upstream_connect_timeout: Option<Seconds>,
    pub(crate) upstream_read_timeout: Option<Seconds>,
    pub(crate) send_timeout: Option<Seconds>,
    pub(crate) tunnel_idle_timeout: Option<Seconds>,
    pub(crate) default_app: Option<String>,
    /// trustgate's own keys: the app whose certificate a ClientHello without SNI gets,
    /// and the file of session-ticket keys.
    pub(crate) default_tls_app: Option<String>,
    pub(crate) tls_ticket_key_file: Option<String>,
    pub(crate) apps: Option<BTreeMap<String, AppFile>>,
    pub(crate) experimental: Option<ExperimentalFile>,
    /// trustgate's own table.
    pub(crate) metrics: Option<MetricsFile>,
    /// trustgate's own table (nginx's vocabulary: `access_log path format`, `off`).
    pub(crate) access_log: Option<AccessLogFile>,
    pub(crate) sticky_cookie_secret: Option<Unsupported>,
}

/// A key of an rpxy feature trustgate lacks: any value, and whether it asks for the
/// feature (`health_check = false` and the like do not).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unsupported {
    pub(crate) asked: bool,
}

impl<'de> Deserialize<'de> for Unsupported {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = toml::Value::deserialize(deserializer)?;
        Ok(Unsupported {
            asked: !matches!(value, toml::Value::Boolean(false)),
        })
    }
}

/// A key that takes one string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// Each entry with its key path: `key` for the single form, `key[i]` for a list.
    pub(crate) fn entries<'a>(&'a self, key: &'a str) -> Vec<(String, &'a str)> {
        match self {
            OneOrMany::One(s) => vec![(key.to_owned(), s.as_str())],
            OneOrMany::Many(v) => v
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("{key}[{i}]"), s.as_str()))
                .collect(),
        }
    }
}

/// `request_max_body_size` and `request_max_header_size`: bytes, or a string such as
/// `"10m"` (or `"unlimited"`, for bodies).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum BodySize {
    Bytes(i64),
    Text(String),
}

/// A duration in seconds: a whole number, or a fraction (`0.5`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub(crate) enum Seconds {
    Whole(i64),
    Fraction(f64),
}

/// A string that must name a variant of `T`, an enum of unit variants whose serde names
/// are the one list of allowed values. Any other string is kept (`value` is `None`), so
/// that `validate` refuses it with the key, the list and the nearest name.
#[derive(Debug, Clone)]
pub(crate) struct Choice<T> {
    /// As written.
    pub(crate) text: String,
    pub(crate) value: Option<T>,
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Choice<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let value = keys::variant(&text);
        Ok(Choice { text, value })
    }
}

/// `load_balance`: rpxy's methods.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LoadBalanceFile {
    None,
    RoundRobin,
    Random,
    Sticky,
    PrimaryBackup,
}

/// One entry of `upstream_options`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum UpstreamOptionFile {
    KeepOriginalHost,
    SetUpstreamHost,
    ForceHttp11Upstream,
    ForceHttp2Upstream,
    ForwardedHeader,
    UpgradeInsecureRequests,
}

/// `send_proxy_protocol`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ProxyVersionFile {
    V1,
    V2,
}

/// `kernel_filter.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum KernelModeFile {
    Socket,
    Xdp,
    Off,
}

/// `[apps.NAME]`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct AppFile {
    pub(crate) server_name: Option<String>,
    pub(crate) tls: Option<TlsFile>,
    pub(crate) reverse_proxy: Option<Vec<RouteFile>>,
    /// trustgate's own table.
    pub(crate) proxy_protocol_tlv_headers: Option<TlvHeadersFile>,
}

/// `apps.NAME.proxy_protocol_tlv_headers`: for each TLV, the request header it becomes.
/// The keys are `TlvField`'s; any other key is left to serde as unknown.
#[derive(Debug, Default)]
pub(crate) struct TlvHeadersFile(pub BTreeMap<TlvField, String>);

impl<'de> Deserialize<'de> for TlvHeadersFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(TlvHeadersVisitor)
    }
}

struct TlvHeadersVisitor;

impl<'de> de::Visitor<'de> for TlvHeadersVisitor {
    type Value = TlvHeadersFile;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // What serde said when this was a derived struct.
        f.write_str("struct TlvHeadersFile")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut headers = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            match keys::variant::<TlvField>(&key) {
                Some(tlv) => {
                    headers.insert(tlv, map.next_value()?);
                }
                // As a derived struct ignores an undeclared key: serde_ignored sees it.
                None => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(TlvHeadersFile(headers))
    }
}

/// `apps.NAME.tls`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct TlsFile {
    pub(crate) tls_cert_path: Option<String>,
    pub(crate) tls_cert_key_path: Option<String>,
    pub(crate) client_ca_cert_path: Option<String>,
    pub(crate) https_redirection: Option<bool>,
    /// Declared so that `validate` can say what happens to an ACME-only app.
    pub(crate) acme: Option<bool>,
}

/// `[[apps.NAME.reverse_proxy]]`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RouteFile {
    pub(crate) path: Option<String>,
    pub(crate) replace_path: Option<String>,
    pub(crate) upstream: Option<Vec<UpstreamFile>>,
    pub(crate) load_balance: Option<Choice<LoadBalanceFile>>,
    pub(crate) upstream_options: Option<Vec<Choice<UpstreamOptionFile>>>,
    pub(crate) health_check: Option<Unsupported>,
}

/// One entry of `upstream = [...]`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct UpstreamFile {
    pub(crate) location: Option<String>,
    pub(crate) tls: Option<bool>,
    /// trustgate's own key.
    pub(crate) send_proxy_protocol: Option<Choice<ProxyVersionFile>>,
}

/// `[experimental]`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ExperimentalFile {
    pub(crate) ignore_sni_consistency: Option<bool>,
    pub(crate) connection_handling_timeout: Option<u64>,
    pub(crate) tcp_recv_proxy_protocol: Option<ProxyProtocolFile>,
    pub(crate) h3: Option<Unsupported>,
    pub(crate) cache: Option<Unsupported>,
    pub(crate) acme: Option<Unsupported>,
}

/// `[experimental.tcp_recv_proxy_protocol]`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ProxyProtocolFile {
    pub(crate) trusted_proxies: Option<Vec<String>>,
    /// trustgate's own: sources that connect without a PROXY header.
    pub(crate) direct_sources: Option<Vec<String>>,
    pub(crate) timeout: Option<u64>,
    /// trustgate's own keys: the wait for the first byte (ms), and nginx stream's v1
    /// lines whose two addresses differ in family.
    pub(crate) first_byte_timeout: Option<u64>,
    pub(crate) accept_v1_mixed_families: Option<bool>,
    /// trustgate's own table.
    pub(crate) kernel_filter: Option<KernelFilterFile>,
}

/// `[experimental.tcp_recv_proxy_protocol.kernel_filter]`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct KernelFilterFile {
    pub(crate) mode: Option<Choice<KernelModeFile>>,
    pub(crate) interfaces: Option<Vec<String>>,
    pub(crate) xdp_mode: Option<Choice<XdpMode>>,
    pub(crate) required: Option<bool>,
    pub(crate) observe_only: Option<bool>,
    pub(crate) detach_accepted: Option<bool>,
}

/// `[metrics]`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct MetricsFile {
    pub(crate) listen: Option<String>,
}

/// `[access_log]`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct AccessLogFile {
    pub(crate) path: Option<String>,
    pub(crate) format: Option<Choice<AccessFormat>>,
    pub(crate) off: Option<bool>,
}
