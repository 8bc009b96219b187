//! The human-readable account of a [`Config`] that `trustgate check` prints: listeners,
//! limits (with the descriptor budget), apps and routes, the trusted lists and the
//! kernel-filter plan. Text only;
//! nothing here decides anything.

use std::fmt;

use super::{
    AccessDestination, App, Config, HostHeader, KernelFilterMode, Route, UpstreamHttp,
    UpstreamOptions, XdpMode,
};
use crate::proxy_protocol::Version;
use crate::trust::Class;

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "config: {}", self.source.display())?;
        writeln!(f, "listeners:")?;
        for addr in &self.listeners.plain {
            writeln!(f, "  http   {addr}")?;
        }
        for addr in &self.listeners.tls {
            writeln!(f, "  https  {addr}")?;
        }
        if let Some(port) = self.listeners.public_https_port
            && !self.listeners.plain.is_empty()
        {
            writeln!(f, "  HTTPS redirects go to port {port}")?;
        }

        let l = &self.limits;
        writeln!(
            f,
            "limits: {} clients, {} per client address, {} HTTP/2 streams per connection, \
             backlog {}, request body {}, connection lifetime {}",
            l.max_clients,
            l.max_clients_per_ip
                .map_or("no limit".to_owned(), |n| n.to_string()),
            l.max_concurrent_streams,
            l.tcp_listen_backlog,
            l.request_max_body_size.map_or("unlimited".to_owned(), size),
            l.connection_handling_timeout
                .map_or("unlimited".to_owned(), |d| format!("{d:?}")),
        )?;
        let t = &self.timeouts;
        writeln!(
            f,
            "timeouts: request head {:?}, keep-alive {:?}, request body {:?}, upstream connect \
             {:?}, upstream read {:?}, send {:?}, tunnel idle {}",
            t.request_header,
            t.keepalive,
            t.request_body,
            t.upstream_connect,
            t.upstream_read,
            t.send,
            t.tunnel_idle
                .map_or("never".to_owned(), |d| format!("{d:?}")),
        )?;
        writeln!(
            f,
            "upstream: {} connections in total, {} requests in flight per connection \
             (more wait); descriptors needed: {} ({} clients + {} upstream + {} reserved)",
            l.max_upstream_connections,
            l.max_upstream_connections_per_client,
            crate::nofile::needed(l.max_clients, l.max_upstream_connections),
            l.max_clients,
            l.max_upstream_connections,
            crate::nofile::RESERVED_FDS,
        )?;
        if self.trusted_forwarded_proxies.is_empty() {
            writeln!(
                f,
                "forwarded headers: rebuilt from the client address (no trusted_forwarded_proxies)"
            )?;
        } else {
            writeln!(
                f,
                "forwarded headers: believed from {}",
                self.trusted_forwarded_proxies
            )?;
        }
        let a = &self.access_log;
        let query = if self.redact_query_in_access_log {
            "redacted"
        } else {
            "logged in full"
        };
        match (&a.destination, a.on) {
            (_, false) => writeln!(f, "access log: off")?,
            (AccessDestination::Stderr, true) => writeln!(
                f,
                "access log: {} to stderr, query strings {query}",
                a.format.name()
            )?,
            (AccessDestination::File(path), true) => writeln!(
                f,
                "access log: {} to {} (reopened on SIGUSR1), query strings {query}",
                a.format.name(),
                path.display()
            )?,
        }
        let h = &self.headers;
        writeln!(
            f,
            "request headers: head up to {} (431 beyond), names with '_' {}, upgrades {}",
            size(u64::from(l.request_max_header_size)),
            if h.underscores_in_headers {
                "passed on unless they fold onto a managed or TLV header"
            } else {
                "dropped"
            },
            if h.upgrade_protocols.is_empty() {
                "none".to_owned()
            } else {
                h.upgrade_protocols.join(", ")
            },
        )?;

        writeln!(f, "apps:")?;
        let no_sni = self.no_sni_app().map(|a| a.name.as_str());
        for app in &self.apps {
            write_app(
                f,
                app,
                self.default_app.as_deref() == Some(app.name.as_str()),
                no_sni == Some(app.name.as_str()),
            )?;
        }
        if !self.listeners.tls.is_empty() {
            match no_sni {
                Some(name) => write!(f, "TLS: ClientHellos without SNI get app {name}")?,
                None => write!(
                    f,
                    "TLS: ClientHellos without SNI are refused (unrecognized_name; set default_tls_app)"
                )?,
            }
            write!(
                f,
                "; unknown SNI is refused (unrecognized_name); session tickets "
            )?;
            match &self.tls_ticket_key_file {
                Some(path) => writeln!(f, "from {}", path.display())?,
                None => writeln!(f, "with keys of this process's own (not shared)")?,
            }
        }

        match &self.proxy_protocol {
            None => writeln!(
                f,
                "proxy protocol: off (the TCP peer is the client); no kernel filter"
            )?,
            Some(pp) => {
                let direct = pp.trust.of_class(Class::Direct);
                let mixed = if pp.accept_v1_mixed_families {
                    "; v1 lines of mixed families accepted"
                } else {
                    ""
                };
                if direct.is_empty() {
                    writeln!(
                        f,
                        "proxy protocol: required on every connection, first byte within {:?}, \
                         header within {:?} of it{mixed}",
                        pp.first_byte_timeout, pp.timeout
                    )?;
                } else {
                    writeln!(
                        f,
                        "proxy protocol: required from trusted load balancers, first byte within \
                         {:?}, header within {:?} of it{mixed}; refused from direct sources",
                        pp.first_byte_timeout, pp.timeout
                    )?;
                }
                writeln!(
                    f,
                    "  trusted load balancers (class proxy, send a PROXY header): {}",
                    nets(&pp.trust.of_class(Class::Proxy))
                )?;
                if !direct.is_empty() {
                    writeln!(
                        f,
                        "  direct sources (class direct, connect as themselves): {}",
                        nets(&direct)
                    )?;
                    writeln!(
                        f,
                        "  where the lists nest, the longest prefix decides the class"
                    )?;
                }
                let kf = &pp.kernel_filter;
                let ports = self
                    .listeners
                    .ports()
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                match &kf.mode {
                    KernelFilterMode::Off => {
                        writeln!(f, "kernel filter: off (user-space check after accept only)")?;
                    }
                    KernelFilterMode::Socket => writeln!(
                        f,
                        "kernel filter: socket filter on each listening socket (ports {ports}); \
                         classic BPF if eBPF cannot be loaded; {}",
                        if kf.detach_accepted {
                            "detached from each accepted socket"
                        } else {
                            "kept by accepted sockets (detach_accepted = false)"
                        }
                    )?,
                    KernelFilterMode::Xdp {
                        interfaces,
                        xdp_mode,
                    } => writeln!(
                        f,
                        "kernel filter: XDP on {} ({}), SYNs to ports {ports}",
                        interfaces.join(", "),
                        match xdp_mode {
                            XdpMode::Auto => "native, else generic",
                            XdpMode::Native => "native",
                            XdpMode::Generic => "generic",
                        }
                    )?,
                }
                if kf.mode != KernelFilterMode::Off {
                    writeln!(
                        f,
                        "  {}; {}",
                        if kf.required {
                            "required: refuse to start if it cannot be loaded"
                        } else {
                            "optional: run with the user-space check if it cannot be loaded"
                        },
                        if kf.observe_only {
                            "observe only: count what would be dropped, pass it"
                        } else {
                            "drops SYNs from sources of neither class"
                        }
                    )?;
                }
            }
        }
        match self.metrics_listen {
            Some(addr) => writeln!(f, "metrics: http://{addr}/metrics"),
            None => writeln!(f, "metrics: off"),
        }
    }
}

