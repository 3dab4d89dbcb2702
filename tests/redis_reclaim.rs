//! A reclaimed stream never redelivers an id another pod's app acked.
//!
//! Two `streamkeeper sidecar` processes share a stream (heartbeat 500 ms / 3 s). The owner's
//! app goes away, so its hub fills with events nobody acked; then the owner is cut off Redis
//! (a blackholing TCP relay) and the other pod takes over, resuming from the checkpoint, while
//! its app acks everything. After the heal the first pod is a standby that still holds its
//! stale events. The second pod is then stopped (SIGTERM, a handover) and the first takes the
//! stream back under a new fence, and its app connects again: it must resume from the store's
//! checkpoint and drop what it held from before, so across both apps every id from the first
//! to the last is delivered, and none is delivered again.

use std::time::Duration;

use streamkeeper_e2e::{
    fleet::{Fleet, Ledger, Sampler, Timers, owns, stream_id},
    redis::RedisServer,
    relay::Relay,
};
use tokio::time::{Instant, sleep};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reclaimed_stream_resumes_from_the_checkpoint_and_drops_what_it_held() {
    let redis = RedisServer::start();
    let relay = Relay::start(([127, 0, 0, 1], redis.port).into()).await;
    let name = "reclaim";
    let id = stream_id(name);
    let timers = Timers {
        interval: Duration::from_millis(500),
        timeout: Duration::from_secs(3),
        reconnect: Duration::from_millis(50),
    };
    let mut fleet = Fleet::start(
        "redis-reclaim",
        redis.url(),
        &[name],
        Duration::from_millis(50),
        timers,
    )
    .await;
    fleet.checkpoint_window = Duration::from_millis(200);
    let ledger = Ledger::new();
    let first = fleet.add_pod_via(&[name], &relay.redis_url()).await;
    let tap_first = ledger.tap(&fleet, first, &id).await;
    fleet
        .wait_owner(&[first], name, Duration::from_secs(10))
        .await;
    let second = fleet.add_pod(&[name]).await;
    let tap_second = ledger.tap(&fleet, second, &id).await;
    let sampler = Sampler::start(&fleet, &[name], 1, Some(id.clone()));
    assert!(
        ledger.wait(Duration::from_secs(5), |d| d.len() >= 20).await,
        "no events reached the owner's app\n{}",
        fleet.diagnostics()
    );

    // The owner's app leaves: its hub holds what arrives from now on, unacked. Its acks so
    // far reach Redis within the checkpoint window.
    tap_first.abort();
    sleep(Duration::from_secs(1)).await;
    let cut_at = Instant::now();
    relay.blackhole();
    fleet.wait_owner(&[second], name, timers.timeout * 3).await;
    let held = fleet
        .status(first)
        .await
        .ok()
        .and_then(|doc| streamkeeper_e2e::process::stream_entry(&doc, &id).cloned())
        .and_then(|e| e["pendingEvents"].as_u64())
        .unwrap_or(0);
    sleep(Duration::from_secs(6).saturating_sub(cut_at.elapsed())).await;
    relay.heal();
    sleep(timers.timeout + Duration::from_secs(1)).await;
    let r = fleet.round(&[first, second], &id).await;
    assert!(
        r[0].1.as_ref().is_some_and(|e| !owns(e)) && r[1].1.as_ref().is_some_and(owns),
        "after the heal pod-{second} owns and pod-{first} stands by: {r:?}"
    );

    // The second pod hands over; the first takes the stream back and its app returns.
    let handed_at = Instant::now();
    fleet.pods[second].signal("TERM");
    let (_, entry, back_at) = fleet
        .wait_owner(&[first], name, Duration::from_secs(10))
        .await;
    let tap_again = ledger.tap(&fleet, first, &id).await;
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
    let report = ledger.check(last, None);
    eprintln!(
        "pod-{first} held {held} unacked events when pod-{second} took over; pod-{first} took \
         the stream back {:?} after the handover (fence {}); {} deliveries over {:?}, \
         redelivered {:?}, lost {:?}",
        back_at - handed_at,
        entry["fence"],
        report.deliveries,
        report.range,
        report.redelivered,
        report.lost
    );
    assert!(
        held > 0,
        "the first pod held no stale events: the test proves nothing"
    );
    fleet.assert_clean(&samples, &report);
    tap_second.abort();
    tap_again.abort();
}
