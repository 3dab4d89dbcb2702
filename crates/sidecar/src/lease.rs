//! The lease rule, pure: until when a pod may act on a lease, on its own monotonic clock.
//!
//! A pod streams a stream only while its lease is certainly still its own: until the moment
//! it *sent* its last renewal that the store confirmed, plus the lease TTL, minus a safety
//! margin. The store starts the TTL when it runs the renewal, which is after the pod sent it,
//! so the pod's deadline falls before the store's expiry by at least the margin: no other pod
//! can acquire the lease before this one has stopped (the fencing argument of every trusted
//! lease system: client-go steps down at its renew deadline, a Redlock holder stops at its
//! validity). A renewal that failed or timed out confirms nothing, whatever the error: a pod
//! that sees only time-outs cannot tell "the store is down for everyone" from "I alone am cut
//! off", so past the deadline it stops and stands by.
//!
//! ```
//! use std::time::Duration;
//! use streamkeeper_sidecar::lease::LeaseTerm;
//! use tokio::time::Instant;
//!
//! let sent = Instant::now();
//! let mut term = LeaseTerm::granted(Duration::from_secs(10), sent);
//! assert_eq!(term.until(), sent + Duration::from_secs(9)); // 10 s minus the 1 s margin
//! // A renewal sent later and confirmed moves the deadline on; an older one never moves it back.
//! term.confirmed(sent + Duration::from_secs(3));
//! term.confirmed(sent + Duration::from_secs(1));
//! assert_eq!(term.until(), sent + Duration::from_secs(12));
//! ```

use std::time::Duration;

use tokio::time::Instant;

/// The smallest safety margin: covers timer and scheduling slack on a busy host.
pub const MIN_MARGIN: Duration = Duration::from_millis(50);
/// The largest safety margin: a long TTL needs no more than this to absorb clock-rate drift
/// between this pod and the store, and the slack of stopping.
pub const MAX_MARGIN: Duration = Duration::from_secs(2);

/// How much before the store's expiry a pod stops acting on its lease: a tenth of the TTL,
/// within [`MIN_MARGIN`]..=[`MAX_MARGIN`], and never more than half the TTL.
pub fn safety_margin(ttl: Duration) -> Duration {
    (ttl / 10).clamp(MIN_MARGIN, MAX_MARGIN).min(ttl / 2)
}

/// One held lease's validity on this pod's monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTerm {
    ttl: Duration,
    until: Instant,
}

impl LeaseTerm {
    /// A lease the store granted to a request sent at `sent_at`, living `ttl`.
    pub fn granted(ttl: Duration, sent_at: Instant) -> Self {
        Self {
            ttl,
            until: deadline(ttl, sent_at),
        }
    }

    /// The store confirmed a renewal sent at `sent_at`: the deadline moves on to
    /// `sent_at + ttl - margin`, never back (a slow answer to an older renewal may arrive
    /// after a newer one). Returns the deadline.
    pub fn confirmed(&mut self, sent_at: Instant) -> Instant {
        self.until = self.until.max(deadline(self.ttl, sent_at));
        self.until
    }

    /// Until when the lease may be acted on.
    pub fn until(&self) -> Instant {
        self.until
    }

    /// Whether the lease may be acted on at `now`.
    pub fn valid_at(&self, now: Instant) -> bool {
        now < self.until
    }

    /// The lease's TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

fn deadline(ttl: Duration, sent_at: Instant) -> Instant {
    sent_at + ttl.saturating_sub(safety_margin(ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(3);

    #[test]
    fn the_margin_is_a_tenth_of_the_ttl_within_bounds() {
        assert_eq!(
            safety_margin(Duration::from_secs(3)),
            Duration::from_millis(300)
        );
        assert_eq!(
            safety_margin(Duration::from_secs(35)),
            Duration::from_secs(2)
        );
        assert_eq!(safety_margin(Duration::from_millis(200)), MIN_MARGIN);
        // Never more than half: a tiny TTL still leaves the pod some time to stream.
        assert_eq!(
            safety_margin(Duration::from_millis(60)),
            Duration::from_millis(30)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_granted_lease_is_valid_until_ttl_minus_margin_after_the_request_was_sent() {
        let sent = Instant::now();
        // The answer took a while: the term still counts from the send.
        tokio::time::advance(Duration::from_millis(400)).await;
        let term = LeaseTerm::granted(TTL, sent);
        assert_eq!(term.until(), sent + Duration::from_millis(2700));
        tokio::time::advance(Duration::from_millis(2299)).await;
        assert!(term.valid_at(Instant::now()), "1 ms before the deadline");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!term.valid_at(Instant::now()), "at the deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn only_confirmed_renewals_move_it_and_never_backwards() {
        let start = Instant::now();
        let mut term = LeaseTerm::granted(TTL, start);
        // Renewals every second, confirmed: the lease stays valid.
        for _ in 1..=5u64 {
            tokio::time::advance(Duration::from_secs(1)).await;
            let sent = Instant::now();
            assert!(term.valid_at(sent));
            assert_eq!(term.confirmed(sent), sent + Duration::from_millis(2700));
        }
        // The store stops answering: nothing is confirmed, and the lease lapses one TTL minus
        // the margin after the last confirmed send, however many attempts fail meanwhile.
        let last = Instant::now();
        tokio::time::advance(Duration::from_millis(2699)).await;
        assert!(term.valid_at(Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!term.valid_at(Instant::now()));
        assert_eq!(term.until(), last + Duration::from_millis(2700));
        // A late answer to a renewal sent before the last one moves nothing back.
        assert_eq!(term.confirmed(start), last + Duration::from_millis(2700));
        // The store answers again: a renewal confirmed now makes it valid again.
        let now = Instant::now();
        term.confirmed(now);
        assert!(term.valid_at(now));
    }
}
