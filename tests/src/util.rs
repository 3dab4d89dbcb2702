//! Small helpers: temporary directories, free ports, event sequence numbers, metric samples,
//! and opt-in logs.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use streamkeeper_api::EventId;

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `streamkeeper-e2e-{label}-{pid}-{n}`.
    pub fn new(label: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "streamkeeper-e2e-{label}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temp dir");
        Self(path)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

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

/// Installs a log subscriber once when `STREAMKEEPER_TEST_LOG` is set (an env filter, like
/// `streamkeeper_sidecar=debug`), to see what the product did in a failing test.
pub fn init_logs() {
    if let Ok(filter) = std::env::var("STREAMKEEPER_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}
