//! A half-open upstream socket (the emulator stops reading and writing: `Fault::Blackhole`) is
//! declared DEAD within timeout + 250 ms of its last inbound frame, reaped with a TCP reset the
//! peer notices, reported to the app as `dropped` (pong_timeout, pendingBytes), and the session
//! reconnects with backoff and resumes; events flow again.

use std::time::Duration;

use streamkeeper_api::{DropReason, StreamState, app_protocol::AppFrame};
use streamkeeper_e2e::{AckMode, App, FromServer, Harness, Options, event_seq};
use streamkeeper_emulator::Fault;
use streamkeeper_sidecar::upstream::SessionEvent;
use tokio::time::Instant;

/// The product's promise: DEAD within 250 ms of the deadline.
const DETECTION_LIMIT: Duration = Duration::from_millis(250);
/// Extra allowance for the test's own view (frames in flight at the instant of the fault,
/// scheduling on two shared cores).
const SLACK: Duration = Duration::from_millis(150);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_upstream_is_reaped_within_the_deadline_reported_and_reconnected() {
    let name = "half-open";
    let h = Harness::start(Options::new(&[name])).await;
    let id = h.stream_id(name);
    let timeout = h.config.streams[0].heartbeat.timeout;
    let reconnect = h.config.streams[0].reconnect;
    h.wait_active(&id).await;

    // An app that reads but never acks, so the drop has unacked bytes to report.
    let mut app = App::connect(h.app_addr, &id, AckMode::Manual).await;
    let (before, _) = app.next_event(Duration::from_secs(3)).await;
    let first_conn = h.status(&id).connection.expect("a connection id");
    assert_eq!(
        h.emu.stats().streams[name].connections,
        1,
        "one upstream socket"
    );

    let mark = h.recorder.mark();
    let faulted_at = Instant::now();
    let report = h.emu.fault(Fault::Blackhole {
        stream: Some(name.into()),
    });
    assert_eq!(report.applied, 1, "the fault reached the stream's socket");

    // DEAD: late_by (against the deadline) and silent_for (since the last inbound frame) from
    // the session, and the elapsed time from the test's side.
    let dead = h
        .recorder
        .wait_for(
            mark,
            timeout + Duration::from_secs(2),
            "pong_timeout drop",
            |s| s.stream == id && s.is_any_drop(),
        )
        .await;
    let SessionEvent::Dropped {
        connection,
        reason,
        late_by,
        silent_for,
        pending_bytes,
    } = dead.event.clone()
    else {
        unreachable!("matched a drop")
    };
    assert_eq!(reason, DropReason::PongTimeout, "{:?}", dead.event);
    assert_eq!(
        connection, first_conn,
        "the blackholed socket was the one reaped"
    );
    let late_by = late_by.expect("a pong_timeout carries late_by");
    assert!(
        late_by <= DETECTION_LIMIT,
        "DEAD {late_by:?} after the deadline (limit {DETECTION_LIMIT:?})"
    );
    assert!(
        silent_for >= timeout && silent_for <= timeout + DETECTION_LIMIT,
        "silent for {silent_for:?}: expected timeout {timeout:?} ..= timeout + {DETECTION_LIMIT:?}"
    );
    let detected_after = dead.at - faulted_at;
    assert!(
        detected_after >= timeout.saturating_sub(SLACK)
            && detected_after <= timeout + DETECTION_LIMIT + SLACK,
        "declared DEAD {detected_after:?} after the fault; the timeout is {timeout:?}"
    );
    assert!(
        pending_bytes > 0,
        "the app acked nothing, so bytes were pending"
    );
    eprintln!(
        "DEAD {late_by:?} after the deadline, silent for {silent_for:?}, {detected_after:?} after the fault; {pending_bytes} bytes pending"
    );

    // The app hears `dropped` with the documented fields.
    let (_, dropped) = app
        .recv_until(Duration::from_secs(2), "a dropped frame", |f| {
            matches!(f, FromServer::Frame(AppFrame::Dropped { .. }))
        })
        .await;
    let FromServer::Frame(AppFrame::Dropped {
        stream,
        connection_id,
        reason,
        pending_bytes: app_pending,
        last_acked_id,
        ..
    }) = dropped
    else {
        unreachable!("matched a dropped frame")
    };
    assert_eq!(stream, id);
    assert_eq!(connection_id, first_conn);
    assert_eq!(reason, DropReason::PongTimeout);
    assert_eq!(
        app_pending, pending_bytes,
        "the app and the session report the same pendingBytes"
    );
    assert_eq!(last_acked_id, None, "nothing was acked");

    // Backoff: a scheduled retry with a jittered delay within the first step, then a
    // connection that counts the failed attempt and resumes after the last event seen.
    let retry = h
        .recorder
        .wait_for(
            dead.index,
            Duration::from_secs(1),
            "a scheduled reconnect",
            |s| s.stream == id && matches!(s.event, SessionEvent::ConnectFailed { .. }),
        )
        .await;
    let SessionEvent::ConnectFailed { retry_in, .. } = retry.event else {
        unreachable!()
    };
    assert!(
        retry_in <= reconnect.initial,
        "first retry in {retry_in:?}, above the first step {:?}",
        reconnect.initial
    );
    let back = h
        .recorder
        .wait_for(
            retry.index,
            reconnect.max + Duration::from_secs(3),
            "a reconnect",
            |s| s.stream == id && s.is_connected(),
        )
        .await;
    let SessionEvent::Connected {
        connection: second_conn,
        attempts,
        resumed_after,
    } = back.event.clone()
    else {
        unreachable!()
    };
    assert!(
        attempts >= 1,
        "the reconnect counts the failed attempt: {attempts}"
    );
    assert_ne!(second_conn, first_conn, "a new socket");
    let resumed_after = resumed_after.expect("the reconnect resumes after the last event seen");
    assert!(event_seq(&resumed_after) >= event_seq(&before));
    assert!(
        back.at - dead.at >= retry_in,
        "reconnected before the backoff delay ran out"
    );
    h.recorder
        .wait_for(back.index, Duration::from_secs(2), "ACTIVE again", |s| {
            s.stream == id && s.is_state(StreamState::Active)
        })
        .await;

    // The peer saw a reset: the blackholed emulator socket reads nothing, so it only notices
    // an error (the RST) on its socket, and then unregisters. After the reconnect the stream
    // has exactly the new socket open.
    let released = async {
        loop {
            if h.emu.stats().streams[name].connections == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(1), released)
            .await
            .is_ok(),
        "the emulator still holds the reaped socket: {:?}",
        h.emu.stats().streams[name]
    );

    // Events flow again, newer than anything before the fault and in order.
    let mut last = event_seq(&before);
    for _ in 0..5 {
        let (next, _) = app.next_event(Duration::from_secs(3)).await;
        assert!(
            event_seq(&next) > last,
            "{next:?} after seq {last}: out of order or repeated"
        );
        last = event_seq(&next);
    }
    assert_eq!(h.status(&id).connection, Some(second_conn));
    drop(app);
    h.shutdown().await;
}
