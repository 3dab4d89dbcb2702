//! Many sockets at once (ignored by default: it needs two descriptors a socket in one process).
//!
//! `SK_EMU_SOCKETS=9000 cargo test -p streamkeeper-emulator --release --test scale -- --ignored --nocapture`
//! (the default, 9,000, fits a 20,000 descriptor limit; client and server share the process).

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::HeaderValue;
use http::header::AUTHORIZATION;
use streamkeeper_emulator::{Emulator, EmulatorConfig, Fault};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

type Ws = WebSocketStream<TcpStream>;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn connect(emu: &Emulator, stream: &str, bearer: &HeaderValue) -> Ws {
    let tcp = TcpStream::connect(emu.addr()).await.expect("connect");
    let mut req = emu
        .stream_url(stream)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(AUTHORIZATION, bearer.clone());
    let cfg = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) = timeout(
        Duration::from_secs(30),
        client_async_with_config(req, tcp, Some(cfg)),
    )
    .await
    .expect("handshake in time")
    .expect("upgrade");
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "opens thousands of sockets; run by hand or from the benchmark job"]
async fn thousands_of_sockets_are_held_blackholed_healed_and_reset_by_single_calls() {
    let n: usize = std::env::var("SK_EMU_SOCKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9_000);
    let streams = 100;
    let emu = Emulator::start(EmulatorConfig {
        event_interval: Duration::ZERO,
        client_id: "c".into(),
        client_secret: "s".into(),
        ..EmulatorConfig::default()
    })
    .await
    .expect("start");
    let token = {
        // The token endpoint is covered elsewhere; take one straight from the HTTP API.
        let tcp = TcpStream::connect(emu.addr()).await.expect("connect");
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .expect("handshake");
        tokio::spawn(conn);
        let req = http::Request::post("/oauth/token")
            .header("host", "x")
            .header("authorization", "Basic Yzpz") // c:s
            .body(http_body_util::Full::new(Bytes::from_static(
                b"grant_type=client_credentials",
            )))
            .expect("request");
        let resp = sender.send_request(req).await.expect("response");
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .expect("body")
            .to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        v["access_token"].as_str().expect("token").to_string()
    };
    let bearer = HeaderValue::from_str(&format!("Bearer {token}")).expect("header");

    let rss0 = rss_kib();
    let started = Instant::now();
    let mut sockets: Vec<Ws> = Vec::with_capacity(n);
    while sockets.len() < n {
        let batch = (n - sockets.len()).min(250);
        let base = sockets.len();
        let conns = (0..batch).map(|i| {
            let name = format!("load-{}", (base + i) % streams);
            let emu = &emu;
            let bearer = &bearer;
            async move { connect(emu, &name, bearer).await }
        });
        sockets.extend(futures_util::future::join_all(conns).await);
    }
    let connected = started.elapsed();
    assert_eq!(emu.stats().connections_open, n);
    let rss1 = rss_kib();
    println!(
        "{n} sockets connected in {connected:?}; RSS +{} KiB ({} bytes a socket, client and server together)",
        rss1.saturating_sub(rss0),
        rss1.saturating_sub(rss0) * 1024 / n as u64
    );

    // Every stream emits; every socket receives.
    for s in 0..streams {
        emu.emit(&format!("load-{s}"), 1);
    }
    let reads = sockets
        .iter_mut()
        .map(|ws| timeout(Duration::from_secs(30), ws.next()));
    let got = futures_util::future::join_all(reads).await;
    assert!(
        got.iter()
            .all(|r| matches!(r, Ok(Some(Ok(Message::Text(_)))))),
        "every socket got its event"
    );

    let t = Instant::now();
    let report = emu.fault(Fault::Blackhole { stream: None });
    println!(
        "blackhole of {} sockets took {:?}",
        report.applied,
        t.elapsed()
    );
    assert_eq!(report.applied, n as u64);
    for s in 0..streams {
        emu.emit(&format!("load-{s}"), 1);
    }
    let sample = sockets.iter_mut().step_by(n / 50 + 1);
    for ws in sample {
        ws.send(Message::Ping(Bytes::from_static(b"?")))
            .await
            .expect("ping");
        assert!(
            timeout(Duration::from_millis(100), ws.next())
                .await
                .is_err(),
            "blackholed"
        );
    }

    let report = emu.fault(Fault::Heal { stream: None });
    assert_eq!(report.applied, n as u64);

    let t = Instant::now();
    let report = emu.fault(Fault::Reset { stream: None });
    assert_eq!(report.applied, n as u64);
    let deadline = Instant::now() + Duration::from_secs(30);
    while emu.stats().connections_open > 0 {
        assert!(Instant::now() < deadline, "sockets still open after reset");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("reset of {n} sockets done in {:?}", t.elapsed());
    drop(sockets);
    emu.shutdown().await;
}
