//! Real Redis servers for tests and benchmarks: one node, or a three-master Redis Cluster, each
//! in its own temporary directory on free loopback ports, killed (SIGKILL, by pid) and removed
//! on drop. `redis-server` and `redis-cli` must be on PATH: a machine without them fails the
//! tests with a message saying so (CI installs them), it never skips.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

const READY_WITHIN: Duration = Duration::from_secs(15);
const CLUSTER_OK_WITHIN: Duration = Duration::from_secs(30);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Fails the test, saying how to install it, when `binary` cannot run.
pub fn need(binary: &str) {
    match Command::new(binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => {}
        Err(e) => panic!(
            "`{binary}` is not runnable ({e}). The tests need a real Redis server: \
             install it (Debian/Ubuntu: `apt-get install -y redis-server redis-tools`) and rerun."
        ),
    }
}

/// A port `p` such that `p` and `p + 10000` (a cluster node's bus port) are free on 127.0.0.1.
fn free_port() -> u16 {
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

/// Sends one command to `port` and returns the reply, or an error text.
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

/// A reply as text (a status, a bulk or verbatim string; anything else as debug text).
pub fn value_text(v: redis::Value) -> String {
    match v {
        redis::Value::SimpleString(s) => s,
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis::Value::VerbatimString { text, .. } => text,
        other => format!("{other:?}"),
    }
}

/// [`command`] whose reply is text; panics when the command fails.
pub fn text(port: u16, args: &[&str]) -> String {
    match command(port, args) {
        Ok(v) => value_text(v),
        Err(e) => panic!("redis {args:?} on port {port}: {e}"),
    }
}

/// One `redis-server` process.
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

    /// A fresh single node with extra `redis-server` arguments (e.g. `--requirepass x`).
    pub fn start_with(extra: &[&str]) -> Self {
        need("redis-server");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!(
                "streamkeeper-redis-{}-{}-{port}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            if let Err(e) = std::fs::create_dir_all(&dir) {
                panic!("cannot create {}: {e}", dir.display());
            }
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
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
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
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!(
                    "redis-server exited ({status}) on port {}: {log}",
                    self.port
                ));
            }
            match self.ping() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
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

    fn ping(&self) -> Result<(), String> {
        let auth: Vec<&str> = self.password().into_iter().collect();
        let client = match auth.first() {
            Some(p) => redis::Client::open(format!("redis://:{p}@127.0.0.1:{}", self.port)),
            None => redis::Client::open(format!("redis://127.0.0.1:{}", self.port)),
        }
        .map_err(|e| e.to_string())?;
        let mut con = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .map_err(|e| e.to_string())?;
        redis::cmd("PING")
            .query::<String>(&mut con)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn password(&self) -> Option<&str> {
        let i = self.extra.iter().position(|a| a == "--requirepass")?;
        self.extra.get(i + 1).map(String::as_str)
    }

    /// `redis://127.0.0.1:{port}`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: a crash, no goodbye to clients). Its data is gone.
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

    /// Starts the server again on the same port and directory, empty (no persistence). A
    /// cluster node keeps its identity and slots from `nodes.conf`.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn() {
            panic!("redis-server did not restart: {e}");
        }
    }

    /// Deletes every key (as if Redis had restarted empty).
    pub fn flushall(&self) {
        text(self.port, &["FLUSHALL"]);
    }

    /// `INFO {section}` as text.
    pub fn info(&self, section: &str) -> String {
        text(self.port, &["INFO", section])
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

/// Three masters, no replicas, all 16384 slots assigned; a stopped node takes only its own
/// slots down (`cluster-require-full-coverage no`).
pub struct RedisCluster {
    /// The nodes.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three `--cluster-enabled yes` nodes and joins them with
    /// `redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes`.
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
            // A stopped master takes only its own slots down: the tenants on the other nodes
            // are served on (what streamkeeper expects of a production cluster too).
            "--cluster-require-full-coverage",
            "no",
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

    /// Waits (bounded) until every node reports `cluster_state:ok` and knows all three masters.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + CLUSTER_OK_WITHIN;
        loop {
            let ok = self
                .nodes
                .iter()
                .all(|n| match command(n.port, &["CLUSTER", "INFO"]) {
                    Ok(v) => {
                        let info = value_text(v);
                        info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
                    }
                    Err(_) => false,
                });
            if ok {
                return;
            }
            if Instant::now() > deadline {
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
        // Any running node knows the slot map.
        let first = self
            .nodes
            .iter()
            .find(|n| n.running())
            .map_or(self.nodes[0].port, |n| n.port);
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

    /// Kills the node on `port` (SIGKILL); the others serve their slots on.
    pub fn stop_node(&mut self, port: u16) {
        self.node_mut(port).stop();
    }

    /// Starts the node on `port` again (empty, same identity and slots) and waits until the
    /// cluster is whole.
    pub fn restart_node(&mut self, port: u16) {
        self.node_mut(port).restart();
        self.wait_ok();
    }

    fn node_mut(&mut self, port: u16) -> &mut RedisServer {
        match self.nodes.iter_mut().find(|n| n.port == port) {
            Some(n) => n,
            None => panic!("no cluster node on port {port}"),
        }
    }

    /// Kills every node.
    pub fn stop(&mut self) {
        for n in &mut self.nodes {
            n.stop();
        }
    }

    /// Restarts every node (empty, same ports and cluster identity) and waits for the cluster.
    pub fn restart(&mut self) {
        self.stop();
        for n in &mut self.nodes {
            n.restart();
        }
        self.wait_ok();
    }

    /// FLUSHALL on every master.
    pub fn flushall(&self) {
        for n in &self.nodes {
            n.flushall();
        }
    }
}
