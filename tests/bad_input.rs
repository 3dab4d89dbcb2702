//! Malformed, non-UTF-8 and oversized frames, from upstream or from the app, are handled: a
//! bad JSON upstream frame is skipped on a kept connection, a frame that breaks the socket gets
//! it reaped and reconnected, an app that sends garbage loses at most its own socket, and the
//! pod keeps running and delivering events throughout.

use std::time::Duration;

use streamkeeper_api::{DropReason, EventId, StreamId, app_protocol::AppFrame, config::LimitsSpec};
use streamkeeper_e2e::{AckMode, App, FromServer, Harness, Options, event_seq, logs};
use streamkeeper_emulator::{Fault, GarbageKind};
use streamkeeper_sidecar::upstream::SessionEvent;
use tokio_tungstenite::tungstenite::{
    Message,
    protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    },
};

/// The stream's `limits.maxFrameBytes` (and the app server's limit).
const MAX_FRAME: usize = 64 * 1024;

fn options(name: &str) -> Options {
    Options {
        limits: LimitsSpec {
            max_frame_bytes: MAX_FRAME,
            ..LimitsSpec::default()
        },
        ..Options::new(&[name])
    }
}

/// Reads events until one newer than `floor` arrives; returns its sequence number.
async fn event_after(app: &mut App, floor: u64) -> u64 {
    loop {
        let seq = event_seq(&app.next_event(Duration::from_secs(5)).await.0);
        if seq > floor {
            return seq;
        }
    }
}

/// Waits for a WARN or ERROR log line, logged at or after `from`, that names `stream` and
/// contains `word`; returns it.
async fn logged(from: usize, stream: &StreamId, word: &str, what: &str) -> String {
    logs()
        .wait_for(from, Duration::from_secs(3), |l| {
            (l.contains("WARN") || l.contains("ERROR"))
                && l.contains(stream.as_str())
                && l.contains(word)
        })
        .await
        .unwrap_or_else(|| panic!("no log line for {what} naming {stream} and {word:?}"))
}

