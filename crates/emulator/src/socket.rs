//! One WebSocket connection after the upgrade, framed by hand on the raw transport, with the
//! platform's dialect plugged in ([`Dialect`]).
//!
//! A single task per socket owns the transport and a small state machine; it never blocks on
//! a write (a slow client just stops the socket pulling events), so fault orders are obeyed at
//! once however the peer behaves. Faults map onto it as follows: blackhole = neither read nor
//! write (the kernel buffers fill, nothing is answered; only a reset from the peer is noticed,
//! so reaped sockets do not pile up); reset = SO_LINGER 0 and drop; close = close frame, wait
//! (2 s at most) for the peer's close or EOF, drop; pong faults = skip or defer each pong,
//! RFC 6455 or the dialect's own.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Sleep};
use tracing::{debug, warn};

use crate::frame::{self, FrameError};
use crate::state::{Ctl, Order, PongMode, Registration};
use crate::transport::Transport;
use crate::util::{deadline_after, stopped};

/// Read size. The read buffer exists only while there is input to read or parse: an idle
/// socket holds none (it grows only while a bigger client frame is being received).
const READ_CHUNK: usize = 4096;
/// Stop pulling events while this many bytes wait to be written.
pub(crate) const HIGH_WATER: usize = 16 * 1024;
/// Stop reading while this many bytes wait to be written (a client that floods pings and
/// reads nothing cannot grow the queue without bound).
const MAX_PENDING: usize = 1 << 20;
/// How long a closing socket waits for the peer's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// What a dialect wants after handling something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Go on.
    Continue,
    /// Start the close handshake with this code and reason.
    Close(u16, String),
}

/// One platform's behaviour on a socket: what it answers, what it sends unasked, and when.
pub(crate) trait Dialect: Send + 'static {
    /// A complete client text message.
    fn on_text(&mut self, text: &str, wr: &mut Writer) -> Action;
    /// The dialect's next deadline, if any (token expiry, heartbeat, channel end).
    fn deadline(&self) -> Option<Instant>;
    /// The deadline has passed.
    fn on_deadline(&mut self, wr: &mut Writer) -> Action;
    /// Resolves when there may be events to send; never resolves when there will be none.
    fn wake(&mut self) -> impl Future<Output = ()> + Send;
    /// Queue owed events while the writer has room.
    fn fill(&mut self, wr: &mut Writer);
    /// A platform order from the fault API or the platform's state.
    fn on_order(&mut self, order: Order, wr: &mut Writer) -> Action;
    /// A close fault is about to close the socket (last words, if the dialect has any).
    fn on_fault_close(&mut self, _wr: &mut Writer) {}
    /// An RFC 6455 ping arrived.
    fn on_ping(&mut self) {}
    /// For logs.
    fn label(&self) -> &str;
}

/// The write side of a socket: whole frames waiting to go out, and the pong policy.
pub(crate) struct Writer {
    out: VecDeque<Bytes>,
    out_len: usize,
    pong: PongMode,
    /// Deferred pongs (due time, whole frame), in due order, and the timer for the first.
    delayed: VecDeque<(Instant, Bytes)>,
    pong_timer: Pin<Box<Sleep>>,
    /// Counts the pongs actually queued.
    pongs: Arc<AtomicU64>,
}

impl Writer {
    /// An empty writer answering pongs as `pong` says, counting them in `pongs`.
    pub fn new(pong: PongMode, pongs: Arc<AtomicU64>) -> Self {
        Self {
            out: VecDeque::new(),
            out_len: 0,
            pong,
            delayed: VecDeque::new(),
            pong_timer: Box::pin(tokio::time::sleep_until(Instant::now())),
            pongs,
        }
    }

    /// Queue whole frames.
    pub fn push(&mut self, frames: Bytes) {
        if frames.is_empty() {
            return;
        }
        self.out_len += frames.len();
        self.out.push_back(frames);
    }

    /// Queue a text frame.
    pub fn text(&mut self, text: &str) {
        self.push(frame::encode(frame::OP_TEXT, text.as_bytes()));
    }

    /// Whether there is room for more events.
    pub fn has_room(&self) -> bool {
        self.out_len < HIGH_WATER
    }

    /// Queue `frame`, a pong (RFC 6455 or a dialect's), as the pong mode says.
    pub fn pong(&mut self, frame: Bytes) {
        match self.pong {
            PongMode::Answer => self.push_pong(frame),
            PongMode::Stop => {}
            PongMode::Delay(d) => {
                let due = deadline_after(Instant::now(), d);
                let at = self.delayed.partition_point(|(t, _)| *t <= due);
                self.delayed.insert(at, (due, frame));
                if at == 0 {
                    self.pong_timer.as_mut().reset(due);
                }
            }
        }
    }

    fn push_pong(&mut self, frame: Bytes) {
        self.pongs.fetch_add(1, Ordering::Relaxed);
        self.push(frame);
    }

