//! A demo app: what a team's service does with streamkeeper. It connects to its pod's sidecar
//! over localhost, acks every event, and reports to the ledger, which checks that no acked
//! event is ever delivered again and that none is lost: by event id, and by the emulator's
//! sequence number per feed (a Genesys topic, a CXone DFO stream or AAH contact id), which
//! catches an event delivered twice under two ids.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use streamkeeper_api::{PodName, StreamId, app_protocol::AppFrame};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// Every delivery of every app, across pods.
#[derive(Debug, Default)]
pub struct Ledger {
    inner: Mutex<LedgerState>,
}

#[derive(Debug, Default)]
struct LedgerState {
    /// Ids acked so far, per stream.
    acked: HashMap<StreamId, HashSet<String>>,
    /// Deliveries of an id after it was acked (the contract says: never).
    duplicates: Vec<(StreamId, String)>,
    /// Deliveries of an unacked id again (allowed: redelivery after a drop).
    redelivered: u64,
    delivered: u64,
    /// `dropped` frames seen by apps, by reason.
    dropped: BTreeMap<String, u64>,
    gaps: u64,
    seen_unacked: HashMap<StreamId, HashSet<String>>,
    /// Per stream: what its app saw.
    streams: HashMap<StreamId, StreamLedger>,
}

/// What one stream's apps saw.
#[derive(Debug, Clone, Default)]
pub struct StreamLedger {
    /// Per feed (the emulator's topic or stream name in the payload): sequence numbers acked.
    pub acked: BTreeMap<String, BTreeSet<u64>>,
    /// Deliveries of a feed's sequence number after it was acked.
    pub duplicates: u64,
    /// Events delivered (including redeliveries).
    pub delivered: u64,
    /// `dropped` frames.
    pub dropped: u64,
    /// `gap` frames.
    pub gaps: u64,
}

impl StreamLedger {
    /// The first sequence number acked on `feed`: where the feed started for the app (the
    /// platforms do not replay what came before the first socket).
    pub fn first(&self, feed: &str) -> Option<u64> {
        self.acked.get(feed).and_then(|s| s.first().copied())
    }

    /// Sequence numbers of `feed` from its first acked one through `last` never acked.
    pub fn missing(&self, feed: &str, last: u64) -> Vec<u64> {
        let Some(acked) = self.acked.get(feed) else {
            return Vec::new();
        };
        let first = acked.first().copied().unwrap_or(1);
        (first..=last).filter(|n| !acked.contains(n)).collect()
    }
}

/// The feed and sequence number the emulator puts in every payload: a Genesys frame's
/// `eventBody`, an AAH `body`, a DFO `data`, or a generic payload itself, each with `seq` and
/// `topic` or `stream`.
fn feed_key(data: &serde_json::Value) -> Option<(String, u64)> {
    let body = ["eventBody", "body", "data"]
        .iter()
        .find_map(|k| data.get(k))
        .unwrap_or(data);
    let seq = body.get("seq")?.as_u64()?;
    let feed = body
        .get("topic")
        .or_else(|| body.get("stream"))
        .and_then(serde_json::Value::as_str)?;
    Some((feed.to_owned(), seq))
}

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a delivery.
    fn delivered(&self, stream: &StreamId, id: &str, key: Option<&(String, u64)>) {
        let mut st = self.lock();
        st.delivered += 1;
        let per = st.streams.entry(stream.clone()).or_default();
        per.delivered += 1;
        if let Some((feed, seq)) = key
            && per.acked.get(feed).is_some_and(|s| s.contains(seq))
        {
            per.duplicates += 1;
        }
        if st.acked.get(stream).is_some_and(|s| s.contains(id)) {
            st.duplicates.push((stream.clone(), id.to_owned()));
            return;
        }
        if !st
            .seen_unacked
            .entry(stream.clone())
            .or_default()
            .insert(id.to_owned())
        {
            st.redelivered += 1;
        }
    }

    fn acked(&self, stream: &StreamId, id: &str, key: Option<(String, u64)>) {
        let mut st = self.lock();
        if let Some((feed, seq)) = key {
            st.streams
                .entry(stream.clone())
                .or_default()
                .acked
                .entry(feed)
                .or_default()
                .insert(seq);
        }
        st.acked
            .entry(stream.clone())
            .or_default()
            .insert(id.to_owned());
        if let Some(s) = st.seen_unacked.get_mut(stream) {
            s.remove(id);
        }
    }

    fn dropped(&self, stream: &StreamId, reason: &str) {
        let mut st = self.lock();
        *st.dropped.entry(reason.to_owned()).or_default() += 1;
        st.streams.entry(stream.clone()).or_default().dropped += 1;
    }

    fn gap(&self, stream: &StreamId) {
        let mut st = self.lock();
        st.gaps += 1;
        st.streams.entry(stream.clone()).or_default().gaps += 1;
    }

    /// What the apps of `stream` saw.
    pub fn stream(&self, stream: &StreamId) -> StreamLedger {
        self.lock().streams.get(stream).cloned().unwrap_or_default()
    }

    /// The first id of `stream` any app acked: where the stream started for the apps (a new
    /// stream starts at "now"; what the platform emitted before it existed is not owed).
    pub fn first_acked(&self, stream: &StreamId) -> Option<String> {
        self.lock()
            .acked
            .get(stream)
            .and_then(|s| s.iter().min().cloned())
    }

    /// Whether `id` of `stream` was acked.
    pub fn is_acked(&self, stream: &StreamId, id: &str) -> bool {
        self.lock()
            .acked
            .get(stream)
            .is_some_and(|s| s.contains(id))
    }

    /// What the apps saw, in total.
    pub fn totals(&self) -> Totals {
        let st = self.lock();
        Totals {
            delivered: st.delivered,
            duplicates: st.duplicates.clone(),
            redelivered: st.redelivered,
            gaps: st.gaps,
            dropped: st.dropped.clone(),
        }
    }
}

