//! `streamkeeper demo`: the platform emulator, three sidecar "pods" of one workload sharing a
//! store, a fourth pod of a second workload running a Genesys and two CXone streams through
//! token rotations (platforms.rs), a demo app per pod and stream, and a scripted fault scenario
//! with a live timeline and a final scorecard. Needs no cluster and no Redis; exits 0 only when
//! every check holds.

mod app;
mod platforms;
mod timeline;

use std::{process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use streamkeeper_api::{
    DropReason, PodName, SidecarConfig, StreamId, StreamSpec, StreamState,
    config::{
        Credentials, Endpoints, HeartbeatSpec, LimitsSpec, Platform, ReconnectSpec, TokenSpec,
    },
};
use streamkeeper_coord::{MemoryStore, RedisStore, Store};
use streamkeeper_emulator::{Emulator, EmulatorConfig, Fault};
use streamkeeper_sidecar::{
    app::server::{self as app_server, AppServerConfig, HubDirectory},
    auth::ClientCredentials,
    liveness::HeartbeatPolicy,
    metrics::Metrics,
    pod::Pod,
    upstream::SessionEvent,
};
use tokio::sync::watch;
use tokio::time::Instant;

use self::{
    app::{AppHandle, Ledger},
    timeline::{Timeline, is_dropped, is_state},
};

const STREAMS: [&str; 3] = ["queue-events", "agent-presence", "call-legs"];
const PODS: [&str; 3] = ["pod-a", "pod-b", "pod-c"];
const HEARTBEAT: HeartbeatSpec = HeartbeatSpec {
    interval: Duration::from_secs(1),
    timeout: Duration::from_secs(3),
};
/// The product's promise: DEAD within 250 ms of the deadline.
const DETECTION_LIMIT: Duration = Duration::from_millis(250);
const TOKEN_TTL: Duration = Duration::from_secs(8);

struct RunningPod {
    name: PodName,
    pod: Arc<Pod>,
    apps: Vec<(StreamId, AppHandle)>,
    stop_servers: watch::Sender<bool>,
}

/// One check of the scorecard.
struct Check {
    name: String,
    ok: bool,
    detail: String,
}

#[derive(Default)]
struct Checks(Vec<Check>);

impl Checks {
    fn add(&mut self, ok: bool, name: impl Into<String>, detail: impl Into<String>) {
        self.0.push(Check {
            name: name.into(),
            ok,
            detail: detail.into(),
        });
    }
}

fn stream_id(name: &str) -> StreamId {
    StreamId::new("cc", name).expect("demo stream names are valid ids")
}

/// What differs between the demo's streams; the rest (heartbeat, backoff, limits) is shared.
struct DemoStream<'a> {
    name: &'a str,
    tenant: &'a str,
    platform: Platform,
    endpoints: Endpoints,
    creds: &'a std::path::Path,
    topics: Vec<String>,
    token: TokenSpec,
}

impl DemoStream<'_> {
    fn spec(self) -> anyhow::Result<StreamSpec> {
        Ok(StreamSpec {
            id: stream_id(self.name),
            tenant: self.tenant.parse().context("tenant")?,
            platform: self.platform,
            priority: 500,
            endpoints: self.endpoints.into(),
            credentials: Credentials {
                dir: Some(self.creds.into()),
                secret: None,
            },
            topics: self.topics,
            heartbeat: HEARTBEAT,
            token: self.token,
            reconnect: ReconnectSpec {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(2),
            },
            limits: LimitsSpec::default(),
            tls: None,
        })
    }
}

