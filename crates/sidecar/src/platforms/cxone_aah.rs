//! `cxone-aah`: NICE CXone Agent Assist Hub notifications.
//!
//! The socket is `endpoints.stream` as given, with no auth header. Every client message is
//! `{"command":C,"headers":{"sessionToken":T},"body":{..}}` and carries the token current when
//! it is sent, so a rotation needs no message of its own. `CONNECT` is answered `CONNECTED`;
//! then one `SUBSCRIBE` per contact id (the stream's `topics`), each answered `SUBSCRIBED`.
//! `HEARTBEAT` (every ping) is answered `HEARTBEAT_ACK`. Events are `MESSAGE`s; their id is
//! the message id, else a hash of the topic and the canonical body. Nothing is replayed.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use streamkeeper_api::{Endpoint, EventId, StreamSpec, config::Platform};

use super::{
    Adapter, AdapterError, Connection, Inbound, Ping, Prepare, Prepared, Rotation, SocketPlan,
    identity::hashed_id, whole_frame,
};

/// The AAH adapter of one stream.
#[derive(Debug)]
pub struct CxoneAah {
    stream_url: Endpoint,
    topics: Vec<String>,
}

impl CxoneAah {
    /// The adapter for one stream; needs `endpoints.stream` and its contact ids in `topics`.
    pub fn new(spec: &StreamSpec) -> Result<Self, String> {
        let stream_url = spec.endpoints.stream.clone().ok_or_else(|| {
            format!(
                "streams[{}]: endpoints.stream is required for cxone-aah",
                spec.id
            )
        })?;
        Ok(Self {
            stream_url,
            topics: spec.topics.clone(),
        })
    }
}

#[async_trait]
impl Adapter for CxoneAah {
    fn platform(&self) -> Platform {
        Platform::CxoneAah
    }

    fn replays(&self) -> bool {
        false
    }

    fn rotation(&self) -> Rotation {
        Rotation::PerMessage
    }

    async fn prepare(&self, _p: Prepare<'_>) -> Result<Vec<Prepared>, AdapterError> {
        Ok(vec![Prepared {
            plan: SocketPlan {
                url: self.stream_url.url(),
                headers: Vec::new(),
            },
            conn: Box::new(AahSocket {
                topics: self.topics.clone(),
                subscribed: 0,
            }),
        }])
    }
}

/// One Agent Assist Hub socket.
#[derive(Debug)]
pub struct AahSocket {
    topics: Vec<String>,
    subscribed: usize,
}

/// A client message with the token in its headers.
fn message(command: &str, token: &str, body: Value) -> String {
    serde_json::json!({"command": command, "headers": {"sessionToken": token}, "body": body})
        .to_string()
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    command: std::borrow::Cow<'a, str>,
    #[serde(default)]
    headers: Option<Value>,
    #[serde(default)]
    body: Option<Value>,
}

impl Connection for AahSocket {
    fn greeting(&mut self, token: &str) -> Vec<String> {
        self.subscribed = 0;
        vec![message("CONNECT", token, serde_json::json!({}))]
    }

    fn proceed(&mut self, token: &str) -> Vec<String> {
        self.topics
            .iter()
            .map(|t| message("SUBSCRIBE", token, serde_json::json!({"topic": t})))
            .collect()
    }

    fn ping(&self, _seq: u64, token: &str) -> Ping {
        Ping::Text(message("HEARTBEAT", token, serde_json::json!({})))
    }

