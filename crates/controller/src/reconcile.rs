//! The reconciler: one StreamConnection at a time, wrapped in kube's finalizer helper.
//!
//! * Apply: admission is recomputed for the stream's whole tenant (a change to one stream can
//!   admit, queue or preempt others); every stream whose decision changed gets its status and
//!   an Event, and every workload touched gets its ConfigMap re-rendered and server-side
//!   applied, but only when the rendered bytes differ from what was applied last.
//! * Cleanup (the object is being deleted): the same, without the stream; then the stream's
//!   records, lease and pool slot are removed from the store (bounded retry: an unreachable
//!   store gets a Warning Event and the finalizer is released anyway).
//! * Status is written (server-side apply, field manager `streamkeeper-controller`) only when
//!   the desired status differs from the stored one, so a steady-state reconcile makes no API
//!   request at all.
//!
//! Reconciles of one tenant are serialized (the pool decision reads and writes the tenant's
//! decisions); ConfigMap rendering is serialized per workload, and renders from the decisions
//! current when it holds the workload's lock, so the last render always includes every
//! decision made before it.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::{api::core::v1::ConfigMap, jiff::Timestamp};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event as KubeEvent, EventType, Recorder},
        finalizer::{Event as Finalize, finalizer},
        reflector::{ObjectRef, Store as Cache},
    },
};
use streamkeeper_api::{
    StreamId, Tenant,
    crd::{FINALIZER, Phase, StreamConnection, StreamConnectionStatus},
};
use streamkeeper_coord::{Store, StreamKey};

use crate::{
    Error,
    admission::{self, Candidate, Decision, Limits},
    leader::Leadership,
    metrics::Metrics,
    render::{self, RenderOptions, WorkloadKey},
    runtime::{RuntimeEvent, RuntimeView},
    status::{self, Inputs, Notice, RuntimeSource},
};

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "streamkeeper-controller";
/// The Event reporter name.
pub const REPORTER: &str = "streamkeeper-controller";

/// How the reconciler behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Pool limits.
    pub limits: Limits,
    /// What rendered configs share.
    pub render: RenderOptions,
    /// `lastPong` in status is rewritten only when it moved by at least this much.
    pub pong_granularity: Duration,
    /// Attempts at removing a deleted stream from the store before giving up.
    pub store_cleanup_attempts: u32,
    /// Pause between those attempts.
    pub store_cleanup_backoff: Duration,
    /// How long one attempt may take (an unreachable store can hang rather than refuse).
    pub store_cleanup_timeout: Duration,
    /// Every object is reconciled again after this long (drift repair).
    pub resync: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            render: RenderOptions::default(),
            pong_granularity: Duration::from_secs(30),
            store_cleanup_attempts: 3,
            store_cleanup_backoff: Duration::from_millis(500),
            store_cleanup_timeout: Duration::from_secs(3),
            resync: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Default)]
struct Memory {
    /// The last decision per stream (seeded from status after a restart or a leader change).
    decisions: HashMap<StreamId, Decision>,
    /// The `sidecar.yaml` last applied per workload.
    applied: HashMap<WorkloadKey, String>,
    /// `status.reconnects` when this controller first saw the stream.
    reconnects_base: HashMap<StreamId, u32>,
    /// The status last written per stream: the cache lags our own writes, and comparing with
    /// it alone would write the same status twice.
    written: HashMap<StreamId, StreamConnectionStatus>,
    /// Every tenant and workload each stream was decided or rendered under since its own
    /// reconcile last settled them: a stream that moves leaves a slot free in the old tenant's
    /// pool and must leave the old ConfigMap. Recorded wherever the stream is seen, not only by
    /// its own reconcile: another stream's reconcile can decide and render it first, and a move
    /// applied before its own reconcile ran would otherwise leave it behind (in the old pool's
    /// count and the old ConfigMap) until the next resync.
    placed: HashMap<StreamId, BTreeSet<Placement>>,
}

/// Where a stream counts: its tenant's pool and its workload's ConfigMap.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Placement {
    tenant: Tenant,
    workload: WorkloadKey,
}

impl Placement {
    fn of(sc: &StreamConnection) -> Self {
        Self {
            tenant: sc.spec.tenant.clone(),
            workload: WorkloadKey::of(sc),
        }
    }
}

impl Memory {
    fn place(&mut self, id: &StreamId, sc: &StreamConnection) {
        self.placed
            .entry(id.clone())
            .or_default()
            .insert(Placement::of(sc));
    }
}

