//! One stream's upstream session: token, connect, heartbeat, reap, reconnect with jitter,
//! resume, and token rotation, for any platform [`Adapter`].
//!
//! One task drives everything for the stream: the socket's reads (cancel-safe), its liveness
//! deadline, token changes and the stop signal, in one `select!`. Events go into the [`Hub`]
//! without waiting, so a slow app never delays pong handling. A dead connection is reaped with
//! a TCP reset; every reap tells the app (`dropped`), the runtime ([`SessionEvent`]) and the
//! metrics.

use std::{sync::Arc, time::Duration};

use streamkeeper_api::{
    ConnectionId, DropReason, EventId, PodName, StreamId, StreamSpec, StreamState, ToApp,
};
use tokio::{
    sync::{oneshot, watch},
    time::Instant,
};

use super::{
    Observer, SessionEvent, StatusCell, StreamStatus,
    connect::{OpenFailure, open_socket},
    monitor::{Tick, Upstream},
};
use crate::{
    app::hub::{Hub, Push},
    auth::{RefreshNow, Token, TokenView},
    backoff::Backoff,
    clock::epoch_ms,
    liveness::{self, Health, HeartbeatPolicy},
    metrics::{EventOutcome, StreamMetrics},
    platforms::{Adapter, Inbound, Rotation, SocketPlan},
    ws::{ConnectOptions, Frame, WsClient, WsError},
};

/// Everything a session needs.
pub struct SessionCtx {
    /// The stream's spec.
    pub spec: StreamSpec,
    /// This pod.
    pub pod: PodName,
    /// The platform dialect.
    pub adapter: Arc<dyn Adapter>,
    /// Hand-off to the app.
    pub hub: Arc<Hub>,
    /// Hot-path metrics.
    pub metrics: StreamMetrics,
    /// Reaped-socket counter (process-wide by reason).
    pub on_reaped: Arc<dyn Fn(DropReason) + Send + Sync>,
    /// Where events go.
    pub observer: Arc<dyn Observer>,
    /// Live status.
    pub status: StatusCell,
    /// REST client for adapters.
    pub http: reqwest::Client,
    /// Socket options and TLS.
    pub connect: ConnectOptions,
    /// The token manager's view.
    pub tokens: watch::Receiver<TokenView>,
    /// Asks the token manager for a new token.
    pub refresh_now: RefreshNow,
    /// Until when this pod may act on its lease. A session never (re)connects past it, and
    /// tears the socket down the moment it passes, before reading anything more: a pod frozen
    /// past its lease (another pod may own the stream now) must not deliver a single event.
    pub lease: watch::Receiver<Instant>,
}

/// How the connection ended, from inside the drive loop.
struct Ended {
    reason: DropReason,
    /// Reset (RST) rather than a polite close.
    abortive: bool,
    late_by: Option<Duration>,
    /// Reconnect without waiting (the platform announced the close).
    immediate: bool,
}

impl Ended {
    /// The socket is reset (RST); the next one follows a backoff.
    fn reset(reason: DropReason) -> Self {
        Self {
            reason,
            abortive: true,
            late_by: None,
            immediate: false,
        }
    }

    /// The socket is closed politely (its peer is alive).
    fn close(reason: DropReason) -> Self {
        Self {
            abortive: false,
            ..Self::reset(reason)
        }
    }
}

/// One socket and what the session knows about it.
struct Link {
    up: Upstream,
    /// The token the platform knows this socket by, and its generation.
    token: Arc<Token>,
    token_generation: u64,
}

/// A successor socket being opened for make-before-break rotation, with its token.
type Successor = oneshot::Receiver<Result<(WsClient, Arc<Token>, u64), String>>;

