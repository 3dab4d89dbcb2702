//! Benchmark (ignored by default; it reports, it does not assert speed): 1,000
//! StreamConnections over four tenants (limit 200 each, so 800 admitted and 200 queued) and
//! twenty workloads, the real `streamkeeper controller` with the chart's ServiceAccount and
//! RBAC, against the test kube-apiserver. Reports:
//! - the time from `kubectl apply` of the 1,000 objects until every status is written and the
//!   twenty ConfigMaps hold exactly the 800 admitted streams (polled once a second);
//! - the controller's RSS while holding them (and its peak);
//! - the API requests the controller made to converge, by verb and resource;
//! - API requests per reconcile at steady state: every object is touched (an annotation, which
//!   changes nothing the controller renders), and the requests it then makes are divided by
//!   the reconciles it ran;
//! - the idle rate: requests per second while nothing changes (Lease renewals).
//!
//! The second benchmark adds runtime status: the controller reads a real Redis, and this test
//! plays the sidecars (a lease and a record for every admitted stream, renewed every 15 s as a
//! sidecar beats); it reports the status writes per second that the pongs cost at steady state
//! (`--pong-granularity`, 30 s by default) and the RSS with the runtime view held too.
//!
//! Requests are counted from the API server's audit log (every request of the controller's
//! ServiceAccount; watches are long-lived and counted apart).
//!
//! ```sh
//! cargo build --release -p streamkeeper
//! cargo test --release -p streamkeeper-controller --test convergence -- --ignored --nocapture --test-threads 1
//! ```

mod common;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::*;
use streamkeeper_api::{PodName, StreamState};
use streamkeeper_coord::{Acquired, Beat, ConnRecord, RedisStore, Store, StreamKey};
use streamkeeper_e2e::{
    process::{Running, http_get},
    util::{free_port, metric_value},
};
use streamkeeper_testkit::redis::RedisServer;

const STREAMS: usize = 1000;
const TENANTS: usize = 4;
const WORKLOADS: usize = 20;
const LIMIT: usize = 200;
/// How often convergence is looked at (a list of 1,000 objects costs the API server too).
const POLL: Duration = Duration::from_secs(1);
/// The idle window over which the steady-state request rate is measured.
const IDLE: Duration = Duration::from_secs(30);
/// How often the simulated sidecars beat (the default heartbeat interval).
const BEAT: Duration = Duration::from_secs(15);
/// The window over which the runtime status writes are counted (a few pong granularities).
const RUNTIME: Duration = Duration::from_secs(120);

/// (VmRSS, VmHWM) in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let field = |name| streamkeeper_testkit::procfs::status_bytes(&pid.to_string(), name) / 1024;
    (field("VmRSS"), field("VmHWM"))
}

/// The controller's requests so far, watches left out.
fn requests(c: &Cluster, user: &str) -> Vec<Audited> {
    audit(c)
        .into_iter()
        .filter(|e| e.user == user && e.verb != "watch")
        .collect()
}

fn by_kind(calls: &[Audited]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in calls {
        *out.entry(format!("{} {}", e.verb, e.resource)).or_default() += 1;
    }
    out
}

async fn metric(admin: SocketAddr, name: &str, label: &str) -> f64 {
    let (_, body) = http_get(admin, "/metrics").await.expect("metrics");
    metric_value(&body, name, label).unwrap_or(0.0)
}

