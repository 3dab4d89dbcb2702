//! The store tests' view of a deployment: the in-process store, a Redis node or a Redis
//! Cluster behind one trait, and the helpers every scenario uses. The Redis servers come from
//! `streamkeeper-testkit`.

#![allow(dead_code)] // each test binary (and the bench) uses a different part of the fixture

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use streamkeeper_api::{EventId, Fence, PodName, StreamState, Tenant, Transition};
use streamkeeper_coord::{
    AckSeq, Beat, BeatOutcome, CheckpointOutcome, CheckpointWrite, ConnRecord, LeaseView,
    MemoryStore, RedisStore, Store, StreamKey, TransitionStream,
};
pub use streamkeeper_testkit::redis::*;

/// What every contract scenario needs of a deployment.
pub trait Deployment: Send {
    /// A short name, for messages.
    fn name(&self) -> &'static str;
    /// A pod's store: on Redis a client of its own, in memory the one store that every pod of
    /// the process shares (as the demo's pods do).
    fn store(&self) -> Arc<dyn Store>;
    /// Redis's own view, for checks beside the store's answers; `None` for the in-process
    /// store, which has nothing to look at but its answers.
    fn redis(&self) -> Option<&dyn RedisDeployment>;
}

/// The capability of a real Redis deployment: it can be stopped, restarted, wiped and sent
/// raw commands. Scenarios that need it take a `&mut dyn RedisDeployment`, so they cannot run
/// on the in-process store (which can be none of these) by construction; the suite lists them
/// for that store as ignored, with the reason.
pub trait RedisDeployment: Deployment {
    /// The store URL.
    fn url(&self) -> String;
    /// Deletes every key everywhere (as if Redis had restarted empty).
    fn flushall(&self);
    /// Kills every server.
    fn stop(&mut self);
    /// Restarts every server, empty, on the same ports, and waits until it serves.
    fn restart(&mut self);
    /// Sends a command to the node that owns `key` (any node for `None`).
    fn command_for(&self, key: Option<&str>, args: &[&str]) -> Result<redis::Value, String>;
    /// Whether this is a cluster.
    fn is_cluster(&self) -> bool;
    /// The port of the server that holds `key`.
    fn port_of(&self, key: &str) -> u16;
}

/// The in-process store.
pub struct Memory(Arc<MemoryStore>);

impl Memory {
    /// An empty store.
    pub fn start() -> Self {
        Self(Arc::new(MemoryStore::new()))
    }
}

impl Deployment for Memory {
    fn name(&self) -> &'static str {
        "memory"
    }
    fn store(&self) -> Arc<dyn Store> {
        self.0.clone()
    }
    fn redis(&self) -> Option<&dyn RedisDeployment> {
        None
    }
}

fn redis_store(url: &str) -> Arc<dyn Store> {
    Arc::new(RedisStore::connect(url).expect("url parses"))
}

impl Deployment for RedisServer {
    fn name(&self) -> &'static str {
        "redis node"
    }
    fn store(&self) -> Arc<dyn Store> {
        redis_store(&RedisServer::url(self))
    }
    fn redis(&self) -> Option<&dyn RedisDeployment> {
        Some(self)
    }
}

impl RedisDeployment for RedisServer {
    fn url(&self) -> String {
        RedisServer::url(self)
    }
    fn flushall(&self) {
        RedisServer::flushall(self)
    }
    fn stop(&mut self) {
        RedisServer::stop(self)
    }
    fn restart(&mut self) {
        RedisServer::restart(self)
    }
    fn command_for(&self, _key: Option<&str>, args: &[&str]) -> Result<redis::Value, String> {
        command(self.port, args)
    }
    fn is_cluster(&self) -> bool {
        false
    }
    fn port_of(&self, _key: &str) -> u16 {
        self.port
    }
}

impl Deployment for RedisCluster {
    fn name(&self) -> &'static str {
        "redis cluster"
    }
    fn store(&self) -> Arc<dyn Store> {
        redis_store(&RedisCluster::url(self))
    }
    fn redis(&self) -> Option<&dyn RedisDeployment> {
        Some(self)
    }
}

impl RedisDeployment for RedisCluster {
    fn url(&self) -> String {
        RedisCluster::url(self)
    }
    fn flushall(&self) {
        RedisCluster::flushall(self)
    }
    fn stop(&mut self) {
        RedisCluster::stop(self)
    }
    fn restart(&mut self) {
        RedisCluster::restart(self)
    }
    fn command_for(&self, key: Option<&str>, args: &[&str]) -> Result<redis::Value, String> {
        let port = match key {
            Some(k) => self.node_of(k),
            None => self.nodes[0].port,
        };
        command(port, args)
    }
    fn is_cluster(&self) -> bool {
        true
    }
    fn port_of(&self, key: &str) -> u16 {
        self.node_of(key)
    }
}

// ---------------------------------------------------------------------------------------------
// helpers

pub fn key(tenant: &str, stream: &str) -> StreamKey {
    StreamKey::new(
        tenant.parse().expect("tenant"),
        stream.parse().expect("stream"),
    )
}

pub fn pod(p: &str) -> PodName {
    p.parse().expect("pod")
}

