//! In-process handshakes against rustls's client over a small in-memory pipe (so the
//! ClientHello arrives in pieces): which app a hello gets, the alert for the ones no app
//! serves, and resumption across a rebuilt [`Tls`] and between two sharing a key file.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{AlertDescription, ClientConfig, HandshakeKind, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use super::*;
use crate::config::parse_str;

const KEY_A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const KEY_B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

/// Certificates for `a.example` and `b.example` in a temporary directory, and a root
/// store trusting both.
struct Lab {
    dir: tempfile::TempDir,
    roots: RootCertStore,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut roots = RootCertStore::empty();
        for name in ["a.example", "b.example"] {
            let certified =
                rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("certificate");
            std::fs::write(dir.path().join(format!("{name}.crt")), certified.cert.pem())
                .expect("write");
            std::fs::write(
                dir.path().join(format!("{name}.key")),
                certified.signing_key.serialize_pem(),
            )
            .expect("write");
            roots.add(certified.cert.der().clone()).expect("root");
        }
        Lab { dir, roots }
    }

    /// A config with TLS apps `a` and `b` and `top` at the top level.
    fn config(&self, top: &str) -> Config {
        let dir = self.dir.path().display();
        let mut text = format!("listen_port_tls = 8443\n{top}\n");
        for app in ["a", "b"] {
            text.push_str(&format!(
                "[apps.{app}]\nserver_name = \"{app}.example\"\n\
                 tls = {{ tls_cert_path = \"{dir}/{app}.example.crt\", tls_cert_key_path = \"{dir}/{app}.example.key\" }}\n\
                 [[apps.{app}.reverse_proxy]]\nupstream = [{{ location = \"127.0.0.1:1\" }}]\n"
            ));
        }
        parse_str(&text, "test.toml").expect("valid").0
    }

    fn key_file(&self, keys: &[&str]) -> String {
        let path = self.dir.path().join("ticket.keys");
        std::fs::write(&path, keys.join("\n")).expect("write keys");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        format!("tls_ticket_key_file = \"{}\"", path.display())
    }

    fn client(
        &self,
        sni: bool,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> ClientConfig {
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[version])
                .expect("versions")
                .with_root_certificates(self.roots.clone())
                .with_no_client_auth();
        config.enable_sni = sni;
        config
    }
}

/// What a handshake came to on both sides.
#[derive(Debug)]
struct Outcome {
    server: Result<(String, Option<HandshakeKind>), String>,
    client: Result<(), rustls::Error>,
}

/// One handshake of `client` (verifying `name`) with `tls` over a 64-byte pipe; on
/// success the server writes a byte the client reads, so TLS 1.3 tickets arrive.
async fn handshake(tls: &Tls, client: &Arc<ClientConfig>, name: &'static str) -> Outcome {
    let (client_io, server_io) = tokio::io::duplex(64);
    let server = async {
        match tls.accept(server_io).await {
            Ok((mut stream, served)) => {
                let kind = stream.get_ref().1.handshake_kind();
                stream.write_all(b"!").await.expect("write");
                stream.flush().await.expect("flush");
                // Held open until the client has read.
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
                Ok((served, kind))
            }
            Err(err) => Err(err.kind().to_string()),
        }
    };
    let connector = TlsConnector::from(Arc::clone(client));
    let client = async {
        let mut stream = connector
            .connect(ServerName::try_from(name).expect("name"), client_io)
            .await
            .map_err(|e| {
                e.into_inner()
                    .and_then(|inner| inner.downcast::<rustls::Error>().ok())
                    .map_or(rustls::Error::General("no rustls error".into()), |b| *b)
            })?;
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.expect("read");
        stream.shutdown().await.expect("close");
        Ok(())
    };
    let (server, client) = tokio::join!(server, client);
    Outcome { server, client }
}

fn served(outcome: &Outcome) -> (&str, Option<HandshakeKind>) {
    match &outcome.server {
        Ok((name, kind)) => (name.as_str(), *kind),
        Err(e) => panic!("handshake failed: {e}; {outcome:?}"),
    }
}

fn refused_with(outcome: &Outcome, kind: &str) {
    assert_eq!(
        outcome.server.as_ref().err().map(String::as_str),
        Some(kind)
    );
    assert_eq!(
        outcome.client.as_ref().err(),
        Some(&rustls::Error::AlertReceived(
            AlertDescription::UnrecognisedName
        )),
        "{outcome:?}"
    );
}

const TLS13: &rustls::SupportedProtocolVersion = &rustls::version::TLS13;
const TLS12: &rustls::SupportedProtocolVersion = &rustls::version::TLS12;

#[tokio::test]
async fn sni_picks_the_app_and_unknown_names_get_an_alert() {
    let lab = Lab::new();
    let tls = Tls::new(&lab.config(""), None).expect("tls");
    let client = Arc::new(lab.client(true, TLS13));
    assert_eq!(
        served(&handshake(&tls, &client, "b.example").await).0,
        "b.example"
    );
    refused_with(&handshake(&tls, &client, "c.example").await, "unknown_sni");
}

#[tokio::test]
async fn no_sni_gets_the_default_tls_app_else_an_alert() {
    let lab = Lab::new();
    let client = Arc::new(lab.client(false, TLS13));
    // Two TLS apps, no default: refused.
    let tls = Tls::new(&lab.config(""), None).expect("tls");
    refused_with(&handshake(&tls, &client, "a.example").await, "no_sni");
    // default_tls_app: its certificate (the client verifies it as b.example).
    let tls = Tls::new(&lab.config("default_tls_app = \"b\""), None).expect("tls");
    assert_eq!(
        served(&handshake(&tls, &client, "b.example").await).0,
        "b.example"
    );
    let wrong = handshake(&tls, &client, "a.example").await;
    assert!(
        wrong.client.is_err(),
        "b's certificate is not a's: {wrong:?}"
    );
}