/// What every reconcile shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// The StreamConnections the controller watches.
    pub streams: Cache<StreamConnection>,
    /// The ConfigMaps it manages (by label).
    pub config_maps: Cache<ConfigMap>,
    /// The store, if configured.
    pub store: Option<Arc<dyn Store>>,
    /// The store's view of every stream.
    pub view: Arc<RuntimeView>,
    /// Publishes Events.
    pub recorder: Recorder,
    /// Whether this replica may write.
    pub leadership: Leadership,
    /// Metrics.
    pub metrics: Metrics,
    /// Behaviour.
    pub settings: Settings,
    memory: Mutex<Memory>,
    tenant_locks: Mutex<HashMap<Tenant, Arc<tokio::sync::Mutex<()>>>>,
    workload_locks: Mutex<HashMap<WorkloadKey, Arc<tokio::sync::Mutex<()>>>>,
}

impl Context {
    /// A context with empty memory.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        streams: Cache<StreamConnection>,
        config_maps: Cache<ConfigMap>,
        store: Option<Arc<dyn Store>>,
        view: Arc<RuntimeView>,
        recorder: Recorder,
        leadership: Leadership,
        metrics: Metrics,
        settings: Settings,
    ) -> Self {
        Self {
            client,
            streams,
            config_maps,
            store,
            view,
            recorder,
            leadership,
            metrics,
            settings,
            memory: Mutex::new(Memory::default()),
            tenant_locks: Mutex::new(HashMap::new()),
            workload_locks: Mutex::new(HashMap::new()),
        }
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn guard(&self) -> Result<(), Error> {
        if self.leadership.is_leading() {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    }

    fn lock_of<K: Clone + Eq + std::hash::Hash>(
        map: &Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>,
        key: &K,
    ) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(m.entry(key.clone()).or_default())
    }

    /// Forgets a workload's last applied config (its ConfigMap changed under us).
    pub fn invalidate(&self, workload: &WorkloadKey) {
        self.memory().applied.remove(workload);
    }

    /// Whether `yaml` is what was applied last for `workload`.
    pub fn applied_is(&self, workload: &WorkloadKey, yaml: &str) -> bool {
        self.memory()
            .applied
            .get(workload)
            .is_some_and(|a| a == yaml)
    }
}

/// Reconciles one StreamConnection.
pub async fn reconcile(sc: Arc<StreamConnection>, ctx: Arc<Context>) -> Result<Action, Error> {
    let timer = ctx.metrics.reconcile_duration.start_timer();
    let result = reconcile_inner(sc, &ctx).await;
    timer.observe_duration();
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics.reconciles.with_label_values(&[outcome]).inc();
    result
}

