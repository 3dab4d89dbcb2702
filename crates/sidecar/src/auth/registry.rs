//! [`TokenManagers`]: the pod's token managers, one per credential (platform family, login
//! endpoint, client id), shared by every stream of the pod that uses that credential.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
};

use streamkeeper_api::{StreamSpec, config::Platform};
use tokio::sync::watch;
use url::Url;

use super::{
    ClientBudget, CredentialFiles, Grant, RefreshHook, RefreshNow, TokenError, TokenSource,
    TokenView,
    manager::{SharedSpec, spawn_manager},
};

/// Which credential a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CredentialKey {
    /// Streams of one family share tokens (cxone-dfo and cxone-aah do).
    family: &'static str,
    /// The token host.
    login: Url,
    /// The client id or access key id.
    client_id: String,
    /// The CA file the token host is trusted by (system roots: none): the manager's REST client
    /// is the first stream's, so streams that trust differently must not share it.
    trust: Option<std::path::PathBuf>,
}

impl CredentialKey {
    fn family(platform: Platform) -> &'static str {
        match platform {
            Platform::Generic => "generic",
            Platform::Genesys => "genesys",
            Platform::CxoneDfo | Platform::CxoneAah => "cxone",
        }
    }
}

struct Shared {
    key: CredentialKey,
    view: watch::Receiver<TokenView>,
    refresh: RefreshNow,
    spec: SharedSpec,
    budget: Arc<ClientBudget>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One stream's hold on its credential's token manager; the manager runs while any is held.
#[derive(Clone)]
pub struct TokenLease {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TokenLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenLease")
            .field("family", &self.shared.key.family)
            .field("login", &self.shared.key.login.as_str())
            .finish_non_exhaustive()
    }
}

impl TokenLease {
    /// The token view every stream on this credential watches.
    pub fn view(&self) -> watch::Receiver<TokenView> {
        self.shared.view.clone()
    }

    /// Reports a refused token to the manager.
    pub fn refresh(&self) -> RefreshNow {
        self.shared.refresh.clone()
    }

    /// The credential's share of the platform's limits (Genesys channels and requests).
    pub fn budget(&self) -> Arc<ClientBudget> {
        Arc::clone(&self.shared.budget)
    }

    /// Whether two leases share one manager.
    pub fn same_manager(&self, other: &TokenLease) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

/// The pod's token managers.
#[derive(Default)]
pub struct TokenManagers {
    managers: Mutex<HashMap<CredentialKey, Weak<Shared>>>,
}

impl std::fmt::Debug for TokenManagers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenManagers")
            .field("live", &self.live())
            .finish()
    }
}

impl TokenManagers {
    /// No managers yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Managers running now.
    pub fn live(&self) -> usize {
        self.lock()
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CredentialKey, Weak<Shared>>> {
        self.managers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The manager of `spec`'s credential, started if none runs. Reads the credential files
    /// (to learn the client id) without blocking the runtime.
    pub async fn lease(
        &self,
        spec: &StreamSpec,
        http: &reqwest::Client,
        hook: RefreshHook,
    ) -> Result<TokenLease, TokenError> {
        let files = CredentialFiles::new(spec.platform, &spec.credentials)?;
        let creds = files.read().await?;
        let login = spec.endpoints.login_url().ok_or_else(|| {
            TokenError::Credentials("endpoints.login (or endpoints.region) is required".into())
        })?;
        let key = CredentialKey {
            family: CredentialKey::family(spec.platform),
            login: login.clone(),
            client_id: creds.client_id,
            trust: spec.tls.as_ref().map(|t| t.ca_file.to_path_buf()),
        };
        let mut managers = self.lock();
        managers.retain(|_, w| w.strong_count() > 0);
        if let Some(shared) = managers.get(&key).and_then(Weak::upgrade) {
            let mut s = shared.spec.lock().unwrap_or_else(|p| p.into_inner());
            s.refresh_lead = s.refresh_lead.max(spec.token.refresh_lead);
            s.retry = s.retry.min(spec.token.retry);
            drop(s);
            return Ok(TokenLease { shared });
        }
        let grant = Grant::for_platform(
            spec.platform,
            http.clone(),
            &login,
            spec.endpoints.api_url().as_ref(),
        )?;
        let shared_spec: SharedSpec = Arc::new(Mutex::new(spec.token));
        let (view, refresh, task) = spawn_manager(
            TokenSource::new(files, grant),
            Arc::clone(&shared_spec),
            hook,
        );
        let shared = Arc::new(Shared {
            key: key.clone(),
            view,
            refresh,
            spec: shared_spec,
            budget: ClientBudget::new(),
            task,
        });
        managers.insert(key, Arc::downgrade(&shared));
        Ok(TokenLease { shared })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ClientCredentials;

    fn spec(dir: &std::path::Path, id: &str, tls: &str) -> StreamSpec {
        let yaml = format!(
            "streams:\n  - {{id: {id}, tenant: t, platform: generic, \
             endpoints: {{api: 'http://127.0.0.1:9', login: 'http://127.0.0.1:9', stream: 'ws://127.0.0.1:9/s'}}, \
             credentials: {{dir: {}}}{tls}}}\n",
            dir.display()
        );
        streamkeeper_api::SidecarConfig::from_yaml(&yaml)
            .expect("config")
            .config
            .streams
            .remove(0)
    }

    #[tokio::test]
    async fn one_manager_per_credential_and_trust() {
        let tmp = streamkeeper_testkit::TempDir::new("registry");
        let dir = tmp.path();
        ClientCredentials::write_dir(dir, "client", "secret").expect("creds");
        let managers = TokenManagers::new();
        let http = crate::net::plain_http_client();
        let hook: RefreshHook = Arc::new(|_| {});
        let a = managers
            .lease(&spec(dir, "cc/a", ""), &http, hook.clone())
            .await
            .expect("a");
        let b = managers
            .lease(&spec(dir, "cc/b", ""), &http, hook.clone())
            .await
            .expect("b");
        let private = managers
            .lease(
                &spec(dir, "cc/c", ", tls: {caFile: /etc/ca.pem}"),
                &http,
                hook,
            )
            .await
            .expect("c");
        assert!(a.same_manager(&b), "one credential, one manager");
        assert!(
            !a.same_manager(&private),
            "a stream trusting another CA gets its own manager (and REST client)"
        );
        assert_eq!(managers.live(), 2);
    }
}
