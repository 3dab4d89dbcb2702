//! The `StreamConnection` custom resource (`streamkeeper.dev/v1alpha1`): what teams declare
//! with `kubectl apply`, and the status the controller writes back.
//!
//! The API server enforces the schema and its `x-kubernetes-validations` (CEL) rules, so a bad
//! spec is refused at `kubectl apply` with the field named. [`StreamConnectionSpec::validate`]
//! checks the same rules in Rust for `streamkeeper render`, which runs without an API server,
//! and for objects stored before the CRD had a rule.
//!
//! ```
//! use streamkeeper_api::crd::{self, StreamConnection};
//! let yaml = crd::crd_yaml();
//! assert!(yaml.contains("shortNames:\n    - sconn"));
//! ```

use std::time::Duration;

use k8s_openapi::{
    apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        CustomResourceDefinition, ValidationRule,
    },
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::{CustomResource, CustomResourceExt};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::{
    Tenant,
    config::{HeartbeatSpec, Platform, TokenSpec},
    duration::serde_str,
};

/// The API group.
pub const GROUP: &str = "streamkeeper.dev";
/// The finalizer the controller puts on every StreamConnection: the stream is removed from its
/// ConfigMap and from the store before the object goes.
pub const FINALIZER: &str = "streamkeeper.dev/cleanup";
/// The heartbeat range a StreamConnection may ask for (the sidecar file accepts any positive
/// value, for tests and demos).
pub const HEARTBEAT_RANGE: std::ops::RangeInclusive<Duration> =
    crate::config::RECOMMENDED_HEARTBEAT;
/// The highest priority.
pub const MAX_PRIORITY: u16 = 1000;
/// Topics on one stream. A Genesys channel takes at most 1,000, so the sidecar shards them over
/// channels; ten channels leave half of a client's 20 to its other streams and to rotation.
pub const MAX_TOPICS: usize = 10_000;

pub use crate::config::GENESYS_REGIONS;

