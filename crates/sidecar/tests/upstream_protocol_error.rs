//! A platform that breaks RFC 6455 gets the close frame the RFC asks for (§7.1.7: 1007 for
//! invalid UTF-8) before the session reaps the socket (tcp_error) and reconnects; before, the
//! session reset the socket without one.
//!
//! Tokens come from the emulator; the stream endpoint is a tokio-tungstenite server here that
//! sends text that is not UTF-8 on every connection and records the close code it gets back.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt as _;
use streamkeeper_api::{
    DropReason, StreamId, StreamSpec,
    config::{
        Credentials, Endpoints, HeartbeatSpec, LimitsSpec, Platform, ReconnectSpec, TokenSpec,
    },
};
use streamkeeper_emulator::{Emulator, EmulatorConfig};
use streamkeeper_sidecar::{
    app::Hub,
    auth::{ClientCredentials, CredentialFiles, Grant, TokenSource, spawn_manager},
    metrics::Metrics,
    net,
    platforms::generic::Generic,
    upstream::{self, Observer, SessionCtx, SessionEvent},
};
use tokio::{io::AsyncWriteExt as _, net::TcpListener, sync::mpsc};
use tokio_tungstenite::tungstenite::Message;

/// Upper bound on every wait; the test finishes far sooner.
const WAIT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<SessionEvent>>,
}

impl Observer for Recorder {
    fn observe(&self, _stream: &StreamId, event: SessionEvent) {
        self.events.lock().expect("lock").push(event);
    }
}

/// What the server got back after its invalid text: a close code, or how the socket ended.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Close(u16),
    NoClose(String),
}

/// Serves every connection: upgrade, invalid UTF-8 text, then read what comes back.
async fn bad_platform(listener: TcpListener, answers: mpsc::UnboundedSender<Answer>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let answers = answers.clone();
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                return;
            };
            let invalid = [0x81, 0x02, 0xC3, 0x28];
            if ws.get_mut().write_all(&invalid).await.is_err() {
                return;
            }
            let answer = match tokio::time::timeout(WAIT, ws.next()).await {
                Ok(Some(Ok(Message::Close(Some(close))))) => Answer::Close(close.code.into()),
                other => Answer::NoClose(format!("{other:?}")),
            };
            let _ = answers.send(answer);
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_from_the_platform_is_answered_with_close_1007_then_reaped() {
    let emu = Emulator::start(EmulatorConfig::default())
        .await
        .expect("emulator");
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (answers_tx, mut answers) = mpsc::unbounded_channel();
    let platform = tokio::spawn(bad_platform(listener, answers_tx));

    let tmp = streamkeeper_testkit::TempDir::new("proto");
    let dir = tmp.path();
    ClientCredentials::write_dir(dir, "streamkeeper", "streamkeeper-secret").expect("creds");
    let base: url::Url = emu.base_url().parse().expect("url");
    let spec = StreamSpec {
        id: "cc/q".parse().expect("id"),
        tenant: "acme".parse().expect("tenant"),
        platform: Platform::Generic,
        priority: 500,
        endpoints: Endpoints {
            region: None,
            api: Some(base.clone().into()),
            login: Some(base.clone().into()),
            stream: Some(
                format!("ws://127.0.0.1:{port}/streams/q")
                    .parse()
                    .expect("url"),
            ),
        }
        .into(),
        credentials: Credentials {
            dir: Some(dir.into()),
            secret: None,
        },
        topics: Vec::new(),
        heartbeat: HeartbeatSpec {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(15),
        },
        token: TokenSpec {
            refresh_lead: Duration::from_secs(60),
            retry: Duration::from_millis(200),
        },
        reconnect: ReconnectSpec {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
        },
        limits: LimitsSpec::default(),
        tls: None,
    };
    let http = net::plain_http_client();
    let source = TokenSource::new(
        CredentialFiles::new(Platform::Generic, &spec.credentials).expect("files"),
        Grant::for_platform(Platform::Generic, http.clone(), &base, Some(&base)).expect("grant"),
    );
    let (tokens, refresh_now, token_task) =
        spawn_manager(source, Arc::new(Mutex::new(spec.token)), Arc::new(|_| {}));
    let recorder = Arc::new(Recorder::default());
    let ctx = SessionCtx {
        spec: Arc::new(spec.clone()),
        pod: "pod-a".parse().expect("pod"),
        adapter: Arc::new(Generic::new(&spec).expect("generic")),
        hub: Hub::new(spec.id.clone(), 1000, None),
        metrics: Metrics::new().stream(&spec.id, &spec.tenant),
        on_reaped: Arc::new(|_| {}),
        observer: recorder.clone(),
        status: Default::default(),
        http,
        connect: upstream::connect_options(&spec, None),
        proxy: net::ProxyPolicy::direct(),
        tokens,
        refresh_now,
        budget: streamkeeper_sidecar::auth::ClientBudget::new(),
        lease: streamkeeper_sidecar::signal::channel(
            tokio::time::Instant::now() + Duration::from_secs(3600),
        )
        .1,
    };
    let (stop, stop_rx) = streamkeeper_sidecar::signal::channel(None);
    let running = tokio::spawn(upstream::run(ctx, None, stop_rx));

    // Two connections, so the first one's reap and the reconnect are behind us.
    for n in 0..2 {
        let answer = tokio::time::timeout(WAIT, answers.recv())
            .await
            .expect("the platform heard back")
            .expect("platform running");
        assert_eq!(answer, Answer::Close(1007), "connection {n}");
    }
    stop.send_replace(Some(DropReason::Shutdown));
    tokio::time::timeout(WAIT, running)
        .await
        .expect("the session stops")
        .expect("session task");
    token_task.abort();
    platform.abort();

    let events = recorder.events.lock().expect("lock");
    let reaped = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                SessionEvent::Dropped {
                    reason: DropReason::TcpError,
                    ..
                }
            )
        })
        .count();
    assert!(
        reaped >= 2,
        "each broken socket was reaped as tcp_error: {events:?}"
    );
}
