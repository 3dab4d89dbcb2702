//! `streamkeeper render` and `streamkeeper crdgen` as a user runs them.

use std::process::Command;

use streamkeeper_testkit::TempDir;

fn sconn(name: &str, priority: u16, extra: &str) -> String {
    format!(
        "apiVersion: streamkeeper.dev/v1alpha1\nkind: StreamConnection\nmetadata: {{name: {name}, namespace: cc}}\n\
         spec:\n  platform: genesys\n  tenant: acme\n  priority: {priority}\n  workloadRef: {{kind: Deployment, name: wem}}\n\
         \x20 region: mypurecloud.com\n  credentialsSecretRef: {{name: acme-oauth}}\n  topics: [v2.routing.queues.q1.conversations]\n{extra}"
    )
}

fn dir(name: &str, docs: &[String]) -> TempDir {
    let d = TempDir::new(&format!("render-{name}"));
    std::fs::write(d.path().join("streams.yaml"), docs.join("---\n")).expect("write");
    d
}

#[test]
fn render_admits_by_priority_under_the_limit_and_prints_json_the_sidecar_reads() {
    let d = dir(
        "ok",
        &[
            sconn("low", 100, ""),
            sconn("mid", 500, ""),
            sconn("high", 900, ""),
        ],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_streamkeeper"))
        .args(["render", "-f"])
        .arg(d.path())
        .args(["--tenant-limit", "acme=2", "-o", "json"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let decision = |s: &str| {
        v["decisions"]
            .as_array()
            .and_then(|a| a.iter().find(|d| d["stream"] == s))
            .map(|d| d["decision"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(decision("cc/high").as_deref(), Some("Admitted"));
    assert_eq!(decision("cc/mid").as_deref(), Some("Admitted"));
    assert_eq!(decision("cc/low").as_deref(), Some("Queued"));
    let cm = &v["configMaps"][0];
    assert_eq!(cm["metadata"]["name"], "streamkeeper-wem");
    let yaml = cm["data"]["sidecar.yaml"].as_str().expect("sidecar.yaml");
    let cfg = streamkeeper_api::SidecarConfig::from_yaml(yaml)
        .expect("the sidecar reads it")
        .config;
    let ids: Vec<&str> = cfg.streams.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["cc/high", "cc/mid"]);
}

#[test]
fn render_refuses_an_invalid_spec_naming_the_field() {
    let d = dir(
        "bad",
        &[sconn(
            "bad",
            100,
            "  heartbeat: {interval: 40s, timeout: 30s}\n",
        )],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_streamkeeper"))
        .args(["render", "-f"])
        .arg(d.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cc/bad") && err.contains("spec.heartbeat.timeout"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn crdgen_prints_the_committed_crd() {
    let out = Command::new(env!("CARGO_BIN_EXE_streamkeeper"))
        .arg("crdgen")
        .output()
        .expect("run");
    assert!(out.status.success());
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../crds/streamconnections.streamkeeper.dev.yaml"
    ))
    .expect("crds/");
    assert_eq!(String::from_utf8_lossy(&out.stdout), committed);
}

#[test]
fn render_reads_a_kubectl_list_and_writes_yaml_that_kubectl_reads_back_the_same() {
    // What `kubectl get sconn -o yaml` prints: a List. The workload is named `on`, which a YAML
    // 1.1 reader (kubectl's) takes for `true` unless it is quoted.
    let item = |name: &str| {
        sconn(name, 500, "")
            .replace("name: wem", "name: \"on\"")
            .lines()
            .map(|l| format!("  {l}\n"))
            .collect::<String>()
            .replacen("  apiVersion", "- apiVersion", 1)
    };
    let list = format!(
        "apiVersion: v1\nkind: List\nitems:\n{}{}",
        item("one"),
        item("two")
    );
    let d = dir("list", &[list]);
    let out = Command::new(env!("CARGO_BIN_EXE_streamkeeper"))
        .args(["render", "-f"])
        .arg(d.path())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("skipping"), "{stderr}");
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(
        text.contains("#   cc/one") && text.contains("#   cc/two"),
        "{text}"
    );
    assert!(text.contains("name: streamkeeper-on\n"), "{text}");
    assert!(
        text.contains("streamkeeper.dev/workload: \"on\"\n"),
        "the label must be quoted for YAML 1.1:\n{text}"
    );
}