fn config(emu: &Emulator, creds: &std::path::Path, tenant: &str) -> anyhow::Result<SidecarConfig> {
    let base: url::Url = emu.base_url().parse().context("emulator URL")?;
    let streams = STREAMS
        .iter()
        .map(|name| {
            DemoStream {
                name,
                tenant,
                platform: Platform::Generic,
                endpoints: Endpoints {
                    region: None,
                    api: Some(base.clone().into()),
                    login: Some(base.clone().into()),
                    stream: Some(emu.stream_url(name).parse().context("stream URL")?),
                },
                creds,
                topics: Vec::new(),
                token: TokenSpec {
                    refresh_lead: Duration::from_secs(3),
                    retry: Duration::from_secs(1),
                },
            }
            .spec()
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    sidecar_config(streams)
}

fn sidecar_config(streams: Vec<StreamSpec>) -> anyhow::Result<SidecarConfig> {
    let config = SidecarConfig {
        pod: None,
        listen: "127.0.0.1:0".parse().context("listen")?,
        admin: "127.0.0.1:1".parse().context("admin")?,
        redis: None,
        tenant_limits: Default::default(),
        checkpoint_window: streamkeeper_api::config::DEFAULT_CHECKPOINT_WINDOW,
        max_app_connections: streamkeeper_api::config::DEFAULT_MAX_APP_CONNECTIONS,
        streams,
    };
    config.validate().map_err(anyhow::Error::from)?;
    Ok(config)
}

async fn start_pod(
    name: &str,
    store: Arc<dyn Store>,
    config: &SidecarConfig,
    timeline: &Arc<Timeline>,
    ledger: &Arc<Ledger>,
) -> anyhow::Result<RunningPod> {
    let name: PodName = name.parse().context("pod name")?;
    let pod = Pod::new(
        name.clone(),
        store,
        Arc::new(Metrics::new()),
        Some(timeline.observer(name.clone())),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("bind app endpoint")?;
    let listen = listener.local_addr()?;
    let (stop_servers, stop_rx) = watch::channel(false);
    let until = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    tokio::spawn(app_server::serve(
        listener,
        Arc::clone(&pod) as Arc<dyn HubDirectory>,
        AppServerConfig {
            max_frame: 1 << 20,
            heartbeat: HeartbeatPolicy::from(HEARTBEAT),
            ..AppServerConfig::default()
        },
        until(stop_rx.clone()),
    ));
    pod.spawn_loops(until(stop_rx));
    pod.apply(config).map_err(anyhow::Error::from)?;
    let apps = config
        .streams
        .iter()
        .map(|s| {
            let id = s.id.clone();
            (
                id.clone(),
                app::spawn(name.clone(), listen, id, Arc::clone(ledger)),
            )
        })
        .collect();
    Ok(RunningPod {
        name,
        pod,
        apps,
        stop_servers,
    })
}

fn owner<'a>(pods: &'a [RunningPod], stream: &StreamId) -> Option<&'a RunningPod> {
    pods.iter().find(|p| {
        p.pod.owns(stream)
            && p.pod
                .stream_status(stream)
                .is_some_and(|s| s.state == StreamState::Active)
    })
}

async fn wait_owner<'a>(
    pods: &'a [RunningPod],
    stream: &StreamId,
    limit: Duration,
) -> Option<&'a RunningPod> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(p) = owner(pods, stream) {
            return Some(p);
        }
        if Instant::now() >= deadline {
            return None;
        }
        // Polling the demo's own view for the scoreboard; the product never polls.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the demo.
