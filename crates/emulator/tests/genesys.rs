//! The Genesys Notifications API over real sockets on 127.0.0.1 with plain clients (hyper and
//! tokio-tungstenite): tokens, channels, subscriptions, the socket, and the platform's limits.

mod common;

use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use streamkeeper_emulator::{Credential, Fault, GenesysFault};
use tokio_tungstenite::tungstenite::Message;

const ID: &str = "gc-a";
const SECRET: &str = "gc-a-secret";
const CHANNELS: &str = "/api/v2/notifications/channels";

fn two_clients(cfg: &mut streamkeeper_emulator::EmulatorConfig) {
    cfg.genesys.clients = vec![
        Credential::new(ID, SECRET),
        Credential::new("gc-b", "gc-b-secret"),
    ];
}

/// `(id, connectUri)` of a new channel.
async fn channel(t: &Target, token: &str) -> (String, String) {
    let r = t.send_json(Method::POST, CHANNELS, token, "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let v = r.json();
    (
        v["id"].as_str().expect("id").to_string(),
        v["connectUri"].as_str().expect("connectUri").to_string(),
    )
}

/// PUT or POST `topics` on channel `id`.
async fn subscribe(t: &Target, method: Method, id: &str, token: &str, topics: &[String]) -> Reply {
    t.send_json(method, &subs(id), token, &topic_body(topics))
        .await
}

/// The status of `HEAD` on channel `id`.
async fn head(t: &Target, id: &str, token: &str) -> StatusCode {
    let auth = format!("Bearer {token}");
    t.http(
        Method::HEAD,
        &format!("{CHANNELS}/{id}"),
        &[("authorization", &auth)],
        "",
    )
    .await
    .status
}

fn subs(id: &str) -> String {
    format!("{CHANNELS}/{id}/subscriptions")
}

fn topic_body(topics: &[String]) -> String {
    let list: Vec<Value> = topics.iter().map(|t| json!({ "id": t })).collect();
    Value::Array(list).to_string()
}

fn topics(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("v2.users.{prefix}{i}.presence"))
        .collect()
}

fn is_heartbeat(v: &Value) -> bool {
    v["topicName"] == "channel.metadata"
}

#[tokio::test]
async fn each_client_gets_its_own_tokens_which_validate_on_tokens_me_but_not_users_me() {
    let emu = start(two_clients).await;
    let t = Target::plain(&emu);
    let a = genesys_token(&t, ID, SECRET).await;
    let b = genesys_token(&t, "gc-b", "gc-b-secret").await;
    assert_ne!(a, b);
    let me = t.get("/api/v2/tokens/me", &a).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(me.json()["OAuthClient"]["id"], ID);
    let users = t.get("/api/v2/users/me", &a).await;
    assert_eq!(users.status, StatusCode::FORBIDDEN);
    assert_eq!(users.json()["code"], "not.authorized.no.user");
    assert_eq!(users.json()["status"], 403);
    // The generic client still gets its 200 on users/me.
    let generic = genesys_token(&t, "streamkeeper", "streamkeeper-secret").await;
    assert_eq!(
        t.get("/api/v2/users/me", &generic).await.status,
        StatusCode::OK
    );
    // A generic token cannot open Genesys channels, nor a Genesys token generic streams.
    let r = t.send_json(Method::POST, CHANNELS, &generic, "").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["code"], "bad.credentials");
    assert!(
        t.ws(&emu.stream_url("s")).await.is_err(),
        "no bearer: refused"
    );
    assert_eq!(
        t.get("/api/v2/tokens/me", "nope").await.status,
        StatusCode::UNAUTHORIZED
    );

    emu.fault(Fault::Genesys(GenesysFault::RefuseToken {
        client: Some("gc-b".into()),
        count: 1,
    }));
    genesys_token(&t, ID, SECRET).await; // another client's requests are not refused
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            "gc-b:gc-b-secret"
        )
    );
    let refused = t
        .http(
            Method::POST,
            "/oauth/token",
            &[("authorization", &basic)],
            "grant_type=client_credentials",
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    genesys_token(&t, "gc-b", "gc-b-secret").await;

    let st = emu.stats();
    assert_eq!(st.tokens[ID].by_grant["client_credentials"], 2);
    assert_eq!(st.tokens["gc-b"].by_grant["client_credentials"], 2);
    assert_eq!(st.tokens["gc-b"].refused, 1);
    assert_eq!(st.tokens[ID].platform, "genesys");
    assert_eq!(st.tokens["streamkeeper"].platform, "generic");
    assert_eq!(st.tokens_issued, 5);
    assert_eq!(st.rest["POST /oauth/token"], 6);
    emu.shutdown().await;
}

