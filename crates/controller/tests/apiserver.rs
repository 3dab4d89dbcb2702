//! The controller against a real kube-apiserver and etcd (crates/testkit), in this process,
//! one namespace per test. Each test is named for the scenario it proves.

mod common;

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use common::*;
use streamkeeper_api::{StreamState, crd::StreamConnection};
use streamkeeper_coord::{Acquired, Beat, BeatOutcome, ConnRecord, RedisStore, Store, StreamKey};
use streamkeeper_testkit::redis::RedisServer;

/// Time for the controller to converge on a few dozen objects on a busy two-core machine.
const CONVERGE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn invalid_specs_are_rejected_by_the_api_server_naming_the_field() {
    let c = k8s();
    let ns = c.namespace("invalid");
    let base = sconn(&ns, "bad", "acme", 500, "wem");
    let cxone = |platform: &str, heartbeat: &str| {
        base.replace("platform: genesys", &format!("platform: {platform}"))
            .replace(
                "  region: mypurecloud.com\n",
                &format!(
                    "  endpoints: {{login: 'https://l.example.com', stream: 'wss://s.example.com/ws'}}\n  {heartbeat}\n"
                ),
            )
    };
    let cases: Vec<(String, &str)> = vec![
        (
            base.replace("  topics:", "  heartbeat: {interval: 40s, timeout: 30s}\n  topics:"),
            "spec.heartbeat.timeout",
        ),
        (
            base.replace("  topics:", "  heartbeat: {interval: 2s, timeout: 30s}\n  topics:"),
            "spec.heartbeat.interval",
        ),
        (
            base.replace("  topics:", "  heartbeat: {interval: 15s, timeout: 50s}\n  topics:"),
            "spec.heartbeat.timeout",
        ),
        // One field of the pair given: checked against the platform's own other one
        // (genesys 15s / 35s, cxone-aah 10s / 25s, cxone-dfo 30s / 45s).
        (
            base.replace("  topics:", "  heartbeat: {interval: 40s}\n  topics:"),
            "spec.heartbeat.timeout",
        ),
        (
            base.replace("  topics:", "  heartbeat: {timeout: 12s}\n  topics:"),
            "spec.heartbeat.timeout",
        ),
        (
            cxone("cxone-aah", "heartbeat: {interval: 30s}"),
            "spec.heartbeat.timeout",
        ),
        (
            cxone("cxone-dfo", "heartbeat: {timeout: 20s}"),
            "spec.heartbeat.timeout",
        ),
        (base.replace("priority: 500", "priority: 1001"), "spec.priority"),
        (base.replace("region: mypurecloud.com", "region: example.com"), "spec.region"),
        (
            base.replace(
                "  region: mypurecloud.com\n",
                "  region: mypurecloud.com\n  endpoints: {api: 'https://a.example.com', login: 'https://l.example.com'}\n",
            ),
            "region or endpoints",
        ),
        (base.replace("  region: mypurecloud.com\n", ""), "region or endpoints"),
        (base.replace("platform: genesys", "platform: teams"), "spec.platform"),
        (
            base.replace("  topics: [v2.routing.queues.q1.conversations]\n", ""),
            "spec.topics",
        ),
        (base.replace("tenant: acme", "tenant: \"ac{me}\""), "spec.tenant"),
        (base.replace("kind: Deployment", "kind: DaemonSet"), "spec.workloadRef.kind"),
        (base.replace("name: bad,", "name: bad.dotted,"), "metadata.name"),
        (
            base.replace("platform: genesys", "platform: generic")
                .replace(
                    "  region: mypurecloud.com\n",
                    "  endpoints: {api: 'https://a.example.com', login: 'https://l.example.com'}\n",
                ),
            "spec.endpoints",
        ),
    ];
    for (yaml, field) in &cases {
        let out = c.apply(yaml);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "accepted, expected a complaint about {field}:\n{yaml}"
        );
        assert!(err.contains(field), "the error should name {field}: {err}");
    }
    // And the good one passes, with the defaults filled in by the schema; the heartbeat it
    // leaves out stays out (the platform's own is resolved when the config is rendered).
    apply_ok(c, &base);
    let client = c.client().await;
    let sc = stream(&client, &ns, "bad").await.expect("stored");
    assert_eq!(sc.spec.heartbeat.timeout, None);
    assert_eq!(
        sc.spec.heartbeat.resolve(sc.spec.platform).timeout,
        Duration::from_secs(35)
    );
    assert_eq!(sc.spec.priority, 500);
}

