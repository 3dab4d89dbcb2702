//! `streamkeeper sidecar --config FILE`: load the config, start the pod, the app server and the
//! admin server, apply config changes without a restart, and shut down cleanly on SIGTERM
//! (leases released so standbys take over at once).

use std::{path::PathBuf, sync::Arc, time::Duration};

use streamkeeper_api::{PodName, SidecarConfig, config::Loaded};
use streamkeeper_coord::{MemoryStore, RedisStore, Store};
use tokio::{net::TcpListener, sync::watch};

use crate::{admin, app, liveness::HeartbeatPolicy, metrics::Metrics, pod::Pod};

/// How often the config file is checked for changes (ConfigMap updates swap a symlink, which
/// file watchers miss; reading a small file once a second is cheap and always right).
const RELOAD_POLL: Duration = Duration::from_secs(1);

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The config file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config is invalid.
    #[error("{path}: {error}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The field and problem.
        error: streamkeeper_api::ConfigError,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what})")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The store could not be set up.
    #[error("store: {0}")]
    Store(String),
}

/// Reads and validates a config file, logging its warnings.
pub fn load(path: &PathBuf) -> Result<SidecarConfig, RunError> {
    let text = std::fs::read_to_string(path).map_err(|source| RunError::Read {
        path: path.clone(),
        source,
    })?;
    let Loaded { config, warnings } =
        SidecarConfig::from_yaml(&text).map_err(|error| RunError::Config {
            path: path.clone(),
            error,
        })?;
    for w in warnings {
        tracing::warn!(file = %path.display(), "{w}");
    }
    // The config as understood, for debugging a deployment; its Debug hides the secrets it
    // holds (the Redis password).
    tracing::debug!(file = %path.display(), ?config, "config loaded");
    Ok(config)
}

/// This pod's name: the config's, else `$POD_NAME`, else the hostname.
pub fn pod_name(config: &SidecarConfig) -> PodName {
    if let Some(p) = &config.pod {
        return p.clone();
    }
    let candidates = [
        std::env::var("POD_NAME").ok(),
        std::env::var("HOSTNAME").ok(),
        std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|s| s.trim().to_owned()),
    ];
    candidates
        .into_iter()
        .flatten()
        .find_map(|c| c.parse().ok())
        .unwrap_or_else(|| {
            format!("sidecar-{}", std::process::id())
                .parse()
                .expect("sidecar-<pid> is a valid pod name")
        })
}

/// Builds the store the config names.
pub fn store_for(config: &SidecarConfig) -> Result<Arc<dyn Store>, RunError> {
    match &config.redis {
        None => Ok(Arc::new(MemoryStore::new())),
        Some(url) => {
            let store =
                RedisStore::connect(url.expose()).map_err(|e| RunError::Store(e.to_string()))?;
            tracing::info!(redis = %store.target(), "using the Redis store");
            Ok(Arc::new(store))
        }
    }
}

/// Runs the sidecar until SIGTERM or SIGINT.
pub async fn run(path: PathBuf) -> Result<(), RunError> {
    let config = load(&path)?;
    let pod_name = pod_name(&config);
    let store = store_for(&config)?;
    let metrics = Arc::new(Metrics::new());
    let pod = Pod::new(pod_name.clone(), store, Arc::clone(&metrics), None);
    let app_listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| RunError::Bind {
            what: "app endpoint",
            addr: config.listen,
            source,
        })?;
    let admin_listener =
        TcpListener::bind(config.admin)
            .await
            .map_err(|source| RunError::Bind {
                what: "admin endpoint",
                addr: config.admin,
                source,
            })?;
    let applied = pod.apply(&config).map_err(|error| RunError::Config {
        path: path.clone(),
        error,
    })?;
    tracing::info!(pod = %pod_name, streams = applied.started.len(), listen = %config.listen, admin = %config.admin, "sidecar started");

    let (down_tx, down_rx) = watch::channel(false);
    let until_down = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|d| *d).await;
    };
    let loops = pod.spawn_loops(until_down(down_rx.clone()));
    let (app_cfg, app_cfg_rx) = watch::channel(app_config(&config));
    let app = tokio::spawn(app::server::serve_with(
        app_listener,
        Arc::clone(&pod) as Arc<dyn app::server::HubDirectory>,
        app_cfg_rx,
        until_down(down_rx.clone()),
    ));
    let admin = tokio::spawn(admin::serve(
        admin_listener,
        Arc::clone(&metrics),
        Arc::clone(&pod) as Arc<dyn admin::StatusSource>,
        until_down(down_rx.clone()),
    ));

    // Kept for the reload loop: what it compares, not the config (every stream is in the pod
    // already) nor the file (megabytes for 10,000 streams), only its digest.
    let (listen, admin_addr, redis) = (config.listen, config.admin, config.redis.clone());
    drop(config);
    let mut current = std::fs::read(&path).ok().map(|b| digest(&b));
    let mut reload = tokio::time::interval(RELOAD_POLL);
    reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hup = signal(tokio::signal::unix::SignalKind::hangup());
    let mut term = signal(tokio::signal::unix::SignalKind::terminate());
    loop {
        tokio::select! {
            _ = reload.tick() => {}
            _ = recv(&mut hup) => { current = None; }
            _ = recv(&mut term) => break,
            _ = tokio::signal::ctrl_c() => break,
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let read = digest(&bytes);
        drop(bytes);
        if current == Some(read) {
            continue;
        }
        current = Some(read);
        match load(&path) {
            Ok(next) => {
                if next.listen != listen || next.admin != admin_addr || next.redis != redis {
                    tracing::warn!(
                        "listen, admin and redis changes take effect at the next restart"
                    );
                }
                match pod.apply(&next) {
                    Ok(a) => {
                        app_cfg.send_replace(app_config(&next));
                        tracing::info!(started = ?a.started, restarted = ?a.restarted, removed = ?a.removed, kept = a.kept, "config reloaded")
                    }
                    Err(e) => {
                        tracing::error!(file = %path.display(), error = %e, "config refused; running streams kept")
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "config refused; running streams kept"),
        }
    }
    tracing::info!("shutting down: releasing leases");
    pod.shutdown(Duration::from_secs(10)).await;
    let _ = down_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = app.await;
        let _ = admin.await;
        let _ = loops.await;
    })
    .await;
    Ok(())
}

/// The app server's settings for `config` (sent again with every reload): the largest frame
/// any stream accepts, the connection limit, and the shortest stream heartbeat (an app is
/// never pinged less often than its stream's platform socket).
fn app_config(config: &SidecarConfig) -> app::server::AppServerConfig {
    app::server::AppServerConfig {
        max_frame: config
            .streams
            .iter()
            .map(|s| s.limits.max_frame_bytes)
            .max()
            .unwrap_or(1 << 20),
        heartbeat: config
            .streams
            .iter()
            .map(|s| HeartbeatPolicy::from(s.heartbeat))
            .min_by_key(|h| h.interval)
            .unwrap_or(HeartbeatPolicy {
                interval: Duration::from_secs(15),
                timeout: Duration::from_secs(35),
            }),
        max_connections: config.max_app_connections,
    }
}

/// The digest a reload compares (SHA-1: a changed file never looks unchanged by accident).
fn digest(bytes: &[u8]) -> [u8; 20] {
    use sha1::Digest as _;
    sha1::Sha1::digest(bytes).into()
}

fn signal(kind: tokio::signal::unix::SignalKind) -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(kind).ok()
}

async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}