#[tokio::test]
async fn sessions_resume_on_a_rebuilt_tls_for_tls13_and_tls12() {
    let lab = Lab::new();
    for version in [TLS13, TLS12] {
        let config = lab.config("");
        let before = Tls::new(&config, None).expect("tls");
        let client = Arc::new(lab.client(true, version));
        let first = handshake(&before, &client, "a.example").await;
        assert_eq!(served(&first).1, Some(HandshakeKind::Full));
        // A reload: a new Tls from the old one.
        let after = Tls::new(&config, Some(&before)).expect("tls");
        let second = handshake(&after, &client, "a.example").await;
        assert_eq!(
            served(&second).1,
            Some(HandshakeKind::Resumed),
            "{version:?}"
        );
        // A process of its own (no key file) does not know the session.
        let stranger = Tls::new(&config, None).expect("tls");
        let third = handshake(&stranger, &client, "a.example").await;
        assert_eq!(served(&third).1, Some(HandshakeKind::Full), "{version:?}");
    }
}

#[tokio::test]
async fn a_session_without_sni_does_not_resume_on_another_default_app() {
    // rustls's own check compares the SNI, which is absent both times: only the scope
    // keeps a's session from resuming on b when a reload makes b the default.
    let lab = Lab::new();
    for version in [TLS13, TLS12] {
        let mut client = lab.client(false, version);
        client
            .dangerous()
            .set_certificate_verifier(Arc::new(AnyCertificate));
        let client = Arc::new(client);
        let before = Tls::new(&lab.config("default_tls_app = \"a\""), None).expect("tls");
        let first = handshake(&before, &client, "x.example").await;
        assert_eq!(served(&first), ("a.example", Some(HandshakeKind::Full)));
        let same = Tls::new(&lab.config("default_tls_app = \"a\""), Some(&before)).expect("tls");
        let resumed = handshake(&same, &client, "x.example").await;
        assert_eq!(
            served(&resumed),
            ("a.example", Some(HandshakeKind::Resumed))
        );
        let moved = Tls::new(&lab.config("default_tls_app = \"b\""), Some(&same)).expect("tls");
        let other = handshake(&moved, &client, "x.example").await;
        assert_eq!(
            served(&other),
            ("b.example", Some(HandshakeKind::Full)),
            "{version:?}"
        );
    }
}

/// Accepts any server certificate: for the test that needs one client to meet two apps
/// under one name.
#[derive(Debug)]
struct AnyCertificate;

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test]
async fn instances_sharing_a_key_file_resume_each_others_sessions_across_rotation() {
    let lab = Lab::new();
    for version in [TLS13, TLS12] {
        let one = Tls::new(&lab.config(&lab.key_file(&[KEY_A])), None).expect("tls");
        let two = Tls::new(&lab.config(&lab.key_file(&[KEY_A])), None).expect("tls");
        assert_eq!(two.ticket_keys(), Some(1));
        let client = Arc::new(lab.client(true, version));
        assert_eq!(
            served(&handshake(&one, &client, "a.example").await).1,
            Some(HandshakeKind::Full)
        );
        assert_eq!(
            served(&handshake(&two, &client, "a.example").await).1,
            Some(HandshakeKind::Resumed),
            "{version:?}"
        );
        // Rotated to B alone: A is kept from the runtime before, so A's tickets open.
        let client = Arc::new(lab.client(true, version));
        assert_eq!(
            served(&handshake(&one, &client, "a.example").await).1,
            Some(HandshakeKind::Full)
        );
        let rotated = Tls::new(&lab.config(&lab.key_file(&[KEY_B])), Some(&one)).expect("tls");
        assert_eq!(rotated.ticket_keys(), Some(2));
        assert_eq!(
            served(&handshake(&rotated, &client, "a.example").await).1,
            Some(HandshakeKind::Resumed),
            "{version:?}"
        );
    }
}

#[test]
fn a_key_file_others_can_read_fails_the_build() {
    let lab = Lab::new();
    let config = lab.config(&lab.key_file(&[KEY_A]));
    let path = config.tls_ticket_key_file.clone().expect("set");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let err = match Tls::new(&config, None) {
        Err(err) => err,
        Ok(_) => panic!("a group-readable key file was accepted"),
    };
    assert!(err.to_string().contains("chmod 600"), "{err}");
    assert!(path.starts_with(Path::new(lab.dir.path())));
}

#[test]
fn chacha_is_served_first_only_to_clients_that_put_it_first() {
    use CipherSuite::*;
    assert!(prefers_chacha(&[
        TLS13_CHACHA20_POLY1305_SHA256,
        TLS13_AES_256_GCM_SHA384
    ]));
    assert!(!prefers_chacha(&[
        TLS13_AES_128_GCM_SHA256,
        TLS13_CHACHA20_POLY1305_SHA256
    ]));
    // Suites trustgate lacks (GREASE, the renegotiation SCSV) are skipped.
    assert!(prefers_chacha(&[
        CipherSuite::Unknown(0x0a0a),
        TLS_EMPTY_RENEGOTIATION_INFO_SCSV,
        TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ]));
    assert!(!prefers_chacha(&[]));
    let order = |chacha| -> Vec<CipherSuite> {
        provider(chacha)
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect()
    };
    assert_eq!(
        order(false)[..3],
        [
            TLS13_AES_256_GCM_SHA384,
            TLS13_AES_128_GCM_SHA256,
            TLS13_CHACHA20_POLY1305_SHA256
        ]
    );
    assert_eq!(order(true)[0], TLS13_CHACHA20_POLY1305_SHA256);
    assert_eq!(order(true)[3], TLS13_AES_256_GCM_SHA384);
}
