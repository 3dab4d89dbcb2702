//! What a StreamConnection's status should say, from its admission decision and what the store
//! knows of it (pure, with the time passed in), and which Events a change deserves.
//!
//! The result is compared with the stored status and written only when it differs, so the
//! fields that would change on every pong (`lastPong`, condition times) change only when they
//! mean something: `lastPong` when it moved by at least the refresh granularity, a condition's
//! `lastTransitionTime` only when its status flips.

use std::time::Duration;

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use streamkeeper_api::{
    PodName, StreamState,
    crd::{Phase, StreamConnectionStatus},
};

use crate::admission::Decision;

/// What the store says about one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Runtime {
    /// The pod that runs it.
    pub owner: Option<PodName>,
    /// Its state as the owner last reported it.
    pub state: Option<StreamState>,
    /// Its last pong, epoch milliseconds.
    pub last_pong_ms: Option<u64>,
    /// DEAD transitions heard since this controller started.
    pub reconnects: u32,
    /// The reason of the last DEAD transition heard.
    pub last_drop_reason: Option<String>,
}

/// Where the runtime half of a status comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeSource<'a> {
    /// The controller runs without a store: status has no runtime fields.
    NoStore,
    /// The store has nothing about the stream (yet).
    Unknown,
    /// What the store has.
    Known(&'a Runtime),
}

/// Everything the desired status depends on.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The admission decision; `None` before the first one.
    pub decision: Option<Decision>,
    /// Why the spec cannot be admitted, if it cannot.
    pub invalid: Option<&'a str>,
    /// The tenant and its limit, for messages.
    pub tenant: &'a str,
    /// The tenant's pool limit.
    pub limit: u32,
    /// The ConfigMap the stream is rendered into.
    pub config_map: &'a str,
    /// The store's view.
    pub runtime: RuntimeSource<'a>,
    /// Reconnects already counted in the stored status when this controller started.
    pub reconnects_base: u32,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// The stored status.
    pub previous: Option<&'a StreamConnectionStatus>,
    /// Now.
    pub now: Timestamp,
    /// `lastPong` is rewritten only when it moved by at least this much.
    pub pong_granularity: Duration,
}

/// The condition types the controller maintains.
pub const READY: &str = "Ready";
/// Set while the stream is streaming badly or reconnecting.
pub const DEGRADED: &str = "Degraded";

struct Cond {
    status: &'static str,
    reason: &'static str,
    message: String,
}

fn cond(status: &'static str, reason: &'static str, message: impl Into<String>) -> Cond {
    Cond {
        status,
        reason,
        message: message.into(),
    }
}

/// The status the object should have.
pub fn desired(i: &Inputs<'_>) -> StreamConnectionStatus {
    let (phase, ready, degraded) = phase_and_conditions(i);
    let mut status = StreamConnectionStatus {
        phase: Some(phase),
        message: Some(ready.message.clone()),
        observed_generation: i.generation,
        ..StreamConnectionStatus::default()
    };
    if let RuntimeSource::Known(rt) = i.runtime {
        status.owner = rt.owner.as_ref().map(|p| p.to_string());
        status.last_pong = rt.last_pong_ms.and_then(|ms| {
            let fresh = Timestamp::from_millisecond(ms as i64).ok()?;
            // Keep the stored value while it is close: a write per pong would be a write per
            // stream every heartbeat interval.
            let keep = i.previous.and_then(|p| p.last_pong.clone()).filter(|prev| {
                let moved = fresh.duration_since(prev.0).unsigned_abs();
                moved < i.pong_granularity
            });
            Some(keep.unwrap_or(Time(fresh)))
        });
        let reconnects = i.reconnects_base.saturating_add(rt.reconnects);
        status.reconnects = (reconnects > 0).then_some(reconnects);
        status.last_drop_reason = rt
            .last_drop_reason
            .clone()
            .or_else(|| i.previous.and_then(|p| p.last_drop_reason.clone()));
    }
    status.conditions = vec![condition(READY, ready, i), condition(DEGRADED, degraded, i)];
    status
}

fn condition(kind: &str, c: Cond, i: &Inputs<'_>) -> Condition {
    let previous = i
        .previous
        .and_then(|p| p.conditions.iter().find(|x| x.type_ == kind));
    let last_transition_time = match previous {
        Some(p) if p.status == c.status => p.last_transition_time.clone(),
        _ => Time(i.now),
    };
    Condition {
        type_: kind.to_owned(),
        status: c.status.to_owned(),
        reason: c.reason.to_owned(),
        message: c.message,
        last_transition_time,
        observed_generation: i.generation,
    }
}

