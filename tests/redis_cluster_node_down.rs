//! A real three-master Redis Cluster, two `streamkeeper sidecar` processes, three streams of
//! three tenants whose hash slots live on three different masters (heartbeat 500 ms / 4 s).
//! The master holding one tenant's slot is killed for twice the lease, then started again
//! (empty, same identity and slots).
//!
//! Proves: that tenant's stream stops within its lease (its owner's app hears `dropped`
//! owner_lost, and nothing more is delivered while its slot is unserved), and streams again on
//! a pod when the slot is served again, with nothing lost and nothing acked delivered again;
//! the other tenants' streams never stop (no `dropped`, never silent for more than 1.5 s), and
//! at no moment do two pods stream the same stream. `streamkeeper_redis_up` reads 0 on every
//! pod while the master is down (steadily: the other masters' answers do not flip it) and 1
//! again once it serves; `/status` names the tenant whose node does not answer.

use std::{collections::HashMap, sync::Arc, time::Duration};

use streamkeeper_e2e::{
    fleet::{Fleet, Ledger, Sampler, Timers, plain_metric, stream_id},
    redis::RedisCluster,
};
use tokio::time::{Instant, sleep};

const TTL: Duration = Duration::from_secs(4);
/// The longest a stream on a live node may go without an event (one every 50 ms upstream).
const MAX_SILENCE: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_master_stops_only_its_tenants_streams_and_they_resume_when_it_serves_again() {
    let mut cluster = RedisCluster::start();
    // One tenant per master.
    let mut tenants: Vec<(String, u16)> = Vec::new();
    for i in 0..64 {
        let t = format!("tenant-{i}");
        let port = cluster.node_of(&format!("sk:{{{t}}}:live"));
        if tenants.iter().all(|(_, p)| *p != port) {
            tenants.push((t, port));
        }
    }
    assert!(tenants.len() >= 3, "{tenants:?}");
    let names = ["down", "up-a", "up-b"];
    let timers = Timers {
        interval: Duration::from_millis(500),
        timeout: TTL,
        reconnect: Duration::from_millis(50),
    };
    let mut fleet = Fleet::start(
        "redis-cluster-node-down",
        cluster.url(),
        &names,
        Duration::from_millis(50),
        timers,
    )
    .await;
    fleet.tenants = names
        .iter()
        .zip(&tenants)
        .map(|(n, (t, _))| (n.to_string(), t.clone()))
        .collect::<HashMap<_, _>>();
    let down_node = tenants[0].1;
    let ledgers: Vec<Arc<Ledger>> = names.iter().map(|_| Ledger::new()).collect();
    let mut taps = Vec::new();
    for _ in 0..2 {
        let i = fleet.add_pod(&names).await;
        for (n, l) in names.iter().zip(&ledgers) {
            taps.push(l.tap(&fleet, i, &stream_id(n)).await);
        }
    }
    let sampler = Sampler::start(&fleet, &names, names.len(), None);
    for n in names {
        fleet.wait_owner(&[0, 1], n, Duration::from_secs(10)).await;
    }
    for (n, l) in names.iter().zip(&ledgers) {
        assert!(
            l.wait(Duration::from_secs(5), |d| d.len() >= 10).await,
            "no events of {n} reached an app\n{}",
            fleet.diagnostics()
        );
    }
    sleep(Duration::from_secs(1)).await;

    let down_at = Instant::now();
    cluster.stop_node(down_node);
    // While the master is down, every pod's `streamkeeper_redis_up` reads 0 and its /status
    // names that tenant, steadily, although the other masters answer every call: once each
    // pod called the tenant's node (beats and lease looks every 500 ms; a call to the stopped
    // node fails within the store's 2 s operation timeout), every sample until the restart.
    let settled = down_at + Duration::from_secs(3);
    let mut gauge_samples = 0;
    let mut gauge_wrong = Vec::new();
    while down_at.elapsed() < TTL * 2 {
        sleep(Duration::from_millis(200)).await;
        if Instant::now() < settled {
            continue;
        }
        for i in 0..2 {
            let up = fleet
                .metrics(i)
                .await
                .ok()
                .and_then(|m| plain_metric(&m, "streamkeeper_redis_up"));
            let down_tenants = fleet
                .status(i)
                .await
                .ok()
                .map(|doc| doc["storeDownTenants"].clone());
            gauge_samples += 1;
            if up != Some(0.0) || down_tenants != Some(serde_json::json!([tenants[0].0])) {
                gauge_wrong.push((i, down_at.elapsed(), up, down_tenants));
            }
        }
    }
    let stopped_for = down_at.elapsed();
    let up_at = Instant::now();
    cluster.restart_node(down_node);
    let served_at = Instant::now();
    eprintln!(
        "redis_up while master {down_node} was down: {gauge_samples} samples of both pods, \
         {} not 0 with [{}] down: {gauge_wrong:?}",
        gauge_wrong.len(),
        tenants[0].0
    );
    assert!(
        gauge_samples >= 10 && gauge_wrong.is_empty(),
        "redis_up / storeDownTenants not steady while a master was down: {gauge_wrong:?} of \
         {gauge_samples}\n{}",
        fleet.diagnostics()
    );
    let resumed = ledgers[0]
        .wait(TTL + Duration::from_secs(3), |d| {
            d.iter().any(|x| x.at >= served_at)
        })
        .await;
    sleep(Duration::from_secs(2)).await;
    // Up again once the tenant's node answers: both pods, within the lease.
    let deadline = served_at + TTL + Duration::from_secs(3);
    let mut back_up = [false; 2];
    while !back_up.iter().all(|b| *b) && Instant::now() < deadline {
        for (i, b) in back_up.iter_mut().enumerate() {
            *b = fleet
                .metrics(i)
                .await
                .ok()
                .and_then(|m| plain_metric(&m, "streamkeeper_redis_up"))
                == Some(1.0);
        }
        sleep(Duration::from_millis(100)).await;
    }
    assert!(
        back_up.iter().all(|b| *b),
        "redis_up did not read 1 again on every pod once the master served: {back_up:?}\n{}",
        fleet.diagnostics()
    );

    let samples = sampler.finish().await;
    let mut reports = Vec::new();
    for (n, l) in names.iter().zip(&ledgers) {
        let last = fleet.emitted(n);
        assert!(
            l.wait(Duration::from_secs(5), |d| d.iter().any(|x| x.seq >= last))
                .await,
            "event {last} of {n} never reached an app\n{}",
            fleet.diagnostics()
        );
        reports.push(l.check(last, None));
    }
    let down = &ledgers[0];
    let dropped_down = down
        .dropped()
        .iter()
        .filter(|(_, r, at)| r == "owner_lost" && *at >= down_at)
        .map(|(p, _, at)| (*p, *at - down_at))
        .min_by_key(|(_, d)| *d);
    let delivered_unserved = down
        .deliveries()
        .iter()
        .filter(|d| d.at >= down_at + TTL && d.at < up_at)
        .count();
    let back_after = down
        .deliveries()
        .iter()
        .filter(|d| d.at >= served_at)
        .map(|d| d.at - served_at)
        .min();
    eprintln!(
        "master {down_node} down {stopped_for:?} (restart took {:?}): `{}` dropped owner_lost at \
         {dropped_down:?}, {delivered_unserved} events past its lease while unserved, back \
         {back_after:?} after the slot was served again",
        served_at - up_at,
        names[0]
    );
    assert!(
        dropped_down.is_some_and(|(_, d)| d <= TTL),
        "the stream on the stopped master did not stop within its lease: {:?}\n{}",
        down.dropped(),
        fleet.diagnostics()
    );
    assert_eq!(
        delivered_unserved, 0,
        "events delivered while its slot was unserved"
    );
    assert!(
        resumed && back_after.is_some_and(|d| d <= TTL + Duration::from_secs(1)),
        "`{}` did not stream again once its slot was served: {back_after:?}\n{}",
        names[0],
        fleet.diagnostics()
    );
    for ((n, l), report) in names.iter().zip(&ledgers).zip(&reports).skip(1) {
        let deliveries = l.deliveries();
        let silence = deliveries
            .windows(2)
            .filter(|w| w[1].at >= down_at && w[0].at <= served_at)
            .map(|w| w[1].at - w[0].at)
            .max()
            .unwrap_or(Duration::MAX);
        eprintln!(
            "`{n}` (another master): longest silence {silence:?}, dropped {:?}",
            l.dropped()
        );
        assert!(
            silence <= MAX_SILENCE && l.dropped().is_empty(),
            "`{n}` on a live master stopped: silence {silence:?}, dropped {:?}\n{}",
            l.dropped(),
            fleet.diagnostics()
        );
        fleet.assert_clean(&samples, report);
    }
    fleet.assert_clean(&samples, &reports[0]);
    for t in taps {
        t.abort();
    }
}