/// A stream the operator admits under its tenant's pool and renders into its workload's
/// sidecar config.
// Clippy reads the repeated `printcolumn(type_ = ...)` of the kube derive as duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "streamkeeper.dev",
    version = "v1alpha1",
    kind = "StreamConnection",
    plural = "streamconnections",
    shortname = "sconn",
    namespaced,
    status = "StreamConnectionStatus",
    derive = "PartialEq",
    doc = "A contact-center real-time stream run by the streamkeeper sidecar of a workload",
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenant"),
    printcolumn(name = "Platform", type_ = "string", json_path = ".spec.platform"),
    printcolumn(name = "Priority", type_ = "integer", json_path = ".spec.priority"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Owner", type_ = "string", json_path = ".status.owner"),
    printcolumn(name = "Last-Pong", type_ = "date", json_path = ".status.lastPong"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.region) != has(self.endpoints)",
        "message": "set exactly one of region or endpoints"
    },
    {
        "rule": "!has(self.region) || self.platform == 'genesys'",
        "message": "region is only for platform genesys; other platforms take endpoints",
        "fieldPath": ".region"
    },
    {
        "rule": "!has(self.endpoints) || self.platform != 'genesys' || (has(self.endpoints.api) && has(self.endpoints.login))",
        "message": "platform genesys needs endpoints.api and endpoints.login",
        "fieldPath": ".endpoints"
    },
    {
        "rule": "!has(self.endpoints) || self.platform != 'generic' || (has(self.endpoints.api) && has(self.endpoints.login) && has(self.endpoints.stream))",
        "message": "platform generic needs endpoints.api, endpoints.login and endpoints.stream",
        "fieldPath": ".endpoints"
    },
    {
        "rule": "!has(self.endpoints) || !(self.platform in ['cxone-dfo', 'cxone-aah']) || (has(self.endpoints.login) && has(self.endpoints.stream))",
        "message": "platforms cxone-dfo and cxone-aah need endpoints.login and endpoints.stream",
        "fieldPath": ".endpoints"
    },
    {
        "rule": "!(self.platform in ['genesys', 'cxone-aah']) || (has(self.topics) && size(self.topics) > 0)",
        "message": "platforms genesys and cxone-aah need at least one topic (a contact id on cxone-aah)",
        "fieldPath": ".topics"
    },
    // A heartbeat field left out is the platform's own (HeartbeatSpec::for_platform; a test
    // checks these figures against it): the one given must still fit it.
    {
        "rule": "!has(self.heartbeat) || !has(self.heartbeat.interval) || has(self.heartbeat.timeout) || duration(self.heartbeat.interval) < duration(self.platform == 'cxone-dfo' ? '45s' : self.platform == 'cxone-aah' ? '25s' : '35s')",
        "message": "must be longer than heartbeat.interval: left out, it is the platform's (35s; cxone-dfo 45s, cxone-aah 25s)",
        "fieldPath": ".heartbeat.timeout"
    },
    {
        "rule": "!has(self.heartbeat) || !has(self.heartbeat.timeout) || has(self.heartbeat.interval) || duration(self.heartbeat.timeout) > duration(self.platform == 'cxone-dfo' ? '30s' : self.platform == 'cxone-aah' ? '10s' : '15s')",
        "message": "must be longer than heartbeat.interval: left out, it is the platform's (15s; cxone-dfo 30s, cxone-aah 10s)",
        "fieldPath": ".heartbeat.timeout"
    }
]))]
pub struct StreamConnectionSpec {
    /// The platform dialect: genesys, cxone-dfo, cxone-aah or generic.
    pub platform: Platform,
    /// The tenant whose pool the stream counts against (1 to 63 of a-z, A-Z, 0-9, '-', '_',
    /// '.').
    pub tenant: Tenant,
    /// 0 to 1000, higher wins a full pool; equal priorities go by age (older first).
    #[serde(default = "default_priority")]
    #[schemars(schema_with = "priority_schema")]
    pub priority: u16,
    /// The Deployment or StatefulSet (same namespace) whose pods run the stream.
    pub workload_ref: WorkloadRef,
    /// A Genesys Cloud region (genesys only), e.g. mypurecloud.com; or set endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "region_schema")]
    pub region: Option<String>,
    /// Explicit platform endpoints; or set region (genesys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,
    /// The Secret (same namespace) with the credentials: clientId and clientSecret (genesys,
    /// generic) or accessKeyId and accessKeySecret (cxone-*). Mounted into the sidecar; the
    /// controller never reads it.
    pub credentials_secret_ref: SecretRef,
    /// Topics to subscribe (genesys topics, cxone-aah contact ids): at least one on those two
    /// platforms, at most 10,000 (Genesys takes 1,000 per channel; the sidecar shards).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10000), inner(length(min = 1, max = 200)))]
    pub topics: Vec<String>,
    /// Ping interval and dead timeout: each 5s to 45s, timeout longer than interval; the
    /// platform's own where left out.
    #[serde(default)]
    pub heartbeat: Heartbeat,
    /// Token refresh schedule; the platform's own where left out.
    #[serde(default)]
    pub token: TokenRefresh,
    /// A paused stream keeps its object but takes no pool slot and is not run.
    #[serde(default)]
    pub paused: bool,
}

fn default_priority() -> u16 {
    500
}

fn priority_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "integer",
        "minimum": 0,
        "maximum": MAX_PRIORITY,
        "default": 500,
    })
}

fn count_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "integer",
        "minimum": 0,
    })
}

fn region_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "enum": GENESYS_REGIONS,
    })
}

fn duration_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": "^[0-9]{1,6}(\\.[0-9]{1,3})?(ms|s|m|h)$",
        "maxLength": 16,
    })
}

/// The workload whose pods run the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    /// Deployment or StatefulSet.
    pub kind: WorkloadKind,
    /// The workload's name (a DNS label: the ConfigMap is `streamkeeper-{name}`).
    #[schemars(
        length(min = 1, max = 50),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
}

/// Kinds of workload the sidecar is injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum WorkloadKind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
}

/// Platform endpoints given explicitly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// REST API base, e.g. https://api.mypurecloud.com.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s/?#]+[^\s]*$"))]
    pub api: Option<String>,
    /// OAuth login base, e.g. https://login.mypurecloud.com.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s/?#]+[^\s]*$"))]
    pub login: Option<String>,
    /// The socket URL (ws:// or wss://) where it is not discovered (generic, cxone-*).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^wss?://[^\s/?#]+[^\s]*$"))]
    pub stream: Option<String>,
}

/// A Secret in the StreamConnection's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecretRef {
    /// The Secret's name.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
}

