//! Half-open for real, at the kernel: the platform (`streamkeeper emulate`) runs in a network
//! namespace behind a veth pair, the sidecar on the host reaches it by its veth address, and an
//! nftables rule inside the namespace drops every packet on the link, so no ACK comes back, no
//! RST, no FIN. (`half_open.rs` covers the other half-open: a peer application that stops
//! reading while its kernel still acknowledges.)
//!
//! * The sidecar declares the cut socket DEAD within timeout + 250 ms of its deadline, resets it
//!   (the RST reaches the namespace, where the rule counts and drops it), tells the app
//!   `dropped`, keeps trying (its connection attempt is dropped too), and when the rule goes it
//!   reconnects, resumes after the last event it saw, and events flow again with none lost or
//!   repeated.
//! * With the app-level heartbeat turned far up (1 h), the kernel alone fails a cut socket:
//!   TCP_USER_TIMEOUT one that has data unacknowledged, keepalive one that is idle; both with
//!   ETIMEDOUT, at the time their options say. The sidecar sets these options per socket
//!   (keepalive 30 s/10 s/3, TCP_USER_TIMEOUT = the heartbeat timeout) and its config does not
//!   expose them, so this drives its upstream socket layer (`Upstream` over `WsClient`, the
//!   same code a session runs) with short options.
//!
//! Needs root, `ip`, `nft` and `setpriv`; fails (does not skip) without them.

use std::time::Duration;

use streamkeeper_api::{
    DropReason, StreamState,
    app_protocol::AppFrame,
    config::{Credentials, HeartbeatSpec, Platform},
};
use streamkeeper_e2e::{
    AckMode, App, FromServer, LocalPod, Options, Rig, TempDir, event_seq,
    harness::{stream_id, stream_spec_at, write_credentials},
    netns::{Dropped, Netns, NsEmulator},
};
use streamkeeper_emulator::EmulatorConfig;
use streamkeeper_sidecar::{
    auth::{CredentialFiles, Grant, Token, TokenSource},
    liveness::HeartbeatPolicy,
    net::{SocketOptions, plain_http_client},
    platforms::Ping,
    upstream::SessionEvent,
    upstream::{Tick, Upstream},
    ws::{ConnectOptions, ProxyMode, WsClient, WsError},
};
use tokio::time::{Instant, timeout};

