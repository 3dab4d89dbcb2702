//! The real `streamkeeper controller` with its own ServiceAccount (a TokenRequest token, not
//! admin) and exactly the RBAC the Helm chart grants (rendered by `helm template` from
//! charts/streamkeeper, cluster-wide): every call it makes is allowed, and a call outside it
//! (reading a Secret) is refused. The chart and the controller cannot drift apart unnoticed.

mod common;

use std::time::Duration;

use common::*;
use streamkeeper_e2e::process::Running;

#[tokio::test]
async fn the_controller_with_the_charts_serviceaccount_and_rbac_is_never_refused_and_cannot_read_secrets()
 {
    let c = k8s();
    assert!(
        c.owns_apiserver(),
        "this test reads the API server's audit log: run it on the test API server"
    );
    let ns = c.namespace("rbac");
    // The chart's RBAC, cluster-wide, for a release named after the namespace.
    let sa = &chart_rbac(c, &ns, &ns, false);
    c.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "acme-oauth",
        "-n",
        &ns,
        "--from-literal=clientId=x",
        "--from-literal=clientSecret=y",
    ]);
    let tok = token(c, &ns, sa);
    let kc = c.kubeconfig_for(sa, &tok, &ns);
    let kc_s = kc.to_string_lossy().into_owned();
    let client = c.client().await;

    // Outside its RBAC: refused.
    let out = c.kubectl_with(&kc, &["get", "secret", "acme-oauth", "-n", &ns], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("forbidden"),
        "reading a Secret was not refused: {err}"
    );
    let can = c.kubectl_with(
        &kc,
        &["auth", "can-i", "list", "secrets", "--all-namespaces"],
        None,
    );
    assert_eq!(String::from_utf8_lossy(&can.stdout).trim(), "no");

    // Cluster-wide (no --namespace), its Lease in its own namespace (the kubeconfig context's).
    // Only calls from here on are the controller's (the two above were this test's own).
    let started = k8s_openapi::jiff::Timestamp::now();
    let mut ctl = Running::spawn(
        &[
            "controller",
            "--kubeconfig",
            &kc_s,
            "--identity",
            "ctl-rbac",
            "--admin",
            "127.0.0.1:0",
        ],
        "info",
    );
    apply_ok(c, &sconn(&ns, "one", "acme", 500, "wem"));
    apply_ok(c, &sconn(&ns, "two", "acme", 500, "wem"));
    eventually(
        Duration::from_secs(60),
        "both admitted, rendered, with Events",
        || {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                let s = streams(&client, &ns).await;
                let active =
                    s.len() == 2 && s.iter().all(|x| phase(x).as_deref() == Some("Active"));
                let cm = config_streams(&client, &ns, "wem").await?.len() == 2;
                let ev = !events_about(&client, &ns, "one").await.is_empty();
                (active && cm && ev).then_some(())
            }
        },
    )
    .await;
    // The finalizer path too: delete one.
    c.kubectl_ok(&["delete", "sconn", "two", "-n", &ns, "--wait=false"]);
    eventually(
        Duration::from_secs(60),
        "deleted behind the finalizer",
        || {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                let gone = stream(&client, &ns, "two").await.is_none();
                let cm = config_streams(&client, &ns, "wem").await?.len() == 1;
                (gone && cm).then_some(())
            }
        },
    )
    .await;
    ctl.terminate();
    let code = ctl
        .wait(Duration::from_secs(20))
        .await
        .expect("stops on SIGTERM");
    assert!(code.success(), "{}", ctl.stderr_text());

    let me = format!("system:serviceaccount:{ns}:{sa}");
    let calls: Vec<Audited> = audit(c)
        .into_iter()
        .filter(|e| e.user == me && e.at >= started)
        .collect();
    let refused: Vec<&Audited> = calls
        .iter()
        .filter(|e| e.code == 403 || e.code == 401)
        .collect();
    assert!(refused.is_empty(), "calls refused: {refused:?}");
    let kinds: std::collections::BTreeSet<String> = calls
        .iter()
        .map(|e| format!("{} {}", e.verb, e.resource))
        .collect();
    eprintln!("the controller's calls: {kinds:?}");
    for needed in [
        "patch streamconnections/status",
        "patch configmaps",
        "create events",
        "create leases",
        "list streamconnections",
        "watch streamconnections",
    ] {
        assert!(kinds.contains(needed), "never made `{needed}`: {kinds:?}");
    }
    assert!(
        calls.iter().all(|e| !e.resource.starts_with("secrets")),
        "it touched Secrets"
    );
    assert!(
        !ctl.stderr_text().to_lowercase().contains("forbidden"),
        "{}",
        ctl.stderr_text()
    );
}
