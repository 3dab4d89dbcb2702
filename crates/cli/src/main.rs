//! `streamkeeper`: the one binary. `main` parses flags and calls one function per subcommand.

mod controller;
mod crdgen;
mod demo;
mod emulate;
mod entry;
mod inject;
mod render;
mod status;
mod yaml_input;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use entry::init_tracing;

/// Keeps contact-center real-time streams (Genesys Cloud CX, NICE CXone) alive and correct.
#[derive(Debug, Parser)]
#[command(name = "streamkeeper", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the sidecar: own the platform sockets of this pod and serve the app over localhost
    /// (pods run the same as the lean `streamkeeper-sidecar` binary).
    Sidecar(entry::SidecarArgs),
    /// Run the platform emulator (generic, Genesys, CXone DFO and AAH, optionally over TLS)
    /// with its fault API, for tests and benchmarks.
    Emulate(Box<emulate::EmulateArgs>),
    /// The newcomer's tour: an emulator, four sidecar pods (generic, Genesys and CXone streams)
    /// and their apps in one process, a scripted fault scenario with token rotations, a live
    /// timeline and a scorecard. Exits 0 when every check holds.
    Demo {
        /// Print only the scorecard.
        #[arg(long)]
        quiet: bool,
    },
    /// Run the operator: admit StreamConnections under tenant pools, write each workload's
    /// ConfigMap, report status and Events (in-cluster config or KUBECONFIG).
    #[command(long_about = CONTROLLER_ABOUT)]
    Controller(Box<ControllerArgs>),
    /// Offline: StreamConnection YAML in, admission decisions and the ConfigMaps the controller
    /// would write out.
    #[command(long_about = RENDER_ABOUT)]
    Render {
        /// StreamConnection YAML files or directories of *.yaml, *.yml and *.json (`-` for
        /// stdin); every document is read, a `kind: List` item by item, other kinds skipped.
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        limits: render::LimitArgs,
        /// The Redis URL to render into the sidecar configs (none: the in-process store).
        #[arg(long)]
        sidecar_redis: Option<String>,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
        output: render::Format,
    },
    /// Print the StreamConnection CRD (what crds/ and the chart's crds/ hold; a test keeps
    /// them equal): `streamkeeper crdgen | kubectl apply -f -`.
    Crdgen,
    /// Add the streamkeeper sidecar to Deployment and StatefulSet YAML (stdin to stdout).
    #[command(long_about = inject::LONG_ABOUT)]
    Inject(inject::InjectArgs),
    /// Show every stream the store knows: owner, fence, state, last pong.
    Status {
        /// The Redis URL (`redis://host:port` or `redis+cluster://host1:port1,host2:port2`).
        #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
        redis: String,
    },
}

/// `streamkeeper controller --help`.
const CONTROLLER_ABOUT: &str = "\
Runs the operator: admits StreamConnections under per-tenant pools (priority, then age; a
higher-priority stream preempts the lowest running one), server-side applies each workload's
ConfigMap streamkeeper-{workload} (key sidecar.yaml), and writes status (phase, owner, lastPong,
reconnects, conditions Ready and Degraded, only when it changes) and Events (Admitted, Queued,
Preempted, StreamDead, Recovered). Runtime status comes from the Redis the sidecars share
(--redis); without it, streams are still admitted and rendered.

It needs the StreamConnection CRD (it refuses to start without, saying how to install it) and the
RBAC of charts/streamkeeper: StreamConnections, ConfigMaps, Events, and its Lease; never Secrets.
Replicas elect a leader on Lease streamkeeper-controller in $POD_NAMESPACE (else the kubeconfig
context's namespace); only the leader writes. On SIGTERM the running reconciles finish (5 s at
most) and the Lease is released, so a standby takes over at once. Deleting a StreamConnection
removes it from its ConfigMap and from Redis behind the finalizer streamkeeper.dev/cleanup.