/// The product's promise: DEAD within 250 ms of the deadline.
const DETECTION_LIMIT: Duration = Duration::from_millis(250);
/// How long after the heal the session may take to stream again: its connection attempt in
/// flight retries its SYN (1 s, 3 s, 7 s after the first) within the connect timeout (10 s);
/// after that the next attempt follows the backoff (at most 1 s here).
const HEAL_BOUND: Duration = Duration::from_secs(15);
/// `ETIMEDOUT` on Linux: the error of a connection the kernel gave up on.
const ETIMEDOUT: i32 = 110;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_cut_at_the_kernel_is_declared_dead_within_the_deadline_reset_and_resumed_on_heal() {
    let ns = Netns::create();
    let name = "cut";
    let emu = ns.spawn_emulator(&[name], Duration::from_millis(50)).await;
    let dir = TempDir::new("netns-cut");
    let creds = dir.path().join("credentials");
    write_credentials(&EmulatorConfig::default(), &creds);
    let opts = Options {
        heartbeat: HeartbeatSpec {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
        },
        ..Options::new(&[name])
    };
    let spec = stream_spec_at(&emu.base_url(), &emu.stream_url(name), name, &creds, &opts);
    let timeout = spec.heartbeat.timeout;
    let pod = LocalPod::start(vec![spec], &Rig::from(&opts)).await;
    let id = stream_id(name);
    pod.wait_active(&id).await;

    // An app that reads but never acks, so the drop has unacked bytes to report.
    let mut app = App::connect(pod.app_addr, &id, AckMode::Manual).await;
    let (before, _) = app.next_event(Duration::from_secs(5)).await;
    let first_conn = pod.status(&id).connection.expect("a connection id");
    let stats = emu
        .stats()
        .await
        .expect("the emulator's stats over the link");
    assert_eq!(stats.streams[name].connections, 1, "one upstream socket");

    let mark = pod.recorder.mark();
    let cut_at = ns.cut().await;
    let dead = pod
        .recorder
        .wait_for(mark, timeout + Duration::from_secs(3), "a drop", |s| {
            s.stream == id && s.is_any_drop()
        })
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
    assert_eq!(connection, first_conn, "the cut socket was the one reaped");
    let after_cut = dead.at - cut_at;
    match reason {
        // The deadline: nothing arrived for the whole timeout.
        DropReason::PongTimeout => {
            let late_by = late_by.expect("a pong_timeout carries late_by");
            assert!(
                late_by <= DETECTION_LIMIT,
                "DEAD {late_by:?} after the deadline (limit {DETECTION_LIMIT:?})"
            );
            assert!(
                silent_for >= timeout,
                "DEAD after {silent_for:?} of silence, before the timeout {timeout:?}"
            );
        }
        // TCP_USER_TIMEOUT (= the heartbeat timeout) on a ping sent right at the cut can end
        // the socket a moment before the deadline; that is within the promise too.
        DropReason::TcpError => {}
        other => panic!(
            "a cut link sends nothing back, so the drop must be the deadline's (or the kernel's \
             user timeout), not {other:?}: {:?}",
            dead.event
        ),
    }
    assert!(
        silent_for <= timeout + DETECTION_LIMIT,
        "silent for {silent_for:?} before DEAD: over timeout + {DETECTION_LIMIT:?}"
    );
    // The deadline is at most `timeout` after the cut (the last frame came before it); the
    // recorder hears the drop in the same call that declares it.
    assert!(
        after_cut <= timeout + DETECTION_LIMIT,
        "DEAD {after_cut:?} after the cut; the timeout is {timeout:?}"
    );
    assert!(
        pending_bytes > 0,
        "the app acked nothing: bytes were pending"
    );
    eprintln!(
        "cut at the kernel (heartbeat {:?}/{timeout:?}): {reason:?} {after_cut:?} after the cut, \
         {late_by:?} past the deadline, silent for {silent_for:?}; {pending_bytes} bytes pending",
        opts.heartbeat.interval
    );

    // Reset, not closed: the RST reached the namespace (and was dropped there).
    assert!(
        ns.wait_dropped(Dropped::Resets, 1, Duration::from_secs(2))
            .await,
        "no RST from the reaped socket reached the namespace"
    );

    // The app hears `dropped` with the session's figures (after the events it was handed
    // before the cut, kept for the check at the end).
    let (read_before, dropped) = app
        .recv_until(Duration::from_secs(2), "a dropped frame", |f| {
            matches!(f, FromServer::Frame(AppFrame::Dropped { .. }))
        })
        .await;
    let FromServer::Frame(AppFrame::Dropped {
        connection_id,
        reason: told,
        pending_bytes: app_pending,
        ..
    }) = dropped
    else {
        unreachable!("matched a dropped frame")
    };
    assert_eq!(
        (connection_id, told, app_pending),
        (first_conn.clone(), reason, pending_bytes)
    );

    // While cut, the session keeps trying: its connection attempt reaches the namespace and is
    // dropped like everything else.
    assert!(
        ns.wait_dropped(
            Dropped::Syns,
            1,
            opts.reconnect.max + Duration::from_secs(3)
        )
        .await,
        "no reconnect attempt reached the namespace while the link was cut\n{}",
        pod.recorder.describe(dead.index)
    );
    let healed_at = ns.heal().await;
    let back = pod
        .recorder
        .wait_for(dead.index, HEAL_BOUND, "a reconnect after the heal", |s| {
            s.stream == id && s.is_connected()
        })
        .await;
    let SessionEvent::Connected {
        connection: second_conn,
        resumed_after,
        ..
    } = back.event.clone()
    else {
        unreachable!("matched a connect")
    };
    assert_ne!(second_conn, first_conn, "a new socket");
    let resumed_after = resumed_after.expect("the reconnect resumes after the last event seen");
    assert!(event_seq(&resumed_after) >= event_seq(&before));
    let active = pod
        .recorder
        .wait_for(back.index, Duration::from_secs(2), "ACTIVE again", |s| {
            s.stream == id && s.is_state(StreamState::Active)
        })
        .await;
    eprintln!(
        "healed {:?} after the cut: streaming again {:?} after the heal ({} connection attempts \
         dropped while cut)",
        healed_at - cut_at,
        active.at - healed_at,
        ns.dropped(Dropped::Syns).await
    );

    // Events flow again: every id after the first one read, in order, none repeated, none
    // lost (the emulator replays after the resume id), through ids from the new socket.
    let resumed = event_seq(&resumed_after);
    let check = |last: u64, id: &streamkeeper_api::EventId| {
        let seq = event_seq(id);
        assert_eq!(
            seq,
            last + 1,
            "{id:?} after seq {last}: lost, repeated or reordered"
        );
        seq
    };
    let mut last = event_seq(&before);
    for seen in &read_before {
        if let FromServer::Frame(AppFrame::Event { id, .. }) = seen {
            last = check(last, id);
        }
    }
    while last <= resumed + 5 {
        let (next, _) = app.next_event(Duration::from_secs(5)).await;
        last = check(last, &next);
    }
    assert_eq!(pod.status(&id).connection, Some(second_conn));
    let stats = emu
        .stats()
        .await
        .expect("the emulator's stats after the heal");
    assert!(
        stats.streams[name].connections >= 1,
        "the new socket is open: {stats:?}"
    );
    drop(app);
    pod.shutdown().await;
}

