//! The Redis store against real Redis: every scenario runs on a single node and on a real
//! three-master Redis Cluster, both started by the test (see `common`). No mocks, no sleeps as
//! synchronisation: waits are bounded waits on conditions.

mod common;

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Deployment, RedisCluster, RedisServer};
use futures_util::StreamExt;
use streamkeeper_api::{EventId, Fence, PodName, StreamId, StreamState, Tenant, Transition};
use streamkeeper_coord::{
    AckSeq, Acquired, Beat, BeatOutcome, CheckpointOutcome, CheckpointWrite, ConnRecord, LeaseView,
    RedisStore, Store, StoreError, StreamKey, TransitionStream,
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

/// A checkpoint write with the next sequence number (they only grow, as an owner's do).
fn write(k: &StreamKey, fence: Fence, id: &str) -> CheckpointWrite {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    CheckpointWrite {
        key: k.clone(),
        fence,
        seq: AckSeq(SEQ.fetch_add(1, Ordering::Relaxed) + 1),
        id: EventId(id.into()),
    }
}

/// Stores a checkpoint with the next sequence number.
async fn save(s: &dyn Store, k: &StreamKey, fence: Fence, id: &str) -> CheckpointOutcome {
    s.save_checkpoint(&write(k, fence, id)).await
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
    lease_expiries_tell_a_standby_when_to_ask,
    a_checkpoint_never_moves_back_within_a_fence,
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
        || async { lease_lapsed(d, &k3) },
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
    let (a, b) = (store(d), store(d));
    let mut sub = b.subscribe().await.expect("subscribed");
    let k = key("acme", "cc/handover");
    let fa = a
        .acquire(&k, &pod("pod-a"), Duration::from_secs(60))
        .await
        .expect("ok")
        .expect("granted");
    a.beat(&[beat(&k, "pod-a", fa, now_ms())]).await;
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
    let (a, b) = (store(d), store(d));
    let mut sub = b.subscribe().await.expect("subscribed");
    let k = key("acme", "cc/failover");
    let fa = a
        .acquire(&k, &pod("pod-a"), Duration::from_secs(60))
        .await
        .expect("ok")
        .expect("granted");
    a.beat(&[last_beat(&k, "pod-a", fa, 1_000)]).await; // then pod-a is SIGKILLed
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
            owner.beat(&[b]).await;
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
            .sweep_stale(&k.tenant, now_ms(), Duration::from_secs(35))
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
    s.beat(&[beat(&k1, "pod-a", f1, 7_000)]).await;
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
    a.beat(&[beat(&k, "pod-a", fa, now_ms())]).await;
    assert!(a.pool_acquire(&k, fa, 1).await.expect("ok"));
    assert_eq!(save(&a, &k, fa, "e1").await, CheckpointOutcome::Saved);
    // A neighbour of the same tenant keeps everything.
    let n = key("acme", "cc/neighbour");
    let fnb = a
        .acquire(&n, &pod("pod-a"), ttl)
        .await
        .expect("ok")
        .expect("granted");
    a.beat(&[beat(&n, "pod-a", fnb, now_ms())]).await;
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
    let (a, b) = (store(d), store(d));
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
        .map(|k| k.stream.clone())
        .collect();
    let tenant = held.tenant.clone();
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
        lease_lapsed(d, &lapsing)
    })
    .await;
    let lapsed = || async {
        b.lease_expiries(&tenant, std::slice::from_ref(&lapsing.stream))
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
    let (a, b) = (store(d), store(d));
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
    s.beat(&[last_beat(&w, "pod-a", Fence(1), 1)]).await;
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
    s.beat(&beats).await;

    for b in &mut beats {
        b.record.last_pong = 2;
    }
    reset_stats(&server);
    assert!(
        s.beat(&beats)
            .await
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
    s.beat(&beats).await;
    assert_eq!(
        commands(&server).get("hset"),
        Some(&10),
        "only the changed records are written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_tick_costs_four_commands_per_tenant() {
    let server = RedisServer::start();
    let s = store(&server);
    let tenant: Tenant = "acme".parse().expect("tenant");
    let streams: Vec<StreamId> = (0..50)
        .map(|i| format!("cc/e{i}").parse().expect("id"))
        .collect();
    for st in &streams[..25] {
        let k = StreamKey {
            tenant: tenant.clone(),
            stream: st.clone(),
        };
        s.acquire(&k, &pod("pod-a"), Duration::from_secs(60))
            .await
            .expect("ok")
            .expect("granted");
    }
    // (The first call sends the script's source.)
    s.lease_expiries(&tenant, &streams).await.expect("ok");
    reset_stats(&server);
    let view = s.lease_expiries(&tenant, &streams).await.expect("ok");
    assert_eq!(
        view.iter()
            .filter(|v| matches!(v, LeaseView::Held { .. }))
            .count(),
        25
    );
    let c = commands(&server);
    assert_eq!(
        c.values().sum::<u64>(),
        4,
        "EVALSHA, TIME, MGET, ZMSCORE: {c:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_flush_costs_three_commands_per_script() {
    let server = RedisServer::start();
    let s = store(&server);
    let mut writes = Vec::new();
    for t in 0..20 {
        for i in 0..10 {
            let k = key(&format!("tenant-{t}"), &format!("cc/c{i}"));
            let f = s
                .acquire(&k, &pod("pod-a"), Duration::from_secs(60))
                .await
                .expect("ok")
                .expect("granted");
            // Three acks of the stream since the last flush: one write.
            for n in 0..3 {
                writes.push(write(&k, f, &format!("e{n}")));
            }
        }
    }
    // (The first call sends the script's source.)
    let w = key("warmup", "cc/w");
    let fw = s
        .acquire(&w, &pod("pod-a"), Duration::from_secs(60))
        .await
        .expect("ok")
        .expect("granted");
    save(&s, &w, fw, "0").await;
    reset_stats(&server);
    let out = s.save_checkpoints(&writes).await;
    assert_eq!(
        out.iter()
            .filter(|o| **o == CheckpointOutcome::Saved)
            .count(),
        200,
        "one per stream"
    );
    let c = commands(&server);
    assert_eq!(
        c.values().sum::<u64>(),
        3,
        "a single node: one script for every tenant (EVALSHA, MGET, MSET): {c:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_checkpoint_flush_costs_three_commands_per_tenant() {
    let cluster = RedisCluster::start();
    let s = store(&cluster);
    let tenants = one_tenant_per_node(&cluster);
    let mut writes = Vec::new();
    for (t, _) in &tenants {
        for i in 0..10 {
            let k = StreamKey {
                tenant: t.clone(),
                stream: format!("cc/c{i}").parse().expect("id"),
            };
            let f = s
                .acquire(&k, &pod("pod-a"), Duration::from_secs(60))
                .await
                .expect("ok")
                .expect("granted");
            writes.push(write(&k, f, "e1"));
            writes.push(write(&k, f, "e2"));
        }
    }
    // (The first call sends the script's source to each node.)
    let mut first = Vec::new();
    for (t, _) in &tenants {
        let k = StreamKey {
            tenant: t.clone(),
            stream: "cc/warmup".parse().expect("id"),
        };
        let f = s
            .acquire(&k, &pod("pod-a"), Duration::from_secs(60))
            .await
            .expect("ok")
            .expect("granted");
        first.push(write(&k, f, "e0"));
    }
    assert!(
        s.save_checkpoints(&first)
            .await
            .iter()
            .all(|o| *o == CheckpointOutcome::Saved)
    );
    for n in &cluster.nodes {
        common::text(n.port, &["CONFIG", "RESETSTAT"]);
    }
    let out = s.save_checkpoints(&writes).await;
    assert_eq!(
        out.iter()
            .filter(|o| **o == CheckpointOutcome::Saved)
            .count(),
        30
    );
    let total: u64 = cluster
        .nodes
        .iter()
        .map(|n| commands(n).values().sum::<u64>())
        .sum();
    assert_eq!(total, 3 * 3, "EVALSHA, MGET, MSET per tenant");
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
            assert!(
                matches!(r[..], [BeatOutcome::Failed(StoreError::Unavailable(_))]),
                "{url}: {r:?}"
            );
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

/// Tenants whose keys live on three different masters of `cluster`, in node order.
fn one_tenant_per_node(cluster: &RedisCluster) -> Vec<(Tenant, u16)> {
    let mut picked: Vec<(Tenant, u16)> = Vec::new();
    for i in 0..64 {
        let t: Tenant = format!("tenant-{i}").parse().expect("tenant");
        let port = cluster.node_of(&format!("sk:{{{t}}}:live"));
        if picked.iter().all(|(_, p)| *p != port) {
            picked.push((t, port));
        }
        if picked.len() == 3 {
            return picked;
        }
    }
    panic!("64 tenants did not cover three masters: {picked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_cluster_node_down_each_lease_gets_its_own_beat_outcome() {
    let mut cluster = RedisCluster::start();
    let (a, b) = (store(&cluster), store(&cluster));
    let nodes = one_tenant_per_node(&cluster);
    let (renewed, fenced, down) = (
        StreamKey {
            tenant: nodes[0].0.clone(),
            stream: "cc/renewed".parse().expect("id"),
        },
        StreamKey {
            tenant: nodes[1].0.clone(),
            stream: "cc/fenced".parse().expect("id"),
        },
        StreamKey {
            tenant: nodes[2].0.clone(),
            stream: "cc/down".parse().expect("id"),
        },
    );
    let ttl = Duration::from_secs(60);
    let f_renewed = a
        .acquire(&renewed, &pod("pod-a"), ttl)
        .await
        .expect("ok")
        .expect("granted");
    let f_down = a
        .acquire(&down, &pod("pod-a"), ttl)
        .await
        .expect("ok")
        .expect("granted");
    // pod-a's lease on the second node lapses and pod-b takes it there.
    let f_fenced = a
        .acquire(&fenced, &pod("pod-a"), Duration::from_millis(200))
        .await
        .expect("ok")
        .expect("granted");
    wait_until("the short lease lapses", Duration::from_secs(5), || async {
        lease_lapsed(&cluster, &fenced)
    })
    .await;
    assert!(
        b.acquire(&fenced, &pod("pod-b"), ttl)
            .await
            .expect("ok")
            .is_some()
    );

    cluster.stop_node(nodes[2].1);
    let beats = [
        beat(&down, "pod-a", f_down, now_ms()),
        beat(&fenced, "pod-a", f_fenced, now_ms()),
        beat(&renewed, "pod-a", f_renewed, now_ms()),
    ];
    let t = Instant::now();
    let out = a.beat(&beats).await;
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "bounded by the operation timeout: {:?}",
        t.elapsed()
    );
    assert!(
        matches!(
            out[..],
            [
                BeatOutcome::Failed(StoreError::Unavailable(_)),
                BeatOutcome::Fenced,
                BeatOutcome::Renewed,
            ]
        ),
        "one outcome per lease, whatever the other nodes did: {out:?}"
    );
    // The renewal on the live node really happened: its lease has most of a TTL left.
    let leases = format!("sk:{{{}}}:leases", renewed.tenant);
    let left = common::value_text(
        cluster
            .command_for(Some(&leases), &["ZSCORE", &leases, renewed.stream.as_str()])
            .expect("ZSCORE"),
    )
    .parse::<f64>()
    .expect("a score");
    let time = match cluster.command_for(Some(&leases), &["TIME"]) {
        Ok(redis::Value::Array(t)) => {
            common::value_text(t[0].clone())
                .parse::<f64>()
                .expect("secs")
                * 1000.0
        }
        other => panic!("TIME: {other:?}"),
    };
    assert!(left - time > 50_000.0, "renewed for a TTL: {}", left - time);

    // The node comes back empty: its lease is re-asserted; the others answer as before.
    cluster.restart_node(nodes[2].1);
    wait_until(
        "the restarted node serves its tenant",
        Duration::from_secs(20),
        || async {
            let out = a.beat(&beats).await;
            matches!(
                out[..],
                [
                    BeatOutcome::Reasserted,
                    BeatOutcome::Fenced,
                    BeatOutcome::Renewed
                ]
            )
        },
    )
    .await;
}
