//! One emulator, one sidecar pod with an in-process store, and its app server, all on loopback.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use streamkeeper_api::{
    Endpoint, EventId, SidecarConfig, StreamId, StreamSpec, StreamState,
    config::{
        Credentials, Endpoints, HeartbeatSpec, LimitsSpec, Platform, ReconnectSpec, TokenSpec,
    },
};
use streamkeeper_coord::MemoryStore;
use streamkeeper_emulator::{Emulator, EmulatorConfig};
use streamkeeper_sidecar::{
    app::{
        Hub,
        server::{self as app_server, AppServerConfig, HubDirectory},
    },
    auth::ClientCredentials,
    liveness::HeartbeatPolicy,
    metrics::Metrics,
    net::ProxyPolicy,
    pod::Pod,
    upstream::{Observer, StreamStatus},
};
use streamkeeper_testkit::TempDir;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::recorder::Recorder;

/// The namespace of every test stream: stream `queue` is `e2e/queue` to the sidecar and
/// `queue` to the emulator.
pub const NAMESPACE: &str = "e2e";

/// How long the harness waits for start-up steps (first token, first socket).
pub const START_BOUND: Duration = Duration::from_secs(10);

/// What to start. Second-scale heartbeats by default (ping every 300 ms, dead after 1 s), so
/// the suite is fast.
///
/// ```
/// use std::time::Duration;
/// let opts = streamkeeper_e2e::Options {
///     event_interval: Duration::ZERO,
///     ..streamkeeper_e2e::Options::new(&["queue"])
/// };
/// assert_eq!(opts.streams, ["queue"]);
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    /// Stream names (emulator names; the sidecar's ids are `e2e/{name}`).
    pub streams: Vec<String>,
    /// The emulator's timed events; zero for none (drive them with `Emulator::emit`).
    pub event_interval: Duration,
    /// Heartbeat of the upstream sessions (and of the app server, unless `app_heartbeat`).
    pub heartbeat: HeartbeatSpec,
    /// The app server's heartbeat when it differs from the upstream one.
    pub app_heartbeat: Option<HeartbeatSpec>,
    /// Reconnect backoff.
    pub reconnect: ReconnectSpec,
    /// Frame and buffer limits (also the app server's `max_frame`).
    pub limits: LimitsSpec,
    /// Events the emulator keeps for replay.
    pub history: usize,
    /// Lifetime of the tokens the emulator issues.
    pub token_ttl: Duration,
    /// The sessions' token schedule.
    pub token: TokenSpec,
}

impl Options {
    /// Defaults for these streams.
    pub fn new(streams: &[&str]) -> Self {
        Self {
            streams: streams.iter().map(|s| (*s).to_owned()).collect(),
            event_interval: Duration::from_millis(50),
            heartbeat: HeartbeatSpec {
                interval: Duration::from_millis(300),
                timeout: Duration::from_secs(1),
            },
            app_heartbeat: None,
            reconnect: ReconnectSpec {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(1),
            },
            limits: LimitsSpec::default(),
            history: 100_000,
            token_ttl: Duration::from_secs(3600),
            token: TokenSpec {
                refresh_lead: Duration::from_secs(120),
                retry: Duration::from_secs(1),
            },
        }
    }
}

/// The stream id of emulator stream `name`.
pub fn stream_id(name: &str) -> StreamId {
    StreamId::new(NAMESPACE, name).expect("test stream names are DNS labels")
}

/// Writes the emulator's client id and secret to `dir` (the `credentials.dir` layout).
pub fn write_credentials(emu_cfg: &EmulatorConfig, dir: &Path) {
    ClientCredentials::write_dir(dir, &emu_cfg.client_id, &emu_cfg.client_secret)
        .expect("write the credentials dir");
}

/// The spec of stream `name` against `emu`, with credentials in `creds`.
pub fn stream_spec(emu: &Emulator, name: &str, creds: &Path, opts: &Options) -> StreamSpec {
    stream_spec_at(&emu.base_url(), &emu.stream_url(name), name, creds, opts)
}

