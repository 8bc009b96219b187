//! TLS on the TLS listener: one rustls `ServerConfig` per app, chosen by the SNI of the
//! ClientHello, so that each app has its own certificate and, where configured, its own
//! client-certificate CA (mutual TLS). A ClientHello without SNI (or with an IP address
//! for one) gets the `default_tls_app`, else the only TLS app; when there is none, and
//! for an SNI that names no app, the handshake is refused with a fatal
//! `unrecognized_name` alert (`hello`). The server's cipher order wins, but a client that
//! prefers ChaCha20 gets it. ALPN offers h2 and http/1.1. Built from a [`Config`] on every
//! reload; what resumption needs is handed on from the runtime before (`tickets`).

mod hello;
pub(crate) mod tickets;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ServerConfig, WebPkiClientVerifier};
use rustls::{CipherSuite, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::StartHandshake;
use tokio_rustls::server::TlsStream;

use crate::config::{App, AppTls, Config};
use tickets::Resumption;
pub(crate) use tickets::TicketKeyError;

/// Why the TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("app `{app}`: reading {what} from {path}")]
    Pem {
        app: String,
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("app `{app}`: {path} holds no certificate")]
    NoCertificate { app: String, path: PathBuf },
    #[error("app `{app}`: the certificate and key do not make a usable TLS identity")]
    Identity {
        app: String,
        #[source]
        source: rustls::Error,
    },
    #[error("app `{app}`: the client CA file {path} holds no usable CA certificate")]
    ClientCa {
        app: String,
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error(transparent)]
    TicketKeys(#[from] TicketKeyError),
}

/// Why a TLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error(
        "the ClientHello named no server (no SNI, or an IP address), and no default_tls_app serves it"
    )]
    NoSni,
    #[error("the ClientHello named `{0}`, which no app serves")]
    UnknownSni(String),
    #[error("TLS handshake")]
    Io(#[from] io::Error),
}

impl HandshakeError {
    /// A stable label for metrics.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::NoSni => "no_sni",
            Self::UnknownSni(_) => "unknown_sni",
            Self::Io(_) => "handshake",
        }
    }
}

/// The server configs of one app.
struct AppConfigs {
    /// The server's cipher order: AES-256-GCM, AES-128-GCM, ChaCha20-Poly1305.
    aes_first: Arc<ServerConfig>,
    /// ChaCha20-Poly1305 first, for clients that put it first (no AES hardware).
    chacha_first: Arc<ServerConfig>,
}

/// The per-SNI server configs.
pub struct Tls {
    /// By server name (lowercase).
    by_name: HashMap<String, AppConfigs>,
    /// The server name of the app a ClientHello without SNI gets.
    no_sni: Option<String>,
    resumption: Resumption,
}

impl Tls {
    /// Loads the certificate of every app that has one, and the ticket key file. On
    /// reload, `previous` is the TLS settings these replace: its session cache and ticket
    /// keys carry on, so sessions from before the reload resume.
    pub fn new(config: &Config, previous: Option<&Tls>) -> Result<Tls, TlsError> {
        let resumption = Resumption::new(
            config.tls_ticket_key_file.as_deref(),
            previous.map(|p| &p.resumption),
        )?;
        let mut by_name = HashMap::new();
        for app in &config.apps {
            if let Some(tls) = &app.tls {
                by_name.insert(app.server_name.clone(), app_configs(app, tls, &resumption)?);
            }
        }
        Ok(Tls {
            by_name,
            no_sni: config.no_sni_app().map(|a| a.server_name.clone()),
            resumption,
        })
    }

    /// How many keys of the ticket key file open tickets (with the one kept from before a
    /// rotation); `None` without a key file.
    pub fn ticket_keys(&self) -> Option<usize> {
        self.resumption.key_file().map(|k| k.decrypting())
    }

