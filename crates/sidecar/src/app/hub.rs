//! The hand-off between one stream's upstream session and its app: unacked events, duplicate
//! suppression, acks, and the frames the app has not seen yet.
//!
//! The session pushes without ever waiting (so a slow app cannot delay pong handling); the app
//! connection pulls with a cursor. Unacked events stay until acked and are delivered again to
//! the next consumer; past `max_unacked` events or `max_bytes` bytes the oldest are dropped and
//! one `gap` says so.
//!
//! The hub follows the lease: while the pod is not certain it still owns the stream
//! ([`Hub::hold`]) nothing more is handed to the app, and when the pod takes the stream again
//! under a new fence ([`Hub::reclaim`]) what it still held from before is stale (another pod
//! may have delivered and acked it meanwhile): it is dropped and the stream resumes from the
//! store's checkpoint.

use std::{
    collections::{HashSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
};

use serde_json::value::RawValue;
use streamkeeper_api::{EventId, StreamId, StreamState, ToApp};
use tokio::sync::Notify;

use crate::{metrics::StreamMetrics, signal};

/// The byte bound of [`Hub::new`] (the config's `limits.maxUnackedBytes` default).
pub const DEFAULT_MAX_BYTES: u32 = 64 << 20;

/// `dropped`, `gap`, `paused` and `resumed` frames kept for a consumer that has not pulled yet.
/// Each one is an edge the app must see, so none is ever superseded: a consumer this far behind
/// is detached instead ([`Detached::Lagged`]) and sees the stream afresh when it reconnects.
/// One reap cycle adds one, so this is minutes of reconnects at the fastest backoff.
const CONTROL_BACKLOG: usize = 1024;

/// What became of a pushed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued for the app.
    Queued,
    /// Already seen (replayed by the platform, or seen on both sockets during a rotation).
    Duplicate,
}

/// What an ack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// This many events (the acked one and every one before it) left the buffer.
    Acked(usize),
    /// Acked before: nothing to do.
    Already,
    /// Not an id this stream delivered.
    Unknown,
}

/// Why a consumer gets no more frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Detached {
    /// A newer connection for the same stream took over.
    #[error("replaced by a newer app connection")]
    Replaced,
    /// The stream left this pod (removed from the config, or the sidecar stops).
    #[error("the stream was removed")]
    Closed,
    /// The consumer left more than [`CONTROL_BACKLOG`] control frames unread; rather than drop
    /// any of them silently, the hub gives up on it (its unacked events stay for the next one).
    #[error("the app fell too far behind the stream's control frames")]
    Lagged,
}

#[derive(Debug)]
struct Pending {
    seq: u64,
    id: EventId,
    frame: Arc<str>,
    at_ms: u64,
}

/// A control frame not yet handed to the current consumer.
#[derive(Debug)]
struct Control {
    seq: u64,
    frame: Arc<str>,
    /// A `state` frame: it says what is, not what happened, so a newer one supersedes it.
    level: bool,
}

#[derive(Debug)]
struct State {
    seq: u64,
    unacked: VecDeque<Pending>,
    unacked_bytes: usize,
    /// Frames for the current consumer only: one that attaches later starts after them, and
    /// handed ones are dropped, so with no app attached nothing is kept.
    control: VecDeque<Control>,
    /// The current consumer fell more than [`CONTROL_BACKLOG`] edges behind.
    lagged: bool,
    recent: Recent,
    last_acked: Option<EventId>,
    /// `last_acked` moved on since the supervisor last took it ([`Hub::take_ack`]).
    ack_untaken: bool,
    /// 32 bits, as `consumers`: with them the hub fits its size class (see [`Hub`]).
    /// Compared for equality only, so a wrap after 4 billion attaches is harmless.
    generation: u32,
    consumers: u32,
    paused: bool,
    /// The lease is not certain: events wait.
    held: bool,
    state: StreamState,
    closed: bool,
}

