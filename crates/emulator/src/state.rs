//! State shared by the HTTP handlers, the sockets and the [`Emulator`](crate::Emulator)
//! handle: generic streams, tokens, the socket registry, the platforms and the armed faults.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tracing::info;

use crate::config::EmulatorConfig;
use crate::cxone::Cxone;
use crate::fault::{AahFault, CxoneFault, DfoFault, Fault, FaultReport, GenesysFault, SocketAct};
use crate::genesys::Genesys;
use crate::stats::{ClientTokenStats, Stats};
use crate::stream::{self, Stream};
use crate::tokens::{Platform, TokenSelector, Tokens};
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

/// An order from the fault API (or a platform's state) to one socket.
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
    /// Something only the socket's dialect understands.
    Order(Order),
}

/// A dialect-level order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Order {
    /// Genesys: send `v2.system.socket_closing`, close with `code` after `close_after`.
    SocketClosing {
        /// Delay before the close.
        close_after: Duration,
        /// The close code.
        code: u16,
    },
    /// Genesys: the channel stopped or was taken by another socket; close with 1000 and this.
    Stop(&'static str),
    /// DFO: tokens changed (expired or revoked); check the registered one.
    TokensChanged,
    /// DFO: send `RATE_LIMIT_EXCEEDED` (and close).
    RateLimitExceeded {
        /// Close after it.
        close: bool,
    },
}

/// Why a token request is turned away by an armed generic fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenFault {
    /// 429 with `Retry-After` seconds.
    RateLimited(u64),
    /// 401 invalid_client.
    Refused,
}

/// What a socket is, as the fault API selects it.
#[derive(Debug, Clone)]
pub(crate) enum SocketKey {
    /// A generic stream's socket.
    Generic(Arc<Stream>),
    /// A Genesys channel's socket.
    Genesys {
        /// The channel id.
        channel: String,
        /// Its OAuth client.
        client: String,
    },
    /// A DFO event hub socket.
    Dfo {
        /// `tenantId` of the URL.
        tenant: String,
        /// `userId` of the URL.
        user: String,
    },
    /// An AAH socket.
    Aah,
}

impl SocketKey {
    /// How a fault report names socket `id`.
    fn name(&self, id: u64) -> String {
        match self {
            SocketKey::Generic(s) => format!("generic:{}#{id}", s.name),
            SocketKey::Genesys { channel, .. } => format!("genesys:{channel}#{id}"),
            SocketKey::Dfo { tenant, user } => format!("cxone-dfo:{tenant}/{user}#{id}"),
            SocketKey::Aah => format!("cxone-aah:#{id}"),
        }
    }
}

/// Everything the emulator's tasks share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The configuration it was started with.
    pub cfg: EmulatorConfig,
    /// Generic streams by name; never removed.
    streams: RwLock<HashMap<String, Arc<Stream>>>,
    /// Issued tokens.
    pub tokens: Mutex<Tokens>,
    /// Open sockets and armed faults, under one lock so that a fault and a new socket never
    /// miss each other.
    control: Mutex<Control>,
    /// Genesys channels and topics.
    pub genesys: Genesys,
    /// CXone feeds and records.
    pub cxone: Cxone,
    /// Access tokens issued since start.
    pub tokens_issued: AtomicU64,
    /// Token requests per client.
    token_stats: Mutex<BTreeMap<String, ClientTokenStats>>,
    /// REST requests and 429s by route.
    rest: Mutex<(BTreeMap<String, u64>, BTreeMap<String, u64>)>,
    /// Sockets accepted since start.
    connections_total: AtomicU64,
    /// Sockets open now.
    connections_open: AtomicUsize,
    /// Source of socket ids.
    next_socket: AtomicU64,
    /// `ws` or `wss`, and the address clients use, once known.
    pub ws_base: RwLock<String>,
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
    genesys_refuse: Option<Refusal>,
    cxone_refuse: Option<(crate::fault::GrantKind, Refusal)>,
    rest_limits: Vec<RestLimit>,
    dfo_register_limit: Option<(Option<String>, Option<String>, u64)>,
}

/// One open socket as the fault API sees it.
#[derive(Debug)]
struct SocketEntry {
    key: SocketKey,
    ctl: mpsc::UnboundedSender<Ctl>,
}

/// An armed generic `rate-limit` fault.
#[derive(Debug)]
struct RateLimit {
    stream: Option<String>,
    tokens_left: u64,
    upgrades_left: u64,
    retry_after_secs: u64,
}

