//! Non-durable event feeds: named topics that produce events on a timer and push each one to
//! whoever is attached at that moment (Genesys topics, DFO streams, AAH contact ids).
//!
//! An event is built once and shared by every receiver. A receiver that is not attached, or
//! whose queue is full, loses it: nothing is kept for replay, as on the real platforms.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, watch};

use crate::frame;
use crate::socket::Writer;
use crate::stats::FeedStats;
use crate::util::{epoch_ms, iso8601_ms, json_escape, lock, stopped, uuid4};

/// Events queued per receiver before it loses them.
pub(crate) const QUEUE: usize = 16_384;

/// The wire shape of a feed's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// A Genesys notification.
    Genesys,
    /// A DFO event hub event.
    Dfo,
    /// An AAH `MESSAGE`, with or without a `messageId`.
    Aah {
        /// Whether it carries a `messageId`.
        ids: bool,
    },
}

/// A receiver's slot: where events go while something is attached.
#[derive(Debug, Default)]
pub(crate) struct Outlet {
    tx: Mutex<Option<mpsc::Sender<Bytes>>>,
}

impl Outlet {
    /// A new receiver queue, attached now (replacing any earlier one).
    pub fn attach(&self) -> Inbox {
        let (tx, rx) = mpsc::channel(QUEUE);
        *lock(&self.tx) = Some(tx);
        Inbox { rx, pending: None }
    }

    /// Detach: events are lost from now on.
    pub fn detach(&self) {
        lock(&self.tx).take();
    }

    /// Offer one event; whether it was queued.
    fn offer(&self, event: &Bytes) -> bool {
        lock(&self.tx)
            .as_ref()
            .is_some_and(|tx| tx.try_send(event.clone()).is_ok())
    }
}

/// A socket's end of an [`Outlet`]: the events waiting to be written.
#[derive(Debug)]
pub(crate) struct Inbox {
    rx: mpsc::Receiver<Bytes>,
    /// An event received by `ready` and not yet taken.
    pending: Option<Bytes>,
}

impl Inbox {
    /// Resolves when an event waits; never once no more can come (the outlet was detached).
    pub async fn ready(&mut self) {
        if self.pending.is_none() {
            match self.rx.recv().await {
                Some(e) => self.pending = Some(e),
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// The next waiting event, without waiting.
    pub fn take(&mut self) -> Option<Bytes> {
        self.pending.take().or_else(|| self.rx.try_recv().ok())
    }

    /// Queue waiting events while the writer has room.
    pub fn drain_into(&mut self, wr: &mut Writer) {
        while wr.has_room() {
            match self.take() {
                Some(e) => wr.push(e),
                None => return,
            }
        }
    }
}

/// One topic.
#[derive(Debug)]
pub(crate) struct Topic {
    name: String,
    escaped: String,
    shape: Shape,
    last_seq: AtomicU64,
    sent: AtomicU64,
    /// Receivers by id (a Genesys channel's serial, or a socket id).
    outlets: Mutex<HashMap<u64, Arc<Outlet>>>,
}

impl Topic {
    /// Produce `n` events now and hand each to every attached receiver.
    pub fn emit(&self, n: usize) {
        let mut scratch = String::new();
        for _ in 0..n {
            let seq = self.last_seq.fetch_add(1, Ordering::Relaxed) + 1;
            let event = self.event(seq, &mut scratch);
            let outlets = lock(&self.outlets);
            let sent = outlets.values().filter(|o| o.offer(&event)).count();
            drop(outlets);
            self.sent.fetch_add(sent as u64, Ordering::Relaxed);
        }
    }

    /// The frame of event `seq`.
    fn event(&self, seq: u64, s: &mut String) -> Bytes {
        s.clear();
        let t = &self.escaped;
        let at = epoch_ms();
        let id = uuid4();
        // Writing to a String cannot fail.
        let _ = match self.shape {
            Shape::Genesys => write!(
                s,
                r#"{{"topicName":"{t}","version":"2","eventBody":{{"seq":{seq},"topic":"{t}","at":{at}}},"metadata":{{"CorrelationId":"{id}"}}}}"#
            ),
            Shape::Dfo => write!(
                s,
                r#"{{"eventId":"{id}","eventType":"CaseStatusChanged","createdAt":"{}","data":{{"seq":{seq},"stream":"{t}","at":{at}}}}}"#,
                iso8601_ms(at)
            ),
            Shape::Aah { ids: true } => write!(
                s,
                r#"{{"command":"MESSAGE","headers":{{"topic":"{t}","messageId":"{id}"}},"body":{{"seq":{seq},"topic":"{t}","at":{at}}}}}"#
            ),
            Shape::Aah { ids: false } => write!(
                s,
                r#"{{"command":"MESSAGE","headers":{{"topic":"{t}"}},"body":{{"seq":{seq},"topic":"{t}","at":{at}}}}}"#
            ),
        };
        let mut out = BytesMut::with_capacity(s.len() + 4);
        frame::put(&mut out, frame::OP_TEXT, s.as_bytes());
        out.freeze()
    }

    /// Attach receiver `id` (replacing one with the same id).
    pub fn add(&self, id: u64, outlet: Arc<Outlet>) {
        lock(&self.outlets).insert(id, outlet);
    }

    /// Detach receiver `id`.
    pub fn remove(&self, id: u64) {
        lock(&self.outlets).remove(&id);
    }

    /// The ids of the attached receivers.
    pub fn receivers(&self) -> Vec<u64> {
        lock(&self.outlets).keys().copied().collect()
    }

    fn stats(&self) -> FeedStats {
        FeedStats {
            generated: self.last_seq.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            receivers: lock(&self.outlets).len(),
        }
    }
}

/// A set of topics of one shape.
#[derive(Debug)]
pub(crate) struct Feeds {
    shape: Shape,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
}

impl Feeds {
    /// No topics yet.
    pub fn new(shape: Shape) -> Self {
        Self {
            shape,
            topics: RwLock::default(),
        }
    }

    /// The topic called `name`, created (producing from now on) if needed.
    pub fn topic(&self, name: &str) -> Arc<Topic> {
        if let Some(t) = self.get(name) {
            return t;
        }
        let mut topics = self
            .topics
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        topics
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Topic {
                    name: name.to_string(),
                    escaped: json_escape(name),
                    shape: self.shape,
                    last_seq: AtomicU64::new(0),
                    sent: AtomicU64::new(0),
                    outlets: Mutex::default(),
                })
            })
            .clone()
    }

