//! StreamConnections and admission decisions in, one sidecar config per workload out: what the
//! controller applies as ConfigMap `streamkeeper-{workload}` (key `sidecar.yaml`) and what
//! `streamkeeper render` prints offline. Pure: the same inputs give the same bytes, so an
//! unchanged config is never re-applied.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{ResourceExt, api::ObjectMeta};
use streamkeeper_api::{
    Endpoint, SidecarConfig, StreamId, StreamSpec,
    config::{self, Credentials},
    crd::{SpecError, StreamConnection},
    kube_yaml,
};

use crate::admission::{Candidate, Decision, Limits};

/// The ConfigMap key that holds the sidecar config.
pub const CONFIG_KEY: &str = "sidecar.yaml";
/// The label every ConfigMap the controller writes carries (`app.kubernetes.io/managed-by`).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "streamkeeper");
/// The label naming the workload a ConfigMap belongs to.
pub const WORKLOAD_LABEL: &str = "streamkeeper.dev/workload";
/// Where the injected sidecar mounts each stream's Secret: `{CREDENTIALS_ROOT}/{secretName}`.
pub const CREDENTIALS_ROOT: &str = "/var/run/streamkeeper/credentials";

/// A workload: the pods that share one rendered config.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadKey {
    /// Its namespace (the namespace of its StreamConnections).
    pub namespace: String,
    /// `workloadRef.name`.
    pub name: String,
}

impl WorkloadKey {
    /// The workload a StreamConnection names.
    pub fn of(sc: &StreamConnection) -> Self {
        Self {
            namespace: sc.namespace().unwrap_or_else(|| "default".into()),
            name: sc.spec.workload_ref.name.clone(),
        }
    }

    /// `streamkeeper-{name}`.
    pub fn config_map_name(&self) -> String {
        format!("streamkeeper-{}", self.name)
    }
}

impl std::fmt::Display for WorkloadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What the rendered configs share.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RenderOptions {
    /// The Redis URL the sidecars use (`--sidecar-redis`, default the controller's `--redis`);
    /// `None` renders no `redis:` (the in-process store: one pod only).
    pub redis: Option<String>,
    /// Pool limits, rendered as `tenantLimits` for the tenants of each config.
    pub limits: Limits,
}

/// A StreamConnection that cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// Its name is not a valid stream id.
    #[error("{0}")]
    Id(#[from] streamkeeper_api::ids::IdError),
    /// Its spec breaks a rule of the CRD.
    #[error("{0}")]
    Spec(#[from] SpecError),
}

/// The stream id of a StreamConnection: `{namespace}/{name}`.
pub fn stream_id(sc: &StreamConnection) -> Result<StreamId, RenderError> {
    let ns = sc.namespace().unwrap_or_else(|| "default".into());
    Ok(StreamId::new(&ns, &sc.name_any())?)
}

/// How admission sees a StreamConnection; `fallback_created` orders objects that have no
/// `creationTimestamp` (offline input, in file order).
pub fn candidate(sc: &StreamConnection, fallback_created: i64) -> Result<Candidate, RenderError> {
    sc.spec.validate()?;
    Ok(Candidate {
        id: stream_id(sc)?,
        tenant: sc.spec.tenant.clone(),
        priority: sc.spec.priority,
        created: sc
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(fallback_created),
        paused: sc.spec.paused,
    })
}

fn url(s: &str, field: &str) -> Result<Endpoint, RenderError> {
    Endpoint::parse(s).map_err(|e| {
        RenderError::Spec(SpecError {
            field: field.into(),
            message: format!("not a URL: {e}"),
        })
    })
}

/// The sidecar's view of one StreamConnection.
pub fn stream_spec(sc: &StreamConnection) -> Result<StreamSpec, RenderError> {
    sc.spec.validate()?;
    let spec = &sc.spec;
    let endpoints = match (&spec.region, &spec.endpoints) {
        (Some(region), _) => config::Endpoints {
            region: None,
            api: Some(url(&format!("https://api.{region}"), "spec.region")?),
            login: Some(url(&format!("https://login.{region}"), "spec.region")?),
            stream: None,
        },
        (None, Some(ep)) => config::Endpoints {
            region: None,
            api: ep
                .api
                .as_deref()
                .map(|u| url(u, "spec.endpoints.api"))
                .transpose()?,
            login: ep
                .login
                .as_deref()
                .map(|u| url(u, "spec.endpoints.login"))
                .transpose()?,
            stream: ep
                .stream
                .as_deref()
                .map(|u| url(u, "spec.endpoints.stream"))
                .transpose()?,
        },
        // validate() refused this already.
        (None, None) => config::Endpoints::default(),
    };
    let secret = &spec.credentials_secret_ref.name;
    Ok(StreamSpec {
        id: stream_id(sc)?,
        tenant: spec.tenant.clone(),
        platform: spec.platform,
        priority: spec.priority,
        endpoints: endpoints.into(),
        credentials: Credentials {
            dir: Some(std::path::PathBuf::from(format!("{CREDENTIALS_ROOT}/{secret}")).into()),
            secret: None,
        },
        topics: spec.topics.clone(),
        heartbeat: spec.heartbeat.resolve(spec.platform),
        token: spec.token.resolve(spec.platform),
        reconnect: config::ReconnectSpec::default(),
        limits: config::LimitsSpec::default(),
        tls: None,
    })
}

/// The config of one workload: its admitted streams (in id order), the Redis URL, and the
/// limits of their tenants. `streams` are that workload's StreamConnections; those without an
/// `Admitted` decision, or that cannot be rendered, are left out.
pub fn workload_config<'a>(
    streams: impl IntoIterator<Item = &'a StreamConnection>,
    decisions: &HashMap<StreamId, Decision>,
    opts: &RenderOptions,
) -> SidecarConfig {
    let mut specs: Vec<StreamSpec> = streams
        .into_iter()
        .filter_map(|sc| {
            let id = stream_id(sc).ok()?;
            decisions.get(&id).filter(|d| d.admitted())?;
            stream_spec(sc).ok()
        })
        .collect();
    specs.sort_by(|a, b| a.id.cmp(&b.id));
    specs.dedup_by(|a, b| a.id == b.id);
    let tenant_limits = specs
        .iter()
        .map(|s| (s.tenant.clone(), opts.limits.of(&s.tenant).max(1)))
        .collect();
    SidecarConfig {
        redis: opts.redis.as_deref().map(config::RedisUrl::new),
        tenant_limits,
        streams: specs,
        ..SidecarConfig::default()
    }
}

