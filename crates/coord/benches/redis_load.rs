//! Redis load of the coordination store, beside the seed's design, on the same real Redis.
//!
//! `cargo bench -p streamkeeper-coord --bench redis_load` starts its own `redis-server` and
//! prints two tables:
//!
//! 1. Steady state at a 15 s heartbeat: commands per second and Redis CPU per second, per 1,000
//!    streams, for streamkeeper (beats + sweeps, then also checkpoints) and for the seed (HSET +
//!    EXPIRE per pong, a SCAN MATCH ws:conn:* COUNT 100 + HGET per key sweep every 10 s).
//! 2. One sweep's cost as the streams grow from 1,000 to 100,000 with a handful stale.
//!
//! Time is compressed: a schedule of SIM_SECONDS of simulated time (every beat, sweep, pong,
//! checkpoint flush at its simulated instant) is replayed back to back, in order, each operation
//! awaited (one round trip at a time, like a pod's loop). Commands (INFO commandstats, which
//! counts commands run inside Lua scripts too) and Redis CPU (INFO used_cpu_sys +
//! used_cpu_user) are read before and after and divided by the simulated seconds. Redis's idle
//! background work (serverCron) runs for the wall time only, so it is mostly left out, for both
//! designs alike.
//!
//! The simulated streamkeeper pods follow the calling pattern the store is built for: one
//! `beat` per pod per heartbeat interval with every stream it owns (the store groups them per
//! tenant: one script per tenant per 500 streams), a jittered sweep of each tenant every ~10 s by
//! every pod, and (second row) checkpoints of the streams that acked an event, flushed by
//! each pod once a second with `save_checkpoints` (one script per tenant).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};
use streamkeeper_api::{EventId, Fence, PodName, StreamState, Tenant};
use streamkeeper_coord::{
    AckSeq, Beat, BeatOutcome, CheckpointOutcome, CheckpointWrite, ConnRecord, RedisStore, Store,
    StreamKey,
};

const SIM_SECONDS: u64 = 60;
const HEARTBEAT_MS: u64 = 15_000;
const SWEEP_MS: u64 = 10_000;
const PODS: usize = 3;
/// Acked events per stream per second (a contact-center stream: a few events a minute to a few
/// a second; one every five seconds here).
const EVENTS_PER_STREAM_PER_S: f64 = 0.2;
const LEASE_TTL: Duration = Duration::from_secs(45);
const STALE_AFTER: Duration = Duration::from_secs(50);

#[derive(Clone, Copy, Default)]
struct Sample {
    calls: u64,
    cpu_us: u64,
}

/// Counters before a measured window: commands first, then CPU, so reading the (large)
/// commandstats reply is not inside the window.
fn before(server: &common::RedisServer) -> Sample {
    let calls = calls(server);
    Sample {
        calls,
        cpu_us: cpu_us(server),
    }
}

/// Counters after a measured window: CPU first, then commands.
fn after(server: &common::RedisServer) -> Sample {
    let cpu_us = cpu_us(server);
    Sample {
        calls: calls(server),
        cpu_us,
    }
}

