//! What both binaries (`streamkeeper` and the lean `streamkeeper-sidecar`) share: the counting
//! allocator of benchmark builds, logging, the runtime, and the `sidecar` command itself, so that
//! the two entry points to the sidecar cannot drift apart.

use std::{future::Future, path::PathBuf, process::ExitCode};

/// Built with `--features heap-stats` (benchmarks): every allocation is counted, and the
/// sidecar serves the census at `GET /debug/heap`.
#[cfg(feature = "heap-stats")]
#[global_allocator]
static ALLOC: streamkeeper_sidecar::heap::Counting = streamkeeper_sidecar::heap::Counting;

/// The sidecar's flags (`streamkeeper sidecar` and `streamkeeper-sidecar` take the same).
#[derive(Debug, clap::Args)]
pub struct SidecarArgs {
    /// The sidecar config file (YAML); changes are applied without a restart.
    #[arg(long, short = 'c', env = "STREAMKEEPER_CONFIG")]
    pub config: PathBuf,
}

/// Runs the sidecar until SIGTERM or a fatal error.
pub async fn sidecar(args: SidecarArgs) -> anyhow::Result<ExitCode> {
    init_tracing("info");
    streamkeeper_sidecar::run::run(args.config).await?;
    Ok(ExitCode::SUCCESS)
}

/// Logs to stderr, filtered by `STREAMKEEPER_LOG` (default `default`).
pub fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STREAMKEEPER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Runs `main` on a multi-threaded runtime; an error is printed after `program: ` and exits 2.
pub fn block_on(program: &str, main: impl Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{program}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{program}: {e:#}");
            ExitCode::from(2)
        }
    }
}
