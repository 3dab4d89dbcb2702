//! The sidecar config file: what the controller renders and what people may write by hand.
//!
//! Parsing goes through [`SidecarConfig::from_yaml`], which names the offending field in every
//! error (`streams[1].heartbeat.timeout: ...`) and returns warnings for values that work but are
//! outside the recommended range.

use std::{
    collections::{BTreeMap, HashSet},
    hash::Hash,
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use url::Url;

use crate::{Endpoint, PodName, StreamId, Tenant, duration::serde_str};

/// The recommended heartbeat range: below it pings thrash CPU and platform rate limits, above
/// it there is no recovery window before platform idle limits (the seed guide's traps).
pub const RECOMMENDED_HEARTBEAT: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(5)..=Duration::from_secs(45);

/// A config the sidecar cannot run, with the field that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// Path of the field, like `streams[0].heartbeat.timeout`; empty for the whole document.
    pub field: String,
    /// What is wrong and what would be right.
    pub message: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The whole sidecar config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarConfig {
    /// This pod's name; default `$POD_NAME`, else the hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodName>,
    /// The app endpoint (WebSocket).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The admin endpoint: `/metrics`, `/healthz`, `/readyz`, `/status`.
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    /// Redis URL; absent means the in-process store (one pod only). Its `Debug` hides the
    /// password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisUrl>,
    /// Per-tenant caps on streams connected at once across every pod (enforced atomically in
    /// the store); tenants not listed get [`DEFAULT_TENANT_LIMIT`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tenant_limits: BTreeMap<Tenant, u32>,
    /// How long acked ids may wait before their checkpoints go to the store, in one batch per
    /// tenant (default 1 s). A SIGTERM flushes everything; after a SIGKILL the next owner
    /// delivers again at most the events acked within this window.
    #[serde(with = "serde_str", default = "default_checkpoint_window")]
    pub checkpoint_window: Duration,
    /// App connections served at once (default 1024); more are refused with HTTP 503.
    #[serde(default = "default_max_app_connections")]
    pub max_app_connections: usize,
    /// The streams this pod may run.
    #[serde(default)]
    pub streams: Vec<StreamSpec>,
}

/// A Redis URL (`redis://[user:password@]host:port/db`, `rediss://`, `redis+cluster://...`).
/// `Debug` shows it with the password replaced, so a logged config never carries it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its password, for the one place that connects.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `<redacted>`: safe to log.
    pub fn redacted(&self) -> String {
        let url = &self.0;
        let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
            return url.clone();
        };
        let rest = &url[scheme_end..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        // The last '@' of the authority ends the userinfo (a password may contain '@').
        let Some(at) = rest[..authority_end].rfind('@') else {
            return url.clone();
        };
        let userinfo = &rest[..at];
        let user = match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:<redacted>"),
            // `redis://password@host` is how some clients spell a password without a user.
            None => "<redacted>".to_owned(),
        };
        format!("{}{user}{}", &url[..scheme_end], &rest[at..])
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisUrl({:?})", self.redacted())
    }
}

impl From<&str> for RedisUrl {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

/// Genesys Cloud regions (the domain of `api.{region}` and `login.{region}`), from the
/// platform's documentation. Another region still loads, with a warning.
pub const GENESYS_REGIONS: &[&str] = &[
    "mypurecloud.com",
    "mypurecloud.ie",
    "mypurecloud.com.au",
    "mypurecloud.jp",
    "mypurecloud.de",
    "usw2.pure.cloud",
    "cac1.pure.cloud",
    "apne2.pure.cloud",
    "euw2.pure.cloud",
    "aps1.pure.cloud",
    "sae1.pure.cloud",
    "mec1.pure.cloud",
    "apne3.pure.cloud",
    "euc2.pure.cloud",
    "mxc1.pure.cloud",
    "apse1.pure.cloud",
    "use2.us-gov-pure.cloud",
];

impl Default for SidecarConfig {
    /// The config of a file that says nothing: no streams, every field at its default.
    fn default() -> Self {
        Self {
            pod: None,
            listen: default_listen(),
            admin: default_admin(),
            redis: None,
            tenant_limits: BTreeMap::new(),
            checkpoint_window: DEFAULT_CHECKPOINT_WINDOW,
            max_app_connections: DEFAULT_MAX_APP_CONNECTIONS,
            streams: Vec::new(),
        }
    }
}

/// `checkpointWindow` when the config names none.
pub const DEFAULT_CHECKPOINT_WINDOW: Duration = Duration::from_secs(1);

/// `maxAppConnections` when the config names none.
pub const DEFAULT_MAX_APP_CONNECTIONS: usize = 1024;

/// `value` made the one equal to it in `seen`, or kept there as the first of its kind.
fn share<T: Clone + Eq + Hash>(seen: &mut HashSet<T>, value: &mut T) {
    match seen.get(value) {
        Some(first) => *value = first.clone(),
        None => {
            seen.insert(value.clone());
        }
    }
}

fn default_checkpoint_window() -> Duration {
    DEFAULT_CHECKPOINT_WINDOW
}

fn default_max_app_connections() -> usize {
    DEFAULT_MAX_APP_CONNECTIONS
}

/// Streams of one tenant connected at once when the config names no limit.
pub const DEFAULT_TENANT_LIMIT: u32 = 50;

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7700))
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9464))
}