/// Heartbeat timing; either left out is the platform's own
/// ([`crate::config::HeartbeatSpec::for_platform`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.interval) || !has(self.timeout) || duration(self.timeout) > duration(self.interval)",
    "message": "must be longer than heartbeat.interval (otherwise every connection is reaped between two pings)",
    "fieldPath": ".timeout"
}]))]
pub struct Heartbeat {
    /// Ping every this long, 5s to 45s (default: the platform's, 15s; cxone-dfo 30s,
    /// cxone-aah 10s).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "serde_str::option"
    )]
    #[schemars(schema_with = "duration_schema", extend("x-kubernetes-validations" = [{
        "rule": "duration(self) >= duration('5s') && duration(self) <= duration('45s')",
        "message": "must be between 5s and 45s"
    }]))]
    pub interval: Option<Duration>,
    /// Dead when nothing arrived for this long, 5s to 45s and longer than interval (default:
    /// the platform's, 35s; cxone-dfo 45s, cxone-aah 25s).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "serde_str::option"
    )]
    #[schemars(schema_with = "duration_schema", extend("x-kubernetes-validations" = [{
        "rule": "duration(self) >= duration('5s') && duration(self) <= duration('45s')",
        "message": "must be between 5s and 45s"
    }]))]
    pub timeout: Option<Duration>,
}

impl Heartbeat {
    /// The timing the sidecar runs: what is set, the platform's own for the rest.
    pub fn resolve(&self, platform: Platform) -> HeartbeatSpec {
        HeartbeatSpec::resolve(platform, self.interval, self.timeout)
    }
}

/// Token refresh timing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenRefresh {
    /// Refresh this long before the token expires, 1s to 24h (default: the platform's, 120s;
    /// cxone-* 600s).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "serde_str::option"
    )]
    #[schemars(schema_with = "duration_schema", extend("x-kubernetes-validations" = [{
        "rule": "duration(self) >= duration('1s') && duration(self) <= duration('24h')",
        "message": "must be between 1s and 24h"
    }]))]
    pub refresh_lead: Option<Duration>,
}

impl TokenRefresh {
    /// The schedule the sidecar runs: what is set, the platform's own for the rest.
    pub fn resolve(&self, platform: Platform) -> TokenSpec {
        TokenSpec::resolve(platform, self.refresh_lead, None)
    }
}

/// Where a stream is, as the controller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// Not decided yet (just created, or the controller has not run).
    Pending,
    /// Waiting for a slot in its tenant's pool.
    Queued,
    /// Admitted and streaming (or admitted and not yet reported, without a store).
    Active,
    /// Streaming, but a pong is late or the round trip is far above its average.
    Degraded,
    /// Admitted, and its last connection was declared dead; reconnecting.
    Dead,
    /// Its slot was taken by a higher-priority stream of its tenant.
    Preempted,
    /// `spec.paused` is true.
    Paused,
}

impl Phase {
    /// The phase as written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Queued => "Queued",
            Self::Active => "Active",
            Self::Degraded => "Degraded",
            Self::Dead => "Dead",
            Self::Preempted => "Preempted",
            Self::Paused => "Paused",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the controller reports about a stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamConnectionStatus {
    /// Pending, Queued, Active, Degraded, Dead, Preempted or Paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The pod that runs the stream (from the store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// When the owner last heard from the platform (from the store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_pong: Option<Time>,
    /// Reconnects since the controller started watching (DEAD transitions heard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "count_schema")]
    pub reconnects: Option<u32>,
    /// Why the last connection was dropped (pong_timeout, tcp_error, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drop_reason: Option<String>,
    /// A human-readable note on the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready and Degraded, per Kubernetes conventions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A spec field that is wrong, named as the API server names it (`spec.heartbeat.timeout`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The field path, like `spec.heartbeat.timeout`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn bad(field: &str, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.to_owned(),
        message: message.into(),
    }
}

