//! The emulator over real sockets on 127.0.0.1, with tokio-tungstenite as the client.
//!
//! Events are driven with `Emulator::emit` (the timer is off unless a test turns it on);
//! every wait is bounded, and "nothing arrives" is asserted over a short bounded window.

use std::io::ErrorKind;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use streamkeeper_emulator::{Emulator, EmulatorConfig, Fault, FaultReport, GarbageKind, Stats};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{WebSocketStream, client_async};

type Ws = WebSocketStream<TcpStream>;

const ID: &str = "test-client";
const SECRET: &str = "test-secret";
/// Upper bound for anything that should happen.
const WAIT: Duration = Duration::from_secs(5);
/// Window in which something that must not happen is watched for.
const QUIET: Duration = Duration::from_millis(400);

async fn start(tweak: impl FnOnce(&mut EmulatorConfig)) -> Emulator {
    let mut cfg = EmulatorConfig {
        event_interval: Duration::ZERO,
        client_id: ID.into(),
        client_secret: SECRET.into(),
        ..EmulatorConfig::default()
    };
    tweak(&mut cfg);
    Emulator::start(cfg).await.expect("emulator starts")
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("JSON body")
    }
}

async fn http(
    emu: &Emulator,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let tcp = TcpStream::connect(emu.addr()).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("http handshake");
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, emu.addr().to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let resp = timeout(WAIT, sender.send_request(req))
        .await
        .expect("answered in time")
        .expect("response");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn token_request(emu: &Emulator, id: &str, secret: &str, grant: &str) -> Reply {
    let basic = format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")));
    http(
        emu,
        Method::POST,
        "/oauth/token",
        &[
            ("authorization", &basic),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        &format!("grant_type={grant}"),
    )
    .await
}

async fn token(emu: &Emulator) -> String {
    let r = token_request(emu, ID, SECRET, "client_credentials").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

async fn connect(
    emu: &Emulator,
    stream: &str,
    token: Option<&str>,
    last_event_id: Option<&str>,
) -> Result<Ws, WsError> {
    let tcp = TcpStream::connect(emu.addr()).await.expect("connect");
    let mut req = emu.stream_url(stream).into_client_request()?;
    if let Some(t) = token {
        let v = HeaderValue::from_str(&format!("Bearer {t}")).expect("header");
        req.headers_mut().insert(AUTHORIZATION, v);
    }
    if let Some(id) = last_event_id {
        let v = HeaderValue::from_str(id).expect("header");
        req.headers_mut().insert("last-event-id", v);
    }
    let (ws, _) = timeout(WAIT, client_async(req, tcp))
        .await
        .expect("handshake in time")?;
    Ok(ws)
}

async fn open(emu: &Emulator, stream: &str) -> Ws {
    let t = token(emu).await;
    connect(emu, stream, Some(&t), None).await.expect("upgrade")
}

/// The next message, which must arrive in time.
async fn next(ws: &mut Ws) -> Result<Message, WsError> {
    timeout(WAIT, ws.next())
        .await
        .expect("a message in time")
        .expect("stream not ended")
}

/// The next message as JSON text.
async fn next_json(ws: &mut Ws) -> Value {
    match next(ws).await.expect("no error") {
        Message::Text(t) => serde_json::from_str(t.as_str()).expect("JSON text"),
        other => panic!("expected text, got {other:?}"),
    }
}

/// Ids of the next `n` events.
async fn event_ids(ws: &mut Ws, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let v = next_json(ws).await;
        assert_eq!(v["type"], "event", "{v}");
        ids.push(v["id"].as_str().expect("id").to_string());
    }
    ids
}

/// Nothing at all arrives within [`QUIET`].
async fn assert_quiet(ws: &mut Ws, what: &str) {
    if let Ok(got) = timeout(QUIET, ws.next()).await {
        panic!("{what}: expected nothing, got {got:?}");
    }
}

fn ids(stream: &str, seqs: std::ops::RangeInclusive<u64>) -> Vec<String> {
    seqs.map(|s| format!("{stream}:{s:09}")).collect()
}

async fn ping(ws: &mut Ws, payload: &'static [u8]) {
    ws.send(Message::Ping(Bytes::from_static(payload)))
        .await
        .expect("ping sent");
}

/// Poll `check` (bounded) for state that changes just after a socket event.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn token_is_issued_for_good_credentials_and_refused_otherwise() {
    let emu = start(|c| c.token_ttl = Duration::from_secs(90)).await;

    let ok = token_request(&emu, ID, SECRET, "client_credentials").await;
    assert_eq!(ok.status, StatusCode::OK);
    let v = ok.json();
    assert_eq!(v["token_type"], "bearer");
    assert_eq!(v["expires_in"], 90);
    assert!(v["access_token"].as_str().is_some_and(|t| t.len() >= 16));

    for (id, secret, grant) in [
        (ID, "wrong", "client_credentials"),
        ("someone", SECRET, "client_credentials"),
        (ID, SECRET, "password"),
    ] {
        let r = token_request(&emu, id, secret, grant).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{id} {secret} {grant}");
        assert_eq!(r.json(), json!({"error": "invalid_client"}));
    }
    let r = http(
        &emu,
        Method::POST,
        "/oauth/token",
        &[],
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "no Authorization header"
    );

    assert_eq!(
        emu.fault(Fault::RefuseToken {
            stream: None,
            count: 2
        })
        .applied,
        2
    );
    for _ in 0..2 {
        let r = token_request(&emu, ID, SECRET, "client_credentials").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.json(), json!({"error": "invalid_client"}));
    }
    token(&emu).await; // the fault is used up
    assert_eq!(emu.stats().tokens_issued, 2);
    emu.shutdown().await;
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after_to_token_and_upgrade_requests() {
    let emu = start(|_| {}).await;
    let t = token(&emu).await;
    let report = emu.fault(Fault::RateLimit {
        stream: None,
        count: 2,
        retry_after_secs: 7,
    });
    assert_eq!(
        report,
        FaultReport {
            applied: 2,
            hit: Vec::new()
        },
        "request faults arm requests and name no socket"
    );

    for _ in 0..2 {
        let r = token_request(&emu, ID, SECRET, "client_credentials").await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            r.headers.get(RETRY_AFTER).map(HeaderValue::as_bytes),
            Some(&b"7"[..])
        );
        assert_eq!(
            r.json(),
            json!({"message": "Rate limit exceeded", "status": 429})
        );
    }
    token(&emu).await;

    for _ in 0..2 {
        match connect(&emu, "s", Some(&t), None).await {
            Err(WsError::Http(resp)) => {
                assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
                assert_eq!(
                    resp.headers().get(RETRY_AFTER).map(HeaderValue::as_bytes),
                    Some(&b"7"[..])
                );
            }
            other => panic!("expected 429, got {other:?}"),
        }
    }
    connect(&emu, "s", Some(&t), None)
        .await
        .expect("third upgrade passes");
    emu.shutdown().await;
}

