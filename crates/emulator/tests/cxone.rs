//! NICE CXone over real sockets on 127.0.0.1 with plain clients: OIDC discovery, the
//! access-key and refresh grants, userinfo, the DFO event hub and Agent Assist Hub sockets.

mod common;

use common::*;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use streamkeeper_emulator::{AahFault, CxoneFault, DfoFault, Fault, GrantKind};

const KEY: &str = "cxone-key";
const SECRET: &str = "cxone-secret";

async fn refresh(t: &Target, r: &str) -> crate::common::Reply {
    t.http(
        Method::POST,
        "/auth/token",
        &[("content-type", "application/x-www-form-urlencoded")],
        &format!("grant_type=refresh_token&refresh_token={r}"),
    )
    .await
}

fn register(token: &str) -> Value {
    json!({"action": "register", "payload": {"token": token}})
}

fn aah(command: &str, token: &str, topic: Option<&str>) -> Value {
    let body = topic.map_or(json!({}), |t| json!({ "topic": t }));
    json!({"command": command, "headers": {"sessionToken": token}, "body": body})
}

#[tokio::test]
async fn discovery_access_key_refresh_and_userinfo_follow_oidc() {
    let emu = start(|c| c.cxone.token_ttl = std::time::Duration::from_secs(3600)).await;
    let t = Target::plain(&emu);
    let d = t
        .http(Method::GET, "/.well-known/openid-configuration", &[], "")
        .await;
    assert_eq!(d.status, StatusCode::OK);
    let d = d.json();
    let base = emu.base_url();
    assert_eq!(d["issuer"], base.as_str());
    assert_eq!(d["token_endpoint"], format!("{base}/auth/token"));
    assert_eq!(d["userinfo_endpoint"], format!("{base}/auth/userinfo"));

    let (access, r1, v) = cxone_token(&t, KEY, SECRET).await;
    assert_eq!(
        (v["token_type"].as_str(), v["expires_in"].as_u64()),
        (Some("Bearer"), Some(3600))
    );
    let me = t.get("/auth/userinfo", &access).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(me.json()["tenantId"], "emulated-tenant");
    let bad = t.get("/auth/userinfo", "nope").await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert!(bad.headers.contains_key("www-authenticate"));

    let wrong = t
        .http(
            Method::POST,
            "/authentication/v1/token/access-key",
            &[],
            &json!({"accessKeyId": KEY, "accessKeySecret": "no"}).to_string(),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.json()["error"], "invalid_client");
    let malformed = t
        .http(
            Method::POST,
            "/authentication/v1/token/access-key",
            &[],
            "{",
        )
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);

    let next = refresh(&t, &r1).await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.body);
    let r2 = next.json()["refresh_token"]
        .as_str()
        .expect("r2")
        .to_string();
    assert_ne!(r1, r2, "refresh tokens rotate");
    let used = refresh(&t, &r1).await;
    assert_eq!(used.status, StatusCode::BAD_REQUEST);
    assert_eq!(used.json()["error"], "invalid_grant");
    let other = t
        .http(Method::POST, "/auth/token", &[], "grant_type=password")
        .await;
    assert_eq!(other.json()["error"], "unsupported_grant_type");

    // A refused refresh leaves the refresh token usable, so the retry succeeds.
    emu.fault(Fault::Cxone(CxoneFault::RefuseToken {
        client: None,
        grant: GrantKind::RefreshToken,
        count: 1,
    }));
    let refused = refresh(&t, &r2).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(refused.json()["error"], "invalid_grant");
    cxone_token(&t, KEY, SECRET).await; // access keys are not refused by it
    assert_eq!(refresh(&t, &r2).await.status, StatusCode::OK);
    emu.fault(Fault::Cxone(CxoneFault::RefuseToken {
        client: Some(KEY.into()),
        grant: GrantKind::AccessKey,
        count: 1,
    }));
    let body = json!({"accessKeyId": KEY, "accessKeySecret": SECRET}).to_string();
    let r = t
        .http(
            Method::POST,
            "/authentication/v1/token/access-key",
            &[],
            &body,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let st = emu.stats();
    let k = &st.tokens[KEY];
    assert_eq!(k.platform, "cxone");
    assert_eq!(
        (k.by_grant["access_key"], k.by_grant["refresh_token"]),
        (2, 2)
    );
    assert_eq!(k.refused, 3, "wrong secret, refused refresh, refused key");
    assert_eq!(
        st.tokens["unknown"].refused, 1,
        "a used refresh token has no owner any more"
    );
    // Revoking drops the refresh token with its access token.
    let (a3, r3, _) = cxone_token(&t, KEY, SECRET).await;
    emu.fault(Fault::Cxone(CxoneFault::RevokeToken {
        client: None,
        token: Some(a3.clone()),
    }));
    assert_eq!(
        t.get("/auth/userinfo", &a3).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(refresh(&t, &r3).await.status, StatusCode::BAD_REQUEST);
    emu.fault(Fault::Cxone(CxoneFault::RateLimit {
        path: Some("/auth".into()),
        method: None,
        count: 1,
        retry_after_secs: 30,
    }));
    let limited = t.get("/auth/userinfo", &access).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers["retry-after"], "30");
    emu.shutdown().await;
}

