//! Issued tokens of every platform: random opaque strings with their platform, client, serial
//! number and expiry, plus CXone refresh tokens.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng as _;
use tokio::time::Instant;

use crate::util::deadline_after;

/// Which platform a token was issued for; endpoints of one platform refuse the others'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Platform {
    /// `POST /oauth/token` with the generic client.
    Generic,
    /// `POST /oauth/token` with a Genesys client.
    Genesys,
    /// CXone access-key or refresh grant.
    Cxone,
}

impl Platform {
    /// The name used in stats and faults.
    pub fn name(self) -> &'static str {
        match self {
            Platform::Generic => "generic",
            Platform::Genesys => "genesys",
            Platform::Cxone => "cxone",
        }
    }
}

/// A token kept by another structure; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Held(pub String);

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<token>")
    }
}

/// What a valid token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenInfo {
    /// Issue order, from 1, across platforms: what stats show instead of the token.
    pub serial: u64,
    /// The platform it belongs to.
    pub platform: Platform,
    /// The client id or access key id it was issued to.
    pub client: String,
    /// When it expires.
    pub expires: Instant,
}

/// One issued access token.
#[derive(Debug, Clone)]
struct Issued {
    info: TokenInfo,
    revoked: bool,
}

/// One issued refresh token.
#[derive(Debug, Clone)]
struct Refresh {
    client: String,
    expires: Instant,
    /// The access token issued with it (revoking that one revokes this one).
    access: String,
}

/// Which tokens a fault hits.
#[derive(Debug, Clone, Default)]
pub(crate) struct TokenSelector {
    /// Only this platform's.
    pub platform: Option<Platform>,
    /// Only this client's.
    pub client: Option<String>,
    /// Only this token.
    pub token: Option<String>,
}

/// Tokens kept for [`Tokens::issued`]: enough for any test run; a long bench run forgets the
/// oldest.
const ISSUED_KEPT: usize = 10_000;

/// Every token issued and not yet pruned. `Debug` shows counts, never tokens.
#[derive(Default)]
pub(crate) struct Tokens {
    by_token: HashMap<String, Issued>,
    refresh: HashMap<String, Refresh>,
    /// Every access and refresh token issued, oldest first (the last [`ISSUED_KEPT`]), for
    /// tests that prove no token leaked: pruning does not forget them.
    issued: VecDeque<String>,
    next_serial: u64,
    /// Size of the maps after the last prune; the next prune runs when one has doubled.
    pruned_at: usize,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("access", &self.by_token.len())
            .field("refresh", &self.refresh.len())
            .field("issued", &self.next_serial)
            .finish()
    }
}

/// A fresh random token string.
fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::rng().random::<[u8; 24]>())
}

impl Tokens {
    /// Issue a generic token valid for `ttl`; returns it with its expiry.
    #[cfg(test)]
    pub fn issue(&mut self, ttl: Duration) -> (String, Instant) {
        let (token, info) = self.issue_for(Platform::Generic, "", ttl);
        (token, info.expires)
    }

    /// Issue a token of `platform` to `client`, valid for `ttl`.
    pub fn issue_for(
        &mut self,
        platform: Platform,
        client: &str,
        ttl: Duration,
    ) -> (String, TokenInfo) {
        let now = Instant::now();
        self.prune(now);
        let token = random_token();
        self.next_serial += 1;
        let info = TokenInfo {
            serial: self.next_serial,
            platform,
            client: client.to_string(),
            expires: deadline_after(now, ttl),
        };
        self.by_token.insert(
            token.clone(),
            Issued {
                info: info.clone(),
                revoked: false,
            },
        );
        self.remember(&token);
        (token, info)
    }

    fn remember(&mut self, token: &str) {
        if self.issued.len() == ISSUED_KEPT {
            self.issued.pop_front();
        }
        self.issued.push_back(token.to_owned());
    }

    /// Every access and refresh token issued, oldest first (the last 10,000).
    pub fn issued(&self) -> Vec<String> {
        self.issued.iter().cloned().collect()
    }

    /// Issue a refresh token for `client` that goes with `access`.
    pub fn issue_refresh(&mut self, client: &str, access: &str, ttl: Duration) -> String {
        let token = random_token();
        self.remember(&token);
        self.refresh.insert(
            token.clone(),
            Refresh {
                client: client.to_string(),
                expires: deadline_after(Instant::now(), ttl),
                access: access.to_string(),
            },
        );
        token
    }

    /// The client of a live refresh token, without using it.
    pub fn refresh_client(&self, token: &str) -> Option<String> {
        let r = self.refresh.get(token)?;
        (r.expires > Instant::now()).then(|| r.client.clone())
    }

    /// Use up a refresh token: the client it belongs to when it was live.
    pub fn redeem_refresh(&mut self, token: &str) -> Option<String> {
        let r = self.refresh.remove(token)?;
        (r.expires > Instant::now()).then_some(r.client)
    }