#[tokio::test]
async fn users_me_needs_a_valid_bearer_token() {
    let emu = start(|_| {}).await;
    let t = token(&emu).await;
    let bearer = format!("Bearer {t}");
    let r = http(
        &emu,
        Method::GET,
        "/api/v2/users/me",
        &[("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"id": "emulated-user", "name": "Emulated User"})
    );
    for auth in ["", "Bearer not-issued", "Basic abc"] {
        let headers: &[(&str, &str)] = if auth.is_empty() {
            &[]
        } else {
            &[("authorization", auth)]
        };
        let r = http(&emu, Method::GET, "/api/v2/users/me", headers, "").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{auth:?}");
    }
    emu.shutdown().await;
}

#[tokio::test]
async fn upgrade_is_refused_with_401_without_a_valid_token() {
    let emu = start(|_| {}).await;
    for token in [None, Some("not-issued")] {
        match connect(&emu, "s", token, None).await {
            Err(WsError::Http(resp)) => assert_eq!(resp.status(), StatusCode::UNAUTHORIZED),
            other => panic!("expected 401, got {other:?}"),
        }
    }
    assert_eq!(emu.stats().connections_total, 0);
    emu.shutdown().await;
}

#[tokio::test]
async fn events_arrive_in_order_with_increasing_ids() {
    let emu = start(|c| c.streams = vec!["queue".into()]).await;
    let mut ws = open(&emu, "queue").await;
    emu.emit("queue", 5);
    let mut last_seq = 0;
    for want in ids("queue", 1..=5) {
        let v = next_json(&mut ws).await;
        assert_eq!(v["type"], "event");
        assert_eq!(v["id"], want.as_str());
        let seq = v["data"]["seq"].as_u64().expect("seq");
        assert!(seq > last_seq);
        last_seq = seq;
        assert_eq!(v["data"]["stream"], "queue");
        assert!(
            v["data"]["at"]
                .as_u64()
                .is_some_and(|at| at > 1_600_000_000_000)
        );
    }
    let stats = emu.stats();
    let s = &stats.streams["queue"];
    assert_eq!((s.emitted, s.connections), (5, 1));
    assert_eq!(s.last_id.as_deref(), Some("queue:000000005"));
    emu.shutdown().await;
}

#[tokio::test]
async fn the_timer_produces_events_with_nobody_connected() {
    let emu = start(|c| {
        c.streams = vec!["ticking".into()];
        c.event_interval = Duration::from_millis(20);
    })
    .await;
    eventually("three timed events", || {
        emu.stats().streams["ticking"].emitted >= 3
    })
    .await;
    let t = token(&emu).await;
    let mut ws = connect(&emu, "ticking", Some(&t), Some("ticking:000000000"))
        .await
        .expect("upgrade");
    assert_eq!(
        event_ids(&mut ws, 3).await,
        ids("ticking", 1..=3),
        "produced before anyone connected"
    );
    let live = event_ids(&mut ws, 3).await;
    assert!(live.windows(2).all(|w| w[0] < w[1]), "{live:?}");
    emu.shutdown().await;
}

#[tokio::test]
async fn last_event_id_replays_exactly_the_missed_events_then_live_ones() {
    let emu = start(|c| c.history = 6).await;
    let t = token(&emu).await;
    let mut first = connect(&emu, "s", Some(&t), None).await.expect("upgrade");
    emu.emit("s", 5);
    assert_eq!(event_ids(&mut first, 3).await, ids("s", 1..=3));
    drop(first);
    emu.emit("s", 2); // 6 and 7: the history now keeps 2..=7

    let mut resumed = connect(&emu, "s", Some(&t), Some("s:000000003"))
        .await
        .expect("upgrade");
    assert_eq!(event_ids(&mut resumed, 4).await, ids("s", 4..=7));
    emu.emit("s", 1);
    assert_eq!(
        event_ids(&mut resumed, 1).await,
        ids("s", 8..=8),
        "then live"
    );
    assert_quiet(&mut resumed, "no duplicates").await;

    for (what, id) in [
        ("too old", "s:000000001"),
        ("unknown", "s:000000099"),
        ("foreign", "x:000000004"),
    ] {
        let mut ws = connect(&emu, "s", Some(&t), Some(id))
            .await
            .expect("upgrade");
        assert_eq!(
            event_ids(&mut ws, 6).await,
            ids("s", 3..=8),
            "{what}: all retained history"
        );
    }
    emu.shutdown().await;
}

#[tokio::test]
async fn a_long_replay_is_complete_and_in_order() {
    let emu = start(|_| {}).await;
    let t = token(&emu).await;
    emu.emit("s", 20_000);
    let mut ws = connect(&emu, "s", Some(&t), Some("s:000000000"))
        .await
        .expect("upgrade");
    for seq in 1..=20_000u64 {
        let v = next_json(&mut ws).await;
        assert_eq!(v["data"]["seq"], seq);
    }
    assert_quiet(&mut ws, "nothing after the replay").await;
    emu.shutdown().await;
}

#[tokio::test]
async fn a_socket_owed_more_than_the_history_skips_to_the_oldest_retained_event() {
    let emu = start(|c| c.history = 100).await;
    let mut ws = open(&emu, "s").await;
    emu.emit("s", 10_000);
    assert_eq!(event_ids(&mut ws, 100).await, ids("s", 9_901..=10_000));
    emu.shutdown().await;
}

#[tokio::test]
async fn token_refresh_in_stream_is_acked_or_nacked() {
    let emu = start(|_| {}).await;
    let mut ws = open(&emu, "s").await;
    let t2 = token(&emu).await;
    let refresh = json!({"type": "token-refresh", "token": t2}).to_string();
    ws.send(Message::text(refresh)).await.expect("send");
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "token-refresh-ack"})
    );
    let bad = json!({"type": "token-refresh", "token": "not-issued"}).to_string();
    ws.send(Message::text(bad)).await.expect("send");
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "token-refresh-nack", "reason": "invalid_token"})
    );
    assert_eq!(emu.stats().streams["s"].token_refreshes, 1);
    emu.shutdown().await;
}

