//! A Genesys channel socket: `GET /channels/{id}` with no auth header; topic events, server
//! heartbeats, `{"message":"ping"}` and socket subscribes, `socket_closing`, and the close when
//! the channel stops.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::debug;

use super::{ChannelError, SubMode};
use crate::feed::Inbox;
use crate::frame;
use crate::http::{Body, empty, switching, websocket_accept};
use crate::socket::{self, Action, Dialect, Writer};
use crate::state::{Order, Shared, SocketKey};
use crate::util::{deadline_after, uuid4};

/// The server heartbeat.
const HEARTBEAT: &str =
    r#"{"topicName":"channel.metadata","eventBody":{"message":"WebSocket Heartbeat"}}"#;
/// The answer to `{"message":"ping"}`.
const PONG: &str = r#"{"topicName":"channel.metadata","eventBody":{"message":"pong"}}"#;
/// Normal closure.
const CLOSE_NORMAL: u16 = 1000;

/// `GET /channels/{id}`: take the channel and run its socket.
pub(crate) fn upgrade(
    shared: &Arc<Shared>,
    mut req: Request<Incoming>,
    id: &str,
) -> Response<Body> {
    let accept = match websocket_accept(req.headers()) {
        Ok(accept) => accept,
        Err(bad) => return bad.response(),
    };
    let g = &shared.genesys;
    let Some(client) = g.client_of(shared, id) else {
        return empty(StatusCode::NOT_FOUND);
    };
    let (reg, ctl, pong) = shared.register_key(SocketKey::Genesys {
        channel: id.to_string(),
        client,
    });
    let Ok(conn) = g.connect(shared, id, reg.id) else {
        return empty(StatusCode::NOT_FOUND);
    };
    let heartbeat = g.cfg().heartbeat_interval;
    let now = Instant::now();
    let dialect = GenesysSocket {
        shared: shared.clone(),
        channel: id.to_string(),
        socket: reg.id,
        events: conn.events,
        heartbeat,
        next_heartbeat: (!heartbeat.is_zero()).then(|| deadline_after(now, heartbeat)),
        stop_at: conn.stop_at,
        closing: None,
        stopped: None,
    };
    let wr = Writer::new(pong, g.pongs.clone());
    let on_upgrade = hyper::upgrade::on(&mut req);
    shared.spawn(socket::serve(on_upgrade, reg, ctl, wr, dialect));
    switching(accept)
}

/// One channel's socket.
struct GenesysSocket {
    shared: Arc<Shared>,
    channel: String,
    socket: u64,
    events: Inbox,
    heartbeat: Duration,
    next_heartbeat: Option<Instant>,
    /// When the channel stops unless extended (checked again then).
    stop_at: Instant,
    /// After `socket_closing`: when to close, and with which code.
    closing: Option<(Instant, u16)>,
    /// The channel stopped: when to close, and why.
    stopped: Option<(Instant, &'static str)>,
}

impl Drop for GenesysSocket {
    fn drop(&mut self) {
        self.shared.genesys.disconnect(&self.channel, self.socket);
    }
}

impl GenesysSocket {
    /// A socket `subscribe`/`unsubscribe`: its reply.
    fn subscribe(&mut self, msg: &Value, mode: SubMode) -> Value {
        let topics: Vec<String> = msg
            .get("topics")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|t| {
                        t.as_str()
                            .map(str::to_string)
                            .or_else(|| t.get("id").and_then(Value::as_str).map(str::to_string))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let shared = self.shared.clone();
        let result = shared
            .genesys
            .subscribe(&shared, &self.channel, None, &topics, mode);
        let status = if mode == SubMode::Remove {
            "unsubscribed"
        } else {
            "subscribed"
        };
        let mut reply = match &result {
            Ok(_) => json!({"result": "200", "status": status}),
            Err(ChannelError::NotFound) => json!({"result": "404", "status": "channel not found"}),
            Err(e) => json!({
                "result": "400",
                "status": "bad request",
                "message": super::rest::error_message(e),
            }),
        };
        if let Some(c) = msg.get("correlationId") {
            reply["correlationId"] = c.clone();
        }
        if result.is_ok()
            && let Some(at) = shared.genesys.stop_at(&shared, &self.channel)
        {
            self.stop_at = at;
        }
        reply
    }
}

impl Dialect for GenesysSocket {
    fn on_text(&mut self, text: &str, wr: &mut Writer) -> Action {
        let Ok(msg) = serde_json::from_str::<Value>(text) else {
            debug!(channel = self.channel, "malformed client frame ignored");
            return Action::Continue;
        };
        match msg.get("message").and_then(Value::as_str) {
            Some("ping") => {
                self.shared.genesys.pings.fetch_add(1, Ordering::Relaxed);
                wr.pong(frame::encode(frame::OP_TEXT, PONG.as_bytes()));
            }
            Some("subscribe") => wr.text(&self.subscribe(&msg, SubMode::Add).to_string()),
            Some("unsubscribe") => wr.text(&self.subscribe(&msg, SubMode::Remove).to_string()),
            other => debug!(channel = self.channel, kind = ?other, "client message ignored"),
        }
        Action::Continue
    }