    /// Queue the deferred pongs that are due (all of them with `all`), and re-arm the timer.
    fn release_pongs(&mut self, all: bool) {
        let now = Instant::now();
        while let Some((due, _)) = self.delayed.front() {
            if !all && *due > now {
                break;
            }
            if let Some((_, frame)) = self.delayed.pop_front() {
                self.push_pong(frame);
            }
        }
        if let Some((due, _)) = self.delayed.front() {
            let due = *due;
            self.pong_timer.as_mut().reset(due);
        }
    }
}

/// Wait for hyper to hand over the upgraded connection, then run the socket to its end.
pub(crate) async fn serve<D: Dialect>(
    on_upgrade: OnUpgrade,
    reg: Registration,
    ctl: mpsc::UnboundedReceiver<Ctl>,
    wr: Writer,
    dialect: D,
) {
    let id = reg.id;
    let label = dialect.label().to_string();
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            debug!(socket = %label, conn = id, error = %e, "upgrade failed");
            return;
        }
    };
    let Some((io, read_buf)) = transport(upgraded) else {
        warn!(socket = %label, conn = id, "upgraded connection is neither TCP nor TLS");
        return;
    };
    let shared = reg.shared.clone();
    let mut conn = Conn {
        reg,
        dialect,
        io,
        max_frame: shared.cfg.max_frame,
        shutdown: shared.shutdown.subscribe(),
        rbuf: read_buf,
        wr,
        ctl,
        blackholed: false,
        closing: None,
        close_at: None,
        input_broken: false,
        timer: Box::pin(tokio::time::sleep_until(Instant::now())),
        timer_at: None,
        fragment: None,
    };
    debug!(socket = %label, conn = id, "socket open");
    let reason = conn.run().await;
    debug!(socket = %label, conn = id, reason, "socket closed");
}

/// The transport and the bytes hyper had read past the upgrade request.
fn transport(upgraded: Upgraded) -> Option<(Transport, BytesMut)> {
    let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let buf = BytesMut::from(&parts.read_buf[..]);
            return Some((Transport::Plain(parts.io.into_inner()), buf));
        }
        Err(u) => u,
    };
    let parts = upgraded
        .downcast::<TokioIo<tokio_rustls::server::TlsStream<TcpStream>>>()
        .ok()?;
    let buf = BytesMut::from(&parts.read_buf[..]);
    let (tcp, conn) = parts.io.into_inner().into_inner();
    Some((Transport::tls(tcp, conn), buf))
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
struct Conn<D: Dialect> {
    /// Dropped first, so the registry and counters are up to date before the peer sees EOF.
    reg: Registration,
    /// Dropped second: it unhooks itself from the platform's state.
    dialect: D,
    io: Transport,
    max_frame: usize,
    shutdown: watch::Receiver<bool>,
    /// Bytes read and not yet parsed.
    rbuf: BytesMut,
    wr: Writer,
    ctl: mpsc::UnboundedReceiver<Ctl>,
    blackholed: bool,
    closing: Option<Closing>,
    /// When a closing socket gives up waiting for the peer.
    close_at: Option<Instant>,
    /// After a framing error the input cannot be parsed any more; it is discarded.
    input_broken: bool,
    /// The close deadline while closing, else the dialect's deadline; `timer_at` is where it
    /// is set.
    timer: Pin<Box<Sleep>>,
    timer_at: Option<Instant>,
    /// A fragmented message being received: its opcode and the payload so far.
    fragment: Option<(u8, BytesMut)>,
}

