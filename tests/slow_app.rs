//! An app that connects and then never reads never delays pong handling: the upstream session
//! stays ACTIVE for five timeouts while events keep coming, every pong is counted, the events
//! wait in the hub, and a reading app that connects later gets all of them, in order.
//!
//! The app server's own dead timeout is set longer than the window here, so the non-reading
//! app stays attached the whole time (with the default it would be reaped after one timeout,
//! which is right, but would leave most of the window without a slow app at all).

use std::time::Duration;

use streamkeeper_api::{StreamState, config::HeartbeatSpec};
use streamkeeper_e2e::{AckMode, App, Harness, Options, app::raw_app, event_seq, metric_value};
use streamkeeper_sidecar::upstream::SessionEvent;
use tokio::time::Instant;

/// Events emitted at once while the app does not read (about 250 KiB of frames).
const BURST: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_never_reads_never_delays_pongs_and_its_events_wait_in_order() {
    let name = "slow-app";
    let interval = Duration::from_millis(50);
    let opts = Options {
        event_interval: interval,
        app_heartbeat: Some(HeartbeatSpec {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(30),
        }),
        ..Options::new(&[name])
    };
    let h = Harness::start(opts).await;
    let id = h.stream_id(name);
    let timeout = h.config.streams[0].heartbeat.timeout;
    h.wait_active(&id).await;
    let conn = h.status(&id).connection.expect("a connection id");
    let label = format!("stream=\"{id}\"");
    let pongs = || {
        metric_value(
            &h.metrics.encode(),
            "streamkeeper_pongs_received_total",
            &label,
        )
        .unwrap_or(0.0)
    };

    // Handshake, then nothing: no reads, no pongs, a 4 KiB receive buffer.
    let raw = raw_app(h.app_addr, &id).await;
    let mark = h.recorder.mark();
    // A burst far larger than the socket buffers, so the app server's writes to this app
    // really stall, on top of the steady events.
    h.emu.emit(name, BURST);
    let started = Instant::now();
    let window = timeout * 5;
    let mut samples = vec![pongs()];
    let mut degraded = 0;
    while started.elapsed() < window {
        // Anything that ends ACTIVE would show up here within the second; nothing may.
        let bad = h
            .recorder
            .try_wait_for(mark, Duration::from_secs(1), |s| {
                s.stream == id
                    && match &s.event {
                        SessionEvent::Dropped { .. } | SessionEvent::ConnectFailed { .. } => true,
                        SessionEvent::State { to, .. } => {
                            !matches!(to, StreamState::Active | StreamState::Degraded)
                        }
                        _ => false,
                    }
            })
            .await;
        if let Some(bad) = bad {
            panic!(
                "the session left ACTIVE {:?} after the app stopped reading: {:?}\n{}",
                bad.at - started,
                bad.event,
                h.recorder.describe(mark)
            );
        }
        let now = pongs();
        let before = samples.last().copied().unwrap_or(0.0);
        assert!(
            now > before,
            "no pong counted in the last second ({before} -> {now})"
        );
        samples.push(now);
        degraded = h
            .recorder
            .since(mark)
            .iter()
            .filter(|s| s.is_state(StreamState::Degraded))
            .count();
    }
    let status = h.status(&id);
    assert_eq!(
        status.connection,
        Some(conn),
        "the upstream socket was never replaced"
    );
    assert_eq!(status.state, StreamState::Active);
    let rtt = status.rtt.expect("pongs were matched").get();
    assert!(
        rtt < Duration::from_millis(50),
        "smoothed pong RTT {rtt:?}: pong handling was delayed"
    );

    let hub = h.hub(&id);
    assert_eq!(
        hub.consumers(),
        1,
        "the non-reading app stayed attached for the whole window"
    );
    let pending = hub.pending_events();
    let expected = BURST + (window.as_millis() / interval.as_millis() / 2) as usize;
    eprintln!(
        "{:?} with a non-reading app: pongs counted {samples:?}, smoothed RTT {rtt:?}, {degraded} DEGRADED, \
         {pending} events pending, app consumers {}",
        started.elapsed(),
        hub.consumers()
    );
    assert!(
        pending >= expected,
        "only {pending} events wait in the hub (expected at least {expected})"
    );

    // A reading app gets every waiting event, in order, with no hole.
    let mut app = App::connect(h.app_addr, &id, AckMode::Manual).await;
    let mut seqs = Vec::with_capacity(pending);
    for _ in 0..pending {
        seqs.push(event_seq(&app.next_event(Duration::from_secs(3)).await.0));
    }
    let holes: Vec<_> = seqs.windows(2).filter(|w| w[1] != w[0] + 1).collect();
    assert!(
        holes.is_empty(),
        "events out of order or missing: {holes:?}"
    );
    drop((raw, app));
    h.shutdown().await;
}