/// Which platform dialect a stream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Platform {
    /// Genesys Cloud CX Notifications API.
    Genesys,
    /// NICE CXone digital event hub.
    CxoneDfo,
    /// NICE CXone Agent Assist Hub notifications.
    CxoneAah,
    /// The seed guide's dialect: Bearer upgrade, RFC 6455 pings, in-stream token refresh.
    Generic,
}

impl Platform {
    /// Every platform.
    pub const ALL: [Self; 4] = [Self::Genesys, Self::CxoneDfo, Self::CxoneAah, Self::Generic];

    /// The platform as written in config and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Genesys => "genesys",
            Self::CxoneDfo => "cxone-dfo",
            Self::CxoneAah => "cxone-aah",
            Self::Generic => "generic",
        }
    }
}

impl std::str::FromStr for Platform {
    type Err = ConfigError;

    /// The platform written as [`Platform::as_str`] writes it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                ConfigError::new(
                    "platform",
                    format!("unknown platform {s:?} (genesys, cxone-dfo, cxone-aah or generic)"),
                )
            })
    }
}

/// One stream the pod may run. Heartbeat and token timing left out of the file are the
/// platform's own ([`HeartbeatSpec::for_platform`], [`TokenSpec::for_platform`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", from = "StreamSpecInput")]
pub struct StreamSpec {
    /// `namespace/name` of its StreamConnection.
    pub id: StreamId,
    /// The tenant whose pool it counts against.
    pub tenant: Tenant,
    /// The platform dialect.
    pub platform: Platform,
    /// 0..=1000, higher wins.
    pub priority: u16,
    /// Where the platform lives. Shared: a pod's streams mostly have the same, and a copy in
    /// each stream's spec would be 64 bytes more of it (so 320 bytes with its `Arc` rather
    /// than 256, by the allocator's size classes).
    pub endpoints: Arc<Endpoints>,
    /// Where the OAuth client id and secret come from.
    pub credentials: Credentials,
    /// Topics to subscribe (platforms with subscriptions).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
    /// Ping interval and dead timeout.
    pub heartbeat: HeartbeatSpec,
    /// Token refresh schedule.
    pub token: TokenSpec,
    /// Reconnect backoff.
    pub reconnect: ReconnectSpec,
    /// Frame and buffer limits.
    pub limits: LimitsSpec,
    /// TLS trust; system roots when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

/// A stream as written in the file: [`StreamSpec`] with the timings that default per
/// platform still open (a field default cannot see the stream's platform).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StreamSpecInput {
    id: StreamId,
    tenant: Tenant,
    platform: Platform,
    #[serde(default = "default_priority")]
    priority: u16,
    #[serde(default)]
    endpoints: Endpoints,
    credentials: Credentials,
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    heartbeat: HeartbeatInput,
    #[serde(default)]
    token: TokenInput,
    #[serde(default)]
    reconnect: ReconnectSpec,
    #[serde(default)]
    limits: LimitsSpec,
    #[serde(default)]
    tls: Option<TlsSpec>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HeartbeatInput {
    #[serde(default, with = "serde_str::option")]
    interval: Option<Duration>,
    #[serde(default, with = "serde_str::option")]
    timeout: Option<Duration>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TokenInput {
    #[serde(default, with = "serde_str::option")]
    refresh_lead: Option<Duration>,
    #[serde(default, with = "serde_str::option")]
    retry: Option<Duration>,
}

impl From<StreamSpecInput> for StreamSpec {
    fn from(s: StreamSpecInput) -> Self {
        Self {
            id: s.id,
            tenant: s.tenant,
            platform: s.platform,
            priority: s.priority,
            endpoints: Arc::new(s.endpoints),
            credentials: s.credentials,
            topics: s.topics,
            heartbeat: HeartbeatSpec::resolve(
                s.platform,
                s.heartbeat.interval,
                s.heartbeat.timeout,
            ),
            token: TokenSpec::resolve(s.platform, s.token.refresh_lead, s.token.retry),
            reconnect: s.reconnect,
            limits: s.limits,
            tls: s.tls,
        }
    }
}

fn default_priority() -> u16 {
    500
}

/// Platform endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoints {
    /// Genesys only: the region's domain, e.g. `mypurecloud.ie`; stands for
    /// `api: https://api.{region}` and `login: https://login.{region}`, which override it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// REST API base, e.g. `https://api.mypurecloud.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<Endpoint>,
    /// OAuth login base, e.g. `https://login.mypurecloud.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<Endpoint>,
    /// The socket URL where it is not discovered (generic, cxone-dfo, cxone-aah).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<Endpoint>,
}

impl Endpoints {
    /// The REST API base: `api`, else `https://api.{region}`.
    pub fn api_url(&self) -> Option<Url> {
        self.api
            .as_ref()
            .map(Endpoint::url)
            .or_else(|| self.region_url("api"))
    }

