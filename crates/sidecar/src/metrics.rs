//! The sidecar's Prometheus metrics: one [`Metrics`] per sidecar, each with its own registry.
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
//! The session's hot path goes through a [`StreamMetrics`] handle, whose series are resolved once
//! by [`Metrics::stream`], so a heartbeat costs an atomic add rather than a labelled lookup.
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

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use streamkeeper_api::{DropReason, StreamId, StreamState, Tenant};

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

/// The metrics of one sidecar, in a registry of its own (several sidecars may share a process).
pub struct Metrics {
    registry: Registry,
    state: IntGaugeVec,
    pings: IntCounterVec,
    pongs: IntCounterVec,
    rtt: HistogramVec,
    reaped: IntCounterVec,
    reconnects: IntCounterVec,
    token_refresh: IntCounterVec,
    events: IntCounterVec,
    gaps: IntCounterVec,
    app_clients: IntGaugeVec,
    redis_up: IntGauge,
    /// Held while the seven state series of a stream are written, and while a scrape gathers,
    /// so neither a concurrent writer nor a scrape sees a stream in zero or two states.
    state_lock: Arc<Mutex<()>>,
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

fn lock(m: &Mutex<()>) -> MutexGuard<'_, ()> {
    // The guarded data is `()`: a panic while holding the lock cannot leave it inconsistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    registry
        .register(Box::new(collector.clone()))
        .expect("metric families are statically defined, valid and registered once");
    collector
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels)
        .expect("metric names and labels are statically valid");
    register(registry, vec)
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels)
        .expect("metric names and labels are statically valid");
    register(registry, vec)
}

/// Removes every series of `vec` whose `label` reads `value`, whatever its other labels.
fn remove_matching<T: MetricVecBuilder>(vec: &MetricVec<T>, label: &str, value: &str) {
    for family in vec.collect() {
        for metric in family.get_metric() {
            let pairs = metric.get_label();
            if pairs
                .iter()
                .any(|p| p.name() == label && p.value() == value)
            {
                let labels: HashMap<&str, &str> =
                    pairs.iter().map(|p| (p.name(), p.value())).collect();
                // Err only means a concurrent `forget` removed it first.
                let _ = vec.remove(&labels);
            }
        }
    }
}