/// Runs the stream until `stop` carries a reason; returns that reason.
///
/// Not an `async fn`: one would keep `ctx` in its future twice (the argument and the session
/// made from it), about 800 bytes more for every stream.
pub fn run(
    ctx: SessionCtx,
    mut stop: watch::Receiver<Option<DropReason>>,
) -> impl std::future::Future<Output = DropReason> + Send {
    let mut s = Session::new(ctx);
    async move {
        let reason = s.run(&mut stop).await;
        s.set_state(StreamState::Stopped, Some(reason));
        reason
    }
}

struct Session {
    ctx: SessionCtx,
    state: StreamState,
    backoff: Backoff,
    /// The newest event id seen from upstream: where a reconnect resumes.
    last_seen: Option<EventId>,
    connections: u64,
    /// When the last socket dropped (epoch ms), for a `gap` if the next cannot replay.
    dropped_at_ms: Option<u64>,
}

impl Session {
    fn new(ctx: SessionCtx) -> Self {
        let backoff = Backoff::new(ctx.spec.reconnect.initial, ctx.spec.reconnect.max);
        let last_seen = ctx.hub.last_acked();
        Self {
            ctx,
            state: StreamState::Connecting,
            backoff,
            last_seen,
            connections: 0,
            dropped_at_ms: None,
        }
    }

    fn stream(&self) -> &StreamId {
        &self.ctx.spec.id
    }

    fn set_state(&mut self, to: StreamState, reason: Option<DropReason>) {
        if self.state == to {
            return;
        }
        let from = std::mem::replace(&mut self.state, to);
        self.ctx.metrics.state(to);
        self.ctx
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .state = to;
        self.ctx.hub.push_control(&ToApp::State {
            stream: &self.ctx.spec.id,
            state: to,
        });
        self.ctx
            .observer
            .observe(&self.ctx.spec.id, SessionEvent::State { from, to, reason });
    }

    fn status(&self) -> std::sync::MutexGuard<'_, StreamStatus> {
        self.ctx.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pause(&mut self) {
        if !self.ctx.hub.paused() {
            self.ctx.hub.push_control(&ToApp::Paused {
                stream: &self.ctx.spec.id,
                reason: "token_mismatch",
            });
        }
        self.set_state(StreamState::Paused, None);
    }

    fn resume(&mut self) {
        if self.ctx.hub.paused() {
            self.ctx.hub.push_control(&ToApp::Resumed {
                stream: &self.ctx.spec.id,
            });
        }
    }

