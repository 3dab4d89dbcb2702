//! What both binaries (`streamkeeper` and the lean `streamkeeper-sidecar`) share: the
//! allocator (and the counting one of benchmark builds), logging, the runtime, and the
//! `sidecar` command itself, so that the two entry points to the sidecar cannot drift apart.

use std::{future::Future, path::PathBuf, process::ExitCode};

use tikv_jemallocator::Jemalloc;

/// The process allocator: jemalloc, tuned by [`JEMALLOC_OPTIONS`].
#[cfg(not(feature = "heap-stats"))]
#[global_allocator]
static ALLOC: Jemalloc = Jemalloc;

/// Built with `--features heap-stats` (benchmarks): every allocation is counted on its way to
/// the same jemalloc, and the sidecar serves the census at `GET /debug/heap`.
#[cfg(feature = "heap-stats")]
#[global_allocator]
static ALLOC: streamkeeper_sidecar::heap::Counting<Jemalloc> =
    streamkeeper_sidecar::heap::Counting(Jemalloc);

/// jemalloc's options for a process that holds thousands of small, long-lived, mostly idle
/// streams: one arena and no thread caches (a stream's few hundred bytes are not spread over
/// per-thread and per-arena slabs), and free pages given back at once (start-up's transient
/// buffers do not stay resident). Measured with the sidecar bench (README, Benchmarks): idle
/// `ws` streams cost 7.2 KiB of RSS each with these, 9.9 KiB with glibc's malloc and 12.9 KiB
/// with jemalloc's defaults; CPU stayed at 0.2 to 0.4 % of a core per 1,000 streams.
/// `_RJEM_MALLOC_CONF` in the environment still overrides them.
const JEMALLOC_OPTIONS: &std::ffi::CStr =
    c"narenas:1,tcache:false,dirty_decay_ms:0,muzzy_decay_ms:0";

/// Where jemalloc looks for its compiled-in options (`malloc_conf`, prefixed as
/// tikv-jemalloc-sys builds it); read once, before `main`.
#[allow(unsafe_code)]
// SAFETY: jemalloc declares this symbol as a weak `const char *` and only reads it; the value
// points at a NUL-terminated string that lives as long as the process.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: Option<&'static std::ffi::c_char> =
    Some(unsafe { &*JEMALLOC_OPTIONS.as_ptr() });

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
