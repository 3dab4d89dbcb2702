//! The Redis store against real Redis: every scenario runs on a single node and on a real
//! three-master Redis Cluster, both started by the test (see `common`). No mocks, no sleeps as
//! synchronisation: waits are bounded waits on conditions.

mod common;

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Deployment, RedisCluster, RedisServer};
use futures_util::StreamExt;
use streamkeeper_api::{EventId, Fence, PodName, StreamState, Tenant, Transition};
use streamkeeper_coord::{
    Acquired, Beat, BeatOutcome, CheckpointWrite, ConnRecord, RedisStore, Store, StoreError,
    StreamKey, TransitionStream,
};

// ---------------------------------------------------------------------------------------------
// helpers

fn key(tenant: &str, stream: &str) -> StreamKey {
    StreamKey {
        tenant: tenant.parse().expect("tenant"),
        stream: stream.parse().expect("stream"),
    }
}

fn pod(p: &str) -> PodName {
    p.parse().expect("pod")
}

fn store(d: &dyn Deployment) -> RedisStore {
    RedisStore::connect(&d.url()).expect("url parses")
}

fn record(k: &StreamKey, owner: &str, fence: Fence, last_pong: u64) -> ConnRecord {
    ConnRecord {
        stream: k.stream.clone(),
        tenant: k.tenant.clone(),
        socket_id: "sock-1".into(),
        last_pong,
        platform: "generic".into(),
        state: StreamState::Active,
        retry_count: 0,
        owner: pod(owner),
        fence,
    }
}

fn beat(k: &StreamKey, owner: &str, fence: Fence, last_pong: u64) -> Beat {
    Beat {
        key: k.clone(),
        fence,
        record: record(k, owner, fence, last_pong),
        lease_ttl: Duration::from_secs(60),
    }
}

/// A beat that leaves a lease of 1 ms: the owner stops vouching right away.
fn last_beat(k: &StreamKey, owner: &str, fence: Fence, last_pong: u64) -> Beat {
    Beat {
        lease_ttl: Duration::from_millis(1),
        ..beat(k, owner, fence, last_pong)
    }
}

fn transition(k: &StreamKey, to: StreamState, reason: &str, fence: Fence) -> Transition {
    Transition {
        stream: k.stream.clone(),
        tenant: k.tenant.clone(),
        from: StreamState::Active,
        to,
        reason: reason.into(),
        owner: Some(pod("pod-a")),
        fence: Some(fence),
        at: 1,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Polls `check` until it holds, failing the test after `within`.
async fn wait_until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next transition, failing the test after `within`.
async fn next(sub: &mut TransitionStream, within: Duration) -> Transition {
    match tokio::time::timeout(within, sub.next()).await {
        Ok(Some(t)) => t,
        Ok(None) => panic!("the transition stream ended"),
        Err(_) => panic!("no transition within {within:?}"),
    }
}

/// Whether Redis's clock has passed the lease expiry of `k` (the lease lapsed).
fn lease_lapsed(d: &dyn Deployment, k: &StreamKey) -> bool {
    let leases = format!("sk:{{{}}}:leases", k.tenant);
    let score = match d.command_for(Some(&leases), &["ZSCORE", &leases, k.stream.as_str()]) {
        Ok(v) => common::value_text(v).parse::<f64>().unwrap_or(0.0),
        Err(e) => panic!("ZSCORE: {e}"),
    };
    let now = match d.command_for(Some(&leases), &["TIME"]) {
        Ok(redis::Value::Array(t)) => {
            let secs: f64 = t
                .first()
                .cloned()
                .map(common::value_text)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0.0);
            let micros: f64 = t
                .get(1)
                .cloned()
                .map(common::value_text)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0.0);
            secs * 1000.0 + (micros / 1000.0).floor()
        }
        other => panic!("TIME: {other:?}"),
    };
    score <= now
}

/// Runs a scenario on a fresh single node and on a fresh three-master cluster.
macro_rules! on_single_node_and_cluster {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn single_node() {
                let mut d = super::RedisServer::start();
                super::$scenario(&mut d).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                let mut d = super::RedisCluster::start();
                super::$scenario(&mut d).await;
            }
        }
    )*};
}

