//! Token trouble on Genesys, against the emulator: a refresh refused with 401 keeps the old
//! token while it is valid and a retry with backoff succeeds later; a token that fails
//! validation is never used; ten streams on one credential make one grant per rotation; a
//! credential file rewritten on disk is used for the next grant without a restart.

use std::{collections::BTreeSet, time::Duration};

use streamkeeper_api::config::{Platform, TokenSpec};
use streamkeeper_e2e::{
    AckMode, App, Harness, Rig, Seen,
    platform::{Tally, Timing, genesys, topics, write_credential},
};
use streamkeeper_emulator::{Credential, EmulatorConfig, Fault, GenesysConfig, GenesysFault};
use streamkeeper_sidecar::upstream::SessionEvent;

const BOUND: Duration = Duration::from_secs(20);
const CLIENT: &str = "genesys-client";

fn emulator(token_ttl: Duration) -> EmulatorConfig {
    EmulatorConfig {
        genesys: GenesysConfig {
            token_ttl,
            event_interval: Duration::from_millis(50),
            heartbeat_interval: Duration::from_secs(1),
            ..GenesysConfig::default()
        },
        ..EmulatorConfig::default()
    }
}

fn timing(lead: Duration) -> Timing {
    Timing {
        token: TokenSpec {
            refresh_lead: lead,
            retry: Duration::from_millis(200),
        },
        ..Timing::default()
    }
}

async fn one_stream(cfg: EmulatorConfig, t: Timing) -> Harness {
    Harness::start_with(cfg, Rig::default(), move |emu, cfg, dir| {
        let creds = dir.join("genesys");
        write_credential(&creds, Platform::Genesys, &cfg.genesys.clients[0]);
        vec![genesys(emu, "queue", &topics("u", 1), &creds, t)]
    })
    .await
}

fn rotated(h: &Harness, stream: Option<&str>) -> Vec<(Duration, bool)> {
    rotations_in(&h.recorder.since(0), stream)
}

/// The (overlap, proven) of every rotation in `seen`, of `stream` or of all streams.
fn rotations_in(seen: &[Seen], stream: Option<&str>) -> Vec<(Duration, bool)> {
    seen.iter()
        .filter(|s| stream.is_none_or(|n| s.stream.name() == n))
        .filter_map(|s| match s.event {
            SessionEvent::Rotated {
                overlap, proven, ..
            } => Some((overlap, proven)),
            _ => None,
        })
        .collect()
}

