//! Who runs which stream: one lease holder per stream among the pods of a workload.
//!
//! A stream task [`claim`](Ownership::claim)s its stream before it connects; standby pods wait
//! for the lease to lapse (or for a handover or DEAD transition, which wakes them at once). One
//! pod-wide loop renews every held lease and records liveness in one batched store call per
//! tick, sweeps stale entries (jittered), and listens to the transitions channel: a pod that
//! hears DEAD for a stream it still runs, under another fence or declared stale, terminates it.
//! While the store is unreachable, running streams go on and no new ownership is taken.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use streamkeeper_api::{
    DropReason, EventId, Fence, PodName, StreamState, Tenant, Transition,
    config::DEFAULT_TENANT_LIMIT,
};
use streamkeeper_coord::{
    AckSeq, Acquired, Beat, BeatOutcome, CheckpointOutcome, CheckpointWrite, ConnRecord, Store,
    StoreError, StreamKey,
};
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};

use crate::{
    clock::epoch_ms,
    upstream::{StatusCell, read_status},
};

/// Reports whether the store answers (to `streamkeeper_redis_up`).
pub type StoreUpHook = Arc<dyn Fn(bool) + Send + Sync>;

/// A held lease.
#[derive(Debug)]
pub struct Claim {
    /// The stream.
    pub key: StreamKey,
    /// The fence this pod holds.
    pub fence: Fence,
    /// Carries a reason when the lease is lost (fenced out, DEAD heard).
    pub lost: watch::Receiver<Option<DropReason>>,
    /// Until when this pod may act on the lease: moved on by every beat attempt. A pod that
    /// was frozen past it must stop before it delivers anything (another pod may own the
    /// stream by now); a pod that merely cannot reach the store keeps it moving.
    pub valid_until: watch::Receiver<Instant>,
}

struct Held {
    fence: Fence,
    ttl: Duration,
    platform: &'static str,
    status: StatusCell,
    lost: watch::Sender<Option<DropReason>>,
    /// Until when the lease may be acted on.
    valid_until: watch::Sender<Instant>,
}

/// The pod's ownership manager.
pub struct Ownership {
    store: Arc<dyn Store>,
    pod: PodName,
    held: Mutex<HashMap<StreamKey, Held>>,
    /// Tenants whose stale entries this pod sweeps.
    tenants: Mutex<BTreeSet<Tenant>>,
    /// Per-tenant pool limits from the config.
    limits: Mutex<BTreeMap<Tenant, u32>>,
    /// Wakes standbys when a stream is released or declared dead.
    wake: Mutex<HashMap<StreamKey, Arc<Notify>>>,
    draining: AtomicBool,
    store_up: AtomicBool,
    on_store_up: StoreUpHook,
    /// The last checkpoint write's [`AckSeq`].
    ack_seq: AtomicU64,
}

