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
    requests: Mutex<[Option<(u64, Pace)>; 2]>,
}

impl ClientBudget {
    /// A full budget.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            channels: Arc::new(Semaphore::new(GENESYS_CHANNELS_PER_CLIENT)),
            requests: Mutex::new([None, None]),
        })
    }

    /// Waits for a REST request's slot. A slot taken by a request that is then not sent
    /// (its session stopped) is not given back: the pace only runs slower.
    pub async fn request_slot(&self, token: &str) {
        let key = token_key(token);
        let now = Instant::now();
        let go = {
            let mut paces = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            if !paces.iter().flatten().any(|(k, _)| *k == key) {
                // A new token: it replaces the older of the two.
                paces.swap(0, 1);
                paces[0] = Some((key, Pace::genesys()));
            }
            let (_, pace) = paces
                .iter_mut()
                .flatten()
                .find(|(k, _)| *k == key)
                .expect("just ensured");
            pace.reserve(now)
        };
        if go > now {
            tracing::debug!(wait = ?(go - now), "pacing REST requests under the platform's rate limit");
            tokio::time::sleep_until(go).await;
        }
    }
}

/// A token's key among the paces (a hash: the token itself is not kept here).
fn token_key(token: &str) -> u64 {
    use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(token)
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
            budget.request_slot("t1").await;
        }
        assert_eq!(Instant::now(), t0, "the burst goes at once");
        budget.request_slot("t1").await;
        budget.request_slot("t1").await;
        assert_eq!(Instant::now() - t0, Duration::from_millis(500));
        // A new token has a limit of its own; the old one's pace is kept for its last calls.
        let t1 = Instant::now();
        for _ in 0..50 {
            budget.request_slot("t2").await;
        }
        assert_eq!(Instant::now(), t1);
        budget.request_slot("t1").await;
        assert_eq!(Instant::now() - t1, Duration::from_millis(250));
    }
}
