//! Faults at the kernel: the platform side in a network namespace behind a veth pair, and an
//! nftables rule inside the namespace that drops every packet on the link (no ACK comes back,
//! no RST, no FIN) until it is removed.
//!
//! The sidecar stays on the host and reaches the namespace by its veth address; the only
//! traffic is between the host's end of the pair and the namespace. Names carry the test
//! process's id (`sk-e2e-{pid}-{n}`, veth `skh{pid}-{n}`), so parallel test processes never
//! collide, and whatever a killed run left behind (its process id no longer alive) is swept
//! away before a new namespace is made. Everything is removed on drop, also when a test panics;
//! the emulator dies with the test process too (`setpriv --pdeathsig KILL`).
//!
//! Making namespaces needs root (CAP_NET_ADMIN) and `ip`, `nft` and `setpriv`
//! (`scripts/install-test-deps` installs them): a test without them fails and says so.
//!
//! ```no_run
//! # async fn demo() {
//! use streamkeeper_e2e::netns::Netns;
//! let ns = Netns::create();
//! let emu = ns.spawn_emulator(&["queue"], std::time::Duration::from_millis(50)).await;
//! println!("point a sidecar at {}", emu.stream_url("queue"));
//! let cut = ns.cut().await; // from `cut` on, nothing crosses the link
//! ns.heal().await;
//! # let _ = cut;
//! # }
//! ```

use std::{
    io::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::{Command, Stdio},
    sync::{
        Once,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use streamkeeper_emulator::Stats;
use tokio::time::{Instant, sleep};

use crate::process::{Running, http_get};

/// Namespaces made here are `{NETNS_PREFIX}{pid}-{n}`.
const NETNS_PREFIX: &str = "sk-e2e-";
/// Host ends of the veth pairs are `{VETH_PREFIX}{pid}-{n}` (at most 15 characters).
const VETH_PREFIX: &str = "skh";
/// The namespace's end of the pair (its own name space: the same name in every namespace).
const NS_IF: &str = "sk0";
/// The nftables table inside the namespace.
const TABLE: &str = "sk_e2e";
/// Where the emulator listens inside the namespace.
const EMULATOR_PORT: u16 = 9000;
/// 198.18.0.0/15, the benchmarking range (RFC 2544, routed nowhere), cut into /30 blocks:
/// `.1` the host's end, `.2` the namespace's.
const BLOCKS_BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);
const BLOCKS: u32 = 1 << 15;
/// How long the namespaced emulator may take to start serving.
const START_BOUND: Duration = Duration::from_secs(10);

/// The table with empty chains and two counters; [`Netns::cut`] fills the chains.
const TABLE_RULESET: &str = "table inet sk_e2e {
  counter syns {}
  counter resets {}
  chain input { type filter hook input priority 0; policy accept; }
  chain output { type filter hook output priority 0; policy accept; }
}
";

/// Drops everything on the link in both directions, counting the connection attempts (SYN)
/// and resets (RST) that arrive.
const CUT_RULES: &str = "add rule inet sk_e2e input iifname \"sk0\" tcp flags & (syn | ack) == syn counter name \"syns\" drop
add rule inet sk_e2e input iifname \"sk0\" tcp flags & rst == rst counter name \"resets\" drop
add rule inet sk_e2e input iifname \"sk0\" drop
add rule inet sk_e2e output oifname \"sk0\" drop
";

const HEAL_RULES: &str = "flush chain inet sk_e2e input
flush chain inet sk_e2e output
";

/// A counter of the packets the cut dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Connection attempts (SYN without ACK) that reached the namespace.
    Syns,
    /// Resets (RST) that reached the namespace.
    Resets,
}

impl Dropped {
    fn name(self) -> &'static str {
        match self {
            Self::Syns => "syns",
            Self::Resets => "resets",
        }
    }
}

/// A network namespace joined to the host by a veth pair, with an nftables table ready to cut
/// the link. Removed on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    host_if: String,
    /// The host's end of the link (where the sidecar's packets come from).
    pub host_addr: Ipv4Addr,
    /// The namespace's end (where the platform listens).
    pub ns_addr: Ipv4Addr,
}

