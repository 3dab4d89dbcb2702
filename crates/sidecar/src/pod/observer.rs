//! [`StreamObserver`]: what the pod does with a session's events — logs them, publishes state
//! transitions under the claim's fence (in order, through the pod's queue), and forwards them to an extra observer (the demo).

use std::sync::Arc;

use streamkeeper_api::{DropReason, Fence, StreamId, StreamState};
use streamkeeper_coord::StreamKey;

use super::Pod;
use crate::upstream::{Observer, SessionEvent};

/// Per-claim observer: logs, publishes transitions under the claim's fence, forwards to the
/// pod's extra observer. It reaches the ownership manager and the extra observer through its
/// pod: 40 bytes with the `Arc`'s counts (the allocator's 48-byte class) rather than 56 (64).
pub(super) struct StreamObserver {
    pub(super) pod: Arc<Pod>,
    pub(super) key: StreamKey,
    pub(super) fence: Fence,
}

impl Observer for StreamObserver {
    fn observe(&self, stream: &StreamId, event: SessionEvent) {
        match &event {
            SessionEvent::State { from, to, reason } => {
                tracing::info!(%stream, from = %from, to = %to, reason = ?reason.map(|r| r.as_str()), "state");
                let publish = matches!(
                    to,
                    StreamState::Dead
                        | StreamState::Active
                        | StreamState::Degraded
                        | StreamState::Paused
                );
                if publish {
                    let why = reason
                        .map(|r| r.as_str().to_owned())
                        .unwrap_or_else(|| to.as_str().to_lowercase());
                    // Queued, not spawned: the pod publishes its transitions in the order
                    // they happened.
                    self.pod
                        .ownership
                        .publish(&self.key, self.fence, *from, *to, &why);
                }
            }
            SessionEvent::Dropped {
                connection,
                reason,
                late_by,
                silent_for,
                pending_bytes,
            } => {
                let late_by_ms = late_by.map(|d| d.as_millis() as u64);
                let silent_for_ms = silent_for.as_millis() as u64;
                if matches!(reason, DropReason::Shutdown | DropReason::Removed) {
                    tracing::info!(%stream, %connection, %reason, pending_bytes, "connection closed");
                } else {
                    tracing::warn!(%stream, %connection, %reason, late_by_ms, silent_for_ms, pending_bytes, "connection reaped");
                }
            }
            SessionEvent::Connected {
                connection,
                attempts,
                resumed_after,
            } => {
                tracing::info!(%stream, %connection, attempts, resumed_after = ?resumed_after.as_ref().map(|i| i.as_str()), "connected");
            }
            SessionEvent::ConnectFailed { error, retry_in } => {
                tracing::warn!(%stream, %error, retry_in_ms = retry_in.as_millis() as u64, "reconnect scheduled");
            }
            SessionEvent::TokenRotated { generation } => {
                tracing::info!(%stream, generation, "token rotated without a reconnect");
            }
            SessionEvent::Rotated {
                from,
                to,
                overlap,
                proven,
                why,
            } => {
                tracing::info!(%stream, %from, %to, overlap_ms = overlap.as_millis() as u64, proven, why, "rotated to a new socket before dropping the old one");
            }
            SessionEvent::Malformed { .. } => {}
        }
        if let Some(extra) = &self.pod.extra_observer {
            extra.observe(stream, event);
        }
    }
}
