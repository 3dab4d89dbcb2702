//! A fleet of `streamkeeper-sidecar` processes (the lean binary pods run) on one Redis, against
//! an in-process emulator: start, signal (KILL, TERM, STOP, CONT) and restart pods; read their
//! `/status` and `/metrics`; sample, all through a run, who owns a stream and how many upstream
//! sockets the emulator sees ([`Sampler`]); and keep one [`Ledger`] of every event delivered to
//! every pod's app, to prove that nothing acked comes again and nothing is lost.

use std::{
    collections::{BTreeMap, HashSet},
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde_json::Value;
use streamkeeper_api::{StreamId, StreamSpec, app_protocol::AppFrame};
use streamkeeper_emulator::{Emulator, EmulatorConfig};
use tokio::{
    sync::Notify,
    task::JoinHandle,
    time::{Instant, sleep, timeout},
};

use crate::{
    AckMode, App, FromServer, TempDir, free_port,
    harness::write_credentials,
    process::{Running, http_get, status, stream_entry, write_atomically},
};

/// The tenant of every stream here.
pub const TENANT: &str = "acme";
/// How long one `/status` or `/metrics` request may take (a frozen pod does not answer).
const ADMIN_BOUND: Duration = Duration::from_millis(400);
/// How long a pod may take to start serving its admin endpoint.
const START_BOUND: Duration = Duration::from_secs(10);

/// Second-scale timers (the sidecar accepts them with a warning).
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    /// `heartbeat.interval`: pings, and lease renewals.
    pub interval: Duration,
    /// `heartbeat.timeout`: dead-connection deadline, and the lease TTL.
    pub timeout: Duration,
    /// `reconnect.initial`.
    pub reconnect: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(300),
            timeout: Duration::from_secs(1),
            reconnect: Duration::from_millis(50),
        }
    }
}

fn yaml_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// `e2e/{name}`: the stream id of emulator stream `name`.
pub fn stream_id(name: &str) -> String {
    format!("e2e/{name}")
}

/// One sidecar process and where it listens.
#[derive(Debug)]
pub struct Sidecar {
    /// Its pod name (`pod-{index}`).
    pub name: String,
    /// The app endpoint.
    pub listen: SocketAddr,
    /// The admin endpoint.
    pub admin: SocketAddr,
    /// Its config file.
    pub config: PathBuf,
    /// The process (killed on drop).
    pub proc: Running,
}

impl Sidecar {
    /// Sends `signal` (`KILL`, `TERM`, `STOP`, `CONT`) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args(["-s", signal, &self.proc.pid().to_string()])
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill -s {signal} {}: {status}", self.name);
    }
}

/// The emulator, the credentials, the pods, on one Redis.
#[derive(Debug)]
pub struct Fleet {
    /// The platform emulator (shared with the [`Sampler`]).
    pub emu: Arc<Emulator>,
    /// The store URL every pod uses.
    pub redis_url: String,
    /// Pods by index (a killed pod keeps its slot).
    pub pods: Vec<Sidecar>,
    /// The admin endpoints by pod index (what the [`Sampler`] polls).
    pub admins: Arc<Mutex<Vec<SocketAddr>>>,
    /// The timers of every stream.
    pub timers: Timers,
    /// `tenantLimits.acme`, when set.
    pub tenant_limit: Option<u32>,
    /// The tenant of a stream, by emulator stream name, where it is not [`TENANT`].
    pub tenants: std::collections::HashMap<String, String>,
    /// Whole specs by stream name (e.g. a Genesys stream from [`crate::platform::genesys`]),
    /// written as they are instead of the `generic` stream of that name.
    pub specs: std::collections::HashMap<String, StreamSpec>,
    /// `checkpointWindow` of every pod (250 ms here: a SIGKILL redelivers at most what was
    /// acked within it, well inside [`crate::scenarios::CHECKPOINT_LAG`]).
    pub checkpoint_window: Duration,
    dir: TempDir,
    creds: PathBuf,
    ports: HashSet<u16>,
}

impl Fleet {
    /// Fails the test, with the fleet's diagnostics, when the sampler saw two owners (or two
    /// sockets) or the ledger found an event lost or delivered again.
    pub fn assert_clean(&self, samples: &Samples, report: &LedgerReport) {
        assert!(
            samples.violations.is_empty(),
            "single-owner violations: {:#?}\n{}",
            samples.violations,
            self.diagnostics()
        );
        if let Some(problems) = report.problems() {
            panic!("{problems}\n{}", self.diagnostics());
        }
    }

