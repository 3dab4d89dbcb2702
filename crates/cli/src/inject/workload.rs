//! The transformation: a Deployment or StatefulSet in, the same object with the sidecar out.

use std::collections::BTreeSet;

use serde_yaml_ng::{Mapping, Value};

use super::{
    ADMIN_PORT, APP_PORT, CONFIG_VOLUME, CONTAINER_NAME, CREDENTIALS_ROOT,
    CREDENTIALS_VOLUME_PREFIX, INJECTED_LABEL, SECRETS_ANNOTATION,
    document::{self, Fail, InjectError, fail},
    sidecar::{Sidecar, map, s, sidecar_container, volume_name},
    streams::{SecretName, StreamRef, WorkloadKind, is_dns_subdomain},
};
use streamkeeper_api::kube_yaml;

/// The result of [`inject`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    /// The documents, in their order.
    pub output: String,
    /// How many Deployments and StatefulSets were found (changed or already up to date).
    pub workloads: usize,
    /// Things that work but are probably not what was meant, one line each.
    pub warnings: Vec<String>,
}

/// What [`inject`] is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    /// The container's settings.
    pub sidecar: &'a Sidecar,
    /// The namespace of objects that name none.
    pub namespace: &'a str,
    /// The StreamConnections given by `--streams` (`None` when the flag was not given).
    pub streams: Option<&'a [StreamRef]>,
}

/// Adds the sidecar to every Deployment and StatefulSet in `text` (named `source` in errors and
/// warnings). Other documents are returned byte for byte, and so are workloads that already
/// carry exactly this sidecar.
pub fn inject(source: &str, text: &str, options: &Options<'_>) -> Result<Injected, InjectError> {
    let mut out = Injected {
        output: String::with_capacity(text.len() + 2048),
        workloads: 0,
        warnings: Vec::new(),
    };
    for mut parsed in document::parse_all(source, text)? {
        let before = parsed.value.clone();
        let mut failed = None;
        for (prefix, object) in kube_yaml::objects_mut(&mut parsed.value) {
            match inject_object(object, options) {
                Ok(Some(notes)) => {
                    out.workloads += 1;
                    out.warnings.extend(notes);
                }
                Ok(None) => {}
                Err((what, f)) => {
                    failed = Some((what, f.under(&prefix)));
                    break;
                }
            }
        }
        if let Some((what, f)) = failed {
            return Err(parsed.error(Some(&what), f));
        }
        if parsed.value == before {
            out.output.push_str(parsed.doc.raw);
            continue;
        }
        let emitted = kube_yaml::to_string(&parsed.value)
            .map_err(|e| parsed.error(None, fail(e.field, e.message)))?;
        out.output.push_str(&parsed.doc.header());
        out.output.push_str(&emitted);
    }
    if out.workloads == 0 {
        out.warnings.push(format!(
            "{source}: no Deployment or StatefulSet found; the input is written back unchanged"
        ));
    }
    Ok(out)
}

/// Injects one object when it is a workload: `None` for other kinds, else the warnings; on
/// failure, the object (`Deployment cc/web`) and the field.
fn inject_object(
    value: &mut Value,
    options: &Options<'_>,
) -> Result<Option<Vec<String>>, (String, Fail)> {
    let Some(kind) = document::kind_of(value).and_then(WorkloadKind::parse) else {
        return Ok(None);
    };
    let namespace = document::metadata(value, "namespace")
        .unwrap_or(options.namespace)
        .to_owned();
    let what = document::describe(value, kind.as_str(), &namespace);
    let Value::Mapping(object) = value else {
        return Ok(None);
    };
    match inject_workload(object, kind, &namespace, options) {
        Ok(notes) => Ok(Some(
            notes.into_iter().map(|n| format!("{what}: {n}")).collect(),
        )),
        Err(f) => Err((what, f)),
    }
}

