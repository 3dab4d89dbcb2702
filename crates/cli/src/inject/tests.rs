use std::collections::BTreeSet;

use serde_yaml_ng::Value;
use streamkeeper_api::ids::is_dns_label;

use super::{
    document::InjectError,
    sidecar::{PullPolicy, Quantity, Resources, Sidecar, volume_name},
    streams::{StreamRef, WorkloadKind, parse_streams},
    workload::{Injected, Options, inject},
};
use streamkeeper_api::kube_yaml;

const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: wem-ingest
  namespace: cc
spec:
  replicas: 2
  selector:
    matchLabels: {app: wem-ingest}
  template:
    metadata:
      labels: {app: wem-ingest}
    spec:
      serviceAccountName: wem
      futureField: {kept: true}
      initContainers:
      - name: migrate
        image: example/migrate:1
      containers:
      - name: app
        image: example/wem:1.2
        env:
        - {name: FLAG, value: \"yes\"}
        - {name: MODE, value: \"0644\"}
      volumes:
      - name: data
        emptyDir: {}
";

const STATEFULSET: &str = "\
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: recorder}
spec:
  serviceName: recorder
  selector: {matchLabels: {app: recorder}}
  template:
    metadata: {labels: {app: recorder}}
    spec:
      containers: [{name: app, image: example/recorder:3}]
";

fn stream(
    ns: Option<&str>,
    name: &str,
    kind: WorkloadKind,
    workload: &str,
    secret: &str,
) -> StreamRef {
    StreamRef {
        namespace: ns.map(str::to_owned),
        name: name.to_owned(),
        workload_kind: kind,
        workload_name: workload.to_owned(),
        secret: secret.parse().expect("valid secret name"),
    }
}

fn run_with(text: &str, sidecar: &Sidecar, streams: Option<&[StreamRef]>) -> Injected {
    let options = Options {
        sidecar,
        namespace: "default",
        streams,
    };
    inject("test.yaml", text, &options).expect("injects")
}

fn run(text: &str, streams: Option<&[StreamRef]>) -> Injected {
    run_with(text, &Sidecar::default(), streams)
}

fn fails(text: &str) -> InjectError {
    let options = Options {
        sidecar: &Sidecar::default(),
        namespace: "default",
        streams: None,
    };
    inject("test.yaml", text, &options).expect_err("refused")
}

fn docs(text: &str) -> Vec<Value> {
    kube_yaml::split(text)
        .iter()
        .map(|d| serde_yaml_ng::from_str(&d.body).expect("output is YAML"))
        .collect()
}

fn pod_spec(doc: &Value) -> &Value {
    &doc["spec"]["template"]["spec"]
}

fn sidecar_of(doc: &Value) -> &Value {
    pod_spec(doc)["initContainers"]
        .as_sequence()
        .expect("initContainers")
        .iter()
        .find(|c| c["name"] == "streamkeeper")
        .expect("the sidecar")
}

fn volume<'v>(doc: &'v Value, name: &str) -> Option<&'v Value> {
    pod_spec(doc)["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == name)
}

fn yaml(s: &str) -> Value {
    serde_yaml_ng::from_str(s).expect("valid YAML")
}

#[test]
fn the_sidecar_is_a_hardened_native_sidecar_as_the_contract_says() {
    let out = run(DEPLOYMENT, None);
    let doc = &docs(&out.output)[0];
    let c = sidecar_of(doc);
    assert_eq!(c["image"], "ghcr.io/streamkeeper/streamkeeper:0.1.0");
    assert_eq!(c["restartPolicy"], "Always", "a native sidecar");
    assert_eq!(
        c["command"],
        yaml("[/usr/local/bin/streamkeeper-sidecar]"),
        "the lean sidecar binary of the image"
    );
    assert_eq!(
        c["args"],
        yaml("[--config, /etc/streamkeeper/sidecar.yaml]")
    );
    assert_eq!(
        c["env"],
        yaml(
            "[{name: POD_NAME, valueFrom: {fieldRef: {apiVersion: v1, fieldPath: metadata.name}}}]"
        )
    );
    assert_eq!(
        c["ports"],
        yaml("[{name: sk-admin, containerPort: 9464, protocol: TCP}]")
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        yaml("{path: /readyz, port: sk-admin}")
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"],
        yaml("{path: /healthz, port: sk-admin}")
    );
    assert_eq!(
        c["startupProbe"]["httpGet"],
        yaml("{path: /healthz, port: sk-admin}")
    );
    assert_eq!(
        c["resources"],
        yaml("{requests: {cpu: 50m, memory: 64Mi}, limits: {memory: 256Mi}}")
    );
    assert_eq!(
        c["securityContext"],
        yaml(
            "{runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, readOnlyRootFilesystem: true,
              allowPrivilegeEscalation: false, capabilities: {drop: [ALL]},
              seccompProfile: {type: RuntimeDefault}}"
        )
    );
    assert_eq!(
        c["volumeMounts"],
        yaml("[{name: streamkeeper-config, mountPath: /etc/streamkeeper, readOnly: true}]")
    );
    assert_eq!(
        volume(doc, "streamkeeper-config").expect("config volume")["configMap"],
        yaml("{name: streamkeeper-wem-ingest}")
    );
    assert_eq!(
        doc["spec"]["template"]["metadata"]["labels"],
        yaml("{app: wem-ingest, streamkeeper.dev/injected: 'true'}")
    );
}

