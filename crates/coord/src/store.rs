//! The [`Store`] trait and the records it keeps.

use std::{collections::HashMap, pin::Pin, sync::Arc, time::Duration};

use async_trait::async_trait;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use streamkeeper_api::{
    ConnectionId, EventId, Fence, PodName, StreamId, StreamState, Tenant, Transition,
    config::Platform,
};

/// A store operation that could not be carried out. The store being unreachable is
/// [`StoreError::Unavailable`]: callers keep running streams and take no new ownership.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached (connection refused, timed out, cluster down).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered something this version does not understand.
    #[error("store protocol error: {0}")]
    Protocol(String),
    /// The store has no lease at all for the stream: it lost its data (restarted empty). Not a
    /// fencing: the owner re-asserts with its next beat; retry after that.
    #[error("the store has no lease for this stream (restarted empty?): retry after the next beat")]
    LeaseMissing,
}

/// A stream's place in the store: its tenant (the hash tag) and its id.
///
/// One allocation shared by every clone: a pod keeps a stream's key in several maps (leases
/// held, pool slots, the in-process store's leases and records), and a key of 8 bytes rather
/// than 32 makes each map's slots (up to twice as many as streams) a quarter of the size.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey(Arc<KeyParts>);

#[derive(Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct KeyParts {
    tenant: Tenant,
    stream: StreamId,
}

impl StreamKey {
    /// The key of `stream` of `tenant`.
    pub fn new(tenant: Tenant, stream: StreamId) -> Self {
        Self(Arc::new(KeyParts { tenant, stream }))
    }

    /// The tenant: every key of a tenant shares one hash slot.
    pub fn tenant(&self) -> &Tenant {
        &self.0.tenant
    }

    /// The stream.
    pub fn stream(&self) -> &StreamId {
        &self.0.stream
    }
}

impl std::fmt::Debug for StreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamKey")
            .field("tenant", &self.0.tenant)
            .field("stream", &self.0.stream)
            .finish()
    }
}

/// What the store records about a running connection (the `sk:{T}:conn:{stream}` hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnRecord {
    /// The stream.
    pub stream: StreamId,
    /// Its tenant.
    pub tenant: Tenant,
    /// The upstream socket's id, once it has one. The session's own id (an `Arc`), and the
    /// platform an enum: a beat's record is made every few seconds for each stream, and the
    /// in-process store keeps one (88 bytes, the allocator's 96-byte class; with a `String`
    /// and a `Box<str>` 112 bytes and two allocations more).
    pub socket_id: Option<ConnectionId>,
    /// Last pong (or any inbound frame), epoch milliseconds.
    pub last_pong: u64,
    /// The platform.
    pub platform: Platform,
    /// Current state.
    pub state: StreamState,
    /// Consecutive failed connection attempts.
    pub retry_count: u32,
    /// The pod that runs it.
    pub owner: PodName,
    /// The fence of that ownership.
    pub fence: Fence,
}

impl ConnRecord {
    /// The socket's id, or "" before it has one (as the store's hash keeps it).
    pub fn socket_id_str(&self) -> &str {
        self.socket_id.as_ref().map_or("", |id| &id.0)
    }
}

/// One owned stream's periodic report: renews its lease and records its liveness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beat {
    /// The stream.
    pub key: StreamKey,
    /// The fence this pod holds.
    pub fence: Fence,
    /// The record to store.
    pub record: ConnRecord,
    /// How long the lease lives unless renewed again.
    pub lease_ttl: Duration,
}

/// The answer to one [`Beat`]: each lease gets its own, since the beats of one call go to
/// the store in several round trips (one per tenant, which on a Redis Cluster are different
/// nodes) and each of them may fail alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeatOutcome {
    /// Lease renewed, liveness recorded: the store confirmed the lease for another TTL,
    /// counted from when the beat was sent.
    Renewed,
    /// The lease is held by a newer fence (or lapsed and was taken, or was released or
    /// removed): stop the stream now, whatever the other beats of the call answered.
    Fenced,
    /// The lease had lapsed and nobody took it, or the store had lost it (Redis restarted
    /// empty): it was re-granted to the same fence, for another TTL as [`BeatOutcome::Renewed`].
    /// The tenant pool may have lost the stream's slot with it: call [`Store::pool_acquire`]
    /// again (and stop the stream if refused).
    Reasserted,
    /// This beat's round trip failed (the store, or the cluster node serving its tenant, did
    /// not answer in time, or answered nonsense). Nothing is known of the lease and nothing
    /// was confirmed: it may have lapsed, and another pod may hold it by now.
    Failed(StoreError),
}

