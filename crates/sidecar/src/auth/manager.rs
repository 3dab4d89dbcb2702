//! The token manager: one task that keeps a valid token on hand, refreshes it `refreshLead`
//! before expiry, keeps the old one while a refresh fails, and tells the session when none is
//! valid.

use std::sync::Arc;

use streamkeeper_api::config::TokenSpec;
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};

use super::{Token, TokenClient, refresh_at, retry_delay};
use crate::metrics::TokenRefreshResult;

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
