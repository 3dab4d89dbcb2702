//! The REST client (tokens, validation, channels) on the same TLS settings and the same proxy
//! decision as the sockets.

use std::time::Duration;

use super::{ProxyPolicy, client_config_without_roots};

/// An HTTP client for plain-text REST endpoints only (the emulator): it trusts no roots and
/// connects directly.
pub fn plain_http_client() -> reqwest::Client {
    rest_client(client_config_without_roots(), &ProxyPolicy::direct())
        .expect("a client with a preconfigured rustls config always builds")
}

/// Idle REST connections kept per host. REST calls come in short bursts (a grant and its
/// validation, a channel and its subscriptions) minutes apart; a pool left unbounded keeps one
/// connection per stream that asked at once (22 KiB each: hyper's dispatch channel and
/// buffers, more with TLS), which at start-up is every stream.
const REST_IDLE_PER_HOST: usize = 4;
/// How long an idle REST connection is kept: long enough for the rest of a burst.
const REST_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// The REST client's one set of settings: timeouts, a small idle pool, TLS from `tls`, and
/// proxies decided by `proxy` (reqwest's own environment rules stay off, so REST and sockets
/// never disagree).
pub(crate) fn rest_client(
    tls: rustls::ClientConfig,
    proxy: &ProxyPolicy,
) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .proxy(proxy.for_reqwest())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .pool_max_idle_per_host(REST_IDLE_PER_HOST)
        .pool_idle_timeout(REST_IDLE_TIMEOUT)
        .build()
}