/// Obtains a token from the namespaced emulator (default credentials).
async fn token(emu: &NsEmulator, dir: &TempDir) -> Token {
    let creds_dir = dir.path().join("credentials");
    write_credentials(&EmulatorConfig::default(), &creds_dir);
    let files = CredentialFiles::new(
        Platform::Generic,
        &Credentials {
            dir: Some(creds_dir.into()),
            secret: None,
        },
    )
    .expect("the credentials just written");
    let base: url::Url = emu.base_url().parse().expect("base URL");
    let grant = Grant::for_platform(Platform::Generic, plain_http_client(), &base, Some(&base))
        .expect("a generic grant");
    TokenSource::new(files, grant)
        .obtain()
        .await
        .expect("a token from the emulator")
}

/// A watched upstream socket on stream `name` with these socket options and a heartbeat so far
/// up that it never acts.
async fn upstream(emu: &NsEmulator, name: &str, token: &Token, socket: SocketOptions) -> Upstream {
    let far_up = HeartbeatPolicy {
        interval: Duration::from_secs(3600),
        timeout: Duration::from_secs(7200),
    };
    let url: url::Url = emu.stream_url(name).parse().expect("stream URL");
    let opts = ConnectOptions {
        socket,
        proxy: ProxyMode::Direct,
        ..ConnectOptions::default()
    };
    let auth = [("Authorization", format!("Bearer {}", token.value.expose()))];
    let ws = WsClient::connect(&url, &auth, &opts)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    Upstream::new(ws, far_up, far_up.interval)
}

/// Drives `up` until it fails (frames in flight at the cut are read on the way); the error,
/// when, and when the last frame had arrived. Fails the test if the heartbeat acts.
async fn until_failed(up: &mut Upstream, bound: Duration) -> (WsError, Instant, Instant) {
    let ping = |seq: u64| Ping::Control(seq.to_be_bytes().to_vec());
    let run = async {
        loop {
            match up.next(ping, None).await {
                Ok(Tick::Frame(_)) => {}
                Ok(tick) => panic!("the far-up heartbeat acted: {tick:?}"),
                Err(e) => return (e, Instant::now(), up.liveness().last_inbound()),
            }
        }
    };
    timeout(bound, run)
        .await
        .unwrap_or_else(|_| panic!("the kernel did not fail the cut socket within {bound:?}"))
}

