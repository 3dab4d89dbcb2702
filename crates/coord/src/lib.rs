//! The coordination store: who owns which stream (leases with fencing tokens), liveness,
//! checkpoints, tenant pools, and the DEAD transitions every pod hears.
//!
//! [`Store`] is the contract; [`MemoryStore`] runs it in one process (one pod, or the demo's
//! pods sharing one `Arc`); [`RedisStore`] runs it on Redis or Redis Cluster for many pods.

mod memory;
mod redis;
mod store;

pub use self::redis::{RedisOptions, RedisStore};
pub use memory::MemoryStore;
pub use store::{
    AckSeq, Acquired, Beat, BeatOutcome, CheckpointOutcome, CheckpointWrite, ConnRecord, LeaseView,
    Store, StoreError, StreamKey, TransitionStream,
};
