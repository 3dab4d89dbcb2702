//! Stream states and the reasons a connection is dropped.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a stream is in its life, as shown to the app, in metrics, in Redis and in status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StreamState {
    /// Opening a socket (token, handshake, subscriptions).
    Connecting,
    /// Streaming; pongs on time.
    Active,
    /// Streaming, but a pong is late or the round trip is far above its average.
    Degraded,
    /// The connection was declared dead and reaped.
    Dead,
    /// Waiting out a jittered backoff before reconnecting.
    Backoff,
    /// Connected or waiting, but not forwarding (no valid token).
    Paused,
    /// Not running: removed, preempted, not the owner, or shut down.
    Stopped,
}

impl StreamState {
    /// Every state, in the order metrics list them.
    pub const ALL: [StreamState; 7] = [
        Self::Connecting,
        Self::Active,
        Self::Degraded,
        Self::Dead,
        Self::Backoff,
        Self::Paused,
        Self::Stopped,
    ];

    /// The state as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "CONNECTING",
            Self::Active => "ACTIVE",
            Self::Degraded => "DEGRADED",
            Self::Dead => "DEAD",
            Self::Backoff => "BACKOFF",
            Self::Paused => "PAUSED",
            Self::Stopped => "STOPPED",
        }
    }
}

impl fmt::Display for StreamState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a connection was dropped: the `reason` of `dropped`, of transitions and of
/// `streamkeeper_reaped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// No pong and no other inbound frame within the heartbeat timeout.
    PongTimeout,
    /// The socket failed: reset, refused, TLS or protocol error.
    TcpError,
    /// The platform closed the socket (a close frame or `socket_closing`).
    ServerClose,
    /// The platform refused the token.
    TokenRejected,
    /// A higher-priority stream took the tenant's slot.
    Preempted,
    /// The stream was removed from the config.
    Removed,
    /// Another pod holds the stream's lease.
    OwnerLost,
    /// The sidecar is shutting down.
    Shutdown,
}

impl DropReason {
    /// Every reason, in the order metrics list them.
    pub const ALL: [DropReason; 8] = [
        Self::PongTimeout,
        Self::TcpError,
        Self::ServerClose,
        Self::TokenRejected,
        Self::Preempted,
        Self::Removed,
        Self::OwnerLost,
        Self::Shutdown,
    ];

    /// The reason as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PongTimeout => "pong_timeout",
            Self::TcpError => "tcp_error",
            Self::ServerClose => "server_close",
            Self::TokenRejected => "token_rejected",
            Self::Preempted => "preempted",
            Self::Removed => "removed",
            Self::OwnerLost => "owner_lost",
            Self::Shutdown => "shutdown",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
