//! The injected container: its settings (image, pull policy, resources, user) and its spec.

use std::{collections::BTreeSet, fmt, str::FromStr};

use serde_yaml_ng::{Mapping, Value};
use sha1::{Digest as _, Sha1};

use super::{
    ADMIN_PORT, ADMIN_PORT_NAME, CONFIG_DIR, CONFIG_VOLUME, CONTAINER_NAME, CREDENTIALS_ROOT,
    CREDENTIALS_VOLUME_PREFIX, DEFAULT_IMAGE, DEFAULT_USER, SIDECAR_PROGRAM, streams::SecretName,
};

/// The sidecar's `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PullPolicy {
    /// Pull on every start.
    #[value(name = "Always")]
    Always,
    /// Pull when the node does not have the image.
    #[value(name = "IfNotPresent")]
    IfNotPresent,
    /// Never pull.
    #[value(name = "Never")]
    Never,
}

impl PullPolicy {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// A Kubernetes resource quantity (`50m`, `0.5`, `64Mi`, `1e3`), checked against the API's
/// grammar so a typo fails here, naming its flag, rather than at `kubectl apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantity(String);

impl Quantity {
    /// The quantity as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its value in base units (cores, bytes), for comparing a limit with its request.
    fn value(&self) -> f64 {
        let s = &self.0;
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '+' | '-')))
            .unwrap_or(s.len());
        let (number, suffix) = s.split_at(split);
        let number: f64 = number.parse().unwrap_or(0.0);
        let scale = match suffix {
            "" => 1.0,
            "n" => 1e-9,
            "u" => 1e-6,
            "m" => 1e-3,
            "k" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            "T" => 1e12,
            "P" => 1e15,
            "E" => 1e18,
            "Ki" => 1024.0,
            "Mi" => 1024f64.powi(2),
            "Gi" => 1024f64.powi(3),
            "Ti" => 1024f64.powi(4),
            "Pi" => 1024f64.powi(5),
            "Ei" => 1024f64.powi(6),
            exponent => exponent
                .get(1..)
                .and_then(|e| e.parse::<i32>().ok())
                .map_or(1.0, |e| 10f64.powi(e)),
        };
        number * scale
    }
}

impl FromStr for Quantity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
        let digits_end = unsigned
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(unsigned.len());
        let (number, suffix) = unsigned.split_at(digits_end);
        let number_ok = {
            let mut parts = number.splitn(2, '.');
            let whole = parts.next().unwrap_or_default();
            let frac = parts.next();
            !number.is_empty()
                && number != "."
                && whole.bytes().all(|b| b.is_ascii_digit())
                && frac.is_none_or(|f| f.bytes().all(|b| b.is_ascii_digit()))
        };
        let suffix_ok = matches!(
            suffix,
            "" | "n"
                | "u"
                | "m"
                | "k"
                | "M"
                | "G"
                | "T"
                | "P"
                | "E"
                | "Ki"
                | "Mi"
                | "Gi"
                | "Ti"
                | "Pi"
                | "Ei"
        ) || suffix
            .strip_prefix(['e', 'E'])
            .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
            .is_some_and(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()));
        if number_ok && suffix_ok && !s.starts_with('-') {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "{s:?} is not a Kubernetes quantity (like 50m, 0.5, 64Mi, 1G)"
            ))
        }
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A resource flag's value: a quantity, or `none` for "leave it unset".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantitySetting(pub Option<Quantity>);

pub(super) fn quantity_setting(s: &str) -> Result<QuantitySetting, String> {
    if s == "none" {
        Ok(QuantitySetting(None))
    } else {
        s.parse().map(|q| QuantitySetting(Some(q)))
    }
}

/// The sidecar's resource requests and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    /// `requests.cpu`.
    pub cpu_request: Option<Quantity>,
    /// `requests.memory`.
    pub memory_request: Option<Quantity>,
    /// `limits.cpu`.
    pub cpu_limit: Option<Quantity>,
    /// `limits.memory`.
    pub memory_limit: Option<Quantity>,
}

impl Default for Resources {
    fn default() -> Self {
        let q = |s: &str| Some(Quantity(s.to_owned()));
        Self {
            cpu_request: q("50m"),
            memory_request: q("64Mi"),
            cpu_limit: None,
            memory_limit: q("256Mi"),
        }
    }
}

impl Resources {
    /// Refuses a limit below its request (the API server would refuse the pod).
    pub(super) fn check(&self) -> Result<(), String> {
        for (what, request, limit) in [
            ("cpu", &self.cpu_request, &self.cpu_limit),
            ("memory", &self.memory_request, &self.memory_limit),
        ] {
            if let (Some(r), Some(l)) = (request, limit)
                && l.value() < r.value()
            {
                return Err(format!("--{what}-limit {l} is below --{what}-request {r}"));
            }
        }
        Ok(())
    }

    fn to_value(&self) -> Value {
        let group = |pairs: [(&str, &Option<Quantity>); 2]| {
            let mut m = Mapping::new();
            for (key, q) in pairs {
                if let Some(q) = q {
                    m.insert(s(key), s(q.as_str()));
                }
            }
            m
        };
        let mut out = Mapping::new();
        let requests = group([("cpu", &self.cpu_request), ("memory", &self.memory_request)]);
        let limits = group([("cpu", &self.cpu_limit), ("memory", &self.memory_limit)]);
        if !requests.is_empty() {
            out.insert(s("requests"), Value::Mapping(requests));
        }
        if !limits.is_empty() {
            out.insert(s("limits"), Value::Mapping(limits));
        }
        Value::Mapping(out)
    }
}

