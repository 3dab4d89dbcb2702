//! [`Token`]: an access token with its lifetime on the monotonic clock, and [`TokenError`].

use std::time::Duration;

use tokio::time::Instant;

use super::Secret;
use crate::metrics::TokenRefreshResult;

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

    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited(d) => *d,
            _ => None,
        }
    }
}
