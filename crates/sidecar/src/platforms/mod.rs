//! Platform adapters: what differs between Genesys, CXone and the generic dialect, behind one
//! trait, so the session (connect, heartbeat, reap, reconnect, rotate) is written once.
//!
//! An adapter is pure protocol: it builds the socket plan (REST calls before the socket, URL,
//! headers, first messages), the ping, and classifies inbound text. It never owns a socket.

pub mod generic;

use std::time::Duration;

use async_trait::async_trait;
use serde_json::value::RawValue;
use streamkeeper_api::{EventId, StreamSpec, config::Platform};
use url::Url;

/// What the session needs to open one socket.
#[derive(Debug, Clone)]
pub struct SocketPlan {
    /// The socket URL.
    pub url: Url,
    /// Extra upgrade headers (may hold secrets: never logged).
    pub headers: Vec<(&'static str, String)>,
    /// Text frames to send right after the handshake (register, subscribe).
    pub first_frames: Vec<String>,
    /// Whether the socket replays events after `resume_after` (else a reconnect is a `gap`).
    pub replays: bool,
}

/// How the adapter wants pings sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ping {
    /// An RFC 6455 ping frame with this payload.
    Control(Vec<u8>),
    /// An application-level text message.
    Text(String),
}

/// An inbound text or pong frame, classified.
#[derive(Debug)]
pub enum Inbound {
    /// A platform event for the app.
    Event {
        /// Its stable id.
        id: EventId,
        /// Its payload, forwarded byte for byte.
        data: Box<RawValue>,
    },
    /// An answer to our ping (`seq` when the dialect echoes it).
    Pong {
        /// The ping it answers, if known.
        seq: Option<u64>,
    },
    /// A server heartbeat: liveness only.
    Heartbeat,
    /// The platform accepted the token sent in-stream.
    TokenAccepted,
    /// The platform refused the token sent in-stream.
    TokenRefused(String),
    /// The platform will close this socket soon: open the next one now.
    Closing(String),
    /// The platform asks us to slow down.
    RateLimited(Option<Duration>),
    /// A well-formed message of no interest.
    Ignored,
    /// A frame that does not parse: logged, counted, skipped.
    Malformed(String),
}

/// How a new token reaches the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// A message on the same socket, acked by the platform (generic, cxone-dfo).
    InStream,
    /// Every message carries the token; nothing to send (cxone-aah).
    PerMessage,
    /// The socket is bound to its token: open a new one, then drop the old (genesys).
    NewSocket,
}

/// A plan could not be made (REST failure before the socket).
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// The platform refused the token.
    #[error("{what}: token refused (HTTP {status})")]
    TokenRefused {
        /// The call that was refused.
        what: &'static str,
        /// 401 or 403.
        status: u16,
    },
    /// The platform asked to retry later.
    #[error("{what}: rate limited (retry after {retry_after:?})")]
    RateLimited {
        /// The call that was refused.
        what: &'static str,
        /// From `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// Anything else.
    #[error("{what}: {message}")]
    Other {
        /// The call that failed.
        what: &'static str,
        /// Why.
        message: String,
    },
}

/// One platform's dialect.
#[async_trait]
pub trait Adapter: Send + Sync + 'static {
    /// Which platform this is.
    fn platform(&self) -> Platform;

    /// The REST path (under `endpoints.api`) that proves a token works.
    fn validate_path(&self) -> &'static str;

    /// Prepares a socket: any REST calls (channels, subscriptions), the URL and headers.
    /// `resume_after` is the last event id this stream has seen or checkpointed.
    async fn plan(
        &self,
        http: &reqwest::Client,
        token: &str,
        resume_after: Option<&EventId>,
    ) -> Result<SocketPlan, AdapterError>;

    /// The ping to send for sequence number `seq`.
    fn ping(&self, seq: u64) -> Ping;

    /// Classifies an inbound text frame.
    fn classify_text(&self, text: &str) -> Inbound;

    /// Classifies an inbound RFC 6455 pong payload.
    fn classify_pong(&self, payload: &[u8]) -> Inbound;

    /// How token rotation works on this platform.
    fn rotation(&self) -> Rotation;

    /// For [`Rotation::InStream`]: the message that carries a new token.
    fn refresh_frame(&self, token: &str) -> Option<String>;
}

/// The adapter for a stream's platform, or why there is none in this build.
pub fn adapter_for(spec: &StreamSpec) -> Result<Box<dyn Adapter>, String> {
    match spec.platform {
        Platform::Generic => Ok(Box::new(generic::Generic::new(spec)?)),
        other => Err(format!(
            "platform {} is not available in this build yet (generic is)",
            other.as_str()
        )),
    }
}