on_single_node_and_cluster!(
    a_standby_learns_when_to_ask_and_a_new_owner_whom_it_took_over,
    one_owner_renews_and_an_old_fence_is_refused,
    a_taken_over_stream_moves_to_its_new_owner_and_is_not_swept,
    a_release_hands_over_at_once_and_fences_the_releaser,
    one_dead_per_stale_entry_however_many_pods_sweep,
    the_pool_never_grants_past_its_limit,
    a_checkpoint_is_refused_for_an_old_fence,
    beat_reasserts_after_redis_lost_everything,
    unavailable_is_fast_and_the_store_recovers_on_restart,
    the_subscription_survives_a_restart,
    a_malformed_message_is_skipped,
    status_lists_streams_with_last_pong_from_the_index,
    a_removed_stream_leaves_nothing_behind_and_fences_its_owner,
);

// ---------------------------------------------------------------------------------------------
// scenarios

async fn a_standby_learns_when_to_ask_and_a_new_owner_whom_it_took_over(d: &mut dyn Deployment) {
    let (a, b) = (store(d), store(d));
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
        lease_lapsed(d, &k)
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
    let (a, b) = (store(d), store(d));
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
        a.beat(&[beat(&k, "pod-a", fa, now_ms())])
            .await
            .expect("ok"),
        vec![BeatOutcome::Renewed]
    );
    assert_eq!(
        b.beat(&[beat(&k, "pod-b", Fence(0), now_ms())])
            .await
            .expect("ok"),
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
        lease_lapsed(d, &k2)
    })
    .await;
    let f_new = b
        .acquire(&k2, &pod("pod-b"), Duration::from_secs(60))
        .await
        .expect("ok")
        .expect("taken");
    assert!(f_new > f_old, "fences grow: {f_new} > {f_old}");
    assert_eq!(
        a.beat(&[beat(&k2, "pod-a", f_old, now_ms())])
            .await
            .expect("ok"),
        vec![BeatOutcome::Fenced]
    );
    assert!(
        !a.save_checkpoint(&k2, f_old, &EventId("e-old".into()))
            .await
            .expect("ok")
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
        b.beat(&[beat(&k2, "pod-b", f_new, now_ms())])
            .await
            .expect("ok"),
        vec![BeatOutcome::Renewed]
    );
    assert!(
        b.save_checkpoint(&k2, f_new, &EventId("e-new".into()))
            .await
            .expect("ok")
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
        || async { lease_lapsed(d, &k3) },
    )
    .await;
    assert_eq!(
        a.beat(&[beat(&k3, "pod-a", f3, now_ms())])
            .await
            .expect("ok"),
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
    let out = a.beat(&beats).await.expect("ok");
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
    let (a, b) = (store(d), store(d));
    let mut sub = b.subscribe().await.expect("subscribed");
    let k = key("acme", "cc/handover");
    let fa = a
        .acquire(&k, &pod("pod-a"), Duration::from_secs(60))
        .await
        .expect("ok")
        .expect("granted");
    a.beat(&[beat(&k, "pod-a", fa, now_ms())])
        .await
        .expect("ok");
    assert!(a.pool_acquire(&k, fa, 1).await.expect("ok"));
    assert!(
        a.save_checkpoint(&k, fa, &EventId("e7".into()))
            .await
            .expect("ok")
    );
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
        a.beat(&[beat(&k2, "pod-a", f2, now_ms())])
            .await
            .expect("ok"),
        vec![BeatOutcome::Fenced]
    );
    assert!(
        !a.release(&k2, f2, &handover).await.expect("ok"),
        "released once"
    );
    assert!(
        !a.save_checkpoint(&k2, f2, &EventId("late".into()))
            .await
            .expect("ok")
    );
}

