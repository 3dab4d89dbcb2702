//! A frozen owner (SIGSTOP past its lease: a long GC pause, a stalled VM) while a standby takes
//! the stream over; SIGCONT: the frozen pod tears its stream down when it wakes (its `/status`
//! stops claiming the stream, its app hears `dropped` owner_lost or has its socket reset, its
//! upstream socket goes), it never writes a checkpoint with its old fence, and no acked event
//! reaches any app again.
//!
//! How "never writes a checkpoint with its old fence" is proven: `redis-cli monitor` records
//! every command Redis executes, scripts' own commands included (`[0 lua] "MSET" ckpt id`, right
//! after the `EVALSHA` that ran them: a script is atomic). From it the test rebuilds, in
//! execution order, every write of the stream's lease key (`{fence}:{owner}`) and checkpoint key,
//! each checkpoint write attributed to the fence argument of the script call that made it. Every
//! checkpoint write must carry the fence of the lease holder at that moment; the frozen pod's
//! calls with its old fence after the takeover are listed (refused attempts are allowed, writes
//! are not).

use std::time::Duration;

use streamkeeper_e2e::{
    fleet::{Crash, Fleet, Heard, Ledger, Sampler, TENANT, Timers, owns, stream_id},
    redis::{KeyWrite, Monitor, RedisServer, ckpt_key, fence_violations, lease_key},
    scenarios::CHECKPOINT_LAG,
};
use tokio::time::{Instant, sleep};

