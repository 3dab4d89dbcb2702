//! [`RedisStore`]: the [`Store`] on a Redis server or a Redis Cluster.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    hash::{Hash, Hasher},
    sync::Mutex,
    time::Duration,
};

use ::redis::{AsyncCommands, Value};
use async_trait::async_trait;
use streamkeeper_api::{
    ConnectionId, EventId, Fence, PodName, StreamId, StreamState, Tenant, Transition,
    transition::TRANSITIONS_CHANNEL,
};

use super::{
    conn::{Conn, Endpoints, RedisOptions},
    keys, scripts, subscriber,
};
use crate::store::{
    Acquired, Beat, BeatOutcome, CheckpointOutcome, CheckpointWrite, ConnRecord, LeaseView, Store,
    StoreError, StreamKey, TransitionStream, answering_beats, answering_writes, outcome_beside,
};

/// Streams per script call: bounds one script's run time (Redis serves nobody else meanwhile)
/// and Lua's `unpack` stack.
const BATCH: usize = 500;
/// Checkpoints per script call: a tenant's whole flush (its streams are at most its pool
/// limit, 50 by default) in one call; MGET and MSET stay within Lua's `unpack` limit.
const CHECKPOINT_BATCH: usize = 1_000;
/// Lapsed leases examined per sweep script call; the sweep calls again while it gets this many.
const SWEEP_LIMIT: usize = 500;

/// The [`Store`] on Redis (a single node or a Redis Cluster): ownership leases with fencing
/// tokens, the liveness index, checkpoints, tenant pools and the transitions channel, with every
/// state change one atomic Lua script (`src/redis/lua/`). The key layout is DESIGN.md's, plus a
/// per-tenant lease-expiry index, fence counter and pool (`src/redis/keys.rs` lists them all).
///
/// An unreachable Redis makes each operation return [`StoreError::Unavailable`] within
/// [`RedisOptions::op_timeout`]; the next operation tries again (nothing retries in a loop).
/// After this store found Redis unavailable it judges nobody for a while, since the owners
/// could not renew either: once Redis answers again, [`Store::acquire`] answers `None` (held)
/// until `ttl` has passed since the last failure and [`Store::sweep_stale`] declares nothing
/// until `stale_after` has, giving every owner time to re-assert its leases with its next beat.
pub struct RedisStore {
    conn: Conn,
    /// Per stream, a digest of the record last written to its conn hash (all but lastPong, which
    /// lives in the live index): the hash is rewritten only when it changes.
    written: Mutex<HashMap<StreamKey, u64>>,
    /// Tenants this store has added to the `sk:tenants` registry.
    registered: Mutex<HashSet<Tenant>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("redis", &self.conn.endpoints.display)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store on the Redis at `url`, with the default [`RedisOptions`] (1 s connect and response
    /// timeouts, 2 s per operation).
    ///
    /// The URL picks the deployment:
    /// - `redis://[user:password@]host:port[/db]` (or `rediss://`): a single node, through one
    ///   multiplexed connection that reconnects on demand;
    /// - `redis+cluster://[user:password@]host1:port1,host2:port2,...`: a Redis Cluster, given by
    ///   one or more seed nodes sharing the credentials (a comma-separated list of `redis://`
    ///   URLs means the same).
    ///
    /// Nothing is connected here: a Redis that is down is reported by the first operation, so a
    /// sidecar can start while Redis is away. Only a malformed URL is refused
    /// ([`StoreError::Protocol`]). Passwords never appear in errors, logs or `Debug`.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, RedisOptions::default())
    }

    /// [`RedisStore::connect`] with explicit timeouts and retention times.
    pub fn connect_with(url: &str, opts: RedisOptions) -> Result<Self, StoreError> {
        let endpoints = Endpoints::parse(url)?;
        Ok(Self {
            conn: Conn::new(endpoints, opts)?,
            written: Mutex::new(HashMap::new()),
            registered: Mutex::new(HashSet::new()),
        })
    }

