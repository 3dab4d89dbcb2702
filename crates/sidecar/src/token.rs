//! OAuth tokens: client credentials from a mounted Secret, the token endpoint, validation, and
//! the refresh schedule.
//!
//! Expiry is tracked on the local monotonic clock from `expires_in` (immune to wall-clock skew,
//! the seed guide's NTP trap). A new token is validated before use; while validation or the
//! endpoint fails, the old token is kept and the refresh retried with exponential backoff. When
//! no valid token is held, the [`TokenView`] says so and the session pauses forwarding.

use std::{fmt, path::Path, sync::Arc, time::Duration};

use serde::Deserialize;
use streamkeeper_api::config::{Credentials, TokenSpec};
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};
use url::Url;

use crate::metrics::TokenRefreshResult;

/// A value that must never reach logs, metrics or errors.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// An OAuth client id and secret.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    /// The client id (not secret, but kept out of logs anyway).
    pub client_id: String,
    /// The client secret.
    pub client_secret: Secret,
}

impl ClientCredentials {
    /// Reads `clientId` and `clientSecret` from the configured directory.
    pub fn load(spec: &Credentials) -> Result<Self, TokenError> {
        let Some(dir) = &spec.dir else {
            return Err(TokenError::Credentials(
                "credentials.secret needs in-cluster Secret access, which this build does not have: \
                 mount the Secret and use credentials.dir"
                    .into(),
            ));
        };
        let read = |name: &str| -> Result<String, TokenError> {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                TokenError::Credentials(format!("cannot read {}: {e}", path.display()))
            })?;
            let value = text.trim().to_owned();
            if value.is_empty() {
                return Err(TokenError::Credentials(format!(
                    "{} is empty",
                    path.display()
                )));
            }
            Ok(value)
        };
        Ok(Self {
            client_id: read("clientId")?,
            client_secret: Secret::new(read("clientSecret")?),
        })
    }

    /// Writes a credentials directory (for the demo and tests).
    pub fn write_dir(dir: &Path, client_id: &str, client_secret: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("clientId"), client_id)?;
        std::fs::write(dir.join("clientSecret"), client_secret)
    }
}

/// An access token and its lifetime on the monotonic clock.
#[derive(Debug, Clone)]
pub struct Token {
    /// The bearer value.
    pub value: Secret,
    /// When it was obtained.
    pub obtained: Instant,
    /// When it expires.
    pub expires: Instant,
}

impl Token {
    /// Whether it can still be used at `now`.
    pub fn valid_at(&self, now: Instant) -> bool {
        now < self.expires
    }
}

/// Why no token could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The credentials could not be read.
    #[error("credentials: {0}")]
    Credentials(String),
    /// The token endpoint refused the client credentials.
    #[error("token endpoint refused the client credentials (HTTP {0})")]
    Refused(u16),
    /// The endpoint asked us to slow down.
    #[error("token endpoint rate limited the request (retry after {0:?})")]
    RateLimited(Option<Duration>),
    /// The new token did not pass validation.
    #[error("new token failed validation (HTTP {0})")]
    Invalid(u16),
    /// Network or server trouble.
    #[error("token endpoint: {0}")]
    Transport(String),
    /// The endpoint answered something that is not a token.
    #[error("token endpoint answered an unusable body: {0}")]
    Malformed(String),
}

