//! The in-process [`Store`]: one pod alone, or several pods of one process (the demo) sharing
//! one `Arc<MemoryStore>`. Same semantics as the Redis store, under one mutex.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use async_trait::async_trait;
use futures_util::StreamExt;
use streamkeeper_api::{EventId, Fence, PodName, StreamId, StreamState, Tenant, Transition};
use tokio::{sync::broadcast, time::Instant};

use crate::store::{
    AckSeq, Acquired, Beat, BeatOutcome, CheckpointOutcome, CheckpointWrite, ConnRecord, LeaseView,
    Store, StoreError, StreamKey, TransitionStream, answering_beats, answering_writes,
    outcome_beside,
};

#[derive(Debug)]
struct Lease {
    owner: PodName,
    fence: Fence,
    expires: Instant,
    /// Given up by its holder: free for the next acquire, and its fence (like every older one)
    /// can no longer renew or re-assert it.
    released: bool,
}

/// A stored checkpoint and the write that stored it (the guard against going back).
#[derive(Debug)]
struct Checkpoint {
    id: EventId,
    fence: Fence,
    seq: AckSeq,
}

#[derive(Debug, Default)]
struct State {
    next_fence: u64,
    /// Leases and records boxed: a map's table is sized in powers of two, so up to half its
    /// slots are empty, and an empty slot the size of a lease (48 bytes) or a record (88) cost
    /// every stream more than the box does.
    leases: HashMap<StreamKey, Box<Lease>>,
    records: HashMap<StreamKey, Box<ConnRecord>>,
    checkpoints: HashMap<StreamKey, Checkpoint>,
    /// Pool slots per tenant: stream key -> the fence that took the slot. A slot lives while
    /// its stream's lease does (as on Redis).
    pools: HashMap<Tenant, HashMap<StreamKey, Fence>>,
}

impl State {
    /// Whether anybody holds a live lease on the stream (someone is vouching for it now).
    fn live(&self, key: &StreamKey, now: Instant) -> bool {
        self.leases
            .get(key)
            .is_some_and(|l| !l.released && l.expires > now)
    }

    /// Whether `fence` is the stream's latest grant, not given up. A lapsed lease that nobody
    /// took still belongs to its fence: any new grant replaces it, so writes under this check
    /// (checkpoint, publish, release, pool) can never come from a superseded owner.
    fn owns(&self, key: &StreamKey, fence: Fence) -> bool {
        self.leases
            .get(key)
            .is_some_and(|l| l.fence == fence && !l.released)
    }

    /// What a fence-checked write finds: `Ok(true)` the fence holds, `Ok(false)` fenced out,
    /// `Err` no lease at all (never granted here; on Redis also "lost with its data").
    fn check(&self, key: &StreamKey, fence: Fence) -> Result<bool, StoreError> {
        match self.leases.get(key) {
            None => Err(StoreError::LeaseMissing),
            Some(_) => Ok(self.owns(key, fence)),
        }
    }

    /// One beat, as the Redis beat script judges it.
    fn beat(&mut self, b: &Beat, now: Instant) -> BeatOutcome {
        let outcome = match self.leases.get_mut(&b.key) {
            // A lower fence than the beat's can only be a leftover of lost data on Redis: it
            // is re-asserted there, and here alike (below).
            Some(l) if l.fence < b.fence => BeatOutcome::Reasserted,
            Some(l) if l.fence > b.fence || l.released || l.owner != b.record.owner => {
                return BeatOutcome::Fenced;
            }
            Some(l) if l.expires > now => {
                l.expires = now + b.lease_ttl;
                BeatOutcome::Renewed
            }
            _ => BeatOutcome::Reasserted,
        };
        if outcome == BeatOutcome::Reasserted {
            // Lapsed and untaken (or never stored): the same owner re-asserts, and fences
            // never fall below one handed out.
            self.next_fence = self.next_fence.max(b.fence.0);
            self.leases.insert(
                b.key.clone(),
                Box::new(Lease {
                    owner: b.record.owner.clone(),
                    fence: b.fence,
                    expires: now + b.lease_ttl,
                    released: false,
                }),
            );
        }
        if let Some(r) = self.records.get_mut(&b.key) {
            **r = b.record.clone();
        } else {
            self.records
                .insert(b.key.clone(), Box::new(b.record.clone()));
        }
        outcome
    }

