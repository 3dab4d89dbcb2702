//! An echo client for the Autobahn|Testsuite fuzzing server, built on the sidecar's upstream
//! WebSocket client (`streamkeeper_sidecar::ws`). `scripts/autobahn` starts the server and
//! runs this; the script, not this program, judges the report.
//!
//! It asks `/getCaseCount`, runs every case (`/runCase?case=N&agent=AGENT`), echoing each text
//! and binary message, and ends each connection as the upstream sessions do (the client
//! answers pings and closes on its own; a protocol violation fails the connection with its
//! close code), then asks `/updateReports` so the server writes its report.
//!
//! ```text
//! autobahn_client ws://127.0.0.1:9001 [AGENT]
//! ```

use std::{process::ExitCode, time::Duration};

use streamkeeper_sidecar::ws::{ConnectOptions, Frame, ProxyMode, WsClient, WsError};
use url::Url;

/// The agent name the report files its results under, unless one is given.
const DEFAULT_AGENT: &str = "streamkeeper";
/// The suite's largest message is 16 MiB (9.1.6, 9.2.6); leave room.
const MAX_MESSAGE: usize = 32 << 20;
/// No case takes nearly this long (the slowest wait a few seconds, or move 16 MiB).
const CASE_BOUND: Duration = Duration::from_secs(120);
/// How long a case's closing handshake may take, as the session allows (bounded, then RST).
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(base), agent) = (args.next(), args.next()) else {
        eprintln!("usage: autobahn_client ws://HOST:PORT [AGENT]");
        return ExitCode::from(2);
    };
    let agent = agent.unwrap_or_else(|| DEFAULT_AGENT.to_owned());
    let base = match Url::parse(&base) {
        Ok(url) => url,
        Err(err) => {
            eprintln!("autobahn_client: {base:?} is not a URL: {err}");
            return ExitCode::from(2);
        }
    };
    match run(&base, &agent).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("autobahn_client: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(base: &Url, agent: &str) -> Result<(), String> {
    let count = case_count(base).await?;
    eprintln!("autobahn_client: {count} cases");
    let mut failed_to_connect = 0usize;
    for case in 1..=count {
        let url = endpoint(
            base,
            "runCase",
            &[("case", &case.to_string()), ("agent", agent)],
        )?;
        match tokio::time::timeout(CASE_BOUND, echo(&url)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                failed_to_connect += 1;
                eprintln!("autobahn_client: case {case}: {err}");
            }
            Err(_) => eprintln!("autobahn_client: case {case} still open after {CASE_BOUND:?}"),
        }
    }
    let url = endpoint(base, "updateReports", &[("agent", agent)])?;
    let mut ws = connect(&url)
        .await
        .map_err(|err| format!("updateReports: {err}"))?;
    // The server writes the reports, then closes.
    while ws.recv().await.is_ok() {}
    ws.close(1000, "", CLOSE_WITHIN).await;
    if failed_to_connect > 0 {
        return Err(format!("{failed_to_connect} cases could not connect"));
    }
    Ok(())
}

fn endpoint(base: &Url, path: &str, query: &[(&str, &str)]) -> Result<Url, String> {
    let mut url = base
        .join(path)
        .map_err(|err| format!("{base}{path}: {err}"))?;
    url.query_pairs_mut().extend_pairs(query);
    Ok(url)
}

async fn connect(url: &Url) -> Result<WsClient, WsError> {
    let opts = ConnectOptions {
        max_frame: MAX_MESSAGE,
        proxy: ProxyMode::Direct,
        ..ConnectOptions::default()
    };
    WsClient::connect(url, &[], &opts).await
}

async fn case_count(base: &Url) -> Result<u32, String> {
    let url = endpoint(base, "getCaseCount", &[])?;
    let mut ws = connect(&url)
        .await
        .map_err(|err| format!("getCaseCount: {err}"))?;
    let count = match ws.recv().await {
        Ok(Frame::Text(text)) => text
            .trim()
            .parse()
            .map_err(|err| format!("getCaseCount answered {text:?}: {err}")),
        other => Err(format!("getCaseCount answered {other:?}")),
    };
    ws.close(1000, "", CLOSE_WITHIN).await;
    count
}

/// Echoes one case's messages until the connection ends, then ends it as a session would.
async fn echo(url: &Url) -> Result<(), WsError> {
    let mut ws = connect(url).await?;
    loop {
        match ws.recv().await {
            Ok(Frame::Text(text)) => ws.queue_text(&text),
            Ok(Frame::Binary(data)) => ws.queue_binary(&data),
            // Pings are answered and closes echoed by the client itself.
            Ok(Frame::Ping(_) | Frame::Pong(_) | Frame::Close(_)) => {}
            // A protocol violation, the end of the closing handshake, or a socket error.
            Err(_) => break,
        }
    }
    ws.close(1000, "", CLOSE_WITHIN).await;
    Ok(())
}
