//! Wiring: the startup check, the admin endpoint, leader election, and, while leading, the
//! controller with its caches and the store watcher. Losing the Lease stops everything that
//! writes (the leader session is one future, dropped at once); SIGTERM (the caller's
//! `shutdown`) stops it and releases the Lease so a standby takes over without waiting.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use futures_util::StreamExt;
use k8s_openapi::api::{coordination::v1::Lease, core::v1::ConfigMap};
use kube::{
    Api, Client, ResourceExt,
    api::ListParams,
    runtime::{
        Controller, WatchStreamExt,
        controller::Config as ControllerConfig,
        events::{Recorder, Reporter},
        reflector::{self, ObjectRef},
        watcher,
    },
};
use streamkeeper_api::crd::StreamConnection;
use streamkeeper_coord::Store;
use tokio::sync::{mpsc, watch};

use crate::{
    admin::{self, Admin},
    admission::Limits,
    leader::{self, LeaderConfig, Leadership},
    metrics::Metrics,
    reconcile::{self, Context, REPORTER, Settings},
    render::{self, RenderOptions, WorkloadKey},
    runtime::{self, RuntimeView},
};

/// The Lease the replicas elect a leader on.
pub const LEASE_NAME: &str = "streamkeeper-controller";

/// How long the reconciles running at SIGTERM may take to finish before the Lease is released
/// (well inside the chart's 30 s termination grace period).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Everything `streamkeeper controller` takes.
#[derive(Debug, Clone)]
pub struct Options {
    /// Pool limits.
    pub limits: Limits,
    /// The store the controller reads runtime state from and removes deleted streams from.
    pub redis: Option<String>,
    /// The Redis URL rendered into sidecar configs (default: `redis`).
    pub sidecar_redis: Option<String>,
    /// Watch only this namespace (default: all).
    pub namespace: Option<String>,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub admin: SocketAddr,
    /// The kubeconfig to use (default: `KUBECONFIG` or `~/.kube/config`, else in-cluster).
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The holder identity (default `$POD_NAME`, else the hostname).
    pub identity: Option<String>,
    /// The Lease's namespace (default `$POD_NAMESPACE`, else the kubeconfig context's, else
    /// `default`).
    pub lease_namespace: Option<String>,
    /// `leaseDurationSeconds`.
    pub lease_duration: Duration,
    /// How long a leader acts after its last confirmed renewal.
    pub renew_deadline: Duration,
    /// How often the Lease is renewed or looked at.
    pub retry_period: Duration,
    /// How often every store record is read.
    pub store_poll: Duration,
    /// `lastPong` in status moves in steps of at least this.
    pub pong_granularity: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            redis: None,
            sidecar_redis: None,
            namespace: None,
            admin: SocketAddr::from(([0, 0, 0, 0], 9465)),
            kubeconfig: None,
            identity: None,
            lease_namespace: None,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            store_poll: Duration::from_secs(5),
            pong_granularity: Duration::from_secs(30),
        }
    }
}

/// The one-line hint when the CRD is missing.
pub const CRD_HINT: &str = "the StreamConnection CRD (streamconnections.streamkeeper.dev) is not installed: \
     run `kubectl apply -f crds/` or `helm install streamkeeper charts/streamkeeper`";

/// Refuses to start when the CRD is not installed (listing StreamConnections answers 404).
pub async fn check_crd(client: &Client, namespace: Option<&str>) -> anyhow::Result<()> {
    let api: Api<StreamConnection> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => anyhow::bail!("{CRD_HINT}"),
        Err(e) => Err(e).context("cannot list StreamConnections"),
    }
}

fn identity(opts: &Options) -> String {
    opts.identity
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok().filter(|s| !s.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| format!("streamkeeper-controller-{}", std::process::id()))
}

/// Runs the controller with the kubeconfig (`KUBECONFIG`) or in-cluster config until
/// `shutdown` completes.
pub async fn run(
    opts: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let client = match &opts.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}", path.display()))?;
            let cfg = kube::Config::from_custom_kubeconfig(
                kc,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .with_context(|| format!("--kubeconfig {}", path.display()))?;
            Client::try_from(cfg)?
        }
        None => Client::try_default()
            .await
            .context("no Kubernetes client config (in-cluster, or KUBECONFIG / ~/.kube/config)")?,
    };
    let store: Option<Arc<dyn Store>> = match &opts.redis {
        Some(url) => Some(Arc::new(
            streamkeeper_coord::RedisStore::connect(url).context("--redis")?,
        )),
        None => None,
    };
    run_with(client, store, opts, shutdown).await
}