impl StreamConnectionSpec {
    /// The rules the CRD's schema and CEL rules enforce, for objects that never passed an API
    /// server (`streamkeeper render`) or were stored under an older CRD.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.priority > MAX_PRIORITY {
            return Err(bad("spec.priority", "must be 0..1000"));
        }
        let name = &self.workload_ref.name;
        if !is_dns_label(name) || name.len() > 50 {
            return Err(bad(
                "spec.workloadRef.name",
                "must be a DNS label of at most 50 characters (the ConfigMap is streamkeeper-{name})",
            ));
        }
        if self.credentials_secret_ref.name.is_empty() {
            return Err(bad("spec.credentialsSecretRef.name", "is required"));
        }
        if self.topics.len() > MAX_TOPICS {
            return Err(bad("spec.topics", "at most 10000 topics"));
        }
        if self.topics.is_empty() && matches!(self.platform, Platform::Genesys | Platform::CxoneAah)
        {
            return Err(bad(
                "spec.topics",
                "platforms genesys and cxone-aah need at least one topic (a contact id on cxone-aah)",
            ));
        }
        match (&self.region, &self.endpoints) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(bad("spec", "set exactly one of region or endpoints"));
            }
            (Some(region), None) => {
                if self.platform != Platform::Genesys {
                    return Err(bad(
                        "spec.region",
                        "region is only for platform genesys; other platforms take endpoints",
                    ));
                }
                if !GENESYS_REGIONS.contains(&region.as_str()) {
                    return Err(bad(
                        "spec.region",
                        format!(
                            "unknown Genesys region {region:?}: one of {}",
                            GENESYS_REGIONS.join(", ")
                        ),
                    ));
                }
            }
            (None, Some(ep)) => {
                let needs: &[(&str, bool)] = match self.platform {
                    Platform::Genesys => {
                        &[("api", ep.api.is_some()), ("login", ep.login.is_some())]
                    }
                    Platform::Generic => &[
                        ("api", ep.api.is_some()),
                        ("login", ep.login.is_some()),
                        ("stream", ep.stream.is_some()),
                    ],
                    Platform::CxoneDfo | Platform::CxoneAah => &[
                        ("login", ep.login.is_some()),
                        ("stream", ep.stream.is_some()),
                    ],
                };
                if needs.iter().any(|(_, present)| !present) {
                    let names: Vec<String> = needs
                        .iter()
                        .map(|(n, _)| format!("endpoints.{n}"))
                        .collect();
                    return Err(bad(
                        "spec.endpoints",
                        format!(
                            "platform {} needs {}",
                            self.platform.as_str(),
                            names.join(", ")
                        ),
                    ));
                }
                for (field, url, schemes) in [
                    ("spec.endpoints.api", &ep.api, ["http", "https"]),
                    ("spec.endpoints.login", &ep.login, ["http", "https"]),
                    ("spec.endpoints.stream", &ep.stream, ["ws", "wss"]),
                ] {
                    if let Some(url) = url {
                        match url::Url::parse(url) {
                            Ok(u) if schemes.contains(&u.scheme()) && u.host().is_some() => {}
                            _ => {
                                return Err(bad(
                                    field,
                                    format!("must be a {}:// or {}:// URL", schemes[0], schemes[1]),
                                ));
                            }
                        }
                    }
                }
            }
        }
        let hb = self.heartbeat.resolve(self.platform);
        for (field, d) in [
            ("spec.heartbeat.interval", hb.interval),
            ("spec.heartbeat.timeout", hb.timeout),
        ] {
            if !HEARTBEAT_RANGE.contains(&d) {
                return Err(bad(field, "must be between 5s and 45s"));
            }
        }
        if hb.timeout <= hb.interval {
            return Err(bad(
                "spec.heartbeat.timeout",
                "must be longer than heartbeat.interval (otherwise every connection is reaped between two pings)",
            ));
        }
        let lead = self.token.resolve(self.platform).refresh_lead;
        if lead < Duration::from_secs(1) || lead > Duration::from_secs(86_400) {
            return Err(bad("spec.token.refreshLead", "must be between 1s and 24h"));
        }
        Ok(())
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The CRD as installed: the derived one plus a rule on `metadata.name`, which is the name half
/// of the stream id and so must be a DNS label (Kubernetes names may have dots).
pub fn crd() -> CustomResourceDefinition {
    let mut crd = StreamConnection::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            schema
                .x_kubernetes_validations
                .get_or_insert_with(Vec::new)
                .push(ValidationRule {
                    rule: "size(self.metadata.name) <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')".into(),
                    message: Some(
                        "metadata.name must be a DNS label (a-z, 0-9, '-', at most 63 characters): it is the stream id's name"
                            .into(),
                    ),
                    ..ValidationRule::default()
                });
        }
    }
    crd
}

/// [`crd`] as the YAML `streamkeeper crdgen` prints and `crds/` holds.
pub fn crd_yaml() -> String {
    // A CRD built from our own types always serializes.
    serde_yaml_ng::to_string(&crd()).unwrap_or_else(|e| format!("# cannot serialize: {e}\n"))
}

