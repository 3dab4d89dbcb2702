//! The demo's Genesys and CXone streams: a second workload (one pod) runs a `genesys` stream,
//! a `cxone-dfo` stream and a `cxone-aah` stream against the emulator speaking each platform,
//! with tokens that live 4 s, so each goes through several rotations during the run (Genesys by
//! make-before-break to a new channel, DFO by registering again on its socket, AAH by putting
//! the new token in its next message), and Genesys also through one `socket_closing`. The
//! scorecard proves what the app saw across them: every event once, none lost, no `dropped`
//! and no `gap`, and one token request per rotation for each credential.

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use streamkeeper_api::{
    StreamId, StreamSpec,
    config::{Endpoints, Platform, TokenSpec},
};
use streamkeeper_emulator::{
    CxoneConfig, Emulator, EmulatorConfig, Fault, GenesysConfig, GenesysFault, Stats,
};
use streamkeeper_sidecar::{auth::ClientCredentials, upstream::SessionEvent};

use super::{
    Checks, DemoStream,
    app::{Ledger, StreamLedger},
    timeline::{Entry, Timeline},
};

/// The one pod of the second workload.
pub const POD: &str = "pod-d";
/// Token lifetime on both platforms: short, so the run sees several rotations.
const TOKEN_TTL: Duration = Duration::from_secs(4);
/// Refresh this long before expiry: a rotation every ~2 s, with 2 s left for a retry.
const REFRESH_LEAD: Duration = Duration::from_secs(2);
/// One event per feed this often: 20 a second, as the platform tests run.
const EVENT_INTERVAL: Duration = Duration::from_millis(50);
/// The Genesys queue and user presence topics the demo stream subscribes to.
const GENESYS_TOPICS: [&str; 2] = [
    "v2.routing.queues.8d2c.conversations",
    "v2.users.3f1a.presence",
];
const DFO_TENANT: &str = "emulated-tenant";
const DFO_USER: &str = "agent-1";
const AAH_CONTACT: &str = "contact-1";

/// One platform stream of the demo and the emulator feeds it reads.
pub struct PlatformStream {
    /// Its id.
    pub id: StreamId,
    /// Its platform.
    pub platform: Platform,
    /// The emulator's feed names in its payloads (topic, `tenantId/userId`, contact id).
    feeds: Vec<String>,
}

impl PlatformStream {
    /// Events the emulator produced on this stream's feeds, per feed.
    fn emitted(&self, stats: &Stats) -> Vec<(String, u64)> {
        self.feeds
            .iter()
            .map(|feed| {
                let generated = match self.platform {
                    Platform::Genesys => stats.genesys.topics.get(feed),
                    Platform::CxoneDfo => stats.dfo.streams.get(feed),
                    Platform::CxoneAah => stats.aah.topics.get(feed),
                    Platform::Generic => None,
                }
                .map_or(0, |f| f.generated);
                (feed.clone(), generated)
            })
            .collect()
    }
}

/// The emulator's Genesys and CXone settings for the demo: short-lived tokens, 20 events a
/// second per feed, a server heartbeat every second.
pub fn emulator(cfg: &mut EmulatorConfig) {
    cfg.genesys = GenesysConfig {
        token_ttl: TOKEN_TTL,
        event_interval: EVENT_INTERVAL,
        heartbeat_interval: Duration::from_secs(1),
        ..GenesysConfig::default()
    };
    cfg.cxone = CxoneConfig {
        token_ttl: TOKEN_TTL,
        event_interval: EVENT_INTERVAL,
        ..CxoneConfig::default()
    };
}