    fn classify_text(&mut self, text: &str, out: &mut Vec<Inbound>) {
        let env: Envelope<'_> = match serde_json::from_str(text) {
            Ok(e) => e,
            Err(e) => {
                out.push(Inbound::Malformed(format!("not an AAH message: {e}")));
                return;
            }
        };
        let header = |name: &str| {
            env.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let body_str = |name: &str| {
            env.body
                .as_ref()
                .and_then(|b| b.get(name))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        match env.command.as_ref() {
            "HEARTBEAT_ACK" => out.push(Inbound::Pong { seq: None }),
            "CONNECTED" => out.push(Inbound::Proceed),
            "SUBSCRIBED" => {
                self.subscribed += 1;
                if self.subscribed == self.topics.len() {
                    out.push(Inbound::Ready);
                }
            }
            "MESSAGE" => {
                let id = match header("messageId").filter(|m| !m.is_empty()) {
                    Some(m) => EventId(m),
                    None => hashed_id(
                        "aah",
                        &header("topic").unwrap_or_default(),
                        env.body.as_ref().unwrap_or(&Value::Null),
                    ),
                };
                match whole_frame(text) {
                    Ok(data) => out.push(Inbound::Event { id, data }),
                    Err(e) => out.push(Inbound::Malformed(e)),
                }
            }
            "ERROR" if body_str("code") == "UNAUTHORIZED" => {
                out.push(Inbound::TokenRefused(body_str("message")));
            }
            "ERROR" => out.push(Inbound::Malformed(format!(
                "the hub answered ERROR {}: {}",
                body_str("code"),
                body_str("message")
            ))),
            "CLOSED" => out.push(Inbound::Closing(format!(
                "the hub is closing the socket: {}",
                body_str("reason")
            ))),
            "UNSUBSCRIBED" | "RECONNECTED" => out.push(Inbound::Ignored),
            other => out.push(Inbound::Malformed(format!("unknown command {other:?}"))),
        }
    }

    fn ready_on_open(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket() -> AahSocket {
        AahSocket {
            topics: vec!["c1".into(), "c2".into()],
            subscribed: 0,
        }
    }

    #[test]
    fn every_message_carries_the_token_it_is_built_with() {
        let mut s = socket();
        let hello = s.greeting("t1");
        assert_eq!(hello.len(), 1);
        let hello: Value = serde_json::from_str(&hello[0]).expect("json");
        assert_eq!(
            hello,
            serde_json::json!({"command": "CONNECT", "headers": {"sessionToken": "t1"}, "body": {}})
        );
        let subs = s.proceed("t2");
        assert_eq!(subs.len(), 2);
        assert!(subs.iter().all(|m| m.contains(r#""sessionToken":"t2""#)));
        assert!(subs[1].contains(r#""topic":"c2""#));
        let Ping::Text(hb) = s.ping(1, "t3") else {
            panic!("text ping")
        };
        assert!(hb.contains("HEARTBEAT") && hb.contains("t3"));
    }

    #[test]
    fn replies_are_classified_and_ready_waits_for_every_subscription() {
        let mut s = socket();
        let mut out = Vec::new();
        for reply in [
            r#"{"command":"CONNECTED","headers":{"connectionId":"1"},"body":{}}"#,
            r#"{"command":"SUBSCRIBED","headers":{},"body":{"topic":"c1"}}"#,
        ] {
            s.classify_text(reply, &mut out);
        }
        assert!(matches!(out[..], [Inbound::Proceed]));
        s.classify_text(
            r#"{"command":"SUBSCRIBED","headers":{},"body":{"topic":"c2"}}"#,
            &mut out,
        );
        assert!(matches!(out[..], [Inbound::Proceed, Inbound::Ready]));
        out.clear();
        let msg = r#"{"command":"MESSAGE","headers":{"connectionId":"1","topic":"c1","messageId":"m-9"},"body":{"seq":1}}"#;
        s.classify_text(msg, &mut out);
        s.classify_text(
            r#"{"command":"HEARTBEAT_ACK","headers":{},"body":{}}"#,
            &mut out,
        );
        s.classify_text(
            r#"{"command":"ERROR","headers":{},"body":{"code":"UNAUTHORIZED","message":"expired"}}"#,
            &mut out,
        );
        match &out[..] {
            [
                Inbound::Event { id, data },
                Inbound::Pong { .. },
                Inbound::TokenRefused(m),
            ] => {
                assert_eq!(id.0, "m-9");
                assert_eq!(data.get(), msg);
                assert_eq!(m, "expired");
            }
            other => panic!("{other:?}"),
        }
        out.clear();
        let no_id = r#"{"command":"MESSAGE","headers":{"topic":"c1"},"body":{"seq":1}}"#;
        s.classify_text(no_id, &mut out);
        s.classify_text(no_id, &mut out);
        let [Inbound::Event { id: a, .. }, Inbound::Event { id: b, .. }] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(a, b);
        assert!(a.0.starts_with("aah-"));
    }
}
