//! Wall-clock time for the wire (epoch milliseconds). Deadlines never use it: they run on the
//! monotonic clock (`tokio::time::Instant`).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, for `at`, `lastPong` and transitions.
pub fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
