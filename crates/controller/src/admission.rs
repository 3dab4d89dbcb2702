//! The pool decision: which streams of a tenant may run, given the tenant's limit.
//!
//! Streams are ranked by priority (higher first), then age (older first), then id (so two
//! objects created in the same second still have one order). The first `limit` streams that
//! are not paused are admitted; the rest wait. That ranking makes the three rules hold by
//! construction: never over the limit, never a higher priority waiting while a lower one runs,
//! FIFO within a priority. The previous decisions only name how a stream waits: one that was
//! admitted and lost its slot is `Preempted` (and stays so while it waits), one that never had a
//! slot is `Queued`. So the result depends on the specs alone, and re-running on its own output
//! changes nothing: no flapping.

use std::collections::{BTreeMap, HashMap};

use streamkeeper_api::{StreamId, Tenant, config::DEFAULT_TENANT_LIMIT};

/// One stream as admission sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The stream.
    pub id: StreamId,
    /// The pool it counts against.
    pub tenant: Tenant,
    /// 0..=1000, higher first.
    pub priority: u16,
    /// Creation time (epoch seconds, as `metadata.creationTimestamp` has it): older first.
    pub created: i64,
    /// A paused stream takes no slot.
    pub paused: bool,
}

/// What admission decided for one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// It holds a slot in its tenant's pool: it is rendered into its workload's config.
    Admitted,
    /// Waiting for a slot; it never held one (or held one and was paused since).
    Queued,
    /// Waiting for a slot after a higher-priority stream (or a lower limit) took its own.
    Preempted,
    /// `spec.paused`: no slot, not rendered.
    Paused,
}

impl Decision {
    /// Whether the stream is rendered into its workload's config.
    pub fn admitted(self) -> bool {
        self == Self::Admitted
    }
}

/// Per-tenant pool limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The limit of every tenant not listed.
    pub default: u32,
    /// Per-tenant overrides.
    pub tenants: BTreeMap<Tenant, u32>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            default: DEFAULT_TENANT_LIMIT,
            tenants: BTreeMap::new(),
        }
    }
}

impl Limits {
    /// The limit of `tenant`.
    pub fn of(&self, tenant: &Tenant) -> u32 {
        self.tenants.get(tenant).copied().unwrap_or(self.default)
    }
}

/// Decides every stream in `candidates` (any mix of tenants), given the decisions of the
/// previous run (streams absent from it are new). Returns one decision per candidate.
pub fn admit(
    candidates: &[Candidate],
    limits: &Limits,
    previous: &HashMap<StreamId, Decision>,
) -> HashMap<StreamId, Decision> {
    let mut by_tenant: BTreeMap<&Tenant, Vec<&Candidate>> = BTreeMap::new();
    for c in candidates {
        by_tenant.entry(&c.tenant).or_default().push(c);
    }
    let mut out = HashMap::with_capacity(candidates.len());
    for (tenant, streams) in by_tenant {
        admit_tenant(streams, limits.of(tenant), previous, &mut out);
    }
    out
}

/// The ranking: priority (higher first), then age (older first), then id.
fn rank(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.priority
        .cmp(&a.priority)
        .then(a.created.cmp(&b.created))
        .then_with(|| a.id.cmp(&b.id))
}

