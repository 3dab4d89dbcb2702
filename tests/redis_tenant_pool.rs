//! The runtime tenant pool: `tenantLimits: {acme: 2}`, three pods each configured with two
//! different streams of tenant acme (six streams, each with its own lease). Sampled every ~10 ms
//! on the emulator (in-process: one snapshot is atomic) through the starts, a SIGKILL of a pod
//! that streams, and its restart: never more than two of the six streams connected; and two
//! connected once settled each time (the pool is used, not starved).

use std::time::Duration;

use streamkeeper_e2e::fleet::{Fleet, Sampler, Timers, owns_active, stream_id};
use tokio::time::{Instant, sleep};

/// The tenant's limit.
const LIMIT: usize = 2;
/// How long the pool may take to fill again (a killed holder's slot lives as long as its lease,
/// then waiting streams retry every ~0.5 s).
const REFILL_BOUND: Duration = Duration::from_secs(5);

const STREAMS: [&str; 6] = ["pool-0", "pool-1", "pool-2", "pool-3", "pool-4", "pool-5"];

fn connected(fleet: &Fleet) -> Vec<&'static str> {
    let stats = fleet.emu.stats();
    STREAMS
        .into_iter()
        .filter(|s| stats.streams.get(*s).is_some_and(|x| x.connections > 0))
        .collect()
}

/// Waits until exactly `LIMIT` streams are connected; returns how long it took.
async fn wait_full(fleet: &Fleet, bound: Duration, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        let now = connected(fleet);
        if now.len() == LIMIT {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < bound,
            "{what}: {} of the tenant's streams connected after {bound:?} ({now:?}), want {LIMIT}\n{}",
            now.len(),
            fleet.diagnostics()
        );
        sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_limit_of_two_holds_at_every_sample_across_three_pods_a_kill_and_a_restart() {
    let redis = streamkeeper_e2e::redis::RedisServer::start();
    let mut fleet = Fleet::start(
        "redis-pool",
        redis.url(),
        &STREAMS,
        Duration::from_millis(200),
        Timers::default(),
    )
    .await;
    fleet.tenant_limit = Some(LIMIT as u32);
    let sampler = Sampler::start(&fleet, &STREAMS, LIMIT, None);
    for pair in STREAMS.chunks(2) {
        fleet.add_pod(pair).await;
    }
    let took = wait_full(&fleet, Duration::from_secs(10), "after the starts").await;
    eprintln!(
        "three pods started: {:?} connected after {took:?}",
        connected(&fleet)
    );
    sleep(Duration::from_secs(3)).await;

    // Who streams, by /status: ACTIVE entries agree with the emulator.
    let mut active: Vec<(usize, String)> = Vec::new();
    for (i, pair) in STREAMS.chunks(2).enumerate() {
        let doc = fleet.status(i).await.expect("/status");
        for name in pair {
            let entry = streamkeeper_e2e::process::stream_entry(&doc, &stream_id(name))
                .cloned()
                .unwrap_or_default();
            if owns_active(&entry) {
                active.push((i, name.to_string()));
            }
        }
    }
    let mut by_emulator: Vec<String> = connected(&fleet).iter().map(|s| s.to_string()).collect();
    let mut by_status: Vec<String> = active.iter().map(|(_, s)| s.clone()).collect();
    by_emulator.sort();
    by_status.sort();
    assert_eq!(
        by_status, by_emulator,
        "ACTIVE in /status vs connected on the emulator"
    );

    // SIGKILL a pod that streams: its slot comes back after its lease, and the pool fills.
    let victim = active[0].0;
    fleet.kill(victim).await;
    let took = wait_full(&fleet, REFILL_BOUND, "after the kill").await;
    eprintln!(
        "SIGKILL pod-{victim} (streamed {:?}): {:?} connected after {took:?}",
        active
            .iter()
            .filter(|(p, _)| *p == victim)
            .map(|(_, s)| s)
            .collect::<Vec<_>>(),
        connected(&fleet)
    );
    sleep(Duration::from_secs(2)).await;

    // Restart it: its streams contend again; still never more than the limit.
    fleet.restart(victim).await;
    sleep(Duration::from_secs(3)).await;
    let took = wait_full(&fleet, REFILL_BOUND, "after the restart").await;
    let settled = connected(&fleet);
    let samples = sampler.finish().await;
    eprintln!(
        "restarted pod-{victim}: {settled:?} connected ({took:?} to settle); {} samples, at most \
         {} connected, exactly {LIMIT} in {} of them",
        samples.socket_samples, samples.max_sockets, samples.at_limit
    );
    assert!(
        samples.violations.is_empty(),
        "over the tenant limit at {} samples: {:#?}\n{}",
        samples.violations.len(),
        samples.violations.iter().take(20).collect::<Vec<_>>(),
        fleet.diagnostics()
    );
    assert_eq!(settled.len(), LIMIT, "the pool is used once settled");
}
