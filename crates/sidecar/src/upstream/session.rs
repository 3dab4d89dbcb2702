//! One stream's upstream session: token, connect, heartbeat, reap, reconnect with jitter,
//! resume or `gap`, rate-limit backoff and token rotation, for any platform [`Adapter`].
//!
//! One task drives everything for the stream: the reads of its sockets (cancel-safe), their
//! liveness deadlines, token changes, a successor's opening and the stop signal, in one
//! `select!`. Events go into the [`Hub`] without waiting, so a slow app never delays pong
//! handling. A dead connection is reaped with a TCP reset; every reap tells the app
//! (`dropped`), the runtime ([`SessionEvent`]) and the metrics. The rotation of token-bound
//! sockets is in `rotate.rs`.

use std::{num::NonZeroU64, sync::Arc, time::Duration};

use streamkeeper_api::{
    ConnectionId, DropReason, EventId, PodName, StreamId, StreamSpec, StreamState, ToApp,
};
use tokio::{sync::watch, time::Instant};

use super::{
    Observer, Rtt, SessionEvent, StatusCell, StreamStatus,
    connect::{OpenFailure, Opener},
    gate::RateGate,
    link::{self, Link, Next},
    monitor::Tick,
    overlap::Side,
    rotate::Rotating,
};
use crate::{
    app::hub::{Hub, Push},
    auth::{ClientBudget, RefreshNow, Token, TokenView},
    backoff::Backoff,
    clock::epoch_ms,
    liveness::{self, Health},
    metrics::{EventOutcome, StreamMetrics},
    net::ProxyPolicy,
    platforms::{Adapter, Inbound, Rotation},
    signal,
    ws::{ConnectOptions, Frame, WsError},
};

