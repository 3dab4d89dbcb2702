//! No secret reaches anything the sidecar shows: one whole run of a real `streamkeeper
//! sidecar` process at debug log level (every crate), over a Genesys stream and a CXone DFO
//! stream (TLS with the emulator's test CA, through a CONNECT proxy that wants a password,
//! checkpoints in a Redis that wants one), through token rotations and a refused token on each
//! platform. Everything it printed (stdout and stderr), a `/status` and a `/metrics` scrape,
//! the `Debug` of the config as loaded, and what `streamkeeper status` prints from the same
//! Redis are searched for the Genesys client secret, the CXone access key secret, the Redis
//! password, the proxy password and every token the emulator issued: zero hits, and a hit is
//! reported by where it was found.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use streamkeeper_api::{SidecarConfig, config::Platform};
use streamkeeper_e2e::{
    AckMode, App, TempDir,
    harness::stream_id,
    platform::{Tally, Timing, dfo, genesys, topics, with_ca, write_credential},
    process::{Running, SidecarProcess, http_get},
};
use streamkeeper_emulator::{
    Credential, CxoneConfig, CxoneFault, Emulator, EmulatorConfig, Fault, GenesysConfig,
    GenesysFault, GrantKind, TlsConfig,
};
use streamkeeper_testkit::{proxy::ConnectProxy, redis::RedisServer};

/// Bound on every wait, generous for a busy machine.
const BOUND: Duration = Duration::from_secs(40);
const GENESYS_CLIENT: &str = "genesys-client";
const CXONE_KEY: &str = "cxone-key";

/// A value no other run and no other text has: `{label}-{pid}-{nanos}`.
fn unique(label: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{label}-{}-{nanos:x}", std::process::id())
}

/// Where a secret was found: the source, its line number (from 1), the secret's name.
fn hits(sources: &[(&str, &str)], needles: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (source, text) in sources {
        for (n, line) in text.lines().enumerate() {
            for (name, secret) in needles {
                if line.contains(secret.as_str()) {
                    found.push(format!("{source} line {}: {name}", n + 1));
                }
            }
        }
    }
    found
}