#[tokio::test]
async fn dfo_registers_heartbeats_delivers_events_and_rotates_on_the_same_socket() {
    let emu = start(|_| {}).await;
    let t = Target::plain(&emu);
    assert!(
        t.ws(&format!("ws://{}/eventhub?tenantId=t1", emu.addr()))
            .await
            .is_err(),
        "userId is required"
    );
    let (a1, _, _) = cxone_token(&t, KEY, SECRET).await;
    let mut ws = t.ws(&emu.dfo_url("t1", "u1")).await.expect("socket");
    emu.emit_dfo("t1", "u1", 1); // nobody registered: lost
    send(&mut ws, &json!({"action": "heartbeat"})).await;
    assert_eq!(next_json(&mut ws).await, json!({"eventType": "pong"}));
    send(&mut ws, &register("bogus")).await;
    assert_eq!(next_json(&mut ws).await["eventType"], "unauthorized");
    send(&mut ws, &register(&a1)).await;
    let ok = next_json(&mut ws).await;
    assert_eq!(ok["eventType"], "authorized", "{ok}");
    assert_eq!(
        (
            ok["data"]["tenantId"].as_str(),
            ok["data"]["userId"].as_str()
        ),
        (Some("t1"), Some("u1"))
    );
    emu.emit_dfo("t1", "u1", 2);
    let mut ids = Vec::new();
    for seq in 2..=3 {
        let e = next_json(&mut ws).await;
        assert_eq!(e["data"]["seq"], seq, "{e}");
        assert_eq!(e["data"]["stream"], "t1/u1");
        assert!(e["createdAt"].as_str().is_some_and(|c| c.ends_with('Z')));
        ids.push(e["eventId"].as_str().expect("eventId").to_string());
    }
    assert_ne!(ids[0], ids[1]);

    // Rotation: a new token on the same socket; a bad one later changes nothing.
    let (a2, _, _) = cxone_token(&t, KEY, SECRET).await;
    send(&mut ws, &register(&a2)).await;
    assert_eq!(next_json(&mut ws).await["eventType"], "authorized");
    send(&mut ws, &register("bogus")).await;
    assert_eq!(next_json(&mut ws).await["eventType"], "unauthorized");
    emu.emit_dfo("t1", "u1", 1);
    assert_eq!(next_json(&mut ws).await["data"]["seq"], 4);
    // The first token expiring does not matter any more; the registered one does.
    emu.fault(Fault::Cxone(CxoneFault::ExpireToken {
        client: None,
        token: Some(a1),
    }));
    emu.emit_dfo("t1", "u1", 1);
    assert_eq!(next_json(&mut ws).await["data"]["seq"], 5);
    emu.fault(Fault::Cxone(CxoneFault::ExpireToken {
        client: Some(KEY.into()),
        token: None,
    }));
    assert_eq!(
        next_json(&mut ws).await,
        json!({"eventType": "unauthorized", "data": {"message": "token expired"}})
    );
    let frame = close_frame(&mut ws).await.expect("closed");
    assert_eq!(
        (u16::from(frame.code), frame.reason.as_str()),
        (1008, "token expired")
    );

    let st = emu.stats();
    assert_eq!((st.dfo.registers, st.dfo.registers_refused), (2, 2));
    assert_eq!(st.dfo.streams["t1/u1"].generated, 5);
    assert_eq!(st.dfo.streams["t1/u1"].sent, 4);
    assert_eq!((st.dfo.pings, st.dfo.pongs), (1, 1));
    emu.shutdown().await;
}

#[tokio::test]
async fn dfo_events_are_not_replayed_after_a_reconnect() {
    let emu = start(|_| {}).await;
    let t = Target::plain(&emu);
    let (a, _, _) = cxone_token(&t, KEY, SECRET).await;
    let mut ws = t.ws(&emu.dfo_url("t", "u")).await.expect("socket");
    send(&mut ws, &register(&a)).await;
    next_json(&mut ws).await;
    emu.emit_dfo("t", "u", 1);
    assert_eq!(next_json(&mut ws).await["data"]["seq"], 1);
    ws.close(None).await.expect("close");
    eventually("socket gone", || emu.stats().dfo.sockets.is_empty()).await;
    emu.emit_dfo("t", "u", 1);
    let mut ws = t.ws(&emu.dfo_url("t", "u")).await.expect("again");
    send(&mut ws, &register(&a)).await;
    next_json(&mut ws).await;
    emu.emit_dfo("t", "u", 1);
    assert_eq!(next_json(&mut ws).await["data"]["seq"], 3, "2 is lost");
    assert_eq!(emu.stats().dfo.sockets["t/u"], 1);
    emu.shutdown().await;
}