    async fn run(&mut self, stop: &mut watch::Receiver<Option<DropReason>>) -> DropReason {
        loop {
            if let Some(reason) = *stop.borrow() {
                return reason;
            }
            let (token, generation) = match self.wait_for_token(stop).await {
                Ok(t) => t,
                Err(reason) => return reason,
            };
            if Instant::now() >= *self.ctx.lease.borrow_and_update() {
                // Past the lease (the store confirmed no renewal in time): connect only once
                // it confirms one again, at once then; the supervisor stops us if it was lost.
                self.set_state(StreamState::Backoff, None);
                tokio::select! {
                    changed = self.ctx.lease.changed() => {
                        if changed.is_err() {
                            let _ = stop.wait_for(Option::is_some).await;
                        }
                    }
                    _ = stop.changed() => {}
                }
                continue;
            }
            self.set_state(StreamState::Connecting, None);
            let opened = tokio::select! {
                r = self.open(&token) => r,
                _ = stop.changed() => continue,
            };
            let (ws, plan) = match opened {
                Ok(x) => x,
                Err(failure) => {
                    if failure.token_rejected {
                        self.ctx.refresh_now.request();
                    }
                    if let Some(reason) = self
                        .back_off(stop, failure.error, failure.retry_after)
                        .await
                    {
                        return reason;
                    }
                    continue;
                }
            };
            self.connections += 1;
            let id = self.next_connection_id();
            if let (Some(from), None, true) = (self.dropped_at_ms, &self.last_seen, plan.replays) {
                // Dropped before the first event: there is no id to resume after.
                self.ctx.metrics.gap();
                self.ctx.hub.push_control(&ToApp::Gap {
                    stream: &self.ctx.spec.id,
                    from,
                    to: epoch_ms(),
                    reason: "no event seen before the drop: nothing to resume after",
                });
            }
            if let (Some(from), false) = (self.dropped_at_ms, plan.replays) {
                let to = epoch_ms();
                self.ctx.metrics.gap();
                self.ctx.hub.push_control(&ToApp::Gap {
                    stream: &self.ctx.spec.id,
                    from,
                    to,
                    reason: "platform cannot replay events missed while reconnecting",
                });
            }
            let mut link = Link {
                up: Upstream::new(ws, self.policy(), self.ping_phase(), id.clone()),
                token: Arc::clone(&token),
                token_generation: generation,
            };
            {
                let mut st = self.status();
                st.connection = Some(id.clone());
                st.last_pong_ms = epoch_ms();
                st.retry_count = self.backoff.attempts();
                if self.connections > 1 {
                    st.reconnects += 1;
                }
            }
            self.ctx.observer.observe(
                &self.ctx.spec.id,
                SessionEvent::Connected {
                    connection: id,
                    attempts: self.backoff.attempts(),
                    resumed_after: self.last_seen.clone(),
                },
            );
            self.resume();
            self.set_state(StreamState::Active, None);

            let ended = self.drive(&mut link, stop).await;
            self.reap(link, &ended);
            if let Some(reason) = *stop.borrow() {
                return reason;
            }
            self.ctx.metrics.reconnect(ended.reason.as_str());
            // The lease ran out: the top of the loop waits for the store, not a backoff.
            if ended.immediate || ended.reason == DropReason::OwnerLost {
                continue;
            }
            let why = format!("connection dropped: {}", ended.reason);
            if let Some(reason) = self.back_off(stop, why, None).await {
                return reason;
            }
        }
    }

    /// `{pod}-{n}`, unique for the life of the process (sessions come and go with leases).
    fn next_connection_id(&self) -> ConnectionId {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ConnectionId(format!("{}-{n}", self.ctx.pod))
    }

    fn policy(&self) -> HeartbeatPolicy {
        self.ctx.spec.heartbeat.into()
    }

    /// The first ping goes out at a random point of the first interval, so thousands of
    /// sockets opened together do not ping together forever after.
    fn ping_phase(&self) -> Duration {
        static GRID_ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        let origin = *GRID_ORIGIN.get_or_init(Instant::now);
        liveness::ping_phase(
            origin,
            Instant::now(),
            self.ctx.spec.heartbeat.interval,
            rand::random::<f64>(),
        )
    }

    /// Waits until the token manager holds a valid token; paused meanwhile.
    async fn wait_for_token(
        &mut self,
        stop: &mut watch::Receiver<Option<DropReason>>,
    ) -> Result<(Arc<Token>, u64), DropReason> {
        loop {
            let view = self.ctx.tokens.borrow_and_update().clone();
            if let Some(token) = view.token.filter(|t| t.valid_at(Instant::now())) {
                return Ok((token, view.generation));
            }
            if self.connections > 0 {
                // Not at start-up: the app was streaming and now waits on a token.
                self.pause();
            }
            tokio::select! {
                r = self.ctx.tokens.changed() => {
                    if r.is_err() {
                        // The manager is gone: nothing will ever come; wait for stop.
                        let _ = stop.wait_for(Option::is_some).await;
                    }
                }
                _ = stop.changed() => {}
            }
            if let Some(reason) = *stop.borrow() {
                return Err(reason);
            }
        }
    }

    /// Plans and opens one socket.
    async fn open(&self, token: &Token) -> Result<(WsClient, SocketPlan), OpenFailure> {
        open_socket(
            self.ctx.adapter.as_ref(),
            &self.ctx.http,
            &self.ctx.connect,
            token,
            self.last_seen.as_ref(),
        )
        .await
    }

