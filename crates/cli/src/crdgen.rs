//! `streamkeeper crdgen`: prints the StreamConnection CRD (what `crds/` holds).

use std::{io::Write as _, process::ExitCode};

/// Prints the CRD YAML to stdout.
pub fn run() -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    out.write_all(streamkeeper_api::crd::crd_yaml().as_bytes())?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