/// The transformation of one workload object.
fn inject_workload(
    object: &mut Mapping,
    kind: WorkloadKind,
    namespace: &str,
    options: &Options<'_>,
) -> Result<Vec<String>, Fail> {
    let mut notes = Vec::new();
    match object.get("apiVersion").and_then(Value::as_str) {
        Some("apps/v1") => {}
        other => {
            return Err(fail(
                "apiVersion",
                format!(
                    "a {} must be apps/v1 (found {}); older versions are no longer served",
                    kind.as_str(),
                    other.map_or("none".to_owned(), |o| format!("{o:?}"))
                ),
            ));
        }
    }
    let metadata = object.get("metadata").and_then(Value::as_mapping);
    let name = match metadata.and_then(|m| m.get("name")) {
        Some(Value::String(n)) if is_dns_subdomain(n) => n.clone(),
        Some(Value::String(n)) => {
            return Err(fail(
                "metadata.name",
                format!("{n:?} is not a valid object name"),
            ));
        }
        _ => {
            return Err(fail(
                "metadata.name",
                "missing: the sidecar's ConfigMap is named streamkeeper-{metadata.name}",
            ));
        }
    };
    let config_map = format!("streamkeeper-{name}");
    if config_map.len() > 253 {
        return Err(fail(
            "metadata.name",
            format!("too long: the ConfigMap name {config_map:?} would exceed 253 characters"),
        ));
    }
    let annotated = annotated_secrets(metadata)?;

    let template = mapping_at(object, &["spec", "template"])?;
    let labels = ensure_mapping(template, "metadata", "spec.template")?;
    let labels = ensure_mapping(labels, "labels", "spec.template.metadata")?;
    labels.insert(s(INJECTED_LABEL), s("true"));
    let pod = mapping_at(template, &["spec"])
        .map_err(|f| fail(format!("spec.template.{}", f.field), f.message))?;

    check_app_containers(pod)?;
    if let Some(volumes) = pod.get_mut("volumes") {
        octal_file_modes(volumes);
    }
    let init = sequence_field(pod, "initContainers")?;
    let existing = init
        .iter()
        .position(|c| c.get("name").and_then(Value::as_str) == Some(CONTAINER_NAME));
    let mut secrets: BTreeSet<SecretName> = annotated;
    match options.streams {
        Some(streams) => {
            let mut matched = 0;
            for stream in streams {
                if stream.workload_kind == kind
                    && stream.workload_name == name
                    && stream.namespace.as_deref().unwrap_or(options.namespace) == namespace
                {
                    matched += 1;
                    secrets.insert(stream.secret.clone());
                }
            }
            if matched == 0 {
                notes.push(
                    "no StreamConnection in --streams names this workload; no stream Secret is mounted"
                        .to_owned(),
                );
            }
        }
        None => {
            if let Some(i) = existing {
                secrets.extend(mounted_secrets(&init[i]));
            }
        }
    }
    if secrets.is_empty() && options.streams.is_none() {
        notes.push(format!(
            "no credentials Secret to mount: pass --streams or annotate the workload with {SECRETS_ANNOTATION}"
        ));
    }

    let container = sidecar_container(options.sidecar, &secrets);
    match existing {
        Some(i) => init[i] = container,
        // First, so the app's own init containers can reach it too.
        None => init.insert(0, container),
    }

    let volumes = sequence_field(pod, "volumes")?;
    volumes.retain(|v| !is_our_volume(v));
    volumes.push(map([
        ("name", s(CONFIG_VOLUME)),
        ("configMap", map([("name", s(&config_map))])),
    ]));
    for secret in &secrets {
        volumes.push(map([
            ("name", s(&volume_name(secret))),
            (
                "secret",
                map([
                    ("secretName", s(secret.as_str())),
                    ("optional", Value::Bool(true)),
                ]),
            ),
        ]));
    }
    Ok(notes)
}

