//! The Store contract: every scenario runs on the in-process store, on a Redis node and on
//! a real three-master Redis Cluster (see `common`), so the two implementations cannot drift.
//! A scenario that needs a fault only a real Redis can suffer (stopped, restarted, wiped, or
//! sent a foreign message) takes a `&mut dyn RedisDeployment`: it cannot run on the in-process
//! store by construction, and is listed there as ignored with the reason. No mocks, no sleeps
//! as synchronisation: waits are bounded waits on conditions.

mod common;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::*;
use futures_util::StreamExt;
use streamkeeper_api::{EventId, Fence, StreamId, StreamState, Tenant};
use streamkeeper_coord::{
    AckSeq, Acquired, Beat, BeatOutcome, CheckpointOutcome, CheckpointWrite, LeaseView, Store,
    StoreError, StreamKey,
};

/// The tests of one scenario on a fresh Redis node and a fresh Redis Cluster.
macro_rules! on_redis {
    ($scenario:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn redis_node() {
            let mut d = super::RedisServer::start();
            super::$scenario(&mut d).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn redis_cluster() {
            let mut d = super::RedisCluster::start();
            super::$scenario(&mut d).await;
        }
    };
}

/// Runs each scenario on a fresh deployment of every kind: `everywhere` on the in-process
/// store, a Redis node and a Redis Cluster; `redis_only` on a node and a cluster, and lists it
/// for the in-process store as ignored, saying why.
macro_rules! contract {
    (everywhere: [$($scenario:ident),* $(,)?], redis_only: [$($redis:ident),* $(,)?] $(,)?) => {
        $(
            mod $scenario {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn memory() {
                    let mut d = super::Memory::start();
                    super::$scenario(&mut d).await;
                }

                on_redis!($scenario);
            }
        )*
        $(
            mod $redis {
                #[test]
                #[ignore = "needs a real Redis: the in-process store cannot be stopped, restarted or wiped, nor be sent a foreign message"]
                fn memory() {}

                on_redis!($redis);
            }
        )*
    };
}

contract! {
    everywhere: [
        a_standby_learns_when_to_ask_and_a_new_owner_whom_it_took_over,
        one_owner_renews_and_an_old_fence_is_refused,
        a_taken_over_stream_moves_to_its_new_owner_and_is_not_swept,
        a_release_hands_over_at_once_and_fences_the_releaser,
        one_dead_per_stale_entry_however_many_pods_sweep,
        the_pool_never_grants_past_its_limit,
        a_checkpoint_is_refused_for_an_old_fence,
        a_checkpoint_never_moves_back_within_a_fence,
        status_lists_streams_with_last_pong_from_the_index,
        a_removed_stream_leaves_nothing_behind_and_fences_its_owner,
        lease_expiries_tell_a_standby_when_to_ask,
    ],
    redis_only: [
        beat_reasserts_after_redis_lost_everything,
        unavailable_is_fast_and_the_store_recovers_on_restart,
        the_subscription_survives_a_restart,
        a_malformed_message_is_skipped,
    ],
}

// ---------------------------------------------------------------------------------------------
// scenarios

async fn a_standby_learns_when_to_ask_and_a_new_owner_whom_it_took_over(d: &mut dyn Deployment) {
    let (a, b) = (d.store(), d.store());
    let k = key("acme", "cc/takeover");
    let ttl = Duration::from_millis(400);
    let Acquired::Granted {
        fence: fa,
        took_over: None,
    } = a.try_acquire(&k, &pod("pod-a"), ttl).await.expect("ok")
    else {
        panic!("a fresh lease is granted with nobody taken over");
    };
    match b.try_acquire(&k, &pod("pod-b"), ttl).await.expect("ok") {
        Acquired::Held {
            expires_in: Some(left),
        } => {
            assert!(
                left <= ttl && left > Duration::ZERO,
                "time left {left:?} within the ttl"
            );
        }
        other => panic!("expected Held with the time left, got {other:?}"),
    }
    // pod-a stops vouching (crashed): once its lease lapses, pod-b takes over from it.
    wait_until("the lease lapses", Duration::from_secs(3), || async {
        lease_lapsed(d, &k).await
    })
    .await;
    match b.try_acquire(&k, &pod("pod-b"), ttl).await.expect("ok") {
        Acquired::Granted { fence, took_over } => {
            assert!(fence > fa);
            assert_eq!(took_over, Some((pod("pod-a"), fa)));
        }
        other => panic!("expected a takeover, got {other:?}"),
    }
    // A released lease is handed over, not taken over.
    let k2 = key("acme", "cc/released");
    let f = a
        .acquire(&k2, &pod("pod-a"), ttl)
        .await
        .expect("ok")
        .expect("granted");
    assert!(
        a.release(
            &k2,
            f,
            &transition(&k2, StreamState::Stopped, "shutdown", f)
        )
        .await
        .expect("ok")
    );
    match b.try_acquire(&k2, &pod("pod-b"), ttl).await.expect("ok") {
        Acquired::Granted {
            took_over: None, ..
        } => {}
        other => panic!("a release is a handover, not a takeover: {other:?}"),
    }
}

async fn one_owner_renews_and_an_old_fence_is_refused(d: &mut dyn Deployment) {
    let (a, b) = (d.store(), d.store());
    let k = key("acme", "cc/q1");
    let fa = a
        .acquire(&k, &pod("pod-a"), Duration::from_secs(60))
        .await
        .expect("ok")
        .expect("granted");
    assert_eq!(
        b.acquire(&k, &pod("pod-b"), Duration::from_secs(60))
            .await
            .expect("ok"),
        None,
        "one owner"
    );
    assert_eq!(
        a.beat(&[beat(&k, "pod-a", fa, now_ms())]).await,
        vec![BeatOutcome::Renewed]
    );
    assert_eq!(
        b.beat(&[beat(&k, "pod-b", Fence(0), now_ms())]).await,
        vec![BeatOutcome::Fenced]
    );

    // A short lease lapses; another pod takes it with a higher fence; the old fence is refused
    // everywhere.
    let k2 = key("acme", "cc/q2");
    let short = Duration::from_millis(200);
    let f_old = a
        .acquire(&k2, &pod("pod-a"), short)
        .await
        .expect("ok")
        .expect("granted");
    let d: &dyn Deployment = d;
    wait_until("the short lease lapses", Duration::from_secs(5), || async {
        lease_lapsed(d, &k2).await
    })
    .await;
    let f_new = b
        .acquire(&k2, &pod("pod-b"), Duration::from_secs(60))
        .await
        .expect("ok")
        .expect("taken");
    assert!(f_new > f_old, "fences grow: {f_new} > {f_old}");
    assert_eq!(
        a.beat(&[beat(&k2, "pod-a", f_old, now_ms())]).await,
        vec![BeatOutcome::Fenced]
    );
    assert_eq!(
        save(&a, &k2, f_old, "e-old").await,
        CheckpointOutcome::Fenced
    );
    assert!(
        !a.publish(
            &k2,
            f_old,
            &transition(&k2, StreamState::Dead, "pong_timeout", f_old)
        )
        .await
        .expect("ok")
    );
    assert!(
        !a.release(
            &k2,
            f_old,
            &transition(&k2, StreamState::Stopped, "handover", f_old)
        )
        .await
        .expect("ok")
    );
    assert!(!a.pool_acquire(&k2, f_old, 10).await.expect("ok"));
    assert_eq!(
        b.beat(&[beat(&k2, "pod-b", f_new, now_ms())]).await,
        vec![BeatOutcome::Renewed]
    );
    assert_eq!(
        save(&b, &k2, f_new, "e-new").await,
        CheckpointOutcome::Saved
    );
    assert_eq!(
        a.checkpoint(&k2).await.expect("ok"),
        Some(EventId("e-new".into()))
    );

    // A lease that lapsed and that nobody took is re-asserted by its owner's next beat.
    let k3 = key("acme", "cc/q3");
    let f3 = a
        .acquire(&k3, &pod("pod-a"), Duration::from_millis(100))
        .await
        .expect("ok")
        .expect("granted");
    wait_until(
        "the lease of cc/q3 lapses",
        Duration::from_secs(5),
        || async { lease_lapsed(d, &k3).await },
    )
    .await;
    assert_eq!(
        a.beat(&[beat(&k3, "pod-a", f3, now_ms())]).await,
        vec![BeatOutcome::Reasserted]
    );
    assert_eq!(
        b.acquire(&k3, &pod("pod-b"), Duration::from_secs(60))
            .await
            .expect("ok"),
        None
    );

    // Many streams of several tenants in one call: answers in order, duplicates share one.
    let ks: Vec<StreamKey> = (0..30)
        .map(|i| key(&format!("t{}", i % 3), &format!("cc/m{i}")))
        .collect();
    let mut fences = Vec::new();
    for k in &ks {
        fences.push(
            a.acquire(k, &pod("pod-a"), Duration::from_secs(60))
                .await
                .expect("ok")
                .expect("granted"),
        );
    }
    let mut beats: Vec<Beat> = ks
        .iter()
        .zip(&fences)
        .map(|(k, f)| beat(k, "pod-a", *f, now_ms()))
        .collect();
    beats.push(beat(&ks[4], "pod-b", Fence(fences[4].0 - 1), now_ms())); // an old fence, later in the call
    beats.push(beat(&k2, "pod-a", f_old, now_ms()));
    let out = a.beat(&beats).await;
    assert_eq!(out.len(), beats.len());
    assert!(
        out[..30]
            .iter()
            .enumerate()
            .all(|(i, o)| i == 4 || *o == BeatOutcome::Renewed),
        "{out:?}"
    );
    assert_eq!(
        out[4],
        BeatOutcome::Fenced,
        "the last beat of a stream wins"
    );
    assert_eq!(out[30], BeatOutcome::Fenced);
    assert_eq!(out[31], BeatOutcome::Fenced);
}

async fn a_release_hands_over_at_once_and_fences_the_releaser(d: &mut dyn Deployment) {
    let (a, b) = (d.store(), d.store());
    let mut sub = b.subscribe().await.expect("subscribed");
    let k = key("acme", "cc/handover");
    let fa = a
        .acquire(&k, &pod("pod-a"), Duration::from_secs(60))
        .await
        .expect("ok")
        .expect("granted");
    beat_ok(&a, &[beat(&k, "pod-a", fa, now_ms())]).await;
    assert!(a.pool_acquire(&k, fa, 1).await.expect("ok"));
    assert_eq!(save(&a, &k, fa, "e7").await, CheckpointOutcome::Saved);
    let handover = transition(&k, StreamState::Stopped, "handover", fa);
    assert!(a.release(&k, fa, &handover).await.expect("ok"));
    assert_eq!(
        next(&mut sub, Duration::from_secs(5)).await,
        handover,
        "the handover is published"
    );

    // No TTL to wait out: the standby takes it now, and resumes from the checkpoint.
    let fb = b
        .acquire(&k, &pod("pod-b"), Duration::from_secs(60))
        .await
        .expect("ok")
        .expect("taken at once");
    assert!(fb > fa);
    assert_eq!(
        b.checkpoint(&k).await.expect("ok"),
        Some(EventId("e7".into()))
    );
    assert!(
        b.pool_acquire(&k, fb, 1).await.expect("ok"),
        "the released slot is free"
    );
    // The releaser is fenced, even before anyone took the stream over.
    let k2 = key("acme", "cc/handover-2");
    let f2 = a
        .acquire(&k2, &pod("pod-a"), Duration::from_secs(60))
        .await
        .expect("ok")
        .expect("granted");
    assert!(
        a.release(
            &k2,
            f2,
            &transition(&k2, StreamState::Stopped, "handover", f2)
        )
        .await
        .expect("ok")
    );
    assert_eq!(
        a.beat(&[beat(&k2, "pod-a", f2, now_ms())]).await,
        vec![BeatOutcome::Fenced]
    );
    assert!(
        !a.release(&k2, f2, &handover).await.expect("ok"),
        "released once"
    );
    assert_eq!(save(&a, &k2, f2, "late").await, CheckpointOutcome::Fenced);
}

async fn a_taken_over_stream_moves_to_its_new_owner_and_is_not_swept(d: &mut dyn Deployment) {
    let (a, b) = (d.store(), d.store());
    let mut sub = b.subscribe().await.expect("subscribed");
    let k = key("acme", "cc/failover");
    let fa = a
        .acquire(&k, &pod("pod-a"), Duration::from_secs(60))
        .await
        .expect("ok")
        .expect("granted");
    beat_ok(&a, &[last_beat(&k, "pod-a", fa, 1_000)]).await; // then pod-a is SIGKILLed
    let d: &dyn Deployment = d;
    wait_until("pod-a's lease lapses", Duration::from_secs(5), || async {
        lease_lapsed(d, &k).await
    })
    .await;
    let fb = b
        .acquire(&k, &pod("pod-b"), Duration::from_secs(60))
        .await
        .expect("ok")
        .expect("taken over");
    assert!(fb > fa);
    // The new owner vouches for the stream: the old record is not declared DEAD under it,
    // however stale its pong, and the new owner's first beat replaces it.
    assert!(
        b.sweep_stale(k.tenant(), now_ms(), Duration::from_secs(1))
            .await
            .expect("ok")
            .is_empty()
    );
    assert_eq!(
        b.beat(&[beat(&k, "pod-b", fb, now_ms())]).await,
        vec![BeatOutcome::Renewed]
    );
    let recs = b.records().await.expect("ok");
    assert_eq!(
        (recs.len(), recs[0].owner.clone(), recs[0].fence),
        (1, pod("pod-b"), fb)
    );
    assert_eq!(
        a.beat(&[beat(&k, "pod-a", fa, now_ms())]).await,
        vec![BeatOutcome::Fenced],
        "the old owner, back from the dead, is fenced"
    );
    // Nothing was published on the way: the next message is ours.
    let marker = transition(&k, StreamState::Active, "marker", fb);
    assert!(b.publish(&k, fb, &marker).await.expect("ok"));
    assert_eq!(next(&mut sub, Duration::from_secs(5)).await, marker);
}

async fn one_dead_per_stale_entry_however_many_pods_sweep(d: &mut dyn Deployment) {
    const PODS: usize = 8;
    const ROUNDS: usize = 50;
    let owner = d.store();
    let listener = d.store();
    let mut sub = listener.subscribe().await.expect("subscribed");
    let sweepers: Vec<Arc<dyn Store>> = (0..PODS).map(|_| d.store()).collect();
    // Tenants spread over the cluster's nodes: the one subscription hears them all.
    let tenants: Vec<Tenant> = (0..6)
        .map(|i| format!("tenant-{i}").parse().expect("tenant"))
        .collect();
    if let Some(r) = d.redis().filter(|r| r.is_cluster()) {
        let nodes: HashSet<u16> = tenants
            .iter()
            .map(|t| r.port_of(&format!("sk:{{{t}}}:live")))
            .collect();
        assert_eq!(nodes.len(), 3, "the tenants live on every master");
    }
    let mut expected = HashSet::new();
    let d: &dyn Deployment = d;
    for round in 0..ROUNDS {
        let tenant = &tenants[round % tenants.len()];
        let sk = |name: &str| {
            StreamKey::new(
                tenant.clone(),
                format!("cc/{name}-{round}").parse().expect("id"),
            )
        };
        let (k, fresh, reconnecting, just_lapsed) =
            (sk("stale"), sk("fresh"), sk("reconnecting"), sk("lapsed"));
        let mut f = Fence(0);
        for (key, last_pong, vouching) in [
            (&k, 1_000, false),
            (&fresh, 99_000, true),
            (&reconnecting, 1_000, true),
            (&just_lapsed, 99_000, false),
        ] {
            let fence = owner
                .acquire(key, &pod("pod-a"), Duration::from_secs(60))
                .await
                .expect("ok")
                .expect("granted");
            let b = if vouching {
                beat(key, "pod-a", fence, last_pong)
            } else {
                last_beat(key, "pod-a", fence, last_pong)
            };
            beat_ok(&owner, &[b]).await;
            if key == &k {
                f = fence;
            }
        }
        // Stale: the owner stopped vouching (lease lapsed) and the last pong is old. Not stale:
        // a fresh stream; an owner still renewing while its socket reconnects (old pong); a
        // lapsed lease whose last pong is recent.
        wait_until("the leases lapse", Duration::from_secs(5), || async {
            lease_lapsed(d, &k).await && lease_lapsed(d, &just_lapsed).await
        })
        .await;

        let start = Arc::new(tokio::sync::Barrier::new(PODS));
        let tasks: Vec<_> = sweepers
            .iter()
            .map(|s| {
                let (s, start, tenant) = (s.clone(), start.clone(), tenant.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    s.sweep_stale(&tenant, 100_000, Duration::from_secs(35))
                        .await
                        .expect("sweep")
                })
            })
            .collect();
        let mut dead = Vec::new();
        for t in tasks {
            dead.extend(t.await.expect("task"));
        }
        assert_eq!(
            dead.len(),
            1,
            "round {round}: exactly one DEAD, got {dead:?}"
        );
        assert_eq!(&dead[0].stream, k.stream());
        assert_eq!(
            (dead[0].from, dead[0].to, dead[0].fence),
            (StreamState::Active, StreamState::Dead, Some(f))
        );
        assert_eq!(dead[0].owner, Some(pod("pod-a")));
        expected.insert((k.tenant().clone(), k.stream().clone()));
    }
    // The published side: each stale stream DEAD once, and nothing else. A sentinel published
    // after everything marks the end of the channel's history.
    let marker = key("acme", "cc/sentinel");
    let fm = owner
        .acquire(&marker, &pod("pod-a"), Duration::from_secs(60))
        .await
        .expect("ok")
        .expect("granted");
    let sentinel = transition(&marker, StreamState::Degraded, "sentinel", fm);
    assert!(owner.publish(&marker, fm, &sentinel).await.expect("ok"));
    let mut heard: HashMap<(Tenant, String), usize> = HashMap::new();
    loop {
        let t = next(&mut sub, Duration::from_secs(10)).await;
        if t == sentinel {
            break;
        }
        assert_eq!(t.to, StreamState::Dead);
        *heard
            .entry((t.tenant.clone(), t.stream.to_string()))
            .or_default() += 1;
    }
    assert_eq!(heard.len(), ROUNDS, "every stale stream was published");
    assert!(
        heard.values().all(|n| *n == 1),
        "each exactly once: {heard:?}"
    );
    for (t, s) in &expected {
        assert_eq!(heard.get(&(t.clone(), s.to_string())), Some(&1));
    }
}

