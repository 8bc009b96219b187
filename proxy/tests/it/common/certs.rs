//! Every certificate the tests and `cargo xtask bench` use, made in process with rcgen:
//! self-signed ones for a name, and a CA with a server and a client certificate for the
//! real peers (HAProxy, curl). P-256 keys, X.509 v3 (rustls refuses v1). The bench
//! includes this file through `#[path]`, so it needs nothing but rcgen and std.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, CertifiedKey, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// A self-signed certificate for `name`, in its subject alternative names (as an IP
/// address when `name` parses as one, a DNS name otherwise) and as its Common Name.
pub fn self_signed(name: &str) -> Result<CertifiedKey<KeyPair>, rcgen::Error> {
    let signing_key = KeyPair::generate()?;
    let cert = params(name, &[name])?.self_signed(&signing_key)?;
    Ok(CertifiedKey { cert, signing_key })
}

/// [`self_signed`] for `name`, written into `dir` as `NAME.crt` and `NAME.key` (PEM),
/// replacing earlier ones; returns their paths.
pub fn write_self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let certified = self_signed(name).expect("a self-signed certificate");
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    write(&cert, &certified.cert.pem());
    write(&key, &certified.signing_key.serialize_pem());
    (cert, key)
}

/// A CA, a server certificate for HAProxy (certificate and key in one PEM) and a client
/// certificate for curl, both issued by that CA.
pub struct Certificates {
    pub ca: PathBuf,
    pub server_pem: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// The Common Name of the client certificate.
pub const CLIENT_CN: &str = "trustgate-test-client";

/// Makes [`Certificates`] in `dir`: `ca.crt`, `server.pem` (for `localhost`),
/// `client.crt` and `client.key` (for [`CLIENT_CN`]).
pub fn certificates(dir: &Path) -> Certificates {
    let mut ca_params = params("trustgate-test-ca", &[]).expect("CA parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().expect("a CA key");
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("the CA certificate");
    let issue = |cn: &str, sans: &[&str], usage| {
        let mut leaf = params(cn, sans).expect("certificate parameters");
        leaf.extended_key_usages = vec![usage];
        leaf.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("a key");
        let cert = leaf
            .signed_by(&key, &ca)
            .expect("a certificate issued by the CA");
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = issue(
        "localhost",
        &["localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = issue(CLIENT_CN, &[], ExtendedKeyUsagePurpose::ClientAuth);
    let certs = Certificates {
        ca: dir.join("ca.crt"),
        server_pem: dir.join("server.pem"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    };
    write(&certs.ca, &ca.pem());
    write(&certs.server_pem, &format!("{server_cert}{server_key}"));
    write(&certs.client_cert, &client_cert);
    write(&certs.client_key, &client_key);
    certs
}

/// Parameters for a certificate with Common Name `cn` and subject alternative names
/// `sans`, valid from 1975 to 4096 (rcgen's defaults: no test runs near either end).
fn params(cn: &str, sans: &[&str]) -> Result<CertificateParams, rcgen::Error> {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    params.distinguished_name.push(DnType::CommonName, cn);
    Ok(params)
}

fn write(path: &Path, pem: &str) {
    fs::write(path, pem).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
