//! A typed trustgate config for the tests: [`TestConfig`] and the tables under it
//! ([`App`], [`Route`], [`Upstream`], [`Tls`], [`ProxyProtocol`], [`KernelFilter`],
//! [`AccessLog`]), each a serde struct named after the file's keys
//! (`proxy/src/config/file.rs`), rendered to TOML by the `toml` crate. A key left unset
//! is left out of the file, so trustgate's default applies. Tests build their configs
//! here instead of carrying TOML templates or editing TOML text; only the config
//! module's own tests of refusals and warnings keep literal TOML, where the text is the
//! point.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::Path;

use serde::Serialize;

/// The whole file. Start from [`TestConfig::new`] (nothing set) and chain setters;
/// [`TestConfig::render`] gives the text.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TestConfig {
    listen_port: Option<u16>,
    listen_port_tls: Option<u16>,
    listen_address_v4: Option<String>,
    listen_address_v6: Option<String>,
    max_clients: Option<u32>,
    max_clients_per_ip: Option<u32>,
    max_upstream_connections: Option<u32>,
    max_upstream_connections_per_client: Option<u32>,
    trusted_forwarded_proxies: Option<Vec<String>>,
    request_max_body_size: Option<Size>,
    request_max_header_size: Option<Size>,
    underscores_in_headers: Option<bool>,
    upgrade_protocols: Option<Vec<String>>,
    redact_query_in_access_log: Option<bool>,
    request_header_timeout: Option<Secs>,
    keepalive_timeout: Option<Secs>,
    request_body_timeout: Option<Secs>,
    upstream_connect_timeout: Option<Secs>,
    upstream_read_timeout: Option<Secs>,
    send_timeout: Option<Secs>,
    tunnel_idle_timeout: Option<Secs>,
    default_app: Option<String>,
    default_tls_app: Option<String>,
    tls_ticket_key_file: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    apps: BTreeMap<String, App>,
    experimental: Option<Experimental>,
    metrics: Option<Metrics>,
    access_log: Option<AccessLog>,
}

/// A byte size as the file takes it: a number, or text such as `"8k"`.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

impl From<u64> for Size {
    fn from(bytes: u64) -> Size {
        Size::Bytes(bytes)
    }
}

impl From<&str> for Size {
    fn from(text: &str) -> Size {
        Size::Text(text.into())
    }
}

/// A duration in seconds as the file takes it: whole (`1`) or a fraction (`0.2`).
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(untagged)]
pub enum Secs {
    Whole(u64),
    Fraction(f64),
}

impl From<u64> for Secs {
    fn from(secs: u64) -> Secs {
        Secs::Whole(secs)
    }
}

impl From<f64> for Secs {
    fn from(secs: f64) -> Secs {
        Secs::Fraction(secs)
    }
}

/// `[experimental]`: only what the tests set.
#[derive(Debug, Clone, Default, Serialize)]
struct Experimental {
    tcp_recv_proxy_protocol: Option<ProxyProtocol>,
}

/// `[metrics]`.
#[derive(Debug, Clone, Serialize)]
struct Metrics {
    listen: String,
}

impl TestConfig {
    /// A config with nothing set.
    pub fn new() -> TestConfig {
        TestConfig::default()
    }

    /// The file's text.
    pub fn render(&self) -> String {
        toml::to_string(self).expect("a test config renders as TOML")
    }

    pub fn listen_port(mut self, port: u16) -> Self {
        self.listen_port = Some(port);
        self
    }

    pub fn listen_port_tls(mut self, port: u16) -> Self {
        self.listen_port_tls = Some(port);
        self
    }

    /// `listen_address_v4`, one address.
    pub fn listen_v4(mut self, address: impl Display) -> Self {
        self.listen_address_v4 = Some(address.to_string());
        self
    }

    /// `listen_address_v6`, one address.
    pub fn listen_v6(mut self, address: impl Display) -> Self {
        self.listen_address_v6 = Some(address.to_string());
        self
    }

    pub fn max_clients(mut self, n: u32) -> Self {
        self.max_clients = Some(n);
        self
    }

    pub fn max_clients_per_ip(mut self, n: u32) -> Self {
        self.max_clients_per_ip = Some(n);
        self
    }

    pub fn max_upstream_connections(mut self, n: u32) -> Self {
        self.max_upstream_connections = Some(n);
        self
    }

    pub fn max_upstream_connections_per_client(mut self, n: u32) -> Self {
        self.max_upstream_connections_per_client = Some(n);
        self
    }