#[tokio::test]
async fn an_expired_token_closes_the_socket_with_4001() {
    let emu = start(|c| c.token_ttl = Duration::from_secs(1)).await;
    let mut ws = open(&emu, "s").await;
    match next(&mut ws).await.expect("close frame") {
        Message::Close(Some(CloseFrame { code, reason })) => {
            assert_eq!(u16::from(code), 4001);
            assert_eq!(reason.as_str(), "token expired");
        }
        other => panic!("expected close 4001, got {other:?}"),
    }
    emu.shutdown().await;
}

#[tokio::test]
async fn a_refreshed_socket_outlives_its_first_token() {
    let emu = start(|c| c.token_ttl = Duration::from_secs(2)).await;
    let t0 = Instant::now();
    let mut ws = open(&emu, "s").await;
    // Let a second of the first token's two pass (nothing may arrive), then refresh.
    assert!(
        timeout_at(t0 + Duration::from_secs(1), ws.next())
            .await
            .is_err()
    );
    let t2 = token(&emu).await;
    ws.send(Message::text(
        json!({"type": "token-refresh", "token": t2}).to_string(),
    ))
    .await
    .expect("send");
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "token-refresh-ack"})
    );
    // The first token expires at t0 + 2 s: the socket must survive it.
    if let Ok(got) = timeout_at(t0 + Duration::from_millis(2500), ws.next()).await {
        panic!("closed on the first token's expiry: {got:?}");
    }
    match next(&mut ws).await.expect("close frame") {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 4001),
        other => panic!("expected close 4001, got {other:?}"),
    }
    emu.shutdown().await;
}

