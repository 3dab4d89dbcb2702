//! NICE CXone for real, against the emulator: the DFO event hub rotates by registering again
//! on the same socket (refresh-token grants, falling back to the access key when one is
//! refused); Agent Assist Hub carries the token in every message, so after a rotation every
//! message has the new token and no message is sent for the rotation itself.

use std::{collections::BTreeSet, time::Duration};

use streamkeeper_api::config::Platform;
use streamkeeper_e2e::{
    AckMode, App, Harness, Rig,
    platform::{Tally, Timing, aah, dfo, write_credential},
};
use streamkeeper_emulator::{CxoneConfig, CxoneFault, EmulatorConfig, Fault, GrantKind};
use streamkeeper_sidecar::upstream::SessionEvent;

const BOUND: Duration = Duration::from_secs(20);

fn emulator() -> EmulatorConfig {
    EmulatorConfig {
        cxone: CxoneConfig {
            // Tokens live 3 s and are refreshed 1 s before they expire.
            token_ttl: Duration::from_secs(3),
            // 20 events a second.
            event_interval: Duration::from_millis(50),
            ..CxoneConfig::default()
        },
        ..EmulatorConfig::default()
    }
}

fn rotations(h: &Harness) -> usize {
    h.recorder
        .since(0)
        .iter()
        .filter(|s| matches!(s.event, SessionEvent::TokenRotated { .. }))
        .count()
}

fn assert_clean(tally: &Tally) {
    assert!(tally.events() > 60, "events flowed: {}", tally.events());
    assert_eq!(tally.duplicates(), 0, "no event delivered twice");
    assert!(
        tally.missing().is_empty(),
        "no event lost: {:?}",
        tally.missing()
    );
    assert!(tally.dropped.is_empty(), "no dropped: {:?}", tally.dropped);
    assert!(tally.gaps.is_empty(), "no gap: {:?}", tally.gaps);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dfo_rotates_by_registering_again_on_the_same_socket() {
    let h = Harness::start_with(emulator(), Rig::default(), |emu, cfg, dir| {
        let creds = dir.join("cxone");
        write_credential(&creds, Platform::CxoneDfo, &cfg.cxone.access_keys[0]);
        vec![dfo(
            emu,
            "hub",
            "emulated-tenant",
            "agent-1",
            &creds,
            Timing::default(),
        )]
    })
    .await;
    let id = h.stream_id("hub");
    h.wait_active(&id).await;
    let mut app = App::connect(h.app_addr, &id, AckMode::All).await;
    let mut tally = Tally::default();
    assert!(
        tally
            .read_until(&mut app, BOUND, |_| rotations(&h) >= 1)
            .await,
        "a first rotation"
    );
    // The next refresh-token grant is refused: the manager falls back to the access key.
    h.emu.fault(Fault::Cxone(CxoneFault::RefuseToken {
        client: None,
        grant: GrantKind::RefreshToken,
        count: 1,
    }));
    assert!(
        tally
            .read_until(&mut app, BOUND, |_| rotations(&h) >= 3)
            .await,
        "two more rotations"
    );
    assert_clean(&tally);
    let stats = h.emu.stats();
    assert_eq!(stats.connections_total, 1, "one socket for the whole run");
    assert!(
        stats.dfo.registers >= 4,
        "registered again for each rotation: {}",
        stats.dfo.registers
    );
    let grants = &stats.tokens["cxone-key"].by_grant;
    assert_eq!(
        grants.get("access_key"),
        Some(&2),
        "first token and the fallback: {grants:?}"
    );
    assert!(
        grants.get("refresh_token").is_some_and(|n| *n >= 1),
        "{grants:?}"
    );
    assert!(h.recorder.since(0).iter().all(|s| !s.is_any_drop()));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aah_puts_the_current_token_in_every_message_and_sends_nothing_to_rotate() {
    let contacts: Vec<String> = vec!["contact-1".into(), "contact-2".into()];
    let c = contacts.clone();
    let h = Harness::start_with(emulator(), Rig::default(), move |emu, cfg, dir| {
        let creds = dir.join("cxone");
        write_credential(&creds, Platform::CxoneAah, &cfg.cxone.access_keys[0]);
        vec![aah(emu, "assist", &c, &creds, Timing::default())]
    })
    .await;
    let id = h.stream_id("assist");
    h.wait_active(&id).await;
    let mut app = App::connect(h.app_addr, &id, AckMode::All).await;
    let mut tally = Tally::default();
    assert!(
        tally
            .read_until(&mut app, BOUND, |_| rotations(&h) >= 2)
            .await,
        "two rotations"
    );
    // A few heartbeats on the newest token.
    let target = tally.events() + 20;
    assert!(
        tally
            .read_until(&mut app, BOUND, |t| t.events() >= target)
            .await
    );
    assert_clean(&tally);
    assert_eq!(tally.seqs.len(), 2, "both contact ids deliver");

    let stats = h.emu.stats();
    assert_eq!(stats.aah.sockets.len(), 1, "one socket for the whole run");
    let socket = stats.aah.sockets.values().next().expect("socket");
    let commands: Vec<&str> = socket.messages.iter().map(|m| m.command.as_str()).collect();
    let setup: Vec<&str> = commands
        .iter()
        .copied()
        .filter(|c| *c != "HEARTBEAT")
        .collect();
    assert_eq!(
        setup,
        ["CONNECT", "SUBSCRIBE", "SUBSCRIBE"],
        "no message for a rotation, only setup and heartbeats"
    );
    assert!(
        socket.messages.iter().all(|m| m.valid),
        "every message carried a live token"
    );
    let serials: Vec<u64> = socket
        .messages
        .iter()
        .map(|m| m.token_serial.expect("a token the emulator issued"))
        .collect();
    assert!(
        serials.windows(2).all(|w| w[0] <= w[1]),
        "after a rotation no message carries the old token: {serials:?}"
    );
    let distinct: BTreeSet<u64> = serials.iter().copied().collect();
    assert!(
        distinct.len() >= 3,
        "messages carried each new token: {distinct:?}"
    );
    h.shutdown().await;
}