async fn the_pool_never_grants_past_its_limit(d: &mut dyn Deployment) {
    const LIMIT: u32 = 3;
    let pods: Vec<Arc<dyn Store>> = (0..4).map(|_| d.store()).collect();
    // Redis's own count, sampled while the pods race: never above the limit. (The
    // in-process store has no count to sample beside its answers.)
    let pool_key = "sk:{acme}:pool";
    let port = d.redis().map(|r| r.port_of(pool_key));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = port.map(|port| {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("client");
            let mut con = client.get_connection().expect("connection");
            let (mut samples, mut max) = (0usize, 0i64);
            while !stop.load(Ordering::SeqCst) {
                let n: i64 = redis::cmd("HLEN")
                    .arg(pool_key)
                    .query(&mut con)
                    .expect("HLEN");
                max = max.max(n);
                samples += 1;
            }
            (samples, max)
        })
    });
    let holders = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let granted = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (p, s) in pods.iter().enumerate() {
        for i in 0..4 {
            let k = key("acme", &format!("cc/p{p}-s{i}"));
            let f = s
                .acquire(&k, &pod(&format!("pod-{p}")), Duration::from_secs(60))
                .await
                .expect("ok")
                .expect("granted");
            let (s, holders, max_seen, granted) = (
                s.clone(),
                holders.clone(),
                max_seen.clone(),
                granted.clone(),
            );
            tasks.push(tokio::spawn(async move {
                for _ in 0..25 {
                    if s.pool_acquire(&k, f, LIMIT).await.expect("ok") {
                        let now = holders.fetch_add(1, Ordering::SeqCst) + 1;
                        max_seen.fetch_max(now, Ordering::SeqCst);
                        granted.fetch_add(1, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        holders.fetch_sub(1, Ordering::SeqCst);
                        s.pool_release(&k, f).await.expect("ok");
                    }
                    tokio::task::yield_now().await;
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("task");
    }
    stop.store(true, Ordering::SeqCst);
    if let Some(sampler) = sampler {
        let (samples, redis_max) = sampler.await.expect("sampler");
        assert!(samples > 0);
        assert!(
            redis_max <= i64::from(LIMIT),
            "Redis held {redis_max} slots, limit {LIMIT}"
        );
    }
    let max = max_seen.load(Ordering::SeqCst);
    assert!(
        max <= LIMIT as usize,
        "{max} holders at once, limit {LIMIT}"
    );
    assert!(granted.load(Ordering::SeqCst) > 0);

    // A holder whose lease expired is evicted; a live holder is not.
    let s = &pods[0];
    let dying = key("solo", "cc/dying");
    let fd = s
        .acquire(&dying, &pod("pod-0"), Duration::from_millis(150))
        .await
        .expect("ok")
        .expect("granted");
    assert!(s.pool_acquire(&dying, fd, 1).await.expect("ok"));
    let other = key("solo", "cc/other");
    let fo = s
        .acquire(&other, &pod("pod-1"), Duration::from_secs(60))
        .await
        .expect("ok")
        .expect("granted");
    assert!(
        !s.pool_acquire(&other, fo, 1).await.expect("ok"),
        "the pool is full"
    );
    assert!(
        s.pool_acquire(&dying, fd, 1).await.expect("ok"),
        "a holder keeps its slot"
    );
    let d: &dyn Deployment = d;
    wait_until(
        "the holder's lease lapses",
        Duration::from_secs(5),
        || async { lease_lapsed(d, &dying).await },
    )
    .await;
    assert!(
        s.pool_acquire(&other, fo, 1).await.expect("ok"),
        "the lapsed holder was evicted"
    );
    if let Some(r) = d.redis() {
        let pool = "sk:{solo}:pool";
        let n = r.command_for(Some(pool), &["HLEN", pool]).expect("HLEN");
        assert_eq!(
            n,
            redis::Value::Int(1),
            "the evicted holder is gone from Redis too"
        );
    }
}

async fn a_checkpoint_is_refused_for_an_old_fence(d: &mut dyn Deployment) {
    let (a, b) = (d.store(), d.store());
    let k = key("acme", "cc/ckpt");
    let fa = a
        .acquire(&k, &pod("pod-a"), Duration::from_secs(60))
        .await
        .expect("ok")
        .expect("granted");
    assert_eq!(save(&a, &k, fa, "e1").await, CheckpointOutcome::Saved);
    assert!(
        a.release(
            &k,
            fa,
            &transition(&k, StreamState::Stopped, "handover", fa)
        )
        .await
        .expect("ok")
    );
    let fb = b
        .acquire(&k, &pod("pod-b"), Duration::from_secs(60))
        .await
        .expect("ok")
        .expect("granted");
    assert_eq!(save(&a, &k, fa, "e-stale").await, CheckpointOutcome::Fenced);
    assert_eq!(
        b.checkpoint(&k).await.expect("ok"),
        Some(EventId("e1".into())),
        "the old fence wrote nothing"
    );
    // A batch across tenants: each write judged on its own fence.
    let k2 = key("other", "cc/ckpt");
    let f2 = b
        .acquire(&k2, &pod("pod-b"), Duration::from_secs(60))
        .await
        .expect("ok")
        .expect("granted");
    let writes = vec![
        write(&k, fa, "x"),
        write(&k, fb, "e2"),
        write(&k2, f2, "o1"),
        write(&key("other", "cc/nobody"), f2, "n"),
    ];
    assert_eq!(
        b.save_checkpoints(&writes).await,
        vec![
            CheckpointOutcome::Fenced,
            CheckpointOutcome::Saved,
            CheckpointOutcome::Saved,
            CheckpointOutcome::LeaseMissing,
        ]
    );
    assert_eq!(
        a.checkpoint(&k).await.expect("ok"),
        Some(EventId("e2".into()))
    );
    assert_eq!(
        a.checkpoint(&k2).await.expect("ok"),
        Some(EventId("o1".into()))
    );
    assert_eq!(
        a.checkpoint(&key("other", "cc/nobody")).await.expect("ok"),
        None
    );
}

async fn beat_reasserts_after_redis_lost_everything(d: &mut dyn RedisDeployment) {
    let (a, b) = (d.store(), d.store());
    let k = key("acme", "cc/survivor");
    // Push the counter up so the held fence is well above 1.
    for i in 0..5 {
        let other = key("acme", &format!("cc/filler-{i}"));
        a.acquire(&other, &pod("pod-a"), Duration::from_secs(60))
            .await
            .expect("ok")
            .expect("granted");
    }
    let fa = a
        .acquire(&k, &pod("pod-a"), Duration::from_secs(60))
        .await
        .expect("ok")
        .expect("granted");
    assert!(fa.0 >= 6);
    assert_eq!(
        a.beat(&[beat(&k, "pod-a", fa, now_ms())]).await,
        vec![BeatOutcome::Renewed]
    );

    d.flushall(); // Redis restarted empty

    assert_eq!(
        a.beat(&[beat(&k, "pod-a", fa, now_ms())]).await,
        vec![BeatOutcome::Reasserted]
    );
    assert_eq!(
        b.acquire(&k, &pod("pod-b"), Duration::from_secs(60))
            .await
            .expect("ok"),
        None,
        "never two owners"
    );
    let fresh = b
        .acquire(
            &key("acme", "cc/new"),
            &pod("pod-b"),
            Duration::from_secs(60),
        )
        .await
        .expect("ok")
        .expect("granted");
    assert!(
        fresh > fa,
        "the fence counter never goes back below a fence handed out: {fresh} > {fa}"
    );
    assert_eq!(
        a.beat(&[beat(&k, "pod-a", fa, now_ms())]).await,
        vec![BeatOutcome::Renewed]
    );
    assert_eq!(save(&a, &k, fa, "after").await, CheckpointOutcome::Saved);
    assert_eq!(
        a.records()
            .await
            .expect("ok")
            .iter()
            .map(|r| r.stream.to_string())
            .collect::<Vec<_>>(),
        vec!["cc/survivor".to_string()],
        "the registry and the record came back with the beat"
    );

    // Data lost again and another pod grabbed the stream before its owner beat. Fences never
    // go back, even with the counter lost (they are floored at Redis's clock in µs), so the
    // newcomer's grant is the newest: it wins and the old owner is fenced. One owner, always.
    d.flushall();
    let fb = b
        .acquire(&k, &pod("pod-b"), Duration::from_secs(60))
        .await
        .expect("ok")
        .expect("granted");
    assert!(fb > fa, "fences only grow, also across a wipe: {fb} > {fa}");
    assert_eq!(
        a.beat(&[beat(&k, "pod-a", fa, now_ms())]).await,
        vec![BeatOutcome::Fenced]
    );
    assert_eq!(save(&a, &k, fa, "x").await, CheckpointOutcome::Fenced);
    assert_eq!(
        b.beat(&[beat(&k, "pod-b", fb, now_ms())]).await,
        vec![BeatOutcome::Renewed]
    );
}

async fn unavailable_is_fast_and_the_store_recovers_on_restart(d: &mut dyn RedisDeployment) {
    let s = d.store();
    let k = key("acme", "cc/q");
    let f = s
        .acquire(&k, &pod("pod-a"), Duration::from_secs(60))
        .await
        .expect("ok")
        .expect("granted");
    d.stop();
    let bound = Duration::from_secs(3);
    for round in 0..3 {
        let t = Instant::now();
        let r = s.ping().await;
        assert!(
            matches!(r, Err(StoreError::Unavailable(_))),
            "round {round}: {r:?}"
        );
        assert!(t.elapsed() < bound, "ping took {:?}", t.elapsed());

        let t = Instant::now();
        let r = s.beat(&[beat(&k, "pod-a", f, now_ms())]).await;
        assert!(
            matches!(r[..], [BeatOutcome::Failed(StoreError::Unavailable(_))]),
            "{r:?}"
        );
        assert!(t.elapsed() < bound, "beat took {:?}", t.elapsed());

        // No new ownership while Redis is away, and nobody is judged stale.
        let t = Instant::now();
        let r = s
            .acquire(
                &key("acme", "cc/other"),
                &pod("pod-a"),
                Duration::from_secs(60),
            )
            .await;
        assert!(
            matches!(r, Ok(None) | Err(StoreError::Unavailable(_))),
            "{r:?}"
        );
        assert!(t.elapsed() < bound, "acquire took {:?}", t.elapsed());

        let t = Instant::now();
        let r = s
            .sweep_stale(k.tenant(), now_ms(), Duration::from_secs(35))
            .await;
        assert!(
            matches!(&r, Ok(v) if v.is_empty()) || matches!(r, Err(StoreError::Unavailable(_))),
            "{r:?}"
        );
        assert!(t.elapsed() < bound, "sweep took {:?}", t.elapsed());

        let t = Instant::now();
        let r = save(&s, &k, f, "e").await;
        assert!(
            matches!(r, CheckpointOutcome::Failed(StoreError::Unavailable(_))),
            "{r:?}"
        );
        assert!(t.elapsed() < bound, "checkpoint took {:?}", t.elapsed());
    }
    // A store made while Redis is down is fine; it fails like the others.
    let late = d.store();
    assert!(matches!(late.ping().await, Err(StoreError::Unavailable(_))));

    d.restart();
    // Both stores: each reconnects on demand (an operation starts the next attempt), so one
    // whose last attempt failed while Redis was still coming back answers at its next call.
    wait_until(
        "the stores answer again",
        Duration::from_secs(15),
        || async { s.ping().await.is_ok() && late.ping().await.is_ok() },
    )
    .await;
    assert_eq!(
        s.beat(&[beat(&k, "pod-a", f, now_ms())]).await,
        vec![BeatOutcome::Reasserted]
    );
    // Right after an outage a store takes no lease for `ttl` (owners re-assert first) and
    // sweeps nothing; then it does.
    let other = key("acme", "cc/other");
    assert_eq!(
        late.acquire(&other, &pod("pod-b"), Duration::from_secs(60))
            .await
            .expect("ok"),
        None
    );
    assert!(
        s.sweep_stale(k.tenant(), u64::MAX, Duration::from_secs(60))
            .await
            .expect("ok")
            .is_empty()
    );
    wait_until("the grace ends", Duration::from_secs(5), || async {
        late.acquire(&other, &pod("pod-b"), Duration::from_millis(300))
            .await
            .expect("ok")
            .is_some()
    })
    .await;
}

async fn the_subscription_survives_a_restart(d: &mut dyn RedisDeployment) {
    let s = d.store();
    let mut sub = s.subscribe().await.expect("subscribed");
    let k = key("acme", "cc/q");
    let f = s
        .acquire(&k, &pod("pod-a"), Duration::from_secs(60))
        .await
        .expect("ok")
        .expect("granted");
    let t1 = transition(&k, StreamState::Degraded, "late_pong", f);
    assert!(s.publish(&k, f, &t1).await.expect("ok"));
    assert_eq!(next(&mut sub, Duration::from_secs(5)).await, t1);

    d.restart();
    // The subscriber reconnects by itself. Redis came back empty: take the lease again, then
    // publish probes until one is heard (a probe published before it resubscribed is lost).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut fence = None;
    for n in 0.. {
        assert!(
            Instant::now() < deadline,
            "the subscription did not come back"
        );
        if fence.is_none() {
            // (A short lease: right after an outage the store waits one lease TTL to acquire.)
            fence = s
                .acquire(&k, &pod("pod-a"), Duration::from_millis(500))
                .await
                .ok()
                .flatten();
        }
        let Some(f) = fence else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut probe = transition(&k, StreamState::Active, "probe", f);
        probe.at = n;
        if !matches!(s.publish(&k, f, &probe).await, Ok(true)) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        if let Ok(Some(t)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await
            && t.reason == "probe"
        {
            break;
        }
    }
}

async fn a_malformed_message_is_skipped(d: &mut dyn RedisDeployment) {
    let s = d.store();
    let mut sub = s.subscribe().await.expect("subscribed");
    d.command_for(None, &["PUBLISH", "streamkeeper:transitions", "{not json"])
        .expect("PUBLISH");
    d.command_for(
        None,
        &[
            "PUBLISH",
            "streamkeeper:transitions",
            r#"{"stream":"cc/q"}"#,
        ],
    )
    .expect("PUBLISH");
    let k = key("acme", "cc/q");
    let f = s
        .acquire(&k, &pod("pod-a"), Duration::from_secs(60))
        .await
        .expect("ok")
        .expect("granted");
    let good = transition(&k, StreamState::Dead, "pong_timeout", f);
    assert!(s.publish(&k, f, &good).await.expect("ok"));
    assert_eq!(next(&mut sub, Duration::from_secs(5)).await, good);
}

async fn status_lists_streams_with_last_pong_from_the_index(d: &mut dyn Deployment) {
    let s = d.store();
    let k1 = key("acme", "cc/one");
    let k2 = key("beta", "cc/two");
    let f1 = s
        .acquire(&k1, &pod("pod-a"), Duration::from_secs(60))
        .await
        .expect("ok")
        .expect("granted");
    let f2 = s
        .acquire(&k2, &pod("pod-b"), Duration::from_secs(60))
        .await
        .expect("ok")
        .expect("granted");
    s.beat(&[beat(&k1, "pod-a", f1, 1_000), beat(&k2, "pod-b", f2, 2_000)])
        .await;
    // Unchanged records: only lastPong moves, in the index; status merges it.
    s.beat(&[beat(&k1, "pod-a", f1, 5_000), beat(&k2, "pod-b", f2, 6_000)])
        .await;
    let recs = s.records().await.expect("ok");
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert_eq!(recs[0], record(&k1, "pod-a", f1, 5_000));
    assert_eq!(recs[1], record(&k2, "pod-b", f2, 6_000));
    // A published state change shows, and the next beat's record is written in full.
    assert!(
        s.publish(
            &k1,
            f1,
            &transition(&k1, StreamState::Degraded, "late_pong", f1)
        )
        .await
        .expect("ok")
    );
    assert_eq!(
        s.records().await.expect("ok")[0].state,
        StreamState::Degraded
    );
    beat_ok(&s, &[beat(&k1, "pod-a", f1, 7_000)]).await;
    assert_eq!(
        s.records().await.expect("ok")[0],
        record(&k1, "pod-a", f1, 7_000)
    );
    // Released streams leave the table.
    assert!(
        s.release(
            &k2,
            f2,
            &transition(&k2, StreamState::Stopped, "removed", f2)
        )
        .await
        .expect("ok")
    );
    assert_eq!(s.records().await.expect("ok").len(), 1);
}

/// Redis holds nothing of `k` but its lease tombstone, which expires.
fn removed_from_redis(d: &dyn RedisDeployment, k: &StreamKey) {
    let tag = format!("sk:{{{}}}:", k.tenant());
    let at = |key: &str, args: &[&str]| {
        d.command_for(Some(&format!("{tag}{key}")), args)
            .expect("command")
    };
    let (lease, conn, ckpt, ckseq) = (
        format!("{tag}lease:{}", k.stream()),
        format!("{tag}conn:{}", k.stream()),
        format!("{tag}ckpt:{}", k.stream()),
        format!("{tag}ckseq:{}", k.stream()),
    );
    assert_eq!(
        at("live", &["EXISTS", &conn, &ckpt, &ckseq]),
        redis::Value::Int(0)
    );
    for (zset, what) in [("leases", "lease expiry"), ("live", "live entry")] {
        assert_eq!(
            at(
                zset,
                &["ZSCORE", &format!("{tag}{zset}"), k.stream().as_str()]
            ),
            redis::Value::Nil,
            "{what}"
        );
    }
    assert_eq!(
        at(
            "pool",
            &["HEXISTS", &format!("{tag}pool"), k.stream().as_str()]
        ),
        redis::Value::Int(0)
    );
    let tombstone = value_text(at("live", &["GET", &lease]));
    assert!(tombstone.ends_with(":removed"), "{tombstone}");
    match at("live", &["PTTL", &lease]) {
        redis::Value::Int(ms) => assert!(ms > 0, "the tombstone expires: {ms}"),
        other => panic!("PTTL: {other:?}"),
    }
}

async fn a_removed_stream_leaves_nothing_behind_and_fences_its_owner(d: &mut dyn Deployment) {
    let (a, b) = (d.store(), d.store());
    let mut sub = b.subscribe().await.expect("subscribed");
    let k = key("acme", "cc/removed");
    let ttl = Duration::from_secs(60);
    let fa = a
        .acquire(&k, &pod("pod-a"), ttl)
        .await
        .expect("ok")
        .expect("granted");
    beat_ok(&a, &[beat(&k, "pod-a", fa, now_ms())]).await;
    assert!(a.pool_acquire(&k, fa, 1).await.expect("ok"));
    assert_eq!(save(&a, &k, fa, "e1").await, CheckpointOutcome::Saved);
    // A neighbour of the same tenant keeps everything.
    let n = key("acme", "cc/neighbour");
    let fnb = a
        .acquire(&n, &pod("pod-a"), ttl)
        .await
        .expect("ok")
        .expect("granted");
    beat_ok(&a, &[beat(&n, "pod-a", fnb, now_ms())]).await;
    assert_eq!(save(&a, &n, fnb, "n1").await, CheckpointOutcome::Saved);

    // The controller (any store, not the owner) removes it.
    assert!(b.remove_stream(&k).await.expect("ok"));
    assert!(
        !b.remove_stream(&k).await.expect("ok"),
        "a second remove finds nothing"
    );
    assert_eq!(b.checkpoint(&k).await.expect("ok"), None);
    let streams: Vec<String> = b
        .records()
        .await
        .expect("ok")
        .iter()
        .map(|r| r.stream.to_string())
        .collect();
    assert_eq!(streams, vec!["cc/neighbour".to_string()]);
    // Redis's own view: only the lease tombstone is left, and it expires. (The in-process
    // store has no keys to look at beside its answers.)
    if let Some(r) = d.redis() {
        removed_from_redis(r, &k);
    }

    // The owner that still runs it is fenced everywhere; it re-asserts nothing.
    assert_eq!(
        a.beat(&[beat(&k, "pod-a", fa, now_ms())]).await,
        vec![BeatOutcome::Fenced]
    );
    assert_eq!(save(&a, &k, fa, "late").await, CheckpointOutcome::Fenced);
    assert!(!a.pool_acquire(&k, fa, 5).await.expect("ok"));
    assert_eq!(b.checkpoint(&k).await.expect("ok"), None);
    // The slot is free, and the stream can be created again: taken at once, newer fence.
    let other = key("acme", "cc/other");
    let fo = b
        .acquire(&other, &pod("pod-b"), ttl)
        .await
        .expect("ok")
        .expect("granted");
    assert!(b.pool_acquire(&other, fo, 1).await.expect("ok"));
    match b.try_acquire(&k, &pod("pod-b"), ttl).await.expect("ok") {
        Acquired::Granted {
            fence,
            took_over: None,
        } => assert!(fence > fa),
        other => panic!("a removed stream is free, and no takeover: {other:?}"),
    }
    // The neighbour was not touched.
    assert_eq!(
        a.beat(&[beat(&n, "pod-a", fnb, now_ms())]).await,
        vec![BeatOutcome::Renewed]
    );
    assert_eq!(
        b.checkpoint(&n).await.expect("ok"),
        Some(EventId("n1".into()))
    );
    // Nothing was published: the next message is ours.
    let fk = b.acquire(&k, &pod("pod-b"), ttl).await.expect("ok");
    assert_eq!(fk, None, "pod-b holds it now");
    let marker = transition(&n, StreamState::Active, "marker", fnb);
    assert!(a.publish(&n, fnb, &marker).await.expect("ok"));
    assert_eq!(next(&mut sub, Duration::from_secs(5)).await, marker);
}

async fn lease_expiries_tell_a_standby_when_to_ask(d: &mut dyn Deployment) {
    let (a, b) = (d.store(), d.store());
    let k = |name: &str| key("acme", &format!("cc/{name}"));
    let (held, lapsing, released, removed, never) = (
        k("held"),
        k("lapsing"),
        k("released"),
        k("removed"),
        k("never"),
    );
    let long = Duration::from_secs(60);
    let fh = a
        .acquire(&held, &pod("pod-a"), long)
        .await
        .expect("ok")
        .expect("granted");
    let fl = a
        .acquire(&lapsing, &pod("pod-a"), Duration::from_millis(300))
        .await
        .expect("ok")
        .expect("granted");
    for k in [&released, &removed] {
        let f = a
            .acquire(k, &pod("pod-a"), long)
            .await
            .expect("ok")
            .expect("granted");
        if k == &released {
            assert!(
                a.release(k, f, &transition(k, StreamState::Stopped, "handover", f))
                    .await
                    .expect("ok")
            );
        }
    }
    assert!(b.remove_stream(&removed).await.expect("ok"));
    let streams: Vec<StreamId> = [&held, &lapsing, &released, &removed, &never]
        .iter()
        .map(|k| k.stream().clone())
        .collect();
    let tenant = held.tenant().clone();
    let view = b.lease_expiries(&tenant, &streams).await.expect("ok");
    match view[..] {
        [
            LeaseView::Held { expires_in: h },
            LeaseView::Held { expires_in: l },
            LeaseView::Free,
            LeaseView::Free,
            LeaseView::Free,
        ] => {
            assert!(h <= long && h > long - Duration::from_secs(10), "{h:?}");
            assert!(l <= Duration::from_millis(300), "{l:?}");
        }
        _ => panic!("held, held, free, free, free: {view:?}"),
    }
    assert_eq!(
        b.lease_expiries(&tenant, &[]).await.expect("ok"),
        vec![],
        "nothing asked, nothing answered"
    );

    // The short lease lapses: the standby learns it, also after a sweep handled it.
    let d: &dyn Deployment = d;
    wait_until("the short lease lapses", Duration::from_secs(5), || async {
        lease_lapsed(d, &lapsing).await
    })
    .await;
    let lapsed = || async {
        b.lease_expiries(&tenant, std::slice::from_ref(lapsing.stream()))
            .await
            .expect("ok")
    };
    assert_eq!(lapsed().await, vec![LeaseView::Lapsed]);
    b.sweep_stale(&tenant, now_ms(), Duration::from_millis(1))
        .await
        .expect("ok");
    assert_eq!(lapsed().await, vec![LeaseView::Lapsed], "after a sweep too");
    // It asks, and takes it over; then the others see it held.
    match b
        .try_acquire(&lapsing, &pod("pod-b"), long)
        .await
        .expect("ok")
    {
        Acquired::Granted { took_over, .. } => {
            assert_eq!(took_over, Some((pod("pod-a"), fl)))
        }
        other => panic!("a lapsed lease is taken over: {other:?}"),
    }
    assert!(matches!(lapsed().await[..], [LeaseView::Held { .. }]));
    // Renewals move the time left.
    assert_eq!(
        a.beat(&[beat(&held, "pod-a", fh, now_ms())]).await,
        vec![BeatOutcome::Renewed]
    );
    match a.lease_expiries(&tenant, &streams[..1]).await.expect("ok")[..] {
        [LeaseView::Held { expires_in }] => assert!(expires_in > long - Duration::from_secs(10)),
        ref other => panic!("{other:?}"),
    }
}

async fn a_checkpoint_never_moves_back_within_a_fence(d: &mut dyn Deployment) {
    let (a, b) = (d.store(), d.store());
    let k = key("acme", "cc/monotonic");
    let ttl = Duration::from_secs(60);
    let fa = a
        .acquire(&k, &pod("pod-a"), ttl)
        .await
        .expect("ok")
        .expect("granted");
    let w = |fence: Fence, seq: u64, id: &str| CheckpointWrite {
        key: k.clone(),
        fence,
        seq: AckSeq(seq),
        id: EventId(id.into()),
    };
    let ckpt = || async { a.checkpoint(&k).await.expect("ok").map(|e| e.0) };
    assert_eq!(
        a.save_checkpoint(&w(fa, 5, "e5")).await,
        CheckpointOutcome::Saved
    );
    assert_eq!(
        a.save_checkpoint(&w(fa, 3, "e3")).await,
        CheckpointOutcome::Superseded,
        "a late ack"
    );
    assert_eq!(
        a.save_checkpoint(&w(fa, 5, "e5")).await,
        CheckpointOutcome::Superseded,
        "a repeat"
    );
    assert_eq!(ckpt().await.as_deref(), Some("e5"));
    // One batch with the same stream thrice, out of order: the newest is stored, the others
    // are superseded by it.
    assert_eq!(
        a.save_checkpoints(&[w(fa, 9, "e9"), w(fa, 10, "e10"), w(fa, 8, "e8")])
            .await,
        vec![
            CheckpointOutcome::Superseded,
            CheckpointOutcome::Saved,
            CheckpointOutcome::Superseded
        ]
    );
    assert_eq!(ckpt().await.as_deref(), Some("e10"));
    // Writes racing from many tasks, arriving in any order: the newest one stands.
    let a = Arc::new(a);
    let mut seqs: Vec<u64> = (11..=60).collect();
    seqs.reverse();
    seqs.rotate_left(17);
    let tasks: Vec<_> = seqs
        .into_iter()
        .map(|seq| {
            let (a, write) = (a.clone(), w(fa, seq, &format!("e{seq}")));
            tokio::spawn(async move { a.save_checkpoint(&write).await })
        })
        .collect();
    for t in tasks {
        let o = t.await.expect("task");
        assert!(
            matches!(o, CheckpointOutcome::Saved | CheckpointOutcome::Superseded),
            "{o:?}"
        );
    }
    assert_eq!(
        a.checkpoint(&k).await.expect("ok").map(|e| e.0).as_deref(),
        Some("e60")
    );
    // Sequences compare exactly across the whole u64 range (Lua's numbers would not).
    let big = 1u64 << 53;
    assert_eq!(
        a.save_checkpoint(&w(fa, big, "big")).await,
        CheckpointOutcome::Saved
    );
    assert_eq!(
        a.save_checkpoint(&w(fa, big + 1, "big+1")).await,
        CheckpointOutcome::Saved
    );
    assert_eq!(
        a.save_checkpoint(&w(fa, big, "big")).await,
        CheckpointOutcome::Superseded
    );
    assert_eq!(
        a.save_checkpoint(&w(fa, u64::MAX, "max")).await,
        CheckpointOutcome::Saved
    );

    // A new owner counts afresh: its first write wins over the old fence's high one; the old
    // fence is refused whatever its sequence.
    assert!(
        a.release(
            &k,
            fa,
            &transition(&k, StreamState::Stopped, "handover", fa)
        )
        .await
        .expect("ok")
    );
    let fb = b
        .acquire(&k, &pod("pod-b"), ttl)
        .await
        .expect("ok")
        .expect("granted");
    assert_eq!(
        b.save_checkpoint(&w(fb, 1, "b1")).await,
        CheckpointOutcome::Saved
    );
    assert_eq!(
        a.save_checkpoint(&w(fa, u64::MAX, "late")).await,
        CheckpointOutcome::Fenced
    );
    assert_eq!(
        b.checkpoint(&k).await.expect("ok").map(|e| e.0).as_deref(),
        Some("b1")
    );
}
