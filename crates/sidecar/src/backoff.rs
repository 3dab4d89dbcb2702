//! Reconnect backoff: exponential steps with full jitter, so a fleet that lost its platform at
//! the same instant does not come back at the same instant.

use std::time::Duration;

/// The reconnect schedule of one stream.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Steps start at `initial` and double up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The delay before the next attempt: uniform in `0..=step`, where `step` doubles with
    /// every failure up to the cap ("full jitter"). `unit` is a random number in `[0, 1)`;
    /// a server's `Retry-After` is a floor, never shortened by jitter.
    pub fn next_delay(&mut self, unit: f64, retry_after: Option<Duration>) -> Duration {
        let step = self.step();
        self.attempt = self.attempt.saturating_add(1);
        let jittered = step.mul_f64(unit.clamp(0.0, 1.0));
        match retry_after {
            Some(floor) => jittered.max(floor),
            None => jittered,
        }
    }

    /// The current cap on the delay.
    pub fn step(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(30)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Failures since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// A connection stayed up: start from the first step again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_double_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let caps: Vec<u64> = (0..10)
            .map(|_| {
                let cap = b.step().as_millis() as u64;
                b.next_delay(0.5, None);
                cap
            })
            .collect();
        assert_eq!(
            caps,
            [
                500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000
            ]
        );
        b.reset();
        assert_eq!(b.step(), Duration::from_millis(500));
    }

    #[test]
    fn full_jitter_spans_zero_to_the_step_and_respects_retry_after() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(b.next_delay(0.0, None), Duration::ZERO);
        assert_eq!(
            b.next_delay(0.999_999, None),
            Duration::from_secs(2).mul_f64(0.999_999)
        );
        assert_eq!(
            b.next_delay(0.1, Some(Duration::from_secs(59))),
            Duration::from_secs(59)
        );
    }

    #[test]
    fn a_thousand_clients_spread_out() {
        // Distinct unit draws map to distinct delays: no herd at one instant.
        let delays: std::collections::BTreeSet<Duration> = (0..1000)
            .map(|i| {
                let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
                b.next_delay(0.0, None);
                b.next_delay(0.0, None);
                b.next_delay(f64::from(i) / 1000.0, None)
            })
            .collect();
        assert_eq!(delays.len(), 1000);
        assert!(delays.iter().all(|d| *d < Duration::from_secs(4)));
    }
}
