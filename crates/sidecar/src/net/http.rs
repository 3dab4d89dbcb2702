//! The REST client (tokens, validation, channels) on the same TLS settings as the sockets.

use std::{path::Path, time::Duration};

use super::{NetError, client_config, client_config_without_roots};

/// An HTTP client for plain-text REST endpoints only (the emulator): it trusts no roots.
pub fn plain_http_client() -> reqwest::Client {
    rest_client(client_config_without_roots())
        .expect("a client with a preconfigured rustls config always builds")
}

/// An HTTP client for REST calls (tokens, validation, channels) that trusts the same roots
/// as the sockets, on the ring provider. Proxies come from `HTTPS_PROXY`/`NO_PROXY`.
pub fn http_client(ca_file: Option<&Path>) -> Result<reqwest::Client, NetError> {
    rest_client(client_config(ca_file)?).map_err(|e| NetError::Tls(format!("HTTP client: {e}")))
}

/// The REST client's one set of settings: timeouts, and TLS from `tls`.
fn rest_client(tls: rustls::ClientConfig) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .build()
}