    /// Waits out a jittered backoff; returns a stop reason if stopped meanwhile.
    async fn back_off(
        &mut self,
        stop: &mut watch::Receiver<Option<DropReason>>,
        why: String,
        retry_after: Option<Duration>,
    ) -> Option<DropReason> {
        let delay = self.backoff.next_delay(rand::random::<f64>(), retry_after);
        self.status().retry_count = self.backoff.attempts();
        self.ctx.observer.observe(
            &self.ctx.spec.id,
            SessionEvent::ConnectFailed {
                error: why,
                retry_in: delay,
            },
        );
        self.set_state(StreamState::Backoff, None);
        tokio::select! {
            _ = tokio::time::sleep(delay) => None,
            r = stop.wait_for(Option::is_some) => r.ok().and_then(|r| *r),
        }
    }

    /// Drives one socket until it ends.
    async fn drive(
        &mut self,
        link: &mut Link,
        stop: &mut watch::Receiver<Option<DropReason>>,
    ) -> Ended {
        let rotation = self.ctx.adapter.rotation();
        let mut pending_refresh: Option<(u64, Arc<Token>)> = None;
        let mut tokens_open = true;
        let mut successor: Option<Successor> = None;
        let mut first_pong = true;
        loop {
            let adapter = Arc::clone(&self.ctx.adapter);
            let lease_until = *self.ctx.lease.borrow();
            tokio::select! {
                biased;
                // First: after a freeze the expired lease must win over buffered frames.
                _ = tokio::time::sleep_until(lease_until) => {
                    if Instant::now() >= *self.ctx.lease.borrow() {
                        tracing::warn!(stream = %self.stream(), "lease not confirmed in time (store unreachable, or this pod was frozen); terminating");
                        return Ended::reset(DropReason::OwnerLost);
                    }
                }
                tick = link.up.next(|seq| adapter.ping(seq)) => {
                    let now = Instant::now();
                    match tick {
                        Ok(Tick::Frame(frame)) => {
                            if let Some(ended) = self.on_frame(link, frame, now, &mut pending_refresh, &mut first_pong) {
                                if ended.immediate && rotation == Rotation::NewSocket && successor.is_none() {
                                    // Announced close on a token-bound socket: open the next one now.
                                    successor = Some(self.open_successor());
                                    continue;
                                }
                                return ended;
                            }
                        }
                        Ok(Tick::Pinged) => self.ctx.metrics.ping_sent(),
                        Ok(Tick::Degraded) => self.set_state(StreamState::Degraded, None),
                        Ok(Tick::Dead { late_by, .. }) => {
                            return Ended { late_by: Some(late_by), ..Ended::reset(DropReason::PongTimeout) };
                        }
                        Err(e) => return self.on_ws_error(e),
                    }
                }
                // The socket's token expired and no new one was accepted: hold events.
                _ = tokio::time::sleep_until(link.token.expires), if !self.ctx.hub.paused() => {
                    tracing::warn!(stream = %self.stream(), "the socket's token expired before a new one was accepted; forwarding paused");
                    self.pause();
                }
                changed = self.ctx.tokens.changed(), if tokens_open => {
                    if changed.is_err() {
                        // Manager gone (stream stopping): the stop signal follows.
                        tokens_open = false;
                        continue;
                    }
                    let view = self.ctx.tokens.borrow_and_update().clone();
                    match view.token {
                        // No valid token right now: the socket's own token may still be good;
                        // the expiry branch above pauses when it is not.
                        None => {}
                        Some(token) if view.generation != link.token_generation => match rotation {
                            Rotation::InStream => {
                                if let Some(frame) = self.ctx.adapter.refresh_frame(token.value.expose()) {
                                    link.up.ws_mut().queue_text(&frame);
                                    pending_refresh = Some((view.generation, token));
                                }
                            }
                            Rotation::PerMessage => {
                                link.token = token;
                                link.token_generation = view.generation;
                                self.token_ok(view.generation);
                            }
                            Rotation::NewSocket => {
                                if successor.is_none() {
                                    successor = Some(self.open_successor());
                                }
                            }
                        },
                        Some(_) => {}
                    }
                }
                next = async { match successor.as_mut() { Some(rx) => rx.await, None => std::future::pending().await } } => {
                    successor = None;
                    match next {
                        Ok(Ok((ws, token, generation))) => {
                            // Make-before-break: the new socket is up; retire the old politely.
                            self.connections += 1;
                            let id = self.next_connection_id();
                            let mut old = link.up.replace(ws, id, self.ping_phase());
                            old.queue_close(1000, "rotated");
                            tokio::spawn(async move {
                                let _ = tokio::time::timeout(Duration::from_secs(1), old.flush()).await;
                                old.reset();
                            });
                            link.token = token;
                            link.token_generation = generation;
                            self.token_ok(generation);
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(stream = %self.stream(), error = %e, "successor socket failed; keeping the current one");
                        }
                        Err(_) => {}
                    }
                }
                _ = stop.changed() => {
                    if let Some(reason) = *stop.borrow() {
                        // Another pod may stream it already: no goodbye that could race it.
                        return match reason {
                            DropReason::OwnerLost | DropReason::Preempted => Ended::reset(reason),
                            _ => Ended::close(reason),
                        };
                    }
                }
            }
        }
    }

