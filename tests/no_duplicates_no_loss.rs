//! After upstream reconnects (resets and a half-open socket) no event the app acked is
//! delivered again and none is lost; an app that goes away and comes back gets exactly its
//! unacked events again, in order, and never an acked one.

use std::{collections::BTreeMap, time::Duration};

use streamkeeper_api::{DropReason, EventId, app_protocol::AppFrame};
use streamkeeper_e2e::{AckMode, App, FromServer, Harness, Options, event_seq};
use streamkeeper_emulator::Fault;

/// Every event an app was handed, in order, and how often each id came.
#[derive(Debug, Default)]
struct Ledger {
    order: Vec<u64>,
    times: BTreeMap<u64, u32>,
    dropped: Vec<DropReason>,
}

impl Ledger {
    fn record(&mut self, seen: &FromServer) {
        match seen {
            FromServer::Frame(AppFrame::Event { id, .. }) => {
                let seq = event_seq(id);
                self.order.push(seq);
                *self.times.entry(seq).or_default() += 1;
            }
            FromServer::Frame(AppFrame::Dropped { reason, .. }) => self.dropped.push(*reason),
            FromServer::Frame(_) => {}
            other => panic!("the app socket ended: {other:?}"),
        }
    }

    fn last(&self) -> u64 {
        self.order.last().copied().unwrap_or(0)
    }
}

/// Reads into `ledger` until `done` holds, at most `bound`.
async fn pump(
    app: &mut App,
    ledger: &mut Ledger,
    bound: Duration,
    what: &str,
    done: impl Fn(&Ledger) -> bool,
) {
    let deadline = tokio::time::Instant::now() + bound;
    while !done(ledger) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match app.try_recv(left).await {
            Some(seen) => ledger.record(&seen),
            None => panic!(
                "{what}: not reached within {bound:?}; last seq {}",
                ledger.last()
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_resets_and_a_blackhole_every_event_is_acked_exactly_once_and_in_order() {
    let name = "ledger";
    let h = Harness::start(Options {
        event_interval: Duration::from_millis(20),
        ..Options::new(&[name])
    })
    .await;
    let id = h.stream_id(name);
    let timeout = h.config.streams[0].heartbeat.timeout;
    h.wait_active(&id).await;
    let mut app = App::connect(h.app_addr, &id, AckMode::All).await;
    let mut ledger = Ledger::default();
    pump(
        &mut app,
        &mut ledger,
        Duration::from_secs(3),
        "the first event",
        |l| !l.order.is_empty(),
    )
    .await;
    let first = ledger.order[0];

    let faults = [
        (
            Fault::Reset {
                stream: Some(name.into()),
            },
            DropReason::TcpError,
        ),
        (
            Fault::Reset {
                stream: Some(name.into()),
            },
            DropReason::TcpError,
        ),
        (
            Fault::Blackhole {
                stream: Some(name.into()),
            },
            DropReason::PongTimeout,
        ),
        (
            Fault::Reset {
                stream: Some(name.into()),
            },
            DropReason::TcpError,
        ),
    ];
    for (fault, expected) in faults {
        // Some events on this socket first.
        let from = ledger.last();
        pump(
            &mut app,
            &mut ledger,
            Duration::from_secs(3),
            "events before the fault",
            |l| l.last() >= from + 3,
        )
        .await;
        let mark = h.recorder.mark();
        assert_eq!(
            h.emu.fault(fault.clone()).applied,
            1,
            "{fault:?} reached the socket"
        );
        let dropped = h
            .recorder
            .wait_for(mark, timeout + Duration::from_secs(2), "the drop", |s| {
                s.stream == id && s.is_any_drop()
            })
            .await;
        assert!(
            dropped.is_dropped(expected),
            "{fault:?}: {:?}",
            dropped.event
        );
        h.recorder
            .wait_for(
                dropped.index,
                Duration::from_secs(3),
                "the reconnect",
                |s| s.stream == id && s.is_connected(),
            )
            .await;
    }

    // Everything emitted up to now must arrive.
    let end = h.emu.stats().streams[name].emitted;
    pump(
        &mut app,
        &mut ledger,
        Duration::from_secs(10),
        "every emitted event",
        |l| l.last() >= end,
    )
    .await;

    let lost: Vec<u64> = (first..=end)
        .filter(|s| !ledger.times.contains_key(s))
        .collect();
    let repeated: Vec<(u64, u32)> = ledger
        .times
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, n)| (*s, *n))
        .collect();
    let out_of_order = ledger.order.windows(2).filter(|w| w[1] <= w[0]).count();
    eprintln!(
        "events {first}..={end}: {} delivered and acked, {} lost, {} repeated, {} out of order; drops seen by the app: {:?}",
        ledger.order.len(),
        lost.len(),
        repeated.len(),
        out_of_order,
        ledger.dropped
    );
    assert!(lost.is_empty(), "lost events: {lost:?}");
    assert!(
        repeated.is_empty(),
        "acked events delivered again (seq, times): {repeated:?}"
    );
    assert_eq!(out_of_order, 0, "events out of order: {:?}", ledger.order);
    assert!(
        ledger.order.len() as u64 > end - first,
        "the faults spanned {} events",
        ledger.order.len()
    );
    assert_eq!(
        ledger.dropped,
        [
            DropReason::TcpError,
            DropReason::TcpError,
            DropReason::PongTimeout,
            DropReason::TcpError
        ],
        "the app heard every drop"
    );
    let last_id = EventId(format!("{name}:{:09}", ledger.last()));
    h.wait_acked(&id, &last_id).await;
    drop(app);
    h.shutdown().await;
}

/// The ids of the next `n` events, skipping other frames.
async fn events(app: &mut App, n: usize) -> Vec<EventId> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(app.next_event(Duration::from_secs(3)).await.0);
    }
    ids
}

