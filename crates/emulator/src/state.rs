//! State shared by the HTTP handlers, the sockets and the [`Emulator`](crate::Emulator)
//! handle: streams, tokens, the socket registry and the armed faults.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tracing::info;

use crate::config::EmulatorConfig;
use crate::fault::{Fault, FaultReport};
use crate::stats::Stats;
use crate::stream::{self, Stream};
use crate::tokens::Tokens;
use crate::util::lock;

/// How a socket answers pings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PongMode {
    /// At once (RFC 6455).
    Answer,
    /// Never.
    Stop,
    /// This much later.
    Delay(Duration),
}

/// An order from the fault API to one socket.
#[derive(Debug, Clone)]
pub(crate) enum Ctl {
    /// Stop reading and writing, keep the socket open.
    Blackhole,
    /// Undo a blackhole and answer pings again.
    Heal,
    /// Answer pings this way from now on.
    Pongs(PongMode),
    /// SO_LINGER 0, then drop.
    Reset,
    /// Close handshake with this code and reason.
    Close(u16, String),
    /// Write these bytes (one or more whole frames) as they are.
    Send(Bytes),
}

/// Why a token request is turned away by an armed fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenFault {
    /// 429 with `Retry-After` seconds.
    RateLimited(u64),
    /// 401 invalid_client.
    Refused,
}

/// Everything the emulator's tasks share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The configuration it was started with.
    pub cfg: EmulatorConfig,
    /// Streams by name; never removed.
    streams: RwLock<HashMap<String, Arc<Stream>>>,
    /// Issued tokens.
    pub tokens: Mutex<Tokens>,
    /// Open sockets and armed faults, under one lock so that a fault and a new socket never
    /// miss each other.
    control: Mutex<Control>,
    /// Tokens issued since start.
    pub tokens_issued: AtomicU64,
    /// Sockets accepted since start.
    connections_total: AtomicU64,
    /// Sockets open now.
    connections_open: AtomicUsize,
    /// Source of socket ids.
    next_socket: AtomicU64,
    /// Turns true once, at shutdown.
    pub shutdown: watch::Sender<bool>,
    /// Held (as clones) by every task; shutdown drops this one and waits for the rest.
    tracker: Mutex<Option<mpsc::Sender<()>>>,
    /// The runtime the emulator was started on, so synchronous calls can spawn.
    runtime: tokio::runtime::Handle,
}

/// The socket registry and the armed faults.
#[derive(Debug)]
struct Control {
    sockets: HashMap<u64, SocketEntry>,
    pong_all: PongMode,
    pong_by_stream: HashMap<String, PongMode>,
    refuse_tokens: u64,
    rate_limit: Option<RateLimit>,
}

/// One open socket as the fault API sees it.
#[derive(Debug)]
struct SocketEntry {
    stream: Arc<Stream>,
    ctl: mpsc::UnboundedSender<Ctl>,
}

/// An armed `rate-limit` fault.
#[derive(Debug)]
struct RateLimit {
    stream: Option<String>,
    tokens_left: u64,
    upgrades_left: u64,
    retry_after_secs: u64,
}

