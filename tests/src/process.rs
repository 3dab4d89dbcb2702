//! Process-level fixtures: find the `streamkeeper` binary, run it with its stderr captured,
//! kill it when a test fails, and read its admin endpoint.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
    sync::Notify,
    time::{Instant, timeout},
};

/// The `streamkeeper` binary: `$STREAMKEEPER_BIN`, else `streamkeeper` in the cargo profile
/// directory this test binary was built into (`target/<profile>/`), else
/// `<workspace>/target/debug/streamkeeper`. Fails the test, saying how to build it, when absent.
pub fn binary() -> PathBuf {
    built("streamkeeper", "STREAMKEEPER_BIN")
}

/// The lean `streamkeeper-sidecar` binary (what `inject` puts in pods), found as [`binary`] is
/// (`$STREAMKEEPER_SIDECAR_BIN` overrides).
pub fn sidecar_binary() -> PathBuf {
    built("streamkeeper-sidecar", "STREAMKEEPER_SIDECAR_BIN")
}

fn built(name: &str, var: &str) -> PathBuf {
    if let Some(bin) = std::env::var_os(var) {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "{var}={} is not a file", bin.display());
        return bin;
    }
    let mut candidates = Vec::new();
    // Test binaries live in target/<profile>/deps/.
    if let Some(profile) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
    {
        candidates.push(profile.join(name));
    }
    candidates.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/debug")
            .join(name),
    );
    candidates
        .into_iter()
        .find(|c| c.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the {name} binary is not built: build it with `cargo build -p streamkeeper` \
             (or point {var} at it)"
            )
        })
}

/// Lines a child wrote to stderr, with a way to wait for one.
#[derive(Debug, Default)]
pub struct Lines {
    lines: Mutex<Vec<String>>,
    changed: Notify,
}

