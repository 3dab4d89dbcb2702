//! The streamkeeper sidecar: owns the platform sockets of one pod.
//!
//! Pure decision logic (`liveness`, `backoff`, the token schedule in `token`) takes an injected
//! clock; I/O lives at the edges (`net`, `ws`, `app_server`, `admin`, `run`).

pub mod admin;
pub mod app_server;
pub mod backoff;
pub mod clock;
pub mod hub;
pub mod liveness;
pub mod metrics;
pub mod net;
pub mod ownership;
pub mod platforms;
pub mod run;
pub mod runtime;
pub mod session;
pub mod token;
pub mod upstream;
pub mod ws;
