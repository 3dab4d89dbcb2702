//! `streamkeeper inject` as users run it: stdin to stdout, files and directories, warnings on
//! stderr, and errors that name the flag, the document and the field, with exit code 2.

mod support;

use support::{documents, ok_stdout, streamkeeper};

const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: cc}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: app, image: example/web:1}]
";

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn stdin_to_stdout_with_a_warning_when_no_secret_is_known() {
    let out = streamkeeper(&["inject"], DEPLOYMENT);
    let text = ok_stdout(&out);
    let doc = documents(&text).remove(0);
    assert_eq!(
        doc["spec"]["template"]["spec"]["initContainers"][0]["name"],
        "streamkeeper"
    );
    assert!(
        stderr(&out).contains("warning: Deployment cc/web: no credentials Secret to mount"),
        "{}",
        stderr(&out)
    );
    let dash = streamkeeper(&["inject", "-f", "-"], DEPLOYMENT);
    assert_eq!(ok_stdout(&dash), text, "-f - reads stdin too");
}

#[test]
fn streams_are_read_from_a_directory_and_flags_reach_the_container() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("inject-cli-streams");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("a.yaml"),
        "apiVersion: streamkeeper.dev/v1alpha1\nkind: StreamConnection\nmetadata: {name: q, namespace: cc}\n\
         spec: {platform: generic, tenant: t, workloadRef: {kind: Deployment, name: web}, credentialsSecretRef: {name: web-oauth}}\n",
    )
    .expect("write");
    std::fs::write(dir.join("notes.txt"), "not YAML: [").expect("write");
    let out = streamkeeper(
        &[
            "inject",
            "--streams",
            dir.to_str().expect("utf-8 path"),
            "--image",
            "registry.local/sk:dev",
            "--cpu-limit",
            "500m",
            "--memory-request",
            "none",
            "--run-as-user",
            "1234",
        ],
        DEPLOYMENT,
    );
    let doc = documents(&ok_stdout(&out)).remove(0);
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    let c = &doc["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(c["image"], "registry.local/sk:dev");
    assert_eq!(c["resources"]["limits"]["cpu"], "500m");
    assert!(c["resources"]["requests"]["memory"].is_null());
    assert_eq!(c["securityContext"]["runAsUser"], 1234);
    assert_eq!(
        c["volumeMounts"][1]["mountPath"],
        "/var/run/streamkeeper/credentials/web-oauth"
    );
}

#[test]
fn errors_name_the_flag_or_the_document_and_field_and_exit_2() {
    let out = streamkeeper(
        &["inject", "-f", "-"],
        &DEPLOYMENT.replace("apps/v1", "apps/v1beta1"),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("<stdin>, document 1 (line 1, Deployment cc/web): apiVersion:"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty(), "nothing half-written");

    let out = streamkeeper(&["inject", "--memory-limit", "32Mi"], DEPLOYMENT);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--memory-limit 32Mi is below --memory-request 64Mi"),
        "{}",
        stderr(&out)
    );

    let out = streamkeeper(&["inject", "--cpu-request", "fast"], DEPLOYMENT);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--cpu-request"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a Kubernetes quantity"),
        "{}",
        stderr(&out)
    );

    let out = streamkeeper(&["inject", "-f", "does/not/exist.yaml"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot read does/not/exist.yaml"),
        "{}",
        stderr(&out)
    );

    let out = streamkeeper(&["inject", "--streams", "does/not/exist"], DEPLOYMENT);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--streams does/not/exist"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn help_describes_how_the_secrets_are_found() {
    let help = ok_stdout(&streamkeeper(&["inject", "--help"], ""));
    for needle in [
        "--streams PATH",
        "streamkeeper.dev/credentials-secrets",
        "/var/run/streamkeeper/credentials/{secret}",
        "restartPolicy: Always",
        "Injecting twice changes nothing",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}
