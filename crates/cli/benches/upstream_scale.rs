//! Scale benchmark of the upstream liveness path (issue 2, "Measure"): N idle WebSocket
//! connections to the emulator, each driven the way the session drives one (`Upstream::next`,
//! pongs into `Liveness::on_pong`, a TCP reset on DEAD), measured for heap and RSS per
//! connection, CPU for their heartbeats, and how late each DEAD is when every peer goes
//! half-open at once.
//!
//! ```text
//! cargo bench -p streamkeeper --features heap-stats --bench upstream_scale
//! SK_BENCH_CONNS=2000 SK_BENCH_INTERVAL=1s SK_BENCH_TIMEOUT=3s SK_BENCH_CPU_WINDOW=10s \
//!     cargo bench -p streamkeeper --features heap-stats --bench upstream_scale
//! ```
//!
//! Parameters (environment): `SK_BENCH_CONNS` (10000), `SK_BENCH_INTERVAL` (15s),
//! `SK_BENCH_TIMEOUT` (35s), `SK_BENCH_CPU_WINDOW` (60s), `SK_BENCH_COMPARE=1` to also measure
//! tokio-tungstenite 0.30 on the same emulator. Two knobs for experiments only:
//! `SK_BENCH_WORKERS` (2) and `SK_BENCH_PHASE_GRID` (unset: first pings as the session places
//! them, spread over one interval on the 100 ms ping grid of `liveness::ping_phase`; e.g.
//! `1s`: another grid step, to see what the step costs in detection latency).
//!
//! The emulator runs as a child process: the client and server sockets of 10,000 connections
//! do not fit one process's 20,000 files. The sidecar's counting allocator (feature
//! `heap-stats`) gives live heap bytes, and a census of live allocations by exact size shows
//! where each connection's bytes go.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpListener},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use streamkeeper_api::{ConnectionId, StreamSpec};
use streamkeeper_sidecar::{
    liveness::{self, HeartbeatPolicy, Liveness},
    platforms::{
        Connection, Inbound, SocketPlan,
        generic::{Generic, GenericSocket},
    },
    upstream::{self, Tick, Upstream},
    ws::{ConnectOptions, Frame, ProxyMode, WsClient},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::{Notify, Semaphore},
    time::Instant,
};
use tokio_tungstenite::tungstenite::{
    Message, client::IntoClientRequest as _, http::HeaderValue, protocol::WebSocketConfig,
};
use url::Url;

/// The emulator stream every connection attaches to.
const STREAM: &str = "bench";
/// Connections opened at once.
const CONNECT_CONCURRENCY: usize = 200;
/// Warm-up connections (a few, so both workers have touched their per-thread buffers).
const WARMUP_CONNS: usize = 4;
/// Bare sockets and tasks opened to size tokio's own per-socket and per-task allocations.
const CALIBRATION_COUNT: usize = 200;
/// The machine has two cores.
const DEFAULT_WORKERS: usize = 2;

// --- Heap accounting -------------------------------------------------------------------------

// The sidecar's own counting allocator (feature `heap-stats`), which its /debug/heap serves,
// over the system allocator: this bench counts bytes and allocations, not an allocator's pages.
#[global_allocator]
static ALLOC: heap::Counting = heap::Counting(std::alloc::System);

mod heap {
    pub use streamkeeper_sidecar::heap::{Counting, TRACKED, live_bytes, read_by_size};

    /// Live allocations by exact size, read into a buffer allocated up front, so that taking
    /// a census does not change what it counts.
    pub struct Census(Box<[isize; TRACKED + 1]>);

    impl Census {
        /// An empty census (allocates its buffer now).
        pub fn new() -> Self {
            Self(Box::new([0; TRACKED + 1]))
        }

        /// Reads the live counts.
        pub fn take(&mut self) {
            read_by_size(&mut self.0);
        }

        /// Size classes whose live count changed since `before`, as (size, change), the
        /// largest total change in bytes first. The last slot holds every size above
        /// [`TRACKED`].
        pub fn growth(&self, before: &Census) -> Vec<(usize, isize)> {
            let mut grown: Vec<(usize, isize)> = self
                .0
                .iter()
                .zip(before.0.iter())
                .enumerate()
                .filter(|(_, (after, before))| after != before)
                .map(|(size, (after, before))| (size, after - before))
                .collect();
            grown.sort_by_key(|&(size, change)| {
                std::cmp::Reverse((size as isize).saturating_mul(change).abs())
            });
            grown
        }
    }
}

// --- /proc readings --------------------------------------------------------------------------

mod procfs {
    use super::*;

    pub use streamkeeper_testkit::procfs::cpu_time;

    /// Resident set size of this process.
    pub fn rss_bytes() -> u64 {
        streamkeeper_testkit::procfs::status_bytes("self", "VmRSS")
    }

    /// CPU time of this process's live threads, to the nanosecond
    /// (`/proc/self/task/*/schedstat`).
    pub fn thread_cpu_time() -> Duration {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return Duration::ZERO;
        };
        let nanos = tasks
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        Duration::from_nanos(nanos)
    }

    /// Open file descriptors of this process.
    pub fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
    }
}

// --- The emulator, as a child process --------------------------------------------------------

/// `streamkeeper emulate` in a child process; killed when dropped.
struct EmulatorProcess {
    child: Child,
    addr: SocketAddr,
}