async fn a_taken_over_stream_moves_to_its_new_owner_and_is_not_swept(d: &mut dyn Deployment) {
    let (a, b) = (store(d), store(d));
    let mut sub = b.subscribe().await.expect("subscribed");
    let k = key("acme", "cc/failover");
    let fa = a
        .acquire(&k, &pod("pod-a"), Duration::from_secs(60))
        .await
        .expect("ok")
        .expect("granted");
    a.beat(&[last_beat(&k, "pod-a", fa, 1_000)])
        .await
        .expect("ok"); // then pod-a is SIGKILLed
    let d: &dyn Deployment = d;
    wait_until("pod-a's lease lapses", Duration::from_secs(5), || async {
        lease_lapsed(d, &k)
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
        b.sweep_stale(&k.tenant, now_ms(), Duration::from_secs(1))
            .await
            .expect("ok")
            .is_empty()
    );
    assert_eq!(
        b.beat(&[beat(&k, "pod-b", fb, now_ms())])
            .await
            .expect("ok"),
        vec![BeatOutcome::Renewed]
    );
    let recs = b.records().await.expect("ok");
    assert_eq!(
        (recs.len(), recs[0].owner.clone(), recs[0].fence),
        (1, pod("pod-b"), fb)
    );
    assert_eq!(
        a.beat(&[beat(&k, "pod-a", fa, now_ms())])
            .await
            .expect("ok"),
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
    let owner = store(d);
    let listener = store(d);
    let mut sub = listener.subscribe().await.expect("subscribed");
    let sweepers: Vec<Arc<RedisStore>> = (0..PODS).map(|_| Arc::new(store(d))).collect();
    // Tenants spread over the cluster's nodes: the one subscription hears them all.
    let tenants: Vec<Tenant> = (0..6)
        .map(|i| format!("tenant-{i}").parse().expect("tenant"))
        .collect();
    if d.is_cluster() {
        let nodes: HashSet<u16> = tenants
            .iter()
            .map(|t| d.port_of(&format!("sk:{{{t}}}:live")))
            .collect();
        assert_eq!(nodes.len(), 3, "the tenants live on every master");
    }
    let mut expected = HashSet::new();
    let d: &dyn Deployment = d;
    for round in 0..ROUNDS {
        let tenant = &tenants[round % tenants.len()];
        let sk = |name: &str| StreamKey {
            tenant: tenant.clone(),
            stream: format!("cc/{name}-{round}").parse().expect("id"),
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
            owner.beat(&[b]).await.expect("ok");
            if key == &k {
                f = fence;
            }
        }
        // Stale: the owner stopped vouching (lease lapsed) and the last pong is old. Not stale:
        // a fresh stream; an owner still renewing while its socket reconnects (old pong); a
        // lapsed lease whose last pong is recent.
        wait_until("the leases lapse", Duration::from_secs(5), || async {
            lease_lapsed(d, &k) && lease_lapsed(d, &just_lapsed)
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
        assert_eq!(dead[0].stream, k.stream);
        assert_eq!(
            (dead[0].from, dead[0].to, dead[0].fence),
            (StreamState::Active, StreamState::Dead, Some(f))
        );
        assert_eq!(dead[0].owner, Some(pod("pod-a")));
        expected.insert((k.tenant.clone(), k.stream.clone()));
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
    let pods: Vec<Arc<RedisStore>> = (0..4).map(|_| Arc::new(store(d))).collect();
    // Redis's own count, sampled while the pods race: never above the limit.
    let pool_key = "sk:{acme}:pool";
    let port = d.port_of(pool_key);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
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
    };
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
    let (samples, redis_max) = sampler.await.expect("sampler");
    assert!(samples > 0);
    assert!(
        redis_max <= i64::from(LIMIT),
        "Redis held {redis_max} slots, limit {LIMIT}"
    );
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
        || async { lease_lapsed(d, &dying) },
    )
    .await;
    assert!(
        s.pool_acquire(&other, fo, 1).await.expect("ok"),
        "the lapsed holder was evicted"
    );
    let pool = "sk:{solo}:pool";
    let n = d.command_for(Some(pool), &["HLEN", pool]).expect("HLEN");
    assert_eq!(n, redis::Value::Int(1));
}

async fn a_checkpoint_is_refused_for_an_old_fence(d: &mut dyn Deployment) {
    let (a, b) = (store(d), store(d));
    let k = key("acme", "cc/ckpt");
    let fa = a
        .acquire(&k, &pod("pod-a"), Duration::from_secs(60))
        .await
        .expect("ok")
        .expect("granted");
    assert!(
        a.save_checkpoint(&k, fa, &EventId("e1".into()))
            .await
            .expect("ok")
    );
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
    assert!(
        !a.save_checkpoint(&k, fa, &EventId("e-stale".into()))
            .await
            .expect("ok")
    );
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
        CheckpointWrite {
            key: k.clone(),
            fence: fa,
            id: EventId("x".into()),
        },
        CheckpointWrite {
            key: k.clone(),
            fence: fb,
            id: EventId("e2".into()),
        },
        CheckpointWrite {
            key: k2.clone(),
            fence: f2,
            id: EventId("o1".into()),
        },
        CheckpointWrite {
            key: key("other", "cc/nobody"),
            fence: f2,
            id: EventId("n".into()),
        },
    ];
    assert_eq!(
        b.save_checkpoints(&writes).await.expect("ok"),
        vec![false, true, true, false]
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

async fn beat_reasserts_after_redis_lost_everything(d: &mut dyn Deployment) {
    let (a, b) = (store(d), store(d));
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
        a.beat(&[beat(&k, "pod-a", fa, now_ms())])
            .await
            .expect("ok"),
        vec![BeatOutcome::Renewed]
    );

    d.flushall(); // Redis restarted empty

    assert_eq!(
        a.beat(&[beat(&k, "pod-a", fa, now_ms())])
            .await
            .expect("ok"),
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
        a.beat(&[beat(&k, "pod-a", fa, now_ms())])
            .await
            .expect("ok"),
        vec![BeatOutcome::Renewed]
    );
    assert!(
        a.save_checkpoint(&k, fa, &EventId("after".into()))
            .await
            .expect("ok")
    );
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
    // go back, even with the counter lost (they are floored at Redis's clock in ms), so the
    // newcomer's grant is the newest: it wins and the old owner is fenced. One owner, always.
    d.flushall();
    let fb = b
        .acquire(&k, &pod("pod-b"), Duration::from_secs(60))
        .await
        .expect("ok")
        .expect("granted");
    assert!(fb > fa, "fences only grow, also across a wipe: {fb} > {fa}");
    assert_eq!(
        a.beat(&[beat(&k, "pod-a", fa, now_ms())])
            .await
            .expect("ok"),
        vec![BeatOutcome::Fenced]
    );
    assert!(
        !a.save_checkpoint(&k, fa, &EventId("x".into()))
            .await
            .expect("ok")
    );
    assert_eq!(
        b.beat(&[beat(&k, "pod-b", fb, now_ms())])
            .await
            .expect("ok"),
        vec![BeatOutcome::Renewed]
    );
}

async fn unavailable_is_fast_and_the_store_recovers_on_restart(d: &mut dyn Deployment) {
    let s = store(d);
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
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
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
            .sweep_stale(&k.tenant, now_ms(), Duration::from_secs(35))
            .await;
        assert!(
            matches!(&r, Ok(v) if v.is_empty()) || matches!(r, Err(StoreError::Unavailable(_))),
            "{r:?}"
        );
        assert!(t.elapsed() < bound, "sweep took {:?}", t.elapsed());

        let t = Instant::now();
        let r = s.save_checkpoint(&k, f, &EventId("e".into())).await;
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
        assert!(t.elapsed() < bound, "checkpoint took {:?}", t.elapsed());
    }
    // A store made while Redis is down is fine; it fails like the others.
    let late = store(d);
    assert!(matches!(late.ping().await, Err(StoreError::Unavailable(_))));

    d.restart();
    wait_until(
        "the store answers again",
        Duration::from_secs(15),
        || async { s.ping().await.is_ok() },
    )
    .await;
    assert_eq!(
        s.beat(&[beat(&k, "pod-a", f, now_ms())]).await.expect("ok"),
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
        s.sweep_stale(&k.tenant, u64::MAX, Duration::from_secs(60))
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

async fn the_subscription_survives_a_restart(d: &mut dyn Deployment) {
    let s = store(d);
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

async fn a_malformed_message_is_skipped(d: &mut dyn Deployment) {
    let s = store(d);
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
    let s = store(d);
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
        .await
        .expect("ok");
    // Unchanged records: only lastPong moves, in the index; status merges it.
    s.beat(&[beat(&k1, "pod-a", f1, 5_000), beat(&k2, "pod-b", f2, 6_000)])
        .await
        .expect("ok");
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
    s.beat(&[beat(&k1, "pod-a", f1, 7_000)]).await.expect("ok");
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

async fn a_removed_stream_leaves_nothing_behind_and_fences_its_owner(d: &mut dyn Deployment) {
    let (a, b) = (store(d), store(d));
    let mut sub = b.subscribe().await.expect("subscribed");
    let k = key("acme", "cc/removed");
    let ttl = Duration::from_secs(60);
    let fa = a
        .acquire(&k, &pod("pod-a"), ttl)
        .await
        .expect("ok")
        .expect("granted");
    a.beat(&[beat(&k, "pod-a", fa, now_ms())])
        .await
        .expect("ok");
    assert!(a.pool_acquire(&k, fa, 1).await.expect("ok"));
    assert!(
        a.save_checkpoint(&k, fa, &EventId("e1".into()))
            .await
            .expect("ok")
    );
    // A neighbour of the same tenant keeps everything.
    let n = key("acme", "cc/neighbour");
    let fnb = a
        .acquire(&n, &pod("pod-a"), ttl)
        .await
        .expect("ok")
        .expect("granted");
    a.beat(&[beat(&n, "pod-a", fnb, now_ms())])
        .await
        .expect("ok");
    assert!(
        a.save_checkpoint(&n, fnb, &EventId("n1".into()))
            .await
            .expect("ok")
    );

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
    // Redis's own view: only the lease tombstone is left, and it expires.
    let tag = format!("sk:{{{}}}:", k.tenant);
    let at = |key: &str, args: &[&str]| {
        d.command_for(Some(&format!("{tag}{key}")), args)
            .expect("command")
    };
    let (lease, conn, ckpt) = (
        format!("{tag}lease:{}", k.stream),
        format!("{tag}conn:{}", k.stream),
        format!("{tag}ckpt:{}", k.stream),
    );
    assert_eq!(at("live", &["EXISTS", &conn, &ckpt]), redis::Value::Int(0));
    for (zset, what) in [("leases", "lease expiry"), ("live", "live entry")] {
        assert_eq!(
            at(
                zset,
                &["ZSCORE", &format!("{tag}{zset}"), k.stream.as_str()]
            ),
            redis::Value::Nil,
            "{what}"
        );
    }
    assert_eq!(
        at(
            "pool",
            &["HEXISTS", &format!("{tag}pool"), k.stream.as_str()]
        ),
        redis::Value::Int(0)
    );
    let tombstone = common::value_text(at("live", &["GET", &lease]));
    assert!(tombstone.ends_with(":removed"), "{tombstone}");
    match at("live", &["PTTL", &lease]) {
        redis::Value::Int(ms) => assert!(ms > 0, "the tombstone expires: {ms}"),
        other => panic!("PTTL: {other:?}"),
    }

    // The owner that still runs it is fenced everywhere; it re-asserts nothing.
    assert_eq!(
        a.beat(&[beat(&k, "pod-a", fa, now_ms())])
            .await
            .expect("ok"),
        vec![BeatOutcome::Fenced]
    );
    assert!(
        !a.save_checkpoint(&k, fa, &EventId("late".into()))
            .await
            .expect("ok")
    );
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
        a.beat(&[beat(&n, "pod-a", fnb, now_ms())])
            .await
            .expect("ok"),
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

// ---------------------------------------------------------------------------------------------
// single node: costs as Redis counts them (INFO commandstats counts commands run inside Lua
// scripts too), and secrets

/// Commands Redis ran since the last `CONFIG RESETSTAT`, by name (INFO and CONFIG left out).
fn commands(server: &RedisServer) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for line in server.info("commandstats").lines() {
        let Some(rest) = line.strip_prefix("cmdstat_") else {
            continue;
        };
        let Some((name, stats)) = rest.split_once(':') else {
            continue;
        };
        let calls = stats
            .split(',')
            .find_map(|kv| kv.strip_prefix("calls="))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        if name != "info" && !name.starts_with("config") {
            out.insert(name.to_owned(), calls);
        }
    }
    out
}

fn reset_stats(server: &RedisServer) {
    common::text(server.port, &["CONFIG", "RESETSTAT"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_costs_its_stale_entries_not_the_streams() {
    let server = RedisServer::start();
    let s = store(&server);
    // Load the sweep script (the first call of a script on a server sends its source once).
    let w = key("warmup", "cc/w");
    s.beat(&[last_beat(&w, "pod-a", Fence(1), 1)])
        .await
        .expect("ok");
    wait_until("the lease lapses", Duration::from_secs(5), || async {
        lease_lapsed(&server, &w)
    })
    .await;
    assert_eq!(
        s.sweep_stale(&w.tenant, 100_001, Duration::from_secs(35))
            .await
            .expect("ok")
            .len(),
        1
    );
    let mut cost = Vec::new();
    for (tenant, n) in [("small", 500usize), ("big", 5_000)] {
        // Stale: every 997th stream's owner stopped vouching long ago. The others vouch; some of
        // them (every 13th) have an old pong (reconnecting) and must cost nothing.
        let beats: Vec<Beat> = (0..n)
            .map(|i| {
                let k = key(tenant, &format!("cc/s{i}"));
                let f = Fence(1 + i as u64);
                match (i % 997 == 5, i % 13 == 0) {
                    (true, _) => last_beat(&k, "pod-a", f, 1_000),
                    (false, true) => beat(&k, "pod-a", f, 1_000),
                    (false, false) => beat(&k, "pod-a", f, 100_000),
                }
            })
            .collect();
        let stale: Vec<StreamKey> = beats
            .iter()
            .filter(|b| b.lease_ttl < Duration::from_secs(1))
            .map(|b| b.key.clone())
            .collect();
        assert!(
            s.beat(&beats)
                .await
                .expect("ok")
                .iter()
                .all(|o| *o == BeatOutcome::Reasserted)
        );
        let t: Tenant = tenant.parse().expect("tenant");
        wait_until("the leases lapse", Duration::from_secs(5), || async {
            stale.iter().all(|k| lease_lapsed(&server, k))
        })
        .await;
        let stale = stale.len();

        reset_stats(&server);
        let dead = s
            .sweep_stale(&t, 100_001, Duration::from_secs(35))
            .await
            .expect("ok");
        assert_eq!(dead.len(), stale);
        let c = commands(&server);
        let total: u64 = c.values().sum();
        assert!(
            !c.contains_key("scan") && !c.contains_key("keys") && !c.contains_key("zrange"),
            "{c:?}"
        );
        cost.push((stale, total));

        reset_stats(&server);
        assert!(
            s.sweep_stale(&t, 100_001, Duration::from_secs(35))
                .await
                .expect("ok")
                .is_empty()
        );
        let c = commands(&server);
        assert_eq!(
            c.values().sum::<u64>(),
            1,
            "nothing stale costs one read: {c:?}"
        );
    }
    // 6 stale of 5,000 vs 1 stale of 500: the probe, the script and its constant part (TIME,
    // ZRANGEBYSCORE, 2 ZREM), then 6 commands per stale entry.
    let [(s1, c1), (s2, c2)] = [cost[0], cost[1]];
    assert_eq!((s1, s2), (1, 6));
    assert_eq!(
        (c1, c2),
        (6 + 6, 6 + 6 * 6),
        "the cost grows with the stale entries only: {cost:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_beat_costs_a_few_commands_per_tenant_and_rewrites_only_changed_records() {
    let server = RedisServer::start();
    let s = store(&server);
    let ks: Vec<StreamKey> = (0..1_000)
        .map(|i| key("acme", &format!("cc/b{i}")))
        .collect();
    let mut beats: Vec<Beat> = ks
        .iter()
        .enumerate()
        .map(|(i, k)| beat(k, "pod-a", Fence(i as u64 + 1), 1))
        .collect();
    s.beat(&beats).await.expect("ok");

    for b in &mut beats {
        b.record.last_pong = 2;
    }
    reset_stats(&server);
    assert!(
        s.beat(&beats)
            .await
            .expect("ok")
            .iter()
            .all(|o| *o == BeatOutcome::Renewed)
    );
    let c = commands(&server);
    // Two scripts of 500: EVALSHA, TIME, MGET, ZMSCORE x2, ZADD x2 each; the registry is known.
    assert_eq!(c.values().sum::<u64>(), 14, "{c:?}");
    assert_eq!(c.get("hset"), None);

    for b in beats.iter_mut().take(10) {
        b.record.state = StreamState::Degraded;
        b.record.last_pong = 3;
    }
    reset_stats(&server);
    s.beat(&beats).await.expect("ok");
    assert_eq!(
        commands(&server).get("hset"),
        Some(&10),
        "only the changed records are written"
    );
}

/// A "Redis" that accepts connections and never answers (a blackholed or frozen server).
async fn silent_listener() -> (u16, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = l.accept().await {
            held.push(sock);
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_is_bounded_when_redis_hangs() {
    let (port, task) = silent_listener().await;
    for url in [
        format!("redis://127.0.0.1:{port}"),
        format!("redis+cluster://127.0.0.1:{port}"),
    ] {
        let s = RedisStore::connect(&url).expect("parses");
        for _ in 0..2 {
            let t = Instant::now();
            let r = s
                .beat(&[beat(&key("acme", "cc/q"), "pod-a", Fence(1), 1)])
                .await;
            assert!(matches!(r, Err(StoreError::Unavailable(_))), "{url}: {r:?}");
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "{url}: took {:?}",
                t.elapsed()
            );
        }
        // The subscriber gives up its attempt just as fast and keeps retrying in the background.
        let t = Instant::now();
        let _sub = s.subscribe().await.expect("a stream, connected later");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{url}: subscribe took {:?}",
            t.elapsed()
        );
    }
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_appear_in_errors_or_debug() {
    let secret = "Sup3r-Secret";
    let mut server = RedisServer::start_with(&["--requirepass", secret]);
    let good = RedisStore::connect(&format!("redis://:{secret}@127.0.0.1:{}", server.port))
        .expect("parses");
    let k = key("acme", "cc/q");
    assert!(
        good.acquire(&k, &pod("pod-a"), Duration::from_secs(60))
            .await
            .expect("ok")
            .is_some()
    );
    assert!(!format!("{good:?}").contains(secret));
    assert!(!good.target().contains(secret));

    let wrong = "Wr0ng-Secret";
    let bad = RedisStore::connect(&format!("redis://:{wrong}@127.0.0.1:{}", server.port))
        .expect("parses");
    let err = bad.ping().await.expect_err("refused").to_string();
    assert!(!err.contains(wrong), "{err}");

    let cluster_url = format!(
        "redis+cluster://:{secret}@127.0.0.1:{},127.0.0.1:1",
        server.port
    );
    assert!(!format!("{:?}", RedisStore::connect(&cluster_url).expect("parses")).contains(secret));
    let err = RedisStore::connect(&format!("redis+cluster://:{secret}@"))
        .expect_err("no node")
        .to_string();
    assert!(!err.contains(secret), "{err}");

    server.stop();
    let err = good.ping().await.expect_err("down").to_string();
    assert!(!err.contains(secret), "{err}");
}
