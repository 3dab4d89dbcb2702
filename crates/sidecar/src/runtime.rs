//! The pod: the set of streams one sidecar runs, applied from config (and re-applied on every
//! reload without touching unchanged streams), each with its hub, status, lease and session.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;
use streamkeeper_api::{
    DropReason, Fence, PodName, SidecarConfig, StreamId, StreamSpec, StreamState, ToApp,
    config::ConfigError,
};
use streamkeeper_coord::{Store, StreamKey};
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    admin::StatusSource,
    app_server::HubDirectory,
    hub::Hub,
    metrics::Metrics,
    net,
    ownership::{Claim, Ownership},
    platforms::{Adapter, adapter_for},
    session::{self, Observer, SessionCtx, SessionEvent, StatusCell, read_status},
    token::{ClientCredentials, TokenClient, spawn_manager},
};

/// How long a stopping stream waits for its app to ack what it was handed before the lease
/// goes to another pod (which would deliver those events again).
const HANDOVER_ACK_GRACE: Duration = Duration::from_millis(500);

/// A running stream.
struct Entry {
    spec: StreamSpec,
    hub: Arc<Hub>,
    status: StatusCell,
    stop: watch::Sender<Option<DropReason>>,
    task: JoinHandle<()>,
    owner: Arc<Mutex<Option<Fence>>>,
}

/// What an apply changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Streams started.
    pub started: Vec<StreamId>,
    /// Streams restarted because their spec changed.
    pub restarted: Vec<StreamId>,
    /// Streams stopped because they left the config.
    pub removed: Vec<StreamId>,
    /// Streams left running untouched.
    pub kept: usize,
}

/// One sidecar's streams.
pub struct Pod {
    name: PodName,
    ownership: Arc<Ownership>,
    metrics: Arc<Metrics>,
    http: reqwest::Client,
    extra_observer: Option<Arc<dyn Observer>>,
    streams: Mutex<HashMap<StreamId, Entry>>,
    tick: watch::Sender<(Duration, Duration)>,
}

