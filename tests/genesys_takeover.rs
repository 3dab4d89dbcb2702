//! A takeover on Genesys (which never replays), with two `streamkeeper sidecar` processes on one
//! real Redis against the emulator, each pod with an app that acks everything. SIGKILL the
//! owner mid-stream: the standby takes over within the lease TTL (+ 1 s), and its app gets
//! exactly one `gap` that covers every event neither app received, then events again; no event
//! reaches both apps. The gap starts at the previous owner's last renewal of its connection
//! record in the store (when it last heard the platform), not at its connect long before.
//! SIGTERM instead: the release hands over at once; a gap, if any, covers what was lost.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use streamkeeper_api::config::{HeartbeatSpec, Platform};
use streamkeeper_e2e::{
    AckMode, App, FromServer, TempDir,
    fleet::{Fleet, Sampler, Timers, stream_id},
    platform::{Tally, Timing, genesys, topics, write_credential},
    redis::RedisServer,
};
use streamkeeper_emulator::{EmulatorConfig, GenesysConfig};
use tokio::{
    sync::Notify,
    task::JoinHandle,
    time::{Instant, timeout_at},
};

/// The event period on the stream's one topic: 20 events a second.
const EVENT_INTERVAL: Duration = Duration::from_millis(50);

/// Per sequence number `n` (at `n - 1`): epoch ms just before and just after its emission.
type Stamps = Arc<Mutex<Vec<(u64, u64)>>>;

/// Emits one event every [`EVENT_INTERVAL`] on `topic` (the test's ticker, not the emulator's,
/// so that the emission time of every event is known, lost ones included): for sequence number
/// `n`, entry `n - 1` holds epoch ms read just before and just after the emulator stamped it
/// (the sidecar's clock is the same host's).
fn emitter(emu: Arc<streamkeeper_emulator::Emulator>, topic: String) -> (Stamps, JoinHandle<()>) {
    let stamps: Stamps = Arc::default();
    let out = Arc::clone(&stamps);
    let task = tokio::spawn(async move {
        let mut every = tokio::time::interval(EVENT_INTERVAL);
        loop {
            every.tick().await;
            let before = epoch_ms();
            emu.emit_genesys(&topic, 1);
            lock(&out).push((before, epoch_ms()));
        }
    });
    (stamps, task)
}

/// What one pod's app read, shared with the test as it reads.
#[derive(Default)]
struct Tap {
    tally: Mutex<Tally>,
    ended: Mutex<bool>,
    changed: Notify,
}

impl Tap {
    /// Connects an app that acks everything to `pod`'s endpoint and tallies what it reads
    /// until its socket ends.
    async fn start(fleet: &Fleet, pod: usize, name: &str) -> (Arc<Self>, JoinHandle<()>) {
        let id = stream_id(name).parse().expect("a stream id");
        let mut app = App::connect(fleet.pods[pod].listen, &id, AckMode::All).await;
        let tap = Arc::new(Self::default());
        let me = Arc::clone(&tap);
        let task = tokio::spawn(async move {
            loop {
                let seen = app.try_recv(Duration::from_secs(3600)).await;
                let end = matches!(seen, None | Some(FromServer::Ended(_)));
                if let Some(f) = seen {
                    lock(&me.tally).take(f);
                }
                if end {
                    *lock(&me.ended) = true;
                }
                me.changed.notify_waiters();
                if end {
                    return;
                }
            }
        });
        (tap, task)
    }