/// One stream's hub. Cheap to share: `Arc<Hub>`.
#[derive(Debug)]
pub struct Hub {
    stream: StreamId,
    // 32-bit bounds and counts, and the window of ids remembered derived from them rather
    // than kept: a hub is one allocation per stream, and at 208 bytes (224 with the `Arc`'s
    // counts) it fits the allocator's 224-byte class (a unit test guards it).
    max_unacked: u32,
    max_bytes: u32,
    state: Mutex<State>,
    notify: Notify,
    /// The stream's signals: an ack wakes its supervisor through them. Not a signal of its
    /// own: the id is in `state` already, and a signal is one more allocation per stream.
    signals: signal::Group,
    /// Told the number of consumers when it changes (the app-clients gauge). The stream's
    /// series itself rather than a hook: a boxed closure in a `OnceLock` was 24 bytes here.
    clients: Option<StreamMetrics>,
}

impl Hub {
    /// A hub holding at most `max_unacked` unacked events (and [`DEFAULT_MAX_BYTES`] bytes);
    /// `checkpoint` is the last id acked before (from the store), so it is never delivered
    /// again.
    pub fn new(stream: StreamId, max_unacked: u32, checkpoint: Option<EventId>) -> Arc<Self> {
        Self::with_limits(
            stream,
            max_unacked,
            DEFAULT_MAX_BYTES,
            checkpoint,
            &signal::Group::default(),
            None,
        )
    }

    /// A hub holding at most `max_unacked` unacked events and `max_bytes` bytes of them (as
    /// sent to the app); the newest event is always kept, however large. Acks wake `group` (the
    /// stream's signals: its supervisor waits on them all at once); `clients` is told the
    /// number of consumers whenever it changes.
    pub fn with_limits(
        stream: StreamId,
        max_unacked: u32,
        max_bytes: u32,
        checkpoint: Option<EventId>,
        group: &signal::Group,
        clients: Option<StreamMetrics>,
    ) -> Arc<Self> {
        let max_unacked = max_unacked.max(1);
        let max_bytes = max_bytes.max(1);
        let mut st = State {
            seq: 0,
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            control: VecDeque::new(),
            lagged: false,
            recent: Recent::default(),
            last_acked: None,
            ack_untaken: false,
            generation: 0,
            consumers: 0,
            paused: false,
            held: false,
            state: StreamState::Connecting,
            closed: false,
        };
        if let Some(id) = &checkpoint {
            st.recent.remember(recent_cap(max_unacked), id.clone());
            st.last_acked = Some(id.clone());
        }
        Arc::new(Self {
            stream,
            max_unacked,
            max_bytes,
            state: Mutex::new(st),
            notify: Notify::new(),
            signals: group.clone(),
            clients,
        })
    }

    fn consumers_changed(&self, n: u32) {
        if let Some(clients) = &self.clients {
            clients.app_clients(n);
        }
    }

    /// The stream left this pod: consumers get what is queued, then [`Detached::Closed`].
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stream this hub serves.
    pub fn stream(&self) -> &StreamId {
        &self.stream
    }

    /// Queues an upstream event for the app, unless its id was seen before.
    pub fn push_event(&self, id: &EventId, data: &RawValue, at_ms: u64) -> Push {
        {
            let mut st = self.lock();
            if st.recent.contains(id) {
                return Push::Duplicate;
            }
            st.recent.remember(recent_cap(self.max_unacked), id.clone());
            let frame: Arc<str> = ToApp::Event {
                stream: &self.stream,
                id,
                data,
            }
            .to_json()
            .into();
            st.seq += 1;
            let seq = st.seq;
            st.unacked_bytes += frame.len();
            st.unacked.push_back(Pending {
                seq,
                id: id.clone(),
                frame,
                at_ms,
            });
            // Events dropped to make room: (first at, last at, count).
            let mut overflow: Option<(u64, u64, u64)> = None;
            while st.unacked.len() > self.max_unacked as usize
                || (st.unacked_bytes > self.max_bytes as usize && st.unacked.len() > 1)
            {
                let Some(old) = st.unacked.pop_front() else {
                    break;
                };
                st.unacked_bytes -= old.frame.len();
                overflow = Some(match overflow {
                    None => (old.at_ms, old.at_ms, 1),
                    Some((from, _, n)) => (from, old.at_ms, n + 1),
                });
            }
            if let Some((from, to, n)) = overflow {
                let reason = format!("app buffer full: {n} oldest unacked events dropped");
                let gap = ToApp::Gap {
                    stream: &self.stream,
                    from,
                    to,
                    reason: &reason,
                }
                .to_json();
                append_control(&mut st, gap.into(), false);
            }
        }
        self.notify.notify_waiters();
        Push::Queued
    }

