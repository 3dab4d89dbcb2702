//! The transitions subscription: a dedicated pub/sub connection that comes back by itself.
//!
//! In Redis Cluster a classic PUBLISH is broadcast to every node, so one subscription on any one
//! node hears every tenant's transitions; the subscriber moves to the next seed node when the
//! one it used stops answering.

use std::time::Duration;

use ::redis::{
    Msg,
    aio::{PubSubSink, PubSubStream},
};
use futures_util::StreamExt;
use streamkeeper_api::{Transition, transition::TRANSITIONS_CHANNEL};
use tokio::sync::mpsc;

use super::conn::Endpoints;
use crate::store::TransitionStream;

/// How often an idle subscription is checked with a PING (a half-open connection is noticed).
const KEEPALIVE: Duration = Duration::from_secs(5);
/// Reconnection backoff: from this, doubling, jittered…
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// …up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

type Session = (PubSubSink, PubSubStream);

/// Subscribes to `streamkeeper:transitions`. The first connection is attempted before this
/// returns (so a reachable Redis delivers every transition published after it); when it fails,
/// or whenever the connection is lost later, the subscriber reconnects in the background with
/// jittered exponential backoff. Transitions published while it is disconnected are not heard.
/// The background task ends when the returned stream is dropped.
pub(crate) async fn subscribe(endpoints: Endpoints, connect_timeout: Duration) -> TransitionStream {
    let mut sub = Subscriber {
        endpoints,
        connect_timeout,
        next_node: 0,
    };
    let first = sub.connect().await;
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(sub.run(first, tx));
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|t| (t, rx)) })
        .boxed()
}

struct Subscriber {
    endpoints: Endpoints,
    connect_timeout: Duration,
    next_node: usize,
}

impl Subscriber {
    /// One attempt on the next node in turn.
    async fn connect(&mut self) -> Option<Session> {
        let n = self.endpoints.nodes.len().max(1);
        let idx = self.next_node % n;
        self.next_node = self.next_node.wrapping_add(1);
        let url = self.endpoints.nodes.get(idx)?;
        let attempt = async {
            let client = ::redis::Client::open(url.as_str())?;
            let (mut sink, stream) = client.get_async_pubsub().await?.split();
            sink.subscribe(TRANSITIONS_CHANNEL).await?;
            Ok::<_, ::redis::RedisError>((sink, stream))
        };
        match tokio::time::timeout(self.connect_timeout * 2, attempt).await {
            Ok(Ok(session)) => {
                tracing::debug!(redis = %self.endpoints.display, "subscribed to {TRANSITIONS_CHANNEL}");
                Some(session)
            }
            Ok(Err(e)) => {
                tracing::warn!(redis = %self.endpoints.display, error = %self.endpoints.redact(&e.to_string()),
                    "cannot subscribe to {TRANSITIONS_CHANNEL}; retrying");
                None
            }
            Err(_) => {
                tracing::warn!(redis = %self.endpoints.display, "subscribing to {TRANSITIONS_CHANNEL} timed out; retrying");
                None
            }
        }
    }

    async fn run(mut self, mut session: Option<Session>, tx: mpsc::Sender<Transition>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            if let Some((sink, stream)) = session.take() {
                backoff = BACKOFF_MIN;
                if !forward(sink, stream, &tx).await {
                    return;
                }
                tracing::warn!(redis = %self.endpoints.display, "lost the {TRANSITIONS_CHANNEL} subscription; reconnecting");
            }
            let wait = jitter(backoff);
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            session = self.connect().await;
        }
    }
}

/// Forwards transitions until the connection is lost (returns true) or nobody listens any more
/// (returns false).
async fn forward(
    mut sink: PubSubSink,
    mut stream: PubSubStream,
    tx: &mpsc::Sender<Transition>,
) -> bool {
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keepalive.tick().await;
    loop {
        tokio::select! {
            _ = tx.closed() => return false,
            msg = stream.next() => match msg {
                None => return true,
                Some(msg) => {
                    if let Some(t) = decode(&msg)
                        && tx.send(t).await.is_err()
                    {
                        return false;
                    }
                }
            },
            _ = keepalive.tick() => {
                let ping = tokio::time::timeout(KEEPALIVE, sink.ping::<::redis::Value>()).await;
                if !matches!(ping, Ok(Ok(_))) {
                    return true;
                }
            }
        }
    }
}

/// A published transition, or `None` (logged) when the message is not one.
fn decode(msg: &Msg) -> Option<Transition> {
    match serde_json::from_slice::<Transition>(msg.get_payload_bytes()) {
        Ok(t) => Some(t),
        Err(e) => {
            let payload = String::from_utf8_lossy(msg.get_payload_bytes());
            let shown: String = payload.chars().take(200).collect();
            tracing::warn!(error = %e, payload = %shown, "skipping a malformed message on {TRANSITIONS_CHANNEL}");
            None
        }
    }
}

/// Full jitter: a uniform wait in [d/2, d].
fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    half + half.mul_f64(rand::random::<f64>())
}