    /// Drop expired entries when a map has doubled since the last prune.
    fn prune(&mut self, now: Instant) {
        let size = self.by_token.len().max(self.refresh.len());
        if size >= (2 * self.pruned_at).max(1024) {
            self.by_token
                .retain(|_, t| t.info.expires > now && !t.revoked);
            self.refresh.retain(|_, r| r.expires > now);
            self.pruned_at = self.by_token.len().max(self.refresh.len());
        }
    }

    /// The expiry of generic `token` if it was issued here and is live.
    pub fn valid(&self, token: &str) -> Option<Instant> {
        self.check(token, Some(Platform::Generic))
            .map(|i| i.expires)
    }

    /// `token` if it was issued here (for `platform`, when given) and is live.
    pub fn check(&self, token: &str, platform: Option<Platform>) -> Option<TokenInfo> {
        let t = self.by_token.get(token)?;
        let live = !t.revoked && t.info.expires > Instant::now();
        let right = platform.is_none_or(|p| p == t.info.platform);
        (live && right).then(|| t.info.clone())
    }

    /// The serial of `token`, live or not (while it has not been pruned).
    pub fn serial(&self, token: &str) -> Option<u64> {
        self.by_token.get(token).map(|t| t.info.serial)
    }

    /// Make the selected live tokens expire now; with `revoke` also mark them revoked and drop
    /// the refresh tokens issued with them. Returns the serials of those hit.
    pub fn expire(&mut self, sel: &TokenSelector, revoke: bool) -> Vec<u64> {
        let now = Instant::now();
        let mut hit = Vec::new();
        for (token, t) in &mut self.by_token {
            let live = !t.revoked && t.info.expires > now;
            let chosen = sel.platform.is_none_or(|p| p == t.info.platform)
                && sel.client.as_deref().is_none_or(|c| c == t.info.client)
                && sel.token.as_deref().is_none_or(|x| x == token);
            if live && chosen {
                t.info.expires = now;
                t.revoked |= revoke;
                hit.push((token.clone(), t.info.serial));
            }
        }
        if revoke {
            self.refresh
                .retain(|_, r| !hit.iter().any(|(t, _)| *t == r.access));
        }
        let mut serials: Vec<u64> = hit.into_iter().map(|(_, s)| s).collect();
        serials.sort_unstable();
        serials
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

    #[tokio::test(start_paused = true)]
    async fn platforms_are_kept_apart_and_serials_count_up() {
        let mut tokens = Tokens::default();
        let (g, gi) = tokens.issue_for(Platform::Genesys, "gc", Duration::from_secs(60));
        let (c, ci) = tokens.issue_for(Platform::Cxone, "key", Duration::from_secs(60));
        assert_eq!((gi.serial, ci.serial), (1, 2));
        assert!(tokens.valid(&g).is_none(), "a genesys token is not generic");
        assert!(tokens.check(&g, Some(Platform::Cxone)).is_none());
        assert_eq!(
            tokens.check(&c, Some(Platform::Cxone)).map(|i| i.client),
            Some("key".to_string())
        );
        assert!(tokens.check(&g, None).is_some(), "any platform");
        let shown = format!("{tokens:?}");
        assert!(!shown.contains(&g) && !shown.contains(&c), "{shown}");
        let r = tokens.issue_refresh("key", &c, Duration::from_secs(60));
        assert_eq!(tokens.issued(), [g, c, r], "every token issued, in order");
    }

    #[tokio::test(start_paused = true)]
    async fn expire_and_revoke_hit_only_the_selected_tokens() {
        let mut tokens = Tokens::default();
        let (a, _) = tokens.issue_for(Platform::Cxone, "k1", Duration::from_secs(60));
        let (b, _) = tokens.issue_for(Platform::Cxone, "k2", Duration::from_secs(60));
        let ra = tokens.issue_refresh("k1", &a, Duration::from_secs(600));
        let rb = tokens.issue_refresh("k2", &b, Duration::from_secs(600));
        let sel = TokenSelector {
            client: Some("k1".into()),
            ..TokenSelector::default()
        };
        assert_eq!(tokens.expire(&sel, false), [1]);
        assert!(tokens.check(&a, None).is_none());
        assert!(tokens.check(&b, None).is_some());
        assert!(tokens.expire(&sel, false).is_empty(), "already expired");
        let sel = TokenSelector {
            token: Some(b.clone()),
            ..TokenSelector::default()
        };
        assert_eq!(tokens.expire(&sel, true), [2]);
        assert_eq!(tokens.redeem_refresh(&rb), None, "revoked with its token");
        assert_eq!(tokens.redeem_refresh(&ra).as_deref(), Some("k1"));
        assert_eq!(tokens.redeem_refresh(&ra), None, "used up");
    }
}