    /// Reads the ClientHello, picks the app's config by SNI and completes the handshake.
    /// Returns the stream and the server name of the app whose certificate was served.
    /// A ClientHello no app serves is answered with a fatal `unrecognized_name` alert.
    pub(crate) async fn accept<S>(
        &self,
        mut stream: S,
    ) -> Result<(TlsStream<S>, String), HandshakeError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let accepted = hello::read(&mut stream).await?;
        let (config, name) = match self.choose(&accepted.client_hello()) {
            Ok(chosen) => chosen,
            Err(refused) => {
                hello::refuse_unrecognized_name(&mut stream).await;
                return Err(refused);
            }
        };
        let stream = StartHandshake::from_parts(accepted, stream)
            .into_stream(config)
            .await?;
        Ok((stream, name))
    }

    /// The config for a ClientHello, and the server name of its app.
    fn choose(
        &self,
        hello: &ClientHello<'_>,
    ) -> Result<(Arc<ServerConfig>, String), HandshakeError> {
        // rustls reports an IP address sent as SNI as no SNI (RFC 6066 forbids them).
        let name = match hello.server_name() {
            Some(sni) => sni.to_ascii_lowercase(),
            None => self.no_sni.clone().ok_or(HandshakeError::NoSni)?,
        };
        let configs = self
            .by_name
            .get(&name)
            .ok_or_else(|| HandshakeError::UnknownSni(name.clone()))?;
        let config = if prefers_chacha(hello.cipher_suites()) {
            &configs.chacha_first
        } else {
            &configs.aes_first
        };
        Ok((Arc::clone(config), name))
    }
}

/// The suites of the ring provider, in the server's order (its own: AES-256-GCM,
/// AES-128-GCM, ChaCha20-Poly1305, for TLS 1.3 and for ECDHE-ECDSA/RSA in TLS 1.2).
fn provider(chacha_first: bool) -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    if chacha_first {
        // A stable sort: the rest keep their order.
        provider
            .cipher_suites
            .sort_by_key(|s| !is_chacha(s.suite()));
    }
    Arc::new(provider)
}

fn is_chacha(suite: CipherSuite) -> bool {
    matches!(
        suite,
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
    )
}

/// Whether the first suite the client offers that trustgate has is a ChaCha20 one: the
/// client says it has no AES hardware, where ChaCha20 is the faster (OpenSSL's
/// `PRIORITIZE_CHACHA`). Otherwise the server's order decides.
fn prefers_chacha(offered: &[CipherSuite]) -> bool {
    let ours = rustls::crypto::ring::DEFAULT_CIPHER_SUITES;
    offered
        .iter()
        .find(|s| ours.iter().any(|o| o.suite() == **s))
        .is_some_and(|s| is_chacha(*s))
}

fn app_configs(app: &App, tls: &AppTls, resumption: &Resumption) -> Result<AppConfigs, TlsError> {
    let name = app.name.as_str();
    let certs = certificates(name, &tls.cert_path, "the certificate chain")?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_path).map_err(|source| TlsError::Pem {
        app: name.to_string(),
        what: "the private key",
        path: tls.key_path.clone(),
        source,
    })?;
    let verifier = match &tls.client_ca_path {
        None => None,
        Some(path) => Some(client_verifier(name, path)?),
    };
    let (ticketer, sessions) = resumption.for_app(app);
    let build = |chacha_first: bool| -> Result<Arc<ServerConfig>, TlsError> {
        let builder = ServerConfig::builder_with_provider(provider(chacha_first))
            .with_protocol_versions(rustls::DEFAULT_VERSIONS)
            .expect("the ring provider has suites for every default protocol version");
        let builder = match &verifier {
            None => builder.with_no_client_auth(),
            Some(verifier) => builder.with_client_cert_verifier(Arc::clone(verifier)),
        };
        let mut config = builder
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|source| TlsError::Identity {
                app: name.to_string(),
                source,
            })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.ignore_client_order = true;
        // TLS 1.3 tickets (rustls sends two per handshake) and TLS 1.2 RFC 5077 tickets;
        // session IDs for TLS 1.2 clients without tickets.
        config.ticketer = Arc::clone(&ticketer);
        config.session_storage = Arc::clone(&sessions);
        Ok(Arc::new(config))
    };
    Ok(AppConfigs {
        aes_first: build(false)?,
        chacha_first: build(true)?,
    })
}

fn client_verifier(app: &str, path: &Path) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(app, path, "the client CA")? {
        // Unusable entries are skipped here; an empty store fails in build().
        let _ = roots.add(cert);
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider(false))
        .build()
        .map_err(|source| TlsError::ClientCa {
            app: app.to_string(),
            path: path.to_path_buf(),
            source,
        })
}

fn certificates(
    app: &str,
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_err = |source| TlsError::Pem {
        app: app.to_string(),
        what,
        path: path.to_path_buf(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            app: app.to_string(),
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests;
