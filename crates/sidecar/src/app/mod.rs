//! The app side of a stream: the buffer between upstream and the app, and the local WebSocket
//! server the app connects to.
//!
//! - `hub.rs`: [`Hub`], unacked events, acks, redelivery, one consumer at a time
//! - `server.rs`: the local app protocol on `ws://{listen}/streams/{namespace}/{name}`

pub mod hub;
pub mod server;

pub use hub::Hub;
