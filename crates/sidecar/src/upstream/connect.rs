//! Opening a stream's sockets: the adapter's REST calls, one WebSocket per connection it
//! returns (through the pod's one proxy decision), each greeted with the token current now;
//! and why an attempt failed.

use std::{sync::Arc, time::Duration};

use streamkeeper_api::{ConnectionId, EventId, StreamSpec};

use super::link::{Link, Socket};
use crate::{
    auth::{ClientBudget, Token},
    liveness::HeartbeatPolicy,
    net::{ProxyPolicy, SocketOptions},
    platforms::{Adapter, AdapterError, Prepare, RateLimit},
    upstream::monitor::Upstream,
    ws::{ConnectOptions, WsClient, WsError},
};

/// Builds the connect options for a stream (socket options from its heartbeat timeout).
/// Shared: the session and each successor's opening read the same 208 bytes.
pub fn connect_options(
    spec: &StreamSpec,
    tls: Option<Arc<tokio_rustls::TlsConnector>>,
) -> Arc<ConnectOptions> {
    let socket = SocketOptions {
        user_timeout: spec.heartbeat.timeout,
        ..SocketOptions::default()
    };
    Arc::new(ConnectOptions {
        socket,
        max_frame: spec.limits.max_frame_bytes,
        tls,
        handshake_timeout: spec.heartbeat.timeout,
        ..ConnectOptions::default()
    })
}

/// What opening a link needs; cheap to clone into a successor's task.
#[derive(Clone)]
pub(super) struct Opener {
    pub(super) adapter: Arc<dyn Adapter>,
    pub(super) http: reqwest::Client,
    pub(super) connect: Arc<ConnectOptions>,
    pub(super) proxy: ProxyPolicy,
    pub(super) budget: Arc<ClientBudget>,
    pub(super) policy: HeartbeatPolicy,
}

impl Opener {
    /// Prepares and opens every socket of one link, bound to `token`. `phase` picks each
    /// socket's first ping.
    pub(super) async fn open(
        &self,
        token: Arc<Token>,
        generation: u64,
        resume_after: Option<&EventId>,
        id: ConnectionId,
        phase: impl Fn() -> Duration,
    ) -> Result<Link, OpenFailure> {
        let conns = self
            .adapter
            .prepare(Prepare {
                http: &self.http,
                token: token.value.expose(),
                resume_after,
                budget: &self.budget,
            })
            .await
            .map_err(OpenFailure::from_adapter)?;
        let mut sockets = Vec::with_capacity(conns.len());
        for (i, mut conn) in conns.into_iter().enumerate() {
            let plan = conn.plan();
            let mut opts = ConnectOptions::clone(&self.connect);
            opts.proxy = self.proxy.mode_for(&plan.url).map_err(|e| OpenFailure {
                error: e.to_string(),
                retry_after: None,
                token_rejected: false,
            })?;
            let headers: Vec<(&str, String)> =
                plan.headers.iter().map(|(k, v)| (*k, v.clone())).collect();
            let mut ws = match WsClient::connect(&plan.url, &headers, &opts).await {
                Ok(ws) => ws,
                Err(e) => {
                    for s in sockets {
                        Socket::reset(s);
                    }
                    return Err(OpenFailure::from_ws(e));
                }
            };
            for frame in conn.greeting(token.value.expose()) {
                ws.queue_text(&frame);
            }
            let socket_id = if i == 0 {
                id.clone()
            } else {
                ConnectionId(format!("{id}.{i}"))
            };
            let ready = conn.ready_on_open();
            sockets.push(Socket {
                up: Upstream::new(ws, self.policy, phase(), socket_id),
                conn,
                ready,
                pings_since_pong: 0,
            });
        }
        Ok(Link {
            id,
            sockets,
            token,
            generation,
            opened: tokio::time::Instant::now(),
        })
    }
}

/// Why sockets could not be opened.
#[derive(Debug)]
pub(super) struct OpenFailure {
    pub(super) error: String,
    pub(super) retry_after: Option<RateLimit>,
    pub(super) token_rejected: bool,
}

impl OpenFailure {
    fn from_adapter(e: AdapterError) -> Self {
        let (retry_after, token_rejected) = match &e {
            AdapterError::RateLimited { retry_after, .. } => (Some(*retry_after), false),
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
                retry_after: retry_after.map(RateLimit::RetryAfter),
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