    fn token_ok(&mut self, generation: u64) {
        self.resume();
        if self.state == StreamState::Paused {
            self.set_state(StreamState::Active, None);
        }
        self.ctx
            .observer
            .observe(&self.ctx.spec.id, SessionEvent::TokenRotated { generation });
    }

    /// Opens a successor socket in the background with the current token.
    fn open_successor(&self) -> Successor {
        let (tx, rx) = oneshot::channel();
        let view = self.ctx.tokens.borrow().clone();
        let adapter = Arc::clone(&self.ctx.adapter);
        let http = self.ctx.http.clone();
        let connect = self.ctx.connect.clone();
        let resume = self.last_seen.clone();
        tokio::spawn(async move {
            let result = async {
                let token = view.token.ok_or("no valid token")?;
                let (ws, _) =
                    open_socket(adapter.as_ref(), &http, &connect, &token, resume.as_ref())
                        .await
                        .map_err(|f| f.error)?;
                Ok::<_, String>((ws, token, view.generation))
            }
            .await;
            let _ = tx.send(result);
        });
        rx
    }

    /// Handles one inbound frame; returns how the connection ended, if it did.
    fn on_frame(
        &mut self,
        link: &mut Link,
        frame: Frame,
        now: Instant,
        pending_refresh: &mut Option<(u64, Arc<Token>)>,
        first_pong: &mut bool,
    ) -> Option<Ended> {
        let inbound = match frame {
            Frame::Text(text) => self.ctx.adapter.classify_text(&text),
            Frame::Pong(payload) => self.ctx.adapter.classify_pong(&payload),
            Frame::Ping(_) => Inbound::Heartbeat,
            Frame::Binary(b) => Inbound::Malformed(format!("binary frame of {} bytes", b.len())),
            Frame::Close(close) => {
                let (code, reason) = close.unwrap_or((1005, String::new()));
                tracing::info!(stream = %self.stream(), code, reason = %reason, "platform closed the socket");
                return Some(Ended::close(DropReason::ServerClose));
            }
        };
        self.status().last_pong_ms = epoch_ms();
        match inbound {
            Inbound::Event { id, data } => {
                let outcome = match self.ctx.hub.push_event(&id, &data, epoch_ms()) {
                    Push::Queued => EventOutcome::Delivered,
                    Push::Duplicate => EventOutcome::DuplicateSuppressed,
                };
                self.ctx.metrics.event(outcome);
                self.last_seen = Some(id);
            }
            Inbound::Pong { seq } => {
                let out = link.up.liveness_mut().on_pong(now, seq);
                if let Some(rtt) = out.rtt {
                    self.ctx.metrics.pong(rtt);
                    self.status().rtt = link.up.liveness().srtt();
                }
                if *first_pong {
                    // The socket answered: the outage is over, start backoff from the bottom.
                    *first_pong = false;
                    self.backoff.reset();
                    self.status().retry_count = 0;
                }
                match out.changed {
                    Some(Health::Degraded) => self.set_state(StreamState::Degraded, None),
                    Some(Health::Active) if self.state == StreamState::Degraded => {
                        self.set_state(StreamState::Active, None)
                    }
                    _ => {}
                }
            }
            Inbound::Heartbeat | Inbound::Ignored => {}
            Inbound::TokenAccepted => {
                if let Some((generation, token)) = pending_refresh.take() {
                    link.token = token;
                    link.token_generation = generation;
                    self.token_ok(generation);
                }
            }
            Inbound::TokenRefused(why) => {
                tracing::warn!(stream = %self.stream(), reason = %why, "platform refused the new token in-stream; asking for another");
                pending_refresh.take();
                self.ctx.refresh_now.request();
            }
            Inbound::Closing(why) => {
                tracing::info!(stream = %self.stream(), reason = %why, "platform announced a close; reconnecting now");
                return Some(Ended {
                    immediate: true,
                    ..Ended::close(DropReason::ServerClose)
                });
            }
            Inbound::RateLimited(after) => {
                tracing::warn!(stream = %self.stream(), retry_after = ?after, "platform rate limited the socket");
            }
            Inbound::Malformed(what) => {
                tracing::warn!(stream = %self.stream(), connection = %link.up.id(), problem = %what, "skipped an upstream frame");
                self.ctx
                    .observer
                    .observe(&self.ctx.spec.id, SessionEvent::Malformed { what });
            }
        }
        None
    }

