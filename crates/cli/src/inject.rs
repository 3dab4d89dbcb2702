//! `streamkeeper inject`: adds the streamkeeper sidecar to Deployment and StatefulSet YAML.
//!
//! [`inject`] is the whole transformation, a pure function of the input text, the sidecar's
//! settings and the StreamConnections it was given; [`run`] reads the files and prints.
//! Documents are handled as untyped YAML so that every field of the user's object, known to
//! this build's Kubernetes types or not, survives in its order.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use streamkeeper_api::ids::is_dns_label;

use crate::yaml_input;

/// The sidecar image when `--image` is not given: this build's release.
pub const DEFAULT_IMAGE: &str = concat!(
    "ghcr.io/streamkeeper/streamkeeper:",
    env!("CARGO_PKG_VERSION")
);
/// The injected container's name (one per pod).
pub const CONTAINER_NAME: &str = "streamkeeper";
/// The sidecar's admin port (`/metrics`, `/healthz`, `/readyz`), the rendered config's default.
pub const ADMIN_PORT: u16 = 9464;
/// The admin port's name, used by the probes and by the chart's PodMonitor.
pub const ADMIN_PORT_NAME: &str = "sk-admin";
/// The app endpoint the sidecar listens on (127.0.0.1), so no app container may take it.
pub const APP_PORT: u16 = 7700;
/// The program the injected container runs: the lean sidecar binary of the image (Dockerfile),
/// not the whole `streamkeeper` with the operator and tools in it.
pub const SIDECAR_PROGRAM: &str = "/usr/local/bin/streamkeeper-sidecar";
/// Where the ConfigMap is mounted.
pub const CONFIG_DIR: &str = "/etc/streamkeeper";
/// Where each stream's Secret is mounted: `{CREDENTIALS_ROOT}/{secretName}` (what the
/// controller renders as the stream's `credentials.dir`).
pub const CREDENTIALS_ROOT: &str = "/var/run/streamkeeper/credentials";
/// Workload annotation naming Secrets to mount, comma- or space-separated.
pub const SECRETS_ANNOTATION: &str = "streamkeeper.dev/credentials-secrets";
/// Pod template label set on injected pods (what the chart's sidecar PodMonitor selects).
pub const INJECTED_LABEL: &str = "streamkeeper.dev/injected";
/// The user id of the image's `nonroot` user (distroless).
pub const DEFAULT_USER: u32 = 65532;

const CONFIG_VOLUME: &str = "streamkeeper-config";
const CREDENTIALS_VOLUME_PREFIX: &str = "streamkeeper-creds-";

/// `streamkeeper inject --help`: what is injected and how the credentials Secrets are found.
pub const LONG_ABOUT: &str = "\
Adds the streamkeeper sidecar to Deployment and StatefulSet YAML (stdin to stdout by default).

The sidecar is a native sidecar (an init container with restartPolicy: Always; Kubernetes 1.29 or
later) named `streamkeeper`. It reads /etc/streamkeeper/sidecar.yaml from the ConfigMap
streamkeeper-{workload} that the controller writes (the pod starts once that ConfigMap exists),
takes POD_NAME from the downward API, serves /healthz, /readyz and /metrics on port 9464
(`sk-admin`, with startup, readiness and liveness probes on it), and runs as a numeric non-root
user with a read-only root filesystem, every capability dropped, no privilege escalation and the
RuntimeDefault seccomp profile. Its app endpoint is 127.0.0.1:7700 in the pod.

Credentials: the Secret of each stream (spec.credentialsSecretRef) is mounted read-only at
/var/run/streamkeeper/credentials/{secret}. inject learns which Secrets from:
  --streams PATH   StreamConnection YAML: each stream whose workloadRef names the workload (kind
                   and name, in the same namespace) adds its Secret. With --streams this list is
                   complete: a stream no longer in the files loses its mount.
  the annotation   streamkeeper.dev/credentials-secrets: \"acme-genesys,acme-cxone\" on the
                   workload's metadata: always mounted.
  the sidecar      without --streams, the Secrets the sidecar already mounts are kept, so
                   injecting inject's own output changes nothing.
Secret volumes are optional: a missing Secret fails its stream, not the whole pod.

