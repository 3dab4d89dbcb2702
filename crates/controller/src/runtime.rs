//! The store's view of every stream, kept current from the transitions channel
//! (`Store::subscribe`) and a periodic `Store::records` read, with a note of which streams
//! changed enough to be reconciled and which changes deserve an Event (StreamDead, Recovered).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt;
use streamkeeper_api::{StreamId, StreamState, Transition};
use streamkeeper_coord::{ConnRecord, Store};
use tokio::sync::mpsc;

use crate::{metrics::Metrics, status::Runtime};

/// Something that happened to a stream at runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEvent {
    /// Its connection was declared DEAD (reason).
    Dead(String),
    /// It streams again after a DEAD.
    Recovered,
}

/// One stream whose runtime view changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The stream.
    pub stream: StreamId,
    /// An Event to publish, if the change deserves one.
    pub event: Option<RuntimeEvent>,
}

#[derive(Debug, Default)]
struct Entry {
    runtime: Runtime,
    /// The last pong that was reported as a change (lastPong is reported coarsely).
    reported_pong_ms: Option<u64>,
    /// DEAD heard and no ACTIVE since.
    down: bool,
}

/// The shared view; cheap to read from reconciles.
#[derive(Debug, Default)]
pub struct RuntimeView {
    entries: Mutex<HashMap<StreamId, Entry>>,
}

impl RuntimeView {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<StreamId, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the store says about `stream`, if anything.
    pub fn get(&self, stream: &StreamId) -> Option<Runtime> {
        self.lock()
            .get(stream)
            .filter(|e| e.runtime.state.is_some() || e.runtime.reconnects > 0)
            .map(|e| e.runtime.clone())
    }

    /// Forgets a deleted stream.
    pub fn forget(&self, stream: &StreamId) {
        self.lock().remove(stream);
    }

    /// Applies one transition; returns the change to report.
    pub fn apply_transition(&self, t: &Transition) -> Option<Change> {
        let mut entries = self.lock();
        let e = entries.entry(t.stream.clone()).or_default();
        let before = e.runtime.clone();
        e.runtime.state = Some(t.to);
        if t.owner.is_some() {
            e.runtime.owner = t.owner.clone();
        }
        let mut event = None;
        match t.to {
            StreamState::Dead => {
                e.runtime.reconnects = e.runtime.reconnects.saturating_add(1);
                e.runtime.last_drop_reason = Some(t.reason.clone());
                e.down = true;
                event = Some(RuntimeEvent::Dead(t.reason.clone()));
            }
            StreamState::Active if e.down => {
                e.down = false;
                event = Some(RuntimeEvent::Recovered);
            }
            _ => {}
        }
        (e.runtime != before || event.is_some()).then(|| Change {
            stream: t.stream.clone(),
            event,
        })
    }

    /// Applies a full read of the store's records; returns the streams whose state or owner
    /// changed, or whose last pong moved by at least `granularity` since it was last reported.
    pub fn apply_records(&self, records: &[ConnRecord], granularity: Duration) -> Vec<Change> {
        let mut entries = self.lock();
        let mut changes = Vec::new();
        let mut seen = std::collections::HashSet::with_capacity(records.len());
        for r in records {
            seen.insert(r.stream.clone());
            let e = entries.entry(r.stream.clone()).or_default();
            let moved = match e.reported_pong_ms {
                None => true,
                Some(p) => r.last_pong.abs_diff(p) >= granularity.as_millis() as u64,
            };
            let changed = e.runtime.state != Some(r.state)
                || e.runtime.owner.as_ref() != Some(&r.owner)
                || moved;
            e.runtime.state = Some(r.state);
            e.runtime.owner = Some(r.owner.clone());
            e.runtime.last_pong_ms = Some(r.last_pong);
            let mut event = None;
            if r.state == StreamState::Active && e.down {
                e.down = false;
                event = Some(RuntimeEvent::Recovered);
            }
            if changed || event.is_some() {
                e.reported_pong_ms = Some(r.last_pong);
                changes.push(Change {
                    stream: r.stream.clone(),
                    event,
                });
            }
        }
        // A record that expired (no owner vouches for the stream any more).
        for (id, e) in entries.iter_mut() {
            if !seen.contains(id) && e.runtime.state.is_some() && e.runtime.last_pong_ms.is_some() {
                e.runtime.state = None;
                e.runtime.owner = None;
                e.reported_pong_ms = None;
                changes.push(Change {
                    stream: id.clone(),
                    event: None,
                });
            }
        }
        changes
    }
}

