//! The Redis key layout. Every key of a tenant carries the tenant in literal braces (the hash
//! tag), so all of a tenant's keys live in one hash slot and one Lua script may touch them all,
//! on a single node and in Redis Cluster alike.
//!
//! | key | type | content |
//! |---|---|---|
//! | `sk:{T}:conn:{stream}` | hash | socketId, lastPong, platform, tenant, state, retryCount, owner, fence; written when it changes (not at every pong: lastPong lives in the live index); no TTL while the stream is live, a retention TTL once it is DEAD |
//! | `sk:{T}:live` | sorted set | stream by lastPong (epoch ms, the owner's clock) |
//! | `sk:{T}:lease:{stream}` | string | `{fence}:{owner}` while granted; `{fence}:{owner}:released` after a release, `{fence}:{owner}:removed` after the stream was removed (tombstones with a retention TTL) |
//! | `sk:{T}:leases` | sorted set | stream by lease expiry (epoch ms, Redis's clock): renewing N leases is one ZADD, and lapsed leases are found in O(log N) |
//! | `sk:{T}:fence` | string | the tenant's fence counter (INCR), raised by re-assertions so it never falls below a fence handed out |
//! | `sk:{T}:pool` | hash | stream -> fence of each pool slot holder; a slot lives while its stream's lease does |
//! | `sk:{T}:ckpt:{stream}` | string | last acked event id, written only under the current fence |
//! | `sk:{T}:ckseq:{stream}` | string | `{fence}:{seq}` of the write that stored the checkpoint: a write of that fence with an equal or lower seq is ignored, so the checkpoint never moves back |
//! | `sk:tenants` | set | registry of tenants, read by `status` only (no hash tag: one slot) |
//! | channel `streamkeeper:transitions` | pub/sub | JSON [`Transition`](streamkeeper_api::Transition) |

use streamkeeper_api::Tenant;

use crate::store::StreamKey;

/// The registry of tenants that have (or had) streams, for `status`.
pub(crate) const TENANTS: &str = "sk:tenants";

/// `sk:{T}:` — every per-tenant key starts with it (scripts build per-stream keys from it).
pub(crate) fn prefix(tenant: &Tenant) -> String {
    format!("sk:{{{tenant}}}:")
}

/// `sk:{T}:conn:{stream}`
pub(crate) fn conn(key: &StreamKey) -> String {
    format!("sk:{{{}}}:conn:{}", key.tenant(), key.stream())
}

/// `sk:{T}:lease:{stream}`
pub(crate) fn lease(key: &StreamKey) -> String {
    format!("sk:{{{}}}:lease:{}", key.tenant(), key.stream())
}

/// `sk:{T}:ckpt:{stream}`
pub(crate) fn ckpt(key: &StreamKey) -> String {
    format!("sk:{{{}}}:ckpt:{}", key.tenant(), key.stream())
}

/// `sk:{T}:ckseq:{stream}`
pub(crate) fn ckseq(key: &StreamKey) -> String {
    format!("sk:{{{}}}:ckseq:{}", key.tenant(), key.stream())
}

/// `sk:{T}:live`
pub(crate) fn live(tenant: &Tenant) -> String {
    format!("sk:{{{tenant}}}:live")
}

/// `sk:{T}:leases`
pub(crate) fn leases(tenant: &Tenant) -> String {
    format!("sk:{{{tenant}}}:leases")
}

/// `sk:{T}:fence`
pub(crate) fn fence(tenant: &Tenant) -> String {
    format!("sk:{{{tenant}}}:fence")
}

/// `sk:{T}:pool`
pub(crate) fn pool(tenant: &Tenant) -> String {
    format!("sk:{{{tenant}}}:pool")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_the_design() {
        let k = StreamKey::new(
            "acme".parse().expect("tenant"),
            "cc/acme-queue-events".parse().expect("stream"),
        );
        assert_eq!(conn(&k), "sk:{acme}:conn:cc/acme-queue-events");
        assert_eq!(lease(&k), "sk:{acme}:lease:cc/acme-queue-events");
        assert_eq!(ckpt(&k), "sk:{acme}:ckpt:cc/acme-queue-events");
        assert_eq!(ckseq(&k), "sk:{acme}:ckseq:cc/acme-queue-events");
        assert_eq!(live(k.tenant()), "sk:{acme}:live");
        assert_eq!(prefix(k.tenant()) + "conn:" + k.stream().as_str(), conn(&k));
    }
}
