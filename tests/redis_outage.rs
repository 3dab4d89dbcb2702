//! Redis killed (SIGKILL: a crash, not a pause) and restarted empty on the same port, with an
//! owner and a standby running (heartbeat 500 ms / 4 s, so a 4 s lease). The lease rule:
//!
//! * Down for less than the lease (1.5 s): invisible to the app. It never goes more than
//!   1.5 s without an event, hears no `dropped`, the emulator sees no new socket, and the owner
//!   re-asserts its lease with its own fence in the empty Redis; the standby stays a standby.
//! * Down for longer than the lease (8 s): the owner cannot tell "Redis is down for everyone"
//!   from "I alone am cut off", so at its lease deadline it stops: its app hears `dropped`
//!   (owner_lost) and nothing more is forwarded. When Redis returns (empty) the owner
//!   re-asserts and streams again within one lease TTL, resuming where its app stopped:
//!   nothing lost (the platform replays), no acked id delivered again, never two owners.

use std::time::Duration;

use streamkeeper_e2e::{
    fleet::{Fleet, Ledger, Sampler, TENANT, Timers, owns, plain_metric, stream_id},
    redis::{RedisServer, get, lease_key},
};
use tokio::time::{Instant, sleep};

/// The lease TTL (`heartbeat.timeout`).
const TTL: Duration = Duration::from_secs(4);
/// How soon the owner must have re-asserted its lease in the restarted Redis.
const REASSERT_BOUND: Duration = Duration::from_secs(3);
/// The longest the app may go without an event around an outage shorter than the lease
/// (one event every 50 ms upstream).
const MAX_SILENCE: Duration = Duration::from_millis(1500);

/// The two scenarios each run a Redis and two sidecars: one at a time, so neither starves the
/// other's timers on a small machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Setup {
    redis: RedisServer,
    fleet: Fleet,
    ledger: std::sync::Arc<Ledger>,
    taps: Vec<tokio::task::JoinHandle<()>>,
    sampler: Sampler,
    owner: usize,
    standby: usize,
    fence: u64,
    connection: serde_json::Value,
    lease: String,
    id: String,
}

