//! The live view of a stream ([`StreamStatus`]), written by its session (and, for the acting
//! owner's fence, by its supervisor) and read by `/status`, the store's beats and
//! `streamkeeper status`.

use std::{
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::Duration,
};

use streamkeeper_api::{ConnectionId, DropReason, Fence, StreamState};

/// The live view of a stream, for `/status`, Redis beats and `status`. At 72 bytes its cell
/// (with the lock and the `Arc`'s counts) fits jemalloc's 96-byte class (a unit test guards
/// it); 73 would take 112.
#[derive(Debug, Clone)]
pub struct StreamStatus {
    /// Current state.
    pub state: StreamState,
    /// The current (or last) socket.
    pub connection: Option<ConnectionId>,
    /// Last inbound frame, epoch ms.
    pub last_pong_ms: u64,
    /// Smoothed ping round trip.
    pub rtt: Option<Rtt>,
    /// Failed attempts since the last good connection.
    pub retry_count: u32,
    /// Reconnects since the session started.
    pub reconnects: u32,
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

/// A round trip in whole microseconds, in 4 bytes where a `Duration` is 16 (stored plus one,
/// so `None` costs nothing; 71 minutes saturate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rtt(NonZeroU32);

impl Rtt {
    /// `d`, to the microsecond below.
    pub fn new(d: Duration) -> Self {
        let micros = u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
        Self(NonZeroU32::MIN.saturating_add(micros))
    }

    /// As a `Duration`.
    pub fn get(self) -> Duration {
        Duration::from_micros(u64::from(self.0.get() - 1))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_cell_fits_the_allocators_96_byte_class() {
        // The lock's state, then the `Arc`'s two counts.
        let size = size_of::<Mutex<StreamStatus>>() + 16;
        assert!(size <= 96, "{size} bytes");
    }

    #[test]
    fn a_round_trip_keeps_its_microseconds_and_saturates() {
        assert_eq!(Rtt::new(Duration::ZERO).get(), Duration::ZERO);
        assert_eq!(
            Rtt::new(Duration::from_nanos(7_300_900)).get(),
            Duration::from_micros(7_300)
        );
        let long = Duration::from_secs(3 * 3600);
        assert_eq!(
            Rtt::new(long).get(),
            Duration::from_micros(u64::from(u32::MAX - 1))
        );
    }
}
