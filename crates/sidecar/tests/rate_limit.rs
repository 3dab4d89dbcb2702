//! A platform's rate limit holds the session back on tokio's paused clock: after a 429 with
//! `Retry-After`, and after each CXone `RATE_LIMIT_EXCEEDED` (30 s, 1 min, 2 min), the session
//! makes no request and opens no socket before the wait ends, and its ordinary reconnect
//! backoff (50 ms here) never shortens it.
//!
//! The adapter is a stand-in that refuses every `prepare` (the step that makes the platform's
//! REST calls and plans the sockets) with the limit under test and records when it was asked:
//! the clock is paused, so no real socket can take part. The emulator-level flows (the real
//! 429 body, the CXone message) are covered by the adapters' own tests and tests/cxone.rs.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use streamkeeper_api::{
    DropReason, StreamSpec,
    config::{
        Credentials, Endpoints, HeartbeatSpec, LimitsSpec, Platform, ReconnectSpec, TokenSpec,
    },
};
use streamkeeper_sidecar::{
    app::Hub,
    auth::{RefreshNow, Secret, Token, TokenView},
    metrics::Metrics,
    net,
    platforms::{Adapter, AdapterError, Prepare, Prepared, RateLimit, Rotation},
    upstream::{self, Observer, SessionCtx, SessionEvent},
};
use tokio::{sync::watch, time::Instant};

/// Refuses every `prepare` with `limit`, recording when it was called.
struct Limited {
    limit: RateLimit,
    asked: Mutex<Vec<Instant>>,
}

#[async_trait]
impl Adapter for Limited {
    fn platform(&self) -> Platform {
        Platform::Generic
    }
    fn replays(&self) -> bool {
        true
    }
    fn rotation(&self) -> Rotation {
        Rotation::NewSocket
    }
    async fn prepare(&self, _p: Prepare<'_>) -> Result<Vec<Prepared>, AdapterError> {
        self.asked.lock().expect("lock").push(Instant::now());
        Err(AdapterError::RateLimited {
            what: "create channel",
            retry_after: self.limit,
        })
    }
}

struct Quiet;

impl Observer for Quiet {
    fn observe(&self, _stream: &streamkeeper_api::StreamId, _event: SessionEvent) {}
}

fn spec() -> StreamSpec {
    let base: url::Url = "http://127.0.0.1:9/".parse().expect("url");
    StreamSpec {
        id: "cc/limited".parse().expect("id"),
        tenant: "acme".parse().expect("tenant"),
        platform: Platform::Generic,
        priority: 500,
        endpoints: Endpoints {
            region: None,
            api: Some(base.clone().into()),
            login: Some(base.clone().into()),
            stream: Some("ws://127.0.0.1:9/s".parse().expect("url")),
        }
        .into(),
        credentials: Credentials {
            dir: Some(std::path::Path::new("/nonexistent").into()),
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
            max: Duration::from_millis(50),
        },
        limits: LimitsSpec::default(),
        tls: None,
    }
}

/// Runs a session against `Limited { limit }` for `window` of paused time; returns the gaps
/// between its `prepare` calls.
async fn gaps_between_attempts(limit: RateLimit, window: Duration) -> Vec<Duration> {
    let spec = spec();
    let adapter = Arc::new(Limited {
        limit,
        asked: Mutex::new(Vec::new()),
    });
    // A token valid all along: only the rate limit may hold the session back.
    let token = Token {
        value: Secret::new("test-token"),
        obtained: Instant::now(),
        expires: Instant::now() + Duration::from_secs(24 * 3600),
    };
    let (_token_tx, tokens) = watch::channel(TokenView {
        token: Some(Arc::new(token)),
        generation: 1,
        error: None,
    });
    let (_lease_tx, lease) =
        streamkeeper_sidecar::signal::channel(Instant::now() + Duration::from_secs(24 * 3600));
    let ctx = SessionCtx {
        spec: Arc::new(spec.clone()),
        pod: "pod-a".parse().expect("pod"),
        adapter: adapter.clone(),
        hub: Hub::new(spec.id.clone(), 100, None),
        metrics: Metrics::new().stream(&spec.id, &spec.tenant),
        on_reaped: Arc::new(|_| {}),
        observer: Arc::new(Quiet),
        status: Default::default(),
        http: net::plain_http_client(),
        connect: upstream::connect_options(&spec, None),
        proxy: net::ProxyPolicy::direct(),
        tokens,
        refresh_now: RefreshNow::default(),
        budget: streamkeeper_sidecar::auth::ClientBudget::new(),
        lease,
    };
    let (stop, stop_rx) = streamkeeper_sidecar::signal::channel(None);
    let running = tokio::spawn(upstream::run(ctx, None, stop_rx));
    tokio::time::sleep(window).await;
    stop.send_replace(Some(DropReason::Shutdown));
    running.await.expect("session task");
    let asked = adapter.asked.lock().expect("lock");
    asked.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn retry_after_holds_every_request_until_it_ends() {
    let retry_after = Duration::from_secs(37);
    let gaps = gaps_between_attempts(
        RateLimit::RetryAfter(retry_after),
        Duration::from_secs(37 * 4 + 10),
    )
    .await;
    assert!(
        gaps.len() >= 3,
        "the session kept asking once each wait ended: {gaps:?}"
    );
    for gap in &gaps {
        assert!(
            *gap >= retry_after,
            "asked again {gap:?} after a Retry-After of {retry_after:?}: {gaps:?}"
        );
        // And not much later: the wait is the server's, not a compounded backoff.
        assert!(*gap <= retry_after + Duration::from_secs(1), "{gaps:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn rate_limit_exceeded_escalates_30s_1min_2min_with_no_request_before() {
    let gaps = gaps_between_attempts(
        RateLimit::Escalating,
        Duration::from_secs(30 + 60 + 120 + 130),
    )
    .await;
    let steps = [30, 60, 120, 120].map(Duration::from_secs);
    assert!(gaps.len() >= steps.len(), "{gaps:?}");
    for (gap, step) in gaps.iter().zip(steps) {
        assert!(
            *gap >= step,
            "asked again {gap:?} into a {step:?} RATE_LIMIT_EXCEEDED wait: {gaps:?}"
        );
        assert!(*gap <= step + Duration::from_secs(1), "{gaps:?}");
    }
}
