//! What a loadable config does not get: keys rpxy knows and trustgate does not implement,
//! and values trustgate replaces. Warnings are returned, never logged here, so the caller
//! decides (log at startup, print for `trustgate check`). One warning per key path.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;

use super::LoadBalance;

/// One thing in the file that trustgate accepts but does not do as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The config file.
    pub file: PathBuf,
    /// The key path, e.g. `experimental.h3` or `apps.web.reverse_proxy[0].load_balance`.
    pub key: String,
    pub kind: WarningKind,
}

/// Why a key is warned about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WarningKind {
    /// An rpxy feature trustgate does not implement; the key (and any table under it)
    /// is ignored.
    Unsupported { feature: &'static str },
    /// A provider name in `trusted_forwarded_proxies`: trustgate ships no provider lists,
    /// so the entry trusts nobody.
    ProviderIgnored { name: String },
    /// A load-balancing method trustgate does not implement, and the one used instead.
    LoadBalanceReplaced {
        method: &'static str,
        instead: LoadBalance,
    },
    /// `tls.acme = true` with no certificate files: the app is left out.
    AcmeAppNotServed,
    /// `tls.acme = true` beside certificate files: the files are used.
    AcmeIgnored,
    /// `ignore_sni_consistency = true`: trustgate always requires SNI and Host to agree.
    SniConsistencyKept,
    /// An app's `tls` table with no `listen_port_tls`: nothing serves TLS, so it is unused.
    TlsUnused,
    /// `tls_ticket_key_file` with no `listen_port_tls`: nothing serves TLS.
    TicketKeysUnused,
    /// rpxy's old name of a key that still works.
    Renamed { new: &'static str },
    /// A `/0` prefix in a trusted list.
    TrustsEveryone { net: IpNet },
    /// `proxy_protocol_tlv_headers` without `[experimental.tcp_recv_proxy_protocol]`: no
    /// connection carries TLVs, so the headers are only ever removed.
    TlvHeadersNeverSet,
    /// `[metrics] listen` on an address other hosts can reach: no kernel filter and no
    /// trust check covers the metrics listener.
    MetricsReachable { addr: SocketAddr },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file.display(), self.key, self.kind)
    }
}

impl fmt::Display for WarningKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WarningKind::Unsupported { feature } => {
                write!(f, "{feature} is not implemented by trustgate; ignored")
            }
            WarningKind::ProviderIgnored { name } => write!(
                f,
                "\"{name}\" is an rpxy provider list, which trustgate does not ship; this entry \
                 trusts nobody: list the provider's networks as CIDRs instead"
            ),
            WarningKind::LoadBalanceReplaced { method, instead } => write!(
                f,
                "load_balance = \"{method}\" is not implemented by trustgate; using \"{instead}\""
            ),
            WarningKind::AcmeAppNotServed => f.write_str(
                "ACME is not implemented by trustgate and this app has no tls_cert_path and \
                 tls_cert_key_path, so the app is not served; give certificate files to serve it",
            ),
            WarningKind::AcmeIgnored => f.write_str(
                "ACME is not implemented by trustgate; the certificate files given are used",
            ),
            WarningKind::SniConsistencyKept => f.write_str(
                "trustgate always requires the TLS server name and the Host header to agree; ignored",
            ),
            WarningKind::TlsUnused => {
                f.write_str("listen_port_tls is not set, so nothing serves TLS; this table is unused")
            }
            WarningKind::TicketKeysUnused => f.write_str(
                "listen_port_tls is not set, so nothing serves TLS; the key file is not read",
            ),
            WarningKind::Renamed { new } => write!(f, "renamed {new} in rpxy; read as {new}"),
            WarningKind::TlvHeadersNeverSet => f.write_str(
                "there is no [experimental.tcp_recv_proxy_protocol], so no connection carries \
                 TLVs: these headers are never set (client-sent ones are still removed)",
            ),
            WarningKind::MetricsReachable { addr } => write!(
                f,
                "{addr} is not a loopback address, and the metrics listener is covered neither \
                 by the kernel filter (which judges only SYNs to the proxy's listeners) nor by \
                 the trusted-proxy check: whoever reaches it reads every counter; bind \
                 127.0.0.1 (or [::1]), or firewall the port"
            ),
            WarningKind::TrustsEveryone { net } => write!(
                f,
                "\"{net}\" trusts every {} source",
                if net.addr().is_ipv4() { "IPv4" } else { "IPv6" }
            ),
        }
    }
}
