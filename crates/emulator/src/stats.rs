//! What `GET /stats` and [`Emulator::stats`](crate::Emulator::stats) report.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A snapshot of the whole emulator (camelCase JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Every generic stream that exists, by name.
    pub streams: BTreeMap<String, StreamStats>,
    /// Access tokens issued since start, every platform and grant.
    pub tokens_issued: u64,
    /// WebSocket connections accepted since start, every platform.
    pub connections_total: u64,
    /// WebSocket connections open now, every platform.
    pub connections_open: usize,
    /// Token requests by client id (or access key id), granted or refused.
    pub tokens: BTreeMap<String, ClientTokenStats>,
    /// REST requests by route (`"METHOD /path/{id}"`), control endpoints excluded.
    pub rest: BTreeMap<String, u64>,
    /// Requests answered 429 by route.
    pub rate_limited: BTreeMap<String, u64>,
    /// The Genesys Notifications API.
    pub genesys: GenesysStats,
    /// The CXone DFO event hub.
    pub dfo: DfoStats,
    /// The CXone Agent Assist Hub.
    pub aah: AahStats,
}

/// A snapshot of one generic stream (camelCase JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamStats {
    /// Events produced since start (also the last sequence number).
    pub emitted: u64,
    /// Id of the last event produced, if any.
    pub last_id: Option<String>,
    /// WebSocket connections open on this stream now.
    pub connections: usize,
    /// Pings received from clients.
    pub pings: u64,
    /// Pongs sent to clients.
    pub pongs: u64,
    /// In-stream token refreshes accepted (acked).
    pub token_refreshes: u64,
}

/// Token requests of one client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientTokenStats {
    /// `generic`, `genesys` or `cxone`.
    pub platform: String,
    /// Tokens issued by grant (`client_credentials`, `access_key`, `refresh_token`).
    pub by_grant: BTreeMap<String, u64>,
    /// Requests refused (bad credentials, used refresh tokens, armed faults).
    pub refused: u64,
    /// Serial of the last token issued to it (see [`Emulator::token_serial`](crate::Emulator::token_serial)).
    pub last_serial: u64,
}

/// One feed topic (Genesys topic, DFO stream, AAH contact id).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedStats {
    /// Events produced (also the last sequence number).
    pub generated: u64,
    /// Copies handed to connected receivers (one event to two channels counts two).
    pub sent: u64,
    /// Receivers attached now (subscribed channels, registered or subscribed sockets).
    pub receivers: usize,
}

/// The Genesys side.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenesysStats {
    /// Per OAuth client.
    pub clients: BTreeMap<String, GenesysClientStats>,
    /// Every channel ever created, by id.
    pub channels: BTreeMap<String, ChannelStats>,
    /// Per topic.
    pub topics: BTreeMap<String, FeedStats>,
    /// Server heartbeats sent.
    pub heartbeats: u64,
    /// Client `{"message":"ping"}` received.
    pub pings: u64,
    /// Pongs sent (app-level and RFC 6455).
    pub pongs: u64,
    /// `v2.system.socket_closing` messages sent.
    pub socket_closing: u64,
}

/// One Genesys OAuth client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenesysClientStats {
    /// Channels created since start.
    pub channels_created: u64,
    /// Live channels now.
    pub channels_live: usize,
    /// Live channels with a socket now.
    pub channels_open: usize,
    /// Channels stopped to make room for a newer one.
    pub channels_replaced: u64,
}

/// One Genesys channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelStats {
    /// Its OAuth client.
    pub client: String,
    /// Serial of the token it is bound to.
    pub token_serial: u64,
    /// Topics subscribed now.
    pub topics: usize,
    /// Whether a socket is connected now.
    pub connected: bool,
    /// Sockets connected to it since it was created.
    pub connections: u64,
    /// When its last socket connected (epoch ms), for overlap checks.
    pub connected_at_ms: Option<u64>,
    /// When a socket of it last went away (epoch ms).
    pub disconnected_at_ms: Option<u64>,
    /// Subscribing calls (REST and socket).
    pub subscriptions: u64,
    /// Why it stopped (`channel expired`, `token expired`, `channel replaced`), if it has.
    pub stopped: Option<String>,
}

/// The DFO side.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DfoStats {
    /// Per stream (`tenantId/userId`).
    pub streams: BTreeMap<String, FeedStats>,
    /// DFO sockets open now, per stream.
    pub sockets: BTreeMap<String, usize>,
    /// Successful registers (first ones and rotations).
    pub registers: u64,
    /// Registers refused (bad token or rate limit).
    pub registers_refused: u64,
    /// `RATE_LIMIT_EXCEEDED` messages sent.
    pub rate_limit_exceeded: u64,
    /// Heartbeat actions received.
    pub pings: u64,
    /// Pongs sent.
    pub pongs: u64,
}

/// The AAH side.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AahStats {
    /// Sockets by id (the last 1,024 opened).
    pub sockets: BTreeMap<u64, AahSocketStats>,
    /// Per contact id.
    pub topics: BTreeMap<String, FeedStats>,
    /// HEARTBEATs received.
    pub pings: u64,
    /// HEARTBEAT_ACKs sent.
    pub pongs: u64,
}

/// One AAH socket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AahSocketStats {
    /// Whether it is open now.
    pub open: bool,
    /// Every inbound message in order (the last 10,000).
    pub messages: Vec<AahMessage>,
    /// Messages dropped from the front of `messages`.
    pub messages_dropped: u64,
}

/// One inbound AAH message: its command and the token it carried.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AahMessage {
    /// `CONNECT`, `HEARTBEAT`, `SUBSCRIBE`, ... (empty when unreadable).
    pub command: String,
    /// Serial of the token it carried, if the token was ever issued here.
    pub token_serial: Option<u64>,
    /// Whether that token was live (the message was acted on).
    pub valid: bool,
}
