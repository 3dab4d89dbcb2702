//! One WebSocket connection after the upgrade, framed by hand on the raw `TcpStream`.
//!
//! A single task per socket owns the stream and a small state machine; it never blocks on a
//! write (a slow client just stops the socket pulling events from the stream's history), so
//! fault orders are obeyed at once however the peer behaves. Faults map onto it as follows:
//! blackhole = neither read nor write (the kernel buffers fill, nothing is answered; only a
//! reset from the peer is noticed, so reaped sockets do not pile up); reset =
//! SO_LINGER 0 and drop; close = close frame, wait (2 s at most) for the peer's close or EOF,
//! drop; pong faults = skip or defer the pong for each ping.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Sleep};
use tracing::{debug, warn};

use crate::frame::{self, FrameError};
use crate::state::{Ctl, PongMode, Registration};
use crate::stream::Stream;
use crate::util::{deadline_after, lock, stopped};

/// Read size. The read buffer exists only while there is input to read or parse: an idle
/// socket holds none (it grows only while a bigger client frame is being received).
const READ_CHUNK: usize = 4096;
/// Stop pulling events while this many bytes wait to be written.
const HIGH_WATER: usize = 16 * 1024;
/// Stop reading while this many bytes wait to be written (a client that floods pings and
/// reads nothing cannot grow the queue without bound).
const MAX_PENDING: usize = 1 << 20;
/// Events copied out of the history per lock.
const BATCH: usize = 256;
/// How long a closing socket waits for the peer's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Token refresh answers.
const REFRESH_ACK: &str = r#"{"type":"token-refresh-ack"}"#;
/// Token refresh refusal.
const REFRESH_NACK: &str = r#"{"type":"token-refresh-nack","reason":"invalid_token"}"#;

/// What the upgrade handler decided for a socket before answering 101.
#[derive(Debug)]
pub(crate) struct Setup {
    /// The socket's registry entry (also its stream and the shared state).
    pub reg: Registration,
    /// Fault orders.
    pub ctl: mpsc::UnboundedReceiver<Ctl>,
    /// How pings are answered at first.
    pub pong: PongMode,
    /// The first event owed to the client.
    pub next_seq: u64,
    /// Wakes when the stream produces events.
    pub latest: watch::Receiver<u64>,
    /// When the socket's token expires.
    pub token_expiry: Instant,
}

/// Wait for hyper to hand over the upgraded connection, then run the socket to its end.
pub(crate) async fn serve(on_upgrade: OnUpgrade, setup: Setup) {
    let stream = setup.reg.stream.name.clone();
    let id = setup.reg.id;
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            debug!(stream, conn = id, error = %e, "upgrade failed");
            return;
        }
    };
    let parts = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(p) => p,
        Err(_) => {
            warn!(stream, conn = id, "upgraded connection is not a TcpStream");
            return;
        }
    };
    let rbuf = BytesMut::from(&parts.read_buf[..]);
    let shared = setup.reg.shared.clone();
    let now = Instant::now();
    let mut conn = Conn {
        tcp: parts.io.into_inner(),
        max_frame: shared.cfg.max_frame,
        shutdown: shared.shutdown.subscribe(),
        stream: setup.reg.stream.clone(),
        reg: setup.reg,
        rbuf,
        out: VecDeque::new(),
        out_len: 0,
        next_seq: setup.next_seq,
        latest: setup.latest,
        latest_open: true,
        ctl: setup.ctl,
        pong: setup.pong,
        delayed: VecDeque::new(),
        pong_timer: Box::pin(tokio::time::sleep_until(now)),
        blackholed: false,
        closing: None,
        input_broken: false,
        timer: Box::pin(tokio::time::sleep_until(setup.token_expiry)),
        expiry_armed: true,
        fragment: None,
        scratch: String::new(),
        ats: Vec::new(),
    };
    debug!(stream, conn = id, from_seq = conn.next_seq, "socket open");
    let reason = conn.run().await;
    debug!(stream, conn = id, reason, "socket closed");
}