Example:
  streamkeeper controller --redis redis://redis.data.svc:6379 --default-tenant-limit 50 \\
    --tenant-limit acme=80";

/// `streamkeeper render --help`.
const RENDER_ABOUT: &str = "\
Offline, with the controller's own admission and rendering code: reads StreamConnections and
prints what the controller would decide and write. The YAML output starts with the decisions as
comments (per tenant: admitted and limit; per stream: priority and decision) followed by one
ConfigMap streamkeeper-{workload} per workload, which `kubectl apply -f -` reads. An invalid
StreamConnection is reported naming the field, nothing is printed, and the exit code is 1.
Objects without a creationTimestamp are ordered by their place in the input.

Examples:
  streamkeeper render -f manifests/streams --tenant-limit acme=10
  kubectl get sconn -A -o yaml | streamkeeper render -f - -o json";

/// `streamkeeper controller` flags.
#[derive(Debug, clap::Args)]
struct ControllerArgs {
    #[command(flatten)]
    limits: render::LimitArgs,
    /// The kubeconfig (default: `~/.kube/config` if there is one, else the in-cluster config).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// This replica's identity in the leader Lease (`POD_NAME`, else the hostname).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// The store to read runtime state from and to remove deleted streams from (`REDIS_URL`);
    /// without it the controller still admits and renders, and status has no runtime fields.
    #[arg(long, env = "REDIS_URL")]
    redis: Option<String>,
    /// The Redis URL rendered into sidecar configs (default: `--redis`).
    #[arg(long)]
    sidecar_redis: Option<String>,
    /// Watch only this namespace (default: all namespaces; the RBAC must match: the chart's
    /// `controller.watchNamespace` sets both).
    #[arg(long)]
    namespace: Option<String>,
    /// The admin endpoint: /metrics, /healthz, /readyz.
    #[arg(long, default_value = "0.0.0.0:9465")]
    admin: SocketAddr,
    /// The leader Lease's duration (`leaseDurationSeconds`): a standby takes over this long
    /// after the leader's last renewal.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    lease_duration: Duration,
    /// The leader stops writing this long after its last confirmed renewal (shorter than the
    /// Lease duration).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    renew_deadline: Duration,
    /// How often the Lease is renewed (or looked at by a standby).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    retry_period: Duration,
    /// How often the store's records are read for status.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    store_poll: Duration,
    /// `status.lastPong` is rewritten only when it moved by at least this (a write per pong
    /// would be a write per stream every heartbeat).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pong_granularity: Duration,
}

impl ControllerArgs {
    fn options(self) -> streamkeeper_controller::run::Options {
        streamkeeper_controller::run::Options {
            limits: self.limits.limits(),
            redis: self.redis.filter(|s| !s.is_empty()),
            sidecar_redis: self.sidecar_redis,
            namespace: self.namespace,
            admin: self.admin,
            kubeconfig: self.kubeconfig,
            identity: self.identity.filter(|s| !s.is_empty()),
            lease_namespace: None,
            lease_duration: self.lease_duration,
            renew_deadline: self.renew_deadline,
            retry_period: self.retry_period,
            store_poll: self.store_poll,
            pong_granularity: self.pong_granularity,
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    streamkeeper_api::duration::parse(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    entry::block_on("streamkeeper", async move {
        match cli.command {
            Command::Sidecar(args) => entry::sidecar(args).await,
            Command::Emulate(args) => {
                init_tracing("info");
                emulate::run(*args).await
            }
            Command::Status { redis } => {
                init_tracing("warn");
                status::run(&redis).await
            }
            Command::Controller(args) => {
                init_tracing("info");
                controller::run(args.options()).await
            }
            Command::Render {
                files,
                limits,
                sidecar_redis,
                output,
            } => render::run(&files, &limits, sidecar_redis, output),
            Command::Crdgen => crdgen::run(),
            Command::Inject(args) => inject::run(args),
            Command::Demo { quiet } => {
                init_tracing("off");
                demo::run(quiet).await
            }
        }
    })
}
