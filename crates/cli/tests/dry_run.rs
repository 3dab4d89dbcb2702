//! What streamkeeper writes for `kubectl apply`, accepted by a real kube-apiserver (crates/testkit)
//! in a server-side dry run with strict field validation: `inject` output for a Deployment and a
//! StatefulSet (the API server returns the objects it would store, sidecar and all), `render`
//! output, and the example manifests. A dry run stores nothing, which the tests check too.

mod support;

use serde_json::Value;
use streamkeeper_testkit::k8s::{Cluster, cluster};
use support::{ok_stdout, root, streamkeeper};

/// `kubectl apply --dry-run=server --validate=strict -o json` of `yaml`; the objects the API
/// server would have stored.
fn dry_run(c: &Cluster, yaml: &str) -> Vec<Value> {
    let out = c.kubectl_with(
        c.kubeconfig(),
        &[
            "apply",
            "--dry-run=server",
            "--validate=strict",
            "-o",
            "json",
            "-f",
            "-",
        ],
        Some(yaml),
    );
    assert!(
        out.status.success(),
        "the API server refused it: {}\n{yaml}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("kubectl prints JSON");
    match v["kind"].as_str() {
        Some("List") => v["items"].as_array().cloned().unwrap_or_default(),
        _ => vec![v],
    }
}

/// A namespace that exists (a dry run still needs one); tests may ask for the same one at once.
fn namespace(c: &Cluster, ns: &str) {
    let out = c.kubectl(&["create", "namespace", ns]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || err.contains("AlreadyExists") || err.contains("already exists"),
        "{err}"
    );
}

fn sidecar(pod: &Value) -> &Value {
    pod["initContainers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "streamkeeper"))
        .unwrap_or_else(|| panic!("no streamkeeper init container: {pod:#}"))
}

/// The checks that hold for any injected workload the API server accepted.
fn assert_injected(obj: &Value, config_map: &str, secrets: &[&str]) {
    let pod = &obj["spec"]["template"]["spec"];
    let c = sidecar(pod);
    assert_eq!(c["restartPolicy"], "Always", "a native sidecar: {c:#}");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(
        c["env"][0],
        serde_json::json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}})
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert!(c["resources"]["requests"]["memory"].is_string(), "{c:#}");
    let volumes = pod["volumes"].as_array().expect("volumes");
    assert!(
        volumes.iter().any(|v| v["configMap"]["name"] == config_map),
        "no ConfigMap volume {config_map}: {volumes:#?}"
    );
    for s in secrets {
        assert!(
            volumes
                .iter()
                .any(|v| v["secret"]["secretName"] == *s && v["secret"]["optional"] == true),
            "no Secret volume {s}: {volumes:#?}"
        );
        let mounted = c["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .any(|m| {
                m["mountPath"] == format!("/var/run/streamkeeper/credentials/{s}")
                    && m["readOnly"] == true
            });
        assert!(mounted, "{s} not mounted read-only: {c:#}");
    }
}

#[test]
fn inject_output_for_a_deployment_is_accepted_by_a_server_side_dry_run() {
    let c = cluster();
    namespace(c, "cc");
    let injected = ok_stdout(&streamkeeper(
        &[
            "inject",
            "-f",
            "manifests/app/wem-ingest.yaml",
            "--streams",
            "manifests/streams",
        ],
        "",
    ));
    let objs = dry_run(c, &injected);
    assert_eq!(objs.len(), 1);
    assert_eq!(objs[0]["kind"], "Deployment");
    assert_injected(
        &objs[0],
        "streamkeeper-wem-ingest",
        &[
            "acme-gateway-oauth",
            "acme-genesys-oauth",
            "globex-cxone-access-key",
        ],
    );
    // The app container is still there, untouched in what matters.
    assert_eq!(
        objs[0]["spec"]["template"]["spec"]["containers"][0]["name"],
        "app"
    );
    // A dry run stores nothing.
    let stored = c.kubectl_ok(&["get", "deployments", "-n", "cc", "-o", "name"]);
    assert_eq!(stored.trim(), "", "the dry run stored {stored}");
}

const STATEFULSET: &str = "\
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: recorder
  namespace: rec
  annotations:
    streamkeeper.dev/credentials-secrets: recorder-extra