/// What the apps saw, in total.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    /// Events delivered (including redeliveries).
    pub delivered: u64,
    /// Deliveries of an id after it was acked.
    pub duplicates: Vec<(StreamId, String)>,
    /// Deliveries of an unacked id again.
    pub redelivered: u64,
    /// `gap` frames.
    pub gaps: u64,
    /// `dropped` frames by reason.
    pub dropped: BTreeMap<String, u64>,
}

/// Controls one demo app.
#[derive(Debug, Clone)]
pub struct AppHandle {
    /// `true` while the app is told to stay disconnected.
    pub away: watch::Sender<bool>,
}

/// Starts an app for `stream` against a sidecar listening on `listen`. It reconnects by itself
/// whenever the socket ends, unless told to stay away.
pub fn spawn(pod: PodName, listen: SocketAddr, stream: StreamId, ledger: Arc<Ledger>) -> AppHandle {
    let (away, mut away_rx) = watch::channel(false);
    let url = format!(
        "ws://{listen}/streams/{}/{}",
        stream.namespace(),
        stream.name()
    );
    tokio::spawn(async move {
        loop {
            let away = *away_rx.borrow_and_update();
            if away {
                let _ = away_rx.changed().await;
                continue;
            }
            let Ok((ws, _)) = tokio_tungstenite::connect_async(&url).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let (mut tx, mut rx) = ws.split();
            loop {
                tokio::select! {
                    msg = rx.next() => {
                        let Some(Ok(msg)) = msg else { break };
                        let Message::Text(text) = msg else { continue };
                        match serde_json::from_str::<AppFrame>(&text) {
                            Ok(AppFrame::Event { id, data, .. }) => {
                                let key = feed_key(&data);
                                ledger.delivered(&stream, id.as_str(), key.as_ref());
                                let ack = serde_json::json!({"type": "ack", "id": id}).to_string();
                                if tx.send(Message::text(ack)).await.is_err() {
                                    break;
                                }
                                ledger.acked(&stream, id.as_str(), key);
                            }
                            Ok(AppFrame::Dropped { reason, .. }) => {
                                ledger.dropped(&stream, reason.as_str());
                            }
                            Ok(AppFrame::Gap { .. }) => ledger.gap(&stream),
                            Ok(_) => {}
                            Err(e) => tracing::warn!(%pod, %stream, error = %e, "demo app: unreadable frame"),
                        }
                    }
                    changed = away_rx.changed() => {
                        let away = changed.is_err() || *away_rx.borrow_and_update();
                        if away {
                            let _ = tx.close().await;
                            break;
                        }
                    }
                }
            }
        }
    });
    AppHandle { away }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(frame: &str) -> Option<(String, u64)> {
        feed_key(&serde_json::from_str(frame).expect("json"))
    }

    #[test]
    fn every_platform_payload_names_its_feed_and_sequence() {
        // The emulator's shapes: Genesys, DFO, AAH and generic.
        let genesys = r#"{"topicName":"v2.users.u1.presence","version":"2","eventBody":{"seq":7,"topic":"v2.users.u1.presence","at":1},"metadata":{"CorrelationId":"c"}}"#;
        let dfo = r#"{"eventId":"e","eventType":"CaseStatusChanged","data":{"seq":3,"stream":"t/u","at":1}}"#;
        let aah = r#"{"command":"MESSAGE","headers":{"topic":"contact-1"},"body":{"seq":9,"topic":"contact-1","at":1}}"#;
        let generic = r#"{"seq":4,"stream":"queue-events","at":1}"#;
        assert_eq!(key(genesys), Some(("v2.users.u1.presence".into(), 7)));
        assert_eq!(key(dfo), Some(("t/u".into(), 3)));
        assert_eq!(key(aah), Some(("contact-1".into(), 9)));
        assert_eq!(key(generic), Some(("queue-events".into(), 4)));
        assert_eq!(key(r#"{"eventBody":{"message":"pong"}}"#), None);
    }

    #[test]
    fn a_sequence_acked_then_delivered_under_another_id_is_a_duplicate() {
        let ledger = Ledger::default();
        let s = StreamId::new("cc", "g").expect("id");
        let k = |n| Some(("topic".to_owned(), n));
        for (id, n) in [("a", 1), ("b", 2), ("d", 4)] {
            ledger.delivered(&s, id, k(n).as_ref());
            ledger.acked(&s, id, k(n));
        }
        assert_eq!(ledger.stream(&s).duplicates, 0);
        // The same event again, under an id the id-based check has never seen.
        ledger.delivered(&s, "b-again", k(2).as_ref());
        let seen = ledger.stream(&s);
        assert_eq!(seen.duplicates, 1);
        assert_eq!(seen.delivered, 4);
        assert_eq!(seen.first("topic"), Some(1));
        assert_eq!(seen.missing("topic", 5), vec![3, 5]);
        assert!(
            seen.missing("other", 5).is_empty(),
            "an unknown feed owes nothing here"
        );
    }
}