#[test]
fn the_sidecar_comes_first_and_everything_of_the_app_is_kept_in_order() {
    let out = run(DEPLOYMENT, None);
    let doc = &docs(&out.output)[0];
    let before = yaml(DEPLOYMENT);
    let init = pod_spec(doc)["initContainers"].as_sequence().expect("list");
    assert_eq!(init.len(), 2);
    assert_eq!(init[0]["name"], "streamkeeper");
    assert_eq!(init[1], pod_spec(&before)["initContainers"][0]);
    assert_eq!(pod_spec(doc)["containers"], pod_spec(&before)["containers"]);
    assert_eq!(pod_spec(doc)["futureField"], yaml("{kept: true}"));
    assert_eq!(doc["spec"]["replicas"], 2);
    let keys: Vec<&str> = pod_spec(doc)
        .as_mapping()
        .expect("mapping")
        .keys()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "serviceAccountName",
            "futureField",
            "initContainers",
            "containers",
            "volumes"
        ]
    );
    assert_eq!(
        volume(doc, "data").expect("app volume")["emptyDir"],
        yaml("{}")
    );
    // "yes" and "0644" stay strings for kubectl's YAML 1.1 reader.
    assert!(out.output.contains("value: \"yes\"\n"), "{}", out.output);
    assert!(out.output.contains("value: \"0644\"\n"), "{}", out.output);
}

#[test]
fn injecting_twice_changes_nothing() {
    let streams = [stream(
        Some("cc"),
        "q",
        WorkloadKind::Deployment,
        "wem-ingest",
        "acme-oauth",
    )];
    for (input, given) in [
        (DEPLOYMENT, None),
        (DEPLOYMENT, Some(&streams[..])),
        (STATEFULSET, None),
    ] {
        let once = run(input, given).output;
        let twice = run(&once, given).output;
        assert_eq!(twice, once);
        // Without --streams the second run keeps the first run's mounts.
        assert_eq!(run(&once, None).output, once);
    }
}

#[test]
fn other_kinds_and_up_to_date_workloads_are_written_back_byte_for_byte() {
    let other = "# a comment\napiVersion: v1\nkind: Service   # inline\nmetadata: {name: svc}\n";
    let input = format!("{other}---\n{DEPLOYMENT}---\n{other}");
    let out = run(&input, None).output;
    assert!(out.starts_with(other), "{out}");
    assert!(out.ends_with(&format!("---\n{other}")), "{out}");

    let injected = format!("# kept\n{}", run(DEPLOYMENT, None).output);
    let hand_edited = injected.replace("kind: Deployment\n", "kind: Deployment   # hand edit\n");
    assert_eq!(run(&hand_edited, None).output, hand_edited);
}

#[test]
fn a_changed_workload_keeps_its_leading_comments() {
    let out = run(&format!("---\n# the app\n{STATEFULSET}"), None).output;
    assert!(
        out.starts_with("---\n# the app\napiVersion: apps/v1\n"),
        "{out}"
    );
}

