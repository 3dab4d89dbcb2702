//! The message every pod publishes on `streamkeeper:transitions` when a stream changes state.

use serde::{Deserialize, Serialize};

use crate::{Fence, PodName, StreamId, StreamState, Tenant};

/// The Redis pub/sub channel that carries [`Transition`]s.
pub const TRANSITIONS_CHANNEL: &str = "streamkeeper:transitions";

/// A state change of one stream, as published to every pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The stream that changed.
    pub stream: StreamId,
    /// Its tenant.
    pub tenant: Tenant,
    /// The state before.
    pub from: StreamState,
    /// The state after.
    pub to: StreamState,
    /// Why (a drop reason, `handover`, `stale`, ...).
    pub reason: String,
    /// The pod that owned the stream when it changed.
    pub owner: Option<PodName>,
    /// The fence of that ownership.
    pub fence: Option<Fence>,
    /// When, in epoch milliseconds.
    pub at: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shape_matches_the_design() {
        let t = Transition {
            stream: "cc/q".parse().expect("id"),
            tenant: "acme".parse().expect("tenant"),
            from: StreamState::Active,
            to: StreamState::Dead,
            reason: "pong_timeout".into(),
            owner: Some("pod-a".parse().expect("pod")),
            fence: Some(Fence(7)),
            at: 1,
        };
        let v = serde_json::to_value(&t).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"stream":"cc/q","tenant":"acme","from":"ACTIVE","to":"DEAD",
                "reason":"pong_timeout","owner":"pod-a","fence":7,"at":1})
        );
    }
}
