//! Genesys Cloud for real, against the emulator's Notifications API (channels, subscriptions,
//! no replay): make-before-break through token rotations and `socket_closing` delivers every
//! event once with no `dropped` or `gap`; a real outage is exactly one `gap` that covers it;
//! 2,500 topics take three channels.

use std::time::Duration;

use streamkeeper_api::config::Platform;
use streamkeeper_coord::StreamKey;
use streamkeeper_e2e::{
    AckMode, App, Harness, Rig,
    platform::{Tally, Timing, genesys, topics, write_credential},
};
use streamkeeper_emulator::{EmulatorConfig, Fault, GenesysConfig, GenesysFault};
use streamkeeper_sidecar::upstream::SessionEvent;

const BOUND: Duration = Duration::from_secs(20);

fn emulator(token_ttl: Duration) -> EmulatorConfig {
    EmulatorConfig {
        genesys: GenesysConfig {
            token_ttl,
            // 20 events a second on each topic.
            event_interval: Duration::from_millis(50),
            heartbeat_interval: Duration::from_secs(1),
            ..GenesysConfig::default()
        },
        ..EmulatorConfig::default()
    }
}

async fn start(cfg: EmulatorConfig, topic_count: usize) -> Harness {
    Harness::start_with(cfg, Rig::default(), move |emu, cfg, dir| {
        let creds = dir.join("genesys");
        write_credential(&creds, Platform::Genesys, &cfg.genesys.clients[0]);
        vec![genesys(
            emu,
            "queue",
            &topics("u", topic_count),
            &creds,
            Timing::default(),
        )]
    })
    .await
}