impl Netns {
    /// Makes the namespace and its link, after sweeping away what killed runs left. Fails the
    /// test, saying what is missing, without root or without `ip`, `nft` or `setpriv`.
    pub fn create() -> Self {
        preflight();
        static SWEEP: Once = Once::new();
        SWEEP.call_once(sweep);
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let host_if = format!("{VETH_PREFIX}{pid}-{n}");
        assert!(host_if.len() <= 15, "interface name {host_if} is too long");
        let (host_addr, ns_addr) = free_block(pid, n);
        // Built first, so a failure half-way is cleaned up by `Drop`.
        let ns = Self {
            name: format!("{NETNS_PREFIX}{pid}-{n}"),
            host_if,
            host_addr,
            ns_addr,
        };
        let (name, host_if) = (ns.name.as_str(), ns.host_if.as_str());
        let (host_cidr, ns_cidr) = (format!("{host_addr}/30"), format!("{ns_addr}/30"));
        run(&["ip", "netns", "add", name]);
        run(&[
            "ip", "link", "add", host_if, "type", "veth", "peer", "name", NS_IF, "netns", name,
        ]);
        run(&["ip", "addr", "add", &host_cidr, "dev", host_if]);
        run(&["ip", "link", "set", host_if, "up"]);
        run(&["ip", "-n", name, "addr", "add", &ns_cidr, "dev", NS_IF]);
        run(&["ip", "-n", name, "link", "set", NS_IF, "up"]);
        run(&["ip", "-n", name, "link", "set", "lo", "up"]);
        ns.nft(TABLE_RULESET);
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts `streamkeeper emulate` inside the namespace on `{ns_addr}:9000` with `streams`,
    /// one event each every `event_interval`, and the default credentials
    /// ([`EmulatorConfig::default`](streamkeeper_emulator::EmulatorConfig)); waits until the
    /// host reaches it over the link.
    pub async fn spawn_emulator(&self, streams: &[&str], event_interval: Duration) -> NsEmulator {
        let addr = SocketAddr::from((self.ns_addr, EMULATOR_PORT));
        let listen = addr.to_string();
        let interval = format!("{}ms", event_interval.as_millis());
        let mut args = vec![
            "emulate",
            "--listen",
            &listen,
            "--event-interval",
            &interval,
        ];
        for s in streams {
            args.extend(["--stream", s]);
        }
        let wrapper = [
            "ip",
            "netns",
            "exec",
            &self.name,
            "setpriv",
            "--pdeathsig",
            "KILL",
        ];
        let mut proc = Running::spawn_under(&wrapper, &args, "info");
        let deadline = Instant::now() + START_BOUND;
        loop {
            assert!(
                proc.is_running(),
                "the emulator in {} exited at start:\n{}",
                self.name,
                proc.stderr_text()
            );
            match http_get(addr, "/healthz").await {
                Ok((200, _)) => break,
                other if Instant::now() > deadline => panic!(
                    "the emulator in {} did not answer on {addr} within {START_BOUND:?}: \
                     {other:?}\n{}",
                    self.name,
                    proc.stderr_text()
                ),
                _ => sleep(Duration::from_millis(20)).await,
            }
        }
        NsEmulator { proc, addr }
    }

    /// Cuts the link: from the returned instant on, every packet in either direction is
    /// dropped inside the namespace, silently (the peer sees no ACK, no RST, no FIN).
    pub async fn cut(&self) -> Instant {
        self.nft_async(CUT_RULES).await;
        Instant::now()
    }

    /// Heals the link: from the returned instant on, packets pass again.
    pub async fn heal(&self) -> Instant {
        self.nft_async(HEAL_RULES).await;
        Instant::now()
    }

    /// Packets of one kind the cuts dropped so far.
    pub async fn dropped(&self, what: Dropped) -> u64 {
        let out = run_async(&[
            "ip",
            "netns",
            "exec",
            &self.name,
            "nft",
            "-j",
            "list",
            "counter",
            "inet",
            TABLE,
            what.name(),
        ])
        .await;
        let doc: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("nft -j output ({e}): {out}"));
        doc["nftables"]
            .as_array()
            .and_then(|items| items.iter().find_map(|i| i["counter"]["packets"].as_u64()))
            .unwrap_or_else(|| panic!("no counter {} in {out}", what.name()))
    }

