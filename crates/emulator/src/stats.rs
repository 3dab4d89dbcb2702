//! What `GET /stats` and [`Emulator::stats`](crate::Emulator::stats) report.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A snapshot of the whole emulator (camelCase JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Every stream that exists, by name.
    pub streams: BTreeMap<String, StreamStats>,
    /// Tokens issued by `POST /oauth/token` since start.
    pub tokens_issued: u64,
    /// WebSocket connections accepted since start.
    pub connections_total: u64,
    /// WebSocket connections open now.
    pub connections_open: usize,
}

/// A snapshot of one stream (camelCase JSON).
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