/// The file name of the CRD under `crds/` and `charts/streamkeeper/crds/`.
pub const CRD_FILE: &str = "streamconnections.streamkeeper.dev.yaml";

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> StreamConnectionSpec {
        serde_yaml_ng::from_str(
            "platform: genesys\ntenant: acme\nworkloadRef: {kind: Deployment, name: wem}\n\
             region: mypurecloud.com\ncredentialsSecretRef: {name: acme-oauth}\n\
             topics: [v2.routing.queues.q1.conversations]\n",
        )
        .expect("spec")
    }

    #[test]
    fn defaults_follow_the_design() {
        let s = spec();
        assert_eq!(s.priority, 500);
        assert_eq!(s.heartbeat, Heartbeat::default());
        assert_eq!(
            s.heartbeat.resolve(s.platform).timeout,
            Duration::from_secs(35)
        );
        assert_eq!(
            s.token.resolve(s.platform).refresh_lead,
            Duration::from_secs(120)
        );
        assert!(!s.paused);
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn left_out_timings_are_the_platforms_own_and_checked_as_resolved() {
        let mut s = spec();
        s.platform = Platform::CxoneAah;
        let hb = s.heartbeat.resolve(s.platform);
        assert_eq!(
            (hb.interval, hb.timeout),
            (Duration::from_secs(10), Duration::from_secs(25))
        );
        assert_eq!(
            s.token.resolve(s.platform).refresh_lead,
            Duration::from_secs(600)
        );
        // An interval past Genesys's own 35 s timeout, the timeout left out: refused.
        let mut s = spec();
        s.heartbeat.interval = Some(Duration::from_secs(40));
        assert_eq!(
            s.validate().expect_err("bad").field,
            "spec.heartbeat.timeout"
        );
    }

    #[test]
    fn the_schemas_one_sided_heartbeat_rules_use_the_platforms_own_timings() {
        let crd = serde_json::to_string(&StreamConnection::crd()).expect("json");
        let own = |p| HeartbeatSpec::for_platform(p);
        let secs = |d: Duration| format!("'{}s'", d.as_secs());
        for (platform, name) in [
            (Platform::CxoneDfo, "cxone-dfo"),
            (Platform::CxoneAah, "cxone-aah"),
        ] {
            let hb = own(platform);
            for d in [hb.interval, hb.timeout] {
                let pick = format!("self.platform == '{name}' ? {}", secs(d));
                assert!(crd.contains(&pick), "the rule picks {pick}");
            }
        }
        let generic = own(Platform::Generic);
        assert_eq!(generic, own(Platform::Genesys), "one fallback in the rule");
        for d in [generic.interval, generic.timeout] {
            assert!(
                crd.contains(&format!(": {})", secs(d))),
                "the fallback {d:?}"
            );
        }
    }

    #[test]
    fn validate_names_the_field() {
        let mut s = spec();
        s.heartbeat.interval = Some(Duration::from_secs(40));
        s.heartbeat.timeout = Some(Duration::from_secs(30));
        assert_eq!(
            s.validate().expect_err("bad").field,
            "spec.heartbeat.timeout"
        );
        let mut s = spec();
        s.heartbeat.interval = Some(Duration::from_secs(2));
        assert_eq!(
            s.validate().expect_err("bad").field,
            "spec.heartbeat.interval"
        );
        let mut s = spec();
        s.region = Some("example.com".into());
        assert_eq!(s.validate().expect_err("bad").field, "spec.region");
        let mut s = spec();
        s.endpoints = Some(Endpoints {
            api: Some("https://api.example.com".into()),
            login: None,
            stream: None,
        });
        assert_eq!(s.validate().expect_err("bad").field, "spec");
        s.region = None;
        assert_eq!(s.validate().expect_err("bad").field, "spec.endpoints");
        let mut s = spec();
        s.topics.clear();
        assert_eq!(s.validate().expect_err("bad").field, "spec.topics");
        let mut s = spec();
        s.priority = 1001;
        assert_eq!(s.validate().expect_err("bad").field, "spec.priority");
    }

    #[test]
    fn crd_has_the_contract_names_and_rules() {
        let crd = crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("streamconnections.streamkeeper.dev")
        );
        assert_eq!(crd.spec.names.short_names, Some(vec!["sconn".to_owned()]));
        let v = &crd.spec.versions[0];
        let cols: Vec<&str> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            cols,
            [
                "Tenant",
                "Platform",
                "Priority",
                "Phase",
                "Owner",
                "Last-Pong",
                "Age"
            ]
        );
        let yaml = crd_yaml();
        for rule in [
            "duration(self.timeout) > duration(self.interval)",
            "has(self.region) != has(self.endpoints)",
            "self.metadata.name.matches",
        ] {
            assert!(yaml.contains(rule), "missing rule {rule}");
        }
        assert!(yaml.contains("maximum: 1000"));
    }
}
