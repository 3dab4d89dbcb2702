//! The coordination store: who owns which stream (leases with fencing tokens), liveness,
//! checkpoints, tenant pools, and the DEAD transitions every pod hears.
//!
//! [`Store`] is the contract; [`MemoryStore`] runs it in one process (one pod, or the demo's
//! pods sharing one `Arc`).

mod memory;
mod store;

pub use memory::MemoryStore;
pub use store::{Beat, BeatOutcome, ConnRecord, Store, StoreError, StreamKey, TransitionStream};