    /// Starts the emulator with `streams`, one event each every `event_interval`.
    pub async fn start(
        label: &str,
        redis_url: String,
        streams: &[&str],
        event_interval: Duration,
        timers: Timers,
    ) -> Self {
        let cfg = EmulatorConfig {
            streams: streams.iter().map(|s| s.to_string()).collect(),
            event_interval,
            ..EmulatorConfig::default()
        };
        Self::start_with(label, redis_url, cfg, timers).await
    }

    /// Starts the emulator as `cfg` says (e.g. with Genesys topics, for [`Fleet::specs`]).
    pub async fn start_with(
        label: &str,
        redis_url: String,
        cfg: EmulatorConfig,
        timers: Timers,
    ) -> Self {
        crate::process::sidecar_binary();
        let dir = TempDir::new(label);
        let creds = dir.path().join("credentials");
        write_credentials(&cfg, &creds);
        let emu = Arc::new(Emulator::start(cfg).await.expect("start the emulator"));
        Self {
            emu,
            redis_url,
            pods: Vec::new(),
            admins: Arc::default(),
            timers,
            tenant_limit: None,
            checkpoint_window: Duration::from_millis(250),
            tenants: Default::default(),
            specs: Default::default(),
            dir,
            creds,
            ports: HashSet::new(),
        }
    }

    fn port(&mut self) -> u16 {
        loop {
            let p = free_port();
            if self.ports.insert(p) {
                return p;
            }
        }
    }

    /// The config file of a pod running `streams` on the store at `redis_url`.
    fn yaml(
        &self,
        name: &str,
        listen: SocketAddr,
        admin: SocketAddr,
        streams: &[&str],
        redis_url: &str,
    ) -> String {
        let base = self.emu.base_url();
        let mut y = format!(
            "pod: {name}\nlisten: {listen}\nadmin: {admin}\nredis: \"{redis_url}\"\n\
             checkpointWindow: {}\n",
            yaml_duration(self.checkpoint_window)
        );
        if let Some(n) = self.tenant_limit {
            y.push_str(&format!("tenantLimits: {{{TENANT}: {n}}}\n"));
        }
        y.push_str("streams:\n");
        for s in streams {
            if let Some(spec) = self.specs.get(*s) {
                // JSON is YAML.
                let json = serde_json::to_string(spec).expect("a spec serializes");
                y.push_str(&format!("  - {json}\n"));
                continue;
            }
            y.push_str(&format!(
                "  - id: {id}\n    tenant: {tenant}\n    platform: generic\n    \
                 endpoints: {{api: \"{base}\", login: \"{base}\", stream: \"{url}\"}}\n    \
                 credentials: {{dir: \"{creds}\"}}\n    \
                 heartbeat: {{interval: {iv}, timeout: {to}}}\n    \
                 token: {{refreshLead: 120s, retry: 1s}}\n    \
                 reconnect: {{initial: {rc}, max: 1s}}\n",
                id = stream_id(s),
                tenant = self.tenants.get(*s).map_or(TENANT, String::as_str),
                url = self.emu.stream_url(s),
                creds = self.creds.display(),
                iv = yaml_duration(self.timers.interval),
                to = yaml_duration(self.timers.timeout),
                rc = yaml_duration(self.timers.reconnect),
            ));
        }
        y
    }

    /// Starts pod `pod-{n}` running `streams` and waits until its admin endpoint answers;
    /// returns its index.
    pub async fn add_pod(&mut self, streams: &[&str]) -> usize {
        let url = self.redis_url.clone();
        self.add_pod_via(streams, &url).await
    }