/// How a closing socket ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// We sent a close frame: wait for the peer's (or EOF), then drop.
    AwaitPeer,
    /// The peer sent one and we answered: drop once the answer is written.
    Drain,
}

/// Whether the socket goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Done(&'static str),
}

/// One socket's state.
struct Conn {
    /// Dropped first, so the registry and counters are up to date before the peer sees EOF.
    reg: Registration,
    tcp: TcpStream,
    stream: Arc<Stream>,
    max_frame: usize,
    shutdown: watch::Receiver<bool>,
    /// Bytes read and not yet parsed.
    rbuf: BytesMut,
    /// Whole frames waiting to be written, and their total size.
    out: VecDeque<Bytes>,
    out_len: usize,
    /// The next event owed to the client.
    next_seq: u64,
    latest: watch::Receiver<u64>,
    latest_open: bool,
    ctl: mpsc::UnboundedReceiver<Ctl>,
    pong: PongMode,
    /// Deferred pongs (due time, payload), in due order, and the timer for the first.
    delayed: VecDeque<(Instant, Bytes)>,
    pong_timer: Pin<Box<Sleep>>,
    blackholed: bool,
    closing: Option<Closing>,
    /// After a framing error the input cannot be parsed any more; it is discarded.
    input_broken: bool,
    /// Token expiry, or the close deadline once closing.
    timer: Pin<Box<Sleep>>,
    expiry_armed: bool,
    /// A fragmented message being received: its opcode and the payload so far.
    fragment: Option<(u8, BytesMut)>,
    scratch: String,
    ats: Vec<u64>,
}