    /// Queues a non-event frame (`dropped`, `gap`, `state`, ...) for the current consumer.
    pub fn push_control(&self, frame: &ToApp<'_>) {
        {
            let mut st = self.lock();
            if let ToApp::State { state, .. } = frame {
                st.state = *state;
            }
            match frame {
                ToApp::Paused { .. } => st.paused = true,
                ToApp::Resumed { .. } => st.paused = false,
                _ => {}
            }
            let level = matches!(frame, ToApp::State { .. });
            append_control(&mut st, frame.to_json().into(), level);
        }
        self.notify.notify_waiters();
    }

    /// Acks `id` and every event delivered before it.
    pub fn ack(&self, id: &EventId) -> Ack {
        let out = {
            let mut st = self.lock();
            match st.unacked.iter().position(|p| &p.id == id) {
                Some(pos) => {
                    let freed: usize = st.unacked.drain(..=pos).map(|p| p.frame.len()).sum();
                    st.unacked_bytes -= freed;
                    st.last_acked = Some(id.clone());
                    st.ack_untaken = true;
                    Ack::Acked(pos + 1)
                }
                None if st.recent.contains(id) => Ack::Already,
                None => Ack::Unknown,
            }
        };
        if matches!(out, Ack::Acked(_)) {
            self.signals.wake();
        }
        out
    }

    /// The pod took the stream (again) under a new fence: whatever this hub still holds from
    /// an earlier ownership is stale, since another pod may have streamed it since and its app
    /// acked it. Drops every unacked event and forgets the ids seen, adopts the store's
    /// `checkpoint` (that id and everything before it were acked, here or on another pod, and
    /// are never delivered again; without one the last id acked here stays), and hands events
    /// to the app again. Returns the id to resume after.
    pub fn reclaim(&self, checkpoint: Option<EventId>) -> Option<EventId> {
        let resume = {
            let mut st = self.lock();
            st.unacked.clear();
            st.unacked_bytes = 0;
            st.recent.clear();
            if let Some(id) = checkpoint {
                st.last_acked = Some(id);
            }
            if let Some(id) = st.last_acked.clone() {
                st.recent.remember(recent_cap(self.max_unacked), id);
            }
            st.held = false;
            st.ack_untaken = false;
            st.last_acked.clone()
        };
        self.notify.notify_waiters();
        resume
    }

    /// The lease is not certain any more (it lapsed, or the store fenced it): nothing more is
    /// handed to the app until [`Hub::release_hold`] or [`Hub::reclaim`]. Control frames
    /// (`dropped`, `state`) still go.
    pub fn hold(&self) {
        self.lock().held = true;
    }

    /// The lease is certain again under the same fence (the store confirmed it, nobody else
    /// took it): the events held are this pod's to deliver.
    pub fn release_hold(&self) {
        self.lock().held = false;
        self.notify.notify_waiters();
    }

    /// Whether events are held because the lease is not certain.
    pub fn held(&self) -> bool {
        self.lock().held
    }

    /// The last acked id if it moved on since it was last taken (or since a reclaim): what
    /// the checkpoint is to record. Bursts of acks coalesce; each wakes the stream's signals.
    pub fn take_ack(&self) -> Option<EventId> {
        let mut st = self.lock();
        std::mem::take(&mut st.ack_untaken)
            .then(|| st.last_acked.clone())
            .flatten()
    }

    /// Waits until the last acked id is one that `reached` accepts (each ack wakes the
    /// stream's signals).
    pub async fn wait_for_ack(&self, mut reached: impl FnMut(&EventId) -> bool) {
        loop {
            let mut woken = std::pin::pin!(self.signals.notified());
            woken.as_mut().enable();
            if self.lock().last_acked.as_ref().is_some_and(&mut reached) {
                return;
            }
            woken.await;
        }
    }

    /// The last acked id.
    pub fn last_acked(&self) -> Option<EventId> {
        self.lock().last_acked.clone()
    }

