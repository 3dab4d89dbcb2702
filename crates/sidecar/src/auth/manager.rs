//! The token manager: one task per credential that keeps a valid token on hand, refreshes it
//! `refreshLead` before expiry, keeps the old one while a refresh fails, and tells the
//! sessions when none is valid. Every stream on the credential watches the same
//! [`TokenView`], so ten streams make one grant per rotation, not ten.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};

use streamkeeper_api::config::TokenSpec;
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};

use super::{Token, TokenSource, refresh_at, retry_delay};
use crate::metrics::TokenRefreshResult;

/// What the sessions see: the token to use, if a valid one is held.
#[derive(Debug, Clone, Default)]
pub struct TokenView {
    /// The current valid token.
    pub token: Option<Arc<Token>>,
    /// Grows with every new token.
    pub generation: u64,
}

/// Reports each refresh result (to metrics).
pub type RefreshHook = Arc<dyn Fn(TokenRefreshResult) + Send + Sync>;

/// Tells the manager the platform refused a token, so it gets another now.
#[derive(Debug, Clone, Default)]
pub struct RefreshNow {
    wake: Arc<Notify>,
    /// The newest generation a platform refused.
    refused: Arc<AtomicU64>,
}

impl RefreshNow {
    /// The platform refused the token of `generation`: if it is still the current one, it is
    /// dropped and a new one fetched at once. Many streams refusing the same generation make
    /// one refresh; a refusal of an older generation changes nothing.
    pub fn refused(&self, generation: u64) {
        self.refused.fetch_max(generation, Ordering::Relaxed);
        self.wake.notify_one();
    }
}

/// The refresh schedule the manager follows; the pod widens it as streams with other
/// settings join (the longest lead, the shortest retry).
pub type SharedSpec = Arc<Mutex<TokenSpec>>;

/// Runs one credential's token schedule until every [`TokenView`] receiver is gone.
pub fn spawn_manager(
    source: TokenSource,
    spec: SharedSpec,
    hook: RefreshHook,
) -> (
    watch::Receiver<TokenView>,
    RefreshNow,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = watch::channel(TokenView::default());
    let now = RefreshNow::default();
    let wake = now.clone();
    let task = tokio::spawn(async move { manage(source, spec, hook, tx, wake).await });
    (rx, now, task)
}

async fn manage(
    mut source: TokenSource,
    spec: SharedSpec,
    hook: RefreshHook,
    tx: watch::Sender<TokenView>,
    wake: RefreshNow,
) {
    let mut current: Option<Arc<Token>> = None;
    let mut generation = 0u64;
    let mut failures = 0u32;
    let mut next_try = Instant::now();
    loop {
        // Sleep until the refresh is due, the token expires, or a session reports a refusal.
        let expiry = current.as_ref().map(|t| t.expires);
        tokio::select! {
            _ = tx.closed() => return,
            _ = wake.wake.notified() => {
                if wake.refused.load(Ordering::Relaxed) >= generation && current.take().is_some() {
                    // The platform refused the current token: it is no longer usable.
                    tx.send_replace(TokenView { token: None, generation });
                    next_try = next_try.min(Instant::now());
                }
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
        let spec = *spec.lock().unwrap_or_else(|p| p.into_inner());
        match source.obtain().await {
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