fn rotations(h: &Harness) -> Vec<SessionEvent> {
    h.recorder
        .since(0)
        .into_iter()
        .filter(|s| matches!(s.event, SessionEvent::Rotated { .. }))
        .map(|s| s.event)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_and_socket_closing_deliver_every_event_once_with_no_drop_or_gap() {
    // Tokens live 3 s and are refreshed 1 s before: a new channel every ~2 s.
    let h = start(emulator(Duration::from_secs(3)), 1).await;
    let id = h.stream_id("queue");
    h.wait_active(&id).await;
    let mut app = App::connect(h.app_addr, &id, AckMode::All).await;
    let mut tally = Tally::default();

    let two = tally
        .read_until(&mut app, BOUND, |_| {
            rotations(&h)
                .iter()
                .filter(|e| {
                    matches!(
                        e,
                        SessionEvent::Rotated {
                            why: "token rotation",
                            ..
                        }
                    )
                })
                .count()
                >= 2
        })
        .await;
    assert!(two, "two token rotations within {BOUND:?}");
    // The retired socket closes just after the rotation is recorded (later on a busy machine):
    // announce the close to the one channel left, the next rotation being ~2 s away.
    let open_channels = || -> Vec<String> {
        h.emu
            .stats()
            .genesys
            .channels
            .into_iter()
            .filter(|(_, c)| c.connected && c.stopped.is_none())
            .map(|(id, _)| id)
            .collect()
    };
    assert!(
        tally
            .read_until(&mut app, BOUND, |_| open_channels().len() == 1)
            .await,
        "the retired socket closed within {BOUND:?}"
    );
    let current = open_channels().pop();
    let report = h.emu.fault(Fault::Genesys(GenesysFault::SocketClosing {
        channel: current,
        client: None,
        close_after_ms: Some(1200),
        code: None,
    }));
    assert_eq!(report.applied, 1, "one socket told it closes soon");
    let closing = tally
        .read_until(&mut app, BOUND, |_| {
            rotations(&h).iter().any(|e| {
                matches!(
                    e,
                    SessionEvent::Rotated {
                        why: "announced close",
                        ..
                    }
                )
            })
        })
        .await;
    assert!(closing, "socket_closing led to a rotation");
    // Read on past the old socket's close.
    let start = tally.events();
    assert!(
        tally
            .read_until(&mut app, BOUND, |t| t.events() >= start + 40)
            .await,
        "events keep flowing"
    );

    assert!(tally.events() > 100, "events flowed: {}", tally.events());
    assert_eq!(tally.duplicates(), 0, "no event delivered twice");
    assert!(
        tally.missing().is_empty(),
        "no event lost: {:?}",
        tally.missing()
    );
    assert!(tally.dropped.is_empty(), "no dropped: {:?}", tally.dropped);
    assert!(tally.gaps.is_empty(), "no gap: {:?}", tally.gaps);
    let rotated = rotations(&h);
    assert!(rotated.len() >= 3, "{rotated:?}");
    for r in &rotated {
        // Proven: an event arrived on both sockets, so the old one closed after the new one
        // was live and delivering.
        assert!(
            matches!(r, SessionEvent::Rotated { proven: true, .. }),
            "{r:?}"
        );
    }
    assert_eq!(
        h.recorder
            .since(0)
            .iter()
            .filter(|s| s.is_any_drop())
            .count(),
        0,
        "no socket was reaped"
    );

    // The successor's id is the stream's connection in /status and in the store.
    let Some(SessionEvent::Rotated { to, .. }) = rotated.last() else {
        unreachable!()
    };
    assert_eq!(h.status(&id).connection.as_ref(), Some(to));
    let key = StreamKey::new("acme".parse().expect("tenant"), id.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let record = h.pod.ownership().store().record(&key).await.expect("store");
        let current = h.status(&id).connection;
        if record.as_ref().map(|r| r.socket_id.clone()) == Some(current.clone()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the store's record names the current connection: {record:?} vs {current:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each rotation was one token grant, and every channel beyond the first was a rotation.
    let stats = h.emu.stats();
    let client = &stats.genesys.clients["genesys-client"];
    assert_eq!(client.channels_created as usize, rotated.len() + 1);
    h.shutdown().await;
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_exactly_one_gap_that_covers_it() {
    let h = start(emulator(Duration::from_secs(3600)), 1).await;
    let id = h.stream_id("queue");
    h.wait_active(&id).await;
    let mut app = App::connect(h.app_addr, &id, AckMode::All).await;
    let mut tally = Tally::default();
    assert!(
        tally
            .read_until(&mut app, BOUND, |t| t.events() >= 20)
            .await
    );
    // The reconnect's channel creation gets a 429 with `Retry-After: 1`, so the outage lasts
    // at least a second whatever the jittered backoff draws (which may be ~0 ms): events are
    // certainly produced, and lost, inside it.
    let limited = h.emu.fault(Fault::Genesys(GenesysFault::RateLimit {
        path: Some("/api/v2/notifications/channels".into()),
        method: Some("POST".into()),
        count: 1,
        retry_after_secs: 1,
    }));
    assert_eq!(limited.applied, 1);
    let reset_at = epoch_ms();
    let report = h.emu.fault(Fault::Genesys(GenesysFault::Reset {
        channel: None,
        client: None,
    }));
    assert_eq!(report.applied, 1);
    assert!(
        tally
            .read_until(&mut app, BOUND, |t| !t.gaps.is_empty() && t.events() >= 60)
            .await,
        "a gap, then events again"
    );
    // No channel request before the Retry-After ended: the gap ends a second or more after
    // the reset.
    let (_, gap_to, _) = &tally.gaps[0];
    assert!(
        *gap_to >= reset_at + 1000,
        "reconnected {} ms after the reset, inside a 1 s Retry-After",
        gap_to.saturating_sub(reset_at)
    );
    // Nothing more is owed.
    let more = tally.events() + 20;
    assert!(
        tally
            .read_until(&mut app, BOUND, |t| t.events() >= more)
            .await
    );
    assert_eq!(tally.gaps.len(), 1, "exactly one gap: {:?}", tally.gaps);
    assert_eq!(tally.dropped.len(), 1, "the reset socket was reported");
    assert_eq!(tally.duplicates(), 0);
    let (from, to, _) = &tally.gaps[0];
    let missing = tally.missing();
    assert!(
        !missing.is_empty(),
        "the emulator does not replay: events were lost"
    );
    // Every event the app never got was produced inside the gap. The lost ones' times are
    // not seen: the first lost event came one emulator tick after the last one delivered, the
    // last lost one a tick before the first delivered again. Ticks are 50 ms apart but drift
    // by a few ms on a busy machine, and the gap's ends (the last frame heard, the new socket
    // up) can lie anywhere inside those ticks: two ticks of slack.
    const SLACK_MS: u64 = 100;
    let times = &tally.seqs.values().next().expect("one topic");
    for seqs in missing.values() {
        let (before, after) = (seqs[0] - 1, seqs[seqs.len() - 1] + 1);
        let (at_before, at_after) = (times[&before].1, times[&after].1);
        assert!(
            *from <= at_before + SLACK_MS && *to >= at_after.saturating_sub(SLACK_MS),
            "gap {from}..{to} covers the loss between {at_before} and {at_after}"
        );
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_five_hundred_topics_take_three_channels_none_over_a_thousand() {
    let cfg = EmulatorConfig {
        genesys: GenesysConfig {
            event_interval: Duration::from_secs(1),
            ..emulator(Duration::from_secs(3600)).genesys
        },
        ..EmulatorConfig::default()
    };
    let h = start(cfg, 2500).await;
    let id = h.stream_id("queue");
    h.wait_active(&id).await;
    let stats = h.emu.stats();
    let channels: Vec<_> = stats.genesys.channels.values().collect();
    assert_eq!(channels.len(), 3, "{channels:?}");
    assert!(
        channels.iter().all(|c| c.topics <= 1000 && c.connected),
        "{channels:?}"
    );
    assert_eq!(channels.iter().map(|c| c.topics).sum::<usize>(), 2500);
    let mut app = App::connect(h.app_addr, &id, AckMode::All).await;
    let mut tally = Tally::default();
    assert!(
        tally
            .read_until(&mut app, BOUND, |t| t.seqs.len() >= 2500)
            .await,
        "events from every topic, across the three sockets: {}",
        tally.seqs.len()
    );
    h.shutdown().await;
}
