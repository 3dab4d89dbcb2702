//! `streamkeeper emulate`: its flags and the run (start the emulator, print where it is, wait
//! for Ctrl-C).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use streamkeeper_emulator::{
    Credential, CxoneConfig, Emulator, EmulatorConfig, GenesysConfig, TlsConfig,
};

/// The flags of `streamkeeper emulate`.
#[derive(Debug, Args)]
pub struct EmulateArgs {
    /// Address to listen on (every dialect, its sockets and the fault API share it).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Generic streams that exist from the start (others are created on first connect).
    #[arg(long = "stream", default_value = "queue-events")]
    streams: Vec<String>,
    /// One event per generic stream this often (e.g. 200ms; 0s for none).
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    event_interval: Duration,
    /// Lifetime of issued generic tokens.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    token_ttl: Duration,
    /// OAuth client id the generic dialect accepts.
    #[arg(long, default_value = "streamkeeper")]
    client_id: String,
    /// OAuth client secret the generic dialect accepts.
    #[arg(
        long,
        env = "EMULATOR_CLIENT_SECRET",
        default_value = "streamkeeper-secret",
        hide_default_value = true,
        hide_env_values = true
    )]
    client_secret: String,

    /// A Genesys OAuth client as ID:SECRET (repeat, or comma-separate in the environment);
    /// each is its own client with its own channels.
    #[arg(
        long = "genesys-client",
        env = "EMULATOR_GENESYS_CLIENTS",
        value_delimiter = ',',
        value_parser = parse_credential,
        default_value = "genesys-client:genesys-secret",
        hide_default_value = true,
        hide_env_values = true
    )]
    genesys_clients: Vec<Credential>,
    /// Lifetime of Genesys tokens (300s to 48h on the real platform).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    genesys_token_ttl: Duration,
    /// Genesys topics that produce events from the start (others start when subscribed).
    #[arg(long = "genesys-topic")]
    genesys_topics: Vec<String>,
    /// Events per second on each Genesys topic (0 for none).
    #[arg(long, default_value_t = 5.0, value_parser = parse_rate)]
    genesys_rate: f64,
    /// Server heartbeat period on each Genesys socket (0s for none).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    genesys_heartbeat_interval: Duration,
    /// How long a Genesys channel lives after its creation or last subscription.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    genesys_channel_ttl: Duration,
    /// Live channels per Genesys client (one more replaces the oldest).
    #[arg(long, default_value_t = 20)]
    genesys_max_channels: usize,
    /// Topics per Genesys channel (more is refused with 400).
    #[arg(long, default_value_t = 1000)]
    genesys_max_topics: usize,

    /// A CXone access key as ID:SECRET (repeat, or comma-separate in the environment).
    #[arg(
        long = "cxone-access-key",
        env = "EMULATOR_CXONE_ACCESS_KEYS",
        value_delimiter = ',',
        value_parser = parse_credential,
        default_value = "cxone-key:cxone-secret",
        hide_default_value = true,
        hide_env_values = true
    )]
    cxone_access_keys: Vec<Credential>,
    /// Lifetime of CXone access tokens (about an hour on the real platform).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    cxone_token_ttl: Duration,
    /// Lifetime of CXone refresh tokens.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    cxone_refresh_ttl: Duration,
    /// Events per second on each DFO stream and each AAH contact id (0 for none).
    #[arg(long, default_value_t = 5.0, value_parser = parse_rate)]
    cxone_rate: f64,
    /// AAH MESSAGE frames carry no messageId.
    #[arg(long)]
    aah_no_message_ids: bool,

    /// Also serve https and wss on the same port, with a test CA made at start.
    #[arg(long)]
    tls: bool,
    /// Write the test CA certificate (PEM) here (implies --tls).
    #[arg(long, value_name = "PATH")]
    ca_out: Option<PathBuf>,
    /// Serve a certificate NOT signed by the written CA, to test refusals (implies --tls).
    #[arg(long)]
    tls_untrusted: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    streamkeeper_api::duration::parse(s)
}

/// `ID:SECRET`.
fn parse_credential(s: &str) -> Result<Credential, String> {
    match s.split_once(':') {
        Some((id, secret)) if !id.is_empty() && !secret.is_empty() => {
            Ok(Credential::new(id.trim(), secret))
        }
        _ => Err("expected ID:SECRET".into()),
    }
}

/// Events per second, finite and not negative.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!(
            "{s:?} is not a rate: write events per second, like 20"
        )),
    }
}