fn phase_and_conditions(i: &Inputs<'_>) -> (Phase, Cond, Cond) {
    let healthy = || cond("False", "Healthy", "no connection problem reported");
    if let Some(why) = i.invalid {
        return (
            Phase::Pending,
            cond("False", "InvalidSpec", format!("not admitted: {why}")),
            cond("Unknown", "InvalidSpec", "not admitted"),
        );
    }
    let pool = format!("tenant {}'s pool (limit {})", i.tenant, i.limit);
    match i.decision {
        None => (
            Phase::Pending,
            cond("Unknown", "Pending", "not decided yet"),
            cond("Unknown", "Pending", "not decided yet"),
        ),
        Some(Decision::Paused) => (
            Phase::Paused,
            cond(
                "False",
                "Paused",
                "spec.paused is true: the stream takes no slot and is not run",
            ),
            healthy(),
        ),
        Some(Decision::Queued) => (
            Phase::Queued,
            cond("False", "Queued", format!("waiting for a slot in {pool}")),
            healthy(),
        ),
        Some(Decision::Preempted) => (
            Phase::Preempted,
            cond(
                "False",
                "Preempted",
                format!("a higher-priority stream took its slot in {pool}; waiting for a slot"),
            ),
            healthy(),
        ),
        Some(Decision::Admitted) => admitted(i),
    }
}

fn admitted(i: &Inputs<'_>) -> (Phase, Cond, Cond) {
    let rendered = format!("admitted; rendered into ConfigMap {}", i.config_map);
    let rt = match i.runtime {
        RuntimeSource::NoStore => {
            return (
                Phase::Active,
                cond(
                    "Unknown",
                    "NoRuntimeStatus",
                    format!("{rendered} (the controller has no store to read runtime state from)"),
                ),
                cond("Unknown", "NoRuntimeStatus", "the controller has no store"),
            );
        }
        RuntimeSource::Unknown => {
            return (
                Phase::Active,
                cond(
                    "Unknown",
                    "WaitingForSidecar",
                    format!("{rendered}; no sidecar has reported it yet"),
                ),
                cond(
                    "Unknown",
                    "WaitingForSidecar",
                    "no sidecar has reported it yet",
                ),
            );
        }
        RuntimeSource::Known(rt) => rt,
    };
    let owner = rt
        .owner
        .as_ref()
        .map(|o| format!(" by {o}"))
        .unwrap_or_default();
    let dropped = rt.last_drop_reason.as_deref().unwrap_or("unknown");
    match rt.state {
        Some(StreamState::Active) => (
            Phase::Active,
            cond("True", "Streaming", format!("streaming{owner}")),
            cond("False", "Healthy", "pongs on time"),
        ),
        Some(StreamState::Degraded) => (
            Phase::Degraded,
            cond("True", "Streaming", format!("streaming{owner}, degraded")),
            cond(
                "True",
                "PongLate",
                "a pong is late or the round trip is far above its average",
            ),
        ),
        Some(StreamState::Paused) => (
            Phase::Degraded,
            cond(
                "False",
                "TokenPaused",
                format!("connected{owner}, forwarding paused: no valid token"),
            ),
            cond("True", "TokenPaused", "no valid token: forwarding paused"),
        ),
        Some(StreamState::Dead | StreamState::Backoff) => (
            Phase::Dead,
            cond(
                "False",
                "ConnectionDead",
                format!("connection dead ({dropped}); reconnecting"),
            ),
            cond("True", "Reconnecting", format!("last drop: {dropped}")),
        ),
        Some(StreamState::Connecting) if rt.last_drop_reason.is_some() => (
            Phase::Dead,
            cond(
                "False",
                "ConnectionDead",
                format!("connection dead ({dropped}); reconnecting"),
            ),
            cond("True", "Reconnecting", format!("last drop: {dropped}")),
        ),
        Some(StreamState::Connecting) => (
            Phase::Active,
            cond("False", "Connecting", format!("connecting{owner}")),
            cond("False", "Healthy", "no connection problem reported"),
        ),
        Some(StreamState::Stopped) | None => (
            Phase::Active,
            cond(
                "Unknown",
                "WaitingForSidecar",
                format!("{rendered}; not running on any sidecar right now"),
            ),
            cond(
                "Unknown",
                "WaitingForSidecar",
                "not running on any sidecar right now",
            ),
        ),
    }
}

/// An Event the controller publishes about a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// `Admitted`, `Queued`, `Preempted`, `StreamDead`, `Recovered`, ...
    pub reason: &'static str,
    /// Warning (else Normal).
    pub warning: bool,
    /// The human-readable note.
    pub note: String,
}

