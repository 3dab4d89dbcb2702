//! One stream's supervisor: claim the lease, resume from the store's checkpoint, take a tenant
//! pool slot, run the session with its token manager, hold the app's events while the lease is
//! not certain, batch acks into checkpoints under the fence, and hand over on stop.

use std::{
    sync::{Arc, PoisonError},
    task::Poll,
    time::Duration,
};

use futures_util::FutureExt as _;
use streamkeeper_api::{DropReason, EventId, Fence, StreamSpec, StreamState, ToApp};
use streamkeeper_coord::StreamKey;
use tokio::time::Instant;

use super::{Pod, observer::StreamObserver};
use crate::{
    app::Hub,
    auth::{CredentialFiles, TokenLease},
    net::{self, Route},
    ownership::Claim,
    platforms::Adapter,
    signal,
    upstream::{self, SessionCtx, StatusCell, read_status, set_owner},
};

/// How long a stopping stream waits for its app to ack what it was handed before the lease
/// goes to another pod (which would deliver those events again).
const HANDOVER_ACK_GRACE: Duration = Duration::from_millis(500);

impl Pod {
    /// One stream's whole life. Every step awaited once per claim (the claim, the checkpoint
    /// read, the pool wait, the token, the handover) is boxed: inline, each would be a variant
    /// of this future's state, which is as large as its largest variant and lives as long as
    /// the stream, though the stream spends its life in the session loop.
    ///
    /// Not an `async fn`: one keeps each argument in its future twice (as the argument and as
    /// the local it is moved into), 72 bytes more for every stream.
    ///
    /// At 256 bytes this future makes a task of 384 with tokio's header and trailer (a size
    /// class of jemalloc's); past 280 bytes kept across the session's wait it would be 512.
    // Clippy would have it an `async fn` again: the doc line above says why not.
    #[allow(clippy::too_many_arguments, clippy::manual_async_fn)]
    pub(super) fn stream_task(
        self: Arc<Self>,
        spec: Arc<StreamSpec>,
        adapter: Arc<dyn Adapter>,
        hub: Arc<Hub>,
        status: StatusCell,
        mut stop: signal::Receiver<Option<DropReason>>,
    ) -> impl std::future::Future<Output = ()> + Send {
        async move {
            let metrics = self.metrics.stream(&spec.id, &spec.tenant);
            metrics.state(StreamState::Stopped);
            if !Box::pin(self.paced_start(&mut stop)).await {
                return;
            }
            let route = match Box::pin(self.route(&spec)).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(stream = %spec.id, error = %e, "TLS or proxy settings unusable; stream not started");
                    return;
                }
            };
            if !Box::pin(self.wait_for_credentials(&spec, &mut stop)).await {
                return;
            }
            loop {
                // Matched where it is awaited: a binding of the `Option` would stay in the future
                // beside the claim taken out of it.
                // The key is made for the claim, which keeps it: kept here too, it would be one
                // more field of this future for the stream's whole life.
                let Some(mut claim) = Box::pin(async {
                    let key = StreamKey::new(spec.tenant.clone(), spec.id.clone());
                    self.ownership
                        .claim(
                            &key,
                            spec.heartbeat.timeout,
                            adapter.platform(),
                            &status,
                            &mut stop,
                        )
                        .await
                })
                .await
                else {
                    return;
                };
                // A new fence: what the hub holds from an earlier ownership is stale. Resume from
                // the store's checkpoint (another pod's app may have acked past it meanwhile).
                let Some(checkpoint) = Box::pin(self.read_checkpoint(&claim, &mut stop)).await
                else {
                    let stopped = *stop.borrow();
                    if let Some(reason) = stopped {
                        Box::pin(self.ownership.release(claim, StreamState::Stopped, reason)).await;
                        return;
                    }
                    self.ownership.forget(&claim);
                    continue;
                };
                hub.reclaim(checkpoint);
                set_owner(&status, Some(claim.fence));
                if !Box::pin(self.wait_for_pool_slot(&spec, &hub, &status, &mut claim, &mut stop))
                    .await
                {
                    set_owner(&status, None);
                    hub.hold();
                    let stopped = *stop.borrow();
                    if let Some(reason) = stopped {
                        Box::pin(self.ownership.release(claim, StreamState::Paused, reason)).await;
                        return;
                    }
                    self.ownership.forget(&claim);
                    continue;
                }
                let Some(tokens) = Box::pin(self.token_lease(&spec, &route.http)).await else {
                    self.ownership.forget(&claim);
                    // Boxed too: inline, this wait would be this future's largest state.
                    let stopped = Box::pin(async {
                        tokio::select! {
                            _ = tokio::time::sleep(spec.token.retry) => false,
                            _ = stop.wait_for(Option::is_some) => true,
                        }
                    })
                    .await;
                    if stopped {
                        return;
                    }
                    continue;
                };
                let gap_from = Box::pin(self.last_heard(
                    &claim.key,
                    claim.fence,
                    &spec,
                    &hub,
                    adapter.as_ref(),
                ))
                .await;
                let observer = Arc::new(StreamObserver {
                    pod: Arc::clone(&self),
                    key: claim.key.clone(),
                    fence: claim.fence,
                });
                let (session_stop, session_stop_rx) = stop.sibling(None);
                let ctx = SessionCtx {
                    spec: Arc::clone(&spec),
                    pod: self.name.clone(),
                    adapter: Arc::clone(&adapter),
                    hub: Arc::clone(&hub),
                    metrics: metrics.clone(),
                    on_reaped: Arc::clone(&self.on_reaped),
                    observer,
                    status: Arc::clone(&status),
                    http: route.http.clone(),
                    connect: self.connect_options.get(&spec, route.tls.clone()),
                    proxy: route.proxy.clone(),
                    tokens: tokens.view(),
                    refresh_now: tokens.refresh(),
                    budget: tokens.budget(),
                    lease: claim.valid_until.clone(),
                };
                // Polled here rather than spawned: a task of its own would add tokio's task header,
                // its 128-byte alignment and a join handle to every stream. A panic in it ends
                // the session as a spawned task's would (the stream is handed over), not this loop.
                let mut session = Box::pin(
                    std::panic::AssertUnwindSafe(upstream::run(ctx, gap_from, session_stop_rx))
                        .catch_unwind(),
                );
                // Whether the lease is within its deadline, looked at on every wake: the pod's
                // deadline watch marks `valid_until` changed when the deadline passes
                // unconfirmed, and a renewal the store confirmed moves it on; both wake this
                // loop.
                let mut certain = true;
                let reason = loop {
                    // The stream's signals (the acks, the lease's, the session's stop) share one
                    // wait (`signal::Group`), reached through the session's stop, which this loop
                    // only sends on: registered before they are looked at, so a change after the
                    // look still wakes it.
                    let mut woken = std::pin::pin!(session_stop.group().notified());
                    woken.as_mut().enable();
                    if let Some(id) = hub.take_ack() {
                        // Batched: the pod's flush writes it within the checkpoint window.
                        self.ownership.record_ack(&claim, id);
                    }
                    {
                        let valid = Instant::now() < *claim.valid_until.borrow_and_update();
                        if !certain && valid {
                            certain = true;
                            hub.release_hold();
                            set_owner(&status, Some(claim.fence));
                            tracing::info!(stream = %spec.id, fence = %claim.fence, "lease confirmed again");
                        } else if certain && !valid {
                            // The lease ran out unconfirmed: this pod may no longer be its
                            // owner. The session resets its socket at the same deadline; nothing
                            // more reaches the app until the store confirms the lease again.
                            certain = false;
                            hub.hold();
                            set_owner(&status, None);
                            tracing::warn!(stream = %spec.id, fence = %claim.fence, "lease not confirmed in time; standing by until the store confirms it");
                        }
                    }
                    if claim.lost.has_changed() == Ok(true) {
                        let reason =
                            (*claim.lost.borrow_and_update()).unwrap_or(DropReason::OwnerLost);
                        hub.hold();
                        set_owner(&status, None);
                        session_stop.send_replace(Some(reason));
                    }
                    if stop.has_changed() == Ok(true)
                        && let Some(reason) = *stop.borrow_and_update()
                    {
                        session_stop.send_replace(Some(reason));
                    }
                    // Polled by hand: `select!` would keep its own tuple of the two beside them.
                    let ended = std::future::poll_fn(|cx| match session.as_mut().poll(cx) {
                        Poll::Ready(r) => Poll::Ready(Some(r)),
                        Poll::Pending => woken.as_mut().poll(cx).map(|()| None),
                    })
                    .await;
                    if let Some(r) = ended {
                        break r.unwrap_or_else(|_| {
                            tracing::error!(stream = %spec.id, "the session panicked; handing the stream over");
                            DropReason::Shutdown
                        });
                    }
                };
                drop(tokens);
                set_owner(&status, None);
                let last_state = read_status(&status).state;
                if matches!(reason, DropReason::OwnerLost | DropReason::Preempted) {
                    // Another pod owns it now, or the tenant's pool took its slot back: stand by
                    // and contend again (the pool wait follows a new claim).
                    hub.hold();
                    self.ownership.forget(&claim);
                    continue;
                }
                // Nothing new reaches the app now. Give it a moment to ack what it was handed, so
                // the next owner does not deliver those again; then the last checkpoint goes in
                // before the lease is handed over.
                let drained = Box::pin(tokio::time::timeout(HANDOVER_ACK_GRACE, async {
                    loop {
                        let mut woken = std::pin::pin!(session_stop.group().notified());
                        woken.as_mut().enable();
                        if hub.pending_events() == 0 || hub.consumers() == 0 {
                            break;
                        }
                        woken.await;
                    }
                }))
                .await;
                if drained.is_err() {
                    tracing::info!(stream = %spec.id, pending = hub.pending_events(), "handing over with unacked events: the next owner delivers them again");
                }
                if let Some(id) = hub.last_acked() {
                    let _ = Box::pin(self.ownership.checkpoint(&claim, &id)).await;
                }
                hub.hold();
                Box::pin(self.ownership.release(claim, last_state, reason)).await;
                metrics.state(StreamState::Stopped);
                return;
            }
        }
    }

    /// The store's checkpoint for a stream just claimed, retried while the lease is valid;
    /// `None` when it stayed unreadable (the lease is then given up: resuming from a guess
    /// could deliver again what another pod's app acked) or the stream stopped.
    async fn read_checkpoint(
        &self,
        claim: &Claim,
        stop: &mut signal::Receiver<Option<DropReason>>,
    ) -> Option<Option<EventId>> {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.ownership.store().checkpoint(&claim.key).await {
                Ok(ckpt) => return Some(ckpt),
                Err(e) => {
                    tracing::warn!(stream = %claim.key.stream(), error = %e, "checkpoint unreadable; retrying while the lease lasts")
                }
            }
            if stop.borrow().is_some() || !self.ownership.confirmed(&claim.key, claim.fence) {
                return None;
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => {}
            }
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    /// Takes a slot in the tenant's pool before connecting, so at no instant more of the
    /// tenant's streams are connected across all pods than its limit. While the pool is full
    /// (or the store unreachable: no new connection is taken then) the app sees `paused`.
    /// Returns false when the lease was lost or the stream stopped meanwhile.
    async fn wait_for_pool_slot(
        &self,
        spec: &StreamSpec,
        hub: &Hub,
        status: &StatusCell,
        claim: &mut Claim,
        stop: &mut signal::Receiver<Option<DropReason>>,
    ) -> bool {
        let mut told = false;
        loop {
            match self.ownership.pool_acquire(claim).await {
                Ok(true) => {
                    if told {
                        hub.push_control(&ToApp::Resumed { stream: &spec.id });
                    }
                    return true;
                }
                Ok(false) | Err(_) => {
                    if !told {
                        told = true;
                        let limit = self.ownership.limit(&spec.tenant);
                        tracing::info!(stream = %spec.id, tenant = %spec.tenant, limit, "tenant pool full; waiting for a slot");
                        status.lock().unwrap_or_else(|p| p.into_inner()).state =
                            StreamState::Paused;
                        hub.push_control(&ToApp::Paused {
                            stream: &spec.id,
                            reason: "tenant_pool_full",
                        });
                    }
                }
            }
            let retry = Duration::from_millis(500).mul_f64(0.5 + rand::random::<f64>());
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = claim.lost.changed() => return false,
                _ = stop.changed() => return false,
            }
        }
    }

    /// Waits until the stream's credential files can be read (a Secret mounted late is
    /// common: keep trying, say why). False when stopped first.
    async fn wait_for_credentials(
        &self,
        spec: &StreamSpec,
        stop: &mut signal::Receiver<Option<DropReason>>,
    ) -> bool {
        loop {
            let read = match CredentialFiles::new(spec.platform, &spec.credentials) {
                Ok(files) => files.read().await.map(drop),
                Err(e) => Err(e),
            };
            match read {
                Ok(()) => return true,
                Err(e) => {
                    tracing::error!(stream = %spec.id, error = %e, retry_in = ?spec.token.retry, "credentials unusable");
                    tokio::select! {
                        _ = tokio::time::sleep(spec.token.retry) => {}
                        _ = stop.wait_for(Option::is_some) => return false,
                    }
                }
            }
        }
    }

    /// Waits for the stream's turn to start ([`crate::pace::Pace::stream_starts`]); `false` when
    /// it stopped meanwhile.
    async fn paced_start(&self, stop: &mut signal::Receiver<Option<DropReason>>) -> bool {
        let at = self
            .starts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reserve(Instant::now());
        tokio::select! {
            _ = tokio::time::sleep_until(at) => true,
            _ = stop.wait_for(Option::is_some) => false,
        }
    }

    /// The token manager of the stream's credential, shared with the pod's other streams on
    /// it; started while this pod runs the stream (a standby makes no grants).
    async fn token_lease(&self, spec: &StreamSpec, http: &reqwest::Client) -> Option<TokenLease> {
        let m = Arc::clone(&self.metrics);
        let tenant = spec.tenant.clone();
        match self
            .tokens
            .lease(spec, http, Arc::new(move |r| m.token_refresh(&tenant, r)))
            .await
        {
            Ok(lease) => Some(lease),
            Err(e) => {
                tracing::error!(stream = %spec.id, error = %e, "no token manager for the stream's credential");
                None
            }
        }
    }

    /// When the stream was last heard before this claim, for a platform that cannot replay:
    /// what this pod's first socket cannot deliver is a `gap` from then. After a crash or a
    /// lost lease the store's record says when its owner last heard the platform. A release
    /// removes the record; a checkpoint then says the stream ran before and was handed over,
    /// which takes the previous owner at most a lease (`heartbeat.timeout`) plus the handover
    /// grace: the gap starts that long before this claim. A stream that never ran gets none.
    async fn last_heard(
        &self,
        key: &StreamKey,
        fence: Fence,
        spec: &StreamSpec,
        hub: &Hub,
        adapter: &dyn Adapter,
    ) -> Option<u64> {
        if adapter.replays() {
            return None;
        }
        let record = match self.ownership.store().record(key).await {
            // Only an earlier fence's record says when the previous owner last heard the
            // platform: once this pod's first beat replaced it, it holds this pod's own
            // (never connected) status, whose pong is a placeholder.
            Ok(record) => record
                .filter(|r| r.fence != fence)
                .map(|r| r.last_pong)
                .filter(|t| *t > 0),
            Err(e) => {
                tracing::debug!(stream = %key.stream(), error = %e, "previous record unreadable");
                None
            }
        };
        record.or_else(|| {
            hub.last_acked().map(|_| {
                let handover = spec.heartbeat.timeout + HANDOVER_ACK_GRACE;
                crate::clock::epoch_ms().saturating_sub(handover.as_millis() as u64)
            })
        })
    }

    /// The stream's route: its TLS trust (`tls.caFile` or the system roots, loaded once for
    /// the pod) and REST client, both under the pod's proxy decision. Plain-text endpoints
    /// (the emulator) need no roots at all.
    async fn route(&self, spec: &StreamSpec) -> Result<Arc<Route>, net::NetError> {
        let ca = spec.tls.as_ref().map(|t| &*t.ca_file);
        let e = &spec.endpoints;
        let tls = e.stream.as_ref().is_some_and(|u| u.scheme() == "wss")
            || [e.api_url(), e.login_url()]
                .into_iter()
                .flatten()
                .any(|u| u.scheme() == "https");
        self.egress.route(ca, tls).await
    }
}