impl Metrics {
    /// Creates every family in a new registry. `streamkeeper_reaped_total` starts at 0 for every
    /// [`DropReason`] and `streamkeeper_redis_up` at 0, so rates and alerts work from the start.
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let rtt = HistogramVec::new(
            HistogramOpts::new(
                "streamkeeper_pong_rtt_seconds",
                "Round trip from a ping to its pong, in seconds.",
            )
            .buckets(PONG_RTT_BUCKETS.to_vec()),
            &["stream"],
        )
        .expect("metric names and labels are statically valid");
        let redis_up = IntGauge::new(
            "streamkeeper_redis_up",
            "1 while the coordination store answers, 0 otherwise.",
        )
        .expect("metric names are statically valid");
        let metrics = Self {
            state: gauge_vec(
                r,
                "streamkeeper_stream_state",
                "1 for the stream's current state, 0 for the others.",
                &["stream", "tenant", "state"],
            ),
            pings: counter_vec(
                r,
                "streamkeeper_pings_sent_total",
                "Heartbeat pings sent upstream.",
                &["stream"],
            ),
            pongs: counter_vec(
                r,
                "streamkeeper_pongs_received_total",
                "Heartbeat pongs received from upstream.",
                &["stream"],
            ),
            rtt: register(r, rtt),
            reaped: counter_vec(
                r,
                "streamkeeper_reaped_total",
                "Upstream connections dropped, by reason.",
                &["reason"],
            ),
            reconnects: counter_vec(
                r,
                "streamkeeper_reconnects_total",
                "Reconnects of a stream, by the reason the previous connection ended.",
                &["stream", "reason"],
            ),
            token_refresh: counter_vec(
                r,
                "streamkeeper_token_refresh_total",
                "Token refreshes, by result.",
                &["tenant", "result"],
            ),
            events: counter_vec(
                r,
                "streamkeeper_events_total",
                "Platform events, by what became of them.",
                &["stream", "outcome"],
            ),
            gaps: counter_vec(
                r,
                "streamkeeper_gaps_total",
                "Gaps reported to the app: events may have been missed.",
                &["stream"],
            ),
            app_clients: gauge_vec(
                r,
                "streamkeeper_app_clients",
                "Local app clients subscribed to the stream.",
                &["stream"],
            ),
            redis_up: register(r, redis_up),
            registry,
            state_lock: Arc::new(Mutex::new(())),
        };
        for reason in DropReason::ALL {
            metrics.reaped.with_label_values(&[reason.as_str()]);
        }
        metrics
    }

    /// Resolves the series of one stream once, for the session's hot path. The series appear
    /// (at 0) from this call on; [`forget`](Self::forget) removes them.
    pub fn stream(&self, stream: &StreamId, tenant: &Tenant) -> StreamMetrics {
        let s = stream.as_str();
        let t = tenant.as_str();
        StreamMetrics {
            inner: Arc::new(StreamHandles {
                stream: stream.clone(),
                pings: self.pings.with_label_values(&[s]),
                pongs: self.pongs.with_label_values(&[s]),
                rtt: self.rtt.with_label_values(&[s]),
                gaps: self.gaps.with_label_values(&[s]),
                app_clients: self.app_clients.with_label_values(&[s]),
                events: EventOutcome::ALL.map(|o| self.events.with_label_values(&[s, o.as_str()])),
                states: StreamState::ALL
                    .map(|st| self.state.with_label_values(&[s, t, st.as_str()])),
                reconnects: self.reconnects.clone(),
                state_lock: Arc::clone(&self.state_lock),
            }),
        }
    }

    /// Sets `streamkeeper_stream_state` of a stream: 1 for `state`, 0 for the six others.
    pub fn set_state(&self, stream: &StreamId, tenant: &Tenant, state: StreamState) {
        let (s, t) = (stream.as_str(), tenant.as_str());
        let _guard = lock(&self.state_lock);
        for st in StreamState::ALL {
            self.state
                .with_label_values(&[s, t, st.as_str()])
                .set(i64::from(st == state));
        }
    }

    /// Removes every series of a stream (call it once the stream's session has ended, with the
    /// tenant the stream was registered with), so streams that come and go leave nothing behind.
    /// [`StreamMetrics`] handles still held afterwards write to detached series nobody scrapes,
    /// and so would a handle taken before `forget` for the stream's next session: take the next
    /// session's handle after forgetting the previous one.
    pub fn forget(&self, stream: &StreamId, tenant: &Tenant) {
        let (s, t) = (stream.as_str(), tenant.as_str());
        {
            let _guard = lock(&self.state_lock);
            for st in StreamState::ALL {
                let _ = self.state.remove_label_values(&[s, t, st.as_str()]);
            }
        }
        // Err from a removal only means the series was never created.
        let _ = self.pings.remove_label_values(&[s]);
        let _ = self.pongs.remove_label_values(&[s]);
        let _ = self.rtt.remove_label_values(&[s]);
        let _ = self.gaps.remove_label_values(&[s]);
        let _ = self.app_clients.remove_label_values(&[s]);
        for outcome in EventOutcome::ALL {
            let _ = self.events.remove_label_values(&[s, outcome.as_str()]);
        }
        // Reconnect reasons are open-ended: remove whichever were recorded.
        remove_matching(&self.reconnects, "stream", s);
    }

    /// Counts a reaped connection in `streamkeeper_reaped_total`.
    pub fn reaped(&self, reason: DropReason) {
        self.reaped.with_label_values(&[reason.as_str()]).inc();
    }

    /// Counts a token refresh of `tenant` in `streamkeeper_token_refresh_total`.
    pub fn token_refresh(&self, tenant: &Tenant, result: TokenRefreshResult) {
        self.token_refresh
            .with_label_values(&[tenant.as_str(), result.as_str()])
            .inc();
    }

    /// Sets `streamkeeper_redis_up`.
    pub fn redis_up(&self, up: bool) {
        self.redis_up.set(i64::from(up));
    }

    /// The whole registry in the Prometheus text format 0.0.4 ([`prometheus::TEXT_FORMAT`]).
    pub fn encode(&self) -> String {
        let families = {
            let _guard = lock(&self.state_lock);
            self.registry.gather()
        };
        let encoder = TextEncoder::new();
        let mut text = String::new();
        for family in &families {
            // Encoding checks a family before writing any of it, so a bad one is skipped whole.
            if let Err(error) = encoder.encode_utf8(std::slice::from_ref(family), &mut text) {
                tracing::warn!(family = family.name(), %error, "metric family not encoded");
            }
        }
        text
    }
}

/// One stream's series, resolved once by [`Metrics::stream`]: each call is an atomic update.
/// Cloning is cheap; clones update the same series.
#[derive(Clone)]
pub struct StreamMetrics {
    inner: Arc<StreamHandles>,
}

struct StreamHandles {
    stream: StreamId,
    pings: IntCounter,
    pongs: IntCounter,
    rtt: Histogram,
    gaps: IntCounter,
    app_clients: IntGauge,
    /// Indexed by [`EventOutcome::index`].
    events: [IntCounter; 3],
    /// In the order of [`StreamState::ALL`].
    states: [IntGauge; 7],
    reconnects: IntCounterVec,
    state_lock: Arc<Mutex<()>>,
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
        self.inner.pings.inc();
    }

    /// Counts a pong received and records its round trip.
    pub fn pong(&self, rtt: Duration) {
        self.inner.pongs.inc();
        self.inner.rtt.observe(rtt.as_secs_f64());
    }

    /// Counts a platform event by what became of it.
    pub fn event(&self, outcome: EventOutcome) {
        self.inner.events[outcome.index()].inc();
    }

    /// Counts a gap reported to the app.
    pub fn gap(&self) {
        self.inner.gaps.inc();
    }

    /// Counts a reconnect. `reason` should be a [`DropReason::as_str`] (a small closed set: every
    /// distinct value is a new series).
    pub fn reconnect(&self, reason: &str) {
        self.inner
            .reconnects
            .with_label_values(&[self.inner.stream.as_str(), reason])
            .inc();
    }

    /// Sets the number of local app clients.
    pub fn app_clients(&self, n: usize) {
        self.inner
            .app_clients
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Sets the stream's state: 1 for `state`, 0 for the six others.
    pub fn state(&self, state: StreamState) {
        let _guard = lock(&self.inner.state_lock);
        for (gauge, st) in self.inner.states.iter().zip(StreamState::ALL) {
            gauge.set(i64::from(st == state));
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
