//! Reconnect backoff: exponential steps with full jitter, so a fleet that lost its platform at
//! the same instant does not come back at the same instant.

use std::time::Duration;

use streamkeeper_api::config::ReconnectSpec;

/// A backoff's steps: they start at `initial` and double up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steps {
    initial: Duration,
    max: Duration,
}

impl Steps {
    /// Steps from `initial` doubling up to `max` (at least `initial`).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
        }
    }
}

impl From<&ReconnectSpec> for Steps {
    fn from(spec: &ReconnectSpec) -> Self {
        Self::new(spec.initial, spec.max)
    }
}

/// Where a stream is in its reconnect schedule: the failures since the last success. The
/// steps are passed in rather than kept (they are the stream's spec): a session holds this for
/// as long as its stream runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The delay before the next attempt: uniform in `0..=step`, where `step` doubles with
    /// every failure up to the cap ("full jitter"). `unit` is a random number in `[0, 1)`;
    /// a server's `Retry-After` is a floor, never shortened by jitter.
    pub fn next_delay(
        &mut self,
        steps: Steps,
        unit: f64,
        retry_after: Option<Duration>,
    ) -> Duration {
        let step = self.step(steps);
        self.attempt = self.attempt.saturating_add(1);
        let jittered = step.mul_f64(unit.clamp(0.0, 1.0));
        match retry_after {
            Some(floor) => jittered.max(floor),
            None => jittered,
        }
    }

    /// The current cap on the delay.
    pub fn step(&self, steps: Steps) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(30)).unwrap_or(u32::MAX);
        steps.initial.saturating_mul(factor).min(steps.max)
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
        let steps = Steps::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut b = Backoff::default();
        let caps: Vec<u64> = (0..10)
            .map(|_| {
                let cap = b.step(steps).as_millis() as u64;
                b.next_delay(steps, 0.5, None);
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
        assert_eq!(b.step(steps), Duration::from_millis(500));
    }

    #[test]
    fn full_jitter_spans_zero_to_the_step_and_respects_retry_after() {
        let steps = Steps::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut b = Backoff::default();
        assert_eq!(b.next_delay(steps, 0.0, None), Duration::ZERO);
        assert_eq!(
            b.next_delay(steps, 0.999_999, None),
            Duration::from_secs(2).mul_f64(0.999_999)
        );
        assert_eq!(
            b.next_delay(steps, 0.1, Some(Duration::from_secs(59))),
            Duration::from_secs(59)
        );
    }

    #[test]
    fn a_thousand_clients_spread_out() {
        // Distinct unit draws map to distinct delays: no herd at one instant.
        let delays: std::collections::BTreeSet<Duration> = (0..1000)
            .map(|i| {
                let steps = Steps::new(Duration::from_secs(1), Duration::from_secs(30));
                let mut b = Backoff::default();
                b.next_delay(steps, 0.0, None);
                b.next_delay(steps, 0.0, None);
                b.next_delay(steps, f64::from(i) / 1000.0, None)
            })
            .collect();
        assert_eq!(delays.len(), 1000);
        assert!(delays.iter().all(|d| *d < Duration::from_secs(4)));
    }
}