impl EmulatorProcess {
    fn start() -> anyhow::Result<Self> {
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_streamkeeper"))
            .args(["emulate", "--listen", &addr.to_string(), "--stream", STREAM])
            .args(["--event-interval", "0s", "--token-ttl", "24h"])
            .env("STREAMKEEPER_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting `streamkeeper emulate`")?;
        let stderr = child.stderr.take().context("the emulator's stderr")?;
        let emulator = Self { child, addr };
        let (ready_tx, ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut ready_tx = Some(ready_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                } else {
                    eprintln!("[emulator] {line}");
                }
            }
        });
        ready
            .recv_timeout(Duration::from_secs(15))
            .context("the emulator did not report that it listens within 15 s")?;
        Ok(emulator)
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for EmulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns the status and the body.
async fn http(
    addr: SocketAddr,
    method_path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await?;
        let mut req = format!(
            "{method_path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            let _ = write!(req, "{name}: {value}\r\n");
        }
        req.push_str("\r\n");
        req.push_str(body);
        tcp.write_all(req.as_bytes()).await?;
        let mut resp = Vec::new();
        tcp.read_to_end(&mut resp).await?;
        anyhow::Ok(resp)
    };
    let resp = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .with_context(|| format!("{method_path}: no answer within 30 s"))??;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{method_path}: no HTTP response head"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{method_path}: no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// A bearer token from the emulator's client-credentials endpoint.
async fn fetch_token(addr: SocketAddr) -> anyhow::Result<String> {
    let basic =
        base64::engine::general_purpose::STANDARD.encode("streamkeeper:streamkeeper-secret");
    let auth = format!("Basic {basic}");
    let (status, body) = http(
        addr,
        "POST /oauth/token",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        "grant_type=client_credentials",
    )
    .await?;
    ensure!(status == 200, "token endpoint answered {status}: {body}");
    let json: serde_json::Value = serde_json::from_str(&body)?;
    json["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("no access_token in the token response")
}

/// `POST /faults`; returns how many sockets it applied to.
async fn inject(addr: SocketAddr, fault: &str) -> anyhow::Result<u64> {
    let (status, body) = http(
        addr,
        "POST /faults",
        &[("Content-Type", "application/json")],
        fault,
    )
    .await?;
    ensure!(status == 200, "fault {fault} answered {status}: {body}");
    let json: serde_json::Value = serde_json::from_str(&body)?;
    Ok(json["applied"].as_u64().unwrap_or(0))
}

/// Pings the emulator counted on the bench stream (`GET /stats`).
async fn emulator_pings(addr: SocketAddr) -> anyhow::Result<u64> {
    let (status, body) = http(addr, "GET /stats", &[], "").await?;
    ensure!(status == 200, "GET /stats answered {status}");
    let json: serde_json::Value = serde_json::from_str(&body)?;
    Ok(json["streams"][STREAM]["pings"].as_u64().unwrap_or(0))
}

// --- Parameters ------------------------------------------------------------------------------

struct Params {
    conns: usize,
    interval: Duration,
    timeout: Duration,
    cpu_window: Duration,
    compare: bool,
    workers: usize,
    phase_grid: Option<Duration>,
}

impl Params {
    fn from_env() -> anyhow::Result<Self> {
        fn duration(var: &str, default: &str) -> anyhow::Result<Duration> {
            let raw = std::env::var(var).unwrap_or_else(|_| default.to_owned());
            streamkeeper_api::duration::parse(&raw).map_err(|e| anyhow::anyhow!("{var}: {e}"))
        }
        let conns = match std::env::var("SK_BENCH_CONNS") {
            Ok(raw) => raw
                .parse()
                .with_context(|| format!("SK_BENCH_CONNS: {raw:?} is not a count"))?,
            Err(_) => 10_000,
        };
        let params = Self {
            conns,
            interval: duration("SK_BENCH_INTERVAL", "15s")?,
            timeout: duration("SK_BENCH_TIMEOUT", "35s")?,
            cpu_window: duration("SK_BENCH_CPU_WINDOW", "60s")?,
            compare: std::env::var("SK_BENCH_COMPARE").is_ok_and(|v| v == "1"),
            workers: match std::env::var("SK_BENCH_WORKERS") {
                Ok(raw) => raw
                    .parse()
                    .with_context(|| format!("SK_BENCH_WORKERS: {raw:?} is not a count"))?,
                Err(_) => DEFAULT_WORKERS,
            },
            phase_grid: match std::env::var("SK_BENCH_PHASE_GRID") {
                Ok(raw) => Some(
                    streamkeeper_api::duration::parse(&raw)
                        .map_err(|e| anyhow::anyhow!("SK_BENCH_PHASE_GRID: {e}"))?,
                ),
                Err(_) => None,
            },
        };
        ensure!(params.workers > 0, "SK_BENCH_WORKERS must be at least 1");
        ensure!(
            params.phase_grid.is_none_or(|g| !g.is_zero()),
            "SK_BENCH_PHASE_GRID must be positive"
        );
        ensure!(params.conns > 0, "SK_BENCH_CONNS must be at least 1");
        ensure!(
            !params.interval.is_zero() && params.timeout > params.interval,
            "SK_BENCH_TIMEOUT must be longer than SK_BENCH_INTERVAL"
        );
        Ok(params)
    }
}

// --- The connections -------------------------------------------------------------------------

/// What every connection needs to open and drive its socket.
struct Plan {
    /// Where every socket goes, as the dialect plans it (the session's plan per socket).
    socket: SocketPlan,
    opts: ConnectOptions,
    policy: HeartbeatPolicy,
    /// With `SK_BENCH_PHASE_GRID`: the grid's origin and step.
    grid: Option<(Instant, Duration)>,
    /// The product's ping-grid origin (process-wide, like the session's).
    origin: Instant,
}

impl Plan {
    fn new(addr: SocketAddr, token: &str, params: &Params) -> anyhow::Result<Self> {
        let url: Url = format!("ws://{addr}/streams/{STREAM}").parse()?;
        let mut spec: StreamSpec = serde_json::from_value(serde_json::json!({
            "id": "bench/upstream-scale",
            "tenant": "bench",
            "platform": "generic",
            "endpoints": {"stream": url.as_str()},
            "credentials": {"dir": "/nonexistent"},
        }))?;
        spec.heartbeat.interval = params.interval;
        spec.heartbeat.timeout = params.timeout;
        let adapter = Generic::new(&spec).map_err(|e| anyhow::anyhow!(e))?;
        let mut opts = std::sync::Arc::unwrap_or_clone(upstream::connect_options(&spec, None));
        // Loopback: never through a proxy the environment may name.
        opts.proxy = ProxyMode::Direct;
        Ok(Self {
            socket: adapter.plan(token, None),
            opts,
            policy: HeartbeatPolicy::from(spec.heartbeat),
            grid: params.phase_grid.map(|step| (Instant::now(), step)),
            origin: Instant::now(),
        })
    }

    /// When connection `i` of `n`, connected now, sends its first ping: as the session places
    /// it (spread evenly over one interval, on the product's ping grid), or, with an
    /// experimental grid, on that grid's slot at or below the spread.
    fn first_ping_after(&self, i: usize, n: usize) -> Duration {
        let interval = self.policy.interval;
        let spread = interval.mul_f64(i as f64 / n as f64);
        let Some((origin, step)) = self.grid else {
            // The product's own choice: spread over the interval, on the 100 ms grid.
            return liveness::ping_phase(
                self.origin,
                Instant::now(),
                interval,
                i as f64 / n as f64,
            );
        };
        let slot = u64::try_from(spread.as_nanos() / step.as_nanos() * step.as_nanos())
            .unwrap_or(u64::MAX);
        let since_origin = Instant::now().saturating_duration_since(origin);
        let mut at = Duration::from_nanos(slot);
        while at < since_origin {
            at += interval;
        }
        at - since_origin
    }
}

/// How connections ended.
#[derive(Default)]
struct Outcomes {
    /// `late_by` of every DEAD, as `Upstream` reported it.
    late: Vec<Duration>,
    /// The largest `now - liveness.deadline()` the task itself saw after DEAD (cross-check).
    observed_late_max: Duration,
    /// Ends other than DEAD, with a few of their messages.
    other: usize,
    other_samples: Vec<String>,
}

/// Progress of every connection, shared by their tasks.
#[derive(Default)]
struct Counters {
    connected: AtomicUsize,
    connect_failed: AtomicUsize,
    /// Connections that received their first pong.
    answered: AtomicUsize,
    pings: AtomicU64,
    pongs: AtomicU64,
    degraded: AtomicU64,
    ended: AtomicUsize,
    outcomes: Mutex<Outcomes>,
    changed: Notify,
}

impl Counters {
    fn outcomes(&self) -> std::sync::MutexGuard<'_, Outcomes> {
        self.outcomes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn note_other(&self, why: String) {
        let mut out = self.outcomes();
        out.other += 1;
        if out.other_samples.len() < 5 {
            out.other_samples.push(why);
        }
    }

    fn first_pong(&self) {
        self.answered.fetch_add(1, Relaxed);
        self.changed.notify_waiters();
    }

    fn end(&self, dead: Option<(Duration, Duration)>, other: Option<String>) {
        if let Some((late_by, observed)) = dead {
            let mut out = self.outcomes();
            out.late.push(late_by);
            out.observed_late_max = out.observed_late_max.max(observed);
        }
        if let Some(why) = other {
            self.note_other(why);
        }
        self.ended.fetch_add(1, Relaxed);
        self.changed.notify_waiters();
    }

    /// Waits until `done` holds, at most `limit`; returns whether it holds.
    async fn wait_until(&self, limit: Duration, done: impl Fn(&Self) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return done(self);
            }
        }
    }
}

