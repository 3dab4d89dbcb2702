//! The `streamkeeper sidecar --config FILE` process: a bad field stops it at start with an error
//! naming the field; while running, a bad reload is refused with an error naming the field and
//! the running stream keeps its socket; an added stream starts while the first keeps its
//! socket; SIGTERM ends the process with status 0.

use std::{net::SocketAddr, path::Path, time::Duration};

use streamkeeper_e2e::{
    TempDir, free_port,
    harness::write_credentials,
    process::{self, Running, status, stream_entry, write_atomically},
};
use streamkeeper_emulator::{Emulator, EmulatorConfig};
use tokio::time::Instant;

/// How long the process may take to start, connect, reload, or stop.
const BOUND: Duration = Duration::from_secs(10);
/// The field the bad configs get wrong.
const BAD_FIELD: &str = "streams[0].heartbeat.timeout";

/// The config file, written the way a person would: `streams` against the emulator, each with
/// heartbeat timeout `timeout` (written as is, so `35` without a unit is a bad config).
fn config(
    emu: &Emulator,
    creds: &Path,
    listen: u16,
    admin: u16,
    streams: &[&str],
    timeout: &str,
) -> String {
    let base = emu.base_url();
    let mut yaml = format!(
        "pod: e2e-reload\nlisten: 127.0.0.1:{listen}\nadmin: 127.0.0.1:{admin}\nstreams:\n"
    );
    for name in streams {
        yaml.push_str(&format!(
            "  - id: e2e/{name}\n    tenant: acme\n    platform: generic\n    \
             endpoints: {{api: \"{base}\", login: \"{base}\", stream: \"{stream}\"}}\n    \
             credentials: {{dir: \"{creds}\"}}\n    \
             heartbeat: {{interval: 300ms, timeout: {timeout}}}\n    \
             token: {{refreshLead: 120s, retry: 1s}}\n    \
             reconnect: {{initial: 100ms, max: 1s}}\n",
            stream = emu.stream_url(name),
            creds = creds.display(),
        ));
    }
    yaml
}