thread_local! {
    /// The classified messages of the frame being handled, reused across frames and streams
    /// (taken and put back with no await between). Kept per session, its room (four messages,
    /// 160 bytes after the first pong) stayed with every idle stream.
    static INBOUND: std::cell::Cell<Vec<Inbound>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Everything a session needs.
pub struct SessionCtx {
    /// The stream's spec, shared with the pod's map and the supervisor.
    pub spec: Arc<StreamSpec>,
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
    /// REST client for adapters (the stream's trust and the pod's proxy decision).
    pub http: reqwest::Client,
    /// Socket options and TLS.
    pub connect: Arc<ConnectOptions>,
    /// The pod's proxy decision, for the sockets (the REST client asks the same one).
    pub proxy: ProxyPolicy,
    /// The token manager's view (shared by every stream on the credential).
    pub tokens: watch::Receiver<TokenView>,
    /// Tells the token manager a token was refused.
    pub refresh_now: RefreshNow,
    /// The credential's share of the platform's limits (Genesys channels and requests).
    pub budget: Arc<ClientBudget>,
    /// Until when this pod may act on its lease. A session never (re)connects past it, and
    /// tears the socket down the moment it passes, before reading anything more: a pod frozen
    /// past its lease (another pod may own the stream now) must not deliver a single event.
    pub lease: signal::Receiver<Instant>,
}

/// How the connection ended, from inside the drive loop.
pub(super) struct Ended {
    pub(super) reason: DropReason,
    /// Reset (RST) rather than a polite close.
    pub(super) abortive: bool,
    pub(super) late_by: Option<Duration>,
    /// Reconnect without waiting (the platform announced the close).
    pub(super) immediate: bool,
}

impl Ended {
    /// The socket is reset (RST); the next one follows a backoff.
    pub(super) fn reset(reason: DropReason) -> Self {
        Self {
            reason,
            abortive: true,
            late_by: None,
            immediate: false,
        }
    }

    /// The socket is closed politely (its peer is alive).
    pub(super) fn close(reason: DropReason) -> Self {
        Self {
            abortive: false,
            ..Self::reset(reason)
        }
    }
}

/// An epoch time in ms as a drop time: the epoch itself (a clock that failed) counts as 1 ms.
fn at_least_one_ms(ms: u64) -> NonZeroU64 {
    NonZeroU64::new(ms).unwrap_or(NonZeroU64::MIN)
}

/// What the drive loop does after a step.
pub(super) enum Step {
    /// Keep driving.
    Continue,
    /// The connection is over.
    Ended(Ended),
}

/// Runs the stream until `stop` carries a reason; returns that reason. `gap_from` is when the
/// stream was last heard before this session (epoch ms): on a platform that cannot replay (a
/// takeover), the app gets a `gap` from then to the first socket.
///
/// Not an `async fn`: one would keep `ctx` in its future twice (the argument and the session
/// made from it), about 800 bytes more for every stream.
pub fn run(
    ctx: SessionCtx,
    gap_from: Option<u64>,
    stop: signal::Receiver<Option<DropReason>>,
) -> impl std::future::Future<Output = DropReason> + Send {
    Session::new(ctx, gap_from).run(stop)
}

pub(super) struct Session {
    pub(super) ctx: SessionCtx,
    state: StreamState,
    backoff: Backoff,
    /// The newest event id seen from upstream: where a reconnect resumes.
    pub(super) last_seen: Option<EventId>,
    /// Connections opened (or being opened), saturating: only none, one or more matters, and a
    /// byte keeps the session within 240 bytes (its future, alive as long as the stream, then
    /// fits jemalloc's 896-byte class rather than the 1 KiB one).
    connections: u8,
    /// When the stream stopped being heard (epoch ms), for a `gap` if the next socket cannot
    /// replay. Never 0 (the epoch itself): half the size of an `Option<u64>`.
    dropped_at_ms: Option<NonZeroU64>,
    /// The platform's rate-limit backoff: no request or socket before it opens.
    pub(super) gate: RateGate,
}

impl Session {
    fn new(ctx: SessionCtx, gap_from: Option<u64>) -> Self {
        let last_seen = ctx.hub.last_acked();
        let dropped_at_ms = gap_from
            .filter(|_| !ctx.adapter.replays())
            .map(at_least_one_ms);
        Self {
            ctx,
            state: StreamState::Connecting,
            backoff: Backoff::default(),
            last_seen,
            connections: 0,
            dropped_at_ms,
            gate: RateGate::default(),
        }
    }

    /// What opening a link needs, from the context: made per opening (a few `Arc` clones)
    /// rather than kept in the session, which lives as long as the stream.
    pub(super) fn opener(&self) -> Opener {
        Opener {
            adapter: Arc::clone(&self.ctx.adapter),
            http: self.ctx.http.clone(),
            connect: Arc::clone(&self.ctx.connect),
            proxy: self.ctx.proxy.clone(),
            budget: Arc::clone(&self.ctx.budget),
            policy: self.ctx.spec.heartbeat.into(),
        }
    }

    pub(super) fn stream(&self) -> &StreamId {
        &self.ctx.spec.id
    }

    pub(super) fn set_state(&mut self, to: StreamState, reason: Option<DropReason>) {
        if self.state == to {
            return;
        }
        let from = std::mem::replace(&mut self.state, to);
        self.ctx.metrics.state(to);
        self.status().state = to;
        self.ctx.hub.push_control(&ToApp::State {
            stream: &self.ctx.spec.id,
            state: to,
        });
        self.ctx
            .observer
            .observe(&self.ctx.spec.id, SessionEvent::State { from, to, reason });
    }

    pub(super) fn status(&self) -> std::sync::MutexGuard<'_, StreamStatus> {
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

    /// A `gap` from `from` to now, when the platform cannot replay what was missed.
    pub(super) fn gap(&mut self, from: u64, reason: &str) {
        let to = epoch_ms();
        self.ctx.metrics.gap();
        self.ctx.hub.push_control(&ToApp::Gap {
            stream: &self.ctx.spec.id,
            from: from.min(to),
            to,
            reason,
        });
    }

    /// The session's life, owning it and its stop: a future that borrowed them would keep two
    /// references beside them for as long as the stream runs.
    // Not `async fn`s, `run` and `drive`: one keeps each argument in its future twice (Clippy
    // would have them `async fn`s again).
    #[allow(clippy::manual_async_fn)]
    fn run(
        mut self,
        mut stop: signal::Receiver<Option<DropReason>>,
    ) -> impl std::future::Future<Output = DropReason> + Send {
        async move {
            let reason = loop {
                if let Some(reason) = *stop.borrow() {
                    break reason;
                }
                // The lease and the platform's gate are waited out before the token, so that no
                // token is kept across those waits: a value kept across two waits has a place of
                // its own in this future, which lives as long as the stream.
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
                if let Some(open_at) = self.gate.closed_until(Instant::now()) {
                    // The platform asked us to slow down: not a request, not a socket, before then.
                    self.set_state(StreamState::Backoff, None);
                    tokio::select! {
                        _ = tokio::time::sleep_until(open_at) => {}
                        r = stop.wait_for(Option::is_some) => {
                            if let Some(reason) = r.ok().flatten() { break reason; }
                        }
                    }
                    continue;
                }
                let (token, generation) = match Box::pin(self.wait_for_token(&mut stop)).await {
                    Ok(t) => t,
                    Err(reason) => break reason,
                };
                // The wait for a token may have been long: the lease or the gate is waited out at
                // the top.
                if Instant::now() >= *self.ctx.lease.borrow()
                    || self.gate.closed_until(Instant::now()).is_some()
                {
                    continue;
                }
                // Opening, failing and backing off happen once per connection: boxed, so that the
                // session's future (alive as long as the stream) is sized for `drive` alone.
                self.set_state(StreamState::Connecting, None);
                self.connections = self.connections.saturating_add(1);
                // Matched where it is awaited: a binding of the result would stay in this future
                // beside the link taken out of it, as would the token and the id.
                let mut link = match tokio::select! {
                    r = Box::pin(self.opener().open(token, generation, self.last_seen.as_ref(), self.next_connection_id(), || self.ping_phase())) => r,
                    _ = stop.changed() => continue,
                } {
                    Ok(link) => link,
                    Err(failure) => {
                        self.connections = self.connections.saturating_sub(1);
                        if let Some(reason) =
                            Box::pin(self.open_failed(&mut stop, failure, generation)).await
                        {
                            break reason;
                        }
                        continue;
                    }
                };
                self.on_connected(&link);
                // In a block: `ended` is borrowed, and a borrowed local would stay in this future
                // to the end of the loop's body, across the backoff's wait, in a place of its own.
                let (reason, immediate) = {
                    let ended = self.drive(&mut link, &mut stop).await;
                    self.reap(link, &ended);
                    (ended.reason, ended.immediate)
                };
                if let Some(reason) = *stop.borrow() {
                    break reason;
                }
                self.ctx.metrics.reconnect(reason.as_str());
                // The lease ran out: the top of the loop waits for the store, not a backoff.
                if immediate || reason == DropReason::OwnerLost {
                    continue;
                }
                let why = format!("connection dropped: {reason}");
                if let Some(reason) = Box::pin(self.back_off(&mut stop, why)).await {
                    break reason;
                }
            };
            self.set_state(StreamState::Stopped, Some(reason));
            reason
        }
    }

    /// A connect attempt failed: tell the token manager about a refused token, close the gate
    /// on a rate limit, and wait out the backoff.
    async fn open_failed(
        &mut self,
        stop: &mut signal::Receiver<Option<DropReason>>,
        failure: OpenFailure,
        generation: u64,
    ) -> Option<DropReason> {
        if failure.token_rejected {
            self.ctx.refresh_now.refused(generation);
        }
        if let Some(limit) = failure.retry_after {
            let wait = self.gate.hit(limit, Instant::now());
            tracing::warn!(stream = %self.stream(), wait_ms = wait.as_millis() as u64, "rate limited by the platform; no request before the wait ends");
        }
        self.back_off(stop, failure.error).await
    }

    /// A link is up: the `gap` a platform without replay owes the app, status, events.
    fn on_connected(&mut self, link: &Link) {
        let replays = self.ctx.adapter.replays();
        if let Some(from) = self.dropped_at_ms.take().map(NonZeroU64::get) {
            if !replays {
                self.gap(
                    from,
                    "platform cannot replay events missed while reconnecting",
                );
            } else if self.last_seen.is_none() {
                // Dropped before the first event: there is no id to resume after.
                self.gap(
                    from,
                    "no event seen before the drop: nothing to resume after",
                );
            }
        }
        {
            let mut st = self.status();
            st.connection = Some(link.id.clone());
            st.last_pong_ms = epoch_ms();
            st.retry_count = self.backoff.attempts();
            st.last_error = None;
            if self.connections > 1 {
                st.reconnects = st.reconnects.saturating_add(1);
            }
        }
        self.ctx.observer.observe(
            &self.ctx.spec.id,
            SessionEvent::Connected {
                connection: link.id.clone(),
                attempts: self.backoff.attempts(),
                resumed_after: self.last_seen.clone(),
            },
        );
        self.resume();
        self.set_state(StreamState::Active, None);
    }

    /// `{pod}-{n}`, unique for the life of the process (sessions come and go with leases).
    pub(super) fn next_connection_id(&self) -> ConnectionId {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ConnectionId(format!("{}-{n}", self.ctx.pod).into())
    }

    /// The first ping goes out at a random point of the first interval, so thousands of
    /// sockets opened together do not ping together forever after.
    pub(super) fn ping_phase(&self) -> Duration {
        ping_phase(self.ctx.spec.heartbeat.interval)
    }

    /// Waits until the token manager holds a valid token; paused meanwhile.
    async fn wait_for_token(
        &mut self,
        stop: &mut signal::Receiver<Option<DropReason>>,
    ) -> Result<(Arc<Token>, u64), DropReason> {
        loop {
            let view = self.ctx.tokens.borrow_and_update().clone();
            if let Some(token) = view.token.filter(|t| t.valid_at(Instant::now())) {
                return Ok((token, view.generation));
            }
            if let Some(error) = view.error {
                self.status().last_error = Some(format!("no token: {error}").into());
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

    /// Waits out a jittered backoff (never shorter than the rate-limit gate); returns a stop
    /// reason if stopped meanwhile.
    async fn back_off(
        &mut self,
        stop: &mut signal::Receiver<Option<DropReason>>,
        why: String,
    ) -> Option<DropReason> {
        let now = Instant::now();
        let floor = self
            .gate
            .closed_until(now)
            .map(|at| at.saturating_duration_since(now));
        let delay = self.backoff.next_delay(
            (&self.ctx.spec.reconnect).into(),
            rand::random::<f64>(),
            floor,
        );
        {
            let mut st = self.status();
            st.retry_count = self.backoff.attempts();
            st.last_error = Some(why.as_str().into());
        }
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
            r = stop.wait_for(Option::is_some) => r.ok().flatten(),
        }
    }

    /// Drives one link (and its successor during a rotation) until it ends.
    #[allow(clippy::manual_async_fn)]
    fn drive<'a>(
        &'a mut self,
        link: &'a mut Link,
        stop: &'a mut signal::Receiver<Option<DropReason>>,
    ) -> impl std::future::Future<Output = Ended> + Send + 'a {
        async move {
            let mut r = Rotating::new();
            let mut tokens_open = true;
            let mut first_pong = true;
            loop {
                r.settle();
                let lease_until = *self.ctx.lease.borrow();
                // One timer for the lease, the token's expiry and rotation work, and it rides on
                // the socket's liveness timer (`Tick::Due`): a `Sleep` is 112 bytes of this future,
                // which lives as long as the stream.
                let timer = [self.token_expiry(link), r.next_wake(self, link)]
                    .into_iter()
                    .flatten()
                    .fold(lease_until, Instant::min);
                let (successor, opening_rx) = r.waits();
                let opening = opening_rx.is_some();
                tokio::select! {
                    biased;
                    next = link::next(link, successor, timer) => {
                        let now = Instant::now();
                        // First: after a freeze the expired lease wins over buffered frames.
                        if now >= *self.ctx.lease.borrow() {
                            tracing::warn!(stream = %self.stream(), "lease not confirmed in time (store unreachable, or this pod was frozen); terminating");
                            r.abandon();
                            return Ended::reset(DropReason::OwnerLost);
                        }
                        if !matches!(next.tick, Ok(Tick::Due)) {
                            if let Step::Ended(ended) = self.on_next(link, &mut r, next, &mut first_pong) {
                                r.abandon();
                                return ended;
                            }
                            continue;
                        }
                        // Both looked at again rather than kept across the wait (32 bytes of this
                        // future): only this loop changes what they are made of.
                        // The socket's token expired and no new one was accepted: hold events.
                        if self.token_expiry(link).is_some_and(|t| now >= t) {
                            tracing::warn!(stream = %self.stream(), "the socket's token expired before a new one was accepted; forwarding paused");
                            self.pause();
                        }
                        if r.next_wake(self, link).is_some_and(|t| now >= t) {
                            self.on_wake(link, &mut r);
                        }
                    }
                    changed = self.ctx.tokens.changed(), if tokens_open => {
                        if changed.is_err() {
                            // Manager gone (stream stopping): the stop signal follows.
                            tokens_open = false;
                            continue;
                        }
                        let view = self.ctx.tokens.borrow_and_update().clone();
                        self.on_token(link, &mut r, view);
                    }
                    opened = Rotating::opened(opening_rx), if opening => {
                        self.on_successor_opened(link, &mut r, opened);
                    }
                    _ = stop.changed() => {
                        if let Some(reason) = *stop.borrow() {
                            r.abandon();
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
    }

    /// When the socket's token expires, while events flow (a paused stream forwards none).
    fn token_expiry(&self, link: &Link) -> Option<Instant> {
        Some(link.token.expires).filter(|_| !self.ctx.hub.paused())
    }

    /// A new token from the manager: how it reaches the platform depends on the platform.
    fn on_token(&mut self, link: &mut Link, r: &mut Rotating, view: TokenView) {
        // No valid token right now: the socket's own token may still be good; the expiry
        // branch pauses when it is not.
        let Some(token) = view.token else { return };
        if view.generation == link.generation {
            return;
        }
        match self.ctx.adapter.rotation() {
            Rotation::InStream => r.refresh_in_stream(self, link, view.generation, token),
            Rotation::PerMessage => {
                // Every later message carries the new token: nothing to send for the rotation.
                let refused = r.take_refused();
                link.token = Arc::clone(&token);
                link.generation = view.generation;
                for i in refused {
                    // That socket's setup was refused: set it up again with the new token.
                    let Some(s) = link.sockets.get_mut(i) else {
                        continue;
                    };
                    if !s.ready {
                        for f in s.conn.greeting(token.value.expose()) {
                            s.up.ws_mut().queue_text(&f);
                        }
                    }
                }
                self.token_ok(view.generation);
            }
            Rotation::NewSocket => r.want_successor(self, "token rotation"),
        }
    }

    /// The token now in use was accepted.
    pub(super) fn token_ok(&mut self, generation: u64) {
        self.resume();
        if self.state == StreamState::Paused {
            self.set_state(StreamState::Active, None);
        }
        self.ctx
            .observer
            .observe(&self.ctx.spec.id, SessionEvent::TokenRotated { generation });
    }

    /// One wait's result: a frame, a ping, a liveness change or a failure on some socket.
    fn on_next(
        &mut self,
        link: &mut Link,
        r: &mut Rotating,
        next: Next,
        first_pong: &mut bool,
    ) -> Step {
        let Next { side, socket, tick } = next;
        let now = Instant::now();
        match tick {
            Ok(Tick::Frame(frame)) => self.on_frame(link, r, side, socket, frame, now, first_pong),
            Ok(Tick::Pinged) => {
                self.ctx.metrics.ping_sent();
                let max_missed = self.ctx.adapter.max_missed_pongs();
                let Some(s) = r.socket_mut(link, side, socket) else {
                    return Step::Continue;
                };
                s.pings_since_pong += 1;
                if max_missed.is_some_and(|n| s.pings_since_pong > n) {
                    tracing::warn!(stream = %self.stream(), missed = s.pings_since_pong - 1, "pongs missed: the platform's limit is reached");
                    return self.socket_ended(link, r, side, Ended::reset(DropReason::PongTimeout));
                }
                Step::Continue
            }
            Ok(Tick::Degraded) => {
                if side == Side::Old {
                    self.set_state(StreamState::Degraded, None);
                }
                Step::Continue
            }
            // The drive loop's own timer: handled there.
            Ok(Tick::Due) => Step::Continue,
            Ok(Tick::Dead { late_by, .. }) => {
                let ended = Ended {
                    late_by: Some(late_by),
                    ..Ended::reset(DropReason::PongTimeout)
                };
                self.socket_ended(link, r, side, ended)
            }
            Err(e) => {
                let ended = self.on_ws_error(e);
                self.socket_ended(link, r, side, ended)
            }
        }
    }

    /// A socket of the current link (or of the successor) is over.
    fn socket_ended(
        &mut self,
        link: &mut Link,
        r: &mut Rotating,
        side: Side,
        ended: Ended,
    ) -> Step {
        match side {
            Side::New => {
                tracing::warn!(stream = %self.stream(), reason = %ended.reason, "successor socket failed during the overlap; keeping the current one");
                r.successor_lost(self);
                Step::Continue
            }
            Side::Old if r.successor().is_some() => {
                // The successor is open: it takes over now. A reset may have lost what was in
                // flight on the old socket before the handover was proven.
                let lost_from = (ended.abortive && !r.confirmed()).then(|| {
                    epoch_ms().saturating_sub(
                        link.sockets
                            .iter()
                            .map(|s| {
                                Instant::now()
                                    .saturating_duration_since(s.up.liveness().last_inbound())
                            })
                            .max()
                            .unwrap_or_default()
                            .as_millis() as u64,
                    )
                });
                r.promote(self, link, lost_from);
                Step::Continue
            }
            Side::Old => Step::Ended(ended),
        }
    }

    /// Handles one inbound frame on socket `i` of `side`.
    #[allow(clippy::too_many_arguments)]
    fn on_frame(
        &mut self,
        link: &mut Link,
        r: &mut Rotating,
        side: Side,
        i: usize,
        frame: Frame,
        now: Instant,
        first_pong: &mut bool,
    ) -> Step {
        let mut inbound = INBOUND.take();
        {
            let Some(s) = r.socket_mut(link, side, i) else {
                return Step::Continue;
            };
            match frame {
                Frame::Text(text) => s.conn.classify_text(&text, &mut inbound),
                Frame::Pong(payload) => inbound.push(s.conn.classify_pong(&payload)),
                Frame::Ping(_) => inbound.push(Inbound::Heartbeat),
                Frame::Binary(b) => inbound.push(Inbound::Malformed(format!(
                    "binary frame of {} bytes",
                    b.len()
                ))),
                Frame::Close(close) => {
                    let (code, reason) = close.unwrap_or((1005, String::new()));
                    tracing::info!(stream = %self.stream(), code, reason = %reason, "platform closed the socket");
                    INBOUND.set(inbound);
                    let ended = Ended {
                        // Going away (maintenance, often unannounced): the next socket at once.
                        immediate: code == 1001,
                        ..Ended::close(DropReason::ServerClose)
                    };
                    return self.socket_ended(link, r, side, ended);
                }
            }
        }
        self.status().last_pong_ms = epoch_ms();
        let mut step = Step::Continue;
        for msg in inbound.drain(..) {
            step = self.on_inbound(link, r, side, i, msg, now, first_pong);
            if matches!(step, Step::Ended(_)) {
                break;
            }
        }
        inbound.clear();
        INBOUND.set(inbound);
        if matches!(step, Step::Continue) && r.handover_proven() {
            r.promote(self, link, None);
        }
        step
    }

    #[allow(clippy::too_many_arguments)]
    fn on_inbound(
        &mut self,
        link: &mut Link,
        r: &mut Rotating,
        side: Side,
        i: usize,
        msg: Inbound,
        now: Instant,
        first_pong: &mut bool,
    ) -> Step {
        match msg {
            Inbound::Event { id, data } => {
                let outcome = match self.ctx.hub.push_event(&id, &data, epoch_ms()) {
                    Push::Queued => EventOutcome::Delivered,
                    Push::Duplicate => EventOutcome::DuplicateSuppressed,
                };
                self.ctx.metrics.event(outcome);
                r.saw(side, &id);
                self.last_seen = Some(id);
            }
            Inbound::Pong { seq } => {
                let Some(s) = r.socket_mut(link, side, i) else {
                    return Step::Continue;
                };
                s.pings_since_pong = 0;
                let out = s.up.liveness_mut().on_pong(now, seq);
                let srtt = s.up.liveness().srtt();
                if side == Side::New {
                    return Step::Continue;
                }
                if let Some(rtt) = out.rtt {
                    self.ctx.metrics.pong(rtt);
                    self.status().rtt = srtt.map(Rtt::new);
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
            Inbound::Ready => {
                self.gate.passed();
                if let Some(s) = r.socket_mut(link, side, i) {
                    s.ready = true;
                }
            }
            Inbound::Proceed => {
                let token = match side {
                    Side::Old => Arc::clone(&link.token),
                    Side::New => match r.successor() {
                        Some(l) => Arc::clone(&l.token),
                        None => return Step::Continue,
                    },
                };
                if let Some(s) = r.socket_mut(link, side, i) {
                    for f in s.conn.proceed(token.value.expose()) {
                        s.up.ws_mut().queue_text(&f);
                    }
                }
            }
            Inbound::TokenAccepted => {
                if side == Side::Old
                    && let Some((generation, token)) = r.take_pending_refresh()
                {
                    link.token = token;
                    link.generation = generation;
                    self.token_ok(generation);
                }
            }
            Inbound::TokenRefused(why) => {
                tracing::warn!(stream = %self.stream(), reason = %why, "platform refused a token; asking for another");
                let refused = match (side, r.take_pending_refresh()) {
                    (Side::Old, Some((generation, _))) => generation,
                    (Side::Old, None) => {
                        r.refuse(i);
                        link.generation
                    }
                    (Side::New, _) => r.successor().map_or(0, |l| l.generation),
                };
                self.ctx.refresh_now.refused(refused);
            }
            Inbound::Closing(why) => {
                if self.ctx.adapter.rotation() == Rotation::NewSocket {
                    if side == Side::Old {
                        tracing::info!(stream = %self.stream(), reason = %why, "platform announced a close; opening the next socket first");
                        r.want_successor(self, "announced close");
                    } else {
                        r.successor_lost(self);
                    }
                    return Step::Continue;
                }
                tracing::info!(stream = %self.stream(), reason = %why, "platform announced a close; reconnecting now");
                return Step::Ended(Ended {
                    immediate: true,
                    ..Ended::close(DropReason::ServerClose)
                });
            }
            Inbound::RateLimited(limit) => {
                let wait = self.gate.hit(limit, now);
                tracing::warn!(stream = %self.stream(), wait_ms = wait.as_millis() as u64, "platform rate limited the socket; no request before the wait ends");
                r.resend_after_gate(self, link, side, i);
            }
            Inbound::Malformed(what) => {
                tracing::warn!(stream = %self.stream(), connection = %link.id, problem = %what, "skipped an upstream frame");
                self.ctx
                    .observer
                    .observe(&self.ctx.spec.id, SessionEvent::Malformed { what });
            }
        }
        Step::Continue
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

    /// Terminates the link's sockets and tells everyone.
    fn reap(&mut self, link: Link, ended: &Ended) {
        let now = Instant::now();
        let silent_for = link
            .sockets
            .iter()
            .map(|s| now.saturating_duration_since(s.up.liveness().last_inbound()))
            .min()
            .unwrap_or_default();
        for s in link.sockets {
            let ws = s.up.into_ws();
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
        }
        (self.ctx.on_reaped)(ended.reason);
        let pending_bytes = self.ctx.hub.pending_bytes();
        let last_acked = self.ctx.hub.last_acked();
        let at = epoch_ms();
        // The outage started when the stream was last heard, not when it was noticed.
        let heard = at.saturating_sub(silent_for.as_millis() as u64);
        let heard = at_least_one_ms(heard);
        self.dropped_at_ms = Some(self.dropped_at_ms.map_or(heard, |d| d.min(heard)));
        self.ctx.hub.push_control(&ToApp::Dropped {
            stream: &self.ctx.spec.id,
            connection_id: &link.id,
            reason: ended.reason,
            pending_bytes,
            last_acked_id: last_acked.as_ref(),
            at,
        });
        self.status().last_drop = Some(ended.reason);
        self.ctx.observer.observe(
            &self.ctx.spec.id,
            SessionEvent::Dropped {
                connection: link.id,
                reason: ended.reason,
                late_by: ended.late_by,
                silent_for,
                pending_bytes,
            },
        );
        self.set_state(StreamState::Dead, Some(ended.reason));
    }
}

/// A first-ping delay on the process-wide grid (see [`liveness::ping_phase`]).
pub(super) fn ping_phase(interval: Duration) -> Duration {
    static GRID_ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let origin = *GRID_ORIGIN.get_or_init(Instant::now);
    liveness::ping_phase(origin, Instant::now(), interval, rand::random::<f64>())
}