/// An armed `refuse-token` fault of a platform.
#[derive(Debug)]
struct Refusal {
    client: Option<String>,
    left: u64,
}

/// An armed REST `rate-limit` fault of a platform.
#[derive(Debug)]
struct RestLimit {
    platform: Platform,
    path: Option<String>,
    method: Option<String>,
    left: u64,
    secs: u64,
}

/// A socket's place in the registry; dropping it unregisters the socket.
#[derive(Debug)]
pub(crate) struct Registration {
    /// The shared state.
    pub shared: Arc<Shared>,
    /// The socket's id.
    pub id: u64,
    /// The generic stream, for its connection count.
    stream: Option<Arc<Stream>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.shared.control).sockets.remove(&self.id);
        if let Some(s) = &self.stream {
            s.connections.fetch_sub(1, Ordering::Relaxed);
        }
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
            genesys: Genesys::new(&cfg.genesys),
            cxone: Cxone::new(&cfg.cxone),
            cfg,
            streams: RwLock::default(),
            tokens: Mutex::default(),
            control: Mutex::new(Control {
                sockets: HashMap::new(),
                pong_all: PongMode::Answer,
                pong_by_stream: HashMap::new(),
                refuse_tokens: 0,
                rate_limit: None,
                genesys_refuse: None,
                cxone_refuse: None,
                rest_limits: Vec::new(),
                dfo_register_limit: None,
            }),
            tokens_issued: AtomicU64::new(0),
            token_stats: Mutex::default(),
            rest: Mutex::default(),
            connections_total: AtomicU64::new(0),
            connections_open: AtomicUsize::new(0),
            next_socket: AtomicU64::new(1),
            ws_base: RwLock::new("ws://127.0.0.1".into()),
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

    /// `ws://HOST:PORT` (or `wss://`), where sockets are reached.
    pub fn ws_base(&self) -> String {
        self.ws_base
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The generic stream called `name`, created (with its event timer) if it does not exist.
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

    /// Register a new socket on generic `stream`.
    pub fn register(
        self: &Arc<Self>,
        stream: Arc<Stream>,
    ) -> (Registration, mpsc::UnboundedReceiver<Ctl>, PongMode) {
        self.register_key(SocketKey::Generic(stream))
    }

    /// Register a new socket: its id, its order channel and the pong mode it starts with.
    /// The counters move now; the returned guard moves them back.
    pub fn register_key(
        self: &Arc<Self>,
        key: SocketKey,
    ) -> (Registration, mpsc::UnboundedReceiver<Ctl>, PongMode) {
        let id = self.next_socket.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let stream = match &key {
            SocketKey::Generic(s) => Some(s.clone()),
            _ => None,
        };
        let mut c = lock(&self.control);
        let pong = stream
            .as_ref()
            .and_then(|s| c.pong_by_stream.get(&s.name).copied())
            .unwrap_or(c.pong_all);
        c.sockets.insert(id, SocketEntry { key, ctl: tx });
        drop(c);
        if let Some(s) = &stream {
            s.connections.fetch_add(1, Ordering::Relaxed);
        }
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        let reg = Registration {
            shared: self.clone(),
            id,
            stream,
        };
        (reg, rx, pong)
    }

    /// Send `ctl` to socket `id`; whether it is registered.
    pub fn order(&self, id: u64, ctl: Ctl) -> bool {
        lock(&self.control)
            .sockets
            .get(&id)
            .is_some_and(|e| e.ctl.send(ctl).is_ok())
    }

    /// Consume one armed generic token fault, if any (rate limiting first).
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

    /// Consume one armed generic upgrade rate limit for `stream`; returns its `Retry-After`.
    pub fn take_upgrade_rate_limit(&self, stream: &str) -> Option<u64> {
        let mut c = lock(&self.control);
        let rl = c.rate_limit.as_mut()?;
        if rl.upgrades_left == 0 || rl.stream.as_deref().is_some_and(|s| s != stream) {
            return None;
        }
        rl.upgrades_left -= 1;
        Some(rl.retry_after_secs)
    }

    /// Consume one armed Genesys token refusal for `client`.
    pub fn take_genesys_refusal(&self, client: &str) -> bool {
        take_refusal(&mut lock(&self.control).genesys_refuse, client)
    }

    /// Consume one armed CXone refusal of `grant` for `client`.
    pub fn take_cxone_refusal(&self, grant: crate::fault::GrantKind, client: &str) -> bool {
        use crate::fault::GrantKind;
        let mut c = lock(&self.control);
        let Some((armed, refusal)) = c.cxone_refuse.as_mut() else {
            return false;
        };
        if *armed != GrantKind::Any && *armed != grant {
            return false;
        }
        let mut slot = Some(Refusal {
            client: refusal.client.clone(),
            left: refusal.left,
        });
        let hit = take_refusal(&mut slot, client);
        refusal.left = slot.map_or(0, |r| r.left);
        hit
    }

    /// Consume one armed REST rate limit of `platform` matching the request; its
    /// `Retry-After`. Counts the 429 under `route`.
    pub fn take_rest_limit(
        &self,
        platform: Platform,
        method: &str,
        path: &str,
        route: &str,
    ) -> Option<u64> {
        let mut c = lock(&self.control);
        let rl = c.rest_limits.iter_mut().find(|rl| {
            rl.platform == platform
                && rl.left > 0
                && rl.path.as_deref().is_none_or(|p| path.starts_with(p))
                && rl
                    .method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(method))
        })?;
        rl.left -= 1;
        let secs = rl.secs;
        drop(c);
        self.count_rate_limited(route);
        Some(secs)
    }

    /// Consume one armed DFO register limit for this stream.
    pub fn take_dfo_register_limit(&self, tenant: &str, user: &str) -> bool {
        let mut c = lock(&self.control);
        let Some((t, u, left)) = c.dfo_register_limit.as_mut() else {
            return false;
        };
        let chosen =
            t.as_deref().is_none_or(|t| t == tenant) && u.as_deref().is_none_or(|u| u == user);
        if !chosen || *left == 0 {
            return false;
        }
        *left -= 1;
        true
    }

    /// Count one REST request on `route`.
    pub fn count_rest(&self, route: &str) {
        *lock(&self.rest).0.entry(route.to_string()).or_default() += 1;
    }

    /// Count one 429 on `route`.
    pub fn count_rate_limited(&self, route: &str) {
        *lock(&self.rest).1.entry(route.to_string()).or_default() += 1;
    }

    /// Count a token grant (`refused` = false) or refusal for `client`.
    pub fn count_token(&self, platform: Platform, client: &str, grant: &str, serial: Option<u64>) {
        let mut stats = lock(&self.token_stats);
        let s = stats.entry(client.to_string()).or_default();
        s.platform = platform.name().to_string();
        match serial {
            Some(serial) => {
                *s.by_grant.entry(grant.to_string()).or_default() += 1;
                s.last_serial = serial;
                self.tokens_issued.fetch_add(1, Ordering::Relaxed);
            }
            None => s.refused += 1,
        }
    }

    /// Apply one fault (the body of `POST /faults`).
    pub fn apply(&self, fault: Fault) -> FaultReport {
        let what = serde_json::to_string(&fault.redacted()).unwrap_or_default();
        let report = match fault {
            Fault::Genesys(f) => self.apply_genesys(f),
            Fault::CxoneDfo(f) => self.apply_dfo(f),
            Fault::CxoneAah(f) => self.apply_aah(f),
            Fault::Cxone(f) => self.apply_cxone(f),
            // The original actions keep their original report: a count only.
            generic => FaultReport::armed(self.apply_generic(generic).applied),
        };
        info!(fault = %what, applied = report.applied, hit = ?report.hit, "fault injected");
        report
    }

    /// The original faults: `stream` names a generic stream; absent = every socket.
    fn apply_generic(&self, fault: Fault) -> FaultReport {
        let scope = fault.stream().map(str::to_string);
        let scope = scope.as_deref();
        let in_scope = |key: &SocketKey| match (scope, key) {
            (None, _) => true,
            (Some(s), SocketKey::Generic(st)) => s == st.name,
            (Some(_), _) => false,
        };
        let mut c = lock(&self.control);
        match fault {
            Fault::Blackhole { .. } => c.send(in_scope, &Ctl::Blackhole),
            Fault::StopPongs { .. } => c.set_pongs(scope, PongMode::Stop),
            Fault::DelayPongs { delay_ms, .. } => {
                c.set_pongs(scope, PongMode::Delay(Duration::from_millis(delay_ms)))
            }
            Fault::Heal { .. } => {
                match scope {
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
                c.send(in_scope, &Ctl::Heal)
            }
            Fault::Reset { .. } => c.send(in_scope, &Ctl::Reset),
            Fault::Close { code, reason, .. } => c.send(in_scope, &Ctl::Close(code, reason)),
            Fault::RefuseToken { count, .. } => {
                c.refuse_tokens = count;
                FaultReport::armed(count)
            }
            Fault::RateLimit {
                count,
                retry_after_secs,
                ..
            } => {
                c.rate_limit = Some(RateLimit {
                    stream: scope.map(str::to_string),
                    tokens_left: count,
                    upgrades_left: count,
                    retry_after_secs,
                });
                FaultReport::armed(count)
            }
            Fault::SendGarbage { kind, bytes, .. } => {
                c.send(in_scope, &Ctl::Send(kind.frame(bytes)))
            }
            Fault::Genesys(_) | Fault::CxoneDfo(_) | Fault::CxoneAah(_) | Fault::Cxone(_) => {
                FaultReport::default()
            }
        }
    }

    fn apply_genesys(&self, f: GenesysFault) -> FaultReport {
        let pick = |channel: &Option<String>, client: &Option<String>| {
            let (channel, client) = (channel.clone(), client.clone());
            move |key: &SocketKey| match key {
                SocketKey::Genesys {
                    channel: ch,
                    client: cl,
                } => {
                    channel.as_deref().is_none_or(|c| c == ch)
                        && client.as_deref().is_none_or(|c| c == cl)
                }
                _ => false,
            }
        };
        if let Some(((channel, client), act)) = f.socket() {
            return lock(&self.control).act(pick(&channel, &client), act);
        }
        match f {
            GenesysFault::SocketClosing {
                channel,
                client,
                close_after_ms,
                code,
            } => {
                let order = Order::SocketClosing {
                    close_after: Duration::from_millis(close_after_ms.unwrap_or(60_000)),
                    code: code.unwrap_or(1001),
                };
                lock(&self.control).send(pick(&channel, &client), &Ctl::Order(order))
            }
            GenesysFault::ExpireChannel { channel, client } => {
                let ids = self
                    .genesys
                    .expire(self, channel.as_deref(), client.as_deref());
                FaultReport::hit(ids.iter().map(|id| format!("channel:{id}")).collect())
            }
            GenesysFault::ExpireToken { client, token } => {
                self.expire_tokens(Platform::Genesys, client, token, false)
            }
            GenesysFault::RevokeToken { client, token } => {
                self.expire_tokens(Platform::Genesys, client, token, true)
            }
            GenesysFault::RefuseToken { client, count } => {
                lock(&self.control).genesys_refuse = Some(Refusal {
                    client,
                    left: count,
                });
                FaultReport::armed(count)
            }
            GenesysFault::RateLimit {
                path,
                method,
                count,
                retry_after_secs,
            } => self.arm_rest_limit(Platform::Genesys, path, method, count, retry_after_secs),
            _ => FaultReport::default(),
        }
    }

    fn apply_dfo(&self, f: DfoFault) -> FaultReport {
        let pick = |tenant: &Option<String>, user: &Option<String>| {
            let (tenant, user) = (tenant.clone(), user.clone());
            move |key: &SocketKey| match key {
                SocketKey::Dfo { tenant: t, user: u } => {
                    tenant.as_deref().is_none_or(|x| x == t)
                        && user.as_deref().is_none_or(|x| x == u)
                }
                _ => false,
            }
        };
        if let Some(((tenant, user), act)) = f.socket() {
            return lock(&self.control).act(pick(&tenant, &user), act);
        }
        match f {
            DfoFault::RateLimitExceeded {
                tenant_id,
                user_id,
                count,
                close,
            } => {
                let mut c = lock(&self.control);
                c.dfo_register_limit = Some((tenant_id.clone(), user_id.clone(), count));
                c.send(
                    pick(&tenant_id, &user_id),
                    &Ctl::Order(Order::RateLimitExceeded { close }),
                )
                .plus_armed(count)
            }
            _ => FaultReport::default(),
        }
    }

    fn apply_aah(&self, f: AahFault) -> FaultReport {
        let Some(((socket, topic), act)) = f.socket() else {
            return FaultReport::default();
        };
        let subscribed: Option<Vec<u64>> = topic.as_deref().map(|t| {
            self.cxone
                .aah_feeds
                .get(t)
                .map(|t| t.receivers())
                .unwrap_or_default()
        });
        let c = lock(&self.control);
        let ids: Vec<u64> = c
            .sockets
            .iter()
            .filter(|(id, e)| {
                matches!(e.key, SocketKey::Aah)
                    && socket.is_none_or(|s| s == **id)
                    && subscribed.as_ref().is_none_or(|ids| ids.contains(id))
            })
            .map(|(id, _)| *id)
            .collect();
        c.act_ids(&ids, act)
    }

    fn apply_cxone(&self, f: CxoneFault) -> FaultReport {
        match f {
            CxoneFault::ExpireToken { client, token } => {
                self.expire_tokens(Platform::Cxone, client, token, false)
            }
            CxoneFault::RevokeToken { client, token } => {
                self.expire_tokens(Platform::Cxone, client, token, true)
            }
            CxoneFault::RefuseToken {
                client,
                grant,
                count,
            } => {
                lock(&self.control).cxone_refuse = Some((
                    grant,
                    Refusal {
                        client,
                        left: count,
                    },
                ));
                FaultReport::armed(count)
            }
            CxoneFault::RateLimit {
                path,
                method,
                count,
                retry_after_secs,
            } => self.arm_rest_limit(Platform::Cxone, path, method, count, retry_after_secs),
        }
    }

    /// Expire (or revoke) tokens, then let the platforms notice.
    fn expire_tokens(
        &self,
        platform: Platform,
        client: Option<String>,
        token: Option<String>,
        revoke: bool,
    ) -> FaultReport {
        let sel = TokenSelector {
            platform: Some(platform),
            client,
            token,
        };
        let serials = lock(&self.tokens).expire(&sel, revoke);
        match platform {
            Platform::Genesys => self.genesys.sweep(self),
            Platform::Cxone => {
                let is_dfo = |k: &SocketKey| matches!(k, SocketKey::Dfo { .. });
                lock(&self.control).send(is_dfo, &Ctl::Order(Order::TokensChanged));
            }
            Platform::Generic => {}
        }
        FaultReport::hit(serials.iter().map(|s| format!("token#{s}")).collect())
    }

    fn arm_rest_limit(
        &self,
        platform: Platform,
        path: Option<String>,
        method: Option<String>,
        count: u64,
        secs: u64,
    ) -> FaultReport {
        let mut c = lock(&self.control);
        c.rest_limits.retain(|rl| rl.platform != platform);
        c.rest_limits.push(RestLimit {
            platform,
            path,
            method,
            left: count,
            secs,
        });
        FaultReport::armed(count)
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
        let (rest, rate_limited) = lock(&self.rest).clone();
        let dfo_sockets = {
            let c = lock(&self.control);
            let mut by_stream = BTreeMap::new();
            for e in c.sockets.values() {
                if let SocketKey::Dfo { tenant, user } = &e.key {
                    *by_stream.entry(format!("{tenant}/{user}")).or_default() += 1;
                }
            }
            by_stream
        };
        Stats {
            streams,
            tokens_issued: self.tokens_issued.load(Ordering::Relaxed),
            connections_total: self.connections_total.load(Ordering::Relaxed),
            connections_open: self.connections_open.load(Ordering::Relaxed),
            tokens: lock(&self.token_stats).clone(),
            rest,
            rate_limited,
            genesys: self.genesys.stats(self),
            dfo: self.cxone.dfo_stats(dfo_sockets),
            aah: self.cxone.aah_stats(),
        }
    }
}

