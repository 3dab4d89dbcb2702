//! Request pacing under a platform's rate limit: the generic cell rate algorithm (GCRA), pure
//! and on an injected clock. Genesys allows 300 REST requests a minute per token and answers
//! 429 past it. A pod's streams on one credential share one token (one manager per
//! credential); their opening burst is bounded by the 20-channel budget (about 40 calls), but
//! a reconnect storm (resets, `socket_closing` on every channel, refused subscriptions) is not.
//!
//! Hand-written rather than `governor`: that crate sleeps on its own timer (futures-timer), so
//! tokio's paused clock cannot drive it in tests, and the whole of it here is one subtraction.

use std::time::Duration;

use tokio::time::Instant;

/// A schedule that lets `burst` requests go at once and then one every `per / rate`, so that
/// no window of `per` holds more than `burst + rate` requests.
#[derive(Debug, Clone)]
pub struct Pace {
    /// The spacing once the burst is spent.
    emission: Duration,
    /// How far ahead of the spacing a burst may run.
    tolerance: Duration,
    /// When the next request would go if every earlier one had gone at the spacing.
    theoretical: Option<Instant>,
}

impl Pace {
    /// `rate` requests every `per` after a first `burst` (each at least 1).
    pub fn new(rate: u32, per: Duration, burst: u32) -> Self {
        let emission = per / rate.max(1);
        Self {
            emission,
            tolerance: emission * burst.max(1).saturating_sub(1),
            theoretical: None,
        }
    }

    /// Genesys's limit (300 requests a minute per token) with room for the calls it does not
    /// pace (the token's validation): 50 at once, then one every 250 ms, at most 290 in any
    /// minute.
    pub fn genesys() -> Self {
        Self::new(240, Duration::from_secs(60), 50)
    }

    /// A pod's stream starts: 16 at once, then 500 a second. A pod given a thousand streams at
    /// once (a rollout, a new config) would otherwise run a thousand handshakes at the same
    /// time, and their short-lived allocations leave holes between the streams' long-lived ones:
    /// measured with the sidecar bench at 1,000 streams, a `ws` stream's RSS stood 460 bytes
    /// above its heap and a `wss` one's 1.1 KiB; paced, about 110 to 170 and 490 to 740.
    pub fn stream_starts() -> Self {
        Self::new(500, Duration::from_secs(1), 16)
    }

    /// Takes the next slot for a request wanted at `now`: when it may go (`now` when the
    /// burst allows it).
    pub fn reserve(&mut self, now: Instant) -> Instant {
        let theoretical = self.theoretical.map_or(now, |t| t.max(now));
        let go = theoretical
            .checked_sub(self.tolerance)
            .map_or(now, |t| t.max(now));
        self.theoretical = Some(theoretical.max(go) + self.emission);
        go
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_goes_at_once_then_requests_are_spaced() {
        let t0 = Instant::now();
        let mut p = Pace::new(240, Duration::from_secs(60), 60);
        for _ in 0..60 {
            assert_eq!(p.reserve(t0), t0);
        }
        assert_eq!(p.reserve(t0), t0 + Duration::from_millis(250));
        assert_eq!(p.reserve(t0), t0 + Duration::from_millis(500));
    }

    #[test]
    fn a_pod_starts_sixteen_streams_at_once_then_five_hundred_a_second() {
        let t0 = Instant::now();
        let mut p = Pace::stream_starts();
        let starts: Vec<Instant> = (0..1000).map(|_| p.reserve(t0)).collect();
        assert!(
            starts[..16].iter().all(|&t| t == t0),
            "the first 16 at once"
        );
        assert_eq!(starts[16], t0 + Duration::from_millis(2));
        assert_eq!(starts[999], t0 + Duration::from_millis(2 * 984));
    }

    #[test]
    fn no_minute_holds_more_than_genesys_allows() {
        let t0 = Instant::now();
        let mut p = Pace::genesys();
        // 1,000 requests wanted at once, then 200 more half a minute later.
        let mut sent: Vec<Instant> = (0..1000).map(|_| p.reserve(t0)).collect();
        let later = t0 + Duration::from_secs(30);
        sent.extend((0..200).map(|_| p.reserve(later)));
        assert!(sent.windows(2).all(|w| w[0] <= w[1]), "in order");
        let minute = Duration::from_secs(60);
        let busiest = sent
            .iter()
            .map(|&start| {
                sent.iter()
                    .filter(|&&t| t >= start && t < start + minute)
                    .count()
            })
            .max()
            .unwrap_or(0);
        assert!(
            (280..=290).contains(&busiest),
            "{busiest} in the busiest minute"
        );
    }

    #[test]
    fn an_idle_spell_restores_the_burst() {
        let t0 = Instant::now();
        let mut p = Pace::new(240, Duration::from_secs(60), 60);
        for _ in 0..70 {
            p.reserve(t0);
        }
        // Past the backlog and one whole burst's worth of spacing, 60 go at once again.
        let quiet = t0 + Duration::from_secs(60);
        for _ in 0..60 {
            assert_eq!(p.reserve(quiet), quiet);
        }
        assert!(p.reserve(quiet) > quiet);
    }
}
