//! `genesys`: the Genesys Cloud Notifications API.
//!
//! Before the sockets: one channel per 1,000 topics (`POST {api}/api/v2/notifications/channels`),
//! each subscribed by `PUT .../channels/{id}/subscriptions`; the channels come out of the
//! credential's budget of 20 live channels (a 21st would replace the oldest). Each socket is
//! opened on the channel's `connectUri` with no auth header. Pings are `{"message":"ping"}`,
//! answered by a `channel.metadata` pong; server heartbeats count as liveness;
//! `v2.system.socket_closing` and a channel's expiry (24 h) start a make-before-break rotation,
//! as a new token does (a channel is bound to the token that made it). Events carry no id: the
//! id is a hash of the topic and the canonical body, so the overlap of two sockets delivers
//! each once. Nothing is replayed.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, value::RawValue};
use streamkeeper_api::{StreamSpec, config::Platform};
use tokio::{sync::OwnedSemaphorePermit, time::Instant};
use url::Url;

use super::{
    Adapter, AdapterError, Connection, Inbound, Ping, Prepare, Prepared, RateLimit, RetireStep,
    Rotation, SocketPlan,
    identity::{hashed_id, iso8601_ms},
    whole_frame,
};
use crate::{
    auth::{ClientBudget, TokenKey, join, retry_after, transport_error},
    clock::epoch_ms,
};

/// Topics one channel may carry (one more is refused).
pub const MAX_TOPICS_PER_CHANNEL: usize = 1000;

/// A channel's life when the platform does not say.
const DEFAULT_CHANNEL_LIFE: Duration = Duration::from_secs(24 * 3600);

/// The Genesys adapter of one stream.
#[derive(Debug)]
pub struct Genesys {
    api: Url,
    topics: Vec<String>,
}

impl Genesys {
    /// The adapter for one stream: `endpoints.api` (or `region`) and its topics.
    pub fn new(spec: &StreamSpec) -> Result<Self, String> {
        let api = spec.endpoints.api_url().ok_or_else(|| {
            format!(
                "streams[{}]: endpoints.api or endpoints.region is required for genesys",
                spec.id
            )
        })?;
        if spec.topics.is_empty() {
            return Err(format!("streams[{}]: genesys needs topics", spec.id));
        }
        Ok(Self {
            api,
            topics: spec.topics.clone(),
        })
    }

    /// How many channels the stream's topics need.
    pub fn channels_needed(&self) -> usize {
        self.topics.len().div_ceil(MAX_TOPICS_PER_CHANNEL)
    }

    async fn create_channel(&self, p: &Prepare<'_>) -> Result<ChannelCreated, AdapterError> {
        let what = "creating a notification channel";
        p.budget.request_slot(TokenKey::of(p.token)).await;
        let resp = p
            .http
            .post(join(&self.api, "/api/v2/notifications/channels"))
            .bearer_auth(p.token)
            .json(&serde_json::json!({}))
            .send()
            .await
            .map_err(|e| other(what, transport_error(e)))?;
        let resp = check(what, resp).await?;
        resp.json::<ChannelCreated>()
            .await
            .map_err(|e| other(what, format!("unusable answer: {}", e.without_url())))
    }

    async fn subscribe(
        &self,
        p: &Prepare<'_>,
        channel: &str,
        topics: &[String],
    ) -> Result<(), AdapterError> {
        let what = "subscribing a channel (PUT subscriptions)";
        let body: Vec<Value> = topics
            .iter()
            .map(|t| serde_json::json!({"id": t}))
            .collect();
        p.budget.request_slot(TokenKey::of(p.token)).await;
        let resp = p
            .http
            .put(subscriptions_url(&self.api, channel))
            .bearer_auth(p.token)
            .json(&body)
            .send()
            .await
            .map_err(|e| other(what, transport_error(e)))?;
        check(what, resp).await.map(drop)
    }
}

fn subscriptions_url(api: &Url, channel: &str) -> Url {
    let mut url = join(api, "/api/v2/notifications/channels");
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.push(channel).push("subscriptions");
    }
    url
}

fn other(what: &'static str, message: String) -> AdapterError {
    AdapterError::Other { what, message }
}

/// The answer's status as an error when it is not a success: 401/403 a refused token, 429 a
/// rate limit with its `Retry-After` (else the body's `[N] seconds`).
async fn check(
    what: &'static str,
    resp: reqwest::Response,
) -> Result<reqwest::Response, AdapterError> {
    let status = resp.status().as_u16();
    match status {
        200..=299 => Ok(resp),
        401 | 403 => Err(AdapterError::TokenRefused { what, status }),
        429 => {
            let header = retry_after(&resp);
            let body = resp.text().await.unwrap_or_default();
            let wait = header
                .or_else(|| retry_in_body(&body))
                .unwrap_or(Duration::from_secs(60));
            Err(AdapterError::RateLimited {
                what,
                retry_after: RateLimit::RetryAfter(wait),
            })
        }
        _ => {
            let body = resp.text().await.unwrap_or_default();
            let message: String = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect();
            Err(other(what, format!("HTTP {status} {message}")))
        }
    }
}

