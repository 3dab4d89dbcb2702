//! Real Redis for the process-level tests: a single `redis-server`, or a three-master Redis
//! Cluster, on free loopback ports in a temp dir, killed (SIGKILL, by pid) and removed on drop;
//! a `redis-cli monitor` recorder that rebuilds the history of a stream's lease and checkpoint
//! keys; and a subscriber to `streamkeeper:transitions`.
//!
//! `redis-server` and `redis-cli` must be on PATH: a machine without them fails the tests with a
//! message saying how to install them (scripts/install-test-deps does it in CI); nothing skips.
//! (Adapted from crates/coord/tests/common, which the coord crate's own tests use.)

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::Duration,
};

use futures_util::StreamExt;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    sync::Notify,
    task::JoinHandle,
    time::{Instant, timeout},
};

const READY_WITHIN: Duration = Duration::from_secs(15);
const CLUSTER_OK_WITHIN: Duration = Duration::from_secs(30);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Fails the test, saying how to install it, when `binary` cannot run.
pub fn need(binary: &str) {
    if let Err(e) = Command::new(binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        panic!(
            "`{binary}` is not runnable ({e}). These tests need a real Redis: install it \
             (Debian/Ubuntu: `apt-get install -y redis-server redis-tools`, or \
             scripts/install-test-deps) and rerun."
        );
    }
}

/// A port `p` such that `p` and `p + 10000` (a cluster node's bus port) are free on 127.0.0.1.
fn free_port_pair() -> u16 {
    let seed = std::process::id().wrapping_mul(7919);
    for _ in 0..500 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20000 + ((seed.wrapping_add(n.wrapping_mul(104_729))) % 25000) as u16;
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10000) {
            return port;
        }
    }
    panic!("no free port pair found on 127.0.0.1");
}

/// Sends one command to `port` (blocking, bounded) and returns the reply or an error text.
pub fn command(port: u16, args: &[&str]) -> Result<redis::Value, String> {
    let client =
        redis::Client::open(format!("redis://127.0.0.1:{port}")).map_err(|e| e.to_string())?;
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(1))
        .map_err(|e| e.to_string())?;
    con.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut con).map_err(|e| e.to_string())
}

/// A reply as text (`None` for nil); anything not a string as its debug text.
pub fn value_text(v: redis::Value) -> Option<String> {
    match v {
        redis::Value::Nil => None,
        redis::Value::SimpleString(s) => Some(s),
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(&b).into_owned()),
        redis::Value::VerbatimString { text, .. } => Some(text),
        other => Some(format!("{other:?}")),
    }
}

/// `GET key` on `port`: `Ok(None)` when the key does not exist.
pub fn get(port: u16, key: &str) -> Result<Option<String>, String> {
    command(port, &["GET", key]).map(value_text)
}

/// One `redis-server` process, no persistence (a restart comes back empty).
#[derive(Debug)]
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// A fresh single node.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A fresh node with extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        need("redis-server");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port_pair();
            let dir = std::env::temp_dir().join(format!(
                "streamkeeper-e2e-redis-{}-{}-{port}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
            let mut s = Self {
                port,
                dir,
                extra: extra.iter().map(|s| s.to_string()).collect(),
                child: None,
            };
            match s.spawn() {
                Ok(()) => return s,
                Err(e) => last = e, // the port was taken meanwhile: try another
            }
        }
        panic!("redis-server did not start: {last}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = self.dir.join("redis.log");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server: {e}"))?;
        self.child = Some(child);
        let deadline = std::time::Instant::now() + READY_WITHIN;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "redis-server exited ({status}) on port {}: {}",
                    self.port,
                    self.log()
                ));
            }
            match command(self.port, &["PING"]) {
                Ok(_) => return Ok(()),
                Err(e) if std::time::Instant::now() > deadline => {
                    self.stop();
                    return Err(format!(
                        "redis-server on port {} did not answer PING: {e}",
                        self.port
                    ));
                }
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// `redis://127.0.0.1:{port}`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: a crash, no goodbye to clients) and waits for it; its data
    /// is gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the server process runs.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the server again on the same port, empty (no persistence); fails the test if it
    /// does not answer PING in time.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn() {
            panic!("redis-server did not restart: {e}");
        }
    }

    /// The server's log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three masters, no replicas, all 16384 slots assigned.