/// Token grants of `client` at the emulator, every grant type.
fn grants(emu: &Emulator, client: &str) -> (u64, u64) {
    let stats = emu.stats();
    stats
        .tokens
        .get(client)
        .map(|c| (c.by_grant.values().sum(), c.refused))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_debug_run_prints_no_secret_anywhere() {
    streamkeeper_e2e::process::binary();
    let dir = TempDir::new("secrets");
    let client_secret = unique("genesys-client-secret");
    let key_secret = unique("cxone-access-key-secret");
    let redis_password = unique("redis-password");
    let proxy_password = unique("proxy-password");

    let redis = RedisServer::start_with(&["--requirepass", &redis_password]);
    let redis_url = format!("redis://:{redis_password}@127.0.0.1:{}", redis.port);
    let proxy = ConnectProxy::with_basic_auth("egress", &proxy_password)
        .await
        .expect("start the proxy");
    let proxy_url = format!("http://egress:{proxy_password}@{}", proxy.addr());
    let ca = dir.path().join("ca.pem");
    let emu = Emulator::start(EmulatorConfig {
        genesys: GenesysConfig {
            clients: vec![Credential::new(GENESYS_CLIENT, &client_secret)],
            // Tokens live 3 s, refreshed 1 s early: a rotation every ~2 s.
            token_ttl: Duration::from_secs(3),
            event_interval: Duration::from_millis(50),
            heartbeat_interval: Duration::from_secs(1),
            ..GenesysConfig::default()
        },
        cxone: CxoneConfig {
            access_keys: vec![Credential::new(CXONE_KEY, &key_secret)],
            token_ttl: Duration::from_secs(3),
            event_interval: Duration::from_millis(50),
            ..CxoneConfig::default()
        },
        tls: Some(TlsConfig {
            ca_pem_path: Some(ca.clone()),
            untrusted: false,
        }),
        ..EmulatorConfig::default()
    })
    .await
    .expect("start the emulator");
    let cfg = emu_credentials(&client_secret, &key_secret);
    let (g_creds, c_creds) = (dir.path().join("genesys"), dir.path().join("cxone"));
    write_credential(&g_creds, Platform::Genesys, &cfg.0);
    write_credential(&c_creds, Platform::CxoneDfo, &cfg.1);
    let streams = vec![
        with_ca(
            genesys(&emu, "queue", &topics("s", 1), &g_creds, Timing::default()),
            &ca,
        ),
        with_ca(
            dfo(
                &emu,
                "hub",
                "emulated-tenant",
                "agent-1",
                &c_creds,
                Timing::default(),
            ),
            &ca,
        ),
    ];
    let env = [
        ("https_proxy", proxy_url.as_str()),
        ("HTTPS_PROXY", proxy_url.as_str()),
        ("no_proxy", ""),
        ("NO_PROXY", ""),
    ];
    // `STREAMKEEPER_LOG=debug` (the sidecar's filter, not RUST_LOG): every crate at debug.
    let mut side = SidecarProcess::start(
        dir.path(),
        "secrets",
        streams,
        Some(&redis_url),
        &env,
        "debug",
    );
    let (queue, hub) = (stream_id("queue"), stream_id("hub"));
    for id in [&queue, &hub] {
        side.wait_stream(id.as_str(), BOUND, |e| e["state"] == "ACTIVE")
            .await;
    }
    let mut g_app = App::connect(side.app, &queue, AckMode::All).await;
    let mut c_app = App::connect(side.app, &hub, AckMode::All).await;
    let (mut g_tally, mut c_tally) = (Tally::default(), Tally::default());

    // A rotation on each, then one refused grant on each, then a rotation after it.
    for (client, app, tally) in [
        (GENESYS_CLIENT, &mut g_app, &mut g_tally),
        (CXONE_KEY, &mut c_app, &mut c_tally),
    ] {
        assert!(
            tally
                .read_until(app, BOUND, |t| t.events() >= 20
                    && grants(&emu, client).0 >= 2)
                .await,
            "{client}: events and a rotation within {BOUND:?}: {} events, {:?}",
            tally.events(),
            grants(&emu, client)
        );
    }
    let before = [grants(&emu, GENESYS_CLIENT), grants(&emu, CXONE_KEY)];
    emu.fault(Fault::Genesys(GenesysFault::RefuseToken {
        client: None,
        count: 1,
    }));
    emu.fault(Fault::Cxone(CxoneFault::RefuseToken {
        client: None,
        grant: GrantKind::Any,
        count: 1,
    }));
    for ((client, app, tally), (issued, refused)) in [
        (GENESYS_CLIENT, &mut g_app, &mut g_tally),
        (CXONE_KEY, &mut c_app, &mut c_tally),
    ]
    .into_iter()
    .zip(before)
    {
        assert!(
            tally
                .read_until(app, BOUND, |_| {
                    let (i, r) = grants(&emu, client);
                    r > refused && i >= issued + 2
                })
                .await,
            "{client}: a refused grant, then two more rotations within {BOUND:?}: {:?}",
            grants(&emu, client)
        );
    }

    let (code, status) = http_get(side.admin, "/status").await.expect("/status");
    assert_eq!(code, 200, "{status}");
    assert!(
        status.contains(r#""storeUp":true"#),
        "the Redis store (with its password) is in use: {status}"
    );
    let (code, metrics) = http_get(side.admin, "/metrics").await.expect("/metrics");
    assert_eq!(code, 200, "{metrics}");
    // `streamkeeper status` reads the same password-protected store.
    let mut cli = Running::spawn(&["status", "--redis", &redis_url], "debug");
    let exit = cli.wait(BOUND).await;
    assert!(
        exit.is_some_and(|e| e.success()),
        "streamkeeper status: {exit:?}\n{}",
        cli.stderr_text()
    );
    let cli_out = [cli.stdout.all(), cli.stderr.all()].concat().join("\n");
    assert!(
        cli_out.contains(queue.as_str()) && cli_out.contains(hub.as_str()),
        "streamkeeper status lists both streams:\n{cli_out}"
    );
    side.stop().await;

    let text = std::fs::read_to_string(&side.config).expect("the config file");
    let loaded = SidecarConfig::from_yaml(&text).expect("the config loads");
    let config_debug = format!("{:?}", loaded.config);
    assert!(
        config_debug.contains("RedisUrl"),
        "the loaded config has its Redis URL: {config_debug}"
    );
    let stderr = side.child.stderr.all().join("\n");
    let stdout = side.child.stdout.all().join("\n");
    assert!(
        stderr.contains("config loaded") && stderr.contains("DEBUG"),
        "the run logged at debug level, the config as loaded included"
    );
    let tokens = emu.issued_tokens();
    let (g, c) = (grants(&emu, GENESYS_CLIENT).0, grants(&emu, CXONE_KEY).0);
    assert!(
        tokens.len() as u64 >= g + c && g >= 4 && c >= 4,
        "every grant's token is known: {} tokens for {g} + {c} grants",
        tokens.len()
    );
    let mut needles = vec![
        ("the Genesys client secret".to_owned(), client_secret),
        ("the CXone access key secret".to_owned(), key_secret),
        ("the Redis password".to_owned(), redis_password),
        ("the proxy password".to_owned(), proxy_password),
    ];
    needles.extend(
        tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| (format!("issued token #{}", i + 1), t)),
    );
    let sources = [
        ("stderr", stderr.as_str()),
        ("stdout", stdout.as_str()),
        ("/status", status.as_str()),
        ("/metrics", metrics.as_str()),
        ("config Debug", config_debug.as_str()),
        ("streamkeeper status", cli_out.as_str()),
    ];
    let found = hits(&sources, &needles);
    eprintln!(
        "searched {} stderr lines, {} stdout lines, /status, /metrics, the config's Debug and `streamkeeper status` for {} secrets",
        stderr.lines().count(),
        stdout.lines().count(),
        needles.len()
    );
    assert!(found.is_empty(), "secrets found:\n{}", found.join("\n"));
    // The search itself can fail: the redacted URL is there, and a planted secret is found.
    assert!(config_debug.contains("<redacted>"), "{config_debug}");
    let planted = hits(
        &[("planted", "x Bearer abc123 y")],
        &[("planted".into(), "abc123".into())],
    );
    assert_eq!(planted, ["planted line 1: planted"]);
    emu.shutdown().await;
}

/// The credentials the emulator accepts, as the sidecar's files hold them.
fn emu_credentials(client_secret: &str, key_secret: &str) -> (Credential, Credential) {
    (
        Credential::new(GENESYS_CLIENT, client_secret),
        Credential::new(CXONE_KEY, key_secret),
    )
}
