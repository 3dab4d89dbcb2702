//! The pod: the set of streams one sidecar runs, applied from config (and re-applied on every
//! reload without touching unchanged streams), each with its hub, status, lease and session.
//!
//! - `mod.rs`: [`Pod`], apply and shutdown
//! - `diff.rs`: which streams a new config starts, restarts, removes or keeps (pure)
//! - `supervisor.rs`: one stream's life: lease, pool slot, session, checkpoints, handover
//! - `observer.rs`: logs and published transitions for a session's events
//! - `status.rs`: `/status`, readiness, liveness

mod diff;
mod observer;
mod status;
mod supervisor;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use streamkeeper_api::{
    DropReason, PodName, SidecarConfig, StreamId, StreamSpec, config::ConfigError,
};
use streamkeeper_coord::Store;
use tokio::{sync::watch, task::JoinHandle};

pub use diff::{Applied, ConfigDiff};

use crate::{
    app::{Hub, server::HubDirectory},
    auth::TokenManagers,
    metrics::Metrics,
    net::{Egress, ProxyPolicy},
    ownership::Ownership,
    pace::Pace,
    platforms::{Adapter, adapter_for},
    signal,
    upstream::{Observer, SharedConnectOptions, StatusCell, StreamStatus, read_owner, read_status},
};

/// A running stream, boxed in the pod's map: the map keeps up to twice as many slots as
/// streams, and an empty slot the size of an entry (40 bytes) cost more than the box does.
struct Entry {
    spec: Arc<StreamSpec>,
    hub: Arc<Hub>,
    status: StatusCell,
    stop: signal::Sender<Option<DropReason>>,
    task: JoinHandle<()>,
}

/// One sidecar's streams.
pub struct Pod {
    name: PodName,
    ownership: Arc<Ownership>,
    metrics: Arc<Metrics>,
    /// Counts a reaped socket in the pod's metrics: one for every session (made per session,
    /// it was 32 bytes of every stream's life).
    on_reaped: Arc<dyn Fn(DropReason) + Send + Sync>,
    /// How streams reach the platforms: one proxy decision, TLS trust loaded once.
    egress: Egress,
    /// One token manager per credential, shared by the streams that use it.
    tokens: TokenManagers,
    extra_observer: Option<Arc<dyn Observer>>,
    /// Streams with the same socket settings share their connect options.
    connect_options: SharedConnectOptions,
    streams: Mutex<HashMap<StreamId, Box<Entry>>>,
    /// When each stream may start ([`Pace::stream_starts`]).
    starts: Mutex<Pace>,
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
    /// A pod with no streams yet, egress through the process environment's proxy settings.
    /// `extra_observer` also hears every session event (the demo's timeline).
    pub fn new(
        name: PodName,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        extra_observer: Option<Arc<dyn Observer>>,
    ) -> Arc<Self> {
        Self::with_proxy(
            name,
            store,
            metrics,
            extra_observer,
            ProxyPolicy::from_env(),
        )
    }

    /// [`Pod::new`] with an explicit proxy policy (read once; REST and sockets both follow it).
    pub fn with_proxy(
        name: PodName,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        extra_observer: Option<Arc<dyn Observer>>,
        proxy: ProxyPolicy,
    ) -> Arc<Self> {
        let m = Arc::clone(&metrics);
        let ownership = Ownership::new(store, name.clone(), Arc::new(move |up| m.redis_up(up)));
        let m = Arc::clone(&metrics);
        Arc::new(Self {
            name,
            ownership,
            on_reaped: Arc::new(move |reason| m.reaped(reason)),
            metrics,
            egress: Egress::new(proxy),
            tokens: TokenManagers::new(),
            extra_observer,
            connect_options: SharedConnectOptions::default(),
            streams: Mutex::new(HashMap::new()),
            starts: Mutex::new(Pace::stream_starts()),
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

    /// The pod's token managers (one per credential).
    pub fn token_managers(&self) -> &TokenManagers {
        &self.tokens
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<StreamId, Box<Entry>>> {
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
        let mut streams = self.streams();
        let diff = ConfigDiff::new(
            streams.iter().map(|(id, e)| (id, &*e.spec)),
            &config.streams,
        );
        for id in diff.restart.iter().chain(&diff.remove) {
            if let Some(e) = streams.remove(id) {
                e.stop.send_replace(Some(DropReason::Removed));
                e.hub.close();
                if diff.remove.contains(id) {
                    self.metrics.forget(id, &e.spec.tenant);
                }
            }
        }
        for spec in diff.to_run(&config.streams) {
            if let Some(adapter) = adapters.remove(&spec.id) {
                streams.insert(spec.id.clone(), self.start(spec.clone(), adapter));
            }
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
        self.ownership
            .set_tenants(config.streams.iter().map(|s| s.tenant.clone()).collect());
        self.ownership.set_limits(config.tenant_limits.clone());
        self.ownership
            .set_checkpoint_window(config.checkpoint_window);
        Ok(diff.applied())
    }

    fn start(self: &Arc<Self>, spec: StreamSpec, adapter: Arc<dyn Adapter>) -> Box<Entry> {
        // The stream's signals (stop, acks, and the lease's, made beside stop) wake its
        // supervisor through one wait.
        let signals = signal::Group::default();
        let hub = Hub::with_limits(
            spec.id.clone(),
            spec.limits.max_unacked_events,
            spec.limits.max_unacked_bytes,
            None,
            &signals,
            Some(self.metrics.stream(&spec.id, &spec.tenant)),
        );
        let status: StatusCell = Default::default();
        let (stop, stop_rx) = signals.channel(None);
        self.ownership.watch_tenant(&spec.tenant);
        // One copy of the spec for the pod's map, the supervisor and the session.
        let spec = Arc::new(spec);
        let task = tokio::spawn(Arc::clone(self).stream_task(
            Arc::clone(&spec),
            adapter,
            Arc::clone(&hub),
            Arc::clone(&status),
            stop_rx,
        ));
        Box::new(Entry {
            spec,
            hub,
            status,
            stop,
            task,
        })
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
        // Each handover wrote its own checkpoint; anything acked and still waiting goes now.
        self.ownership.flush_checkpoints().await;
    }

    /// The live status of one stream.
    pub fn stream_status(&self, id: &StreamId) -> Option<StreamStatus> {
        self.streams().get(id).map(|e| read_status(&e.status))
    }

    /// Whether this pod currently holds the stream's lease.
    pub fn owns(&self, id: &StreamId) -> bool {
        self.streams()
            .get(id)
            .is_some_and(|e| read_owner(&e.status).is_some())
    }
}

impl HubDirectory for Pod {
    fn hub(&self, stream: &StreamId) -> Option<Arc<Hub>> {
        self.streams().get(stream).map(|e| Arc::clone(&e.hub))
    }
}
