//! Redis load of the coordination store, beside the seed's design, on the same real Redis.
//!
//! `cargo bench -p streamkeeper-coord --bench redis_load` starts its own `redis-server` (and
//! a three-master cluster for two rows) and prints three tables:
//!
//! 1. The sidecar's calling pattern with two pods, per 1,000 streams in 20 tenants: pod 0 owns
//!    every stream, pod 1 stands by for every stream; both tick every 15 s (pod 0 beats every
//!    stream in one call, then sweeps every tenant; pod 1 sweeps every tenant and asks
//!    `lease_expiries` once per tenant, calling `try_acquire` only for a free or lapsed lease);
//!    0.2 acks/s per stream, flushed by the owner every second with `save_checkpoints`, in one
//!    call for every tenant or one call per tenant. For comparison, the standby of before: one
//!    `try_acquire` per stream, again just after the lease would lapse. On a single node and
//!    on the cluster (figures summed over its masters).
//! 2. Steady state with three owner pods at a 15 s heartbeat: commands per second and Redis CPU
//!    per second, per 1,000 streams, for streamkeeper (beats + sweeps, then also checkpoints) and
//!    for the seed (HSET + EXPIRE per pong, a SCAN MATCH ws:conn:* COUNT 100 + HGET per key sweep
//!    every 10 s).
//! 3. One sweep's cost as the streams grow from 1,000 to 100,000 with a handful stale.
//!
//! Time is compressed: a schedule of simulated time (every beat, sweep, pong, question,
//! checkpoint flush at its simulated instant) is replayed back to back, in order, each operation
//! awaited (one round trip at a time, like a pod's loop). Commands (INFO commandstats, which
//! counts commands run inside Lua scripts too) and Redis CPU (INFO used_cpu_sys +
//! used_cpu_user) are read before and after and divided by the simulated seconds. Redis's idle
//! background work (serverCron) runs for the wall time only, so it is mostly left out, for both
//! designs alike.
//!
//! The simulated pods of table 2 follow the calling pattern the store is built for: one
//! `beat` per pod per heartbeat interval with every stream it owns (the store groups them per
//! tenant: one script per tenant per 500 streams), a jittered sweep of each tenant every ~10 s by
//! every pod, and (second row) checkpoints of the streams that acked an event, flushed by
//! each pod once a second with one `save_checkpoints` call.

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    time::{Duration, Instant},
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use streamkeeper_api::{EventId, Fence, PodName, StreamState, Tenant};
use streamkeeper_coord::{
    AckSeq, Acquired, Beat, BeatOutcome, CheckpointOutcome, CheckpointWrite, ConnRecord, LeaseView,
    RedisStore, Store, StreamKey,
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
/// commandstats reply is not inside the window. Summed over `nodes` (a cluster's masters).
fn before_on(nodes: &[&common::RedisServer]) -> Sample {
    let calls = nodes.iter().map(|n| calls(n)).sum();
    Sample {
        calls,
        cpu_us: nodes.iter().map(|n| cpu_us(n)).sum(),
    }
}

/// Counters after a measured window: CPU first, then commands.
fn after_on(nodes: &[&common::RedisServer]) -> Sample {
    let cpu_us = nodes.iter().map(|n| cpu_us(n)).sum();
    Sample {
        calls: nodes.iter().map(|n| calls(n)).sum(),
        cpu_us,
    }
}

fn before(server: &common::RedisServer) -> Sample {
    before_on(&[server])
}

fn after(server: &common::RedisServer) -> Sample {
    after_on(&[server])
}

/// Commands run so far by name (INFO and CONFIG left out), nested script commands included.
fn calls_by_name(server: &common::RedisServer) -> HashMap<String, u64> {
    let mut out = HashMap::new();
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
        let n = stats
            .split(',')
            .find_map(|kv| kv.strip_prefix("calls="))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        *out.entry(name.to_owned()).or_default() += n;
    }
    out
}

/// Commands run so far (INFO and CONFIG left out), nested script commands included.
fn calls(server: &common::RedisServer) -> u64 {
    calls_by_name(server).values().sum()
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
    StreamKey::new(
        tenant.parse().unwrap_or_else(|e| panic!("tenant: {e}")),
        format!("cc/s{i}")
            .parse()
            .unwrap_or_else(|e| panic!("stream: {e}")),
    )
}

fn pod(p: usize) -> PodName {
    format!("pod-{p}")
        .parse()
        .unwrap_or_else(|e| panic!("pod: {e}"))
}