impl Lines {
    fn push(&self, line: String) {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line);
        self.changed.notify_waiters();
    }

    /// How many lines so far (a mark for [`wait_for`](Self::wait_for)).
    pub fn len(&self) -> usize {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every line so far.
    pub fn all(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The first line at or after index `from` that satisfies `pred`, within `bound`.
    pub async fn wait_for(
        &self,
        from: usize,
        bound: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + bound;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(hit) = self.all().into_iter().skip(from).find(|l| pred(l)) {
                return Some(hit);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

/// Removes ANSI colour sequences.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Reads `pipe` line by line into `lines` until it closes.
fn collect(
    pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    lines: Arc<Lines>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            lines.push(strip_ansi(&line));
        }
    })
}

/// A running `streamkeeper` child; killed on drop, so a failing test leaves nothing behind.
#[derive(Debug)]
pub struct Running {
    child: Option<Child>,
    /// Its stderr, line by line, ANSI colours removed.
    pub stderr: Arc<Lines>,
    /// Its stdout, line by line, ANSI colours removed.
    pub stdout: Arc<Lines>,
    /// The tasks reading stdout and stderr (done when the pipes close).
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Starts the binary with `args`, `STREAMKEEPER_LOG` = `log`, stderr captured.
    pub fn spawn(args: &[&str], log: &str) -> Self {
        Self::spawn_under(&[], args, log)
    }

    /// Like [`spawn`](Self::spawn), with the binary run by `wrapper` (a program and its
    /// arguments, e.g. `ip netns exec NAME`); an empty `wrapper` runs it directly.
    pub fn spawn_under(wrapper: &[&str], args: &[&str], log: &str) -> Self {
        Self::spawn_inner(&binary(), wrapper, &[], args, log)
    }

    /// Starts the lean `streamkeeper-sidecar --config CONFIG` (what pods run), with `env`.
    pub fn spawn_sidecar(env: &[(&str, &str)], config: &str, log: &str) -> Self {
        Self::spawn_inner(&sidecar_binary(), &[], env, &["--config", config], log)
    }

    fn spawn_inner(
        bin: &Path,
        wrapper: &[&str],
        env: &[(&str, &str)],
        args: &[&str],
        log: &str,
    ) -> Self {
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = command
            .args(args)
            .env("STREAMKEEPER_LOG", log)
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {wrapper:?} {}: {e}", bin.display()));
        let stderr = Arc::new(Lines::default());
        let stdout = Arc::new(Lines::default());
        let mut readers = Vec::new();
        if let Some(pipe) = child.stderr.take() {
            readers.push(collect(pipe, Arc::clone(&stderr)));
        }
        if let Some(pipe) = child.stdout.take() {
            readers.push(collect(pipe, Arc::clone(&stdout)));
        }
        Self {
            child: Some(child),
            stderr,
            stdout,
            readers,
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(Child::id)
            .expect("the child is running")
    }

    /// Sends SIGTERM (through `kill(1)`: no unsafe code in the tests).
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits at most `bound` for the child to exit; `None` when it is still running.
    pub async fn wait(&mut self, bound: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match timeout(bound, child.wait()).await {
            Ok(Ok(status)) => {
                // The readers end when the pipes close: then every line is in.
                for reader in self.readers.drain(..) {
                    let _ = timeout(Duration::from_secs(2), reader).await;
                }
                Some(status)
            }
            Ok(Err(e)) => panic!("waiting for the child failed: {e}"),
            Err(_) => None,
        }
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The captured stderr, for failure messages.
    pub fn stderr_text(&self) -> String {
        self.stderr.all().join("\n")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// `GET path` on `addr` (HTTP/1.0, so the body is plain and the server hangs up): the status
/// code and body, or the I/O error.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let work = async {
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {head:?}")))?;
        Ok((code, body.to_owned()))
    };
    timeout(Duration::from_secs(5), work)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("no HTTP answer within 5 s")))
}

/// The admin `/status` document, or why it could not be read.
pub async fn status(admin: SocketAddr) -> Result<serde_json::Value, String> {
    let (code, body) = http_get(admin, "/status")
        .await
        .map_err(|e| e.to_string())?;
    if code != 200 {
        return Err(format!("/status answered {code}: {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("/status is not JSON ({e}): {body}"))
}

/// The entry of stream `id` in a `/status` document.
pub fn stream_entry<'a>(status: &'a serde_json::Value, id: &str) -> Option<&'a serde_json::Value> {
    status["streams"].as_array()?.iter().find(|s| s["id"] == id)
}

/// Writes `text` to `path` atomically (a temp file renamed over it), so a reader polling the
/// file never sees half of it.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write the temp file");
    std::fs::rename(&tmp, path).expect("rename over the target");
}

/// A `streamkeeper-sidecar --config FILE` process (the lean binary pods run) with its config
/// written from a [`SidecarConfig`](streamkeeper_api::SidecarConfig) (as JSON, which is YAML),
/// its app and admin endpoints on free loopback ports, and its own environment (proxy variables
/// are read per process, so each process is its own egress).
#[derive(Debug)]
pub struct SidecarProcess {
    /// The child.
    pub child: Running,
    /// Its admin endpoint (`/status`, `/metrics`).
    pub admin: SocketAddr,
    /// Its app endpoint.
    pub app: SocketAddr,
    /// The config file.
    pub config: PathBuf,
}

impl SidecarProcess {
    /// Writes `dir/{name}.yaml` for `streams` (and `redis`, if any) and starts the sidecar on it
    /// with `env` added and log filter `log`.
    pub fn start(
        dir: &Path,
        name: &str,
        streams: Vec<streamkeeper_api::StreamSpec>,
        redis: Option<&str>,
        env: &[(&str, &str)],
        log: &str,
    ) -> Self {
        let app_port = crate::free_port();
        let admin_port = std::iter::repeat_with(crate::free_port)
            .find(|p| *p != app_port)
            .expect("a second free port");
        let app: SocketAddr = ([127, 0, 0, 1], app_port).into();
        let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
        let config = streamkeeper_api::SidecarConfig {
            pod: Some(name.parse().expect("a pod name")),
            listen: app,
            admin,
            redis: redis.map(streamkeeper_api::config::RedisUrl::from),
            streams,
            ..streamkeeper_api::SidecarConfig::default()
        };
        let file = dir.join(format!("{name}.yaml"));
        let text = serde_json::to_string_pretty(&config).expect("the config serialises");
        write_atomically(&file, &text);
        let path = file.to_str().expect("a UTF-8 temp path");
        let child = Running::spawn_sidecar(env, path, log);
        Self {
            child,
            admin,
            app,
            config: file,
        }
    }

    /// Polls `/status` until stream `id`'s entry satisfies `pred` and returns it; fails the
    /// test with the last document and the child's stderr after `bound`, or when it exits.
    pub async fn wait_stream(
        &mut self,
        id: &str,
        bound: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + bound;
        loop {
            assert!(
                self.child.is_running(),
                "the sidecar exited; stderr:\n{}",
                self.child.stderr_text()
            );
            let last = match status(self.admin).await {
                Ok(doc) => match stream_entry(&doc, id).filter(|e| pred(e)) {
                    Some(entry) => return entry.clone(),
                    None => doc.to_string(),
                },
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "{id} not as expected within {bound:?}; last /status: {last}\nstderr:\n{}",
                self.child.stderr_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits (bounded) for the exit; fails the test if it does not exit 0.
    pub async fn stop(&mut self) {
        self.child.terminate();
        let exit = self.child.wait(Duration::from_secs(15)).await;
        assert!(
            exit.is_some_and(|e| e.success()),
            "the sidecar did not exit 0 after SIGTERM: {exit:?}; stderr:\n{}",
            self.child.stderr_text()
        );
    }
}