impl BeatOutcome {
    /// Whether the store confirmed the lease for another TTL ([`BeatOutcome::Renewed`] or
    /// [`BeatOutcome::Reasserted`]).
    pub fn confirmed(&self) -> bool {
        matches!(self, Self::Renewed | Self::Reasserted)
    }
}

/// The answer to [`Store::try_acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// The lease is this pod's now.
    Granted {
        /// The new fence.
        fence: Fence,
        /// The owner and fence before, when their lease lapsed without a release (a crashed
        /// or frozen pod): the new owner announces that pod's streams DEAD.
        took_over: Option<(PodName, Fence)>,
    },
    /// Someone holds it.
    Held {
        /// When it lapses unless renewed; `None` when the store cannot tell yet.
        expires_in: Option<Duration>,
    },
}

/// One stream's lease as the store sees it on its own clock: see [`Store::lease_expiries`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseView {
    /// A live lease: it lapses in `expires_in` (on the store's clock) unless its owner renews
    /// it. Nothing to do before then.
    Held {
        /// The time left.
        expires_in: Duration,
    },
    /// Granted and never given up, but not renewed in time: its owner stopped vouching
    /// (crashed, frozen, cut off). [`Store::try_acquire`] takes it over.
    Lapsed,
    /// Nobody holds it: never granted, released, removed, or lost with the store's data.
    /// [`Store::try_acquire`] takes it at once.
    Free,
}

/// Where an acked event stands in its stream's delivery order, as the owner counts it under
/// one fence: a checkpoint carries it so that the store keeps the newest one whatever order
/// the writes arrive in (a late ack never moves a checkpoint back). Compared only within one
/// fence: a new owner counts afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AckSeq(pub u64);

impl std::fmt::Display for AckSeq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One checkpoint to store: see [`Store::save_checkpoints`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointWrite {
    /// The stream.
    pub key: StreamKey,
    /// The fence this pod holds.
    pub fence: Fence,
    /// The acked event's place under `fence`: higher is newer.
    pub seq: AckSeq,
    /// The last acked event id.
    pub id: EventId,
}

/// The answer to one [`CheckpointWrite`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointOutcome {
    /// Stored: it is the stream's checkpoint now.
    Saved,
    /// Not stored, and nothing to do: this fence already stored this checkpoint or a newer
    /// one (an equal or higher [`AckSeq`]), which stands.
    Superseded,
    /// Refused: another fence holds the lease (or it was released or removed). This pod no
    /// longer owns the stream.
    Fenced,
    /// Refused: the store has no lease at all for the stream (it lost its data). Not a
    /// fencing: the owner re-asserts with its next beat; write again after it.
    LeaseMissing,
    /// The round trip failed: whether it was stored is unknown. Write again (the newest write
    /// wins, so a repeat is harmless).
    Failed(StoreError),
}

/// For each beat, the one that answers for it: the last beat of its stream (both stores apply
/// only that one).
pub(crate) fn answering_beats(beats: &[Beat]) -> Vec<usize> {
    let mut last: HashMap<&StreamKey, usize> = HashMap::with_capacity(beats.len());
    for (i, b) in beats.iter().enumerate() {
        last.insert(&b.key, i);
    }
    beats
        .iter()
        .enumerate()
        .map(|(i, b)| last.get(&b.key).copied().unwrap_or(i))
        .collect()
}