fn record(k: &StreamKey, p: usize, fence: Fence, last_pong: u64) -> ConnRecord {
    ConnRecord {
        stream: k.stream().clone(),
        tenant: k.tenant().clone(),
        socket_id: Some(streamkeeper_api::ConnectionId(
            format!("sock-{}", k.stream().name()).into(),
        )),
        last_pong,
        platform: streamkeeper_api::config::Platform::Genesys,
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
            let _ = s.sweep_stale(w.tenant(), 1_000_000, STALE_AFTER).await;
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

// ---------------------------------------------------------------------------------------------
// two pods: one owner of every stream, one standby of every stream

/// Simulated seconds of the two-pod schedule: a dozen ticks, several lease lifetimes.
const TWO_PODS_SECONDS: u64 = 180;
/// The beat tick of both pods (the sidecar's: the shortest heartbeat interval).
const TICK_MS: u64 = 15_000;
/// How often the owner flushes its acked ids.
const FLUSH_MS: u64 = 1_000;

/// How the standby learns when to contend.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Standby {
    /// One `lease_expiries` per tenant per tick; `try_acquire` only for a free or lapsed lease.
    ExpiryQuery,
    /// The claim loop before it: `try_acquire` per stream, again just after the lease would
    /// lapse (`(time left + 50..250 ms).min(ttl)`).
    AcquirePerStream,
}

/// How the owner flushes its acked ids each second.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Flush {
    /// No acks (idle streams).
    Idle,
    /// One `save_checkpoints` with every tenant's writes (on a single node: one script).
    OneCall,
    /// One `save_checkpoints` per tenant (one script per tenant: what a cluster needs).
    PerTenant,
}

/// Something a pod does at a simulated instant.
enum PodOp {
    /// The owner's tick: one beat with every stream, then a sweep of every tenant.
    OwnerTick,
    /// The standby's tick: a sweep of every tenant, and (with the expiry query) one question
    /// per tenant.
    StandbyTick,
    /// The owner's checkpoint flush.
    Flush,
    /// The standby's claim loop of one stream asks (the per-stream standby only).
    Ask(usize),
}