/// One connection's task: the session's loop around `Upstream::next`, without the app side.
///
/// An `async` block, not an `async fn`: an `async fn` keeps its by-value arguments in the
/// future twice (as arguments, then as locals; rust-lang/rust#62958), which would add the
/// 344 B `Upstream` again to every task. The session's own `drive` borrows its `Upstream`.
#[allow(clippy::manual_async_fn, reason = "an async fn would store `up` twice")]
fn drive(
    mut up: Upstream,
    mut conn: Box<dyn Connection>,
    counters: Arc<Counters>,
) -> impl Future<Output = ()> + Send {
    async move {
        let mut answered = false;
        loop {
            let tick = up.next(|seq| conn.ping(seq, ""), None).await;
            let now = Instant::now();
            match tick {
                Ok(Tick::Frame(Frame::Pong(payload))) => {
                    if let Inbound::Pong { seq } = conn.classify_pong(&payload) {
                        up.liveness_mut().on_pong(now, seq);
                    }
                    counters.pongs.fetch_add(1, Relaxed);
                    if !answered {
                        answered = true;
                        counters.first_pong();
                    }
                }
                Ok(Tick::Frame(Frame::Close(close))) => {
                    up.into_ws().reset();
                    counters.end(None, Some(format!("server close {close:?}")));
                    return;
                }
                // Data and server pings: already counted as liveness by `next`.
                // No deadline of its own is given to `next`.
                Ok(Tick::Frame(_) | Tick::Due) => {}
                Ok(Tick::Pinged) => {
                    counters.pings.fetch_add(1, Relaxed);
                }
                Ok(Tick::Degraded) => {
                    counters.degraded.fetch_add(1, Relaxed);
                }
                Ok(Tick::Dead { late_by, .. }) => {
                    let observed = now.saturating_duration_since(up.liveness().deadline());
                    up.into_ws().reset();
                    counters.end(Some((late_by, observed)), None);
                    return;
                }
                Err(err) => {
                    up.into_ws().reset();
                    counters.end(None, Some(format!("socket error: {err}")));
                    return;
                }
            }
        }
    }
}