/// Polls `/status` (the process offers no push) until stream `id` satisfies `pred`; returns
/// its entry. Fails the test with the last document after `bound`, or when the child exits.
async fn wait_stream(
    child: &mut Running,
    admin: SocketAddr,
    id: &str,
    bound: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + bound;
    loop {
        assert!(
            child.is_running(),
            "the sidecar exited; stderr:\n{}",
            child.stderr_text()
        );
        let last = match status(admin).await {
            Ok(doc) => match stream_entry(&doc, id).filter(|e| pred(e)) {
                Some(entry) => return entry.clone(),
                None => doc.to_string(),
            },
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "{id} not as expected within {bound:?}; last /status: {last}\nstderr:\n{}",
            child.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn active(entry: &serde_json::Value) -> bool {
    entry["state"] == "ACTIVE"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_names_the_field_a_bad_reload_keeps_the_streams_and_sigterm_exits_0() {
    process::binary();
    let dir = TempDir::new("reload");
    let creds = dir.path().join("credentials");
    let emu_cfg = EmulatorConfig {
        streams: vec!["reload-a".into(), "reload-b".into()],
        event_interval: Duration::from_millis(100),
        ..EmulatorConfig::default()
    };
    write_credentials(&emu_cfg, &creds);
    let emu = Emulator::start(emu_cfg).await.expect("start the emulator");
    let listen = free_port();
    let admin_port = std::iter::repeat_with(free_port)
        .find(|p| *p != listen)
        .expect("a second port");
    let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
    let file = dir.path().join("sidecar.yaml");
    let path = file.to_str().expect("a UTF-8 temp path");
    let args = ["sidecar", "--config", path];
    let one_good = config(&emu, &creds, listen, admin_port, &["reload-a"], "1s");
    let one_bad = config(&emu, &creds, listen, admin_port, &["reload-a"], "35");
    let two_good = config(
        &emu,
        &creds,
        listen,
        admin_port,
        &["reload-a", "reload-b"],
        "1s",
    );

    // (a) A bad field at start: a non-zero exit and an error naming the field.
    write_atomically(&file, &one_bad);
    let mut refused = Running::spawn(&args, "info");
    let exit = refused
        .wait(BOUND)
        .await
        .expect("the sidecar exits at start on a bad config");
    assert!(!exit.success(), "a bad config must not start: {exit}");
    let said = refused
        .stderr
        .wait_for(0, Duration::from_secs(2), |l| l.contains(BAD_FIELD))
        .await;
    assert!(
        said.is_some(),
        "no error naming {BAD_FIELD}; stderr:\n{}",
        refused.stderr_text()
    );
    eprintln!("bad config at start: {exit}; {}", said.unwrap_or_default());

    // A good config: the stream becomes ACTIVE.
    write_atomically(&file, &one_good);
    let started = Instant::now();
    let mut child = Running::spawn(&args, "info");
    let a = wait_stream(&mut child, admin, "e2e/reload-a", BOUND, active).await;
    let conn_a = a["connection"].clone();
    assert!(conn_a.is_string(), "a connection id: {a}");
    eprintln!(
        "e2e/reload-a ACTIVE {:?} after spawn on {conn_a}",
        started.elapsed()
    );

    // (b) A bad reload: an error naming the field; the stream keeps running on the same socket.
    let mark = child.stderr.len();
    let sockets = emu.stats().connections_total;
    write_atomically(&file, &one_bad);
    let said = child
        .stderr
        .wait_for(mark, Duration::from_secs(5), |l| l.contains(BAD_FIELD))
        .await;
    let said = said.unwrap_or_else(|| {
        panic!(
            "no error naming {BAD_FIELD} after a bad reload; stderr:\n{}",
            child.stderr_text()
        )
    });
    assert!(
        said.contains("ERROR"),
        "the refusal is an error line: {said}"
    );
    eprintln!("bad reload: {said}");
    let a = wait_stream(&mut child, admin, "e2e/reload-a", BOUND, |_| true).await;
    assert_eq!(a["state"], "ACTIVE", "{a}");
    assert_eq!(
        a["connection"], conn_a,
        "the bad reload restarted the stream: {a}"
    );
    assert_eq!(a["reconnects"], 0, "{a}");
    assert_eq!(
        emu.stats().connections_total,
        sockets,
        "the emulator saw a new socket after a refused reload"
    );

    // (c) A second stream: it starts; the first keeps its socket.
    let mark = child.stderr.len();
    write_atomically(&file, &two_good);
    let b = wait_stream(&mut child, admin, "e2e/reload-b", BOUND, active).await;
    assert!(b["connection"].is_string(), "{b}");
    let a = wait_stream(&mut child, admin, "e2e/reload-a", BOUND, |_| true).await;
    assert_eq!(a["state"], "ACTIVE", "{a}");
    assert_eq!(
        a["connection"], conn_a,
        "adding a stream restarted the first: {a}"
    );
    let reloaded = child
        .stderr
        .wait_for(mark, Duration::from_secs(2), |l| {
            l.contains("config reloaded")
        })
        .await;
    assert!(
        reloaded.is_some(),
        "no reload log line; stderr:\n{}",
        child.stderr_text()
    );
    assert_eq!(
        emu.stats().streams["reload-a"].connections,
        1,
        "one socket for the first stream"
    );

    // (d) SIGTERM: a clean exit, promptly.
    let asked = Instant::now();
    child.terminate();
    let exit = child.wait(BOUND).await.unwrap_or_else(|| {
        panic!(
            "still running {BOUND:?} after SIGTERM; stderr:\n{}",
            child.stderr_text()
        )
    });
    let took = asked.elapsed();
    eprintln!("SIGTERM: {exit} after {took:?}");
    assert!(
        exit.success(),
        "SIGTERM must exit 0, got {exit}; stderr:\n{}",
        child.stderr_text()
    );
    assert!(
        took <= Duration::from_secs(5),
        "took {took:?} to stop after SIGTERM"
    );
    emu.shutdown().await;
}
