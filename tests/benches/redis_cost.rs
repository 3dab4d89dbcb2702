//! What Redis costs per 1,000 streams with the real sidecar (issue 8, "Measure"): real
//! `streamkeeper sidecar` processes on one redis-server, 1,000 streams in 20 tenants of 50 on
//! the in-process emulator (0.2 events/s per stream), an app on every pod for every stream
//! acking every event. Reports Redis commands per second (INFO commandstats, which counts the
//! commands scripts run as well as the scripts) and Redis CPU (user + sys) per second, with
//! one pod, with two pods (one owns what the other stands by for, wherever the leases fell),
//! and with two pods and no events.
//!
//! ```text
//! cargo build -p streamkeeper && cargo bench -p streamkeeper-e2e --bench redis_cost
//! SK_BENCH_STREAMS=200 SK_BENCH_WINDOW=20s cargo bench -p streamkeeper-e2e --bench redis_cost
//! ```
//!
//! Parameters (environment): `SK_BENCH_STREAMS` (1000, in tenants of 50), `SK_BENCH_WINDOW`
//! (30s, the measured window after every stream streams), `SK_BENCH_EVENT_INTERVAL` (5s per
//! stream), `SK_BENCH_PHASES` (`one,two,idle`). The sidecars run with the production defaults:
//! heartbeat 15 s / 35 s, checkpoint window 1 s.

use std::{collections::BTreeMap, time::Duration};

use streamkeeper_e2e::{
    fleet::{Fleet, Ledger, Timers, owns_active, stream_id},
    process::stream_entry,
    redis::RedisServer,
};
use streamkeeper_testkit::redis::{command, value_text};
use tokio::time::{Instant, sleep};

const TENANT_SIZE: usize = 50;

fn env_duration(name: &str, default: Duration) -> Duration {
    std::env::var(name)
        .ok()
        .and_then(|v| streamkeeper_api::duration::parse(&v).ok())
        .unwrap_or(default)
}

/// One measured run.
struct Measured {
    commands_per_s: f64,
    cpu_ms_per_s: f64,
    top: Vec<(String, f64)>,
    acks_per_s: f64,
}

/// Calls per command since the last `CONFIG RESETSTAT`, the bench's own left out.
fn commandstats(port: u16) -> BTreeMap<String, u64> {
    let text = command(port, &["INFO", "commandstats"])
        .map(value_text)
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .filter(|(name, _)| !matches!(name.as_str(), "info" | "config"))
        .collect()
}

/// Redis's CPU time so far (user + sys), seconds.
fn cpu_seconds(port: u16) -> f64 {
    let text = command(port, &["INFO", "cpu"])
        .map(value_text)
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            matches!(k, "used_cpu_sys" | "used_cpu_user")
                .then(|| v.trim().parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

async fn run(streams: usize, pods: usize, event_interval: Duration, window: Duration) -> Measured {
    let redis = RedisServer::start();
    let names: Vec<String> = (0..streams).map(|i| format!("s{i:04}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let timers = Timers {
        interval: Duration::from_secs(15),
        timeout: Duration::from_secs(35),
        reconnect: Duration::from_millis(500),
    };
    let mut fleet = Fleet::start("redis-cost", redis.url(), &refs, event_interval, timers).await;
    fleet.checkpoint_window = streamkeeper_api::config::DEFAULT_CHECKPOINT_WINDOW;
    fleet.tenants = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), format!("tenant-{:02}", i / TENANT_SIZE)))
        .collect();
    let ledger = Ledger::new();
    let mut taps = Vec::new();
    for _ in 0..pods {
        let i = fleet.add_pod(&refs).await;
        for n in &names {
            taps.push(ledger.tap(&fleet, i, &stream_id(n)).await);
        }
    }
    // Every stream streams on some pod.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let mut active = 0;
        for i in 0..pods {
            if let Ok(doc) = fleet.status(i).await {
                active += names
                    .iter()
                    .filter(|n| stream_entry(&doc, &stream_id(n)).is_some_and(owns_active))
                    .count();
            }
        }
        if active == streams {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {active} of {streams} streams active\n{}",
            fleet.diagnostics()
        );
        sleep(Duration::from_millis(500)).await;
    }
    // Past every stream's first beat (which writes its record in full): the steady state.
    sleep(timers.interval + Duration::from_secs(5)).await;
    command(redis.port, &["CONFIG", "RESETSTAT"]).expect("CONFIG RESETSTAT");
    let cpu0 = cpu_seconds(redis.port);
    let acked0 = ledger.deliveries().len();
    let t0 = Instant::now();
    sleep(window).await;
    let stats = commandstats(redis.port);
    let cpu1 = cpu_seconds(redis.port);
    let elapsed = t0.elapsed().as_secs_f64();
    let acked = ledger.deliveries().len() - acked0;
    for t in taps {
        t.abort();
    }
    let per_1000 = 1000.0 / streams as f64;
    let total: u64 = stats.values().sum();
    let mut top: Vec<(String, f64)> = stats
        .iter()
        .map(|(k, v)| (k.clone(), *v as f64 / elapsed * per_1000))
        .collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    top.truncate(8);
    Measured {
        commands_per_s: total as f64 / elapsed * per_1000,
        cpu_ms_per_s: (cpu1 - cpu0) * 1000.0 / elapsed * per_1000,
        top,
        acks_per_s: acked as f64 / elapsed,
    }
}

fn main() {
    let streams: usize = std::env::var("SK_BENCH_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let window = env_duration("SK_BENCH_WINDOW", Duration::from_secs(30));
    let interval = env_duration("SK_BENCH_EVENT_INTERVAL", Duration::from_secs(5));
    let phases = std::env::var("SK_BENCH_PHASES").unwrap_or_else(|_| "one,two,idle".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    println!(
        "redis_cost: {streams} streams in tenants of {TENANT_SIZE}, one event per {interval:?} \
         per stream, measured over {window:?}; figures per 1,000 streams"
    );
    for phase in phases.split(',') {
        let (label, pods, every) = match phase.trim() {
            "one" => ("one pod, acks flowing", 1, interval),
            "two" => ("two pods, acks flowing", 2, interval),
            "idle" => ("two pods, no events", 2, Duration::from_secs(24 * 3600)),
            other => {
                eprintln!("unknown phase {other:?} (one, two, idle)");
                continue;
            }
        };
        let m = rt.block_on(run(streams, pods, every, window));
        println!(
            "{label}: {:.1} commands/s, {:.2} ms Redis CPU/s ({:.0} acks/s reached the apps); \
             top: {}",
            m.commands_per_s,
            m.cpu_ms_per_s,
            m.acks_per_s,
            m.top
                .iter()
                .map(|(k, v)| format!("{k} {v:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}
