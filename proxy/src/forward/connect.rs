//! The upstream connector chain, in the order bytes go on the wire: TCP (hyper-util's
//! `HttpConnector`: DNS, `upstream_connect_timeout`, `TCP_NODELAY`), then the PROXY header
//! when the upstream takes one (before TLS, as receivers expect it), then TLS (rustls, ring
//! provider, upstream certificates verified against the Mozilla roots of webpki-roots or the
//! roots given) with the ALPN offer of the request's [`Protocol`]. Each connection takes a
//! [`Slot`] under `max_upstream_connections` before it connects and holds it for its life.
//! What it hands back is the IO and whether TLS chose h2; the pool does the HTTP handshake.

use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tower_service::Service;

use super::client::{Protocol, UpstreamError};
use super::slots::{Slot, Slots, SlotsFull};

/// Where a connection takes its [`Slot`]: the process-wide cap and how long to wait at it.
#[derive(Clone, Debug)]
pub(super) struct Capped {
    pub(super) slots: Arc<Slots>,
    pub(super) wait: Duration,
}

impl Capped {
    pub(super) async fn slot(&self) -> Result<Slot, SlotsFull> {
        self.slots.take(self.wait).await
    }
}

/// A connected upstream, before its HTTP handshake.
pub(super) enum Stream {
    Plain(TokioIo<TcpStream>),
    /// `h2`: the server chose h2 by ALPN. Boxed: the TLS state is over a kilobyte.
    Tls {
        io: TokioIo<Box<TlsStream<TcpStream>>>,
        h2: bool,
    },
}

/// Makes upstream connections: TCP, PROXY header, TLS.
pub(super) struct Connector {
    http: HttpConnector,
    /// One TLS config per [`Protocol`] (they differ in their ALPN offer), in the order
    /// `Http1`, `Alpn`, `Http2`.
    tls: [TlsConnector; 3],
    /// Bounds the PROXY header and the TLS handshake, as `http` bounds the TCP connect.
    timeout: Duration,
    pub(super) capped: Capped,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("timeout", &self.timeout)
            .field("capped", &self.capped)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stream::Plain(_) => f.write_str("Stream::Plain"),
            Stream::Tls { h2, .. } => f.debug_struct("Stream::Tls").field("h2", h2).finish(),
        }
    }
}

impl Connector {
    /// `upstream_connect_timeout`: what each step of a connect may take.
    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `timeout` bounds each step (`upstream_connect_timeout`) and the wait for a slot;
    /// `roots` replaces the Mozilla roots when given.
    pub(super) fn new(
        timeout: Duration,
        roots: Option<RootCertStore>,
        slots: Arc<Slots>,
    ) -> Result<Connector, rustls::Error> {
        let roots = roots.unwrap_or_else(|| RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
        let tls =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let with_alpn = |protocol: Protocol| {
            let mut config = tls.clone();
            config.alpn_protocols = protocol.alpn();
            TlsConnector::from(Arc::new(config))
        };
        let mut http = HttpConnector::new();
        // The key decides TLS; this connector only makes TCP, whatever the scheme.
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        Ok(Connector {
            http,
            tls: [Protocol::Http1, Protocol::Alpn, Protocol::Http2].map(with_alpn),
            timeout,
            capped: Capped {
                slots,
                wait: timeout,
            },
        })
    }

    /// A connection to the upstream `uri` names, holding `slot`: `header` written first,
    /// then TLS when `tls`, offering what `protocol` speaks.
    pub(super) async fn connect(
        &self,
        uri: &Uri,
        tls: bool,
        protocol: Protocol,
        header: Option<&[u8]>,
    ) -> Result<Stream, UpstreamError> {
        let mut io = self
            .http
            .clone()
            .call(uri.clone())
            .await
            .map_err(|e| UpstreamError::Connect(e.into()))?;
        if header.is_none() && !tls {
            return Ok(Stream::Plain(io));
        }
        let rest = async {
            if let Some(header) = header {
                io.inner_mut()
                    .write_all(header)
                    .await
                    .map_err(UpstreamError::ProxyHeader)?;
            }
            if !tls {
                return Ok(Stream::Plain(io));
            }
            let name = server_name(uri)?;
            let connector = match protocol {
                Protocol::Http1 => &self.tls[0],
                Protocol::Alpn => &self.tls[1],
                Protocol::Http2 => &self.tls[2],
            };
            let stream = connector
                .connect(name, io.into_inner())
                .await
                .map_err(UpstreamError::Tls)?;
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            Ok(Stream::Tls {
                io: TokioIo::new(Box::new(stream)),
                h2,
            })
        };
        tokio::time::timeout(self.timeout, rest)
            .await
            .map_err(|_elapsed| UpstreamError::ConnectTimeout(self.timeout))?
    }
}

/// The name the upstream's certificate must carry: its host, an IP address unbracketed.
fn server_name(uri: &Uri) -> Result<ServerName<'static>, UpstreamError> {
    let host = uri.host().ok_or(UpstreamError::NoAuthority)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned()).map_err(UpstreamError::ServerName)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_hosts_and_unbracketed_addresses() {
        let name = |s: &str| server_name(&s.parse().expect("uri")).expect("a name");
        assert_eq!(
            name("https://app.example:8443/x"),
            ServerName::try_from("app.example").expect("dns")
        );
        assert_eq!(
            name("https://[::1]:8443/"),
            ServerName::try_from("::1").expect("ip")
        );
        assert_eq!(
            name("https://127.0.0.1/"),
            ServerName::try_from("127.0.0.1").expect("ip")
        );
    }
}
