//! Benchmark (ignored by default; it reports, it does not assert speed): 1,000
//! StreamConnections over four tenants and twenty workloads, the real `streamkeeper controller`
//! with its ServiceAccount. Reports the time until every status and ConfigMap is written, the
//! controller's RSS while holding them, and the API requests per reconcile at steady state
//! (from the API server's audit log: every request of the controller's ServiceAccount).
//!
//! ```sh
//! cargo build --release -p streamkeeper
//! cargo test --release -p streamkeeper-controller --test convergence -- --ignored --nocapture
//! ```

mod common;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use common::*;
use streamkeeper_e2e::{
    process::{Running, http_get},
    util::{free_port, metric_value},
};

const STREAMS: usize = 1000;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test]
#[ignore = "benchmark: run with --ignored --nocapture (see the module doc)"]
async fn converge_one_thousand_stream_connections() {
    let c = k8s();
    let ns = c.namespace("bench");
    let sa = &chart_rbac(c, &ns, "bench", true);
    let kc = c
        .kubeconfig_for(sa, &token(c, &ns, sa), &ns)
        .to_string_lossy()
        .into_owned();
    let client = c.client().await;
    let admin = format!("127.0.0.1:{}", free_port());
    let ctl = Running::spawn(
        &[
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
            "200",
        ],
        "warn",
    );
    let admin_addr: std::net::SocketAddr = admin.parse().expect("addr");
    eventually(Duration::from_secs(60), "controller leads", || async move {
        let (_, body) = http_get(admin_addr, "/metrics").await.ok()?;
        (metric_value(&body, "streamkeeper_controller_leader", "") == Some(1.0)).then_some(())
    })
    .await;

    let mut yaml = String::new();
    for i in 0..STREAMS {
        let tenant = format!("t{}", i % 4);
        yaml += &sconn(
            &ns,
            &format!("s{i:04}"),
            &tenant,
            [100u16, 500, 900][i % 3],
            &format!("w{:02}", i % 20),
        );
        yaml += "---\n";
    }
    let started = Instant::now();
    apply_ok(c, &yaml);
    let applied = started.elapsed();
    let workloads: Vec<String> = (0..20).map(|w| format!("w{w:02}")).collect();
    eventually(
        Duration::from_secs(900),
        "every status and ConfigMap written",
        || {
            let (client, ns, workloads) = (client.clone(), ns.clone(), workloads.clone());
            async move {
                let s = streams(&client, &ns).await;
                let decided = s.len() == STREAMS
                    && s.iter()
                        .all(|x| matches!(phase(x).as_deref(), Some("Active" | "Queued")));
                if !decided {
                    return None;
                }
                let mut rendered = BTreeSet::new();
                for w in &workloads {
                    rendered.extend(config_streams(&client, &ns, w).await?);
                }
                // Four tenants of 250 streams, limit 200 each.
                (rendered.len() == 800).then_some(())
            }
        },
    )
    .await;
    let converged = started.elapsed();
    let rss = rss_kib(ctl.pid());

    let me = format!("system:serviceaccount:{ns}:{sa}");
    let counted = |c: &Cluster| -> usize {
        audit(c)
            .iter()
            .filter(|e| e.user == me && e.resource != "leases" && e.verb != "watch")
            .count()
    };
    let reconciles = || async move {
        let (_, body) = http_get(admin_addr, "/metrics").await.expect("metrics");
        metric_value(
            &body,
            "streamkeeper_controller_reconciles_total",
            "outcome=\"ok\"",
        )
        .unwrap_or(0.0)
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (req0, rec0) = (counted(c), reconciles().await);
    // A metadata change on every object: a reconcile each, with nothing to do.
    c.kubectl_ok(&["annotate", "sconn", "--all", "-n", &ns, "bench/touch=1"]);
    eventually(
        Duration::from_secs(300),
        "a reconcile per object",
        || async move { (reconciles().await >= rec0 + STREAMS as f64).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (req1, rec1) = (counted(c), reconciles().await);
    let per = (req1 - req0) as f64 / (rec1 - rec0).max(1.0);
    eprintln!(
        "BENCH {STREAMS} StreamConnections: applied in {applied:?}, converged (every status and ConfigMap) in {converged:?}; \
         controller RSS {} MiB; steady state: {} API requests over {} reconciles = {per:.3} per reconcile (leases and watches excluded)",
        rss / 1024,
        req1 - req0,
        rec1 - rec0
    );
    drop(ctl);
}
