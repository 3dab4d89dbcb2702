//! What the controller's API server tests share: the CRD installed once, StreamConnection
//! YAML, an in-process controller per test namespace, and readers for ConfigMaps, statuses and
//! Events.

#![allow(dead_code)]

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use k8s_openapi::api::{core::v1::ConfigMap, events::v1::Event};
use kube::{Api, Client, api::ListParams};
use streamkeeper_api::{SidecarConfig, crd::StreamConnection, kube_yaml};
use streamkeeper_controller::{
    admission::Limits,
    run::{self, Options},
};
use streamkeeper_coord::Store;
pub use streamkeeper_testkit::k8s::{Cluster, cluster, eventually};
use tokio::{sync::oneshot, task::JoinHandle};

static CRD: OnceLock<()> = OnceLock::new();

/// The API server with the CRD installed and established.
pub fn k8s() -> &'static Cluster {
    let c = cluster();
    CRD.get_or_init(|| {
        c.install_crd(
            &streamkeeper_api::crd::crd_yaml(),
            "streamconnections.streamkeeper.dev",
        );
    });
    c
}

/// A StreamConnection of platform genesys (region) with the given tenant and priority.
pub fn sconn(ns: &str, name: &str, tenant: &str, priority: u16, workload: &str) -> String {
    format!(
        "apiVersion: streamkeeper.dev/v1alpha1\nkind: StreamConnection\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec:\n  platform: genesys\n  tenant: {tenant}\n  priority: {priority}\n\
         \x20 workloadRef: {{kind: Deployment, name: {workload}}}\n  region: mypurecloud.com\n\
         \x20 credentialsSecretRef: {{name: {tenant}-oauth}}\n  topics: [v2.routing.queues.q1.conversations]\n"
    )
}