#[tokio::test]
async fn sixty_streams_over_two_tenants_fill_their_pools_and_a_priority_900_stream_preempts_the_lowest_within_5s()
 {
    let c = k8s();
    let ns = c.namespace("pool");
    let client = c.client().await;
    let ctl = InProcess::start(&ns, limits(50, &[("acme", 50), ("globex", 10)]), None, None).await;
    let mut yaml = String::new();
    let prios = [100u16, 300, 500, 700];
    for i in 0..45 {
        yaml += &sconn(
            &ns,
            &format!("acme-{i:02}"),
            "acme",
            prios[i % 4],
            &format!("wl-a{}", i % 3),
        );
        yaml += "---\n";
    }
    for i in 0..15 {
        yaml += &sconn(
            &ns,
            &format!("globex-{i:02}"),
            "globex",
            prios[i % 4],
            &format!("wl-g{}", i % 2),
        );
        yaml += "---\n";
    }
    apply_ok(c, &yaml);

    let all = eventually(CONVERGE, "every stream Active or Queued", || {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let s = streams(&client, &ns).await;
            let done = s.len() == 60
                && s.iter()
                    .all(|x| matches!(phase(x).as_deref(), Some("Active" | "Queued")));
            done.then_some(s)
        }
    })
    .await;
    // The expected admission, computed here from the objects: priority, then age, then name.
    let expected = |s: &[StreamConnection], tenant: &str, limit: usize| -> Vec<String> {
        let mut v: Vec<&StreamConnection> = s
            .iter()
            .filter(|x| x.spec.tenant.as_str() == tenant)
            .collect();
        v.sort_by_key(|x| {
            (
                std::cmp::Reverse(x.spec.priority),
                x.metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.as_second()),
                x.metadata.name.clone(),
            )
        });
        v.into_iter()
            .take(limit)
            .filter_map(|x| x.metadata.name.clone())
            .collect()
    };
    let mut admitted: BTreeSet<String> = expected(&all, "acme", 50).into_iter().collect();
    let globex = expected(&all, "globex", 10);
    assert_eq!(
        admitted.len(),
        45,
        "acme (45 streams, limit 50) is admitted whole"
    );
    admitted.extend(globex.iter().cloned());
    for s in &all {
        let name = s.metadata.name.clone().unwrap_or_default();
        let want = if admitted.contains(&name) {
            "Active"
        } else {
            "Queued"
        };
        assert_eq!(phase(s).as_deref(), Some(want), "{name}");
    }
    let in_maps = |client: kube::Client, ns: String| async move {
        let mut all = BTreeSet::new();
        for w in ["wl-a0", "wl-a1", "wl-a2", "wl-g0", "wl-g1"] {
            for id in config_streams(&client, &ns, w).await.unwrap_or_default() {
                // Each stream sits in its own workload's ConfigMap.
                let name = id
                    .split_once('/')
                    .map(|(_, n)| n.to_owned())
                    .unwrap_or_default();
                let i: usize = name
                    .rsplit('-')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(99);
                let want = if name == "globex-urgent" {
                    "wl-g0".to_owned()
                } else if name.starts_with("acme") {
                    format!("wl-a{}", i % 3)
                } else {
                    format!("wl-g{}", i % 2)
                };
                assert_eq!(w, want, "{id} is in the wrong ConfigMap");
                all.insert(name);
            }
        }
        all
    };
    let maps = eventually(
        CONVERGE,
        "ConfigMaps hold exactly the admitted streams",
        || {
            let (client, ns, admitted) = (client.clone(), ns.clone(), admitted.clone());
            async move {
                let m = in_maps(client, ns).await;
                (m == admitted).then_some(m)
            }
        },
    )
    .await;
    assert_eq!(maps.len(), 55);

    // A priority-900 stream joins the full tenant: it takes the slot of globex's lowest.
    let lowest = globex.last().cloned().expect("ten admitted");
    let started = tokio::time::Instant::now();
    apply_ok(c, &sconn(&ns, "globex-urgent", "globex", 900, "wl-g0"));
    eventually(
        Duration::from_secs(5),
        "the urgent stream admitted and the lowest preempted",
        || {
            let (client, ns, lowest) = (client.clone(), ns.clone(), lowest.clone());
            async move {
                let urgent = stream(&client, &ns, "globex-urgent").await?;
                let low = stream(&client, &ns, &lowest).await?;
                let maps = in_maps(client.clone(), ns.clone()).await;
                let events = events_about(&client, &ns, &lowest).await;
                let ok = phase(&urgent).as_deref() == Some("Active")
                    && phase(&low).as_deref() == Some("Preempted")
                    && maps.contains("globex-urgent")
                    && !maps.contains(&lowest)
                    && events
                        .iter()
                        .any(|(r, t, _)| r == "Preempted" && t == "Warning");
                ok.then_some(())
            }
        },
    )
    .await;
    eprintln!(
        "preemption observed {:?} after the apply",
        started.elapsed()
    );
    // Nothing else moved.
    let after = streams(&client, &ns).await;
    let active = after
        .iter()
        .filter(|s| phase(s).as_deref() == Some("Active"))
        .count();
    assert_eq!(active, 55);
    ctl.stop().await.expect("clean stop");
}