    /// [`Fleet::add_pod`], reaching the store at `redis_url` (e.g. through a [`crate::relay`]
    /// that can cut this pod alone off Redis).
    pub async fn add_pod_via(&mut self, streams: &[&str], redis_url: &str) -> usize {
        let i = self.pods.len();
        let name = format!("pod-{i}");
        let listen: SocketAddr = ([127, 0, 0, 1], self.port()).into();
        let admin: SocketAddr = ([127, 0, 0, 1], self.port()).into();
        let config = self.dir.path().join(format!("{name}.yaml"));
        write_atomically(
            &config,
            &self.yaml(&name, listen, admin, streams, redis_url),
        );
        let proc = spawn(&config);
        self.pods.push(Sidecar {
            name,
            listen,
            admin,
            config,
            proc,
        });
        self.admins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(admin);
        self.wait_up(i).await;
        i
    }

    /// Starts pod `i` again (after it was killed) with the same config and ports.
    pub async fn restart(&mut self, i: usize) {
        assert!(
            !self.pods[i].proc.is_running(),
            "{} still runs",
            self.pods[i].name
        );
        self.pods[i].proc = spawn(&self.pods[i].config);
        self.wait_up(i).await;
    }

    async fn wait_up(&mut self, i: usize) {
        let deadline = Instant::now() + START_BOUND;
        loop {
            let pod = &mut self.pods[i];
            assert!(
                pod.proc.is_running(),
                "{} exited at start; stderr:\n{}",
                pod.name,
                pod.proc.stderr_text()
            );
            match status(pod.admin).await {
                Ok(_) => return,
                Err(e) if Instant::now() > deadline => panic!(
                    "{} did not serve /status within {START_BOUND:?}: {e}; stderr:\n{}",
                    pod.name,
                    pod.proc.stderr_text()
                ),
                Err(_) => sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// SIGKILLs pod `i` and waits for it to be gone.
    pub async fn kill(&mut self, i: usize) {
        self.pods[i].signal("KILL");
        let pod = &mut self.pods[i];
        assert!(
            pod.proc.wait(Duration::from_secs(5)).await.is_some(),
            "{} survived SIGKILL",
            pod.name
        );
    }

    /// `/status` of pod `i`, or why not (bounded: a frozen or dead pod answers nothing).
    pub async fn status(&self, i: usize) -> Result<Value, String> {
        bounded_status(self.pods[i].admin).await
    }

    /// `/metrics` of pod `i`.
    pub async fn metrics(&self, i: usize) -> Result<String, String> {
        match timeout(ADMIN_BOUND, http_get(self.pods[i].admin, "/metrics")).await {
            Ok(Ok((200, body))) => Ok(body),
            Ok(Ok((code, body))) => Err(format!("/metrics answered {code}: {body}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no /metrics answer within {ADMIN_BOUND:?}")),
        }
    }

    /// Sockets the emulator has open on stream `name` now.
    pub fn connections(&self, name: &str) -> usize {
        self.emu
            .stats()
            .streams
            .get(name)
            .map_or(0, |s| s.connections)
    }

    /// Events the emulator produced on stream `name` so far (the last sequence number).
    pub fn emitted(&self, name: &str) -> u64 {
        self.emu.stats().streams.get(name).map_or(0, |s| s.emitted)
    }

    /// One concurrent round of `/status` over `pods`: each pod's entry of `stream` (`None` for
    /// a pod that did not answer).
    pub async fn round(&self, pods: &[usize], stream: &str) -> Vec<(usize, Option<Value>)> {
        let admins: Vec<SocketAddr> = pods.iter().map(|&i| self.pods[i].admin).collect();
        round(&admins, stream)
            .await
            .into_iter()
            .zip(pods)
            .map(|(e, &i)| (i, e))
            .collect()
    }

    /// Waits until one of `pods` reports stream `name` as owner and ACTIVE; returns the pod,
    /// its entry and when it was seen. Fails the test after `bound`.
    pub async fn wait_owner(
        &self,
        pods: &[usize],
        name: &str,
        bound: Duration,
    ) -> (usize, Value, Instant) {
        let id = stream_id(name);
        let deadline = Instant::now() + bound;
        loop {
            let r = self.round(pods, &id).await;
            let seen = Instant::now();
            if let Some((i, Some(e))) = r.iter().find(|(_, e)| e.as_ref().is_some_and(owns_active))
            {
                return (*i, e.clone(), seen);
            }
            assert!(
                Instant::now() < deadline,
                "no pod of {pods:?} owns {id} ACTIVE within {bound:?}; last round: {r:?}\n{}",
                self.diagnostics()
            );
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last lines of every pod's stderr, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        for p in &self.pods {
            let lines = p.proc.stderr.all();
            let keep = if std::env::var_os("STREAMKEEPER_E2E_SIDECAR_LOG").is_some() {
                lines.len()
            } else {
                40
            };
            let tail = &lines[lines.len().saturating_sub(keep)..];
            let _ = writeln!(out, "---- {} (last {} lines) ----", p.name, tail.len());
            for l in tail {
                let _ = writeln!(out, "{l}");
            }
        }
        out
    }
}

/// Starts `streamkeeper-sidecar --config FILE` (the lean binary pods run); its log filter is `info`, or
/// `$STREAMKEEPER_E2E_SIDECAR_LOG` (e.g. `streamkeeper_sidecar=debug,info`) to see more.
fn spawn(config: &std::path::Path) -> Running {
    let path = config.to_str().expect("a UTF-8 temp path");
    let log = std::env::var("STREAMKEEPER_E2E_SIDECAR_LOG").unwrap_or_else(|_| "info".into());
    Running::spawn_sidecar(&[], path, &log)
}

async fn bounded_status(admin: SocketAddr) -> Result<Value, String> {
    timeout(ADMIN_BOUND, status(admin))
        .await
        .unwrap_or_else(|_| Err(format!("no /status answer within {ADMIN_BOUND:?}")))
}

/// The entry of `stream` on every admin endpoint, asked concurrently.
async fn round(admins: &[SocketAddr], stream: &str) -> Vec<Option<Value>> {
    let asks = admins.iter().map(|a| bounded_status(*a));
    futures_util::future::join_all(asks)
        .await
        .into_iter()
        .map(|r| r.ok().and_then(|doc| stream_entry(&doc, stream).cloned()))
        .collect()
}

/// Whether a `/status` entry says this pod holds the lease.
pub fn owns(entry: &Value) -> bool {
    entry["owner"] == true
}

/// Whether a `/status` entry says this pod holds the lease and streams.
pub fn owns_active(entry: &Value) -> bool {
    owns(entry) && entry["state"] == "ACTIVE"
}

/// The value of a metric without labels in Prometheus text.
pub fn plain_metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// What the [`Sampler`] saw.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    /// Emulator snapshots taken.
    pub socket_samples: u64,
    /// The most sockets open at once on the watched streams, over all samples.
    pub max_sockets: usize,
    /// Snapshots with exactly the allowed number of sockets open.
    pub at_limit: u64,
    /// The longest stretch during which more than one socket was open on the watched streams
    /// (the upstream holding sockets of two pods at once).
    pub longest_multi: Duration,
    /// `/status` rounds taken.
    pub rounds: u64,
    /// Rounds in which two pods said they owned the stream (a handover seen mid-way); a
    /// violation only when it outlasts [`DOUBLE_OWNER_GRACE`] or the fences are equal.
    pub transient_double_owners: u64,
    /// Everything that broke a rule, with when.
    pub violations: Vec<String>,
}

/// How long two pods may both report owner (with different fences) before it counts: the
/// rounds are not atomic, so a round that straddles a handover shows both.
pub const DOUBLE_OWNER_GRACE: Duration = Duration::from_millis(250);

struct SamplerShared {
    samples: Mutex<Samples>,
    max_total: AtomicUsize,
    stop: AtomicBool,
    started: Instant,
}

/// Samples, in the background, the emulator's open sockets on some streams (every ~10 ms: the
/// emulator is in-process, a snapshot is atomic) and, for one stream, every pod's `/status`
/// (every ~50 ms), recording every sample that breaks a rule: more sockets than allowed, or two
/// pods owning the stream.
pub struct Sampler {
    shared: Arc<SamplerShared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Sampler {
    /// Samples streams `names` (emulator names), allowing `max_total` sockets on them together;
    /// with `owner_of`, also every pod's `/status` entry of that stream id.
    pub fn start(
        fleet: &Fleet,
        names: &[&str],
        max_total: usize,
        owner_of: Option<String>,
    ) -> Self {
        let shared = Arc::new(SamplerShared {
            samples: Mutex::default(),
            max_total: AtomicUsize::new(max_total),
            stop: AtomicBool::new(false),
            started: Instant::now(),
        });
        let mut tasks = Vec::new();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        {
            let shared = Arc::clone(&shared);
            let emu = Arc::clone(&fleet.emu);
            tasks.push(tokio::spawn(async move {
                let mut multi_since: Option<Instant> = None;
                while !shared.stop.load(Ordering::Relaxed) {
                    let stats = emu.stats();
                    let per: Vec<(String, usize)> = names
                        .iter()
                        .map(|n| (n.clone(), stats.streams.get(n).map_or(0, |s| s.connections)))
                        .collect();
                    let total: usize = per.iter().map(|(_, c)| c).sum();
                    let allowed = shared.max_total.load(Ordering::Relaxed);
                    {
                        let mut s = lock(&shared.samples);
                        s.socket_samples += 1;
                        s.max_sockets = s.max_sockets.max(total);
                        if total == allowed {
                            s.at_limit += 1;
                        }
                        let now = Instant::now();
                        if total > 1 {
                            let since = *multi_since.get_or_insert(now);
                            s.longest_multi = s.longest_multi.max(now - since);
                        } else {
                            multi_since = None;
                        }
                        if total > allowed {
                            let at = shared.started.elapsed();
                            s.violations.push(format!(
                                "+{at:.3?}: {total} upstream sockets open (allowed {allowed}): {per:?}"
                            ));
                        }
                    }
                    sleep(Duration::from_millis(10)).await;
                }
            }));
        }
        if let Some(stream) = owner_of {
            let shared = Arc::clone(&shared);
            let admins = Arc::clone(&fleet.admins);
            tasks.push(tokio::spawn(async move {
                let mut suspect: Option<Instant> = None;
                while !shared.stop.load(Ordering::Relaxed) {
                    let addrs = lock(&admins).clone();
                    let entries = round(&addrs, &stream).await;
                    let owners: Vec<(usize, Value)> = entries
                        .iter()
                        .enumerate()
                        .filter_map(|(i, e)| {
                            e.as_ref()
                                .filter(|e| owns(e))
                                .map(|e| (i, e["fence"].clone()))
                        })
                        .collect();
                    let now = Instant::now();
                    {
                        let mut s = lock(&shared.samples);
                        s.rounds += 1;
                        if owners.len() > 1 {
                            s.transient_double_owners += 1;
                            let at = shared.started.elapsed();
                            let fences: HashSet<String> =
                                owners.iter().map(|(_, f)| f.to_string()).collect();
                            let since = *suspect.get_or_insert(now);
                            if fences.len() < owners.len() {
                                s.violations.push(format!(
                                "+{at:.3?}: two pods own {stream} under the same fence: {owners:?}"
                            ));
                            } else if now - since >= DOUBLE_OWNER_GRACE {
                                s.violations.push(format!(
                                    "+{at:.3?}: pods {owners:?} have all owned {stream} for {:?}",
                                    now - since
                                ));
                            }
                        } else {
                            suspect = None;
                        }
                    }
                    sleep(Duration::from_millis(40)).await;
                }
            }));
        }
        Self { shared, tasks }
    }

    /// Allows `n` sockets from now on (e.g. a frozen pod's socket stays open in the kernel).
    pub fn allow_sockets(&self, n: usize) {
        self.shared.max_total.store(n, Ordering::Relaxed);
    }

    /// What was seen so far.
    pub fn samples(&self) -> Samples {
        lock(&self.shared.samples).clone()
    }

    /// Stops sampling and returns what was seen.
    pub async fn finish(mut self) -> Samples {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        self.samples()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One event handed to an app.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Its sequence number (the emulator's id is `{stream}:{seq}`).
    pub seq: u64,
    /// The pod whose app got it.
    pub pod: usize,
    /// When the test read it: the app had acked it already (it acks before it hands it on).
    pub at: Instant,
}

#[derive(Debug, Default)]
struct LedgerState {
    deliveries: Vec<Delivery>,
    dropped: Vec<(usize, String, Instant)>,
    gaps: Vec<(usize, String)>,
    ended: Vec<(usize, String, Instant)>,
}

/// What an app heard that ends its stream on its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// A `dropped` frame with this reason.
    Dropped(String),
    /// Its socket ended (a close frame, a reset, the end of the stream): why.
    Ended(String),
}

/// Every event delivered to every app of one stream, across pods, with when.
#[derive(Debug, Default)]
pub struct Ledger {
    state: Mutex<LedgerState>,
    changed: Notify,
}

/// A crash of the owner (SIGKILL or SIGSTOP): acks the app sent just before it may never have
/// reached that pod, so those events come again from the next owner (at-least-once is all a
/// crash allows). Only such ids may come twice: above the checkpoint the next owner resumed
/// from, first delivered by the crashed pod (before [`until`](Self::until)) and acked within
/// `lag` before the crash, then once by another pod after it.
#[derive(Debug, Clone, Copy)]
pub struct Crash {
    /// The pod that was killed or frozen.
    pub pod: usize,
    /// When the owner was killed or frozen: taken just before the signal, so the pod may still
    /// have handed events to its app in the moment `kill(1)` took to start.
    pub at: Instant,
    /// The crashed pod can have sent nothing its app read after this: the instant its app's
    /// socket ended (SIGKILL: every byte sent before the death is read before the end), or the
    /// instant SIGCONT was sent (SIGSTOP: a stopped pod sends nothing, and a delivery after the
    /// wake is one the woken pod must not make). Its app may read events after
    /// [`at`](Self::at) that it sent before the signal took effect.
    pub until: Instant,
    /// The sequence number of the checkpoint the next owner resumed from.
    pub checkpoint: u64,
    /// How far behind the app's acks the checkpoint may be.
    pub lag: Duration,
}

/// What the ledger proves.
#[derive(Debug, Default)]
pub struct LedgerReport {
    /// Sequence numbers checked (first acked..=last emitted).
    pub range: (u64, u64),
    /// Deliveries in all.
    pub deliveries: usize,
    /// Ids delivered again although acked before (violations).
    pub redelivered: Vec<u64>,
    /// Every delivery of the first few `redelivered` ids: (seq, [(pod, when, relative to the
    /// crash or to the first delivery)]), for the failure message.
    pub redelivered_detail: Vec<(u64, Vec<(usize, String)>)>,
    /// Ids delivered again because their ack was in flight at a crash (allowed, listed).
    pub in_flight: Vec<u64>,
    /// Ids never delivered (violations).
    pub lost: Vec<u64>,
    /// `gap` frames (events lost upstream: violations here).
    pub gaps: Vec<(usize, String)>,
    /// `dropped` frames by pod.
    pub dropped: Vec<(usize, String)>,
}

impl LedgerReport {
    /// The violations, if any, as one message.
    pub fn problems(&self) -> Option<String> {
        let mut out = String::new();
        if !self.redelivered.is_empty() {
            let _ = writeln!(
                out,
                "{} acked ids delivered again: {:?}; their deliveries (pod, when): {:?}",
                self.redelivered.len(),
                first_few(&self.redelivered),
                self.redelivered_detail
            );
        }
        if !self.lost.is_empty() {
            let _ = writeln!(
                out,
                "{} ids in {:?} never delivered: {:?}",
                self.lost.len(),
                self.range,
                first_few(&self.lost)
            );
        }
        if !self.gaps.is_empty() {
            let _ = writeln!(out, "gap frames: {:?}", self.gaps);
        }
        (!out.is_empty()).then_some(out)
    }
}

fn first_few(v: &[u64]) -> Vec<u64> {
    v.iter().copied().take(20).collect()
}

impl Ledger {
    /// A new, shared ledger.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Connects an app (acking everything) to pod `pod`'s endpoint for `stream` and records
    /// what it reads until its socket ends.
    pub async fn tap(self: &Arc<Self>, fleet: &Fleet, pod: usize, stream: &str) -> JoinHandle<()> {
        let id: StreamId = stream.parse().expect("a stream id");
        let mut app = App::connect(fleet.pods[pod].listen, &id, AckMode::All).await;
        let me = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let Some(seen) = app.try_recv(Duration::from_secs(3600)).await else {
                    return;
                };
                let now = Instant::now();
                let mut st = lock(&me.state);
                match seen {
                    FromServer::Frame(AppFrame::Event { id, .. }) => {
                        let seq = id
                            .as_str()
                            .rsplit(':')
                            .next()
                            .and_then(|n| n.parse().ok())
                            .unwrap_or_else(|| panic!("{id:?} is not an emulator event id"));
                        st.deliveries.push(Delivery { seq, pod, at: now });
                    }
                    FromServer::Frame(AppFrame::Dropped { reason, .. }) => {
                        st.dropped.push((pod, reason.as_str().to_owned(), now))
                    }
                    FromServer::Frame(AppFrame::Gap { reason, .. }) => st.gaps.push((pod, reason)),
                    FromServer::Frame(_) | FromServer::Unreadable(_) => {}
                    FromServer::Closed { code, reason } => {
                        st.ended
                            .push((pod, format!("closed {code:?} {reason}"), now))
                    }
                    FromServer::Ended(why) => {
                        st.ended.push((pod, why, now));
                        drop(st);
                        me.changed.notify_waiters();
                        return;
                    }
                }
                drop(st);
                me.changed.notify_waiters();
            }
        })
    }

    /// Deliveries so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.state).deliveries.clone()
    }