    /// One checkpoint write, as the Redis checkpoint script judges it.
    fn save_checkpoint(&mut self, w: &CheckpointWrite) -> CheckpointOutcome {
        match self.check(&w.key, w.fence) {
            Err(_) => return CheckpointOutcome::LeaseMissing,
            Ok(false) => return CheckpointOutcome::Fenced,
            Ok(true) => {}
        }
        if self
            .checkpoints
            .get(&w.key)
            .is_some_and(|c| c.fence == w.fence && c.seq >= w.seq)
        {
            return CheckpointOutcome::Superseded;
        }
        self.checkpoints.insert(
            w.key.clone(),
            Checkpoint {
                id: w.id.clone(),
                fence: w.fence,
                seq: w.seq,
            },
        );
        CheckpointOutcome::Saved
    }
}

/// A [`Store`] in this process's memory.
#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<State>,
    events: broadcast::Sender<Transition>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            events: broadcast::channel(1024).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, t: &Transition) {
        // No subscriber is not an error: nobody needs to hear it.
        let _ = self.events.send(t.clone());
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn try_acquire(
        &self,
        key: &StreamKey,
        owner: &PodName,
        ttl: Duration,
    ) -> Result<Acquired, StoreError> {
        let now = Instant::now();
        let mut st = self.lock();
        let took_over = match st.leases.get(key) {
            Some(l) if !l.released && l.expires > now => {
                return Ok(Acquired::Held {
                    expires_in: Some(l.expires - now),
                });
            }
            Some(l) if !l.released => Some((l.owner.clone(), l.fence)),
            _ => None,
        };
        st.next_fence += 1;
        let fence = Fence(st.next_fence);
        st.leases.insert(
            key.clone(),
            Box::new(Lease {
                owner: owner.clone(),
                fence,
                expires: now + ttl,
                released: false,
            }),
        );
        Ok(Acquired::Granted { fence, took_over })
    }

    async fn lease_expiries(
        &self,
        tenant: &Tenant,
        streams: &[StreamId],
    ) -> Result<Vec<LeaseView>, StoreError> {
        let now = Instant::now();
        let st = self.lock();
        Ok(streams
            .iter()
            .map(|stream| {
                let key = StreamKey::new(tenant.clone(), stream.clone());
                match st.leases.get(&key) {
                    Some(l) if l.released => LeaseView::Free,
                    Some(l) if l.expires > now => LeaseView::Held {
                        expires_in: l.expires - now,
                    },
                    Some(_) => LeaseView::Lapsed,
                    None => LeaseView::Free,
                }
            })
            .collect())
    }

    async fn beat(&self, beats: &[Beat]) -> Vec<BeatOutcome> {
        let now = Instant::now();
        let mut st = self.lock();
        let answer = answering_beats(beats);
        let mut out: Vec<Option<BeatOutcome>> = vec![None; beats.len()];
        for (i, b) in beats.iter().enumerate() {
            if answer[i] == i {
                out[i] = Some(st.beat(b, now));
            }
        }
        answer
            .iter()
            .map(|&j| out[j].clone().unwrap_or(BeatOutcome::Fenced))
            .collect()
    }

    async fn release(
        &self,
        key: &StreamKey,
        fence: Fence,
        transition: &Transition,
    ) -> Result<bool, StoreError> {
        let held = {
            let mut st = self.lock();
            let held = st.owns(key, fence);
            if held {
                if let Some(l) = st.leases.get_mut(key) {
                    l.released = true;
                }
                st.records.remove(key);
                if let Some(pool) = st.pools.get_mut(key.tenant())
                    && pool.get(key) == Some(&fence)
                {
                    pool.remove(key);
                }
            }
            held
        };
        if held {
            self.emit(transition);
        }
        Ok(held)
    }

    async fn publish(
        &self,
        key: &StreamKey,
        fence: Fence,
        transition: &Transition,
    ) -> Result<bool, StoreError> {
        let held = {
            let mut st = self.lock();
            let held = st.check(key, fence)?;
            if let Some(r) = st.records.get_mut(key).filter(|_| held) {
                r.state = transition.to;
            }
            held
        };
        if held {
            self.emit(transition);
        }
        Ok(held)
    }

    async fn checkpoint(&self, key: &StreamKey) -> Result<Option<EventId>, StoreError> {
        Ok(self.lock().checkpoints.get(key).map(|c| c.id.clone()))
    }

    async fn save_checkpoints(&self, writes: &[CheckpointWrite]) -> Vec<CheckpointOutcome> {
        let mut st = self.lock();
        let answer = answering_writes(writes);
        let mut out: Vec<Option<CheckpointOutcome>> = vec![None; writes.len()];
        for (i, w) in writes.iter().enumerate() {
            if answer[i] == i {
                out[i] = Some(st.save_checkpoint(w));
            }
        }
        answer
            .iter()
            .enumerate()
            .map(|(i, &j)| {
                let o = out[j].clone().unwrap_or(CheckpointOutcome::LeaseMissing);
                if i == j { o } else { outcome_beside(&o) }
            })
            .collect()
    }

    async fn sweep_stale(
        &self,
        tenant: &Tenant,
        now_ms: u64,
        stale_after: Duration,
    ) -> Result<Vec<Transition>, StoreError> {
        let cutoff =
            now_ms.saturating_sub(u64::try_from(stale_after.as_millis()).unwrap_or(u64::MAX));
        let now = Instant::now();
        let dead: Vec<Transition> = {
            let mut st = self.lock();
            // Stale means nobody vouches for the stream: its lease lapsed too. A live owner
            // whose socket is down (reconnecting) keeps its lease and is not swept, and a new
            // owner's lease covers the old owner's record until its first beat replaces it.
            let mut stale: Vec<StreamKey> = st
                .records
                .iter()
                .filter(|(k, r)| k.tenant() == tenant && r.last_pong < cutoff && !st.live(k, now))
                .map(|(k, _)| k.clone())
                .collect();
            stale.sort();
            stale
                .into_iter()
                .filter_map(|k| {
                    let r = st.records.remove(&k)?;
                    // Already DEAD (its owner said so): it leaves without a second DEAD.
                    (r.state != StreamState::Dead).then_some(())?;
                    Some(Transition {
                        stream: r.stream,
                        tenant: r.tenant,
                        from: r.state,
                        to: StreamState::Dead,
                        reason: "stale".into(),
                        owner: Some(r.owner),
                        fence: Some(r.fence),
                        at: now_ms,
                    })
                })
                .collect()
        };
        for t in &dead {
            self.emit(t);
        }
        Ok(dead)
    }

    async fn pool_acquire(
        &self,
        key: &StreamKey,
        fence: Fence,
        limit: u32,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut st = self.lock();
        if !st.owns(key, fence) {
            // A superseded (or released) fence, or none at all, takes no slot.
            return Ok(false);
        }
        // Holders whose lease lapsed are evicted, so a crashed pod's slots come back.
        let mut pool = st.pools.remove(key.tenant()).unwrap_or_default();
        pool.retain(|k, _| st.live(k, now));
        let granted = pool.contains_key(key) || pool.len() < limit as usize;
        if granted {
            pool.insert(key.clone(), fence);
        }
        st.pools.insert(key.tenant().clone(), pool);
        Ok(granted)
    }

    async fn pool_release(&self, key: &StreamKey, fence: Fence) -> Result<(), StoreError> {
        let mut st = self.lock();
        if let Some(pool) = st.pools.get_mut(key.tenant())
            && pool.get(key) == Some(&fence)
        {
            pool.remove(key);
        }
        Ok(())
    }

    async fn remove_stream(&self, key: &StreamKey) -> Result<bool, StoreError> {
        let mut st = self.lock();
        // A lease given up before (released or removed) is not "something held": a second
        // remove finds nothing.
        let mut found = false;
        if let Some(l) = st.leases.get_mut(key) {
            found |= !l.released;
            // The tombstone keeps fencing the old owner, and the next grant is newer.
            l.released = true;
        }
        found |= st.records.remove(key).is_some();
        found |= st.checkpoints.remove(key).is_some();
        if let Some(pool) = st.pools.get_mut(key.tenant()) {
            found |= pool.remove(key).is_some();
        }
        Ok(found)
    }

    async fn subscribe(&self) -> Result<TransitionStream, StoreError> {
        let rx = self.events.subscribe();
        let stream = tokio_stream_from(rx);
        Ok(stream)
    }

    async fn records(&self) -> Result<Vec<ConnRecord>, StoreError> {
        let mut v: Vec<ConnRecord> = self
            .lock()
            .records
            .values()
            .map(|r| (**r).clone())
            .collect();
        v.sort_by(|a, b| (&a.stream, &a.tenant).cmp(&(&b.stream, &b.tenant)));
        Ok(v)
    }

    async fn record(&self, key: &StreamKey) -> Result<Option<ConnRecord>, StoreError> {
        Ok(self.lock().records.get(key).map(|r| (**r).clone()))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

fn tokio_stream_from(rx: broadcast::Receiver<Transition>) -> TransitionStream {
    let s = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(t) => return Some((t, rx)),
                // A slow subscriber misses old transitions; the newer ones still matter.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    s.boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> StreamKey {
        StreamKey::new("acme".parse().expect("tenant"), s.parse().expect("id"))
    }

    fn pod(p: &str) -> PodName {
        p.parse().expect("pod")
    }

    fn record(k: &StreamKey, owner: &str, fence: Fence, last_pong: u64) -> ConnRecord {
        ConnRecord {
            stream: k.stream().clone(),
            tenant: k.tenant().clone(),
            socket_id: Some(streamkeeper_api::ConnectionId("s".into())),
            last_pong,
            platform: streamkeeper_api::config::Platform::Generic,
            state: StreamState::Active,
            retry_count: 0,
            owner: pod(owner),
            fence,
        }
    }

    /// Stores a checkpoint with the next sequence number.
    async fn save(s: &dyn Store, k: &StreamKey, fence: Fence, id: &str) -> CheckpointOutcome {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = AckSeq(SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
        s.save_checkpoint(&CheckpointWrite {
            key: k.clone(),
            fence,
            seq,
            id: EventId(id.into()),
        })
        .await
    }

    fn dead(k: &StreamKey) -> Transition {
        Transition {
            stream: k.stream().clone(),
            tenant: k.tenant().clone(),
            from: StreamState::Active,
            to: StreamState::Dead,
            reason: "test".into(),
            owner: None,
            fence: None,
            at: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_owner_and_an_old_fence_is_refused_everywhere() {
        let s = MemoryStore::new();
        let k = key("cc/q");
        let ttl = Duration::from_secs(5);
        let f1 = s
            .acquire(&k, &pod("a"), ttl)
            .await
            .expect("ok")
            .expect("granted");
        assert_eq!(s.acquire(&k, &pod("b"), ttl).await.expect("ok"), None);

        tokio::time::advance(Duration::from_secs(6)).await;
        let f2 = s
            .acquire(&k, &pod("b"), ttl)
            .await
            .expect("ok")
            .expect("lapsed lease is taken");
        assert!(f2 > f1);

        let beat = Beat {
            key: k.clone(),
            fence: f1,
            record: record(&k, "a", f1, 1),
            lease_ttl: ttl,
        };
        assert_eq!(s.beat(&[beat]).await, vec![BeatOutcome::Fenced]);
        assert_eq!(save(&s, &k, f1, "e1").await, CheckpointOutcome::Fenced);
        assert!(!s.publish(&k, f1, &dead(&k)).await.expect("ok"));
        assert_eq!(save(&s, &k, f2, "e2").await, CheckpointOutcome::Saved);
        assert_eq!(
            s.checkpoint(&k).await.expect("ok"),
            Some(EventId("e2".into()))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_entry_dies_once_however_many_sweep() {
        let s = MemoryStore::new();
        let k = key("cc/q");
        let f = s
            .acquire(&k, &pod("a"), Duration::from_secs(60))
            .await
            .expect("ok")
            .expect("granted");
        let beat = Beat {
            key: k.clone(),
            fence: f,
            record: record(&k, "a", f, 1_000),
            lease_ttl: Duration::from_secs(60),
        };
        s.beat(&[beat]).await;
        let tenant = k.tenant().clone();
        assert!(
            s.sweep_stale(&tenant, 100_000, Duration::from_secs(35))
                .await
                .expect("ok")
                .is_empty(),
            "the owner still holds its lease"
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        let mut total = 0;
        for _ in 0..5 {
            total += s
                .sweep_stale(&tenant, 100_000, Duration::from_secs(35))
                .await
                .expect("ok")
                .len();
        }
        assert_eq!(total, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_pool_never_grants_past_its_limit() {
        let s = MemoryStore::new();
        let mut granted = 0;
        for i in 0..4 {
            let k = key(&format!("cc/q{i}"));
            let f = s
                .acquire(&k, &pod("a"), Duration::from_secs(60))
                .await
                .expect("ok")
                .expect("granted");
            if s.pool_acquire(&k, f, 2).await.expect("ok") {
                granted += 1;
            }
        }
        assert_eq!(granted, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_hands_over_at_once_and_fences_the_releaser() {
        let s = MemoryStore::new();
        let k = key("cc/q");
        let ttl = Duration::from_secs(60);
        let f1 = s
            .acquire(&k, &pod("a"), ttl)
            .await
            .expect("ok")
            .expect("granted");
        assert!(s.release(&k, f1, &dead(&k)).await.expect("ok"));
        let beat = Beat {
            key: k.clone(),
            fence: f1,
            record: record(&k, "a", f1, 1),
            lease_ttl: ttl,
        };
        assert_eq!(s.beat(&[beat]).await, vec![BeatOutcome::Fenced]);
        assert!(!s.pool_acquire(&k, f1, 5).await.expect("ok"));
        let f2 = s
            .acquire(&k, &pod("b"), ttl)
            .await
            .expect("ok")
            .expect("no TTL to wait out");
        assert!(f2 > f1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_removed_stream_leaves_nothing_and_its_owner_is_fenced() {
        let s = MemoryStore::new();
        let k = key("cc/gone");
        let ttl = Duration::from_secs(60);
        let f1 = s
            .acquire(&k, &pod("a"), ttl)
            .await
            .expect("ok")
            .expect("granted");
        let beat = Beat {
            key: k.clone(),
            fence: f1,
            record: record(&k, "a", f1, 1),
            lease_ttl: ttl,
        };
        s.beat(std::slice::from_ref(&beat)).await;
        assert!(s.pool_acquire(&k, f1, 1).await.expect("ok"));
        assert_eq!(save(&s, &k, f1, "e1").await, CheckpointOutcome::Saved);

        assert!(s.remove_stream(&k).await.expect("ok"));
        assert!(!s.remove_stream(&k).await.expect("ok"), "nothing left");
        assert_eq!(s.checkpoint(&k).await.expect("ok"), None);
        assert!(s.records().await.expect("ok").is_empty());
        assert_eq!(
            s.beat(&[beat]).await,
            vec![BeatOutcome::Fenced],
            "the owner still running it is fenced, not re-asserted"
        );
        let other = key("cc/other");
        let fo = s
            .acquire(&other, &pod("b"), ttl)
            .await
            .expect("ok")
            .expect("granted");
        assert!(
            s.pool_acquire(&other, fo, 1).await.expect("ok"),
            "the slot is free"
        );
        match s.try_acquire(&k, &pod("b"), ttl).await.expect("ok") {
            Acquired::Granted { fence, took_over } => {
                assert!(fence > f1);
                assert_eq!(took_over, None, "a removal is no takeover");
            }
            other => panic!("a removed stream is free: {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lease_expiries_tell_held_lapsed_and_free() {
        let s = MemoryStore::new();
        let ttl = Duration::from_secs(10);
        let (held, lapsing, released, never) = (
            key("cc/held"),
            key("cc/lapsing"),
            key("cc/released"),
            key("cc/never"),
        );
        s.acquire(&held, &pod("a"), Duration::from_secs(60))
            .await
            .expect("ok")
            .expect("granted");
        s.acquire(&lapsing, &pod("a"), ttl)
            .await
            .expect("ok")
            .expect("granted");
        let fr = s
            .acquire(&released, &pod("a"), ttl)
            .await
            .expect("ok")
            .expect("granted");
        assert!(
            s.release(&released, fr, &dead(&released))
                .await
                .expect("ok")
        );
        let streams = [held, lapsing, released, never].map(|k| k.stream().clone());
        let tenant = key("cc/x").tenant().clone();
        assert_eq!(
            s.lease_expiries(&tenant, &streams).await.expect("ok"),
            vec![
                LeaseView::Held {
                    expires_in: Duration::from_secs(60)
                },
                LeaseView::Held { expires_in: ttl },
                LeaseView::Free,
                LeaseView::Free,
            ]
        );
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(
            s.lease_expiries(&tenant, &streams).await.expect("ok"),
            vec![
                LeaseView::Held {
                    expires_in: Duration::from_secs(49)
                },
                LeaseView::Lapsed,
                LeaseView::Free,
                LeaseView::Free,
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_checkpoint_never_moves_back_within_a_fence() {
        let s = MemoryStore::new();
        let k = key("cc/m");
        let f = s
            .acquire(&k, &pod("a"), Duration::from_secs(60))
            .await
            .expect("ok")
            .expect("granted");
        let w = |seq: u64, id: &str| CheckpointWrite {
            key: k.clone(),
            fence: f,
            seq: AckSeq(seq),
            id: EventId(id.into()),
        };
        assert_eq!(
            s.save_checkpoints(&[w(2, "e2"), w(1, "e1"), w(2, "again")])
                .await,
            vec![
                CheckpointOutcome::Saved,
                CheckpointOutcome::Superseded,
                CheckpointOutcome::Superseded
            ]
        );
        assert_eq!(
            s.checkpoint(&k).await.expect("ok"),
            Some(EventId("e2".into()))
        );
        assert_eq!(
            save(&s, &key("cc/none"), f, "x").await,
            CheckpointOutcome::LeaseMissing
        );
    }
}
