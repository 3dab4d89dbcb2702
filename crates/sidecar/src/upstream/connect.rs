//! Opening a stream's sockets: the adapter's REST calls, one WebSocket per connection it
//! returns (through the pod's one proxy decision), each greeted with the token current now;
//! and why an attempt failed.

use std::{
    sync::{Arc, Mutex, PoisonError, Weak},
    time::Duration,
};

use streamkeeper_api::{ConnectionId, EventId, StreamSpec};

use super::link::{Link, Socket};
use crate::{
    auth::{ClientBudget, Token},
    liveness::HeartbeatPolicy,
    net::{ProxyPolicy, SocketOptions},
    platforms::{Adapter, AdapterError, Prepare, Prepared, RateLimit},
    upstream::monitor::Upstream,
    ws::{ConnectOptions, WsClient, WsError},
};

/// Builds the connect options for a stream (socket options from its heartbeat timeout).
/// Shared: the session and each successor's opening read the same 208 bytes.
pub fn connect_options(
    spec: &StreamSpec,
    tls: Option<Arc<rustls::ClientConfig>>,
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

/// The pod's connect options, one per distinct setting: streams with the same heartbeat
/// timeout, frame limit and trust share one (224 bytes a stream otherwise, kept as long as it
/// runs). The options no stream holds any more are dropped at the next lookup.
#[derive(Default)]
pub struct SharedConnectOptions(Mutex<Vec<Weak<ConnectOptions>>>);

impl SharedConnectOptions {
    /// The options for `spec` over `tls`: an existing one when a stream has the same.
    pub fn get(
        &self,
        spec: &StreamSpec,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Arc<ConnectOptions> {
        // The inputs of `connect_options` decide the options: compared as such, nothing is
        // built for a stream whose options exist.
        let same = |o: &ConnectOptions| {
            o.socket.user_timeout == spec.heartbeat.timeout
                && o.max_frame == spec.limits.max_frame_bytes
                && match (&o.tls, &tls) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                }
        };
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        all.retain(|w| w.strong_count() > 0);
        if let Some(found) = all.iter().filter_map(Weak::upgrade).find(|o| same(o)) {
            return found;
        }
        let made = connect_options(spec, tls);
        all.push(Arc::downgrade(&made));
        made
    }
}

impl std::fmt::Debug for SharedConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedConnectOptions")
            .finish_non_exhaustive()
    }
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
        self,
        token: Arc<Token>,
        generation: u64,
        resume_after: Option<&EventId>,
        id: ConnectionId,
        phase: impl Fn() -> Duration,
    ) -> Result<Link, OpenFailure> {
        let prepared = self
            .adapter
            .prepare(Prepare {
                http: &self.http,
                token: token.value.expose(),
                resume_after,
                budget: &self.budget,
            })
            .await
            .map_err(OpenFailure::from_adapter)?;
        let mut sockets = Vec::with_capacity(prepared.len());
        for Prepared { plan, mut conn } in prepared {
            let mut opts = ConnectOptions::clone(&self.connect);
            opts.proxy = self.proxy.mode_for(&plan.url).map_err(|e| OpenFailure {
                error: e.to_string(),
                retry_after: None,
                token_rejected: false,
            })?;
            let mut ws = match WsClient::connect(&plan.url, &plan.headers, &opts).await {
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
            let ready = conn.ready_on_open();
            sockets.push(Socket {
                up: Upstream::new(ws, self.policy, phase()),
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::upstream::test_spec as spec;

    #[test]
    fn streams_with_the_same_settings_share_their_connect_options() {
        let shared = SharedConnectOptions::default();
        let a = shared.get(&spec("t/a", "20s"), None);
        let b = shared.get(&spec("t/b", "20s"), None);
        assert!(Arc::ptr_eq(&a, &b), "same timeout, frame limit and trust");
        let c = shared.get(&spec("t/c", "30s"), None);
        assert!(
            !Arc::ptr_eq(&a, &c),
            "another timeout is another socket setting"
        );
        assert_eq!(c.socket.user_timeout, Duration::from_secs(30));
        drop((a, b));
        let again = shared.get(&spec("t/d", "20s"), None);
        assert_eq!(again.socket.user_timeout, Duration::from_secs(20));
        let held = shared.0.lock().expect("lock").len();
        assert_eq!(held, 2, "the one no stream held is gone: {held} entries");
    }
}
