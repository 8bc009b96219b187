//! TLS on the TLS listener: one rustls `ServerConfig` per app, chosen by the SNI of the
//! ClientHello, so that each app has its own certificate and, where configured, its own
//! client-certificate CA (mutual TLS). A ClientHello without SNI, or naming no app, is
//! refused. ALPN offers h2 and http/1.1. Built from a [`Config`]; a reload builds anew.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::{AppTls, Config};

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
}

/// Why a TLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("the ClientHello named no server (no SNI)")]
    NoSni,
    #[error("the ClientHello named `{0}`, which no app serves")]
    UnknownSni(String),
    #[error("TLS handshake")]
    Io(#[from] io::Error),
}

impl HandshakeError {
    /// A stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoSni => "no_sni",
            Self::UnknownSni(_) => "unknown_sni",
            Self::Io(_) => "handshake",
        }
    }
}

/// The per-SNI server configs.
#[derive(Clone, Default)]
pub struct Tls {
    by_name: HashMap<String, Arc<ServerConfig>>,
}

impl Tls {
    /// Loads the certificate of every app that has one.
    pub fn new(config: &Config) -> Result<Tls, TlsError> {
        let mut by_name = HashMap::new();
        for app in &config.apps {
            if let Some(tls) = &app.tls {
                by_name.insert(
                    app.server_name.clone(),
                    Arc::new(server_config(&app.name, tls)?),
                );
            }
        }
        Ok(Tls { by_name })
    }

    /// Whether any app is served over TLS.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Reads the ClientHello, picks the app's config by SNI and completes the
    /// handshake. Returns the stream and the (lowercased) server name.
    pub async fn accept<S>(&self, stream: S) -> Result<(TlsStream<S>, String), HandshakeError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
        let name = start
            .client_hello()
            .server_name()
            .map(str::to_ascii_lowercase)
            .ok_or(HandshakeError::NoSni)?;
        let config = self
            .by_name
            .get(&name)
            .cloned()
            .ok_or_else(|| HandshakeError::UnknownSni(name.clone()))?;
        let stream = start.into_stream(config).await?;
        Ok((stream, name))
    }
}

fn server_config(app: &str, tls: &AppTls) -> Result<ServerConfig, TlsError> {
    let certs = certificates(app, &tls.cert_path, "the certificate chain")?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_path).map_err(|source| TlsError::Pem {
        app: app.to_string(),
        what: "the private key",
        path: tls.key_path.clone(),
        source,
    })?;
    let builder = ServerConfig::builder();
    let builder = match &tls.client_ca_path {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(app, path, "the client CA")? {
                // Unusable entries are skipped here; an empty store fails in build().
                let _ = roots.add(cert);
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|source| TlsError::ClientCa {
                    app: app.to_string(),
                    path: path.clone(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::Identity {
            app: app.to_string(),
            source,
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
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