    /// `trusted_forwarded_proxies`, a list.
    pub fn trusted_forwarded_proxies<T: Display>(
        mut self,
        trusted: impl IntoIterator<Item = T>,
    ) -> Self {
        self.trusted_forwarded_proxies = Some(strings(trusted));
        self
    }

    pub fn upgrade_protocols<T: Display>(mut self, protocols: impl IntoIterator<Item = T>) -> Self {
        self.upgrade_protocols = Some(strings(protocols));
        self
    }

    pub fn request_max_body_size(mut self, size: impl Into<Size>) -> Self {
        self.request_max_body_size = Some(size.into());
        self
    }

    pub fn request_max_header_size(mut self, size: impl Into<Size>) -> Self {
        self.request_max_header_size = Some(size.into());
        self
    }

    pub fn underscores_in_headers(mut self, allowed: bool) -> Self {
        self.underscores_in_headers = Some(allowed);
        self
    }

    pub fn redact_query_in_access_log(mut self, redact: bool) -> Self {
        self.redact_query_in_access_log = Some(redact);
        self
    }

    pub fn request_header_timeout(mut self, secs: impl Into<Secs>) -> Self {
        self.request_header_timeout = Some(secs.into());
        self
    }

    pub fn keepalive_timeout(mut self, secs: impl Into<Secs>) -> Self {
        self.keepalive_timeout = Some(secs.into());
        self
    }

    pub fn request_body_timeout(mut self, secs: impl Into<Secs>) -> Self {
        self.request_body_timeout = Some(secs.into());
        self
    }

    pub fn upstream_connect_timeout(mut self, secs: impl Into<Secs>) -> Self {
        self.upstream_connect_timeout = Some(secs.into());
        self
    }

    pub fn upstream_read_timeout(mut self, secs: impl Into<Secs>) -> Self {
        self.upstream_read_timeout = Some(secs.into());
        self
    }

    pub fn send_timeout(mut self, secs: impl Into<Secs>) -> Self {
        self.send_timeout = Some(secs.into());
        self
    }

    pub fn tunnel_idle_timeout(mut self, secs: impl Into<Secs>) -> Self {
        self.tunnel_idle_timeout = Some(secs.into());
        self
    }

    pub fn default_app(mut self, name: &str) -> Self {
        self.default_app = Some(name.into());
        self
    }

    pub fn default_tls_app(mut self, name: &str) -> Self {
        self.default_tls_app = Some(name.into());
        self
    }

    pub fn tls_ticket_key_file(mut self, path: impl AsRef<Path>) -> Self {
        self.tls_ticket_key_file = Some(path.as_ref().display().to_string());
        self
    }

    /// `[apps.NAME]`.
    pub fn app(mut self, name: &str, app: App) -> Self {
        self.apps.insert(name.into(), app);
        self
    }

    /// `[experimental.tcp_recv_proxy_protocol]`.
    pub fn proxy_protocol(mut self, pp: ProxyProtocol) -> Self {
        self.experimental = Some(Experimental {
            tcp_recv_proxy_protocol: Some(pp),
        });
        self
    }

    /// `[metrics] listen`.
    pub fn metrics(mut self, listen: impl Display) -> Self {
        self.metrics = Some(Metrics {
            listen: listen.to_string(),
        });
        self
    }

    /// `[access_log]`.
    pub fn access_log(mut self, log: AccessLog) -> Self {
        self.access_log = Some(log);
        self
    }
}

/// `[apps.NAME]`.
#[derive(Debug, Clone, Serialize)]
pub struct App {
    server_name: String,
    tls: Option<Tls>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    proxy_protocol_tlv_headers: BTreeMap<String, String>,
    reverse_proxy: Vec<Route>,
}

impl App {
    /// An app for `server_name`, with no route yet.
    pub fn new(server_name: &str) -> App {
        App {
            server_name: server_name.into(),
            tls: None,
            proxy_protocol_tlv_headers: BTreeMap::new(),
            reverse_proxy: Vec::new(),
        }
    }

    /// Adds `[[apps.NAME.reverse_proxy]]` `route`.
    pub fn route(mut self, route: Route) -> Self {
        self.reverse_proxy.push(route);
        self
    }

    /// Adds a route of every path to one plain upstream at `location`.
    pub fn upstream(self, location: impl Display) -> Self {
        self.route(Route::new().upstream(Upstream::at(location)))
    }

