//! What only the Redis store has, against real Redis: the cost of each operation as Redis
//! counts it, bounded failure when Redis hangs, secrets kept out of errors, and one outcome
//! per lease with a cluster node down. The behaviour both stores share is the contract suite
//! (`store_contract.rs`).

mod common;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use common::*;
use streamkeeper_api::{Fence, StreamId, StreamState, Tenant};
use streamkeeper_coord::{
    Beat, BeatOutcome, CheckpointOutcome, LeaseView, RedisStore, Store, StoreError, StreamKey,
};

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
    text(server.port, &["CONFIG", "RESETSTAT"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_costs_its_stale_entries_not_the_streams() {
    let server = RedisServer::start();
    let s = server.store();
    // Load the sweep script (the first call of a script on a server sends its source once).
    let w = key("warmup", "cc/w");
    s.beat(&[last_beat(&w, "pod-a", Fence(1), 1)]).await;
    wait_until("the lease lapses", Duration::from_secs(5), || async {
        lease_lapsed(&server, &w).await
    })
    .await;
    assert_eq!(
        s.sweep_stale(w.tenant(), 100_001, Duration::from_secs(35))
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
            for k in &stale {
                if !lease_lapsed(&server, k).await {
                    return false;
                }
            }
            true
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
    let s = server.store();
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
    let s = server.store();
    let tenant: Tenant = "acme".parse().expect("tenant");
    let streams: Vec<StreamId> = (0..50)
        .map(|i| format!("cc/e{i}").parse().expect("id"))
        .collect();
    for st in &streams[..25] {
        let k = StreamKey::new(tenant.clone(), st.clone());
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
    let s = server.store();
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
    let s = cluster.store();
    let tenants = one_tenant_per_node(&cluster);
    let mut writes = Vec::new();
    for (t, _) in &tenants {
        for i in 0..10 {
            let k = StreamKey::new(t.clone(), format!("cc/c{i}").parse().expect("id"));
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
        let k = StreamKey::new(t.clone(), "cc/warmup".parse().expect("id"));
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
        text(n.port, &["CONFIG", "RESETSTAT"]);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_cluster_node_down_each_lease_gets_its_own_beat_outcome() {
    let mut cluster = RedisCluster::start();
    let (a, b) = (cluster.store(), cluster.store());
    let nodes = one_tenant_per_node(&cluster);
    let (renewed, fenced, down) = (
        StreamKey::new(nodes[0].0.clone(), "cc/renewed".parse().expect("id")),
        StreamKey::new(nodes[1].0.clone(), "cc/fenced".parse().expect("id")),
        StreamKey::new(nodes[2].0.clone(), "cc/down".parse().expect("id")),
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
        lease_lapsed(&cluster, &fenced).await
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
    let leases = format!("sk:{{{}}}:leases", renewed.tenant());
    let left = value_text(
        cluster
            .command_for(
                Some(&leases),
                &["ZSCORE", &leases, renewed.stream().as_str()],
            )
            .expect("ZSCORE"),
    )
    .parse::<f64>()
    .expect("a score");
    let time = match cluster.command_for(Some(&leases), &["TIME"]) {
        Ok(redis::Value::Array(t)) => {
            value_text(t[0].clone()).parse::<f64>().expect("secs") * 1000.0
        }
        other => panic!("TIME: {other:?}"),
    };
    assert!(left - time > 50_000.0, "renewed for a TTL: {}", left - time);
    // The store keeps serving the live nodes while one is down (a failure makes it build its
    // cluster connection afresh), beat after beat.
    for round in 0..3 {
        let out = a.beat(&beats).await;
        assert!(
            matches!(
                out[..],
                [
                    BeatOutcome::Failed(StoreError::Unavailable(_)),
                    BeatOutcome::Fenced,
                    BeatOutcome::Renewed,
                ]
            ),
            "round {round}: {out:?}"
        );
    }
    let other = StreamKey::new(nodes[0].0.clone(), "cc/other".parse().expect("id"));
    let r = a.acquire(&other, &pod("pod-a"), ttl).await;
    assert!(
        matches!(r, Ok(None) | Err(StoreError::Unavailable(_))),
        "no new ownership right after a failure (owners may not have renewed): {r:?}"
    );

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swept_record_keeps_the_last_pong_of_its_last_beat() {
    // The live index holds the pong of every beat; the record's hash is rewritten only when
    // the rest of it changes. A successor on a platform without replay starts its gap at the
    // swept record's pong, so the sweep must not leave the hash's older one behind.
    let server = RedisServer::start();
    let s = server.store();
    let k = key("pongs", "cc/p");
    assert_eq!(
        s.beat(&[beat(&k, "pod-a", Fence(1), 1_000)]).await,
        [BeatOutcome::Reasserted]
    );
    assert_eq!(
        s.beat(&[last_beat(&k, "pod-a", Fence(1), 5_000)]).await,
        [BeatOutcome::Renewed]
    );
    wait_until("the lease lapses", Duration::from_secs(5), || async {
        lease_lapsed(&server, &k).await
    })
    .await;
    let dead = s
        .sweep_stale(k.tenant(), 100_001, Duration::from_secs(35))
        .await
        .expect("ok");
    assert_eq!(dead.len(), 1);
    let r = s
        .record(&k)
        .await
        .expect("ok")
        .expect("a swept record stays");
    assert_eq!((r.state, r.last_pong), (StreamState::Dead, 5_000));
}
