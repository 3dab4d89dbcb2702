//! The `generic` dialect (the seed guide's): Bearer header on the upgrade, RFC 6455 pings,
//! events `{"type":"event","id":ID,"data":{...}}`, in-stream
//! `{"type":"token-refresh","token":T}` acked by `{"type":"token-refresh-ack"}`, and resume
//! with `Last-Event-ID`.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::value::RawValue;
use streamkeeper_api::{Endpoint, EventId, StreamSpec, config::Platform};

use super::{
    Adapter, AdapterError, Connection, Inbound, Ping, Prepare, Prepared, Rotation, SocketPlan,
};

/// The generic dialect.
#[derive(Debug)]
pub struct Generic {
    stream_url: Endpoint,
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

    /// Where the one socket goes, for a token and a resume point.
    pub fn plan(&self, token: &str, resume_after: Option<&EventId>) -> SocketPlan {
        let mut headers = vec![("Authorization", format!("Bearer {token}"))];
        if let Some(id) = resume_after {
            headers.push(("Last-Event-ID", id.0.clone()));
        }
        SocketPlan {
            url: self.stream_url.url(),
            headers,
        }
    }
}

/// The generic socket: it keeps no state (its boxed connection allocates nothing).
#[derive(Debug)]
pub struct GenericSocket;

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

    fn replays(&self) -> bool {
        true
    }

    fn rotation(&self) -> Rotation {
        Rotation::InStream
    }

    async fn prepare(&self, p: Prepare<'_>) -> Result<Vec<Prepared>, AdapterError> {
        Ok(vec![Prepared {
            plan: self.plan(p.token, p.resume_after),
            conn: Box::new(GenericSocket),
        }])
    }
}

impl Connection for GenericSocket {
    fn ping(&self, seq: u64, _token: &str) -> Ping {
        Ping::Control(seq.to_be_bytes().to_vec())
    }

    fn classify_text(&mut self, text: &str, out: &mut Vec<Inbound>) {
        out.push(classify(text));
    }

    fn classify_pong(&mut self, payload: &[u8]) -> Inbound {
        let seq = <[u8; 8]>::try_from(payload).ok().map(u64::from_be_bytes);
        Inbound::Pong { seq }
    }

    fn refresh_frame(&self, token: &str) -> Option<String> {
        Some(serde_json::json!({"type": "token-refresh", "token": token}).to_string())
    }
}

fn classify(text: &str) -> Inbound {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn socket() -> GenericSocket {
        GenericSocket
    }

    fn one(c: &mut GenericSocket, text: &str) -> Inbound {
        let mut out = Vec::new();
        c.classify_text(text, &mut out);
        assert_eq!(out.len(), 1, "one frame, one meaning");
        out.remove(0)
    }

    #[test]
    fn events_keep_their_payload_bytes() {
        let mut c = socket();
        match one(
            &mut c,
            r#"{"type":"event","id":"q:1","data":{"b": 2,"a":[1]}}"#,
        ) {
            Inbound::Event { id, data } => {
                assert_eq!(id.0, "q:1");
                assert_eq!(data.get(), r#"{"b": 2,"a":[1]}"#);
            }
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[test]
    fn malformed_and_unknown_frames_are_named() {
        let mut c = socket();
        assert!(
            matches!(one(&mut c, "nope"), Inbound::Malformed(m) if m.contains("not a generic envelope"))
        );
        assert!(matches!(
            one(&mut c, r#"{"type":"event","data":{}}"#),
            Inbound::Malformed(_)
        ));
        assert!(
            matches!(one(&mut c, r#"{"type":"mystery"}"#), Inbound::Malformed(m) if m.contains("mystery"))
        );
        assert!(matches!(
            one(&mut c, r#"{"type":"token-refresh-ack"}"#),
            Inbound::TokenAccepted
        ));
    }

    #[test]
    fn pongs_echo_the_sequence() {
        let mut c = socket();
        let Ping::Control(p) = c.ping(42, "tok") else {
            panic!("generic pings are control frames")
        };
        assert!(matches!(
            c.classify_pong(&p),
            Inbound::Pong { seq: Some(42) }
        ));
        assert!(matches!(c.classify_pong(b"x"), Inbound::Pong { seq: None }));
    }

    #[test]
    fn the_plan_carries_bearer_and_resume_point_but_debug_shows_neither() {
        let plan = Generic {
            stream_url: Endpoint::parse("ws://127.0.0.1:1/streams/q").expect("url"),
        }
        .plan("tok", Some(&EventId("q:7".into())));
        assert_eq!(plan.headers[0], ("Authorization", "Bearer tok".to_owned()));
        assert_eq!(plan.headers[1], ("Last-Event-ID", "q:7".to_owned()));
        let shown = format!("{plan:?}");
        assert!(
            !shown.contains("tok\"") && !shown.contains("Bearer"),
            "{shown}"
        );
        assert!(shown.contains("Authorization"), "{shown}");
    }
}
