//! The upstream side of a stream: one session per stream that holds the platform socket
//! (token, connect, heartbeat, reap, reconnect with jitter, resume, rotation).
//!
//! - `session.rs`: [`run`], the per-stream loop, and [`SessionCtx`]
//! - `rotate.rs`: in-stream token messages and make-before-break with an overlap
//! - `overlap.rs`: which events both sockets saw (pure), when the old one may go
//! - `gate.rs`: the platform's rate-limit backoff (pure)
//! - `link.rs`: the sockets bound to one token, waited on together
//! - `connect.rs`: opening a link from the adapter's connections; [`connect_options`]
//! - `monitor.rs`: [`Upstream`], one socket with its liveness deadline
//! - `events.rs`: [`SessionEvent`] and [`Observer`]
//! - `status.rs`: [`StreamStatus`], the live view

mod connect;
mod events;
pub mod gate;
mod link;
mod monitor;
pub mod overlap;
mod rotate;
mod session;
mod status;

pub use connect::{SharedConnectOptions, connect_options};
pub use events::{Observer, SessionEvent};
pub use monitor::{Tick, Upstream};
pub use session::{SessionCtx, run};
pub use status::{Rtt, StatusCell, StreamStatus, read_owner, read_status, set_owner};

/// A `generic` stream's spec for this module's unit tests, its heartbeat timeout `timeout`.
#[cfg(test)]
fn test_spec(id: &str, timeout: &str) -> streamkeeper_api::StreamSpec {
    let yaml = format!(
        "streams:\n  - {{id: {id}, tenant: t, platform: generic, \
         endpoints: {{api: 'http://127.0.0.1:9', login: 'http://127.0.0.1:9', stream: 'ws://127.0.0.1:9/s'}}, \
         credentials: {{dir: /nonexistent}}, heartbeat: {{interval: 5s, timeout: {timeout}}}}}\n"
    );
    streamkeeper_api::SidecarConfig::from_yaml(&yaml)
        .expect("config")
        .config
        .streams
        .remove(0)
}
