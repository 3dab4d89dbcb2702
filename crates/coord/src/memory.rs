//! The in-process [`Store`]: one pod alone, or several pods of one process (the demo) sharing
//! one `Arc<MemoryStore>`. Same semantics as the Redis store, under one mutex.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use async_trait::async_trait;
use futures_util::StreamExt;
use streamkeeper_api::{EventId, Fence, PodName, StreamState, Tenant, Transition};
use tokio::{sync::broadcast, time::Instant};

use crate::store::{
    Acquired, Beat, BeatOutcome, ConnRecord, Store, StoreError, StreamKey, TransitionStream,
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

#[derive(Debug, Default)]
struct State {
    next_fence: u64,
    leases: HashMap<StreamKey, Lease>,
    records: HashMap<StreamKey, ConnRecord>,
    checkpoints: HashMap<StreamKey, EventId>,
    /// Pool slots per tenant: stream key -> (fence, expiry).
    pools: HashMap<Tenant, HashMap<StreamKey, (Fence, Instant)>>,
}

impl State {
    /// Whether `fence` holds a live lease on the stream (it is vouching for it now).
    fn holds(&self, key: &StreamKey, fence: Fence, now: Instant) -> bool {
        self.leases
            .get(key)
            .is_some_and(|l| l.fence == fence && !l.released && l.expires > now)
    }

    /// Whether `fence` is the stream's latest grant, not given up. A lapsed lease that nobody
    /// took still belongs to its fence: any new grant replaces it, so writes under this check
    /// (checkpoint, publish, release, pool) can never come from a superseded owner.
    fn owns(&self, key: &StreamKey, fence: Fence) -> bool {
        self.leases
            .get(key)
            .is_some_and(|l| l.fence == fence && !l.released)
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
            Lease {
                owner: owner.clone(),
                fence,
                expires: now + ttl,
                released: false,
            },
        );
        Ok(Acquired::Granted { fence, took_over })
    }

    async fn beat(&self, beats: &[Beat]) -> Result<Vec<BeatOutcome>, StoreError> {
        let now = Instant::now();
        let mut st = self.lock();
        let mut out = Vec::with_capacity(beats.len());
        for b in beats {
            let outcome = match st.leases.get_mut(&b.key) {
                Some(l) if l.fence == b.fence && !l.released && l.expires > now => {
                    l.expires = now + b.lease_ttl;
                    BeatOutcome::Renewed
                }
                Some(l) if l.fence != b.fence || l.released => BeatOutcome::Fenced,
                _ => {
                    // Lapsed and untaken (or the store lost it): the same owner re-asserts.
                    st.leases.insert(
                        b.key.clone(),
                        Lease {
                            owner: b.record.owner.clone(),
                            fence: b.fence,
                            expires: now + b.lease_ttl,
                            released: false,
                        },
                    );
                    BeatOutcome::Reasserted
                }
            };
            if outcome != BeatOutcome::Fenced {
                st.records.insert(b.key.clone(), b.record.clone());
                if let Some(slot) = st
                    .pools
                    .get_mut(&b.key.tenant)
                    .and_then(|p| p.get_mut(&b.key))
                    .filter(|slot| slot.0 == b.fence)
                {
                    slot.1 = now + b.lease_ttl;
                }
            }
            out.push(outcome);
        }
        Ok(out)
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
                if let Some(pool) = st.pools.get_mut(&key.tenant) {
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
            let held = st.owns(key, fence);
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
        Ok(self.lock().checkpoints.get(key).cloned())
    }

    async fn save_checkpoint(
        &self,
        key: &StreamKey,
        fence: Fence,
        id: &EventId,
    ) -> Result<bool, StoreError> {
        let mut st = self.lock();
        if !st.owns(key, fence) {
            return Ok(false);
        }
        st.checkpoints.insert(key.clone(), id.clone());
        Ok(true)
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
            // Stale means the owner stopped vouching: its lease lapsed too. A live owner whose
            // socket is down (reconnecting) keeps its lease and is not swept.
            let stale: Vec<StreamKey> = st
                .records
                .iter()
                .filter(|(k, r)| {
                    &k.tenant == tenant && r.last_pong < cutoff && !st.holds(k, r.fence, now)
                })
                .map(|(k, _)| k.clone())
                .collect();
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
            // A superseded (or released) fence takes no slot.
            return Ok(false);
        }
        let ttl = st.leases.get(key).map(|l| l.expires).unwrap_or(now);
        let pool = st.pools.entry(key.tenant.clone()).or_default();
        pool.retain(|_, (_, expires)| *expires > now);
        if pool.contains_key(key) || pool.len() < limit as usize {
            pool.insert(key.clone(), (fence, ttl.max(now + Duration::from_secs(1))));
            return Ok(true);
        }
        Ok(false)
    }

    async fn pool_release(&self, key: &StreamKey, fence: Fence) -> Result<(), StoreError> {
        let mut st = self.lock();
        if let Some(pool) = st
            .pools
            .get_mut(&key.tenant)
            .filter(|p| p.get(key).is_some_and(|(f, _)| *f == fence))
        {
            pool.remove(key);
        }
        Ok(())
    }

    async fn subscribe(&self) -> Result<TransitionStream, StoreError> {
        let rx = self.events.subscribe();
        let stream = tokio_stream_from(rx);
        Ok(stream)
    }

    async fn records(&self) -> Result<Vec<ConnRecord>, StoreError> {
        let mut v: Vec<ConnRecord> = self.lock().records.values().cloned().collect();
        v.sort_by(|a, b| a.stream.cmp(&b.stream));
        Ok(v)
    }

    async fn record(&self, key: &StreamKey) -> Result<Option<ConnRecord>, StoreError> {
        Ok(self.lock().records.get(key).cloned())
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
        StreamKey {
            tenant: "acme".parse().expect("tenant"),
            stream: s.parse().expect("id"),
        }
    }

    fn pod(p: &str) -> PodName {
        p.parse().expect("pod")
    }

    fn record(k: &StreamKey, owner: &str, fence: Fence, last_pong: u64) -> ConnRecord {
        ConnRecord {
            stream: k.stream.clone(),
            tenant: k.tenant.clone(),
            socket_id: "s".into(),
            last_pong,
            platform: "generic".into(),
            state: StreamState::Active,
            retry_count: 0,
            owner: pod(owner),
            fence,
        }
    }

    fn dead(k: &StreamKey) -> Transition {
        Transition {
            stream: k.stream.clone(),
            tenant: k.tenant.clone(),
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
        assert_eq!(
            s.beat(&[beat]).await.expect("ok"),
            vec![BeatOutcome::Fenced]
        );
        assert!(
            !s.save_checkpoint(&k, f1, &EventId("e1".into()))
                .await
                .expect("ok")
        );
        assert!(!s.publish(&k, f1, &dead(&k)).await.expect("ok"));
        assert!(
            s.save_checkpoint(&k, f2, &EventId("e2".into()))
                .await
                .expect("ok")
        );
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
        s.beat(&[beat]).await.expect("ok");
        let tenant = k.tenant.clone();
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
        assert_eq!(
            s.beat(&[beat]).await.expect("ok"),
            vec![BeatOutcome::Fenced]
        );
        assert!(!s.pool_acquire(&k, f1, 5).await.expect("ok"));
        let f2 = s
            .acquire(&k, &pod("b"), ttl)
            .await
            .expect("ok")
            .expect("no TTL to wait out");
        assert!(f2 > f1);
    }
}
