//! `streamkeeper`: the one binary. `main` parses flags and calls one function per subcommand.

mod demo;
mod emulate;
mod status;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// Keeps contact-center real-time streams (Genesys Cloud CX, NICE CXone) alive and correct.
#[derive(Debug, Parser)]
#[command(name = "streamkeeper", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the sidecar: own the platform sockets of this pod and serve the app over localhost.
    Sidecar {
        /// The sidecar config file (YAML); changes are applied without a restart.
        #[arg(long, short = 'c', env = "STREAMKEEPER_CONFIG")]
        config: PathBuf,
    },
    /// Run the platform emulator (generic, Genesys, CXone DFO and AAH, optionally over TLS)
    /// with its fault API, for tests and benchmarks.
    Emulate(Box<emulate::EmulateArgs>),
    /// The newcomer's tour: an emulator, three sidecar pods and their apps in one process, a
    /// scripted fault scenario, a live timeline and a scorecard. Exits 0 when every check holds.
    Demo {
        /// Print only the scorecard.
        #[arg(long)]
        quiet: bool,
    },
    /// Show every stream the store knows: owner, fence, state, last pong.
    Status {
        /// The Redis URL (`redis://host:port` or `redis+cluster://host1:port1,host2:port2`).
        #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
        redis: String,
    },
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STREAMKEEPER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("streamkeeper: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Sidecar { config } => {
                init_tracing("info");
                streamkeeper_sidecar::run::run(config)
                    .await
                    .map_err(anyhow::Error::from)?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Emulate(args) => {
                init_tracing("info");
                emulate::run(*args).await
            }
            Command::Status { redis } => {
                init_tracing("warn");
                status::run(&redis).await
            }
            Command::Demo { quiet } => {
                init_tracing("off");
                demo::run(quiet).await
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("streamkeeper: {e:#}");
            ExitCode::from(2)
        }
    }
}
