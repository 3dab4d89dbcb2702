//! OAuth tokens: client credentials from a mounted Secret, the token endpoint, validation, and
//! the refresh schedule.
//!
//! Expiry is tracked on the local monotonic clock from `expires_in` (immune to wall-clock skew,
//! the seed guide's NTP trap). A new token is validated before use; while validation or the
//! endpoint fails, the old token is kept and the refresh retried with exponential backoff. When
//! no valid token is held, the [`TokenView`] says so and the session pauses forwarding.
//!
//! - `secret.rs`: [`Secret`]
//! - `credentials.rs`: [`ClientCredentials`] from `credentials.dir`
//! - `token.rs`: [`Token`], [`TokenError`]
//! - `client.rs`: [`TokenClient`], the grant and the validation call
//! - `schedule.rs`: [`refresh_at`], [`retry_delay`] (pure)
//! - `manager.rs`: [`spawn_manager`], [`TokenView`], [`RefreshNow`]

mod client;
mod credentials;
mod manager;
mod schedule;
mod secret;
mod token;

pub use client::TokenClient;
pub use credentials::ClientCredentials;
pub use manager::{RefreshHook, RefreshNow, TokenView, spawn_manager};
pub use schedule::{refresh_at, retry_delay};
pub use secret::Secret;
pub use token::{Token, TokenError};
