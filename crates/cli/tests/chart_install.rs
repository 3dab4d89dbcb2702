//! `helm install` of charts/streamkeeper into a real kube-apiserver and etcd (crates/testkit):
//! the CRD is established, every object of the release is accepted and stored, and
//! `helm uninstall` leaves nothing behind but the CRD, which Helm keeps by design (it never
//! deletes what it installed from a chart's crds/ directory, since that would delete every
//! StreamConnection with it).
//!
//! There is no kubelet and no controller-manager: the objects are validated and stored, no pod
//! runs (so nothing the controller would create at runtime exists here: its Lease, the
//! workloads' ConfigMaps, Events). ServiceMonitor and PodMonitor need the Prometheus Operator's
//! CRDs, which this API server does not have: they are left off here and checked by
//! `helm template` (tests/chart.rs).

mod support;

use std::collections::BTreeSet;

use streamkeeper_testkit::k8s::{Cluster, cluster};
use support::{documents, kind_name, root};

const CRD: &str = "streamconnections.streamkeeper.dev";

/// Every object the API server holds, as `Kind namespace/name` (cluster-scoped: `Kind /name`).
fn snapshot(c: &Cluster) -> BTreeSet<String> {
    let types = c.kubectl_ok(&["api-resources", "--verbs=list", "-o", "name"]);
    let types: Vec<&str> = types.lines().filter(|t| !t.is_empty()).collect();
    let out = c.kubectl_ok(&[
        "get",
        &types.join(","),
        "-A",
        "--ignore-not-found",
        "-o",
        "jsonpath={range .items[*]}{.kind} {.metadata.namespace}/{.metadata.name}{\"\\n\"}{end}",
    ]);
    // Events are not objects of the release: the API server records some about them (seen
    // under load for the bundled Redis's Service), and they expire by themselves.
    out.lines()
        .filter(|l| !l.is_empty() && !l.starts_with("Event "))
        .map(str::to_owned)
        .collect()
}

/// Installs `release` into `ns` with `extra` values, checks every object, uninstalls, and
/// returns what the release left behind.
fn install_check_uninstall(c: &Cluster, release: &str, ns: &str, extra: &[&str]) -> Vec<String> {
    let chart = root().join("charts/streamkeeper");
    let chart = chart.to_str().expect("UTF-8 path");
    let before = snapshot(c);
    let mut args = vec![
        "install",
        release,
        chart,
        "--namespace",
        ns,
        "--timeout",
        "2m",
    ];
    args.extend_from_slice(extra);
    let notes = c.helm_ok(&args);
    assert!(
        notes.contains("STATUS: deployed") && notes.contains("Check that it works"),
        "{notes}"
    );
    c.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        &format!("crd/{CRD}"),
        "--timeout=60s",
    ]);
    // StreamConnections can be served: the CRD's API is up.
    c.kubectl_ok(&["get", "sconn", "-A"]);

    // Every object of the release is stored, in the namespace the chart put it in.
    let manifest = c.helm_ok(&["get", "manifest", release, "--namespace", ns]);
    let objects = documents(&manifest);
    assert!(objects.len() >= 8, "{manifest}");
    let mut stored = Vec::new();
    for o in &objects {
        let (kind, name) = kind_name(o);
        let api = o["apiVersion"].as_str().expect("apiVersion");
        let group = api.split_once('/').map(|(g, _)| g).unwrap_or("");
        let resource = if group.is_empty() {
            kind.clone()
        } else {
            format!("{kind}.{group}")
        };
        let mut get = vec![
            "get".to_owned(),
            resource,
            name.clone(),
            "-o".into(),
            "name".into(),
        ];
        if let Some(n) = o["metadata"]["namespace"].as_str() {
            get.extend(["-n".to_owned(), n.to_owned()]);
        }
        let get: Vec<&str> = get.iter().map(String::as_str).collect();
        c.kubectl_ok(&get);
        stored.push(format!("{kind} {name}"));
    }
    eprintln!("{release}: {} objects stored: {stored:?}", stored.len());
    let during = snapshot(c);
    let added: BTreeSet<&String> = during.difference(&before).collect();
    assert!(
        added.len() >= objects.len(),
        "fewer new objects than the release has: {added:?}"
    );

    c.helm_ok(&[
        "uninstall",
        release,
        "--namespace",
        ns,
        "--wait",
        "--timeout",
        "2m",
    ]);
    let after = snapshot(c);
    let left: Vec<String> = after.difference(&before).cloned().collect();
    let gone: Vec<String> = before.difference(&after).cloned().collect();
    assert!(
        gone.is_empty(),
        "uninstall removed what was there before: {gone:?}"
    );
    left
}

#[test]
fn helm_install_stores_every_object_and_helm_uninstall_leaves_only_the_crd_helm_keeps() {
    let c = cluster();
    for ns in ["streamkeeper-system", "contact-center", "monitoring"] {
        c.kubectl_ok(&["create", "namespace", ns]);
    }

    // Default values: two replicas, cluster-wide RBAC, metrics Service, PDB, dashboard.
    let left = install_check_uninstall(c, "sk", "streamkeeper-system", &[]);
    // The CRD, and the APIService the API server itself registers for the CRD's group version
    // (local, automanaged: it goes when the CRD goes).
    assert_eq!(
        left,
        [
            "APIService /v1alpha1.streamkeeper.dev".to_owned(),
            format!("CustomResourceDefinition /{CRD}")
        ],
        "helm uninstall left these behind"
    );
    let automanaged = c.kubectl_ok(&[
        "get",
        "apiservice",
        "v1alpha1.streamkeeper.dev",
        "-o",
        "jsonpath={.metadata.labels.kube-aggregator\\.kubernetes\\.io/automanaged} {.spec.service}",
    ]);
    assert_eq!(
        automanaged.trim(),
        "true",
        "not the API server's own APIService"
    );
    eprintln!("left behind by helm uninstall: {left:?} (Helm keeps CRDs by design)");

    // The chart's non-default CI values (one watched namespace: a Role there; the bundled
    // Redis; the dashboard in another namespace; tenant limits), the monitors left off. The CRD
    // is there already: the install takes it as it is.
    let values = root().join("charts/streamkeeper/ci/bundled-redis-values.yaml");
    let left = install_check_uninstall(
        c,
        "skr",
        "streamkeeper-system",
        &[
            "-f",
            values.to_str().expect("UTF-8 path"),
            "--set",
            "metrics.serviceMonitor.enabled=false,metrics.sidecarPodMonitor.enabled=false",
        ],
    );
    assert_eq!(
        left,
        Vec::<String>::new(),
        "helm uninstall left these behind"
    );
    c.kubectl_ok(&["get", "crd", CRD]);
}
