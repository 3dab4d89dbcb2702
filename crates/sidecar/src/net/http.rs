//! The REST client (tokens, validation, channels) on the same TLS settings and the same proxy
//! decision as the sockets, with a refused tunnel reported naming the proxy.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use super::{NetError, ProxyPolicy, client_config_without_roots};

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
    let mut builder = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .proxy(proxy.for_reqwest())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .pool_max_idle_per_host(REST_IDLE_PER_HOST)
        .pool_idle_timeout(REST_IDLE_TIMEOUT);
    // Without a proxy there is no tunnel to name, and reqwest keeps its unlayered connector.
    if let Some(p) = proxy.tunnel_proxy() {
        builder = builder.connector_layer(NameTheProxy {
            proxy: Arc::from(p.authority()),
        });
    }
    builder.build()
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Wraps reqwest's connector so that a failed `CONNECT` tunnel says which proxy refused it:
/// reqwest (hyper-util) reports only "tunnel error: proxy authorization required", which
/// leaves an operator guessing where the 407 came from. Tunnels are made for `https` URLs
/// only, and those go through the one `HTTPS_PROXY`, so that is the proxy named.
#[derive(Clone)]
struct NameTheProxy {
    proxy: Arc<str>,
}

impl<S> tower_layer::Layer<S> for NameTheProxy {
    type Service = NamedProxyErrors<S>;

    fn layer(&self, inner: S) -> Self::Service {
        NamedProxyErrors {
            inner,
            proxy: self.proxy.clone(),
        }
    }
}

/// The connector of [`NameTheProxy`].
#[derive(Clone)]
struct NamedProxyErrors<S> {
    inner: S,
    proxy: Arc<str>,
}

impl<S, R> tower_service::Service<R> for NamedProxyErrors<S>
where
    S: tower_service::Service<R, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let connecting = self.inner.call(req);
        let proxy = Arc::clone(&self.proxy);
        Box::pin(async move { connecting.await.map_err(|e| name_the_proxy(e, &proxy)) })
    }
}

/// hyper-util's tunnel error is not exported; its text is its contract.
const TUNNEL_ERROR: &str = "tunnel error: ";

fn name_the_proxy(err: BoxError, proxy: &str) -> BoxError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&*err);
    while let Some(e) = cur {
        let text = e.to_string();
        if let Some(what) = text.strip_prefix(TUNNEL_ERROR) {
            let reason = match what {
                "proxy authorization required" => "answered CONNECT with HTTP 407 (proxy \
                    authentication required): give the proxy URL credentials \
                    (http://user:password@host:port), or check them"
                    .to_owned(),
                "unsuccessful" => "refused the CONNECT tunnel (a non-200 answer)".to_owned(),
                other => {
                    let cause = e.source().map(|s| format!(": {s}")).unwrap_or_default();
                    format!("CONNECT tunnel failed: {other}{cause}")
                }
            };
            return Box::new(NetError::Proxy {
                proxy: proxy.to_owned(),
                reason,
            });
        }
        cur = e.source();
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Tunnel(&'static str);

    impl std::fmt::Display for Tunnel {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{TUNNEL_ERROR}{}", self.0)
        }
    }

    impl std::error::Error for Tunnel {}

    #[test]
    fn a_refused_tunnel_names_the_proxy_and_other_errors_pass_through() {
        let named = name_the_proxy(
            Box::new(Tunnel("proxy authorization required")),
            "proxy.corp:3128",
        );
        let said = named.to_string();
        assert!(
            said.contains("proxy.corp:3128") && said.contains("407"),
            "{said}"
        );
        let refused = name_the_proxy(Box::new(Tunnel("unsuccessful")), "proxy.corp:3128");
        assert!(
            refused
                .to_string()
                .starts_with("proxy proxy.corp:3128: refused")
        );
        let other = name_the_proxy(
            Box::new(std::io::Error::other("connection refused")),
            "proxy.corp:3128",
        );
        assert_eq!(other.to_string(), "connection refused");
    }
}