#[tokio::test]
async fn kubectl_get_sconn_shows_the_printer_columns_and_describe_shows_conditions_and_events() {
    let c = k8s();
    let ns = c.namespace("print");
    let client = c.client().await;
    let ctl = InProcess::start(&ns, limits(1, &[]), None, None).await;
    apply_ok(c, &sconn(&ns, "first", "acme", 500, "wem"));
    eventually(CONVERGE, "first Active", || {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            (phase(&stream(&client, &ns, "first").await?).as_deref() == Some("Active"))
                .then_some(())
        }
    })
    .await;
    apply_ok(c, &sconn(&ns, "second", "acme", 100, "wem"));
    eventually(CONVERGE, "second Queued", || {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            (phase(&stream(&client, &ns, "second").await?).as_deref() == Some("Queued"))
                .then_some(())
        }
    })
    .await;
    let table = c.kubectl_ok(&["get", "sconn", "-n", &ns]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "TENANT",
            "PLATFORM",
            "PRIORITY",
            "PHASE",
            "OWNER",
            "LAST-PONG",
            "AGE"
        ],
        "{table}"
    );
    let row = |name: &str| -> Vec<String> {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}: {table}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(row("first")[1..5], ["acme", "genesys", "500", "Active"]);
    assert_eq!(row("second")[1..5], ["acme", "genesys", "100", "Queued"]);

    let described = eventually(CONVERGE, "describe shows the Events", || {
        let out = c.kubectl(&["describe", "sconn", "second", "-n", &ns]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        async move {
            text.contains("Queued")
                .then_some(text)
                .filter(|t| t.contains("Events:") && t.contains("waiting for a slot"))
        }
    })
    .await;
    for needle in [
        "Conditions:",
        "Type:",
        "Ready",
        "Degraded",
        "Last Transition Time:",
        "Observed Generation:",
        "Phase:",
        "Queued",
    ] {
        assert!(
            described.contains(needle),
            "describe lacks {needle:?}:\n{described}"
        );
    }
    let first = c.kubectl_ok(&["describe", "sconn", "first", "-n", &ns]);
    assert!(
        first.contains("Admitted") && first.contains("took a slot in tenant acme's pool"),
        "{first}"
    );
    ctl.stop().await.expect("clean stop");
}

