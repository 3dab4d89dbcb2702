//! The sidecar's Prometheus metrics: one [`Metrics`] per sidecar (several sidecars may share a
//! process).
//!
//! Family names and labels are a public contract (DESIGN.md, "Admin endpoint and metrics"):
//!
//! | family | type | labels |
//! |---|---|---|
//! | `streamkeeper_stream_state` | gauge | `stream`, `tenant`, `state` |
//! | `streamkeeper_pings_sent_total` | counter | `stream` |
//! | `streamkeeper_pongs_received_total` | counter | `stream` |
//! | `streamkeeper_pong_rtt_seconds` | histogram | `stream` |
//! | `streamkeeper_reaped_total` | counter | `reason` |
//! | `streamkeeper_reconnects_total` | counter | `stream`, `reason` |
//! | `streamkeeper_token_refresh_total` | counter | `tenant`, `result` |
//! | `streamkeeper_events_total` | counter | `stream`, `outcome` |
//! | `streamkeeper_gaps_total` | counter | `stream` |
//! | `streamkeeper_app_clients` | gauge | `stream` |
//! | `streamkeeper_redis_up` | gauge | |
//!
//! Label values are only validated identifiers ([`StreamId`], [`Tenant`]) and closed sets of
//! words; never a token, a secret or a URL.
//!
//! A stream's series are plain atomics in one allocation ([`StreamMetrics`], about 300 bytes),
//! rendered into the text format at scrape time. A Prometheus client library keeps a child
//! object per series instead (an `Arc`, its label pairs as owned strings, a hash-map entry in
//! its family; a histogram child its own bucket bounds and two shards of counts): 25 series a
//! stream came to about 14 KiB, the largest part of what a stream cost the sidecar. The session's
//! hot path still costs an atomic add per update, and nothing is looked up by label.
//!
//! ```
//! use std::time::Duration;
//! use streamkeeper_api::{StreamId, StreamState, Tenant};
//! use streamkeeper_sidecar::metrics::{EventOutcome, Metrics};
//!
//! let metrics = Metrics::new();
//! let stream: StreamId = "cc/acme-queue".parse().expect("valid stream id");
//! let tenant: Tenant = "acme".parse().expect("valid tenant");
//! let handle = metrics.stream(&stream, &tenant);
//! handle.state(StreamState::Active);
//! handle.ping_sent();
//! handle.pong(Duration::from_millis(12));
//! handle.event(EventOutcome::Delivered);
//! assert!(metrics.encode().contains("streamkeeper_pongs_received_total{stream=\"cc/acme-queue\"} 1"));
//! metrics.forget(&stream, &tenant);
//! assert!(!metrics.encode().contains("cc/acme-queue"));
//! ```

use std::{
    borrow::Borrow,
    collections::{BTreeMap, HashSet},
    fmt::{self, Write as _},
    hash::{Hash, Hasher},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use streamkeeper_api::{DropReason, StreamId, StreamState, Tenant};

/// The content type of [`Metrics::encode`]'s output: the Prometheus text format 0.0.4.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4";

/// Bucket bounds of `streamkeeper_pong_rtt_seconds`: 1 ms to 10 s in 1-2.5-5 steps.
pub const PONG_RTT_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What became of a platform event: the `outcome` label of `streamkeeper_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventOutcome {
    /// Forwarded to the app.
    Delivered,
    /// Already delivered (seen on another socket or pod), so not forwarded again.
    DuplicateSuppressed,
    /// Lost: not forwarded and not a duplicate (no app client, a full buffer, ...).
    Dropped,
}

impl EventOutcome {
    /// Every outcome, in the order metrics list them.
    pub const ALL: [EventOutcome; 3] = [Self::Delivered, Self::DuplicateSuppressed, Self::Dropped];

    /// The outcome as written in the label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::DuplicateSuppressed => "duplicate_suppressed",
            Self::Dropped => "dropped",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Delivered => 0,
            Self::DuplicateSuppressed => 1,
            Self::Dropped => 2,
        }
    }
}

impl fmt::Display for EventOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a token refresh ended: the `result` label of `streamkeeper_token_refresh_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenRefreshResult {
    /// A new token was issued.
    Ok,
    /// The identity provider refused the credentials.
    Refused,
    /// The provider answered with something that is not a usable token.
    Invalid,
    /// The request failed (network, TLS, 5xx).
    Error,
    /// The provider (or our own limiter) asked us to slow down.
    RateLimited,
}

impl TokenRefreshResult {
    /// Every result, in the order metrics list them.
    pub const ALL: [TokenRefreshResult; 5] = [
        Self::Ok,
        Self::Refused,
        Self::Invalid,
        Self::Error,
        Self::RateLimited,
    ];

    /// The result as written in the label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Refused => "refused",
            Self::Invalid => "invalid",
            Self::Error => "error",
            Self::RateLimited => "rate_limited",
        }
    }
}

