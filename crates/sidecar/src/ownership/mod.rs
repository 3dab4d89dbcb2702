//! Who runs which stream: one lease holder per stream among the pods of a workload.
//!
//! A stream task [`claim`](Ownership::claim)s its stream before it connects; standby pods wait
//! for the lease to lapse (or for a handover or DEAD transition, which wakes them at once). One
//! pod-wide loop renews every held lease and records liveness in one batched store call per
//! tick, sweeps stale entries (jittered), flushes acked ids as checkpoints in one batch per
//! window, publishes transitions in order from one queue, and listens to the transitions
//! channel: a pod that hears DEAD for a stream it still runs, under another fence or declared
//! stale, terminates it.
//!
//! The lease rule ([`crate::lease`]): a lease may be acted on only until its last renewal that
//! the store confirmed, plus the TTL, minus a safety margin, counted from when that renewal was
//! sent. A failed renewal confirms nothing, so a pod cut off from the store stops streaming
//! before another pod can take over. While the store is unreachable no new ownership is taken;
//! once it answers again, standbys give the owners one TTL to re-assert their leases before
//! they contend for what an emptied store calls free.
//!
//! - `checkpoints.rs`: acked ids waiting for the next flush, one per stream
//! - `health.rs`: whether the store answers, per tenant and for the pod
//! - `publisher.rs`: the ordered, bounded queue of transitions to publish

mod checkpoints;
mod health;
mod publisher;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use streamkeeper_api::{
    DropReason, EventId, Fence, PodName, StreamState, Tenant, Transition,
    config::{DEFAULT_CHECKPOINT_WINDOW, DEFAULT_TENANT_LIMIT, Platform},
};
use streamkeeper_coord::{
    Acquired, Beat, BeatOutcome, CheckpointOutcome, CheckpointWrite, ConnRecord, LeaseView, Store,
    StoreError, StreamKey,
};
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};

pub use checkpoints::PendingCheckpoints;
pub use health::{Change, Health, TenantHealth};
pub use publisher::{Publisher, Pushed, Queue, Queued};

use crate::{
    clock::epoch_ms,
    lease::LeaseTerm,
    signal,
    upstream::{StatusCell, read_status},
};

/// Reports whether the store answers, for the pod ([`Health::up`], `streamkeeper_redis_up`).
pub type StoreUpHook = Arc<dyn Fn(bool) + Send + Sync>;

/// How long a release waits for the stream's queued transitions to go out first.
const RELEASE_ORDER_BOUND: Duration = Duration::from_secs(1);

/// A held lease.
#[derive(Debug)]
pub struct Claim {
    /// The stream.
    pub key: StreamKey,
    /// The fence this pod holds.
    pub fence: Fence,
    /// Carries a reason when the lease is lost (fenced out, DEAD heard).
    pub lost: signal::Receiver<Option<DropReason>>,
    /// Until when this pod may act on the lease ([`crate::lease`]): moved on only by renewals
    /// the store confirmed. Past it the pod stops forwarding and resets the socket; when a
    /// renewal is confirmed again (the store is back and nobody took the lease) it moves on.
    pub valid_until: signal::Receiver<Instant>,
}

struct Held {
    fence: Fence,
    term: LeaseTerm,
    platform: Platform,
    status: StatusCell,
    lost: signal::Sender<Option<DropReason>>,
    /// Until when the lease may be acted on.
    valid_until: signal::Sender<Instant>,
}

/// The pod's ownership manager.
pub struct Ownership {
    store: Arc<dyn Store>,
    pod: PodName,
    /// Boxed: a map's table is sized in powers of two, so up to half its slots are empty, and
    /// an empty slot the size of a `Held` cost every stream more than the box does.
    held: Mutex<HashMap<StreamKey, Box<Held>>>,
    /// Per-tenant pool limits from the config.
    limits: Mutex<BTreeMap<Tenant, u32>>,
    /// The streams this pod stands by for (one entry per waiting claim, removed when the
    /// claim returns): a release or DEAD heard wakes them at once; the beat tick's look at
    /// their leases tells them when to ask.
    standbys: Mutex<HashMap<StreamKey, Standby>>,
    draining: AtomicBool,
    /// Whether the store answers, per tenant (on a Redis Cluster each tenant's slot is on one
    /// node, which may be down alone) and for the pod; the tenants of the config, which this
    /// pod sweeps.
    health: Mutex<Health>,
    on_store_up: StoreUpHook,
    publisher: Publisher,
    checkpoints: Mutex<PendingCheckpoints>,
    checkpoint_window: watch::Sender<Duration>,
    /// A lease was acquired: the deadline watch looks again for the earliest deadline.
    acquired: Notify,
}

impl std::fmt::Debug for Ownership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ownership")
            .field("pod", &self.pod)
            .finish_non_exhaustive()
    }
}

/// One stream this pod stands by for.
#[derive(Debug, Default)]
struct Standby {
    /// A release or DEAD of the stream was heard.
    wake: Arc<Notify>,
    /// When to ask for the lease, from the last look at it (its expiry on the store's clock;
    /// now, when it is free or lapsed).
    due: watch::Sender<Option<Instant>>,
}

/// Removes a claim's standby entry when the claim returns (however it returns).
struct StandbyGuard<'a> {
    ownership: &'a Ownership,
    key: &'a StreamKey,
}

impl Drop for StandbyGuard<'_> {
    fn drop(&mut self) {
        let mut standbys = self.ownership.standbys();
        standbys.remove(self.key);
        // At start-up every stream stands by at once, then nearly none does: a map never
        // gives back its slots (2,048 of 48 bytes for 1,000 streams), so it shrinks once it
        // is mostly empty. Halving only below a quarter keeps the resizing amortized.
        if standbys.capacity() > 64 && standbys.len() < standbys.capacity() / 4 {
            let keep = standbys.len() * 2;
            standbys.shrink_to(keep);
        }
    }
}

impl Ownership {
    /// A manager for `pod` on `store`.
    pub fn new(store: Arc<dyn Store>, pod: PodName, on_store_up: StoreUpHook) -> Arc<Self> {
        on_store_up(true);
        Arc::new(Self {
            store,
            pod,
            held: Mutex::new(HashMap::new()),
            limits: Mutex::new(BTreeMap::new()),
            standbys: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            health: Mutex::new(Health::default()),
            on_store_up,
            publisher: Publisher::new(),
            checkpoints: Mutex::new(PendingCheckpoints::default()),
            checkpoint_window: watch::channel(DEFAULT_CHECKPOINT_WINDOW).0,
            acquired: Notify::new(),
        })
    }