    /// The highest sequence number delivered.
    pub fn max_seq(&self) -> u64 {
        lock(&self.state)
            .deliveries
            .iter()
            .map(|d| d.seq)
            .max()
            .unwrap_or(0)
    }

    /// `dropped` frames so far: (pod, reason, when).
    pub fn dropped(&self) -> Vec<(usize, String, Instant)> {
        lock(&self.state).dropped.clone()
    }

    /// App sockets that ended: (pod, why, when).
    pub fn ended(&self) -> Vec<(usize, String, Instant)> {
        lock(&self.state).ended.clone()
    }

    /// Waits until `pred` holds of the deliveries, at most `bound`; whether it did.
    pub async fn wait(&self, bound: Duration, pred: impl Fn(&[Delivery]) -> bool) -> bool {
        self.wait_until(bound, |st| pred(&st.deliveries).then_some(()))
            .await
            .is_some()
    }

    /// Waits, at most `bound`, for the first thing pod `pod`'s app heard at or after `since`
    /// that ends its stream there: a `dropped` frame or the end of its socket (whichever came
    /// first), with when the app read it.
    pub async fn wait_heard(
        &self,
        pod: usize,
        since: Instant,
        bound: Duration,
    ) -> Option<(Heard, Instant)> {
        self.wait_until(bound, |st| {
            let dropped = st
                .dropped
                .iter()
                .find(|(p, _, at)| *p == pod && *at >= since)
                .map(|(_, reason, at)| (Heard::Dropped(reason.clone()), *at));
            let ended = st
                .ended
                .iter()
                .find(|(p, _, at)| *p == pod && *at >= since)
                .map(|(_, why, at)| (Heard::Ended(why.clone()), *at));
            match (dropped, ended) {
                (Some(d), Some(e)) => Some(if d.1 <= e.1 { d } else { e }),
                (d, e) => d.or(e),
            }
        })
        .await
    }

