//! `streamkeeper render`: StreamConnection YAML in, the admission decisions and the ConfigMaps
//! the controller would write out, offline (the same admission and rendering code).

use std::{
    collections::{BTreeMap, HashMap},
    io::Write as _,
    path::PathBuf,
    process::ExitCode,
};

use clap::{Args, ValueEnum};
use streamkeeper_api::{Tenant, crd::StreamConnection, kube_yaml};
use streamkeeper_controller::{
    admission::{self, Decision, Limits},
    render::{self, RenderOptions, WorkloadKey},
};

use crate::yaml_input;

/// The pool limit flags `render` and `controller` share.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// The pool limit of every tenant without its own.
    #[arg(long, default_value_t = streamkeeper_api::config::DEFAULT_TENANT_LIMIT, value_parser = clap::value_parser!(u32).range(1..))]
    pub default_tenant_limit: u32,
    /// A tenant's own pool limit, as TENANT=N (repeatable).
    #[arg(long = "tenant-limit", value_name = "TENANT=N", value_parser = parse_tenant_limit)]
    pub tenant_limits: Vec<(Tenant, u32)>,
}

impl LimitArgs {
    /// The limits these flags say.
    pub fn limits(&self) -> Limits {
        Limits {
            default: self.default_tenant_limit,
            tenants: self.tenant_limits.iter().cloned().collect(),
        }
    }
}

fn parse_tenant_limit(s: &str) -> Result<(Tenant, u32), String> {
    let (t, n) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: write TENANT=N, like acme=50"))?;
    let tenant: Tenant = t.parse().map_err(|e| format!("{e}"))?;
    let n: u32 = n
        .parse()
        .map_err(|_| format!("{s:?}: {n:?} is not a whole number"))?;
    if n == 0 {
        return Err(format!(
            "{s:?}: a limit must be at least 1 (pause streams instead)"
        ));
    }
    Ok((tenant, n))
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// ConfigMaps as YAML documents, decisions as a leading comment (`kubectl apply -f -` reads it).
    Yaml,
    /// One JSON object: `{"decisions": [...], "configMaps": [...]}`.
    Json,
}

/// One input document that is a StreamConnection, with where it came from.
struct Input {
    origin: String,
    sc: StreamConnection,
}

fn read_inputs(paths: &[PathBuf]) -> anyhow::Result<Vec<Input>> {
    let mut out = Vec::new();
    for yaml_input::Input { name, text } in yaml_input::read_all(paths)? {
        let docs = kube_yaml::parse(&text).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        for (i, parsed) in docs.iter().enumerate() {
            let place = format!("{name}, document {} (line {})", i + 1, parsed.doc.line);
            for (prefix, value) in kube_yaml::objects(&parsed.value) {
                if value.is_null() {
                    continue;
                }
                let origin = format!(
                    "{place}{}",
                    prefix
                        .strip_suffix('.')
                        .map(|p| format!(", {p}"))
                        .unwrap_or_default()
                );
                let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
                if kind != "StreamConnection" {
                    eprintln!("render: {origin}: skipping kind {kind:?} (not a StreamConnection)");
                    continue;
                }
                let sc: StreamConnection = serde_path_to_error::deserialize(value.clone())
                    .map_err(|e| anyhow::anyhow!("{origin}: {}: {}", e.path(), e.inner()))?;
                out.push(Input { origin, sc });
            }
        }
    }
    Ok(out)
}

/// Reads the files, decides and renders, prints; exits 1 when a StreamConnection is invalid.
pub fn run(
    paths: &[PathBuf],
    limits: &LimitArgs,
    sidecar_redis: Option<String>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let mut inputs = read_inputs(paths)?;
    for i in &mut inputs {
        if i.sc.metadata.namespace.is_none() {
            i.sc.metadata.namespace = Some("default".into());
        }
    }
    let mut candidates = Vec::new();
    let mut bad = 0;
    for (n, i) in inputs.iter().enumerate() {
        // Offline objects have no creationTimestamp: file order is their age.
        match render::candidate(&i.sc, n as i64) {
            Ok(c) => candidates.push(c),
            Err(e) => {
                eprintln!(
                    "render: {} ({}): {e}",
                    i.origin,
                    render::stream_id(&i.sc)
                        .map(|s| s.to_string())
                        .unwrap_or_else(|_| i.sc.metadata.name.clone().unwrap_or_default())
                );
                bad += 1;
            }
        }
    }
    if bad > 0 {
        eprintln!("render: {bad} invalid StreamConnection(s); nothing rendered");
        return Ok(ExitCode::FAILURE);
    }
    let mut seen = HashMap::new();
    for (c, i) in candidates.iter().zip(&inputs) {
        if let Some(first) = seen.insert(c.id.clone(), i.origin.clone()) {
            anyhow::bail!("{}: {} is also defined in {first}", i.origin, c.id);
        }
    }
    let lims = limits.limits();
    let decisions = admission::admit(&candidates, &lims, &HashMap::new());
    let opts = RenderOptions {
        redis: sidecar_redis,
        limits: lims.clone(),
    };
    let streams: Vec<StreamConnection> = inputs.into_iter().map(|i| i.sc).collect();
    let configs = render::configs(&streams, &decisions, &opts);
    let maps: Vec<_> = configs
        .iter()
        .map(|(k, cfg)| render::config_map(k, cfg))
        .collect();
    // Every candidate is valid here, so candidates and streams are in the same order.
    let rows: Vec<serde_json::Value> = candidates
        .iter()
        .zip(&streams)
        .map(|(c, sc)| {
            let d = decisions.get(&c.id).copied().unwrap_or(Decision::Queued);
            serde_json::json!({
                "stream": c.id.as_str(),
                "tenant": c.tenant.as_str(),
                "priority": c.priority,
                "decision": format!("{d:?}"),
                "configMap": WorkloadKey::of(sc).config_map_name(),
            })
        })
        .collect();
    let mut out_text = String::new();
    match format {
        Format::Json => {
            let out = serde_json::json!({"decisions": rows, "configMaps": maps});
            out_text = serde_json::to_string_pretty(&out)? + "\n";
        }
        Format::Yaml => {
            let mut by_tenant: BTreeMap<&str, (u32, usize)> = BTreeMap::new();
            for c in &candidates {
                let e = by_tenant
                    .entry(c.tenant.as_str())
                    .or_insert((lims.of(&c.tenant), 0));
                if decisions.get(&c.id).is_some_and(|d| d.admitted()) {
                    e.1 += 1;
                }
            }
            out_text += "# streamkeeper render: admission decisions\n";
            for (t, (limit, admitted)) in &by_tenant {
                out_text += &format!("#   tenant {t}: {admitted} admitted (limit {limit})\n");
            }
            for r in &rows {
                out_text += &format!(
                    "#   {:<40} tenant={:<12} priority={:<5} {}\n",
                    r["stream"].as_str().unwrap_or_default(),
                    r["tenant"].as_str().unwrap_or_default(),
                    r["priority"],
                    r["decision"].as_str().unwrap_or_default()
                );
            }
            for cm in &maps {
                out_text += "---\n";
                out_text += &kube_yaml::to_yaml(cm)?;
            }
        }
    }
    // A reader that stops early (`| head`) is not an error.
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(out_text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    Ok(ExitCode::SUCCESS)
}
