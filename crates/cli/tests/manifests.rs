//! manifests/: the injected example stays what `streamkeeper inject` makes of the app, and the
//! example streams cover every platform, each with a Secret of the keys its platform reads.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml_ng::Value;
use support::{documents, kind_name, ok_stdout, root, streamkeeper};

const APP: &str = "manifests/app/wem-ingest.yaml";
const INJECTED: &str = "manifests/app/wem-ingest.injected.yaml";

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every document of every file in manifests/streams.
fn stream_docs() -> Vec<(String, Value)> {
    let mut files: Vec<_> = std::fs::read_dir(root().join("manifests/streams"))
        .expect("manifests/streams")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
        .into_iter()
        .flat_map(|f| {
            let name = f.file_name().expect("name").to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&f).expect("readable");
            documents(&text).into_iter().map(move |d| (name.clone(), d))
        })
        .collect()
}

#[test]
fn the_injected_example_is_what_inject_makes_of_the_app() {
    let out = streamkeeper(&["inject", "-f", APP, "--streams", "manifests/streams"], "");
    let produced = ok_stdout(&out);
    assert_eq!(
        produced,
        read(INJECTED),
        "{INJECTED} is stale; regenerate it with\n  cargo run -q -p streamkeeper -- inject -f {APP} \
         --streams manifests/streams > {INJECTED}"
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn injecting_the_injected_example_again_changes_nothing() {
    let injected = read(INJECTED);
    let again = ok_stdout(&streamkeeper(&["inject"], &injected));
    assert_eq!(again, injected);
    let with_streams = ok_stdout(&streamkeeper(
        &["inject", "-f", INJECTED, "--streams", "manifests/streams"],
        "",
    ));
    assert_eq!(with_streams, injected);
}

#[test]
fn every_platform_has_a_stream_whose_secret_holds_its_platforms_keys() {
    let docs = stream_docs();
    let secrets: BTreeMap<String, &Value> = docs
        .iter()
        .filter(|(_, d)| d["kind"] == "Secret")
        .map(|(_, d)| (kind_name(d).1, d))
        .collect();
    let mut platforms = BTreeSet::new();
    for (file, sc) in docs.iter().filter(|(_, d)| d["kind"] == "StreamConnection") {
        let spec = &sc["spec"];
        let platform = spec["platform"].as_str().expect("platform");
        platforms.insert(platform.to_owned());
        assert_eq!(sc["apiVersion"], "streamkeeper.dev/v1alpha1", "{file}");
        assert_eq!(sc["metadata"]["namespace"], "cc", "{file}");
        assert_eq!(
            spec["workloadRef"],
            serde_yaml_ng::from_str::<Value>("{kind: Deployment, name: wem-ingest}").expect("yaml"),
            "{file}"
        );
        let secret_name = spec["credentialsSecretRef"]["name"]
            .as_str()
            .expect("secret ref");
        let secret = secrets
            .get(secret_name)
            .unwrap_or_else(|| panic!("{file}: Secret {secret_name} is in no manifest"));
        let keys: BTreeSet<&str> = secret["stringData"]
            .as_mapping()
            .expect("stringData")
            .keys()
            .filter_map(Value::as_str)
            .collect();
        let wanted = match platform {
            "genesys" | "generic" => ["clientId", "clientSecret"],
            _ => ["accessKeyId", "accessKeySecret"],
        };
        assert_eq!(keys, BTreeSet::from(wanted), "{file}: Secret {secret_name}");
        for v in secret["stringData"]
            .as_mapping()
            .expect("stringData")
            .values()
        {
            assert!(
                v.as_str().is_some_and(|v| v.starts_with("FAKE-")),
                "{file}: credentials must be clearly fake placeholders, found {v:?}"
            );
        }
        // A Genesys stream names its region; the others name their endpoints.
        assert_eq!(spec["region"].is_string(), platform == "genesys", "{file}");
        assert_eq!(
            spec["endpoints"].is_mapping(),
            platform != "genesys",
            "{file}"
        );
    }
    assert_eq!(
        platforms,
        BTreeSet::from(["cxone-aah", "cxone-dfo", "generic", "genesys"].map(str::to_owned))
    );
}

#[test]
fn the_injected_example_mounts_the_secret_of_every_stream() {
    let docs = stream_docs();
    let wanted: BTreeSet<String> = docs
        .iter()
        .filter(|(_, d)| d["kind"] == "StreamConnection")
        .map(|(_, d)| {
            d["spec"]["credentialsSecretRef"]["name"]
                .as_str()
                .expect("name")
                .to_owned()
        })
        .collect();
    let deploy = documents(&read(INJECTED)).remove(0);
    let mounted: BTreeSet<String> = deploy["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["secret"]["secretName"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(mounted, wanted);
}