    /// This pod.
    pub fn pod(&self) -> &PodName {
        &self.pod
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<StreamKey, Box<Held>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn standbys(&self) -> std::sync::MutexGuard<'_, HashMap<StreamKey, Standby>> {
        self.standbys.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, PendingCheckpoints> {
        self.checkpoints.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Streams this pod stands by for right now.
    pub fn standby_count(&self) -> usize {
        self.standbys().len()
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the hook (and the log) when the pod's answer flipped.
    fn pod_health(&self, flipped: Option<bool>) {
        let Some(up) = flipped else { return };
        if up {
            tracing::info!("store reachable again for every tenant; re-asserting ownership");
        } else {
            tracing::warn!(
                down = ?self.health().down().iter().map(Tenant::as_str).collect::<Vec<_>>(),
                "store unreachable; streams stop when their leases lapse, no new ownership is taken"
            );
        }
        (self.on_store_up)(up);
    }

    /// Records whether a call about `tenant` reached its store node.
    fn mark_tenant(&self, tenant: &Tenant, up: bool) {
        let change = self.health().mark(tenant, up, Instant::now());
        if change.tenant {
            if up {
                tracing::info!(%tenant, "the tenant's store node answers again");
            } else {
                tracing::warn!(%tenant, "the tenant's store node does not answer");
            }
        }
        self.pod_health(change.pod);
    }

    fn health_of(&self, tenant: &Tenant) -> TenantHealth {
        self.health().of(tenant)
    }

    /// Whether the store answers for the pod: the transitions subscription is up and every
    /// tenant of the config answered its last call ([`Health`]).
    pub fn store_up(&self) -> bool {
        self.health().up()
    }

    /// The tenants of the config whose store node did not answer the last call.
    pub fn store_down_tenants(&self) -> Vec<Tenant> {
        self.health().down()
    }

    /// Stops taking ownership (SIGTERM): waiting claims give up.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        for s in self.standbys().values() {
            s.wake.notify_waiters();
        }
    }

    /// Whether the pod is draining.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Sets the per-tenant pool limits (from the config).
    pub fn set_limits(&self, limits: BTreeMap<Tenant, u32>) {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner()) = limits;
    }

    /// Sets how long acked ids wait before they are checkpointed (from the config).
    pub fn set_checkpoint_window(&self, window: Duration) {
        self.checkpoint_window
            .send_if_modified(|w| std::mem::replace(w, window) != window);
    }

    /// The pool limit of `tenant`.
    pub fn limit(&self, tenant: &Tenant) -> u32 {
        self.limits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .copied()
            .unwrap_or(DEFAULT_TENANT_LIMIT)
    }

    /// Adds a tenant of the config: its stale entries are swept, and its store node's answers
    /// count for [`Ownership::store_up`].
    pub fn watch_tenant(&self, tenant: &Tenant) {
        let flipped = self.health().watch_one(tenant);
        self.pod_health(flipped);
    }

    /// The tenants of the config, replacing the earlier ones (a tenant no stream names any
    /// more is neither swept nor counted).
    pub fn set_tenants(&self, tenants: BTreeSet<Tenant>) {
        let flipped = self.health().watch(tenants);
        self.pod_health(flipped);
    }