/// Keeps `view` current until the task is dropped: hears transitions as they come and reads
/// every record each `poll`; sends each change on `changes`.
pub async fn watch_store(
    store: Arc<dyn Store>,
    view: Arc<RuntimeView>,
    poll: Duration,
    granularity: Duration,
    metrics: Metrics,
    changes: mpsc::Sender<Change>,
) {
    let mut transitions = match store.subscribe().await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot subscribe to the store's transitions; reading records only");
            None
        }
    };
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            t = async {
                match transitions.as_mut() {
                    Some(s) => s.next().await,
                    None => std::future::pending().await,
                }
            } => {
                let Some(t) = t else {
                    transitions = None;
                    continue;
                };
                metrics.transitions.inc();
                if let Some(c) = view.apply_transition(&t)
                    && changes.send(c).await.is_err()
                {
                    return;
                }
            }
            _ = tick.tick() => {
                match store.records().await {
                    Ok(records) => {
                        metrics.store_up.set(1);
                        for c in view.apply_records(&records, granularity) {
                            if changes.send(c).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        metrics.store_up.set(0);
                        tracing::debug!(error = %e, "cannot read the store's records");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use streamkeeper_api::{Fence, Tenant};

    use super::*;

    fn t(to: StreamState, reason: &str) -> Transition {
        Transition {
            stream: "cc/q".parse().expect("id"),
            tenant: "acme".parse().expect("tenant"),
            from: StreamState::Active,
            to,
            reason: reason.into(),
            owner: Some("pod-a".parse().expect("pod")),
            fence: Some(Fence(1)),
            at: 0,
        }
    }

    fn rec(state: StreamState, pong: u64) -> ConnRecord {
        ConnRecord {
            stream: "cc/q".parse().expect("id"),
            tenant: "acme".parse::<Tenant>().expect("tenant"),
            socket_id: Some(streamkeeper_api::ConnectionId("s".into())),
            last_pong: pong,
            platform: streamkeeper_api::config::Platform::Generic,
            state,
            retry_count: 0,
            owner: "pod-a".parse().expect("pod"),
            fence: Fence(1),
        }
    }

    #[test]
    fn dead_then_active_is_stream_dead_then_recovered() {
        let v = RuntimeView::default();
        let c = v
            .apply_transition(&t(StreamState::Dead, "tcp_error"))
            .expect("change");
        assert_eq!(c.event, Some(RuntimeEvent::Dead("tcp_error".into())));
        let c = v
            .apply_transition(&t(StreamState::Active, "active"))
            .expect("change");
        assert_eq!(c.event, Some(RuntimeEvent::Recovered));
        let rt = v.get(&"cc/q".parse().expect("id")).expect("known");
        assert_eq!(
            (rt.reconnects, rt.last_drop_reason.as_deref()),
            (1, Some("tcp_error"))
        );
        // ACTIVE again without a DEAD in between is no event.
        assert_eq!(v.apply_transition(&t(StreamState::Active, "active")), None);
    }

    #[test]
    fn pongs_are_reported_coarsely() {
        let v = RuntimeView::default();
        let g = Duration::from_secs(30);
        assert_eq!(
            v.apply_records(&[rec(StreamState::Active, 1_000)], g).len(),
            1
        );
        assert!(
            v.apply_records(&[rec(StreamState::Active, 16_000)], g)
                .is_empty()
        );
        assert_eq!(
            v.apply_records(&[rec(StreamState::Active, 31_000)], g)
                .len(),
            1
        );
        // A state change is reported at once.
        assert_eq!(
            v.apply_records(&[rec(StreamState::Degraded, 32_000)], g)
                .len(),
            1
        );
        // A record that vanished is a change too.
        assert_eq!(v.apply_records(&[], g).len(), 1);
        assert_eq!(v.get(&"cc/q".parse().expect("id")), None);
    }
}