/// Consume one refusal of `slot` if it applies to `client`.
fn take_refusal(slot: &mut Option<Refusal>, client: &str) -> bool {
    let Some(r) = slot.as_mut() else {
        return false;
    };
    if r.left == 0 || r.client.as_deref().is_some_and(|c| c != client) {
        return false;
    }
    r.left -= 1;
    true
}

impl Control {
    /// Send `ctl` to every socket `pick` chooses; the report names those that got it.
    fn send(&self, pick: impl Fn(&SocketKey) -> bool, ctl: &Ctl) -> FaultReport {
        let mut hit: Vec<String> = self
            .sockets
            .iter()
            .filter(|(_, e)| pick(&e.key) && e.ctl.send(ctl.clone()).is_ok())
            .map(|(id, e)| e.key.name(*id))
            .collect();
        hit.sort();
        FaultReport::hit(hit)
    }

    /// Do `act` to every socket `pick` chooses (pong faults act on those sockets only).
    fn act(&self, pick: impl Fn(&SocketKey) -> bool, act: SocketAct) -> FaultReport {
        self.send(pick, &act_ctl(act))
    }

    /// Do `act` to the sockets `ids`.
    fn act_ids(&self, ids: &[u64], act: SocketAct) -> FaultReport {
        let ctl = act_ctl(act);
        let hit = ids
            .iter()
            .filter_map(|id| self.sockets.get(id).map(|e| (id, e)))
            .filter(|(_, e)| e.ctl.send(ctl.clone()).is_ok())
            .map(|(id, e)| e.key.name(*id))
            .collect();
        FaultReport::hit(hit)
    }

