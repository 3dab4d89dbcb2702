//! Genesys over TLS through an HTTP CONNECT proxy, with a real `streamkeeper sidecar` process
//! (its proxy variables are its own environment): the emulator serves `https` and `wss` with
//! its test CA, the sidecar trusts that CA through `tls.caFile`, and every connection (the
//! token, the REST calls, each socket) rides a tunnel of the test proxy; `NO_PROXY` makes the
//! same flow go direct. A certificate the sidecar cannot trust (signed by another CA than
//! `tls.caFile`, or not by a system root; on the token endpoint or on the socket) is refused,
//! the stream never goes ACTIVE, and `/status` and the log say so; a proxy that answers 407 is
//! named in the error.

use std::{path::Path, sync::Arc, time::Duration};

use serde_json::Value;
use streamkeeper_api::{StreamSpec, config::Platform};
use streamkeeper_e2e::{
    AckMode, App, TempDir,
    harness::stream_id,
    platform::{Tally, Timing, dfo, genesys, topics, with_ca, write_credential},
    process::{SidecarProcess, status, stream_entry},
};
use streamkeeper_emulator::{CxoneConfig, Emulator, EmulatorConfig, GenesysConfig, TlsConfig};
use streamkeeper_testkit::proxy::ConnectProxy;
use tokio::time::Instant;

/// Bound on every wait (start, first events, a rotation), generous for a busy machine.
const BOUND: Duration = Duration::from_secs(30);
/// The proxy's password: it must never show in anything the sidecar prints.
const PROXY_PASSWORD: &str = "pr0xy-pa55word-e2e";
/// The emulator's Genesys OAuth client.
const GENESYS_CLIENT: &str = "genesys-client";

/// An emulator serving TLS with its test CA (written to `ca`), or, with `untrusted`, a server
/// certificate signed by another CA than the one written.
async fn tls_emulator(ca: &Path, untrusted: bool, token_ttl: Duration) -> Emulator {
    Emulator::start(EmulatorConfig {
        genesys: GenesysConfig {
            token_ttl,
            // 20 events a second.
            event_interval: Duration::from_millis(50),
            heartbeat_interval: Duration::from_secs(1),
            ..GenesysConfig::default()
        },
        tls: Some(TlsConfig {
            ca_pem_path: Some(ca.to_path_buf()),
            untrusted,
        }),
        ..EmulatorConfig::default()
    })
    .await
    .expect("start the emulator")
}

/// `host:port` of the emulator's REST and login endpoints as the sidecar is given them:
/// `localhost`, so their tunnels are told apart from the sockets', whose `connectUri` the
/// emulator writes as `127.0.0.1`.
fn rest_authority(emu: &Emulator) -> String {
    format!("localhost:{}", emu.addr().port())
}

fn socket_authority(emu: &Emulator) -> String {
    format!("127.0.0.1:{}", emu.addr().port())
}

/// A Genesys stream `name` against `emu` with its API and login at `https://localhost:PORT`.
fn stream(emu: &Emulator, name: &str, creds: &Path) -> StreamSpec {
    write_credential(
        creds,
        Platform::Genesys,
        &GenesysConfig::default().clients[0],
    );
    let mut spec = genesys(emu, name, &topics(name, 1), creds, Timing::default());
    let rest: url::Url = format!("https://{}", rest_authority(emu))
        .parse()
        .expect("URL");
    let endpoints = Arc::make_mut(&mut spec.endpoints);
    endpoints.api = Some(rest.clone().into());
    endpoints.login = Some(rest.into());
    spec
}

/// The proxy environment of a sidecar process: `https_proxy` wins over `HTTPS_PROXY`, so both
/// are set, and the machine's own settings never leak into the test.
fn proxy_env<'a>(proxy: &'a str, no_proxy: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![
        ("https_proxy", proxy),
        ("HTTPS_PROXY", proxy),
        ("http_proxy", ""),
        ("HTTP_PROXY", ""),
        ("no_proxy", no_proxy),
        ("NO_PROXY", no_proxy),
    ]
}

fn active(e: &Value) -> bool {
    e["state"] == "ACTIVE"
}

fn count(targets: &[String], authority: &str) -> usize {
    targets.iter().filter(|t| *t == authority).count()
}

