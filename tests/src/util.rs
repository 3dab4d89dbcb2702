//! Small helpers: free ports, event sequence numbers, metric samples,
//! and captured logs.

use std::{
    sync::{Mutex, OnceLock},
    time::Duration,
};

use streamkeeper_api::EventId;
use tokio::{sync::Notify, time::Instant};

/// A port that was free a moment ago on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// The sequence number of an emulator event id (`{stream}:{seq, 9 digits}`).
pub fn event_seq(id: &EventId) -> u64 {
    id.as_str()
        .rsplit(':')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{id:?} is not an emulator event id"))
}

/// The value of the first sample of `name` whose label set contains `label` (like
/// `stream="e2e/q"`) in Prometheus text.
///
/// ```
/// let text = "# TYPE x counter\nx{stream=\"a/b\"} 7\n";
/// assert_eq!(streamkeeper_e2e::metric_value(text, "x", "stream=\"a/b\""), Some(7.0));
/// ```
pub fn metric_value(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(name))
        .filter(|rest| rest.starts_with('{') || rest.starts_with(' '))
        .find(|rest| {
            rest.split('}')
                .next()
                .is_some_and(|labels| labels.contains(label))
        })
        .and_then(|rest| rest.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Log lines of this test process, captured by a global subscriber (see [`logs`]).
#[derive(Debug, Default)]
pub struct Logs {
    lines: Mutex<Vec<String>>,
    changed: Notify,
}

impl Logs {
    fn push(&self, text: &str) {
        {
            let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
            lines.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_owned));
        }
        self.changed.notify_waiters();
    }

    /// How many lines so far (a mark for [`wait_for`](Self::wait_for)).
    pub fn len(&self) -> usize {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing was logged yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every line from index `from` on.
    pub fn since(&self, from: usize) -> Vec<String> {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.iter().skip(from).cloned().collect()
    }

    /// The first line at or after index `from` that satisfies `pred`, waiting at most `bound`.
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
            let hit = {
                let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
                lines.iter().skip(from).find(|l| pred(l)).cloned()
            };
            if hit.is_some() {
                return hit;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

/// Writes formatted events into [`Logs`] (and to stderr when `STREAMKEEPER_TEST_LOG` is set).
struct Capture {
    logs: &'static Logs,
    echo: bool,
}

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        if self.echo {
            eprint!("{text}");
        }
        self.logs.push(&text);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The process's captured log lines, installing the global subscriber on first use: level
/// `warn` for everything, or the env filter in `STREAMKEEPER_TEST_LOG` (whose lines are also
/// echoed to stderr). Plain text, no colours: `WARN ... stream=e2e/q ... message`.
pub fn logs() -> &'static Logs {
    static LOGS: OnceLock<&'static Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: &'static Logs = Box::leak(Box::default());
        let custom = std::env::var("STREAMKEEPER_TEST_LOG").ok();
        let echo = custom.is_some();
        let filter = tracing_subscriber::EnvFilter::new(custom.as_deref().unwrap_or("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || Capture { logs, echo })
            .try_init();
        logs
    })
}

/// Installs the log capture when `STREAMKEEPER_TEST_LOG` is set (an env filter, like
/// `streamkeeper_sidecar=debug`), to see what the product did in a failing test.
pub fn init_logs() {
    if std::env::var_os("STREAMKEEPER_TEST_LOG").is_some() {
        logs();
    }
}