spec:
  serviceName: recorder
  replicas: 2
  selector:
    matchLabels: {app: recorder}
  template:
    metadata:
      labels: {app: recorder}
    spec:
      initContainers:
        - name: migrate
          image: registry.example.com/recorder:2.0
          args: [migrate]
      containers:
        - name: recorder
          image: registry.example.com/recorder:2.0
          volumeMounts:
            - {name: data, mountPath: /data}
  volumeClaimTemplates:
    - metadata: {name: data}
      spec:
        accessModes: [ReadWriteOnce]
        resources: {requests: {storage: 1Gi}}
";

const STATEFULSET_STREAM: &str = "\
apiVersion: streamkeeper.dev/v1alpha1
kind: StreamConnection
metadata: {name: recorder-events, namespace: rec}
spec:
  platform: cxone-dfo
  tenant: globex
  workloadRef: {kind: StatefulSet, name: recorder}
  endpoints: {login: 'https://cxone.example.com', stream: 'wss://cxone.example.com/events'}
  credentialsSecretRef: {name: recorder-cxone}
";

#[test]
fn inject_output_for_a_statefulset_is_accepted_by_a_server_side_dry_run() {
    let c = cluster();
    namespace(c, "rec");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dry-run-streams");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("recorder.yaml"), STATEFULSET_STREAM).expect("write");
    let injected = ok_stdout(&streamkeeper(
        &["inject", "--streams", dir.to_str().expect("UTF-8 path")],
        STATEFULSET,
    ));
    let objs = dry_run(c, &injected);
    assert_eq!(objs.len(), 1);
    assert_eq!(objs[0]["kind"], "StatefulSet");
    assert_injected(
        &objs[0],
        "streamkeeper-recorder",
        &["recorder-cxone", "recorder-extra"],
    );
    // The sidecar goes first, so it runs before (and while) the app's own init container does.
    let init: Vec<&str> = objs[0]["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .expect("init containers")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(init, ["streamkeeper", "migrate"]);
    assert_eq!(
        objs[0]["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "data"
    );
    let stored = c.kubectl_ok(&["get", "statefulsets", "-n", "rec", "-o", "name"]);
    assert_eq!(stored.trim(), "", "the dry run stored {stored}");
}

#[test]
fn render_output_and_the_example_streams_are_accepted_by_a_server_side_dry_run() {
    let c = cluster();
    namespace(c, "cc");
    let crd = std::fs::read_to_string(root().join("crds/streamconnections.streamkeeper.dev.yaml"))
        .expect("crds/");
    c.install_crd(&crd, "streamconnections.streamkeeper.dev");

    // Every example StreamConnection and Secret, as the API server's schema sees them.
    let mut examples = String::new();
    let mut files: Vec<_> = std::fs::read_dir(root().join("manifests/streams"))
        .expect("manifests/streams")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    for f in &files {
        examples += "---\n";
        examples += &std::fs::read_to_string(f).expect("readable");
    }
    let objs = dry_run(c, &examples);
    let kinds: Vec<&str> = objs.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "StreamConnection").count(),
        4,
        "{kinds:?}"
    );
    // The two CXone streams share one access key.
    assert_eq!(kinds.iter().filter(|k| **k == "Secret").count(), 3);

    // render's ConfigMaps: YAML that kubectl reads back as it was meant, even for a workload
    // named `on` (a boolean to a YAML 1.1 reader unless quoted).
    let streams = examples.replace("name: wem-ingest}", "name: \"on\"}");
    let rendered = ok_stdout(&streamkeeper(
        &[
            "render",
            "-f",
            "-",
            "--sidecar-redis",
            "redis://redis.data.svc:6379",
        ],
        &streams,
    ));
    let objs = dry_run(c, &rendered);
    assert_eq!(objs.len(), 1, "{rendered}");
    let cm = &objs[0];
    assert_eq!(cm["metadata"]["name"], "streamkeeper-on");
    assert_eq!(cm["metadata"]["labels"]["streamkeeper.dev/workload"], "on");
    let yaml = cm["data"]["sidecar.yaml"].as_str().expect("sidecar.yaml");
    let cfg = streamkeeper_api::SidecarConfig::from_yaml(yaml)
        .expect("the sidecar reads what the API server stored")
        .config;
    assert_eq!(cfg.streams.len(), 4);
    let stored = c.kubectl_ok(&["get", "configmaps,sconn", "-n", "cc", "-o", "name"]);
    assert!(
        !stored.contains("streamkeeper-on") && !stored.contains("streamconnection"),
        "the dry run stored {stored}"
    );
}
