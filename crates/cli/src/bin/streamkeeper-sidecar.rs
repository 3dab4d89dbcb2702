//! `streamkeeper-sidecar`: the sidecar alone, the program `streamkeeper inject` puts in every
//! pod. It runs exactly what `streamkeeper sidecar` runs, without the operator, the emulator and
//! the tools linked in: the pages of code a pod maps stay few (a 50-stream sidecar is about 3 MiB
//! smaller in RSS; README, Benchmarks).

#[path = "../entry.rs"]
mod entry;

use std::process::ExitCode;

use clap::Parser;

/// Run the sidecar: own the platform sockets of this pod and serve the app over localhost.
#[derive(Debug, Parser)]
#[command(name = "streamkeeper-sidecar", version, long_about = None)]
struct Cli {
    #[command(flatten)]
    args: entry::SidecarArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    entry::block_on("streamkeeper-sidecar", entry::sidecar(cli.args))
}
