//! The Redis [`Store`](crate::Store): a single node or a Redis Cluster.
//!
//! - `keys`: the key layout (DESIGN.md's table, plus the per-tenant lease-expiry index, fence
//!   counter and pool),
//! - `scripts` and `lua/`: the Lua scripts, one per state change,
//! - `conn`: the URL convention, bounded operations, error mapping, redaction,
//! - `subscriber`: the self-healing transitions subscription,
//! - `store`: [`RedisStore`] itself.

mod conn;
mod keys;
mod scripts;
mod store;
mod subscriber;

pub use conn::RedisOptions;
pub use store::RedisStore;