#[test]
fn streams_mount_the_secrets_of_exactly_the_streams_that_name_the_workload() {
    let streams = [
        stream(
            Some("cc"),
            "a",
            WorkloadKind::Deployment,
            "wem-ingest",
            "acme-genesys",
        ),
        stream(
            Some("cc"),
            "b",
            WorkloadKind::Deployment,
            "wem-ingest",
            "acme-cxone",
        ),
        stream(
            Some("cc"),
            "c",
            WorkloadKind::Deployment,
            "wem-ingest",
            "acme-genesys",
        ),
        stream(
            Some("other"),
            "d",
            WorkloadKind::Deployment,
            "wem-ingest",
            "wrong-namespace",
        ),
        stream(
            Some("cc"),
            "e",
            WorkloadKind::StatefulSet,
            "wem-ingest",
            "wrong-kind",
        ),
        stream(
            Some("cc"),
            "f",
            WorkloadKind::Deployment,
            "billing",
            "wrong-name",
        ),
        stream(
            None,
            "g",
            WorkloadKind::StatefulSet,
            "recorder",
            "recorder-oauth",
        ),
    ];
    let input = format!("{DEPLOYMENT}---\n{STATEFULSET}");
    let out = run(&input, Some(&streams));
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    let all = docs(&out.output);
    let mounts = |doc: &Value| -> Vec<String> {
        sidecar_of(doc)["volumeMounts"]
            .as_sequence()
            .expect("mounts")
            .iter()
            .filter_map(|m| m["mountPath"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(
        mounts(&all[0]),
        [
            "/etc/streamkeeper",
            "/var/run/streamkeeper/credentials/acme-cxone",
            "/var/run/streamkeeper/credentials/acme-genesys",
        ]
    );
    assert_eq!(
        volume(&all[0], "streamkeeper-creds-acme-genesys").expect("secret volume")["secret"],
        yaml("{secretName: acme-genesys, optional: true}")
    );
    // Both without a namespace: both in the --namespace default.
    assert_eq!(
        mounts(&all[1]),
        [
            "/etc/streamkeeper",
            "/var/run/streamkeeper/credentials/recorder-oauth"
        ]
    );
}

#[test]
fn with_streams_a_removed_stream_loses_its_mount_and_without_them_mounts_are_kept() {
    let two = [
        stream(
            Some("cc"),
            "a",
            WorkloadKind::Deployment,
            "wem-ingest",
            "first",
        ),
        stream(
            Some("cc"),
            "b",
            WorkloadKind::Deployment,
            "wem-ingest",
            "second",
        ),
    ];
    let once = run(DEPLOYMENT, Some(&two)).output;
    let kept = docs(&run(&once, None).output).remove(0);
    assert!(volume(&kept, "streamkeeper-creds-second").is_some());
    let fewer = docs(&run(&once, Some(&two[..1])).output).remove(0);
    assert!(volume(&fewer, "streamkeeper-creds-first").is_some());
    assert!(volume(&fewer, "streamkeeper-creds-second").is_none());
    assert_eq!(
        sidecar_of(&fewer)["volumeMounts"]
            .as_sequence()
            .map(Vec::len),
        Some(2)
    );
}

#[test]
fn the_annotation_adds_secrets_to_those_of_the_streams() {
    let annotated = DEPLOYMENT.replace(
        "  namespace: cc\n",
        "  namespace: cc\n  annotations:\n    streamkeeper.dev/credentials-secrets: \"extra-one, extra-two\"\n",
    );
    let streams = [stream(
        Some("cc"),
        "a",
        WorkloadKind::Deployment,
        "wem-ingest",
        "from-stream",
    )];
    let doc = docs(&run(&annotated, Some(&streams)).output).remove(0);
    for name in ["extra-one", "extra-two", "from-stream"] {
        assert!(
            volume(&doc, &format!("streamkeeper-creds-{name}")).is_some(),
            "{name}"
        );
    }
    let err = fails(&annotated.replace("extra-one", "Bad_Name"));
    assert_eq!(
        err.field,
        "metadata.annotations[\"streamkeeper.dev/credentials-secrets\"]"
    );
}

#[test]
fn warnings_say_when_no_secret_is_mounted() {
    let none = run(DEPLOYMENT, None);
    assert_eq!(none.warnings.len(), 1, "{:?}", none.warnings);
    assert!(none.warnings[0].starts_with("Deployment cc/wem-ingest: no credentials Secret"));
    let unmatched = run(DEPLOYMENT, Some(&[]));
    assert!(unmatched.warnings[0].contains("no StreamConnection in --streams names this workload"));
    let nothing = run(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
        None,
    );
    assert!(nothing.warnings[0].contains("no Deployment or StatefulSet"));
}

#[test]
fn new_flags_update_the_sidecar_in_place() {
    let once = run(DEPLOYMENT, None).output;
    let sidecar = Sidecar {
        image: "registry.local/sk:dev".into(),
        pull_policy: PullPolicy::Always,
        resources: Resources {
            cpu_request: Some("100m".parse().expect("quantity")),
            memory_request: None,
            cpu_limit: Some("1".parse().expect("quantity")),
            memory_limit: None,
        },
        run_as_user: 1000,
    };
    let doc = docs(&run_with(&once, &sidecar, None).output).remove(0);
    let init = pod_spec(&doc)["initContainers"]
        .as_sequence()
        .expect("list");
    assert_eq!(init.len(), 2, "replaced, not added");
    assert_eq!(init[0]["image"], "registry.local/sk:dev");
    assert_eq!(init[0]["imagePullPolicy"], "Always");
    assert_eq!(
        init[0]["resources"],
        yaml("{requests: {cpu: 100m}, limits: {cpu: '1'}}")
    );
    assert_eq!(init[0]["securityContext"]["runAsUser"], 1000);
    let configs = pod_spec(&doc)["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .filter(|v| v["name"] == "streamkeeper-config")
        .count();
    assert_eq!(configs, 1);
}

#[test]
fn a_list_from_kubectl_get_is_injected_item_by_item() {
    let list = format!(
        "apiVersion: v1\nkind: List\nitems:\n- {}\n- {{apiVersion: v1, kind: Service, metadata: {{name: s}}}}\n",
        serde_json::to_string(&serde_json::to_value(yaml(STATEFULSET)).expect("json"))
            .expect("json")
    );
    let out = run(&list, None);
    assert_eq!(out.workloads, 1);
    let doc = docs(&out.output).remove(0);
    assert_eq!(sidecar_of(&doc["items"][0])["name"], "streamkeeper");
    assert_eq!(
        doc["items"][1],
        yaml("{apiVersion: v1, kind: Service, metadata: {name: s}}")
    );
    let err = fails(&list.replace("\"apps/v1\"", "\"apps/v1beta2\""));
    assert_eq!(err.field, "items[0].apiVersion");
}

#[test]
fn octal_file_modes_are_read_as_kubectl_reads_them() {
    let input = DEPLOYMENT.replace(
        "        emptyDir: {}\n",
        "        emptyDir: {}\n      - name: cfg\n        configMap: {name: c, defaultMode: 0644, items: [{key: k, path: p, mode: 0400}]}\n",
    );
    let doc = docs(&run(&input, None).output).remove(0);
    let cfg = volume(&doc, "cfg").expect("volume");
    assert_eq!(cfg["configMap"]["defaultMode"], 0o644);
    assert_eq!(cfg["configMap"]["items"][0]["mode"], 0o400);
}

#[test]
fn errors_name_the_document_the_object_and_the_field() {
    let second =
        |doc: &str| format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\n---\n{doc}");

    let err = fails(&second(
        &DEPLOYMENT.replace("apps/v1", "extensions/v1beta1"),
    ));
    assert_eq!(
        err.place,
        "test.yaml, document 2 (line 4, Deployment cc/wem-ingest)"
    );
    assert_eq!(err.field, "apiVersion");

    let err = fails(&DEPLOYMENT.replace("  name: wem-ingest\n", ""));
    assert_eq!(err.field, "metadata.name");
    assert!(err.message.contains("missing"), "{err}");

    let err = fails("apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: x}\nspec: {}\n");
    assert_eq!(err.field, "spec.template");

    let err = fails(&DEPLOYMENT.replace(
        "      initContainers:\n      - name: migrate\n        image: example/migrate:1\n",
        "      initContainers: nope\n",
    ));
    assert_eq!(err.field, "spec.template.spec.initContainers");
    assert_eq!(err.message, "must be a list");

    let err = fails(&DEPLOYMENT.replace("      - name: app\n", "      - name: streamkeeper\n"));
    assert_eq!(err.field, "spec.template.spec.containers[0].name");

    let err = fails(&DEPLOYMENT.replace(
        "        image: example/wem:1.2\n",
        "        image: example/wem:1.2\n        ports: [{containerPort: 8080}, {containerPort: 9464}]\n",
    ));
    assert_eq!(
        err.field,
        "spec.template.spec.containers[0].ports[1].containerPort"
    );
    assert!(err.message.contains("9464"), "{err}");

    let err = fails(&second("kind: Deployment\n  bad: [indent\n"));
    assert_eq!(err.place, "test.yaml, document 2 (line 4)");
    assert!(err.message.starts_with("not valid YAML"), "{err}");
    assert!(
        err.to_string().contains("at line 6 column"),
        "line numbers are the file's: {err}"
    );
}

#[test]
fn streams_are_read_from_stream_connection_yaml_and_their_errors_name_the_field() {
    let text = "\
apiVersion: v1
kind: Secret
metadata: {name: acme-genesys-oauth, namespace: cc}
---
apiVersion: streamkeeper.dev/v1alpha1
kind: StreamConnection
metadata: {name: acme-queue-events, namespace: cc}
spec:
  platform: genesys
  workloadRef: {kind: Deployment, name: wem-ingest}
  credentialsSecretRef: {name: acme-genesys-oauth}
";
    let streams = parse_streams("s.yaml", text).expect("parses");
    assert_eq!(
        streams,
        [stream(
            Some("cc"),
            "acme-queue-events",
            WorkloadKind::Deployment,
            "wem-ingest",
            "acme-genesys-oauth"
        )]
    );
    let err = parse_streams(
        "s.yaml",
        &text.replace("  credentialsSecretRef: {name: acme-genesys-oauth}\n", ""),
    )
    .expect_err("no secret");
    assert_eq!(
        err.place,
        "s.yaml, document 2 (line 4, StreamConnection cc/acme-queue-events)"
    );
    assert_eq!(err.field, "spec.credentialsSecretRef");
    let err = parse_streams(
        "s.yaml",
        &text.replace("kind: Deployment,", "kind: DaemonSet,"),
    )
    .expect_err("bad kind");
    assert_eq!(err.field, "spec.workloadRef.kind");
}

#[test]
fn volume_names_are_dns_labels_that_never_collide() {
    let names = [
        "short",
        "with.dots.in.it",
        "with-dots-in-it",
        &[
            "x".repeat(63),
            "x".repeat(63),
            "x".repeat(63),
            "x".repeat(61),
        ]
        .join("."),
        &[
            "x".repeat(63),
            "x".repeat(63),
            "x".repeat(63),
            "y".repeat(61),
        ]
        .join("."),
        &"z".repeat(63),
    ];
    let mut seen = BTreeSet::new();
    for n in names {
        let v = volume_name(&n.parse().expect("secret name"));
        assert!(is_dns_label(&v), "{v}");
        assert!(seen.insert(v.clone()), "{n} collides as {v}");
    }
    assert_eq!(
        volume_name(&"short".parse().expect("name")),
        "streamkeeper-creds-short"
    );
}

#[test]
fn quantities_follow_the_kubernetes_grammar() {
    for ok in [
        "50m", "0.5", "1", "64Mi", "1G", "1e3", "1E-2", ".5", "2.", "+1", "100k",
    ] {
        assert!(ok.parse::<Quantity>().is_ok(), "{ok}");
    }
    for bad in ["", "50 m", "m", "1.2.3", "64MB", "-1", "1e", "ten", "."] {
        assert!(bad.parse::<Quantity>().is_err(), "{bad}");
    }
    let r = |req: &str, lim: &str| Resources {
        cpu_request: None,
        memory_request: Some(req.parse().expect("q")),
        cpu_limit: None,
        memory_limit: Some(lim.parse().expect("q")),
    };
    assert!(r("64Mi", "256Mi").check().is_ok());
    assert!(r("1Gi", "1000Mi").check().is_err());
    assert!(r("1G", "1Gi").check().is_ok());
    assert_eq!(
        r("512Mi", "256Mi").check(),
        Err("--memory-limit 256Mi is below --memory-request 512Mi".into())
    );
}