#[tokio::test]
async fn blackhole_silences_one_stream_while_another_flows_until_heal() {
    let emu = start(|_| {}).await;
    let mut dark = open(&emu, "dark").await;
    let mut lit = open(&emu, "lit").await;
    let report = emu.fault(Fault::Blackhole {
        stream: Some("dark".into()),
    });
    assert_eq!(report.applied, 1);

    ping(&mut dark, b"anyone?").await;
    emu.emit("dark", 3);
    emu.emit("lit", 2);
    assert_eq!(event_ids(&mut lit, 2).await, ids("lit", 1..=2));
    assert_quiet(&mut dark, "blackholed socket").await;
    assert_eq!(emu.stats().streams["dark"].pings, 0, "not even read");
    assert_eq!(emu.stats().connections_open, 2, "kept open");

    assert_eq!(
        emu.fault(Fault::Heal {
            stream: Some("dark".into())
        })
        .applied,
        1
    );
    let mut pong = false;
    let mut got = Vec::new();
    while !pong || got.len() < 3 {
        match next(&mut dark).await.expect("no error") {
            Message::Pong(p) => pong = &p[..] == b"anyone?",
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("json");
                got.push(v["id"].as_str().expect("id").to_string());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, ids("dark", 1..=3), "held events flow after heal");
    emu.shutdown().await;
}

#[tokio::test]
async fn a_blackholed_socket_reset_by_its_client_is_released() {
    let emu = start(|_| {}).await;
    let ws = open(&emu, "s").await;
    emu.fault(Fault::Blackhole { stream: None });
    // What the sidecar does when it reaps: SO_LINGER 0, then close, so an RST goes out.
    socket2::SockRef::from(ws.get_ref())
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(ws);
    eventually("the blackholed socket to be released", || {
        emu.stats().connections_open == 0
    })
    .await;
    emu.shutdown().await;
}

#[tokio::test]
async fn one_blackhole_call_covers_every_socket() {
    let emu = start(|_| {}).await;
    let t = token(&emu).await;
    let mut sockets = Vec::new();
    for i in 0..200 {
        let name = format!("bulk-{}", i % 4);
        sockets.push(connect(&emu, &name, Some(&t), None).await.expect("upgrade"));
    }
    assert_eq!(emu.fault(Fault::Blackhole { stream: None }).applied, 200);
    for i in 0..4 {
        emu.emit(&format!("bulk-{i}"), 1);
    }
    let waits = sockets.iter_mut().map(|ws| timeout(QUIET, ws.next()));
    let results = futures_util::future::join_all(waits).await;
    assert!(results.iter().all(Result::is_err), "every socket is silent");
    assert_eq!(emu.stats().connections_open, 200);
    emu.shutdown().await;
}

#[tokio::test]
async fn reset_is_seen_as_connection_reset_not_a_clean_close() {
    let emu = start(|_| {}).await;
    let mut ws = open(&emu, "s").await;
    assert_eq!(emu.fault(Fault::Reset { stream: None }).applied, 1);
    match timeout(WAIT, ws.next()).await.expect("in time") {
        Some(Err(WsError::Io(e))) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
        other => panic!("expected ECONNRESET, got {other:?}"),
    }
    eventually("the socket to be gone", || {
        emu.stats().connections_open == 0
    })
    .await;
    emu.shutdown().await;
}

#[tokio::test]
async fn close_fault_sends_the_code_and_reason_then_ends_cleanly() {
    let emu = start(|_| {}).await;
    let mut ws = open(&emu, "s").await;
    let report = emu.fault(Fault::Close {
        stream: Some("s".into()),
        code: 4321,
        reason: "maintenance".into(),
    });
    assert_eq!(report.applied, 1);
    match next(&mut ws).await.expect("close frame") {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 4321);
            assert_eq!(frame.reason.as_str(), "maintenance");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    assert!(
        timeout(WAIT, ws.next()).await.expect("in time").is_none(),
        "clean end of stream"
    );
    assert_eq!(emu.stats().connections_open, 0);
    emu.shutdown().await;
}

#[tokio::test]
async fn a_client_close_is_answered_and_the_socket_released() {
    let emu = start(|_| {}).await;
    let mut ws = open(&emu, "s").await;
    ws.close(None).await.expect("close sent");
    assert!(matches!(next(&mut ws).await, Ok(Message::Close(_))));
    assert!(timeout(WAIT, ws.next()).await.expect("in time").is_none());
    assert_eq!(emu.stats().connections_open, 0);
    assert_eq!(emu.stats().connections_total, 1);
    emu.shutdown().await;
}

#[tokio::test]
async fn garbage_non_utf8_makes_the_client_fail_with_a_utf8_error() {
    let emu = start(|_| {}).await;
    let mut ws = open(&emu, "s").await;
    let f = Fault::SendGarbage {
        stream: None,
        kind: GarbageKind::NonUtf8,
        bytes: Some(8),
    };
    assert_eq!(emu.fault(f).applied, 1);
    match next(&mut ws).await {
        Err(WsError::Utf8(_)) => {}
        other => panic!("expected a UTF-8 error, got {other:?}"),
    }
    emu.shutdown().await;
}

#[tokio::test]
async fn garbage_bad_json_and_oversized_are_valid_text_of_the_asked_size() {
    let emu = start(|_| {}).await;
    let mut ws = open(&emu, "s").await;
    emu.fault(Fault::SendGarbage {
        stream: None,
        kind: GarbageKind::BadJson,
        bytes: Some(40),
    });
    emu.fault(Fault::SendGarbage {
        stream: None,
        kind: GarbageKind::Oversized,
        bytes: Some(200_000),
    });
    match next(&mut ws).await.expect("text") {
        Message::Text(t) => {
            assert_eq!(t.len(), 40);
            assert!(serde_json::from_str::<Value>(t.as_str()).is_err());
        }
        other => panic!("expected text, got {other:?}"),
    }
    match next(&mut ws).await.expect("text") {
        Message::Text(t) => assert_eq!(t.len(), 200_000),
        other => panic!("expected text, got {other:?}"),
    }
    emu.emit("s", 1);
    assert_eq!(
        event_ids(&mut ws, 1).await,
        ids("s", 1..=1),
        "the socket goes on"
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn pings_are_answered_with_the_same_payload() {
    let emu = start(|_| {}).await;
    let mut ws = open(&emu, "s").await;
    ping(&mut ws, b"p1").await;
    assert_eq!(
        next(&mut ws).await.expect("pong"),
        Message::Pong(Bytes::from_static(b"p1"))
    );
    let s = &emu.stats().streams["s"];
    assert_eq!((s.pings, s.pongs), (1, 1));
    emu.shutdown().await;
}

#[tokio::test]
async fn stop_pongs_keeps_events_flowing_and_sticks_for_new_sockets_until_heal() {
    let emu = start(|_| {}).await;
    let mut ws = open(&emu, "s").await;
    assert_eq!(
        emu.fault(Fault::StopPongs {
            stream: Some("s".into())
        })
        .applied,
        1
    );
    ping(&mut ws, b"p").await;
    emu.emit("s", 1);
    assert_eq!(event_ids(&mut ws, 1).await, ids("s", 1..=1));
    assert_quiet(&mut ws, "no pong").await;

    let mut later = open(&emu, "s").await;
    ping(&mut later, b"q").await;
    assert_quiet(&mut later, "no pong on a new socket either").await;
    let s = &emu.stats().streams["s"];
    assert_eq!((s.pings, s.pongs), (2, 0));

    let mut other = open(&emu, "other").await;
    ping(&mut other, b"o").await;
    assert!(
        matches!(next(&mut other).await, Ok(Message::Pong(_))),
        "other streams unaffected"
    );

    assert_eq!(emu.fault(Fault::Heal { stream: None }).applied, 3);
    ping(&mut ws, b"again").await;
    assert_eq!(
        next(&mut ws).await.expect("pong"),
        Message::Pong(Bytes::from_static(b"again"))
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn delay_pongs_answers_late() {
    let emu = start(|_| {}).await;
    let mut ws = open(&emu, "s").await;
    emu.fault(Fault::DelayPongs {
        stream: None,
        delay_ms: 300,
    });
    let sent = Instant::now();
    ping(&mut ws, b"slow").await;
    assert_eq!(
        next(&mut ws).await.expect("pong"),
        Message::Pong(Bytes::from_static(b"slow"))
    );
    assert!(
        sent.elapsed() >= Duration::from_millis(300),
        "{:?}",
        sent.elapsed()
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn malformed_client_frames_are_ignored_and_the_socket_stays() {
    let emu = start(|_| {}).await;
    let mut ws = open(&emu, "s").await;
    for bad in [
        "not json",
        r#"{"type":"bogus"}"#,
        r#"{"no":"type"}"#,
        "[1,2]",
    ] {
        ws.send(Message::text(bad)).await.expect("send");
    }
    ws.send(Message::binary(vec![1, 2, 3])).await.expect("send");
    ping(&mut ws, b"still there?").await;
    assert_eq!(
        next(&mut ws).await.expect("pong"),
        Message::Pong(Bytes::from_static(b"still there?"))
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn the_http_fault_api_applies_faults_and_rejects_bad_bodies_with_400() {
    let emu = start(|_| {}).await;
    let _ws = open(&emu, "s").await;

    let r = http(
        &emu,
        Method::POST,
        "/faults",
        &[],
        r#"{"action":"explode"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("explode")),
        "{}",
        r.body
    );
    let r = http(
        &emu,
        Method::POST,
        "/faults",
        &[],
        r#"{"action":"delay-pongs"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("delayMs"), "{}", r.body);
    let r = http(&emu, Method::POST, "/faults", &[], "{").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let r = http(
        &emu,
        Method::POST,
        "/faults",
        &[],
        r#"{"action":"stop-pongs","stream":"s"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"applied": 1}));

    let r = http(&emu, Method::GET, "/stats", &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes),
        Some(&b"application/json"[..])
    );
    let stats: Stats = serde_json::from_str(&r.body).expect("stats");
    assert_eq!(stats.connections_open, 1);
    assert!(
        r.json()["streams"]["s"].get("tokenRefreshes").is_some(),
        "camelCase: {}",
        r.body
    );

    assert_eq!(
        http(&emu, Method::GET, "/healthz", &[], "").await.status,
        StatusCode::OK
    );
    assert_eq!(
        http(&emu, Method::GET, "/nope", &[], "").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        http(&emu, Method::GET, "/faults", &[], "").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_open_sockets_with_1001() {
    let emu = start(|_| {}).await;
    let mut ws = open(&emu, "s").await;
    emu.shutdown().await;
    match next(&mut ws).await.expect("close frame") {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
}
