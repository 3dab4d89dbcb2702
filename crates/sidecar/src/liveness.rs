//! The liveness engine of one connection: when to ping, when a pong is late (DEGRADED), and the
//! deadline after which the connection is DEAD.
//!
//! Pure: every method takes `now`, so the same code runs under tokio's paused clock in tests and
//! on the wall clock in production. The owner sleeps until [`Liveness::next_wakeup`] and calls
//! [`Liveness::poll`]; there is no sweep over connections, so a DEAD is declared as soon as the
//! runtime wakes the task at its deadline.

use std::{num::NonZeroU64, time::Duration};

use tokio::time::Instant;

/// Ping interval and dead timeout of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatPolicy {
    /// Send a ping this often.
    pub interval: Duration,
    /// Declare DEAD when nothing at all arrived for this long.
    pub timeout: Duration,
}

impl From<streamkeeper_api::config::HeartbeatSpec> for HeartbeatPolicy {
    fn from(s: streamkeeper_api::config::HeartbeatSpec) -> Self {
        Self {
            interval: s.interval,
            timeout: s.timeout,
        }
    }
}

/// How the link looks while it is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Pongs on time.
    Active,
    /// A pong is late, or the last round trip was far above its average.
    Degraded,
}

/// Something the owner must act on now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Send ping number `seq`.
    Ping {
        /// Sequence number to carry in the ping, where the dialect allows a payload.
        seq: u64,
    },
    /// The link became DEGRADED.
    Degraded,
    /// Nothing arrived for the whole timeout: reap the connection.
    Dead {
        /// When the last inbound frame arrived.
        last_inbound: Instant,
        /// `last_inbound + timeout`.
        deadline: Instant,
    },
}

/// What a pong changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PongOutcome {
    /// Round trip of the ping it answers, when known.
    pub rtt: Option<Duration>,
    /// The link's health after the pong, if it changed.
    pub changed: Option<Health>,
}

/// Pings of all connections fall on this grid: thousands of sockets then share one timer
/// wakeup per grid slot instead of one each, which is most of the heartbeat's CPU (measured:
/// 4.3 % of a core for 10,000 sockets spread at random, 1.1 % on a 100 ms grid). A coarser grid
/// bunches deadlines too (1 s pushed the latest DEAD 56 ms past its deadline).
pub const PING_GRID: Duration = Duration::from_millis(100);

/// The delay before a new connection's first ping: a point of the first interval picked by
/// `unit` (random in `[0, 1)`, so pings spread over the interval), moved to the next slot of
/// the process-wide grid that starts at `origin`. With an interval that is a multiple of the
/// grid, every later ping stays on it.
pub fn ping_phase(origin: Instant, now: Instant, interval: Duration, unit: f64) -> Duration {
    let spread = interval.mul_f64(unit.clamp(0.0, 1.0));
    if interval < PING_GRID {
        return spread;
    }
    let at = now.saturating_duration_since(origin) + spread;
    let grid = PING_GRID.as_nanos();
    let rem = at.as_nanos() % grid;
    let up = if rem == 0 { 0 } else { grid - rem };
    let phase = spread + Duration::from_nanos(u64::try_from(up).unwrap_or(0));
    // Past the interval: the slot before is within it (the interval is at least one slot).
    if phase > interval {
        phase - PING_GRID
    } else {
        phase
    }
}

/// Pings kept for matching pongs; older unanswered pings only matter for lateness.
const TRACKED_PINGS: usize = 4;
/// A round trip this many times the average is DEGRADED...
const RTT_SPIKE_FACTOR: u32 = 4;
/// ...unless it is also within this much of the average (sub-millisecond loopback jitter).
const RTT_SPIKE_FLOOR: Duration = Duration::from_millis(50);

