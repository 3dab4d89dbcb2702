//! Acked ids waiting to be checkpointed: at most one per stream (the newest), flushed to the
//! store in one batch every checkpoint window (one round trip per tenant), so the store's load
//! follows the pods and the window, not the event rate.
//!
//! The id of a stream only moves forward here: each ack is numbered ([`AckSeq`], one counter
//! for the pod, so it grows within every fence) and a newer ack replaces the waiting one; a
//! write that failed goes back only if nothing newer arrived meanwhile; a fence that lost its
//! lease is forgotten. The store keeps the newest [`AckSeq`] of a fence whatever order writes
//! arrive in, and refuses a stale fence.

use std::collections::HashMap;

use streamkeeper_api::{EventId, Fence};
use streamkeeper_coord::{AckSeq, CheckpointWrite, StreamKey};

/// The waiting checkpoints of one pod.
#[derive(Debug, Default)]
pub struct PendingCheckpoints {
    next_seq: u64,
    waiting: HashMap<StreamKey, CheckpointWrite>,
}

impl PendingCheckpoints {
    /// The number of the next ack, higher than every one before.
    pub fn next_seq(&mut self) -> AckSeq {
        self.next_seq += 1;
        AckSeq(self.next_seq)
    }

    /// Records the newest acked id of `key` under `fence`.
    pub fn record(&mut self, key: &StreamKey, fence: Fence, id: EventId) {
        let seq = self.next_seq();
        match self.waiting.get_mut(key) {
            // An ack under an older fence never replaces one under the current fence.
            Some(w) if w.fence > fence => {}
            Some(w) => {
                w.fence = fence;
                w.seq = seq;
                w.id = id;
            }
            None => {
                self.waiting.insert(
                    key.clone(),
                    CheckpointWrite {
                        key: key.clone(),
                        fence,
                        seq,
                        id,
                    },
                );
            }
        }
    }

    /// Takes every waiting checkpoint, for one flush.
    pub fn take(&mut self) -> Vec<CheckpointWrite> {
        self.waiting.drain().map(|(_, w)| w).collect()
    }

    /// Takes the waiting checkpoint of `key` (a handover writes it at once).
    pub fn take_one(&mut self, key: &StreamKey) -> Option<CheckpointWrite> {
        self.waiting.remove(key)
    }

    /// Puts back a write that did not go through, unless a newer one is waiting.
    pub fn requeue(&mut self, w: CheckpointWrite) {
        self.waiting.entry(w.key.clone()).or_insert(w);
    }

    /// Forgets what waits for `key` under `fence` (the lease is gone: the write would be
    /// refused, and the next owner resumes from the store's checkpoint).
    pub fn forget(&mut self, key: &StreamKey, fence: Fence) {
        if self.waiting.get(key).is_some_and(|w| w.fence == fence) {
            self.waiting.remove(key);
        }
    }

    /// Streams with a checkpoint waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> StreamKey {
        StreamKey::new(
            "acme".parse().expect("tenant"),
            format!("cc/{s}").parse().expect("id"),
        )
    }

    fn id(n: u32) -> EventId {
        EventId(format!("e{n}"))
    }

    #[test]
    fn one_write_per_stream_with_the_newest_id() {
        let mut p = PendingCheckpoints::default();
        for n in 1..=5 {
            p.record(&key("a"), Fence(1), id(n));
        }
        p.record(&key("b"), Fence(1), id(9));
        let mut w = p.take();
        w.sort_by(|x, y| x.key.cmp(&y.key));
        assert_eq!(
            w.iter().map(|w| w.id.clone()).collect::<Vec<_>>(),
            [id(5), id(9)]
        );
        assert!(p.is_empty());
    }

    #[test]
    fn a_failed_write_never_replaces_a_newer_ack_and_an_old_fence_never_a_new_one() {
        let mut p = PendingCheckpoints::default();
        p.record(&key("a"), Fence(1), id(1));
        let failed = p.take();
        p.record(&key("a"), Fence(1), id(2));
        for w in failed {
            p.requeue(w);
        }
        let w = p.take_one(&key("a")).expect("waiting");
        assert_eq!((w.fence, w.id), (Fence(1), id(2)));
        p.record(&key("a"), Fence(3), id(7));
        let seq = p.waiting[&key("a")].seq;
        p.record(&key("a"), Fence(2), id(8));
        let w = p.take_one(&key("a")).expect("waiting");
        assert_eq!((w.fence, w.id, w.seq), (Fence(3), id(7), seq));
        assert!(p.next_seq() > seq, "numbers only grow");
        p.record(&key("a"), Fence(3), id(9));
        p.forget(&key("a"), Fence(2));
        assert_eq!(p.len(), 1, "another fence's loss forgets nothing");
        p.forget(&key("a"), Fence(3));
        assert!(p.is_empty());
    }
}
