//! [`RateGate`]: the platform's rate-limit backoff, pure. While it is closed the session makes
//! no request and opens no socket: not a reconnect, not a successor, not a register.

use std::time::Duration;

use tokio::time::Instant;

use crate::platforms::RateLimit;

/// CXone's `RATE_LIMIT_EXCEEDED` steps: 30 s, then 1 min, then 2 min (and 2 min after).
pub const CXONE_RATE_LIMIT_STEPS: [Duration; 3] = [
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(120),
];

/// When the platform lets us ask again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateGate {
    open_at: Option<Instant>,
    /// Escalating limits in a row (reset by a success).
    escalation: usize,
}

impl RateGate {
    /// The platform said slow down at `now`; returns how long the gate stays closed. A longer
    /// wait already running is kept.
    pub fn hit(&mut self, limit: RateLimit, now: Instant) -> Duration {
        let wait = match limit {
            RateLimit::RetryAfter(d) => d,
            RateLimit::Escalating => {
                let step =
                    CXONE_RATE_LIMIT_STEPS[self.escalation.min(CXONE_RATE_LIMIT_STEPS.len() - 1)];
                self.escalation += 1;
                step
            }
        };
        let until = now + wait;
        let until = self.open_at.map_or(until, |at| at.max(until));
        self.open_at = Some(until);
        until.saturating_duration_since(now)
    }

    /// When the gate opens, if it is closed at `now`.
    pub fn closed_until(&self, now: Instant) -> Option<Instant> {
        self.open_at.filter(|at| *at > now)
    }

    /// The platform accepted us: the next limit starts from the first step again.
    pub fn passed(&mut self) {
        self.escalation = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn cxone_limits_escalate_and_a_success_starts_over() {
        let mut g = RateGate::default();
        let t0 = Instant::now();
        assert_eq!(g.closed_until(t0), None);
        let waits: Vec<u64> = (0..4)
            .map(|_| {
                let now = g.closed_until(Instant::now()).unwrap_or_else(Instant::now);
                let w = g.hit(RateLimit::Escalating, now);
                w.as_secs()
            })
            .collect();
        assert_eq!(waits, [30, 60, 120, 120]);
        g.passed();
        let now = Instant::now();
        assert_eq!(
            g.hit(RateLimit::Escalating, now + Duration::from_secs(400))
                .as_secs(),
            30
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_gate_stays_closed_until_the_wait_ends_on_the_clock() {
        let mut g = RateGate::default();
        let now = Instant::now();
        assert_eq!(
            g.hit(RateLimit::RetryAfter(Duration::from_secs(59)), now)
                .as_secs(),
            59
        );
        // A shorter limit does not shorten a longer one.
        assert_eq!(
            g.hit(RateLimit::RetryAfter(Duration::from_secs(1)), now)
                .as_secs(),
            59
        );
        tokio::time::advance(Duration::from_secs(58)).await;
        assert!(g.closed_until(Instant::now()).is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(g.closed_until(Instant::now()), None);
    }
}
