//! The pod's ordered queue of transitions to publish: one queue and one worker per pod, so a
//! stream's DEAD and ACTIVE reach the channel in the order they happened (a spawn per
//! transition let them overtake each other).
//!
//! Pushing never waits (a session calls it from its drive loop). The queue is bounded: when
//! it is full, a new transition is folded into the newest queued one of the same stream (its
//! `from` stays, its `to`, reason and time become the new one's: the channel then skips an
//! intermediate state but never reorders); only a stream with nothing queued pushes out the
//! oldest entry, counted and logged.

use std::{collections::VecDeque, sync::Mutex};

use streamkeeper_api::{Fence, Transition};
use streamkeeper_coord::StreamKey;
use tokio::sync::{Notify, watch};

/// Transitions queued at most (a pod runs far fewer streams than this in practice; while the
/// store is unreachable each one waits at most one operation timeout).
pub const QUEUE_BOUND: usize = 4096;

/// One transition waiting to be published.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    /// The stream.
    pub key: StreamKey,
    /// The fence it is published under.
    pub fence: Fence,
    /// What to publish.
    pub transition: Transition,
    /// Its place in the pod's order.
    pub seq: u64,
}

/// What [`Queue::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued at the back.
    Queued,
    /// Folded into the newest queued transition of the same stream (the queue was full).
    Coalesced,
    /// Queued at the back; the oldest entry (of another stream) was dropped to make room.
    DroppedOldest,
}

/// The bounded, coalescing queue itself (pure; the worker drains it).
#[derive(Debug)]
pub struct Queue {
    bound: usize,
    next_seq: u64,
    items: VecDeque<Queued>,
    dropped: u64,
}

impl Queue {
    /// An empty queue holding at most `bound` transitions.
    pub fn new(bound: usize) -> Self {
        Self {
            bound: bound.max(1),
            next_seq: 1,
            items: VecDeque::new(),
            dropped: 0,
        }
    }