    /// The topic called `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Every topic now.
    fn all(&self) -> Vec<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Counters per topic.
    pub fn stats(&self) -> BTreeMap<String, FeedStats> {
        self.all()
            .iter()
            .map(|t| (t.name.clone(), t.stats()))
            .collect()
    }
}

/// One event on every topic of `feeds` every `every`, until shutdown.
pub(crate) async fn tick(feeds: Arc<Feeds>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {
                for t in feeds.all() {
                    t.emit(1);
                }
            }
            () = stopped(&mut shutdown) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(b: &Bytes) -> serde_json::Value {
        let skip = match b[1] & 0x7F {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        serde_json::from_slice(&b[skip..]).expect("json")
    }

    #[tokio::test]
    async fn events_go_to_attached_receivers_only_and_carry_a_per_topic_sequence() {
        let feeds = Feeds::new(Shape::Genesys);
        let t = feeds.topic("v2.users.u1.presence");
        let (a, b) = (Arc::new(Outlet::default()), Arc::new(Outlet::default()));
        t.add(1, a.clone());
        t.add(2, b.clone());
        let mut ra = a.attach();
        t.emit(1); // b is not attached: lost for b
        let mut rb = b.attach();
        t.emit(2);
        let got: Vec<u64> = std::iter::from_fn(|| ra.take())
            .map(|e| json(&e)["eventBody"]["seq"].as_u64().expect("seq"))
            .collect();
        assert_eq!(got, [1, 2, 3]);
        let second = rb.take().expect("event");
        assert_eq!(json(&second)["eventBody"]["seq"], 2);
        assert_eq!(json(&second)["topicName"], "v2.users.u1.presence");
        assert_eq!(json(&second)["version"], "2");
        let st = &feeds.stats()["v2.users.u1.presence"];
        assert_eq!((st.generated, st.sent, st.receivers), (3, 5, 2));
        t.remove(1);
        t.emit(1);
        assert!(ra.take().is_none(), "removed receivers get nothing");
    }

    #[test]
    fn every_shape_is_json_with_its_identity_fields() {
        for (shape, key) in [
            (Shape::Dfo, "eventId"),
            (Shape::Aah { ids: true }, "command"),
        ] {
            let feeds = Feeds::new(shape);
            let t = feeds.topic("t\"1");
            let e = json(&t.event(7, &mut String::new()));
            assert!(e.get(key).is_some(), "{e}");
        }
        let aah = Feeds::new(Shape::Aah { ids: false }).topic("c1");
        let e = json(&aah.event(1, &mut String::new()));
        assert_eq!(e["command"], "MESSAGE");
        assert!(e["headers"].get("messageId").is_none());
        assert_eq!(e["body"]["seq"], 1);
    }
}