fn grants(h: &Harness) -> u64 {
    h.emu.stats().tokens[CLIENT]
        .by_grant
        .get("client_credentials")
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_refresh_keeps_the_old_token_and_a_retry_with_backoff_succeeds() {
    // 4 s tokens refreshed 2 s before expiry; three refusals take 0.2 + 0.4 + 0.8 s.
    let h = one_stream(
        emulator(Duration::from_secs(4)),
        timing(Duration::from_secs(2)),
    )
    .await;
    let id = h.stream_id("queue");
    h.wait_active(&id).await;
    let mut app = App::connect(h.app_addr, &id, AckMode::All).await;
    let mut tally = Tally::default();
    assert!(
        tally
            .read_until(&mut app, BOUND, |t| t.events() >= 10)
            .await
    );
    h.emu.fault(Fault::Genesys(GenesysFault::RefuseToken {
        client: None,
        count: 3,
    }));
    assert!(
        tally
            .read_until(&mut app, BOUND, |_| !rotated(&h, None).is_empty())
            .await,
        "a rotation once the refusals are over"
    );
    let target = tally.events() + 20;
    assert!(
        tally
            .read_until(&mut app, BOUND, |t| t.events() >= target)
            .await
    );
    let stats = h.emu.stats();
    assert_eq!(stats.tokens[CLIENT].refused, 3, "three refused refreshes");
    // The old token carried the stream meanwhile: nothing dropped, paused or lost.
    assert!(tally.dropped.is_empty() && tally.gaps.is_empty() && tally.pauses.is_empty());
    assert!(tally.missing().is_empty() && tally.duplicates() == 0);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_fails_validation_is_never_used() {
    let h = one_stream(
        emulator(Duration::from_secs(4)),
        timing(Duration::from_secs(2)),
    )
    .await;
    let id = h.stream_id("queue");
    h.wait_active(&id).await;
    let first = h.emu.stats().tokens[CLIENT].last_serial;
    // The next validation call is turned away: that token has not proven it works.
    h.emu.fault(Fault::Genesys(GenesysFault::RateLimit {
        path: Some("/api/v2/tokens/me".into()),
        method: None,
        count: 1,
        retry_after_secs: 1,
    }));
    let mut app = App::connect(h.app_addr, &id, AckMode::All).await;
    let mut tally = Tally::default();
    assert!(
        tally
            .read_until(&mut app, BOUND, |_| !rotated(&h, None).is_empty())
            .await,
        "a rotation with the next token"
    );
    let stats = h.emu.stats();
    assert_eq!(stats.tokens[CLIENT].by_grant["client_credentials"], 3);
    let last = stats.tokens[CLIENT].last_serial;
    let used: BTreeSet<u64> = stats
        .genesys
        .channels
        .values()
        .map(|c| c.token_serial)
        .collect();
    assert_eq!(
        used,
        BTreeSet::from([first, last]),
        "channels were made with the first and the third token only, never the one that failed validation"
    );
    assert!(tally.dropped.is_empty() && tally.gaps.is_empty());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_streams_on_one_credential_make_one_grant_per_rotation_and_follow_a_rewritten_secret() {
    let cfg = EmulatorConfig {
        genesys: GenesysConfig {
            clients: vec![Credential::new(CLIENT, "genesys-secret")],
            ..emulator(Duration::from_secs(3)).genesys
        },
        ..EmulatorConfig::default()
    };
    let h = Harness::start_with(cfg, Rig::default(), |emu, cfg, dir| {
        let creds = dir.join("genesys");
        write_credential(&creds, Platform::Genesys, &cfg.genesys.clients[0]);
        (0..10)
            .map(|i| {
                genesys(
                    emu,
                    &format!("queue-{i}"),
                    &topics(&format!("s{i}-"), 1),
                    &creds,
                    timing(Duration::from_secs(1)),
                )
            })
            .collect()
    })
    .await;
    let ids: Vec<_> = (0..10)
        .map(|i| h.stream_id(&format!("queue-{i}")))
        .collect();
    for id in &ids {
        h.wait_active(id).await;
    }
    assert_eq!(
        h.pod.token_managers().live(),
        1,
        "one manager for the credential"
    );
    let per_stream = |seen: &[Seen]| {
        (0..10)
            .map(|i| rotations_in(seen, Some(&format!("queue-{i}"))).len() as u64)
            .collect::<Vec<_>>()
    };
    let deadline = tokio::time::Instant::now() + BOUND;
    h.recorder
        .wait_until(0, BOUND, "two rotations on every stream", |seen| {
            per_stream(seen).iter().all(|n| *n >= 2)
        })
        .await;
    let issued = grants(&h);
    let counts = per_stream(&h.recorder.since(0));
    let (slowest, fastest) = (
        counts.iter().copied().min().unwrap_or(0),
        counts.iter().copied().max().unwrap_or(0),
    );
    // One grant per rotation (plus the first), not one per stream: between what the slowest
    // stream has rotated to and one in flight past the fastest.
    assert!(
        issued > slowest && issued <= fastest + 2,
        "{issued} grants for rotations per stream {counts:?}"
    );
    let per_stream = slowest;
    let all = rotated(&h, None);
    let mut overlaps: Vec<Duration> = all.iter().map(|(d, _)| *d).collect();
    overlaps.sort();
    eprintln!(
        "MEASURE ten streams, one credential: {issued} token requests for {per_stream} rotations per stream \
         ({:.2} per rotation); overlap min {:?} median {:?} max {:?} over {} rotations, {} proven",
        issued as f64 / (per_stream + 1) as f64,
        overlaps[0],
        overlaps[overlaps.len() / 2],
        overlaps[overlaps.len() - 1],
        all.len(),
        all.iter().filter(|(_, p)| *p).count()
    );

    // The Secret is rotated on disk to a secret the platform refuses, then to the right one:
    // the manager reads the files for each grant, so no restart is needed either way.
    let creds = h.dir().join("genesys");
    write_credential(
        &creds,
        Platform::Genesys,
        &Credential::new(CLIENT, "revoked-secret"),
    );
    let refused_before = h.emu.stats().tokens[CLIENT].refused;
    let refused = async {
        while h.emu.stats().tokens[CLIENT].refused == refused_before {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout_at(deadline + BOUND, refused)
        .await
        .expect("the rewritten (wrong) secret was used for the next grant");
    let granted = grants(&h);
    write_credential(
        &creds,
        Platform::Genesys,
        &Credential::new(CLIENT, "genesys-secret"),
    );
    let granted_again = async {
        while grants(&h) == granted {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(BOUND, granted_again)
        .await
        .expect("the rewritten (right) secret was used for the next grant");
    h.shutdown().await;
}