#[tokio::test]
async fn rate_limit_exceeded_is_sent_then_the_socket_closes_and_the_next_register_gets_it_too() {
    let emu = start(|_| {}).await;
    let t = Target::plain(&emu);
    let (a, _, _) = cxone_token(&t, KEY, SECRET).await;
    let mut hit = t.ws(&emu.dfo_url("t", "u1")).await.expect("u1");
    let mut spared = t.ws(&emu.dfo_url("t", "u2")).await.expect("u2");
    let report = emu.fault(Fault::CxoneDfo(DfoFault::RateLimitExceeded {
        tenant_id: None,
        user_id: Some("u1".into()),
        count: 1,
        close: true,
    }));
    assert_eq!(report.applied, 2, "one socket now, one register armed");
    let m = next_json(&mut hit).await;
    assert_eq!(m["eventType"], "RATE_LIMIT_EXCEEDED");
    let frame = close_frame(&mut hit).await.expect("closed");
    assert_eq!(u16::from(frame.code), 1013);
    send(&mut spared, &register(&a)).await;
    assert_eq!(
        next_json(&mut spared).await["eventType"],
        "authorized",
        "another stream"
    );
    let mut again = t.ws(&emu.dfo_url("t", "u1")).await.expect("again");
    send(&mut again, &register(&a)).await;
    assert_eq!(
        next_json(&mut again).await["eventType"],
        "RATE_LIMIT_EXCEEDED"
    );
    assert!(close_frame(&mut again).await.is_some());
    let mut third = t.ws(&emu.dfo_url("t", "u1")).await.expect("third");
    send(&mut third, &register(&a)).await;
    assert_eq!(
        next_json(&mut third).await["eventType"],
        "authorized",
        "used up"
    );
    assert_eq!(emu.stats().dfo.rate_limit_exceeded, 2);
    emu.shutdown().await;
}

#[tokio::test]
async fn aah_checks_the_token_on_every_message_and_records_which_one_each_carried() {
    let emu = start(|_| {}).await;
    let t = Target::plain(&emu);
    let (a1, _, _) = cxone_token(&t, KEY, SECRET).await;
    let mut ws = t.ws(&emu.aah_url()).await.expect("socket");
    send(&mut ws, &aah("SUBSCRIBE", &a1, Some("contact-1"))).await;
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["command"].as_str(), e["body"]["code"].as_str()),
        (Some("ERROR"), Some("NOT_CONNECTED"))
    );
    send(&mut ws, &aah("CONNECT", &a1, None)).await;
    let c = next_json(&mut ws).await;
    assert_eq!(c["command"], "CONNECTED");
    let conn_id = c["headers"]["connectionId"].clone();
    send(&mut ws, &aah("SUBSCRIBE", &a1, Some("contact-1"))).await;
    let s = next_json(&mut ws).await;
    assert_eq!(
        s,
        json!({"command": "SUBSCRIBED", "headers": {"connectionId": conn_id}, "body": {"topic": "contact-1"}})
    );
    send(&mut ws, &aah("HEARTBEAT", &a1, None)).await;
    assert_eq!(next_json(&mut ws).await["command"], "HEARTBEAT_ACK");
    emu.emit_aah("contact-1", 1);
    let m = next_json(&mut ws).await;
    assert_eq!(m["command"], "MESSAGE");
    assert_eq!(m["headers"]["topic"], "contact-1");
    assert!(m["headers"]["messageId"].as_str().is_some());
    assert_eq!(m["body"]["seq"], 1);

    // Rotation: the next messages carry the new token; no message is sent for it.
    let (a2, _, _) = cxone_token(&t, KEY, SECRET).await;
    send(&mut ws, &aah("HEARTBEAT", &a2, None)).await;
    assert_eq!(next_json(&mut ws).await["command"], "HEARTBEAT_ACK");
    send(&mut ws, &aah("SUBSCRIBE", &a2, Some("contact-2"))).await;
    assert_eq!(next_json(&mut ws).await["command"], "SUBSCRIBED");
    emu.fault(Fault::Cxone(CxoneFault::ExpireToken {
        client: None,
        token: Some(a1.clone()),
    }));
    send(&mut ws, &aah("HEARTBEAT", &a1, None)).await;
    let err = next_json(&mut ws).await;
    assert_eq!(
        (err["command"].as_str(), err["body"]["code"].as_str()),
        (Some("ERROR"), Some("UNAUTHORIZED"))
    );
    send(&mut ws, &aah("HEARTBEAT", "never-issued", None)).await;
    assert_eq!(next_json(&mut ws).await["body"]["code"], "UNAUTHORIZED");
    send(&mut ws, &aah("UNSUBSCRIBE", &a2, Some("contact-1"))).await;
    assert_eq!(next_json(&mut ws).await["command"], "UNSUBSCRIBED");
    emu.emit_aah("contact-1", 1);
    emu.emit_aah("contact-2", 1);
    let m = next_json(&mut ws).await;
    assert_eq!(
        (m["headers"]["topic"].as_str(), m["body"]["seq"].as_u64()),
        (Some("contact-2"), Some(1))
    );

    let (s1, s2) = (emu.token_serial(&a1), emu.token_serial(&a2));
    assert!(s1.is_some() && s2 > s1);
    let st = emu.stats();
    let (id, sock) = st.aah.sockets.iter().next().expect("one socket");
    assert!(sock.open);
    let seen: Vec<(&str, Option<u64>, bool)> = sock
        .messages
        .iter()
        .map(|m| (m.command.as_str(), m.token_serial, m.valid))
        .collect();
    assert_eq!(
        seen,
        [
            ("SUBSCRIBE", s1, true),
            ("CONNECT", s1, true),
            ("SUBSCRIBE", s1, true),
            ("HEARTBEAT", s1, true),
            ("HEARTBEAT", s2, true),
            ("SUBSCRIBE", s2, true),
            ("HEARTBEAT", s1, false),
            ("HEARTBEAT", None, false),
            ("UNSUBSCRIBE", s2, true),
        ]
    );
    assert_eq!((st.aah.pings, st.aah.pongs), (2, 2));
    assert_eq!(st.aah.topics["contact-1"].sent, 1);

    let report = emu.fault(Fault::CxoneAah(AahFault::Close {
        socket: Some(*id),
        topic: None,
        code: 1000,
        reason: "bye".into(),
    }));
    assert_eq!(report.applied, 1);
    assert_eq!(next_json(&mut ws).await["command"], "CLOSED");
    let frame = close_frame(&mut ws).await.expect("closed");
    assert_eq!(frame.reason.as_str(), "bye");
    eventually("recorded closed", || !emu.stats().aah.sockets[id].open).await;
    emu.shutdown().await;
}

