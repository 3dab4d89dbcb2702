//! One monitored upstream socket: the WebSocket client and its liveness deadline, driven
//! together. This is the per-connection cost the sidecar pays for each of its sockets, so it is
//! kept small: no buffer while idle, one timer, no task of its own.

use std::time::Duration;

use tokio::time::Instant;

use crate::{
    liveness::{Due, HeartbeatPolicy, Liveness},
    platforms::Ping,
    ws::{Frame, WsClient, WsError},
};

/// What [`Upstream::next`] saw.
#[derive(Debug)]
pub enum Tick {
    /// A frame arrived (already counted as liveness).
    Frame(Frame),
    /// A ping went out.
    Pinged,
    /// A pong is late: the link is DEGRADED.
    Degraded,
    /// The caller's own deadline (given to [`Upstream::next`]) passed.
    Due,
    /// Nothing arrived for the whole timeout: reap it.
    Dead {
        /// How long after the deadline this was noticed.
        late_by: Duration,
        /// How long nothing had arrived.
        silent_for: Duration,
    },
}

/// A socket under watch.
#[derive(Debug)]
pub struct Upstream {
    ws: WsClient,
    live: Liveness,
}

impl Upstream {
    /// Watches `ws`, connected now; the first ping goes out after `phase`. (The link it
    /// belongs to carries the connection id: a copy here would be 24 bytes and a string per
    /// socket that nothing reads.)
    pub fn new(ws: WsClient, policy: HeartbeatPolicy, phase: Duration) -> Self {
        Self {
            ws,
            live: Liveness::new(policy, Instant::now(), phase),
        }
    }

    /// The liveness state.
    pub fn liveness(&self) -> &Liveness {
        &self.live
    }

    /// The liveness state, to record pongs.
    pub fn liveness_mut(&mut self) -> &mut Liveness {
        &mut self.live
    }

    /// The socket, to queue frames.
    pub fn ws_mut(&mut self) -> &mut WsClient {
        &mut self.ws
    }

    /// Gives the socket back, for the reaper.
    pub fn into_ws(self) -> WsClient {
        self.ws
    }

    /// Waits for the next frame, the next liveness duty, or `until` (the caller's own timer:
    /// [`Tick::Due`], before anything else once it has passed). Cancel-safe: a frame being
    /// read stays in the client, and a duty is acted on and returned without an await
    /// between. `ping` makes the dialect's ping for a sequence number.
    ///
    /// The caller's timer rides on this one `Sleep` rather than a second beside it: a `Sleep`
    /// is 112 bytes of a future that lives as long as its stream. Not an `async fn`, which
    /// would keep each argument in the future twice.
    // Clippy would have it an `async fn` again: the doc line above says why not.
    #[allow(clippy::manual_async_fn)]
    pub fn next(
        &mut self,
        ping: impl Fn(u64) -> Ping,
        until: Option<Instant>,
    ) -> impl std::future::Future<Output = Result<Tick, WsError>> {
        async move {
            loop {
                let wake = {
                    let now = Instant::now();
                    if until.is_some_and(|t| now >= t) {
                        return Ok(Tick::Due);
                    }
                    if let Some(due) = self.live.poll(now) {
                        return Ok(self.act(due, &ping));
                    }
                    let wake = self.live.next_wakeup();
                    until.map_or(wake, |t| t.min(wake))
                };
                tokio::select! {
                    biased;
                    frame = self.ws.recv() => {
                        let frame = frame?;
                        self.live.on_inbound(Instant::now());
                        return Ok(Tick::Frame(frame));
                    }
                    _ = tokio::time::sleep_until(wake) => {}
                }
            }
        }
    }

    fn act(&mut self, due: Due, ping: &impl Fn(u64) -> Ping) -> Tick {
        match due {
            Due::Ping { seq } => {
                match ping(seq) {
                    Ping::Control(payload) => self.ws.queue_ping(&payload),
                    Ping::Text(text) => self.ws.queue_text(&text),
                }
                Tick::Pinged
            }
            Due::Degraded => Tick::Degraded,
            Due::Dead {
                last_inbound,
                deadline,
            } => {
                let now = Instant::now();
                Tick::Dead {
                    late_by: now.saturating_duration_since(deadline),
                    silent_for: now.saturating_duration_since(last_inbound),
                }
            }
        }
    }
}
