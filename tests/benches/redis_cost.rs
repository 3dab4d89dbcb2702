//! What Redis costs per 1,000 streams with the real sidecar (issue 8, "Measure"): real
//! `streamkeeper sidecar` processes on one redis-server, 1,000 streams in 20 tenants of 50 on
//! the in-process emulator (0.2 events/s per stream), an app on every pod for every stream
//! acking every event. Reports Redis commands per second (INFO commandstats, which counts the
//! commands scripts run as well as the scripts) and Redis CPU (user + sys) per second, with
//! one pod, with two pods (one owns what the other stands by for, wherever the leases fell),
//! and with two pods and no events.
//!
//! An idle redis-server costs CPU of its own (its timers: about 1.5 to 2 ms/s on the 2-core
//! development VM, whatever it stores). That floor is measured on a second redis-server that
//! nobody talks to, over the same window on the same host, and reported beside the fleet
//! server's whole CPU; the per-1,000-streams figure is what the streams add to it (scaling the
//! floor by 1,000 / streams would make a small run look expensive). Command counts and times come from
//! INFO commandstats; the times are wall time inside the server.
//!
//! ```text
//! cargo build -p streamkeeper && cargo bench -p streamkeeper-e2e --bench redis_cost
//! SK_BENCH_STREAMS=200 SK_BENCH_WINDOW=20s cargo bench -p streamkeeper-e2e --bench redis_cost
//! ```
//!
//! Parameters (environment): `SK_BENCH_STREAMS` (1000, in tenants of 50), `SK_BENCH_WINDOW`
//! (30s, the measured window after every stream streams), `SK_BENCH_EVENT_INTERVAL` (5s per
//! stream), `SK_BENCH_PHASES` (`one,two,idle`), `SK_BENCH_CHECKPOINT_WINDOW` (the sidecars'
//! `checkpointWindow`, 1s). The sidecars run with the production defaults otherwise:
//! heartbeat 15 s / 35 s.

use std::{collections::BTreeMap, time::Duration};

use streamkeeper_e2e::{
    fleet::{Fleet, Ledger, Timers, owns_active, stream_id},
    process::stream_entry,
    redis::{RedisServer, Transitions},
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

/// One measured run. CPU figures are ms of Redis CPU per second.
struct Measured {
    commands_per_s: f64,
    /// The server's whole CPU while the fleet ran (not scaled).
    cpu_raw: f64,
    /// The CPU of a second server with no client, over the same window (its own timers: the
    /// floor under any workload, whatever the number of streams).
    cpu_floor: f64,
    /// What the streams cost: `cpu_raw - cpu_floor`, per 1,000 streams.
    cpu_streams: f64,
    /// Wall time Redis spent running the commands (scripts timed whole), per 1,000 streams; on
    /// a busy host it includes time the server was preempted mid-command.
    exec_ms_per_s: f64,
    top: Vec<(String, f64, f64)>,
    acks_per_s: f64,
    clients: String,
    /// Transitions published in the window, by `from>to reason` (a stream that reconnects or
    /// changes owner costs a publish and a record write; at steady state there are none).
    transitions: BTreeMap<String, usize>,
}

/// One command's calls and time since the last `CONFIG RESETSTAT`.
#[derive(Debug, Clone, Copy, Default)]
struct Stat {
    calls: u64,
    usec: u64,
}

/// Calls and time per command since the last `CONFIG RESETSTAT`, the bench's own left out.
fn commandstats(port: u16) -> BTreeMap<String, Stat> {
    let text = command(port, &["INFO", "commandstats"])
        .map(value_text)
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |f: &str| -> Option<u64> {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(f))?
                    .parse()
                    .ok()
            };
            Some((
                name.to_owned(),
                Stat {
                    calls: field("calls=")?,
                    usec: field("usec=")?,
                },
            ))
        })
        .filter(|(name, _)| !matches!(name.as_str(), "info" | "config" | "config|resetstat"))
        .collect()
}

/// Commands a caller sends itself (the rest run inside scripts, whose time the script's own
/// entry already counts).
fn top_level(name: &str) -> bool {
    matches!(
        name,
        "evalsha"
            | "evalsha_ro"
            | "eval"
            | "eval_ro"
            | "ping"
            | "subscribe"
            | "psubscribe"
            | "client|setinfo"
            | "client|setname"
            | "hello"
            | "select"
            | "script|load"
    )
}

