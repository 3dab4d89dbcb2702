//! Scale benchmark of the whole sidecar (issue 6, "Measure"): the real sidecar process as pods
//! run it (the lean `streamkeeper-sidecar` binary; `SK_BENCH_SIDECAR=streamkeeper` runs
//! `streamkeeper sidecar` instead, the whole binary, for comparison), run from a config file with N idle `generic` streams against the emulator in a
//! process of its own, over `ws://` and over `wss://` (the emulator's test CA as each stream's
//! `tls.caFile`, `https://` token and API endpoints too). Reports, at each N, the sidecar's
//! RSS, its live heap and its CPU over a window, and per added stream the slope between
//! consecutive N; then where one stream's heap goes (live allocations by exact size).
//!
//! ```text
//! cargo bench -p streamkeeper --features heap-stats --bench sidecar_scale
//! SK_BENCH_STREAMS=50,1000 SK_BENCH_TRANSPORTS=ws SK_BENCH_CPU_WINDOW=15s \
//!     cargo bench -p streamkeeper --features heap-stats --bench sidecar_scale
//! ```
//!
//! Parameters (environment): `SK_BENCH_STREAMS` (`50,1000,10000`; a run with 0 streams is
//! always added as the base), `SK_BENCH_TRANSPORTS` (`ws,wss`), `SK_BENCH_CPU_WINDOW` (30s),
//! `SK_BENCH_INTERVAL` / `SK_BENCH_TIMEOUT` (the streams' heartbeat, 15s / 35s: the product
//! defaults), `SK_BENCH_SIDECAR` (`streamkeeper-sidecar` or `streamkeeper`), `SK_BENCH_STORE`
//! (`memory`, the in-process store; `redis`: a `redis-server` of its own per run, as pods run,
//! so the store's leases, records and checkpoints are in Redis rather than in the sidecar).
//!
//! What runs: one sidecar process per (transport, N), with the in-process store (no Redis: one
//! pod; or Redis, above), one tenant whose limit is N, the production defaults for everything else, and no app
//! connected (idle streams: the emulator sends no events, so no app is needed to ack them; the
//! app side's per-connection cost is not part of this figure). Each stream has its own socket
//! to the emulator's one `bench` stream; all streams name one credentials directory (one client
//! id, as streams of one tenant would), so the pod's token registry keeps one token for all.
//!
//! Memory is read once every stream is connected and has answered a heartbeat (the emulator
//! counts the pings), before anything is asked of the sidecar's admin endpoint; then once more
//! after one `/metrics` and one `/status` scrape, since Prometheus scrapes every sidecar and
//! what a scrape allocates stays in the process's RSS. The heap figures need the counting
//! allocator: build with `--features heap-stats` (without it the bench reports RSS and CPU
//! only). The counting adds no bytes to any allocation, so RSS is the same as without it.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use streamkeeper_testkit::procfs;

/// The emulator stream every sidecar stream attaches to.
const EMU_STREAM: &str = "bench";
/// The emulator's generic client.
const CLIENT_ID: &str = "streamkeeper";
const CLIENT_SECRET: &str = "streamkeeper-secret";
/// The tenant of every bench stream.
const TENANT: &str = "bench";
/// The census's last size class: it stands for every allocation of this size or more.
const LARGE_CLASS: usize = 8192;

// --- Parameters ------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Ws,
    Wss,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ws => "ws",
            Self::Wss => "wss",
        }
    }

    /// RSS per stream the issue allows.
    fn target_per_stream(self) -> f64 {
        match self {
            Self::Ws => 4096.0,
            Self::Wss => 8192.0,
        }
    }
}

struct Params {
    streams: Vec<usize>,
    transports: Vec<Transport>,
    cpu_window: Duration,
    interval: Duration,
    timeout: Duration,
    sidecar: SidecarBinary,
    store: StoreKind,
}

/// Where the sidecar keeps leases, records and checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreKind {
    /// The in-process store (one pod, no Redis): its maps are in the sidecar's own heap.
    Memory,
    /// A `redis-server` of its own per run, as pods run: the store's data is in Redis's
    /// memory, and the sidecar pays only for its client.
    Redis,
}

impl StoreKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "in-process store",
            Self::Redis => "redis",
        }
    }
}