impl std::fmt::Debug for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pod")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Pod {
    /// A pod with no streams yet. `extra_observer` also hears every session event (the demo's
    /// timeline).
    pub fn new(
        name: PodName,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        extra_observer: Option<Arc<dyn Observer>>,
    ) -> Arc<Self> {
        let m = Arc::clone(&metrics);
        let ownership = Ownership::new(store, name.clone(), Arc::new(move |up| m.redis_up(up)));
        // Plain-text REST (no roots needed); streams with https endpoints build their own.
        let http = net::plain_http_client();
        Arc::new(Self {
            name,
            ownership,
            metrics,
            http,
            extra_observer,
            streams: Mutex::new(HashMap::new()),
            tick: watch::channel((Duration::from_secs(15), Duration::from_secs(35))).0,
        })
    }

    /// This pod's name.
    pub fn name(&self) -> &PodName {
        &self.name
    }

    /// The ownership manager.
    pub fn ownership(&self) -> &Arc<Ownership> {
        &self.ownership
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<StreamId, Entry>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs the pod-wide ownership loops until `shutdown`.
    pub fn spawn_loops(
        self: &Arc<Self>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        let ownership = Arc::clone(&self.ownership);
        let tick = self.tick.subscribe();
        tokio::spawn(async move { ownership.run(tick, shutdown).await })
    }

    /// Applies a config: unchanged streams keep running, changed ones restart, removed ones
    /// stop. A config with a stream this build cannot run is refused whole, naming the field,
    /// and nothing running changes.
    pub fn apply(self: &Arc<Self>, config: &SidecarConfig) -> Result<Applied, ConfigError> {
        let mut adapters: HashMap<StreamId, Arc<dyn Adapter>> = HashMap::new();
        for (i, spec) in config.streams.iter().enumerate() {
            let adapter = adapter_for(spec).map_err(|message| ConfigError {
                field: format!("streams[{i}].platform"),
                message,
            })?;
            adapters.insert(spec.id.clone(), Arc::from(adapter));
        }
        let mut applied = Applied::default();
        let mut streams = self.streams();
        let wanted: HashMap<&StreamId, &StreamSpec> =
            config.streams.iter().map(|s| (&s.id, s)).collect();
        let existing: Vec<StreamId> = streams.keys().cloned().collect();
        for id in existing {
            match wanted.get(&id) {
                Some(spec) if streams.get(&id).is_some_and(|e| &e.spec == *spec) => {
                    applied.kept += 1
                }
                Some(_) => {
                    if let Some(e) = streams.remove(&id) {
                        e.stop.send_replace(Some(DropReason::Removed));
                        e.hub.close();
                    }
                    applied.restarted.push(id);
                }
                None => {
                    if let Some(e) = streams.remove(&id) {
                        e.stop.send_replace(Some(DropReason::Removed));
                        e.hub.close();
                        self.metrics.forget(&id, &e.spec.tenant);
                    }
                    applied.removed.push(id);
                }
            }
        }
        for spec in &config.streams {
            if streams.contains_key(&spec.id) {
                continue;
            }
            let Some(adapter) = adapters.remove(&spec.id) else {
                continue;
            };
            if !applied.restarted.contains(&spec.id) {
                applied.started.push(spec.id.clone());
            }
            streams.insert(spec.id.clone(), self.start(spec.clone(), adapter));
        }
        let period = config
            .streams
            .iter()
            .map(|s| s.heartbeat.interval)
            .min()
            .unwrap_or(Duration::from_secs(15));
        let stale = config
            .streams
            .iter()
            .map(|s| s.heartbeat.timeout)
            .max()
            .unwrap_or(Duration::from_secs(35));
        self.tick.send_replace((period, stale));
        self.ownership.set_limits(config.tenant_limits.clone());
        Ok(applied)
    }

    fn start(self: &Arc<Self>, spec: StreamSpec, adapter: Arc<dyn Adapter>) -> Entry {
        let hub = Hub::new(spec.id.clone(), spec.limits.max_unacked_events, None);
        let gauge = self.metrics.stream(&spec.id, &spec.tenant);
        hub.on_consumers(move |n| gauge.app_clients(n));
        let status: StatusCell = Default::default();
        let (stop, stop_rx) = watch::channel(None);
        let owner = Arc::new(Mutex::new(None));
        self.ownership.watch_tenant(&spec.tenant);
        let task = tokio::spawn(Arc::clone(self).stream_task(
            spec.clone(),
            adapter,
            Arc::clone(&hub),
            Arc::clone(&status),
            Arc::clone(&owner),
            stop_rx,
        ));
        Entry {
            spec,
            hub,
            status,
            stop,
            task,
            owner,
        }
    }

    /// Stops every stream (releasing leases so standbys take over at once) and waits for them,
    /// at most `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        self.ownership.drain();
        let tasks: Vec<JoinHandle<()>> = {
            let mut streams = self.streams();
            streams
                .drain()
                .map(|(_, e)| {
                    e.stop.send_replace(Some(DropReason::Shutdown));
                    e.task
                })
                .collect()
        };
        let all = futures_util::future::join_all(tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(?grace, "some streams did not stop within the grace period");
        }
    }

    /// The live status of one stream.
    pub fn stream_status(&self, id: &StreamId) -> Option<session::StreamStatus> {
        self.streams().get(id).map(|e| read_status(&e.status))
    }

    /// Whether this pod currently holds the stream's lease.
    pub fn owns(&self, id: &StreamId) -> bool {
        self.streams()
            .get(id)
            .is_some_and(|e| e.owner.lock().unwrap_or_else(|p| p.into_inner()).is_some())
    }

    #[allow(clippy::too_many_arguments)]
    async fn stream_task(
        self: Arc<Self>,
        spec: StreamSpec,
        adapter: Arc<dyn Adapter>,
        hub: Arc<Hub>,
        status: StatusCell,
        owner: Arc<Mutex<Option<Fence>>>,
        mut stop: watch::Receiver<Option<DropReason>>,
    ) {
        let key = StreamKey {
            tenant: spec.tenant.clone(),
            stream: spec.id.clone(),
        };
        let metrics = self.metrics.stream(&spec.id, &spec.tenant);
        metrics.state(StreamState::Stopped);
        let (tls, http) = match self.tls(&spec) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(stream = %spec.id, error = %e, "TLS settings unusable; stream not started");
                return;
            }
        };
        let Some(token_client) = self
            .token_client(&spec, &http, adapter.as_ref(), &mut stop)
            .await
        else {
            return;
        };
        loop {
            let claim = self
                .ownership
                .claim(
                    &key,
                    spec.heartbeat.timeout,
                    adapter.platform().as_str(),
                    &status,
                    &mut stop,
                )
                .await;
            let Some(mut claim) = claim else { return };
            *owner.lock().unwrap_or_else(|p| p.into_inner()) = Some(claim.fence);
            match self.ownership.store().checkpoint(&key).await {
                Ok(ckpt) => hub.seed_checkpoint(ckpt),
                Err(e) => {
                    tracing::warn!(stream = %spec.id, error = %e, "checkpoint unreadable; resuming from what this pod has seen")
                }
            }
            if !self
                .wait_for_pool_slot(&spec, &hub, &status, &mut claim, &mut stop)
                .await
            {
                let stopped = *stop.borrow();
                if let Some(reason) = stopped {
                    self.ownership
                        .release(claim, StreamState::Paused, reason)
                        .await;
                    return;
                }
                self.ownership.forget(&claim);
                continue;
            }
            let (tokens, refresh_now, token_task) = {
                let m = Arc::clone(&self.metrics);
                let tenant = spec.tenant.clone();
                spawn_manager(
                    token_client.clone(),
                    spec.token,
                    Arc::new(move |r| m.token_refresh(&tenant, r)),
                )
            };
            let observer = Arc::new(StreamObserver {
                ownership: Arc::clone(&self.ownership),
                key: key.clone(),
                fence: claim.fence,
                extra: self.extra_observer.clone(),
            });
            let (session_stop, session_stop_rx) = watch::channel(None);
            let ctx = SessionCtx {
                spec: spec.clone(),
                pod: self.name.clone(),
                adapter: Arc::clone(&adapter),
                hub: Arc::clone(&hub),
                metrics: metrics.clone(),
                on_reaped: {
                    let m = Arc::clone(&self.metrics);
                    Arc::new(move |r| m.reaped(r))
                },
                observer,
                status: Arc::clone(&status),
                http: http.clone(),
                connect: session::connect_options(&spec, tls.clone()),
                tokens,
                refresh_now,
                lease: claim.valid_until.clone(),
            };
            let mut session = tokio::spawn(session::run(ctx, session_stop_rx));
            let mut acked = hub.acked();
            let mut saved = acked.borrow_and_update().clone();
            let reason = loop {
                tokio::select! {
                    r = &mut session => break r.unwrap_or(DropReason::Shutdown),
                    changed = acked.changed() => {
                        if changed.is_err() { continue; }
                        let id = acked.borrow_and_update().clone();
                        if let Some(id) = id.filter(|id| Some(id) != saved.as_ref()) {
                            if let Err(e) = self.ownership.checkpoint(&claim, &id).await {
                                tracing::debug!(stream = %spec.id, error = %e, "checkpoint deferred to the next ack or the handover");
                            } else {
                                saved = Some(id);
                            }
                        }
                    }
                    _ = claim.lost.changed() => {
                        let reason = (*claim.lost.borrow()).unwrap_or(DropReason::OwnerLost);
                        session_stop.send_replace(Some(reason));
                    }
                    _ = stop.changed() => {
                        let reason = (*stop.borrow()).unwrap_or(DropReason::Shutdown);
                        session_stop.send_replace(Some(reason));
                    }
                }
            };
            token_task.abort();
            *owner.lock().unwrap_or_else(|p| p.into_inner()) = None;
            let last_state = read_status(&status).state;
            if matches!(reason, DropReason::OwnerLost | DropReason::Preempted) {
                // Another pod owns it now, or the tenant's pool took its slot back: stand by
                // and contend again (the pool wait follows a new claim).
                self.ownership.forget(&claim);
                continue;
            }
            // Nothing new reaches the app now. Give it a moment to ack what it was handed, so
            // the next owner does not deliver those again; then the last checkpoint goes in
            // before the lease is handed over.
            let drained = tokio::time::timeout(HANDOVER_ACK_GRACE, async {
                while hub.pending_events() > 0 && hub.consumers() > 0 {
                    if acked.changed().await.is_err() {
                        break;
                    }
                }
            })
            .await;
            if drained.is_err() {
                tracing::info!(stream = %spec.id, pending = hub.pending_events(), "handing over with unacked events: the next owner delivers them again");
            }
            if let Some(id) = hub.last_acked().filter(|id| Some(id) != saved.as_ref()) {
                let _ = self.ownership.checkpoint(&claim, &id).await;
            }
            self.ownership.release(claim, last_state, reason).await;
            metrics.state(StreamState::Stopped);
            return;
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
        stop: &mut watch::Receiver<Option<DropReason>>,
    ) -> bool {
        let mut told = false;
        loop {
            let limit = self.ownership.limit(&spec.tenant);
            match self
                .ownership
                .store()
                .pool_acquire(&claim.key, claim.fence, limit)
                .await
            {
                Ok(true) => {
                    if told {
                        hub.push_control(&ToApp::Resumed { stream: &spec.id });
                    }
                    return true;
                }
                Ok(false) | Err(_) => {
                    if !told {
                        told = true;
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

    async fn token_client(
        &self,
        spec: &StreamSpec,
        http: &reqwest::Client,
        adapter: &dyn Adapter,
        stop: &mut watch::Receiver<Option<DropReason>>,
    ) -> Option<TokenClient> {
        let (Some(login), Some(api)) = (&spec.endpoints.login, &spec.endpoints.api) else {
            tracing::error!(stream = %spec.id, "endpoints.login and endpoints.api are required");
            return None;
        };
        loop {
            match ClientCredentials::load(&spec.credentials)
                .map(|c| TokenClient::new(http.clone(), login, api, adapter.validate_path(), c))
            {
                Ok(c) => return Some(c),
                Err(e) => {
                    // A Secret mounted late is common: keep trying, say why.
                    tracing::error!(stream = %spec.id, error = %e, retry_in = ?spec.token.retry, "credentials unusable");
                    tokio::select! {
                        _ = tokio::time::sleep(spec.token.retry) => {}
                        _ = stop.wait_for(Option::is_some) => return None,
                    }
                }
            }
        }
    }

    /// The stream's TLS connector (for `wss`) and REST client, trusting `tls.caFile` or the
    /// system roots. Plain-text endpoints (the emulator) need no roots at all.
    fn tls(
        &self,
        spec: &StreamSpec,
    ) -> Result<(Option<Arc<tokio_rustls::TlsConnector>>, reqwest::Client), net::NetError> {
        let ca = spec.tls.as_ref().map(|t| t.ca_file.as_path());
        let e = &spec.endpoints;
        let wss = e.stream.as_ref().is_some_and(|u| u.scheme() == "wss");
        let https = [&e.api, &e.login]
            .into_iter()
            .flatten()
            .any(|u| u.scheme() == "https");
        let connector = if wss {
            Some(Arc::new(net::tls_connector(ca)?))
        } else {
            None
        };
        let http = if https || ca.is_some() {
            net::http_client(ca)?
        } else {
            self.http.clone()
        };
        Ok((connector, http))
    }
}

impl HubDirectory for Pod {
    fn hub(&self, stream: &StreamId) -> Option<Arc<Hub>> {
        self.streams().get(stream).map(|e| Arc::clone(&e.hub))
    }
}

impl StatusSource for Pod {
    fn status(&self) -> serde_json::Value {
        let streams = self.streams();
        let mut list: Vec<serde_json::Value> = streams
            .values()
            .map(|e| {
                let st = read_status(&e.status);
                let fence = *e.owner.lock().unwrap_or_else(|p| p.into_inner());
                json!({
                    "id": e.spec.id,
                    "tenant": e.spec.tenant,
                    "platform": e.spec.platform.as_str(),
                    "state": st.state,
                    "owner": fence.is_some(),
                    "fence": fence,
                    "connection": st.connection,
                    "lastPong": st.last_pong_ms,
                    "rttMs": st.rtt.map(|r| r.as_secs_f64() * 1000.0),
                    "retryCount": st.retry_count,
                    "reconnects": st.reconnects,
                    "lastDropReason": st.last_drop,
                    "pendingEvents": e.hub.pending_events(),
                    "appClients": e.hub.consumers(),
                })
            })
            .collect();
        list.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        json!({"pod": self.name, "storeUp": self.ownership.store_up(), "draining": self.ownership.draining(), "streams": list})
    }

    fn ready(&self) -> Result<(), String> {
        if self.ownership.draining() {
            return Err("draining: shutting down".into());
        }
        Ok(())
    }

    fn healthy(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Per-claim observer: logs, publishes transitions under the claim's fence, forwards to the
/// extra observer.
struct StreamObserver {
    ownership: Arc<Ownership>,
    key: StreamKey,
    fence: Fence,
    extra: Option<Arc<dyn Observer>>,
}

impl Observer for StreamObserver {
    fn observe(&self, stream: &StreamId, event: SessionEvent) {
        match &event {
            SessionEvent::State { from, to, reason } => {
                tracing::info!(%stream, from = %from, to = %to, reason = ?reason.map(|r| r.as_str()), "state");
                let publish = matches!(
                    to,
                    StreamState::Dead
                        | StreamState::Active
                        | StreamState::Degraded
                        | StreamState::Paused
                );
                if publish {
                    let (o, k, f, from, to) = (
                        Arc::clone(&self.ownership),
                        self.key.clone(),
                        self.fence,
                        *from,
                        *to,
                    );
                    let why = reason
                        .map(|r| r.as_str().to_owned())
                        .unwrap_or_else(|| to.as_str().to_lowercase());
                    tokio::spawn(async move { o.publish(&k, f, from, to, &why).await });
                }
            }
            SessionEvent::Dropped {
                connection,
                reason,
                late_by,
                silent_for,
                pending_bytes,
            } => {
                let late_by_ms = late_by.map(|d| d.as_millis() as u64);
                let silent_for_ms = silent_for.as_millis() as u64;
                if matches!(reason, DropReason::Shutdown | DropReason::Removed) {
                    tracing::info!(%stream, %connection, %reason, pending_bytes, "connection closed");
                } else {
                    tracing::warn!(%stream, %connection, %reason, late_by_ms, silent_for_ms, pending_bytes, "connection reaped");
                }
            }
            SessionEvent::Connected {
                connection,
                attempts,
                resumed_after,
            } => {
                tracing::info!(%stream, %connection, attempts, resumed_after = ?resumed_after.as_ref().map(|i| i.as_str()), "connected");
            }
            SessionEvent::ConnectFailed { error, retry_in } => {
                tracing::warn!(%stream, %error, retry_in_ms = retry_in.as_millis() as u64, "reconnect scheduled");
            }
            SessionEvent::TokenRotated { generation } => {
                tracing::info!(%stream, generation, "token rotated without a reconnect");
            }
            SessionEvent::Malformed { .. } => {}
        }
        if let Some(extra) = &self.extra {
            extra.observe(stream, event);
        }
    }
}
