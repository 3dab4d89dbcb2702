//! Platform adapters: what differs between Genesys, CXone and the generic dialect, behind one
//! seam, so the session (connect, heartbeat, reap, reconnect, rotate, overlap) is written once.
//!
//! An [`Adapter`] is one stream's dialect: it makes the REST calls that come before the
//! sockets (channels, subscriptions) and returns one [`Connection`] per socket the stream
//! needs, each with its [`SocketPlan`] (where it goes; used up by the connect). A connection is
//! that socket's protocol state (a Genesys channel id, its topics and
//! expiry; a CXone subscription count): it builds each outbound frame with the token current at
//! send time, classifies inbound text into zero or many [`Inbound`]s, and knows its retire
//! step. Neither owns a socket.
//!
//! - `generic.rs`: the seed guide's dialect (Bearer upgrade, `Last-Event-ID` replay)
//! - `genesys.rs`: Genesys Cloud Notifications (channels, subscriptions, sharding)
//! - `cxone_dfo.rs`: NICE CXone digital event hub (register, heartbeat action)
//! - `cxone_aah.rs`: NICE CXone Agent Assist Hub (CONNECT, SUBSCRIBE, token per message)
//! - `identity.rs`: event ids from a topic and a canonical body; ISO 8601 times

pub mod cxone_aah;
pub mod cxone_dfo;
pub mod generic;
pub mod genesys;
pub mod identity;

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use async_trait::async_trait;
use serde_json::value::RawValue;
use streamkeeper_api::{EventId, StreamSpec, config::Platform};
use tokio::time::Instant;
use url::Url;

use crate::auth::ClientBudget;

/// Where one socket goes: the URL and the upgrade headers. `Debug` never shows header values
/// (an `Authorization: Bearer` rides here).
#[derive(Clone)]
pub struct SocketPlan {
    /// The socket URL.
    pub url: Url,
    /// Extra upgrade headers (may hold secrets: never logged).
    pub headers: Vec<(&'static str, String)>,
}

impl fmt::Debug for SocketPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| *k).collect();
        f.debug_struct("SocketPlan")
            .field("url", &self.url.as_str())
            .field("headers", &names)
            .finish()
    }
}

/// How the adapter wants a ping sent.
#[derive(Clone, PartialEq, Eq)]
pub enum Ping {
    /// An RFC 6455 ping frame with this payload.
    Control(Vec<u8>),
    /// An application-level text message (it may carry the token: never logged).
    Text(String),
}

impl fmt::Debug for Ping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Control(p) => f.debug_tuple("Control").field(p).finish(),
            Self::Text(t) => write!(f, "Text(<{} bytes>)", t.len()),
        }
    }
}

/// How a platform asks us to slow down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    /// Wait this long (Genesys 429 `Retry-After`).
    RetryAfter(Duration),
    /// Wait the platform's escalating step (CXone `RATE_LIMIT_EXCEEDED`: 30 s, 1 min, 2 min).
    Escalating,
}

/// An inbound frame's meaning; one frame can mean several things, or nothing.
#[derive(Debug)]
pub enum Inbound {
    /// A platform event for the app.
    Event {
        /// Its stable id (the same on every socket and pod that sees it).
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
    /// The socket is set up (registered, connected, subscribed): it delivers from now on.
    Ready,
    /// The connection wants its next frames sent now (AAH: SUBSCRIBE after CONNECTED); the
    /// session asks [`Connection::proceed`] with the current token.
    Proceed,
    /// The platform accepted the token sent in-stream.
    TokenAccepted,
    /// The platform refused a token.
    TokenRefused(String),
    /// The platform will close this socket soon: open the next one now.
    Closing(String),
    /// The platform asks us to slow down: no request or reconnect before the wait ends.
    RateLimited(RateLimit),
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

/// Sockets could not be prepared (REST failure before the socket).
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
        /// How long to wait.
        retry_after: RateLimit,
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

/// A future run after a socket is retired (Genesys: unsubscribe its channel).
pub type RetireStep = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One socket an adapter prepared: where it goes, and its protocol state once open. The plan is
/// used up by the connect rather than kept in the connection: it can hold the token (a Bearer
/// header), and kept, it was 256 bytes of every socket's life that nothing read again.
#[derive(Debug)]
pub struct Prepared {
    /// Where the socket goes.
    pub plan: SocketPlan,
    /// The socket's protocol state.
    pub conn: Box<dyn Connection>,
}

/// What an adapter gets to prepare sockets.
pub struct Prepare<'a> {
    /// The REST client (same trust and proxy as the sockets).
    pub http: &'a reqwest::Client,
    /// The token the sockets will be bound to.
    pub token: &'a str,
    /// The last event id this stream has seen or checkpointed.
    pub resume_after: Option<&'a EventId>,
    /// The credential's share of the platform's limits, shared by the pod's streams on it.
    pub budget: &'a Arc<ClientBudget>,
}

/// One stream's dialect.
#[async_trait]
pub trait Adapter: Send + Sync + 'static {
    /// Which platform this is.
    fn platform(&self) -> Platform;