    /// Queues `transition` of `key` under `fence`.
    pub fn push(&mut self, key: StreamKey, fence: Fence, transition: Transition) -> Pushed {
        if self.items.len() < self.bound {
            let seq = self.take_seq();
            self.items.push_back(Queued {
                key,
                fence,
                transition,
                seq,
            });
            return Pushed::Queued;
        }
        // Folded in place: it keeps its number, and its place in the order.
        if let Some(last) = self
            .items
            .iter_mut()
            .rev()
            .find(|q| q.key == key && q.fence == fence)
        {
            let from = last.transition.from;
            last.transition = Transition { from, ..transition };
            return Pushed::Coalesced;
        }
        let seq = self.take_seq();
        self.items.pop_front();
        self.dropped += 1;
        self.items.push_back(Queued {
            key,
            fence,
            transition,
            seq,
        });
        Pushed::DroppedOldest
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// The oldest queued transition.
    pub fn pop(&mut self) -> Option<Queued> {
        self.items.pop_front()
    }

    /// The sequence number the next queued transition gets: everything queued so far is
    /// below it.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Transitions dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Queued transitions.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// The queue shared between the sessions that push and the worker that publishes.
#[derive(Debug)]
pub struct Publisher {
    queue: Mutex<Queue>,
    work: Notify,
    /// Every transition below this sequence number was published (or given up).
    done: watch::Sender<u64>,
}

impl Publisher {
    /// An empty publisher.
    pub fn new() -> Self {
        Self {
            queue: Mutex::new(Queue::new(QUEUE_BOUND)),
            work: Notify::new(),
            done: watch::channel(1).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a transition; never waits.
    pub fn push(&self, key: StreamKey, fence: Fence, transition: Transition) {
        let pushed = self.lock().push(key, fence, transition);
        if pushed == Pushed::DroppedOldest {
            tracing::warn!(
                bound = QUEUE_BOUND,
                "transition queue full: the oldest transition was dropped"
            );
        }
        self.work.notify_one();
    }

    /// The next transition to publish, waiting for one.
    pub async fn next(&self) -> Queued {
        loop {
            let notified = self.work.notified();
            if let Some(q) = self.lock().pop() {
                return q;
            }
            notified.await;
        }
    }

    /// The worker finished the transition numbered `seq`.
    pub fn finished(&self, seq: u64) {
        self.done.send_if_modified(|d| {
            let moved = seq + 1 > *d;
            if moved {
                *d = seq + 1;
            }
            moved
        });
    }

    /// Waits (at most `bound`) until every transition queued so far was published, so a
    /// release that follows cannot overtake them.
    pub async fn drained(&self, bound: std::time::Duration) {
        // The newest number handed out: once it is finished, so is everything before it
        // (the worker takes them in order), the one being published right now included.
        let target = self.lock().next_seq() - 1;
        let mut done = self.done.subscribe();
        let _ = tokio::time::timeout(bound, done.wait_for(|d| *d > target)).await;
    }
}

impl Default for Publisher {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use streamkeeper_api::StreamState;

    use super::*;

    fn key(s: &str) -> StreamKey {
        StreamKey::new(
            "acme".parse().expect("tenant"),
            format!("cc/{s}").parse().expect("id"),
        )
    }

    fn t(k: &StreamKey, from: StreamState, to: StreamState, at: u64) -> Transition {
        Transition {
            stream: k.stream().clone(),
            tenant: k.tenant().clone(),
            from,
            to,
            reason: to.as_str().to_lowercase(),
            owner: None,
            fence: Some(Fence(1)),
            at,
        }
    }

    #[test]
    fn transitions_come_out_in_the_order_they_went_in() {
        use StreamState::*;
        let mut q = Queue::new(10);
        let a = key("a");
        q.push(a.clone(), Fence(1), t(&a, Active, Dead, 1));
        q.push(a.clone(), Fence(1), t(&a, Dead, Active, 2));
        let order: Vec<_> = std::iter::from_fn(|| q.pop())
            .map(|q| q.transition.to)
            .collect();
        assert_eq!(order, [Dead, Active]);
    }

    #[test]
    fn a_full_queue_coalesces_per_stream_and_drops_only_the_oldest_of_another() {
        use StreamState::*;
        let mut q = Queue::new(2);
        let (a, b, c) = (key("a"), key("b"), key("c"));
        assert_eq!(
            q.push(a.clone(), Fence(1), t(&a, Active, Dead, 1)),
            Pushed::Queued
        );
        assert_eq!(
            q.push(b.clone(), Fence(1), t(&b, Active, Dead, 2)),
            Pushed::Queued
        );
        // Full: a's next transition folds into a's queued one: Active -> (Dead ->) Active.
        assert_eq!(
            q.push(a.clone(), Fence(1), t(&a, Dead, Active, 3)),
            Pushed::Coalesced
        );
        assert_eq!(q.len(), 2);
        // A stream with nothing queued pushes out the oldest.
        assert_eq!(
            q.push(c.clone(), Fence(1), t(&c, Active, Dead, 4)),
            Pushed::DroppedOldest
        );
        assert_eq!(q.dropped(), 1);
        let left: Vec<_> = std::iter::from_fn(|| q.pop())
            .map(|q| {
                (
                    q.key.stream().to_string(),
                    q.transition.from,
                    q.transition.to,
                )
            })
            .collect();
        assert_eq!(
            left,
            [("cc/b".into(), Active, Dead), ("cc/c".into(), Active, Dead)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn drained_waits_for_what_was_queued_before_it() {
        use StreamState::*;
        let p = std::sync::Arc::new(Publisher::new());
        let a = key("a");
        p.push(a.clone(), Fence(1), t(&a, Active, Dead, 1));
        let worker = {
            let p = std::sync::Arc::clone(&p);
            tokio::spawn(async move {
                let q = p.next().await;
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                p.finished(q.seq);
            })
        };
        let before = tokio::time::Instant::now();
        p.drained(std::time::Duration::from_secs(5)).await;
        assert_eq!(before.elapsed(), std::time::Duration::from_millis(300));
        worker.await.expect("worker");
        // Nothing queued: returns at once.
        p.drained(std::time::Duration::from_secs(5)).await;
        assert_eq!(before.elapsed(), std::time::Duration::from_millis(300));
    }
}