    /// Bytes of events queued and not acked.
    pub fn pending_bytes(&self) -> u64 {
        self.lock().unacked_bytes as u64
    }

    /// Events queued and not acked.
    pub fn pending_events(&self) -> usize {
        self.lock().unacked.len()
    }

    /// The last state pushed.
    pub fn state(&self) -> StreamState {
        self.lock().state
    }

    /// Whether forwarding is paused.
    pub fn paused(&self) -> bool {
        self.lock().paused
    }

    /// Connected consumers (0 or 1; a replaced one counts until it notices).
    pub fn consumers(&self) -> usize {
        self.lock().consumers as usize
    }

    /// Attaches a new consumer; the previous one, if any, is replaced. The new one is handed
    /// every unacked event first.
    pub fn attach(self: &Arc<Self>) -> Consumer {
        let (generation, consumers) = {
            let mut st = self.lock();
            st.generation = st.generation.wrapping_add(1);
            st.consumers += 1;
            // The new consumer starts after everything queued so far (it is sent the current
            // state instead), and the old one is replaced: nobody reads these any more.
            st.control.clear();
            st.lagged = false;
            (st.generation, st.consumers)
        };
        self.notify.notify_waiters();
        self.consumers_changed(consumers);
        Consumer {
            hub: Arc::clone(self),
            generation,
            event_cursor: 0,
        }
    }
}

/// How many ids a hub remembers to suppress replays: twice its event bound, at least 4,096.
fn recent_cap(max_unacked: u32) -> usize {
    (max_unacked as usize).saturating_mul(2).max(4096)
}

/// The ids a hub remembers to suppress replays, oldest first out. Made on the first id: a
/// stream that has seen none (an idle one) keeps 8 bytes rather than 80, which brings its hub
/// from jemalloc's 320-byte class to the 256-byte one.
#[derive(Debug, Default)]
struct Recent(Option<Box<Window>>);

#[derive(Debug, Default)]
struct Window {
    ids: HashSet<EventId>,
    order: VecDeque<EventId>,
}

impl Recent {
    fn contains(&self, id: &EventId) -> bool {
        self.0.as_ref().is_some_and(|w| w.ids.contains(id))
    }

    /// Remembers `id`, forgetting the oldest beyond `cap`.
    fn remember(&mut self, cap: usize, id: EventId) {
        let w = self.0.get_or_insert_with(Box::default);
        if w.ids.insert(id.clone()) {
            w.order.push_back(id);
            while w.order.len() > cap {
                if let Some(old) = w.order.pop_front() {
                    w.ids.remove(&old);
                }
            }
        }
    }

    fn clear(&mut self) {
        self.0 = None;
    }
}

fn append_control(st: &mut State, frame: Arc<str>, level: bool) {
    st.seq += 1;
    if st.consumers == 0 || st.lagged {
        return;
    }
    if level {
        st.control.retain(|c| !c.level);
    }
    st.control.push_back(Control {
        seq: st.seq,
        frame,
        level,
    });
    if st.control.len() > CONTROL_BACKLOG {
        st.control = VecDeque::new();
        st.lagged = true;
    }
}

/// One app connection's view of a hub.
#[derive(Debug)]
pub struct Consumer {
    hub: Arc<Hub>,
    generation: u32,
    event_cursor: u64,
}

