//! `cxone-dfo`: the NICE CXone digital (DFO) event hub.
//!
//! The socket is `endpoints.stream` as given (it carries `tenantId` and `userId`), with no
//! auth header; the first message registers the token,
//! `{"action":"register","payload":{"token":T}}`, answered `authorized`. Pings are
//! `{"action":"heartbeat"}`, answered `pong`; five unanswered pings make the socket DEAD.
//! `RATE_LIMIT_EXCEEDED` holds every request and reconnect for the platform's step (30 s,
//! 1 min, 2 min). A new token is registered again on the same socket. Event ids are the
//! message's `eventId`, else a hash of the canonical body. Nothing is replayed.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use streamkeeper_api::{Endpoint, EventId, StreamSpec, config::Platform};

use super::{
    Adapter, AdapterError, Connection, Inbound, Ping, Prepare, Prepared, RateLimit, Rotation,
    SocketPlan, identity::hashed_id, whole_frame,
};

/// Unanswered heartbeats after which the platform's guidance is to reconnect.
pub const MAX_MISSED_PONGS: u32 = 5;

/// The DFO adapter of one stream.
#[derive(Debug)]
pub struct CxoneDfo {
    stream_url: Endpoint,
}

impl CxoneDfo {
    /// The adapter for one stream; needs `endpoints.stream`.
    pub fn new(spec: &StreamSpec) -> Result<Self, String> {
        let stream_url = spec.endpoints.stream.clone().ok_or_else(|| {
            format!(
                "streams[{}]: endpoints.stream is required for cxone-dfo",
                spec.id
            )
        })?;
        Ok(Self { stream_url })
    }
}

#[async_trait]
impl Adapter for CxoneDfo {
    fn platform(&self) -> Platform {
        Platform::CxoneDfo
    }

    fn replays(&self) -> bool {
        false
    }

    fn rotation(&self) -> Rotation {
        Rotation::InStream
    }

    fn max_missed_pongs(&self) -> Option<u32> {
        Some(MAX_MISSED_PONGS)
    }

    async fn prepare(&self, _p: Prepare<'_>) -> Result<Vec<Prepared>, AdapterError> {
        Ok(vec![Prepared {
            plan: SocketPlan {
                url: self.stream_url.url(),
                headers: Vec::new(),
            },
            conn: Box::new(DfoSocket),
        }])
    }
}

/// One event hub socket: it keeps no state (the token rides in its frames).
#[derive(Debug)]
pub struct DfoSocket;

fn register(token: &str) -> String {
    serde_json::json!({"action": "register", "payload": {"token": token}}).to_string()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    #[serde(default, borrow)]
    event_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    event_type: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    data: Option<Value>,
}

impl Connection for DfoSocket {
    fn greeting(&mut self, token: &str) -> Vec<String> {
        vec![register(token)]
    }

    fn ping(&self, _seq: u64, _token: &str) -> Ping {
        Ping::Text(r#"{"action":"heartbeat"}"#.to_owned())
    }

    fn classify_text(&mut self, text: &str, out: &mut Vec<Inbound>) {
        let env: Envelope<'_> = match serde_json::from_str(text) {
            Ok(e) => e,
            Err(e) => {
                out.push(Inbound::Malformed(format!("not an event hub message: {e}")));
                return;
            }
        };
        let message = || {
            env.data
                .as_ref()
                .and_then(|d| d.get("message"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        if let Some(id) = env.event_id.as_deref() {
            match whole_frame(text) {
                Ok(data) if !id.is_empty() => out.push(Inbound::Event {
                    id: EventId(id.to_owned()),
                    data,
                }),
                Ok(data) => out.push(Inbound::Event {
                    id: hashed_id("dfo", "", env.data.as_ref().unwrap_or(&Value::Null)),
                    data,
                }),
                Err(e) => out.push(Inbound::Malformed(e)),
            }
            return;
        }
        match env.event_type.as_deref() {
            Some("pong") => out.push(Inbound::Pong { seq: None }),
            // The first `authorized` readies the socket; a later one accepts a rotation.
            Some("authorized") => out.extend([Inbound::Ready, Inbound::TokenAccepted]),
            Some("unauthorized") => out.push(Inbound::TokenRefused(message())),
            Some("RATE_LIMIT_EXCEEDED") => {
                out.push(Inbound::RateLimited(RateLimit::Escalating));
            }
            Some("error") => out.push(Inbound::Malformed(format!(
                "the event hub reported an error: {}",
                message()
            ))),
            // An event without an id: identity from its canonical body.
            Some(_) if env.data.is_some() => match whole_frame(text) {
                Ok(data) => out.push(Inbound::Event {
                    id: hashed_id(
                        "dfo",
                        env.event_type.as_deref().unwrap_or_default(),
                        env.data.as_ref().unwrap_or(&Value::Null),
                    ),
                    data,
                }),
                Err(e) => out.push(Inbound::Malformed(e)),
            },
            _ => out.push(Inbound::Ignored),
        }
    }

    fn refresh_frame(&self, token: &str) -> Option<String> {
        Some(register(token))
    }

    fn ready_on_open(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket() -> DfoSocket {
        DfoSocket
    }

    fn classify(text: &str) -> Vec<Inbound> {
        let mut out = Vec::new();
        socket().classify_text(text, &mut out);
        out
    }

    #[test]
    fn register_carries_the_token_and_rotation_registers_again() {
        let mut s = socket();
        let parse = |s: &str| serde_json::from_str::<Value>(s).expect("json");
        let hello = s.greeting("tok-1");
        assert_eq!(hello.len(), 1);
        assert_eq!(
            parse(&hello[0]),
            serde_json::json!({"action": "register", "payload": {"token": "tok-1"}})
        );
        assert_eq!(
            s.refresh_frame("tok-2").map(|f| parse(&f)),
            Some(serde_json::json!({"action": "register", "payload": {"token": "tok-2"}}))
        );
        assert_eq!(
            s.ping(1, "tok-2"),
            Ping::Text(r#"{"action":"heartbeat"}"#.into())
        );
        assert!(!format!("{:?}", s.ping(1, "x")).contains("heartbeat"));
    }

    #[test]
    fn hub_messages_are_classified() {
        assert!(matches!(
            classify(r#"{"eventType":"pong"}"#)[..],
            [Inbound::Pong { seq: None }]
        ));
        assert!(matches!(
            classify(r#"{"eventType":"authorized","data":{"tenantId":"t"}}"#)[..],
            [Inbound::Ready, Inbound::TokenAccepted]
        ));
        assert!(matches!(
            classify(
                r#"{"eventType":"RATE_LIMIT_EXCEEDED","data":{"message":"Rate limit exceeded"}}"#
            )[..],
            [Inbound::RateLimited(RateLimit::Escalating)]
        ));
        assert!(
            matches!(&classify(r#"{"eventType":"unauthorized","data":{"message":"token expired"}}"#)[..], [Inbound::TokenRefused(m)] if m == "token expired")
        );
        let ev = r#"{"eventId":"e-1","eventType":"CaseStatusChanged","createdAt":"2026-01-01T00:00:00Z","data":{"seq":1}}"#;
        match &classify(ev)[..] {
            [Inbound::Event { id, data }] => {
                assert_eq!(id.0, "e-1");
                assert_eq!(data.get(), ev);
            }
            other => panic!("{other:?}"),
        }
    }
}
