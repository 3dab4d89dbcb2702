//! The demo's live timeline: one line per transition, with its timing against the deadline,
//! and a record of what happened for the scorecard.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use streamkeeper_api::{DropReason, PodName, StreamId, StreamState};
use streamkeeper_sidecar::upstream::{Observer, SessionEvent};
use tokio::{sync::Notify, time::Instant};

/// One thing that happened, in order.
#[derive(Debug, Clone)]
pub struct Entry {
    /// When, since the demo started.
    pub at: Duration,
    /// Which pod.
    #[allow(dead_code)]
    pub pod: PodName,
    /// Which stream.
    pub stream: StreamId,
    /// What.
    pub event: SessionEvent,
}

/// Shared timeline; each pod gets an [`Observer`] that writes to it.
#[derive(Debug)]
pub struct Timeline {
    start: Instant,
    quiet: bool,
    entries: Mutex<Vec<Entry>>,
    changed: Notify,
}

impl Timeline {
    /// A timeline starting now.
    pub fn new(quiet: bool) -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            quiet,
            entries: Mutex::new(Vec::new()),
            changed: Notify::new(),
        })
    }

    /// Time since start.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Prints a scenario step.
    pub fn step(&self, text: &str) {
        if !self.quiet {
            println!("[{:>7.3}s] ── {text}", self.elapsed().as_secs_f64());
        }
    }

    /// Prints a note under the current step.
    pub fn note(&self, text: &str) {
        if !self.quiet {
            println!("[{:>7.3}s]    {text}", self.elapsed().as_secs_f64());
        }
    }

    /// The observer for one pod.
    pub fn observer(self: &Arc<Self>, pod: PodName) -> Arc<dyn Observer> {
        Arc::new(PodObserver {
            timeline: Arc::clone(self),
            pod,
        })
    }

    /// Entries so far.
    pub fn entries(&self) -> Vec<Entry> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until `pred` holds for some entry recorded at or after `since`, at most `limit`.
    pub async fn wait_for(
        &self,
        since: Duration,
        limit: Duration,
        pred: impl Fn(&Entry) -> bool,
    ) -> Option<Entry> {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(e) = self
                .entries()
                .into_iter()
                .find(|e| e.at >= since && pred(e))
            {
                return Some(e);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    fn record(&self, pod: &PodName, stream: &StreamId, event: SessionEvent) {
        let at = self.elapsed();
        if !self.quiet
            && let Some(line) = describe(&event)
        {
            println!("[{:>7.3}s] {pod:<6} {stream:<22} {line}", at.as_secs_f64());
        }
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Entry {
                at,
                pod: pod.clone(),
                stream: stream.clone(),
                event,
            });
        self.changed.notify_waiters();
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn describe(event: &SessionEvent) -> Option<String> {
    Some(match event {
        SessionEvent::State { from, to, reason } => {
            let why = reason.map(|r| format!("  ({r})")).unwrap_or_default();
            format!("{from} → {to}{why}")
        }
        SessionEvent::Connected {
            connection,
            attempts,
            resumed_after,
        } => {
            let resume = resumed_after
                .as_ref()
                .map(|id| format!(", resuming after {id}"))
                .unwrap_or_default();
            format!("connected {connection} after {attempts} failed attempt(s){resume}")
        }
        SessionEvent::Dropped {
            connection,
            reason,
            late_by,
            silent_for,
            pending_bytes,
        } => {
            let timing = match (reason, late_by) {
                (DropReason::PongTimeout, Some(late)) => {
                    format!(
                        "silent {}, declared DEAD {} after its deadline",
                        ms(*silent_for),
                        ms(*late)
                    )
                }
                _ => format!("silent {}", ms(*silent_for)),
            };
            format!(
                "reaped {connection} by TCP reset: {reason}; {timing}; {pending_bytes} B unacked"
            )
        }
        SessionEvent::ConnectFailed { error, retry_in } => {
            format!("{error}; retry in {} (jittered backoff)", ms(*retry_in))
        }
        SessionEvent::TokenRotated { generation } => {
            format!("token #{generation} accepted in-stream; no reconnect")
        }
        SessionEvent::Rotated {
            from,
            to,
            overlap,
            proven,
            why,
        } => {
            let how = if *proven {
                "an event seen on both proved the handover"
            } else {
                "overlap bound reached"
            };
            format!(
                "{why}: {to} took over from {from} after {} of overlap ({how}); no drop, no gap",
                ms(*overlap)
            )
        }
        SessionEvent::Malformed { what } => format!("skipped a bad upstream frame: {what}"),
    })
}

struct PodObserver {
    timeline: Arc<Timeline>,
    pod: PodName,
}

impl Observer for PodObserver {
    fn observe(&self, stream: &StreamId, event: SessionEvent) {
        self.timeline.record(&self.pod, stream, event);
    }
}

/// Whether an entry is a move to `state`.
pub fn is_state(e: &Entry, state: StreamState) -> bool {
    matches!(e.event, SessionEvent::State { to, .. } if to == state)
}

/// Whether an entry is a socket of `stream` reaped for `reason`.
pub fn is_dropped(e: &Entry, stream: &StreamId, reason: DropReason) -> bool {
    &e.stream == stream && matches!(e.event, SessionEvent::Dropped { reason: r, .. } if r == reason)
}
