//! The controller's Prometheus metrics, served at `{admin}/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric the controller exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles run, by outcome (`ok`, `error`).
    pub reconciles: IntCounterVec,
    /// Reconcile duration in seconds.
    pub reconcile_duration: Histogram,
    /// Failed reconciles by error variant.
    pub reconcile_errors: IntCounterVec,
    /// Writes sent to the API server, by kind (`status`, `configmap`, `event`, `finalizer`).
    pub writes: IntCounterVec,
    /// 1 while this replica holds the leader Lease.
    pub leader: IntGauge,
    /// StreamConnections in the controller's cache.
    pub streams: IntGauge,
    /// Transitions heard from the store.
    pub transitions: IntCounter,
    /// 1 while the store answers (0 without one).
    pub store_up: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "streamkeeper_controller_reconciles_total",
                "Reconciles run, by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new(
                "streamkeeper_controller_reconcile_duration_seconds",
                "Time one reconcile took",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
        )
        .expect("valid metric");
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "streamkeeper_controller_reconcile_errors_total",
                "Failed reconciles, by error variant",
            ),
            &["error"],
        )
        .expect("valid metric");
        let writes = IntCounterVec::new(
            Opts::new(
                "streamkeeper_controller_writes_total",
                "Writes sent to the API server, by kind",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let leader = IntGauge::new(
            "streamkeeper_controller_leader",
            "1 while this replica holds the leader Lease",
        )
        .expect("valid metric");
        let streams = IntGauge::new(
            "streamkeeper_controller_streams",
            "StreamConnections in the controller's cache",
        )
        .expect("valid metric");
        let transitions = IntCounter::new(
            "streamkeeper_controller_transitions_total",
            "Stream transitions heard from the store",
        )
        .expect("valid metric");
        let store_up = IntGauge::new(
            "streamkeeper_controller_store_up",
            "1 while the store answers",
        )
        .expect("valid metric");
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_duration.clone()),
            Box::new(reconcile_errors.clone()),
            Box::new(writes.clone()),
            Box::new(leader.clone()),
            Box::new(streams.clone()),
            Box::new(transitions.clone()),
            Box::new(store_up.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Self {
            registry,
            reconciles,
            reconcile_duration,
            reconcile_errors,
            writes,
            leader,
            streams,
            transitions,
            store_up,
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        // Encoding our own registry into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Counts one write of `kind`.
    pub fn wrote(&self, kind: &str) {
        self.writes.with_label_values(&[kind]).inc();
    }
}
