//! [`ClientBudget`]: what one platform client (one credential, one token at a time) may use
//! at once, shared by the pod's streams on it: Genesys's live channels and its REST requests
//! per minute.

use std::sync::{Arc, Mutex};

use tokio::{sync::Semaphore, time::Instant};

use crate::pace::Pace;

/// Live channels one Genesys OAuth client may hold: a 21st replaces the oldest.
pub const GENESYS_CHANNELS_PER_CLIENT: usize = 20;

/// One credential's shares of the platform's limits.
#[derive(Debug)]
pub struct ClientBudget {
    /// Live Genesys channels, one permit each, given back when a channel is retired.
    pub channels: Arc<Semaphore>,
    /// Genesys REST requests, paced per token (the limit is per token, and the pod's streams
    /// on a credential share its token): the current token's and the one before it, whose
    /// retired channels are still unsubscribed with it.
    requests: Mutex<Vec<(TokenKey, Pace)>>,
}

impl ClientBudget {
    /// A full budget.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            channels: Arc::new(Semaphore::new(GENESYS_CHANNELS_PER_CLIENT)),
            requests: Mutex::new(Vec::with_capacity(2)),
        })
    }

    /// Waits for a REST request's slot. A slot taken by a request that is then not sent
    /// (its session stopped) is not given back: the pace only runs slower.
    pub async fn request_slot(&self, token: TokenKey) {
        let now = Instant::now();
        let go = {
            let mut paces = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            let i = match paces.iter().position(|(k, _)| *k == token) {
                Some(i) => i,
                None => {
                    // A new token: it replaces the older of the two.
                    paces.truncate(1);
                    paces.insert(0, (token, Pace::genesys()));
                    0
                }
            };
            paces[i].1.reserve(now)
        };
        if go > now {
            tracing::debug!(wait = ?(go - now), "pacing REST requests under the platform's rate limit");
            tokio::time::sleep_until(go).await;
        }
    }
}

/// Which token a request is paced under: a hash, so that no copy of the token is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenKey(u64);

impl TokenKey {
    /// The key of `token`.
    pub fn of(token: &str) -> Self {
        use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
        Self(BuildHasherDefault::<DefaultHasher>::default().hash_one(token))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_past_the_burst_wait_for_their_slot() {
        let budget = ClientBudget::new();
        let t0 = Instant::now();
        for _ in 0..50 {
            budget.request_slot(TokenKey::of("t1")).await;
        }
        assert_eq!(Instant::now(), t0, "the burst goes at once");
        budget.request_slot(TokenKey::of("t1")).await;
        budget.request_slot(TokenKey::of("t1")).await;
        assert_eq!(Instant::now() - t0, Duration::from_millis(500));
        // A new token has a limit of its own; the old one's pace is kept for its last calls.
        let t1 = Instant::now();
        for _ in 0..50 {
            budget.request_slot(TokenKey::of("t2")).await;
        }
        assert_eq!(Instant::now(), t1);
        budget.request_slot(TokenKey::of("t1")).await;
        assert_eq!(Instant::now() - t1, Duration::from_millis(250));
    }
}
