//! The streamkeeper sidecar: owns the platform sockets of one pod.

pub mod net;
pub mod ws;