    /// `apps.NAME.tls`.
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// `apps.NAME.proxy_protocol_tlv_headers.TLV = "header"`.
    pub fn tlv_header(mut self, tlv: &str, header: &str) -> Self {
        self.proxy_protocol_tlv_headers
            .insert(tlv.into(), header.into());
        self
    }
}

/// `apps.NAME.tls`.
#[derive(Debug, Clone, Serialize)]
pub struct Tls {
    tls_cert_path: String,
    tls_cert_key_path: String,
    https_redirection: Option<bool>,
}

impl Tls {
    /// The certificate chain and key files.
    pub fn files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Tls {
        Tls {
            tls_cert_path: cert.as_ref().display().to_string(),
            tls_cert_key_path: key.as_ref().display().to_string(),
            https_redirection: None,
        }
    }

    pub fn https_redirection(mut self, redirect: bool) -> Self {
        self.https_redirection = Some(redirect);
        self
    }
}

/// `[[apps.NAME.reverse_proxy]]`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Route {
    path: Option<String>,
    upstream: Vec<Upstream>,
    load_balance: Option<String>,
    upstream_options: Option<Vec<String>>,
}

impl Route {
    /// A route of every path, with no upstream yet.
    pub fn new() -> Route {
        Route::default()
    }

    pub fn path(mut self, path: &str) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Adds `upstream` to the route's `upstream` list.
    pub fn upstream(mut self, upstream: Upstream) -> Self {
        self.upstream.push(upstream);
        self
    }

    pub fn load_balance(mut self, method: &str) -> Self {
        self.load_balance = Some(method.into());
        self
    }

    /// Adds `option` to `upstream_options`.
    pub fn upstream_option(mut self, option: &str) -> Self {
        self.upstream_options
            .get_or_insert_with(Vec::new)
            .push(option.into());
        self
    }
}

/// One entry of `upstream = [...]`.
#[derive(Debug, Clone, Serialize)]
pub struct Upstream {
    location: String,
    tls: Option<bool>,
    send_proxy_protocol: Option<String>,
}

impl Upstream {
    /// A plain upstream at `location` (`host:port`).
    pub fn at(location: impl Display) -> Upstream {
        Upstream {
            location: location.to_string(),
            tls: None,
            send_proxy_protocol: None,
        }
    }

    pub fn tls(mut self, tls: bool) -> Self {
        self.tls = Some(tls);
        self
    }

    /// `send_proxy_protocol`: `"v1"` or `"v2"`.
    pub fn send_proxy_protocol(mut self, version: &str) -> Self {
        self.send_proxy_protocol = Some(version.into());
        self
    }
}

/// `[experimental.tcp_recv_proxy_protocol]`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProxyProtocol {
    trusted_proxies: Option<Vec<String>>,
    direct_sources: Option<Vec<String>>,
    timeout: Option<u64>,
    first_byte_timeout: Option<u64>,
    kernel_filter: Option<KernelFilter>,
    /// Keys trustgate does not know, for tests of how it refuses them.
    #[serde(flatten)]
    unknown: BTreeMap<String, toml::Value>,
}

impl ProxyProtocol {
    /// PROXY headers from `trusted` (CIDRs or addresses).
    pub fn trusting<T: Display>(trusted: impl IntoIterator<Item = T>) -> ProxyProtocol {
        ProxyProtocol {
            trusted_proxies: Some(strings(trusted)),
            ..ProxyProtocol::default()
        }
    }

    /// `direct_sources`: sources that connect without a PROXY header.
    pub fn direct_sources<T: Display>(mut self, direct: impl IntoIterator<Item = T>) -> Self {
        self.direct_sources = Some(strings(direct));
        self
    }

    /// `timeout`, in milliseconds.
    pub fn timeout(mut self, ms: u64) -> Self {
        self.timeout = Some(ms);
        self
    }

    /// `first_byte_timeout`, in milliseconds.
    pub fn first_byte_timeout(mut self, ms: u64) -> Self {
        self.first_byte_timeout = Some(ms);
        self
    }

    /// `[experimental.tcp_recv_proxy_protocol.kernel_filter]`.
    pub fn kernel_filter(mut self, filter: KernelFilter) -> Self {
        self.kernel_filter = Some(filter);
        self
    }

