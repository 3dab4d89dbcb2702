//! The emulator's configuration.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// How an [`Emulator`](crate::Emulator) listens, which streams it runs and which credentials it
/// accepts.
///
/// ```
/// use streamkeeper_emulator::EmulatorConfig;
/// let cfg = EmulatorConfig { streams: vec!["queue-events".into()], ..EmulatorConfig::default() };
/// assert_eq!(cfg.history, 100_000);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
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
        }
    }
}