impl fmt::Display for TokenRefreshResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The metrics of one sidecar.
pub struct Metrics {
    /// Every stream's series, found by stream id.
    streams: Mutex<HashSet<Registered>>,
    /// Indexed like [`DropReason::ALL`].
    reaped: [AtomicU64; DropReason::ALL.len()],
    /// Only the (tenant, result) pairs that happened are series.
    token_refresh: Mutex<BTreeMap<(Tenant, &'static str), u64>>,
    redis_up: AtomicBool,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain counters: a panic while holding the lock cannot leave them inconsistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A stream's series in the set, hashed and compared by stream id (so the id is stored once,
/// in the series themselves, and looked up by `&str`).
struct Registered(Arc<StreamSeries>);

impl PartialEq for Registered {
    fn eq(&self, other: &Self) -> bool {
        self.0.stream == other.0.stream
    }
}

impl Eq for Registered {}

impl Hash for Registered {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.stream.as_str().hash(state);
    }
}

impl Borrow<str> for Registered {
    fn borrow(&self) -> &str {
        self.0.stream.as_str()
    }
}

impl Metrics {
    /// A sidecar's metrics. `streamkeeper_reaped_total` starts at 0 for every [`DropReason`]
    /// and `streamkeeper_redis_up` at 0, so rates and alerts work from the start.
    pub fn new() -> Self {
        Self {
            streams: Mutex::new(HashSet::new()),
            reaped: [const { AtomicU64::new(0) }; DropReason::ALL.len()],
            token_refresh: Mutex::new(BTreeMap::new()),
            redis_up: AtomicBool::new(false),
        }
    }

    /// The series of one stream, for the session's hot path: the same series for every call
    /// until [`forget`](Self::forget). They appear (at 0, every state at 0 until the first
    /// [`StreamMetrics::state`]) from the first call on; the tenant is the first call's.
    pub fn stream(&self, stream: &StreamId, tenant: &Tenant) -> StreamMetrics {
        let mut streams = lock(&self.streams);
        if let Some(found) = streams.get(stream.as_str()) {
            return StreamMetrics {
                inner: Arc::clone(&found.0),
            };
        }
        let series = Arc::new(StreamSeries::new(stream.clone(), tenant.clone()));
        streams.insert(Registered(Arc::clone(&series)));
        StreamMetrics { inner: series }
    }

    /// Sets `streamkeeper_stream_state` of a stream: 1 for `state`, 0 for the six others.
    pub fn set_state(&self, stream: &StreamId, tenant: &Tenant, state: StreamState) {
        self.stream(stream, tenant).state(state);
    }

    /// Removes every series of a stream (call it once the stream's session has ended), so
    /// streams that come and go leave nothing behind. [`StreamMetrics`] handles still held
    /// afterwards write to detached series nobody scrapes, and so would a handle taken before
    /// `forget` for the stream's next session: take the next session's handle after forgetting
    /// the previous one.
    pub fn forget(&self, stream: &StreamId, _tenant: &Tenant) {
        lock(&self.streams).remove(stream.as_str());
    }

    /// Counts a reaped connection in `streamkeeper_reaped_total`.
    pub fn reaped(&self, reason: DropReason) {
        if let Some(i) = DropReason::ALL.iter().position(|r| *r == reason) {
            self.reaped[i].fetch_add(1, Relaxed);
        }
    }

    /// Counts a token refresh of `tenant` in `streamkeeper_token_refresh_total`.
    pub fn token_refresh(&self, tenant: &Tenant, result: TokenRefreshResult) {
        *lock(&self.token_refresh)
            .entry((tenant.clone(), result.as_str()))
            .or_default() += 1;
    }

    /// Sets `streamkeeper_redis_up`.
    pub fn redis_up(&self, up: bool) {
        self.redis_up.store(up, Relaxed);
    }

