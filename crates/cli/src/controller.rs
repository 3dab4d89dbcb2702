//! `streamkeeper controller`: runs the operator until SIGTERM or Ctrl-C (then releases the
//! leader Lease so a standby takes over at once).

use std::process::ExitCode;

use streamkeeper_controller::run::{self, Options};

/// Runs the controller.
pub async fn run(opts: Options) -> anyhow::Result<ExitCode> {
    run::run(opts, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: shutting down"),
    }
}
