//! Issued OAuth tokens: random opaque strings with their issue time and expiry.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng as _;
use tokio::time::Instant;

use crate::util::deadline_after;

/// Every token issued and not yet pruned.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    by_token: HashMap<String, Issued>,
    /// Size of the map after the last prune; the next prune runs when it has doubled.
    pruned_at: usize,
}

/// When a token was issued and when it expires.
#[derive(Debug, Clone, Copy)]
struct Issued {
    #[allow(dead_code)] // recorded for debugging; expiry is what the checks use
    at: Instant,
    expires: Instant,
}

impl Tokens {
    /// Issue a new token valid for `ttl`; returns it with its expiry.
    pub fn issue(&mut self, ttl: Duration) -> (String, Instant) {
        let now = Instant::now();
        if self.by_token.len() >= (2 * self.pruned_at).max(1024) {
            self.by_token.retain(|_, t| t.expires > now);
            self.pruned_at = self.by_token.len();
        }
        let token = URL_SAFE_NO_PAD.encode(rand::rng().random::<[u8; 24]>());
        let expires = deadline_after(now, ttl);
        self.by_token
            .insert(token.clone(), Issued { at: now, expires });
        (token, expires)
    }

    /// The expiry of `token` if it was issued here and has not expired.
    pub fn valid(&self, token: &str) -> Option<Instant> {
        let t = self.by_token.get(token)?;
        (t.expires > Instant::now()).then_some(t.expires)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokens_are_unique_and_expire_after_their_ttl() {
        let mut tokens = Tokens::default();
        let (a, _) = tokens.issue(Duration::from_secs(10));
        let (b, _) = tokens.issue(Duration::from_secs(20));
        assert_ne!(a, b);
        assert!(tokens.valid(&a).is_some());
        assert!(tokens.valid("never-issued").is_none());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(tokens.valid(&a).is_none(), "expired at its ttl");
        assert!(tokens.valid(&b).is_some());
        let (_, far) = tokens.issue(Duration::MAX);
        assert!(far > Instant::now(), "a huge ttl saturates");
    }
}