/// Everything about the injected container that the flags decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sidecar {
    /// The image.
    pub image: String,
    /// Its pull policy.
    pub pull_policy: PullPolicy,
    /// Requests and limits.
    pub resources: Resources,
    /// The numeric user it runs as.
    pub run_as_user: u32,
}

impl Default for Sidecar {
    fn default() -> Self {
        Self {
            image: DEFAULT_IMAGE.to_owned(),
            pull_policy: PullPolicy::IfNotPresent,
            resources: Resources::default(),
            run_as_user: DEFAULT_USER,
        }
    }
}

/// A volume name (a DNS label, at most 63 characters) for a Secret's name (a subdomain, up to
/// 253): the name itself when it fits, else a shortened stem and a hash so two Secrets never
/// share a volume.
pub(super) fn volume_name(secret: &SecretName) -> String {
    let direct = format!("{CREDENTIALS_VOLUME_PREFIX}{secret}");
    if direct.len() <= 63 && !secret.as_str().contains('.') {
        return direct;
    }
    let digest = Sha1::digest(secret.as_str().as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let room = 63 - CREDENTIALS_VOLUME_PREFIX.len() - hash.len() - 1;
    let stem: String = secret
        .as_str()
        .replace('.', "-")
        .chars()
        .take(room)
        .collect();
    format!(
        "{CREDENTIALS_VOLUME_PREFIX}{}-{hash}",
        stem.trim_end_matches('-')
    )
}

pub(super) fn s(text: &str) -> Value {
    Value::String(text.to_owned())
}

pub(super) fn map<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Mapping(pairs.into_iter().map(|(k, v)| (s(k), v)).collect())
}

pub(super) fn int(n: impl Into<u64>) -> Value {
    Value::Number(n.into().into())
}

fn probe(path: &str, period: u8, failures: u8) -> Value {
    map([
        (
            "httpGet",
            map([("path", s(path)), ("port", s(ADMIN_PORT_NAME))]),
        ),
        ("periodSeconds", int(period)),
        ("timeoutSeconds", int(2u8)),
        ("failureThreshold", int(failures)),
    ])
}

/// The sidecar container, exactly as the contract in tasks/operator-contract.md describes it.
pub(super) fn sidecar_container(sidecar: &Sidecar, secrets: &BTreeSet<SecretName>) -> Value {
    let mut mounts = vec![map([
        ("name", s(CONFIG_VOLUME)),
        ("mountPath", s(CONFIG_DIR)),
        ("readOnly", Value::Bool(true)),
    ])];
    mounts.extend(secrets.iter().map(|secret| {
        map([
            ("name", s(&volume_name(secret))),
            ("mountPath", s(&format!("{CREDENTIALS_ROOT}/{secret}"))),
            ("readOnly", Value::Bool(true)),
        ])
    }));
    map([
        ("name", s(CONTAINER_NAME)),
        ("image", s(&sidecar.image)),
        ("imagePullPolicy", s(sidecar.pull_policy.as_str())),
        ("command", Value::Sequence(vec![s(SIDECAR_PROGRAM)])),
        (
            "args",
            Value::Sequence(vec![
                s("--config"),
                s(&format!("{CONFIG_DIR}/sidecar.yaml")),
            ]),
        ),
        // A native sidecar: started before the app containers, stopped after them.
        ("restartPolicy", s("Always")),
        (
            "env",
            Value::Sequence(vec![map([
                ("name", s("POD_NAME")),
                (
                    "valueFrom",
                    map([(
                        "fieldRef",
                        map([("apiVersion", s("v1")), ("fieldPath", s("metadata.name"))]),
                    )]),
                ),
            ])]),
        ),
        (
            "ports",
            Value::Sequence(vec![map([
                ("name", s(ADMIN_PORT_NAME)),
                ("containerPort", int(ADMIN_PORT)),
                ("protocol", s("TCP")),
            ])]),
        ),
        // The kubelet starts the app containers once this passes, so the app endpoint is up
        // before the app first connects.
        ("startupProbe", probe("/healthz", 1, 30)),
        ("readinessProbe", probe("/readyz", 5, 3)),
        ("livenessProbe", probe("/healthz", 10, 3)),
        ("resources", sidecar.resources.to_value()),
        (
            "securityContext",
            map([
                ("runAsNonRoot", Value::Bool(true)),
                ("runAsUser", int(sidecar.run_as_user)),
                ("runAsGroup", int(sidecar.run_as_user)),
                ("readOnlyRootFilesystem", Value::Bool(true)),
                ("allowPrivilegeEscalation", Value::Bool(false)),
                (
                    "capabilities",
                    map([("drop", Value::Sequence(vec![s("ALL")]))]),
                ),
                ("seccompProfile", map([("type", s("RuntimeDefault"))])),
            ]),
        ),
        ("volumeMounts", Value::Sequence(mounts)),
        ("terminationMessagePolicy", s("FallbackToLogsOnError")),
    ])
}