    /// Every family in the Prometheus text format 0.0.4 ([`TEXT_FORMAT`]): families by name,
    /// series by label values, families without a series left out.
    pub fn encode(&self) -> String {
        let mut streams: Vec<Arc<StreamSeries>> = lock(&self.streams)
            .iter()
            .map(|r| Arc::clone(&r.0))
            .collect();
        streams.sort_unstable_by(|a, b| a.stream.cmp(&b.stream));
        let refreshes: Vec<((Tenant, &'static str), u64)> = lock(&self.token_refresh)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        // About 2.5 KB of text per stream: reserved once, not doubled up to it.
        let mut out = String::with_capacity(4096 + streams.len() * 2600);
        let w = &mut out;
        let any = !streams.is_empty();
        if any {
            family(
                w,
                "streamkeeper_app_clients",
                "Local app clients subscribed to the stream.",
                "gauge",
            );
            for s in &streams {
                sample(
                    w,
                    "streamkeeper_app_clients",
                    "",
                    &[("stream", s.stream.as_str())],
                    s.app_clients.load(Relaxed),
                );
            }
            family(
                w,
                "streamkeeper_events_total",
                "Platform events, by what became of them.",
                "counter",
            );
            for s in &streams {
                // Label pairs in name order, as Prometheus writes them: outcome, stream.
                for o in EventOutcome::ALL {
                    let labels = [("outcome", o.as_str()), ("stream", s.stream.as_str())];
                    sample(
                        w,
                        "streamkeeper_events_total",
                        "",
                        &labels,
                        s.events[o.index()].load(Relaxed),
                    );
                }
            }
            family(
                w,
                "streamkeeper_gaps_total",
                "Gaps reported to the app: events may have been missed.",
                "counter",
            );
            for s in &streams {
                sample(
                    w,
                    "streamkeeper_gaps_total",
                    "",
                    &[("stream", s.stream.as_str())],
                    s.gaps.load(Relaxed),
                );
            }
            family(
                w,
                "streamkeeper_pings_sent_total",
                "Heartbeat pings sent upstream.",
                "counter",
            );
            for s in &streams {
                sample(
                    w,
                    "streamkeeper_pings_sent_total",
                    "",
                    &[("stream", s.stream.as_str())],
                    s.pings.load(Relaxed),
                );
            }
            family(
                w,
                "streamkeeper_pong_rtt_seconds",
                "Round trip from a ping to its pong, in seconds.",
                "histogram",
            );
            for s in &streams {
                s.rtt
                    .render(w, "streamkeeper_pong_rtt_seconds", s.stream.as_str());
            }
            family(
                w,
                "streamkeeper_pongs_received_total",
                "Heartbeat pongs received from upstream.",
                "counter",
            );
            for s in &streams {
                sample(
                    w,
                    "streamkeeper_pongs_received_total",
                    "",
                    &[("stream", s.stream.as_str())],
                    s.rtt.count.load(Relaxed),
                );
            }
        }
        family(
            w,
            "streamkeeper_reaped_total",
            "Upstream connections dropped, by reason.",
            "counter",
        );
        let mut reasons: Vec<(&str, u64)> = DropReason::ALL
            .iter()
            .zip(&self.reaped)
            .map(|(r, n)| (r.as_str(), n.load(Relaxed)))
            .collect();
        reasons.sort_unstable();
        for (reason, n) in reasons {
            sample(w, "streamkeeper_reaped_total", "", &[("reason", reason)], n);
        }
        let reconnects: Vec<(&StreamSeries, Reconnects)> = streams
            .iter()
            .map(|s| (&**s, s.reconnects()))
            .filter(|(_, r)| !r.is_empty())
            .collect();
        if !reconnects.is_empty() {
            family(
                w,
                "streamkeeper_reconnects_total",
                "Reconnects of a stream, by the reason the previous connection ended.",
                "counter",
            );
            for (s, reasons) in &reconnects {
                for (reason, n) in reasons {
                    let labels = [("reason", &**reason), ("stream", s.stream.as_str())];
                    sample(w, "streamkeeper_reconnects_total", "", &labels, *n);
                }
            }
        }
        family(
            w,
            "streamkeeper_redis_up",
            "1 while the coordination store answers, 0 otherwise.",
            "gauge",
        );
        sample(
            w,
            "streamkeeper_redis_up",
            "",
            &[],
            u64::from(self.redis_up.load(Relaxed)),
        );
        if any {
            family(
                w,
                "streamkeeper_stream_state",
                "1 for the stream's current state, 0 for the others.",
                "gauge",
            );
            for s in &streams {
                let current = s.state.load(Relaxed);
                // Label pairs in name order: state, stream, tenant.
                for (i, st) in StreamState::ALL.iter().enumerate() {
                    let labels = [
                        ("state", st.as_str()),
                        ("stream", s.stream.as_str()),
                        ("tenant", s.tenant.as_str()),
                    ];
                    sample(
                        w,
                        "streamkeeper_stream_state",
                        "",
                        &labels,
                        u64::from(usize::from(current) == i),
                    );
                }
            }
        }
        if !refreshes.is_empty() {
            family(
                w,
                "streamkeeper_token_refresh_total",
                "Token refreshes, by result.",
                "counter",
            );
            let mut refreshes = refreshes;
            refreshes.sort_unstable_by(|a, b| (a.0.1, &a.0.0).cmp(&(b.0.1, &b.0.0)));
            for ((tenant, result), n) in &refreshes {
                let labels = [("result", *result), ("tenant", tenant.as_str())];
                sample(w, "streamkeeper_token_refresh_total", "", &labels, *n);
            }
        }
        out
    }
}

/// `# HELP` and `# TYPE` of a family.
fn family(w: &mut String, name: &str, help: &str, kind: &str) {
    let _ = write!(w, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
}

/// One sample line: `name{labels} value`.
fn sample(
    w: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(&str, &str)],
    value: impl fmt::Display,
) {
    w.push_str(name);
    w.push_str(suffix);
    labels_text(w, labels, None);
    let _ = writeln!(w, " {value}");
}

fn labels_text(w: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    let mut sep = '{';
    for (name, value) in labels.iter().copied().chain(le.map(|v| ("le", v))) {
        w.push(sep);
        w.push_str(name);
        w.push_str("=\"");
        // Label values are validated identifiers and fixed words; escaped all the same.
        for c in value.chars() {
            match c {
                '\\' => w.push_str("\\\\"),
                '"' => w.push_str("\\\""),
                '\n' => w.push_str("\\n"),
                c => w.push(c),
            }
        }
        w.push('"');
        sep = ',';
    }
    w.push('}');
}

/// Reconnect counts of a stream, by reason. A boxed slice rather than a `Vec`: reconnects are
/// rare, and the 8 bytes of capacity are in every stream's series.
type Reconnects = Box<[(Box<str>, u64)]>;

/// No state set yet: every state series reads 0.
const NO_STATE: u8 = u8::MAX;

/// One stream's series, all in one allocation: 176 bytes, with the `Arc`'s counts 192, which
/// is one of the allocator's size classes (a unit test guards it).
struct StreamSeries {
    stream: StreamId,
    tenant: Tenant,
    /// Index into [`StreamState::ALL`], or [`NO_STATE`]: one value, so no scrape can see a
    /// stream in zero or two states.
    state: AtomicU8,
    pings: AtomicU64,
    gaps: AtomicU64,
    /// 32 bits, beside `state`.
    app_clients: AtomicU32,
    /// Indexed by [`EventOutcome::index`].
    events: [AtomicU64; 3],
    /// Its count is `streamkeeper_pongs_received_total` too: each pong is one observation.
    rtt: RttHistogram,
    /// By reason, in the order first seen; empty (no allocation) until the first reconnect.
    reconnects: Mutex<Reconnects>,
}

impl StreamSeries {
    fn new(stream: StreamId, tenant: Tenant) -> Self {
        Self {
            stream,
            tenant,
            state: AtomicU8::new(NO_STATE),
            pings: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            app_clients: AtomicU32::new(0),
            events: [const { AtomicU64::new(0) }; 3],
            rtt: RttHistogram::default(),
            reconnects: Mutex::new(Box::default()),
        }
    }

    /// The reconnect counts, sorted by reason.
    fn reconnects(&self) -> Reconnects {
        let mut all = lock(&self.reconnects).clone();
        all.sort_unstable();
        all
    }
}

/// `streamkeeper_pong_rtt_seconds` of one stream: a count per bucket (not cumulative; summed
/// at scrape time), the count, and the sum in nanoseconds.
#[derive(Default)]
struct RttHistogram {
    /// Observations per bucket of [`PONG_RTT_BUCKETS`]; those above the last bound are only in
    /// `count`. 32 bits (52 bytes rather than 104 in every stream's series): at one pong a
    /// second a bucket wraps after 136 years.
    buckets: [AtomicU32; PONG_RTT_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl RttHistogram {
    fn observe(&self, rtt: Duration) {
        let secs = rtt.as_secs_f64();
        if let Some(i) = PONG_RTT_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        let nanos = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn render(&self, w: &mut String, name: &str, stream: &str) {
        let labels = [("stream", stream)];
        let mut cumulative = 0u64;
        for (bound, bucket) in PONG_RTT_BUCKETS.iter().zip(&self.buckets) {
            cumulative += u64::from(bucket.load(Relaxed));
            w.push_str(name);
            w.push_str("_bucket");
            labels_text(w, &labels, Some(&bound.to_string()));
            let _ = writeln!(w, " {cumulative}");
        }
        // Read after the buckets: an observation racing the scrape is in the count (or not at
        // all), never in a bucket but missing from `+Inf`.
        let count = self.count.load(Relaxed).max(cumulative);
        w.push_str(name);
        w.push_str("_bucket");
        labels_text(w, &labels, Some("+Inf"));
        let _ = writeln!(w, " {count}");
        let sum = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        sample(w, name, "_sum", &labels, sum);
        sample(w, name, "_count", &labels, count);
    }
}

/// One stream's series: each update is an atomic add. Cloning is cheap; clones update the same
/// series.
#[derive(Clone)]
pub struct StreamMetrics {
    inner: Arc<StreamSeries>,
}

impl fmt::Debug for StreamMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamMetrics")
            .field("stream", &self.inner.stream)
            .finish_non_exhaustive()
    }
}

impl StreamMetrics {
    /// Counts a heartbeat ping sent.
    pub fn ping_sent(&self) {
        self.inner.pings.fetch_add(1, Relaxed);
    }

    /// Counts a pong received and records its round trip.
    pub fn pong(&self, rtt: Duration) {
        self.inner.rtt.observe(rtt);
    }

    /// Counts a platform event by what became of it.
    pub fn event(&self, outcome: EventOutcome) {
        self.inner.events[outcome.index()].fetch_add(1, Relaxed);
    }

    /// Counts a gap reported to the app.
    pub fn gap(&self) {
        self.inner.gaps.fetch_add(1, Relaxed);
    }

    /// Counts a reconnect. `reason` should be a [`DropReason::as_str`] (a small closed set: every
    /// distinct value is a new series).
    pub fn reconnect(&self, reason: &str) {
        let mut all = lock(&self.inner.reconnects);
        match all.iter_mut().find(|(r, _)| &**r == reason) {
            Some((_, n)) => *n += 1,
            None => {
                let mut grown = std::mem::take(&mut *all).into_vec();
                grown.push((reason.into(), 1));
                *all = grown.into_boxed_slice();
            }
        }
    }

    /// Sets the number of local app clients.
    pub fn app_clients(&self, n: u32) {
        self.inner.app_clients.store(n, Relaxed);
    }

    /// Sets the stream's state: 1 for `state`, 0 for the six others.
    pub fn state(&self, state: StreamState) {
        if let Some(i) = StreamState::ALL.iter().position(|s| *s == state) {
            // Seven states: the index fits a byte.
            self.inner.state.store(i as u8, Relaxed);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// One parsed sample line: its labels and its value.
    pub(crate) type Sample = (BTreeMap<String, String>, f64);

    /// The samples of `name` (exactly that name, so `_bucket`/`_sum` are separate) in `text`.
    pub(crate) fn samples(text: &str, name: &str) -> Vec<Sample> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (metric, labels) = match series.split_once('{') {
                    Some((metric, rest)) => (metric, rest.strip_suffix('}')?),
                    None => (series, ""),
                };
                if metric != name {
                    return None;
                }
                let labels = labels
                    .split(',')
                    .filter(|pair| !pair.is_empty())
                    .filter_map(|pair| {
                        let (k, v) = pair.split_once('=')?;
                        Some((k.to_owned(), v.trim_matches('"').to_owned()))
                    })
                    .collect();
                Some((labels, value.parse().ok()?))
            })
            .collect()
    }

    fn ids(name: &str, tenant: &str) -> (StreamId, Tenant) {
        (
            StreamId::new("cc", name).expect("valid stream id"),
            tenant.parse().expect("valid tenant"),
        )
    }

    fn states_of(text: &str, stream: &StreamId) -> BTreeMap<String, f64> {
        samples(text, "streamkeeper_stream_state")
            .into_iter()
            .filter(|(labels, _)| labels.get("stream").map(String::as_str) == Some(stream.as_str()))
            .map(|(labels, value)| (labels["state"].clone(), value))
            .collect()
    }

    pub(crate) const FAMILIES: [&str; 11] = [
        "streamkeeper_stream_state",
        "streamkeeper_pings_sent_total",
        "streamkeeper_pongs_received_total",
        "streamkeeper_pong_rtt_seconds",
        "streamkeeper_reaped_total",
        "streamkeeper_reconnects_total",
        "streamkeeper_token_refresh_total",
        "streamkeeper_events_total",
        "streamkeeper_gaps_total",
        "streamkeeper_app_clients",
        "streamkeeper_redis_up",
    ];

    /// Touches every family once.
    pub(crate) fn touch_all(metrics: &Metrics, stream: &StreamId, tenant: &Tenant) {
        let handle = metrics.stream(stream, tenant);
        handle.state(StreamState::Active);
        handle.ping_sent();
        handle.pong(Duration::from_millis(20));
        handle.event(EventOutcome::Delivered);
        handle.gap();
        handle.reconnect(DropReason::PongTimeout.as_str());
        handle.app_clients(2);
        metrics.reaped(DropReason::PongTimeout);
        metrics.token_refresh(tenant, TokenRefreshResult::Ok);
        metrics.redis_up(true);
    }

    #[test]
    fn a_streams_series_fits_the_allocators_192_byte_class() {
        // With the `Arc`'s two counts; one byte more is 224.
        let size = size_of::<StreamSeries>() + 16;
        assert!(size <= 192, "{size} bytes");
    }

    #[test]
    fn every_family_is_exposed_with_its_type_once_touched() {
        let metrics = Metrics::new();
        let (stream, tenant) = ids("acme-queue", "acme");
        touch_all(&metrics, &stream, &tenant);
        let text = metrics.encode();
        for (family, kind) in FAMILIES.iter().zip([
            "gauge",
            "counter",
            "counter",
            "histogram",
            "counter",
            "counter",
            "counter",
            "counter",
            "counter",
            "gauge",
            "gauge",
        ]) {
            assert!(
                text.contains(&format!("# TYPE {family} {kind}\n")),
                "{family} ({kind}) missing from:\n{text}"
            );
        }
        let one = |name: &str| {
            let found = samples(&text, name);
            assert_eq!(found.len(), 1, "{name}: {found:?}");
            found[0].clone()
        };
        assert_eq!(one("streamkeeper_pings_sent_total").1, 1.0);
        assert_eq!(one("streamkeeper_pongs_received_total").1, 1.0);
        assert_eq!(one("streamkeeper_pong_rtt_seconds_count").1, 1.0);
        assert!((one("streamkeeper_pong_rtt_seconds_sum").1 - 0.02).abs() < 1e-9);
        assert_eq!(one("streamkeeper_app_clients").1, 2.0);
        assert_eq!(one("streamkeeper_redis_up").1, 1.0);
        let (labels, value) = one("streamkeeper_reconnects_total");
        assert_eq!((labels["reason"].as_str(), value), ("pong_timeout", 1.0));
        let (labels, _) = one("streamkeeper_token_refresh_total");
        assert_eq!(
            (labels["tenant"].as_str(), labels["result"].as_str()),
            ("acme", "ok")
        );
    }

    #[test]
    fn fresh_registry_has_every_reap_reason_at_zero_and_redis_down() {
        let metrics = Metrics::new();
        let text = metrics.encode();
        let reaped = samples(&text, "streamkeeper_reaped_total");
        assert_eq!(reaped.len(), DropReason::ALL.len());
        assert!(reaped.iter().all(|(_, v)| *v == 0.0));
        assert_eq!(samples(&text, "streamkeeper_redis_up")[0].1, 0.0);
        metrics.reaped(DropReason::OwnerLost);
        let text = metrics.encode();
        let owner_lost: Vec<_> = samples(&text, "streamkeeper_reaped_total")
            .into_iter()
            .filter(|(l, _)| l["reason"] == "owner_lost")
            .collect();
        assert_eq!(owner_lost[0].1, 1.0);
    }

    #[test]
    fn set_state_leaves_exactly_one_state_at_one() {
        let metrics = Metrics::new();
        let (stream, tenant) = ids("acme-queue", "acme");
        let handle = metrics.stream(&stream, &tenant);
        for (i, state) in StreamState::ALL.into_iter().enumerate() {
            // Alternate the two ways of setting a state; they write the same series.
            if i % 2 == 0 {
                metrics.set_state(&stream, &tenant, state);
            } else {
                handle.state(state);
            }
            let states = states_of(&metrics.encode(), &stream);
            assert_eq!(states.len(), StreamState::ALL.len(), "{states:?}");
            let on: Vec<_> = states.iter().filter(|(_, v)| **v == 1.0).collect();
            assert_eq!(on, [(&state.as_str().to_owned(), &1.0)], "{states:?}");
            assert!(states.values().all(|v| *v == 0.0 || *v == 1.0));
        }
    }

    #[test]
    fn forget_removes_every_series_of_the_stream_and_only_those() {
        let metrics = Metrics::new();
        let (gone, tenant) = ids("gone", "acme");
        let (kept, _) = ids("kept", "acme");
        touch_all(&metrics, &gone, &tenant);
        metrics
            .stream(&gone, &tenant)
            .reconnect(DropReason::TcpError.as_str());
        metrics
            .stream(&gone, &tenant)
            .event(EventOutcome::DuplicateSuppressed);
        touch_all(&metrics, &kept, &tenant);

        metrics.forget(&gone, &tenant);
        let text = metrics.encode();
        assert!(!text.contains("cc/gone"), "{text}");
        for family in [
            "streamkeeper_stream_state",
            "streamkeeper_pings_sent_total",
            "streamkeeper_pong_rtt_seconds_count",
            "streamkeeper_reconnects_total",
            "streamkeeper_events_total",
            "streamkeeper_gaps_total",
            "streamkeeper_app_clients",
        ] {
            let series = samples(&text, family);
            assert!(!series.is_empty(), "{family} of the kept stream is gone");
            assert!(
                series.iter().all(|(l, _)| l["stream"] == "cc/kept"),
                "{family}"
            );
        }
        // Per-tenant and global families are not per stream, so they stay.
        assert_eq!(samples(&text, "streamkeeper_token_refresh_total").len(), 1);

        // A stream that comes back starts from zero.
        let again = metrics.stream(&gone, &tenant);
        again.ping_sent();
        let pings: Vec<_> = samples(&metrics.encode(), "streamkeeper_pings_sent_total")
            .into_iter()
            .filter(|(l, _)| l["stream"] == "cc/gone")
            .collect();
        assert_eq!(pings.len(), 1);
        assert_eq!(pings[0].1, 1.0);
    }

    #[test]
    fn registries_are_independent() {
        let (a, b) = (Metrics::new(), Metrics::new());
        let (stream, tenant) = ids("acme-queue", "acme");
        a.stream(&stream, &tenant).ping_sent();
        assert!(
            a.encode()
                .contains("streamkeeper_pings_sent_total{stream=\"cc/acme-queue\"} 1")
        );
        assert!(!b.encode().contains("cc/acme-queue"));
    }

    #[test]
    fn label_values_are_the_contract_words() {
        let outcomes: Vec<_> = EventOutcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(outcomes, ["delivered", "duplicate_suppressed", "dropped"]);
        for (i, o) in EventOutcome::ALL.into_iter().enumerate() {
            assert_eq!(o.index(), i);
        }
        let results: Vec<_> = TokenRefreshResult::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            results,
            ["ok", "refused", "invalid", "error", "rate_limited"]
        );
    }

    /// The same series, written with the Prometheus client library the metrics were built on
    /// before: every line (HELP, TYPE, samples) must come out the same, in some order.
    #[test]
    fn renders_what_the_prometheus_client_library_rendered() {
        use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts};

        let ours = Metrics::new();
        let reference = prometheus::Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let v = IntCounterVec::new(Opts::new(name, help), labels).expect("valid");
            reference
                .register(Box::new(v.clone()))
                .expect("registered once");
            v
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let v = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid");
            reference
                .register(Box::new(v.clone()))
                .expect("registered once");
            v
        };
        let state = gauge(
            "streamkeeper_stream_state",
            "1 for the stream's current state, 0 for the others.",
            &["stream", "tenant", "state"],
        );
        let pings = counter(
            "streamkeeper_pings_sent_total",
            "Heartbeat pings sent upstream.",
            &["stream"],
        );
        let pongs = counter(
            "streamkeeper_pongs_received_total",
            "Heartbeat pongs received from upstream.",
            &["stream"],
        );
        let rtt = HistogramVec::new(
            HistogramOpts::new(
                "streamkeeper_pong_rtt_seconds",
                "Round trip from a ping to its pong, in seconds.",
            )
            .buckets(PONG_RTT_BUCKETS.to_vec()),
            &["stream"],
        )
        .expect("valid");
        reference
            .register(Box::new(rtt.clone()))
            .expect("registered once");
        let reaped = counter(
            "streamkeeper_reaped_total",
            "Upstream connections dropped, by reason.",
            &["reason"],
        );
        let reconnects = counter(
            "streamkeeper_reconnects_total",
            "Reconnects of a stream, by the reason the previous connection ended.",
            &["stream", "reason"],
        );
        let refresh = counter(
            "streamkeeper_token_refresh_total",
            "Token refreshes, by result.",
            &["tenant", "result"],
        );
        let events = counter(
            "streamkeeper_events_total",
            "Platform events, by what became of them.",
            &["stream", "outcome"],
        );
        let gaps = counter(
            "streamkeeper_gaps_total",
            "Gaps reported to the app: events may have been missed.",
            &["stream"],
        );
        let clients = gauge(
            "streamkeeper_app_clients",
            "Local app clients subscribed to the stream.",
            &["stream"],
        );
        let redis_up = IntGauge::new(
            "streamkeeper_redis_up",
            "1 while the coordination store answers, 0 otherwise.",
        )
        .expect("valid");
        reference
            .register(Box::new(redis_up.clone()))
            .expect("registered once");
        for reason in DropReason::ALL {
            reaped.with_label_values(&[reason.as_str()]);
        }

