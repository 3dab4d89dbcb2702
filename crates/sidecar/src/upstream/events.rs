//! What a session tells the rest of the pod: [`SessionEvent`]s, heard by an [`Observer`].

use std::time::Duration;

use streamkeeper_api::{ConnectionId, DropReason, EventId, StreamId, StreamState};

/// Something the runtime wants to know about (logs, store, timeline).
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// The stream changed state.
    State {
        /// Before.
        from: StreamState,
        /// After.
        to: StreamState,
        /// Why, for transitions out of a live state.
        reason: Option<DropReason>,
    },
    /// A socket is up.
    Connected {
        /// Its id.
        connection: ConnectionId,
        /// Failed attempts before it.
        attempts: u32,
        /// Resumed after this event id.
        resumed_after: Option<EventId>,
    },
    /// A socket was reaped.
    Dropped {
        /// Its id.
        connection: ConnectionId,
        /// Why.
        reason: DropReason,
        /// For `pong_timeout`: how long after the deadline DEAD was declared.
        late_by: Option<Duration>,
        /// How long nothing had arrived.
        silent_for: Duration,
        /// Unacked bytes held for the app.
        pending_bytes: u64,
    },
    /// A connect attempt failed.
    ConnectFailed {
        /// Why (no secrets).
        error: String,
        /// The delay before the next attempt.
        retry_in: Duration,
    },
    /// The platform accepted a new token without a reconnect.
    TokenRotated {
        /// The token generation now in use.
        generation: u64,
    },
    /// Make-before-break: the successor took over and the old socket was retired, with no
    /// `dropped` and no `gap` for the app.
    Rotated {
        /// The retired connection.
        from: ConnectionId,
        /// The connection in use now.
        to: ConnectionId,
        /// How long both were read.
        overlap: Duration,
        /// Whether an event seen on both proved the handover (else the bounded overlap ended).
        proven: bool,
        /// What asked for it: token rotation, channel expiry, announced close.
        why: &'static str,
    },
    /// An inbound frame was skipped.
    Malformed {
        /// What was wrong (never the payload).
        what: String,
    },
}

/// Receives [`SessionEvent`]s.
pub trait Observer: Send + Sync {
    /// Called in order for every event of one stream.
    fn observe(&self, stream: &StreamId, event: SessionEvent);
}