/// A socket's place in the registry; dropping it unregisters the socket.
#[derive(Debug)]
pub(crate) struct Registration {
    /// The shared state.
    pub shared: Arc<Shared>,
    /// The socket's id (for logs).
    pub id: u64,
    /// The socket's stream.
    pub stream: Arc<Stream>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.shared.control).sockets.remove(&self.id);
        self.stream.connections.fetch_sub(1, Ordering::Relaxed);
        self.shared.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shared {
    /// Shared state for `cfg`; tasks are spawned on `runtime` and hold clones of `tracker`.
    pub fn new(
        cfg: EmulatorConfig,
        tracker: mpsc::Sender<()>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            cfg,
            streams: RwLock::default(),
            tokens: Mutex::default(),
            control: Mutex::new(Control {
                sockets: HashMap::new(),
                pong_all: PongMode::Answer,
                pong_by_stream: HashMap::new(),
                refuse_tokens: 0,
                rate_limit: None,
            }),
            tokens_issued: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            connections_open: AtomicUsize::new(0),
            next_socket: AtomicU64::new(1),
            shutdown: watch::channel(false).0,
            tracker: Mutex::new(Some(tracker)),
            runtime,
        }
    }

    /// Run `fut` as a tracked task; does nothing once shutdown has begun.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(tracker) = lock(&self.tracker).clone() else {
            return;
        };
        self.runtime.spawn(async move {
            fut.await;
            drop(tracker);
        });
    }

    /// Begin shutdown: every task is told to stop, and no new task starts.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
        lock(&self.tracker).take();
    }

    /// The stream called `name`, created (with its event timer) if it does not exist.
    pub fn stream(self: &Arc<Self>, name: &str) -> Arc<Stream> {
        if let Some(s) = self
            .streams
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
        {
            return s.clone();
        }
        let mut streams = self
            .streams
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = streams.get(name) {
            return s.clone();
        }
        let s = Arc::new(Stream::new(name, self.cfg.history));
        streams.insert(name.to_string(), s.clone());
        drop(streams);
        info!(stream = name, "stream created");
        if !self.cfg.event_interval.is_zero() {
            self.spawn(stream::tick(
                s.clone(),
                self.cfg.event_interval,
                self.shutdown.subscribe(),
            ));
        }
        s
    }

    /// Register a new socket on `stream`: its id, its order channel and the pong mode it starts
    /// with. The counters move now; the returned guard moves them back.
    pub fn register(
        self: &Arc<Self>,
        stream: Arc<Stream>,
    ) -> (Registration, mpsc::UnboundedReceiver<Ctl>, PongMode) {
        let id = self.next_socket.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let mut c = lock(&self.control);
        let pong = c
            .pong_by_stream
            .get(&stream.name)
            .copied()
            .unwrap_or(c.pong_all);
        c.sockets.insert(
            id,
            SocketEntry {
                stream: stream.clone(),
                ctl: tx,
            },
        );
        drop(c);
        stream.connections.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        let reg = Registration {
            shared: self.clone(),
            id,
            stream,
        };
        (reg, rx, pong)
    }

    /// Consume one armed token fault, if any (rate limiting first).
    pub fn take_token_fault(&self) -> Option<TokenFault> {
        let mut c = lock(&self.control);
        if let Some(rl) = c.rate_limit.as_mut().filter(|rl| rl.tokens_left > 0) {
            rl.tokens_left -= 1;
            return Some(TokenFault::RateLimited(rl.retry_after_secs));
        }
        if c.refuse_tokens > 0 {
            c.refuse_tokens -= 1;
            return Some(TokenFault::Refused);
        }
        None
    }

    /// Consume one armed upgrade rate limit for `stream`; returns its `Retry-After` seconds.
    pub fn take_upgrade_rate_limit(&self, stream: &str) -> Option<u64> {
        let mut c = lock(&self.control);
        let rl = c.rate_limit.as_mut()?;
        if rl.upgrades_left == 0 || rl.stream.as_deref().is_some_and(|s| s != stream) {
            return None;
        }
        rl.upgrades_left -= 1;
        Some(rl.retry_after_secs)
    }

    /// Apply one fault (the body of `POST /faults`).
    pub fn apply(&self, fault: Fault) -> FaultReport {
        let scope = fault.stream().map(str::to_string);
        let what = serde_json::to_string(&fault).unwrap_or_default();
        let mut c = lock(&self.control);
        let applied = match fault {
            Fault::Blackhole { .. } => c.send(scope.as_deref(), &Ctl::Blackhole),
            Fault::StopPongs { .. } => c.set_pongs(scope.as_deref(), PongMode::Stop),
            Fault::DelayPongs { delay_ms, .. } => c.set_pongs(
                scope.as_deref(),
                PongMode::Delay(Duration::from_millis(delay_ms)),
            ),
            Fault::Heal { .. } => {
                match scope.as_deref() {
                    None => {
                        c.pong_all = PongMode::Answer;
                        c.pong_by_stream.clear();
                        c.refuse_tokens = 0;
                        c.rate_limit = None;
                    }
                    Some(s) => {
                        c.pong_by_stream.insert(s.to_string(), PongMode::Answer);
                    }
                }
                c.send(scope.as_deref(), &Ctl::Heal)
            }
            Fault::Reset { .. } => c.send(scope.as_deref(), &Ctl::Reset),
            Fault::Close { code, reason, .. } => {
                c.send(scope.as_deref(), &Ctl::Close(code, reason))
            }
            Fault::RefuseToken { count, .. } => {
                c.refuse_tokens = count;
                count
            }
            Fault::RateLimit {
                count,
                retry_after_secs,
                ..
            } => {
                c.rate_limit = Some(RateLimit {
                    stream: scope.clone(),
                    tokens_left: count,
                    upgrades_left: count,
                    retry_after_secs,
                });
                count
            }
            Fault::SendGarbage { kind, bytes, .. } => {
                c.send(scope.as_deref(), &Ctl::Send(kind.frame(bytes)))
            }
        };
        drop(c);
        info!(fault = %what, applied, "fault injected");
        FaultReport { applied }
    }

    /// A snapshot of every counter.
    pub fn stats(&self) -> Stats {
        let streams = self
            .streams
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(name, s)| (name.clone(), s.stats()))
            .collect();
        Stats {
            streams,
            tokens_issued: self.tokens_issued.load(Ordering::Relaxed),
            connections_total: self.connections_total.load(Ordering::Relaxed),
            connections_open: self.connections_open.load(Ordering::Relaxed),
        }
    }
}

