//! [`Overlap`]: make-before-break on a platform that cannot replay. Both sockets are read
//! while the successor takes over; an event seen on both proves that the successor delivers
//! everything from there on and the old socket delivered everything before, so the old one can
//! go. Ids are remembered in a bounded window; the hub suppresses the second copy.

use std::{
    collections::{HashSet, VecDeque},
    time::Duration,
};

use streamkeeper_api::EventId;
use tokio::time::Instant;

/// Ids remembered per socket during an overlap.
const WINDOW: usize = 4096;

/// Which link an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The socket being retired.
    Old,
    /// The successor.
    New,
}

/// Ids seen recently on one side, bounded.
#[derive(Debug, Default)]
struct Seen {
    set: HashSet<EventId>,
    order: VecDeque<EventId>,
}

impl Seen {
    fn insert(&mut self, id: &EventId) {
        if self.set.insert(id.clone()) {
            self.order.push_back(id.clone());
            if self.order.len() > WINDOW
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}

/// One overlap of two links.
#[derive(Debug)]
pub struct Overlap {
    started: Instant,
    bound: Duration,
    old: Seen,
    new: Seen,
    common: bool,
    /// Events the successor delivered.
    pub new_events: u64,
}

impl Overlap {
    /// An overlap starting at `now` that ends by `bound` at the latest.
    pub fn new(now: Instant, bound: Duration) -> Self {
        Self {
            started: now,
            bound,
            old: Seen::default(),
            new: Seen::default(),
            common: false,
            new_events: 0,
        }
    }

    /// When the overlap ends at the latest (the old socket goes even without a common event:
    /// a quiet stream has nothing in flight).
    pub fn deadline(&self) -> Instant {
        self.started + self.bound
    }

    /// How long it has run at `now`.
    pub fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// Records an event; returns true once an event was seen on both sides.
    pub fn saw(&mut self, side: Side, id: &EventId) -> bool {
        let (mine, other) = match side {
            Side::Old => (&mut self.old, &self.new),
            Side::New => {
                self.new_events += 1;
                (&mut self.new, &self.old)
            }
        };
        if other.set.contains(id) {
            self.common = true;
        }
        mine.insert(id);
        self.common
    }

    /// Whether an event was seen on both sides.
    pub fn confirmed(&self) -> bool {
        self.common
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> EventId {
        EventId(format!("e{n}"))
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_on_both_sides_confirms_the_handover_in_either_order() {
        let mut o = Overlap::new(Instant::now(), Duration::from_secs(5));
        assert!(!o.saw(Side::Old, &id(1)));
        assert!(!o.saw(Side::New, &id(2)));
        assert!(!o.saw(Side::Old, &id(3)));
        assert!(o.saw(Side::Old, &id(2)), "seen on new first, then old");
        let mut o = Overlap::new(Instant::now(), Duration::from_secs(5));
        assert!(!o.saw(Side::Old, &id(7)));
        assert!(o.saw(Side::New, &id(7)), "seen on old first, then new");
        assert_eq!(o.new_events, 1);
        assert_eq!(o.deadline() - Instant::now(), Duration::from_secs(5));
    }

    #[test]
    fn the_window_is_bounded() {
        let mut o = Overlap::new(Instant::now(), Duration::from_secs(5));
        for n in 0..(WINDOW as u32 + 10) {
            o.saw(Side::Old, &id(n));
        }
        assert_eq!(o.old.set.len(), WINDOW);
        assert!(
            !o.saw(Side::New, &id(0)),
            "forgotten: too old to prove anything"
        );
        assert!(o.saw(Side::New, &id(WINDOW as u32 + 5)));
    }
}
