//! The emulator's configuration: the generic dialect's knobs at the top, one struct per
//! platform, and TLS.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// How an [`Emulator`](crate::Emulator) listens, which streams it runs and which credentials it
/// accepts.
///
/// ```
/// use streamkeeper_emulator::EmulatorConfig;
/// let cfg = EmulatorConfig { streams: vec!["queue-events".into()], ..EmulatorConfig::default() };
/// assert_eq!(cfg.history, 100_000);
/// assert_eq!(cfg.genesys.max_channels, 20);
/// assert!(!format!("{cfg:?}").contains(&cfg.client_secret), "Debug hides secrets");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct EmulatorConfig {
    /// Address of the single HTTP + WebSocket port; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Streams that exist (and produce events) from the start. A connect to an unknown name
    /// creates that stream on the fly.
    pub streams: Vec<String>,
    /// One event per stream every `event_interval`, whether or not a client is connected;
    /// zero means no timed events (drive them with [`Emulator::emit`](crate::Emulator::emit)).
    pub event_interval: Duration,
    /// Lifetime of issued tokens (`expires_in`, whole seconds, rounded down, on the wire).
    pub token_ttl: Duration,
    /// The OAuth client id accepted by `POST /oauth/token`.
    pub client_id: String,
    /// The OAuth client secret accepted by `POST /oauth/token`.
    pub client_secret: String,
    /// Events kept per stream for `Last-Event-ID` replay (values below 1 count as 1). The
    /// history is also the send buffer: a socket that falls further behind loses events.
    pub history: usize,
    /// Largest payload the server accepts from a client, for one frame and for a whole
    /// fragmented message; a bigger one is answered with close code 1009.
    pub max_frame: usize,
    /// The Genesys Cloud Notifications API.
    pub genesys: GenesysConfig,
    /// NICE CXone: authentication, the DFO event hub and Agent Assist Hub.
    pub cxone: CxoneConfig,
    /// Serve TLS (with a test CA made at start) besides plain HTTP; `None` = plain only.
    pub tls: Option<TlsConfig>,
}

impl fmt::Debug for EmulatorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmulatorConfig")
            .field("listen", &self.listen)
            .field("streams", &self.streams)
            .field("event_interval", &self.event_interval)
            .field("token_ttl", &self.token_ttl)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("history", &self.history)
            .field("max_frame", &self.max_frame)
            .field("genesys", &self.genesys)
            .field("cxone", &self.cxone)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            streams: Vec::new(),
            event_interval: Duration::from_millis(200),
            token_ttl: Duration::from_secs(3600),
            client_id: "streamkeeper".into(),
            client_secret: "streamkeeper-secret".into(),
            history: 100_000,
            max_frame: 1 << 20,
            genesys: GenesysConfig::default(),
            cxone: CxoneConfig::default(),
            tls: None,
        }
    }
}

/// A client id (or access key id) and its secret. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The public half: OAuth client id or CXone access key id.
    pub id: String,
    /// The secret half.
    pub secret: String,
}

impl Credential {
    /// A credential from its two halves.
    pub fn new(id: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            secret: secret.into(),
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The emulated Genesys Cloud Notifications API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenesysConfig {
    /// OAuth clients accepted by `POST /oauth/token` for Genesys tokens (each its own client:
    /// its own tokens, channels and channel limit).
    pub clients: Vec<Credential>,
    /// Lifetime of Genesys tokens (configurable per OAuth client on the real platform,
    /// 300 s to 48 h; 24 h by default).
    pub token_ttl: Duration,
    /// Topics that produce events from the start (others start when first subscribed).
    pub topics: Vec<String>,
    /// One event per topic this often; zero = none (drive them with
    /// [`Emulator::emit_genesys`](crate::Emulator::emit_genesys)).
    pub event_interval: Duration,
    /// Server heartbeat (`WebSocket Heartbeat`) period on every socket; zero = none.
    pub heartbeat_interval: Duration,
    /// How long a channel lives after its creation or its last subscribing call.
    pub channel_ttl: Duration,
    /// Live channels per client; one more replaces the oldest.
    pub max_channels: usize,
    /// Topics per channel; a call that would exceed it gets 400.
    pub max_topics: usize,
    /// How long the socket of a stopped channel stays open (silent, answering subscribes with
    /// `"result":"404"`) before it is closed; zero = closed at once.
    pub stop_grace: Duration,
}

impl Default for GenesysConfig {
    fn default() -> Self {
        Self {
            clients: vec![Credential::new("genesys-client", "genesys-secret")],
            token_ttl: Duration::from_secs(86_400),
            topics: Vec::new(),
            event_interval: Duration::from_millis(200),
            heartbeat_interval: Duration::from_secs(30),
            channel_ttl: Duration::from_secs(86_400),
            max_channels: 20,
            max_topics: 1000,
            stop_grace: Duration::ZERO,
        }
    }
}

/// The emulated NICE CXone: OIDC authentication, DFO event hub and Agent Assist Hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CxoneConfig {
    /// Access keys accepted by `POST /authentication/v1/token/access-key`.
    pub access_keys: Vec<Credential>,
    /// The tenant id userinfo reports.
    pub tenant_id: String,
    /// Lifetime of access tokens (about an hour on the real platform).
    pub token_ttl: Duration,
    /// Lifetime of refresh tokens.
    pub refresh_ttl: Duration,
    /// One event per DFO stream and per AAH contact id this often; zero = none (drive them
    /// with [`Emulator::emit_dfo`](crate::Emulator::emit_dfo) and
    /// [`Emulator::emit_aah`](crate::Emulator::emit_aah)).
    pub event_interval: Duration,
    /// Whether AAH `MESSAGE` frames carry a `messageId` header.
    pub aah_message_ids: bool,
}

impl Default for CxoneConfig {
    fn default() -> Self {
        Self {
            access_keys: vec![Credential::new("cxone-key", "cxone-secret")],
            tenant_id: "emulated-tenant".into(),
            token_ttl: Duration::from_secs(3600),
            refresh_ttl: Duration::from_secs(86_400),
            event_interval: Duration::from_millis(200),
            aah_message_ids: true,
        }
    }
}

/// TLS with a CA made at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// Where to write the CA certificate (PEM); it is also in
    /// [`Emulator::ca_pem`](crate::Emulator::ca_pem).
    pub ca_pem_path: Option<PathBuf>,
    /// Serve a certificate signed by another CA than the one exposed (for refusal tests).
    pub untrusted: bool,
}
