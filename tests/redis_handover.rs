//! SIGTERM to the owner (a rolling update): it releases its lease after its last checkpoint and
//! publishes the handover, so a standby streams within 1 s, far under the lease TTL (5 s here);
//! nothing is delivered twice and nothing is lost; the terminated process exits 0. Done twice in
//! a row over three pods, all on one real Redis.

use std::{sync::Arc, time::Duration};

use streamkeeper_e2e::{
    fleet::{Fleet, Ledger, Sampler, Timers, owns, stream_id},
    redis::RedisServer,
};
use tokio::time::{Instant, sleep};

/// How soon a standby must stream after the owner got SIGTERM.
const HANDOVER_BOUND: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_the_stream_to_a_standby_within_a_second_without_loss_or_duplicates() {
    let redis = RedisServer::start();
    let name = "handover";
    let id = stream_id(name);
    let timers = Timers {
        timeout: Duration::from_secs(5),
        ..Timers::default()
    };
    let mut fleet = Fleet::start(
        "redis-handover",
        redis.url(),
        &[name],
        Duration::from_millis(50),
        timers,
    )
    .await;
    let ledger = Ledger::new();
    let mut taps = Vec::new();
    for _ in 0..3 {
        let i = fleet.add_pod(&[name]).await;
        taps.push(ledger.tap(&fleet, i, &id).await);
    }
    let sampler = Sampler::start(&fleet, &[name], 1, Some(id.clone()));
    let (mut owner, _, _) = fleet
        .wait_owner(&[0, 1, 2], name, Duration::from_secs(10))
        .await;
    assert!(
        ledger.wait(Duration::from_secs(5), |d| d.len() >= 5).await,
        "no events reached the apps\n{}",
        fleet.diagnostics()
    );
    let mut live: Vec<usize> = vec![0, 1, 2];

    for round in 1..=2 {
        sleep(Duration::from_secs(2)).await;
        let fence = fleet
            .round(&[owner], &id)
            .await
            .remove(0)
            .1
            .filter(owns)
            .and_then(|e| e["fence"].as_u64())
            .unwrap_or_else(|| panic!("pod-{owner} no longer owns {id}"));
        live.retain(|&i| i != owner);
        let sockets_before = fleet.emu.stats().connections_total;
        let new_socket = {
            let emu = Arc::clone(&fleet.emu);
            tokio::spawn(async move {
                loop {
                    if emu.stats().connections_total > sockets_before {
                        return Instant::now();
                    }
                    sleep(Duration::from_millis(5)).await;
                }
            })
        };
        let asked = Instant::now();
        fleet.pods[owner].proc.terminate();
        let (next, entry, seen) = fleet.wait_owner(&live, name, Duration::from_secs(10)).await;
        let by_status = seen - asked;
        let by_socket = tokio::time::timeout(Duration::from_secs(5), new_socket)
            .await
            .expect("the emulator saw the new owner's socket")
            .expect("the watcher ran")
            - asked;
        let pod = &mut fleet.pods[owner];
        let exit = pod.proc.wait(Duration::from_secs(10)).await;
        eprintln!(
            "handover {round}: SIGTERM pod-{owner} (fence {fence}); pod-{next} streams after \
             {by_socket:?} (emulator socket), {by_status:?} (/status ACTIVE, fence {}); exit {exit:?} \
             after {:?}",
            entry["fence"],
            asked.elapsed()
        );
        let exit = exit.unwrap_or_else(|| {
            panic!(
                "pod-{owner} still runs 10 s after SIGTERM; stderr:\n{}",
                pod.proc.stderr_text()
            )
        });
        assert!(
            exit.success(),
            "SIGTERM must exit 0, got {exit}; stderr:\n{}",
            pod.proc.stderr_text()
        );
        assert!(
            by_socket <= HANDOVER_BOUND && by_status <= HANDOVER_BOUND,
            "handover took {by_socket:?} (socket) / {by_status:?} (status), over {HANDOVER_BOUND:?} \
             (the lease TTL is {:?})\n{}",
            timers.timeout,
            fleet.diagnostics()
        );
        owner = next;
    }

    sleep(Duration::from_secs(1)).await;
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
    let report = ledger.check(last, None);
    eprintln!(
        "{} deliveries over ids {:?}, dropped frames {:?}; {} socket samples (max {} open), {} \
         status rounds ({} straddled a handover)",
        report.deliveries,
        report.range,
        report.dropped,
        samples.socket_samples,
        samples.max_sockets,
        samples.rounds,
        samples.transient_double_owners
    );
    fleet.assert_clean(&samples, &report);
    for t in taps {
        t.abort();
    }
}
