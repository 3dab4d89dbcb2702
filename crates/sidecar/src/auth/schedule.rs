//! The refresh schedule, pure: when to refresh a token and how long to wait after a failure.

use std::time::Duration;

use tokio::time::Instant;

use super::Token;

/// When to refresh a token: `lead` before expiry, less up to a tenth of the lead of jitter
/// (`unit` in `[0, 1)`) so a fleet does not refresh at one instant; never earlier than half
/// its life, so a lead longer than a short-lived token does not loop.
pub fn refresh_at(token: &Token, lead: Duration, unit: f64) -> Instant {
    let life = token.expires.saturating_duration_since(token.obtained);
    let jitter = (lead / 10).mul_f64(unit.clamp(0.0, 1.0));
    let before = (lead + jitter).min(life / 2);
    token.expires - before
}

/// The retry delay after `failures` consecutive failed refreshes: `retry` doubling, capped at
/// 16 times `retry`, and never below a server's `Retry-After`.
pub fn retry_delay(retry: Duration, failures: u32, retry_after: Option<Duration>) -> Duration {
    let step = retry.saturating_mul(1 << failures.saturating_sub(1).min(4));
    step.max(retry_after.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Secret;

    fn token(life: Duration) -> Token {
        let now = Instant::now();
        Token {
            value: Secret::new("t"),
            obtained: now,
            expires: now + life,
        }
    }

    #[test]
    fn refresh_is_lead_before_expiry_with_bounded_jitter() {
        let t = token(Duration::from_secs(3600));
        let lead = Duration::from_secs(120);
        assert_eq!(refresh_at(&t, lead, 0.0), t.expires - lead);
        assert_eq!(
            refresh_at(&t, lead, 0.5),
            t.expires - Duration::from_secs(126)
        );
        // A lead longer than half a short token's life refreshes at half-life, not in a loop.
        let short = token(Duration::from_secs(60));
        assert_eq!(
            refresh_at(&short, lead, 0.0),
            short.expires - Duration::from_secs(30)
        );
    }

    #[test]
    fn retries_double_from_retry_and_honour_retry_after() {
        let r = Duration::from_secs(30);
        let d: Vec<u64> = (1..=7).map(|n| retry_delay(r, n, None).as_secs()).collect();
        assert_eq!(d, [30, 60, 120, 240, 480, 480, 480]);
        assert_eq!(
            retry_delay(r, 1, Some(Duration::from_secs(59))),
            Duration::from_secs(59)
        );
    }
}
