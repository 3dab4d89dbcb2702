//! Two real `streamkeeper controller` processes, each with its own ServiceAccount token and the
//! chart's RBAC (two releases of it), against a real kube-apiserver. Who wrote what, and when, is read from the
//! API server's audit log, not from the controllers' own word.

mod common;

use std::time::Duration;

use common::*;
use streamkeeper_e2e::process::Running;

const LEASE: Duration = Duration::from_secs(6);
const RETRY: Duration = Duration::from_secs(1);

fn controller(c: &Cluster, ns: &str, sa: &str) -> Running {
    let kc = c.kubeconfig_for(sa, &token(c, ns, sa), ns);
    let kc = kc.to_string_lossy().into_owned();
    Running::spawn(
        &[
            "controller",
            "--kubeconfig",
            &kc,
            "--identity",
            sa,
            "--namespace",
            ns,
            "--admin",
            "127.0.0.1:0",
            "--lease-duration",
            "6s",
            "--renew-deadline",
            "4s",
            "--retry-period",
            "1s",
        ],
        "info",
    )
}

#[tokio::test]
async fn two_controllers_one_leads_and_after_a_sigkill_the_other_leads_within_the_lease_duration_and_neither_writes_while_not_leading()
 {
    let c = k8s();
    assert!(
        c.owns_apiserver(),
        "this test reads the API server's audit log: run it on the test API server"
    );
    let ns = c.namespace("leader");
    // Two releases of the chart's RBAC, so the audit log tells the replicas apart.
    let sa_a = chart_rbac(c, &ns, "ctl-a", true);
    let sa_b = chart_rbac(c, &ns, "ctl-b", true);
    let client = c.client().await;
    let user = |sa: &str| format!("system:serviceaccount:{ns}:{sa}");

    let mut a = controller(c, &ns, &sa_a);
    a.stderr
        .wait_for(0, Duration::from_secs(60), |l| l.contains("leading"))
        .await
        .unwrap_or_else(|| panic!("ctl-a never led:\n{}", a.stderr_text()));
    let mut b = controller(c, &ns, &sa_b);
    b.stderr
        .wait_for(0, Duration::from_secs(60), |l| {
            l.contains("standing for leader")
        })
        .await
        .unwrap_or_else(|| panic!("ctl-b did not start:\n{}", b.stderr_text()));

    for i in 0..3 {
        apply_ok(c, &sconn(&ns, &format!("s{i}"), "acme", 500, "wem"));
    }
    eventually(
        Duration::from_secs(60),
        "the leader admits all three",
        || {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                let s = streams(&client, &ns).await;
                (s.len() == 3 && s.iter().all(|x| phase(x).as_deref() == Some("Active")))
                    .then_some(())
            }
        },
    )
    .await;
    // A few renewals pass with both running.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = audit(c);
    let b_writes: Vec<&Audited> = before
        .iter()
        .filter(|e| e.user == user(&sa_b) && is_write(&e.verb))
        .collect();
    assert!(b_writes.is_empty(), "the standby wrote: {b_writes:?}");
    assert!(
        before.iter().any(|e| e.user == user(&sa_a)
            && e.resource == "streamconnections/status"
            && is_write(&e.verb)),
        "the leader wrote no status"
    );
    assert!(b.is_running(), "ctl-b exited:\n{}", b.stderr_text());

    // SIGKILL the leader: no goodbye, its Lease just stops being renewed.
    let killed_at = std::time::Instant::now();
    let kill_sent = k8s_openapi::jiff::Timestamp::now();
    let mark = b.stderr.len();
    let status = std::process::Command::new("kill")
        .args(["-KILL", &a.pid().to_string()])
        .status();
    assert!(status.is_ok_and(|s| s.success()), "kill -KILL failed");
    a.wait(Duration::from_secs(10)).await.expect("ctl-a died");
    let dead = k8s_openapi::jiff::Timestamp::now();
    b.stderr
        .wait_for(mark, LEASE + 4 * RETRY + Duration::from_secs(5), |l| {
            l.contains("leading")
        })
        .await
        .unwrap_or_else(|| panic!("ctl-b did not take over:\n{}", b.stderr_text()));
    let took = killed_at.elapsed();
    eprintln!(
        "ctl-b leads {took:?} after the SIGKILL (Lease duration {LEASE:?}, retry period {RETRY:?})"
    );
    assert!(
        took <= LEASE + 2 * RETRY,
        "took over after {took:?}, beyond the Lease duration {LEASE:?} + 2 retry periods"
    );

    // The new leader works: a new stream is admitted by it.
    apply_ok(c, &sconn(&ns, "s3", "acme", 500, "wem"));
    eventually(
        Duration::from_secs(60),
        "the new leader admits the new stream",
        || {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                (phase(&stream(&client, &ns, "s3").await?).as_deref() == Some("Active"))
                    .then_some(())
            }
        },
    )
    .await;
    let after = audit(c);
    // ctl-b's first write is its Lease takeover; every other write of it comes after that.
    let b_all: Vec<&Audited> = after
        .iter()
        .filter(|e| e.user == user(&sa_b) && is_write(&e.verb))
        .collect();
    let first = b_all.first().expect("ctl-b wrote");
    assert_eq!(first.resource, "leases", "ctl-b's first write: {first:?}");
    assert!(
        first.at >= kill_sent,
        "ctl-b wrote before the kill: {first:?}"
    );
    assert!(
        b_all
            .iter()
            .any(|e| e.resource == "streamconnections/status"),
        "ctl-b wrote no status as leader"
    );
    // ctl-a wrote nothing after it died (a dead process cannot, but its in-flight requests could).
    let a_late: Vec<&Audited> = after
        .iter()
        .filter(|e| e.user == user(&sa_a) && e.at > dead)
        .collect();
    assert!(
        a_late.is_empty(),
        "ctl-a requests after its death: {a_late:?}"
    );
    let refused: Vec<&Audited> = after
        .iter()
        .filter(|e| (e.user == user(&sa_a) || e.user == user(&sa_b)) && e.code == 403)
        .collect();
    assert!(refused.is_empty(), "RBAC refused calls: {refused:?}");
    b.terminate();
    let code = b
        .wait(Duration::from_secs(20))
        .await
        .expect("ctl-b stops on SIGTERM");
    assert!(code.success(), "ctl-b exit: {code:?}\n{}", b.stderr_text());
    assert!(
        b.stderr_text().contains("released the Lease"),
        "{}",
        b.stderr_text()
    );
    // Graceful: the last thing it wrote is the Lease's release, after its reconciles ended,
    // and the Lease is free for a standby at once.
    let last = audit(c)
        .into_iter()
        .rev()
        .find(|e| e.user == user(&sa_b) && is_write(&e.verb))
        .expect("ctl-b wrote");
    assert_eq!(last.resource, "leases", "ctl-b's last write: {last:?}");
    let holder = c.kubectl_ok(&[
        "get",
        "lease",
        "streamkeeper-controller",
        "-n",
        &ns,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(holder.trim(), "", "the Lease still names a holder");
}