fn admit_tenant(
    mut streams: Vec<&Candidate>,
    limit: u32,
    previous: &HashMap<StreamId, Decision>,
    out: &mut HashMap<StreamId, Decision>,
) {
    streams.sort_by(|a, b| rank(a, b));
    let mut free = limit as usize;
    for c in streams {
        let decision = if c.paused {
            Decision::Paused
        } else if free > 0 {
            free -= 1;
            Decision::Admitted
        } else {
            match previous.get(&c.id) {
                Some(Decision::Admitted | Decision::Preempted) => Decision::Preempted,
                _ => Decision::Queued,
            }
        };
        out.insert(c.id.clone(), decision);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cand(name: &str, tenant: &str, priority: u16, created: i64) -> Candidate {
        Candidate {
            id: StreamId::new("cc", name).expect("id"),
            tenant: tenant.parse().expect("tenant"),
            priority,
            created,
            paused: false,
        }
    }

    fn limits(default: u32) -> Limits {
        Limits {
            default,
            tenants: BTreeMap::new(),
        }
    }

    #[test]
    fn a_higher_priority_preempts_the_lowest_and_the_youngest() {
        let mut streams: Vec<Candidate> = (0..3)
            .map(|i| cand(&format!("s{i}"), "acme", 500, i))
            .collect();
        let first = admit(&streams, &limits(3), &HashMap::new());
        assert!(first.values().all(|d| d.admitted()));
        streams.push(cand("urgent", "acme", 900, 10));
        let second = admit(&streams, &limits(3), &first);
        assert_eq!(second[&streams[3].id], Decision::Admitted);
        // The youngest of the lowest priority loses its slot; older ones keep theirs.
        assert_eq!(second[&streams[2].id], Decision::Preempted);
        assert_eq!(second[&streams[0].id], Decision::Admitted);
        // It stays preempted (not "queued") while it waits: a re-run changes nothing.
        assert_eq!(admit(&streams, &limits(3), &second), second);
    }

    #[test]
    fn a_new_stream_of_equal_priority_waits_in_line() {
        let streams = vec![cand("old", "acme", 500, 1), cand("new", "acme", 500, 2)];
        let d = admit(&streams, &limits(1), &HashMap::new());
        assert_eq!(d[&streams[0].id], Decision::Admitted);
        assert_eq!(d[&streams[1].id], Decision::Queued);
    }

    #[test]
    fn tenants_have_their_own_pools() {
        let streams = vec![cand("a", "acme", 1, 1), cand("b", "globex", 1, 1)];
        let mut l = limits(1);
        l.tenants.insert("globex".parse().expect("tenant"), 0);
        let d = admit(&streams, &l, &HashMap::new());
        assert_eq!(d[&streams[0].id], Decision::Admitted);
        assert_eq!(d[&streams[1].id], Decision::Queued);
    }

    fn arb_streams() -> impl Strategy<Value = Vec<Candidate>> {
        prop::collection::vec(
            (0u8..3, 0u16..=1000, 0i64..20, prop::bool::weighted(0.15)),
            0..40,
        )
        .prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (t, p, age, paused))| Candidate {
                    id: StreamId::new("ns", &format!("s{i}")).expect("id"),
                    tenant: ["a", "b", "c"][t as usize].parse().expect("tenant"),
                    // Few distinct priorities, so equal priorities (FIFO) are common.
                    priority: (p / 250) * 250,
                    created: age,
                    paused,
                })
                .collect()
        })
    }

    fn arb_limits() -> impl Strategy<Value = Limits> {
        (0u32..8, 0u32..8).prop_map(|(d, a)| {
            let mut l = limits(d);
            l.tenants.insert("a".parse().expect("tenant"), a);
            l
        })
    }

    fn arb_previous(streams: &[Candidate], picks: &[u8]) -> HashMap<StreamId, Decision> {
        streams
            .iter()
            .zip(picks)
            .filter_map(|(s, p)| {
                let d = match p % 5 {
                    0 => Decision::Admitted,
                    1 => Decision::Queued,
                    2 => Decision::Preempted,
                    3 => Decision::Paused,
                    _ => return None,
                };
                Some((s.id.clone(), d))
            })
            .collect()
    }

    proptest! {
        #[test]
        fn never_over_a_limit(streams in arb_streams(), limits in arb_limits(), picks in prop::collection::vec(any::<u8>(), 40)) {
            let d = admit(&streams, &limits, &arb_previous(&streams, &picks));
            for t in ["a", "b", "c"] {
                let tenant: Tenant = t.parse().expect("tenant");
                let running = streams.iter().filter(|s| s.tenant == tenant && d[&s.id].admitted()).count();
                prop_assert!(running as u32 <= limits.of(&tenant));
                // And the pool is used: as many run as the limit allows.
                let eligible = streams.iter().filter(|s| s.tenant == tenant && !s.paused).count();
                prop_assert_eq!(running, eligible.min(limits.of(&tenant) as usize));
            }
        }

        #[test]
        fn never_a_higher_priority_waiting_while_a_lower_one_runs(streams in arb_streams(), limits in arb_limits()) {
            let d = admit(&streams, &limits, &HashMap::new());
            for w in streams.iter().filter(|s| matches!(d[&s.id], Decision::Queued | Decision::Preempted)) {
                for r in streams.iter().filter(|s| s.tenant == w.tenant && d[&s.id].admitted()) {
                    prop_assert!(r.priority >= w.priority, "{} (p{}) waits while {} (p{}) runs", w.id, w.priority, r.id, r.priority);
                }
            }
        }

        #[test]
        fn fifo_within_a_priority(streams in arb_streams(), limits in arb_limits()) {
            let d = admit(&streams, &limits, &HashMap::new());
            for w in streams.iter().filter(|s| matches!(d[&s.id], Decision::Queued | Decision::Preempted)) {
                for r in streams.iter().filter(|s| s.tenant == w.tenant && s.priority == w.priority && d[&s.id].admitted()) {
                    prop_assert!((r.created, &r.id) < (w.created, &w.id), "{} waits while the younger {} runs", w.id, r.id);
                }
            }
        }

        #[test]
        fn stable_a_rerun_on_its_own_output_changes_nothing(streams in arb_streams(), limits in arb_limits(), picks in prop::collection::vec(any::<u8>(), 40)) {
            let first = admit(&streams, &limits, &arb_previous(&streams, &picks));
            let second = admit(&streams, &limits, &first);
            prop_assert_eq!(&second, &first);
            prop_assert_eq!(admit(&streams, &limits, &second), second);
        }

        #[test]
        fn paused_streams_take_no_slot(streams in arb_streams(), limits in arb_limits()) {
            let d = admit(&streams, &limits, &HashMap::new());
            for s in &streams {
                prop_assert_eq!(d[&s.id] == Decision::Paused, s.paused);
            }
            // Unpausing nothing else changes the others' admission only through the slot count:
            // removing paused streams leaves every other decision as it was.
            let unpaused: Vec<Candidate> = streams.iter().filter(|s| !s.paused).cloned().collect();
            let without = admit(&unpaused, &limits, &HashMap::new());
            for s in &unpaused {
                prop_assert_eq!(without[&s.id], d[&s.id]);
            }
        }

        #[test]
        fn only_a_stream_that_held_a_slot_is_preempted(streams in arb_streams(), limits in arb_limits(), picks in prop::collection::vec(any::<u8>(), 40)) {
            let previous = arb_previous(&streams, &picks);
            let d = admit(&streams, &limits, &previous);
            for s in &streams {
                if d[&s.id] == Decision::Preempted {
                    prop_assert!(matches!(previous.get(&s.id), Some(Decision::Admitted | Decision::Preempted)));
                }
            }
        }
    }
}