/// The spec of stream `name` against a platform whose token and API endpoints are at `base`
/// and whose socket is at `stream_url` (an emulator anywhere: in this process, another one, a
/// network namespace), with credentials in `creds`.
pub fn stream_spec_at(
    base: &str,
    stream_url: &str,
    name: &str,
    creds: &Path,
    opts: &Options,
) -> StreamSpec {
    let base: Endpoint = base.parse().expect("emulator base URL");
    StreamSpec {
        id: stream_id(name),
        tenant: "acme".parse().expect("tenant"),
        platform: Platform::Generic,
        priority: 500,
        endpoints: Endpoints {
            region: None,
            api: Some(base.clone()),
            login: Some(base),
            stream: Some(stream_url.parse().expect("emulator stream URL")),
        }
        .into(),
        credentials: Credentials {
            dir: Some(creds.into()),
            secret: None,
        },
        topics: Vec::new(),
        heartbeat: opts.heartbeat,
        token: opts.token,
        reconnect: opts.reconnect,
        limits: opts.limits,
        tls: None,
    }
}

/// How the pod and its app server run, whatever the streams are.
#[derive(Debug, Clone)]
pub struct Rig {
    /// The app server's heartbeat.
    pub app_heartbeat: HeartbeatSpec,
    /// The app server's largest frame.
    pub max_frame: usize,
    /// The pod's proxy decision (REST and sockets); direct by default, so a proxy in the
    /// test machine's environment never changes a test.
    pub proxy: ProxyPolicy,
}

impl Default for Rig {
    fn default() -> Self {
        Self::from(&Options::new(&[]))
    }
}

impl From<&Options> for Rig {
    /// The app server of [`Options`]: its heartbeat (`app_heartbeat`, else the upstream one)
    /// and `limits.max_frame_bytes`.
    fn from(opts: &Options) -> Self {
        Self {
            app_heartbeat: opts.app_heartbeat.unwrap_or(opts.heartbeat),
            max_frame: opts.limits.max_frame_bytes,
            proxy: ProxyPolicy::direct(),
        }
    }
}

/// A sidecar pod with an in-process store and its app server on loopback, against whatever
/// platform its streams name. Dropping it stops the app server too (without waiting: the stop
/// channel closes); [`shutdown`](LocalPod::shutdown) stops both and waits.
pub struct LocalPod {
    /// The sidecar pod.
    pub pod: Arc<Pod>,
    /// The pod's metrics.
    pub metrics: Arc<Metrics>,
    /// Every session event of the pod.
    pub recorder: Arc<Recorder>,
    /// Where apps connect.
    pub app_addr: SocketAddr,
    /// The config applied to the pod.
    pub config: SidecarConfig,
    stop: watch::Sender<bool>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl std::fmt::Debug for LocalPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPod")
            .field("app_addr", &self.app_addr)
            .finish_non_exhaustive()
    }
}

impl LocalPod {
    /// Starts the pod and its app server under `rig` and applies a config of `streams`; does
    /// not wait for the streams to connect. The one way every test starts an in-process pod.
    pub async fn start(streams: Vec<StreamSpec>, rig: &Rig) -> Self {
        crate::util::init_logs();
        let config = SidecarConfig {
            pod: None,
            listen: "127.0.0.1:0".parse().expect("addr"),
            admin: "127.0.0.1:1".parse().expect("addr"),
            redis: None,
            tenant_limits: Default::default(),
            checkpoint_window: streamkeeper_api::config::DEFAULT_CHECKPOINT_WINDOW,
            max_app_connections: streamkeeper_api::config::DEFAULT_MAX_APP_CONNECTIONS,
            streams,
        };
        config.validate().expect("the test config is valid");

        let recorder = Recorder::new();
        let metrics = Arc::new(Metrics::new());
        let pod = Pod::with_proxy(
            "e2e-pod".parse().expect("pod name"),
            Arc::new(MemoryStore::new()),
            Arc::clone(&metrics),
            Some(Arc::clone(&recorder) as Arc<dyn Observer>),
            rig.proxy.clone(),
        );
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the app endpoint");
        let app_addr = listener.local_addr().expect("app endpoint address");
        let (stop, stop_rx) = watch::channel(false);
        let until = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let server = tokio::spawn(app_server::serve(
            listener,
            Arc::clone(&pod) as Arc<dyn HubDirectory>,
            AppServerConfig {
                max_frame: rig.max_frame,
                heartbeat: HeartbeatPolicy::from(rig.app_heartbeat),
                ..AppServerConfig::default()
            },
            until(stop_rx.clone()),
        ));
        // The pod-wide loops stop with the pod's shutdown (leases drained there).
        drop(pod.spawn_loops(until(stop_rx)));
        pod.apply(&config).expect("the pod accepts the test config");
        Self {
            pod,
            metrics,
            recorder,
            app_addr,
            config,
            stop,
            server: Some(server),
        }
    }