    fn deadline(&self) -> Option<Instant> {
        if let Some((at, _)) = self.stopped {
            return Some(at);
        }
        let mut at = self.stop_at;
        if let Some(h) = self.next_heartbeat {
            at = at.min(h);
        }
        if let Some((c, _)) = self.closing {
            at = at.min(c);
        }
        Some(at)
    }

    fn on_deadline(&mut self, wr: &mut Writer) -> Action {
        let now = Instant::now();
        if let Some((_, why)) = self.stopped {
            return Action::Close(CLOSE_NORMAL, why.into());
        }
        if let Some((at, code)) = self.closing
            && at <= now
        {
            return Action::Close(code, "socket closing".into());
        }
        if self.stop_at <= now {
            let shared = self.shared.clone();
            match shared.genesys.stop_at(&shared, &self.channel) {
                Some(at) => self.stop_at = at,
                // The stop order is on its way and will close the socket.
                None => {
                    self.stop_at = deadline_after(now, Duration::from_secs(3600));
                    return Action::Continue;
                }
            }
        }
        if let Some(h) = self.next_heartbeat
            && h <= now
        {
            self.shared
                .genesys
                .heartbeats
                .fetch_add(1, Ordering::Relaxed);
            wr.text(HEARTBEAT);
            self.next_heartbeat = Some(deadline_after(now, self.heartbeat));
        }
        Action::Continue
    }

    async fn wake(&mut self) {
        self.events.ready().await;
    }

    fn fill(&mut self, wr: &mut Writer) {
        self.events.drain_into(wr);
    }

    fn on_order(&mut self, order: Order, wr: &mut Writer) -> Action {
        match order {
            Order::Stop(why) => {
                let grace = self.shared.genesys.cfg().stop_grace;
                if grace.is_zero() {
                    return Action::Close(CLOSE_NORMAL, why.into());
                }
                self.stopped = Some((deadline_after(Instant::now(), grace), why));
                Action::Continue
            }
            Order::SocketClosing { close_after, code } => {
                self.shared
                    .genesys
                    .socket_closing
                    .fetch_add(1, Ordering::Relaxed);
                let msg = json!({
                    "topicName": "v2.system.socket_closing",
                    "version": "2",
                    "eventBody": {"message": "The WebSocket connection will close soon"},
                    "metadata": {"CorrelationId": uuid4()},
                });
                wr.text(&msg.to_string());
                self.closing = Some((deadline_after(Instant::now(), close_after), code));
                Action::Continue
            }
            Order::TokensChanged | Order::RateLimitExceeded { .. } => Action::Continue,
        }
    }

    fn label(&self) -> &str {
        &self.channel
    }
}