    /// Renames the `trusted_proxies` key to `misspelt`, keeping its value: a key
    /// trustgate does not know.
    pub fn misspell_trusted_proxies(mut self, misspelt: &str) -> Self {
        let list = self.trusted_proxies.take().unwrap_or_default();
        let list = list.into_iter().map(toml::Value::String).collect();
        self.unknown
            .insert(misspelt.into(), toml::Value::Array(list));
        self
    }
}

/// `[experimental.tcp_recv_proxy_protocol.kernel_filter]`.
#[derive(Debug, Clone, Serialize)]
pub struct KernelFilter {
    mode: String,
    interfaces: Option<Vec<String>>,
    xdp_mode: Option<String>,
    required: Option<bool>,
}

impl KernelFilter {
    /// `mode`: `"socket"`, `"xdp"` or `"off"`.
    pub fn mode(mode: &str) -> KernelFilter {
        KernelFilter {
            mode: mode.into(),
            interfaces: None,
            xdp_mode: None,
            required: None,
        }
    }

    pub fn interfaces<T: Display>(mut self, interfaces: impl IntoIterator<Item = T>) -> Self {
        self.interfaces = Some(strings(interfaces));
        self
    }

    pub fn xdp_mode(mut self, xdp_mode: &str) -> Self {
        self.xdp_mode = Some(xdp_mode.into());
        self
    }

    pub fn required(mut self, required: bool) -> Self {
        self.required = Some(required);
        self
    }
}

/// `[access_log]`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AccessLog {
    path: Option<String>,
    format: Option<String>,
    off: Option<bool>,
}

impl AccessLog {
    /// Records to the file at `path`.
    pub fn to(path: impl AsRef<Path>) -> AccessLog {
        AccessLog {
            path: Some(path.as_ref().display().to_string()),
            ..AccessLog::default()
        }
    }

    /// An `[access_log]` table with no key set.
    pub fn new() -> AccessLog {
        AccessLog::default()
    }

    /// `format`: `"json"`, `"combined"` and the like (any text, for tests of refusals).
    pub fn format(mut self, format: &str) -> Self {
        self.format = Some(format.into());
        self
    }

    pub fn off(mut self, off: bool) -> Self {
        self.off = Some(off);
        self
    }
}

fn strings<T: Display>(items: impl IntoIterator<Item = T>) -> Vec<String> {
    items.into_iter().map(|i| i.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every table the builder has, rendered and read back by trustgate's own parser.
    #[test]
    fn a_built_config_is_valid_trustgate_toml() {
        let text = TestConfig::new()
            .listen_port(8080)
            .listen_port_tls(8443)
            .listen_v4("127.0.0.1")
            .max_clients(10)
            .request_max_body_size(1024)
            .request_max_header_size("8k")
            .upstream_read_timeout(0.2)
            .send_timeout(1)
            .default_app("app")
            .app(
                "app",
                App::new("app.example")
                    .tls(Tls::files("c.pem", "k.pem").https_redirection(false))
                    .tlv_header("ssl_cn", "x-client-cn")
                    .route(
                        Route::new()
                            .path("/v1")
                            .upstream(Upstream::at("127.0.0.1:9").send_proxy_protocol("v2"))
                            .upstream(Upstream::at("127.0.0.1:10").tls(true))
                            .load_balance("round_robin")
                            .upstream_option("force_http2_upstream"),
                    )
                    .upstream("127.0.0.1:9"),
            )
            .proxy_protocol(
                ProxyProtocol::trusting(["127.0.0.1/32"])
                    .direct_sources(Vec::<String>::new())
                    .timeout(1000)
                    .kernel_filter(KernelFilter::mode("off").required(false)),
            )
            .metrics("127.0.0.1:0")
            .access_log(AccessLog::new().format("json"))
            .render();
        let (config, warnings) =
            proxy::config::parse_str(&text, "built.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(warnings.is_empty(), "{warnings:?}\n{text}");
        assert_eq!(config.apps.len(), 1, "{text}");
        assert_eq!(config.apps[0].routes.len(), 2, "{text}");
        assert_eq!(config.apps[0].routes[0].upstreams.len(), 2, "{text}");
    }

    #[test]
    fn a_misspelt_key_is_rendered_in_place_of_the_real_one() {
        let text = TestConfig::new()
            .proxy_protocol(
                ProxyProtocol::trusting(["10.0.0.0/8"]).misspell_trusted_proxies("trusted_proxy"),
            )
            .render();
        assert!(text.contains("trusted_proxy = [\"10.0.0.0/8\"]"), "{text}");
        assert!(!text.contains("trusted_proxies"), "{text}");
    }
}