async fn setup(label: &str, name: &str) -> Setup {
    let redis = RedisServer::start();
    let id = stream_id(name);
    let timers = Timers {
        interval: Duration::from_millis(500),
        timeout: TTL,
        reconnect: Duration::from_millis(50),
    };
    let mut fleet = Fleet::start(
        label,
        redis.url(),
        &[name],
        Duration::from_millis(50),
        timers,
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
    let fence = entry["fence"].as_u64().expect("a fence");
    let connection = entry["connection"].clone();
    assert!(
        ledger.wait(Duration::from_secs(5), |d| d.len() >= 10).await,
        "no events reached the apps\n{}",
        fleet.diagnostics()
    );
    sleep(Duration::from_secs(1)).await;
    let lease = lease_key(TENANT, &id);
    assert_eq!(
        get(redis.port, &lease),
        Ok(Some(format!("{fence}:{}", fleet.pods[owner].name))),
        "the lease before the outage"
    );
    Setup {
        redis,
        fleet,
        ledger,
        taps,
        sampler,
        owner,
        standby: 1 - owner,
        fence,
        connection,
        lease,
        id,
    }
}

/// Waits until the lease in Redis reads `expected`; how long after `from` it did.
async fn wait_lease(s: &Setup, expected: &str, from: Instant) -> Option<Duration> {
    let deadline = from + REASSERT_BOUND;
    while Instant::now() < deadline {
        if get(s.redis.port, &s.lease).ok().flatten().as_deref() == Some(expected) {
            return Some(from.elapsed());
        }
        sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_shorter_than_the_lease_is_invisible_to_the_app() {
    let _one_at_a_time = SERIAL.lock().await;
    let name = "short-outage";
    let mut s = setup("redis-short-outage", name).await;
    let expected = format!("{}:{}", s.fence, s.fleet.pods[s.owner].name);
    let sockets_before = s.fleet.emu.stats().connections_total;
    let outage = Duration::from_millis(1500);
    let down_at = Instant::now();
    s.redis.stop();
    let mut owner_down_seen = false;
    while down_at.elapsed() < outage {
        let m = s.fleet.metrics(s.owner).await.unwrap_or_default();
        owner_down_seen |= plain_metric(&m, "streamkeeper_redis_up") == Some(0.0);
        sleep(Duration::from_millis(100)).await;
    }
    s.redis.restart();
    let up_at = Instant::now();
    let reasserted = wait_lease(&s, &expected, up_at).await;
    sleep(Duration::from_secs(2)).await;
    let r = s.fleet.round(&[s.owner, s.standby], &s.id).await;
    let last = s.fleet.emitted(name);
    assert!(
        s.ledger
            .wait(Duration::from_secs(5), |d| d.iter().any(|x| x.seq >= last))
            .await,
        "event {last} never reached an app\n{}",
        s.fleet.diagnostics()
    );
    let samples = s.sampler.finish().await;
    let report = s.ledger.check(last, None);
    let deliveries = s.ledger.deliveries();
    let silence = deliveries
        .windows(2)
        .filter(|w| w[1].at >= down_at && w[0].at <= up_at + Duration::from_secs(2))
        .map(|w| w[1].at - w[0].at)
        .max()
        .unwrap_or(outage);
    let new_sockets = s.fleet.emu.stats().connections_total - sockets_before;
    let dropped = s.ledger.dropped();
    eprintln!(
        "Redis down {outage:?}: longest silence {silence:?}; lease {expected} re-asserted \
         {reasserted:?} after the restart; {new_sockets} new upstream sockets; dropped {dropped:?}; \
         owner saw redis_up 0: {owner_down_seen}"
    );
    assert!(
        silence <= MAX_SILENCE,
        "the app went {silence:?} without an event\n{}",
        s.fleet.diagnostics()
    );
    assert!(
        dropped.is_empty() && new_sockets == 0,
        "the outage reached the app: dropped {dropped:?}, {new_sockets} new upstream sockets\n{}",
        s.fleet.diagnostics()
    );
    assert!(
        reasserted.is_some(),
        "lease {expected} not re-asserted within {REASSERT_BOUND:?}; now {:?}\n{}",
        get(s.redis.port, &s.lease),
        s.fleet.diagnostics()
    );
    assert!(owner_down_seen, "the owner never reported redis_up 0");
    let owner_after = r[0].1.clone().unwrap_or_default();
    assert!(
        owns(&owner_after) && owner_after["connection"] == s.connection,
        "pod-{} should still stream on {}: {owner_after}",
        s.owner,
        s.connection
    );
    assert!(
        r[1].1.as_ref().is_some_and(|e| !owns(e)),
        "the standby took the stream: {:?}",
        r[1].1
    );
    s.fleet.assert_clean(&samples, &report);
    for t in s.taps {
        t.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_lease_stops_the_stream_and_it_resumes_without_loss() {
    let _one_at_a_time = SERIAL.lock().await;
    let name = "long-outage";
    let mut s = setup("redis-long-outage", name).await;
    let expected = format!("{}:{}", s.fence, s.fleet.pods[s.owner].name);
    let outage = TTL * 2;
    let down_at = Instant::now();
    s.redis.stop();
    // The owner stops at its lease deadline: its app hears `dropped` owner_lost.
    let dropped_seen = {
        let deadline = down_at + TTL + Duration::from_secs(2);
        loop {
            let d = s.ledger.dropped();
            if let Some((_, _, at)) = d
                .iter()
                .find(|(p, r, at)| *p == s.owner && r == "owner_lost" && *at >= down_at)
            {
                break Some(*at - down_at);
            }
            if Instant::now() > deadline {
                break None;
            }
            sleep(Duration::from_millis(20)).await;
        }
    };
    let stopped = s
        .ledger
        .deliveries()
        .iter()
        .filter(|d| d.at >= down_at)
        .map(|d| d.at)
        .max();
    sleep(outage.saturating_sub(down_at.elapsed())).await;
    let during_late = s
        .ledger
        .deliveries()
        .iter()
        .filter(|d| d.at >= down_at + TTL)
        .count();
    s.redis.restart();
    let up_at = Instant::now();
    let reasserted = wait_lease(&s, &expected, up_at).await;
    let resumed = s
        .ledger
        .wait(TTL + Duration::from_secs(2), |d| {
            d.iter().any(|x| x.at >= up_at)
        })
        .await;
    let first_after = s
        .ledger
        .deliveries()
        .iter()
        .filter(|d| d.at >= up_at)
        .map(|d| d.at - up_at)
        .min();
    sleep(Duration::from_secs(2)).await;
    let last = s.fleet.emitted(name);
    assert!(
        s.ledger
            .wait(Duration::from_secs(5), |d| d.iter().any(|x| x.seq >= last))
            .await,
        "event {last} never reached an app; last delivered {}\n{}",
        s.ledger.max_seq(),
        s.fleet.diagnostics()
    );
    let r = s.fleet.round(&[s.owner, s.standby], &s.id).await;
    let samples = s.sampler.finish().await;
    let report = s.ledger.check(last, None);
    eprintln!(
        "Redis down {outage:?}: the owner's app heard dropped owner_lost {dropped_seen:?} in, its \
         last event {:?} in; {during_late} events delivered past the lease; lease {expected} \
         re-asserted {reasserted:?} after the restart; first event {first_after:?} after the \
         restart; {} deliveries over {:?}, redelivered {:?}, lost {:?}",
        stopped.map(|at| at - down_at),
        report.deliveries,
        report.range,
        report.redelivered,
        report.lost,
    );
    assert!(
        dropped_seen.is_some_and(|d| d <= TTL),
        "the owner's app did not hear `dropped` owner_lost within the lease: {:?}\n{}",
        s.ledger.dropped(),
        s.fleet.diagnostics()
    );
    assert_eq!(
        during_late, 0,
        "events reached an app after the lease ran out, with Redis down"
    );
    assert!(
        resumed && first_after.is_some_and(|d| d <= TTL),
        "the stream did not stream again within {TTL:?} of Redis's return: {first_after:?}\n{}",
        s.fleet.diagnostics()
    );
    assert!(
        reasserted.is_some(),
        "lease {expected} not re-asserted; now {:?}\n{}",
        get(s.redis.port, &s.lease),
        s.fleet.diagnostics()
    );
    assert!(
        r[0].1.as_ref().is_some_and(owns) && r[1].1.as_ref().is_some_and(|e| !owns(e)),
        "the owner streams again and the standby stands by: {r:?}"
    );
    // Nothing lost, no acked id delivered again, never two owners or two sockets.
    s.fleet.assert_clean(&samples, &report);
    for t in s.taps {
        t.abort();
    }
}
