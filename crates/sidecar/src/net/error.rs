//! [`NetError`]: why an upstream connection could not be made.

use std::{io, net::SocketAddr, path::PathBuf, time::Duration};

/// Why a connection could not be made. Messages name the target; never credentials.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Name resolution failed.
    #[error("resolving {host}: {source}")]
    Resolve {
        /// The name being resolved.
        host: String,
        /// The resolver's error.
        source: io::Error,
    },
    /// The name resolved to no addresses.
    #[error("{host} resolved to no addresses")]
    NoAddress {
        /// The name that was resolved.
        host: String,
    },
    /// Creating or configuring the socket failed.
    #[error("{what}: {source}")]
    Socket {
        /// What was being done, e.g. "setting TCP_USER_TIMEOUT".
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The TCP connect failed.
    #[error("connecting to {target} ({addr}): {source}")]
    Connect {
        /// `host:port` as asked for.
        target: String,
        /// The address tried.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// A step did not finish in time.
    #[error("{stage} {target} timed out after {after:?}")]
    Timeout {
        /// What timed out, e.g. "connecting to".
        stage: &'static str,
        /// `host:port` (or the address) involved.
        target: String,
        /// The bound that ran out.
        after: Duration,
    },
    /// A proxy variable is set but unusable (the value is not shown: it may hold a password).
    #[error("proxy setting {var} is not usable: {reason}")]
    ProxyConfig {
        /// The environment variable, e.g. `HTTPS_PROXY`.
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The proxy answered `CONNECT` with a non-2xx status.
    #[error("proxy {proxy} refused CONNECT to {target} with HTTP {status}")]
    ProxyStatus {
        /// The proxy's `host:port`.
        proxy: String,
        /// The tunnel target `host:port`.
        target: String,
        /// The proxy's status code (407: proxy authentication refused).
        status: u16,
    },
    /// The proxy exchange failed otherwise (I/O, malformed answer).
    #[error("proxy {proxy}: {reason}")]
    Proxy {
        /// The proxy's `host:port`.
        proxy: String,
        /// What went wrong.
        reason: String,
    },
    /// The CA file could not be used.
    #[error("CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// TLS setup failed (no usable roots, bad server name, configuration).
    #[error("TLS: {0}")]
    Tls(String),
    /// The TLS handshake failed; a refused certificate (untrusted issuer, wrong name,
    /// expired) is said so in `detail`.
    #[error("TLS handshake with {host}: {detail}")]
    TlsHandshake {
        /// The server name.
        host: String,
        /// The error, as rustls reports it through I/O.
        source: io::Error,
        /// What went wrong, for people: "the server certificate was refused: it is not
        /// trusted ..." when verification failed.
        detail: String,
    },
}
