//! The single-owner and SIGKILL-takeover scenario of `redis_single_owner`, on a real
//! three-master Redis Cluster (`redis+cluster://...`): the tenant's keys share one hash slot,
//! the Lua scripts run on its master, transitions are broadcast to every node.

use streamkeeper_e2e::{
    fleet::{TENANT, stream_id},
    redis::{RedisCluster, lease_key},
    scenarios,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_one_pod_streams_and_after_sigkill_a_standby_takes_over() {
    let cluster = RedisCluster::start();
    let node = cluster.node_of(&lease_key(TENANT, &stream_id("single")));
    eprintln!(
        "cluster {}; the tenant's slot is on port {node}",
        cluster.url()
    );
    scenarios::single_owner_then_sigkill("redis-cluster", cluster.url(), node).await;
}