/// Everything the process printed, one string.
fn printed(side: &SidecarProcess) -> String {
    let mut all = side.child.stderr.all();
    all.extend(side.child.stdout.all());
    all.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn genesys_over_tls_through_a_connect_proxy_and_direct_under_no_proxy() {
    streamkeeper_e2e::process::binary();
    let dir = TempDir::new("tls-proxy");
    let ca = dir.path().join("ca.pem");
    // Tokens live 3 s and are refreshed 1 s early: a make-before-break rotation through the
    // proxy within the run.
    let emu = tls_emulator(&ca, false, Duration::from_secs(3)).await;
    let spec = with_ca(stream(&emu, "queue", &dir.path().join("genesys")), &ca);
    let id = stream_id("queue");
    let proxy = ConnectProxy::with_basic_auth("egress", PROXY_PASSWORD)
        .await
        .expect("start the proxy");
    let proxy_url = format!("http://egress:{PROXY_PASSWORD}@{}", proxy.addr());

    let mut side = SidecarProcess::start(
        dir.path(),
        "tls-proxied",
        vec![spec.clone()],
        None,
        &proxy_env(&proxy_url, ""),
        "info",
    );
    side.wait_stream(id.as_str(), BOUND, active).await;
    let mut app = App::connect(side.app, &id, AckMode::All).await;
    let mut tally = Tally::default();
    let client = &GenesysConfig::default().clients[0].id;
    let rotated = tally
        .read_until(&mut app, BOUND, |t| {
            t.events() >= 60 && emu.stats().genesys.clients[client].channels_created >= 2
        })
        .await;
    assert!(
        rotated,
        "events and a token rotation through the proxy within {BOUND:?}: {} events, {:?}",
        tally.events(),
        emu.stats().genesys.clients.get(client)
    );
    assert_eq!(tally.duplicates(), 0, "no event delivered twice");
    assert!(
        tally.missing().is_empty(),
        "none lost: {:?}",
        tally.missing()
    );
    assert!(tally.dropped.is_empty(), "no dropped: {:?}", tally.dropped);
    assert!(tally.gaps.is_empty(), "no gap: {:?}", tally.gaps);

    // What went through the proxy: REST (token, validation, channels, subscriptions) to the
    // login/API host, one tunnel per socket to the connectUri host, nothing else.
    let stats = emu.stats();
    let targets = proxy.targets();
    let (rest, sockets) = (rest_authority(&emu), socket_authority(&emu));
    assert!(
        targets.iter().all(|t| *t == rest || *t == sockets),
        "only the emulator was tunnelled to: {targets:?}"
    );
    assert!(count(&targets, &rest) >= 1, "REST tunnels: {targets:?}");
    assert!(
        count(&targets, &sockets) as u64 >= stats.connections_total && stats.connections_total >= 2,
        "every socket the emulator accepted ({}) came through a tunnel: {targets:?}",
        stats.connections_total
    );
    assert!(
        proxy.refusals().is_empty(),
        "the proxy URL's credentials go with every CONNECT, REST and socket: {:?}",
        proxy.refusals()
    );
    for route in [
        "POST /oauth/token",
        "GET /api/v2/tokens/me",
        "POST /api/v2/notifications/channels",
    ] {
        assert!(
            stats.rest.get(route).is_some_and(|n| *n >= 1),
            "{route} reached the emulator: {:?}",
            stats.rest
        );
    }
    side.stop().await;
    let output = printed(&side);
    assert!(
        !output.contains(PROXY_PASSWORD),
        "the proxy password was printed"
    );

    // The same flow with the emulator's hosts in NO_PROXY: direct, no new tunnel.
    let tunnels_before = proxy.tunnels().len();
    let sockets_before = emu.stats().connections_total;
    let mut direct = SidecarProcess::start(
        dir.path(),
        "tls-direct",
        vec![spec],
        None,
        &proxy_env(&proxy_url, "localhost,127.0.0.1"),
        "info",
    );
    direct.wait_stream(id.as_str(), BOUND, active).await;
    let mut app = App::connect(direct.app, &id, AckMode::All).await;
    let mut tally = Tally::default();
    assert!(
        tally
            .read_until(&mut app, BOUND, |t| t.events() >= 20)
            .await,
        "events reach the app directly: {}",
        tally.events()
    );
    assert!(
        emu.stats().connections_total > sockets_before,
        "a new socket"
    );
    assert_eq!(
        proxy.tunnels().len(),
        tunnels_before,
        "NO_PROXY: no tunnel: {:?}",
        proxy.targets()
    );
    direct.stop().await;
    emu.shutdown().await;
}

/// Polls `/status` until every stream of `ids` reports a `lastError` with every one of
/// `words`, failing the test if any of them is ever ACTIVE; returns the entries.
async fn wait_errors(side: &mut SidecarProcess, ids: &[&str], words: &[&str]) -> Vec<Value> {
    let deadline = Instant::now() + BOUND;
    loop {
        assert!(
            side.child.is_running(),
            "the sidecar exited: {}",
            side.child.stderr_text()
        );
        let doc = status(side.admin).await.unwrap_or(Value::Null);
        let entries: Vec<Option<&Value>> = ids.iter().map(|id| stream_entry(&doc, id)).collect();
        for e in entries.iter().flatten() {
            assert!(!active(e), "never ACTIVE: {e}");
        }
        let said = |e: &Option<&Value>| {
            e.and_then(|e| e["lastError"].as_str())
                .is_some_and(|err| words.iter().all(|w| err.contains(w)))
        };
        if entries.iter().all(said) {
            return entries.into_iter().flatten().cloned().collect();
        }
        assert!(
            Instant::now() < deadline,
            "no lastError with {words:?} within {BOUND:?}: {doc}\nstderr:\n{}",
            side.child.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused_and_status_and_log_say_so() {
    streamkeeper_e2e::process::binary();
    let dir = TempDir::new("tls-untrusted");
    // (a) tls.caFile names a CA, but the server's certificate was signed by another one.
    let rogue_ca = dir.path().join("not-the-signer.pem");
    let rogue = tls_emulator(&rogue_ca, true, Duration::from_secs(3600)).await;
    let signed_elsewhere = with_ca(stream(&rogue, "rogue", &dir.path().join("a")), &rogue_ca);
    // (b) No tls.caFile: the system roots, which do not hold the emulator's test CA.
    let test_ca = dir.path().join("test-ca.pem");
    let private = tls_emulator(&test_ca, false, Duration::from_secs(3600)).await;
    let system_roots = stream(&private, "system", &dir.path().join("b"));
    // (c) The socket's certificate is refused, not the token endpoint's: a CXone DFO stream
    // whose login is the trusted emulator and whose socket is the other one.
    let creds = dir.path().join("c");
    write_credential(
        &creds,
        Platform::CxoneDfo,
        &CxoneConfig::default().access_keys[0],
    );
    let mut socket_refused = with_ca(
        dfo(
            &private,
            "socket",
            "emulated-tenant",
            "agent-1",
            &creds,
            Timing::default(),
        ),
        &test_ca,
    );
    Arc::make_mut(&mut socket_refused.endpoints).stream = Some(
        rogue
            .dfo_url("emulated-tenant", "agent-1")
            .parse()
            .expect("URL"),
    );

    let mut side = SidecarProcess::start(
        dir.path(),
        "tls-untrusted",
        vec![signed_elsewhere, system_roots, socket_refused],
        None,
        &proxy_env("", ""),
        "info",
    );
    let ids = [stream_id("rogue"), stream_id("system"), stream_id("socket")];
    let ids: Vec<&str> = ids.iter().map(|i| i.as_str()).collect();
    let entries = wait_errors(&mut side, &ids, &["certificate", "not trusted"]).await;
    for e in &entries {
        eprintln!("{}: lastError: {}", e["id"], e["lastError"]);
    }
    let logged = side
        .child
        .stderr
        .wait_for(0, BOUND, |l| {
            l.contains("certificate") && l.contains("not trusted")
        })
        .await;
    assert!(
        logged.is_some(),
        "the log says the certificate was not trusted:\n{}",
        side.child.stderr_text()
    );
    // Nothing got past a refused handshake: no Genesys token, no channel, no socket; the
    // DFO stream had its token from the trusted login, and its socket was refused.
    for emu in [&rogue, &private] {
        let stats = emu.stats();
        assert!(!stats.tokens.contains_key(GENESYS_CLIENT), "{stats:?}");
        assert_eq!(stats.connections_total, 0, "{stats:?}");
        assert!(stats.genesys.channels.is_empty(), "{stats:?}");
    }
    let key = &CxoneConfig::default().access_keys[0].id;
    assert!(
        private
            .stats()
            .tokens
            .get(key)
            .is_some_and(|t| t.last_serial > 0),
        "the DFO stream had a token: {:?}",
        private.stats().tokens
    );
    assert!(
        entries[2]["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("TLS handshake"))
    );
    side.stop().await;
    rogue.shutdown().await;
    private.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_answers_407_is_named_in_the_error() {
    streamkeeper_e2e::process::binary();
    let dir = TempDir::new("tls-407");
    let ca = dir.path().join("ca.pem");
    let emu = tls_emulator(&ca, false, Duration::from_secs(3600)).await;
    let spec = with_ca(stream(&emu, "queue", &dir.path().join("genesys")), &ca);
    let proxy = ConnectProxy::with_basic_auth("egress", PROXY_PASSWORD)
        .await
        .expect("start the proxy");
    // No credentials in the proxy URL: the proxy answers 407.
    let mut side = SidecarProcess::start(
        dir.path(),
        "tls-407",
        vec![spec],
        None,
        &proxy_env(&proxy.url(), ""),
        "info",
    );
    let proxy_name = proxy.addr().to_string();
    let id = stream_id("queue");
    let entries = wait_errors(&mut side, &[id.as_str()], &[&proxy_name, "407"]).await;
    eprintln!("lastError: {}", entries[0]["lastError"]);
    let refused = proxy.refusals();
    assert!(
        !refused.is_empty()
            && refused
                .iter()
                .all(|r| r.status == 407 && r.target == rest_authority(&emu)),
        "{refused:?}"
    );
    assert!(proxy.tunnels().is_empty());
    assert_eq!(emu.stats().tokens_issued, 0);
    assert!(
        side.child
            .stderr
            .wait_for(0, BOUND, |l| l.contains(&proxy_name) && l.contains("407"))
            .await
            .is_some(),
        "the log names the proxy:\n{}",
        side.child.stderr_text()
    );
    side.stop().await;
    emu.shutdown().await;
}