impl Control {
    /// Send `ctl` to every socket in `scope`; returns how many got it.
    fn send(&self, scope: Option<&str>, ctl: &Ctl) -> u64 {
        let mut n = 0;
        for entry in self.sockets.values() {
            if scope.is_some_and(|s| s != entry.stream.name) {
                continue;
            }
            if entry.ctl.send(ctl.clone()).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// Make `mode` the pong behaviour of `scope` (sticky) and of its open sockets.
    fn set_pongs(&mut self, scope: Option<&str>, mode: PongMode) -> u64 {
        match scope {
            None => {
                self.pong_all = mode;
                self.pong_by_stream.clear();
            }
            Some(s) => {
                self.pong_by_stream.insert(s.to_string(), mode);
            }
        }
        self.send(scope, &Ctl::Pongs(mode))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Arc<Shared> {
        let (tracker, _done) = mpsc::channel(1);
        let cfg = EmulatorConfig {
            event_interval: Duration::ZERO,
            ..EmulatorConfig::default()
        };
        Arc::new(Shared::new(cfg, tracker, tokio::runtime::Handle::current()))
    }

    #[tokio::test]
    async fn a_stream_scoped_rate_limit_counts_only_that_streams_upgrades() {
        let s = shared();
        let f = Fault::RateLimit {
            stream: Some("a".into()),
            count: 1,
            retry_after_secs: 3,
        };
        assert_eq!(s.apply(f).applied, 1);
        assert_eq!(s.take_upgrade_rate_limit("b"), None);
        assert_eq!(s.take_upgrade_rate_limit("a"), Some(3));
        assert_eq!(s.take_upgrade_rate_limit("a"), None, "used up");
        assert_eq!(s.take_token_fault(), Some(TokenFault::RateLimited(3)));
        assert_eq!(s.take_token_fault(), None);
    }

    #[tokio::test]
    async fn heal_without_a_stream_disarms_request_faults_and_pong_settings() {
        let s = shared();
        s.apply(Fault::RefuseToken {
            stream: None,
            count: 5,
        });
        s.apply(Fault::RateLimit {
            stream: None,
            count: 5,
            retry_after_secs: 1,
        });
        s.apply(Fault::StopPongs {
            stream: Some("a".into()),
        });
        s.apply(Fault::DelayPongs {
            stream: None,
            delay_ms: 10,
        });
        let (_reg, _rx, pong) = s.register(s.stream("b"));
        assert_eq!(pong, PongMode::Delay(Duration::from_millis(10)));
        assert_eq!(s.apply(Fault::Heal { stream: None }).applied, 1);
        assert_eq!(s.take_token_fault(), None);
        assert_eq!(s.take_upgrade_rate_limit("a"), None);
        let (_reg, _rx, pong) = s.register(s.stream("a"));
        assert_eq!(pong, PongMode::Answer);
    }

    #[tokio::test]
    async fn pong_faults_stick_per_stream_and_registration_counts_move() {
        let s = shared();
        s.apply(Fault::StopPongs {
            stream: Some("a".into()),
        });
        let (reg, _rx, pong) = s.register(s.stream("a"));
        assert_eq!(pong, PongMode::Stop);
        assert_eq!(s.register(s.stream("b")).2, PongMode::Answer);
        assert_eq!(s.stats().connections_open, 1, "the b guard was dropped");
        assert_eq!(s.stats().streams["a"].connections, 1);
        drop(reg);
        let st = s.stats();
        assert_eq!((st.connections_open, st.connections_total), (0, 2));
        assert_eq!(
            s.apply(Fault::Heal {
                stream: Some("a".into())
            })
            .applied,
            0
        );
        assert_eq!(s.register(s.stream("a")).2, PongMode::Answer);
    }
}