    /// Waits until this pod holds the stream's lease; `None` when `stop` fires or the pod
    /// drains first. `ttl` is how long the lease lives without renewal.
    pub async fn claim(
        &self,
        key: &StreamKey,
        ttl: Duration,
        platform: Platform,
        status: &StatusCell,
        stop: &mut signal::Receiver<Option<DropReason>>,
    ) -> Option<Claim> {
        let (wake, mut due) = {
            let mut standbys = self.standbys();
            let s = standbys.entry(key.clone()).or_default();
            (Arc::clone(&s.wake), s.due.subscribe())
        };
        let _standby = StandbyGuard {
            ownership: self,
            key,
        };
        // Pods that start together do not all ask at the same instant, which also spreads
        // a workload's streams over its pods.
        let first = ttl
            .mul_f64(0.1 * rand::random::<f64>())
            .min(Duration::from_millis(500));
        tokio::select! {
            _ = tokio::time::sleep(first) => {}
            _ = stop.changed() => {}
        }
        loop {
            if stop.borrow().is_some() || self.draining() {
                return None;
            }
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            due.borrow_and_update();
            let health = self.health_of(key.tenant());
            let now = Instant::now();
            // A slow retry for when nothing better is known (the store is down, or did not
            // say when the lease lapses).
            let fallback = now
                + ttl
                    .mul_f64(0.25 + 0.25 * rand::random::<f64>())
                    .min(Duration::from_secs(5));
            let mut ask_at = if !health.up {
                // Nothing can be taken while the tenant's store is unreachable: ask it only
                // whether it answers again (a read-only look at this lease on the tenant's
                // node), so no standby grabs a lease in the store's first answer.
                let look = self
                    .store
                    .lease_expiries(key.tenant(), std::slice::from_ref(key.stream()))
                    .await;
                self.mark_tenant(key.tenant(), look.is_ok());
                if look.is_ok() {
                    continue;
                }
                fallback
            } else if let Some(grace_end) =
                health.back_at.map(|at| at + ttl).filter(|end| now < *end)
            {
                // The store is back, perhaps empty: its owners re-assert their leases with
                // their next beat. A standby that asked now would find an empty store's
                // leases free and take streams their owners still hold in memory.
                grace_end
            } else {
                match self.try_acquire(key, ttl, platform, status, stop).await {
                    Attempt::Granted(claim) => return Some(claim),
                    // Ask again just after it would lapse; the beat tick's look at the lease
                    // moves that on while its owner renews it, so a standby asks once per
                    // lapse, not once per lease lifetime. A handover or DEAD wakes us at once.
                    Attempt::Held(Some(left)) => Instant::now() + left + standby_jitter(),
                    Attempt::Held(None) | Attempt::Failed => fallback,
                }
            };
            loop {
                tokio::select! {
                    _ = &mut notified => break,
                    _ = tokio::time::sleep_until(ask_at) => break,
                    changed = due.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        if let Some(at) = *due.borrow_and_update() {
                            ask_at = at;
                        }
                    }
                    _ = stop.changed() => break,
                }
            }
        }
    }

    /// One look, per tenant, at the leases of every stream this pod stands by for, telling
    /// each standby when to ask: just after its lease lapses, or now when it is free or
    /// lapsed. One read-only call per tenant per beat tick, however many streams.
    pub async fn look_at_standby_leases(&self) {
        let mut by_tenant: BTreeMap<Tenant, Vec<StreamKey>> = BTreeMap::new();
        for key in self.standbys().keys() {
            by_tenant
                .entry(key.tenant().clone())
                .or_default()
                .push(key.clone());
        }
        for (tenant, keys) in by_tenant {
            let streams: Vec<_> = keys.iter().map(|k| k.stream().clone()).collect();
            match self.store.lease_expiries(&tenant, &streams).await {
                Ok(views) => {
                    self.mark_tenant(&tenant, true);
                    let now = Instant::now();
                    let standbys = self.standbys();
                    for (key, view) in keys.iter().zip(views) {
                        let at = match view {
                            LeaseView::Held { expires_in } => now + expires_in + standby_jitter(),
                            LeaseView::Lapsed | LeaseView::Free => now,
                        };
                        if let Some(s) = standbys.get(key) {
                            s.due.send_replace(Some(at));
                        }
                    }
                }
                Err(e) => {
                    self.mark_tenant(&tenant, false);
                    tracing::debug!(error = %e, %tenant, "cannot look at the standby leases");
                }
            }
        }
    }

    /// One ask for the lease.
    async fn try_acquire(
        &self,
        key: &StreamKey,
        ttl: Duration,
        platform: Platform,
        status: &StatusCell,
        stop: &signal::Receiver<Option<DropReason>>,
    ) -> Attempt {
        let sent_at = Instant::now();
        match self.store.try_acquire(key, &self.pod, ttl).await {
            Ok(Acquired::Granted { fence, took_over }) => {
                self.mark_tenant(key.tenant(), true);
                let term = LeaseTerm::granted(ttl, sent_at);
                // Beside the stream's stop signal: its supervisor waits on them together.
                let (tx, rx) = stop.sibling(None);
                let (valid_tx, valid_rx) = stop.sibling(term.until());
                self.held().insert(
                    key.clone(),
                    Box::new(Held {
                        fence,
                        term,
                        platform,
                        status: Arc::clone(status),
                        lost: tx,
                        valid_until: valid_tx,
                    }),
                );
                self.acquired.notify_one();
                tracing::info!(stream = %key.stream(), %fence, "lease acquired");
                if let Some((owner, old)) = took_over {
                    // The previous owner stopped vouching without a release (crashed, frozen
                    // or cut off): announce it, so every pod (and the old owner, if it wakes)
                    // knows that socket is gone. Queued ahead of this pod's own transitions.
                    let mut t = self.transition(
                        key,
                        old,
                        StreamState::Active,
                        StreamState::Dead,
                        "owner_lost",
                    );
                    t.owner = Some(owner);
                    tracing::warn!(stream = %key.stream(), previous = ?t.owner.as_ref().map(|p| p.as_str()), %old, "took over a lapsed lease");
                    self.publisher.push(key.clone(), fence, t);
                }
                Attempt::Granted(Claim {
                    key: key.clone(),
                    fence,
                    lost: rx,
                    valid_until: valid_rx,
                })
            }
            Ok(Acquired::Held { expires_in }) => {
                self.mark_tenant(key.tenant(), true);
                Attempt::Held(expires_in)
            }
            Err(e) => {
                self.mark_tenant(key.tenant(), false);
                tracing::debug!(stream = %key.stream(), error = %e, "cannot contend for the lease");
                Attempt::Failed
            }
        }
    }

    /// Takes a slot in the tenant's pool for a held lease (`false`: the pool is full).
    pub async fn pool_acquire(&self, claim: &Claim) -> Result<bool, StoreError> {
        let limit = self.limit(claim.key.tenant());
        let res = self
            .store
            .pool_acquire(&claim.key, claim.fence, limit)
            .await;
        self.mark_tenant(
            claim.key.tenant(),
            !matches!(res, Err(StoreError::Unavailable(_))),
        );
        res
    }

    /// Whether the lease may be acted on now (confirmed, within its term).
    pub fn confirmed(&self, key: &StreamKey, fence: Fence) -> bool {
        let held = self.held();
        held.get(key)
            .is_some_and(|h| h.fence == fence && h.term.valid_at(Instant::now()))
    }

    /// Records the newest acked id of a held stream; it reaches the store with the next flush
    /// (at most one checkpoint window later). Never waits.
    pub fn record_ack(&self, claim: &Claim, id: EventId) {
        self.pending().record(&claim.key, claim.fence, id);
    }

    /// Stores the last acked id under the fence now (a handover), replacing what waited for
    /// the next flush; `false` when the fence is stale.
    pub async fn checkpoint(&self, claim: &Claim, id: &EventId) -> Result<bool, StoreError> {
        let write = {
            let mut pending = self.pending();
            pending.take_one(&claim.key);
            CheckpointWrite {
                key: claim.key.clone(),
                fence: claim.fence,
                seq: pending.next_seq(),
                id: id.clone(),
            }
        };
        match self.store.save_checkpoint(&write).await {
            CheckpointOutcome::Saved | CheckpointOutcome::Superseded => Ok(true),
            CheckpointOutcome::Fenced => {
                self.lose(&claim.key, claim.fence, DropReason::OwnerLost);
                Ok(false)
            }
            CheckpointOutcome::LeaseMissing => Err(StoreError::LeaseMissing),
            CheckpointOutcome::Failed(e) => Err(e),
        }
    }

    /// Writes every waiting checkpoint, one batch (one script per tenant, or one for all on a
    /// single node). A write the store refused because the fence is stale ends that lease;
    /// one that could not be made waits for the next flush, unless a newer ack replaced it or
    /// the lease is gone.
    pub async fn flush_checkpoints(&self) {
        let writes = self.pending().take();
        if writes.is_empty() {
            return;
        }
        let outcomes = self.store.save_checkpoints(&writes).await;
        let mut failed = None;
        // Per tenant: whether its node answered (a tenant's writes go to one node together).
        let mut answered: BTreeMap<Tenant, bool> = BTreeMap::new();
        for (w, outcome) in writes.into_iter().zip(outcomes) {
            let ok = !matches!(outcome, CheckpointOutcome::Failed(_));
            *answered.entry(w.key.tenant().clone()).or_insert(true) &= ok;
            match outcome {
                CheckpointOutcome::Saved | CheckpointOutcome::Superseded => {}
                CheckpointOutcome::Fenced => self.lose(&w.key, w.fence, DropReason::OwnerLost),
                // The store lost the lease (restarted empty): the next beat re-asserts it.
                CheckpointOutcome::LeaseMissing => self.requeue(w),
                CheckpointOutcome::Failed(e) => {
                    failed.get_or_insert(e);
                    self.requeue(w);
                }
            }
        }
        for (tenant, ok) in answered {
            self.mark_tenant(&tenant, ok);
        }
        if let Some(e) = failed {
            tracing::debug!(error = %e, "checkpoints deferred to the next flush");
        }
    }

    fn requeue(&self, w: CheckpointWrite) {
        if self.holds(&w.key, w.fence) {
            self.pending().requeue(w);
        }
    }

    fn holds(&self, key: &StreamKey, fence: Fence) -> bool {
        self.held().get(key).is_some_and(|h| h.fence == fence)
    }

    /// Queues a state change of a stream this pod runs, to be published in order. Never
    /// waits.
    pub fn publish(
        &self,
        key: &StreamKey,
        fence: Fence,
        from: StreamState,
        to: StreamState,
        reason: &str,
    ) {
        let t = self.transition(key, fence, from, to, reason);
        self.publisher.push(key.clone(), fence, t);
    }

    /// Publishes one queued transition (the publisher worker).
    async fn publish_now(&self, q: &Queued) {
        match self.store.publish(&q.key, q.fence, &q.transition).await {
            Ok(true) => self.mark_tenant(q.key.tenant(), true),
            Ok(false) => {
                self.mark_tenant(q.key.tenant(), true);
                self.lose(&q.key, q.fence, DropReason::OwnerLost);
            }
            Err(StoreError::LeaseMissing) => {
                self.mark_tenant(q.key.tenant(), true);
                tracing::debug!(stream = %q.key.stream(), "transition not published: the store lost the lease; the next beat re-asserts it");
            }
            Err(e) => {
                self.mark_tenant(q.key.tenant(), false);
                tracing::debug!(stream = %q.key.stream(), error = %e, "transition not published");
            }
        }
    }

    fn transition(
        &self,
        key: &StreamKey,
        fence: Fence,
        from: StreamState,
        to: StreamState,
        reason: &str,
    ) -> Transition {
        Transition {
            stream: key.stream().clone(),
            tenant: key.tenant().clone(),
            from,
            to,
            reason: reason.to_owned(),
            owner: Some(self.pod.clone()),
            fence: Some(fence),
            at: epoch_ms(),
        }
    }

    /// Gives the lease up and publishes the handover, so a standby takes over at once. The
    /// stream's queued transitions go out first.
    pub async fn release(&self, claim: Claim, from: StreamState, reason: DropReason) {
        self.pending().forget(&claim.key, claim.fence);
        let held = self.held().remove(&claim.key);
        if held.is_none() {
            return;
        }
        self.publisher.drained(RELEASE_ORDER_BOUND).await;
        let t = self.transition(
            &claim.key,
            claim.fence,
            from,
            StreamState::Stopped,
            reason.as_str(),
        );
        match self.store.release(&claim.key, claim.fence, &t).await {
            Ok(_) => self.mark_tenant(claim.key.tenant(), true),
            Err(e) => {
                self.mark_tenant(claim.key.tenant(), false);
                tracing::warn!(stream = %claim.key.stream(), error = %e, "lease not released; it lapses by itself");
            }
        }
    }

    /// Forgets a claim without releasing it (the lease was lost), with its waiting checkpoint.
    pub fn forget(&self, claim: &Claim) {
        self.pending().forget(&claim.key, claim.fence);
        let mut held = self.held();
        if held.get(&claim.key).is_some_and(|h| h.fence == claim.fence) {
            held.remove(&claim.key);
        }
    }

    fn lose(&self, key: &StreamKey, fence: Fence, reason: DropReason) {
        let mut held = self.held();
        if held.get(key).is_some_and(|h| h.fence == fence)
            && let Some(h) = held.remove(key)
        {
            tracing::warn!(stream = %key.stream(), %fence, %reason, "lease lost; terminating the stream");
            h.lost.send_replace(Some(reason));
        }
    }

    /// The store confirmed the lease with a renewal sent at `sent_at`: its term moves on.
    fn confirm(&self, key: &StreamKey, fence: Fence, sent_at: Instant) {
        if let Some(h) = self.held().get_mut(key).filter(|h| h.fence == fence) {
            let until = h.term.confirmed(sent_at);
            h.valid_until.send_if_modified(|v| {
                let moved = *v != until;
                *v = until;
                moved
            });
        }
    }

    /// One renewal round: every held lease, one batched store call. Only what the store
    /// confirmed moves on; a lease it fenced ends at once. Returns whether every lease was
    /// confirmed or ended (`false`: some beats failed, try again soon).
    pub async fn beat_once(&self) -> bool {
        let (keys, beats): (Vec<StreamKey>, Vec<Beat>) = {
            let held = self.held();
            held.iter()
                .map(|(k, h)| {
                    let st = read_status(&h.status);
                    let record = ConnRecord {
                        stream: k.stream().clone(),
                        tenant: k.tenant().clone(),
                        socket_id: st.connection,
                        last_pong: st.last_pong_ms.max(1),
                        platform: h.platform,
                        state: st.state,
                        retry_count: st.retry_count,
                        owner: self.pod.clone(),
                        fence: h.fence,
                    };
                    (
                        k.clone(),
                        Beat {
                            key: k.clone(),
                            fence: h.fence,
                            record,
                            lease_ttl: h.term.ttl(),
                        },
                    )
                })
                .unzip()
        };
        if beats.is_empty() {
            return true;
        }
        let sent_at = Instant::now();
        let mut reasserted = Vec::new();
        let outcomes = self.store.beat(&beats).await;
        let mut first_error = None;
        let mut failed = 0usize;
        // Per tenant: whether its node answered every beat of this round.
        let mut answered: BTreeMap<&Tenant, bool> = BTreeMap::new();
        for ((key, beat), outcome) in keys.iter().zip(&beats).zip(outcomes) {
            *answered.entry(key.tenant()).or_insert(true) &=
                !matches!(outcome, BeatOutcome::Failed(_));
            match outcome {
                BeatOutcome::Renewed => self.confirm(key, beat.fence, sent_at),
                BeatOutcome::Reasserted => {
                    tracing::info!(stream = %key.stream(), fence = %beat.fence, "lease re-asserted after the store lost it");
                    self.confirm(key, beat.fence, sent_at);
                    reasserted.push((key.clone(), beat.fence));
                }
                // Whatever the other chunks did: another pod holds the lease.
                BeatOutcome::Fenced => self.lose(key, beat.fence, DropReason::OwnerLost),
                // Confirms nothing: this pod cannot tell "the store is down for everyone"
                // from "I alone am cut off", so the lease runs out on its own term.
                BeatOutcome::Failed(e) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        for (tenant, ok) in answered {
            self.mark_tenant(tenant, ok);
        }
        let all_answered = match first_error {
            Some(e) => {
                tracing::debug!(error = %e, failed, of = beats.len(), "beat failed");
                false
            }
            None => true,
        };
        // A store that lost a lease (restarted empty) lost its pool slot too: take it back, or
        // give the stream up if the pool filled meanwhile (the limit holds at every instant).
        for (key, fence) in reasserted {
            match self
                .store
                .pool_acquire(&key, fence, self.limit(key.tenant()))
                .await
            {
                Ok(true) => {}
                Ok(false) => self.lose(&key, fence, DropReason::Preempted),
                Err(e) => {
                    tracing::debug!(stream = %key.stream(), error = %e, "pool slot not re-taken yet")
                }
            }
        }
        all_answered
    }

    /// One sweep of every watched tenant for stale entries (crashed pods' streams).
    pub async fn sweep_once(&self, stale_after: Duration) {
        let tenants: Vec<Tenant> = self.health().watched().iter().cloned().collect();
        // A sweep's result says nothing about the tenant's node (while Redis was unavailable
        // recently the store only pings, and a ping may go to any node): it is not counted.
        for tenant in tenants {
            match self
                .store
                .sweep_stale(&tenant, epoch_ms(), stale_after)
                .await
            {
                Ok(dead) => {
                    for t in dead {
                        tracing::warn!(stream = %t.stream, owner = ?t.owner.as_ref().map(|p| p.as_str()), "stale stream declared DEAD");
                    }
                }
                Err(e) => {
                    // On a cluster only this tenant's node may be down: sweep the others.
                    tracing::debug!(error = %e, %tenant, "sweep failed");
                }
            }
        }
    }

    /// Acts on one transition heard on the channel.
    pub fn on_transition(&self, t: &Transition) {
        let key = StreamKey::new(t.tenant.clone(), t.stream.clone());
        if t.to == StreamState::Dead {
            let ours = {
                let held = self.held();
                held.get(&key).map(|h| h.fence)
            };
            if let Some(fence) = ours {
                let about = t.fence.unwrap_or(Fence(0));
                // Older fence: about an owner before us (e.g. our own takeover's owner_lost).
                // Our fence, from us, for a socket: our own report of a reaped socket.
                let ours_reaped = about == fence
                    && t.owner.as_ref() == Some(&self.pod)
                    && !matches!(t.reason.as_str(), "stale" | "owner_lost");
                if about >= fence && !ours_reaped {
                    self.lose(&key, fence, DropReason::OwnerLost);
                }
            }
        }
        if matches!(t.to, StreamState::Dead | StreamState::Stopped) {
            // Only a standby of this pod is woken: a DEAD about a stream nobody here waits
            // for leaves nothing behind.
            if let Some(s) = self.standbys().get(&key) {
                s.wake.notify_waiters();
            }
        }
    }

    /// Runs the beat, sweep, checkpoint, publish and subscription loops until `shutdown`
    /// resolves. `tick` is the beat period (the shortest heartbeat interval) and the sweep's
    /// threshold.
    pub async fn run(
        self: Arc<Self>,
        tick: watch::Receiver<(Duration, Duration)>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let subscriber = {
            let me = Arc::clone(&self);
            tokio::spawn(async move { me.listen().await })
        };
        let publisher = {
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                loop {
                    let q = me.publisher.next().await;
                    me.publish_now(&q).await;
                    me.publisher.finished(q.seq);
                }
            })
        };
        let flusher = {
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                let mut window = me.checkpoint_window.subscribe();
                loop {
                    let w = *window.borrow_and_update();
                    tokio::select! {
                        _ = tokio::time::sleep(w) => me.flush_checkpoints().await,
                        // A shorter window takes effect now.
                        _ = window.changed() => {}
                    }
                }
            })
        };
        let beats = {
            let me = Arc::clone(&self);
            let mut tick = tick;
            async move {
                let mut answered = true;
                loop {
                    let (period, stale_after) = *tick.borrow_and_update();
                    // ±10 % jitter: pods started together do not sweep together. After a failed
                    // beat, try again sooner: the leases are running out.
                    let base = if answered { period } else { period / 4 };
                    let jittered = base.mul_f64(0.9 + 0.2 * rand::random::<f64>());
                    tokio::select! {
                        _ = tokio::time::sleep(jittered) => {}
                        // A new config may shorten the period: start over with it.
                        changed = tick.changed() => {
                            if changed.is_ok() {
                                continue;
                            }
                            tokio::time::sleep(jittered).await;
                        }
                    }
                    answered = me.beat_once().await;
                    if answered {
                        me.sweep_once(stale_after).await;
                        me.look_at_standby_leases().await;
                    }
                }
            }
        };
        let deadlines = {
            let me = Arc::clone(&self);
            tokio::spawn(async move { me.watch_deadlines().await })
        };
        tokio::select! {
            _ = beats => {}
            _ = shutdown => {}
        }
        subscriber.abort();
        publisher.abort();
        flusher.abort();
        deadlines.abort();
    }

    /// Tells each held lease's supervisor when its deadline passes unconfirmed: its
    /// `valid_until` signal is marked changed (same value) at that instant, and the supervisor,
    /// woken, finds the lease past. One timer for the pod, asleep until the earliest deadline,
    /// rather than one per stream (112 bytes of every supervisor's future, which lives as long
    /// as its stream).
    async fn watch_deadlines(&self) {
        // Deadlines up to here have been told; a renewal moves a deadline past it again.
        let mut told = Instant::now();
        loop {
            let acquired = self.acquired.notified();
            tokio::pin!(acquired);
            acquired.as_mut().enable();
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            for h in self.held().values() {
                let until = *h.valid_until.borrow();
                if until <= now {
                    if until > told {
                        h.valid_until.send_if_modified(|_| true);
                    }
                } else {
                    next = Some(next.map_or(until, |n| n.min(until)));
                }
            }
            told = now;
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = acquired => {}
                    }
                }
                None => acquired.await,
            }
        }
    }

    async fn listen(&self) {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.store.subscribe().await {
                Ok(mut transitions) => {
                    delay = Duration::from_millis(200);
                    let flipped = self.health().subscription(true);
                    self.pod_health(flipped);
                    while let Some(t) = transitions.next().await {
                        self.on_transition(&t);
                    }
                    let flipped = self.health().subscription(false);
                    self.pod_health(flipped);
                }
                Err(e) => {
                    let flipped = self.health().subscription(false);
                    self.pod_health(flipped);
                    tracing::debug!(error = %e, "cannot subscribe to transitions");
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

/// Spreads standbys that ask about the same lapse over 50..250 ms, so they do not arrive
/// together.
fn standby_jitter() -> Duration {
    Duration::from_millis(50).mul_f64(1.0 + 4.0 * rand::random::<f64>())
}

/// What one ask for a lease brought.
enum Attempt {
    Granted(Claim),
    /// Someone holds it; it lapses in this long, if the store could tell.
    Held(Option<Duration>),
    Failed,
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use async_trait::async_trait;
    use streamkeeper_coord::{MemoryStore, TransitionStream};

    use super::*;

    /// The real in-process store as one pod sees it through a network that can be cut: while
    /// `cut`, every call from this pod fails as a timed-out Redis call would, while other pods
    /// (on the inner store directly) still reach it. Nothing else can cut one pod off an
    /// in-process store; the e2e tests cut a real Redis with a TCP relay.
    struct CutOff {
        inner: Arc<MemoryStore>,
        cut: AtomicBool,
    }

    impl CutOff {
        fn check(&self) -> Result<(), StoreError> {
            if self.cut.load(Ordering::Relaxed) {
                Err(StoreError::Unavailable("timed out (cut off)".into()))
            } else {
                Ok(())
            }
        }
    }

    #[async_trait]
    impl Store for CutOff {
        async fn try_acquire(
            &self,
            key: &StreamKey,
            owner: &PodName,
            ttl: Duration,
        ) -> Result<Acquired, StoreError> {
            self.check()?;
            self.inner.try_acquire(key, owner, ttl).await
        }
        async fn beat(&self, beats: &[Beat]) -> Vec<BeatOutcome> {
            match self.check() {
                Ok(()) => self.inner.beat(beats).await,
                Err(e) => vec![BeatOutcome::Failed(e); beats.len()],
            }
        }
        async fn lease_expiries(
            &self,
            tenant: &Tenant,
            streams: &[streamkeeper_api::StreamId],
        ) -> Result<Vec<LeaseView>, StoreError> {
            self.check()?;
            self.inner.lease_expiries(tenant, streams).await
        }
        async fn release(
            &self,
            key: &StreamKey,
            fence: Fence,
            t: &Transition,
        ) -> Result<bool, StoreError> {
            self.check()?;
            self.inner.release(key, fence, t).await
        }
        async fn publish(
            &self,
            key: &StreamKey,
            fence: Fence,
            t: &Transition,
        ) -> Result<bool, StoreError> {
            self.check()?;
            self.inner.publish(key, fence, t).await
        }
        async fn checkpoint(&self, key: &StreamKey) -> Result<Option<EventId>, StoreError> {
            self.check()?;
            self.inner.checkpoint(key).await
        }
        async fn save_checkpoints(&self, writes: &[CheckpointWrite]) -> Vec<CheckpointOutcome> {
            match self.check() {
                Ok(()) => self.inner.save_checkpoints(writes).await,
                Err(e) => vec![CheckpointOutcome::Failed(e); writes.len()],
            }
        }
        async fn sweep_stale(
            &self,
            tenant: &Tenant,
            now_ms: u64,
            stale_after: Duration,
        ) -> Result<Vec<Transition>, StoreError> {
            self.check()?;
            self.inner.sweep_stale(tenant, now_ms, stale_after).await
        }
        async fn pool_acquire(
            &self,
            key: &StreamKey,
            fence: Fence,
            limit: u32,
        ) -> Result<bool, StoreError> {
            self.check()?;
            self.inner.pool_acquire(key, fence, limit).await
        }
        async fn pool_release(&self, key: &StreamKey, fence: Fence) -> Result<(), StoreError> {
            self.check()?;
            self.inner.pool_release(key, fence).await
        }
        async fn subscribe(&self) -> Result<TransitionStream, StoreError> {
            self.check()?;
            self.inner.subscribe().await
        }
        async fn records(&self) -> Result<Vec<ConnRecord>, StoreError> {
            self.check()?;
            self.inner.records().await
        }
        async fn ping(&self) -> Result<(), StoreError> {
            self.check()
        }
        async fn remove_stream(&self, key: &StreamKey) -> Result<bool, StoreError> {
            self.check()?;
            self.inner.remove_stream(key).await
        }
    }

    fn cut_off(store: &Arc<MemoryStore>) -> Arc<CutOff> {
        Arc::new(CutOff {
            inner: Arc::clone(store),
            cut: AtomicBool::new(false),
        })
    }

    fn manager_on(store: Arc<dyn Store>, pod: &str) -> Arc<Ownership> {
        Ownership::new(store, pod.parse().expect("pod"), Arc::new(|_| {}))
    }

    /// The pod's deadline watch wakes each supervisor when its lease's deadline passes
    /// unconfirmed (the supervisor keeps no timer of its own): at the deadline, not before, and
    /// for a lease acquired while it sleeps towards a later one.
    #[tokio::test(start_paused = true)]
    async fn the_deadline_watch_tells_each_lease_when_it_runs_out() {
        let store = Arc::new(MemoryStore::new());
        let a = manager(&store, "pod-a");
        let status: StatusCell = Default::default();
        let (_tx, mut stop) = crate::signal::channel(None);
        a.watch_tenant(key().tenant());
        let long = a
            .claim(
                &key(),
                Duration::from_secs(30),
                Platform::Generic,
                &status,
                &mut stop,
            )
            .await
            .expect("a owns");
        let watch = {
            let a = Arc::clone(&a);
            tokio::spawn(async move { a.watch_deadlines().await })
        };
        // Acquired while the watch sleeps towards the 30 s lease's deadline.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let short_key = StreamKey::new(key().tenant().clone(), "cc/short".parse().expect("id"));
        let mut short = a
            .claim(
                &short_key,
                Duration::from_secs(3),
                Platform::Generic,
                &status,
                &mut stop,
            )
            .await
            .expect("a owns");
        let until = *short.valid_until.borrow_and_update();
        tokio::time::sleep_until(until - Duration::from_millis(1)).await;
        assert_eq!(short.valid_until.has_changed(), Ok(false), "not before");
        tokio::time::sleep_until(until + Duration::from_millis(1)).await;
        assert_eq!(
            short.valid_until.has_changed(),
            Ok(true),
            "told at its deadline"
        );
        assert_eq!(
            *short.valid_until.borrow_and_update(),
            until,
            "and not moved on"
        );
        assert_eq!(
            long.valid_until.has_changed(),
            Ok(false),
            "the other is in time"
        );
        // Told once: the watch does not wake a lapsed lease's supervisor again.
        let long_until = *long.valid_until.borrow();
        tokio::time::sleep_until(long_until + Duration::from_millis(1)).await;
        assert_eq!(long.valid_until.has_changed(), Ok(true));
        assert_eq!(short.valid_until.has_changed(), Ok(false), "told once");
        watch.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_cut_off_from_the_store_stops_before_another_can_take_over() {
        let store = Arc::new(MemoryStore::new());
        let link = cut_off(&store);
        let a = manager_on(link.clone(), "pod-a");
        let b = manager(&store, "pod-b");
        let status: StatusCell = Default::default();
        let (_tx, mut stop) = crate::signal::channel(None);
        a.watch_tenant(key().tenant());
        let ttl = Duration::from_secs(3);
        let claim = a
            .claim(&key(), ttl, Platform::Generic, &status, &mut stop)
            .await
            .expect("a owns");
        // Beats confirmed every second keep the lease valid.
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(1)).await;
            assert!(a.beat_once().await);
            assert!(a.confirmed(&key(), claim.fence));
        }
        let last_confirmed = Instant::now();
        assert_eq!(
            *claim.valid_until.borrow(),
            last_confirmed + ttl - crate::lease::safety_margin(ttl)
        );
        // Cut: every beat fails and none moves the lease on.
        link.cut.store(true, Ordering::Relaxed);
        let mut stopped_at = None;
        let mut taken_at = None;
        let mut stop_b = stop.clone();
        let b_claim = {
            let b = Arc::clone(&b);
            let status = Arc::clone(&status);
            tokio::spawn(async move {
                let c = b
                    .claim(&key(), ttl, Platform::Generic, &status, &mut stop_b)
                    .await;
                (c.map(|c| c.fence), Instant::now())
            })
        };
        for _ in 0..50 {
            tokio::time::advance(Duration::from_millis(100)).await;
            assert!(!a.beat_once().await, "a cut-off beat reads failed");
            if stopped_at.is_none() && !a.confirmed(&key(), claim.fence) {
                stopped_at = Some(Instant::now());
            }
            if b_claim.is_finished() && taken_at.is_none() {
                taken_at = Some(Instant::now());
            }
        }
        let (fence_b, b_at) = b_claim.await.expect("task");
        assert!(fence_b.is_some_and(|f| f > claim.fence), "b took over");
        let stopped_at = stopped_at.expect("a stopped acting on its lease");
        assert!(
            stopped_at <= last_confirmed + ttl - crate::lease::safety_margin(ttl),
            "a stopped at its deadline"
        );
        assert!(
            b_at >= last_confirmed + ttl,
            "b could not take over before the store's lease expired: {:?} after the last beat",
            b_at - last_confirmed
        );
        assert!(stopped_at < b_at, "a stopped before b took over");
        assert!(!a.store_up());
        // The link heals: a's beat is fenced, and its lease ends at once.
        link.cut.store(false, Ordering::Relaxed);
        assert!(a.beat_once().await);
        assert_eq!(*claim.lost.borrow(), Some(DropReason::OwnerLost));
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_outage_shorter_than_the_lease_keeps_it_and_a_longer_one_resumes_it_unfenced() {
        let store = Arc::new(MemoryStore::new());
        let link = cut_off(&store);
        let a = manager_on(link.clone(), "pod-a");
        let status: StatusCell = Default::default();
        let (_tx, mut stop) = crate::signal::channel(None);
        let ttl = Duration::from_secs(4);
        let claim = a
            .claim(&key(), ttl, Platform::Generic, &status, &mut stop)
            .await
            .expect("a owns");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(a.beat_once().await);
        link.cut.store(true, Ordering::Relaxed);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!a.beat_once().await);
        assert!(a.confirmed(&key(), claim.fence), "2 s into a 4 s lease");
        link.cut.store(false, Ordering::Relaxed);
        assert!(a.beat_once().await);
        assert!(a.confirmed(&key(), claim.fence));
        // Longer than the lease: not confirmed, then confirmed again under the same fence
        // (nobody took it), with nothing lost.
        link.cut.store(true, Ordering::Relaxed);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!a.beat_once().await);
        assert!(!a.confirmed(&key(), claim.fence));
        let mut valid = claim.valid_until.clone();
        drop(valid.borrow_and_update());
        link.cut.store(false, Ordering::Relaxed);
        assert!(a.beat_once().await);
        assert!(a.confirmed(&key(), claim.fence));
        assert!(valid.has_changed().expect("open"), "the session is told");
        assert_eq!(*claim.lost.borrow(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn standbys_give_owners_a_lease_after_the_store_returns() {
        let store = Arc::new(MemoryStore::new());
        let link = cut_off(&store);
        let b = manager_on(link.clone(), "pod-b");
        let status: StatusCell = Default::default();
        let (_tx, mut stop) = crate::signal::channel(None);
        let ttl = Duration::from_secs(2);
        // b heard nothing from the store for a while (it is empty: an owner still has the
        // stream in memory and re-asserts it with its next beat).
        link.cut.store(true, Ordering::Relaxed);
        b.watch_tenant(key().tenant());
        let standby = {
            let b = Arc::clone(&b);
            let status = Arc::clone(&status);
            tokio::spawn(async move {
                b.claim(&key(), ttl, Platform::Generic, &status, &mut stop)
                    .await
                    .map(|_| Instant::now())
            })
        };
        // Its first ask (within 10 % of the TTL) goes unanswered: the tenant's store reads
        // down.
        for _ in 0..10 {
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        assert!(!b.store_up());
        assert_eq!(b.store_down_tenants(), [key().tenant().clone()]);
        tokio::time::advance(Duration::from_secs(2)).await;
        let back = Instant::now();
        link.cut.store(false, Ordering::Relaxed);
        let granted = standby.await.expect("task").expect("b owns in the end");
        assert!(
            granted >= back + ttl,
            "b took the free lease {:?} after the store returned",
            granted - back
        );
        assert_eq!(
            b.standby_count(),
            0,
            "the standby entry went with the claim"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn dead_heard_for_streams_nobody_here_waits_for_leaves_nothing_behind() {
        let store = Arc::new(MemoryStore::new());
        let a = manager(&store, "pod-a");
        for n in 0..100 {
            a.on_transition(&Transition {
                stream: format!("cc/s{n}").parse().expect("id"),
                tenant: "acme".parse().expect("tenant"),
                from: StreamState::Active,
                to: StreamState::Dead,
                reason: "stale".into(),
                owner: None,
                fence: Some(Fence(1)),
                at: 0,
            });
        }
        assert_eq!(a.standby_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn acks_reach_the_store_with_the_next_flush_and_a_fenced_flush_ends_the_lease() {
        let store = Arc::new(MemoryStore::new());
        let a = manager(&store, "pod-a");
        let b = manager(&store, "pod-b");
        let status: StatusCell = Default::default();
        let (_tx, mut stop) = crate::signal::channel(None);
        let ttl = Duration::from_secs(2);
        let claim = a
            .claim(&key(), ttl, Platform::Generic, &status, &mut stop)
            .await
            .expect("a owns");
        for n in 1..=3 {
            a.record_ack(&claim, EventId(format!("e{n}")));
        }
        assert_eq!(store.checkpoint(&key()).await.expect("read"), None);
        a.flush_checkpoints().await;
        assert_eq!(
            store.checkpoint(&key()).await.expect("read"),
            Some(EventId("e3".into()))
        );
        // a freezes; b takes over; a's late flush is refused and ends its lease.
        tokio::time::advance(Duration::from_secs(3)).await;
        let _b = b
            .claim(&key(), ttl, Platform::Generic, &status, &mut stop)
            .await
            .expect("b owns");
        a.record_ack(&claim, EventId("e4".into()));
        a.flush_checkpoints().await;
        assert_eq!(
            store.checkpoint(&key()).await.expect("read"),
            Some(EventId("e3".into()))
        );
        assert_eq!(*claim.lost.borrow(), Some(DropReason::OwnerLost));
    }

    fn key() -> StreamKey {
        StreamKey::new("acme".parse().expect("tenant"), "cc/q".parse().expect("id"))
    }

    fn manager(store: &Arc<MemoryStore>, pod: &str) -> Arc<Ownership> {
        let store: Arc<dyn Store> = store.clone();
        Ownership::new(store, pod.parse().expect("pod"), Arc::new(|_| {}))
    }

    #[tokio::test(start_paused = true)]
    async fn a_standby_takes_over_at_once_on_handover() {
        let store = Arc::new(MemoryStore::new());
        let a = manager(&store, "pod-a");
        let b = manager(&store, "pod-b");
        let listen_b = {
            let b = Arc::clone(&b);
            tokio::spawn(async move { b.listen().await })
        };
        tokio::task::yield_now().await;
        let status: StatusCell = Default::default();
        let (_stop_tx, mut stop) = crate::signal::channel(None);
        let ttl = Duration::from_secs(30);
        let claim_a = a
            .claim(&key(), ttl, Platform::Generic, &status, &mut stop)
            .await
            .expect("a owns");

        let mut stop_b = stop.clone();
        let status_b = Arc::clone(&status);
        let b2 = Arc::clone(&b);
        let standby = tokio::spawn(async move {
            b2.claim(&key(), ttl, Platform::Generic, &status_b, &mut stop_b)
                .await
                .map(|c| c.fence)
        });
        tokio::task::yield_now().await;
        let released_at = Instant::now();
        a.release(claim_a, StreamState::Active, DropReason::Shutdown)
            .await;
        let fence_b = standby.await.expect("task").expect("b owns");
        assert!(fence_b > Fence(1));
        assert!(
            Instant::now() - released_at < Duration::from_secs(1),
            "took over at once, not after the ttl"
        );
        listen_b.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn hearing_dead_under_another_fence_terminates_the_stream() {
        let store = Arc::new(MemoryStore::new());
        let a = manager(&store, "pod-a");
        let status: StatusCell = Default::default();
        let (_tx, mut stop) = crate::signal::channel(None);
        let claim = a
            .claim(
                &key(),
                Duration::from_secs(30),
                Platform::Generic,
                &status,
                &mut stop,
            )
            .await
            .expect("owns");
        // Our own DEAD (a reaped socket) does not stop us.
        a.on_transition(&a.transition(
            &key(),
            claim.fence,
            StreamState::Active,
            StreamState::Dead,
            "pong_timeout",
        ));
        assert_eq!(*claim.lost.borrow(), None);
        // A DEAD under another fence does.
        a.on_transition(&a.transition(
            &key(),
            Fence(99),
            StreamState::Active,
            StreamState::Dead,
            "stale",
        ));
        assert_eq!(*claim.lost.borrow(), Some(DropReason::OwnerLost));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fenced_beat_terminates_and_an_old_fence_cannot_checkpoint() {
        let store = Arc::new(MemoryStore::new());
        let a = manager(&store, "pod-a");
        let b = manager(&store, "pod-b");
        let status: StatusCell = Default::default();
        let (_tx, mut stop) = crate::signal::channel(None);
        let ttl = Duration::from_secs(5);
        let claim_a = a
            .claim(&key(), ttl, Platform::Generic, &status, &mut stop)
            .await
            .expect("a owns");
        // a freezes past its lease; b takes the stream.
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!a.confirmed(&key(), claim_a.fence));
        let _claim_b = b
            .claim(&key(), ttl, Platform::Generic, &status, &mut stop)
            .await
            .expect("b owns");
        assert!(
            !a.checkpoint(&claim_a, &EventId("e1".into()))
                .await
                .expect("store up")
        );
        assert_eq!(*claim_a.lost.borrow(), Some(DropReason::OwnerLost));
    }

    /// Each lease gets its beat's own outcome: on a real three-master Redis Cluster with one
    /// node stopped, a lease fenced on a live node ends at once although another node's
    /// chunk failed, and the lease on the live node is renewed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_chunk_hides_no_fencing_on_another_node() {
        use streamkeeper_coord::RedisStore;
        use streamkeeper_testkit::redis::RedisCluster;

        let mut cluster = RedisCluster::start();
        // One tenant per master.
        let mut tenants: Vec<(Tenant, u16)> = Vec::new();
        for i in 0..64 {
            let t: Tenant = format!("tenant-{i}").parse().expect("tenant");
            let port = cluster.node_of(&format!("sk:{{{t}}}:live"));
            if tenants.iter().all(|(_, p)| *p != port) {
                tenants.push((t, port));
            }
        }
        assert!(tenants.len() >= 3, "{tenants:?}");
        let store = |_: ()| -> Arc<dyn Store> {
            Arc::new(RedisStore::connect(&cluster.url()).expect("url"))
        };
        // pod-a's gauge, as the metric sees it.
        let gauge = Arc::new(Mutex::new(Vec::new()));
        let a = {
            let gauge = Arc::clone(&gauge);
            Ownership::new(
                store(()),
                "pod-a".parse().expect("pod"),
                Arc::new(move |up| gauge.lock().expect("lock").push(up)),
            )
        };
        a.set_tenants(tenants.iter().map(|(t, _)| t.clone()).collect());
        let b = Ownership::new(store(()), "pod-b".parse().expect("pod"), Arc::new(|_| {}));
        let key = |i: usize| {
            StreamKey::new(
                tenants[i].0.clone(),
                format!("cc/s{i}").parse().expect("id"),
            )
        };
        let status: StatusCell = Default::default();
        let (_tx, mut stop) = crate::signal::channel(None);
        let long = Duration::from_secs(60);
        let renewed = a
            .claim(&key(0), long, Platform::Generic, &status, &mut stop)
            .await
            .expect("a owns");
        let short = Duration::from_millis(300);
        let fenced = a
            .claim(&key(1), short, Platform::Generic, &status, &mut stop)
            .await
            .expect("a owns");
        let down = a
            .claim(&key(2), long, Platform::Generic, &status, &mut stop)
            .await
            .expect("a owns");
        // pod-b takes the second stream over once pod-a's short lease lapses.
        let _taken = tokio::time::timeout(
            Duration::from_secs(10),
            b.claim(&key(1), long, Platform::Generic, &status, &mut stop),
        )
        .await
        .expect("b takes over within the bound")
        .expect("b owns");

        cluster.stop_node(tenants[2].1);
        let before = *down.valid_until.borrow();
        assert!(!a.beat_once().await, "one chunk failed");
        assert_eq!(
            *fenced.lost.borrow(),
            Some(DropReason::OwnerLost),
            "the fenced lease ends although another chunk failed"
        );
        assert_eq!(*renewed.lost.borrow(), None);
        assert!(a.confirmed(&key(0), renewed.fence));
        // A failed chunk confirms nothing: the lease is not moved on (it runs out on its term,
        // and the stream stops then), but it is not lost either.
        assert_eq!(*down.lost.borrow(), None);
        assert_eq!(*down.valid_until.borrow(), before);
        assert!(
            !a.store_up(),
            "a failed chunk reads as the store being down"
        );
        // Rounds in which the other nodes answer keep it down: the gauge does not follow
        // whichever tenant was called last.
        for _ in 0..3 {
            assert!(!a.beat_once().await);
            a.flush_checkpoints().await;
            a.record_ack(&renewed, EventId("e1".into()));
            a.flush_checkpoints().await;
            assert!(!a.store_up());
        }
        assert_eq!(a.store_down_tenants(), [tenants[2].0.clone()]);
        assert_eq!(*gauge.lock().expect("lock"), [true, false], "no flapping");
    }
}