/// kubectl reads a plain `defaultMode: 0644` as YAML 1.1 octal (420); serde_yaml_ng keeps it
/// as the string "0644", which written back would be refused as a string. File modes are
/// integers in every volume source, so such a string can only mean the octal number.
fn octal_file_modes(value: &mut Value) {
    match value {
        Value::Mapping(m) => {
            for (k, v) in m.iter_mut() {
                let is_mode = matches!(k.as_str(), Some("defaultMode" | "mode"));
                if let (true, Value::String(text)) = (is_mode, &*v)
                    && text.len() > 1
                    && text.starts_with('0')
                    && let Ok(n) = u32::from_str_radix(&text[1..], 8)
                {
                    *v = Value::Number(n.into());
                } else {
                    octal_file_modes(v);
                }
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(octal_file_modes),
        _ => {}
    }
}

fn annotated_secrets(metadata: Option<&Mapping>) -> Result<BTreeSet<SecretName>, Fail> {
    let field = format!("metadata.annotations[{SECRETS_ANNOTATION:?}]");
    let Some(value) = metadata
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(SECRETS_ANNOTATION))
    else {
        return Ok(BTreeSet::new());
    };
    let Some(list) = value.as_str() else {
        return Err(fail(
            field,
            "must be a string of Secret names, like \"a,b\"",
        ));
    };
    list.split([',', ' ', '\n', '\t'])
        .filter(|n| !n.is_empty())
        .map(|n| n.parse().map_err(|e: String| fail(&field, e)))
        .collect()
}

/// The mapping at `path` below `m`, which must exist.
fn mapping_at<'m>(m: &'m mut Mapping, path: &[&str]) -> Result<&'m mut Mapping, Fail> {
    let mut here = m;
    for (depth, key) in path.iter().enumerate() {
        let field = path[..=depth].join(".");
        here = match here.get_mut(*key) {
            Some(Value::Mapping(next)) => next,
            Some(_) => return Err(fail(field, "must be a mapping")),
            None => return Err(fail(field, "missing: a workload needs a pod template")),
        };
    }
    Ok(here)
}

/// `m[key]` as a mapping, created when absent or null.
fn ensure_mapping<'m>(
    m: &'m mut Mapping,
    key: &str,
    parent: &str,
) -> Result<&'m mut Mapping, Fail> {
    let slot = m.entry(s(key)).or_insert(Value::Mapping(Mapping::new()));
    if slot.is_null() {
        *slot = Value::Mapping(Mapping::new());
    }
    match slot {
        Value::Mapping(inner) => Ok(inner),
        _ => Err(fail(format!("{parent}.{key}"), "must be a mapping")),
    }
}

/// `pod[key]` as a sequence, created when absent or null.
fn sequence_field<'m>(pod: &'m mut Mapping, key: &str) -> Result<&'m mut Vec<Value>, Fail> {
    let slot = pod.entry(s(key)).or_insert(Value::Sequence(Vec::new()));
    if slot.is_null() {
        *slot = Value::Sequence(Vec::new());
    }
    match slot {
        Value::Sequence(items) => Ok(items),
        _ => Err(fail(format!("spec.template.spec.{key}"), "must be a list")),
    }
}

/// An app container may not be called `streamkeeper` nor declare the sidecar's ports (the pod
/// shares one network namespace, so the sidecar could not bind them).
fn check_app_containers(pod: &Mapping) -> Result<(), Fail> {
    let Some(containers) = pod.get("containers") else {
        return Ok(());
    };
    let Some(containers) = containers.as_sequence() else {
        return Err(fail("spec.template.spec.containers", "must be a list"));
    };
    for (i, c) in containers.iter().enumerate() {
        let field = format!("spec.template.spec.containers[{i}]");
        if c.get("name").and_then(Value::as_str) == Some(CONTAINER_NAME) {
            return Err(fail(
                format!("{field}.name"),
                "an app container is already named streamkeeper; the sidecar is an init container \
                 of that name: remove or rename the app container",
            ));
        }
        let ports = document::sequence(c.get("ports"));
        for (j, p) in ports.iter().enumerate() {
            let port = p.get("containerPort").and_then(Value::as_u64);
            if port == Some(u64::from(ADMIN_PORT)) || port == Some(u64::from(APP_PORT)) {
                return Err(fail(
                    format!("{field}.ports[{j}].containerPort"),
                    format!(
                        "port {} is the sidecar's ({ADMIN_PORT}: admin, {APP_PORT}: app endpoint) in the \
                         pod's shared network; move the app to another port",
                        port.unwrap_or_default()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Secrets the existing sidecar mounts under [`CREDENTIALS_ROOT`].
fn mounted_secrets(container: &Value) -> Vec<SecretName> {
    let prefix = format!("{CREDENTIALS_ROOT}/");
    document::sequence(container.get("volumeMounts"))
        .iter()
        .filter_map(|m| m.get("mountPath").and_then(Value::as_str))
        .filter_map(|p| p.strip_prefix(&prefix))
        .filter_map(|n| n.trim_end_matches('/').parse().ok())
        .collect()
}

fn is_our_volume(v: &Value) -> bool {
    v.get("name")
        .and_then(Value::as_str)
        .is_some_and(|n| n == CONFIG_VOLUME || n.starts_with(CREDENTIALS_VOLUME_PREFIX))
}