/// [`run`] with a given client and store (tests use this in-process).
pub async fn run_with(
    client: Client,
    store: Option<Arc<dyn Store>>,
    opts: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let (ready_tx, ready_rx) = watch::channel(Err("starting".to_owned()));
    let bound = admin::spawn(
        opts.admin,
        Admin {
            metrics: metrics.clone(),
            ready: ready_rx,
        },
        stopped(stop_rx.clone()),
    )
    .await
    .with_context(|| format!("cannot listen on --admin {}", opts.admin))?;
    tracing::info!(admin = %bound, "admin endpoint: /metrics /healthz /readyz");
    check_crd(&client, opts.namespace.as_deref()).await?;
    let _ = ready_tx.send(Ok(()));

    let me = identity(&opts);
    let lease_ns = opts
        .lease_namespace
        .clone()
        .or_else(|| {
            std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let cfg = LeaderConfig {
        lease_name: LEASE_NAME.to_owned(),
        identity: me.clone(),
        lease_duration: opts.lease_duration,
        renew_deadline: opts.renew_deadline,
        retry_period: opts.retry_period,
    };
    anyhow::ensure!(
        cfg.renew_deadline < cfg.lease_duration,
        "--renew-deadline must be shorter than --lease-duration"
    );
    tracing::info!(identity = %me, lease = %format!("{lease_ns}/{LEASE_NAME}"), "standing for leader");
    let (lease_tx, lease_rx) = watch::channel(None);
    let lease_api: Api<Lease> = Api::namespaced(client.clone(), &lease_ns);
    // The election stops (and releases the Lease) only once this replica stopped writing.
    let (release_tx, release_rx) = watch::channel(false);
    let election = tokio::spawn(leader::run(lease_api, cfg, lease_tx, stopped(release_rx)));
    let mut leadership = Leadership::new(lease_rx);
    loop {
        tokio::select! {
            _ = leadership.acquired() => {}
            _ = stopped(stop_rx.clone()) => break,
        }
        metrics.leader.set(1);
        let session = lead(
            client.clone(),
            store.clone(),
            &opts,
            &me,
            metrics.clone(),
            leadership.clone(),
            stop_rx.clone(),
        );
        tokio::pin!(session);
        let mut watch_lost = leadership.clone();
        let end = tokio::select! {
            r = &mut session => Some(r),
            _ = watch_lost.lost() => {
                if *stop_rx.borrow() {
                    break;
                }
                tracing::warn!("lost the Lease: the controller stops writing and stands by");
                None
            }
            _ = stopped(stop_rx.clone()) => {
                // The controller starts no new reconcile now; the ones running finish (each
                // write still checks the Lease), bounded, so the next leader starts from
                // finished work. Then the Lease is released.
                if tokio::time::timeout(SHUTDOWN_GRACE, &mut session).await.is_err() {
                    tracing::warn!("reconciles still running after {SHUTDOWN_GRACE:?}: stopping them");
                }
                break;
            }
        };
        metrics.leader.set(0);
        if let Some(Err(e)) = end {
            tracing::error!(error = %format!("{e:#}"), "the controller stopped; standing for leader again");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    metrics.leader.set(0);
    // Nothing of the leader session runs any more: give the Lease up.
    let _ = release_tx.send(true);
    let _ = election.await;
    tracing::info!("stopped");
    Ok(())
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Everything that runs while this replica leads; returns on a fatal error, or once the
/// reconciles running when `stop` came have finished.
async fn lead(
    client: Client,
    store: Option<Arc<dyn Store>>,
    opts: &Options,
    me: &str,
    metrics: Metrics,
    leadership: Leadership,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (sc_api, cm_api): (Api<StreamConnection>, Api<ConfigMap>) = match &opts.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let (cm_cache, cm_writer) = reflector::store();
    let managed = format!("{}={}", render::MANAGED_BY.0, render::MANAGED_BY.1);
    let cm_events = reflector::reflector(
        cm_writer,
        watcher(cm_api, watcher::Config::default().labels(&managed)),
    )
    .default_backoff();
    let controller = Controller::new(sc_api, watcher::Config::default())
        .with_config(ControllerConfig::default().concurrency(16))
        .graceful_shutdown_on(stopped(stop.clone()));
    let streams = controller.store();
    let view = Arc::new(RuntimeView::default());
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: REPORTER.to_owned(),
            instance: Some(me.to_owned()),
        },
    );
    let settings = Settings {
        limits: opts.limits.clone(),
        render: RenderOptions {
            redis: opts.sidecar_redis.clone().or_else(|| opts.redis.clone()),
            limits: opts.limits.clone(),
        },
        pong_granularity: opts.pong_granularity,
        ..Settings::default()
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        streams.clone(),
        cm_cache.clone(),
        store.clone(),
        Arc::clone(&view),
        recorder,
        leadership,
        metrics.clone(),
        settings,
    ));
    let (trigger_tx, trigger_rx) = mpsc::channel::<ObjectRef<StreamConnection>>(4096);
    let triggers = futures_util::stream::unfold(trigger_rx, |mut rx| async move {
        rx.recv().await.map(|r| (r, rx))
    });

    // A ConfigMap that no longer holds what was applied (edited or deleted by hand): render
    // its workload again.
    let cm_ctx = Arc::clone(&ctx);
    let cm_trigger = trigger_tx.clone();
    let cm_watch = cm_events.for_each(move |ev| {
        let ctx = Arc::clone(&cm_ctx);
        let tx = cm_trigger.clone();
        async move {
            // At start (InitApply) only the ConfigMaps of workloads without streams need a
            // look: every stream is reconciled at start anyway, and renders its workload.
            let (cm, initial, removed) = match ev {
                Ok(watcher::Event::Apply(cm)) => (cm, false, false),
                Ok(watcher::Event::Delete(cm)) => (cm, false, true),
                Ok(watcher::Event::InitApply(cm)) => (cm, true, false),
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "ConfigMap watch");
                    return;
                }
            };
            let (Some(ns), Some(name)) = (
                cm.namespace(),
                cm.labels().get(render::WORKLOAD_LABEL).cloned(),
            ) else {
                return;
            };
            let wk = WorkloadKey {
                namespace: ns,
                name,
            };
            let data = cm
                .data
                .as_ref()
                .and_then(|d| d.get(render::CONFIG_KEY))
                .cloned()
                .unwrap_or_default();
            let deleted = removed || cm.metadata.deletion_timestamp.is_some();
            if initial || deleted || !ctx.applied_is(&wk, &data) {
                ctx.invalidate(&wk);
                let member = ctx
                    .streams
                    .state()
                    .into_iter()
                    .find(|s| WorkloadKey::of(s) == wk);
                match member {
                    Some(_) if initial => {}
                    Some(sc) => {
                        let _ = tx.send(ObjectRef::from(sc.as_ref())).await;
                    }
                    // Deleted with no stream left: nothing to bring back.
                    None if deleted => {}
                    None => {
                        if let Err(e) = reconcile::sync_memberless(&ctx, &wk).await {
                            tracing::warn!(workload = %wk, error = %e, "cannot render a ConfigMap without streams");
                        }
                    }
                }
            }
        }
    });

    // The store's runtime view: Events for DEAD / recovered, and a reconcile for each stream
    // whose status may change.
    let store_ctx = Arc::clone(&ctx);
    let poll = opts.store_poll;
    let store_trigger = trigger_tx.clone();
    let store_watch = async move {
        let Some(store) = store else {
            return std::future::pending::<()>().await;
        };
        let (tx, mut rx) = mpsc::channel(4096);
        let watcher = runtime::watch_store(
            store,
            view,
            poll,
            store_ctx.settings.pong_granularity,
            store_ctx.metrics.clone(),
            tx,
        );
        let consume = async {
            while let Some(change) = rx.recv().await {
                if let Some(ev) = &change.event {
                    reconcile::publish_runtime(&store_ctx, &change.stream, ev).await;
                }
                let r = ObjectRef::new(change.stream.name()).within(change.stream.namespace());
                if store_trigger.send(r).await.is_err() {
                    return;
                }
            }
        };
        tokio::join!(watcher, consume);
    };

    let count_ctx = Arc::clone(&ctx);
    let run = controller
        .reconcile_on(triggers)
        .run(
            reconcile::reconcile,
            reconcile::error_policy,
            Arc::clone(&ctx),
        )
        .for_each(move |r| {
            count_ctx
                .metrics
                .streams
                .set(count_ctx.streams.len() as i64);
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller");
            }
            std::future::ready(())
        });
    tokio::select! {
        _ = run => {
            anyhow::ensure!(*stop.borrow(), "the StreamConnection watch ended");
            Ok(())
        }
        _ = cm_watch => anyhow::bail!("the ConfigMap watch ended"),
        _ = store_watch => anyhow::bail!("the store watch ended"),
    }
}