fn record(key: &StreamKey, owner: &str, fence: streamkeeper_api::Fence, now_ms: u64) -> ConnRecord {
    ConnRecord {
        stream: key.stream().clone(),
        tenant: key.tenant().clone(),
        socket_id: Some(streamkeeper_api::ConnectionId("socket-1".into())),
        last_pong: now_ms,
        platform: streamkeeper_api::config::Platform::Genesys,
        state: StreamState::Active,
        retry_count: 0,
        owner: owner.parse().expect("pod"),
        fence,
    }
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[tokio::test]
async fn deleting_a_stream_removes_it_from_its_configmap_and_the_store_behind_the_finalizer() {
    let c = k8s();
    let ns = c.namespace("delete");
    let client = c.client().await;
    let redis = RedisServer::start();
    let store: Arc<dyn Store> = Arc::new(RedisStore::connect(&redis.url()).expect("url"));
    let ctl = InProcess::start(
        &ns,
        limits(50, &[]),
        Some(Arc::clone(&store)),
        Some(redis.url()),
    )
    .await;
    apply_ok(c, &sconn(&ns, "keep", "acme", 500, "wem"));
    apply_ok(c, &sconn(&ns, "gone", "acme", 500, "wem"));
    eventually(CONVERGE, "both rendered", || {
        let (client, ns) = (client.clone(), ns.clone());
        async move { (config_streams(&client, &ns, "wem").await?.len() == 2).then_some(()) }
    })
    .await;
    // A sidecar runs the stream: lease, pool slot, record.
    let key = StreamKey::new(
        "acme".parse().expect("tenant"),
        format!("{ns}/gone").parse().expect("id"),
    );
    let pod: streamkeeper_api::PodName = "wem-pod-1".parse().expect("pod");
    let ttl = Duration::from_secs(30);
    let Acquired::Granted { fence, .. } = store.try_acquire(&key, &pod, ttl).await.expect("store")
    else {
        panic!("lease held by someone");
    };
    assert!(store.pool_acquire(&key, fence, 50).await.expect("pool"));
    store
        .beat(&[Beat {
            key: key.clone(),
            fence,
            record: record(&key, "wem-pod-1", fence, epoch_ms()),
            lease_ttl: ttl,
        }])
        .await
        .into_iter()
        .for_each(|o| assert_eq!(o, BeatOutcome::Renewed, "beat"));
    // The status reads the store: owner and lastPong.
    eventually(CONVERGE, "status shows the owner from the store", || {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            let s = stream(&client, &ns, "gone").await?.status?;
            (s.owner.as_deref() == Some("wem-pod-1") && s.last_pong.is_some()).then_some(())
        }
    })
    .await;
    let sc = stream(&client, &ns, "gone").await.expect("exists");
    assert!(
        sc.metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == "streamkeeper.dev/cleanup")
    );

    c.kubectl_ok(&["delete", "sconn", "gone", "-n", &ns, "--wait=false"]);
    eventually(CONVERGE, "the object is gone (finalizer released)", || {
        let (client, ns) = (client.clone(), ns.clone());
        async move { stream(&client, &ns, "gone").await.is_none().then_some(()) }
    })
    .await;
    let left = config_streams(&client, &ns, "wem")
        .await
        .expect("ConfigMap");
    assert_eq!(left, BTreeSet::from([format!("{ns}/keep")]));
    let records = store.records().await.expect("records");
    assert!(
        records.iter().all(|r| &r.stream != key.stream()),
        "the record stays: {records:?}"
    );
    // The lease went with it: another pod takes the stream at once, with a higher fence.
    let other: streamkeeper_api::PodName = "wem-pod-2".parse().expect("pod");
    match store.try_acquire(&key, &other, ttl).await.expect("store") {
        Acquired::Granted { fence: f, .. } => assert!(f > fence),
        held => panic!("the lease was not removed: {held:?}"),
    }
    ctl.stop().await.expect("clean stop");
}

