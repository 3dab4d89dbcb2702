//! The [`Store`] trait and the records it keeps.

use std::{pin::Pin, time::Duration};

use async_trait::async_trait;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use streamkeeper_api::{EventId, Fence, PodName, StreamId, StreamState, Tenant, Transition};

/// A store operation that could not be carried out. The store being unreachable is
/// [`StoreError::Unavailable`]: callers keep running streams and take no new ownership.
#[derive(Debug, thiserror::Error)]
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
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    /// The tenant: every key of a tenant shares one hash slot.
    pub tenant: Tenant,
    /// The stream.
    pub stream: StreamId,
}

/// What the store records about a running connection (the `sk:{T}:conn:{stream}` hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnRecord {
    /// The stream.
    pub stream: StreamId,
    /// Its tenant.
    pub tenant: Tenant,
    /// The upstream socket's id.
    pub socket_id: String,
    /// Last pong (or any inbound frame), epoch milliseconds.
    pub last_pong: u64,
    /// Platform name.
    pub platform: String,
    /// Current state.
    pub state: StreamState,
    /// Consecutive failed connection attempts.
    pub retry_count: u32,
    /// The pod that runs it.
    pub owner: PodName,
    /// The fence of that ownership.
    pub fence: Fence,
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

/// The answer to a [`Beat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeatOutcome {
    /// Lease renewed, liveness recorded.
    Renewed,
    /// The lease is held by a newer fence (or lapsed and was taken): stop the stream now.
    Fenced,
    /// The lease had lapsed and nobody took it, or the store had lost it (Redis restarted
    /// empty): it was re-granted to the same fence. The tenant pool may have lost the stream's
    /// slot with it: call [`Store::pool_acquire`] again (and stop the stream if refused).
    Reasserted,
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

/// One checkpoint to store: see [`Store::save_checkpoints`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointWrite {
    /// The stream.
    pub key: StreamKey,
    /// The fence this pod holds.
    pub fence: Fence,
    /// The last acked event id.
    pub id: EventId,
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

    /// Renews the leases of owned streams and records their liveness, in one round trip per
    /// tenant where the store allows it. Outcomes are in the order of `beats`.
    async fn beat(&self, beats: &[Beat]) -> Result<Vec<BeatOutcome>, StoreError>;

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

    /// Stores the last acked event id if `fence` still holds the lease (`false`: fenced out;
    /// [`StoreError::LeaseMissing`]: the store lost the lease, retry after the next beat).
    async fn save_checkpoint(
        &self,
        key: &StreamKey,
        fence: Fence,
        id: &EventId,
    ) -> Result<bool, StoreError>;

    /// Stores many checkpoints, each only if its fence still holds its lease; answers in the
    /// order of `writes` (a lease the store lost reads `false` here: use
    /// [`Store::save_checkpoint`] to tell it from a fencing). The Redis store writes them in one round trip per batch (per tenant
    /// on a cluster), so a pod that flushes its acked ids periodically costs O(1) commands per
    /// flush, not O(streams).
    async fn save_checkpoints(&self, writes: &[CheckpointWrite]) -> Result<Vec<bool>, StoreError> {
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            out.push(self.save_checkpoint(&w.key, w.fence, &w.id).await?);
        }
        Ok(out)
    }

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
            .find(|r| r.stream == key.stream && r.tenant == key.tenant))
    }

    /// Whether the store answers right now.
    async fn ping(&self) -> Result<(), StoreError>;
}