#[tokio::test]
async fn a_channel_is_created_subscribed_and_connected_without_auth_and_delivers_its_topics() {
    let emu = start(|c| {
        two_clients(c);
        c.genesys.heartbeat_interval = Duration::from_millis(300);
    })
    .await;
    let t = Target::plain(&emu);
    let token = genesys_token(&t, ID, SECRET).await;
    let r = t.send_json(Method::POST, CHANNELS, &token, "").await;
    let v = r.json();
    let id = v["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("streaming-0-"), "{id}");
    assert_eq!(
        v["connectUri"],
        format!("ws://{}/channels/{id}", emu.addr()),
        "connectUri"
    );
    let expires = v["expires"].as_str().expect("expires");
    assert!(expires.ends_with('Z') && expires.len() == 24, "{expires}");
    assert_eq!(head(&t, &id, &token).await, StatusCode::OK);
    assert_eq!(head(&t, "nope", &token).await, StatusCode::NOT_FOUND);

    let presence = "v2.users.u1.presence".to_string();
    let queue = "v2.routing.queues.q1.conversations".to_string();
    let put = subscribe(
        &t,
        Method::PUT,
        &id,
        &token,
        std::slice::from_ref(&presence),
    )
    .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);
    assert_eq!(put.json(), json!({"entities": [{"id": presence}]}));
    let post = subscribe(&t, Method::POST, &id, &token, std::slice::from_ref(&queue)).await;
    assert_eq!(post.json()["entities"].as_array().map(Vec::len), Some(2));
    let get = t.get(&subs(&id), &token).await;
    assert_eq!(get.json()["entities"].as_array().map(Vec::len), Some(2));
    let other = genesys_token(&t, "gc-b", "gc-b-secret").await;
    assert_eq!(
        t.get(&subs(&id), &other).await.status,
        StatusCode::NOT_FOUND,
        "another client's channel"
    );

    let mut ws = t
        .ws(&format!("ws://{}/channels/{id}", emu.addr()))
        .await
        .expect("socket");
    emu.emit_genesys(&presence, 1);
    let ev = next_json_except(&mut ws, is_heartbeat).await;
    assert_eq!(ev["topicName"], presence.as_str());
    assert_eq!(ev["version"], "2");
    assert_eq!(ev["eventBody"]["seq"], 1);
    assert_eq!(ev["eventBody"]["topic"], presence.as_str());
    assert!(
        ev["metadata"]["CorrelationId"]
            .as_str()
            .is_some_and(|c| c.len() == 36)
    );
    emu.emit_genesys(&queue, 2);
    for seq in 1..=2 {
        let ev = next_json_except(&mut ws, is_heartbeat).await;
        assert_eq!(
            (ev["topicName"].as_str(), ev["eventBody"]["seq"].as_u64()),
            (Some(queue.as_str()), Some(seq))
        );
    }

    send(&mut ws, &json!({"message": "ping"})).await;
    let pong = next_json_except(&mut ws, |v| {
        v["eventBody"]["message"] == "WebSocket Heartbeat"
    })
    .await;
    assert_eq!(
        pong,
        json!({"topicName":"channel.metadata","eventBody":{"message":"pong"}})
    );
    let hb = next_json(&mut ws).await;
    assert_eq!(
        hb,
        json!({"topicName":"channel.metadata","eventBody":{"message":"WebSocket Heartbeat"}})
    );

    let extra = "v2.analytics.queues.q1.observations";
    send(
        &mut ws,
        &json!({"message": "subscribe", "topics": [extra], "correlationId": "c-1"}),
    )
    .await;
    let ok = next_json_except(&mut ws, is_heartbeat).await;
    assert_eq!(
        ok,
        json!({"result": "200", "status": "subscribed", "correlationId": "c-1"})
    );
    assert_eq!(
        t.get(&subs(&id), &token).await.json()["entities"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );

    let del = t.send_json(Method::DELETE, &subs(&id), &token, "").await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    emu.emit_genesys(&presence, 1);
    assert_quiet(&mut ws, "after DELETE", is_heartbeat).await;

    let st = emu.stats();
    let ch = &st.genesys.channels[&id];
    assert!(ch.connected);
    assert_eq!((ch.topics, ch.subscriptions, ch.connections), (0, 3, 1));
    assert_eq!(st.genesys.clients[ID].channels_open, 1);
    assert!(st.genesys.heartbeats >= 1);
    assert_eq!(st.genesys.pings, 1);
    assert_eq!(st.genesys.topics[&presence].generated, 2);
    assert_eq!(st.genesys.topics[&presence].sent, 1);
    assert_eq!(
        st.rest["PUT /api/v2/notifications/channels/{id}/subscriptions"],
        1
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn two_channels_on_one_topic_both_get_each_event_and_a_disconnected_one_loses_them() {
    let emu = start(two_clients).await;
    let t = Target::plain(&emu);
    let token = genesys_token(&t, ID, SECRET).await;
    let topic = "v2.users.u9.presence".to_string();
    let (a, a_uri) = channel(&t, &token).await;
    let (b, b_uri) = channel(&t, &token).await;
    for id in [&a, &b] {
        subscribe(&t, Method::PUT, id, &token, std::slice::from_ref(&topic)).await;
    }
    let mut wa = t.ws(&a_uri).await.expect("a");
    let mut wb = t.ws(&b_uri).await.expect("b");
    emu.emit_genesys(&topic, 1);
    let (ea, eb) = (next_json(&mut wa).await, next_json(&mut wb).await);
    assert_eq!(
        ea, eb,
        "the same event, body and CorrelationId, on both channels"
    );
    assert_eq!(ea["eventBody"]["seq"], 1);

    wb.close(None).await.expect("close b");
    eventually("b disconnected", || {
        !emu.stats().genesys.channels[&b].connected
    })
    .await;
    let st = emu.stats();
    let (ca, cb) = (&st.genesys.channels[&a], &st.genesys.channels[&b]);
    assert!(ca.disconnected_at_ms.is_none() && ca.connected_at_ms.is_some());
    assert!(cb.connected_at_ms.is_some() && cb.disconnected_at_ms >= cb.connected_at_ms);
    emu.emit_genesys(&topic, 1); // seq 2: lost for b
    assert_eq!(next_json(&mut wa).await["eventBody"]["seq"], 2);
    let mut wb = t.ws(&b_uri).await.expect("b again");
    emu.emit_genesys(&topic, 1);
    assert_eq!(
        next_json(&mut wb).await["eventBody"]["seq"],
        3,
        "no replay of 2"
    );
    assert_eq!(next_json(&mut wa).await["eventBody"]["seq"], 3);
    assert_quiet(&mut wb, "nothing else for b", |_| false).await;
    let st = &emu.stats().genesys.topics[&topic];
    assert_eq!((st.generated, st.sent, st.receivers), (3, 5, 2));
    emu.shutdown().await;
}

#[tokio::test]
async fn a_second_socket_on_a_channel_drops_the_first() {
    let emu = start(two_clients).await;
    let t = Target::plain(&emu);
    let token = genesys_token(&t, ID, SECRET).await;
    let (id, uri) = channel(&t, &token).await;
    let topic = "v2.users.u1.presence".to_string();
    subscribe(&t, Method::PUT, &id, &token, std::slice::from_ref(&topic)).await;
    let mut first = t.ws(&uri).await.expect("first");
    let mut second = t.ws(&uri).await.expect("second");
    let frame = close_frame(&mut first).await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1000);
    assert_eq!(frame.reason.as_str(), "connected elsewhere");
    emu.emit_genesys(&topic, 1);
    assert_eq!(next_json(&mut second).await["eventBody"]["seq"], 1);
    let st = emu.stats();
    assert_eq!(st.genesys.channels[&id].connections, 2);
    assert!(st.genesys.channels[&id].connected);
    emu.shutdown().await;
}

#[tokio::test]
async fn the_twenty_first_channel_replaces_the_oldest_one_without_a_socket() {
    let emu = start(two_clients).await;
    let t = Target::plain(&emu);
    let token = genesys_token(&t, ID, SECRET).await;
    let other = genesys_token(&t, "gc-b", "gc-b-secret").await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(channel(&t, &token).await);
    }
    channel(&t, &other).await; // another client's channels do not count
    // The oldest has a socket, so the second oldest is the one to go.
    let mut ws = t.ws(&ids[0].1).await.expect("socket on the oldest");
    let (newest, _) = channel(&t, &token).await;
    assert_eq!(
        head(&t, &ids[1].0, &token).await,
        StatusCode::NOT_FOUND,
        "replaced"
    );
    assert_eq!(head(&t, &ids[0].0, &token).await, StatusCode::OK);
    assert_eq!(head(&t, &newest, &token).await, StatusCode::OK);
    let list = t.get(CHANNELS, &token).await.json();
    assert_eq!(list["entities"].as_array().map(Vec::len), Some(20));
    let st = emu.stats();
    assert_eq!(st.genesys.clients[ID].channels_created, 21);
    assert_eq!(st.genesys.clients[ID].channels_live, 20);
    assert_eq!(st.genesys.clients[ID].channels_replaced, 1);
    assert_eq!(st.genesys.clients["gc-b"].channels_live, 1);
    assert_eq!(
        st.genesys.channels[&ids[1].0].stopped.as_deref(),
        Some("channel replaced")
    );
    // With every channel connected, the oldest goes, socket and all.
    let mut sockets = Vec::new();
    for (id, uri) in ids.iter().skip(2) {
        let _ = id;
        sockets.push(t.ws(uri).await.expect("socket"));
    }
    sockets.push(
        t.ws(&format!("ws://{}/channels/{newest}", emu.addr()))
            .await
            .expect("newest"),
    );
    channel(&t, &token).await;
    let frame = close_frame(&mut ws).await.expect("closed");
    assert_eq!(
        (u16::from(frame.code), frame.reason.as_str()),
        (1000, "channel replaced")
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn a_thousand_topics_fit_a_channel_and_one_more_is_refused_with_400() {
    let emu = start(two_clients).await;
    let t = Target::plain(&emu);
    let token = genesys_token(&t, ID, SECRET).await;
    let (id, uri) = channel(&t, &token).await;
    let too_many = subscribe(&t, Method::PUT, &id, &token, &topics("a", 1001)).await;
    assert_eq!(too_many.status, StatusCode::BAD_REQUEST);
    let v = too_many.json();
    assert_eq!(
        (v["code"].as_str(), v["status"].as_u64()),
        (Some("bad.request"), Some(400))
    );
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("1001") && m.contains("1000")),
        "{v}"
    );
    assert!(v["contextId"].as_str().is_some());
    assert_eq!(
        t.get(&subs(&id), &token).await.json()["entities"],
        json!([]),
        "nothing changed"
    );

    let full = subscribe(&t, Method::PUT, &id, &token, &topics("a", 1000)).await;
    assert_eq!(full.status, StatusCode::OK);
    let one_more = subscribe(&t, Method::POST, &id, &token, &topics("b", 1)).await;
    assert_eq!(one_more.status, StatusCode::BAD_REQUEST);
    let again = subscribe(&t, Method::POST, &id, &token, &topics("a", 3)).await;
    assert_eq!(
        again.status,
        StatusCode::OK,
        "topics it already has add nothing"
    );
    let mut ws = t.ws(&uri).await.expect("socket");
    send(
        &mut ws,
        &json!({"message": "subscribe", "topics": ["v2.users.zz.presence"]}),
    )
    .await;
    let r = next_json(&mut ws).await;
    assert_eq!(r["result"], "400", "{r}");

    let bad = t
        .send_json(
            Method::PUT,
            &subs(&id),
            &token,
            r#"[{"id":"users.not.v2"}]"#,
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let not_list = t
        .send_json(Method::PUT, &subs(&id), &token, r#"{"id":"v2.x"}"#)
        .await;
    assert_eq!(not_list.status, StatusCode::BAD_REQUEST);
    assert_eq!(emu.stats().genesys.channels[&id].topics, 1000);
    emu.shutdown().await;
}

#[tokio::test]
async fn rate_limit_answers_429_with_the_platform_body_and_retry_after() {
    let emu = start(two_clients).await;
    let t = Target::plain(&emu);
    let token = genesys_token(&t, ID, SECRET).await;
    let (id, _) = channel(&t, &token).await;
    let report = emu.fault(Fault::Genesys(GenesysFault::RateLimit {
        path: Some("/api/v2/notifications/channels".into()),
        method: Some("PUT".into()),
        count: 1,
        retry_after_secs: 59,
    }));
    assert_eq!(report.applied, 1);
    assert_eq!(
        t.get(&subs(&id), &token).await.status,
        StatusCode::OK,
        "GET is not limited"
    );
    let body = topic_body(&topics("a", 1));
    let r = t.send_json(Method::PUT, &subs(&id), &token, &body).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        r.headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("59")
    );
    let v = r.json();
    assert_eq!(v["code"], "too.many.requests.retry.after");
    assert_eq!(v["status"], 429);
    let msg = v["message"].as_str().expect("message");
    assert!(
        msg.starts_with("Rate limit exceeded") && msg.contains("Retry the request in [59] seconds"),
        "{msg}"
    );
    assert_eq!(
        t.send_json(Method::PUT, &subs(&id), &token, &body)
            .await
            .status,
        StatusCode::OK
    );
    // Any route, token requests included.
    emu.fault(Fault::Genesys(GenesysFault::RateLimit {
        path: None,
        method: None,
        count: 2,
        retry_after_secs: 3,
    }));
    assert_eq!(
        t.get("/api/v2/tokens/me", &token).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{ID}:{SECRET}")
        )
    );
    let tok = t
        .http(
            Method::POST,
            "/oauth/token",
            &[("authorization", &basic)],
            "grant_type=client_credentials",
        )
        .await;
    assert_eq!(tok.status, StatusCode::TOO_MANY_REQUESTS);
    let st = emu.stats();
    assert_eq!(
        st.rate_limited["PUT /api/v2/notifications/channels/{id}/subscriptions"],
        1
    );
    assert_eq!(st.rate_limited["GET /api/v2/tokens/me"], 1);
    assert_eq!(st.rate_limited["POST /oauth/token"], 1);
    emu.shutdown().await;
}

#[tokio::test]
async fn a_channel_is_bound_to_its_token_when_the_token_expires_the_channel_stops() {
    let emu = start(|c| {
        two_clients(c);
        c.genesys.token_ttl = Duration::from_millis(600);
        c.genesys.stop_grace = Duration::from_millis(500);
    })
    .await;
    let t = Target::plain(&emu);
    let token = genesys_token(&t, ID, SECRET).await;
    let (id, uri) = channel(&t, &token).await;
    let topic = "v2.users.u1.presence".to_string();
    subscribe(&t, Method::PUT, &id, &token, std::slice::from_ref(&topic)).await;
    let mut ws = t.ws(&uri).await.expect("socket");
    // Wait (bounded) for the first token's expiry to stop the channel.
    eventually("the channel stopped", || {
        emu.stats().genesys.channels[&id].stopped.is_some()
    })
    .await;
    assert_eq!(
        emu.stats().genesys.channels[&id].stopped.as_deref(),
        Some("token expired")
    );
    // During the grace the socket is silent and answers subscribes with 404.
    emu.emit_genesys(&topic, 1);
    send(&mut ws, &json!({"message": "subscribe", "topics": [topic]})).await;
    let r = next_json(&mut ws).await;
    assert_eq!(r["result"], "404", "{r}");
    let frame = close_frame(&mut ws).await.expect("closed");
    assert_eq!(
        (u16::from(frame.code), frame.reason.as_str()),
        (1000, "token expired")
    );
    // A new token of the same client does not bring the old channel back.
    let fresh = genesys_token(&t, ID, SECRET).await;
    assert_eq!(head(&t, &id, &fresh).await, StatusCode::NOT_FOUND);
    let put = subscribe(&t, Method::PUT, &id, &fresh, std::slice::from_ref(&topic)).await;
    assert_eq!(put.status, StatusCode::NOT_FOUND);
    assert!(t.ws(&uri).await.is_err(), "no socket on a stopped channel");
    assert_eq!(
        t.get(&subs(&id), &token).await.status,
        StatusCode::UNAUTHORIZED,
        "expired token"
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn revoking_a_token_or_expiring_a_channel_stops_it_and_closes_its_socket() {
    let emu = start(two_clients).await;
    let t = Target::plain(&emu);
    let token = genesys_token(&t, ID, SECRET).await;
    let (a, a_uri) = channel(&t, &token).await;
    let other = genesys_token(&t, "gc-b", "gc-b-secret").await;
    let (b, b_uri) = channel(&t, &other).await;
    let mut wa = t.ws(&a_uri).await.expect("a");
    let mut wb = t.ws(&b_uri).await.expect("b");
    let report = emu.fault(Fault::Genesys(GenesysFault::RevokeToken {
        client: Some(ID.into()),
        token: None,
    }));
    assert_eq!(report.applied, 1);
    assert_eq!(report.hit.len(), 1);
    assert!(report.hit[0].starts_with("token#"), "{:?}", report.hit);
    let frame = close_frame(&mut wa).await.expect("closed");
    assert_eq!(
        (u16::from(frame.code), frame.reason.as_str()),
        (1000, "token expired")
    );
    assert_eq!(
        t.get("/api/v2/tokens/me", &token).await.status,
        StatusCode::UNAUTHORIZED
    );
    let report = emu.fault(Fault::Genesys(GenesysFault::ExpireChannel {
        channel: Some(b.clone()),
        client: None,
    }));
    assert_eq!(report.hit, [format!("channel:{b}")]);
    let frame = close_frame(&mut wb).await.expect("closed");
    assert_eq!(
        (u16::from(frame.code), frame.reason.as_str()),
        (1000, "channel expired")
    );
    let st = emu.stats();
    assert_eq!(
        st.genesys.channels[&a].stopped.as_deref(),
        Some("token expired")
    );
    assert_eq!(
        st.genesys.channels[&b].stopped.as_deref(),
        Some("channel expired")
    );
    assert_eq!(st.genesys.clients["gc-b"].channels_live, 0);
    emu.shutdown().await;
}

#[tokio::test]
async fn a_channel_expires_at_its_lifetime_and_subscribing_extends_it() {
    let emu = start(|c| {
        two_clients(c);
        c.genesys.channel_ttl = Duration::from_secs(2);
    })
    .await;
    let t = Target::plain(&emu);
    let token = genesys_token(&t, ID, SECRET).await;
    let (id, uri) = channel(&t, &token).await;
    let expires = |list: Value| {
        list["entities"][0]["expires"]
            .as_str()
            .expect("expires")
            .to_string()
    };
    let before = expires(t.get(CHANNELS, &token).await.json());
    let mut ws = t.ws(&uri).await.expect("socket");
    eventually("a later millisecond", || {
        streamkeeper_emulator_now_ms() > iso_ms(&before) - 2000 + 5
    })
    .await;
    subscribe(&t, Method::PUT, &id, &token, &topics("a", 1)).await;
    let after = expires(t.get(CHANNELS, &token).await.json());
    assert!(
        after > before,
        "subscribing extends the channel: {before} -> {after}"
    );
    let frame = close_frame_within(&mut ws, Duration::from_secs(8)).await;
    assert_eq!(
        (u16::from(frame.code), frame.reason.as_str()),
        (1000, "channel expired")
    );
    assert_eq!(emu.stats().genesys.clients[ID].channels_live, 0);
    emu.shutdown().await;
}

#[tokio::test]
async fn socket_closing_comes_before_the_close_and_a_1001_close_fault_is_seen_as_such() {
    let emu = start(two_clients).await;
    let t = Target::plain(&emu);
    let token = genesys_token(&t, ID, SECRET).await;
    let (a, a_uri) = channel(&t, &token).await;
    let (b, b_uri) = channel(&t, &token).await;
    let mut wa = t.ws(&a_uri).await.expect("a");
    let mut wb = t.ws(&b_uri).await.expect("b");
    let report = emu.fault(Fault::Genesys(GenesysFault::SocketClosing {
        channel: Some(a.clone()),
        client: None,
        close_after_ms: Some(300),
        code: None,
    }));
    assert_eq!(report.applied, 1);
    let msg = next_json(&mut wa).await;
    assert_eq!(msg["topicName"], "v2.system.socket_closing");
    let frame = close_frame(&mut wa).await.expect("closed");
    assert_eq!(u16::from(frame.code), 1001);
    assert_quiet(&mut wb, "the other channel hears nothing", |_| false).await;
    let json_fault: Fault = serde_json::from_value(json!({
        "action": "genesys", "fault": "close", "channel": b, "code": 1001, "reason": "going away"
    }))
    .expect("fault JSON");
    assert_eq!(emu.fault(json_fault).applied, 1);
    let frame = close_frame(&mut wb).await.expect("closed");
    assert_eq!(
        (u16::from(frame.code), frame.reason.as_str()),
        (1001, "going away")
    );
    assert_eq!(emu.stats().genesys.socket_closing, 1);
    emu.shutdown().await;
}

#[tokio::test]
async fn genesys_pong_faults_and_blackhole_hit_only_the_chosen_channel() {
    let emu = start(two_clients).await;
    let t = Target::plain(&emu);
    let token = genesys_token(&t, ID, SECRET).await;
    let (a, a_uri) = channel(&t, &token).await;
    let (_, b_uri) = channel(&t, &token).await;
    let mut wa = t.ws(&a_uri).await.expect("a");
    let mut wb = t.ws(&b_uri).await.expect("b");
    emu.fault(Fault::Genesys(GenesysFault::StopPongs {
        channel: Some(a.clone()),
        client: None,
    }));
    send(&mut wa, &json!({"message": "ping"})).await;
    send(&mut wb, &json!({"message": "ping"})).await;
    assert_eq!(next_json(&mut wb).await["eventBody"]["message"], "pong");
    assert_quiet(&mut wa, "no pong on a", |_| false).await;
    wa.send_ping().await;
    assert_quiet(&mut wa, "no RFC pong either", |_| false).await;
    emu.fault(Fault::Genesys(GenesysFault::Heal {
        channel: Some(a),
        client: None,
    }));
    send(&mut wa, &json!({"message": "ping"})).await;
    assert_eq!(next_json(&mut wa).await["eventBody"]["message"], "pong");
    emu.shutdown().await;
}

/// Send an RFC 6455 ping.
trait SendPing {
    async fn send_ping(&mut self);
}

impl SendPing for Ws {
    async fn send_ping(&mut self) {
        use futures_util::SinkExt as _;
        self.send(Message::Ping(bytes::Bytes::from_static(b"p")))
            .await
            .expect("ping");
    }
}

/// Epoch milliseconds of an ISO 8601 UTC timestamp `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn iso_ms(s: &str) -> u64 {
    let num = |a: usize, b: usize| s[a..b].parse::<i64>().expect("digits");
    let (y, m, d) = (num(0, 4), num(5, 7), num(8, 10));
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + num(11, 13) * 3600 + num(14, 16) * 60 + num(17, 19);
    u64::try_from(secs * 1000 + num(20, 23)).expect("after 1970")
}

fn streamkeeper_emulator_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The close frame within `within`.
async fn close_frame_within(
    ws: &mut Ws,
    within: Duration,
) -> tokio_tungstenite::tungstenite::protocol::CloseFrame {
    use futures_util::StreamExt as _;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(Some(f)))) => return f,
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn topics_produce_at_their_rate_with_nobody_connected_and_a_late_socket_starts_mid_sequence()
{
    let emu = start(|c| {
        two_clients(c);
        c.genesys.event_interval = Duration::from_millis(20);
        c.genesys.topics = vec!["v2.users.pre.presence".into()];
    })
    .await;
    eventually("the configured topic produces", || {
        emu.stats()
            .genesys
            .topics
            .get("v2.users.pre.presence")
            .is_some_and(|t| t.generated >= 3)
    })
    .await;
    let t = Target::plain(&emu);
    let token = genesys_token(&t, ID, SECRET).await;
    let (id, uri) = channel(&t, &token).await;
    let topic = "v2.users.pre.presence".to_string();
    subscribe(&t, Method::PUT, &id, &token, std::slice::from_ref(&topic)).await;
    let st = &emu.stats().genesys.topics[&topic];
    assert_eq!(st.sent, 0, "nobody was connected");
    let mut ws = t.ws(&uri).await.expect("socket");
    let first = next_json(&mut ws).await["eventBody"]["seq"]
        .as_u64()
        .expect("seq");
    assert!(
        first >= 3,
        "events before the connect are not replayed: {first}"
    );
    for want in first + 1..first + 5 {
        assert_eq!(next_json(&mut ws).await["eventBody"]["seq"], want);
    }
    emu.shutdown().await;
}
