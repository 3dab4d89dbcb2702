//! TLS for sockets and REST calls: rustls on the ring provider, trusting `tls.caFile` or the
//! system roots.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use tokio::net::TcpStream;

use super::{NetError, TlsStream, Transport, addr::bare_host};

/// Where TLS trust comes from for a stream (`tls.caFile` in the sidecar config). The pod
/// loads each source once ([`super::Egress`]) and shares it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// A PEM file of CA certificates that replaces the system roots; `None` uses the system
    /// roots.
    pub ca_file: Option<PathBuf>,
}

/// The rustls config of platform sockets (ring provider, ALPN `http/1.1`) trusting the CA
/// certificates in `ca_file`, or the system roots when `None`. Fails when no root can be
/// loaded.
pub fn socket_tls_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, NetError> {
    client_config(ca_file).map(for_sockets)
}

/// `config` as platform sockets use it: the WebSocket upgrade is HTTP/1.1, so ALPN says so.
pub fn for_sockets(mut config: ClientConfig) -> Arc<ClientConfig> {
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A rustls config that trusts nothing: for clients that only ever speak plain HTTP, so they
/// need no root store (and never pick a process-wide crypto provider).
pub fn client_config_without_roots() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// The rustls client config: `ca_file`'s certificates, or the system roots.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, NetError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let ca_err = |reason: String| NetError::CaFile {
                path: path.to_owned(),
                reason,
            };
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| ca_err(e.to_string()))?;
            for cert in certs {
                let cert = cert.map_err(|e| ca_err(e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| ca_err(format!("unusable certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(ca_err("no PEM certificates in the file".into()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let detail = found
                    .errors
                    .first()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                return Err(NetError::Tls(format!(
                    "no system CA certificates could be loaded{detail}; set tls.caFile"
                )));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| NetError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Runs the TLS handshake for `host` (a DNS name or IP literal) over `tcp`.
pub async fn tls_handshake(
    config: &Arc<ClientConfig>,
    host: &str,
    tcp: TcpStream,
) -> Result<Transport, NetError> {
    let host = bare_host(host);
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| NetError::Tls(format!("{host:?} is not a valid server name: {e}")))?;
    TlsStream::connect(Arc::clone(config), name, tcp)
        .await
        .map(|tls| Transport::Tls(Box::new(tls)))
        .map_err(|source| {
            let detail = match certificate_problem(&source) {
                Some(reason) => format!("the server certificate was refused: {reason}"),
                None => source.to_string(),
            };
            NetError::TlsHandshake {
                host: host.to_owned(),
                source,
                detail,
            }
        })
}

/// What was wrong with the server's certificate, when `err` (or an error it wraps, as
/// reqwest and the socket's TLS layer wrap it) is a certificate verification failure; said so that an
/// operator knows what to fix.
pub fn certificate_problem(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = unwrap_io(e).downcast_ref::<rustls::Error>() {
            return describe_rustls(r);
        }
        cur = e.source();
    }
    None
}

/// The error inside any layers of `io::Error`. reqwest's connector wraps rustls's error in an
/// `io::Error` inside another `io::Error`, and `io::Error::source` skips the wrapped error
/// itself, so walking `source()` alone never meets it.
fn unwrap_io<'a>(
    mut e: &'a (dyn std::error::Error + 'static),
) -> &'a (dyn std::error::Error + 'static) {
    while let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        e = inner;
    }
    e
}

fn describe_rustls(err: &rustls::Error) -> Option<String> {
    use rustls::CertificateError as C;
    let rustls::Error::InvalidCertificate(cert) = err else {
        return None;
    };
    Some(match cert {
        C::UnknownIssuer => "it is not trusted: issued by a CA that is not among the trusted \
             roots (set tls.caFile to the CA that signed it)"
            .to_owned(),
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "it is not valid for this host name".to_owned()
        }
        C::Expired | C::ExpiredContext { .. } => "it has expired".to_owned(),
        C::NotValidYet | C::NotValidYetContext { .. } => "it is not valid yet".to_owned(),
        C::Revoked => "it was revoked".to_owned(),
        C::BadSignature => "its signature does not verify".to_owned(),
        C::BadEncoding => "it is not a well-formed certificate".to_owned(),
        other => format!("it failed verification ({other:?})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_file_errors_name_the_file() {
        let missing = Path::new("/nonexistent/streamkeeper-ca.pem");
        let err = socket_tls_config(Some(missing)).expect_err("missing file");
        assert!(
            err.to_string().contains("/nonexistent/streamkeeper-ca.pem"),
            "{err}"
        );
        let not_pem = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
        let err = socket_tls_config(Some(not_pem)).expect_err("no certificates");
        assert!(err.to_string().contains("no PEM certificates"), "{err}");
        let ca = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/ws/testdata/ca.pem"
        ));
        socket_tls_config(Some(ca)).expect("the test CA loads");
    }

    #[test]
    fn a_refused_certificate_is_found_under_nested_io_errors() {
        // How reqwest's rustls connector reports it: io(Other, io(InvalidData, rustls)).
        let rustls_err = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls_err);
        let outer = std::io::Error::other(inner);
        let said = certificate_problem(&outer).expect("a certificate problem");
        assert!(said.contains("not trusted"), "{said}");
        let other = std::io::Error::other(std::io::Error::other("connection refused"));
        assert_eq!(certificate_problem(&other), None);
    }
}
