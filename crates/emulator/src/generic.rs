//! The `generic` dialect (the seed guide's protocol): its token, identity and stream routes and
//! its socket behaviour (events from a stream's history, in-stream token refresh).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::auth;
use crate::frame;
use crate::http::{Body, error, json, rate_limited, switching, websocket_accept};
use crate::socket::{self, Action, Dialect, Writer};
use crate::state::{Order, Shared};
use crate::stream::Stream;
use crate::tokens::Platform;
use crate::util::lock;

/// Token refresh answers.
const REFRESH_ACK: &str = r#"{"type":"token-refresh-ack"}"#;
/// Token refresh refusal.
const REFRESH_NACK: &str = r#"{"type":"token-refresh-nack","reason":"invalid_token"}"#;
/// Events copied out of the history per lock.
const BATCH: usize = 256;

/// `GET /api/v2/users/me`: 200 for a generic token; a Genesys (client-credentials) token is
/// forbidden, as on the real platform.
pub(crate) fn users_me(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    let token = auth::bearer(req.headers()).unwrap_or_default();
    let info = lock(&shared.tokens).check(token, None);
    match info.map(|i| i.platform) {
        Some(Platform::Generic) => json(
            StatusCode::OK,
            &serde_json::json!({"id": "emulated-user", "name": "Emulated User"}),
        ),
        Some(Platform::Genesys) => crate::genesys::rest::users_me_forbidden(),
        _ => error(StatusCode::UNAUTHORIZED, "invalid_token"),
    }
}

/// `GET /streams/{name}`: check the request, register the socket, answer 101, and hand the
/// connection to the socket engine once hyper lets go of it.
pub(crate) fn upgrade(
    shared: &Arc<Shared>,
    mut req: Request<Incoming>,
    name: &str,
) -> Response<Body> {
    if let Some(secs) = shared.take_upgrade_rate_limit(name) {
        return rate_limited(secs);
    }
    let token = auth::bearer(req.headers()).unwrap_or_default();
    let Some(token_expiry) = lock(&shared.tokens).valid(token) else {
        return error(StatusCode::UNAUTHORIZED, "invalid_token");
    };
    let accept = match websocket_accept(req.headers()) {
        Ok(accept) => accept,
        Err(bad) => return bad.response(),
    };
    let last_event_id = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let stream = shared.stream(name);
    // Subscribe before choosing the start, so no event falls between the two.
    let latest = stream.subscribe();
    let next_seq = stream.start_after(last_event_id);
    let (reg, ctl, pong) = shared.register(stream.clone());
    let wr = Writer::new(pong, stream.pongs.clone());
    let dialect = Generic {
        shared: shared.clone(),
        stream,
        next_seq,
        latest,
        latest_open: true,
        token_expiry,
        expiry_armed: true,
        scratch: String::new(),
        ats: Vec::new(),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    shared.spawn(socket::serve(on_upgrade, reg, ctl, wr, dialect));
    switching(accept)
}

/// A generic socket: a cursor into its stream's history and its token's expiry.
struct Generic {
    shared: Arc<Shared>,
    stream: Arc<Stream>,
    /// The next event owed to the client.
    next_seq: u64,
    latest: watch::Receiver<u64>,
    latest_open: bool,
    token_expiry: Instant,
    expiry_armed: bool,
    scratch: String,
    ats: Vec<u64>,
}

impl Dialect for Generic {
    fn on_text(&mut self, text: &str, wr: &mut Writer) -> Action {
        let msg: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                warn!(stream = self.stream.name, error = %e, "malformed client frame ignored");
                return Action::Continue;
            }
        };
        match msg.get("type").and_then(serde_json::Value::as_str) {
            Some("token-refresh") => {
                let expiry = msg
                    .get("token")
                    .and_then(serde_json::Value::as_str)
                    .and_then(|t| lock(&self.shared.tokens).valid(t));
                match expiry {
                    Some(expiry) => {
                        self.stream.token_refreshes.fetch_add(1, Ordering::Relaxed);
                        self.expiry_armed = true;
                        self.token_expiry = expiry;
                        debug!(stream = self.stream.name, "token refreshed");
                        wr.text(REFRESH_ACK);
                    }
                    None => {
                        debug!(stream = self.stream.name, "token refresh refused");
                        wr.text(REFRESH_NACK);
                    }
                }
            }
            other => {
                warn!(stream = self.stream.name, kind = ?other, "client message of unknown type ignored");
            }
        }
        Action::Continue
    }

    fn deadline(&self) -> Option<Instant> {
        self.expiry_armed.then_some(self.token_expiry)
    }

    fn on_deadline(&mut self, _wr: &mut Writer) -> Action {
        self.expiry_armed = false;
        debug!(stream = self.stream.name, "token expired");
        Action::Close(frame::CLOSE_TOKEN_EXPIRED, "token expired".into())
    }

    async fn wake(&mut self) {
        if self.latest_open && self.latest.changed().await.is_ok() {
            return;
        }
        self.latest_open = false;
        std::future::pending::<()>().await;
    }

    fn fill(&mut self, wr: &mut Writer) {
        if self.ats.capacity() > 64 {
            self.ats = Vec::new(); // after a replay batch: an idle socket keeps little
        }
        while wr.has_room() {
            let latest = *self.latest.borrow_and_update();
            if self.next_seq > latest {
                return;
            }
            let want = usize::try_from(latest - self.next_seq + 1)
                .unwrap_or(usize::MAX)
                .min(BATCH);
            self.ats.clear();
            let first = self.stream.read(self.next_seq, want, &mut self.ats);
            if first > self.next_seq {
                debug!(
                    stream = self.stream.name,
                    lost = first - self.next_seq,
                    "client fell behind the history; events skipped"
                );
            }
            if self.ats.is_empty() {
                self.next_seq = first;
                return;
            }
            let mut buf = BytesMut::with_capacity(self.ats.len() * 128);
            for (i, at) in self.ats.iter().enumerate() {
                self.stream
                    .put_event(&mut buf, first + i as u64, *at, &mut self.scratch);
            }
            self.next_seq = first + self.ats.len() as u64;
            wr.push(buf.freeze());
        }
    }

    fn on_order(&mut self, _order: Order, _wr: &mut Writer) -> Action {
        Action::Continue
    }

    fn on_ping(&mut self) {
        self.stream.pings.fetch_add(1, Ordering::Relaxed);
    }

    fn label(&self) -> &str {
        &self.stream.name
    }
}