/// `connected_clients` and `pubsub_clients` (where the server says it).
fn clients(port: u16) -> String {
    let text = command(port, &["INFO", "clients"])
        .map(value_text)
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("connected_clients:") || l.starts_with("pubsub_clients:"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
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
    // A second server nobody talks to, measured over the same window: the floor under the
    // fleet's server (its own timers, on this host under this load), which the streams do not
    // cost.
    let control = RedisServer::start();
    let names: Vec<String> = (0..streams).map(|i| format!("s{i:04}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let timers = Timers {
        interval: Duration::from_secs(15),
        timeout: Duration::from_secs(35),
        reconnect: Duration::from_millis(500),
    };
    let mut fleet = Fleet::start("redis-cost", redis.url(), &refs, event_interval, timers).await;
    fleet.checkpoint_window = env_duration(
        "SK_BENCH_CHECKPOINT_WINDOW",
        streamkeeper_api::config::DEFAULT_CHECKPOINT_WINDOW,
    );
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
    // Heard by one more subscriber than the pods: its share of each PUBLISH is counted too.
    let heard = Transitions::subscribe(&redis.url()).await;
    command(redis.port, &["CONFIG", "RESETSTAT"]).expect("CONFIG RESETSTAT");
    let cpu0 = cpu_seconds(redis.port);
    let floor0 = cpu_seconds(control.port);
    let acked0 = ledger.deliveries().len();
    let t0 = Instant::now();
    sleep(window).await;
    let stats = commandstats(redis.port);
    let cpu1 = cpu_seconds(redis.port);
    let floor1 = cpu_seconds(control.port);
    let elapsed = t0.elapsed().as_secs_f64();
    let acked = ledger.deliveries().len() - acked0;
    let mut transitions = BTreeMap::new();
    for (at, t) in heard.all() {
        if at >= t0 {
            let key = format!(
                "{}>{} {}",
                t["from"].as_str().unwrap_or("?"),
                t["to"].as_str().unwrap_or("?"),
                t["reason"].as_str().unwrap_or("?")
            );
            *transitions.entry(key).or_insert(0) += 1;
        }
    }
    for t in taps {
        t.abort();
    }
    let clients = clients(redis.port);
    let per_1000 = 1000.0 / streams as f64;
    let total: u64 = stats.values().map(|s| s.calls).sum();
    let exec_usec: u64 = stats
        .iter()
        .filter(|(k, _)| top_level(k))
        .map(|(_, s)| s.usec)
        .sum();
    let mut top: Vec<(String, f64, f64)> = stats
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.calls as f64 / elapsed * per_1000,
                v.usec as f64 / v.calls.max(1) as f64,
            )
        })
        .collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    top.truncate(10);
    Measured {
        commands_per_s: total as f64 / elapsed * per_1000,
        cpu_raw: (cpu1 - cpu0) * 1000.0 / elapsed,
        cpu_floor: (floor1 - floor0) * 1000.0 / elapsed,
        cpu_streams: ((cpu1 - cpu0) - (floor1 - floor0)) * 1000.0 / elapsed * per_1000,
        exec_ms_per_s: exec_usec as f64 / 1000.0 / elapsed * per_1000,
        top,
        acks_per_s: acked as f64 / elapsed,
        clients,
        transitions,
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
         per stream, measured over {window:?}, checkpoint window {:?}; figures per 1,000 streams",
        env_duration(
            "SK_BENCH_CHECKPOINT_WINDOW",
            streamkeeper_api::config::DEFAULT_CHECKPOINT_WINDOW
        )
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
            "{label}: {:.1} commands/s, {:.2} ms Redis CPU/s per 1,000 streams (the server used \
             {:.2} ms/s; an idle server beside it {:.2}); {:.2} ms/s running commands \
             (wall); {:.0} acks/s reached the apps; {}; transitions in the window: {:?}\n  \
             calls/s (µs per call, wall): {}",
            m.commands_per_s,
            m.cpu_streams,
            m.cpu_raw,
            m.cpu_floor,
            m.exec_ms_per_s,
            m.acks_per_s,
            m.clients,
            m.transitions,
            m.top
                .iter()
                .map(|(k, v, us)| format!("{k} {v:.1} ({us:.0})"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}
