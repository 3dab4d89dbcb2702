//! Opening one upstream socket: the adapter's plan (REST calls first), the WebSocket
//! handshake, the plan's first frames, and why an attempt failed.

use std::{sync::Arc, time::Duration};

use streamkeeper_api::{EventId, StreamSpec};

use crate::{
    auth::Token,
    net::SocketOptions,
    platforms::{Adapter, AdapterError, SocketPlan},
    ws::{ConnectOptions, WsClient, WsError},
};

/// Builds the connect options for a stream (socket options from its heartbeat timeout).
pub fn connect_options(
    spec: &StreamSpec,
    tls: Option<Arc<tokio_rustls::TlsConnector>>,
) -> ConnectOptions {
    let socket = SocketOptions {
        user_timeout: spec.heartbeat.timeout,
        ..SocketOptions::default()
    };
    ConnectOptions {
        socket,
        max_frame: spec.limits.max_frame_bytes,
        tls,
        handshake_timeout: spec.heartbeat.timeout,
        ..ConnectOptions::default()
    }
}

/// Plans a socket (the adapter's REST calls), opens it, and queues the plan's first frames.
pub(super) async fn open_socket(
    adapter: &dyn Adapter,
    http: &reqwest::Client,
    connect: &ConnectOptions,
    token: &Token,
    resume_after: Option<&EventId>,
) -> Result<(WsClient, SocketPlan), OpenFailure> {
    let plan = adapter
        .plan(http, token.value.expose(), resume_after)
        .await
        .map_err(OpenFailure::from_adapter)?;
    let headers: Vec<(&str, String)> = plan.headers.iter().map(|(k, v)| (*k, v.clone())).collect();
    let mut ws = WsClient::connect(&plan.url, &headers, connect)
        .await
        .map_err(OpenFailure::from_ws)?;
    for f in &plan.first_frames {
        ws.queue_text(f);
    }
    Ok((ws, plan))
}

/// Why a socket could not be opened.
pub(super) struct OpenFailure {
    pub(super) error: String,
    pub(super) retry_after: Option<Duration>,
    pub(super) token_rejected: bool,
}

impl OpenFailure {
    fn from_adapter(e: AdapterError) -> Self {
        let (retry_after, token_rejected) = match &e {
            AdapterError::RateLimited { retry_after, .. } => (*retry_after, false),
            AdapterError::TokenRefused { .. } => (None, true),
            AdapterError::Other { .. } => (None, false),
        };
        Self {
            error: e.to_string(),
            retry_after,
            token_rejected,
        }
    }

    fn from_ws(e: WsError) -> Self {
        match &e {
            WsError::Status {
                status,
                retry_after,
                ..
            } => Self {
                error: format!("upgrade refused with HTTP {status}"),
                retry_after: *retry_after,
                token_rejected: matches!(status, 401 | 403),
            },
            _ => Self {
                error: e.to_string(),
                retry_after: None,
                token_rejected: false,
            },
        }
    }
}