impl Consumer {
    /// The hub.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Waits for frames the app has not been handed and appends them, in order, to `out`.
    /// Cancel-safe: frames are only marked handed when this returns.
    pub async fn next(&mut self, out: &mut Vec<Arc<str>>) -> Result<(), Detached> {
        loop {
            let notified = self.hub.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.hub.lock();
                if st.generation != self.generation {
                    return Err(Detached::Replaced);
                }
                if st.lagged {
                    return Err(Detached::Lagged);
                }
                let mut batch: Vec<(u64, Arc<str>)> = Vec::new();
                if !st.paused && !st.held {
                    batch.extend(
                        st.unacked
                            .iter()
                            .filter(|p| p.seq > self.event_cursor)
                            .map(|p| (p.seq, Arc::clone(&p.frame))),
                    );
                }
                // Every control frame queued is this consumer's and not handed yet; once handed it
                // is never needed again (a later consumer starts after it), nor is its room.
                let control = std::mem::take(&mut st.control);
                batch.extend(control.into_iter().map(|c| (c.seq, c.frame)));
                if !batch.is_empty() {
                    batch.sort_by_key(|(s, _)| *s);
                    if let Some(seq) = st
                        .unacked
                        .back()
                        .map(|p| p.seq)
                        .filter(|_| !st.paused && !st.held)
                    {
                        self.event_cursor = self.event_cursor.max(seq);
                    }
                    out.extend(batch.into_iter().map(|(_, f)| f));
                    return Ok(());
                }
                if st.closed {
                    return Err(Detached::Closed);
                }
            }
            notified.await;
        }
    }

    /// Acks through the hub.
    pub fn ack(&self, id: &EventId) -> Ack {
        self.hub.ack(id)
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let n = {
            let mut st = self.hub.lock();
            st.consumers = st.consumers.saturating_sub(1);
            st.consumers
        };
        self.hub.consumers_changed(n);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).expect("json")
    }

    fn id(n: u32) -> EventId {
        EventId(format!("e{n}"))
    }

    fn hub(max: u32) -> Arc<Hub> {
        Hub::new("cc/q".parse().expect("id"), max, None)
    }

    async fn pull(c: &mut Consumer) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(1), c.next(&mut out))
            .await
            .expect("frames within a second")
            .expect("not replaced");
        out.iter()
            .map(|f| serde_json::from_str(f).expect("json"))
            .collect()
    }

    #[tokio::test]
    async fn unacked_events_are_redelivered_and_acked_ones_never() {
        let h = hub(100);
        let mut c = h.attach();
        for n in 1..=5 {
            assert_eq!(h.push_event(&id(n), &raw("{}"), 0), Push::Queued);
        }
        let got = pull(&mut c).await;
        assert_eq!(got.len(), 5);
        assert_eq!(c.ack(&id(3)), Ack::Acked(3));
        assert_eq!(c.ack(&id(2)), Ack::Already);
        assert_eq!(c.ack(&EventId("nope".into())), Ack::Unknown);
        drop(c);

        let mut c2 = h.attach();
        let ids: Vec<_> = pull(&mut c2)
            .await
            .iter()
            .map(|v| v["id"].as_str().unwrap_or("").to_owned())
            .collect();
        assert_eq!(ids, ["e4", "e5"]);
        // A replay of acked or queued ids is suppressed.
        assert_eq!(h.push_event(&id(2), &raw("{}"), 0), Push::Duplicate);
        assert_eq!(h.push_event(&id(5), &raw("{}"), 0), Push::Duplicate);
        assert_eq!(
            h.take_ack(),
            Some(id(3)),
            "the last ack, for the checkpoint"
        );
        assert_eq!(h.take_ack(), None, "taken once");
        h.reclaim(None);
        assert_eq!(
            h.take_ack(),
            None,
            "a reclaim's resume point is not an ack to record"
        );
        assert_eq!(h.last_acked(), Some(id(3)));
    }

    #[tokio::test]
    async fn a_new_consumer_replaces_the_old_one() {
        let h = hub(10);
        let mut old = h.attach();
        let _new = h.attach();
        let mut out = Vec::new();
        assert_eq!(old.next(&mut out).await, Err(Detached::Replaced));
    }

    #[tokio::test]
    async fn a_closed_hub_hands_over_what_is_queued_then_detaches() {
        let h = hub(10);
        let mut c = h.attach();
        h.push_event(&id(1), &raw("{}"), 0);
        h.close();
        assert_eq!(pull(&mut c).await.len(), 1);
        let mut out = Vec::new();
        assert_eq!(c.next(&mut out).await, Err(Detached::Closed));
    }

    #[tokio::test]
    async fn the_app_clients_gauge_follows_attach_and_drop() {
        let metrics = crate::metrics::Metrics::new();
        let stream: StreamId = "cc/q".parse().expect("id");
        let gauge = metrics.stream(&stream, &"acme".parse().expect("tenant"));
        let h = Hub::with_limits(stream, 10, 1 << 20, None, &Default::default(), Some(gauge));
        let clients = || {
            let text = metrics.encode();
            crate::metrics::tests::samples(&text, "streamkeeper_app_clients")
                .first()
                .map(|(_, v)| *v)
        };
        assert_eq!(clients(), Some(0.0));
        let c = h.attach();
        assert_eq!(clients(), Some(1.0));
        drop(c);
        assert_eq!(clients(), Some(0.0));
    }

    #[test]
    fn a_hub_fits_the_allocators_224_byte_class() {
        // With the `Arc`'s two counts; one byte more is 256.
        let size = size_of::<Hub>() + 16;
        assert!(size <= 224, "{size} bytes");
    }

    #[tokio::test]
    async fn overflow_drops_the_oldest_and_sends_one_gap() {
        let h = hub(3);
        for n in 1..=5 {
            h.push_event(&id(n), &raw("{}"), u64::from(n) * 1000);
        }
        let mut c = h.attach();
        // The gaps were pushed before this consumer attached: it sees the survivors only.
        let got = pull(&mut c).await;
        let ids: Vec<_> = got
            .iter()
            .map(|v| v["id"].as_str().unwrap_or("").to_owned())
            .collect();
        assert_eq!(ids, ["e3", "e4", "e5"]);

        h.push_event(&id(6), &raw("{}"), 6000);
        let got = pull(&mut c).await;
        assert_eq!(got[0]["type"], "event");
        assert_eq!(got[1]["type"], "gap");
        assert_eq!(
            (got[1]["from"].as_u64(), got[1]["to"].as_u64()),
            (Some(3000), Some(3000))
        );
    }

    #[tokio::test]
    async fn paused_holds_events_until_resumed() {
        let h = hub(10);
        let stream = h.stream().clone();
        let mut c = h.attach();
        h.push_control(&ToApp::Paused {
            stream: &stream,
            reason: "token_mismatch",
        });
        h.push_event(&id(1), &raw("{}"), 0);
        let got = pull(&mut c).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["type"], "paused");
        h.push_control(&ToApp::Resumed { stream: &stream });
        let got = pull(&mut c).await;
        let kinds: Vec<_> = got
            .iter()
            .map(|v| v["type"].as_str().unwrap_or("").to_owned())
            .collect();
        assert_eq!(kinds, ["event", "resumed"]);
    }

    #[tokio::test]
    async fn the_byte_bound_drops_the_oldest_and_sends_one_gap() {
        let h = Hub::with_limits(
            "cc/q".parse().expect("id"),
            100,
            300,
            None,
            &signal::Group::default(),
            None,
        );
        let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(80));
        for n in 1..=5 {
            h.push_event(&id(n), &raw(&big), u64::from(n) * 1000);
        }
        assert!(h.pending_bytes() <= 300, "{} bytes held", h.pending_bytes());
        assert!(h.pending_events() < 5 && h.pending_events() > 0);
        let mut c = h.attach();
        h.push_event(&id(6), &raw(&big), 6000);
        let got = pull(&mut c).await;
        let gaps = got.iter().filter(|v| v["type"] == "gap").count();
        assert_eq!(gaps, 1, "{got:?}");
        assert_eq!(
            got.iter()
                .rfind(|v| v["type"] == "event")
                .map(|v| v["id"].clone()),
            Some("e6".into())
        );
        // One event larger than the bound is still held: it is the newest.
        let huge = format!("{{\"pad\":\"{}\"}}", "y".repeat(1000));
        h.push_event(&id(7), &raw(&huge), 7000);
        assert_eq!(h.pending_events(), 1);
    }

    #[tokio::test]
    async fn a_held_hub_hands_nothing_until_released_and_a_reclaim_drops_stale_events() {
        let h = hub(100);
        let mut c = h.attach();
        h.push_event(&id(1), &raw("{}"), 0);
        assert_eq!(pull(&mut c).await.len(), 1);
        h.hold();
        h.push_event(&id(2), &raw("{}"), 0);
        let mut out = Vec::new();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), c.next(&mut out))
                .await
                .is_err(),
            "nothing is handed while held: {out:?}"
        );
        h.release_hold();
        let got = pull(&mut c).await;
        assert_eq!(got[0]["id"], "e2");
        // Another pod streamed the stream meanwhile and its app acked up to e5: e1 and e2 (never
        // acked here) are stale; the ids seen here are forgotten, so nothing the platform
        // replays after the checkpoint is suppressed as seen.
        h.hold();
        assert_eq!(h.reclaim(Some(id(5))), Some(id(5)));
        assert_eq!(h.pending_events(), 0);
        assert_eq!(h.last_acked(), Some(id(5)));
        assert_eq!(h.push_event(&id(5), &raw("{}"), 0), Push::Duplicate);
        assert_eq!(
            h.push_event(&id(2), &raw("{}"), 0),
            Push::Queued,
            "no longer remembered"
        );
        assert!(!h.held());
        // A late ack of an event from before never moves the last acked id back.
        assert_eq!(h.ack(&id(1)), Ack::Unknown);
        assert_eq!(h.last_acked(), Some(id(5)));
        // Without a store checkpoint, the last id acked here stays.
        let h = hub(10);
        h.push_event(&id(1), &raw("{}"), 0);
        h.ack(&id(1));
        assert_eq!(h.reclaim(None), Some(id(1)));
    }

    fn dropped(h: &Hub, conn: &streamkeeper_api::ConnectionId, at: u64) {
        h.push_control(&ToApp::Dropped {
            stream: h.stream(),
            connection_id: conn,
            reason: streamkeeper_api::DropReason::PongTimeout,
            pending_bytes: 0,
            last_acked_id: None,
            at,
        });
    }

    fn state(h: &Hub, state: StreamState) {
        h.push_control(&ToApp::State {
            stream: h.stream(),
            state,
        });
    }

    #[tokio::test]
    async fn a_consumer_that_lags_sees_every_edge_and_only_the_newest_state() {
        let h = hub(10);
        let conn = streamkeeper_api::ConnectionId("c1".into());
        // Nobody attached: nothing is kept (a later consumer starts after it anyway).
        dropped(&h, &conn, 1);
        assert!(h.lock().control.is_empty());

        let mut c = h.attach();
        for at in 0..500 {
            dropped(&h, &conn, at);
            state(&h, StreamState::Connecting);
            state(&h, StreamState::Active);
        }
        let got = pull(&mut c).await;
        let ats: Vec<_> = got
            .iter()
            .filter(|v| v["type"] == "dropped")
            .filter_map(|v| v["at"].as_u64())
            .collect();
        assert_eq!(ats, (0..500).collect::<Vec<_>>(), "every dropped, in order");
        let states: Vec<_> = got.iter().filter(|v| v["type"] == "state").collect();
        assert_eq!(states.len(), 1, "{states:?}");
        assert_eq!(states[0]["state"], "ACTIVE");
        assert_eq!(got.last(), Some(states[0]), "the state is the newest frame");
        assert!(h.lock().control.is_empty(), "handed frames are not kept");
    }

    #[tokio::test]
    async fn a_consumer_past_the_backlog_is_detached_and_the_next_one_starts_clean() {
        let h = hub(10);
        let conn = streamkeeper_api::ConnectionId("c1".into());
        let mut c = h.attach();
        h.push_event(&id(1), &raw("{}"), 0);
        for at in 0..=CONTROL_BACKLOG as u64 {
            dropped(&h, &conn, at);
        }
        let mut out = Vec::new();
        assert_eq!(c.next(&mut out).await, Err(Detached::Lagged));
        assert!(out.is_empty());
        assert!(h.lock().control.is_empty(), "the backlog is let go");
        drop(c);

        let mut c2 = h.attach();
        dropped(&h, &conn, 9999);
        let got = pull(&mut c2).await;
        let kinds: Vec<_> = got.iter().map(|v| v["type"].clone()).collect();
        assert_eq!(
            kinds,
            ["event", "dropped"],
            "the unacked event waits for it"
        );
        assert_eq!(got[1]["at"], 9999);
    }

    #[test]
    fn a_checkpoint_is_never_delivered_again() {
        let h = Hub::new("cc/q".parse().expect("id"), 10, Some(id(7)));
        assert_eq!(h.push_event(&id(7), &raw("{}"), 0), Push::Duplicate);
        assert_eq!(h.last_acked(), Some(id(7)));
    }
}
