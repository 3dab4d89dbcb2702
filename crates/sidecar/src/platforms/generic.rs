//! The `generic` dialect (the seed guide's): Bearer header on the upgrade, RFC 6455 pings,
//! events `{"type":"event","id":ID,"data":{...}}`, in-stream
//! `{"type":"token-refresh","token":T}` acked by `{"type":"token-refresh-ack"}`, and resume
//! with `Last-Event-ID`.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::value::RawValue;
use streamkeeper_api::{EventId, StreamSpec, config::Platform};
use url::Url;

use super::{Adapter, AdapterError, Inbound, Ping, Rotation, SocketPlan};

/// The generic dialect.
#[derive(Debug)]
pub struct Generic {
    stream_url: Url,
}

impl Generic {
    /// The adapter for one stream; needs `endpoints.stream`.
    pub fn new(spec: &StreamSpec) -> Result<Self, String> {
        let stream_url = spec.endpoints.stream.clone().ok_or_else(|| {
            format!(
                "streams[{}].endpoints.stream is required for generic",
                spec.id
            )
        })?;
        Ok(Self { stream_url })
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default, borrow)]
    reason: Option<std::borrow::Cow<'a, str>>,
}

#[async_trait]
impl Adapter for Generic {
    fn platform(&self) -> Platform {
        Platform::Generic
    }

    fn validate_path(&self) -> &'static str {
        "/api/v2/users/me"
    }

    async fn plan(
        &self,
        _http: &reqwest::Client,
        token: &str,
        resume_after: Option<&EventId>,
    ) -> Result<SocketPlan, AdapterError> {
        let mut headers = vec![("Authorization", format!("Bearer {token}"))];
        if let Some(id) = resume_after {
            headers.push(("Last-Event-ID", id.0.clone()));
        }
        Ok(SocketPlan {
            url: self.stream_url.clone(),
            headers,
            first_frames: Vec::new(),
            replays: true,
        })
    }

    fn ping(&self, seq: u64) -> Ping {
        Ping::Control(seq.to_be_bytes().to_vec())
    }

    fn classify_text(&self, text: &str) -> Inbound {
        let env: Envelope<'_> = match serde_json::from_str(text) {
            Ok(e) => e,
            Err(e) => return Inbound::Malformed(format!("not a generic envelope: {e}")),
        };
        match env.kind.as_ref() {
            "event" => match (env.id, env.data) {
                (Some(id), Some(data)) if !id.is_empty() => Inbound::Event {
                    id: EventId(id.into_owned()),
                    data,
                },
                _ => Inbound::Malformed("event without a non-empty `id` and a `data`".into()),
            },
            "token-refresh-ack" => Inbound::TokenAccepted,
            "token-refresh-nack" => {
                Inbound::TokenRefused(env.reason.map(|r| r.into_owned()).unwrap_or_default())
            }
            "heartbeat" => Inbound::Heartbeat,
            other => Inbound::Malformed(format!("unknown message type {other:?}")),
        }
    }

    fn classify_pong(&self, payload: &[u8]) -> Inbound {
        let seq = <[u8; 8]>::try_from(payload).ok().map(u64::from_be_bytes);
        Inbound::Pong { seq }
    }

    fn rotation(&self) -> Rotation {
        Rotation::InStream
    }

    fn refresh_frame(&self, token: &str) -> Option<String> {
        Some(serde_json::json!({"type": "token-refresh", "token": token}).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter() -> Generic {
        Generic {
            stream_url: "ws://127.0.0.1:1/streams/q".parse().expect("url"),
        }
    }

    #[test]
    fn events_keep_their_payload_bytes() {
        let a = adapter();
        match a.classify_text(r#"{"type":"event","id":"q:1","data":{"b": 2,"a":[1]}}"#) {
            Inbound::Event { id, data } => {
                assert_eq!(id.0, "q:1");
                assert_eq!(data.get(), r#"{"b": 2,"a":[1]}"#);
            }
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[test]
    fn malformed_and_unknown_frames_are_named() {
        let a = adapter();
        assert!(
            matches!(a.classify_text("nope"), Inbound::Malformed(m) if m.contains("not a generic envelope"))
        );
        assert!(matches!(
            a.classify_text(r#"{"type":"event","data":{}}"#),
            Inbound::Malformed(_)
        ));
        assert!(
            matches!(a.classify_text(r#"{"type":"mystery"}"#), Inbound::Malformed(m) if m.contains("mystery"))
        );
        assert!(matches!(
            a.classify_text(r#"{"type":"token-refresh-ack"}"#),
            Inbound::TokenAccepted
        ));
    }

    #[test]
    fn pongs_echo_the_sequence() {
        let a = adapter();
        let Ping::Control(p) = a.ping(42) else {
            panic!("generic pings are control frames")
        };
        assert!(matches!(
            a.classify_pong(&p),
            Inbound::Pong { seq: Some(42) }
        ));
        assert!(matches!(a.classify_pong(b"x"), Inbound::Pong { seq: None }));
    }

    #[tokio::test]
    async fn the_plan_carries_bearer_and_resume_point() {
        let a = adapter();
        let http = crate::net::plain_http_client();
        let plan = a
            .plan(&http, "tok", Some(&EventId("q:7".into())))
            .await
            .expect("plan");
        assert_eq!(plan.headers[0], ("Authorization", "Bearer tok".to_owned()));
        assert_eq!(plan.headers[1], ("Last-Event-ID", "q:7".to_owned()));
        assert!(plan.replays);
    }
}