/// Which program runs the sidecar.
#[derive(Debug, Clone, Copy)]
enum SidecarBinary {
    /// `streamkeeper-sidecar`, what injected pods run.
    Lean,
    /// `streamkeeper sidecar`, the whole binary.
    Whole,
}

fn env_duration(var: &str, default: &str) -> anyhow::Result<Duration> {
    let raw = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    streamkeeper_api::duration::parse(&raw).map_err(|e| anyhow::anyhow!("{var}: {e}"))
}

impl Params {
    fn from_env() -> anyhow::Result<Self> {
        let raw = std::env::var("SK_BENCH_STREAMS").unwrap_or_else(|_| "50,1000,10000".into());
        let mut streams = vec![0];
        for n in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            streams.push(
                n.parse()
                    .with_context(|| format!("SK_BENCH_STREAMS: {n:?} is not a count"))?,
            );
        }
        streams.sort_unstable();
        streams.dedup();
        let raw = std::env::var("SK_BENCH_TRANSPORTS").unwrap_or_else(|_| "ws,wss".into());
        let transports = raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|t| match t {
                "ws" => Ok(Transport::Ws),
                "wss" => Ok(Transport::Wss),
                other => bail!("SK_BENCH_TRANSPORTS: {other:?} is neither ws nor wss"),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            streams,
            transports,
            cpu_window: env_duration("SK_BENCH_CPU_WINDOW", "30s")?,
            interval: env_duration("SK_BENCH_INTERVAL", "15s")?,
            timeout: env_duration("SK_BENCH_TIMEOUT", "35s")?,
            sidecar: match std::env::var("SK_BENCH_SIDECAR").as_deref() {
                Err(_) | Ok("streamkeeper-sidecar") => SidecarBinary::Lean,
                Ok("streamkeeper") => SidecarBinary::Whole,
                Ok(other) => bail!(
                    "SK_BENCH_SIDECAR: {other:?} is neither streamkeeper-sidecar nor streamkeeper"
                ),
            },
            store: match std::env::var("SK_BENCH_STORE").as_deref() {
                Err(_) | Ok("memory") => StoreKind::Memory,
                Ok("redis") => StoreKind::Redis,
                Ok(other) => bail!("SK_BENCH_STORE: {other:?} is neither memory nor redis"),
            },
        })
    }
}

// --- /proc readings --------------------------------------------------------------------------

/// A `kB` field of `/proc/{pid}/status`, in bytes.
fn status_field(pid: u32, field: &str) -> u64 {
    procfs::status_bytes(&pid.to_string(), field)
}

/// User plus system CPU time of a process.
fn cpu_time(pid: u32) -> Duration {
    procfs::cpu_time(&pid.to_string())
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

// --- HTTP ------------------------------------------------------------------------------------

/// One plain HTTP/1.1 GET with `Connection: close`; the status and the body.
fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = Vec::new();
    tcp.read_to_end(&mut resp)?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("GET {path}: no response head"))?;
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET {path}: no status in {head:?}"))?;
    let mut body = resp.split_off(split + 4);
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok((status, body))
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || raw.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[(eol + 4 + size).min(raw.len())..];
    }
    out
}