    /// Make `mode` the pong behaviour of `scope` (sticky) and of its open sockets.
    fn set_pongs(&mut self, scope: Option<&str>, mode: PongMode) -> FaultReport {
        match scope {
            None => {
                self.pong_all = mode;
                self.pong_by_stream.clear();
            }
            Some(s) => {
                self.pong_by_stream.insert(s.to_string(), mode);
            }
        }
        self.send(
            |key| match (scope, key) {
                (None, _) => true,
                (Some(s), SocketKey::Generic(st)) => s == st.name,
                (Some(_), _) => false,
            },
            &Ctl::Pongs(mode),
        )
    }
}

/// The socket order for a platform socket fault.
fn act_ctl(act: SocketAct) -> Ctl {
    match act {
        SocketAct::Reset => Ctl::Reset,
        SocketAct::Blackhole => Ctl::Blackhole,
        SocketAct::Heal => Ctl::Heal,
        SocketAct::StopPongs => Ctl::Pongs(PongMode::Stop),
        SocketAct::DelayPongs(ms) => Ctl::Pongs(PongMode::Delay(Duration::from_millis(ms))),
        SocketAct::Close(code, reason) => Ctl::Close(code, reason),
        SocketAct::Garbage(kind, bytes) => Ctl::Send(kind.frame(bytes)),
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

    #[tokio::test]
    async fn platform_socket_faults_hit_only_their_platform_and_selection() {
        let s = shared();
        let key = |ch: &str, cl: &str| SocketKey::Genesys {
            channel: ch.into(),
            client: cl.into(),
        };
        let (a, _ra, _) = s.register_key(key("c1", "x"));
        let (_b, _rb, _) = s.register_key(key("c2", "y"));
        let (_g, _rg, _) = s.register(s.stream("g"));
        let (_d, _rd, _) = s.register_key(SocketKey::Dfo {
            tenant: "t".into(),
            user: "u".into(),
        });
        let reset = |channel: Option<&str>, client: Option<&str>| {
            Fault::Genesys(GenesysFault::Reset {
                channel: channel.map(str::to_string),
                client: client.map(str::to_string),
            })
        };
        assert_eq!(s.apply(reset(None, None)).applied, 2);
        assert_eq!(
            s.apply(reset(Some("c1"), None)).hit,
            [format!("genesys:c1#{}", a.id)],
            "a report names what it hit"
        );
        assert_eq!(s.apply(reset(None, Some("y"))).applied, 1);
        assert_eq!(s.apply(reset(Some("c1"), Some("y"))).applied, 0);
        let dfo = Fault::CxoneDfo(DfoFault::Blackhole {
            tenant_id: Some("t".into()),
            user_id: None,
        });
        assert_eq!(s.apply(dfo).applied, 1);
        let all = s.apply(Fault::Reset { stream: None });
        assert_eq!((all.applied, all.hit.len()), (4, 0), "all, counted only");
        assert_eq!(
            s.apply(Fault::Reset {
                stream: Some("g".into())
            })
            .applied,
            1
        );
    }

    #[tokio::test]
    async fn rest_limits_match_platform_path_and_method_and_are_counted() {
        let s = shared();
        s.apply(Fault::Genesys(GenesysFault::RateLimit {
            path: Some("/api/v2/notifications".into()),
            method: Some("put".into()),
            count: 1,
            retry_after_secs: 9,
        }));
        let route = "PUT /api/v2/notifications/channels/{id}/subscriptions";
        let path = "/api/v2/notifications/channels/x/subscriptions";
        assert_eq!(s.take_rest_limit(Platform::Cxone, "PUT", path, route), None);
        assert_eq!(
            s.take_rest_limit(Platform::Genesys, "GET", path, route),
            None
        );
        assert_eq!(
            s.take_rest_limit(Platform::Genesys, "PUT", "/oauth/token", route),
            None
        );
        assert_eq!(
            s.take_rest_limit(Platform::Genesys, "PUT", path, route),
            Some(9)
        );
        assert_eq!(
            s.take_rest_limit(Platform::Genesys, "PUT", path, route),
            None
        );
        assert_eq!(s.stats().rate_limited[route], 1);
    }
}
