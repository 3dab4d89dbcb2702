//! Whether the store answers: per tenant, and for the pod (`streamkeeper_redis_up`).
//!
//! On a Redis Cluster a tenant's keys live on one node (its hash tag), and that node may be
//! down alone, so the answer is per tenant: the result of the last call about that tenant that
//! went to its node (a beat, a look at its leases, an acquire, a checkpoint write, a publish, a
//! release, a pool slot). A sweep does not count: while Redis was unavailable recently it only
//! pings, and a ping may go to any node.
//!
//! The pod's answer is up exactly when the transitions subscription is up and every tenant of
//! the config answered its last call. So with one node of a cluster down it reads down, steadily,
//! however the calls to the other nodes go, and up again once the last tenant that was down
//! answered. Tenants nobody called yet count as up.
//!
//! ```
//! use streamkeeper_api::Tenant;
//! use streamkeeper_sidecar::ownership::Health;
//! use tokio::time::Instant;
//!
//! let (a, b): (Tenant, Tenant) = ("tenant-a".parse().expect("tenant"), "tenant-b".parse().expect("tenant"));
//! let mut h = Health::default();
//! h.watch([a.clone(), b.clone()].into());
//! let now = Instant::now();
//! assert_eq!(h.mark(&a, false, now).pod, Some(false));
//! // Another tenant's node answering changes nothing about the pod.
//! assert_eq!(h.mark(&b, true, now).pod, None);
//! assert!(!h.up());
//! assert_eq!(h.mark(&a, true, now).pod, Some(true));
//! ```

use std::collections::{BTreeSet, HashMap};

use streamkeeper_api::Tenant;
use tokio::time::Instant;

/// How one tenant's store node answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantHealth {
    /// Whether the last call about the tenant was answered.
    pub up: bool,
    /// Since when it answers again, after it did not.
    pub back_at: Option<Instant>,
}

impl TenantHealth {
    const UNKNOWN: Self = Self {
        up: true,
        back_at: None,
    };
}

/// What one call's result changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Change {
    /// The tenant's answer flipped.
    pub tenant: bool,
    /// The pod's answer flipped, to this.
    pub pod: Option<bool>,
}

/// The store's health as this pod sees it.
#[derive(Debug)]
pub struct Health {
    tenants: HashMap<Tenant, TenantHealth>,
    watched: BTreeSet<Tenant>,
    subscribed: bool,
    up: bool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            tenants: HashMap::new(),
            watched: BTreeSet::new(),
            subscribed: true,
            up: true,
        }
    }
}

impl Health {
    /// Records whether a call about `tenant`, made at `now`, was answered.
    pub fn mark(&mut self, tenant: &Tenant, up: bool, now: Instant) -> Change {
        let h = self
            .tenants
            .entry(tenant.clone())
            .or_insert(TenantHealth::UNKNOWN);
        let flipped = h.up != up;
        if flipped {
            h.up = up;
            if up {
                h.back_at = Some(now);
            }
        }
        Change {
            tenant: flipped,
            pod: self.settle(),
        }
    }

    /// Records whether the transitions subscription is up; returns the pod's answer when it
    /// flipped.
    pub fn subscription(&mut self, up: bool) -> Option<bool> {
        self.subscribed = up;
        self.settle()
    }

    /// Adds a tenant of the config.
    pub fn watch_one(&mut self, tenant: &Tenant) -> Option<bool> {
        self.watched.insert(tenant.clone());
        self.settle()
    }

    /// The tenants of the config, replacing the earlier ones: a tenant no stream names any
    /// more no longer counts, and what was known about it is forgotten.
    pub fn watch(&mut self, tenants: BTreeSet<Tenant>) -> Option<bool> {
        self.tenants.retain(|t, _| tenants.contains(t));
        self.watched = tenants;
        self.settle()
    }

    /// The tenants of the config.
    pub fn watched(&self) -> &BTreeSet<Tenant> {
        &self.watched
    }

    /// How `tenant`'s node answers.
    pub fn of(&self, tenant: &Tenant) -> TenantHealth {
        self.tenants
            .get(tenant)
            .copied()
            .unwrap_or(TenantHealth::UNKNOWN)
    }

    /// The pod's answer: the subscription is up and every tenant of the config answered.
    pub fn up(&self) -> bool {
        self.up
    }

    /// The tenants of the config whose node did not answer the last call, sorted.
    pub fn down(&self) -> Vec<Tenant> {
        self.watched
            .iter()
            .filter(|t| !self.of(t).up)
            .cloned()
            .collect()
    }

    fn settle(&mut self) -> Option<bool> {
        let up = self.subscribed && self.watched.iter().all(|t| self.of(t).up);
        (std::mem::replace(&mut self.up, up) != up).then_some(up)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn t(s: &str) -> Tenant {
        s.parse().expect("tenant")
    }

    #[tokio::test(start_paused = true)]
    async fn one_tenant_down_keeps_the_pod_down_whatever_the_others_answer() {
        let mut h = Health::default();
        h.watch([t("a"), t("b"), t("c")].into());
        let mut flips = Vec::new();
        // Rounds in which a's node never answers and the others always do, in every order.
        for round in 0..10 {
            let order = if round % 2 == 0 {
                ["a", "b", "c"]
            } else {
                ["c", "a", "b"]
            };
            for name in order {
                let c = h.mark(&t(name), name != "a", Instant::now());
                flips.extend(c.pod);
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(flips, [false], "down once, and it stayed down");
        assert_eq!(h.down(), [t("a")]);
        let back = Instant::now();
        let c = h.mark(&t("a"), true, back);
        assert_eq!(
            c,
            Change {
                tenant: true,
                pod: Some(true)
            }
        );
        assert_eq!(h.of(&t("a")).back_at, Some(back));
        assert!(h.down().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_subscription_counts_and_tenants_outside_the_config_do_not() {
        let mut h = Health::default();
        h.watch([t("a")].into());
        let now = Instant::now();
        assert_eq!(
            h.mark(&t("gone"), false, now).pod,
            None,
            "not in the config"
        );
        assert!(h.up());
        assert_eq!(h.subscription(false), Some(false));
        assert_eq!(h.mark(&t("a"), true, now).pod, None);
        assert_eq!(h.subscription(true), Some(true));
        // A tenant that is down leaves the config: it no longer holds the pod down.
        h.watch([t("a"), t("b")].into());
        assert_eq!(h.mark(&t("b"), false, now).pod, Some(false));
        assert_eq!(h.watch([t("a")].into()), Some(true));
        assert_eq!(h.of(&t("b")), TenantHealth::UNKNOWN, "forgotten");
    }
}