impl std::fmt::Debug for Ownership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ownership")
            .field("pod", &self.pod)
            .finish_non_exhaustive()
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
            tenants: Mutex::new(BTreeSet::new()),
            limits: Mutex::new(BTreeMap::new()),
            wake: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            store_up: AtomicBool::new(true),
            on_store_up,
            ack_seq: AtomicU64::new(0),
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

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<StreamKey, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn waker(&self, key: &StreamKey) -> Arc<Notify> {
        let mut w = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(w.entry(key.clone()).or_default())
    }

    fn mark_store(&self, up: bool) {
        if self.store_up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!("store reachable again; re-asserting ownership");
            } else {
                tracing::warn!(
                    "store unreachable; running streams continue, no new ownership is taken"
                );
            }
            (self.on_store_up)(up);
        }
    }

    /// Whether the store answered the last call.
    pub fn store_up(&self) -> bool {
        self.store_up.load(Ordering::Relaxed)
    }

    /// Stops taking ownership (SIGTERM): waiting claims give up.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        let w = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        for n in w.values() {
            n.notify_waiters();
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

    /// The pool limit of `tenant`.
    pub fn limit(&self, tenant: &Tenant) -> u32 {
        self.limits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .copied()
            .unwrap_or(DEFAULT_TENANT_LIMIT)
    }

    /// Registers a tenant for stale sweeps.
    pub fn watch_tenant(&self, tenant: &Tenant) {
        self.tenants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant.clone());
    }

    /// Waits until this pod holds the stream's lease; `None` when `stop` fires or the pod
    /// drains first. `ttl` is how long the lease lives without renewal.
    pub async fn claim(
        &self,
        key: &StreamKey,
        ttl: Duration,
        platform: &'static str,
        status: &StatusCell,
        stop: &mut watch::Receiver<Option<DropReason>>,
    ) -> Option<Claim> {
        self.watch_tenant(&key.tenant);
        let wake = self.waker(key);
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
            let mut retry = None;
            match self.store.try_acquire(key, &self.pod, ttl).await {
                Ok(Acquired::Granted { fence, took_over }) => {
                    self.mark_store(true);
                    let (tx, rx) = watch::channel(None);
                    let (valid_tx, valid_rx) = watch::channel(Instant::now() + ttl);
                    self.held().insert(
                        key.clone(),
                        Held {
                            fence,
                            ttl,
                            platform,
                            status: Arc::clone(status),
                            lost: tx,
                            valid_until: valid_tx,
                        },
                    );
                    tracing::info!(stream = %key.stream, %fence, "lease acquired");
                    if let Some((owner, old)) = took_over {
                        // The previous owner stopped vouching without a release (crashed or
                        // frozen): announce it, so every pod (and the old owner, if it
                        // wakes) knows that socket is gone.
                        let mut t = self.transition(
                            key,
                            old,
                            StreamState::Active,
                            StreamState::Dead,
                            "owner_lost",
                        );
                        t.owner = Some(owner);
                        tracing::warn!(stream = %key.stream, previous = ?t.owner.as_ref().map(|p| p.as_str()), %old, "took over a lapsed lease");
                        if let Err(e) = self.store.publish(key, fence, &t).await {
                            tracing::debug!(error = %e, "owner_lost not published");
                        }
                    }
                    return Some(Claim {
                        key: key.clone(),
                        fence,
                        lost: rx,
                        valid_until: valid_rx,
                    });
                }
                Ok(Acquired::Held { expires_in }) => {
                    self.mark_store(true);
                    retry = expires_in;
                }
                Err(e) => {
                    self.mark_store(false);
                    tracing::debug!(stream = %key.stream, error = %e, "cannot contend for the lease");
                }
            }
            // Someone else holds it: ask again just after it would lapse (a handover or DEAD
            // wakes us at once). The jitter keeps standbys from arriving together; one ask per
            // lease lifetime keeps the store's load flat however many standbys there are.
            let jitter = Duration::from_millis(50).mul_f64(1.0 + 4.0 * rand::random::<f64>());
            let retry = match retry {
                Some(left) => (left + jitter).min(ttl),
                None => ttl
                    .mul_f64(0.25 + 0.25 * rand::random::<f64>())
                    .min(Duration::from_secs(5)),
            };
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(retry) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Whether the lease is known good at `now` (confirmed within its ttl). A session checks
    /// this before it reconnects, so a pod that was frozen past its lease does not stream.
    pub fn confirmed(&self, key: &StreamKey, fence: Fence) -> bool {
        let held = self.held();
        held.get(key)
            .is_some_and(|h| h.fence == fence && Instant::now() < *h.valid_until.borrow())
    }

    /// Stores the last acked id under the fence; `false` when the fence is stale.
    pub async fn checkpoint(&self, claim: &Claim, id: &EventId) -> Result<bool, StoreError> {
        // Numbered in the order of the calls, so a write that arrives late cannot move the
        // checkpoint back (one counter for the pod: it grows within every fence).
        let seq = AckSeq(self.ack_seq.fetch_add(1, Ordering::Relaxed) + 1);
        let write = CheckpointWrite {
            key: claim.key.clone(),
            fence: claim.fence,
            seq,
            id: id.clone(),
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

    /// Publishes a state change of a stream this pod runs.
    pub async fn publish(
        &self,
        claim_key: &StreamKey,
        fence: Fence,
        from: StreamState,
        to: StreamState,
        reason: &str,
    ) {
        let t = self.transition(claim_key, fence, from, to, reason);
        match self.store.publish(claim_key, fence, &t).await {
            Ok(true) => self.mark_store(true),
            Ok(false) => {
                self.mark_store(true);
                self.lose(claim_key, fence, DropReason::OwnerLost);
            }
            Err(StoreError::LeaseMissing) => {
                tracing::debug!(stream = %claim_key.stream, "transition not published: the store lost the lease; the next beat re-asserts it");
            }
            Err(e) => {
                self.mark_store(false);
                tracing::debug!(stream = %claim_key.stream, error = %e, "transition not published");
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
            stream: key.stream.clone(),
            tenant: key.tenant.clone(),
            from,
            to,
            reason: reason.to_owned(),
            owner: Some(self.pod.clone()),
            fence: Some(fence),
            at: epoch_ms(),
        }
    }

    /// Gives the lease up and publishes the handover, so a standby takes over at once.
    pub async fn release(&self, claim: Claim, from: StreamState, reason: DropReason) {
        let held = self.held().remove(&claim.key);
        if held.is_none() {
            return;
        }
        let t = self.transition(
            &claim.key,
            claim.fence,
            from,
            StreamState::Stopped,
            reason.as_str(),
        );
        match self.store.release(&claim.key, claim.fence, &t).await {
            Ok(_) => self.mark_store(true),
            Err(e) => {
                self.mark_store(false);
                tracing::warn!(stream = %claim.key.stream, error = %e, "lease not released; it lapses by itself");
            }
        }
    }

    /// Forgets a claim without releasing it (the lease was lost).
    pub fn forget(&self, claim: &Claim) {
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
            tracing::warn!(stream = %key.stream, %fence, %reason, "lease lost; terminating the stream");
            h.lost.send_replace(Some(reason));
        }
    }

    /// Moves the lease's validity to one TTL after `sent_at`, if `fence` still holds it here.
    fn extend(&self, key: &StreamKey, fence: Fence, sent_at: Instant) {
        if let Some(h) = self.held().get_mut(key).filter(|h| h.fence == fence) {
            h.valid_until.send_replace(sent_at + h.ttl);
        }
    }

    /// One renewal round: every held lease, one batched store call.
    pub async fn beat_once(&self) {
        let (keys, beats): (Vec<StreamKey>, Vec<Beat>) = {
            let held = self.held();
            held.iter()
                .map(|(k, h)| {
                    let st = read_status(&h.status);
                    let record = ConnRecord {
                        stream: k.stream.clone(),
                        tenant: k.tenant.clone(),
                        socket_id: st.connection.map(|c| c.0).unwrap_or_default(),
                        last_pong: st.last_pong_ms.max(1),
                        platform: h.platform.to_owned(),
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
                            lease_ttl: h.ttl,
                        },
                    )
                })
                .unzip()
        };
        if beats.is_empty() {
            return;
        }
        let sent_at = Instant::now();
        let mut reasserted = Vec::new();
        let outcomes = self.store.beat(&beats).await;
        let failed = outcomes
            .iter()
            .filter(|o| matches!(o, BeatOutcome::Failed(_)))
            .count();
        let mut first_error = None;
        for ((key, beat), outcome) in keys.iter().zip(&beats).zip(outcomes) {
            match outcome {
                BeatOutcome::Renewed | BeatOutcome::Reasserted => {
                    if outcome == BeatOutcome::Reasserted {
                        tracing::info!(stream = %key.stream, fence = %beat.fence, "lease re-asserted after the store lost it");
                        reasserted.push((key.clone(), beat.fence));
                    }
                    self.extend(key, beat.fence, sent_at);
                }
                // Another chunk's failure hides no fencing.
                BeatOutcome::Fenced => self.lose(key, beat.fence, DropReason::OwnerLost),
                BeatOutcome::Failed(e) => {
                    // The store is down for everyone: nobody can take this stream over, so it
                    // goes on. (A frozen pod makes no attempt, and its leases lapse.)
                    self.extend(key, beat.fence, sent_at);
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => {
                self.mark_store(false);
                tracing::debug!(error = %e, failed, of = beats.len(), "beat failed");
            }
            None => self.mark_store(true),
        }
        // A store that lost a lease (restarted empty) lost its pool slot too: take it back, or
        // give the stream up if the pool filled meanwhile (the limit holds at every instant).
        for (key, fence) in reasserted {
            match self
                .store
                .pool_acquire(&key, fence, self.limit(&key.tenant))
                .await
            {
                Ok(true) => {}
                Ok(false) => self.lose(&key, fence, DropReason::Preempted),
                Err(e) => {
                    tracing::debug!(stream = %key.stream, error = %e, "pool slot not re-taken yet")
                }
            }
        }
    }

    /// One sweep of every watched tenant for stale entries (crashed pods' streams).
    pub async fn sweep_once(&self, stale_after: Duration) {
        let tenants: Vec<Tenant> = self
            .tenants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
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
                    self.mark_store(false);
                    tracing::debug!(error = %e, "sweep failed");
                    return;
                }
            }
        }
    }

    /// Acts on one transition heard on the channel.
    pub fn on_transition(&self, t: &Transition) {
        let key = StreamKey {
            tenant: t.tenant.clone(),
            stream: t.stream.clone(),
        };
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
            self.waker(&key).notify_waiters();
        }
    }

    /// Runs the beat, sweep and subscription loops until `shutdown` resolves. `tick` is the
    /// beat period (the shortest heartbeat interval); `stale_after` the sweep's threshold.
    pub async fn run(
        self: Arc<Self>,
        tick: watch::Receiver<(Duration, Duration)>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let subscriber = {
            let me = Arc::clone(&self);
            tokio::spawn(async move { me.listen().await })
        };
        let beats = {
            let me = Arc::clone(&self);
            let mut tick = tick;
            async move {
                loop {
                    let (period, stale_after) = *tick.borrow_and_update();
                    // ±10 % jitter: pods started together do not sweep together.
                    let jittered = period.mul_f64(0.9 + 0.2 * rand::random::<f64>());
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
                    me.beat_once().await;
                    me.sweep_once(stale_after).await;
                }
            }
        };
        tokio::select! {
            _ = beats => {}
            _ = shutdown => {}
        }
        subscriber.abort();
    }

    async fn listen(&self) {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.store.subscribe().await {
                Ok(mut transitions) => {
                    delay = Duration::from_millis(200);
                    while let Some(t) = transitions.next().await {
                        self.on_transition(&t);
                    }
                }
                Err(e) => {
                    self.mark_store(false);
                    tracing::debug!(error = %e, "cannot subscribe to transitions");
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use streamkeeper_coord::MemoryStore;

    use super::*;

    fn key() -> StreamKey {
        StreamKey {
            tenant: "acme".parse().expect("tenant"),
            stream: "cc/q".parse().expect("id"),
        }
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
        let (_stop_tx, mut stop) = watch::channel(None);
        let ttl = Duration::from_secs(30);
        let claim_a = a
            .claim(&key(), ttl, "generic", &status, &mut stop)
            .await
            .expect("a owns");

        let mut stop_b = stop.clone();
        let status_b = Arc::clone(&status);
        let b2 = Arc::clone(&b);
        let standby = tokio::spawn(async move {
            b2.claim(&key(), ttl, "generic", &status_b, &mut stop_b)
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
        let (_tx, mut stop) = watch::channel(None);
        let claim = a
            .claim(
                &key(),
                Duration::from_secs(30),
                "generic",
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
        let (_tx, mut stop) = watch::channel(None);
        let ttl = Duration::from_secs(5);
        let claim_a = a
            .claim(&key(), ttl, "generic", &status, &mut stop)
            .await
            .expect("a owns");
        // a freezes past its lease; b takes the stream.
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!a.confirmed(&key(), claim_a.fence));
        let _claim_b = b
            .claim(&key(), ttl, "generic", &status, &mut stop)
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
        let a = Ownership::new(store(()), "pod-a".parse().expect("pod"), Arc::new(|_| {}));
        let b = Ownership::new(store(()), "pod-b".parse().expect("pod"), Arc::new(|_| {}));
        let key = |i: usize| StreamKey {
            tenant: tenants[i].0.clone(),
            stream: format!("cc/s{i}").parse().expect("id"),
        };
        let status: StatusCell = Default::default();
        let (_tx, mut stop) = watch::channel(None);
        let long = Duration::from_secs(60);
        let renewed = a
            .claim(&key(0), long, "generic", &status, &mut stop)
            .await
            .expect("a owns");
        let short = Duration::from_millis(300);
        let fenced = a
            .claim(&key(1), short, "generic", &status, &mut stop)
            .await
            .expect("a owns");
        let down = a
            .claim(&key(2), long, "generic", &status, &mut stop)
            .await
            .expect("a owns");
        // pod-b takes the second stream over once pod-a's short lease lapses.
        let _taken = tokio::time::timeout(
            Duration::from_secs(10),
            b.claim(&key(1), long, "generic", &status, &mut stop),
        )
        .await
        .expect("b takes over within the bound")
        .expect("b owns");

        cluster.stop_node(tenants[2].1);
        let before = *down.valid_until.borrow();
        a.beat_once().await;
        assert_eq!(
            *fenced.lost.borrow(),
            Some(DropReason::OwnerLost),
            "the fenced lease ends although another chunk failed"
        );
        assert_eq!(*renewed.lost.borrow(), None);
        assert!(a.confirmed(&key(0), renewed.fence));
        // A failed chunk keeps today's behaviour for now: the stream goes on.
        assert_eq!(*down.lost.borrow(), None);
        assert!(*down.valid_until.borrow() > before);
        assert!(
            !a.store_up(),
            "a failed chunk reads as the store being down"
        );
    }
}