/// Size of one connection's task future, recorded at the first spawn.
static DRIVE_FUTURE_SIZE: AtomicUsize = AtomicUsize::new(0);

/// Opens `n` connections, `CONNECT_CONCURRENCY` at a time, each driven by its own task.
/// Returns once every connect attempt finished.
async fn open_all(plan: &Arc<Plan>, counters: &Arc<Counters>, n: usize) -> anyhow::Result<()> {
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    for i in 0..n {
        let permit = Arc::clone(&gate).acquire_owned().await?;
        let plan = Arc::clone(plan);
        let counters = Arc::clone(counters);
        tokio::spawn(async move {
            let result =
                WsClient::connect(&plan.socket.url, &plan.socket.headers, &plan.opts).await;
            drop(permit);
            match result {
                Ok(ws) => {
                    let phase = plan.first_ping_after(i, n);
                    let up = Upstream::new(ws, plan.policy, phase);
                    let conn = Box::new(GenericSocket);
                    let task = drive(up, conn, Arc::clone(&counters));
                    DRIVE_FUTURE_SIZE.store(size_of_val(&task), Relaxed);
                    tokio::spawn(task);
                    counters.connected.fetch_add(1, Relaxed);
                }
                Err(err) => {
                    counters.connect_failed.fetch_add(1, Relaxed);
                    counters.note_other(format!("connect failed: {err}"));
                }
            }
            counters.changed.notify_waiters();
        });
    }
    let limit = Duration::from_secs(60) + Duration::from_millis(n as u64 * 5);
    let all = counters
        .wait_until(limit, |c| {
            c.connected.load(Relaxed) + c.connect_failed.load(Relaxed) >= n
        })
        .await;
    ensure!(all, "connect attempts still running after {limit:?}");
    Ok(())
}

/// Connects, waits for one pong, and resets: warms the runtime, the per-thread read buffers
/// and the emulator without leaving anything behind. Returns the size of `Upstream::next`'s
/// future.
async fn warm_up(plan: Arc<Plan>) -> anyhow::Result<usize> {
    let ws = WsClient::connect(&plan.socket.url, &plan.socket.headers, &plan.opts).await?;
    let mut up = Upstream::new(ws, plan.policy, Duration::ZERO);
    let mut conn = GenericSocket;
    let next_size = size_of_val(&up.next(|seq| conn.ping(seq, ""), None));
    let answered = tokio::time::timeout(plan.policy.timeout, async {
        loop {
            match up.next(|seq| conn.ping(seq, ""), None).await {
                Ok(Tick::Frame(Frame::Pong(payload))) => {
                    if let Inbound::Pong { seq } = conn.classify_pong(&payload) {
                        up.liveness_mut().on_pong(Instant::now(), seq);
                    }
                    return Ok(());
                }
                Ok(Tick::Dead { .. }) => bail!("warm-up connection declared dead"),
                Ok(_) => {}
                Err(err) => return Err(err.into()),
            }
        }
    })
    .await;
    up.into_ws().reset();
    answered.context("no pong on the warm-up connection")??;
    Ok(next_size)
}

// --- Calibration: tokio's own per-socket and per-task heap -----------------------------------

/// Heap per bare tokio `TcpStream` and per spawned task with a future of known size, from a
/// census of `CALIBRATION_COUNT` of each.
struct Calibration {
    /// Live heap per connected tokio `TcpStream` (its I/O driver registration).
    tcp_stream_bytes: f64,
    /// The size class of that registration.
    tcp_stream_class: Option<usize>,
    /// Size of the probe task's future.
    probe_future: usize,
    /// The size class of the probe task's allocation.
    probe_task_class: Option<usize>,
}

/// The size class (largest total growth first) whose count grew by about `count`.
fn class_of(growth: &[(usize, isize)], count: usize) -> Option<usize> {
    let near = |c: isize| c.unsigned_abs().abs_diff(count) <= count / 20;
    growth
        .iter()
        .find(|&&(_, c)| c > 0 && near(c))
        .map(|&(size, _)| size)
}

async fn calibrate(addr: SocketAddr) -> anyhow::Result<Calibration> {
    let mut before = heap::Census::new();
    let mut after = heap::Census::new();
    let mut streams = Vec::with_capacity(CALIBRATION_COUNT);
    before.take();
    let heap_before = heap::live_bytes();
    for _ in 0..CALIBRATION_COUNT {
        streams.push(TcpStream::connect(addr).await?);
    }
    let tcp_stream_bytes =
        (heap::live_bytes() as f64 - heap_before as f64) / CALIBRATION_COUNT as f64;
    after.take();
    let tcp_stream_class = class_of(&after.growth(&before), CALIBRATION_COUNT);
    drop(streams);

    let probe = || async {
        let ballast = [7u8; 512];
        std::future::pending::<()>().await;
        std::hint::black_box(&ballast);
    };
    let probe_future = size_of_val(&probe());
    let mut handles = Vec::with_capacity(CALIBRATION_COUNT);
    before.take();
    for _ in 0..CALIBRATION_COUNT {
        handles.push(tokio::spawn(probe()));
    }
    after.take();
    let probe_task_class = class_of(&after.growth(&before), CALIBRATION_COUNT);
    for handle in handles {
        handle.abort();
        let _ = handle.await;
    }
    Ok(Calibration {
        tcp_stream_bytes,
        tcp_stream_class,
        probe_future,
        probe_task_class,
    })
}