pub async fn run(quiet: bool) -> anyhow::Result<ExitCode> {
    let timeline = Timeline::new(quiet);
    let ledger = Arc::new(Ledger::default());
    let mut checks = Checks::default();
    let work = std::env::temp_dir().join(format!("streamkeeper-demo-{}", std::process::id()));
    let creds = work.join("credentials");
    let mut emu_cfg = EmulatorConfig {
        streams: STREAMS.iter().map(|s| (*s).to_owned()).collect(),
        event_interval: Duration::from_millis(100),
        token_ttl: TOKEN_TTL,
        ..EmulatorConfig::default()
    };
    platforms::emulator(&mut emu_cfg);
    ClientCredentials::write_dir(&creds, &emu_cfg.client_id, &emu_cfg.client_secret)
        .context("write demo credentials")?;
    let emu = Emulator::start(emu_cfg.clone())
        .await
        .context("start the emulator")?;
    // With REDIS_URL the pods coordinate through Redis (a tenant of this run's own, so runs
    // never share leases or checkpoints); without it, through one in-process store.
    let (store, store_name, tenant): (Arc<dyn Store>, String, String) =
        match std::env::var("REDIS_URL") {
            Ok(url) if !url.is_empty() => {
                let redis = RedisStore::connect(&url).context("REDIS_URL")?;
                let name = format!("Redis at {}", redis.target());
                (
                    Arc::new(redis),
                    name,
                    format!("demo-{}", std::process::id()),
                )
            }
            _ => (
                Arc::new(MemoryStore::new()),
                "an in-process store".into(),
                "acme".into(),
            ),
        };
    let config = config(&emu, &creds, &tenant)?;
    let (platform_specs, platform_streams) = platforms::streams(&emu, &emu_cfg, &work, &tenant)?;
    let platform_config = sidecar_config(platform_specs)?;
    timeline.step(&format!(
        "emulator on {}; {} pods of one workload share {store_name}; heartbeat {}s, timeout {}s",
        emu.base_url(),
        PODS.len(),
        HEARTBEAT.interval.as_secs(),
        HEARTBEAT.timeout.as_secs()
    ));
    let mut pods = Vec::new();
    for name in PODS {
        pods.push(start_pod(name, Arc::clone(&store), &config, &timeline, &ledger).await?);
    }
    timeline.step(&format!(
        "{} (a second workload) runs {}: tokens live 4 s, so each rotates every ~2 s",
        platforms::POD,
        platform_streams
            .iter()
            .map(|s| format!("{} ({})", s.id, s.platform.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let platform_pod = start_pod(
        platforms::POD,
        Arc::clone(&store),
        &platform_config,
        &timeline,
        &ledger,
    )
    .await?;

    // 1. Every stream gets exactly one owner.
    timeline.step("1. start: each stream is leased to exactly one pod");
    let mut all_owned = true;
    for s in STREAMS {
        let id = stream_id(s);
        match wait_owner(&pods, &id, Duration::from_secs(10)).await {
            Some(p) => timeline.note(&format!("{id} is run by {}", p.name)),
            None => all_owned = false,
        }
        let owners = pods.iter().filter(|p| p.pod.owns(&id)).count();
        all_owned &= owners == 1;
    }
    let mut platforms_up = true;
    for s in &platform_streams {
        platforms_up &= wait_owner(
            std::slice::from_ref(&platform_pod),
            &s.id,
            Duration::from_secs(10),
        )
        .await
        .is_some();
    }
    checks.add(
        all_owned && platforms_up,
        "every stream runs on exactly one pod",
        "lease with fencing in the shared store",
    );
    // Faults start once every app has its first event: the streams' starting points.
    let deadline = Instant::now() + Duration::from_secs(5);
    while (STREAMS
        .iter()
        .any(|s| ledger.first_acked(&stream_id(s)).is_none())
        || platform_streams
            .iter()
            .any(|s| ledger.stream(&s.id).delivered == 0))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 2. Half-open socket.
    let victim = stream_id(STREAMS[0]);
    let since = timeline.elapsed();
    timeline.step(&format!(
        "2. half-open: the platform end of {victim} stops reading and writing (blackhole)"
    ));
    emu.fault(Fault::Blackhole {
        stream: Some(STREAMS[0].into()),
    });
    let dead = timeline
        .wait_for(since, HEARTBEAT.timeout + Duration::from_secs(3), |e| {
            is_dropped(e, &victim, DropReason::PongTimeout)
        })
        .await;
    match dead.as_ref().map(|e| &e.event) {
        Some(SessionEvent::Dropped {
            late_by: Some(late),
            silent_for,
            ..
        }) => checks.add(
            *late <= DETECTION_LIMIT,
            "half-open socket declared DEAD within timeout + 250 ms",
            format!(
                "silent {:.3}s, DEAD {:.1} ms after the deadline",
                silent_for.as_secs_f64(),
                late.as_secs_f64() * 1000.0
            ),
        ),
        _ => checks.add(
            false,
            "half-open socket declared DEAD within timeout + 250 ms",
            "never declared DEAD",
        ),
    }
    let back = wait_owner(&pods, &victim, Duration::from_secs(5))
        .await
        .is_some();
    checks.add(
        back,
        "reconnected with backoff and resumed",
        "Last-Event-ID from the last event seen",
    );

    // 3. Abrupt reset.
    let reset = stream_id(STREAMS[1]);
    let since = timeline.elapsed();
    timeline.step(&format!(
        "3. abrupt reset: the platform resets {reset} (TCP RST)"
    ));
    emu.fault(Fault::Reset {
        stream: Some(STREAMS[1].into()),
    });
    let seen = timeline
        .wait_for(since, Duration::from_secs(3), |e| {
            is_dropped(e, &reset, DropReason::TcpError)
        })
        .await
        .is_some();
    let back = seen
        && timeline
            .wait_for(since, Duration::from_secs(5), |e| {
                e.stream == reset && is_state(e, StreamState::Active)
            })
            .await
            .is_some();
    checks.add(
        seen && back,
        "reset detected at once and reconnected",
        "reason tcp_error",
    );

    // 4. Token rotation, with one refused refresh.
    let since = timeline.elapsed();
    timeline.step(
        "4. generic tokens expire every 8 s: refreshed in-stream; the next token request (of any stream) is refused once",
    );
    emu.fault(Fault::RefuseToken {
        stream: None,
        count: 1,
    });
    let mut rotated = 0;
    for s in STREAMS {
        let id = stream_id(s);
        if timeline
            .wait_for(since, TOKEN_TTL + Duration::from_secs(4), |e| {
                e.stream == id && matches!(e.event, SessionEvent::TokenRotated { .. })
            })
            .await
            .is_some()
        {
            rotated += 1;
        }
    }
    let generic: Vec<StreamId> = STREAMS.iter().map(|s| stream_id(s)).collect();
    let reconnects = timeline
        .entries()
        .iter()
        .filter(|e| {
            e.at >= since
                && generic.contains(&e.stream)
                && matches!(e.event, SessionEvent::Connected { .. })
        })
        .count();
    checks.add(
        rotated == STREAMS.len() && reconnects == 0,
        "token rotation never resets the session",
        format!(
            "{rotated}/{} streams rotated in-stream, {reconnects} reconnects, one refusal retried",
            STREAMS.len()
        ),
    );

    // 5. Genesys announces a maintenance close.
    platforms::socket_closing(&emu, &timeline, &platform_streams, &mut checks).await;

    // 6. The app goes away and comes back.
    let legs = stream_id(STREAMS[2]);
    timeline.step(&format!(
        "6. the app of {legs} disconnects for 2 s, then comes back"
    ));
    if let Some(app) = owner(&pods, &legs)
        .and_then(|p| p.apps.iter().find(|(s, _)| *s == legs))
        .map(|(_, a)| a.clone())
    {
        let hub = owner(&pods, &legs).and_then(|p| p.pod.hub(&legs));
        let _ = app.away.send(true);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let held = hub.as_ref().map_or(0, |h| h.pending_events());
        let _ = app.away.send(false);
        timeline.note(&format!("app back: {held} events held for it while away"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while hub.as_ref().is_some_and(|h| h.pending_events() > 2) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = hub.as_ref().map_or(usize::MAX, |h| h.pending_events());
        checks.add(
            held > 0 && left <= 2,
            "app away 2 s: events held, then delivered in order",
            format!("{held} held while away, {left} unacked after its return"),
        );
    } else {
        checks.add(
            false,
            "app reconnect: held events delivered",
            "no owner for the stream",
        );
    }

    // 7. Rolling update: the owner of the first stream shuts down and hands over.
    timeline.step(&format!(
        "7. rolling update: the pod running {victim} shuts down (SIGTERM) and hands over"
    ));
    if let Some(idx) = pods.iter().position(|p| p.pod.owns(&victim)) {
        let leaving = pods.remove(idx);
        let started = Instant::now();
        leaving.pod.shutdown(Duration::from_secs(5)).await;
        for (_, a) in &leaving.apps {
            let _ = a.away.send(true);
        }
        let _ = leaving.stop_servers.send(true);
        let took = wait_owner(&pods, &victim, Duration::from_secs(5))
            .await
            .map(|p| p.name.clone());
        let elapsed = started.elapsed();
        checks.add(
            took.is_some() && elapsed < Duration::from_secs(2),
            "handover on shutdown: a standby streams at once",
            format!(
                "{} → {} in {:.0} ms (lease TTL is {} s)",
                leaving.name,
                took.map(|p| p.to_string())
                    .unwrap_or_else(|| "nobody".into()),
                elapsed.as_secs_f64() * 1000.0,
                HEARTBEAT.timeout.as_secs()
            ),
        );
    } else {
        checks.add(
            false,
            "handover on shutdown: a standby streams at once",
            "no owner found",
        );
    }

    // 8. Malformed frames from the platform, once the stream streams again: the handover may
    // have moved it to a pod still connecting, and a frame sent to no socket proves nothing.
    let ready = wait_owner(&pods, &reset, Duration::from_secs(5))
        .await
        .is_some();
    let since = timeline.elapsed();
    timeline.step(&format!(
        "8. the platform sends {reset} a non-JSON frame, then invalid UTF-8"
    ));
    emu.fault(Fault::SendGarbage {
        stream: Some(STREAMS[1].into()),
        kind: streamkeeper_emulator::GarbageKind::BadJson,
        bytes: None,
    });
    let skipped = timeline
        .wait_for(since, Duration::from_secs(3), |e| {
            e.stream == reset && matches!(e.event, SessionEvent::Malformed { .. })
        })
        .await
        .is_some();
    emu.fault(Fault::SendGarbage {
        stream: Some(STREAMS[1].into()),
        kind: streamkeeper_emulator::GarbageKind::NonUtf8,
        bytes: None,
    });
    let failed = timeline
        .wait_for(since, Duration::from_secs(3), |e| {
            is_dropped(e, &reset, DropReason::TcpError)
        })
        .await
        .is_some();
    let back = wait_owner(&pods, &reset, Duration::from_secs(5))
        .await
        .is_some();
    let missing: Vec<&str> = [
        (ready, "the stream was not streaming before the frames"),
        (skipped, "the non-JSON frame was not reported skipped"),
        (failed, "invalid UTF-8 did not fail the connection"),
        (back, "the stream did not stream again"),
    ]
    .into_iter()
    .filter_map(|(ok, what)| (!ok).then_some(what))
    .collect();
    checks.add(
        missing.is_empty(),
        "bad frames: skipped or connection failed (1007), then resumed",
        if missing.is_empty() {
            "process keeps running".to_owned()
        } else {
            missing.join("; ")
        },
    );

    // 9. Settle and count.
    timeline.step("9. settle: every event emitted so far must be acked exactly once by some app");
    let stats = emu.stats();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lost: Vec<String> = Vec::new();
    let mut emitted_total;
    loop {
        lost.clear();
        emitted_total = 0;
        for s in STREAMS {
            let id = stream_id(s);
            let emitted = stats.streams.get(s).map_or(0, |st| st.emitted);
            let first = ledger
                .first_acked(&id)
                .and_then(|f| f.rsplit(':').next().and_then(|n| n.parse::<u64>().ok()))
                .unwrap_or(1);
            emitted_total += emitted.saturating_sub(first - 1);
            lost.extend(
                (first..=emitted)
                    .map(|n| format!("{s}:{n:09}"))
                    .filter(|e| !ledger.is_acked(&id, e)),
            );
        }
        lost.extend(platforms::lost(&ledger, &platform_streams, &stats));
        if lost.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let app::Totals {
        delivered,
        duplicates,
        redelivered,
        gaps,
        dropped,
    } = ledger.totals();
    let first_dups: Vec<String> = duplicates
        .iter()
        .take(5)
        .map(|(s, id)| format!("{s} {id}"))
        .collect();
    let outcomes = platforms::outcomes(&ledger, &timeline, &platform_streams, &stats);
    let (platform_emitted, _) = platforms::totals(&outcomes);
    emitted_total += platform_emitted;
    // On the platform streams a duplicate is a feed's sequence number acked, then delivered
    // again (under any id).
    let platform_dups: u64 = platform_streams
        .iter()
        .map(|s| ledger.stream(&s.id).duplicates)
        .sum();
    let duplicate_count = duplicates.len() as u64 + platform_dups;
    checks.add(
        duplicate_count == 0,
        "no acked event delivered again",
        format!("{duplicate_count} duplicates {}", first_dups.join(", "))
            .trim_end()
            .to_owned(),
    );
    let first_lost = lost.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    checks.add(
        lost.is_empty(),
        "no event lost",
        format!(
            "{} of {emitted_total} emitted events never acked {first_lost}",
            lost.len()
        )
        .trim_end()
        .to_owned(),
    );
    let end_stats = emu.stats();
    platforms::check(&outcomes, &end_stats, &emu_cfg, &mut checks);
    let elapsed = timeline.elapsed();
    checks.add(
        elapsed < Duration::from_secs(90),
        "finished in under 90 s",
        format!("{:.1} s", elapsed.as_secs_f64()),
    );

    for p in pods.iter().chain([&platform_pod]) {
        p.pod.shutdown(Duration::from_secs(2)).await;
        let _ = p.stop_servers.send(true);
    }
    emu.shutdown().await;
    let _ = std::fs::remove_dir_all(&work);

    println!();
    println!("streamkeeper demo: scorecard");
    println!("  events emitted while streaming    {emitted_total}");
    println!(
        "  events delivered to apps          {delivered} ({redelivered} redelivered before their ack)"
    );
    println!("  duplicates (acked, then again)    {duplicate_count}");
    println!("  lost (emitted, never acked)       {}", lost.len());
    println!("  gaps reported                     {gaps}");
    println!(
        "  dropped notices seen by apps      {}",
        dropped
            .iter()
            .map(|(r, n)| format!("{r}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for e in timeline.entries() {
        if let SessionEvent::Dropped {
            reason: DropReason::PongTimeout,
            late_by: Some(late),
            silent_for,
            ..
        } = e.event
        {
            println!(
                "  detection {:<22}  silent {:.3}s, {:.1} ms past the deadline",
                e.stream.to_string(),
                silent_for.as_secs_f64(),
                late.as_secs_f64() * 1000.0
            );
        }
    }
    platforms::print(&outcomes, &end_stats, &emu_cfg);
    println!();
    let mut ok = true;
    for c in &checks.0 {
        ok &= c.ok;
        println!(
            "  {} {:<58} {}",
            if c.ok { "PASS" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    println!();
    println!(
        "{}",
        if ok {
            "all checks passed"
        } else {
            "some checks FAILED"
        }
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