    /// Waits, at most `bound`, until pod `pod`'s app socket ended at or after `since`; when
    /// the app saw it end (after every frame the pod sent before).
    pub async fn wait_ended(&self, pod: usize, since: Instant, bound: Duration) -> Option<Instant> {
        self.wait_until(bound, |st| {
            st.ended
                .iter()
                .find(|(p, _, at)| *p == pod && *at >= since)
                .map(|(_, _, at)| *at)
        })
        .await
    }

    /// Waits, at most `bound`, until `f` finds something in the ledger.
    async fn wait_until<T>(
        &self,
        bound: Duration,
        f: impl Fn(&LedgerState) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + bound;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(hit) = f(&lock(&self.state)) {
                return Some(hit);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return f(&lock(&self.state));
            }
        }
    }

    /// Checks every id from the first delivered to `last` (the last emitted, once everything
    /// arrived): each delivered, none delivered again (beyond what `crash` explains).
    pub fn check(&self, last: u64, crash: Option<Crash>) -> LedgerReport {
        let st = lock(&self.state);
        let first = st.deliveries.iter().map(|d| d.seq).min().unwrap_or(0);
        let mut by_seq: BTreeMap<u64, Vec<&Delivery>> = BTreeMap::new();
        for d in &st.deliveries {
            by_seq.entry(d.seq).or_default().push(d);
        }
        let mut report = LedgerReport {
            range: (first, last),
            deliveries: st.deliveries.len(),
            gaps: st.gaps.clone(),
            dropped: st.dropped.iter().map(|(p, r, _)| (*p, r.clone())).collect(),
            ..LedgerReport::default()
        };
        report.lost = (first..=last).filter(|s| !by_seq.contains_key(s)).collect();
        let origin = crash.map_or(
            st.deliveries.first().map_or_else(Instant::now, |d| d.at),
            |c| c.at,
        );
        for (seq, ds) in &by_seq {
            if ds.len() < 2 {
                continue;
            }
            let explained = crash.is_some_and(|c| {
                let (first, again) = (ds[0], ds[1]);
                ds.len() == 2
                    && *seq > c.checkpoint
                    && first.pod == c.pod
                    && first.at <= c.until
                    && c.at.saturating_duration_since(first.at) <= c.lag
                    && again.pod != c.pod
                    && again.at > c.at
            });
            if explained {
                report.in_flight.push(*seq);
            } else {
                report.redelivered.push(*seq);
                if report.redelivered_detail.len() < 5 {
                    let when = ds
                        .iter()
                        .map(|d| (d.pod, signed_ms(d.at, origin)))
                        .collect();
                    report.redelivered_detail.push((*seq, when));
                }
            }
        }
        report
    }
}

