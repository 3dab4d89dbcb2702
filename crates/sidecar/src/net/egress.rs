//! [`Egress`]: how the pod reaches the platforms. One proxy decision for REST calls and
//! sockets, TLS trust loaded once per source (the system roots, or each `tls.caFile`) and
//! shared by every stream that uses it, and one REST client per trust (one connection pool).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use super::{
    NetError, ProxyPolicy, client_config, client_config_without_roots, for_sockets,
    http::rest_client,
};

/// What a stream connects with: its TLS config (for `wss`), its REST client, the proxy
/// decision. Cheap to clone; shared by every stream with the same trust.
#[derive(Clone)]
pub struct Route {
    /// The TLS config of `wss://` sockets (`None`: plain-text endpoints only).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The REST client (tokens, validation, channels) with the same trust and proxy.
    pub http: reqwest::Client,
    /// The proxy decision for sockets (the REST client asks the same policy).
    pub proxy: ProxyPolicy,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("tls", &self.tls.is_some())
            .field("proxy", &self.proxy)
            .finish_non_exhaustive()
    }
}

/// Which trust a route uses. A CA file is known by its path and its modification stamp, so
/// a rewritten file is loaded again for streams started after the change.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Trust {
    /// Plain-text endpoints only: no roots needed.
    None,
    /// The system roots.
    System,
    /// A PEM file of CA certificates.
    CaFile(PathBuf, Option<SystemTime>, u64),
}

/// The pod's egress: routes by trust, built on first use.
#[derive(Debug)]
pub struct Egress {
    proxy: ProxyPolicy,
    /// Shared: a stream's supervisor keeps its route for the stream's life, 8 bytes each.
    routes: tokio::sync::Mutex<HashMap<Trust, Arc<Route>>>,
}

impl Egress {
    /// Egress under `proxy`.
    pub fn new(proxy: ProxyPolicy) -> Self {
        Self {
            proxy,
            routes: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The proxy policy.
    pub fn proxy(&self) -> &ProxyPolicy {
        &self.proxy
    }

    /// The route for a stream: `ca_file` or the system roots when it uses TLS (`tls`), no roots
    /// when it does not. Roots are read off the runtime (blocking file I/O), once per trust.
    pub async fn route(&self, ca_file: Option<&Path>, tls: bool) -> Result<Arc<Route>, NetError> {
        self.proxy.check()?;
        let trust = match ca_file {
            Some(path) => {
                let meta = tokio::fs::metadata(path)
                    .await
                    .map_err(|e| NetError::CaFile {
                        path: path.to_owned(),
                        reason: e.to_string(),
                    })?;
                Trust::CaFile(path.to_owned(), meta.modified().ok(), meta.len())
            }
            None if tls => Trust::System,
            None => Trust::None,
        };
        let mut routes = self.routes.lock().await;
        if let Some(route) = routes.get(&trust) {
            return Ok(Arc::clone(route));
        }
        let route = Arc::new(self.build(&trust).await?);
        // An older stamp of the same file is not used by new streams any more.
        if let Trust::CaFile(path, ..) = &trust {
            routes.retain(|t, _| !matches!(t, Trust::CaFile(p, ..) if p == path));
        }
        routes.insert(trust, Arc::clone(&route));
        Ok(route)
    }

    async fn build(&self, trust: &Trust) -> Result<Route, NetError> {
        let config = match trust {
            Trust::None => None,
            Trust::System => Some(load(None).await?),
            Trust::CaFile(path, ..) => Some(load(Some(path.clone())).await?),
        };
        let (tls, rest_tls) = match config {
            Some(config) => (Some(for_sockets(config.clone())), config),
            None => (None, client_config_without_roots()),
        };
        let http = rest_client(rest_tls, &self.proxy)
            .map_err(|e| NetError::Tls(format!("HTTP client: {e}")))?;
        Ok(Route {
            tls,
            http,
            proxy: self.proxy.clone(),
        })
    }
}

/// Loads and parses roots on the blocking pool.
async fn load(ca_file: Option<PathBuf>) -> Result<rustls::ClientConfig, NetError> {
    tokio::task::spawn_blocking(move || client_config(ca_file.as_deref()))
        .await
        .map_err(|e| NetError::Tls(format!("loading roots: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/ws/testdata/ca.pem");

    #[tokio::test]
    async fn each_trust_is_loaded_once_and_shared() {
        let egress = Egress::new(ProxyPolicy::direct());
        let a = egress.route(Some(Path::new(CA)), true).await.expect("ca");
        let b = egress.route(Some(Path::new(CA)), true).await.expect("ca");
        let (Some(a_tls), Some(b_tls)) = (&a.tls, &b.tls) else {
            panic!("a CA file gives a TLS config")
        };
        assert!(Arc::ptr_eq(a_tls, b_tls), "one TLS config per CA file");
        let plain = egress.route(None, false).await.expect("plain");
        assert!(plain.tls.is_none());
        assert_eq!(egress.routes.lock().await.len(), 2);
        let err = egress
            .route(Some(Path::new("/nonexistent/ca.pem")), true)
            .await
            .expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }

    #[tokio::test]
    async fn an_unusable_proxy_setting_refuses_every_route() {
        let egress = Egress::new(ProxyPolicy::from_vars(|v| {
            (v == "HTTPS_PROXY").then(|| "ftp://p:1".to_owned())
        }));
        let err = egress.route(None, false).await.expect_err("bad proxy");
        assert!(err.to_string().contains("HTTPS_PROXY"), "{err}");
    }
}