/// `Retry the request in [59] seconds` → 59 s.
fn retry_in_body(body: &str) -> Option<Duration> {
    let at = body.find("Retry the request in [")? + "Retry the request in [".len();
    let end = body[at..].find(']')?;
    body[at..at + end]
        .trim()
        .parse()
        .ok()
        .map(Duration::from_secs)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChannelCreated {
    connect_uri: Url,
    id: String,
    #[serde(default)]
    expires: Option<String>,
}

#[async_trait]
impl Adapter for Genesys {
    fn platform(&self) -> Platform {
        Platform::Genesys
    }

    fn replays(&self) -> bool {
        false
    }

    fn rotation(&self) -> Rotation {
        Rotation::NewSocket
    }

    async fn prepare(&self, p: Prepare<'_>) -> Result<Vec<Prepared>, AdapterError> {
        let n = self.channels_needed();
        let permits = match Arc::clone(&p.budget.channels).try_acquire_many_owned(n as u32) {
            Ok(permits) => permits,
            Err(_) => {
                tracing::info!(
                    channels = n,
                    "the credential's 20 live channels are in use; waiting for one to be retired"
                );
                Arc::clone(&p.budget.channels)
                    .acquire_many_owned(n as u32)
                    .await
                    .map_err(|_| other("reserving channels", "channel budget closed".into()))?
            }
        };
        let mut permits = Some(permits);
        let mut out: Vec<Prepared> = Vec::with_capacity(n);
        for shard in self.topics.chunks(MAX_TOPICS_PER_CHANNEL) {
            let created = self.create_channel(&p).await?;
            self.subscribe(&p, &created.id, shard).await?;
            let life = created
                .expires
                .as_deref()
                .and_then(iso8601_ms)
                .map(|at| Duration::from_millis(at.saturating_sub(epoch_ms())))
                .unwrap_or(DEFAULT_CHANNEL_LIFE);
            // One permit per channel: the last one keeps what is left.
            let permit = if out.len() + 1 < n {
                permits.as_mut().and_then(|p| p.split(1))
            } else {
                permits.take()
            };
            out.push(Prepared {
                plan: SocketPlan {
                    url: created.connect_uri,
                    headers: Vec::new(),
                },
                conn: Box::new(GenesysChannel {
                    api: self.api.clone(),
                    id: created.id,
                    topics: shard.len(),
                    expires: Instant::now() + life,
                    budget: Arc::clone(p.budget),
                    _permit: permit,
                }),
            });
        }
        Ok(out)
    }
}

/// One channel and its socket.
pub struct GenesysChannel {
    api: Url,
    id: String,
    topics: usize,
    expires: Instant,
    /// The credential's budget: the retire request is paced under it too.
    budget: Arc<ClientBudget>,
    /// Its place in the credential's channel budget, given back when the channel is retired.
    _permit: Option<OwnedSemaphorePermit>,
}

impl std::fmt::Debug for GenesysChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenesysChannel")
            .field("id", &self.id)
            .field("topics", &self.topics)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl GenesysChannel {
    /// The channel id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Topics subscribed on it.
    pub fn topics(&self) -> usize {
        self.topics
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    #[serde(default, borrow)]
    topic_name: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    event_body: Option<&'a RawValue>,
    #[serde(default, borrow)]
    result: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Metadata<'a> {
    #[serde(default, borrow)]
    message: Option<std::borrow::Cow<'a, str>>,
}

impl Connection for GenesysChannel {
    fn ping(&self, _seq: u64, _token: &str) -> Ping {
        Ping::Text(r#"{"message":"ping"}"#.to_owned())
    }

    fn classify_text(&mut self, text: &str, out: &mut Vec<Inbound>) {
        out.push(classify(text));
    }

    fn classify_pong(&mut self, _payload: &[u8]) -> Inbound {
        Inbound::Pong { seq: None }
    }

    fn expires(&self) -> Option<Instant> {
        Some(self.expires)
    }

    fn retire(&self, http: &reqwest::Client, token: &str) -> Option<RetireStep> {
        // The platform keeps fanning events out to a subscribed channel until it expires:
        // unsubscribe the retired one (best effort; it expires anyway).
        let req = http
            .delete(subscriptions_url(&self.api, &self.id))
            .bearer_auth(token);
        let id = self.id.clone();
        let budget = Arc::clone(&self.budget);
        let key = TokenKey::of(token);
        Some(Box::pin(async move {
            budget.request_slot(key).await;
            match req.send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => {
                    tracing::debug!(channel = %id, status = r.status().as_u16(), "retired channel not unsubscribed")
                }
                Err(e) => {
                    tracing::debug!(channel = %id, error = %transport_error(e), "retired channel not unsubscribed")
                }
            }
        }))
    }
}

fn classify(text: &str) -> Inbound {
    let env: Envelope<'_> = match serde_json::from_str(text) {
        Ok(e) => e,
        Err(e) => return Inbound::Malformed(format!("not a Genesys message: {e}")),
    };
    match (env.topic_name.as_deref(), env.result.as_deref()) {
        (Some("channel.metadata"), _) => {
            let message = env
                .event_body
                .and_then(|b| serde_json::from_str::<Metadata<'_>>(b.get()).ok())
                .and_then(|m| m.message.map(|m| m.into_owned()));
            match message.as_deref() {
                Some("pong") => Inbound::Pong { seq: None },
                Some("WebSocket Heartbeat") => Inbound::Heartbeat,
                _ => Inbound::Ignored,
            }
        }
        (Some("v2.system.socket_closing"), _) => {
            Inbound::Closing("v2.system.socket_closing".into())
        }
        // Other system topics arrive unsubscribed: nothing for the app.
        (Some(t), _) if t.starts_with("v2.system.") => Inbound::Ignored,
        (Some(topic), _) => {
            let Some(body) = env.event_body else {
                return Inbound::Malformed(format!("event on {topic} without an eventBody"));
            };
            let body: Value = match serde_json::from_str(body.get()) {
                Ok(v) => v,
                Err(e) => return Inbound::Malformed(format!("eventBody is not JSON: {e}")),
            };
            match whole_frame(text) {
                Ok(data) => Inbound::Event {
                    id: hashed_id("g", topic, &body),
                    data,
                },
                Err(e) => Inbound::Malformed(e),
            }
        }
        (None, Some("200")) => Inbound::Ignored,
        // The channel expired, was replaced, or its token expired: move to a new one.
        (None, Some("404")) => Inbound::Closing("the channel is gone (result 404)".into()),
        (None, Some(other)) => {
            Inbound::Malformed(format!("socket request failed with result {other}"))
        }
        (None, None) => Inbound::Malformed("a message with neither topicName nor result".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_platform_messages_are_classified() {
        assert!(matches!(
            classify(r#"{"topicName":"channel.metadata","eventBody":{"message":"pong"}}"#),
            Inbound::Pong { seq: None }
        ));
        assert!(matches!(
            classify(
                r#"{"topicName":"channel.metadata","eventBody":{"message":"WebSocket Heartbeat"}}"#
            ),
            Inbound::Heartbeat
        ));
        assert!(matches!(
            classify(
                r#"{"topicName":"v2.system.socket_closing","version":"2","eventBody":{"message":"soon"},"metadata":{"CorrelationId":"c"}}"#
            ),
            Inbound::Closing(_)
        ));
        assert!(matches!(
            classify(r#"{"result":"404","status":"channel not found"}"#),
            Inbound::Closing(_)
        ));
        assert!(matches!(
            classify(r#"{"result":"200","status":"subscribed"}"#),
            Inbound::Ignored
        ));
        assert!(matches!(classify("[1]"), Inbound::Malformed(_)));
    }

    #[test]
    fn an_event_has_the_same_id_on_every_channel_whatever_its_metadata() {
        let a = r#"{"topicName":"v2.users.u1.presence","version":"2","eventBody":{"b":1,"a":2},"metadata":{"CorrelationId":"x"}}"#;
        let b = r#"{"metadata":{"CorrelationId":"y"},"eventBody":{"a":2, "b":1},"topicName":"v2.users.u1.presence","version":"2"}"#;
        let (Inbound::Event { id: ia, data }, Inbound::Event { id: ib, .. }) =
            (classify(a), classify(b))
        else {
            panic!("events")
        };
        assert_eq!(ia, ib);
        assert_eq!(data.get(), a, "the whole frame is forwarded byte for byte");
        let Inbound::Event { id: other, .. } = classify(&a.replace("u1.presence", "u2.presence"))
        else {
            panic!("event")
        };
        assert_ne!(ia, other, "the topic is part of the identity");
    }

    #[test]
    fn retry_after_is_read_from_the_body_when_the_header_is_missing() {
        let body = r#"{"message":"Rate limit exceeded the maximum [300] requests within [60] seconds. Retry the request in [59] seconds","code":"too.many.requests.retry.after","status":429}"#;
        assert_eq!(retry_in_body(body), Some(Duration::from_secs(59)));
        assert_eq!(retry_in_body("{}"), None);
    }

    #[test]
    fn topics_shard_by_a_thousand() {
        let spec = |n: usize| -> StreamSpec {
            let topics: Vec<String> = (0..n).map(|i| format!("v2.users.u{i}.presence")).collect();
            let yaml = format!(
                "streams:\n  - {{id: cc/g, tenant: t, platform: genesys, endpoints: {{region: mypurecloud.com}}, credentials: {{dir: /c}}, topics: {}}}\n",
                serde_json::to_string(&topics).expect("json")
            );
            streamkeeper_api::SidecarConfig::from_yaml(&yaml)
                .expect("valid")
                .config
                .streams
                .remove(0)
        };
        for (topics, channels) in [(1, 1), (1000, 1), (1001, 2), (2500, 3)] {
            assert_eq!(
                Genesys::new(&spec(topics))
                    .expect("adapter")
                    .channels_needed(),
                channels
            );
        }
        assert_eq!(
            subscriptions_url(
                &"https://api.mypurecloud.com".parse().expect("url"),
                "streaming-0-ab"
            )
            .as_str(),
            "https://api.mypurecloud.com/api/v2/notifications/channels/streaming-0-ab/subscriptions"
        );
    }
}
