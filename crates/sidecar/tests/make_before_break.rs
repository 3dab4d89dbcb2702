//! Token rotation on a platform whose sockets are bound to their token (Genesys): the session
//! opens the next socket with the new token before it drops the old one, suppresses the events
//! seen on both, and the app sees no reset, no duplicate and no gap.
//!
//! The generic emulator replays after `Last-Event-ID`, so the successor socket resumes where
//! the old one was when it was planned; events that arrive on both are suppressed by the hub.
//! The emulator speaks the generic dialect; the adapter here is the generic one with its
//! rotation switched to `NewSocket`, which is exactly what the session sees from a Genesys
//! adapter. The emulator's token lifetime is short so rotations happen during the test.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use streamkeeper_api::{
    StreamId, StreamSpec,
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
    platforms::{Adapter, AdapterError, Prepare, Prepared, Rotation, generic::Generic},
    upstream::{self, Observer, SessionCtx, SessionEvent},
};
use tokio::sync::Notify;

/// The generic dialect, but token-bound sockets.
struct TokenBound(Generic);

#[async_trait]
impl Adapter for TokenBound {
    fn platform(&self) -> Platform {
        Platform::Generic
    }
    fn replays(&self) -> bool {
        self.0.replays()
    }
    fn rotation(&self) -> Rotation {
        Rotation::NewSocket
    }
    async fn prepare(&self, p: Prepare<'_>) -> Result<Vec<Prepared>, AdapterError> {
        self.0.prepare(p).await
    }
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<SessionEvent>>,
    changed: Notify,
}

impl Observer for Recorder {
    fn observe(&self, _stream: &StreamId, event: SessionEvent) {
        self.events.lock().expect("lock").push(event);
        self.changed.notify_waiters();
    }
}

impl Recorder {
    fn count(&self, pred: impl Fn(&SessionEvent) -> bool) -> usize {
        self.events
            .lock()
            .expect("lock")
            .iter()
            .filter(|e| pred(e))
            .count()
    }

    async fn wait(&self, bound: Duration, pred: impl Fn(&Self) -> bool) -> bool {
        tokio::time::timeout(bound, async {
            loop {
                let notified = self.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if pred(self) {
                    return;
                }
                notified.await;
            }
        })
        .await
        .is_ok()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_opens_the_next_socket_before_dropping_the_old_one() {
    let emu = Emulator::start(EmulatorConfig {
        streams: vec!["q".into()],
        event_interval: Duration::from_millis(20),
        token_ttl: Duration::from_secs(2),
        ..EmulatorConfig::default()
    })
    .await
    .expect("emulator");
    let tmp = streamkeeper_testkit::TempDir::new("mbb");
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
            stream: Some(emu.stream_url("q").parse().expect("url")),
        }
        .into(),
        credentials: Credentials {
            dir: Some(dir.into()),
            secret: None,
        },
        topics: Vec::new(),
        heartbeat: HeartbeatSpec {
            interval: Duration::from_millis(300),
            timeout: Duration::from_secs(1),
        },
        // Refresh 1 s before a 2 s token expires: a rotation every second.
        token: TokenSpec {
            refresh_lead: Duration::from_secs(1),
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
    let hub = Hub::new(spec.id.clone(), 100_000, None);
    let recorder = Arc::new(Recorder::default());
    let metrics = Metrics::new();
    let ctx = SessionCtx {
        spec: Arc::new(spec.clone()),
        pod: "pod-a".parse().expect("pod"),
        adapter: Arc::new(TokenBound(Generic::new(&spec).expect("generic"))),
        hub: Arc::clone(&hub),
        metrics: metrics.stream(&spec.id, &spec.tenant),
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

    // Three rotations.
    let rotated = recorder
        .wait(Duration::from_secs(10), |r| {
            r.count(|e| matches!(e, SessionEvent::Rotated { .. })) >= 3
        })
        .await;
    assert!(rotated, "three rotations within 10 s");
    assert_eq!(
        recorder.count(|e| matches!(e, SessionEvent::Rotated { proven: false, .. })),
        0,
        "every handover was proven by an event seen on both sockets"
    );
    stop.send_replace(Some(streamkeeper_api::DropReason::Shutdown));
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("stops")
        .expect("task");
    token_task.abort();

    // One socket was ever reaped: the shutdown. Rotation never dropped a connection.
    let dropped = recorder.count(|e| matches!(e, SessionEvent::Dropped { .. }));
    assert_eq!(dropped, 1, "only the final shutdown drops a socket");
    let connected = recorder.count(|e| matches!(e, SessionEvent::Connected { .. }));
    assert_eq!(connected, 1, "rotations are not reconnects");

    // Every event since the first one the hub took is there exactly once, in order.
    let mut c = hub.attach();
    let mut frames = Vec::new();
    tokio::time::timeout(Duration::from_secs(1), c.next(&mut frames))
        .await
        .expect("frames")
        .expect("attached");
    let ids: Vec<u64> = frames
        .iter()
        .filter_map(|f| {
            let v: serde_json::Value = serde_json::from_str(f).ok()?;
            (v["type"] == "event")
                .then(|| v["data"]["seq"].as_u64())
                .flatten()
        })
        .collect();
    assert!(ids.len() > 50, "events flowed: {}", ids.len());
    let unique: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "no event delivered twice");
    let (first, last) = (ids[0], ids[ids.len() - 1]);
    assert_eq!(
        last - first + 1,
        ids.len() as u64,
        "no gap between {first} and {last}"
    );
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order");
    emu.shutdown().await;
}