Injecting twice changes nothing; injecting again with other flags updates the sidecar in place.
Objects of other kinds, and workloads that need no change, are written back byte for byte; a
workload that changes keeps its leading comments but not those inside it. A `kind: List`
(kubectl get -o yaml) is injected item by item. Output strings are quoted wherever kubectl's
YAML 1.1 reader could take them for something else (yes, on, 0644, ...).

Example:
  streamkeeper inject -f app.yaml --streams manifests/ | kubectl apply -f -";

/// Flags of `streamkeeper inject`.
#[derive(Debug, Clone, clap::Args)]
pub struct InjectArgs {
    /// The YAML to read (one or more documents); `-` or absent reads stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// StreamConnection YAML: a file, or a directory of *.yaml, *.yml and *.json files
    /// (repeatable; other kinds in them are ignored).
    #[arg(long, value_name = "PATH")]
    pub streams: Vec<PathBuf>,
    /// Namespace of objects that name none (where `kubectl apply` would put them).
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// The sidecar image.
    #[arg(long, default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// The sidecar's imagePullPolicy.
    #[arg(long, value_enum, default_value_t = PullPolicy::IfNotPresent)]
    pub image_pull_policy: PullPolicy,
    /// CPU request of the sidecar (a Kubernetes quantity, or `none`).
    #[arg(long, default_value = "50m", value_parser = quantity_setting)]
    pub cpu_request: QuantitySetting,
    /// Memory request of the sidecar (a Kubernetes quantity, or `none`).
    #[arg(long, default_value = "64Mi", value_parser = quantity_setting)]
    pub memory_request: QuantitySetting,
    /// CPU limit of the sidecar; none by default, since CFS throttling would delay the
    /// heartbeats and dead-connection deadlines the sidecar exists to keep.
    #[arg(long, default_value = "none", value_parser = quantity_setting)]
    pub cpu_limit: QuantitySetting,
    /// Memory limit of the sidecar (a Kubernetes quantity, or `none`).
    #[arg(long, default_value = "256Mi", value_parser = quantity_setting)]
    pub memory_limit: QuantitySetting,
    /// The numeric user the sidecar runs as (non-zero).
    #[arg(long, default_value_t = DEFAULT_USER, value_parser = clap::value_parser!(u32).range(1..))]
    pub run_as_user: u32,
}

mod document;
mod sidecar;
mod streams;
mod workload;

use sidecar::{PullPolicy, QuantitySetting, Resources, Sidecar, quantity_setting};
use streams::parse_streams;
use workload::{Options, inject};

/// `streamkeeper inject`: reads the input and the StreamConnections, writes the result to stdout
/// and the warnings to stderr.
pub fn run(args: InjectArgs) -> anyhow::Result<ExitCode> {
    if !is_dns_label(&args.namespace) {
        anyhow::bail!("--namespace {:?} is not a namespace name", args.namespace);
    }
    let sidecar = Sidecar {
        image: args.image,
        pull_policy: args.image_pull_policy,
        resources: Resources {
            cpu_request: args.cpu_request.0,
            memory_request: args.memory_request.0,
            cpu_limit: args.cpu_limit.0,
            memory_limit: args.memory_limit.0,
        },
        run_as_user: args.run_as_user,
    };
    sidecar.resources.check().map_err(anyhow::Error::msg)?;
    if sidecar.image.trim().is_empty() {
        anyhow::bail!("--image must not be empty");
    }

    let streams = if args.streams.is_empty() {
        None
    } else {
        let mut all = Vec::new();
        for path in &args.streams {
            let files =
                yaml_input::files(path).with_context(|| format!("--streams {}", path.display()))?;
            for file in files {
                let input = yaml_input::read(&file)?;
                all.extend(parse_streams(&input.name, &input.text)?);
            }
        }
        Some(all)
    };

    let input = yaml_input::read(args.file.as_deref().unwrap_or(Path::new("-")))?;
    let (source, text) = (input.name, input.text);
    let options = Options {
        sidecar: &sidecar,
        namespace: &args.namespace,
        streams: streams.as_deref(),
    };
    let injected = inject(&source, &text, &options)?;
    for w in &injected.warnings {
        eprintln!("streamkeeper inject: warning: {w}");
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(injected.output.as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write stdout")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests;