async fn reconcile_inner(sc: Arc<StreamConnection>, ctx: &Arc<Context>) -> Result<Action, Error> {
    // The cache fills before decisions are made from it (a decision from half a list would
    // preempt streams that are merely not listed yet).
    let _ = ctx.streams.wait_until_ready().await;
    ctx.guard()?;
    let ns = sc.namespace().ok_or(Error::Unnamed)?;
    let api: Api<StreamConnection> = Api::namespaced(ctx.client.clone(), &ns);
    let c = Arc::clone(ctx);
    finalizer(&api, FINALIZER, sc, |event| async move {
        match event {
            Finalize::Apply(sc) => apply(&sc, &c).await,
            Finalize::Cleanup(sc) => cleanup(&sc, &c).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(Box::new(other)),
    })
}

/// What to do after a failed reconcile.
pub fn error_policy(_sc: Arc<StreamConnection>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[error.label()])
        .inc();
    tracing::warn!(%error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

fn deleting(sc: &StreamConnection) -> bool {
    sc.metadata.deletion_timestamp.is_some()
}

/// The decision a stored status implies (after a controller restart or a leader change).
fn decision_from_status(status: Option<&StreamConnectionStatus>) -> Option<Decision> {
    match status.and_then(|s| s.phase)? {
        Phase::Active | Phase::Degraded | Phase::Dead => Some(Decision::Admitted),
        Phase::Queued => Some(Decision::Queued),
        Phase::Preempted => Some(Decision::Preempted),
        Phase::Paused => Some(Decision::Paused),
        Phase::Pending => None,
    }
}

/// The tenant's streams (not being deleted) from the cache, with the decision each had.
fn tenant_streams(ctx: &Context, tenant: &Tenant) -> Vec<(Arc<StreamConnection>, Candidate)> {
    ctx.streams
        .state()
        .into_iter()
        .filter(|s| &s.spec.tenant == tenant && !deleting(s))
        .filter_map(|s| {
            let c = render::candidate(&s, i64::MAX).ok()?;
            Some((s, c))
        })
        .collect()
}

/// Recomputes the tenant's pool; returns the streams whose decision changed, with the decision
/// before (`None`: first) and after.
fn readmit(
    ctx: &Context,
    tenant: &Tenant,
    streams: &[(Arc<StreamConnection>, Candidate)],
    gone: Option<&StreamId>,
) -> Vec<(Arc<StreamConnection>, Option<Decision>, Decision)> {
    let mut mem = ctx.memory();
    for (sc, c) in streams {
        mem.place(&c.id, sc);
        if !mem.decisions.contains_key(&c.id)
            && let Some(d) = decision_from_status(sc.status.as_ref())
        {
            mem.decisions.insert(c.id.clone(), d);
        }
    }
    if let Some(id) = gone {
        mem.decisions.remove(id);
    }
    let candidates: Vec<Candidate> = streams.iter().map(|(_, c)| c.clone()).collect();
    let decided = admission::admit(&candidates, &ctx.settings.limits, &mem.decisions);
    let _ = tenant;
    let mut changed = Vec::new();
    for (sc, c) in streams {
        let Some(after) = decided.get(&c.id).copied() else {
            continue;
        };
        let before = mem.decisions.insert(c.id.clone(), after);
        let stored = decision_from_status(sc.status.as_ref());
        // A stream whose stored status lags its decision (a write failed) is "changed" too.
        if before != Some(after) || stored != Some(after) {
            changed.push((Arc::clone(sc), before, after));
        }
    }
    changed
}

async fn apply(sc: &StreamConnection, ctx: &Arc<Context>) -> Result<Action, Error> {
    let id = match render::stream_id(sc) {
        Ok(id) => id,
        Err(e) => {
            write_status(ctx, sc, None, Some(&e.to_string())).await?;
            return Ok(Action::await_change());
        }
    };
    if let Err(e) = sc.spec.validate() {
        write_status(ctx, sc, None, Some(&e.to_string())).await?;
        return Ok(Action::await_change());
    }
    let here = Placement::of(sc);
    let seen = leave_earlier_places(ctx, &id, &here, None).await?;
    readmit_tenant(ctx, &here.tenant, None, workloads_of(&seen, &here)).await?;
    settle(ctx, &id, &seen, here);
    let decision = ctx.memory().decisions.get(&id).copied();
    write_status(ctx, sc, decision, None).await?;
    Ok(Action::requeue(ctx.settings.resync))
}

/// The workloads to render for a stream now at `here`: its own and every one it was seen in
/// (it leaves those).
fn workloads_of(seen: &BTreeSet<Placement>, here: &Placement) -> BTreeSet<WorkloadKey> {
    seen.iter()
        .map(|p| p.workload.clone())
        .chain([here.workload.clone()])
        .collect()
}

/// Readmits every tenant the stream was seen in other than `here`'s (its slot there goes to
/// the next; `gone`: it is being deleted), and returns every place it was seen in.
async fn leave_earlier_places(
    ctx: &Arc<Context>,
    id: &StreamId,
    here: &Placement,
    gone: Option<&StreamId>,
) -> Result<BTreeSet<Placement>, Error> {
    let seen = ctx.memory().placed.get(id).cloned().unwrap_or_default();
    let old_tenants: BTreeSet<&Tenant> = seen
        .iter()
        .map(|p| &p.tenant)
        .filter(|t| **t != here.tenant)
        .collect();
    for t in old_tenants {
        readmit_tenant(ctx, t, gone, BTreeSet::new()).await?;
    }
    Ok(seen)
}

/// Forgets the places just handled; `here` is where the stream counts now. A place recorded
/// meanwhile by another reconcile (the object moved again) stays for the next.
fn settle(ctx: &Context, id: &StreamId, handled: &BTreeSet<Placement>, here: Placement) {
    let mut mem = ctx.memory();
    let set = mem.placed.entry(id.clone()).or_default();
    set.retain(|p| !handled.contains(p));
    set.insert(here);
}

/// Recomputes `tenant`'s pool (without `gone`, a stream being deleted), then re-renders the
/// workloads whose streams' decisions changed, plus `also`, and publishes the changes. One
/// tenant at a time: the lock is held throughout and never together with another tenant's.
async fn readmit_tenant(
    ctx: &Arc<Context>,
    tenant: &Tenant,
    gone: Option<&StreamId>,
    mut also: BTreeSet<WorkloadKey>,
) -> Result<(), Error> {
    let lock = Context::lock_of(&ctx.tenant_locks, tenant);
    let _held = lock.lock().await;
    let streams = tenant_streams(ctx, tenant);
    let changed = readmit(ctx, tenant, &streams, gone);
    also.extend(changed.iter().map(|(s, _, _)| WorkloadKey::of(s)));
    for w in &also {
        sync_config_map(ctx, w).await?;
    }
    publish_decisions(ctx, &changed).await
}

async fn cleanup(sc: &StreamConnection, ctx: &Arc<Context>) -> Result<Action, Error> {
    let workload = WorkloadKey::of(sc);
    let id = render::stream_id(sc).ok();
    let tenant = sc.spec.tenant.clone();
    let here = Placement::of(sc);
    // Moved and deleted before the move was reconciled: out of where it was too.
    let seen = match &id {
        Some(id) => leave_earlier_places(ctx, id, &here, Some(id)).await?,
        None => BTreeSet::new(),
    };
    readmit_tenant(ctx, &tenant, id.as_ref(), workloads_of(&seen, &here)).await?;
    if let (Some(store), Some(id)) = (ctx.store.as_ref(), id.as_ref()) {
        let key = StreamKey::new(tenant.clone(), id.clone());
        let attempts = ctx.settings.store_cleanup_attempts.max(1);
        let mut last = String::new();
        let mut removed = false;
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(ctx.settings.store_cleanup_backoff * attempt).await;
            }
            match tokio::time::timeout(
                ctx.settings.store_cleanup_timeout,
                store.remove_stream(&key),
            )
            .await
            {
                Ok(Ok(_)) => {
                    removed = true;
                    break;
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => {
                    last = format!("no answer within {:?}", ctx.settings.store_cleanup_timeout)
                }
            }
        }
        if !removed {
            ctx.guard()?;
            let note = format!(
                "removed from ConfigMap {}, but the store was unreachable after {attempts} attempts ({last}): \
                 its lease and records lapse by themselves within the heartbeat timeout; the finalizer is released",
                workload.config_map_name(),
            );
            tracing::warn!(stream = %id, "{note}");
            publish(
                ctx,
                sc,
                &Notice {
                    reason: "StoreCleanupFailed",
                    warning: true,
                    note,
                },
            )
            .await;
        }
    }
    // The store's retries take a while: the finalizer helper removes the finalizer right after
    // this returns, and only a leader may.
    ctx.guard()?;
    if let Some(id) = &id {
        ctx.view.forget(id);
        let mut mem = ctx.memory();
        mem.reconnects_base.remove(id);
        mem.written.remove(id);
        mem.placed.remove(id);
    }
    Ok(Action::await_change())
}

/// Renders a managed ConfigMap's workload that no StreamConnection names any more (its last
/// stream moved or went while no controller ran): its config then holds no streams, so its
/// sidecars stop what they ran. Waits for the StreamConnection cache first: a workload is
/// memberless only once every object is listed.
pub async fn sync_memberless(ctx: &Arc<Context>, workload: &WorkloadKey) -> Result<(), Error> {
    let _ = ctx.streams.wait_until_ready().await;
    let member = ctx
        .streams
        .state()
        .iter()
        .any(|s| !deleting(s) && &WorkloadKey::of(s) == workload);
    if member {
        return Ok(());
    }
    sync_config_map(ctx, workload).await
}

/// Renders `workload`'s config from the current decisions and applies it when it changed.
async fn sync_config_map(ctx: &Arc<Context>, workload: &WorkloadKey) -> Result<(), Error> {
    let lock = Context::lock_of(&ctx.workload_locks, workload);
    let _held = lock.lock().await;
    let members: Vec<Arc<StreamConnection>> = ctx
        .streams
        .state()
        .into_iter()
        .filter(|s| !deleting(s) && &WorkloadKey::of(s) == workload)
        .collect();
    let cfg = {
        let mut mem = ctx.memory();
        for s in &members {
            if let Ok(id) = render::stream_id(s) {
                mem.place(&id, s);
            }
        }
        render::workload_config(
            members.iter().map(|s| s.as_ref()),
            &mem.decisions,
            &ctx.settings.render,
        )
    };
    let cm = render::config_map(workload, &cfg);
    let yaml = cm
        .data
        .as_ref()
        .and_then(|d| d.get(render::CONFIG_KEY))
        .cloned()
        .unwrap_or_default();
    if ctx.applied_is(workload, &yaml) {
        return Ok(());
    }
    let observed = ctx
        .config_maps
        .get(&ObjectRef::<ConfigMap>::new(&workload.config_map_name()).within(&workload.namespace));
    let same = observed.as_ref().is_some_and(|o| {
        o.data.as_ref().and_then(|d| d.get(render::CONFIG_KEY)) == Some(&yaml)
            && o.labels().get(render::WORKLOAD_LABEL) == Some(&workload.name)
    });
    if !same {
        ctx.guard()?;
        let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &workload.namespace);
        api.patch(
            &workload.config_map_name(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&cm),
        )
        .await?;
        ctx.metrics.wrote("configmap");
        tracing::info!(workload = %workload, streams = cfg.streams.len(), "applied ConfigMap");
    }
    ctx.memory().applied.insert(workload.clone(), yaml);
    Ok(())
}