    /// Waits, at most `bound`, until `done` holds of what the app read; whether it did.
    async fn wait(&self, bound: Duration, done: impl Fn(&Tally, bool) -> bool) -> bool {
        let deadline = Instant::now() + bound;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(&lock(&self.tally), *lock(&self.ended)) {
                return true;
            }
            if timeout_at(deadline, notified).await.is_err() {
                return done(&lock(&self.tally), *lock(&self.ended));
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Events of `topic` an app got: sequence number → emulator time (epoch ms).
fn events(t: &Tally, topic: &str) -> std::collections::BTreeMap<u64, u64> {
    t.seqs
        .get(topic)
        .map(|m| m.iter().map(|(s, (_, at))| (*s, *at)).collect())
        .unwrap_or_default()
}

/// How the owner goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// SIGKILL: no release; the successor waits out the lease and reads when the owner last
    /// heard the platform from its connection record.
    Kill,
    /// SIGTERM: a release after the last checkpoint (the record goes with it); the successor
    /// starts at once and dates the gap from the checkpoint's handover bound.
    Term,
}

/// Two pods on one Redis run one Genesys stream, each with an app that acks everything; the
/// owner streams ~4 s (so its record's last change, the connect, is long past), then goes as
/// `ending` says. Checks the successor's app: the gap(s), what neither app got, flow again.
async fn takeover(ending: Ending) {
    let redis = RedisServer::start();
    let name = "queue";
    let id = stream_id(name);
    let topic = topics("u", 1).remove(0);
    let timers = Timers {
        interval: Duration::from_millis(300),
        timeout: Duration::from_millis(1500),
        ..Timers::default()
    };
    let ttl = timers.timeout;
    let cfg = EmulatorConfig {
        genesys: GenesysConfig {
            // Events come from the test's emitter.
            event_interval: Duration::ZERO,
            heartbeat_interval: Duration::from_secs(1),
            token_ttl: Duration::from_secs(3600),
            // Exists from the start, whoever is subscribed: no replay, so what no socket takes
            // is lost.
            topics: vec![topic.clone()],
            ..GenesysConfig::default()
        },
        ..EmulatorConfig::default()
    };
    let client = cfg.genesys.clients[0].clone();
    let mut fleet = Fleet::start_with("genesys-takeover", redis.url(), cfg, timers).await;
    let creds = TempDir::new("genesys-takeover-creds");
    write_credential(creds.path(), Platform::Genesys, &client);
    let timing = Timing {
        heartbeat: HeartbeatSpec {
            interval: timers.interval,
            timeout: timers.timeout,
        },
        ..Timing::default()
    };
    let spec = genesys(
        &fleet.emu,
        name,
        std::slice::from_ref(&topic),
        creds.path(),
        timing,
    );
    fleet.specs.insert(name.to_owned(), spec);
    let (stamps, emitting) = emitter(Arc::clone(&fleet.emu), topic.clone());
    let mut taps = Vec::new();
    for _ in 0..2 {
        let i = fleet.add_pod(&[name]).await;
        taps.push(Tap::start(&fleet, i, name).await);
    }
    // Owner rounds only: the emulator's Genesys sockets are not per stream.
    let sampler = Sampler::start(&fleet, &[], 0, Some(id.clone()));
    let (a, _, _) = fleet
        .wait_owner(&[0, 1], name, Duration::from_secs(10))
        .await;
    let b = 1 - a;
    let (tap_a, tap_b) = (Arc::clone(&taps[a].0), Arc::clone(&taps[b].0));
    assert!(
        tap_a
            .wait(Duration::from_secs(10), |t, _| t.events() >= 80)
            .await,
        "pod-{a}'s app got no events\n{}",
        fleet.diagnostics()
    );

    let gone_at = Instant::now();
    let gone_ms = epoch_ms();
    match ending {
        Ending::Kill => fleet.kill(a).await,
        Ending::Term => fleet.pods[a].proc.terminate(),
    }
    let bound = ttl + Duration::from_secs(1);
    let (_, entry, seen) = fleet.wait_owner(&[b], name, bound).await;
    let took = seen - gone_at;
    assert!(
        tap_a.wait(Duration::from_secs(10), |_, ended| ended).await,
        "pod-{a}'s app socket outlived {ending:?}"
    );
    if ending == Ending::Term {
        let exit = fleet.pods[a].proc.wait(Duration::from_secs(10)).await;
        assert!(
            exit.is_some_and(|e| e.success()),
            "SIGTERM exits 0: {exit:?}\n{}",
            fleet.diagnostics()
        );
    }
    // Events well past the takeover (a second gap would show by then).
    let flowing = tap_b
        .wait(Duration::from_secs(10), |t, _| {
            (ending == Ending::Term || !t.gaps.is_empty()) && t.events() >= 40
        })
        .await;
    let got = lock(&tap_b.tally).events();
    assert!(
        flowing,
        "pod-{b}'s app: gaps {:?}, {got} events after the takeover\n{}",
        lock(&tap_b.tally).gaps,
        fleet.diagnostics()
    );
    let samples = sampler.finish().await;

    // Everything both apps read so far, checked under the locks (released before reading on).
    let more = {
        let (ta, tb) = (lock(&tap_a.tally), lock(&tap_b.tally));
        let (ea, eb) = (events(&ta, &topic), events(&tb, &topic));
        let (a_last, b_first) = (
            *ea.keys().next_back().expect("A delivered"),
            *eb.keys().next().expect("B delivered"),
        );
        let lost: Vec<u64> = (a_last + 1..b_first).collect();
        let rel = |t: u64| t as i64 - gone_ms as i64;
        eprintln!(
            "{ending:?} pod-{a}: pod-{b} owns after {took:?} (fence {}); A's app got {} events \
             (last seq {a_last}, made at {} ms), B's app {} (first seq {b_first}, made at {} \
             ms); lost {} ({:?}); B's gaps {:?} (at {:?} ms); A's dropped {:?}; B's dropped {:?}",
            entry["fence"],
            ea.len(),
            rel(ea[&a_last]),
            eb.len(),
            rel(eb[&b_first]),
            lost.len(),
            lost.first().zip(lost.last()),
            tb.gaps,
            tb.gaps
                .iter()
                .map(|(f, t, _)| (rel(*f), rel(*t)))
                .collect::<Vec<_>>(),
            ta.dropped,
            tb.dropped,
        );
        assert!(
            took <= bound,
            "takeover took {took:?}, over the lease TTL + 1 s = {bound:?}\n{}",
            fleet.diagnostics()
        );
        assert!(
            samples.violations.is_empty(),
            "single owner: {:?}\n{}",
            samples.violations,
            fleet.diagnostics()
        );
        // Each app's own run is whole: the loss is one run, between the two pods.
        assert!(ta.missing().is_empty() && tb.missing().is_empty());
        assert_eq!((ta.duplicates(), tb.duplicates()), (0, 0));
        // Genesys cannot replay, so the successor starts from what the platform sends now: the
        // checkpoint (batched per window, not per event) decides nothing here, and no event A's
        // app got (acked or not) can reach B's app.
        let both: Vec<&u64> = ea.keys().filter(|s| eb.contains_key(s)).collect();
        assert!(both.is_empty(), "delivered to both apps: {both:?}");
        assert!(ta.gaps.is_empty(), "A's app: no gap: {:?}", ta.gaps);
        assert!(
            tb.dropped.is_empty(),
            "B's app: no dropped: {:?}",
            tb.dropped
        );
        if ending == Ending::Kill {
            assert!(
                !lost.is_empty(),
                "the takeover waited out a lease and the emulator does not replay: events were lost"
            );
        }
        if !lost.is_empty() {
            assert_eq!(tb.gaps.len(), 1, "exactly one gap: {:?}", tb.gaps);
        } else {
            // Nothing lost: a gap would be a false alarm, but a conservative one.
            assert!(tb.gaps.len() <= 1, "at most one gap: {:?}", tb.gaps);
        }
        if let (Some((from, to, reason)), false) = (tb.gaps.first(), lost.is_empty()) {
            // The loss lies inside the gap, by the emission times of the lost events
            // themselves (bracketed by the emitter's clock reads: no slack needed).
            let (first, last) = {
                let st = lock(&stamps);
                (
                    st[lost[0] as usize - 1],
                    st[lost[lost.len() - 1] as usize - 1],
                )
            };
            assert!(
                *from <= first.1 && *to >= last.0,
                "gap {from}..{to} ({reason}) covers the loss, made from {} to {} ({} ms \
                 relative to {ending:?})",
                first.1,
                last.0,
                rel(first.1)
            );
            let before = ea[&a_last];
            // Its start is when A last heard the platform, not some older time. After a kill,
            // A's last renewal of its record: within a lease TTL of A's last event. After a
            // release, the handover bound (a lease plus the ack grace) before B's claim.
            let earliest = match ending {
                Ending::Kill => ttl,
                Ending::Term => ttl + Duration::from_secs(1),
            };
            assert!(
                *from + earliest.as_millis() as u64 >= before,
                "gap starts {} ms before A's last event ({before}), over {earliest:?}",
                before - from
            );
        }
        tb.events() + 20
    };
    // Events again, and nothing more owed.
    assert!(
        tap_b
            .wait(Duration::from_secs(10), |t, _| t.events() >= more)
            .await,
        "events keep flowing on pod-{b}"
    );
    {
        let (ta, tb) = (lock(&tap_a.tally), lock(&tap_b.tally));
        let n = ta.gaps.len() + tb.gaps.len();
        assert!(n <= 1, "still at most one gap: {:?}", tb.gaps);
        assert!(tb.missing().is_empty() && tb.duplicates() == 0);
    }
    emitting.abort();
    for (_, t) in taps {
        t.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_the_successor_sends_exactly_one_gap_that_covers_what_neither_app_got() {
    takeover(Ending::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigterm_the_successor_sends_one_gap_for_what_the_handover_lost() {
    takeover(Ending::Term).await;
}
