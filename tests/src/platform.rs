//! Streams on the real platforms' dialects against the emulator: spec builders for genesys,
//! cxone-dfo and cxone-aah, and a [`Tally`] of what an app received per topic, to prove that
//! nothing came twice and nothing is missing.

use std::{collections::BTreeMap, path::Path, time::Duration};

use serde_json::Value;
use streamkeeper_api::{
    Endpoint, StreamSpec,
    app_protocol::AppFrame,
    config::{
        Credentials, Endpoints, HeartbeatSpec, LimitsSpec, Platform, ReconnectSpec, TlsSpec,
        TokenSpec,
    },
};
use streamkeeper_emulator::{Credential, Emulator};
use streamkeeper_sidecar::auth::ClientCredentials;

use crate::{App, FromServer, harness::stream_id};

/// Timers for platform tests: pings every 300 ms, dead after 1.5 s; tokens refreshed
/// `refresh_lead` before they expire.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Heartbeat.
    pub heartbeat: HeartbeatSpec,
    /// Token schedule.
    pub token: TokenSpec,
    /// Reconnect backoff.
    pub reconnect: ReconnectSpec,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            heartbeat: HeartbeatSpec {
                interval: Duration::from_millis(300),
                timeout: Duration::from_millis(1500),
            },
            token: TokenSpec {
                refresh_lead: Duration::from_secs(1),
                retry: Duration::from_millis(200),
            },
            reconnect: ReconnectSpec {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(1),
            },
        }
    }
}

/// Writes `cred` as `platform` reads it into `dir`.
pub fn write_credential(dir: &Path, platform: Platform, cred: &Credential) {
    ClientCredentials::write_files(dir, platform, &cred.id, &cred.secret)
        .expect("write the credentials");
}

fn base(emu: &Emulator) -> Endpoint {
    emu.base_url().parse().expect("emulator base URL")
}

fn spec(
    name: &str,
    platform: Platform,
    endpoints: Endpoints,
    creds: &Path,
    topics: Vec<String>,
    t: Timing,
) -> StreamSpec {
    StreamSpec {
        id: stream_id(name),
        tenant: "acme".parse().expect("tenant"),
        platform,
        priority: 500,
        endpoints: endpoints.into(),
        credentials: Credentials {
            dir: Some(creds.into()),
            secret: None,
        },
        topics,
        heartbeat: t.heartbeat,
        token: t.token,
        reconnect: t.reconnect,
        limits: LimitsSpec::default(),
        tls: None,
    }
}

/// A genesys stream of `topics` against `emu` (the API and login hosts are the emulator).
pub fn genesys(
    emu: &Emulator,
    name: &str,
    topics: &[String],
    creds: &Path,
    t: Timing,
) -> StreamSpec {
    let endpoints = Endpoints {
        api: Some(base(emu)),
        login: Some(base(emu)),
        ..Endpoints::default()
    };
    spec(
        name,
        Platform::Genesys,
        endpoints,
        creds,
        topics.to_vec(),
        t,
    )
}

/// A cxone-dfo stream for `tenant`/`user`.
pub fn dfo(
    emu: &Emulator,
    name: &str,
    tenant: &str,
    user: &str,
    creds: &Path,
    t: Timing,
) -> StreamSpec {
    let endpoints = Endpoints {
        login: Some(base(emu)),
        stream: Some(emu.dfo_url(tenant, user).parse().expect("dfo URL")),
        ..Endpoints::default()
    };
    spec(name, Platform::CxoneDfo, endpoints, creds, Vec::new(), t)
}

/// A cxone-aah stream subscribed to `contacts`.
pub fn aah(emu: &Emulator, name: &str, contacts: &[String], creds: &Path, t: Timing) -> StreamSpec {
    let endpoints = Endpoints {
        login: Some(base(emu)),
        stream: Some(emu.aah_url().parse().expect("aah URL")),
        ..Endpoints::default()
    };
    spec(
        name,
        Platform::CxoneAah,
        endpoints,
        creds,
        contacts.to_vec(),
        t,
    )
}

