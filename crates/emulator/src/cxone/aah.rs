//! The Agent Assist Hub notification socket: `CONNECT`, `HEARTBEAT`, `SUBSCRIBE`,
//! `UNSUBSCRIBE`, each carrying the session token, which is checked (and recorded) on every
//! message; `MESSAGE` events per contact id.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Request, Response};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::feed::{Inbox, Outlet};
use crate::frame;
use crate::http::{Body, switching, websocket_accept};
use crate::socket::{self, Action, Dialect, Writer};
use crate::state::{Order, Shared, SocketKey};
use crate::stats::AahMessage;
use crate::util::lock;

/// The socket's path.
pub(crate) const PATH: &str = "/agent-assist-notifications/notifications/ws";

/// `GET /agent-assist-notifications/notifications/ws`.
pub(crate) fn upgrade(shared: &Arc<Shared>, mut req: Request<Incoming>) -> Response<Body> {
    let accept = match websocket_accept(req.headers()) {
        Ok(accept) => accept,
        Err(bad) => return bad.response(),
    };
    let (reg, ctl, pong) = shared.register_key(SocketKey::Aah);
    shared.cxone.aah_open(reg.id, true);
    let outlet = Arc::new(Outlet::default());
    let dialect = AahSocket {
        shared: shared.clone(),
        socket: reg.id,
        connection_id: crate::util::uuid4(),
        connected: false,
        topics: BTreeSet::new(),
        events: outlet.attach(),
        outlet,
    };
    let wr = Writer::new(pong, shared.cxone.aah_pongs.clone());
    let on_upgrade = hyper::upgrade::on(&mut req);
    shared.spawn(socket::serve(on_upgrade, reg, ctl, wr, dialect));
    switching(accept)
}

/// One AAH socket.
struct AahSocket {
    shared: Arc<Shared>,
    socket: u64,
    connection_id: String,
    connected: bool,
    topics: BTreeSet<String>,
    outlet: Arc<Outlet>,
    events: Inbox,
}

impl Drop for AahSocket {
    fn drop(&mut self) {
        for t in &self.topics {
            if let Some(topic) = self.shared.cxone.aah_feeds.get(t) {
                topic.remove(self.socket);
            }
        }
        self.shared.cxone.aah_open(self.socket, false);
    }
}

impl AahSocket {
    /// `{"command":C,"headers":{"connectionId":..},"body":B}`.
    fn reply(&self, wr: &mut Writer, command: &str, body: Value) {
        wr.text(&self.frame(command, body));
    }

    fn frame(&self, command: &str, body: Value) -> String {
        json!({
            "command": command,
            "headers": {"connectionId": self.connection_id},
            "body": body,
        })
        .to_string()
    }

    fn error(&self, wr: &mut Writer, code: &str, message: &str, command: &str) {
        self.reply(
            wr,
            "ERROR",
            json!({"code": code, "message": message, "command": command}),
        );
    }
}

impl Dialect for AahSocket {
    fn on_text(&mut self, text: &str, wr: &mut Writer) -> Action {
        let cx = &self.shared.cxone;
        let Ok(msg) = serde_json::from_str::<Value>(text) else {
            cx.aah_record(self.socket, AahMessage::default());
            self.error(wr, "BAD_REQUEST", "message is not JSON", "");
            return Action::Continue;
        };
        let command = msg
            .get("command")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let token = msg
            .pointer("/headers/sessionToken")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let serial = lock(&self.shared.tokens).serial(token);
        let valid = super::auth::check(&self.shared, token).is_some();
        cx.aah_record(
            self.socket,
            AahMessage {
                command: command.clone(),
                token_serial: serial,
                valid,
            },
        );
        if !valid {
            self.error(
                wr,
                "UNAUTHORIZED",
                "invalid or expired sessionToken",
                &command,
            );
            return Action::Continue;
        }
        let topic = msg
            .pointer("/body/topic")
            .and_then(Value::as_str)
            .map(str::to_string);
        match command.as_str() {
            "CONNECT" => {
                self.connected = true;
                self.reply(wr, "CONNECTED", json!({}));
            }
            "HEARTBEAT" => {
                cx.aah_pings.fetch_add(1, Ordering::Relaxed);
                let ack = self.frame("HEARTBEAT_ACK", json!({}));
                wr.pong(frame::encode(frame::OP_TEXT, ack.as_bytes()));
            }
            "SUBSCRIBE" | "UNSUBSCRIBE" if !self.connected => {
                self.error(wr, "NOT_CONNECTED", "send CONNECT first", &command);
            }
            "SUBSCRIBE" | "UNSUBSCRIBE" if topic.is_none() => {
                self.error(wr, "BAD_REQUEST", "body.topic is required", &command);
            }
            "SUBSCRIBE" => {
                let topic = topic.unwrap_or_default();
                cx.aah_feeds
                    .topic(&topic)
                    .add(self.socket, self.outlet.clone());
                self.topics.insert(topic.clone());
                self.reply(wr, "SUBSCRIBED", json!({ "topic": topic }));
            }
            "UNSUBSCRIBE" => {
                let topic = topic.unwrap_or_default();
                if let Some(t) = cx.aah_feeds.get(&topic) {
                    t.remove(self.socket);
                }
                self.topics.remove(&topic);
                self.reply(wr, "UNSUBSCRIBED", json!({ "topic": topic }));
            }
            _ => self.error(wr, "UNKNOWN_COMMAND", "unknown command", &command),
        }
        Action::Continue
    }

    fn deadline(&self) -> Option<Instant> {
        None
    }

    fn on_deadline(&mut self, _wr: &mut Writer) -> Action {
        Action::Continue
    }

    async fn wake(&mut self) {
        self.events.ready().await;
    }

    fn fill(&mut self, wr: &mut Writer) {
        self.events.drain_into(wr);
    }

    fn on_order(&mut self, _order: Order, _wr: &mut Writer) -> Action {
        Action::Continue
    }

    fn on_fault_close(&mut self, wr: &mut Writer) {
        self.reply(wr, "CLOSED", json!({"reason": "closed by the server"}));
    }

    fn label(&self) -> &str {
        "aah"
    }
}