/// The liveness state of one connection.
///
/// It lives in every socket, so its times are [`Nanos`] since `epoch` (8 bytes, where an
/// `Instant` or a `Duration` is 16): 112 bytes rather than 176, which puts a socket in the
/// allocator's 256-byte class rather than its 320-byte one. The methods take and give
/// `Instant`s and `Duration`s.
#[derive(Debug, Clone)]
pub struct Liveness {
    /// When it connected: what its times count from.
    epoch: Instant,
    interval: Nanos,
    timeout: Nanos,
    last_inbound: Nanos,
    next_ping: Nanos,
    next_seq: u64,
    /// When the recent pings were sent, newest last; `None` slots are answered or unused.
    /// Each ping shifts the slots by one, so slot `k` is ping `next_seq - TRACKED_PINGS + k`
    /// ([`seq_of`]): kept with each slot, the numbers would make a connection's socket
    /// 32 bytes larger.
    sent: [Option<Nanos>; TRACKED_PINGS],
    /// When the oldest unanswered ping was sent.
    oldest_unanswered: Option<Nanos>,
    /// Smoothed round trip (TCP's SRTT weights: 7/8 old, 1/8 new).
    srtt: Option<Nanos>,
    health: Health,
    dead: bool,
}

/// A span of time in nanoseconds, in 8 bytes with room for `None` in an `Option` (stored
/// plus one; 584 years saturate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Nanos(NonZeroU64);

impl Nanos {
    fn new(d: Duration) -> Self {
        let n = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Self(NonZeroU64::MIN.saturating_add(n))
    }

    fn get(self) -> Duration {
        Duration::from_nanos(self.0.get() - 1)
    }
}

/// The number of the ping in slot `k` of [`Liveness`]'s `sent`, when the next ping is
/// `next_seq` (a slot older than the first ping is never set).
fn seq_of(next_seq: u64, k: usize) -> u64 {
    (next_seq + k as u64).saturating_sub(TRACKED_PINGS as u64)
}