/// How soon the woken pod must have torn its stream down.
const TEARDOWN_BOUND: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_frozen_past_its_lease_tears_down_on_wake_and_never_checkpoints_with_its_old_fence() {
    let redis = RedisServer::start();
    let name = "frozen";
    let id = stream_id(name);
    let (lease, ckpt) = (lease_key(TENANT, &id), ckpt_key(TENANT, &id));
    let timers = Timers::default();
    let ttl = timers.timeout;
    let monitor = Monitor::start(redis.port).await;
    let mut fleet = Fleet::start(
        "redis-frozen",
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
    let (frozen, entry, _) = fleet
        .wait_owner(&[0, 1], name, Duration::from_secs(10))
        .await;
    let old_fence = entry["fence"].as_u64().expect("a fence");
    let standby = 1 - frozen;
    assert!(
        ledger.wait(Duration::from_secs(5), |d| d.len() >= 5).await,
        "no events reached the apps\n{}",
        fleet.diagnostics()
    );
    sleep(Duration::from_secs(2)).await;

    // Freeze the owner past its lease. Its upstream socket stays open in the kernel meanwhile
    // (a stopped process cannot close it): two sockets are allowed until it wakes.
    sampler.allow_sockets(2);
    let stopped_at = Instant::now();
    fleet.pods[frozen].signal("STOP");
    let (next, next_entry, seen) = fleet
        .wait_owner(&[standby], name, Duration::from_secs(10))
        .await;
    let took = seen - stopped_at;
    eprintln!(
        "SIGSTOP pod-{frozen} (fence {old_fence}): pod-{next} streams after {took:?} (fence {})",
        next_entry["fence"]
    );
    assert!(
        took <= ttl + Duration::from_secs(1),
        "the standby took {took:?} to take over from a frozen owner\n{}",
        fleet.diagnostics()
    );
    tokio::time::sleep_until(stopped_at + 2 * ttl).await;

    // Wake it: it must stop claiming the stream, and its socket must go.
    let mark = fleet.pods[frozen].proc.stderr.len();
    let woke_at = Instant::now();
    fleet.pods[frozen].signal("CONT");
    let deadline = woke_at + TEARDOWN_BOUND;
    let (released_after, socket_after) = loop {
        let claims = fleet
            .round(&[frozen], &id)
            .await
            .remove(0)
            .1
            .is_none_or(|e| owns(&e));
        let sockets = fleet.connections(name);
        if !claims && sockets == 1 {
            break (woke_at.elapsed(), woke_at.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "{TEARDOWN_BOUND:?} after SIGCONT pod-{frozen} still claims {id} ({claims}) or the \
             emulator still has {sockets} sockets\n{}",
            fleet.diagnostics()
        );
        sleep(Duration::from_millis(10)).await;
    };
    sampler.allow_sockets(1);
    // What the app heard arrives on its own socket, independently of /status and of the
    // emulator's count: wait for it (the woken pod also resets the app socket, whose own
    // deadline expired during the freeze; that reset often overtakes the `dropped` frame).
    let heard = ledger.wait_heard(frozen, woke_at, TEARDOWN_BOUND).await;
    eprintln!(
        "SIGCONT pod-{frozen} after {:?} frozen: no longer owner and one upstream socket within \
         {released_after:?}/{socket_after:?}; its app: {:?}",
        woke_at - stopped_at,
        heard.as_ref().map(|(h, at)| (h, *at - woke_at))
    );
    let woke_log: Vec<String> = fleet.pods[frozen]
        .proc
        .stderr
        .all()
        .into_iter()
        .skip(mark)
        .take(12)
        .collect();
    eprintln!("pod-{frozen} on waking:\n  {}", woke_log.join("\n  "));
    match heard {
        Some((Heard::Dropped(reason), _)) => assert_eq!(
            reason, "owner_lost",
            "pod-{frozen}'s app was told the wrong reason"
        ),
        Some((Heard::Ended(_), _)) => {}
        None => panic!(
            "pod-{frozen}'s app heard neither `dropped` owner_lost nor a closed socket within \
             {TEARDOWN_BOUND:?} of the wake; dropped: {:?}; ended: {:?}\n{}",
            ledger.dropped(),
            ledger.ended(),
            fleet.diagnostics()
        ),
    }

    // Let the woken pod do whatever it would (acks it read late, a stale beat), then settle.
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

    let next_name = fleet.pods[next].name.clone();
    let frozen_name = fleet.pods[frozen].name.clone();
    let (history, at, resumed) = monitor.takeover(&lease, &ckpt, &next_name, old_fence).await;
    let after = &history[at..];
    let stale_calls: Vec<&KeyWrite> = after
        .iter()
        .filter(|w| matches!(w, KeyWrite::CheckpointCall { fence, .. } if *fence == old_fence))
        .collect();
    let stale_writes: Vec<&KeyWrite> = after
        .iter()
        .filter(|w| matches!(w, KeyWrite::Checkpoint { fence, .. } if *fence == Some(old_fence)))
        .collect();
    let fenced = fence_violations(&history);
    let writes = history
        .iter()
        .filter(|w| matches!(w, KeyWrite::Checkpoint { .. }))
        .count();
    eprintln!(
        "MONITOR: {writes} checkpoint writes, every one under the lease holder's fence: {}; after \
         {next_name} took fence {} from {frozen_name}: {} checkpoint calls with the old fence \
         {old_fence} (refused: {}), {} writes with it",
        fenced.is_empty(),
        next_entry["fence"],
        stale_calls.len(),
        stale_writes.is_empty(),
        stale_writes.len()
    );
    assert!(
        stale_writes.is_empty(),
        "{frozen_name} wrote checkpoints with its old fence {old_fence} after the takeover: \
         {stale_writes:#?}"
    );
    assert!(
        fenced.is_empty(),
        "checkpoints outside the lease's fence: {fenced:#?}"
    );

    let report = ledger.check(
        last,
        Some(Crash {
            pod: frozen,
            at: stopped_at,
            until: woke_at,
            checkpoint: resumed,
            lag: CHECKPOINT_LAG,
        }),
    );
    eprintln!(
        "{} deliveries over ids {:?}; the new owner resumed after checkpoint {resumed}; acks in \
         flight at the freeze (delivered again): {:?}; dropped frames {:?}; {} socket samples (max \
         {} open), {} status rounds ({} straddled a change)",
        report.deliveries,
        report.range,
        report.in_flight,
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