// --- The run ---------------------------------------------------------------------------------

/// Everything measured, for the report.
#[derive(Default)]
struct Report {
    // Memory.
    base_heap: usize,
    base_rss: u64,
    base_fds: usize,
    connected: usize,
    connect_failed: usize,
    connect_secs: f64,
    all_answered: bool,
    answered: usize,
    heap_per_conn: f64,
    rss_per_conn: f64,
    growth: Vec<(usize, isize)>,
    drive_future: usize,
    next_future: usize,
    calibration: Option<Calibration>,
    // CPU.
    cpu_pct_stat: f64,
    cpu_pct_sched: f64,
    emulator_cpu_pct: f64,
    pings: u64,
    pongs: u64,
    emulator_pings: u64,
    expected_pings: f64,
    degraded_total: u64,
    // Detection.
    false_dead_before_fault: usize,
    blackholed: u64,
    dead: usize,
    not_dead: usize,
    other_samples: Vec<String>,
    late_p50: Duration,
    late_p99: Duration,
    late_max: Duration,
    observed_late_max: Duration,
    last_dead_after_fault: Duration,
    all_ended: bool,
    fds_after: usize,
    heap_after: usize,
    rss_after: u64,
    // Comparison.
    tungstenite: Option<Compared>,
}

/// tokio-tungstenite on the same emulator.
struct Compared {
    connected: usize,
    answered: usize,
    heap_per_conn: f64,
    growth: Vec<(usize, isize)>,
}