fn assert_timed_out(e: &WsError, which: &str) {
    match e {
        WsError::Io(io) => assert_eq!(
            io.raw_os_error(),
            Some(ETIMEDOUT),
            "the {which} socket failed with {io}, not ETIMEDOUT: the kernel did not give up on it"
        ),
        other => panic!("the {which} socket ended with {other}, not a timed-out socket"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_heartbeat_far_up_tcp_user_timeout_and_keepalive_alone_fail_a_cut_socket() {
    let ns = Netns::create();
    let emu = ns
        .spawn_emulator(&["unacked", "idle"], Duration::from_millis(50))
        .await;
    let dir = TempDir::new("netns-kernel");
    let token = token(&emu, &dir).await;
    // Unacked data: TCP_USER_TIMEOUT ends it; keepalive too slow to matter (and idle only).
    let user_timeout = Duration::from_millis(1500);
    let mut unacked = upstream(
        &emu,
        "unacked",
        &token,
        SocketOptions {
            user_timeout,
            keepalive_idle: Duration::from_secs(60),
            ..SocketOptions::default()
        },
    )
    .await;
    // Idle: keepalive ends it; no user timeout (the system default). The kernel takes keepalive
    // times in whole seconds.
    let (idle_after, probe_every, probes) = (Duration::from_secs(1), Duration::from_secs(1), 2);
    let mut idle = upstream(
        &emu,
        "idle",
        &token,
        SocketOptions {
            user_timeout: Duration::ZERO,
            keepalive_idle: idle_after,
            keepalive_interval: probe_every,
            keepalive_retries: probes,
            ..SocketOptions::default()
        },
    )
    .await;
    // Both carry events before the cut.
    for (up, which) in [(&mut unacked, "unacked"), (&mut idle, "idle")] {
        let first = timeout(
            Duration::from_secs(5),
            up.next(|_| Ping::Text(String::new()), None),
        )
        .await
        .unwrap_or_else(|_| panic!("no event on the {which} socket"));
        assert!(
            matches!(first, Ok(Tick::Frame(_))),
            "{which}: expected a frame, got {first:?}"
        );
    }

    let cut_at = ns.cut().await;
    // One frame written after the cut, never acknowledged.
    unacked
        .ws_mut()
        .queue_text(r#"{"type":"note","text":"never acked"}"#);
    let sent_at = Instant::now();
    let bound = Duration::from_secs(10);
    let ((u_err, u_at, _), (i_err, i_at, i_last)) = tokio::join!(
        until_failed(&mut unacked, bound),
        until_failed(&mut idle, bound)
    );
    assert_timed_out(&u_err, "unacked");
    assert_timed_out(&i_err, "idle");
    let by_user_timeout = u_at - sent_at;
    let by_keepalive = i_at - i_last;
    let keepalive_budget = idle_after + probe_every * probes;
    eprintln!(
        "heartbeat 1 h, link cut: the unacked socket failed {by_user_timeout:?} after its write \
         (TCP_USER_TIMEOUT {user_timeout:?}), the idle one {by_keepalive:?} after its last frame \
         (keepalive {idle_after:?} + {probes} x {probe_every:?}); {:?} and {:?} after the cut",
        u_at - cut_at,
        i_at - cut_at
    );
    // Lower bounds: it was these options and nothing earlier; upper bounds: with slack for a
    // busy machine (the kernel's timers are exact, the test's view of them is not).
    let slack = Duration::from_secs(1);
    assert!(
        by_user_timeout >= user_timeout && by_user_timeout <= user_timeout + slack,
        "the unacked socket failed {by_user_timeout:?} after its write; TCP_USER_TIMEOUT is \
         {user_timeout:?}"
    );
    // (The last frame's arrival is seen from user space, a little after the kernel saw it.)
    assert!(
        by_keepalive + Duration::from_millis(200) >= keepalive_budget
            && by_keepalive <= keepalive_budget + slack,
        "the idle socket failed {by_keepalive:?} after its last frame; keepalive gives up after \
         {keepalive_budget:?}"
    );
    drop((unacked, idle));
}
