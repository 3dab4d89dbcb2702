//! A recording [`Observer`]: every session event of the pod, in order, with the instant the
//! test saw it, and a way to wait for one without sleeping.

use std::{
    fmt::Write as _,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use streamkeeper_api::{DropReason, StreamId, StreamState};
use streamkeeper_sidecar::upstream::{Observer, SessionEvent};
use tokio::{sync::Notify, time::Instant};

/// One recorded session event.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Its position in the whole recording (stable across [`Recorder::forget`]).
    pub index: usize,
    /// When the observer heard it (the session calls observers synchronously).
    pub at: Instant,
    /// The stream it belongs to.
    pub stream: StreamId,
    /// What happened.
    pub event: SessionEvent,
}

impl Seen {
    /// Whether this is a transition to `to`.
    pub fn is_state(&self, to: StreamState) -> bool {
        matches!(&self.event, SessionEvent::State { to: t, .. } if *t == to)
    }

    /// Whether this is a reap for `reason`.
    pub fn is_dropped(&self, reason: DropReason) -> bool {
        matches!(&self.event, SessionEvent::Dropped { reason: r, .. } if *r == reason)
    }

    /// Whether this is any reap.
    pub fn is_any_drop(&self) -> bool {
        matches!(&self.event, SessionEvent::Dropped { .. })
    }

    /// Whether a socket came up.
    pub fn is_connected(&self) -> bool {
        matches!(&self.event, SessionEvent::Connected { .. })
    }
}

#[derive(Debug, Default)]
struct Log {
    /// Index of `entries[0]` in the whole recording.
    base: usize,
    entries: Vec<Seen>,
}

/// Records every [`SessionEvent`] the pod emits. Cheap to share: `Arc<Recorder>`.
///
/// ```no_run
/// # async fn demo(rec: std::sync::Arc<streamkeeper_e2e::Recorder>) {
/// use std::time::Duration;
/// let mark = rec.mark();
/// // ... inject a fault ...
/// let seen = rec.wait_for(mark, Duration::from_secs(3), "a reconnect", |s| s.is_connected()).await;
/// println!("reconnected at {:?}", seen.at);
/// # }
/// ```
#[derive(Debug, Default)]
pub struct Recorder {
    log: Mutex<Log>,
    changed: Notify,
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The index the next event will get: pass it to [`wait_for`](Self::wait_for) to wait for
    /// something that happens after now.
    pub fn mark(&self) -> usize {
        let log = self.log();
        log.base + log.entries.len()
    }

    /// Every event kept with index `>= from`.
    pub fn since(&self, from: usize) -> Vec<Seen> {
        self.log()
            .entries
            .iter()
            .filter(|s| s.index >= from)
            .cloned()
            .collect()
    }

    /// Drops every kept event (marks stay valid; the buffer keeps its capacity), so a long
    /// test does not grow the heap with its own bookkeeping.
    pub fn forget(&self) {
        let mut log = self.log();
        log.base += log.entries.len();
        log.entries.clear();
    }

    fn find(&self, from: usize, pred: &impl Fn(&Seen) -> bool) -> Option<Seen> {
        self.log()
            .entries
            .iter()
            .find(|s| s.index >= from && pred(s))
            .cloned()
    }

    /// The first event at or after `from` that satisfies `pred`, waiting at most `bound` for
    /// it; `None` when none came.
    pub async fn try_wait_for(
        &self,
        from: usize,
        bound: Duration,
        pred: impl Fn(&Seen) -> bool,
    ) -> Option<Seen> {
        let deadline = Instant::now() + bound;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(hit) = self.find(from, &pred) {
                return Some(hit);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.find(from, &pred);
            }
        }
    }

    /// Like [`try_wait_for`](Self::try_wait_for), but a timeout fails the test, naming `what`
    /// and listing the events seen since `from`.
    pub async fn wait_for(
        &self,
        from: usize,
        bound: Duration,
        what: &str,
        pred: impl Fn(&Seen) -> bool,
    ) -> Seen {
        match self.try_wait_for(from, bound, pred).await {
            Some(hit) => hit,
            None => panic!(
                "no {what} within {bound:?}; events since then:\n{}",
                self.describe(from)
            ),
        }
    }

    /// Waits at most `bound` until `pred` holds of the events kept at or after `from`, taken
    /// together (a predicate over one event cannot count across streams; this one can, without
    /// taking the log's lock again inside it); a timeout fails the test, naming `what`.
    pub async fn wait_until(
        &self,
        from: usize,
        bound: Duration,
        what: &str,
        pred: impl Fn(&[Seen]) -> bool,
    ) {
        let holds = || {
            let log = self.log();
            let start = log.entries.partition_point(|s| s.index < from);
            pred(&log.entries[start..])
        };
        let deadline = Instant::now() + bound;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if holds() {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                if holds() {
                    return;
                }
                panic!(
                    "no {what} within {bound:?}; events since then:\n{}",
                    self.describe(from)
                );
            }
        }
    }

    /// The events since `from`, one a line, for failure messages.
    pub fn describe(&self, from: usize) -> String {
        let mut out = String::new();
        for s in self.since(from) {
            let _ = writeln!(out, "  #{} {}: {:?}", s.index, s.stream, s.event);
        }
        out
    }
}

impl Observer for Recorder {
    fn observe(&self, stream: &StreamId, event: SessionEvent) {
        let at = Instant::now();
        {
            let mut log = self.log();
            let index = log.base + log.entries.len();
            log.entries.push(Seen {
                index,
                at,
                stream: stream.clone(),
                event,
            });
        }
        self.changed.notify_waiters();
    }
}
