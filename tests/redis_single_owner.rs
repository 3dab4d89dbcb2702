//! Two and three `streamkeeper sidecar` processes on one real Redis, configured with the same
//! stream: exactly one streams; SIGKILL the owner and another pod streams within lease TTL + 1 s,
//! a DEAD transition is published, no acked event is delivered again and none is lost.
//! (The scenario: `streamkeeper_e2e::scenarios::single_owner_then_sigkill`.)

use streamkeeper_e2e::{redis::RedisServer, scenarios};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_pods_streams_and_after_sigkill_a_standby_takes_over_within_lease_ttl() {
    let redis = RedisServer::start();
    scenarios::single_owner_then_sigkill("redis-single", redis.url(), redis.port).await;
}