/// For each checkpoint write, the one that answers for it: the newest write (the highest
/// [`AckSeq`], the first of equals) of its stream under its fence. Both stores store only that
/// one; see [`outcome_beside`] for the others.
pub(crate) fn answering_writes(writes: &[CheckpointWrite]) -> Vec<usize> {
    let mut newest: HashMap<(&StreamKey, Fence), usize> = HashMap::with_capacity(writes.len());
    for (i, w) in writes.iter().enumerate() {
        newest
            .entry((&w.key, w.fence))
            .and_modify(|j| {
                if w.seq > writes[*j].seq {
                    *j = i;
                }
            })
            .or_insert(i);
    }
    writes
        .iter()
        .enumerate()
        .map(|(i, w)| newest.get(&(&w.key, w.fence)).copied().unwrap_or(i))
        .collect()
}

/// The answer to a write that was not sent because a newer one of its stream and fence was
/// (`newest`, which answered `outcome`): superseded by it where it was stored or found stale,
/// else the same refusal or failure.
pub(crate) fn outcome_beside(outcome: &CheckpointOutcome) -> CheckpointOutcome {
    match outcome {
        CheckpointOutcome::Saved | CheckpointOutcome::Superseded => CheckpointOutcome::Superseded,
        other => other.clone(),
    }
}

/// Transitions as they are published, in order.
pub type TransitionStream = Pin<Box<dyn Stream<Item = Transition> + Send>>;