    /// The OAuth login base: `login`, else `https://login.{region}`.
    pub fn login_url(&self) -> Option<Url> {
        self.login
            .as_ref()
            .map(Endpoint::url)
            .or_else(|| self.region_url("login"))
    }

    fn region_url(&self, host: &str) -> Option<Url> {
        let region = self.region.as_deref()?;
        Url::parse(&format!("https://{host}.{region}")).ok()
    }
}

/// Whether `s` is a DNS name of at least two labels (`mypurecloud.com`).
fn is_domain(s: &str) -> bool {
    let labels: Vec<&str> = s.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Where credentials come from. Its paths and names (and [`TlsSpec`]'s) are boxed, 16 bytes
/// each rather than a `PathBuf`'s or `String`'s 24: a [`StreamSpec`] is one allocation that
/// every stream keeps, and with them (and its shared endpoints) it fits the allocator's
/// 256-byte class (the sidecar bench's census).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Credentials {
    /// A directory with files `clientId` and `clientSecret` (a mounted Secret); for the CXone
    /// platforms `accessKeyId` and `accessKeySecret`. Re-read for every grant, so a rotated
    /// Secret is used without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<Arc<Path>>,
    /// A Secret's name, read through the API server in-cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Box<str>>,
}

/// Heartbeat timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeartbeatSpec {
    /// Ping every this long.
    #[serde(with = "serde_str")]
    pub interval: Duration,
    /// Dead when nothing arrived for this long.
    #[serde(with = "serde_str")]
    pub timeout: Duration,
}

impl HeartbeatSpec {
    /// The platform's own cadence (PLATFORMS.md), for a stream that sets none: CXone's digital
    /// event hub expects a heartbeat every 30 s and Agent Assist Hub every 10 s; Genesys and
    /// `generic` ping every 15 s. Each timeout leaves one interval and some slack for the
    /// pong, and Genesys's stays above its server heartbeat (every 30 s).
    pub fn for_platform(platform: Platform) -> Self {
        let (interval, timeout) = match platform {
            Platform::Genesys | Platform::Generic => (15, 35),
            Platform::CxoneDfo => (30, 45),
            Platform::CxoneAah => (10, 25),
        };
        Self {
            interval: Duration::from_secs(interval),
            timeout: Duration::from_secs(timeout),
        }
    }
}

impl HeartbeatSpec {
    /// What is set, the platform's own for the rest (the sidecar file and the CRD alike).
    pub fn resolve(
        platform: Platform,
        interval: Option<Duration>,
        timeout: Option<Duration>,
    ) -> Self {
        let own = Self::for_platform(platform);
        Self {
            interval: interval.unwrap_or(own.interval),
            timeout: timeout.unwrap_or(own.timeout),
        }
    }
}

impl Default for HeartbeatSpec {
    /// `generic`'s (and Genesys's): 15 s / 35 s.
    fn default() -> Self {
        Self::for_platform(Platform::Generic)
    }
}

/// Token refresh timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenSpec {
    /// Refresh this long before expiry.
    #[serde(with = "serde_str")]
    pub refresh_lead: Duration,
    /// First retry delay after a failed refresh; doubles on each failure.
    #[serde(with = "serde_str")]
    pub retry: Duration,
}

impl TokenSpec {
    /// The platform's own schedule, for a stream that sets none: CXone tokens live about an
    /// hour and its agent SDK refreshes 600 s before expiry (PLATFORMS.md); elsewhere 120 s.
    /// A failed refresh is retried after 30 s.
    pub fn for_platform(platform: Platform) -> Self {
        let lead = match platform {
            Platform::CxoneDfo | Platform::CxoneAah => 600,
            Platform::Genesys | Platform::Generic => 120,
        };
        Self {
            refresh_lead: Duration::from_secs(lead),
            retry: Duration::from_secs(30),
        }
    }
}

