//! What inject learns from StreamConnection YAML: which workload each stream belongs to and the
//! Secret that holds its credentials.

use std::{fmt, str::FromStr};

use serde_yaml_ng::Value;

use streamkeeper_api::{ids::is_dns_label, kube_yaml};

use super::document::{self, Fail, InjectError, fail};

/// The workload kinds a StreamConnection's `workloadRef` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WorkloadKind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
}

impl WorkloadKind {
    pub(super) fn parse(kind: &str) -> Option<Self> {
        match kind {
            "Deployment" => Some(Self::Deployment),
            "StatefulSet" => Some(Self::StatefulSet),
            _ => None,
        }
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::StatefulSet => "StatefulSet",
        }
    }
}

/// A Secret's name: a DNS-1123 subdomain (what the API server accepts).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SecretName(String);

impl FromStr for SecretName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if is_dns_subdomain(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "{s:?} is not a Secret name: up to 253 characters of a-z, 0-9, '-' and '.', \
                 starting and ending with a letter or digit"
            ))
        }
    }
}

impl SecretName {
    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters (Secret and workload names).
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// What inject needs of one StreamConnection: whose pod it belongs in and its Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRef {
    /// `metadata.namespace`; absent means the `--namespace` default.
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
    /// `spec.workloadRef.kind`.
    pub workload_kind: WorkloadKind,
    /// `spec.workloadRef.name`.
    pub workload_name: String,
    /// `spec.credentialsSecretRef.name`.
    pub secret: SecretName,
}

/// Reads the StreamConnections in one YAML text (other kinds are skipped).
pub fn parse_streams(source: &str, text: &str) -> Result<Vec<StreamRef>, InjectError> {
    let mut out = Vec::new();
    for parsed in document::parse_all(source, text)? {
        for (prefix, item) in kube_yaml::objects(&parsed.value) {
            if document::kind_of(item) != Some("StreamConnection") {
                continue;
            }
            let namespace = document::metadata(item, "namespace").unwrap_or("-");
            let what = document::describe(item, "StreamConnection", namespace);
            let stream =
                stream_ref(item).map_err(|f| parsed.error(Some(&what), f.under(&prefix)))?;
            out.push(stream);
        }
    }
    Ok(out)
}

fn stream_ref(item: &Value) -> Result<StreamRef, Fail> {
    let text = |path: &[&str]| -> Result<String, Fail> {
        let mut here = item;
        for (depth, key) in path.iter().enumerate() {
            here = here
                .get(*key)
                .ok_or_else(|| fail(path[..=depth].join("."), "missing"))?;
        }
        here.as_str()
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| fail(path.join("."), "must be a non-empty string"))
    };
    let namespace = match item.get("metadata").and_then(|m| m.get("namespace")) {
        None => None,
        Some(_) => Some(text(&["metadata", "namespace"])?),
    };
    let kind = text(&["spec", "workloadRef", "kind"])?;
    let workload_kind = WorkloadKind::parse(&kind).ok_or_else(|| {
        fail(
            "spec.workloadRef.kind",
            format!("{kind:?}: must be Deployment or StatefulSet"),
        )
    })?;
    let secret = text(&["spec", "credentialsSecretRef", "name"])?;
    Ok(StreamRef {
        namespace,
        name: text(&["metadata", "name"])?,
        workload_kind,
        workload_name: text(&["spec", "workloadRef", "name"])?,
        secret: secret
            .parse()
            .map_err(|e: String| fail("spec.credentialsSecretRef.name", e))?,
    })
}