pub fn record(k: &StreamKey, owner: &str, fence: Fence, last_pong: u64) -> ConnRecord {
    ConnRecord {
        stream: k.stream().clone(),
        tenant: k.tenant().clone(),
        socket_id: Some(streamkeeper_api::ConnectionId("sock-1".into())),
        last_pong,
        platform: streamkeeper_api::config::Platform::Generic,
        state: StreamState::Active,
        retry_count: 0,
        owner: pod(owner),
        fence,
    }
}

/// A beat that renews for 60 s.
pub fn beat(k: &StreamKey, owner: &str, fence: Fence, last_pong: u64) -> Beat {
    Beat {
        key: k.clone(),
        fence,
        record: record(k, owner, fence, last_pong),
        lease_ttl: Duration::from_secs(60),
    }
}

/// A beat that leaves a lease of 1 ms: the owner stops vouching right away.
pub fn last_beat(k: &StreamKey, owner: &str, fence: Fence, last_pong: u64) -> Beat {
    Beat {
        lease_ttl: Duration::from_millis(1),
        ..beat(k, owner, fence, last_pong)
    }
}

/// Beats that must all be confirmed (set-up steps of a scenario).
pub async fn beat_ok(s: &Arc<dyn Store>, beats: &[Beat]) {
    let out = s.beat(beats).await;
    assert!(
        out.iter().all(BeatOutcome::confirmed),
        "every beat confirmed: {out:?}"
    );
}

/// A checkpoint write with the next sequence number (they only grow, as an owner's do).
pub fn write(k: &StreamKey, fence: Fence, id: &str) -> CheckpointWrite {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    CheckpointWrite {
        key: k.clone(),
        fence,
        seq: AckSeq(SEQ.fetch_add(1, Ordering::Relaxed) + 1),
        id: EventId(id.into()),
    }
}

/// Stores a checkpoint with the next sequence number.
pub async fn save(s: &Arc<dyn Store>, k: &StreamKey, fence: Fence, id: &str) -> CheckpointOutcome {
    s.save_checkpoint(&write(k, fence, id)).await
}

pub fn transition(k: &StreamKey, to: StreamState, reason: &str, fence: Fence) -> Transition {
    Transition {
        stream: k.stream().clone(),
        tenant: k.tenant().clone(),
        from: StreamState::Active,
        to,
        reason: reason.into(),
        owner: Some(pod("pod-a")),
        fence: Some(fence),
        at: 1,
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Polls `check` until it holds, failing the test after `within`.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next transition, failing the test after `within`.
pub async fn next(sub: &mut TransitionStream, within: Duration) -> Transition {
    match tokio::time::timeout(within, sub.next()).await {
        Ok(Some(t)) => t,
        Ok(None) => panic!("the transition stream ended"),
        Err(_) => panic!("no transition within {within:?}"),
    }
}

/// Whether the lease of `k` lapsed: on Redis, whether Redis's clock passed its expiry score
/// (read raw, beside the store); in memory, what the store says (there is nothing else).
pub async fn lease_lapsed(d: &dyn Deployment, k: &StreamKey) -> bool {
    match d.redis() {
        Some(r) => redis_lease_lapsed(r, k),
        None => {
            d.store()
                .lease_expiries(k.tenant(), std::slice::from_ref(k.stream()))
                .await
                .expect("lease expiries")
                == vec![LeaseView::Lapsed]
        }
    }
}

fn redis_lease_lapsed(d: &dyn RedisDeployment, k: &StreamKey) -> bool {
    let leases = format!("sk:{{{}}}:leases", k.tenant());
    let score = match d.command_for(Some(&leases), &["ZSCORE", &leases, k.stream().as_str()]) {
        Ok(v) => value_text(v).parse::<f64>().unwrap_or(0.0),
        Err(e) => panic!("ZSCORE: {e}"),
    };
    // Strictly before now, as the sweep takes a lapse (its range ends before now): an expiry
    // equal to Redis's current millisecond is not swept yet (a race seen once under load).
    score < redis_now_ms(d, &leases)
}

/// Redis's clock (TIME) in milliseconds, on the node that holds `key`.
pub fn redis_now_ms(d: &dyn RedisDeployment, key: &str) -> f64 {
    match d.command_for(Some(key), &["TIME"]) {
        Ok(redis::Value::Array(t)) => {
            let part = |i: usize| -> f64 {
                t.get(i)
                    .cloned()
                    .map(value_text)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0.0)
            };
            part(0) * 1000.0 + (part(1) / 1000.0).floor()
        }
        other => panic!("TIME: {other:?}"),
    }
}

/// Tenants whose keys live on three different masters of `cluster`, in node order.
pub fn one_tenant_per_node(cluster: &RedisCluster) -> Vec<(Tenant, u16)> {
    let mut picked: Vec<(Tenant, u16)> = Vec::new();
    for i in 0..64 {
        let t: Tenant = format!("tenant-{i}").parse().expect("tenant");
        let port = cluster.node_of(&format!("sk:{{{t}}}:live"));
        if picked.iter().all(|(_, p)| *p != port) {
            picked.push((t, port));
        }
        if picked.len() == 3 {
            return picked;
        }
    }
    panic!("64 tenants did not cover three masters: {picked:?}");
}