impl TokenError {
    /// The `result` label of `streamkeeper_token_refresh_total`.
    pub fn result(&self) -> TokenRefreshResult {
        match self {
            Self::Refused(_) | Self::Credentials(_) => TokenRefreshResult::Refused,
            Self::Invalid(_) => TokenRefreshResult::Invalid,
            Self::RateLimited(_) => TokenRefreshResult::RateLimited,
            Self::Transport(_) | Self::Malformed(_) => TokenRefreshResult::Error,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited(d) => *d,
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

/// Talks to the token endpoint and the validation endpoint.
#[derive(Debug, Clone)]
pub struct TokenClient {
    http: reqwest::Client,
    token_url: Url,
    validate_url: Url,
    creds: ClientCredentials,
}

fn join(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!("{}{}", base.path().trim_end_matches('/'), path);
    url.set_path(&joined);
    url
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

impl TokenClient {
    /// A client for `{login}/oauth/token` and `{api}{validate_path}`.
    pub fn new(
        http: reqwest::Client,
        login: &Url,
        api: &Url,
        validate_path: &str,
        creds: ClientCredentials,
    ) -> Self {
        Self {
            http,
            token_url: join(login, "/oauth/token"),
            validate_url: join(api, validate_path),
            creds,
        }
    }

    /// Client-credentials grant: Basic auth, form body.
    pub async fn fetch(&self) -> Result<Token, TokenError> {
        let obtained = Instant::now();
        let resp = self
            .http
            .post(self.token_url.clone())
            .basic_auth(
                &self.creds.client_id,
                Some(self.creds.client_secret.expose()),
            )
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .map_err(|e| TokenError::Transport(e.without_url().to_string()))?;
        let status = resp.status();
        if status.as_u16() == 429 {
            return Err(TokenError::RateLimited(retry_after(&resp)));
        }
        if status.as_u16() == 400 || status.as_u16() == 401 || status.as_u16() == 403 {
            return Err(TokenError::Refused(status.as_u16()));
        }
        if !status.is_success() {
            return Err(TokenError::Transport(format!("HTTP {status}")));
        }
        let body: TokenResponse = resp
            .json()
            .await
            .map_err(|e| TokenError::Malformed(e.without_url().to_string()))?;
        if body.access_token.is_empty() || body.expires_in == 0 {
            return Err(TokenError::Malformed(
                "empty access_token or zero expires_in".into(),
            ));
        }
        Ok(Token {
            value: Secret::new(body.access_token),
            obtained,
            expires: obtained + Duration::from_secs(body.expires_in),
        })
    }

    /// Proves a token works before it is used.
    pub async fn validate(&self, token: &Token) -> Result<(), TokenError> {
        let resp = self
            .http
            .get(self.validate_url.clone())
            .bearer_auth(token.value.expose())
            .send()
            .await
            .map_err(|e| TokenError::Transport(e.without_url().to_string()))?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            429 => Err(TokenError::RateLimited(retry_after(&resp))),
            s => Err(TokenError::Invalid(s)),
        }
    }

    /// Fetches and validates.
    pub async fn obtain(&self) -> Result<Token, TokenError> {
        let token = self.fetch().await?;
        self.validate(&token).await?;
        Ok(token)
    }
}

/// When to refresh a token: `lead` before expiry, less up to a tenth of the lead of jitter
/// (`unit` in `[0, 1)`) so a fleet does not refresh at one instant; never earlier than half
/// its life, so a lead longer than a short-lived token does not loop.
pub fn refresh_at(token: &Token, lead: Duration, unit: f64) -> Instant {
    let life = token.expires.saturating_duration_since(token.obtained);
    let jitter = (lead / 10).mul_f64(unit.clamp(0.0, 1.0));
    let before = (lead + jitter).min(life / 2);
    token.expires - before
}

/// The retry delay after `failures` consecutive failed refreshes: `retry` doubling, capped at
/// 16 times `retry`, and never below a server's `Retry-After`.
pub fn retry_delay(retry: Duration, failures: u32, retry_after: Option<Duration>) -> Duration {
    let step = retry.saturating_mul(1 << failures.saturating_sub(1).min(4));
    step.max(retry_after.unwrap_or_default())
}

/// What the session sees: the token to use, if a valid one is held.
#[derive(Debug, Clone, Default)]
pub struct TokenView {
    /// The current valid token.
    pub token: Option<Arc<Token>>,
    /// Grows with every new token.
    pub generation: u64,
}

/// Reports each refresh result (to metrics).
pub type RefreshHook = Arc<dyn Fn(TokenRefreshResult) + Send + Sync>;

/// Asks the manager for a new token now (the platform refused the current one).
#[derive(Debug, Clone, Default)]
pub struct RefreshNow(Arc<Notify>);

impl RefreshNow {
    /// Wakes the manager.
    pub fn request(&self) {
        self.0.notify_one();
    }
}

/// Runs one stream's token schedule until the returned receiver's senders are dropped (the
/// task ends when every [`TokenView`] receiver is gone).
pub fn spawn_manager(
    client: TokenClient,
    spec: TokenSpec,
    hook: RefreshHook,
) -> (
    watch::Receiver<TokenView>,
    RefreshNow,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = watch::channel(TokenView::default());
    let now = RefreshNow::default();
    let wake = now.clone();
    let task = tokio::spawn(async move { manage(client, spec, hook, tx, wake).await });
    (rx, now, task)
}

async fn manage(
    client: TokenClient,
    spec: TokenSpec,
    hook: RefreshHook,
    tx: watch::Sender<TokenView>,
    wake: RefreshNow,
) {
    let mut current: Option<Arc<Token>> = None;
    let mut generation = 0u64;
    let mut failures = 0u32;
    let mut next_try = Instant::now();
    loop {
        // Sleep until the refresh is due, the token expires, or the session asks.
        let expiry = current.as_ref().map(|t| t.expires);
        tokio::select! {
            _ = tx.closed() => return,
            _ = wake.0.notified() => {
                // The platform refused the token: it is no longer usable.
                if current.take().is_some() {
                    tx.send_replace(TokenView { token: None, generation });
                }
                next_try = next_try.min(Instant::now());
            }
            _ = tokio::time::sleep_until(next_try) => {}
            _ = async { match expiry { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {
                tracing::warn!("token expired before a new one could be had; forwarding pauses");
                current = None;
                tx.send_replace(TokenView { token: None, generation });
                continue;
            }
        }
        if Instant::now() < next_try {
            continue;
        }
        match client.obtain().await {
            Ok(token) => {
                hook(TokenRefreshResult::Ok);
                failures = 0;
                generation += 1;
                next_try = refresh_at(&token, spec.refresh_lead, rand::random::<f64>());
                let token = Arc::new(token);
                current = Some(Arc::clone(&token));
                tx.send_replace(TokenView {
                    token: Some(token),
                    generation,
                });
                tracing::debug!(generation, "new token in use");
            }
            Err(e) => {
                hook(e.result());
                failures += 1;
                let delay = retry_delay(spec.retry, failures, e.retry_after());
                next_try = Instant::now() + delay;
                tracing::warn!(error = %e, retry_in = ?delay, keeping_old = current.is_some(), "token refresh failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(life: Duration) -> Token {
        let now = Instant::now();
        Token {
            value: Secret::new("t"),
            obtained: now,
            expires: now + life,
        }
    }

    #[test]
    fn secrets_never_print() {
        let c = ClientCredentials {
            client_id: "id".into(),
            client_secret: Secret::new("hunter2"),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn refresh_is_lead_before_expiry_with_bounded_jitter() {
        let t = token(Duration::from_secs(3600));
        let lead = Duration::from_secs(120);
        assert_eq!(refresh_at(&t, lead, 0.0), t.expires - lead);
        assert_eq!(
            refresh_at(&t, lead, 0.5),
            t.expires - Duration::from_secs(126)
        );
        // A lead longer than half a short token's life refreshes at half-life, not in a loop.
        let short = token(Duration::from_secs(60));
        assert_eq!(
            refresh_at(&short, lead, 0.0),
            short.expires - Duration::from_secs(30)
        );
    }

    #[test]
    fn retries_double_from_retry_and_honour_retry_after() {
        let r = Duration::from_secs(30);
        let d: Vec<u64> = (1..=7).map(|n| retry_delay(r, n, None).as_secs()).collect();
        assert_eq!(d, [30, 60, 120, 240, 480, 480, 480]);
        assert_eq!(
            retry_delay(r, 1, Some(Duration::from_secs(59))),
            Duration::from_secs(59)
        );
    }

    #[test]
    fn credentials_load_from_a_directory_and_name_the_missing_file() {
        let dir = std::env::temp_dir().join(format!("sk-creds-{}", std::process::id()));
        ClientCredentials::write_dir(&dir, "id\n", "sec\n").expect("write");
        let spec = Credentials {
            dir: Some(dir.clone()),
            secret: None,
        };
        let c = ClientCredentials::load(&spec).expect("load");
        assert_eq!(
            (c.client_id.as_str(), c.client_secret.expose()),
            ("id", "sec")
        );
        std::fs::remove_file(dir.join("clientSecret")).expect("rm");
        let err = ClientCredentials::load(&spec).expect_err("missing");
        assert!(err.to_string().contains("clientSecret"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
