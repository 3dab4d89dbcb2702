//! Real Redis for the process-level tests: a single `redis-server`, or a three-master Redis
//! Cluster, on free loopback ports in a temp dir, killed (SIGKILL, by pid) and removed on drop;
//! a `redis-cli monitor` recorder that rebuilds the history of a stream's lease and checkpoint
//! keys; and a subscriber to `streamkeeper:transitions`.
//!
//! `redis-server` and `redis-cli` must be on PATH: a machine without them fails the tests with a
//! message saying how to install them (scripts/install-test-deps does it in CI); nothing skips.
//! The servers come from `streamkeeper-testkit`, shared with the coord crate's tests.

use std::{
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    sync::Notify,
    task::JoinHandle,
    time::{Instant, timeout},
};

pub use streamkeeper_testkit::redis::{RedisCluster, RedisServer, command, need};

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
    /// The lease string was set (`{fence}:{owner}`, `...:released` for a handover,
    /// `...:removed` for a removed stream).
    Lease {
        /// The fence written.
        fence: u64,
        /// The owner written.
        owner: String,
        /// A release (or removal) tombstone.
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

    /// Waits (bounded) until the history shows `new_owner` taking the lease with a fence above
    /// `old_fence`; returns the history, the index of that lease write, and the event seq of
    /// the last checkpoint written before it (0 when none): where the new owner resumed.
    pub async fn takeover(
        &self,
        lease: &str,
        ckpt: &str,
        new_owner: &str,
        old_fence: u64,
    ) -> (Vec<KeyWrite>, usize, u64) {
        let taken = |w: &KeyWrite| matches!(w, KeyWrite::Lease { owner, fence, .. } if owner == new_owner && *fence > old_fence);
        let history = self
            .wait_history(lease, ckpt, Duration::from_secs(2), |h| h.iter().any(taken))
            .await;
        let at = history
            .iter()
            .position(taken)
            .expect("the MONITOR history shows the new owner's lease");
        let resumed = history[..at]
            .iter()
            .rev()
            .find_map(|w| match w {
                KeyWrite::Checkpoint { id, .. } => crate::fleet::seq_of(id),
                _ => None,
            })
            .unwrap_or(0);
        (history, at, resumed)
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
/// key/argument triples (lease, ckpt, guard) / (fence, seq, id) carry the fence.
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
                    let released = matches!(parts.next(), Some("released" | "removed"));
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
/// keys come in (lease, ckpt, guard) triples and arguments in (fence, seq, id) triples.
fn checkpoint_call(args: &[String], lease: &str, ckpt: &str) -> Option<(u64, String)> {
    let n: usize = args.get(2)?.parse().ok()?;
    let keys = args.get(3..3 + n)?;
    let argv = args.get(3 + n..)?;
    if !n.is_multiple_of(3) || argv.len() != n {
        return None;
    }
    let i = keys.chunks(3).position(|t| t[0] == lease && t[1] == ckpt)?;
    Some((argv[3 * i].parse().ok()?, argv[3 * i + 2].clone()))
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
            r#"1.2 [0 127.0.0.1:5000] "EVALSHA" "def" "3" "sk:{acme}:lease:e2e/q" "sk:{acme}:ckpt:e2e/q" "sk:{acme}:ckseq:e2e/q" "7" "4" "q:000000012""#,
            r#"1.3 [0 lua] "MGET" "sk:{acme}:lease:e2e/q" "sk:{acme}:ckseq:e2e/q""#,
            r#"1.4 [0 lua] "MSET" "sk:{acme}:ckpt:e2e/q" "q:000000012" "sk:{acme}:ckseq:e2e/q" "7:4""#,
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
