//! The real `streamkeeper controller` against an API server without the StreamConnection CRD
//! (this test binary's own, where nothing installs it): it refuses to start, with a one-line
//! hint that says how to install the CRD.

use std::time::Duration;

use streamkeeper_e2e::process::Running;
use streamkeeper_testkit::k8s::cluster;

#[tokio::test]
async fn without_the_crd_the_controller_refuses_to_start_with_a_one_line_hint() {
    let c = cluster();
    let crds = c.kubectl_ok(&["get", "crd", "-o", "name"]);
    assert!(
        !crds.contains("streamconnections.streamkeeper.dev"),
        "the CRD is installed here: {crds}"
    );
    let kc = c.kubeconfig().to_string_lossy().into_owned();
    let mut ctl = Running::spawn(
        &[
            "controller",
            "--kubeconfig",
            &kc,
            "--identity",
            "no-crd",
            "--admin",
            "127.0.0.1:0",
        ],
        "warn",
    );
    let code = ctl
        .wait(Duration::from_secs(60))
        .await
        .expect("the controller exits by itself");
    let stderr = ctl.stderr_text();
    assert_eq!(code.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    let line = lines[0];
    assert!(
        line.contains("StreamConnection CRD (streamconnections.streamkeeper.dev) is not installed")
            && line.contains("kubectl apply -f crds/")
            && line.contains("helm install"),
        "{line}"
    );
    // Nothing was written: no Lease was taken.
    let leases = c.kubectl_ok(&["get", "leases", "-A", "-o", "name"]);
    assert!(!leases.contains("streamkeeper-controller"), "{leases}");
}
