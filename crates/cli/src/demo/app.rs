//! A demo app: what a team's service does with streamkeeper. It connects to its pod's sidecar
//! over localhost, acks every event, and reports to the ledger, which checks that no acked
//! event is ever delivered again and that none is lost.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
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
}

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a delivery; returns whether the app should ack it.
    fn delivered(&self, stream: &StreamId, id: &str) {
        let mut st = self.lock();
        st.delivered += 1;
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

    fn acked(&self, stream: &StreamId, id: &str) {
        let mut st = self.lock();
        st.acked
            .entry(stream.clone())
            .or_default()
            .insert(id.to_owned());
        if let Some(s) = st.seen_unacked.get_mut(stream) {
            s.remove(id);
        }
    }

    fn dropped(&self, reason: &str) {
        *self.lock().dropped.entry(reason.to_owned()).or_default() += 1;
    }

    fn gap(&self) {
        self.lock().gaps += 1;
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
                            Ok(AppFrame::Event { id, .. }) => {
                                ledger.delivered(&stream, id.as_str());
                                let ack = serde_json::json!({"type": "ack", "id": id}).to_string();
                                if tx.send(Message::text(ack)).await.is_err() {
                                    break;
                                }
                                ledger.acked(&stream, id.as_str());
                            }
                            Ok(AppFrame::Dropped { reason, .. }) => ledger.dropped(reason.as_str()),
                            Ok(AppFrame::Gap { .. }) => ledger.gap(),
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