/// Every workload named by `streams`, with its config (a workload whose streams all wait gets
/// a config with no streams, so its sidecars stop what they ran).
pub fn configs(
    streams: &[StreamConnection],
    decisions: &HashMap<StreamId, Decision>,
    opts: &RenderOptions,
) -> BTreeMap<WorkloadKey, SidecarConfig> {
    let mut by_workload: BTreeMap<WorkloadKey, Vec<&StreamConnection>> = BTreeMap::new();
    for sc in streams {
        by_workload.entry(WorkloadKey::of(sc)).or_default().push(sc);
    }
    by_workload
        .into_iter()
        .map(|(key, scs)| {
            let cfg = workload_config(scs, decisions, opts);
            (key, cfg)
        })
        .collect()
}

/// The config as the sidecar reads it (written as every YAML streamkeeper writes: readable
/// alike by YAML 1.1 and 1.2 parsers, so `kubectl get -o yaml` and the sidecar agree).
pub fn sidecar_yaml(config: &SidecarConfig) -> String {
    // Our own config type always serializes, and has no YAML tags.
    kube_yaml::to_yaml(config).unwrap_or_else(|e| format!("# cannot serialize: {e}\n"))
}

/// The ConfigMap the controller applies for a workload.
pub fn config_map(key: &WorkloadKey, config: &SidecarConfig) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(key.config_map_name()),
            namespace: Some(key.namespace.clone()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
                (WORKLOAD_LABEL.to_owned(), key.name.clone()),
            ])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            CONFIG_KEY.to_owned(),
            sidecar_yaml(config),
        )])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission;

    fn sc(name: &str, yaml: &str) -> StreamConnection {
        let spec = serde_yaml_ng::from_str(yaml).expect("spec");
        let mut sc = StreamConnection::new(name, spec);
        sc.metadata.namespace = Some("cc".into());
        sc
    }

    const GENESYS: &str = "platform: genesys\ntenant: acme\npriority: 900\n\
        workloadRef: {kind: Deployment, name: wem}\nregion: mypurecloud.ie\n\
        credentialsSecretRef: {name: acme-oauth}\ntopics: [v2.users.x.presence]\n";
    const GENERIC: &str = "platform: generic\ntenant: acme\n\
        workloadRef: {kind: Deployment, name: wem}\n\
        endpoints: {api: 'https://gw.example.com', login: 'https://gw.example.com', stream: 'wss://gw.example.com/streams/q'}\n\
        credentialsSecretRef: {name: gw}\nheartbeat: {interval: 5s, timeout: 12s}\n";

    #[test]
    fn region_becomes_the_api_and_login_hosts() {
        let s = stream_spec(&sc("q", GENESYS)).expect("renders");
        assert_eq!(s.id.as_str(), "cc/q");
        assert_eq!(
            s.endpoints.api.clone().map(String::from).as_deref(),
            Some("https://api.mypurecloud.ie/")
        );
        assert_eq!(
            s.endpoints.login.clone().map(String::from).as_deref(),
            Some("https://login.mypurecloud.ie/")
        );
        assert_eq!(
            s.credentials.dir.as_deref(),
            Some(std::path::Path::new(
                "/var/run/streamkeeper/credentials/acme-oauth"
            ))
        );
    }

    #[test]
    fn only_admitted_streams_are_rendered_and_the_sidecar_accepts_the_file() {
        let streams = vec![sc("a", GENESYS), sc("b", GENERIC), sc("c", GENERIC)];
        let candidates: Vec<_> = streams
            .iter()
            .enumerate()
            .map(|(i, s)| candidate(s, i as i64).expect("valid"))
            .collect();
        let mut limits = Limits::default();
        limits.tenants.insert("acme".parse().expect("tenant"), 2);
        let decisions = admission::admit(&candidates, &limits, &HashMap::new());
        let opts = RenderOptions {
            redis: Some("redis://redis:6379".into()),
            limits,
        };
        let all = configs(&streams, &decisions, &opts);
        let cfg = &all[&WorkloadKey {
            namespace: "cc".into(),
            name: "wem".into(),
        }];
        let ids: Vec<&str> = cfg.streams.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["cc/a", "cc/b"]);
        let yaml = sidecar_yaml(cfg);
        let loaded = SidecarConfig::from_yaml(&yaml).expect("the sidecar reads what render writes");
        assert_eq!(&loaded.config, cfg);
        assert!(yaml.contains("acme: 2"), "{yaml}");
        assert!(!yaml.contains("pod:"));
        // Same input, same bytes.
        assert_eq!(
            yaml,
            sidecar_yaml(&configs(&streams, &decisions, &opts)[&WorkloadKey::of(&streams[0])])
        );
    }
}