#[derive(Debug)]
pub struct RedisCluster {
    /// The nodes.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three `--cluster-enabled yes` nodes, joins them with
    /// `redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes` and waits until every
    /// node reports `cluster_state:ok`.
    pub fn start() -> Self {
        need("redis-server");
        need("redis-cli");
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        ];
        let nodes: Vec<RedisServer> = (0..3).map(|_| RedisServer::start_with(&args)).collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("cannot run redis-cli: {e}"),
        }
        let c = Self { nodes };
        c.wait_ok();
        c
    }

    fn wait_ok(&self) {
        let deadline = std::time::Instant::now() + CLUSTER_OK_WITHIN;
        loop {
            let ok = self.nodes.iter().all(|n| {
                command(n.port, &["CLUSTER", "INFO"])
                    .ok()
                    .and_then(value_text)
                    .is_some_and(|i| {
                        i.contains("cluster_state:ok") && i.contains("cluster_known_nodes:3")
                    })
            });
            if ok {
                return;
            }
            if std::time::Instant::now() > deadline {
                let logs: Vec<String> = self.nodes.iter().map(RedisServer::log).collect();
                panic!(
                    "the cluster did not reach cluster_state:ok: {}",
                    logs.join("\n----\n")
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3`
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// The port of the master that serves `key`'s slot.
    pub fn node_of(&self, key: &str) -> u16 {
        let first = self.nodes[0].port;
        let slot = match command(first, &["CLUSTER", "KEYSLOT", key]) {
            Ok(redis::Value::Int(s)) => s,
            other => panic!("CLUSTER KEYSLOT {key}: {other:?}"),
        };
        let slots = match command(first, &["CLUSTER", "SLOTS"]) {
            Ok(redis::Value::Array(v)) => v,
            other => panic!("CLUSTER SLOTS: {other:?}"),
        };
        for range in slots {
            if let redis::Value::Array(r) = range
                && let (
                    Some(redis::Value::Int(lo)),
                    Some(redis::Value::Int(hi)),
                    Some(redis::Value::Array(node)),
                ) = (r.first(), r.get(1), r.get(2))
                && (*lo..=*hi).contains(&slot)
                && let Some(redis::Value::Int(port)) = node.get(1)
            {
                return *port as u16;
            }
        }
        panic!("no node serves slot {slot}");
    }
}

/// `sk:{acme}:lease:{stream}` (DESIGN.md's key layout; the braces are the hash tag).
pub fn lease_key(tenant: &str, stream: &str) -> String {
    format!("sk:{{{tenant}}}:lease:{stream}")
}

/// `sk:{acme}:ckpt:{stream}`
pub fn ckpt_key(tenant: &str, stream: &str) -> String {
    format!("sk:{{{tenant}}}:ckpt:{stream}")
}

/// One line of `MONITOR` output.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorLine {
    /// Who sent it: a client address, or `lua` for a command a script ran.
    pub source: String,
    /// The command and its arguments.
    pub args: Vec<String>,
}

impl MonitorLine {
    /// Parses `1700000000.123456 [0 127.0.0.1:5000] "SET" "k" "v"`; `None` for other lines.
    pub fn parse(line: &str) -> Option<Self> {
        let (_ts, rest) = line.split_once(" [")?;
        let (head, rest) = rest.split_once("] ")?;
        let source = head.split_once(' ')?.1.to_owned();
        Some(Self {
            source,
            args: parse_quoted(rest)?,
        })
    }

    /// Whether a script ran it.
    pub fn from_lua(&self) -> bool {
        self.source == "lua"
    }

    /// The command, upper-cased.
    pub fn command(&self) -> String {
        self.args
            .first()
            .map(|c| c.to_ascii_uppercase())
            .unwrap_or_default()
    }
}

/// The `"..." "..."` argument list of a MONITOR line (redis-cli escapes: `\"`, `\\`, `\n`,
/// `\r`, `\t`, `\xHH`).
fn parse_quoted(s: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        match chars.next() {
            None => return Some(out),
            Some('"') => {}
            Some(_) => return None,
        }
        let mut arg = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => match chars.next()? {
                    'n' => arg.push('\n'),
                    'r' => arg.push('\r'),
                    't' => arg.push('\t'),
                    'x' => {
                        let hex: String = [chars.next()?, chars.next()?].iter().collect();
                        arg.push(char::from(u8::from_str_radix(&hex, 16).ok()?));
                    }
                    c => arg.push(c),
                },
                c => arg.push(c),
            }
        }
        out.push(arg);
    }
}

/// A write to a stream's lease or checkpoint key, in the order Redis executed it.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyWrite {
    /// The lease string was set (`{fence}:{owner}`, `...:released` for a handover).
    Lease {
        /// The fence written.
        fence: u64,
        /// The owner written.
        owner: String,
        /// A release tombstone.
        released: bool,
    },
    /// The checkpoint was set by a script called with `fence` for this stream.
    Checkpoint {
        /// The event id written.
        id: String,
        /// The fence argument of the script call that wrote it; `None` when the write cannot
        /// be attributed to a fence-carrying checkpoint call (that alone is a finding).
        fence: Option<u64>,
        /// The client that called the script.
        client: String,
    },
    /// A checkpoint script was called for this stream (a write, or a refused attempt).
    CheckpointCall {
        /// The fence argument.
        fence: u64,
        /// The event id argument.
        id: String,
        /// The caller.
        client: String,
    },
}