/// Events and statuses for streams whose decision changed.
async fn publish_decisions(
    ctx: &Arc<Context>,
    changed: &[(Arc<StreamConnection>, Option<Decision>, Decision)],
) -> Result<(), Error> {
    for (sc, before, after) in changed {
        let limit = ctx.settings.limits.of(&sc.spec.tenant);
        let cm = WorkloadKey::of(sc).config_map_name();
        let before = before.or_else(|| decision_from_status(sc.status.as_ref()));
        if let Some(n) =
            status::decision_notice(before, *after, sc.spec.tenant.as_str(), limit, &cm)
        {
            ctx.guard()?;
            publish(ctx, sc, &n).await;
        }
        write_status(ctx, sc, Some(*after), None).await?;
    }
    Ok(())
}

/// Publishes an Event about `sc` (a failure is logged: Events are best effort).
pub async fn publish(ctx: &Context, sc: &StreamConnection, n: &Notice) {
    if !ctx.leadership.is_leading() {
        return;
    }
    let ev = KubeEvent {
        type_: if n.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: n.reason.to_owned(),
        note: Some(n.note.clone()),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    match ctx.recorder.publish(&ev, &sc.object_ref(&())).await {
        Ok(()) => ctx.metrics.wrote("event"),
        Err(e) => tracing::warn!(error = %e, reason = n.reason, "cannot publish an Event"),
    }
}

/// Publishes the Event a runtime change deserves.
pub async fn publish_runtime(ctx: &Context, stream: &StreamId, event: &RuntimeEvent) {
    let Some(sc) = ctx
        .streams
        .get(&ObjectRef::new(stream.name()).within(stream.namespace()))
    else {
        return;
    };
    let n = match event {
        RuntimeEvent::Dead(reason) => Notice {
            reason: "StreamDead",
            warning: true,
            note: format!("the connection was declared dead ({reason}); the sidecar reconnects"),
        },
        RuntimeEvent::Recovered => Notice {
            reason: "Recovered",
            warning: false,
            note: "streaming again after a dead connection".to_owned(),
        },
    };
    publish(ctx, &sc, &n).await;
}

/// Computes the status `sc` should have and writes it when it differs from the stored one.
async fn write_status(
    ctx: &Arc<Context>,
    sc: &StreamConnection,
    decision: Option<Decision>,
    invalid: Option<&str>,
) -> Result<(), Error> {
    let id = render::stream_id(sc).ok();
    let runtime = id.as_ref().and_then(|id| ctx.view.get(id));
    let base = match &id {
        Some(id) => *ctx
            .memory()
            .reconnects_base
            .entry(id.clone())
            .or_insert_with(|| sc.status.as_ref().and_then(|s| s.reconnects).unwrap_or(0)),
        None => 0,
    };
    let source = match (&ctx.store, &runtime) {
        (None, _) => RuntimeSource::NoStore,
        (Some(_), None) => RuntimeSource::Unknown,
        (Some(_), Some(rt)) => RuntimeSource::Known(rt),
    };
    let cm = WorkloadKey::of(sc).config_map_name();
    // Our last write is newer than the cache whenever the cache lags it.
    let previous = id
        .as_ref()
        .and_then(|id| ctx.memory().written.get(id).cloned())
        .or_else(|| sc.status.clone());
    let desired = status::desired(&Inputs {
        decision,
        invalid,
        tenant: sc.spec.tenant.as_str(),
        limit: ctx.settings.limits.of(&sc.spec.tenant),
        config_map: &cm,
        runtime: source,
        reconnects_base: base,
        generation: sc.metadata.generation,
        previous: previous.as_ref(),
        now: Timestamp::now(),
        pong_granularity: ctx.settings.pong_granularity,
    });
    if previous.as_ref() == Some(&desired) {
        return Ok(());
    }
    ctx.guard()?;
    let ns = sc.namespace().ok_or(Error::Unnamed)?;
    let api: Api<StreamConnection> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({
        "apiVersion": StreamConnection::api_version(&()),
        "kind": StreamConnection::kind(&()),
        "status": desired,
    });
    api.patch_status(
        &sc.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    ctx.metrics.wrote("status");
    if let Some(id) = id {
        ctx.memory().written.insert(id, desired);
    }
    Ok(())
}
