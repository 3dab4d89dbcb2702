//! streamkeeper's platform emulator: a real HTTP + WebSocket server on one port that speaks
//! the `generic` dialect and takes faults on demand, for the demo, the end-to-end tests and
//! the benchmarks.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! use streamkeeper_emulator::{Emulator, EmulatorConfig, Fault};
//! let emu = Emulator::start(EmulatorConfig {
//!     streams: vec!["queue-events".into()],
//!     event_interval: Duration::from_millis(200),
//!     ..EmulatorConfig::default()
//! })
//! .await?;
//! // Point a sidecar at emu.base_url() (token, users/me) and emu.stream_url("queue-events").
//! emu.fault(Fault::Blackhole { stream: Some("queue-events".into()) });
//! emu.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Wire contract (the `generic` dialect)
//! * `POST /oauth/token`, `Authorization: Basic base64(id:secret)`, form
//!   `grant_type=client_credentials` → 200
//!   `{"access_token":T,"token_type":"bearer","expires_in":SECS}`; else 401
//!   `{"error":"invalid_client"}`.
//! * `GET /api/v2/users/me`, `Authorization: Bearer T` → 200
//!   `{"id":"emulated-user","name":"Emulated User"}` while T is issued and unexpired; else 401.
//! * `GET /streams/{name}` WebSocket upgrade (the name is everything after `/streams/`, taken
//!   as is) with `Authorization: Bearer T`; else a plain 401. An unknown name creates the
//!   stream. `Last-Event-ID: ID` replays every retained event after ID, then live ones; an
//!   unknown or too-old ID replays all retained history; no header means live events only.
//! * Server → client text frames: events
//!   `{"type":"event","id":"<name>:<seq, 9 digits>","data":{"seq":N,"stream":"<name>","at":<epoch ms>}}`
//!   (sequence numbers start at 1 and never repeat), `{"type":"token-refresh-ack"}`,
//!   `{"type":"token-refresh-nack","reason":"invalid_token"}`.
//! * Client → server: `{"type":"token-refresh","token":T2}` (a valid T2 becomes the socket's
//!   token); pings are answered with pongs carrying the same payload. Anything else is logged
//!   and ignored; a frame that breaks RFC 6455 (unmasked, reserved bits, bad control frame)
//!   closes with 1002, invalid UTF-8 text with 1007, a message over `max_frame` with 1009.
//! * When the socket's token expires the server closes with 4001 `token expired`; at
//!   shutdown with 1001.
//!
//! # Control endpoints
//! `POST /faults` with a [`Fault`] as JSON → 200 [`FaultReport`], or 400
//! `{"error":"bad fault: ..."}` naming the problem; `GET /stats` → [`Stats`];
//! `GET /healthz` → 200.
//!
//! The `blackhole` fault stops the emulator's own reading and writing: the kernel still
//! acknowledges TCP segments, so it models a hung peer application. A network-level half-open
//! peer (no ACKs at all) needs a blackholing proxy or network namespace.

mod config;
mod emulator;
mod fault;
mod frame;
mod http;
mod socket;
mod state;
mod stats;
mod stream;
mod tokens;
mod util;

pub use config::EmulatorConfig;
pub use emulator::Emulator;
pub use fault::{Fault, FaultReport, GarbageKind};
pub use stats::{Stats, StreamStats};