/// The coordination contract. Every state change is atomic: two pods that see the same stale
/// entry produce one DEAD; a stale fence can neither renew, checkpoint nor publish.
///
/// "`fence` holds the lease" (release, publish, checkpoints, pool) means `fence` is the stream's
/// latest grant and was not released: a lease that lapsed and that nobody took still belongs
/// to its fence, since any new grant (a higher fence) replaces it. A released fence is done:
/// it can neither renew nor re-assert, and the next acquire takes the lease at once.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Takes the stream's lease if nobody holds it (or its holder released it, or let it
    /// lapse); returns the new fence, higher than every fence granted before.
    async fn acquire(
        &self,
        key: &StreamKey,
        owner: &PodName,
        ttl: Duration,
    ) -> Result<Option<Fence>, StoreError> {
        Ok(match self.try_acquire(key, owner, ttl).await? {
            Acquired::Granted { fence, .. } => Some(fence),
            Acquired::Held { .. } => None,
        })
    }

    /// [`Store::acquire`], telling a standby when to ask again and a new owner whom it took
    /// the stream from.
    async fn try_acquire(
        &self,
        key: &StreamKey,
        owner: &PodName,
        ttl: Duration,
    ) -> Result<Acquired, StoreError>;

    /// How the leases of `streams` (all of `tenant`) stand, in their order: a standby's one
    /// question per beat tick for every stream it stands by for, so that it calls
    /// [`Store::try_acquire`] only for the ones that are [`LeaseView::Free`] or
    /// [`LeaseView::Lapsed`] (which still decides, and right after an outage waits for owners
    /// to re-assert). Read-only. On Redis: one script per tenant (per 500 streams) of four
    /// commands (EVALSHA, TIME, MGET of the leases, ZMSCORE of the expiry index), whatever the
    /// number of streams.
    async fn lease_expiries(
        &self,
        tenant: &Tenant,
        streams: &[StreamId],
    ) -> Result<Vec<LeaseView>, StoreError>;

    /// Renews the leases of owned streams and records their liveness, in one round trip per
    /// tenant where the store allows it. One outcome per beat, in the order of `beats` (a
    /// stream beaten twice gets the outcome of its last beat twice). A round trip that fails
    /// makes [`BeatOutcome::Failed`] of its own beats only: the others still tell what the
    /// store did, a [`BeatOutcome::Fenced`] above all.
    async fn beat(&self, beats: &[Beat]) -> Vec<BeatOutcome>;

    /// Gives the lease up (handover at shutdown, or the stream was removed), publishing
    /// `transition` if the fence still holds. Returns whether it held.
    async fn release(
        &self,
        key: &StreamKey,
        fence: Fence,
        transition: &Transition,
    ) -> Result<bool, StoreError>;

    /// Publishes a state change if `fence` still holds the lease, and records the new state
    /// (`false`: fenced out; [`StoreError::LeaseMissing`]: the store lost the lease).
    async fn publish(
        &self,
        key: &StreamKey,
        fence: Fence,
        transition: &Transition,
    ) -> Result<bool, StoreError>;

    /// The last acked event id.
    async fn checkpoint(&self, key: &StreamKey) -> Result<Option<EventId>, StoreError>;

    /// Stores one checkpoint: [`Store::save_checkpoints`] of one write.
    async fn save_checkpoint(&self, write: &CheckpointWrite) -> CheckpointOutcome {
        self.save_checkpoints(std::slice::from_ref(write))
            .await
            .pop()
            .unwrap_or_else(|| {
                CheckpointOutcome::Failed(StoreError::Protocol("checkpoint: no answer".into()))
            })
    }

    /// Stores the last acked event id of many streams, each only if its fence still holds its
    /// lease and it is newer (a higher [`AckSeq`]) than what that fence stored before, so a
    /// late or repeated write never moves a checkpoint back. One outcome per write, in the
    /// order of `writes`. Meant for a pod that flushes its acked ids per tenant every so
    /// often: the Redis store writes a whole tenant's batch (up to 1,000 streams) in one
    /// script of three commands (EVALSHA, MGET, MSET), and on a single node every tenant's in
    /// that one script; a stream written twice in one batch costs one write.
    async fn save_checkpoints(&self, writes: &[CheckpointWrite]) -> Vec<CheckpointOutcome>;

    /// Declares DEAD, exactly once however many pods call it, every stream of `tenant` whose
    /// last pong is older than `stale_after` at `now_ms` AND whose lease lapsed (its owner
    /// stopped vouching: crashed or frozen; a live owner that is reconnecting keeps its lease);
    /// publishes and returns those transitions. Costs O(log N + stale), not O(N).
    async fn sweep_stale(
        &self,
        tenant: &Tenant,
        now_ms: u64,
        stale_after: Duration,
    ) -> Result<Vec<Transition>, StoreError>;

    /// Takes a slot in the tenant's pool if fewer than `limit` streams hold one.
    async fn pool_acquire(
        &self,
        key: &StreamKey,
        fence: Fence,
        limit: u32,
    ) -> Result<bool, StoreError>;

    /// Frees the stream's slot in its tenant's pool.
    async fn pool_release(&self, key: &StreamKey, fence: Fence) -> Result<(), StoreError>;

    /// Forgets a stream that was deleted (the controller's finalizer): its lease and lease
    /// expiry, connection record, liveness entry, checkpoint and pool slot, in one atomic step,
    /// whoever holds it. Publishes nothing. Returns whether the store held anything for it
    /// (`false` on a second call), so it is safe to repeat.
    ///
    /// The lease is not merely deleted: it is left as a removal tombstone (like a release, it
    /// expires after the store's retention), so a pod that still runs the stream is fenced at
    /// its next beat and cannot checkpoint, instead of re-asserting a lease it believes the
    /// store lost. The next [`Store::try_acquire`] takes the stream at once with a higher
    /// fence, as after a release (a stream created again under the same name starts afresh).
    async fn remove_stream(&self, key: &StreamKey) -> Result<bool, StoreError>;

    /// Every transition published from now on.
    async fn subscribe(&self) -> Result<TransitionStream, StoreError>;

    /// Every connection record, for `status`.
    async fn records(&self) -> Result<Vec<ConnRecord>, StoreError>;

    /// One stream's connection record, if the store holds one: after a takeover it is the
    /// previous owner's, whose `last_pong` says when that pod last heard the platform (the
    /// start of what a platform without replay lost). A release removes it.
    async fn record(&self, key: &StreamKey) -> Result<Option<ConnRecord>, StoreError> {
        Ok(self
            .records()
            .await?
            .into_iter()
            .find(|r| &r.stream == key.stream() && &r.tenant == key.tenant()))
    }

    /// Whether the store answers right now.
    async fn ping(&self) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::ConnRecord;

    #[test]
    fn a_record_fits_the_allocators_96_byte_class() {
        // The in-process store keeps one boxed per stream: one byte more is 112.
        let size = size_of::<ConnRecord>();
        assert!(size <= 96, "{size} bytes");
    }
}
