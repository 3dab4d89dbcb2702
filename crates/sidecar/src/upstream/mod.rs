//! The upstream side of a stream: one session per stream that holds the platform socket
//! (token, connect, heartbeat, reap, reconnect with jitter, resume, rotation).
//!
//! - `session.rs`: [`run`], the per-stream loop, and [`SessionCtx`]
//! - `connect.rs`: opening one socket from the adapter's plan; [`connect_options`]
//! - `monitor.rs`: [`Upstream`], one socket with its liveness deadline
//! - `events.rs`: [`SessionEvent`] and [`Observer`]
//! - `status.rs`: [`StreamStatus`], the live view

mod connect;
mod events;
mod monitor;
mod session;
mod status;

pub use connect::connect_options;
pub use events::{Observer, SessionEvent};
pub use monitor::{Tick, Upstream};
pub use session::{SessionCtx, run};
pub use status::{StatusCell, StreamStatus, read_status};
