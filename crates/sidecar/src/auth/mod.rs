//! Tokens: credentials from a mounted Secret, the platforms' grants and validation, the
//! refresh schedule, and one manager per credential shared by the pod's streams.
//!
//! Expiry is tracked on the local monotonic clock from `expires_in` (immune to wall-clock skew,
//! the seed guide's NTP trap). A new token is validated before use; while validation or the
//! endpoint fails, the old token is kept and the refresh retried with exponential backoff. When
//! no valid token is held, the [`TokenView`] says so and the sessions pause forwarding.
//!
//! - `secret.rs`: [`Secret`]
//! - `credentials.rs`: [`CredentialFiles`], [`ClientCredentials`], read for every grant
//! - `token.rs`: [`Token`], [`TokenError`]
//! - `client.rs`: [`OAuthClient`], the client-credentials grant (generic, genesys)
//! - `cxone.rs`: [`CxoneClient`], OIDC discovery, access key, refresh grant, userinfo
//! - `grant.rs`: [`TokenSource`], one credential's way to a validated token
//! - `schedule.rs`: [`refresh_at`], [`retry_delay`] (pure)
//! - `manager.rs`: [`spawn_manager`], [`TokenView`], [`RefreshNow`]
//! - `registry.rs`: [`TokenManagers`], one manager per credential, [`TokenLease`]
//! - `budget.rs`: [`ClientBudget`], the credential's Genesys channels and request pace

mod budget;
mod client;
mod credentials;
mod cxone;
mod grant;
mod manager;
mod registry;
mod schedule;
mod secret;
mod token;

pub use budget::{ClientBudget, GENESYS_CHANNELS_PER_CLIENT, TokenKey};
pub use client::OAuthClient;
pub(crate) use client::{join, retry_after, transport_error};
pub use credentials::{ClientCredentials, CredentialFiles};
pub use cxone::CxoneClient;
pub use grant::{Grant, TokenSource};
pub use manager::{RefreshHook, RefreshNow, SharedSpec, TokenView, spawn_manager};
pub use registry::{CredentialKey, TokenLease, TokenManagers};
pub use schedule::{refresh_at, retry_delay};
pub use secret::Secret;
pub use token::{Token, TokenError};
