//! Helpers shared by the cli crate's integration tests: the repository root, the `streamkeeper`
//! binary, helm, and YAML documents.

#![allow(dead_code)] // each test binary uses its own subset

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use serde_yaml_ng::Value;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs the `streamkeeper` binary in the repository root with `stdin` as its input.
pub fn streamkeeper(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_streamkeeper"))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("streamkeeper starts");
    let written = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes());
    // A run that fails on its flags exits before reading its input.
    if let Err(e) = written {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "stdin: {e}");
    }
    child.wait_with_output().expect("streamkeeper runs")
}

/// stdout of a run that must succeed.
pub fn ok_stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("UTF-8 output")
}

/// The helm binary, found where the API server harness finds its binaries: `SK_K8S_BIN`, then
/// `KUBEBUILDER_ASSETS`, then the cache `scripts/k8s-test-tools` fills. Missing, the test fails
/// with the command that builds it: chart tests never skip.
pub fn helm_bin() -> PathBuf {
    for var in ["SK_K8S_BIN", "KUBEBUILDER_ASSETS"] {
        if let Some(dir) = std::env::var_os(var).filter(|d| !d.is_empty()) {
            let helm = PathBuf::from(dir).join("helm");
            assert!(
                helm.is_file(),
                "{var} is set but {} does not exist: run `scripts/k8s-test-tools` (it builds helm)",
                helm.display()
            );
            return helm;
        }
    }
    let cache = std::env::var_os("SK_K8S_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/streamkeeper/k8s"))
        })
        .expect("HOME or SK_K8S_CACHE is set");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&cache)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path().join("bin/helm")))
                .filter(|h| h.is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort_by_key(|h| std::fs::metadata(h).and_then(|m| m.modified()).ok());
    found.pop().unwrap_or_else(|| {
        panic!(
            "helm not found (SK_K8S_BIN, KUBEBUILDER_ASSETS, {}/*/bin): build it with \
             `scripts/k8s-test-tools` (helm takes about 2 minutes; `scripts/test` runs it)",
            cache.display()
        )
    })
}

/// Runs helm with its config, cache and data directories inside the target directory, so the
/// tests neither read nor write the user's helm setup.
pub fn helm(args: &[&str]) -> Output {
    let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("helm-home");
    Command::new(helm_bin())
        .args(args)
        .current_dir(root())
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG")
        .output()
        .expect("helm runs")
}

/// Every non-empty document of a YAML stream.
pub fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML document"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// `kind` and `metadata.name` of an object.
pub fn kind_name(v: &Value) -> (String, String) {
    (
        v["kind"].as_str().unwrap_or_default().to_owned(),
        v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}