#[tokio::test]
async fn with_the_store_unreachable_the_finalizer_is_released_after_a_bounded_retry_with_an_event()
{
    let c = k8s();
    let ns = c.namespace("unreach");
    let client = c.client().await;
    let mut redis = RedisServer::start();
    let store: Arc<dyn Store> = Arc::new(RedisStore::connect(&redis.url()).expect("url"));
    let ctl = InProcess::start(&ns, limits(50, &[]), Some(store), Some(redis.url())).await;
    apply_ok(c, &sconn(&ns, "orphan", "acme", 500, "wem"));
    eventually(CONVERGE, "rendered", || {
        let (client, ns) = (client.clone(), ns.clone());
        async move { (config_streams(&client, &ns, "wem").await?.len() == 1).then_some(()) }
    })
    .await;
    redis.stop();
    let started = tokio::time::Instant::now();
    c.kubectl_ok(&["delete", "sconn", "orphan", "-n", &ns, "--wait=false"]);
    eventually(
        CONVERGE,
        "the object is gone although the store is down",
        || {
            let (client, ns) = (client.clone(), ns.clone());
            async move { stream(&client, &ns, "orphan").await.is_none().then_some(()) }
        },
    )
    .await;
    let took = started.elapsed();
    let events = events_about(&client, &ns, "orphan").await;
    let warning = events
        .iter()
        .find(|(r, _, _)| r == "StoreCleanupFailed")
        .unwrap_or_else(|| panic!("no StoreCleanupFailed Event: {events:?}"));
    assert_eq!(warning.1, "Warning");
    assert!(
        warning.2.contains("store was unreachable after 3 attempts"),
        "{}",
        warning.2
    );
    assert_eq!(
        config_streams(&client, &ns, "wem").await,
        Some(BTreeSet::new())
    );
    eprintln!("finalizer released {took:?} after the delete, with the store down");
    ctl.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_stream_that_moves_leaves_its_old_configmap_and_frees_its_slot_for_the_next_in_its_old_pool()
 {
    let c = k8s();
    let ns = c.namespace("move");
    let client = c.client().await;
    let ctl = InProcess::start(&ns, limits(1, &[]), None, None).await;
    apply_ok(c, &sconn(&ns, "first", "acme", 900, "wl-a"));
    apply_ok(c, &sconn(&ns, "second", "acme", 500, "wl-a"));
    let state = |client: kube::Client, ns: String| async move {
        let first = phase(&stream(&client, &ns, "first").await?)?;
        let second = phase(&stream(&client, &ns, "second").await?)?;
        let a = config_streams(&client, &ns, "wl-a")
            .await
            .unwrap_or_default();
        let b = config_streams(&client, &ns, "wl-b")
            .await
            .unwrap_or_default();
        Some((first, second, a, b))
    };
    let id = |n: &str| format!("{ns}/{n}");
    eventually(CONVERGE, "first Active, second Queued (limit 1)", || {
        let (client, ns) = (client.clone(), ns.clone());
        let want = BTreeSet::from([id("first")]);
        async move {
            let (f, s, a, _) = state(client, ns).await?;
            (f == "Active" && s == "Queued" && a == want).then_some(())
        }
    })
    .await;

    // First moves to another tenant and workload: it leaves wl-a's ConfigMap, and its slot in
    // acme's pool goes to second at once (not at the next resync).
    let started = tokio::time::Instant::now();
    apply_ok(c, &sconn(&ns, "first", "globex", 900, "wl-b"));
    eventually(
        CONVERGE,
        "second admitted into wl-a, first only in wl-b",
        || {
            let (client, ns) = (client.clone(), ns.clone());
            let (want_a, want_b) = (
                BTreeSet::from([id("second")]),
                BTreeSet::from([id("first")]),
            );
            async move {
                let (f, s, a, b) = state(client, ns).await?;
                (f == "Active" && s == "Active" && a == want_a && b == want_b).then_some(())
            }
        },
    )
    .await;
    eprintln!(
        "the move was rendered {:?} after the apply",
        started.elapsed()
    );
    let events = events_about(&client, &ns, "second").await;
    assert!(events.iter().any(|(r, _, _)| r == "Admitted"), "{events:?}");

    // A ConfigMap deleted by hand is written again.
    c.kubectl_ok(&["delete", "configmap", "streamkeeper-wl-b", "-n", &ns]);
    eventually(CONVERGE, "wl-b's ConfigMap is back", || {
        let (client, ns) = (client.clone(), ns.clone());
        let want = BTreeSet::from([id("first")]);
        async move { (config_streams(&client, &ns, "wl-b").await? == want).then_some(()) }
    })
    .await;

    // A move while no controller runs: at start, the workload first left (which no stream
    // names any more) gets a config without streams.
    ctl.stop().await.expect("clean stop");
    apply_ok(c, &sconn(&ns, "first", "globex", 900, "wl-c"));
    let ctl = InProcess::start(&ns, limits(1, &[]), None, None).await;
    eventually(
        CONVERGE,
        "wl-b emptied, first in wl-c, second still in wl-a",
        || {
            let (client, ns) = (client.clone(), ns.clone());
            let (want_a, want_c) = (
                BTreeSet::from([id("second")]),
                BTreeSet::from([id("first")]),
            );
            async move {
                let a = config_streams(&client, &ns, "wl-a").await?;
                let b = config_streams(&client, &ns, "wl-b").await?;
                let cc = config_streams(&client, &ns, "wl-c").await?;
                (a == want_a && b.is_empty() && cc == want_c).then_some(())
            }
        },
    )
    .await;
    ctl.stop().await.expect("clean stop");
}

/// The order that lost a move once under load, forced: another stream's reconcile decides and
/// renders `first` before `first`'s own reconcile ever runs, and `first` moves to another
/// tenant and workload before it does. The reconciler runs here on a cache this test feeds
/// (the controller's watch would pick its own order), against the real API server.
#[tokio::test]
async fn a_stream_moved_before_its_own_first_reconcile_still_leaves_its_old_pool_and_configmap() {
    use kube::runtime::{
        events::{Recorder, Reporter},
        reflector, watcher,
    };
    use streamkeeper_controller::{
        leader::Leadership,
        metrics::Metrics,
        reconcile::{self, Context, Settings},
        runtime::RuntimeView,
    };

    let c = k8s();
    let ns = c.namespace("early-move");
    let client = c.client().await;
    // With the finalizer in place, each reconcile goes straight to the decision.
    let with_finalizer = |yaml: String| {
        yaml.replace(
            &format!("namespace: {ns}}}"),
            &format!(
                "namespace: {ns}, finalizers: [{}]}}",
                streamkeeper_api::crd::FINALIZER
            ),
        )
    };
    apply_ok(c, &with_finalizer(sconn(&ns, "first", "acme", 900, "wl-a")));
    apply_ok(
        c,
        &with_finalizer(sconn(&ns, "second", "acme", 500, "wl-a")),
    );
    let get = |name: &'static str| {
        let (client, ns) = (client.clone(), ns.clone());
        async move { stream(&client, &ns, name).await.expect(name) }
    };

    let (cache, mut feed) = reflector::store::<StreamConnection>();
    feed.apply_watcher_event(&watcher::Event::InitApply(get("first").await));
    feed.apply_watcher_event(&watcher::Event::InitApply(get("second").await));
    feed.apply_watcher_event(&watcher::Event::InitDone);
    let (config_maps, mut cm_feed) = reflector::store();
    cm_feed.apply_watcher_event(&watcher::Event::InitDone);
    let ctx = Arc::new(Context::new(
        client.clone(),
        cache,
        config_maps,
        None,
        Arc::new(RuntimeView::default()),
        Recorder::new(
            client.clone(),
            Reporter {
                controller: reconcile::REPORTER.to_owned(),
                instance: None,
            },
        ),
        Leadership::always(),
        Metrics::new(),
        Settings {
            limits: limits(1, &[]),
            ..Settings::default()
        },
    ));

    // second's reconcile decides the whole pool: first takes the one slot.
    reconcile::reconcile(Arc::new(get("second").await), Arc::clone(&ctx))
        .await
        .expect("second's reconcile");
    let id = |n: &str| format!("{ns}/{n}");
    assert_eq!(
        config_streams(&client, &ns, "wl-a").await,
        Some(BTreeSet::from([id("first")]))
    );
    assert_eq!(phase(&get("first").await).as_deref(), Some("Active"));
    assert_eq!(phase(&get("second").await).as_deref(), Some("Queued"));

    // first moves; its own reconcile runs only now, on the moved object.
    apply_ok(
        c,
        &with_finalizer(sconn(&ns, "first", "globex", 900, "wl-b")),
    );
    let moved = get("first").await;
    feed.apply_watcher_event(&watcher::Event::Apply(moved.clone()));
    reconcile::reconcile(Arc::new(moved), Arc::clone(&ctx))
        .await
        .expect("first's reconcile");
    assert_eq!(
        config_streams(&client, &ns, "wl-a").await,
        Some(BTreeSet::from([id("second")])),
        "first left wl-a and its slot in acme went to second"
    );
    assert_eq!(
        config_streams(&client, &ns, "wl-b").await,
        Some(BTreeSet::from([id("first")]))
    );
    assert_eq!(phase(&get("first").await).as_deref(), Some("Active"));
    assert_eq!(phase(&get("second").await).as_deref(), Some("Active"));
}