fn write_app(f: &mut fmt::Formatter<'_>, app: &App, default: bool, no_sni: bool) -> fmt::Result {
    write!(f, "  {} (server_name {})", app.name, app.server_name)?;
    if default {
        write!(f, ", default app for plain HTTP")?;
    }
    match &app.tls {
        None => writeln!(f, ", plain HTTP only")?,
        Some(tls) => {
            write!(f, ", TLS with {}", tls.cert_path.display())?;
            if let Some(ca) = &tls.client_ca_path {
                write!(f, ", client certificates from {}", ca.display())?;
            }
            if tls.https_redirection {
                write!(f, ", plain HTTP redirected")?;
            }
            if no_sni {
                write!(f, ", default TLS app (ClientHellos without SNI)")?;
            }
            writeln!(f)?;
        }
    }
    if !app.tlv_headers.is_empty() {
        let mapped: Vec<String> = app
            .tlv_headers
            .iter()
            .map(|h| format!("{} -> {}", h.tlv.key(), h.name))
            .collect();
        writeln!(f, "    PROXY v2 TLVs as headers: {}", mapped.join(", "))?;
    }
    for route in &app.routes {
        write_route(f, route)?;
    }
    Ok(())
}

fn write_route(f: &mut fmt::Formatter<'_>, route: &Route) -> fmt::Result {
    write!(f, "    {}", route.path)?;
    if let Some(replace) = &route.replace_path {
        write!(f, " (as {replace})")?;
    }
    let upstreams: Vec<String> = route
        .upstreams
        .iter()
        .map(|u| match u.send_proxy_protocol {
            None => u.to_string(),
            Some(Version::V1) => format!("{u} (PROXY v1)"),
            Some(Version::V2) => format!("{u} (PROXY v2)"),
        })
        .collect();
    write!(f, " -> {}", upstreams.join(", "))?;
    if route.upstreams.len() > 1 {
        write!(f, " [{}]", route.load_balance)?;
    }
    writeln!(f, "{}", Options(&route.options))
}

struct Options<'a>(&'a UpstreamOptions);

impl fmt::Display for Options<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        if o.host == HostHeader::Upstream {
            f.write_str(", Host set to the upstream")?;
        }
        match o.http_version {
            UpstreamHttp::Auto => {}
            UpstreamHttp::Http11 => f.write_str(", HTTP/1.1 upstream")?,
            UpstreamHttp::Http2 => f.write_str(", HTTP/2 upstream")?,
        }
        if o.forwarded_header {
            f.write_str(", Forwarded header")?;
        }
        if o.upgrade_insecure_requests {
            f.write_str(", upgrade-insecure-requests")?;
        }
        Ok(())
    }
}

/// Bytes, in the largest binary unit that divides them.
fn size(bytes: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

/// Networks, `, `-separated.
fn nets(list: &[ipnet::IpNet]) -> String {
    list.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