impl Liveness {
    /// A link that connected at `now` (the handshake counts as inbound). The first ping goes
    /// out after `phase`, a value in `0..interval` that spreads the pings of many connections
    /// opened at once.
    pub fn new(policy: HeartbeatPolicy, now: Instant, phase: Duration) -> Self {
        Self {
            epoch: now,
            interval: Nanos::new(policy.interval),
            timeout: Nanos::new(policy.timeout),
            last_inbound: Nanos::new(Duration::ZERO),
            next_ping: Nanos::new(phase.min(policy.interval)),
            next_seq: 1,
            sent: [None; TRACKED_PINGS],
            oldest_unanswered: None,
            srtt: None,
            health: Health::Active,
            dead: false,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> HeartbeatPolicy {
        HeartbeatPolicy {
            interval: self.interval.get(),
            timeout: self.timeout.get(),
        }
    }

    /// When the connection is DEAD unless something arrives first.
    pub fn deadline(&self) -> Instant {
        self.last_inbound() + self.timeout.get()
    }

    /// When the last frame of any kind arrived.
    pub fn last_inbound(&self) -> Instant {
        self.at(self.last_inbound)
    }

    /// The smoothed round trip, once a pong has been matched.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt.map(Nanos::get)
    }

    /// The instant `t` of this connection's clock.
    fn at(&self, t: Nanos) -> Instant {
        self.epoch + t.get()
    }

    /// `now` on this connection's clock (an instant before it connected reads as its start).
    fn since_epoch(&self, now: Instant) -> Nanos {
        Nanos::new(now.saturating_duration_since(self.epoch))
    }

    /// Current health.
    pub fn health(&self) -> Health {
        self.health
    }

    /// When the owner must call [`poll`](Self::poll) next.
    pub fn next_wakeup(&self) -> Instant {
        let mut at = self.at(self.next_ping).min(self.deadline());
        if let (Some(sent), Health::Active) = (self.oldest_unanswered, self.health) {
            at = at.min(self.at(sent) + self.late_after());
        }
        at
    }

    /// A pong is late after a whole interval, or after four average round trips if that is
    /// longer (slow links must not flap).
    fn late_after(&self) -> Duration {
        let by_rtt = self
            .srtt()
            .map(|r| r * RTT_SPIKE_FACTOR)
            .unwrap_or_default();
        self.interval.get().max(by_rtt)
    }

    /// Any inbound frame (data, server heartbeat, control) proves the link alive.
    pub fn on_inbound(&mut self, now: Instant) {
        self.last_inbound = self.last_inbound.max(self.since_epoch(now));
    }

    /// A pong arrived; `seq` is the ping number it carried, if the dialect echoes one.
    /// Every pong counts (the seed guide's `socket.once('pong')` counted only the first).
    pub fn on_pong(&mut self, now: Instant, seq: Option<u64>) -> PongOutcome {
        self.on_inbound(now);
        let next_seq = self.next_seq;
        let mut pings = self
            .sent
            .iter()
            .enumerate()
            .filter_map(|(k, at)| at.map(|at| (seq_of(next_seq, k), at)));
        let answered = match seq {
            Some(seq) => pings.find(|(s, _)| *s == seq),
            // Without an echo, a pong answers the newest ping.
            None => pings.max_by_key(|(s, _)| *s),
        };
        let Some((seq, sent_at)) = answered else {
            // Unsolicited pong: liveness only.
            return PongOutcome {
                rtt: None,
                changed: None,
            };
        };
        for (k, slot) in self.sent.iter_mut().enumerate() {
            if seq_of(next_seq, k) <= seq {
                *slot = None;
            }
        }
        self.oldest_unanswered = self.sent.iter().flatten().min().copied();
        let rtt = now.saturating_duration_since(self.at(sent_at));
        let srtt = self.srtt();
        let spike =
            srtt.is_some_and(|avg| rtt > avg * RTT_SPIKE_FACTOR && rtt > avg + RTT_SPIKE_FLOOR);
        self.srtt = Some(Nanos::new(match srtt {
            None => rtt,
            Some(avg) => (avg * 7 + rtt) / 8,
        }));
        let health = if spike || self.late_at(now) {
            Health::Degraded
        } else {
            Health::Active
        };
        let changed = (health != self.health).then_some(health);
        self.health = health;
        PongOutcome {
            rtt: Some(rtt),
            changed,
        }
    }

    /// What is due at `now`. Call it again until it returns `None`; after `Dead` it always
    /// returns `None`.
    pub fn poll(&mut self, now: Instant) -> Option<Due> {
        if self.dead {
            return None;
        }
        if now >= self.deadline() {
            self.dead = true;
            return Some(Due::Dead {
                last_inbound: self.last_inbound(),
                deadline: self.deadline(),
            });
        }
        if self.health == Health::Active && self.late_at(now) {
            self.health = Health::Degraded;
            return Some(Due::Degraded);
        }
        let elapsed = self.since_epoch(now);
        if elapsed >= self.next_ping {
            let seq = self.next_seq;
            self.next_seq += 1;
            // Keep the schedule anchored: a late wakeup does not shift every later ping.
            let interval = self.interval.get();
            let mut next = self.next_ping.get() + interval;
            if next <= elapsed.get() {
                next = elapsed.get() + interval;
            }
            self.next_ping = Nanos::new(next);
            self.sent.rotate_left(1);
            self.sent[TRACKED_PINGS - 1] = Some(elapsed);
            self.oldest_unanswered.get_or_insert(elapsed);
            return Some(Due::Ping { seq });
        }
        None
    }

    /// Whether the oldest unanswered ping is late at `now`.
    fn late_at(&self, now: Instant) -> bool {
        self.oldest_unanswered
            .is_some_and(|t| now >= self.at(t) + self.late_after())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: HeartbeatPolicy = HeartbeatPolicy {
        interval: Duration::from_secs(15),
        timeout: Duration::from_secs(35),
    };

    #[test]
    fn a_pong_answers_the_ping_it_names_and_every_older_one() {
        // A short interval and a long timeout: six pings, none answered, the link alive.
        let policy = HeartbeatPolicy {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(60),
        };
        let t0 = Instant::now();
        let mut live = Liveness::new(policy, t0, Duration::ZERO);
        let at = |n: u64| t0 + Duration::from_secs(n - 1);
        for n in 1..=6 {
            // Unanswered pings turn the link DEGRADED on the way; only the pings matter here.
            let due = std::iter::from_fn(|| live.poll(at(n))).find(|d| !matches!(d, Due::Degraded));
            assert_eq!(due, Some(Due::Ping { seq: n }));
        }
        // Ping 2 is no longer tracked (four are): its pong counts as liveness only.
        let now = at(6) + Duration::from_millis(10);
        assert_eq!(live.on_pong(now, Some(2)).rtt, None);
        // The pong of ping 4 has ping 4's round trip and answers 3 as well.
        assert_eq!(
            live.on_pong(now, Some(4)).rtt,
            Some(now.saturating_duration_since(at(4)))
        );
        assert_eq!(live.oldest_unanswered.map(|t| live.at(t)), Some(at(5)));
        assert_eq!(live.on_pong(now, Some(3)).rtt, None, "answered already");
        // A pong without a number answers the newest ping.
        assert_eq!(
            live.on_pong(now, None).rtt,
            Some(now.saturating_duration_since(at(6)))
        );
        assert_eq!(live.oldest_unanswered, None);
        assert!(live.sent.iter().all(Option::is_none));
    }

    /// Drives a link the way the session does: sleep to the next wakeup, poll, and let the
    /// peer answer each ping after `rtt(seq)`, or never when it returns `None`.
    struct Sim {
        live: Liveness,
        pending_pongs: Vec<(Instant, u64)>,
        pings: u64,
        pongs: u64,
        transitions: Vec<(Instant, &'static str)>,
    }

    impl Sim {
        fn new(now: Instant) -> Self {
            Self {
                live: Liveness::new(POLICY, now, POLICY.interval),
                pending_pongs: Vec::new(),
                pings: 0,
                pongs: 0,
                transitions: Vec::new(),
            }
        }

        /// Runs until `until` or DEAD; returns the instant DEAD was declared.
        async fn run(
            &mut self,
            until: Instant,
            rtt: impl Fn(u64) -> Option<Duration>,
        ) -> Option<Instant> {
            loop {
                let pong_at = self.pending_pongs.iter().map(|(t, _)| *t).min();
                let wake =
                    pong_at.map_or(self.live.next_wakeup(), |p| p.min(self.live.next_wakeup()));
                if wake > until {
                    tokio::time::sleep_until(until).await;
                    return None;
                }
                tokio::time::sleep_until(wake).await;
                let now = Instant::now();
                let (ready, later): (Vec<_>, Vec<_>) =
                    self.pending_pongs.drain(..).partition(|(t, _)| *t <= now);
                self.pending_pongs = later;
                for (_, seq) in ready {
                    self.pongs += 1;
                    if let Some(h) = self.live.on_pong(now, Some(seq)).changed {
                        self.transitions.push((
                            now,
                            if h == Health::Active {
                                "active"
                            } else {
                                "degraded"
                            },
                        ));
                    }
                }
                while let Some(due) = self.live.poll(now) {
                    match due {
                        Due::Ping { seq } => {
                            self.pings += 1;
                            if let Some(d) = rtt(seq) {
                                self.pending_pongs.push((now + d, seq));
                            }
                        }
                        Due::Degraded => self.transitions.push((now, "degraded")),
                        Due::Dead { .. } => return Some(now),
                    }
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_pong_counts_for_an_hour() {
        // The seed's `socket.once('pong')` updated lastPong once: every socket died 35 s in.
        let start = Instant::now();
        let mut sim = Sim::new(start);
        let dead = sim
            .run(start + Duration::from_secs(3601), |_| {
                Some(Duration::from_millis(40))
            })
            .await;
        assert_eq!(dead, None, "a healthy link was declared dead");
        assert_eq!(sim.pings, 240);
        assert_eq!(sim.pongs, 240);
        assert!(sim.transitions.is_empty(), "{:?}", sim.transitions);
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_dead_exactly_at_the_deadline() {
        let start = Instant::now();
        let mut sim = Sim::new(start);
        // Three answered pings, then the peer goes half-open.
        let dead_at = sim
            .run(start + Duration::from_secs(600), |seq| {
                (seq <= 3).then_some(Duration::from_millis(30))
            })
            .await
            .expect("declared dead");
        let last_pong = start + Duration::from_secs(45) + Duration::from_millis(30);
        assert_eq!(dead_at, last_pong + POLICY.timeout);
        // The late pong made it DEGRADED one interval after the unanswered ping, before DEAD.
        assert_eq!(
            sim.transitions,
            vec![(start + Duration::from_secs(75), "degraded")]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn data_frames_keep_a_link_alive_without_pongs() {
        let start = Instant::now();
        let mut live = Liveness::new(POLICY, start, POLICY.interval);
        let mut t = start;
        for _ in 0..100 {
            t += Duration::from_secs(10);
            tokio::time::sleep_until(t).await;
            live.on_inbound(Instant::now());
            while let Some(due) = live.poll(Instant::now()) {
                assert!(!matches!(due, Due::Dead { .. }), "data proves liveness");
            }
        }
        assert_eq!(
            live.health(),
            Health::Degraded,
            "but unanswered pings are still late"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_second_of_jitter_never_gives_a_false_dead() {
        // Pongs come back between 0 and 1 s late in a fixed pseudo-random pattern, for 6 hours.
        let start = Instant::now();
        let mut sim = Sim::new(start);
        let jitter = |seq: u64| {
            let x = seq
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407)
                >> 33;
            Some(Duration::from_millis(x % 1000))
        };
        assert_eq!(
            sim.run(start + Duration::from_secs(6 * 3600), jitter).await,
            None
        );
        assert_eq!(
            sim.pongs,
            sim.pings - u64::from(!sim.pending_pongs.is_empty())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_round_trip_spike_degrades_and_a_normal_one_recovers() {
        let start = Instant::now();
        let mut sim = Sim::new(start);
        let rtt = |seq: u64| Some(Duration::from_millis(if seq == 10 { 2_000 } else { 20 }));
        assert_eq!(
            sim.run(start + Duration::from_secs(15 * 12), rtt).await,
            None
        );
        let at10 = start + Duration::from_secs(150) + Duration::from_secs(2);
        let at11 = start + Duration::from_secs(165) + Duration::from_millis(20);
        assert_eq!(sim.transitions, vec![(at10, "degraded"), (at11, "active")]);
    }

    #[test]
    fn first_pings_land_on_the_grid_and_spread_over_the_interval() {
        let origin = Instant::now();
        let interval = Duration::from_secs(15);
        let mut slots = std::collections::BTreeSet::new();
        for i in 0..1000u32 {
            let now = origin + Duration::from_micros(u64::from(i) * 7_919);
            let phase = ping_phase(origin, now, interval, f64::from(i) / 1000.0);
            assert!(phase <= interval);
            let at = (now + phase).duration_since(origin);
            assert_eq!(
                at.as_nanos() % PING_GRID.as_nanos(),
                0,
                "on the grid: {at:?}"
            );
            slots.insert(at.as_millis() / 100);
        }
        // 1,000 connections share slots but still cover the interval.
        assert!(slots.len() > 100, "{} slots used", slots.len());
    }

    #[test]
    fn the_phase_spreads_the_first_ping() {
        let now = Instant::now();
        let live = Liveness::new(POLICY, now, Duration::from_secs(3));
        assert_eq!(live.next_wakeup(), now + Duration::from_secs(3));
        assert_eq!(live.deadline(), now + POLICY.timeout);
    }

    #[test]
    fn a_pong_without_an_echo_answers_the_newest_ping() {
        let now = Instant::now();
        let mut live = Liveness::new(POLICY, now, Duration::ZERO);
        assert_eq!(live.poll(now), Some(Due::Ping { seq: 1 }));
        let out = live.on_pong(now + Duration::from_millis(7), None);
        assert_eq!(out.rtt, Some(Duration::from_millis(7)));
        assert_eq!(live.srtt(), Some(Duration::from_millis(7)));
    }
}