/// `redis-cli -p PORT monitor`, running until dropped: every command the server executes,
/// scripts' own commands included (as `[0 lua]` lines right after the script call that ran
/// them: a script is atomic, so nothing interleaves).
#[derive(Debug)]
pub struct Monitor {
    lines: Arc<Mutex<Vec<String>>>,
    changed: Arc<Notify>,
    child: tokio::process::Child,
    reader: JoinHandle<()>,
}

impl Monitor {
    /// Attaches to the server on `port`; returns once the server acknowledged MONITOR.
    pub async fn start(port: u16) -> Self {
        need("redis-cli");
        let mut child = tokio::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "monitor"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-cli monitor: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let changed = Arc::new(Notify::new());
        let pipe = child.stdout.take().expect("piped stdout");
        let (ok_tx, ok_rx) = tokio::sync::oneshot::channel();
        let reader = {
            let lines = Arc::clone(&lines);
            let changed = Arc::clone(&changed);
            tokio::spawn(async move {
                let mut reader = BufReader::new(pipe).lines();
                let mut ok = Some(ok_tx);
                while let Ok(Some(line)) = reader.next_line().await {
                    if let Some(tx) = ok.take() {
                        let _ = tx.send(line);
                        continue;
                    }
                    lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                    changed.notify_waiters();
                }
            })
        };
        match timeout(Duration::from_secs(5), ok_rx).await {
            Ok(Ok(first)) if first.trim() == "OK" => {}
            other => panic!("redis-cli monitor on port {port} did not start: {other:?}"),
        }
        Self {
            lines,
            changed,
            child,
            reader,
        }
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits at most `bound` until the history of `(lease, ckpt)` satisfies `pred`; returns it
    /// either way.
    pub async fn wait_history(
        &self,
        lease: &str,
        ckpt: &str,
        bound: Duration,
        pred: impl Fn(&[KeyWrite]) -> bool,
    ) -> Vec<KeyWrite> {
        let deadline = Instant::now() + bound;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let h = history(&self.lines(), lease, ckpt);
            if pred(&h) || tokio::time::timeout_at(deadline, notified).await.is_err() {
                return h;
            }
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        self.reader.abort();
    }
}

/// The writes to `lease` and `ckpt` in MONITOR `lines`, in execution order. A checkpoint write
/// (a script's `MSET`/`SET` of `ckpt`) is attributed to the script call just before it, whose
/// key/argument pairs (lease, ckpt) / (fence, id) carry the fence.
pub fn history(lines: &[String], lease: &str, ckpt: &str) -> Vec<KeyWrite> {
    let mut out = Vec::new();
    // The last client command if it was a script call: (client, fence of our stream).
    let mut script: Option<(String, Option<(u64, String)>)> = None;
    for raw in lines {
        let Some(line) = MonitorLine::parse(raw) else {
            continue;
        };
        let cmd = line.command();
        if !line.from_lua() {
            script = None;
            if cmd == "EVALSHA" || cmd == "EVAL" {
                let call = checkpoint_call(&line.args, lease, ckpt);
                if let Some((fence, id)) = &call {
                    out.push(KeyWrite::CheckpointCall {
                        fence: *fence,
                        id: id.clone(),
                        client: line.source.clone(),
                    });
                }
                script = Some((line.source.clone(), call));
                continue;
            }
            // A client writing the keys directly (no script, no fence check) is recorded
            // too, unattributed.
        }
        let args = &line.args;
        match cmd.as_str() {
            "SET" if args.get(1).map(String::as_str) == Some(lease) => {
                if let Some(v) = args.get(2) {
                    let mut parts = v.splitn(3, ':');
                    let fence = parts.next().and_then(|f| f.parse().ok()).unwrap_or(0);
                    let owner = parts.next().unwrap_or_default().to_owned();
                    let released = parts.next() == Some("released");
                    out.push(KeyWrite::Lease {
                        fence,
                        owner,
                        released,
                    });
                }
            }
            "SET" | "MSET" => {
                for pair in args[1..].chunks(2) {
                    if pair[0] == ckpt
                        && let Some(id) = pair.get(1)
                    {
                        let fence = script
                            .as_ref()
                            .filter(|_| line.from_lua())
                            .and_then(|(_, call)| call.as_ref())
                            .filter(|(_, called_id)| called_id == id)
                            .map(|(f, _)| *f);
                        let client = match (&script, line.from_lua()) {
                            (Some((c, _)), true) => c.clone(),
                            _ => line.source.clone(),
                        };
                        out.push(KeyWrite::Checkpoint {
                            id: id.clone(),
                            fence,
                            client,
                        });
                    }
                    if cmd == "SET" {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Checks a [`history`]: every checkpoint write was made by a script called with the fence
/// that held the lease at that moment (the last lease write before it, not a release). Returns
/// the writes that break it.
pub fn fence_violations(history: &[KeyWrite]) -> Vec<String> {
    let mut holder: Option<(u64, String, bool)> = None;
    let mut out = Vec::new();
    for (i, w) in history.iter().enumerate() {
        match w {
            KeyWrite::Lease {
                fence,
                owner,
                released,
            } => holder = Some((*fence, owner.clone(), *released)),
            KeyWrite::Checkpoint { id, fence, client } => match (&holder, fence) {
                (Some((held, _, false)), Some(f)) if held == f => {}
                _ => out.push(format!(
                    "write #{i}: checkpoint {id} by {client} with fence {fence:?} while the lease \
                     was {holder:?}"
                )),
            },
            KeyWrite::CheckpointCall { .. } => {}
        }
    }
    out
}

/// The (fence, id) of our stream in a checkpoint script call `EVALSHA sha n k1..kn a1..`, whose
/// keys come in (lease, ckpt) pairs and arguments in (fence, id) pairs.
fn checkpoint_call(args: &[String], lease: &str, ckpt: &str) -> Option<(u64, String)> {
    let n: usize = args.get(2)?.parse().ok()?;
    let keys = args.get(3..3 + n)?;
    let argv = args.get(3 + n..)?;
    if !n.is_multiple_of(2) || argv.len() != n {
        return None;
    }
    let i = keys
        .chunks(2)
        .position(|pair| pair[0] == lease && pair[1] == ckpt)?;
    Some((argv[2 * i].parse().ok()?, argv[2 * i + 1].clone()))
}

/// Transitions heard on `streamkeeper:transitions`, with when they were heard.
#[derive(Debug)]
pub struct Transitions {
    heard: Arc<Mutex<Vec<(Instant, serde_json::Value)>>>,
    changed: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Transitions {
    /// Subscribes on the node at `url` (`redis://...`; in a cluster any node hears a PUBLISH)
    /// and returns once Redis confirmed the subscription.
    pub async fn subscribe(url: &str) -> Self {
        let client = redis::Client::open(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        let mut pubsub = timeout(Duration::from_secs(5), client.get_async_pubsub())
            .await
            .unwrap_or_else(|_| panic!("{url}: no pub/sub connection within 5 s"))
            .unwrap_or_else(|e| panic!("{url}: pub/sub connection refused: {e}"));
        pubsub
            .subscribe("streamkeeper:transitions")
            .await
            .unwrap_or_else(|e| panic!("SUBSCRIBE streamkeeper:transitions: {e}"));
        let heard = Arc::new(Mutex::new(Vec::new()));
        let changed = Arc::new(Notify::new());
        let task = {
            let heard = Arc::clone(&heard);
            let changed = Arc::clone(&changed);
            tokio::spawn(async move {
                let mut messages = pubsub.into_on_message();
                while let Some(msg) = messages.next().await {
                    let text = String::from_utf8_lossy(msg.get_payload_bytes()).into_owned();
                    let value =
                        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
                    heard
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((Instant::now(), value));
                    changed.notify_waiters();
                }
            })
        };
        Self {
            heard,
            changed,
            task,
        }
    }

    /// Everything heard so far.
    pub fn all(&self) -> Vec<(Instant, serde_json::Value)> {
        self.heard.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The first transition heard at or after `since` that satisfies `pred`, waiting until
    /// `deadline`.
    pub async fn wait_for(
        &self,
        since: Instant,
        deadline: Instant,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<(Instant, serde_json::Value)> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(hit) = self
                .all()
                .into_iter()
                .find(|(at, t)| *at >= since && pred(t))
            {
                return Some(hit);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

impl Drop for Transitions {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_lines_parse_and_checkpoint_writes_are_attributed() {
        let lines: Vec<String> = [
            r#"1.0 [0 127.0.0.1:5000] "EVALSHA" "abc" "3" "sk:{acme}:lease:e2e/q" "sk:{acme}:leases" "sk:{acme}:fence" "e2e/q" "pod-a" "1000""#,
            r#"1.1 [0 lua] "SET" "sk:{acme}:lease:e2e/q" "7:pod-a""#,
            r#"1.2 [0 127.0.0.1:5000] "EVALSHA" "def" "2" "sk:{acme}:lease:e2e/q" "sk:{acme}:ckpt:e2e/q" "7" "q:000000012""#,
            r#"1.3 [0 lua] "MGET" "sk:{acme}:lease:e2e/q""#,
            r#"1.4 [0 lua] "MSET" "sk:{acme}:ckpt:e2e/q" "q:000000012""#,
            r#"1.5 [0 127.0.0.1:5001] "SET" "sk:{acme}:ckpt:e2e/q" "q:\"x\\y""#,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let h = history(&lines, "sk:{acme}:lease:e2e/q", "sk:{acme}:ckpt:e2e/q");
        assert_eq!(
            h,
            vec![
                KeyWrite::Lease {
                    fence: 7,
                    owner: "pod-a".into(),
                    released: false
                },
                KeyWrite::CheckpointCall {
                    fence: 7,
                    id: "q:000000012".into(),
                    client: "127.0.0.1:5000".into()
                },
                KeyWrite::Checkpoint {
                    id: "q:000000012".into(),
                    fence: Some(7),
                    client: "127.0.0.1:5000".into()
                },
                KeyWrite::Checkpoint {
                    id: "q:\"x\\y".into(),
                    fence: None,
                    client: "127.0.0.1:5001".into()
                },
            ]
        );
        let direct = MonitorLine::parse(&lines[5]).expect("parses");
        assert_eq!(direct.args[2], "q:\"x\\y");
        // The script write is under the holder's fence; the direct write is not.
        let found = fence_violations(&h);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("write #3"), "{found:?}");
    }

    #[test]
    fn a_checkpoint_under_an_old_fence_or_a_released_lease_is_a_violation() {
        let lease = |fence, owner: &str, released| KeyWrite::Lease {
            fence,
            owner: owner.into(),
            released,
        };
        let ckpt = |fence| KeyWrite::Checkpoint {
            id: "q:1".into(),
            fence: Some(fence),
            client: "c".into(),
        };
        assert!(fence_violations(&[lease(1, "a", false), ckpt(1)]).is_empty());
        assert_eq!(
            fence_violations(&[lease(1, "a", false), lease(2, "b", false), ckpt(1)]).len(),
            1
        );
        assert_eq!(
            fence_violations(&[lease(1, "a", false), lease(1, "a", true), ckpt(1)]).len(),
            1
        );
        assert_eq!(fence_violations(&[ckpt(1)]).len(), 1);
    }
}
