//! Redis killed for 30 s (SIGKILL: a crash, not a pause) and restarted empty on the same port,
//! with an owner and a standby running: during the outage the stream keeps streaming on the
//! same upstream socket (the app keeps receiving, the emulator keeps one socket, `/status`
//! keeps the connection id) and `/metrics` reads `streamkeeper_redis_up 0`; after the restart
//! the owner re-asserts its lease with its fence (the key is back in the empty Redis), `redis_up`
//! reads 1 again, and at no sample are there two owners or two upstream sockets. Nothing acked
//! is delivered twice and nothing is lost.

use std::time::Duration;

use streamkeeper_e2e::{
    fleet::{Fleet, Ledger, Sampler, TENANT, Timers, owns, plain_metric, stream_id},
    redis::{Monitor, RedisServer, ckpt_key, get, lease_key},
};
use tokio::time::{Instant, sleep};

/// How long Redis stays down.
const OUTAGE: Duration = Duration::from_secs(30);
/// How soon `streamkeeper_redis_up` must follow Redis going away or coming back.
const METRIC_BOUND: Duration = Duration::from_secs(3);
/// How soon the owner must have re-asserted its lease in the restarted Redis.
const REASSERT_BOUND: Duration = Duration::from_secs(3);
/// The longest the app may go without an event during the outage (one every 50 ms).
const MAX_SILENCE: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_survive_a_30s_redis_outage_and_ownership_is_reasserted_in_an_empty_redis() {
    let mut redis = RedisServer::start();
    let name = "outage";
    let id = stream_id(name);
    let (lease, ckpt) = (lease_key(TENANT, &id), ckpt_key(TENANT, &id));
    let mut fleet = Fleet::start(
        "redis-outage",
        redis.url(),
        &[name],
        Duration::from_millis(50),
        Timers::default(),
    )
    .await;
    let ledger = Ledger::new();
    let mut taps = Vec::new();
    for _ in 0..2 {
        let i = fleet.add_pod(&[name]).await;
        taps.push(ledger.tap(&fleet, i, &id).await);
    }
    let sampler = Sampler::start(&fleet, &[name], 1, Some(id.clone()));
    let (owner, entry, _) = fleet
        .wait_owner(&[0, 1], name, Duration::from_secs(10))
        .await;
    let standby = 1 - owner;
    let owner_name = fleet.pods[owner].name.clone();
    let fence = entry["fence"].as_u64().expect("a fence");
    let connection = entry["connection"].clone();
    assert!(connection.is_string(), "{entry}");
    assert!(
        ledger.wait(Duration::from_secs(5), |d| d.len() >= 5).await,
        "no events reached the apps\n{}",
        fleet.diagnostics()
    );
    sleep(Duration::from_secs(2)).await;
    let expected_lease = format!("{fence}:{owner_name}");
    assert_eq!(
        get(redis.port, &lease),
        Ok(Some(expected_lease.clone())),
        "the lease before the outage"
    );
    for i in [owner, standby] {
        let m = fleet.metrics(i).await.expect("metrics");
        assert_eq!(
            plain_metric(&m, "streamkeeper_redis_up"),
            Some(1.0),
            "pod-{i}"
        );
    }
    eprintln!(
        "pod-{owner} owns {id} (fence {fence}) on {connection}; killing Redis for {OUTAGE:?}"
    );

    // The outage.
    let sockets_before = fleet.emu.stats().connections_total;
    let down_at = Instant::now();
    redis.stop();
    let mut problems: Vec<String> = Vec::new();
    let mut down_seen: [Option<Duration>; 2] = [None, None];
    let mut checks = 0u32;
    while down_at.elapsed() < OUTAGE {
        sleep(Duration::from_millis(200)).await;
        checks += 1;
        let at = down_at.elapsed();
        match fleet.status(owner).await {
            Ok(doc) => {
                let e = streamkeeper_e2e::process::stream_entry(&doc, &id).cloned();
                let ok = e.as_ref().is_some_and(|e| {
                    owns(e) && e["connection"] == connection && e["state"] == "ACTIVE"
                });
                if !ok {
                    problems.push(format!("+{at:.1?}: the owner's entry changed: {e:?}"));
                }
            }
            Err(e) => problems.push(format!("+{at:.1?}: the owner's /status: {e}")),
        }
        for (slot, i) in [owner, standby].into_iter().enumerate() {
            let up = fleet
                .metrics(i)
                .await
                .ok()
                .and_then(|m| plain_metric(&m, "streamkeeper_redis_up"));
            match (up.map(|v| v == 0.0), down_seen[slot]) {
                (Some(true), None) => down_seen[slot] = Some(at),
                (Some(false), Some(_)) => problems.push(format!(
                    "+{at:.1?}: pod-{i} redis_up back to {up:?} while Redis is down"
                )),
                (None, _) => problems.push(format!("+{at:.1?}: pod-{i} /metrics unreadable")),
                _ => {}
            }
        }
    }
    let outage_ended = Instant::now();

    // Restart, empty, on the same port.
    let marks: Vec<usize> = fleet.pods.iter().map(|p| p.proc.stderr.len()).collect();
    redis.restart();
    let up_at = Instant::now();
    // What the pods ask first of the empty Redis (attached as soon as it answers PING).
    let monitor = Monitor::start(redis.port).await;
    let mut reasserted = None;
    let mut up_seen: [Option<Duration>; 2] = [None, None];
    while up_at.elapsed() < REASSERT_BOUND.max(METRIC_BOUND) {
        if reasserted.is_none()
            && get(redis.port, &lease).ok().flatten() == Some(expected_lease.clone())
        {
            reasserted = Some(up_at.elapsed());
        }
        for (slot, i) in [owner, standby].into_iter().enumerate() {
            if up_seen[slot].is_none()
                && fleet
                    .metrics(i)
                    .await
                    .ok()
                    .and_then(|m| plain_metric(&m, "streamkeeper_redis_up"))
                    == Some(1.0)
            {
                up_seen[slot] = Some(up_at.elapsed());
            }
        }
        if reasserted.is_some() && up_seen.iter().all(Option::is_some) {
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }
    let lease_now = get(redis.port, &lease);
    eprintln!(
        "outage: {checks} checks over {:?}; redis_up 0 seen after {down_seen:?} (owner, standby); \
         restarted empty: lease {expected_lease:?} back after {reasserted:?}, redis_up 1 after \
         {up_seen:?}; lease now {lease_now:?}",
        outage_ended - down_at
    );

    // Afterwards: the same owner and socket; the standby stays a standby.
    sleep(Duration::from_secs(3)).await;
    let first_after: Vec<String> = monitor
        .lines()
        .into_iter()
        .filter(|l| !l.contains("\"PING\"") && !l.contains("\"ping\""))
        .take(12)
        .map(|l| l.chars().take(220).collect())
        .collect();
    eprintln!(
        "first commands in the restarted Redis:\n  {}",
        first_after.join("\n  ")
    );
    for (i, p) in fleet.pods.iter().enumerate() {
        let after: Vec<String> = p.proc.stderr.all().into_iter().skip(marks[i]).collect();
        let skipped = after.len().saturating_sub(20);
        eprintln!(
            "{} after the restart ({skipped} lines skipped):\n  {}",
            p.name,
            after[skipped..].join("\n  ")
        );
    }
    let r = fleet.round(&[owner, standby], &id).await;
    let new_sockets = fleet.emu.stats().connections_total - sockets_before;
    let dropped = ledger.dropped();
    let last = fleet.emitted(name);
    assert!(
        ledger
            .wait(Duration::from_secs(5), |d| d.iter().any(|x| x.seq >= last))
            .await,
        "event {last} never reached an app; last delivered {}\n{}",
        ledger.max_seq(),
        fleet.diagnostics()
    );
    let ckpt_now = get(redis.port, &ckpt);
    let samples = sampler.finish().await;
    let report = ledger.check(last, None);
    let deliveries = ledger.deliveries();
    let silence = deliveries
        .windows(2)
        .filter(|w| w[1].at >= down_at && w[0].at <= outage_ended)
        .map(|w| w[1].at - w[0].at)
        .max()
        .unwrap_or(OUTAGE);
    let during = deliveries
        .iter()
        .filter(|d| d.at >= down_at && d.at <= outage_ended)
        .count();
    eprintln!(
        "{during} events delivered during the outage, longest silence {silence:?}; {} deliveries \
         over ids {:?}; checkpoint after the restart {ckpt_now:?}; {} socket samples (max {} \
         open), {} status rounds ({} straddled a change); new upstream sockets since the \
         outage began: {new_sockets}; `dropped` frames: {}",
        report.deliveries,
        report.range,
        samples.socket_samples,
        samples.max_sockets,
        samples.rounds,
        samples.transient_double_owners,
        dropped.len()
    );

    assert!(
        problems.is_empty(),
        "during the outage: {problems:#?}\n{}",
        fleet.diagnostics()
    );
    // The connection id alone cannot tell (a pod's new session numbers its sockets from 1
    // again): the emulator counts every socket it accepts, and the app hears every drop.
    assert!(
        new_sockets == 0 && dropped.is_empty(),
        "the stream was interrupted around the outage: {new_sockets} new upstream sockets, \
         `dropped` frames {:?}\n{}",
        dropped
            .iter()
            .map(|(p, r, at)| (p, r, at.saturating_duration_since(up_at)))
            .collect::<Vec<_>>(),
        fleet.diagnostics()
    );
    for (slot, i) in [owner, standby].into_iter().enumerate() {
        assert!(
            down_seen[slot].is_some_and(|d| d <= METRIC_BOUND),
            "pod-{i}: streamkeeper_redis_up 0 first seen {:?} into the outage (bound {METRIC_BOUND:?})",
            down_seen[slot]
        );
        assert!(
            up_seen[slot].is_some(),
            "pod-{i}: streamkeeper_redis_up not 1 within {METRIC_BOUND:?} of the restart"
        );
    }
    assert!(
        silence <= MAX_SILENCE,
        "the app went {silence:?} without an event during the outage\n{}",
        fleet.diagnostics()
    );
    assert!(
        reasserted.is_some(),
        "the owner did not re-assert its lease {expected_lease:?} within {REASSERT_BOUND:?} of the \
         restart; lease now {lease_now:?}\n{}",
        fleet.diagnostics()
    );
    let owner_after = r[0].1.clone().unwrap_or_default();
    assert!(
        owns(&owner_after) && owner_after["connection"] == connection,
        "after the restart pod-{owner} should still stream on {connection}: {owner_after}"
    );
    assert!(
        r[1].1.as_ref().is_some_and(|e| !owns(e)),
        "the standby took the stream: {:?}",
        r[1].1
    );
    assert!(
        matches!(ckpt_now, Ok(Some(_))),
        "no checkpoint written after the restart: {ckpt_now:?}"
    );
    fleet.assert_clean(&samples, &report);
    for t in taps {
        t.abort();
    }
}