/// Writes the two credentials (Genesys client, CXone access key) as the mounted Secret would
/// hold them, and returns the three streams' specs and what they read.
pub fn streams(
    emu: &Emulator,
    cfg: &EmulatorConfig,
    work: &Path,
    tenant: &str,
) -> anyhow::Result<(Vec<StreamSpec>, Vec<PlatformStream>)> {
    let genesys_dir = work.join("genesys");
    let cxone_dir = work.join("cxone");
    let client = cfg
        .genesys
        .clients
        .first()
        .context("the emulator has a Genesys client")?;
    ClientCredentials::write_files(&genesys_dir, Platform::Genesys, &client.id, &client.secret)
        .context("write the Genesys credentials")?;
    let key = cfg
        .cxone
        .access_keys
        .first()
        .context("the emulator has a CXone access key")?;
    // One access key for both CXone streams: they share one token manager.
    ClientCredentials::write_files(&cxone_dir, Platform::CxoneDfo, &key.id, &key.secret)
        .context("write the CXone credentials")?;
    let base: url::Url = emu.base_url().parse().context("emulator URL")?;
    let token = TokenSpec {
        refresh_lead: REFRESH_LEAD,
        retry: Duration::from_millis(300),
    };
    let spec = |name, platform, endpoints, creds, topics| {
        DemoStream {
            name,
            tenant,
            platform,
            endpoints,
            creds,
            topics,
            token,
        }
        .spec()
    };
    let genesys_topics: Vec<String> = GENESYS_TOPICS.iter().map(|t| (*t).to_owned()).collect();
    let specs = vec![
        spec(
            "genesys-queue",
            Platform::Genesys,
            Endpoints {
                api: Some(base.clone().into()),
                login: Some(base.clone().into()),
                ..Endpoints::default()
            },
            &genesys_dir,
            genesys_topics.clone(),
        )?,
        spec(
            "cxone-digital",
            Platform::CxoneDfo,
            Endpoints {
                login: Some(base.clone().into()),
                stream: Some(
                    emu.dfo_url(DFO_TENANT, DFO_USER)
                        .parse()
                        .context("DFO URL")?,
                ),
                ..Endpoints::default()
            },
            &cxone_dir,
            Vec::new(),
        )?,
        spec(
            "cxone-assist",
            Platform::CxoneAah,
            Endpoints {
                login: Some(base.clone().into()),
                stream: Some(emu.aah_url().parse().context("AAH URL")?),
                ..Endpoints::default()
            },
            &cxone_dir,
            vec![AAH_CONTACT.to_owned()],
        )?,
    ];
    let streams = specs
        .iter()
        .zip([
            genesys_topics,
            vec![format!("{DFO_TENANT}/{DFO_USER}")],
            vec![AAH_CONTACT.to_owned()],
        ])
        .map(|(s, feeds)| PlatformStream {
            id: s.id.clone(),
            platform: s.platform,
            feeds,
        })
        .collect();
    Ok((specs, streams))
}

fn is_rotation(e: &Entry, stream: &StreamId, why: &str) -> bool {
    &e.stream == stream && matches!(e.event, SessionEvent::Rotated { why: w, .. } if w == why)
}

/// The scenario step: Genesys announces a maintenance close on the stream's socket; the
/// sidecar moves to a new channel before the old socket closes.
pub async fn socket_closing(
    emu: &Emulator,
    timeline: &Timeline,
    streams: &[PlatformStream],
    checks: &mut Checks,
) {
    let Some(genesys) = streams.iter().find(|s| s.platform == Platform::Genesys) else {
        return;
    };
    let since = timeline.elapsed();
    timeline.step(&format!(
        "5. Genesys announces maintenance on {}: v2.system.socket_closing, the socket closes (1001) 1 s later",
        genesys.id
    ));
    let report = emu.fault(Fault::Genesys(GenesysFault::SocketClosing {
        channel: None,
        client: None,
        close_after_ms: Some(1000),
        code: None,
    }));
    // The handover must be done before the platform closes the old socket. It is the
    // announced close's own, unless a token rotation already under way took the old socket
    // away first: either way the app must see no break.
    let closed_by = since + Duration::from_millis(1300);
    let moved = timeline
        .wait_for(since, closed_by.saturating_sub(timeline.elapsed()), |e| {
            e.stream == genesys.id && matches!(e.event, SessionEvent::Rotated { .. })
        })
        .await;
    // Past the old socket's close: no `dropped` for it may follow.
    let wait = closed_by.saturating_sub(timeline.elapsed());
    tokio::time::sleep(wait).await;
    let reaped = timeline
        .entries()
        .iter()
        .any(|e| e.at >= since && e.stream == genesys.id && is_any_drop(&e.event));
    let detail = match moved.as_ref().map(|e| &e.event) {
        Some(SessionEvent::Rotated {
            overlap,
            proven,
            why,
            ..
        }) => format!(
            "new channel live before the close ({why}); {:.0} ms of overlap, handover {}",
            overlap.as_secs_f64() * 1000.0,
            if *proven { "proven" } else { "by bound" }
        ),
        _ => format!(
            "no new channel before the close ({} socket(s) told)",
            report.applied
        ),
    };
    checks.add(
        report.applied >= 1 && moved.is_some() && !reaped,
        "genesys socket_closing: moved to a new channel, no drop",
        detail,
    );
}

fn is_any_drop(e: &SessionEvent) -> bool {
    matches!(e, SessionEvent::Dropped { .. })
}

/// What one platform stream went through, for the scorecard.
pub struct Outcome {
    stream: StreamId,
    platform: Platform,
    seen: StreamLedger,
    /// Events the emulator produced on the stream's feeds from the app's first one on.
    emitted: u64,
    lost: Vec<String>,
    token_rotations: usize,
    closing_rotations: usize,
    unproven: usize,
    reaped: usize,
    /// Sessions started (a rotation is not one): 1 = never reconnected.
    connects: usize,
    overlap_ms: Option<(f64, f64)>,
}