/// Commands run so far (INFO and CONFIG left out), nested script commands included.
fn calls(server: &common::RedisServer) -> u64 {
    let mut calls = 0;
    for line in server.info("commandstats").lines() {
        let Some(rest) = line.strip_prefix("cmdstat_") else {
            continue;
        };
        let Some((name, stats)) = rest.split_once(':') else {
            continue;
        };
        if name == "info" || name.starts_with("config") {
            continue;
        }
        calls += stats
            .split(',')
            .find_map(|kv| kv.strip_prefix("calls="))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    calls
}

/// used_cpu_sys + used_cpu_user, in µs.
fn cpu_us(server: &common::RedisServer) -> u64 {
    let mut cpu = 0.0;
    for line in server.info("cpu").lines() {
        if let Some(v) = line
            .strip_prefix("used_cpu_sys:")
            .or_else(|| line.strip_prefix("used_cpu_user:"))
        {
            cpu += v.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    (cpu * 1e6) as u64
}

fn delta(a: Sample, b: Sample) -> Sample {
    Sample {
        calls: b.calls.saturating_sub(a.calls),
        cpu_us: b.cpu_us.saturating_sub(a.cpu_us),
    }
}

fn key(tenant: &str, i: usize) -> StreamKey {
    StreamKey {
        tenant: tenant.parse().unwrap_or_else(|e| panic!("tenant: {e}")),
        stream: format!("cc/s{i}")
            .parse()
            .unwrap_or_else(|e| panic!("stream: {e}")),
    }
}

fn pod(p: usize) -> PodName {
    format!("pod-{p}")
        .parse()
        .unwrap_or_else(|e| panic!("pod: {e}"))
}

fn record(k: &StreamKey, p: usize, fence: Fence, last_pong: u64) -> ConnRecord {
    ConnRecord {
        stream: k.stream.clone(),
        tenant: k.tenant.clone(),
        socket_id: format!("sock-{}", k.stream.name()),
        last_pong,
        platform: "genesys".into(),
        state: StreamState::Active,
        retry_count: 0,
        owner: pod(p),
        fence,
    }
}

/// Something a simulated pod does at a simulated instant.
enum Op {
    Beat { pod: usize },
    Sweep { pod: usize, tenant: usize },
    Flush { pod: usize },
}

struct Owned {
    key: StreamKey,
    pod: usize,
    fence: Fence,
    phase_ms: u64,
}

/// The streamkeeper pods for `n` streams over `tenants` tenants; returns commands/s and CPU
/// ms/s (per simulated second, for all `n` streams).
async fn streamkeeper(
    server: &common::RedisServer,
    n: usize,
    tenants: usize,
    checkpoint_flush_ms: Option<u64>,
) -> (f64, f64) {
    common::text(server.port, &["FLUSHALL"]);
    let stores: Vec<RedisStore> = (0..PODS)
        .map(|_| RedisStore::connect(&server.url()).unwrap_or_else(|e| panic!("connect: {e}")))
        .collect();
    let tenant_names: Vec<String> = (0..tenants).map(|t| format!("tenant-{t}")).collect();
    let mut rng = StdRng::seed_from_u64(7);
    let mut owned = Vec::with_capacity(n);
    for i in 0..n {
        let k = key(&tenant_names[i % tenants], i);
        let p = i % PODS;
        let fence = match stores[p].acquire(&k, &pod(p), LEASE_TTL).await {
            Ok(Some(f)) => f,
            other => panic!("acquire: {other:?}"),
        };
        owned.push(Owned {
            key: k,
            pod: p,
            fence,
            phase_ms: rng.random_range(0..HEARTBEAT_MS),
        });
    }
    let base: u64 = 1_700_000_000_000;
    // Warm up: scripts loaded, records written once, tenants registered (as in a running
    // system), on a separate tenant so every measured tenant's first sweep still collects
    // expired leases, as each store does once a minute.
    for (p, s) in stores.iter().enumerate() {
        let beats: Vec<Beat> = owned
            .iter()
            .filter(|o| o.pod == p)
            .map(|o| Beat {
                key: o.key.clone(),
                fence: o.fence,
                record: record(&o.key, p, o.fence, base + o.phase_ms - HEARTBEAT_MS),
                lease_ttl: LEASE_TTL,
            })
            .collect();
        assert!(s.beat(&beats).await.iter().all(BeatOutcome::confirmed));
        let w = key("warmup", p);
        if let Ok(Some(f)) = s.acquire(&w, &pod(p), LEASE_TTL).await {
            let _ = s
                .beat(&[Beat {
                    key: w.clone(),
                    fence: f,
                    record: record(&w, p, f, 0),
                    lease_ttl: LEASE_TTL,
                }])
                .await;
            let _ = s
                .save_checkpoint(&CheckpointWrite {
                    key: w.clone(),
                    fence: f,
                    seq: AckSeq(1),
                    id: EventId("0".into()),
                })
                .await;
            let _ = s.sweep_stale(&w.tenant, 1_000_000, STALE_AFTER).await;
        }
    }

    // The schedule, in simulated milliseconds from a base far from zero (lastPong values).
    let sim_ms = SIM_SECONDS * 1000;
    let mut ops: Vec<(u64, Op)> = Vec::new();
    for p in 0..PODS {
        let mut t = (p as u64) * HEARTBEAT_MS / PODS as u64;
        while t < sim_ms {
            ops.push((t, Op::Beat { pod: p }));
            t += HEARTBEAT_MS;
        }
        for tenant in 0..tenants {
            let mut t = rng.random_range(0..SWEEP_MS);
            while t < sim_ms {
                ops.push((t, Op::Sweep { pod: p, tenant }));
                t += (SWEEP_MS as f64 * rng.random_range(0.8..1.2)) as u64;
            }
        }
        if let Some(every) = checkpoint_flush_ms {
            let mut t = rng.random_range(0..every);
            while t < sim_ms {
                ops.push((t, Op::Flush { pod: p }));
                t += every;
            }
        }
    }
    ops.sort_by_key(|(t, _)| *t);
    let tenant_ids: Vec<Tenant> = tenant_names
        .iter()
        .map(|t| t.parse().unwrap_or_else(|e| panic!("tenant: {e}")))
        .collect();
    // The chance that a stream acked an event since its pod's last flush.
    let every = checkpoint_flush_ms.unwrap_or(1_000) as f64 / 1000.0;
    let p_event = 1.0 - (-EVENTS_PER_STREAM_PER_S * every).exp();
    let mut event_no: u64 = 0;

    let t0 = before(server);
    for (t, op) in &ops {
        match op {
            Op::Beat { pod: p } => {
                let beats: Vec<Beat> = owned
                    .iter()
                    .filter(|o| o.pod == *p)
                    .map(|o| {
                        // The latest pong at or before now.
                        let last = if *t >= o.phase_ms {
                            t - (t - o.phase_ms) % HEARTBEAT_MS
                        } else {
                            0
                        };
                        Beat {
                            key: o.key.clone(),
                            fence: o.fence,
                            record: record(&o.key, *p, o.fence, base + last),
                            lease_ttl: LEASE_TTL,
                        }
                    })
                    .collect();
                let out = stores[*p].beat(&beats).await;
                assert!(out.iter().all(BeatOutcome::confirmed), "beat: {out:?}");
            }
            Op::Sweep { pod: p, tenant } => {
                let dead = stores[*p]
                    .sweep_stale(&tenant_ids[*tenant], base + t, STALE_AFTER)
                    .await
                    .unwrap_or_else(|e| panic!("sweep: {e}"));
                assert!(dead.is_empty(), "nothing is stale in the steady state");
            }
            Op::Flush { pod: p } => {
                let writes: Vec<CheckpointWrite> = owned
                    .iter()
                    .filter(|o| o.pod == *p && rng.random_bool(p_event.min(1.0)))
                    .map(|o| {
                        event_no += 1;
                        CheckpointWrite {
                            key: o.key.clone(),
                            fence: o.fence,
                            seq: AckSeq(event_no),
                            id: EventId(event_no.to_string()),
                        }
                    })
                    .collect();
                let saved = stores[*p].save_checkpoints(&writes).await;
                assert!(saved.iter().all(|s| *s == CheckpointOutcome::Saved));
            }
        }
    }
    let d = delta(t0, after(server));
    (
        d.calls as f64 / SIM_SECONDS as f64,
        d.cpu_us as f64 / 1000.0 / SIM_SECONDS as f64,
    )
}

/// The seed's design for `n` connections: HSET + EXPIRE at every pong, and one reaper that
/// SCANs `ws:conn:*` (COUNT 100) and HGETs each key's lastPong every 10 s.
async fn seed(server: &common::RedisServer, n: usize) -> (f64, f64) {
    common::text(server.port, &["FLUSHALL"]);
    let client = redis::Client::open(server.url()).unwrap_or_else(|e| panic!("client: {e}"));
    let mut conns = Vec::new();
    for _ in 0..PODS {
        conns.push(
            client
                .get_multiplexed_async_connection()
                .await
                .unwrap_or_else(|e| panic!("connect: {e}")),
        );
    }
    let mut rng = StdRng::seed_from_u64(7);
    let phases: Vec<u64> = (0..n).map(|_| rng.random_range(0..HEARTBEAT_MS)).collect();
    let sim_ms = SIM_SECONDS * 1000;
    let mut ops: Vec<(u64, Option<usize>)> = Vec::new(); // Some(stream) = pong, None = sweep
    for (i, ph) in phases.iter().enumerate() {
        let mut t = *ph;
        while t < sim_ms {
            ops.push((t, Some(i)));
            t += HEARTBEAT_MS;
        }
    }
    let mut t = 0;
    while t < sim_ms {
        ops.push((t, None));
        t += SWEEP_MS;
    }
    ops.sort_by_key(|(t, _)| *t);
    // Every connection exists before the window, as in a running system.
    for i in 0..n {
        let c = &mut conns[i % PODS];
        seed_pong(c, i, 0).await;
    }
    let t0 = before(server);
    for (t, op) in &ops {
        match op {
            Some(i) => seed_pong(&mut conns[i % PODS], *i, *t).await,
            None => {
                seed_sweep(&mut conns[0]).await;
            }
        }
    }
    let d = delta(t0, after(server));
    (
        d.calls as f64 / SIM_SECONDS as f64,
        d.cpu_us as f64 / 1000.0 / SIM_SECONDS as f64,
    )
}

async fn seed_pong(c: &mut redis::aio::MultiplexedConnection, i: usize, t: u64) {
    let k = format!("ws:conn:{i}");
    let _: () = redis::cmd("HSET")
        .arg(&k)
        .arg("lastPong")
        .arg(t)
        .arg("socketId")
        .arg(format!("sock-{i}"))
        .arg("state")
        .arg("ACTIVE")
        .query_async(c)
        .await
        .unwrap_or_else(|e| panic!("HSET: {e}"));
    let _: () = redis::cmd("EXPIRE")
        .arg(&k)
        .arg(60)
        .query_async(c)
        .await
        .unwrap_or_else(|e| panic!("EXPIRE: {e}"));
}

/// One seed sweep; returns the keys it read.
async fn seed_sweep(c: &mut redis::aio::MultiplexedConnection) -> usize {
    let mut cursor: u64 = 0;
    let mut seen = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("ws:conn:*")
            .arg("COUNT")
            .arg(100)
            .query_async(c)
            .await
            .unwrap_or_else(|e| panic!("SCAN: {e}"));
        for k in keys {
            let _: Option<String> = redis::cmd("HGET")
                .arg(&k)
                .arg("lastPong")
                .query_async(c)
                .await
                .unwrap_or_else(|e| panic!("HGET: {e}"));
            seen += 1;
        }
        cursor = next;
        if cursor == 0 {
            return seen;
        }
    }
}

/// One sweep's cost with `n` streams in one tenant and STALE stale at each sweep: (commands,
/// µs of Redis CPU) for streamkeeper, and the same for the seed's sweep over `n` keys.
async fn sweep_cost(server: &common::RedisServer, n: usize) -> ((f64, f64), (f64, f64), f64) {
    const STALE: usize = 5;
    const SWEEPS: usize = 200;
    common::text(server.port, &["FLUSHALL"]);
    let s = RedisStore::connect(&server.url()).unwrap_or_else(|e| panic!("connect: {e}"));
    let tenant: Tenant = "acme".parse().unwrap_or_else(|e| panic!("{e}"));
    let beat = |i: usize, last_pong: u64, lease_ttl: Duration| {
        let k = key("acme", i);
        let f = Fence(i as u64 + 1);
        Beat {
            key: k.clone(),
            fence: f,
            record: record(&k, 0, f, last_pong),
            lease_ttl,
        }
    };
    // n live, vouched-for streams; every 10th has an old pong (its socket is reconnecting:
    // not stale, and it must cost the sweep nothing).
    for chunk in (0..n).collect::<Vec<_>>().chunks(5_000) {
        let beats: Vec<Beat> = chunk
            .iter()
            .map(|&i| {
                beat(
                    i,
                    if i % 10 == 0 { 1_000 } else { 1_000_000_000 },
                    LEASE_TTL,
                )
            })
            .collect();
        assert!(s.beat(&beats).await.iter().all(BeatOutcome::confirmed));
    }
    let now = 1_000_000_000 + STALE_AFTER.as_millis() as u64;
    let mut next_stale = n;
    let mut stale_batch = async |s: &RedisStore| {
        // STALE more owners stop vouching (a 1 ms lease) with an old pong.
        let beats: Vec<Beat> = (next_stale..next_stale + STALE)
            .map(|i| beat(i, 1_000, Duration::from_millis(1)))
            .collect();
        next_stale += STALE;
        assert!(s.beat(&beats).await.iter().all(BeatOutcome::confirmed));
        tokio::time::sleep(Duration::from_millis(3)).await; // let the 1 ms leases lapse
    };
    // Warm-up (script loaded).
    stale_batch(&s).await;
    let dead = s
        .sweep_stale(&tenant, now, STALE_AFTER)
        .await
        .unwrap_or_else(|e| panic!("sweep: {e}"));
    assert_eq!(dead.len(), STALE);

    // Each sweep measured alone (the set-up between sweeps is not), less the cost of reading
    // the counters around an empty window.
    let (mut sweeps, mut empty) = (Sample::default(), Sample::default());
    for _ in 0..SWEEPS {
        stale_batch(&s).await;
        let t0 = before(server);
        let dead = s
            .sweep_stale(&tenant, now, STALE_AFTER)
            .await
            .unwrap_or_else(|e| panic!("sweep: {e}"));
        let d = delta(t0, after(server));
        assert_eq!(dead.len(), STALE);
        let t0 = before(server);
        let e = delta(t0, after(server));
        sweeps = Sample {
            calls: sweeps.calls + d.calls,
            cpu_us: sweeps.cpu_us + d.cpu_us,
        };
        empty = Sample {
            calls: empty.calls + e.calls,
            cpu_us: empty.cpu_us + e.cpu_us,
        };
    }
    let ours = (
        sweeps.calls as f64 / SWEEPS as f64,
        sweeps.cpu_us.saturating_sub(empty.cpu_us) as f64 / SWEEPS as f64,
    );

    // Nothing stale: the probe alone.
    let t0 = before(server);
    for _ in 0..SWEEPS {
        let dead = s
            .sweep_stale(&tenant, now, STALE_AFTER)
            .await
            .unwrap_or_else(|e| panic!("sweep: {e}"));
        assert!(dead.is_empty());
    }
    let idle = delta(t0, after(server));

    // The seed's sweep over n keys (a single one: it is O(n) by construction).
    common::text(server.port, &["FLUSHALL"]);
    let client = redis::Client::open(server.url()).unwrap_or_else(|e| panic!("client: {e}"));
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    for chunk in (0..n).collect::<Vec<_>>().chunks(1_000) {
        let mut pipe = redis::pipe();
        for &i in chunk {
            pipe.cmd("HSET")
                .arg(format!("ws:conn:{i}"))
                .arg("lastPong")
                .arg(1_000_000_000u64)
                .ignore();
        }
        let _: () = pipe
            .query_async(&mut c)
            .await
            .unwrap_or_else(|e| panic!("HSET: {e}"));
    }
    let t0 = before(server);
    let seen = seed_sweep(&mut c).await;
    assert_eq!(seen, n);
    let d = delta(t0, after(server));
    (
        ours,
        (d.calls as f64, d.cpu_us as f64),
        idle.calls as f64 / SWEEPS as f64,
    )
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    rt.block_on(run());
}

async fn run() {
    let started = Instant::now();
    let server = common::RedisServer::start();
    let version = server
        .info("server")
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:").map(str::to_owned))
        .unwrap_or_default();
    println!(
        "redis_load: redis-server {version} on 127.0.0.1:{}, {PODS} pods, heartbeat {} s,",
        server.port,
        HEARTBEAT_MS / 1000
    );
    println!(
        "  {SIM_SECONDS} s of simulated time replayed back to back; figures per simulated second."
    );
    println!(
        "  streamkeeper: one beat per pod per heartbeat, sweep of every tenant by every pod every ~10 s (±20%),"
    );
    println!(
        "  checkpoints: {EVENTS_PER_STREAM_PER_S} acked events/s per stream, flushed by each pod every 1 s or 5 s."
    );
    println!(
        "  seed: HSET+EXPIRE per pong, SCAN MATCH ws:conn:* COUNT 100 + HGET per key every 10 s (one reaper)."
    );
    println!();
    println!(
        "{:<44} {:>8} {:>8} {:>10} {:>12} {:>14} {:>14}",
        "design", "streams", "tenants", "cmds/s", "CPU ms/s", "cmds/s per 1k", "CPU ms/s per 1k"
    );
    let mut rows: Vec<(String, usize, String, f64, f64)> = Vec::new();
    for n in [1_000usize, 10_000] {
        for tenants in [1usize, 10] {
            let (c, cpu) = streamkeeper(&server, n, tenants, None).await;
            rows.push((
                "streamkeeper: beats + sweeps".into(),
                n,
                tenants.to_string(),
                c,
                cpu,
            ));
            for flush in [1_000, 5_000] {
                let (c, cpu) = streamkeeper(&server, n, tenants, Some(flush)).await;
                let name = format!("streamkeeper: + checkpoints every {} s", flush / 1000);
                rows.push((name, n, tenants.to_string(), c, cpu));
            }
        }
        let (c, cpu) = seed(&server, n).await;
        rows.push((
            "seed: HSET+EXPIRE per pong, SCAN+HGET sweep".into(),
            n,
            "-".into(),
            c,
            cpu,
        ));
    }
    for (name, n, tenants, c, cpu) in &rows {
        let per = 1000.0 / *n as f64;
        println!(
            "{:<44} {:>8} {:>8} {:>10.1} {:>12.2} {:>14.1} {:>14.3}",
            name,
            n,
            tenants,
            c,
            cpu,
            c * per,
            cpu * per
        );
    }

    println!();
    println!(
        "one sweep of one tenant with 5 stale entries and 10% of the streams reconnecting (old pong,"
    );
    println!(
        "lease renewed); streamkeeper: mean of 200 sweeps; seed: one sweep; idle = nothing stale:"
    );
    println!(
        "{:>8} {:>18} {:>14} {:>22} {:>18} {:>14}",
        "streams",
        "streamkeeper cmds",
        "streamkeeper µs",
        "streamkeeper idle cmds",
        "seed cmds",
        "seed µs"
    );
    for n in [1_000usize, 10_000, 100_000] {
        let ((oc, ou), (sc, su), idle) = sweep_cost(&server, n).await;
        println!("{n:>8} {oc:>18.1} {ou:>14.1} {idle:>22.1} {sc:>18.0} {su:>14.0}");
    }
    println!();
    println!("total bench time {:.1} s", started.elapsed().as_secs_f64());
}
