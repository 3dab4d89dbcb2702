//! The live view of a stream ([`StreamStatus`]), written by its session (and, for the acting
//! owner's fence, by its supervisor) and read by `/status`, the store's beats and
//! `streamkeeper status`.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use streamkeeper_api::{ConnectionId, DropReason, Fence, StreamState};

/// The live view of a stream, for `/status`, Redis beats and `status`. At 88 bytes its cell
/// (with the lock and the `Arc`'s counts) fits jemalloc's 112-byte class; 89 would take 128.
#[derive(Debug, Clone)]
pub struct StreamStatus {
    /// Current state.
    pub state: StreamState,
    /// The current (or last) socket.
    pub connection: Option<ConnectionId>,
    /// Last inbound frame, epoch ms.
    pub last_pong_ms: u64,
    /// Smoothed ping round trip.
    pub rtt: Option<Duration>,
    /// Failed attempts since the last good connection.
    pub retry_count: u32,
    /// Reconnects since the session started.
    pub reconnects: u64,
    /// The last reason a socket was dropped.
    pub last_drop: Option<DropReason>,
    /// Why the stream is not connected, while it is not: the last failed connect or token
    /// grant (an untrusted certificate, a proxy's refusal). Cleared once a socket is up.
    pub last_error: Option<Box<str>>,
    /// The fence of this pod's lease while it acts as the stream's owner; `None` while it
    /// stands by, waits for a pool slot or is not sure its lease still holds.
    pub owner: Option<Fence>,
}

impl Default for StreamStatus {
    fn default() -> Self {
        Self {
            state: StreamState::Connecting,
            connection: None,
            last_pong_ms: 0,
            rtt: None,
            retry_count: 0,
            reconnects: 0,
            last_drop: None,
            last_error: None,
            owner: None,
        }
    }
}

/// Shared handle to a [`StreamStatus`].
pub type StatusCell = Arc<Mutex<StreamStatus>>;

/// Reads a status cell, tolerating a poisoned lock (plain data).
pub fn read_status(cell: &StatusCell) -> StreamStatus {
    cell.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The fence this pod acts under as the stream's owner, if it does (no clone of the rest).
pub fn read_owner(cell: &StatusCell) -> Option<Fence> {
    cell.lock().unwrap_or_else(|p| p.into_inner()).owner
}

/// Marks this pod the stream's acting owner under `fence`, or not (`None`).
pub fn set_owner(cell: &StatusCell, fence: Option<Fence>) {
    cell.lock().unwrap_or_else(|p| p.into_inner()).owner = fence;
}