impl Outcome {
    fn clean(&self) -> bool {
        self.seen.delivered > 0
            && self.seen.duplicates == 0
            && self.lost.is_empty()
            && self.seen.dropped == 0
            && self.seen.gaps == 0
            && self.reaped == 0
            && self.connects == 1
    }

    fn counts(&self) -> String {
        let reconnects = match self.connects {
            1 => String::new(),
            0 => ", never connected".into(),
            n => format!(", {} reconnects", n - 1),
        };
        format!(
            "{} delivered, {} duplicates, {} lost, {} dropped, {} gaps{reconnects}",
            self.seen.delivered,
            self.seen.duplicates,
            self.lost.len(),
            self.seen.dropped,
            self.seen.gaps
        )
    }
}

/// Every event the emulator produced on each stream's feeds up to `stats`, from the app's
/// first one on, not yet acked: empty once the apps caught up.
pub fn lost(ledger: &Ledger, streams: &[PlatformStream], stats: &Stats) -> Vec<String> {
    streams
        .iter()
        .flat_map(|s| {
            let seen = ledger.stream(&s.id);
            s.emitted(stats)
                .into_iter()
                .flat_map(move |(feed, last)| {
                    if seen.first(&feed).is_none() {
                        return vec![format!("{}: nothing from {feed}", s.id)];
                    }
                    seen.missing(&feed, last)
                        .into_iter()
                        .map(|n| format!("{} {feed}#{n}", s.id))
                        .collect()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Tallies each platform stream: what its app saw against what the emulator produced by
/// `stats`, and the rotations on the timeline.
pub fn outcomes(
    ledger: &Ledger,
    timeline: &Timeline,
    streams: &[PlatformStream],
    stats: &Stats,
) -> Vec<Outcome> {
    let entries = timeline.entries();
    streams
        .iter()
        .map(|s| {
            let seen = ledger.stream(&s.id);
            let mine: Vec<&Entry> = entries.iter().filter(|e| e.stream == s.id).collect();
            // Genesys rotates its token with a new channel (the session then reports the
            // generation in use as well); the CXone sockets take the new token in-stream.
            let token_rotations = mine
                .iter()
                .filter(|e| match (s.platform, &e.event) {
                    (Platform::Genesys, SessionEvent::Rotated { why, .. }) => {
                        *why == "token rotation"
                    }
                    (Platform::Genesys, _) => false,
                    (_, SessionEvent::TokenRotated { .. }) => true,
                    _ => false,
                })
                .count();
            let overlaps: Vec<f64> = mine
                .iter()
                .filter_map(|e| match e.event {
                    SessionEvent::Rotated { overlap, .. } => Some(overlap.as_secs_f64() * 1e3),
                    _ => None,
                })
                .collect();
            let emitted = s
                .emitted(stats)
                .iter()
                .map(|(feed, last)| {
                    let first = seen.first(feed).unwrap_or(1);
                    last.saturating_sub(first - 1)
                })
                .sum();
            Outcome {
                stream: s.id.clone(),
                platform: s.platform,
                lost: lost(ledger, std::slice::from_ref(s), stats),
                emitted,
                token_rotations,
                closing_rotations: mine
                    .iter()
                    .filter(|e| is_rotation(e, &s.id, "announced close"))
                    .count(),
                unproven: mine
                    .iter()
                    .filter(|e| matches!(e.event, SessionEvent::Rotated { proven: false, .. }))
                    .count(),
                reaped: mine.iter().filter(|e| is_any_drop(&e.event)).count(),
                connects: mine
                    .iter()
                    .filter(|e| matches!(e.event, SessionEvent::Connected { .. }))
                    .count(),
                overlap_ms: overlaps.iter().copied().fold(None, |acc, o| match acc {
                    None => Some((o, o)),
                    Some((lo, hi)) => Some((f64::min(lo, o), f64::max(hi, o))),
                }),
                seen,
            }
        })
        .collect()
}

/// Events produced on the platform streams' feeds (from each app's first one on), and events
/// delivered, for the scorecard's totals.
pub fn totals(outcomes: &[Outcome]) -> (u64, u64) {
    outcomes
        .iter()
        .fold((0, 0), |(e, d), o| (e + o.emitted, d + o.seen.delivered))
}

fn granted(stats: &Stats, client: &str) -> (u64, u64) {
    stats
        .tokens
        .get(client)
        .map_or((0, 0), |t| (t.by_grant.values().sum(), t.refused))
}

/// The checks of the platform streams.
pub fn check(outcomes: &[Outcome], stats: &Stats, cfg: &EmulatorConfig, checks: &mut Checks) {
    for o in outcomes {
        let (name, how) = match o.platform {
            Platform::Genesys => (
                "genesys: rotations by make-before-break",
                format!(
                    "{} token rotations ({} ended by the overlap bound); {}",
                    o.token_rotations,
                    o.unproven,
                    o.counts()
                ),
            ),
            Platform::CxoneDfo => (
                "cxone-dfo: re-register on the same socket",
                format!(
                    "{} token rotations, {} registers on {} socket(s); {}",
                    o.token_rotations,
                    stats.dfo.registers,
                    o.connects,
                    o.counts()
                ),
            ),
            _ => (
                "cxone-aah: token in every message",
                format!("{} token rotations; {}", o.token_rotations, o.counts()),
            ),
        };
        checks.add(
            o.clean() && o.token_rotations >= 2,
            format!("{name}, no drop, no gap"),
            how,
        );
    }
    if let Some(aah) = stats.aah.sockets.values().next_back() {
        let serials: Vec<u64> = aah.messages.iter().filter_map(|m| m.token_serial).collect();
        let rotations = serials.windows(2).filter(|w| w[0] < w[1]).count();
        let setup = aah
            .messages
            .iter()
            .filter(|m| m.command != "HEARTBEAT")
            .count();
        checks.add(
            stats.aah.sockets.len() == 1
                && aah.messages.iter().all(|m| m.valid)
                && serials.len() == aah.messages.len()
                && serials.windows(2).all(|w| w[0] <= w[1])
                && setup == 2,
            "cxone-aah: each message has a live token, none to rotate",
            format!(
                "{} messages on 1 socket, each with a live token, {rotations} token changes, none sent to rotate",
                aah.messages.len()
            ),
        );
    }
    // One token manager per credential: a grant per rotation, not per stream.
    let rotations = |p: Platform| {
        outcomes
            .iter()
            .filter(|o| o.platform == p)
            .map(|o| o.token_rotations as u64)
            .max()
            .unwrap_or(0)
    };
    let mut ok = true;
    let mut parts = Vec::new();
    let genesys = cfg.genesys.clients.first().map(|c| c.id.as_str());
    let cxone = cfg.cxone.access_keys.first().map(|c| c.id.as_str());
    for (client, rotated, who) in [
        (genesys, rotations(Platform::Genesys), "genesys"),
        (
            cxone,
            rotations(Platform::CxoneDfo).max(rotations(Platform::CxoneAah)),
            "cxone-dfo + cxone-aah",
        ),
    ] {
        let (issued, refused) = client.map_or((0, 0), |c| granted(stats, c));
        // A grant may be in flight when the snapshot is taken: one more than rotated + 1.
        ok &= issued > rotated && issued <= rotated + 2;
        let refused = if refused > 0 {
            format!(" (+{refused} refused)")
        } else {
            String::new()
        };
        // The generic fault's refusals are not counted by the emulator; the Genesys and CXone
        // faults' are.
        let pending = match issued.saturating_sub(rotated + 1) {
            0 => String::new(),
            n => format!(", {n} not in use yet"),
        };
        parts.push(format!(
            "{who}: {issued} tokens{refused}: the first, {rotated} rotations{pending}"
        ));
    }
    checks.add(
        ok,
        "one token request per rotation per credential",
        parts.join("; "),
    );
}

/// The platform streams' scorecard lines.
pub fn print(outcomes: &[Outcome], stats: &Stats, cfg: &EmulatorConfig) {
    for o in outcomes {
        let rotations = match o.platform {
            Platform::Genesys => {
                let overlap = o
                    .overlap_ms
                    .map(|(lo, hi)| format!(", overlap {lo:.0}-{hi:.0} ms"))
                    .unwrap_or_default();
                format!(
                    "{} token rotations + {} socket_closing (new channel each{overlap})",
                    o.token_rotations, o.closing_rotations
                )
            }
            Platform::CxoneDfo => format!("{} token rotations (register again)", o.token_rotations),
            _ => format!(
                "{} token rotations (token in every message)",
                o.token_rotations
            ),
        };
        println!(
            "  {:<9} {:<23} {}; {rotations}",
            o.platform.as_str(),
            o.stream.to_string(),
            o.counts()
        );
    }
    let requests = |client: Option<&str>| {
        let (issued, refused) = client.map_or((0, 0), |c| granted(stats, c));
        match refused {
            0 => issued.to_string(),
            n => format!("{issued} (+{n} refused)"),
        }
    };
    println!(
        "  token requests                    genesys {}, cxone {} (one manager for dfo and aah)",
        requests(cfg.genesys.clients.first().map(|c| c.id.as_str())),
        requests(cfg.cxone.access_keys.first().map(|c| c.id.as_str())),
    );
}