impl Conn {
    /// The socket's event loop; returns why it ended.
    async fn run(&mut self) -> &'static str {
        // Frames the client sent right behind its upgrade request.
        if let Flow::Done(why) = self.parse_input() {
            return why;
        }
        loop {
            self.fill();
            if self.closing == Some(Closing::Drain) && self.out.is_empty() {
                return "closed by client";
            }
            let live = !self.blackholed;
            let can_write = live && !self.out.is_empty();
            let can_read = live && self.out_len < MAX_PENDING;
            let want_events =
                live && self.closing.is_none() && self.latest_open && self.out_len < HIGH_WATER;
            let timer_on = live && (self.closing.is_some() || self.expiry_armed);
            let pongs_due = live && self.closing.is_none() && !self.delayed.is_empty();
            let flow = tokio::select! {
                biased;
                () = stopped(&mut self.shutdown) => {
                    self.push(frame::close(frame::CLOSE_GOING_AWAY, "emulator shutting down"));
                    let _ = self.flush();
                    Flow::Done("shutdown")
                }
                ctl = self.ctl.recv() => match ctl {
                    Some(ctl) => self.on_ctl(ctl),
                    None => Flow::Done("unregistered"),
                },
                // Reads go first, so pings are answered promptly even during a long replay;
                // what they queue is written at once where the socket takes it.
                ready = self.tcp.readable(), if can_read => match ready {
                    Ok(()) => match self.on_readable() {
                        Flow::Continue if self.flush().is_err() => Flow::Done("write error"),
                        flow => flow,
                    },
                    Err(_) => Flow::Done("read error"),
                },
                ready = self.tcp.writable(), if can_write => match ready.and_then(|()| self.flush()) {
                    Ok(()) => Flow::Continue,
                    Err(_) => Flow::Done("write error"),
                },
                // A blackholed socket reads nothing, but still notices a reset from its peer
                // (how the sidecar reaps), so the emulator does not keep dead sockets open.
                _ = self.tcp.ready(Interest::ERROR), if self.blackholed => {
                    Flow::Done("peer reset while blackholed")
                }
                changed = self.latest.changed(), if want_events => {
                    if changed.is_err() {
                        self.latest_open = false;
                    }
                    Flow::Continue
                }
                () = self.timer.as_mut(), if timer_on => {
                    if self.closing.is_some() {
                        Flow::Done("close timed out")
                    } else {
                        self.expiry_armed = false;
                        debug!(stream = self.stream.name, conn = self.reg.id, "token expired");
                        self.start_close(frame::CLOSE_TOKEN_EXPIRED, "token expired");
                        Flow::Continue
                    }
                }
                () = self.pong_timer.as_mut(), if pongs_due => {
                    self.release_pongs(false);
                    Flow::Continue
                }
            };
            if let Flow::Done(why) = flow {
                return why;
            }
        }
    }

    /// Copy owed events from the history into the write queue while it has room.
    fn fill(&mut self) {
        if self.ats.capacity() > 64 {
            self.ats = Vec::new(); // after a replay batch: an idle socket keeps little
        }
        if self.blackholed || self.closing.is_some() {
            return;
        }
        while self.out_len < HIGH_WATER {
            let latest = *self.latest.borrow_and_update();
            if self.next_seq > latest {
                return;
            }
            let want = usize::try_from(latest - self.next_seq + 1)
                .unwrap_or(usize::MAX)
                .min(BATCH);
            self.ats.clear();
            let first = self.stream.read(self.next_seq, want, &mut self.ats);
            if first > self.next_seq {
                debug!(
                    stream = self.stream.name,
                    conn = self.reg.id,
                    lost = first - self.next_seq,
                    "client fell behind the history; events skipped"
                );
            }
            if self.ats.is_empty() {
                self.next_seq = first;
                return;
            }
            let mut buf = BytesMut::with_capacity(self.ats.len() * 128);
            for (i, at) in self.ats.iter().enumerate() {
                self.stream
                    .put_event(&mut buf, first + i as u64, *at, &mut self.scratch);
            }
            self.next_seq = first + self.ats.len() as u64;
            self.push(buf.freeze());
        }
    }

    /// Queue whole frames for writing.
    fn push(&mut self, frames: Bytes) {
        if frames.is_empty() {
            return;
        }
        self.out_len += frames.len();
        self.out.push_back(frames);
    }

    /// Queue a text frame.
    fn push_text(&mut self, text: &str) {
        self.push(frame::encode(frame::OP_TEXT, text.as_bytes()));
    }

    /// Write as much of the queue as the socket takes without blocking.
    fn flush(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            let mut iov = [IoSlice::new(&[]); 16];
            let mut k = 0;
            for (slot, chunk) in iov.iter_mut().zip(self.out.iter()) {
                *slot = IoSlice::new(chunk);
                k += 1;
            }
            let mut n = match self.tcp.try_write_vectored(&iov[..k]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            };
            self.out_len -= n;
            while n > 0 {
                let Some(front) = self.out.front_mut() else {
                    break;
                };
                if n >= front.len() {
                    n -= front.len();
                    self.out.pop_front();
                } else {
                    front.advance(n);
                    n = 0;
                }
            }
        }
        Ok(())
    }

    /// Read what the socket has and act on every complete frame.
    fn on_readable(&mut self) -> Flow {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        match self.tcp.try_read_buf(&mut self.rbuf) {
            Ok(0) => return Flow::Done("peer closed the connection"),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flow::Continue,
            Err(_) => return Flow::Done("read error"),
        }
        if self.input_broken {
            self.rbuf = BytesMut::new();
            return Flow::Continue;
        }
        let flow = self.parse_input();
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
        flow
    }

    /// Act on every complete frame in the read buffer.
    fn parse_input(&mut self) -> Flow {
        loop {
            match frame::parse(&mut self.rbuf, self.max_frame) {
                Ok(None) => return Flow::Continue,
                Ok(Some(f)) => {
                    if let Flow::Done(why) = self.on_frame(f) {
                        return Flow::Done(why);
                    }
                }
                Err(FrameError::Protocol(why)) => {
                    debug!(
                        stream = self.stream.name,
                        conn = self.reg.id,
                        why,
                        "protocol error"
                    );
                    self.break_input(frame::CLOSE_PROTOCOL, why);
                    return Flow::Continue;
                }
                Err(FrameError::TooBig) => {
                    self.break_input(frame::CLOSE_TOO_BIG, "message too big");
                    return Flow::Continue;
                }
            }
        }
    }

    /// Give up on the input: discard it and close with `code`.
    fn break_input(&mut self, code: u16, reason: &str) {
        self.input_broken = true;
        self.rbuf.clear();
        self.start_close(code, reason);
    }

    /// Act on one client frame.
    fn on_frame(&mut self, f: frame::Frame) -> Flow {
        if f.opcode == frame::OP_CLOSE {
            return self.on_close(&f.payload);
        }
        if self.closing.is_some() {
            return Flow::Continue;
        }
        match f.opcode {
            frame::OP_PING => self.on_ping(f.payload),
            frame::OP_TEXT | frame::OP_BINARY => {
                if self.fragment.is_some() {
                    self.break_input(
                        frame::CLOSE_PROTOCOL,
                        "data frame inside a fragmented message",
                    );
                } else if f.fin {
                    self.on_message(f.opcode, &f.payload);
                } else {
                    self.fragment = Some((f.opcode, BytesMut::from(&f.payload[..])));
                }
            }
            frame::OP_CONT => match self.fragment.take() {
                None => self.break_input(frame::CLOSE_PROTOCOL, "continuation without a message"),
                Some((_, buf)) if buf.len() + f.payload.len() > self.max_frame => {
                    self.break_input(frame::CLOSE_TOO_BIG, "message too big");
                }
                Some((opcode, mut buf)) => {
                    buf.extend_from_slice(&f.payload);
                    if f.fin {
                        self.on_message(opcode, &buf);
                    } else {
                        self.fragment = Some((opcode, buf));
                    }
                }
            },
            _ => {} // pongs from the client need no answer
        }
        Flow::Continue
    }

    /// The peer's close frame: the end of our close handshake, or the start of theirs.
    fn on_close(&mut self, payload: &[u8]) -> Flow {
        if self.closing == Some(Closing::AwaitPeer) {
            return Flow::Done("close handshake done");
        }
        if self.closing.is_some() {
            return Flow::Continue;
        }
        let answer = match payload {
            [] => frame::encode(frame::OP_CLOSE, &[]),
            [a, b, ..] if sendable_close_code(u16::from_be_bytes([*a, *b])) => {
                frame::close(u16::from_be_bytes([*a, *b]), "")
            }
            _ => frame::close(frame::CLOSE_PROTOCOL, "bad close frame"),
        };
        self.push(answer);
        self.enter_closing(Closing::Drain);
        Flow::Continue
    }

    /// A client ping: answer it as the pong mode says.
    fn on_ping(&mut self, payload: Bytes) {
        self.stream.pings.fetch_add(1, Ordering::Relaxed);
        match self.pong {
            PongMode::Answer => self.push_pong(&payload),
            PongMode::Stop => {}
            PongMode::Delay(d) => {
                let due = deadline_after(Instant::now(), d);
                let at = self.delayed.partition_point(|(t, _)| *t <= due);
                self.delayed.insert(at, (due, payload));
                if at == 0 {
                    self.pong_timer.as_mut().reset(due);
                }
            }
        }
    }

    /// Queue a pong and count it.
    fn push_pong(&mut self, payload: &[u8]) {
        self.stream.pongs.fetch_add(1, Ordering::Relaxed);
        self.push(frame::encode(frame::OP_PONG, payload));
    }

    /// Queue the deferred pongs that are due (all of them with `all`), and re-arm the timer.
    fn release_pongs(&mut self, all: bool) {
        let now = Instant::now();
        while let Some((due, _)) = self.delayed.front() {
            if !all && *due > now {
                break;
            }
            if let Some((_, payload)) = self.delayed.pop_front() {
                self.push_pong(&payload);
            }
        }
        if let Some((due, _)) = self.delayed.front() {
            let due = *due;
            self.pong_timer.as_mut().reset(due);
        }
    }

    /// A complete client message.
    fn on_message(&mut self, opcode: u8, payload: &[u8]) {
        if opcode == frame::OP_BINARY {
            debug!(
                stream = self.stream.name,
                conn = self.reg.id,
                "binary message ignored"
            );
            return;
        }
        match std::str::from_utf8(payload) {
            Ok(text) => self.on_text(text),
            Err(_) => self.break_input(frame::CLOSE_BAD_DATA, "text is not UTF-8"),
        }
    }

    /// A client text message: a token refresh, or something logged and ignored.
    fn on_text(&mut self, text: &str) {
        let msg: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                warn!(stream = self.stream.name, conn = self.reg.id, error = %e, "malformed client frame ignored");
                return;
            }
        };
        match msg.get("type").and_then(serde_json::Value::as_str) {
            Some("token-refresh") => {
                let expiry = msg
                    .get("token")
                    .and_then(serde_json::Value::as_str)
                    .and_then(|t| lock(&self.reg.shared.tokens).valid(t));
                match expiry {
                    Some(expiry) => {
                        self.stream.token_refreshes.fetch_add(1, Ordering::Relaxed);
                        self.expiry_armed = true;
                        self.timer.as_mut().reset(expiry);
                        debug!(
                            stream = self.stream.name,
                            conn = self.reg.id,
                            "token refreshed"
                        );
                        self.push_text(REFRESH_ACK);
                    }
                    None => {
                        debug!(
                            stream = self.stream.name,
                            conn = self.reg.id,
                            "token refresh refused"
                        );
                        self.push_text(REFRESH_NACK);
                    }
                }
            }
            other => {
                warn!(stream = self.stream.name, conn = self.reg.id, kind = ?other, "client message of unknown type ignored");
            }
        }
    }

    /// Obey one fault order.
    fn on_ctl(&mut self, ctl: Ctl) -> Flow {
        match ctl {
            Ctl::Blackhole => self.blackholed = true,
            Ctl::Heal => {
                self.blackholed = false;
                self.pong = PongMode::Answer;
                self.release_pongs(true);
            }
            Ctl::Pongs(mode) => {
                self.pong = mode;
                match mode {
                    PongMode::Answer => self.release_pongs(true),
                    PongMode::Stop => self.delayed.clear(),
                    PongMode::Delay(_) => {}
                }
            }
            Ctl::Reset => {
                // SO_LINGER 0 makes the close below send RST instead of FIN.
                let _ = socket2::SockRef::from(&self.tcp).set_linger(Some(Duration::ZERO));
                return Flow::Done("reset by fault");
            }
            Ctl::Close(code, reason) => {
                self.blackholed = false;
                self.start_close(code, &reason);
            }
            Ctl::Send(frames) => {
                if self.closing.is_none() {
                    self.push(frames);
                }
            }
        }
        Flow::Continue
    }

    /// Send a close frame and wait for the peer's.
    fn start_close(&mut self, code: u16, reason: &str) {
        if self.closing.is_some() {
            return;
        }
        self.push(frame::close(code, reason));
        self.enter_closing(Closing::AwaitPeer);
    }

    /// Stop events and pongs and arm the close deadline.
    fn enter_closing(&mut self, how: Closing) {
        self.closing = Some(how);
        self.fragment = None;
        self.delayed.clear();
        self.timer
            .as_mut()
            .reset(deadline_after(Instant::now(), CLOSE_WAIT));
    }
}

/// Whether an endpoint may put `code` in a close frame (RFC 6455 section 7.4).
fn sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}
