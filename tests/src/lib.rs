//! Fixtures for streamkeeper's end-to-end tests: everything runs for real on loopback.
//!
//! * [`LocalPod`] is a sidecar [`Pod`](streamkeeper_sidecar::pod::Pod) with an in-process
//!   store and its app server on `127.0.0.1:0`, run under a [`Rig`] (app heartbeat, frame
//!   limit, proxy) against whatever platform its streams name: the one way a test starts a pod
//!   in this process.
//! * [`Harness`] is an emulator plus a [`LocalPod`]: [`Harness::start`] for `generic` streams
//!   from [`Options`], [`Harness::start_with`] for any emulator config and stream specs
//!   (genesys, cxone, [`platform`] builds them).
//! * [`Recorder`] is the pod's observer: tests wait on session events with
//!   [`Recorder::wait_for`] (a [`Notify`](tokio::sync::Notify), never a sleep).
//! * [`App`] is a local app client that reads [`AppFrame`](streamkeeper_api::app_protocol::AppFrame)s
//!   in the background (answering the sidecar's pings) and acks on request or automatically.
//! * [`process`] finds and runs the `streamkeeper` binary for process-level tests;
//!   [`process::SidecarProcess`] is a `streamkeeper-sidecar` process with its own config and
//!   environment (proxy variables are per process), its stdout and stderr captured.
//! * [`netns`] puts the platform in a network namespace behind a veth pair, to cut the path at
//!   the kernel (an nftables drop: no ACK, no RST, no FIN) and heal it (needs root).
//!
//! ```no_run
//! # async fn demo() {
//! use std::time::Duration;
//! use streamkeeper_e2e::{App, AckMode, Harness, Options};
//! let h = Harness::start(Options::new(&["queue"])).await;
//! let id = h.stream_id("queue");
//! h.wait_active(&id).await;
//! let mut app = App::connect(h.app_addr, &id, AckMode::All).await;
//! let first = app.next_event(Duration::from_secs(5)).await;
//! println!("first event {}", first.0);
//! h.shutdown().await;
//! # }
//! ```

pub mod app;
pub mod fleet;
pub mod harness;
pub mod netns;
pub mod platform;
pub mod process;
pub mod recorder;
pub mod redis;
pub mod relay;
pub mod scenarios;
pub mod util;

pub use app::{AckMode, App, FromServer};
pub use harness::{Harness, LocalPod, Options, Rig};
pub use recorder::{Recorder, Seen};
pub use streamkeeper_testkit::TempDir;
pub use util::{Logs, event_seq, free_port, logs, metric_value};