#[tokio::test]
async fn aah_messages_without_ids_when_configured_and_faults_by_topic() {
    let emu = start(|c| c.cxone.aah_message_ids = false).await;
    let t = Target::plain(&emu);
    let (a, _, _) = cxone_token(&t, KEY, SECRET).await;
    let mut one = t.ws(&emu.aah_url()).await.expect("one");
    let mut two = t.ws(&emu.aah_url()).await.expect("two");
    for (ws, topic) in [(&mut one, "c1"), (&mut two, "c2")] {
        send(ws, &aah("CONNECT", &a, None)).await;
        next_json(ws).await;
        send(ws, &aah("SUBSCRIBE", &a, Some(topic))).await;
        next_json(ws).await;
    }
    emu.emit_aah("c1", 1);
    let m = next_json(&mut one).await;
    assert!(m["headers"].get("messageId").is_none(), "{m}");
    let report = emu.fault(Fault::CxoneAah(AahFault::Reset {
        socket: None,
        topic: Some("c2".into()),
    }));
    assert_eq!(report.applied, 1);
    assert!(
        close_frame(&mut two).await.is_none(),
        "reset: no close frame"
    );
    send(&mut one, &aah("HEARTBEAT", &a, None)).await;
    assert_eq!(next_json(&mut one).await["command"], "HEARTBEAT_ACK");
    emu.shutdown().await;
}

#[tokio::test]
async fn bad_fault_bodies_are_refused_with_the_problem_named() {
    let emu = start(|_| {}).await;
    let t = Target::plain(&emu);
    let ok = t
        .http(
            Method::POST,
            "/faults",
            &[],
            r#"{"action":"cxone-dfo","fault":"rate-limit-exceeded","userId":"u"}"#,
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(ok.json(), json!({"applied": 0}));
    for (body, names) in [
        (r#"{"action":"genesys","fault":"explode"}"#, "explode"),
        (
            r#"{"action":"genesys","fault":"reset","chanel":"x"}"#,
            "chanel",
        ),
        (
            r#"{"action":"cxone","fault":"refuse-token","grant":"magic","count":1}"#,
            "magic",
        ),
        (
            r#"{"action":"genesys","fault":"rate-limit","count":1}"#,
            "retryAfterSecs",
        ),
    ] {
        let r = t.http(Method::POST, "/faults", &[], body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        let msg = r.json()["error"].as_str().expect("error").to_string();
        assert!(
            msg.starts_with("bad fault") && msg.contains(names),
            "{body}: {msg}"
        );
    }
    emu.shutdown().await;
}