    /// Where this store points, without credentials (for logs).
    pub fn target(&self) -> &str {
        &self.conn.endpoints.display
    }

    /// Adds tenants to the `sk:tenants` registry (read by `status` only) once per store, and
    /// again after Redis lost them. A failure is not an error of the caller's operation.
    async fn register<'a>(&self, tenants: impl IntoIterator<Item = &'a Tenant>) {
        let missing: Vec<String> = {
            let reg = lock(&self.registered);
            let mut v: Vec<String> = tenants
                .into_iter()
                .filter(|t| !reg.contains(*t))
                .map(|t| t.as_str().to_owned())
                .collect();
            v.sort();
            v.dedup();
            v
        };
        if missing.is_empty() {
            return;
        }
        let members = missing.clone();
        let res = self
            .conn
            .run_aside("register tenants", |mut c| async move {
                c.sadd::<_, _, i64>(keys::TENANTS, members).await
            })
            .await;
        match res {
            Ok(_) => {
                let mut reg = lock(&self.registered);
                for t in missing {
                    if let Ok(t) = t.parse::<Tenant>() {
                        reg.insert(t);
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "tenant registry not updated; retrying later"),
        }
    }

    async fn beat_chunk(
        &self,
        tenant: &Tenant,
        beats: Vec<(&Beat, bool)>,
    ) -> Result<Vec<BeatOutcome>, StoreError> {
        let mut call = scripts::BEAT.call();
        call.key(keys::live(tenant))
            .key(keys::leases(tenant))
            .key(keys::fence(tenant));
        for (b, _) in &beats {
            call.key(keys::lease(&b.key)).key(keys::conn(&b.key));
        }
        call.arg(tenant.as_str()).arg(beats.len());
        for (b, write) in &beats {
            call.arg(b.key.stream().as_str())
                .arg(b.fence.0)
                .arg(b.record.owner.as_str())
                .arg(millis(b.lease_ttl).max(1))
                .arg(b.record.last_pong)
                .arg(if *write { "1" } else { "0" })
                .arg(b.record.socket_id_str())
                .arg(b.record.platform.as_str())
                .arg(b.record.state.as_str())
                .arg(b.record.retry_count);
        }
        let codes: Vec<i64> = self
            .conn
            .run("beat", |mut c| async move { call.invoke(&mut c).await })
            .await?;
        if codes.len() != beats.len() {
            return Err(StoreError::Protocol(format!(
                "beat: {} answers for {} beats",
                codes.len(),
                beats.len()
            )));
        }
        Ok(codes
            .into_iter()
            .map(|c| match c {
                0 => BeatOutcome::Renewed,
                1 => BeatOutcome::Reasserted,
                2 => BeatOutcome::Fenced,
                other => BeatOutcome::Failed(StoreError::Protocol(format!(
                    "beat: unknown outcome {other}"
                ))),
            })
            .collect())
    }

    async fn checkpoint_chunk(
        &self,
        writes: Vec<&CheckpointWrite>,
    ) -> Result<Vec<CheckpointOutcome>, StoreError> {
        let mut call = scripts::CHECKPOINT.call();
        for w in &writes {
            call.key(keys::lease(&w.key))
                .key(keys::ckpt(&w.key))
                .key(keys::ckseq(&w.key));
            call.arg(w.fence.0).arg(w.seq.0).arg(w.id.as_str());
        }
        let codes: Vec<i64> = self
            .conn
            .run("save checkpoints", |mut c| async move {
                call.invoke(&mut c).await
            })
            .await?;
        if codes.len() != writes.len() {
            return Err(StoreError::Protocol(format!(
                "save checkpoints: {} answers for {} writes",
                codes.len(),
                writes.len()
            )));
        }
        Ok(codes
            .into_iter()
            .map(|c| match c {
                1 => CheckpointOutcome::Saved,
                0 => CheckpointOutcome::Fenced,
                2 => CheckpointOutcome::LeaseMissing,
                3 => CheckpointOutcome::Superseded,
                other => CheckpointOutcome::Failed(StoreError::Protocol(format!(
                    "save checkpoints: unknown outcome {other}"
                ))),
            })
            .collect())
    }

    async fn records_of(&self, tenant: &Tenant) -> Result<Vec<ConnRecord>, StoreError> {
        // Admin path (`status`): a cursor over this tenant's live index only, never the keyspace.
        let live = keys::live(tenant);
        let mut members: Vec<(String, u64)> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let key = live.clone();
            let (next, page): (u64, Vec<String>) = self
                .conn
                .run("read the live index", |mut c| async move {
                    ::redis::cmd("ZSCAN")
                        .arg(key)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            for pair in page.chunks_exact(2) {
                // Scores are epoch milliseconds; a float that is not one is skipped.
                if let Ok(score) = pair[1].parse::<f64>() {
                    members.push((pair[0].clone(), score.max(0.0) as u64));
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        members.sort();
        members.dedup_by(|a, b| a.0 == b.0);
        let mut out = Vec::with_capacity(members.len());
        for chunk in members.chunks(BATCH) {
            let mut pipe = ::redis::pipe();
            for (stream, _) in chunk {
                pipe.cmd("HGETALL")
                    .arg(format!("{}conn:{stream}", keys::prefix(tenant)));
            }
            let hashes: Vec<HashMap<String, String>> = self
                .conn
                .run("read records", |mut c| async move {
                    pipe.query_async(&mut c).await
                })
                .await?;
            for ((stream, last_pong), h) in chunk.iter().zip(hashes) {
                match record_from(tenant, stream, *last_pong, &h) {
                    Some(r) => out.push(r),
                    None => tracing::debug!(%tenant, %stream, "skipping an incomplete record"),
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn try_acquire(
        &self,
        key: &StreamKey,
        owner: &PodName,
        ttl: Duration,
    ) -> Result<Acquired, StoreError> {
        if self.conn.unavailable_within(ttl) {
            // Owners could not renew while this store could not reach Redis: they re-assert
            // first. (Answered after a PING, so a Redis still down reads as unavailable.)
            self.ping().await?;
            return Ok(Acquired::Held { expires_in: None });
        }
        let mut call = scripts::ACQUIRE.call();
        call.key(keys::lease(key))
            .key(keys::leases(key.tenant()))
            .key(keys::fence(key.tenant()))
            .arg(key.stream().as_str())
            .arg(owner.as_str())
            .arg(millis(ttl).max(1));
        let reply: Vec<Value> = self
            .conn
            .run("acquire", |mut c| async move { call.invoke(&mut c).await })
            .await?;
        let int = |v: Option<&Value>| match v {
            Some(Value::Int(n)) => u64::try_from(*n).ok(),
            _ => None,
        };
        let acquired = match (int(reply.first()), reply.get(1)) {
            (Some(0), _) => Acquired::Held {
                expires_in: int(reply.get(1)).map(Duration::from_millis),
            },
            (Some(fence), Some(prev)) => {
                let prev_owner = match prev {
                    Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                    _ => String::new(),
                };
                let took_over = prev_owner
                    .parse::<PodName>()
                    .ok()
                    .zip(int(reply.get(2)).map(Fence));
                Acquired::Granted {
                    fence: Fence(fence),
                    took_over,
                }
            }
            _ => return Err(StoreError::Protocol(format!("acquire answered {reply:?}"))),
        };
        if matches!(acquired, Acquired::Granted { .. }) {
            self.register([key.tenant()]).await;
        }
        Ok(acquired)
    }

    async fn lease_expiries(
        &self,
        tenant: &Tenant,
        streams: &[StreamId],
    ) -> Result<Vec<LeaseView>, StoreError> {
        let mut out = Vec::with_capacity(streams.len());
        for part in streams.chunks(BATCH) {
            let mut call = scripts::LEASE_EXPIRIES.call();
            call.key(keys::leases(tenant));
            for stream in part {
                let key = StreamKey::new(tenant.clone(), stream.clone());
                call.key(keys::lease(&key)).arg(stream.as_str());
            }
            let codes: Vec<i64> = self
                .conn
                .run("read lease expiries", |mut c| async move {
                    call.invoke(&mut c).await
                })
                .await?;
            if codes.len() != part.len() {
                return Err(StoreError::Protocol(format!(
                    "lease expiries: {} answers for {} streams",
                    codes.len(),
                    part.len()
                )));
            }
            out.extend(codes.into_iter().map(|c| match c {
                -2 => LeaseView::Lapsed,
                ms if ms > 0 => LeaseView::Held {
                    expires_in: Duration::from_millis(ms.unsigned_abs()),
                },
                _ => LeaseView::Free,
            }));
        }
        Ok(out)
    }

    async fn beat(&self, beats: &[Beat]) -> Vec<BeatOutcome> {
        // The last beat of a stream wins; a tenant's beats go in one script per BATCH streams.
        let answer = answering_beats(beats);
        let mut by_tenant: BTreeMap<&Tenant, Vec<usize>> = BTreeMap::new();
        for (i, b) in beats.iter().enumerate() {
            if answer[i] == i {
                by_tenant.entry(b.key.tenant()).or_default().push(i);
            }
        }
        let mut chunks: Vec<(&Tenant, Vec<usize>, Vec<(&Beat, bool)>)> = Vec::new();
        {
            let written = lock(&self.written);
            for (tenant, idx) in &by_tenant {
                for part in idx.chunks(BATCH) {
                    let items = part
                        .iter()
                        .map(|&i| {
                            let b = &beats[i];
                            (b, written.get(&b.key) != Some(&digest(b)))
                        })
                        .collect();
                    chunks.push((tenant, part.to_vec(), items));
                }
            }
        }
        // The registry (for `status`) is updated beside the beats, so a cluster node that is
        // down for it delays no beat.
        let (results, ()) = futures_util::future::join(
            futures_util::future::join_all(chunks.into_iter().map(
                |(tenant, idx, items)| async move {
                    (tenant, idx, self.beat_chunk(tenant, items).await)
                },
            )),
            self.register(by_tenant.keys().copied()),
        )
        .await;

        // Each chunk answers for its own beats: a failed one (a cluster node down) hides
        // nothing another chunk learnt, a fencing above all.
        let mut outcome: Vec<Option<BeatOutcome>> = vec![None; beats.len()];
        let mut reasserted: Vec<&Tenant> = Vec::new();
        {
            let mut written = lock(&self.written);
            for (tenant, idx, res) in results {
                match res {
                    Ok(codes) => {
                        for (i, o) in idx.into_iter().zip(codes) {
                            let b = &beats[i];
                            match &o {
                                BeatOutcome::Renewed | BeatOutcome::Reasserted => {
                                    written.insert(b.key.clone(), digest(b));
                                }
                                BeatOutcome::Fenced | BeatOutcome::Failed(_) => {
                                    written.remove(&b.key);
                                }
                            }
                            if o == BeatOutcome::Reasserted {
                                reasserted.push(tenant);
                            }
                            outcome[i] = Some(o);
                        }
                    }
                    Err(e) => {
                        // What this chunk wrote is unknown: write its records in full next time.
                        for i in idx {
                            written.remove(&beats[i].key);
                            outcome[i] = Some(BeatOutcome::Failed(e.clone()));
                        }
                    }
                }
            }
        }
        if !reasserted.is_empty() {
            // Redis may have lost everything, the registry included (perhaps after this call
            // registered them above).
            {
                let mut reg = lock(&self.registered);
                for t in &reasserted {
                    reg.remove(*t);
                }
            }
            self.register(reasserted).await;
        }
        answer
            .into_iter()
            .map(|j| {
                outcome.get(j).cloned().flatten().unwrap_or_else(|| {
                    BeatOutcome::Failed(StoreError::Protocol("beat: a stream got no answer".into()))
                })
            })
            .collect()
    }

    async fn release(
        &self,
        key: &StreamKey,
        fence: Fence,
        transition: &Transition,
    ) -> Result<bool, StoreError> {
        let json = to_json(transition)?;
        let mut call = scripts::RELEASE.call();
        call.key(keys::lease(key))
            .key(keys::leases(key.tenant()))
            .key(keys::conn(key))
            .key(keys::live(key.tenant()))
            .key(keys::pool(key.tenant()))
            .arg(key.stream().as_str())
            .arg(fence.0)
            .arg(TRANSITIONS_CHANNEL)
            .arg(json)
            .arg(millis(self.conn.opts.lease_retention).max(1));
        let held: i64 = self
            .conn
            .run("release", |mut c| async move { call.invoke(&mut c).await })
            .await?;
        if held == 1 {
            lock(&self.written).remove(key);
        }
        Ok(held == 1)
    }

    async fn publish(
        &self,
        key: &StreamKey,
        fence: Fence,
        transition: &Transition,
    ) -> Result<bool, StoreError> {
        let json = to_json(transition)?;
        let mut call = scripts::PUBLISH.call();
        call.key(keys::lease(key))
            .key(keys::conn(key))
            .arg(fence.0)
            .arg(transition.to.as_str())
            .arg(TRANSITIONS_CHANNEL)
            .arg(json);
        // The conn hash's state changes here: the next beat writes the record in full.
        lock(&self.written).remove(key);
        let held: i64 = self
            .conn
            .run("publish", |mut c| async move { call.invoke(&mut c).await })
            .await?;
        match held {
            2 => Err(StoreError::LeaseMissing),
            held => Ok(held == 1),
        }
    }

    async fn checkpoint(&self, key: &StreamKey) -> Result<Option<EventId>, StoreError> {
        let k = keys::ckpt(key);
        let id: Option<String> = self
            .conn
            .run("read checkpoint", |mut c| async move { c.get(k).await })
            .await?;
        Ok(id.map(EventId))
    }

    async fn save_checkpoints(&self, writes: &[CheckpointWrite]) -> Vec<CheckpointOutcome> {
        // Of the writes of one stream under one fence only the newest goes to Redis (a flush
        // costs its streams, not its acks); the others answer from it.
        let answer = answering_writes(writes);
        // A script may only touch one hash slot in a cluster: one call per tenant there. A single
        // node has no slots, and the checkpoint script names every key it touches, so all
        // tenants go in one call (the cost is then O(1) per flush, not O(tenants)).
        let cluster = self.conn.endpoints.cluster;
        let mut groups: BTreeMap<Option<&Tenant>, Vec<usize>> = BTreeMap::new();
        for (i, w) in writes.iter().enumerate() {
            if answer[i] == i {
                groups
                    .entry(cluster.then_some(w.key.tenant()))
                    .or_default()
                    .push(i);
            }
        }
        let parts: Vec<Vec<usize>> = groups
            .values()
            .flat_map(|idx| idx.chunks(CHECKPOINT_BATCH).map(<[usize]>::to_vec))
            .collect();
        let results = futures_util::future::join_all(parts.into_iter().map(|idx| async move {
            let items = idx.iter().map(|&i| &writes[i]).collect();
            (idx, self.checkpoint_chunk(items).await)
        }))
        .await;
        let mut sent: Vec<Option<CheckpointOutcome>> = vec![None; writes.len()];
        for (idx, res) in results {
            match res {
                Ok(outcomes) => {
                    for (i, o) in idx.into_iter().zip(outcomes) {
                        sent[i] = Some(o);
                    }
                }
                Err(e) => {
                    for i in idx {
                        sent[i] = Some(CheckpointOutcome::Failed(e.clone()));
                    }
                }
            }
        }
        answer
            .iter()
            .enumerate()
            .map(|(i, &j)| {
                let o = sent.get(j).cloned().flatten().unwrap_or_else(|| {
                    CheckpointOutcome::Failed(StoreError::Protocol(
                        "save checkpoints: a write got no answer".into(),
                    ))
                });
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
        if self.conn.unavailable_within(stale_after) {
            // Owners could not renew either: give them `stale_after` to re-assert.
            self.ping().await?;
            tracing::debug!(%tenant, "not sweeping yet: Redis was unavailable recently");
            return Ok(Vec::new());
        }
        let cutoff = now_ms.saturating_sub(millis(stale_after));
        // The common case is "no lease lapsed": one read-only command answers it, on this
        // pod's wall clock plus a second for skew (the script decides on Redis's clock, and
        // re-checks everything atomically, so this probe cannot cause a double DEAD).
        let leases = keys::leases(tenant);
        let bound = wall_ms().saturating_add(1_000);
        let probe: Vec<String> = self
            .conn
            .run("probe the lease index", |mut c| async move {
                ::redis::cmd("ZRANGEBYSCORE")
                    .arg(leases)
                    .arg("-inf")
                    .arg(format!("({bound}"))
                    .arg("LIMIT")
                    .arg(0)
                    .arg(1)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        if probe.is_empty() {
            return Ok(Vec::new());
        }
        let opts = &self.conn.opts;
        let mut dead = Vec::new();
        let mut offset = 0usize;
        loop {
            let mut call = scripts::SWEEP.call();
            call.key(keys::leases(tenant))
                .key(keys::live(tenant))
                .arg(keys::prefix(tenant))
                .arg(cutoff)
                .arg(SWEEP_LIMIT)
                .arg(offset)
                .arg(now_ms)
                .arg(TRANSITIONS_CHANNEL)
                .arg(tenant.as_str())
                .arg(millis(opts.dead_retention).max(1))
                .arg(millis(opts.lease_retention).max(1));
            let (taken, skipped, published): (usize, usize, Vec<String>) = self
                .conn
                .run("sweep", |mut c| async move { call.invoke(&mut c).await })
                .await?;
            for json in published {
                match serde_json::from_str::<Transition>(&json) {
                    Ok(t) => dead.push(t),
                    Err(e) => {
                        tracing::warn!(error = %e, "a DEAD transition was published that does not parse")
                    }
                }
            }
            if taken < SWEEP_LIMIT {
                break;
            }
            // Handled entries left the index; skipped ones are still in front.
            offset += skipped;
        }
        Ok(dead)
    }

    async fn pool_acquire(
        &self,
        key: &StreamKey,
        fence: Fence,
        limit: u32,
    ) -> Result<bool, StoreError> {
        let mut call = scripts::POOL_ACQUIRE.call();
        call.key(keys::pool(key.tenant()))
            .key(keys::leases(key.tenant()))
            .key(keys::lease(key))
            .arg(key.stream().as_str())
            .arg(fence.0)
            .arg(limit);
        let granted: i64 = self
            .conn
            .run(
                "pool acquire",
                |mut c| async move { call.invoke(&mut c).await },
            )
            .await?;
        Ok(granted == 1)
    }

    async fn pool_release(&self, key: &StreamKey, fence: Fence) -> Result<(), StoreError> {
        let mut call = scripts::POOL_RELEASE.call();
        call.key(keys::pool(key.tenant()))
            .arg(key.stream().as_str())
            .arg(fence.0);
        let _: i64 = self
            .conn
            .run(
                "pool release",
                |mut c| async move { call.invoke(&mut c).await },
            )
            .await?;
        Ok(())
    }

    async fn remove_stream(&self, key: &StreamKey) -> Result<bool, StoreError> {
        let mut call = scripts::REMOVE.call();
        call.key(keys::lease(key))
            .key(keys::leases(key.tenant()))
            .key(keys::conn(key))
            .key(keys::live(key.tenant()))
            .key(keys::ckpt(key))
            .key(keys::ckseq(key))
            .key(keys::pool(key.tenant()))
            .arg(key.stream().as_str())
            .arg(millis(self.conn.opts.lease_retention).max(1));
        let found: i64 = self
            .conn
            .run(
                "remove stream",
                |mut c| async move { call.invoke(&mut c).await },
            )
            .await?;
        lock(&self.written).remove(key);
        Ok(found == 1)
    }

    async fn subscribe(&self) -> Result<TransitionStream, StoreError> {
        Ok(
            subscriber::subscribe(self.conn.endpoints.clone(), self.conn.opts.connect_timeout)
                .await,
        )
    }

    async fn record(&self, key: &StreamKey) -> Result<Option<ConnRecord>, StoreError> {
        let mut pipe = ::redis::pipe();
        pipe.cmd("HGETALL")
            .arg(keys::conn(key))
            .cmd("ZSCORE")
            .arg(keys::live(key.tenant()))
            .arg(key.stream().as_str());
        let (hash, score): (HashMap<String, String>, Option<f64>) = self
            .conn
            .run("read a record", |mut c| async move {
                pipe.query_async(&mut c).await
            })
            .await?;
        if hash.is_empty() {
            return Ok(None);
        }
        // lastPong lives in the live index while the stream runs; a swept record keeps its own.
        let last_pong = score
            .map(|s| s.max(0.0) as u64)
            .or_else(|| hash.get("lastPong").and_then(|v| v.parse().ok()))
            .unwrap_or(0);
        Ok(record_from(
            key.tenant(),
            key.stream().as_str(),
            last_pong,
            &hash,
        ))
    }

    async fn records(&self) -> Result<Vec<ConnRecord>, StoreError> {
        let names: Vec<String> = self
            .conn
            .run("read the tenant registry", |mut c| async move {
                c.smembers(keys::TENANTS).await
            })
            .await?;
        let mut out = Vec::new();
        for name in names {
            match name.parse::<Tenant>() {
                Ok(t) => out.extend(self.records_of(&t).await?),
                Err(e) => {
                    tracing::debug!(error = %e, "skipping a malformed tenant in the registry")
                }
            }
        }
        out.sort_by(|a, b| (&a.stream, &a.tenant).cmp(&(&b.stream, &b.tenant)));
        Ok(out)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _: Value = self
            .conn
            .run("ping", |mut c| async move {
                ::redis::cmd("PING").query_async(&mut c).await
            })
            .await?;
        Ok(())
    }
}

/// A record from its conn hash and its live-index score; `None` when a field it cannot do
/// without (owner, fence) is missing or malformed.
fn record_from(
    tenant: &Tenant,
    stream: &str,
    last_pong: u64,
    h: &HashMap<String, String>,
) -> Option<ConnRecord> {
    let field = |k: &str| h.get(k).map(String::as_str).unwrap_or_default();
    Some(ConnRecord {
        stream: stream.parse().ok()?,
        tenant: tenant.clone(),
        socket_id: Some(field("socketId"))
            .filter(|id| !id.is_empty())
            .map(|id| ConnectionId(id.into())),
        last_pong,
        platform: field("platform").parse().ok()?,
        state: parse_state(field("state"))?,
        retry_count: field("retryCount").parse().unwrap_or(0),
        owner: field("owner").parse().ok()?,
        fence: Fence(field("fence").parse().ok()?),
    })
}

fn parse_state(s: &str) -> Option<StreamState> {
    StreamState::ALL.into_iter().find(|st| st.as_str() == s)
}

/// What the conn hash holds of a beat, lastPong aside.
fn digest(b: &Beat) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    let r = &b.record;
    (
        b.key.tenant().as_str(),
        r.socket_id_str(),
        r.platform.as_str(),
        r.state.as_str(),
        r.retry_count,
    )
        .hash(&mut h);
    (r.owner.as_str(), b.fence.0).hash(&mut h);
    h.finish()
}

fn to_json(t: &Transition) -> Result<String, StoreError> {
    serde_json::to_string(t)
        .map_err(|e| StoreError::Protocol(format!("transition does not serialize: {e}")))
}

/// This host's wall clock, epoch milliseconds.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data behind the lock: a panic elsewhere leaves it usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