/// Waits until the controller's non-Lease request count stays the same over three looks a
/// second apart (bounded): it has done what the last change asked of it.
async fn quiescent(c: &Cluster, user: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(120);
    let count = || {
        requests(c, user)
            .iter()
            .filter(|e| e.resource != "leases")
            .count()
    };
    let (mut last, mut same) = (count(), 0);
    while same < 3 {
        assert!(
            Instant::now() < deadline,
            "the controller kept making requests for 120 s"
        );
        tokio::time::sleep(POLL).await;
        let now = count();
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

#[tokio::test]
#[ignore = "benchmark: run with --ignored --nocapture (see the module doc)"]
async fn converge_one_thousand_stream_connections() {
    bench(None).await;
}

#[tokio::test]
#[ignore = "benchmark: run with --ignored --nocapture (see the module doc)"]
async fn one_thousand_stream_connections_with_runtime_status_from_redis() {
    let redis = RedisServer::start();
    bench(Some(&redis)).await;
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Plays the sidecars of every stream in `rendered`: takes its lease and beats it every
/// [`BEAT`] until dropped.
async fn sidecars(store: std::sync::Arc<dyn Store>, rendered: Vec<(StreamKey, PodName)>) {
    let ttl = Duration::from_secs(45);
    let mut held = Vec::new();
    for (key, pod) in rendered {
        match store.try_acquire(&key, &pod, ttl).await.expect("store") {
            Acquired::Granted { fence, .. } => held.push((key, pod, fence)),
            other => panic!("{}: {other:?}", key.stream()),
        }
    }
    let mut tick = tokio::time::interval(BEAT);
    loop {
        tick.tick().await;
        let now = epoch_ms();
        let beats: Vec<Beat> = held
            .iter()
            .map(|(key, pod, fence)| Beat {
                key: key.clone(),
                fence: *fence,
                record: ConnRecord {
                    stream: key.stream().clone(),
                    tenant: key.tenant().clone(),
                    socket_id: Some(streamkeeper_api::ConnectionId("bench".into())),
                    last_pong: now,
                    platform: streamkeeper_api::config::Platform::Genesys,
                    state: StreamState::Active,
                    retry_count: 0,
                    owner: pod.clone(),
                    fence: *fence,
                },
                lease_ttl: ttl,
            })
            .collect();
        store.beat(&beats).await;
    }
}

async fn bench(redis: Option<&RedisServer>) {
    let c = k8s();
    assert!(c.owns_apiserver(), "counts requests from the audit log");
    let ns = c.namespace("bench");
    let sa = &chart_rbac(c, &ns, "bench", true);
    let user = format!("system:serviceaccount:{ns}:{sa}");
    let kc = c
        .kubeconfig_for(sa, &token(c, &ns, sa), &ns)
        .to_string_lossy()
        .into_owned();
    let client = c.client().await;
    let admin = format!("127.0.0.1:{}", free_port());
    let limit = LIMIT.to_string();
    let url = redis.map(|r| r.url());
    let mut args = vec![
        "controller",
        "--kubeconfig",
        &kc,
        "--identity",
        "bench",
        "--namespace",
        &ns,
        "--admin",
        &admin,
        "--default-tenant-limit",
        &limit,
    ];
    if let Some(u) = &url {
        args.extend(["--redis", u]);
    }
    let ctl = Running::spawn(&args, "warn");
    let admin: SocketAddr = admin.parse().expect("addr");
    eventually(Duration::from_secs(60), "controller leads", || async move {
        let (_, body) = http_get(admin, "/metrics").await.ok()?;
        (metric_value(&body, "streamkeeper_controller_leader", "") == Some(1.0)).then_some(())
    })
    .await;
    let (idle_rss, _) = rss_kib(ctl.pid());

    let mut yaml = String::new();
    for i in 0..STREAMS {
        yaml += &sconn(
            &ns,
            &format!("s{i:04}"),
            &format!("t{}", i % TENANTS),
            [100u16, 500, 900][i % 3],
            &format!("w{:02}", i % WORKLOADS),
        );
        yaml += "---\n";
    }
    let before = requests(c, &user).len();
    let started = Instant::now();
    apply_ok(c, &yaml);
    let applied = started.elapsed();
    let workloads: Vec<String> = (0..WORKLOADS).map(|w| format!("w{w:02}")).collect();
    let deadline = started + Duration::from_secs(900);
    let mut rendered: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let s = streams(&client, &ns).await;
        let decided = s.len() == STREAMS
            && s.iter()
                .all(|x| matches!(phase(x).as_deref(), Some("Active" | "Queued" | "Preempted")));
        if decided {
            rendered.clear();
            for w in &workloads {
                for id in config_streams(&client, &ns, w).await.unwrap_or_default() {
                    rendered.insert(id, w.clone());
                }
            }
            if rendered.len() == TENANTS * LIMIT {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not converged within 900 s: phases {:?}, {} streams in ConfigMaps\n{}",
            {
                let mut by: BTreeMap<String, usize> = BTreeMap::new();
                for x in &s {
                    *by.entry(phase(x).unwrap_or_default()).or_default() += 1;
                }
                by
            },
            rendered.len(),
            ctl.stderr_text()
        );
        tokio::time::sleep(POLL).await;
    }
    let converged = started.elapsed();
    let (rss, peak) = rss_kib(ctl.pid());
    let settled = quiescent(c, &user).await;
    let converge_calls: Vec<Audited> = requests(c, &user)
        .into_iter()
        .skip(before)
        .filter(|e| e.resource != "leases")
        .collect();

    // Steady state: a change the controller has nothing to do for, on every object.
    let rec0 = metric(
        admin,
        "streamkeeper_controller_reconciles_total",
        "outcome=\"ok\"",
    )
    .await;
    c.kubectl_ok(&["annotate", "sconn", "--all", "-n", &ns, "bench/touch=1"]);
    eventually(
        Duration::from_secs(300),
        "a reconcile per object",
        || async move {
            let n = metric(
                admin,
                "streamkeeper_controller_reconciles_total",
                "outcome=\"ok\"",
            )
            .await;
            (n >= rec0 + STREAMS as f64).then_some(())
        },
    )
    .await;
    let after_touch = quiescent(c, &user).await;
    let rec1 = metric(
        admin,
        "streamkeeper_controller_reconciles_total",
        "outcome=\"ok\"",
    )
    .await;
    let touch_calls: Vec<Audited> = requests(c, &user)
        .into_iter()
        .filter(|e| e.resource != "leases")
        .skip(settled)
        .collect();
    assert_eq!(touch_calls.len(), after_touch - settled);
    let per = touch_calls.len() as f64 / (rec1 - rec0).max(1.0);

    // Idle: nothing changes for IDLE.
    let idle_from = requests(c, &user).len();
    tokio::time::sleep(IDLE).await;
    let idle_calls: Vec<Audited> = requests(c, &user).into_iter().skip(idle_from).collect();
    // Every series, by error kind (`metric` would read only the first).
    let errors = {
        let name = "streamkeeper_controller_reconcile_errors_total";
        let (_, body) = http_get(admin, "/metrics").await.expect("metrics");
        let series: Vec<&str> = body
            .lines()
            .filter(|l| l.starts_with(name))
            .map(|l| l.trim_start_matches(name))
            .collect();
        if series.is_empty() {
            "none".to_owned()
        } else {
            series.join(", ")
        }
    };

    // Runtime status: the sidecars report every admitted stream; the first report changes
    // every status (owner, state), the pongs after it only every pong granularity.
    let runtime = match redis {
        None => String::new(),
        Some(r) => {
            let store: std::sync::Arc<dyn Store> =
                std::sync::Arc::new(RedisStore::connect(&r.url()).expect("url"));
            let tenant_of = |id: &str| {
                let n: usize = id
                    .rsplit('s')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("s{i}");
                format!("t{}", n % TENANTS)
            };
            let keys: Vec<(StreamKey, PodName)> = rendered
                .iter()
                .map(|(id, w)| {
                    (
                        StreamKey::new(
                            tenant_of(id).parse().expect("tenant"),
                            id.parse().expect("id"),
                        ),
                        format!("{w}-pod-0").parse().expect("pod"),
                    )
                })
                .collect();
            let sim = tokio::spawn(sidecars(store, keys));
            let first = Instant::now();
            eventually(
                Duration::from_secs(300),
                "every admitted stream shows its owner",
                || {
                    let (client, ns) = (client.clone(), ns.clone());
                    async move {
                        let s = streams(&client, &ns).await;
                        let owned = s
                            .iter()
                            .filter(|x| x.status.as_ref().is_some_and(|st| st.owner.is_some()))
                            .count();
                        (owned == TENANTS * LIMIT).then_some(())
                    }
                },
            )
            .await;
            let reported = first.elapsed();
            let from = requests(c, &user).len();
            tokio::time::sleep(RUNTIME).await;
            let calls: Vec<Audited> = requests(c, &user).into_iter().skip(from).collect();
            let (rss, peak) = rss_kib(ctl.pid());
            sim.abort();
            let writes = calls
                .iter()
                .filter(|e| e.resource == "streamconnections/status")
                .count();
            format!(
                "\n  runtime: every owner in status {reported:.1?} after the first beat; then over {RUNTIME:?} \
                 ({TENANTS}x{LIMIT} streams beating every {BEAT:?}): {} requests, {writes} status writes = {:.1}/s \
                 ({:.2} per stream per minute): {:?}; RSS {:.1} MiB (peak {:.1} MiB)",
                calls.len(),
                writes as f64 / RUNTIME.as_secs_f64(),
                writes as f64 / (TENANTS * LIMIT) as f64 / (RUNTIME.as_secs_f64() / 60.0),
                by_kind(&calls),
                rss as f64 / 1024.0,
                peak as f64 / 1024.0,
            )
        }
    };

    eprintln!(
        "BENCH {STREAMS} StreamConnections{} ({TENANTS} tenants, limit {LIMIT}, {WORKLOADS} workloads):\n\
         \x20 applied in {applied:.1?}; converged (every status and ConfigMap written) {converged:.1?} after the apply\n\
         \x20 controller RSS {:.1} MiB while holding them (peak {:.1} MiB; {:.1} MiB before any object)\n\
         \x20 requests to converge: {} ({:.2} per object): {:?}\n\
         \x20 steady state: {} requests over {} reconciles = {per:.3} per reconcile: {:?}\n\
         \x20 idle: {} requests in {IDLE:?} ({:.2}/s): {:?}; reconcile errors so far: {errors}{runtime}",
        if redis.is_some() {
            " with runtime status"
        } else {
            ""
        },
        rss as f64 / 1024.0,
        peak as f64 / 1024.0,
        idle_rss as f64 / 1024.0,
        converge_calls.len(),
        converge_calls.len() as f64 / STREAMS as f64,
        by_kind(&converge_calls),
        touch_calls.len(),
        rec1 - rec0,
        by_kind(&touch_calls),
        idle_calls.len(),
        idle_calls.len() as f64 / IDLE.as_secs_f64(),
        by_kind(&idle_calls),
    );
    drop(ctl);
}