    /// Waits, polling at most `bound`, until at least `n` packets of `what` were dropped;
    /// whether they were.
    pub async fn wait_dropped(&self, what: Dropped, n: u64, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        loop {
            if self.dropped(what).await >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    fn nft(&self, script: &str) {
        run_with_input(
            &["ip", "netns", "exec", &self.name, "nft", "-f", "-"],
            script,
        );
    }

    /// Like `nft`, without blocking a runtime thread (the pod under test shares the runtime).
    async fn nft_async(&self, script: &str) {
        let name = self.name.clone();
        let script = script.to_owned();
        tokio::task::spawn_blocking(move || {
            run_with_input(&["ip", "netns", "exec", &name, "nft", "-f", "-"], &script);
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove(&self.name, Some(&self.host_if));
    }
}

/// The platform emulator running inside a [`Netns`] (killed on drop).
#[derive(Debug)]
pub struct NsEmulator {
    /// The `streamkeeper emulate` process.
    pub proc: Running,
    /// Where it listens: the namespace's veth address.
    pub addr: SocketAddr,
}

impl NsEmulator {
    /// `http://ADDR` (token, validation and control endpoints).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://ADDR/streams/{name}`.
    pub fn stream_url(&self, name: &str) -> String {
        format!("ws://{}/streams/{name}", self.addr)
    }

    /// `GET /stats` over the link (fails while the link is cut).
    pub async fn stats(&self) -> Result<Stats, String> {
        let (code, body) = http_get(self.addr, "/stats")
            .await
            .map_err(|e| e.to_string())?;
        if code != 200 {
            return Err(format!("/stats answered {code}: {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("/stats is not JSON ({e}): {body}"))
    }
}

/// Fails the test unless this process may make namespaces and the tools are there.
fn preflight() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap_or("unknown");
    assert!(
        euid == "0",
        "the network-namespace tests need root (CAP_NET_ADMIN, effective uid {euid}): they make a \
         namespace, a veth pair and nftables rules; run them as root"
    );
    for (tool, arg, package) in [
        ("ip", "-V", "iproute2"),
        ("nft", "--version", "nftables"),
        ("setpriv", "--version", "util-linux"),
    ] {
        let ran = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(
            ran.is_ok_and(|s| s.success()),
            "`{tool}` is missing: the network-namespace tests need it (Debian package {package}; \
             scripts/install-test-deps installs it)"
        );
    }
}

/// Removes the namespaces and veth ends of test processes that are gone (a killed run).
fn sweep() {
    let gone = |name: &str, prefix: &str| {
        name.strip_prefix(prefix)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    for line in run(&["ip", "netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if gone(name, NETNS_PREFIX) {
            eprintln!("removing namespace {name}, left by a test process that is gone");
            remove(name, None);
        }
    }
    for line in run(&["ip", "-o", "link", "show"]).lines() {
        // `7: skh123-0@if2: <BROADCAST,...> ...`
        let name = line
            .split(": ")
            .nth(1)
            .map(|n| n.split('@').next().unwrap_or(n))
            .unwrap_or_default();
        if gone(name, VETH_PREFIX) {
            eprintln!("removing veth {name}, left by a test process that is gone");
            let _ = try_run(&["ip", "link", "del", name]);
        }
    }
}

/// Deletes a namespace of ours: the host's veth end (its peer goes with it), the processes
/// this suite started inside it, then the namespace. Best effort: it runs in `Drop`.
fn remove(name: &str, host_if: Option<&str>) {
    if let Some(host_if) = host_if
        && let Err(e) = try_run(&["ip", "link", "del", host_if])
    {
        eprintln!("removing veth {host_if}: {e}");
    }
    if let Ok(pids) = try_run(&["ip", "netns", "pids", name]) {
        for pid in pids.split_whitespace() {
            let _ = try_run(&["kill", "-KILL", pid]);
        }
    }
    if let Err(e) = try_run(&["ip", "netns", "del", name]) {
        eprintln!("removing namespace {name}: {e}");
    }
}

/// A /30 block no interface on the host uses yet, starting from one picked by the process id.
fn free_block(pid: u32, n: u32) -> (Ipv4Addr, Ipv4Addr) {
    let used = run(&["ip", "-o", "-4", "addr", "show"]);
    let start = pid.wrapping_mul(16).wrapping_add(n) % BLOCKS;
    (0..BLOCKS)
        .map(|i| BLOCKS_BASE + 4 * ((start + i) % BLOCKS))
        .map(|b| (Ipv4Addr::from(b + 1), Ipv4Addr::from(b + 2)))
        .find(|(host, _)| !used.contains(&format!(" {host}/")))
        .expect("a free /30 in 198.18.0.0/15")
}

/// Runs `args`, failing the test with its stderr when it fails; returns its stdout.
fn run(args: &[&str]) -> String {
    try_run(args).unwrap_or_else(|e| panic!("{e}"))
}

fn try_run(args: &[&str]) -> Result<String, String> {
    let (program, rest) = args.split_first().expect("a command");
    let out = Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// [`run`] without blocking a runtime thread.
async fn run_async(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Runs `args` with `input` on its stdin; fails the test when it fails.
fn run_with_input(args: &[&str], input: &str) {
    let (program, rest) = args.split_first().expect("a command");
    let mut child = Command::new(program)
        .args(rest)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    child
        .stdin
        .take()
        .expect("a piped stdin")
        .write_all(input.as_bytes())
        .unwrap_or_else(|e| panic!("writing to {args:?}: {e}"));
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}) on\n{input}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}