impl TokenSpec {
    /// What is set, the platform's own for the rest (the sidecar file and the CRD alike).
    pub fn resolve(
        platform: Platform,
        refresh_lead: Option<Duration>,
        retry: Option<Duration>,
    ) -> Self {
        let own = Self::for_platform(platform);
        Self {
            refresh_lead: refresh_lead.unwrap_or(own.refresh_lead),
            retry: retry.unwrap_or(own.retry),
        }
    }
}

impl Default for TokenSpec {
    /// `generic`'s (and Genesys's): a 120 s lead.
    fn default() -> Self {
        Self::for_platform(Platform::Generic)
    }
}

/// Reconnect backoff: exponential with full jitter between zero and the capped step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReconnectSpec {
    /// The first step.
    #[serde(with = "serde_str", default = "default_reconnect_initial")]
    pub initial: Duration,
    /// The cap.
    #[serde(with = "serde_str", default = "default_reconnect_max")]
    pub max: Duration,
}

fn default_reconnect_initial() -> Duration {
    Duration::from_millis(500)
}

fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}

impl Default for ReconnectSpec {
    fn default() -> Self {
        Self {
            initial: default_reconnect_initial(),
            max: default_reconnect_max(),
        }
    }
}

/// Size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsSpec {
    /// The largest upstream or app frame accepted, in bytes.
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: usize,
    /// Unacked events held for the app; past it the oldest are dropped and a `gap` is sent.
    #[serde(default = "default_max_unacked")]
    pub max_unacked_events: u32,
    /// Bytes of unacked events held for the app (as sent, JSON); past it the oldest are
    /// dropped and a `gap` is sent, as for `maxUnackedEvents`. Default 64 MiB, at most 4 GiB.
    #[serde(default = "default_max_unacked_bytes")]
    pub max_unacked_bytes: u32,
}

fn default_max_unacked_bytes() -> u32 {
    64 << 20
}

fn default_max_frame() -> usize {
    1 << 20
}

fn default_max_unacked() -> u32 {
    10_000
}

impl Default for LimitsSpec {
    fn default() -> Self {
        Self {
            max_frame_bytes: default_max_frame(),
            max_unacked_events: default_max_unacked(),
            max_unacked_bytes: default_max_unacked_bytes(),
        }
    }
}

/// TLS trust settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsSpec {
    /// A PEM file of CA certificates to trust instead of the system roots.
    pub ca_file: Arc<Path>,
}

/// A config that parsed and validated, with its warnings.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The config.
    pub config: SidecarConfig,
    /// Values that work but are outside the recommended range, each naming its field.
    pub warnings: Vec<String>,
}

