//! `streamkeeper status`: a table of streams, owners, states and last pong, read from Redis.

use std::{process::ExitCode, time::Duration};

use anyhow::Context as _;
use streamkeeper_coord::{RedisStore, Store};

/// Prints the table; exits 1 when Redis cannot be read.
pub async fn run(url: &str) -> anyhow::Result<ExitCode> {
    let store = RedisStore::connect(url).context("redis URL")?;
    let records = store
        .records()
        .await
        .with_context(|| format!("cannot read streams from {}", store.target()))?;
    let now = streamkeeper_sidecar::clock::epoch_ms();
    let rows: Vec<[String; 8]> = records
        .iter()
        .map(|r| {
            let age = Duration::from_millis(now.saturating_sub(r.last_pong));
            [
                r.stream.to_string(),
                r.tenant.to_string(),
                r.platform.as_str().to_owned(),
                r.state.to_string(),
                r.owner.to_string(),
                r.fence.to_string(),
                format!("{:.1}s ago", age.as_secs_f64()),
                r.retry_count.to_string(),
            ]
        })
        .collect();
    let header = [
        "STREAM",
        "TENANT",
        "PLATFORM",
        "STATE",
        "OWNER",
        "FENCE",
        "LAST-PONG",
        "RETRIES",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[&str]| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!("{}", line(&header));
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        println!("{}", line(&cells));
    }
    if rows.is_empty() {
        eprintln!("no streams recorded in {}", store.target());
    }
    Ok(ExitCode::SUCCESS)
}
