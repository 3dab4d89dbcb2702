//! The DFO event hub socket: `GET /eventhub?tenantId=..&userId=..`, `register` with the token
//! (again on the same socket to rotate), `heartbeat` and its `pong`, events with an `eventId`,
//! `RATE_LIMIT_EXCEEDED`, and the close when the registered token lapses.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::debug;

use crate::feed::{Inbox, Outlet, Topic};
use crate::frame;
use crate::http::{Body, error, switching, websocket_accept};
use crate::socket::{self, Action, Dialect, Writer};
use crate::state::{Order, Shared, SocketKey};

/// The socket's path.
pub(crate) const PATH: &str = "/eventhub";
/// Close code after `RATE_LIMIT_EXCEEDED`: try again later.
const CLOSE_TRY_LATER: u16 = 1013;
/// Close code when the registered token lapses: policy violation.
const CLOSE_POLICY: u16 = 1008;
/// The pong.
const PONG: &str = r#"{"eventType":"pong"}"#;

/// `GET /eventhub?tenantId=T&userId=U`.
pub(crate) fn upgrade(shared: &Arc<Shared>, mut req: Request<Incoming>) -> Response<Body> {
    let query = req.uri().query().unwrap_or_default().to_string();
    let param = |name: &str| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .filter(|v| !v.is_empty())
    };
    let (Some(tenant), Some(user)) = (param("tenantId"), param("userId")) else {
        return error(StatusCode::BAD_REQUEST, "tenantId and userId are required");
    };
    let accept = match websocket_accept(req.headers()) {
        Ok(accept) => accept,
        Err(bad) => return bad.response(),
    };
    let (reg, ctl, pong) = shared.register_key(SocketKey::Dfo {
        tenant: tenant.clone(),
        user: user.clone(),
    });
    let dialect = DfoSocket {
        shared: shared.clone(),
        socket: reg.id,
        stream: format!("{tenant}/{user}"),
        tenant,
        user,
        registered: None,
        topic: None,
        outlet: Arc::default(),
        events: None,
    };
    let wr = Writer::new(pong, shared.cxone.dfo_pongs.clone());
    let on_upgrade = hyper::upgrade::on(&mut req);
    shared.spawn(socket::serve(on_upgrade, reg, ctl, wr, dialect));
    switching(accept)
}

/// One event hub socket.
struct DfoSocket {
    shared: Arc<Shared>,
    socket: u64,
    tenant: String,
    user: String,
    /// `tenantId/userId`.
    stream: String,
    /// The registered token and its expiry.
    registered: Option<(String, Instant)>,
    topic: Option<Arc<Topic>>,
    outlet: Arc<Outlet>,
    events: Option<Inbox>,
}

impl Drop for DfoSocket {
    fn drop(&mut self) {
        if let Some(t) = &self.topic {
            t.remove(self.socket);
        }
    }
}

impl DfoSocket {
    /// `{"eventType":T,"data":D}`.
    fn control(wr: &mut Writer, event_type: &str, data: Value) {
        wr.text(&json!({"eventType": event_type, "data": data}).to_string());
    }

    /// Send `RATE_LIMIT_EXCEEDED`, and close if asked.
    fn rate_limited(&mut self, wr: &mut Writer, close: bool) -> Action {
        self.shared
            .cxone
            .dfo_rate_limit_exceeded
            .fetch_add(1, Ordering::Relaxed);
        Self::control(
            wr,
            "RATE_LIMIT_EXCEEDED",
            json!({"message": "Rate limit exceeded"}),
        );
        if close {
            Action::Close(CLOSE_TRY_LATER, "rate limit exceeded".into())
        } else {
            Action::Continue
        }
    }

    /// The registered token lapsed (or was revoked): say so and close.
    fn lapse(&mut self, wr: &mut Writer) -> Action {
        self.registered = None;
        Self::control(wr, "unauthorized", json!({"message": "token expired"}));
        Action::Close(CLOSE_POLICY, "token expired".into())
    }

    fn register(&mut self, msg: &Value, wr: &mut Writer) -> Action {
        let cx = &self.shared.cxone;
        if self
            .shared
            .take_dfo_register_limit(&self.tenant, &self.user)
        {
            cx.dfo_registers_refused.fetch_add(1, Ordering::Relaxed);
            return self.rate_limited(wr, true);
        }
        let token = msg
            .pointer("/payload/token")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(info) = super::auth::check(&self.shared, token) else {
            cx.dfo_registers_refused.fetch_add(1, Ordering::Relaxed);
            Self::control(
                wr,
                "unauthorized",
                json!({"message": "invalid or expired token"}),
            );
            return Action::Continue;
        };
        cx.dfo_registers.fetch_add(1, Ordering::Relaxed);
        self.registered = Some((token.to_string(), info.expires));
        if self.topic.is_none() {
            let topic = cx.dfo_feeds.topic(&self.stream);
            self.events = Some(self.outlet.attach());
            topic.add(self.socket, self.outlet.clone());
            self.topic = Some(topic);
        }
        let left = info.expires.saturating_duration_since(Instant::now());
        Self::control(
            wr,
            "authorized",
            json!({"tenantId": self.tenant, "userId": self.user, "expiresIn": left.as_secs()}),
        );
        Action::Continue
    }
}

impl Dialect for DfoSocket {
    fn on_text(&mut self, text: &str, wr: &mut Writer) -> Action {
        let Ok(msg) = serde_json::from_str::<Value>(text) else {
            Self::control(wr, "error", json!({"message": "message is not JSON"}));
            return Action::Continue;
        };
        match msg.get("action").and_then(Value::as_str) {
            Some("register") => self.register(&msg, wr),
            Some("heartbeat") => {
                self.shared.cxone.dfo_pings.fetch_add(1, Ordering::Relaxed);
                wr.pong(frame::encode(frame::OP_TEXT, PONG.as_bytes()));
                Action::Continue
            }
            other => {
                debug!(stream = self.stream, action = ?other, "unknown action");
                Self::control(
                    wr,
                    "error",
                    json!({"message": format!("unknown action {:?}", other.unwrap_or(""))}),
                );
                Action::Continue
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.registered.as_ref().map(|(_, at)| *at)
    }

    fn on_deadline(&mut self, wr: &mut Writer) -> Action {
        self.lapse(wr)
    }

    async fn wake(&mut self) {
        match self.events.as_mut() {
            Some(inbox) => inbox.ready().await,
            None => std::future::pending::<()>().await,
        }
    }

    fn fill(&mut self, wr: &mut Writer) {
        let Some(inbox) = self.events.as_mut() else {
            return;
        };
        if self.registered.is_some() {
            inbox.drain_into(wr);
        } else {
            // Events flow only while registered; those that arrive otherwise are lost.
            while inbox.take().is_some() {}
        }
    }

    fn on_order(&mut self, order: Order, wr: &mut Writer) -> Action {
        match order {
            Order::TokensChanged => {
                let still = self
                    .registered
                    .as_ref()
                    .is_some_and(|(t, _)| super::auth::check(&self.shared, t).is_some());
                if self.registered.is_some() && !still {
                    return self.lapse(wr);
                }
                Action::Continue
            }
            Order::RateLimitExceeded { close } => self.rate_limited(wr, close),
            Order::Stop(_) | Order::SocketClosing { .. } => Action::Continue,
        }
    }

    fn label(&self) -> &str {
        &self.stream
    }
}