/// The same spec trusting `ca` for TLS.
pub fn with_ca(mut spec: StreamSpec, ca: &Path) -> StreamSpec {
    spec.tls = Some(TlsSpec { ca_file: ca.into() });
    spec
}

/// `n` Genesys presence topics.
pub fn topics(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("v2.users.{prefix}{i}.presence"))
        .collect()
}

/// What one app received: event sequence numbers per topic (with the emulator's `at`), and
/// every control frame.
#[derive(Debug, Default)]
pub struct Tally {
    /// Per topic: sequence number → (times delivered, emulator time of the event, epoch ms).
    pub seqs: BTreeMap<String, BTreeMap<u64, (u32, u64)>>,
    /// `dropped` frames.
    pub dropped: Vec<AppFrame>,
    /// `gap` frames.
    pub gaps: Vec<(u64, u64, String)>,
    /// `paused` and `resumed` frames, in order (`true` = paused).
    pub pauses: Vec<bool>,
    /// Event ids as delivered.
    pub ids: Vec<String>,
}

/// The topic, sequence number and emulator time of an event payload of any platform (the
/// emulator's bodies carry `seq`, `at` and `topic` or `stream`).
pub fn event_key(data: &Value) -> Option<(String, u64, u64)> {
    let body = data
        .get("eventBody")
        .or_else(|| data.get("body"))
        .or_else(|| data.get("data"))
        .unwrap_or(data);
    let seq = body.get("seq")?.as_u64()?;
    let at = body.get("at").and_then(Value::as_u64).unwrap_or(0);
    let topic = body
        .get("topic")
        .or_else(|| body.get("stream"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    Some((topic, seq, at))
}

impl Tally {
    /// Takes one frame in.
    pub fn take(&mut self, frame: FromServer) {
        let FromServer::Frame(frame) = frame else {
            return;
        };
        match frame {
            AppFrame::Event { id, data, .. } => {
                self.ids.push(id.0.clone());
                if let Some((topic, seq, at)) = event_key(&data) {
                    let e = self.seqs.entry(topic).or_default().entry(seq).or_default();
                    e.0 += 1;
                    e.1 = at;
                }
            }
            AppFrame::Gap {
                from, to, reason, ..
            } => self.gaps.push((from, to, reason)),
            f @ AppFrame::Dropped { .. } => self.dropped.push(f),
            AppFrame::Paused { .. } => self.pauses.push(true),
            AppFrame::Resumed { .. } => self.pauses.push(false),
            _ => {}
        }
    }

    /// Reads `app` until `done` holds or `bound` passes; false if the bound passed.
    pub async fn read_until(
        &mut self,
        app: &mut App,
        bound: Duration,
        done: impl Fn(&Tally) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + bound;
        while !done(self) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match app.try_recv(left).await {
                Some(f) => self.take(f),
                None => return false,
            }
        }
        true
    }

    /// Events delivered in all.
    pub fn events(&self) -> usize {
        self.seqs.values().map(BTreeMap::len).sum()
    }

    /// Events delivered more than once.
    pub fn duplicates(&self) -> u64 {
        self.seqs
            .values()
            .flat_map(|m| m.values())
            .map(|(n, _)| u64::from(n.saturating_sub(1)))
            .sum()
    }

    /// Per topic, the sequence numbers missing between the first and the last delivered.
    pub fn missing(&self) -> BTreeMap<String, Vec<u64>> {
        self.seqs
            .iter()
            .map(|(topic, m)| {
                let (first, last) = (
                    *m.keys().next().unwrap_or(&0),
                    *m.keys().next_back().unwrap_or(&0),
                );
                let gone: Vec<u64> = (first..=last).filter(|s| !m.contains_key(s)).collect();
                (topic.clone(), gone)
            })
            .filter(|(_, gone)| !gone.is_empty())
            .collect()
    }
}
