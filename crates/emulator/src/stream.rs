//! One emulated stream: its event sequence, bounded history and per-stream counters.
//!
//! The history is also the send buffer: a socket keeps only a cursor (the next sequence number
//! it owes its client) and copies events out of the history when its write queue has room. So a
//! replay after `Last-Event-ID`, a slow client and live fan-out are one mechanism, and a socket
//! costs a few bytes however far behind it is.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::watch;

use crate::frame;
use crate::stats::StreamStats;
use crate::util::{epoch_ms, json_escape, lock, stopped};

/// One stream and its retained events.
#[derive(Debug)]
pub(crate) struct Stream {
    /// The stream's name (the path segment after `/streams/`).
    pub name: String,
    /// `name` escaped for a JSON string, without the quotes.
    escaped: String,
    /// Retained events.
    history: Mutex<History>,
    /// The last sequence number produced (0 before the first event); sockets wait on it.
    latest: watch::Sender<u64>,
    /// Pings received from this stream's clients.
    pub pings: AtomicU64,
    /// Pongs sent to this stream's clients (shared with each socket's writer).
    pub pongs: Arc<AtomicU64>,
    /// In-stream token refreshes acked.
    pub token_refreshes: AtomicU64,
    /// Sockets open on this stream.
    pub connections: AtomicUsize,
}

/// Events `first_seq ..= first_seq + ats.len() - 1`, each stored as its timestamp only.
#[derive(Debug)]
struct History {
    first_seq: u64,
    ats: VecDeque<u64>,
    cap: usize,
}

impl History {
    fn last_seq(&self) -> u64 {
        self.first_seq + self.ats.len() as u64 - 1
    }
}

impl Stream {
    /// A stream with no events yet that keeps at most `history` of them.
    pub fn new(name: &str, history: usize) -> Self {
        let escaped = json_escape(name);
        Self {
            name: name.to_string(),
            escaped,
            history: Mutex::new(History {
                first_seq: 1,
                ats: VecDeque::new(),
                cap: history.max(1),
            }),
            latest: watch::channel(0).0,
            pings: AtomicU64::new(0),
            pongs: Arc::default(),
            token_refreshes: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
        }
    }

    /// Produce `n` events now; returns the last sequence number.
    pub fn emit(&self, n: usize) -> u64 {
        let at = epoch_ms();
        let last = {
            let mut h = lock(&self.history);
            for _ in 0..n {
                h.ats.push_back(at);
                if h.ats.len() > h.cap {
                    h.ats.pop_front();
                    h.first_seq += 1;
                }
            }
            h.last_seq()
        };
        if n > 0 {
            self.latest.send_replace(last);
        }
        last
    }

    /// A receiver that wakes when events are produced; its value is the last sequence number.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// The first sequence number owed to a client that last saw `last_event_id`: the event
    /// after it when it is retained (or just evicted), all retained history when the id is
    /// unknown or too old, and only new events without an id.
    pub fn start_after(&self, last_event_id: Option<&str>) -> u64 {
        let h = lock(&self.history);
        let next_new = h.last_seq() + 1;
        match last_event_id {
            None => next_new,
            Some(id) => match self.parse_seq(id) {
                Some(seq) if seq < next_new => (seq + 1).max(h.first_seq),
                _ => h.first_seq,
            },
        }
    }

    /// Copy the timestamps of up to `max` retained events from `from` on into `out`; returns the
    /// sequence number of the first one copied, which is above `from` when the history has
    /// already dropped events the caller still owed.
    pub fn read(&self, from: u64, max: usize, out: &mut Vec<u64>) -> u64 {
        let h = lock(&self.history);
        let start = from.max(h.first_seq);
        let skip = usize::try_from(start - h.first_seq).unwrap_or(usize::MAX);
        out.extend(h.ats.iter().skip(skip).take(max));
        start
    }

    /// Append the text frame of event `seq` (produced at `at`) to `out`; `scratch` is reused.
    pub fn put_event(&self, out: &mut BytesMut, seq: u64, at: u64, scratch: &mut String) {
        scratch.clear();
        let name = &self.escaped;
        // Writing to a String cannot fail.
        let _ = write!(
            scratch,
            r#"{{"type":"event","id":"{name}:{seq:09}","data":{{"seq":{seq},"stream":"{name}","at":{at}}}}}"#
        );
        frame::put(out, frame::OP_TEXT, scratch.as_bytes());
    }

    /// The id of event `seq`: `<name>:<seq, nine digits at least>`.
    pub fn event_id(&self, seq: u64) -> String {
        format!("{}:{seq:09}", self.name)
    }

    /// The sequence number in one of this stream's event ids.
    fn parse_seq(&self, id: &str) -> Option<u64> {
        let digits = id.strip_prefix(self.name.as_str())?.strip_prefix(':')?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    /// This stream's counters now.
    pub fn stats(&self) -> StreamStats {
        let emitted = *self.latest.borrow();
        StreamStats {
            emitted,
            last_id: (emitted > 0).then(|| self.event_id(emitted)),
            connections: self.connections.load(Ordering::Relaxed),
            pings: self.pings.load(Ordering::Relaxed),
            pongs: self.pongs.load(Ordering::Relaxed),
            token_refreshes: self.token_refreshes.load(Ordering::Relaxed),
        }
    }
}

/// Produce one event on `stream` every `every` until `shutdown` turns true.
pub(crate) async fn tick(
    stream: Arc<Stream>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {
                stream.emit(1);
            }
            () = stopped(&mut shutdown) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_text(s: &Stream, seq: u64) -> serde_json::Value {
        let mut out = BytesMut::new();
        s.put_event(&mut out, seq, 42, &mut String::new());
        serde_json::from_slice(&out[2..]).expect("json")
    }

    #[test]
    fn events_carry_the_documented_shape_and_escape_the_name() {
        let s = Stream::new("q\"1", 10);
        let v = event_text(&s, 7);
        assert_eq!(
            v,
            serde_json::json!({"type":"event","id":"q\"1:000000007","data":{"seq":7,"stream":"q\"1","at":42}})
        );
    }

    #[test]
    fn history_is_bounded_and_resume_points_follow_the_contract() {
        let s = Stream::new("a", 3);
        assert_eq!(s.start_after(None), 1);
        assert_eq!(
            s.start_after(Some("a:000000000")),
            1,
            "empty history: replay all"
        );
        assert_eq!(s.emit(5), 5); // keeps 3, 4, 5
        assert_eq!(s.start_after(None), 6, "no id: live only");
        assert_eq!(s.start_after(Some("a:000000004")), 5);
        assert_eq!(
            s.start_after(Some("a:000000002")),
            3,
            "just evicted: all retained"
        );
        assert_eq!(
            s.start_after(Some("a:000000001")),
            3,
            "too old: all retained"
        );
        assert_eq!(
            s.start_after(Some("a:000000009")),
            3,
            "unknown: all retained"
        );
        assert_eq!(
            s.start_after(Some("b:000000004")),
            3,
            "other stream: all retained"
        );
        assert_eq!(s.start_after(Some("a:x")), 3, "garbage: all retained");
        assert_eq!(s.start_after(Some("a:000000005")), 6, "up to date");
        let mut out = Vec::new();
        assert_eq!(s.read(1, 10, &mut out), 3, "evicted events are skipped");
        assert_eq!(out.len(), 3);
        out.clear();
        assert_eq!(s.read(5, 10, &mut out), 5);
        assert_eq!(out.len(), 1);
        let st = s.stats();
        assert_eq!(st.emitted, 5);
        assert_eq!(st.last_id.as_deref(), Some("a:000000005"));
    }
}