/// The interval between events at `rate` per second (zero: none).
fn interval(rate: f64) -> Duration {
    if rate <= 0.0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(1.0 / rate)
    }
}

impl EmulateArgs {
    /// The emulator configuration these flags ask for.
    fn config(self) -> EmulatorConfig {
        let want_tls = self.tls || self.ca_out.is_some() || self.tls_untrusted;
        let tls = want_tls.then_some(TlsConfig {
            ca_pem_path: self.ca_out,
            untrusted: self.tls_untrusted,
        });
        EmulatorConfig {
            listen: self.listen,
            streams: self.streams,
            event_interval: self.event_interval,
            token_ttl: self.token_ttl,
            client_id: self.client_id,
            client_secret: self.client_secret,
            genesys: GenesysConfig {
                clients: self.genesys_clients,
                token_ttl: self.genesys_token_ttl,
                topics: self.genesys_topics,
                event_interval: interval(self.genesys_rate),
                heartbeat_interval: self.genesys_heartbeat_interval,
                channel_ttl: self.genesys_channel_ttl,
                max_channels: self.genesys_max_channels,
                max_topics: self.genesys_max_topics,
                ..GenesysConfig::default()
            },
            cxone: CxoneConfig {
                access_keys: self.cxone_access_keys,
                token_ttl: self.cxone_token_ttl,
                refresh_ttl: self.cxone_refresh_ttl,
                event_interval: interval(self.cxone_rate),
                aah_message_ids: !self.aah_no_message_ids,
                ..CxoneConfig::default()
            },
            tls,
            ..EmulatorConfig::default()
        }
    }
}

/// Run the emulator until Ctrl-C.
pub async fn run(args: EmulateArgs) -> anyhow::Result<ExitCode> {
    let cfg = args.config();
    let ca_out = cfg.tls.as_ref().and_then(|t| t.ca_pem_path.clone());
    let emu = Emulator::start(cfg).await?;
    let base = emu.base_url();
    eprintln!("emulator listening on {base} (POST /faults, GET /stats)");
    eprintln!(
        "  generic:   token {base}/oauth/token, stream {}",
        emu.stream_url("NAME")
    );
    eprintln!("  genesys:   api and login {base}, channels {base}/api/v2/notifications/channels");
    eprintln!("  cxone:     login {base}/.well-known/openid-configuration");
    eprintln!("  cxone-dfo: {}", emu.dfo_url("TENANT", "USER"));
    eprintln!("  cxone-aah: {}", emu.aah_url());
    if let Some(path) = ca_out {
        eprintln!("  TLS test CA written to {}", path.display());
    }
    tokio::signal::ctrl_c().await?;
    emu.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: EmulateArgs,
    }

    #[test]
    fn flags_map_onto_the_config() {
        let cli = Cli::try_parse_from([
            "emulate",
            "--genesys-client",
            "a:s1",
            "--genesys-client",
            "b:s2",
            "--genesys-rate",
            "20",
            "--cxone-rate",
            "0",
            "--genesys-heartbeat-interval",
            "5s",
            "--ca-out",
            "/tmp/ca.pem",
        ])
        .expect("parses");
        let cfg = cli.args.config();
        let ids: Vec<&str> = cfg.genesys.clients.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(cfg.genesys.event_interval, Duration::from_millis(50));
        assert_eq!(cfg.cxone.event_interval, Duration::ZERO);
        assert_eq!(cfg.genesys.heartbeat_interval, Duration::from_secs(5));
        let tls = cfg.tls.expect("--ca-out implies TLS");
        assert_eq!(
            tls.ca_pem_path.as_deref(),
            Some(std::path::Path::new("/tmp/ca.pem"))
        );
        assert!(
            !format!("{:?}", cfg.genesys).contains("s1"),
            "Debug hides secrets"
        );
    }

    #[test]
    fn bad_credentials_and_rates_are_refused_with_a_hint() {
        let err = Cli::try_parse_from(["emulate", "--genesys-client", "nosecret"])
            .expect_err("no colon")
            .to_string();
        assert!(err.contains("ID:SECRET"), "{err}");
        let err = Cli::try_parse_from(["emulate", "--cxone-rate=-1"])
            .expect_err("negative")
            .to_string();
        assert!(err.contains("events per second"), "{err}");
        let cfg = Cli::try_parse_from(["emulate"])
            .expect("defaults")
            .args
            .config();
        assert!(cfg.tls.is_none());
        assert_eq!(cfg.genesys.clients[0].id, "genesys-client");
    }
}
