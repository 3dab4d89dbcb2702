//! A memory-lean WebSocket client (RFC 6455, client side) for upstream platform sockets.
//!
//! tokio-tungstenite keeps several KiB of buffers per socket for the life of the connection;
//! [`WsClient`] keeps none while idle (see `client.rs`), so 10,000 idle upstream sockets fit
//! the sidecar's memory budget.
//!
//! - `client.rs`: [`WsClient`], [`connect`], [`ConnectOptions`]
//! - `inbound.rs`: what is kept between reads, and how frames are cut from them (pure)
//! - `frame.rs`: the pure frame parser and encoder
//! - `utf8.rs`: the UTF-8 check of text that arrives in pieces
//! - `handshake.rs`: the upgrade request and the check of the answer
//! - `error.rs`: [`WsError`]
//!
//! The parsers face the network: `tests/ws_fuzz` drives them with generated input on stable
//! Rust (and `fuzz/` with libFuzzer), and `scripts/autobahn` runs the Autobahn|Testsuite
//! against `examples/autobahn_client.rs`.

mod client;
mod error;
pub mod frame;
pub mod handshake;
pub mod inbound;
pub mod utf8;

#[cfg(test)]
pub(crate) mod tests;

pub use client::{ConnectOptions, ProxyMode, WsClient, connect};
pub use error::WsError;
pub use frame::Frame;