    /// The stream's hub (its unacked events, acks).
    pub fn hub(&self, id: &StreamId) -> Arc<Hub> {
        HubDirectory::hub(&*self.pod, id).expect("the pod runs this stream")
    }

    /// The stream's live status.
    pub fn status(&self, id: &StreamId) -> StreamStatus {
        self.pod
            .stream_status(id)
            .expect("the pod runs this stream")
    }

    /// Waits (bounded) until the hub's last ack reached `id`. Acks are cumulative and the hub
    /// keeps only the newest, so a later ack that overtook this one counts too.
    pub async fn wait_acked(&self, stream: &StreamId, id: &EventId) {
        let target = crate::event_seq(id);
        tokio::time::timeout(
            Duration::from_secs(3),
            self.hub(stream)
                .wait_for_ack(|a| crate::event_seq(a) >= target),
        )
        .await
        .unwrap_or_else(|_| panic!("the hub never saw the ack of {id:?}"));
    }

    /// Waits until the stream has been ACTIVE at least once (from the start of the recording).
    pub async fn wait_active(&self, id: &StreamId) {
        self.recorder
            .wait_for(0, START_BOUND, &format!("ACTIVE for {id}"), |s| {
                &s.stream == id && s.is_state(StreamState::Active)
            })
            .await;
    }

    /// Stops the pod (streams, then leases) and the app server, and waits.
    pub async fn shutdown(mut self) {
        self.pod.shutdown(Duration::from_secs(3)).await;
        self.stop.send_replace(true);
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        }
    }
}

/// A running emulator, pod and app server. The pod's fields and methods ([`LocalPod`]) are
/// reached through it (`h.recorder`, `h.status(&id)`). Dropping it stops the emulator and the
/// app server too (without waiting); [`shutdown`](Harness::shutdown) stops them and waits.
pub struct Harness {
    /// The platform emulator.
    pub emu: Emulator,
    local: LocalPod,
    _dir: TempDir,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("app_addr", &self.local.app_addr)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for Harness {
    type Target = LocalPod;

    fn deref(&self) -> &LocalPod {
        &self.local
    }
}

impl Harness {
    /// Starts a `generic` emulator with `opts.streams` and a pod running them; does not wait
    /// for the streams to connect.
    pub async fn start(opts: Options) -> Self {
        let emu_cfg = EmulatorConfig {
            streams: opts.streams.clone(),
            event_interval: opts.event_interval,
            history: opts.history,
            token_ttl: opts.token_ttl,
            ..EmulatorConfig::default()
        };
        let rig = Rig::from(&opts);
        Self::start_with(emu_cfg, rig, move |emu, emu_cfg, dir| {
            let creds = dir.join("credentials");
            write_credentials(emu_cfg, &creds);
            opts.streams
                .iter()
                .map(|s| stream_spec(emu, s, &creds, &opts))
                .collect()
        })
        .await
    }

    /// Starts an emulator with `emu_cfg` and a [`LocalPod`] under `rig` running the streams
    /// `specs` makes (given the emulator, its config and a scratch directory for credentials):
    /// any platform, any number of streams.
    pub async fn start_with(
        emu_cfg: EmulatorConfig,
        rig: Rig,
        specs: impl FnOnce(&Emulator, &EmulatorConfig, &Path) -> Vec<StreamSpec>,
    ) -> Self {
        crate::util::init_logs();
        let dir = TempDir::new("harness");
        let emu = Emulator::start(emu_cfg.clone())
            .await
            .expect("start the emulator");
        let streams = specs(&emu, &emu_cfg, dir.path());
        let local = LocalPod::start(streams, &rig).await;
        Self {
            emu,
            local,
            _dir: dir,
        }
    }

    /// The scratch directory (credentials live under it).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// The sidecar's id of emulator stream `name`.
    pub fn stream_id(&self, name: &str) -> StreamId {
        stream_id(name)
    }

    /// Stops the pod (streams, then leases), the app server and the emulator, and waits.
    pub async fn shutdown(self) {
        let Self { emu, local, .. } = self;
        local.shutdown().await;
        emu.shutdown().await;
    }
}