/// `kubectl apply` that must succeed.
pub fn apply_ok(c: &Cluster, yaml: &str) {
    let out = c.apply(yaml);
    assert!(
        out.status.success(),
        "apply refused: {}\n{yaml}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A controller running in this process, watching one namespace (its Lease lives there too).
pub struct InProcess {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl InProcess {
    /// Starts a controller for `ns` with `limits` and an optional store.
    pub async fn start(
        ns: &str,
        limits: Limits,
        store: Option<Arc<dyn Store>>,
        redis_url: Option<String>,
    ) -> Self {
        let client = k8s().client().await;
        let opts = Options {
            limits,
            redis: redis_url,
            namespace: Some(ns.to_owned()),
            lease_namespace: Some(ns.to_owned()),
            identity: Some(format!("in-process-{ns}")),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            store_poll: Duration::from_millis(300),
            retry_period: Duration::from_millis(500),
            ..Options::default()
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run::run_with(client, store, opts, async move {
            let _ = stopped.await;
        }));
        Self {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops it (releasing its Lease) and returns how it ended.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.task.take() {
            Some(t) => tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .map_err(|_| anyhow::anyhow!("the controller did not stop within 20 s"))?
                .map_err(|e| anyhow::anyhow!("controller task: {e}"))?,
            None => Ok(()),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// The stream ids in a workload's ConfigMap (`None`: no ConfigMap).
pub async fn config_streams(client: &Client, ns: &str, workload: &str) -> Option<BTreeSet<String>> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm = api
        .get_opt(&format!("streamkeeper-{workload}"))
        .await
        .ok()??;
    let yaml = cm.data?.get("sidecar.yaml")?.clone();
    let cfg = SidecarConfig::from_yaml(&yaml)
        .unwrap_or_else(|e| panic!("the rendered config does not load: {e}\n{yaml}"))
        .config;
    Some(cfg.streams.iter().map(|s| s.id.to_string()).collect())
}

/// Every StreamConnection in `ns`.
pub async fn streams(client: &Client, ns: &str) -> Vec<StreamConnection> {
    let api: Api<StreamConnection> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("list: {e}"))
        .items
}

/// One StreamConnection.
pub async fn stream(client: &Client, ns: &str, name: &str) -> Option<StreamConnection> {
    let api: Api<StreamConnection> = Api::namespaced(client.clone(), ns);
    api.get_opt(name)
        .await
        .unwrap_or_else(|e| panic!("get {name}: {e}"))
}

/// The phase of a StreamConnection, as text.
pub fn phase(sc: &StreamConnection) -> Option<String> {
    sc.status
        .as_ref()
        .and_then(|s| s.phase)
        .map(|p| p.to_string())
}

/// (reason, type, note) of every events.k8s.io Event about `name` in `ns`.
pub async fn events_about(client: &Client, ns: &str, name: &str) -> Vec<(String, String, String)> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let list = api
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("events: {e}"));
    list.items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| {
            (
                e.reason.unwrap_or_default(),
                e.type_.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect()
}

/// The limits of the pool tests.
pub fn limits(default: u32, tenants: &[(&str, u32)]) -> Limits {
    Limits {
        default,
        tenants: tenants
            .iter()
            .map(|(t, n)| (t.parse().expect("tenant"), *n))
            .collect(),
    }
}

/// The chart's own RBAC for the controller, as `helm template` renders charts/streamkeeper for
/// release `release` in namespace `ns`: its ServiceAccount, the ClusterRole and its binding
/// (or, with `watch_namespace`, a Role and RoleBinding in `ns`, for `--namespace ns`), and the
/// leader-election Role; applied, so the tests run the controller with exactly what the chart
/// grants. Returns the ServiceAccount's name.
pub fn chart_rbac(c: &Cluster, ns: &str, release: &str, watch_namespace: bool) -> String {
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../../charts/streamkeeper");
    let watch = format!("controller.watchNamespace={ns}");
    let mut args = vec!["template", release, chart, "--namespace", ns];
    if watch_namespace {
        args.extend(["--set", &watch]);
    }
    let rendered = c.helm_ok(&args);
    let docs = kube_yaml::parse(&rendered)
        .unwrap_or_else(|e| panic!("helm template printed no YAML: {e}\n{rendered}"));
    let mut yaml = String::new();
    let mut account = None;
    let mut kinds = BTreeSet::new();
    for d in &docs {
        let kind = d.value["kind"].as_str().unwrap_or_default();
        if !matches!(
            kind,
            "ServiceAccount" | "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding"
        ) {
            continue;
        }
        if kind == "ServiceAccount" {
            account = d.value["metadata"]["name"].as_str().map(str::to_owned);
        }
        kinds.insert(kind.to_owned());
        // The chart's bytes, as helm printed them.
        if !d.doc.raw.starts_with("---") {
            yaml.push_str("---\n");
        }
        yaml.push_str(d.doc.raw);
    }
    let expected: BTreeSet<String> = if watch_namespace {
        ["ServiceAccount", "Role", "RoleBinding"]
            .map(String::from)
            .into()
    } else {
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
        ]
        .map(String::from)
        .into()
    };
    assert_eq!(kinds, expected, "the chart's RBAC:\n{yaml}");
    apply_ok(c, &yaml);
    account.unwrap_or_else(|| panic!("the chart rendered no ServiceAccount:\n{yaml}"))
}

/// A token for ServiceAccount `sa` from the TokenRequest API (`kubectl create token`).
pub fn token(c: &Cluster, ns: &str, sa: &str) -> String {
    c.kubectl_ok(&["create", "token", sa, "-n", ns, "--duration=2h"])
        .trim()
        .to_owned()
}

/// One line of the API server's audit log.
#[derive(Debug, Clone)]
pub struct Audited {
    /// The user.
    pub user: String,
    /// The verb.
    pub verb: String,
    /// resource[/subresource].
    pub resource: String,
    /// The object's namespace.
    pub namespace: String,
    /// The response code.
    pub code: i64,
    /// When the request was received.
    pub at: k8s_openapi::jiff::Timestamp,
}

/// Every audited request (requires the test binary to own the API server).
pub fn audit(c: &Cluster) -> Vec<Audited> {
    let Some(path) = c.audit_log() else {
        return Vec::new();
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["stage"] == "ResponseComplete")
        .map(|v| {
            let res = v["objectRef"]["resource"].as_str().unwrap_or_default();
            let sub = v["objectRef"]["subresource"].as_str().unwrap_or_default();
            Audited {
                user: v["user"]["username"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                verb: v["verb"].as_str().unwrap_or_default().to_owned(),
                resource: if sub.is_empty() {
                    res.to_owned()
                } else {
                    format!("{res}/{sub}")
                },
                namespace: v["objectRef"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                code: v["responseStatus"]["code"].as_i64().unwrap_or(0),
                at: v["requestReceivedTimestamp"]
                    .as_str()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            }
        })
        .collect()
}

/// Whether a verb changes something.
pub fn is_write(verb: &str) -> bool {
    matches!(
        verb,
        "create" | "update" | "patch" | "delete" | "deletecollection"
    )
}

/// When each Event of `reason` about `name` happened (eventTime).
pub async fn event_times(
    client: &Client,
    ns: &str,
    name: &str,
    reason: &str,
) -> Vec<k8s_openapi::jiff::Timestamp> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let list = api
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("events: {e}"));
    let mut v: Vec<_> = list
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.event_time.map(|t| t.0))
        .collect();
    v.sort();
    v
}