impl<D: Dialect> Conn<D> {
    /// The socket's event loop; returns why it ended.
    async fn run(&mut self) -> &'static str {
        // Frames the client sent right behind its upgrade request.
        if let Flow::Done(why) = self.parse_input() {
            return why;
        }
        loop {
            if !self.blackholed && self.closing.is_none() {
                self.dialect.fill(&mut self.wr);
            }
            if self.closing == Some(Closing::Drain)
                && self.wr.out.is_empty()
                && !self.io.wants_write()
            {
                self.io.close_notify();
                return "closed by client";
            }
            let live = !self.blackholed;
            let can_write = live && (!self.wr.out.is_empty() || self.io.wants_write());
            let can_read = live && self.wr.out_len < MAX_PENDING;
            let want_events = live && self.closing.is_none() && self.wr.has_room();
            let deadline = if self.closing.is_some() {
                self.close_at
            } else {
                self.dialect.deadline()
            };
            let timer_on = live && deadline.is_some();
            if let Some(at) = deadline
                && self.timer_at != Some(at)
            {
                self.timer.as_mut().reset(at);
                self.timer_at = Some(at);
            }
            let pongs_due = live && self.closing.is_none() && !self.wr.delayed.is_empty();
            let flow = tokio::select! {
                biased;
                () = stopped(&mut self.shutdown) => {
                    self.wr.push(frame::close(frame::CLOSE_GOING_AWAY, "emulator shutting down"));
                    let _ = self.flush();
                    self.io.close_notify();
                    Flow::Done("shutdown")
                }
                ctl = self.ctl.recv() => match ctl {
                    Some(ctl) => self.on_ctl(ctl),
                    None => Flow::Done("unregistered"),
                },
                // Reads go first, so pings are answered promptly even during a long replay;
                // what they queue is written at once where the socket takes it.
                ready = self.io.readable(), if can_read => match ready {
                    Ok(()) => match self.on_readable() {
                        Flow::Continue if self.flush().is_err() => Flow::Done("write error"),
                        flow => flow,
                    },
                    Err(_) => Flow::Done("read error"),
                },
                ready = self.io.writable(), if can_write => match ready.and_then(|()| self.flush()) {
                    Ok(()) => Flow::Continue,
                    Err(_) => Flow::Done("write error"),
                },
                // A blackholed socket reads nothing, but still notices a reset from its peer
                // (how the sidecar reaps), so the emulator does not keep dead sockets open.
                _ = self.io.error(), if self.blackholed => {
                    Flow::Done("peer reset while blackholed")
                }
                () = self.dialect.wake(), if want_events => Flow::Continue,
                () = self.timer.as_mut(), if timer_on => {
                    self.timer_at = None;
                    if self.closing.is_some() {
                        Flow::Done("close timed out")
                    } else {
                        let action = self.dialect.on_deadline(&mut self.wr);
                        self.act(action);
                        Flow::Continue
                    }
                }
                () = self.wr.pong_timer.as_mut(), if pongs_due => {
                    self.wr.release_pongs(false);
                    Flow::Continue
                }
            };
            if let Flow::Done(why) = flow {
                return why;
            }
        }
    }

    /// Carry out a dialect's wish.
    fn act(&mut self, action: Action) {
        if let Action::Close(code, reason) = action {
            self.start_close(code, &reason);
        }
    }

    /// Write as much of the queue as the socket takes without blocking.
    fn flush(&mut self) -> io::Result<()> {
        let out = &mut self.wr;
        while !out.out.is_empty() {
            let mut iov = [IoSlice::new(&[]); 16];
            let mut k = 0;
            for (slot, chunk) in iov.iter_mut().zip(out.out.iter()) {
                *slot = IoSlice::new(chunk);
                k += 1;
            }
            let mut n = match self.io.try_write_vectored(&iov[..k]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            };
            out.out_len -= n;
            while n > 0 {
                let Some(front) = out.out.front_mut() else {
                    break;
                };
                if n >= front.len() {
                    n -= front.len();
                    out.out.pop_front();
                } else {
                    front.advance(n);
                    n = 0;
                }
            }
        }
        match self.io.flush_pending() {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(()),
        }
    }

    /// Read what the socket has and act on every complete frame.
    fn on_readable(&mut self) -> Flow {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        match self.io.try_read_buf(&mut self.rbuf) {
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
                        socket = self.dialect.label(),
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
            frame::OP_PING => {
                self.dialect.on_ping();
                self.wr.pong(frame::encode(frame::OP_PONG, &f.payload));
            }
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
            self.io.close_notify();
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
        self.wr.push(answer);
        self.enter_closing(Closing::Drain);
        Flow::Continue
    }

    /// A complete client message.
    fn on_message(&mut self, opcode: u8, payload: &[u8]) {
        if opcode == frame::OP_BINARY {
            debug!(
                socket = self.dialect.label(),
                conn = self.reg.id,
                "binary message ignored"
            );
            return;
        }
        match std::str::from_utf8(payload) {
            Ok(text) => {
                let action = self.dialect.on_text(text, &mut self.wr);
                self.act(action);
            }
            Err(_) => self.break_input(frame::CLOSE_BAD_DATA, "text is not UTF-8"),
        }
    }

    /// Obey one fault order.
    fn on_ctl(&mut self, ctl: Ctl) -> Flow {
        match ctl {
            Ctl::Blackhole => self.blackholed = true,
            Ctl::Heal => {
                self.blackholed = false;
                self.wr.pong = PongMode::Answer;
                self.wr.release_pongs(true);
            }
            Ctl::Pongs(mode) => {
                self.wr.pong = mode;
                match mode {
                    PongMode::Answer => self.wr.release_pongs(true),
                    PongMode::Stop => self.wr.delayed.clear(),
                    PongMode::Delay(_) => {}
                }
            }
            Ctl::Reset => {
                // SO_LINGER 0 makes the close below send RST instead of FIN.
                self.io.set_reset();
                return Flow::Done("reset by fault");
            }
            Ctl::Close(code, reason) => {
                self.blackholed = false;
                if self.closing.is_none() {
                    self.dialect.on_fault_close(&mut self.wr);
                }
                self.start_close(code, &reason);
            }
            Ctl::Send(frames) => {
                if self.closing.is_none() {
                    self.wr.push(frames);
                }
            }
            Ctl::Order(order) => {
                if self.closing.is_none() {
                    let action = self.dialect.on_order(order, &mut self.wr);
                    self.act(action);
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
        self.wr.push(frame::close(code, reason));
        self.enter_closing(Closing::AwaitPeer);
    }

    /// Stop events and pongs and arm the close deadline.
    fn enter_closing(&mut self, how: Closing) {
        self.closing = Some(how);
        self.fragment = None;
        self.wr.delayed.clear();
        self.close_at = Some(deadline_after(Instant::now(), CLOSE_WAIT));
    }
}

/// Whether an endpoint may put `code` in a close frame (RFC 6455 section 7.4).
fn sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}