fn seqs(ids: &[EventId]) -> Vec<u64> {
    ids.iter().map(event_seq).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_reconnects_gets_its_unacked_events_again_and_never_an_acked_one() {
    let name = "redeliver";
    let h = Harness::start(Options {
        event_interval: Duration::ZERO,
        ..Options::new(&[name])
    })
    .await;
    let id = h.stream_id(name);
    h.wait_active(&id).await;

    let app = App::connect(h.app_addr, &id, AckMode::Manual).await;
    let mut app = app;
    h.emu.emit(name, 10);
    let got = events(&mut app, 10).await;
    assert_eq!(seqs(&got), (1..=10).collect::<Vec<_>>());
    // A cumulative ack of 1..=6; 7..=10 stay unacked.
    app.ack(&got[5]);
    h.wait_acked(&id, &got[5]).await;
    app.close(Duration::from_secs(3)).await;

    // While the app is away: more events, an upstream reset and reconnect, more events.
    h.emu.emit(name, 5);
    let mark = h.recorder.mark();
    assert_eq!(
        h.emu
            .fault(Fault::Reset {
                stream: Some(name.into())
            })
            .applied,
        1
    );
    h.recorder
        .wait_for(mark, Duration::from_secs(3), "the reconnect", |s| {
            s.stream == id && s.is_connected()
        })
        .await;
    h.emu.emit(name, 5);

    // Back: exactly the unacked events, in order, then the new ones; nothing acked.
    let mut app = App::connect(h.app_addr, &id, AckMode::Manual).await;
    let got = events(&mut app, 14).await;
    assert_eq!(
        seqs(&got),
        (7..=20).collect::<Vec<_>>(),
        "redelivery after the app came back"
    );
    h.emu.emit(name, 1);
    let next = events(&mut app, 1).await;
    assert_eq!(seqs(&next), [21], "nothing repeated after the redelivery");
    app.ack(&next[0]);
    h.wait_acked(&id, &next[0]).await;

    // Gone abruptly (no close handshake) with everything acked: a new app gets only new events.
    drop(app);
    h.emu.emit(name, 1);
    let mut app = App::connect(h.app_addr, &id, AckMode::Manual).await;
    let got = events(&mut app, 1).await;
    assert_eq!(seqs(&got), [22], "an acked event was delivered again");
    assert_eq!(h.hub(&id).pending_events(), 1);
    drop(app);
    h.shutdown().await;
}