/// Two pods on `nodes` (at `url`): `n` streams in `tenants` tenants, all owned by pod 0, all
/// stood by for by pod 1, each acking 0.2 events/s flushed as `flush` says. Returns commands/s
/// and Redis CPU ms/s (per simulated second, all `n` streams), and commands/s by name.
async fn two_pods(
    nodes: &[&common::RedisServer],
    url: &str,
    n: usize,
    tenants: usize,
    standby: Standby,
    flush: Flush,
) -> (f64, f64, Vec<(String, f64)>) {
    for node in nodes {
        common::text(node.port, &["FLUSHALL"]);
    }
    let connect = || RedisStore::connect(url).unwrap_or_else(|e| panic!("connect: {e}"));
    let (owner, stand) = (connect(), connect());
    let tenant_ids: Vec<Tenant> = (0..tenants)
        .map(|t| {
            format!("tenant-{t}")
                .parse()
                .unwrap_or_else(|e| panic!("tenant: {e}"))
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(11);
    let mut streams = Vec::with_capacity(n);
    for i in 0..n {
        let k = key(tenant_ids[i % tenants].as_str(), i);
        let fence = match owner.acquire(&k, &pod(0), LEASE_TTL).await {
            Ok(Some(f)) => f,
            other => panic!("acquire: {other:?}"),
        };
        streams.push(Owned {
            key: k,
            pod: 0,
            fence,
            phase_ms: rng.random_range(0..HEARTBEAT_MS),
        });
    }
    let by_tenant: Vec<Vec<usize>> = (0..tenants)
        .map(|t| (0..n).filter(|i| i % tenants == t).collect())
        .collect();
    let base: u64 = 1_700_000_000_000;
    let beats_at = |t: u64| -> Vec<Beat> {
        streams
            .iter()
            .map(|o| {
                // The latest pong at or before now.
                let last = if t >= o.phase_ms {
                    t - (t - o.phase_ms) % HEARTBEAT_MS
                } else {
                    0
                };
                Beat {
                    key: o.key.clone(),
                    fence: o.fence,
                    record: record(&o.key, 0, o.fence, base + last),
                    lease_ttl: LEASE_TTL,
                }
            })
            .collect()
    };
    // Warm-up, as in a running system: scripts loaded on every node, records written,
    // tenants registered, every read path used once.
    let out = owner.beat(&beats_at(0)).await;
    assert!(out.iter().all(BeatOutcome::confirmed), "beat: {out:?}");
    for t in &tenant_ids {
        let _ = owner.sweep_stale(t, base, STALE_AFTER).await;
        let _ = stand.sweep_stale(t, base, STALE_AFTER).await;
    }
    let mut ack_seq = vec![0u64; n];
    let mut writes_of = |pick: &mut dyn FnMut() -> bool, only: Option<usize>| {
        let mut w = Vec::new();
        for (i, o) in streams.iter().enumerate() {
            if only.is_some_and(|t| i % tenants != t) || !pick() {
                continue;
            }
            ack_seq[i] += 1;
            w.push(CheckpointWrite {
                key: o.key.clone(),
                fence: o.fence,
                seq: AckSeq(ack_seq[i]),
                id: EventId(format!("e{}", ack_seq[i])),
            });
        }
        w
    };
    let warm = writes_of(&mut || true, None);
    let _ = owner.save_checkpoints(&warm).await;
    for (t, idx) in tenant_ids.iter().zip(&by_tenant) {
        let ids: Vec<_> = idx
            .iter()
            .map(|&i| streams[i].key.stream().clone())
            .collect();
        stand
            .lease_expiries(t, &ids)
            .await
            .unwrap_or_else(|e| panic!("lease expiries: {e}"));
    }
    let _ = stand.try_acquire(&streams[0].key, &pod(1), LEASE_TTL).await;

    // The schedule: a heap of (simulated ms, op), since the per-stream standby schedules its
    // next ask from the answer.
    let sim_ms = TWO_PODS_SECONDS * 1000;
    let mut ops: Vec<PodOp> = Vec::new();
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let push = |heap: &mut BinaryHeap<Reverse<(u64, usize)>>, ops: &mut Vec<PodOp>, t, op| {
        ops.push(op);
        heap.push(Reverse((t, ops.len() - 1)));
    };
    let mut t = 0;
    while t < sim_ms {
        push(&mut heap, &mut ops, t, PodOp::OwnerTick);
        push(&mut heap, &mut ops, t + TICK_MS / 2, PodOp::StandbyTick);
        t += TICK_MS;
    }
    if flush != Flush::Idle {
        let mut t = rng.random_range(0..FLUSH_MS);
        while t < sim_ms {
            push(&mut heap, &mut ops, t, PodOp::Flush);
            t += FLUSH_MS;
        }
    }
    if standby == Standby::AcquirePerStream {
        for i in 0..n {
            let first = rng.random_range(0..LEASE_TTL.as_millis() as u64);
            push(&mut heap, &mut ops, first, PodOp::Ask(i));
        }
    }
    let p_event = 1.0 - (-EVENTS_PER_STREAM_PER_S * FLUSH_MS as f64 / 1000.0).exp();
    let ttl_ms = LEASE_TTL.as_millis() as u64;

    let t0 = before_on(nodes);
    let names0: HashMap<String, u64> = nodes.iter().fold(HashMap::new(), |mut m, n| {
        for (k, v) in calls_by_name(n) {
            *m.entry(k).or_default() += v;
        }
        m
    });
    while let Some(Reverse((t, i))) = heap.pop() {
        if t >= sim_ms {
            break;
        }
        match ops[i] {
            PodOp::OwnerTick => {
                let out = owner.beat(&beats_at(t)).await;
                assert!(out.iter().all(BeatOutcome::confirmed), "beat: {out:?}");
                for tenant in &tenant_ids {
                    let dead = owner
                        .sweep_stale(tenant, base + t, STALE_AFTER)
                        .await
                        .unwrap_or_else(|e| panic!("sweep: {e}"));
                    assert!(dead.is_empty(), "nothing is stale in the steady state");
                }
            }
            PodOp::StandbyTick => {
                for (tenant, idx) in tenant_ids.iter().zip(&by_tenant) {
                    let dead = stand
                        .sweep_stale(tenant, base + t, STALE_AFTER)
                        .await
                        .unwrap_or_else(|e| panic!("sweep: {e}"));
                    assert!(dead.is_empty(), "nothing is stale in the steady state");
                    if standby == Standby::ExpiryQuery {
                        let ids: Vec<_> = idx
                            .iter()
                            .map(|&i| streams[i].key.stream().clone())
                            .collect();
                        let views = stand
                            .lease_expiries(tenant, &ids)
                            .await
                            .unwrap_or_else(|e| panic!("lease expiries: {e}"));
                        for (&i, v) in idx.iter().zip(views) {
                            if matches!(v, LeaseView::Free | LeaseView::Lapsed) {
                                panic!("{} is {v:?} in the steady state", streams[i].key.stream());
                            }
                        }
                    }
                }
            }
            PodOp::Flush => {
                let writes = writes_of(&mut || rng.random_bool(p_event.min(1.0)), None);
                let saved: Vec<CheckpointOutcome> = match flush {
                    Flush::OneCall => owner.save_checkpoints(&writes).await,
                    _ => {
                        let mut out = Vec::new();
                        for tenant in &tenant_ids {
                            let part: Vec<CheckpointWrite> = writes
                                .iter()
                                .filter(|w| w.key.tenant() == tenant)
                                .cloned()
                                .collect();
                            if !part.is_empty() {
                                out.extend(owner.save_checkpoints(&part).await);
                            }
                        }
                        out
                    }
                };
                assert!(
                    saved.iter().all(|s| *s == CheckpointOutcome::Saved),
                    "checkpoints: {saved:?}"
                );
            }
            PodOp::Ask(s) => {
                match stand.try_acquire(&streams[s].key, &pod(1), LEASE_TTL).await {
                    Ok(Acquired::Held { .. }) => {}
                    other => panic!("the standby must find it held: {other:?}"),
                }
                // The claim loop asks again just after the lease would lapse, on the
                // simulated clock: one owner beat per tick renews it.
                let renewed = t - t % TICK_MS;
                let left = (renewed + ttl_ms).saturating_sub(t);
                let next = t + (left + rng.random_range(50..250)).min(ttl_ms);
                push(&mut heap, &mut ops, next, PodOp::Ask(s));
            }
        }
    }
    let d = delta(t0, after_on(nodes));
    let secs = TWO_PODS_SECONDS as f64;
    let mut names: HashMap<String, u64> = HashMap::new();
    for node in nodes {
        for (k, v) in calls_by_name(node) {
            *names.entry(k).or_default() += v;
        }
    }
    let mut by_name: Vec<(String, f64)> = names
        .into_iter()
        .map(|(k, v)| {
            let before = names0.get(&k).copied().unwrap_or(0);
            (k, v.saturating_sub(before) as f64 / secs)
        })
        .filter(|(_, v)| *v > 0.0)
        .collect();
    by_name.sort_by(|a, b| b.1.total_cmp(&a.1));
    (
        d.calls as f64 / secs,
        d.cpu_us as f64 / 1000.0 / secs,
        by_name,
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

/// The sidecar's calling pattern with two pods (one owner of all, one standby of all):
/// 1,000 streams in 20 tenants, 0.2 acks/s per stream flushed every second, 15 s ticks.
async fn two_pods_table(server: &common::RedisServer) {
    const N: usize = 1_000;
    const TENANTS: usize = 20;
    println!(
        "two pods, {N} streams in {TENANTS} tenants: pod 0 owns every stream, pod 1 stands by for \
         every stream; both tick every {} s (pod 0: one beat, then a sweep of every tenant; pod 1: \
         a sweep of every tenant, and the standby's question); {EVENTS_PER_STREAM_PER_S} acks/s per \
         stream flushed every {} s; lease TTL {} s; {TWO_PODS_SECONDS} s simulated.",
        TICK_MS / 1000,
        FLUSH_MS / 1000,
        LEASE_TTL.as_secs()
    );
    println!(
        "{:<14} {:<60} {:>10} {:>12}",
        "redis", "standby / checkpoints", "cmds/s", "CPU ms/s"
    );
    let rows = [
        (
            Standby::ExpiryQuery,
            Flush::OneCall,
            "lease_expiries per tenant / one call, all tenants",
        ),
        (
            Standby::ExpiryQuery,
            Flush::PerTenant,
            "lease_expiries per tenant / one call per tenant",
        ),
        (
            Standby::ExpiryQuery,
            Flush::Idle,
            "lease_expiries per tenant / no acks",
        ),
        (
            Standby::AcquirePerStream,
            Flush::OneCall,
            "before: try_acquire per stream / one call",
        ),
        (
            Standby::AcquirePerStream,
            Flush::Idle,
            "before: try_acquire per stream / no acks",
        ),
    ];
    let mut breakdown = Vec::new();
    for (i, (standby, flush, label)) in rows.iter().enumerate() {
        let (c, cpu, names) =
            two_pods(&[server], &server.url(), N, TENANTS, *standby, *flush).await;
        println!("{:<14} {label:<60} {c:>10.1} {cpu:>12.2}", "node");
        if i == 0 {
            breakdown.push(("node", names));
        }
    }
    let cluster = common::RedisCluster::start();
    let masters: Vec<&common::RedisServer> = cluster.nodes.iter().collect();
    for (flush, label) in [
        (
            Flush::OneCall,
            "lease_expiries per tenant / one call (a script per tenant)",
        ),
        (Flush::Idle, "lease_expiries per tenant / no acks"),
    ] {
        let (c, cpu, names) = two_pods(
            &masters,
            &cluster.url(),
            N,
            TENANTS,
            Standby::ExpiryQuery,
            flush,
        )
        .await;
        println!("{:<14} {label:<60} {c:>10.1} {cpu:>12.2}", "3-master sum");
        if flush == Flush::OneCall {
            breakdown.push(("3-master sum", names));
        }
    }
    for (redis, names) in breakdown {
        let text: Vec<String> = names
            .iter()
            .map(|(name, per_s)| format!("{name} {per_s:.1}"))
            .collect();
        println!(
            "  commands/s by name, first row, {redis}: {}",
            text.join(", ")
        );
    }
    println!();
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
    two_pods_table(&server).await;
    println!(
        "three owner pods, each owning a third of the streams (no standby), checkpoints in one \
         save_checkpoints call per pod per flush (one script on a single node):"
    );
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