    fn on_ws_error(&self, e: WsError) -> Ended {
        if let WsError::Protocol { code, reason } = &e {
            tracing::warn!(stream = %self.stream(), code, problem = %reason, "upstream broke the WebSocket protocol; reconnecting");
            // The client queued a close with the error's code (RFC 6455 §7.1.7): send it.
            return Ended::close(DropReason::TcpError);
        }
        tracing::info!(stream = %self.stream(), error = %e, "upstream socket failed");
        Ended::reset(DropReason::TcpError)
    }

    /// Terminates the socket and tells everyone.
    fn reap(&mut self, link: Link, ended: &Ended) {
        let id = link.up.id().clone();
        let silent_for =
            Instant::now().saturating_duration_since(link.up.liveness().last_inbound());
        let ws = link.up.into_ws();
        if ended.abortive {
            ws.reset();
        } else {
            let code = if ended.reason == DropReason::Shutdown {
                1001
            } else {
                1000
            };
            // Best effort, bounded: a polite close must never wait on a dead peer.
            let reason = ended.reason.as_str();
            tokio::spawn(ws.close(code, reason, Duration::from_millis(500)));
        }
        (self.ctx.on_reaped)(ended.reason);
        let pending_bytes = self.ctx.hub.pending_bytes();
        let last_acked = self.ctx.hub.last_acked();
        let at = epoch_ms();
        self.dropped_at_ms = Some(at);
        self.ctx.hub.push_control(&ToApp::Dropped {
            stream: &self.ctx.spec.id,
            connection_id: &id,
            reason: ended.reason,
            pending_bytes,
            last_acked_id: last_acked.as_ref(),
            at,
        });
        self.status().last_drop = Some(ended.reason);
        self.ctx.observer.observe(
            &self.ctx.spec.id,
            SessionEvent::Dropped {
                connection: id,
                reason: ended.reason,
                late_by: ended.late_by,
                silent_for,
                pending_bytes,
            },
        );
        self.set_state(StreamState::Dead, Some(ended.reason));
    }
}