/// The Event a change of decision deserves, if any.
pub fn decision_notice(
    before: Option<Decision>,
    after: Decision,
    tenant: &str,
    limit: u32,
    config_map: &str,
) -> Option<Notice> {
    let pool = format!("tenant {tenant}'s pool (limit {limit})");
    match (before, after) {
        (Some(b), a) if b == a => None,
        (_, Decision::Admitted) => Some(Notice {
            reason: "Admitted",
            warning: false,
            note: format!("took a slot in {pool}; rendered into ConfigMap {config_map}"),
        }),
        (Some(Decision::Admitted), Decision::Preempted) => Some(Notice {
            reason: "Preempted",
            warning: true,
            note: format!(
                "a higher-priority stream took its slot in {pool}; removed from ConfigMap {config_map}"
            ),
        }),
        (None | Some(Decision::Paused), Decision::Queued) => Some(Notice {
            reason: "Queued",
            warning: false,
            note: format!("waiting for a slot in {pool}"),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs<'a>(
        decision: Decision,
        runtime: RuntimeSource<'a>,
        previous: Option<&'a StreamConnectionStatus>,
        now_s: i64,
    ) -> Inputs<'a> {
        Inputs {
            decision: Some(decision),
            invalid: None,
            tenant: "acme",
            limit: 10,
            config_map: "streamkeeper-wem",
            runtime,
            reconnects_base: 0,
            generation: Some(3),
            previous,
            now: Timestamp::from_second(now_s).expect("time"),
            pong_granularity: Duration::from_secs(30),
        }
    }

    fn rt(state: StreamState, pong_s: u64) -> Runtime {
        Runtime {
            owner: Some("pod-a".parse().expect("pod")),
            state: Some(state),
            last_pong_ms: Some(pong_s * 1000),
            reconnects: 0,
            last_drop_reason: None,
        }
    }

    #[test]
    fn recomputing_with_nothing_new_gives_the_same_status() {
        let r = rt(StreamState::Active, 1000);
        let first = desired(&inputs(
            Decision::Admitted,
            RuntimeSource::Known(&r),
            None,
            1000,
        ));
        assert_eq!(first.phase, Some(Phase::Active));
        assert_eq!(first.owner.as_deref(), Some("pod-a"));
        // Later, a few pongs later: nothing worth a write.
        let r2 = rt(StreamState::Active, 1020);
        let again = desired(&inputs(
            Decision::Admitted,
            RuntimeSource::Known(&r2),
            Some(&first),
            1025,
        ));
        assert_eq!(again, first);
        // Past the granularity, lastPong moves; the condition times stay.
        let r3 = rt(StreamState::Active, 1031);
        let moved = desired(&inputs(
            Decision::Admitted,
            RuntimeSource::Known(&r3),
            Some(&first),
            1031,
        ));
        assert_ne!(moved.last_pong, first.last_pong);
        assert_eq!(moved.conditions, first.conditions);
    }

    #[test]
    fn a_dead_stream_flips_ready_and_degraded_with_new_transition_times() {
        let r = rt(StreamState::Active, 1000);
        let first = desired(&inputs(
            Decision::Admitted,
            RuntimeSource::Known(&r),
            None,
            1000,
        ));
        let mut dead = rt(StreamState::Dead, 1000);
        dead.reconnects = 1;
        dead.last_drop_reason = Some("tcp_error".into());
        let s = desired(&inputs(
            Decision::Admitted,
            RuntimeSource::Known(&dead),
            Some(&first),
            1100,
        ));
        assert_eq!(s.phase, Some(Phase::Dead));
        assert_eq!(s.reconnects, Some(1));
        assert_eq!(s.last_drop_reason.as_deref(), Some("tcp_error"));
        let ready = &s.conditions[0];
        assert_eq!(
            (ready.type_.as_str(), ready.status.as_str()),
            ("Ready", "False")
        );
        assert_eq!(ready.last_transition_time.0.as_second(), 1100);
        assert_eq!(s.conditions[1].status, "True");
        assert_eq!(s.conditions[1].observed_generation, Some(3));
    }

    #[test]
    fn without_a_store_status_has_no_runtime_fields() {
        let s = desired(&inputs(Decision::Admitted, RuntimeSource::NoStore, None, 1));
        assert_eq!(s.phase, Some(Phase::Active));
        assert_eq!((s.owner, s.last_pong, s.reconnects), (None, None, None));
        let q = desired(&inputs(Decision::Queued, RuntimeSource::NoStore, None, 1));
        assert_eq!(q.phase, Some(Phase::Queued));
    }

    #[test]
    fn events_only_on_a_change_of_decision() {
        let n = |b, a| decision_notice(b, a, "acme", 1, "cm").map(|n| n.reason);
        assert_eq!(n(None, Decision::Admitted), Some("Admitted"));
        assert_eq!(n(None, Decision::Queued), Some("Queued"));
        assert_eq!(
            n(Some(Decision::Admitted), Decision::Preempted),
            Some("Preempted")
        );
        assert_eq!(n(Some(Decision::Preempted), Decision::Preempted), None);
        assert_eq!(
            n(Some(Decision::Preempted), Decision::Admitted),
            Some("Admitted")
        );
        assert_eq!(n(Some(Decision::Admitted), Decision::Admitted), None);
    }
}