    /// Whether a new socket replays what the last one missed (else a reconnect is a `gap`).
    fn replays(&self) -> bool;

    /// How token rotation works on this platform.
    fn rotation(&self) -> Rotation;

    /// Pings a socket may leave unanswered before it is DEAD, besides the heartbeat timeout
    /// (cxone-dfo: five).
    fn max_missed_pongs(&self) -> Option<u32> {
        None
    }

    /// Makes the REST calls a set of sockets needs and returns each socket's plan and
    /// connection.
    async fn prepare(&self, p: Prepare<'_>) -> Result<Vec<Prepared>, AdapterError>;
}

/// One socket's protocol state.
pub trait Connection: Send + Sync + fmt::Debug + 'static {
    /// The frames to send right after the handshake, with the current token.
    fn greeting(&mut self, token: &str) -> Vec<String> {
        let _ = token;
        Vec::new()
    }

    /// The frames to send after an [`Inbound::Proceed`], with the current token.
    fn proceed(&mut self, token: &str) -> Vec<String> {
        let _ = token;
        Vec::new()
    }

    /// The ping number `seq`, with the current token.
    fn ping(&self, seq: u64, token: &str) -> Ping;

    /// Classifies an inbound text frame into `out` (zero or many).
    fn classify_text(&mut self, text: &str, out: &mut Vec<Inbound>);

    /// Classifies an inbound RFC 6455 pong payload.
    fn classify_pong(&mut self, payload: &[u8]) -> Inbound {
        let _ = payload;
        Inbound::Heartbeat
    }

    /// For [`Rotation::InStream`]: the message that carries a new token.
    fn refresh_frame(&self, token: &str) -> Option<String> {
        let _ = token;
        None
    }

    /// When the socket must have been replaced (a Genesys channel's expiry).
    fn expires(&self) -> Option<Instant> {
        None
    }

    /// Whether the socket delivers as soon as it is open (subscribed before connecting);
    /// otherwise it waits for an [`Inbound::Ready`].
    fn ready_on_open(&self) -> bool {
        true
    }

    /// What to do once the socket is closed for good, with the token it was bound to.
    fn retire(&self, http: &reqwest::Client, token: &str) -> Option<RetireStep> {
        let _ = (http, token);
        None
    }
}

/// The adapter for a stream's platform.
pub fn adapter_for(spec: &StreamSpec) -> Result<Box<dyn Adapter>, String> {
    Ok(match spec.platform {
        Platform::Generic => Box::new(generic::Generic::new(spec)?),
        Platform::Genesys => Box::new(genesys::Genesys::new(spec)?),
        Platform::CxoneDfo => Box::new(cxone_dfo::CxoneDfo::new(spec)?),
        Platform::CxoneAah => Box::new(cxone_aah::CxoneAah::new(spec)?),
    })
}

/// The whole frame as the event's payload (its topic and metadata matter to the app).
pub(crate) fn whole_frame(text: &str) -> Result<Box<RawValue>, String> {
    RawValue::from_string(text.to_owned()).map_err(|e| format!("not JSON: {e}"))
}
