//! `streamkeeper`: the one binary. `main` parses flags and calls one function per subcommand.

mod demo;
mod inject;
mod kube_yaml;
mod status;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

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
    /// Run the platform emulator (generic dialect) with its fault API, for tests and benchmarks.
    Emulate {
        /// Address to listen on (HTTP, WebSocket and the fault API share it).
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Streams that exist from the start (others are created on first connect).
        #[arg(long = "stream", default_value = "queue-events")]
        streams: Vec<String>,
        /// One event per stream this often (e.g. 200ms; 0s for none).
        #[arg(long, default_value = "200ms", value_parser = parse_duration)]
        event_interval: Duration,
        /// Lifetime of issued tokens.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        token_ttl: Duration,
        /// OAuth client id the emulator accepts.
        #[arg(long, default_value = "streamkeeper")]
        client_id: String,
        /// OAuth client secret the emulator accepts.
        #[arg(
            long,
            env = "EMULATOR_CLIENT_SECRET",
            default_value = "streamkeeper-secret",
            hide_default_value = true
        )]
        client_secret: String,
    },
    /// The newcomer's tour: an emulator, three sidecar pods and their apps in one process, a
    /// scripted fault scenario, a live timeline and a scorecard. Exits 0 when every check holds.
    Demo {
        /// Print only the scorecard.
        #[arg(long)]
        quiet: bool,
    },
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

fn parse_duration(s: &str) -> Result<Duration, String> {
    streamkeeper_api::duration::parse(s)
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
            Command::Emulate {
                listen,
                streams,
                event_interval,
                token_ttl,
                client_id,
                client_secret,
            } => {
                init_tracing("info");
                let cfg = streamkeeper_emulator::EmulatorConfig {
                    listen,
                    streams,
                    event_interval,
                    token_ttl,
                    client_id,
                    client_secret,
                    ..Default::default()
                };
                let emu = streamkeeper_emulator::Emulator::start(cfg).await?;
                eprintln!(
                    "emulator listening on {} (POST /faults, GET /stats)",
                    emu.base_url()
                );
                tokio::signal::ctrl_c().await?;
                emu.shutdown().await;
                Ok(ExitCode::SUCCESS)
            }
            Command::Status { redis } => {
                init_tracing("warn");
                status::run(&redis).await
            }
            Command::Inject(args) => inject::run(args),
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