impl SidecarConfig {
    /// Parses and validates a YAML document.
    pub fn from_yaml(text: &str) -> Result<Loaded, ConfigError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let mut config: SidecarConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            let message = e.into_inner().to_string();
            // serde_yaml_ng prefixes its own (shorter) path; the field already says where.
            let message = match message.split_once(": ") {
                Some((prefix, rest)) if !prefix.contains(' ') && field.starts_with(prefix) => {
                    rest.to_owned()
                }
                _ => message,
            };
            ConfigError::new(field, message)
        })?;
        let warnings = config.validate()?;
        config.share_equal_values();
        Ok(Loaded { config, warnings })
    }

    /// Makes the equal values of different streams one: a pod's streams mostly share their
    /// tenant, endpoints, credentials directory and CA file, and each stream's copy would be an
    /// allocation of its own for as long as it runs.
    pub fn share_equal_values(&mut self) {
        let mut tenants = HashSet::new();
        let mut urls = HashSet::new();
        let mut endpoints = HashSet::new();
        let mut paths = HashSet::new();
        for s in &mut self.streams {
            share(&mut tenants, &mut s.tenant);
            // The URLs first (streams of different endpoints may still share some, and one
            // stream's api and login are often the same), then the whole.
            if let Some(e) = Arc::get_mut(&mut s.endpoints) {
                for endpoint in [&mut e.api, &mut e.login, &mut e.stream]
                    .into_iter()
                    .flatten()
                {
                    share(&mut urls, endpoint);
                }
            }
            share(&mut endpoints, &mut s.endpoints);
            if let Some(dir) = &mut s.credentials.dir {
                share(&mut paths, dir);
            }
            if let Some(tls) = &mut s.tls {
                share(&mut paths, &mut tls.ca_file);
            }
        }
    }

    /// Checks what serde cannot; returns warnings for values outside the recommended range.
    pub fn validate(&self) -> Result<Vec<String>, ConfigError> {
        let mut warnings = Vec::new();
        let mut seen = HashSet::new();
        if self.listen == self.admin {
            return Err(ConfigError::new("admin", "must differ from `listen`"));
        }
        if self.checkpoint_window.is_zero() {
            return Err(ConfigError::new(
                "checkpointWindow",
                "must be positive (acks are written to the store at most this long after)",
            ));
        }
        if self.max_app_connections == 0 {
            return Err(ConfigError::new("maxAppConnections", "must be at least 1"));
        }
        if let Some((tenant, _)) = self.tenant_limits.iter().find(|(_, n)| **n == 0) {
            return Err(ConfigError::new(
                format!("tenantLimits.{tenant}"),
                "must be at least 1 (remove the stream to stop it)",
            ));
        }
        for (i, s) in self.streams.iter().enumerate() {
            let at = |f: &str| format!("streams[{i}].{f}");
            if !seen.insert(&s.id) {
                return Err(ConfigError::new(
                    at("id"),
                    format!("{} appears twice", s.id),
                ));
            }
            if s.priority > 1000 {
                return Err(ConfigError::new(at("priority"), "must be 0..=1000"));
            }
            let hb = s.heartbeat;
            if hb.interval.is_zero() {
                return Err(ConfigError::new(
                    at("heartbeat.interval"),
                    "must be positive",
                ));
            }
            if hb.timeout <= hb.interval {
                return Err(ConfigError::new(
                    at("heartbeat.timeout"),
                    format!(
                        "must be longer than heartbeat.interval ({:?} <= {:?}): otherwise every \
                         connection is reaped between two pings",
                        hb.timeout, hb.interval
                    ),
                ));
            }
            for (name, d) in [
                ("heartbeat.interval", hb.interval),
                ("heartbeat.timeout", hb.timeout),
            ] {
                if !RECOMMENDED_HEARTBEAT.contains(&d) {
                    warnings.push(format!(
                        "{}: {d:?} is outside the recommended 5s..45s (fine for tests and demos)",
                        at(name)
                    ));
                }
            }
            if s.token.retry.is_zero() {
                return Err(ConfigError::new(at("token.retry"), "must be positive"));
            }
            if s.reconnect.initial.is_zero() || s.reconnect.max < s.reconnect.initial {
                return Err(ConfigError::new(
                    at("reconnect"),
                    "initial must be positive and max at least initial",
                ));
            }
            if s.limits.max_frame_bytes < 1024 {
                return Err(ConfigError::new(
                    at("limits.maxFrameBytes"),
                    "must be at least 1024",
                ));
            }
            if s.limits.max_unacked_events == 0 {
                return Err(ConfigError::new(
                    at("limits.maxUnackedEvents"),
                    "must be positive",
                ));
            }
            if (s.limits.max_unacked_bytes as usize) < s.limits.max_frame_bytes {
                return Err(ConfigError::new(
                    at("limits.maxUnackedBytes"),
                    format!(
                        "must be at least limits.maxFrameBytes ({}): otherwise one large event \
                         could never be held",
                        s.limits.max_frame_bytes
                    ),
                ));
            }
            match (&s.credentials.dir, &s.credentials.secret) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => {
                    let files = match s.platform {
                        Platform::CxoneDfo | Platform::CxoneAah => "accessKeyId, accessKeySecret",
                        Platform::Genesys | Platform::Generic => "clientId, clientSecret",
                    };
                    return Err(ConfigError::new(
                        at("credentials"),
                        format!("set exactly one of `dir` (files {files}) or `secret`"),
                    ));
                }
            }
            if let Some(region) = &s.endpoints.region {
                if s.platform != Platform::Genesys {
                    return Err(ConfigError::new(
                        at("endpoints.region"),
                        format!(
                            "applies to genesys only; for {} set endpoints.login and endpoints.stream",
                            s.platform.as_str()
                        ),
                    ));
                }
                if !is_domain(region) {
                    return Err(ConfigError::new(
                        at("endpoints.region"),
                        format!(
                            "{region:?} is not a region domain (like mypurecloud.com or euw2.pure.cloud)"
                        ),
                    ));
                }
                if !GENESYS_REGIONS.contains(&region.as_str()) {
                    warnings.push(format!(
                        "{}: {region:?} is not a Genesys Cloud region this build knows ({}); using api.{region} and login.{region}",
                        at("endpoints.region"),
                        GENESYS_REGIONS.join(", ")
                    ));
                }
            }
            let api = s.endpoints.api_url().is_some();
            let login = s.endpoints.login_url().is_some();
            let needs: &[(&str, bool)] = match s.platform {
                Platform::Generic => &[
                    ("endpoints.stream", s.endpoints.stream.is_some()),
                    ("endpoints.login", s.endpoints.login.is_some()),
                    ("endpoints.api", s.endpoints.api.is_some()),
                ],
                // `region` stands for both; the message says so.
                Platform::Genesys => &[("endpoints.api", api), ("endpoints.login", login)],
                Platform::CxoneDfo | Platform::CxoneAah => &[
                    ("endpoints.stream", s.endpoints.stream.is_some()),
                    ("endpoints.login", s.endpoints.login.is_some()),
                ],
            };
            if let Some((field, _)) = needs.iter().find(|(_, present)| !present) {
                let or_region = if s.platform == Platform::Genesys {
                    " (or endpoints.region)"
                } else {
                    ""
                };
                return Err(ConfigError::new(
                    at(field),
                    format!(
                        "is required for platform {}{or_region}",
                        s.platform.as_str()
                    ),
                ));
            }
            if s.platform == Platform::Genesys && s.topics.is_empty() {
                return Err(ConfigError::new(
                    at("topics"),
                    "genesys needs at least one topic to subscribe (like v2.users.{id}.presence)",
                ));
            }
            if s.platform == Platform::CxoneAah && s.topics.is_empty() {
                return Err(ConfigError::new(
                    at("topics"),
                    "cxone-aah needs at least one contact id to SUBSCRIBE",
                ));
            }
            if s.platform == Platform::Genesys
                && let Some((j, t)) = s
                    .topics
                    .iter()
                    .enumerate()
                    .find(|(_, t)| t.is_empty() || t.len() > 200)
            {
                return Err(ConfigError::new(
                    at(&format!("topics[{j}]")),
                    format!("a Genesys topic is 1..=200 characters ({} given)", t.len()),
                ));
            }
            if let Some(url) = &s.endpoints.stream
                && !matches!(url.scheme(), "ws" | "wss")
            {
                return Err(ConfigError::new(
                    at("endpoints.stream"),
                    format!("must be a ws:// or wss:// URL, not {}://", url.scheme()),
                ));
            }
            for (name, url) in [
                ("endpoints.api", &s.endpoints.api),
                ("endpoints.login", &s.endpoints.login),
            ] {
                if let Some(url) = url
                    && !matches!(url.scheme(), "http" | "https")
                {
                    return Err(ConfigError::new(
                        at(name),
                        format!(
                            "must be an http:// or https:// URL, not {}://",
                            url.scheme()
                        ),
                    ));
                }
            }
        }
        Ok(warnings)
    }

    /// The cap on `tenant`'s connected streams.
    pub fn tenant_limit(&self, tenant: &Tenant) -> u32 {
        self.tenant_limits
            .get(tenant)
            .copied()
            .unwrap_or(DEFAULT_TENANT_LIMIT)
    }

    /// The spec of one stream.
    pub fn stream(&self, id: &StreamId) -> Option<&StreamSpec> {
        self.streams.iter().find(|s| &s.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
pod: wem-ingest-7d9f-x2
listen: 127.0.0.1:7700
admin: 0.0.0.0:9464
streams:
  - id: cc/acme-queue-events
    tenant: acme
    platform: generic
    priority: 500
    endpoints: {api: "http://127.0.0.1:9000", login: "http://127.0.0.1:9000", stream: "ws://127.0.0.1:9000/streams/q"}
    credentials: {dir: /var/run/streamkeeper/acme}
    heartbeat: {interval: 15s, timeout: 35s}
    token: {refreshLead: 120s, retry: 30s}
"#;

    #[test]
    fn the_documented_example_parses_with_defaults() {
        let loaded = SidecarConfig::from_yaml(GOOD).expect("valid");
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let s = &loaded.config.streams[0];
        assert_eq!(s.heartbeat.timeout, Duration::from_secs(35));
        assert_eq!(s.reconnect, ReconnectSpec::default());
        assert_eq!(s.limits.max_frame_bytes, 1 << 20);
    }

    #[test]
    fn streams_share_their_equal_values() {
        let second = GOOD
            .split_once("  - id:")
            .map(|(_, stream)| format!("  - id:{}", stream.replace("acme-queue-events", "other")))
            .expect("one stream");
        let text = format!("{GOOD}{second}");
        let config = SidecarConfig::from_yaml(&text).expect("valid").config;
        let [a, b] = &config.streams[..] else {
            panic!("two streams")
        };
        assert_ne!(a.id, b.id);
        let same_text = |x: &str, y: &str| x == y && std::ptr::eq(x.as_ptr(), y.as_ptr());
        assert!(
            same_text(a.tenant.as_str(), b.tenant.as_str()),
            "one tenant"
        );
        for (x, y) in [
            (&a.endpoints.api, &b.endpoints.api),
            (&a.endpoints.login, &b.endpoints.login),
            (&a.endpoints.stream, &b.endpoints.stream),
        ] {
            let (Some(x), Some(y)) = (x, y) else {
                panic!("endpoints set")
            };
            assert!(same_text(x.as_str(), y.as_str()), "one {x}");
        }
        // The api and login URLs are equal too: one text for both.
        assert!(same_text(
            a.endpoints.api.as_ref().map_or("", Endpoint::as_str),
            a.endpoints.login.as_ref().map_or("", Endpoint::as_str),
        ));
        let (Some(x), Some(y)) = (&a.credentials.dir, &b.credentials.dir) else {
            panic!("credential dirs set")
        };
        assert!(Arc::ptr_eq(x, y), "one credentials directory");
        assert!(
            Arc::ptr_eq(&a.endpoints, &b.endpoints),
            "one set of endpoints"
        );
    }

    #[test]
    fn a_spec_fits_the_allocators_256_byte_class() {
        // Each stream's spec is in an `Arc` (its two counts are 16 bytes): one byte more is 320.
        let size = size_of::<StreamSpec>() + 16;
        assert!(size <= 256, "{size} bytes");
    }

    #[test]
    fn a_platform_reads_back_from_its_name_and_an_unknown_one_is_named() {
        for p in Platform::ALL {
            assert_eq!(p.as_str().parse::<Platform>().expect("known"), p);
        }
        let err = "avaya".parse::<Platform>().expect_err("unknown");
        assert!(err.to_string().contains("\"avaya\""), "{err}");
    }

    #[test]
    fn timings_left_out_are_the_platforms_own() {
        let aah = GOOD
            .replace("platform: generic", "platform: cxone-aah")
            .replace("    heartbeat: {interval: 15s, timeout: 35s}\n", "")
            .replace(
                "    token: {refreshLead: 120s, retry: 30s}\n",
                "    token: {retry: 5s}\n    topics: [contact-1]\n",
            );
        let loaded = SidecarConfig::from_yaml(&aah).expect("valid");
        let s = &loaded.config.streams[0];
        assert_eq!(s.heartbeat, HeartbeatSpec::for_platform(Platform::CxoneAah));
        assert_eq!(s.heartbeat.interval, Duration::from_secs(10));
        assert_eq!(s.token.refresh_lead, Duration::from_secs(600));
        assert_eq!(s.token.retry, Duration::from_secs(5), "what is set stays");
        // One field set, the other the platform's; the pair is checked as resolved.
        let dfo = GOOD
            .replace("platform: generic", "platform: cxone-dfo")
            .replace("{interval: 15s, timeout: 35s}", "{interval: 20s}");
        let s = &SidecarConfig::from_yaml(&dfo)
            .expect("valid")
            .config
            .streams[0];
        assert_eq!(
            (s.heartbeat.interval, s.heartbeat.timeout),
            (Duration::from_secs(20), Duration::from_secs(45))
        );
        let bad = dfo.replace("{interval: 20s}", "{interval: 50s}");
        let err = SidecarConfig::from_yaml(&bad).expect_err("interval past the timeout");
        assert_eq!(err.field, "streams[0].heartbeat.timeout");
        // What the controller renders reads back the same.
        let text = serde_yaml_ng::to_string(&loaded.config).expect("yaml");
        assert_eq!(
            SidecarConfig::from_yaml(&text).expect("valid").config,
            loaded.config
        );
    }

    #[test]
    fn errors_name_the_field() {
        let bad = GOOD.replace("timeout: 35s", "timeout: 35");
        let err = SidecarConfig::from_yaml(&bad).expect_err("no unit");
        assert_eq!(err.field, "streams[0].heartbeat.timeout");
        assert!(err.message.starts_with("\"35\" has no unit"), "{err}");
        assert!(
            err.message.contains("at line 12 column 16"),
            "the location is kept: {err}"
        );

        let bad = GOOD.replace("interval: 15s", "intervall: 15s");
        let err = SidecarConfig::from_yaml(&bad).expect_err("typo");
        assert!(err.field.starts_with("streams[0].heartbeat"), "{err}");
        assert!(err.message.contains("intervall"), "{err}");

        let bad = GOOD.replace("timeout: 35s", "timeout: 10s");
        let err = SidecarConfig::from_yaml(&bad).expect_err("timeout below interval");
        assert_eq!(err.field, "streams[0].heartbeat.timeout");

        let bad = GOOD.replace("id: cc/acme-queue-events", "id: acme-queue-events");
        let err = SidecarConfig::from_yaml(&bad).expect_err("id without namespace");
        assert_eq!(err.field, "streams[0].id");

        let bad = GOOD.replace("stream: \"ws:", "stream: \"http:");
        let err = SidecarConfig::from_yaml(&bad).expect_err("stream not ws");
        assert_eq!(err.field, "streams[0].endpoints.stream");

        // The hub holds 32-bit bounds: a larger one is refused, not cut down without a word.
        let bad = format!("{GOOD}    limits: {{maxUnackedBytes: 4294967296}}\n");
        let err = SidecarConfig::from_yaml(&bad).expect_err("over 4 GiB");
        assert_eq!(err.field, "streams[0].limits.maxUnackedBytes");
        assert!(err.message.contains("4294967296"), "{err}");
        let most = format!("{GOOD}    limits: {{maxUnackedBytes: 4294967295}}\n");
        let loaded = SidecarConfig::from_yaml(&most).expect("4 GiB less one byte is fine");
        assert_eq!(loaded.config.streams[0].limits.max_unacked_bytes, u32::MAX);
    }

    #[test]
    fn second_scale_timers_warn_but_load() {
        let fast = GOOD.replace("interval: 15s, timeout: 35s", "interval: 1s, timeout: 3s");
        let loaded = SidecarConfig::from_yaml(&fast).expect("valid");
        assert_eq!(loaded.warnings.len(), 2);
        assert!(loaded.warnings[0].starts_with("streams[0].heartbeat.interval"));
    }

    #[test]
    fn genesys_region_maps_to_api_and_login_and_explicit_endpoints_override() {
        let yaml = |endpoints: &str| {
            format!(
                "streams:\n  - {{id: cc/g, tenant: t, platform: genesys, endpoints: {endpoints}, credentials: {{dir: /c}}, topics: [v2.users.u1.presence]}}\n"
            )
        };
        let loaded = SidecarConfig::from_yaml(&yaml("{region: mypurecloud.ie}")).expect("valid");
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let e = &loaded.config.streams[0].endpoints;
        assert_eq!(
            e.api_url().expect("api").as_str(),
            "https://api.mypurecloud.ie/"
        );
        assert_eq!(
            e.login_url().expect("login").as_str(),
            "https://login.mypurecloud.ie/"
        );
        let loaded = SidecarConfig::from_yaml(&yaml(
            "{region: mypurecloud.ie, api: 'http://127.0.0.1:9/'}",
        ))
        .expect("valid");
        let e = &loaded.config.streams[0].endpoints;
        assert_eq!(e.api_url().expect("api").as_str(), "http://127.0.0.1:9/");
        assert_eq!(
            e.login_url().expect("login").as_str(),
            "https://login.mypurecloud.ie/"
        );
        // An unknown region loads with a warning; a malformed one is refused, naming the field.
        let loaded = SidecarConfig::from_yaml(&yaml("{region: xyz9.pure.cloud}")).expect("valid");
        assert!(
            loaded.warnings[0].starts_with("streams[0].endpoints.region"),
            "{:?}",
            loaded.warnings
        );
        let err = SidecarConfig::from_yaml(&yaml("{region: 'not a region'}")).expect_err("bad");
        assert_eq!(err.field, "streams[0].endpoints.region");
        let err = SidecarConfig::from_yaml(&yaml("{}")).expect_err("no hosts");
        assert_eq!(err.field, "streams[0].endpoints.api");
        assert!(err.message.contains("endpoints.region"), "{err}");
        let err =
            SidecarConfig::from_yaml(&GOOD.replace("{api:", "{region: mypurecloud.com, api:"))
                .expect_err("region on generic");
        assert_eq!(err.field, "streams[0].endpoints.region");
    }

    #[test]
    fn the_redis_password_never_reaches_debug() {
        let yaml = "redis: redis://app:s3cr%40t@redis.example:6379/0\n";
        let config = SidecarConfig::from_yaml(yaml).expect("valid").config;
        let url = config.redis.as_ref().expect("redis");
        assert_eq!(url.expose(), "redis://app:s3cr%40t@redis.example:6379/0");
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(
            shown.contains("redis://app:<redacted>@redis.example:6379/0"),
            "{shown}"
        );
        for (url, shown) in [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("rediss://:pw@h:1", "rediss://:<redacted>@h:1"),
            ("redis://pw@h:1", "redis://<redacted>@h:1"),
            (
                "redis+cluster://u:p@a@h1:1,h2:2",
                "redis+cluster://u:<redacted>@h1:1,h2:2",
            ),
        ] {
            assert_eq!(RedisUrl::new(url).redacted(), shown);
        }
    }
}
