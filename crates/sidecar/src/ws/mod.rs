//! A memory-lean WebSocket client (RFC 6455, client side) for upstream platform sockets.
//!
//! tokio-tungstenite keeps several KiB of buffers per socket for the life of the connection;
//! [`WsClient`] keeps none while idle (see `client.rs`), so 10,000 idle upstream sockets fit
//! the sidecar's memory budget.
//!
//! - `client.rs`: [`WsClient`], [`connect`], [`ConnectOptions`]
//! - `frame.rs`: the pure frame parser and encoder
//! - `handshake.rs`: the upgrade request and the check of the answer
//! - `error.rs`: [`WsError`]

mod client;
mod error;
pub mod frame;
pub mod handshake;

#[cfg(test)]
mod tests;

pub use client::{ConnectOptions, ProxyMode, WsClient, connect};
pub use error::WsError;
pub use frame::Frame;