fn get_json(addr: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    let (status, body) = get(addr, path)?;
    ensure!(status == 200, "GET {path} answered {status}");
    Ok(serde_json::from_slice(&body)?)
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Polls `ready` every 200 ms until it holds or `within` passes.
fn wait_until(
    within: Duration,
    what: &str,
    mut ready: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if ready().unwrap_or(false) {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

// --- Child processes -------------------------------------------------------------------------

/// A `streamkeeper` child process whose stderr is forwarded (prefixed, at most a few lines
/// unless it is an error); killed when dropped.
struct Proc {
    child: Child,
}

impl Proc {
    fn spawn(
        program: &str,
        args: &[&str],
        tag: &'static str,
        log: &str,
        ready: &str,
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(program)
            .args(args)
            .env("STREAMKEEPER_LOG", log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting `{program} {}`", args.join(" ")))?;
        let stderr = child.stderr.take().context("the child's stderr")?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let marker = ready.to_owned();
        std::thread::spawn(move || {
            let mut ready_tx = Some(ready_tx);
            let mut shown = 0;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if ready_tx.is_some() && line.contains(&marker) {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                    continue;
                }
                if shown < 20 || line.contains("ERROR") {
                    shown += 1;
                    eprintln!("[{tag}] {line}");
                }
            }
        });
        let proc = Self { child };
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .with_context(|| format!("{tag}: no {ready:?} on stderr within 30 s"))?;
        Ok(proc)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The emulator, with TLS (it serves plain and TLS on the same port) and its test CA on disk.
struct Emulator {
    proc: Proc,
    addr: SocketAddr,
    ca: PathBuf,
}

impl Emulator {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        let addr = free_addr()?;
        let ca = dir.join("ca.pem");
        let listen = addr.to_string();
        let ca_arg = ca.display().to_string();
        let args = [
            "emulate",
            "--listen",
            &listen,
            "--stream",
            EMU_STREAM,
            "--event-interval",
            "0s",
            "--token-ttl",
            "24h",
            "--ca-out",
            &ca_arg,
        ];
        let proc = Proc::spawn(
            env!("CARGO_BIN_EXE_streamkeeper"),
            &args,
            "emulator",
            "warn",
            "emulator listening on",
        )?;
        Ok(Self { proc, addr, ca })
    }

    fn stats(&self) -> anyhow::Result<serde_json::Value> {
        get_json(self.addr, "/stats")
    }

    fn open(&self) -> anyhow::Result<u64> {
        Ok(self.stats()?["connectionsOpen"].as_u64().unwrap_or(0))
    }

    fn pings(&self) -> anyhow::Result<u64> {
        Ok(self.stats()?["streams"][EMU_STREAM]["pings"]
            .as_u64()
            .unwrap_or(0))
    }
}

// --- One run ---------------------------------------------------------------------------------

/// What one sidecar process with N streams measured.
#[derive(Debug, Clone, Default)]
struct Run {
    streams: usize,
    rss: u64,
    rss_anon: u64,
    heap: Option<Census>,
    cpu_pct: f64,
    pings_in_window: u64,
    threads: usize,
    connect_secs: f64,
    metrics_bytes: usize,
    metrics_ms: f64,
    status_bytes: usize,
    rss_scraped: u64,
    heap_scraped: Option<u64>,
}

/// The sidecar's `/debug/heap`.
#[derive(Debug, Clone, Default)]
struct Census {
    live: u64,
    /// Bytes of the allocations larger than the census counts exactly (its last size class).
    large: u64,
    by_size: BTreeMap<usize, i64>,
    /// The allocations of the last size class and more, by exact size.
    large_by_size: BTreeMap<usize, i64>,
}

impl Census {
    fn read(admin: SocketAddr) -> anyhow::Result<Option<Self>> {
        let (status, body) = get(admin, "/debug/heap")?;
        if status == 404 {
            return Ok(None);
        }
        ensure!(status == 200, "GET /debug/heap answered {status}");
        let json: serde_json::Value = serde_json::from_slice(&body)?;
        let pairs = |field: &str| -> anyhow::Result<BTreeMap<usize, i64>> {
            Ok(json[field]
                .as_array()
                .with_context(|| field.to_owned())?
                .iter()
                .filter_map(|pair| Some((pair[0].as_u64()? as usize, pair[1].as_i64()?)))
                .collect())
        };
        Ok(Some(Self {
            live: json["liveBytes"].as_u64().unwrap_or(0),
            large: json["largeBytes"].as_u64().unwrap_or(0),
            by_size: pairs("bySize")?,
            // A sidecar built before the census kept large sizes apart has none.
            large_by_size: pairs("large").unwrap_or_default(),
        }))
    }

    /// (size, change in count), the largest change in bytes first.
    fn growth(&self, before: &Census) -> Vec<(usize, i64)> {
        growth(&self.by_size, &before.by_size)
    }

    /// The same for the allocations of the last size class and more.
    fn large_growth(&self, before: &Census) -> Vec<(usize, i64)> {
        growth(&self.large_by_size, &before.large_by_size)
    }
}

/// (size, change in count) from `before` to `after`, the largest change in bytes first.
fn growth(after: &BTreeMap<usize, i64>, before: &BTreeMap<usize, i64>) -> Vec<(usize, i64)> {
    let mut sizes: Vec<usize> = after.keys().chain(before.keys()).copied().collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut grown: Vec<(usize, i64)> = sizes
        .into_iter()
        .map(|s| {
            (
                s,
                after.get(&s).copied().unwrap_or(0) - before.get(&s).copied().unwrap_or(0),
            )
        })
        .filter(|&(_, c)| c != 0)
        .collect();
    grown.sort_by_key(|&(s, c)| std::cmp::Reverse((s as i64 * c).abs()));
    grown
}

/// What one sidecar of a run listens on and uses, besides its streams.
struct Pod<'a> {
    listen: SocketAddr,
    admin: SocketAddr,
    creds: &'a Path,
    redis: Option<&'a str>,
}

fn config_yaml(
    params: &Params,
    emu: &Emulator,
    transport: Transport,
    n: usize,
    pod: &Pod<'_>,
) -> String {
    let Pod {
        listen,
        admin,
        creds,
        redis,
    } = *pod;
    let (http, ws) = match transport {
        Transport::Ws => ("http", "ws"),
        Transport::Wss => ("https", "wss"),
    };
    let host = emu.addr;
    let mut yaml = format!(
        "pod: bench\nlisten: {listen}\nadmin: {admin}\ntenantLimits: {{{TENANT}: {}}}\n",
        n.max(1)
    );
    if let Some(url) = redis {
        let _ = writeln!(yaml, "redis: {url}");
    }
    yaml.push_str("streams:\n");
    for i in 0..n {
        let _ = write!(
            yaml,
            "  - id: bench/s{i:05}\n    tenant: {TENANT}\n    platform: generic\n    endpoints: {{api: \"{http}://{host}\", login: \"{http}://{host}\", stream: \"{ws}://{host}/streams/{EMU_STREAM}\"}}\n    credentials: {{dir: \"{}\"}}\n    heartbeat: {{interval: {}ms, timeout: {}ms}}\n",
            creds.display(),
            params.interval.as_millis(),
            params.timeout.as_millis(),
        );
        if transport == Transport::Wss {
            let _ = writeln!(yaml, "    tls: {{caFile: \"{}\"}}", emu.ca.display());
        }
    }
    yaml
}

fn run_one(
    params: &Params,
    emu: &Emulator,
    transport: Transport,
    n: usize,
    dir: &Path,
) -> anyhow::Result<Run> {
    wait_until(
        Duration::from_secs(60),
        "the emulator's sockets closing",
        || Ok(emu.open()? == 0),
    )?;
    let creds = dir.join("credentials");
    std::fs::create_dir_all(&creds)?;
    std::fs::write(creds.join("clientId"), CLIENT_ID)?;
    std::fs::write(creds.join("clientSecret"), CLIENT_SECRET)?;
    let (listen, admin) = (free_addr()?, free_addr()?);
    // A fresh server per run: no lease or record of an earlier run is left to wait out.
    let redis =
        (params.store == StoreKind::Redis).then(streamkeeper_testkit::redis::RedisServer::start);
    let redis_url = redis.as_ref().map(|r| r.url());
    let config = dir.join(format!("sidecar-{}-{n}.yaml", transport.as_str()));
    std::fs::write(
        &config,
        config_yaml(
            params,
            emu,
            transport,
            n,
            &Pod {
                listen,
                admin,
                creds: &creds,
                redis: redis_url.as_deref(),
            },
        ),
    )?;
    let pings_before = emu.pings()?;
    let started = Instant::now();
    let config_arg = config.display().to_string();
    let (program, mut args) = match params.sidecar {
        SidecarBinary::Lean => (env!("CARGO_BIN_EXE_streamkeeper-sidecar"), vec![]),
        SidecarBinary::Whole => (env!("CARGO_BIN_EXE_streamkeeper"), vec!["sidecar"]),
    };
    args.extend(["--config", &config_arg]);
    let sidecar = Proc::spawn(
        program,
        &args,
        "sidecar",
        "warn,streamkeeper_sidecar::admin=info",
        "admin endpoint listening",
    )
    .or_else(|_| -> anyhow::Result<Proc> {
        bail!("the sidecar did not start (is the config valid? see its stderr above)")
    })?;
    let pid = sidecar.pid();
    // Every stream connected (the emulator counts its sockets; the sidecar is not asked).
    let connect_within = Duration::from_secs(60) + Duration::from_millis(20 * n as u64);
    wait_until(connect_within, "every stream connected", || {
        Ok(emu.open()? >= n as u64)
    })?;
    let connect_secs = started.elapsed().as_secs_f64();
    // Every stream pinged at least once: the first pings are spread over one interval.
    std::thread::sleep(params.interval + Duration::from_secs(2));
    wait_until(params.timeout, "a first ping from every stream", || {
        Ok(emu.pings()? - pings_before >= n as u64)
    })?;
    ensure!(
        emu.open()? == n as u64,
        "{} sockets open at the emulator, {n} streams",
        emu.open()?
    );
    let mut run = Run {
        streams: n,
        connect_secs,
        rss: status_field(pid, "VmRSS"),
        rss_anon: status_field(pid, "RssAnon"),
        heap: Census::read(admin)?,
        threads: threads(pid),
        ..Run::default()
    };
    let (cpu0, pings0, t0) = (cpu_time(pid), emu.pings()?, Instant::now());
    std::thread::sleep(params.cpu_window);
    let (cpu1, pings1, elapsed) = (cpu_time(pid), emu.pings()?, t0.elapsed());
    run.cpu_pct = 100.0 * (cpu1 - cpu0).as_secs_f64() / elapsed.as_secs_f64();
    run.pings_in_window = pings1 - pings0;
    let t = Instant::now();
    let (status, metrics) = get(admin, "/metrics")?;
    ensure!(status == 200, "GET /metrics answered {status}");
    run.metrics_ms = t.elapsed().as_secs_f64() * 1000.0;
    run.metrics_bytes = metrics.len();
    let (status, body) = get(admin, "/status")?;
    ensure!(status == 200, "GET /status answered {status}");
    run.status_bytes = body.len();
    run.rss_scraped = status_field(pid, "VmRSS");
    run.heap_scraped = Census::read(admin)?.map(|c| c.live);
    drop(sidecar);
    Ok(run)
}

// --- The report ------------------------------------------------------------------------------

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

fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISS" }
}

fn print_transport(params: &Params, transport: Transport, runs: &[Run]) {
    println!();
    println!(
        "{} (`{}`, {}, heartbeat {:?}/{:?}, CPU over {:?})",
        transport.as_str(),
        match params.sidecar {
            SidecarBinary::Lean => "streamkeeper-sidecar",
            SidecarBinary::Whole => "streamkeeper sidecar",
        },
        params.store.as_str(),
        params.interval,
        params.timeout,
        params.cpu_window
    );
    println!(
        "  {:>7} {:>10} {:>10} {:>10} {:>11} {:>9} {:>7} {:>8} {:>9} {:>9}",
        "streams",
        "RSS",
        "RSS anon",
        "heap",
        "RSS scraped",
        "CPU %",
        "threads",
        "connect",
        "/metrics",
        "/status"
    );
    for r in runs {
        println!(
            "  {:>7} {:>10} {:>10} {:>10} {:>11} {:>8.3}% {:>7} {:>7.1}s {:>9} {:>9}",
            r.streams,
            bytes(r.rss as f64),
            bytes(r.rss_anon as f64),
            r.heap.as_ref().map_or("-".into(), |h| bytes(h.live as f64)),
            bytes(r.rss_scraped as f64),
            r.cpu_pct,
            r.threads,
            r.connect_secs,
            bytes(r.metrics_bytes as f64),
            bytes(r.status_bytes as f64),
        );
    }
    println!("  per added stream (slope from the previous N)");
    // RSS anon too: the private pages alone, without the binary's code pages, which a run
    // maps a few more or fewer of and so move the RSS slope by a hundred bytes or two.
    println!(
        "  {:>13} {:>10} {:>10} {:>10} {:>11} {:>12} {:>8}",
        "streams", "RSS", "RSS anon", "heap", "RSS scraped", "CPU %/1000", "target"
    );
    let target = transport.target_per_stream();
    for pair in runs.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let dn = (b.streams - a.streams).max(1) as f64;
        let rss = (b.rss as f64 - a.rss as f64) / dn;
        let anon = (b.rss_anon as f64 - a.rss_anon as f64) / dn;
        let scraped = (b.rss_scraped as f64 - a.rss_scraped as f64) / dn;
        let heap = match (&a.heap, &b.heap) {
            (Some(x), Some(y)) => bytes((y.live as f64 - x.live as f64) / dn),
            _ => "-".into(),
        };
        let cpu = (b.cpu_pct - a.cpu_pct) / dn * 1000.0;
        // From no stream, the slope carries what the first streams set up once (the token
        // manager, the REST client, the tables): not a per-stream cost, so not judged.
        let (target, verdict) = if a.streams == 0 {
            ("-".into(), "(one-time costs included)")
        } else {
            (bytes(target), verdict(rss <= target && scraped <= target))
        };
        println!(
            "  {:>6}..{:<6} {:>10} {:>10} {:>10} {:>11} {:>11.3}% {:>8} {}",
            a.streams,
            b.streams,
            bytes(rss),
            bytes(anon),
            heap,
            bytes(scraped),
            cpu,
            target,
            verdict,
        );
    }
    if let Some(r50) = runs.iter().find(|r| r.streams == 50) {
        println!(
            "  50 streams: RSS {} (scraped {}), target < 12 MiB: {}",
            bytes(r50.rss as f64),
            bytes(r50.rss_scraped as f64),
            verdict(r50.rss.max(r50.rss_scraped) < 12 << 20)
        );
    }
    // Where one stream's heap goes: the census of the largest run against the base run.
    let (Some(base), Some(top)) = (runs.first(), runs.last()) else {
        return;
    };
    let (Some(before), Some(after)) = (&base.heap, &top.heap) else {
        println!("  (heap: build with --features heap-stats for the census)");
        return;
    };
    let per = (top.streams - base.streams).max(1) as f64;
    println!(
        "  where one stream's heap goes ({} streams against {}; live allocations by exact size)",
        top.streams, base.streams
    );
    println!(
        "    {:>9} {:>10} {:>11}",
        "size", "count/strm", "bytes/strm"
    );
    let growth = after.growth(before);
    // The last size class holds every larger allocation: its bytes are counted apart.
    let class_bytes = |size: usize, change: i64| {
        if size >= LARGE_CLASS {
            after.large as f64 - before.large as f64
        } else {
            size as f64 * change as f64
        }
    };
    let total: f64 = growth.iter().map(|&(s, c)| class_bytes(s, c)).sum::<f64>() / per;
    let mut shown = 0.0;
    for &(size, change) in growth.iter().take(24) {
        let count = change as f64 / per;
        let b = class_bytes(size, change) / per;
        if b.abs() < 4.0 {
            break;
        }
        shown += b;
        let label = if size >= LARGE_CLASS {
            format!(">={size}")
        } else {
            size.to_string()
        };
        println!("    {label:>9} {count:>10.3} {b:>11.1}");
    }
    println!(
        "    {:>9} {:>10} {:>11.1}   everything else",
        "",
        "",
        total - shown
    );
    println!(
        "    {:>9} {:>10} {:>11.1}   total by size class ({} by live bytes)",
        "",
        "",
        total,
        bytes((after.live as f64 - before.live as f64) / per)
    );
    // Few, but a large share: maps' tables (a slot per stream and room to grow) and buffers.
    let large = after.large_growth(before);
    if !large.is_empty() {
        println!("  of which >={LARGE_CLASS} by exact size (all counts, not per stream)");
        println!("    {:>9} {:>10} {:>11}", "size", "count", "bytes/strm");
        for &(size, change) in large.iter().take(12) {
            let b = size as f64 * change as f64 / per;
            println!("    {size:>9} {change:>10} {b:>11.1}");
        }
    }
}

fn main() -> anyhow::Result<()> {
    let params = Params::from_env()?;
    let dir = std::env::temp_dir().join(format!("sk-sidecar-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let emu = Emulator::start(&dir)?;
    println!(
        "streamkeeper sidecar scale bench (crates/cli/benches/sidecar_scale.rs): emulator pid {} at {}, heap census {}",
        emu.proc.pid(),
        emu.addr,
        if cfg!(feature = "heap-stats") {
            "on"
        } else {
            "off (--features heap-stats)"
        }
    );
    let mut failed = None;
    let mut all = Vec::new();
    for &transport in &params.transports {
        let mut runs = Vec::new();
        for &n in &params.streams {
            eprintln!("sidecar_scale: {} with {n} streams", transport.as_str());
            match run_one(&params, &emu, transport, n, &dir) {
                Ok(r) => runs.push(r),
                Err(e) => {
                    eprintln!("sidecar_scale: {} x {n}: {e:#}", transport.as_str());
                    failed = Some(e);
                    break;
                }
            }
        }
        print_transport(&params, transport, &runs);
        all.push((transport, runs));
    }
    drop(emu);
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(())
}