        let (a, acme) = ids("a-queue", "acme");
        let (b, globex) = ids("b-queue", "globex");
        for (stream, tenant, st, n) in [
            (&a, &acme, StreamState::Degraded, 3u64),
            (&b, &globex, StreamState::Active, 1),
        ] {
            let (s, t) = (stream.as_str(), tenant.as_str());
            let handle = ours.stream(stream, tenant);
            handle.state(st);
            for other in StreamState::ALL {
                state
                    .with_label_values(&[s, t, other.as_str()])
                    .set(i64::from(other == st));
            }
            for _ in 0..n {
                handle.ping_sent();
                pings.with_label_values(&[s]).inc();
            }
            // Exact in binary, so both sums are the same float.
            for ms in [250, 500, 2_500, 30_000].into_iter().take(n as usize + 1) {
                let d = Duration::from_millis(ms);
                handle.pong(d);
                pongs.with_label_values(&[s]).inc();
                rtt.with_label_values(&[s]).observe(d.as_secs_f64());
            }
            handle.event(EventOutcome::Delivered);
            handle.event(EventOutcome::Dropped);
            for o in EventOutcome::ALL {
                let c = events.with_label_values(&[s, o.as_str()]);
                if o != EventOutcome::DuplicateSuppressed {
                    c.inc();
                }
            }
            gaps.with_label_values(&[s]);
            handle.app_clients(n as u32);
            clients.with_label_values(&[s]).set(n as i64);
        }
        for reason in [
            DropReason::PongTimeout,
            DropReason::TcpError,
            DropReason::PongTimeout,
        ] {
            ours.stream(&a, &acme).reconnect(reason.as_str());
            reconnects
                .with_label_values(&[a.as_str(), reason.as_str()])
                .inc();
            ours.reaped(reason);
            reaped.with_label_values(&[reason.as_str()]).inc();
        }
        for (tenant, result) in [
            (&acme, TokenRefreshResult::Ok),
            (&globex, TokenRefreshResult::Refused),
            (&acme, TokenRefreshResult::Ok),
        ] {
            ours.token_refresh(tenant, result);
            refresh
                .with_label_values(&[tenant.as_str(), result.as_str()])
                .inc();
        }
        ours.redis_up(true);
        redis_up.set(1);

        let theirs = prometheus::TextEncoder::new()
            .encode_to_string(&reference.gather())
            .expect("encodes");
        let sorted = |text: &str| {
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            lines.sort();
            lines
        };
        assert_eq!(sorted(&ours.encode()), sorted(&theirs));
        assert_eq!(TEXT_FORMAT, prometheus::TEXT_FORMAT);
    }

    #[test]
    fn rtt_buckets_span_one_millisecond_to_ten_seconds() {
        let metrics = Metrics::new();
        let (stream, tenant) = ids("acme-queue", "acme");
        let handle = metrics.stream(&stream, &tenant);
        handle.pong(Duration::from_micros(500));
        handle.pong(Duration::from_secs(30));
        let buckets = samples(&metrics.encode(), "streamkeeper_pong_rtt_seconds_bucket");
        let le = |bound: &str| {
            buckets
                .iter()
                .find(|(l, _)| l["le"] == bound)
                .map(|(_, v)| *v)
        };
        assert_eq!(le("0.001"), Some(1.0));
        assert_eq!(le("10"), Some(1.0));
        assert_eq!(le("+Inf"), Some(2.0));
    }
}