/// `at` relative to `origin`, in milliseconds with a sign (`+12ms`, `-3ms`).
fn signed_ms(at: Instant, origin: Instant) -> String {
    match at.checked_duration_since(origin) {
        Some(d) => format!("+{}ms", d.as_millis()),
        None => format!("-{}ms", (origin - at).as_millis()),
    }
}

/// The sequence number in an emulator event id (`{stream}:{seq}`).
pub fn seq_of(id: &str) -> Option<u64> {
    id.rsplit(':').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(deliveries: &[(u64, usize, u64)], base: Instant) -> Ledger {
        let l = Ledger::default();
        lock(&l.state).deliveries = deliveries
            .iter()
            .map(|&(seq, pod, ms)| Delivery {
                seq,
                pod,
                at: base + Duration::from_millis(ms),
            })
            .collect();
        l
    }

    #[test]
    fn the_ledger_finds_losses_and_redeliveries_and_excuses_only_acks_in_flight_at_a_crash() {
        let base = Instant::now();
        // Pod 0 delivers 1..=5 (5 read by its app after the signal was sent, as bytes sent before
        // the signal took effect), crashes at 500 ms having checkpointed 3; pod 1 resumes after 3.
        let l = ledger(
            &[
                (1, 0, 100),
                (2, 0, 200),
                (3, 0, 300),
                (4, 0, 400),
                (5, 0, 520),
                (4, 1, 1600),
                (5, 1, 1650),
                (6, 1, 1700),
            ],
            base,
        );
        let crash = Crash {
            pod: 0,
            at: base + Duration::from_millis(500),
            until: base + Duration::from_millis(600),
            checkpoint: 3,
            lag: Duration::from_secs(1),
        };
        let r = l.check(6, Some(crash));
        assert_eq!((r.in_flight.clone(), r.problems()), (vec![4, 5], None));
        // Without a crash, or with a checkpoint that covered them, they are violations.
        assert_eq!(l.check(6, None).redelivered, vec![4, 5]);
        let covered = Crash {
            checkpoint: 5,
            ..crash
        };
        assert_eq!(l.check(6, Some(covered)).redelivered, vec![4, 5]);
        // A checkpoint that trails the acks by more than the lag is a violation too.
        let stale = Crash {
            lag: Duration::from_millis(60),
            ..crash
        };
        assert_eq!(l.check(6, Some(stale)).redelivered, vec![4]);
        // A delivery by the crashed pod after it can have sent anything (a woken pod that kept
        // streaming), or a crash of the other pod, explains nothing.
        let woke_early = Crash {
            until: base + Duration::from_millis(510),
            ..crash
        };
        assert_eq!(l.check(6, Some(woke_early)).redelivered, vec![5]);
        let other = Crash { pod: 1, ..crash };
        let r = l.check(6, Some(other));
        assert_eq!(r.redelivered, vec![4, 5]);
        assert_eq!(
            r.redelivered_detail[0].1,
            [(0, "-100ms".into()), (1, "+1100ms".into())]
        );
        // Ids never delivered up to the last emitted are lost.
        assert_eq!(l.check(8, None).lost, vec![7, 8]);
    }
}
