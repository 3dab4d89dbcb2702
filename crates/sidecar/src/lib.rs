//! The streamkeeper sidecar: owns the platform sockets of one pod.
//!
//! Pure decision logic (`liveness`, `backoff`, the token schedule in `auth`) takes an injected
//! clock; I/O lives at the edges (`net`, `ws`, `app`, `admin`, `run`).
//!
//! A stream's life, in the order a reader follows it:
//! - `run`: the sidecar process — config reload, signals, the servers
//! - `pod/`: the pod's streams; each stream's supervisor (lease, pool slot, session, checkpoints)
//! - `ownership`: leases with fencing in the store, beats, sweeps, checkpoints, transitions
//! - `lease`: the lease rule (until when a pod may act on its lease), pure
//! - `auth/`: credentials, token grants and validation, the refresh schedule
//! - `upstream/`: the session that holds the platform socket: connect, heartbeat, reap, resume
//! - `platforms/`: what differs per platform (generic, Genesys, CXone)
//! - `ws/`: the RFC 6455 client; `net/`: sockets, proxies, TLS, the REST client
//! - `liveness`, `backoff`, `pace`: the pure deadline state machine, reconnect backoff and
//!   request pacing under a rate limit
//! - `signal`: the one-value broadcast a stream's stop, lease and ack signals travel on
//! - `app/`: the buffer to the app and the local WebSocket server it connects to
//! - `admin`, `metrics`: `/metrics`, `/healthz`, `/readyz`, `/status`
//! - `heap` (feature `heap-stats`, for benchmarks): a counting allocator, `/debug/heap`

pub mod admin;
pub mod app;
pub mod auth;
pub mod backoff;
pub mod clock;
#[cfg(feature = "heap-stats")]
pub mod heap;
pub mod lease;
pub mod liveness;
pub mod metrics;
pub mod net;
pub mod ownership;
pub mod pace;
pub mod platforms;
pub mod pod;
pub mod run;
pub mod signal;
pub mod upstream;
pub mod ws;
