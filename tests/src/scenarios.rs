//! Scenarios run against more than one Redis deployment (a single node, a Redis Cluster).

use std::time::Duration;

use tokio::time::{Instant, sleep};

use crate::{
    fleet::{Crash, Fleet, Ledger, Sampler, TENANT, Timers, stream_id},
    redis::{KeyWrite, Monitor, Transitions, ckpt_key, fence_violations, lease_key},
};

/// How far the checkpoint may trail the app's acks when the owner crashes.
pub const CHECKPOINT_LAG: Duration = Duration::from_secs(1);

/// Two, then three sidecar processes configured with the same stream, on the Redis at
/// `redis_url` whose tenant keys live on the node at `node_port`. Proves:
///
/// * exactly one pod streams: sampled all along, never two upstream sockets on the emulator and
///   never two pods owning the stream in `/status`;
/// * SIGKILL of the owner: another pod streams within lease TTL + 1 s (from the kill to the
///   emulator's new socket, and to the first `/status` showing the new owner ACTIVE), and a
///   DEAD transition (`owner_lost` or `stale`) is published on `streamkeeper:transitions`
///   within that time;
/// * an app on every pod acks everything: from the first acked id to the last emitted, every
///   id is delivered, and none is delivered again after it was acked, except the ids whose ack
///   was in flight when the owner died (above the checkpoint the next owner resumed from, acked
///   less than [`CHECKPOINT_LAG`] before the kill);
/// * every checkpoint write carries the fence that held the lease (MONITOR history).
pub async fn single_owner_then_sigkill(label: &str, redis_url: String, node_port: u16) {
    let name = "single";
    let id = stream_id(name);
    let timers = Timers::default();
    let bound = timers.timeout + Duration::from_secs(1);
    let monitor = Monitor::start(node_port).await;
    let transitions = Transitions::subscribe(&format!("redis://127.0.0.1:{node_port}")).await;
    let mut fleet =
        Fleet::start(label, redis_url, &[name], Duration::from_millis(50), timers).await;
    let ledger = Ledger::new();
    let mut taps = Vec::new();
    for _ in 0..2 {
        let i = fleet.add_pod(&[name]).await;
        taps.push(ledger.tap(&fleet, i, &id).await);
    }
    let sampler = Sampler::start(&fleet, &[name], 1, Some(id.clone()));
    let started = Instant::now();
    let (first, _, _) = fleet
        .wait_owner(&[0, 1], name, Duration::from_secs(10))
        .await;
    eprintln!(
        "two pods: pod-{first} owns {id} after {:?}",
        started.elapsed()
    );
    assert!(
        ledger.wait(Duration::from_secs(5), |d| d.len() >= 5).await,
        "no events reached the apps\n{}",
        fleet.diagnostics()
    );
    sleep(Duration::from_secs(3)).await;

    let third = fleet.add_pod(&[name]).await;
    taps.push(ledger.tap(&fleet, third, &id).await);
    sleep(Duration::from_secs(3)).await;
    let r = fleet.round(&[0, 1, 2], &id).await;
    let owners: Vec<usize> = r
        .iter()
        .filter(|(_, e)| e.as_ref().is_some_and(crate::fleet::owns))
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(owners.len(), 1, "exactly one owner of three: {r:?}");
    let owner = owners[0];
    let entry = r[owner].1.clone().expect("the owner answered");
    assert_eq!(entry["state"], "ACTIVE", "{entry}");
    assert_eq!(fleet.connections(name), 1, "one upstream socket");
    let before = sampler.samples();
    assert!(
        before.violations.is_empty(),
        "before the kill: {:?}\n{}",
        before.violations,
        fleet.diagnostics()
    );
    let old_fence = entry["fence"].as_u64().expect("the owner's fence");
    eprintln!(
        "three pods: pod-{owner} owns {id} (fence {old_fence}); {} socket samples, {} status rounds, \
         never two owners or two sockets",
        before.socket_samples, before.rounds
    );

    // SIGKILL the owner.
    let others: Vec<usize> = (0..3).filter(|&i| i != owner).collect();
    let sockets_before = fleet.emu.stats().connections_total;
    let killed_at = Instant::now();
    fleet.kill(owner).await;
    let new_socket = {
        let emu = std::sync::Arc::clone(&fleet.emu);
        tokio::spawn(async move {
            loop {
                if emu.stats().connections_total > sockets_before {
                    return Instant::now();
                }
                sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let (next, next_entry, seen) = fleet
        .wait_owner(&others, name, Duration::from_secs(10))
        .await;
    let by_status = seen - killed_at;
    let by_socket = tokio::time::timeout(Duration::from_secs(5), new_socket)
        .await
        .expect("the emulator saw the new owner's socket")
        .expect("the watcher ran")
        - killed_at;
    let dead = transitions
        .wait_for(killed_at, killed_at + bound, |t| {
            t["stream"] == id.as_str() && t["to"] == "DEAD"
        })
        .await;
    eprintln!(
        "SIGKILL pod-{owner}: pod-{next} streams after {by_socket:?} (emulator socket), \
         {by_status:?} (/status ACTIVE, fence {}); DEAD heard: {:?}",
        next_entry["fence"],
        dead.as_ref()
            .map(|(at, t)| (*at - killed_at, t.to_string()))
    );
    assert!(
        by_socket <= bound && by_status <= bound,
        "takeover took {by_socket:?} (socket) / {by_status:?} (status), over lease TTL + 1 s = \
         {bound:?}\n{}",
        fleet.diagnostics()
    );
    let heard = transitions.all();
    assert!(
        dead.is_some(),
        "no DEAD transition for {id} within {bound:?} of the kill; heard: {:?}",
        heard.iter().map(|(_, t)| t.to_string()).collect::<Vec<_>>()
    );

    // Two pods left: still one owner; then everything emitted arrives.
    sleep(Duration::from_secs(2)).await;
    let last = fleet.emitted(name);
    assert!(
        ledger
            .wait(Duration::from_secs(5), |d| d.iter().any(|x| x.seq >= last))
            .await,
        "event {last} never reached an app; last delivered {}\n{}",
        ledger.max_seq(),
        fleet.diagnostics()
    );
    let samples = sampler.finish().await;

    let (lease, ckpt) = (lease_key(TENANT, &id), ckpt_key(TENANT, &id));
    let next_name = fleet.pods[next].name.clone();
    let (history, _, resumed) = monitor.takeover(&lease, &ckpt, &next_name, old_fence).await;
    // Every event the killed pod sent reached its app before that socket's end.
    let gone = ledger
        .wait_ended(owner, killed_at, Duration::from_secs(5))
        .await
        .unwrap_or_else(|| {
            panic!(
                "pod-{owner}'s app socket did not end after SIGKILL\n{}",
                fleet.diagnostics()
            )
        });
    let report = ledger.check(
        last,
        Some(Crash {
            pod: owner,
            at: killed_at,
            until: gone,
            checkpoint: resumed,
            lag: CHECKPOINT_LAG,
        }),
    );
    let fenced = fence_violations(&history);
    eprintln!(
        "{} deliveries over ids {:?}; the new owner resumed after checkpoint {resumed}; in flight at \
         the kill (delivered again): {:?}; {} checkpoint writes, all under the lease's fence: {}; \
         {} socket samples (max {} open), {} status rounds ({} straddled a change)",
        report.deliveries,
        report.range,
        report.in_flight,
        history
            .iter()
            .filter(|w| matches!(w, KeyWrite::Checkpoint { .. }))
            .count(),
        fenced.is_empty(),
        samples.socket_samples,
        samples.max_sockets,
        samples.rounds,
        samples.transient_double_owners,
    );
    fleet.assert_clean(&samples, &report);
    assert!(
        fenced.is_empty(),
        "checkpoints outside the fence: {fenced:#?}"
    );
    for t in taps {
        t.abort();
    }
}
