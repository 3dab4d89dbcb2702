//! TLS for the emulator: a test CA made at start, a server certificate for loopback signed by
//! it (or, to test refusals, by another CA), and the rustls acceptor.

use std::io;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::config::TlsConfig;

/// What TLS needs at run time.
pub(crate) struct Tls {
    /// Accepts TLS connections with the server certificate.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// The CA certificate clients should trust (PEM).
    pub ca_pem: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

fn tls_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("TLS setup: {e}"))
}

/// A CA certificate (PEM) and its issuer.
fn new_ca(name: &str) -> io::Result<(String, Issuer<'static, KeyPair>)> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "streamkeeper emulator");
    params.key_usages.push(KeyUsagePurpose::KeyCertSign);
    params.key_usages.push(KeyUsagePurpose::CrlSign);
    params.key_usages.push(KeyUsagePurpose::DigitalSignature);
    let key = KeyPair::generate().map_err(tls_err)?;
    let cert = params.self_signed(&key).map_err(tls_err)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

/// Make the CA(s) and the server certificate, and write the CA PEM where asked.
pub(crate) fn setup(cfg: &TlsConfig) -> io::Result<Tls> {
    let (ca_pem, ca) = new_ca("streamkeeper emulator test CA")?;
    let rogue = if cfg.untrusted {
        Some(new_ca("streamkeeper emulator UNTRUSTED CA")?.1)
    } else {
        None
    };
    let signer = rogue.as_ref().unwrap_or(&ca);
    let mut params = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .map_err(tls_err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.use_authority_key_identifier_extension = true;
    params.key_usages.push(KeyUsagePurpose::DigitalSignature);
    params
        .extended_key_usages
        .push(ExtendedKeyUsagePurpose::ServerAuth);
    let key = KeyPair::generate().map_err(tls_err)?;
    let cert = params.signed_by(&key, signer).map_err(tls_err)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der)
        .map_err(tls_err)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    if let Some(path) = &cfg.ca_pem_path {
        std::fs::write(path, &ca_pem)?;
    }
    Ok(Tls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        ca_pem,
    })
}