async fn run(
    params: &Params,
    emulator: &EmulatorProcess,
    report: &mut Report,
) -> anyhow::Result<()> {
    let addr = emulator.addr;
    let n = params.conns;
    let token = fetch_token(addr).await?;
    let plan = Arc::new(Plan::new(addr, &token, params)?);
    let mut warm = Vec::new();
    for _ in 0..WARMUP_CONNS {
        warm.push(tokio::spawn(warm_up(Arc::clone(&plan))));
    }
    for w in warm {
        report.next_future = w.await??;
    }
    report.calibration = Some(calibrate(addr).await?);

    // Everything allocated for the later phases is allocated before the baseline.
    let counters = Arc::new(Counters::default());
    counters.outcomes().late.reserve_exact(n);
    let mut census_before = heap::Census::new();
    let mut census_after = heap::Census::new();

    // Phase 1: memory.
    census_before.take();
    report.base_heap = heap::live_bytes();
    report.base_rss = procfs::rss_bytes();
    report.base_fds = procfs::open_fds();
    let started = Instant::now();
    open_all(&plan, &counters, n).await?;
    report.connect_secs = started.elapsed().as_secs_f64();
    report.connected = counters.connected.load(Relaxed);
    report.connect_failed = counters.connect_failed.load(Relaxed);
    ensure!(report.connected > 0, "no connection could be opened");
    // Every connection pings within one interval of its start: wait for each one's pong.
    let connected = report.connected;
    report.all_answered = counters
        .wait_until(params.interval + params.timeout, |c| {
            c.answered.load(Relaxed) >= connected
        })
        .await;
    report.answered = counters.answered.load(Relaxed);
    let heap_now = heap::live_bytes();
    let rss_now = procfs::rss_bytes();
    census_after.take();
    report.heap_per_conn = (heap_now as f64 - report.base_heap as f64) / connected as f64;
    report.rss_per_conn = (rss_now as f64 - report.base_rss as f64) / connected as f64;
    report.growth = census_after.growth(&census_before);
    report.drive_future = DRIVE_FUTURE_SIZE.load(Relaxed);

    // Phase 2: CPU of idle heartbeats.
    let emulator_pid = emulator.pid();
    let pings0 = counters.pings.load(Relaxed);
    let pongs0 = counters.pongs.load(Relaxed);
    let emu_pings0 = emulator_pings(addr).await?;
    let cpu0 = procfs::cpu_time("self");
    let sched0 = procfs::thread_cpu_time();
    let emu_cpu0 = procfs::cpu_time(&emulator_pid);
    let wall0 = Instant::now();
    tokio::time::sleep(params.cpu_window).await;
    let wall = wall0.elapsed().as_secs_f64();
    let cpu = procfs::cpu_time("self").saturating_sub(cpu0).as_secs_f64();
    let sched = procfs::thread_cpu_time()
        .saturating_sub(sched0)
        .as_secs_f64();
    let emu_cpu = procfs::cpu_time(&emulator_pid)
        .saturating_sub(emu_cpu0)
        .as_secs_f64();
    report.pings = counters.pings.load(Relaxed) - pings0;
    report.pongs = counters.pongs.load(Relaxed) - pongs0;
    report.emulator_pings = emulator_pings(addr).await? - emu_pings0;
    report.cpu_pct_stat = 100.0 * cpu / wall;
    report.cpu_pct_sched = 100.0 * sched / wall;
    report.emulator_cpu_pct = 100.0 * emu_cpu / wall;
    report.expected_pings =
        connected as f64 * params.cpu_window.as_secs_f64() / params.interval.as_secs_f64();
    report.degraded_total = counters.degraded.load(Relaxed);

    // Phase 3: every peer half-open at once.
    report.false_dead_before_fault = counters.outcomes().late.len();
    let fault_at = Instant::now();
    report.blackholed = inject(addr, r#"{"action":"blackhole"}"#).await?;
    report.all_ended = counters
        .wait_until(params.timeout + Duration::from_secs(30), |c| {
            c.ended.load(Relaxed) >= connected
        })
        .await;
    report.last_dead_after_fault = fault_at.elapsed();
    {
        let mut out = counters.outcomes();
        out.late.sort_unstable();
        let late = &out.late;
        let pick = |q: f64| {
            let rank = ((late.len() as f64) * q).ceil() as usize;
            late.get(rank.clamp(1, late.len().max(1)) - 1)
                .copied()
                .unwrap_or_default()
        };
        report.dead = late.len();
        report.late_p50 = pick(0.50);
        report.late_p99 = pick(0.99);
        report.late_max = late.last().copied().unwrap_or_default();
        report.observed_late_max = out.observed_late_max;
        report.not_dead = connected - late.len();
        report.other_samples = out.other_samples.clone();
    }
    report.fds_after = procfs::open_fds();
    report.heap_after = heap::live_bytes();
    report.rss_after = procfs::rss_bytes();

    if params.compare {
        report.tungstenite = Some(compare(addr, &token, params).await?);
    }
    Ok(())
}

// --- Optional: tokio-tungstenite on the same emulator ----------------------------------------

/// One tokio-tungstenite connection: `split()`, one task pinging on a tokio interval and
/// reading pongs. Split before the task, so its future does not also keep the unsplit stream.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would store `ws` beside its halves"
)]
fn tungstenite_drive(
    ws: tokio_tungstenite::WebSocketStream<TcpStream>,
    interval: Duration,
    phase: Duration,
    counters: Arc<Counters>,
) -> impl Future<Output = ()> + Send {
    let (mut sink, mut stream) = ws.split();
    let mut ticks = tokio::time::interval_at(Instant::now() + phase, interval);
    async move {
        let mut seq = 0u64;
        let mut answered = false;
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    seq += 1;
                    if sink.send(Message::Ping(seq.to_be_bytes().to_vec().into())).await.is_err() {
                        break;
                    }
                    counters.pings.fetch_add(1, Relaxed);
                }
                msg = stream.next() => match msg {
                    Some(Ok(Message::Pong(_))) => {
                        counters.pongs.fetch_add(1, Relaxed);
                        if !answered {
                            answered = true;
                            counters.first_pong();
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
        }
        counters.end(None, None);
    }
}

async fn compare(addr: SocketAddr, token: &str, params: &Params) -> anyhow::Result<Compared> {
    let n = params.conns;
    let url = format!("ws://{addr}/streams/{STREAM}");
    let bearer = HeaderValue::from_str(&format!("Bearer {token}"))?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024);
    let counters = Arc::new(Counters::default());
    let mut before = heap::Census::new();
    let mut after = heap::Census::new();
    before.take();
    let heap_before = heap::live_bytes();
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    for i in 0..n {
        let permit = Arc::clone(&gate).acquire_owned().await?;
        let counters = Arc::clone(&counters);
        let mut request = url.as_str().into_client_request()?;
        request
            .headers_mut()
            .insert("Authorization", bearer.clone());
        let phase = params.interval.mul_f64(i as f64 / n as f64);
        let interval = params.interval;
        tokio::spawn(async move {
            let connected = async {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let (ws, _) =
                    tokio_tungstenite::client_async_with_config(request, tcp, Some(config)).await?;
                anyhow::Ok(ws)
            }
            .await;
            drop(permit);
            match connected {
                Ok(ws) => {
                    tokio::spawn(tungstenite_drive(
                        ws,
                        interval,
                        phase,
                        Arc::clone(&counters),
                    ));
                    counters.connected.fetch_add(1, Relaxed);
                }
                Err(err) => {
                    counters.connect_failed.fetch_add(1, Relaxed);
                    counters.note_other(format!("connect failed: {err}"));
                }
            }
            counters.changed.notify_waiters();
        });
    }
    counters
        .wait_until(Duration::from_secs(120), |c| {
            c.connected.load(Relaxed) + c.connect_failed.load(Relaxed) >= n
        })
        .await;
    let connected = counters.connected.load(Relaxed);
    counters
        .wait_until(params.interval + params.timeout, |c| {
            c.answered.load(Relaxed) >= connected
        })
        .await;
    let heap_now = heap::live_bytes();
    after.take();
    let compared = Compared {
        connected,
        answered: counters.answered.load(Relaxed),
        heap_per_conn: (heap_now as f64 - heap_before as f64) / connected.max(1) as f64,
        growth: after.growth(&before),
    };
    inject(addr, r#"{"action":"reset"}"#).await?;
    counters
        .wait_until(Duration::from_secs(30), |c| {
            c.ended.load(Relaxed) >= connected
        })
        .await;
    Ok(compared)
}

// --- The table -------------------------------------------------------------------------------

fn bytes(b: f64) -> String {
    const KIB: f64 = 1024.0;
    if b.abs() >= KIB * KIB {
        format!("{:.1} MiB", b / KIB / KIB)
    } else if b.abs() >= 10.0 * KIB {
        format!("{:.1} KiB", b / KIB)
    } else {
        format!("{b:.0} B")
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISS" }
}

fn row(metric: &str, measured: &str, target: &str, verdict: &str, scale: &str) {
    println!("  {metric:<36} {measured:>14}   {target:<12} {verdict:<6} {scale}");
}

fn print_growth(growth: &[(usize, isize)], per: usize, label: impl Fn(usize) -> String) {
    println!(
        "    {:>9} {:>10} {:>11}   what",
        "size", "count/conn", "bytes/conn"
    );
    let mut shown = 0.0;
    let total: f64 = growth
        .iter()
        .map(|&(size, c)| size as f64 * c as f64 / per as f64)
        .sum();
    for &(size, change) in growth.iter().take(8) {
        let count = change as f64 / per as f64;
        let per_conn = size as f64 * count;
        if per_conn.abs() < 1.0 {
            break;
        }
        shown += per_conn;
        let size_text = if size == heap::TRACKED {
            format!(">{size}")
        } else {
            size.to_string()
        };
        println!(
            "    {size_text:>9} {count:>10.3} {per_conn:>11.1}   {}",
            label(size)
        );
    }
    println!(
        "    {:>9} {:>10} {:>11.1}   everything else",
        "",
        "",
        total - shown
    );
    println!(
        "    {:>9} {:>10} {:>11.1}   total (by size class)",
        "", "", total
    );
}

fn class_text(class: Option<usize>) -> String {
    class.map_or_else(|| "unclear".into(), |size| format!("{size} B"))
}

fn print_report(params: &Params, emulator: &EmulatorProcess, r: &Report) {
    let n = r.connected;
    println!();
    println!("streamkeeper upstream scale bench (crates/cli/benches/upstream_scale.rs)");
    println!(
        "  {} connections requested · heartbeat interval {:?} · timeout {:?} · CPU window {:?}",
        params.conns, params.interval, params.timeout, params.cpu_window
    );
    println!(
        "  {} tokio workers · {CONNECT_CONCURRENCY} connects at a time · emulator pid {} at ws://{}/streams/{STREAM} (own process)",
        params.workers,
        emulator.pid(),
        emulator.addr
    );
    match params.phase_grid {
        Some(step) => println!(
            "  EXPERIMENT: first pings on a shared {step:?} grid (SK_BENCH_PHASE_GRID), not spread like the session's"
        ),
        None => println!(
            "  first pings spread evenly over one interval, on the product's 100 ms ping grid (liveness::ping_phase)"
        ),
    }
    println!();
    println!(
        "  {:<36} {:>14}   {:<12} {:<6} for scale",
        "metric", "measured", "target", ""
    );
    println!("memory (idle, after every connection's first ping/pong round)");
    row(
        "connections open",
        &format!("{n} / {}", params.conns),
        "all",
        verdict(n == params.conns),
        &format!(
            "{} failed; opened in {:.1} s",
            r.connect_failed, r.connect_secs
        ),
    );
    row(
        "answered a ping before measuring",
        &format!("{} / {n}", r.answered),
        "all",
        verdict(r.all_answered),
        "",
    );
    row(
        "base heap (live bytes)",
        &bytes(r.base_heap as f64),
        "",
        "",
        "runtime, token fetch, warm-up, calibration",
    );
    row(
        "base RSS",
        &bytes(r.base_rss as f64),
        "< 10 MiB",
        verdict((r.base_rss as f64) < 10.0 * 1024.0 * 1024.0),
        "Node ws: 55 MiB",
    );
    row(
        "heap per idle connection",
        &bytes(r.heap_per_conn),
        "<= 2 KiB",
        verdict(r.heap_per_conn <= 2048.0),
        "Node ws 6.5 KB; tokio-tungstenite 0.30: 5.0 KB bare, 6.0 KB split+interval, 133 KB default config",
    );
    row(
        "RSS per idle connection",
        &bytes(r.rss_per_conn),
        "",
        "",
        "includes malloc overhead and fragmentation",
    );
    if let Some(t) = &r.tungstenite {
        row(
            "tokio-tungstenite heap per connection",
            &bytes(t.heap_per_conn),
            "",
            "",
            &format!(
                "same emulator, {} connected, {} answered; split + interval, read buffer 4 KiB, write buffer 0",
                t.connected, t.answered
            ),
        );
    }
    println!("cpu (idle heartbeats)");
    row(
        "CPU, % of one core (utime+stime)",
        &format!("{:.3} %", r.cpu_pct_stat),
        "<= 0.5 %",
        verdict(r.cpu_pct_stat <= 0.5),
        "Node ws: 2.7 %",
    );
    row(
        "CPU, % of one core (schedstat, ns)",
        &format!("{:.3} %", r.cpu_pct_sched),
        "<= 0.5 %",
        verdict(r.cpu_pct_sched <= 0.5),
        "same window, live threads only, nanosecond clock",
    );
    row(
        "pings sent in the window",
        &r.pings.to_string(),
        &format!("~{:.0}", r.expected_pings),
        verdict((r.pings as f64 - r.expected_pings).abs() <= 0.02 * r.expected_pings + 2.0),
        &format!(
            "N x window / interval; the emulator counted {}",
            r.emulator_pings
        ),
    );
    row(
        "pongs received in the window",
        &r.pongs.to_string(),
        &format!("~{:.0}", r.expected_pings),
        verdict((r.pongs as f64 - r.expected_pings).abs() <= 0.02 * r.expected_pings + 2.0),
        "",
    );
    row(
        "DEGRADED transitions (so far)",
        &r.degraded_total.to_string(),
        "0",
        verdict(r.degraded_total == 0),
        "",
    );
    row(
        "emulator CPU, % of one core",
        &format!("{:.3} %", r.emulator_cpu_pct),
        "",
        "",
        "the server side, for context only",
    );
    println!("detection (every peer half-open at once: POST /faults blackhole)");
    row(
        "DEAD before the fault (false)",
        &r.false_dead_before_fault.to_string(),
        "0",
        verdict(r.false_dead_before_fault == 0),
        "",
    );
    row(
        "sockets blackholed",
        &r.blackholed.to_string(),
        &format!(">= {n}"),
        verdict(r.blackholed as usize >= n),
        "",
    );
    row(
        "declared DEAD",
        &format!("{} / {n}", r.dead),
        "all",
        verdict(r.not_dead == 0 && r.false_dead_before_fault == 0),
        &format!("{} did not die (must be 0)", r.not_dead),
    );
    row(
        "late_by p50",
        &ms(r.late_p50),
        "",
        "",
        "after last_inbound + timeout",
    );
    row("late_by p99", &ms(r.late_p99), "", "", "");
    row(
        "late_by max",
        &ms(r.late_max),
        "<= 50 ms",
        verdict(r.dead > 0 && r.late_max <= Duration::from_millis(50)),
        "Node ws: up to 10 s (reaper interval)",
    );
    row(
        "late as seen by the task, max",
        &ms(r.observed_late_max),
        "",
        "",
        "now - liveness.deadline() after next() returned DEAD",
    );
    row(
        "fault -> last connection ended",
        &format!("{:.2} s", r.last_dead_after_fault.as_secs_f64()),
        &format!("<= {:?}", params.timeout),
        verdict(r.all_ended && r.last_dead_after_fault <= params.timeout + Duration::from_secs(1)),
        "",
    );
    let fd_delta = r.fds_after as isize - r.base_fds as isize;
    row(
        "open fds after reaping vs baseline",
        &format!("{:+} ({})", fd_delta, r.fds_after),
        "~0",
        verdict(fd_delta.abs() <= 4),
        &format!("baseline {}", r.base_fds),
    );
    row(
        "heap after reaping vs baseline",
        &bytes(r.heap_after as f64 - r.base_heap as f64),
        "",
        "",
        &format!(
            "{} per connection opened",
            bytes((r.heap_after as f64 - r.base_heap as f64) / n.max(1) as f64)
        ),
    );
    row(
        "RSS after reaping",
        &bytes(r.rss_after as f64),
        "",
        "",
        "malloc keeps freed pages",
    );
    for sample in &r.other_samples {
        println!("    ended otherwise: {sample}");
    }

    println!();
    println!("where the heap of one idle connection goes (live allocations by exact size)");
    let cal = r.calibration.as_ref();
    let drive = r.drive_future;
    let label = |size: usize| -> String {
        if cal.and_then(|c| c.tcp_stream_class) == Some(size) {
            return "tokio I/O registration of the TcpStream (Arc<ScheduledIo>, 128-aligned)"
                .into();
        }
        if size >= drive && size < drive + 256 {
            return format!(
                "tokio task cell: drive() future {drive} B + task header/trailer, 128-aligned"
            );
        }
        if size <= 32 {
            return "small strings (ConnectionId \"bench-N\")".into();
        }
        String::new()
    };
    print_growth(&r.growth, n.max(1), label);
    println!(
        "  sizes: drive() future {drive} B = Upstream {} B (WsClient {} B, Liveness {} B, ConnectionId {} B) + next() future {} B + captures",
        size_of::<Upstream>(),
        size_of::<WsClient>(),
        size_of::<Liveness>(),
        size_of::<ConnectionId>(),
        r.next_future,
    );
    println!(
        "         tokio::time::Sleep {} B, tokio TcpStream {} B (inline)",
        size_of::<tokio::time::Sleep>(),
        size_of::<TcpStream>()
    );
    if let Some(c) = cal {
        println!(
            "  calibration ({CALIBRATION_COUNT} each): a bare tokio TcpStream holds {} of heap (size class {}); a task whose future is {} B is one {} allocation",
            bytes(c.tcp_stream_bytes),
            class_text(c.tcp_stream_class),
            c.probe_future,
            class_text(c.probe_task_class),
        );
    }
    if let Some(t) = &r.tungstenite {
        println!();
        println!("tokio-tungstenite 0.30, same N and emulator (live allocations by exact size)");
        let tcp_class = cal.and_then(|c| c.tcp_stream_class);
        print_growth(&t.growth, t.connected.max(1), |size| {
            if Some(size) == tcp_class {
                "tokio I/O registration of the TcpStream (as above)".into()
            } else if size == 4096 {
                "read buffer: 4 KiB whether read_buffer_size is 1 KiB or 4 KiB".into()
            } else {
                String::new()
            }
        });
    }
}

fn main() -> anyhow::Result<()> {
    let params = Params::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(params.workers)
        .enable_all()
        .build()?;
    let emulator = EmulatorProcess::start()?;
    let mut report = Report::default();
    let result = runtime.block_on(run(&params, &emulator, &mut report));
    if let Err(err) = &result {
        eprintln!("upstream_scale: the run failed: {err:#}");
    }
    print_report(&params, &emulator, &report);
    drop(emulator);
    result?;
    ensure!(
        report.connected == params.conns
            && report.not_dead == 0
            && report.false_dead_before_fault == 0,
        "not every connection opened and died exactly once at its deadline"
    );
    Ok(())
}