fn emitted(h: &Harness, name: &str) -> u64 {
    h.emu.stats().streams[name].emitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_upstream_is_skipped_or_reaped_and_the_stream_recovers() {
    let name = "garbage-up";
    let log = logs();
    let h = Harness::start(options(name)).await;
    let id = h.stream_id(name);
    h.wait_active(&id).await;
    let mut app = App::connect(h.app_addr, &id, AckMode::All).await;
    app.next_event(Duration::from_secs(3)).await;
    let first_conn = h.status(&id).connection.expect("a connection id");

    // Bad JSON: skipped with a Malformed event; the same socket keeps delivering.
    let mark = h.recorder.mark();
    let lines = log.len();
    let floor = emitted(&h, name);
    let bad_json = Fault::SendGarbage {
        stream: Some(name.into()),
        kind: GarbageKind::BadJson,
        bytes: None,
    };
    assert_eq!(h.emu.fault(bad_json).applied, 1);
    let malformed = h
        .recorder
        .wait_for(mark, Duration::from_secs(3), "a Malformed event", |s| {
            s.stream == id && matches!(s.event, SessionEvent::Malformed { .. })
        })
        .await;
    let SessionEvent::Malformed { what } = &malformed.event else {
        unreachable!()
    };
    assert!(
        !what.contains("this is not json"),
        "the problem names no payload: {what}"
    );
    logged(lines, &id, "upstream", "the skipped upstream frame").await;
    let mut floor = event_after(&mut app, floor + 2).await;
    assert!(
        h.recorder.since(mark).iter().all(|s| !s.is_any_drop()),
        "bad JSON cost the connection:\n{}",
        h.recorder.describe(mark)
    );
    assert_eq!(
        h.status(&id).connection.as_ref(),
        Some(&first_conn),
        "the socket was kept"
    );

    // Non-UTF-8 text, then a frame over limits.maxFrameBytes: each breaks the socket (1007,
    // 1009), which is reaped (tcp_error) and replaced; events flow again.
    let mut conn = first_conn;
    for (kind, bytes) in [
        (GarbageKind::NonUtf8, None),
        (GarbageKind::Oversized, Some(MAX_FRAME + 1)),
    ] {
        let mark = h.recorder.mark();
        let lines = log.len();
        let fault = Fault::SendGarbage {
            stream: Some(name.into()),
            kind,
            bytes,
        };
        assert_eq!(h.emu.fault(fault).applied, 1);
        let dropped = h
            .recorder
            .wait_for(
                mark,
                Duration::from_secs(3),
                &format!("the reap after {kind:?}"),
                |s| s.stream == id && s.is_any_drop(),
            )
            .await;
        assert!(
            dropped.is_dropped(DropReason::TcpError),
            "{kind:?}: {:?}",
            dropped.event
        );
        let back = h
            .recorder
            .wait_for(
                dropped.index,
                Duration::from_secs(3),
                &format!("the reconnect after {kind:?}"),
                |s| s.stream == id && s.is_connected(),
            )
            .await;
        let SessionEvent::Connected { connection, .. } = back.event else {
            unreachable!()
        };
        let code = if kind == GarbageKind::NonUtf8 {
            "1007"
        } else {
            "1009"
        };
        logged(lines, &id, code, &format!("the socket broken by {kind:?}")).await;
        assert_ne!(connection, conn, "{kind:?}: a new socket");
        conn = connection;
        let (_, frame) = app
            .recv_until(Duration::from_secs(3), "the dropped frame", |f| {
                matches!(f, FromServer::Frame(AppFrame::Dropped { .. }))
            })
            .await;
        assert!(
            matches!(
                frame,
                FromServer::Frame(AppFrame::Dropped {
                    reason: DropReason::TcpError,
                    ..
                })
            ),
            "{frame:?}"
        );
        floor = event_after(&mut app, floor.max(emitted(&h, name))).await;
    }
    assert_eq!(h.status(&id).connection, Some(conn));
    drop(app);
    h.shutdown().await;
}

/// Reads until the sidecar's close frame; returns its code.
async fn close_code(app: &mut App, what: &str) -> Option<u16> {
    let (_, closed) = app
        .recv_until(Duration::from_secs(3), what, |f| {
            matches!(f, FromServer::Closed { .. })
        })
        .await;
    let FromServer::Closed { code, .. } = closed else {
        unreachable!()
    };
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_app_costs_at_most_its_own_socket_and_the_pod_keeps_serving() {
    let name = "garbage-app";
    let log = logs();
    let h = Harness::start(options(name)).await;
    let id = h.stream_id(name);
    h.wait_active(&id).await;
    let upstream = h.status(&id).connection.expect("a connection id");
    let mark = h.recorder.mark();
    let lines = log.len();

    // Tolerated: not JSON, binary, an unknown message type, an ack for an unknown id.
    let mut app = App::connect(h.app_addr, &id, AckMode::Manual).await;
    let (first, _) = app.next_event(Duration::from_secs(3)).await;
    app.send(Message::text("this is not json {"));
    app.send(Message::binary(vec![0xde, 0xad, 0xbe, 0xef]));
    app.send(Message::text(r#"{"type":"nack","id":"x"}"#));
    app.ack(&EventId(format!("{name}:999999999")));
    let next = event_after(&mut app, event_seq(&first)).await;
    let next = EventId(format!("{name}:{next:09}"));
    app.ack(&next);
    h.wait_acked(&id, &next).await;
    // Each was logged, naming the stream (and never echoing the frame).
    logged(lines, &id, "binary", "the binary frame").await;
    logged(lines, &id, "nack", "the unknown message type").await;
    logged(lines, &id, "999999999", "the ack of an unknown id").await;
    // The frame that is not JSON went first, so its line is there by now.
    let others = ["binary", "nack", "999999999"];
    let not_json: Vec<String> = log
        .since(lines)
        .into_iter()
        .filter(|l| l.contains("WARN") && l.contains(id.as_str()))
        .filter(|l| others.iter().all(|w| !l.contains(w)))
        .collect();
    assert!(
        !not_json.is_empty(),
        "no log line for the frame that is not JSON"
    );
    assert!(
        not_json.iter().all(|l| !l.contains("this is not json")),
        "the payload was logged: {not_json:?}"
    );

    // Non-UTF-8 text: this app's socket is closed with 1007.
    let bad = Frame::message(vec![0xffu8, 0xfe, 0x22], OpCode::Data(Data::Text), true);
    app.send(Message::Frame(bad));
    assert_eq!(
        close_code(&mut app, "the close after non-UTF-8 text").await,
        Some(1007)
    );
    logged(lines, &id, "UTF-8", "the non-UTF-8 text").await;
    drop(app);

    // A new app is served, and an oversized frame closes it with 1009.
    let mut app = App::connect(h.app_addr, &id, AckMode::Manual).await;
    let seq = event_after(&mut app, event_seq(&next)).await;
    app.send(Message::text("x".repeat(MAX_FRAME + 1)));
    assert_eq!(
        close_code(&mut app, "the close after an oversized frame").await,
        Some(1009)
    );
    logged(lines, &id, &MAX_FRAME.to_string(), "the oversized frame").await;
    drop(app);

    // And the next one is served too; the upstream socket never noticed any of it.
    let mut app = App::connect(h.app_addr, &id, AckMode::Manual).await;
    event_after(&mut app, seq).await;
    assert_eq!(
        h.status(&id).connection,
        Some(upstream),
        "the upstream socket was kept"
    );
    assert!(
        h.recorder.since(mark).iter().all(|s| !s.is_any_drop()),
        "app garbage reached the upstream session:\n{}",
        h.recorder.describe(mark)
    );
    drop(app);
    h.shutdown().await;
}
