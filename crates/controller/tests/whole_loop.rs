//! The whole loop without a kubelet: `kubectl apply` a StreamConnection (platform generic,
//! pointing at the emulator); the controller writes the ConfigMap; its `sidecar.yaml` is
//! handed to a real `streamkeeper sidecar` process with a real Redis; the status turns Active
//! with owner and lastPong; a reset at the emulator yields StreamDead then Recovered Events.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use streamkeeper_api::SidecarConfig;
use streamkeeper_coord::{RedisStore, Store};
use streamkeeper_e2e::{process::Running, util::free_port};
use streamkeeper_emulator::{Emulator, EmulatorConfig, Fault};
use streamkeeper_testkit::redis::RedisServer;

#[tokio::test]
async fn apply_a_stream_the_controller_renders_a_real_sidecar_runs_it_status_turns_active_and_a_fault_yields_dead_then_recovered()
 {
    let c = k8s();
    let ns = c.namespace("loop");
    let client = c.client().await;
    let redis = RedisServer::start();
    let emu = Emulator::start(EmulatorConfig {
        streams: vec!["queue-events".into()],
        event_interval: Duration::from_millis(200),
        ..EmulatorConfig::default()
    })
    .await
    .expect("emulator");
    let store: Arc<dyn Store> = Arc::new(RedisStore::connect(&redis.url()).expect("url"));
    let ctl = InProcess::start(&ns, limits(50, &[]), Some(store), Some(redis.url())).await;

    let base = emu.base_url();
    let yaml = format!(
        "apiVersion: streamkeeper.dev/v1alpha1\nkind: StreamConnection\nmetadata: {{name: queue-events, namespace: {ns}}}\n\
         spec:\n  platform: generic\n  tenant: acme\n  priority: 700\n  workloadRef: {{kind: Deployment, name: wem}}\n\
         \x20 endpoints: {{api: '{base}', login: '{base}', stream: '{}'}}\n\
         \x20 credentialsSecretRef: {{name: emulator-creds}}\n  heartbeat: {{interval: 5s, timeout: 12s}}\n",
        emu.stream_url("queue-events")
    );
    apply_ok(c, &yaml);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let rendered = eventually(
        Duration::from_secs(60),
        "the ConfigMap holds the stream",
        || {
            let cms = cms.clone();
            async move {
                let cm = cms.get_opt("streamkeeper-wem").await.ok()??;
                let y = cm.data?.get("sidecar.yaml")?.clone();
                y.contains("queue-events").then_some(y)
            }
        },
    )
    .await;

    // What a kubelet mount differs in: the Secret's files live elsewhere here, and the pod's
    // own network namespace is the host's (so the fixed ports become free ones).
    let dir = c.dir().join(format!("creds-{ns}"));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("clientId"), "streamkeeper").expect("write");
    std::fs::write(dir.join("clientSecret"), "streamkeeper-secret").expect("write");
    let mut cfg = SidecarConfig::from_yaml(&rendered)
        .expect("the controller's config loads")
        .config;
    assert_eq!(
        cfg.redis.as_ref().map(|u| u.expose()),
        Some(redis.url().as_str())
    );
    assert!(cfg.pod.is_none());
    for s in &mut cfg.streams {
        assert_eq!(
            s.credentials.dir.as_deref(),
            Some(std::path::Path::new(
                "/var/run/streamkeeper/credentials/emulator-creds"
            ))
        );
        s.credentials.dir = Some(dir.clone().into());
    }
    cfg.listen = ([127, 0, 0, 1], free_port()).into();
    cfg.admin = ([127, 0, 0, 1], free_port()).into();
    let file = c.dir().join(format!("sidecar-{ns}.yaml"));
    std::fs::write(&file, serde_yaml_ng::to_string(&cfg).expect("yaml")).expect("write");
    let file_s = file.to_string_lossy().into_owned();
    let sidecar = Running::spawn(&["sidecar", "--config", &file_s], "info");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_owned();

    eventually(
        Duration::from_secs(60),
        "status Active with owner and lastPong",
        || {
            let (client, ns, host) = (client.clone(), ns.clone(), host.clone());
            async move {
                let s = stream(&client, &ns, "queue-events").await?.status?;
                let ready = s
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                (s.phase.map(|p| p.to_string()).as_deref() == Some("Active")
                    && s.owner.as_deref() == Some(host.as_str())
                    && s.last_pong.is_some()
                    && ready)
                    .then_some(())
            }
        },
    )
    .await;

    emu.fault(Fault::Reset {
        stream: Some("queue-events".into()),
    });
    let events = eventually(
        Duration::from_secs(60),
        "StreamDead then Recovered Events",
        || {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                let dead = *event_times(&client, &ns, "queue-events", "StreamDead")
                    .await
                    .first()?;
                let recovered = *event_times(&client, &ns, "queue-events", "Recovered")
                    .await
                    .last()?;
                (dead <= recovered).then_some(events_about(&client, &ns, "queue-events").await)
            }
        },
    )
    .await;
    let dead = events
        .iter()
        .find(|(r, t, _)| r == "StreamDead" && t == "Warning")
        .expect("dead");
    assert!(
        dead.2.contains("tcp_error") || dead.2.contains("server_close"),
        "{dead:?}"
    );
    let s = stream(&client, &ns, "queue-events")
        .await
        .and_then(|s| s.status)
        .expect("status");
    assert!(s.reconnects.unwrap_or(0) >= 1, "{s:?}");
    assert!(s.last_drop_reason.is_some(), "{s:?}");
    assert!(
        sidecar.stderr_text().contains("connected"),
        "{}",
        sidecar.stderr_text()
    );
    drop(sidecar);
    ctl.stop().await.expect("clean stop");
    emu.shutdown().await;
}
