//! A real Kubernetes API server for tests: etcd and kube-apiserver on free loopback ports, an
//! admin token, a kubeconfig, a [`kube::Client`] and a `kubectl` runner. There is no kubelet and
//! no controller-manager: objects are stored and validated, nothing runs pods, namespaces are
//! never finalized (so tests isolate themselves with fresh namespaces, [`Cluster::namespace`]).
//!
//! Where the binaries come from, in order:
//! - `SK_K8S_BIN`: the directory `scripts/k8s-test-tools` prints (`scripts/test` sets it);
//! - `KUBEBUILDER_ASSETS`: a directory with `kube-apiserver` and `etcd` (and `kubectl`);
//! - the cache `~/.cache/streamkeeper/k8s/*/bin` that script fills.
//!
//! Missing binaries fail the test with the command that builds them: nothing is skipped.
//! With `KUBECONFIG` set (and `SK_K8S_USE_KUBECONFIG=1`) the tests use that cluster instead
//! and start nothing; [`Cluster::owns_apiserver`] is then false (no audit log).
//!
//! One server per test binary: [`cluster`] starts it on first use. It is stopped when the test
//! binary exits (API server first, then etcd) by a small watchdog process, since Rust never
//! drops statics; a test binary that is killed leaves nothing behind either.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

/// How long etcd plus the API server may take to become ready (about 4 s on an idle machine).
const READY_WITHIN: Duration = Duration::from_secs(120);

/// The audit policy, at Metadata level (who, what, when): every request of a ServiceAccount
/// (the controller under test) and every write of anyone; nothing else.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  userGroups:
  - system:serviceaccounts
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: None
";

/// A running (or borrowed) API server.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    kubeconfig: PathBuf,
    server: String,
    ca_file: Option<PathBuf>,
    kubectl: PathBuf,
    helm: Option<PathBuf>,
    audit_log: Option<PathBuf>,
    children: Vec<Child>,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// The test binary's API server, started on first use.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(Cluster::start)
}

/// The directory holding the binaries, or a panic that says how to build them.
pub fn bin_dir() -> PathBuf {
    for var in ["SK_K8S_BIN", "KUBEBUILDER_ASSETS"] {
        if let Some(d) = std::env::var_os(var).filter(|d| !d.is_empty()) {
            let d = PathBuf::from(d);
            assert!(
                d.join("kube-apiserver").is_file() && d.join("etcd").is_file(),
                "{var}={} has no kube-apiserver and etcd",
                d.display()
            );
            return d;
        }
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let root = std::env::var_os("SK_K8S_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache/streamkeeper/k8s"));
    let mut found: Vec<PathBuf> = std::fs::read_dir(&root)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .filter(|b| b.join("kube-apiserver").is_file() && b.join("etcd").is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort_by_key(|b| std::fs::metadata(b).and_then(|m| m.modified()).ok());
    found.pop().unwrap_or_else(|| {
        panic!(
            "no kube-apiserver/etcd found (SK_K8S_BIN, KUBEBUILDER_ASSETS, {}): build them with \
             `scripts/k8s-test-tools` (10 to 20 minutes once; `scripts/test` runs it)",
            root.display()
        )
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read as _;
        let _ = f.read_exact(&mut buf);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// A kubeconfig for `server` with a bearer token.
pub fn kubeconfig_yaml(
    server: &str,
    ca_file: Option<&Path>,
    token: &str,
    namespace: &str,
) -> String {
    let ca = match ca_file {
        Some(ca) => format!("    certificate-authority: {}\n", ca.display()),
        None => "    insecure-skip-tls-verify: true\n".to_owned(),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n{ca}\
         users:\n- name: test\n  user:\n    token: {token}\n\
         contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: {namespace}\n\
         current-context: test\n"
    )
}

impl Cluster {
    fn start() -> Self {
        if std::env::var_os("SK_K8S_USE_KUBECONFIG").is_some_and(|v| v == "1")
            && let Some(kc) = std::env::var_os("KUBECONFIG")
        {
            return Self::borrowed(PathBuf::from(kc));
        }
        let bin = bin_dir();
        let dir = std::env::temp_dir().join(format!(
            "streamkeeper-k8s-{}-{}",
            std::process::id(),
            random_hex(4)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("certs"))
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let sa_key = dir.join("sa.key");
        let out = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&sa_key)
            .arg("2048")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run openssl (install it: apt-get install openssl): {e}")
            });
        assert!(
            out.status.success(),
            "openssl genrsa failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = random_hex(16);
        write(
            &dir.join("tokens.csv"),
            &format!("{token},admin,admin-uid,system:masters\n"),
        );
        write(&dir.join("audit-policy.yaml"), AUDIT_POLICY);
        let audit_log = dir.join("audit.log");

        let (client_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let etcd_log =
            std::fs::File::create(dir.join("etcd.log")).unwrap_or_else(|e| panic!("etcd log: {e}"));
        let etcd = Command::new(bin.join("etcd"))
            .arg("--data-dir")
            .arg(dir.join("etcd"))
            .arg(format!(
                "--listen-client-urls=http://127.0.0.1:{client_port}"
            ))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{client_port}"
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
            ))
            .arg(format!(
                "--initial-cluster=default=http://127.0.0.1:{peer_port}"
            ))
            .arg("--unsafe-no-fsync")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(etcd_log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run etcd: {e}"));
        let api_log = std::fs::File::create(dir.join("apiserver.log"))
            .unwrap_or_else(|e| panic!("apiserver log: {e}"));
        let apiserver = Command::new(bin.join("kube-apiserver"))
            .arg(format!("--etcd-servers=http://127.0.0.1:{client_port}"))
            .arg(format!("--cert-dir={}", dir.join("certs").display()))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg(format!("--secure-port={api_port}"))
            .arg(format!(
                "--service-account-issuer=https://127.0.0.1:{api_port}"
            ))
            .arg(format!("--service-account-key-file={}", sa_key.display()))
            .arg(format!(
                "--service-account-signing-key-file={}",
                sa_key.display()
            ))
            .arg(format!(
                "--token-auth-file={}",
                dir.join("tokens.csv").display()
            ))
            .arg("--authorization-mode=RBAC")
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--allow-privileged=true")
            .arg("--endpoint-reconciler-type=none")
            .arg(format!(
                "--audit-policy-file={}",
                dir.join("audit-policy.yaml").display()
            ))
            .arg(format!("--audit-log-path={}", audit_log.display()))
            .arg("--audit-log-format=json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(api_log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run kube-apiserver: {e}"));
        // Stops both when this test binary exits, however it exits.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(
                "p=$1 a=$2 e=$3 d=$4; while kill -0 $p 2>/dev/null; do sleep 0.5; done; \
                 kill -TERM $a 2>/dev/null; i=0; while kill -0 $a 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \
                 kill -KILL $a 2>/dev/null; kill -TERM $e 2>/dev/null; sleep 1; kill -KILL $e 2>/dev/null; rm -rf \"$d\"",
            )
            .arg("watchdog")
            .arg(std::process::id().to_string())
            .arg(apiserver.id().to_string())
            .arg(etcd.id().to_string())
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();

        let server = format!("https://127.0.0.1:{api_port}");
        let ca = dir.join("certs/apiserver.crt");
        let kubeconfig = dir.join("kubeconfig");
        let mut c = Self {
            kubectl: bin.join("kubectl"),
            helm: Some(bin.join("helm")).filter(|h| h.is_file()),
            dir: dir.clone(),
            kubeconfig: kubeconfig.clone(),
            server: server.clone(),
            ca_file: Some(ca.clone()),
            audit_log: Some(audit_log),
            children: vec![apiserver, etcd],
        };
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            for (i, name) in ["kube-apiserver", "etcd"].iter().enumerate() {
                if let Ok(Some(status)) = c.children[i].try_wait() {
                    let log = std::fs::read_to_string(dir.join(if i == 0 {
                        "apiserver.log"
                    } else {
                        "etcd.log"
                    }))
                    .unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(30).collect();
                    panic!(
                        "{name} exited ({status}) before it was ready:\n{}",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
            }
            if ca.is_file() {
                write(
                    &kubeconfig,
                    &kubeconfig_yaml(&server, Some(&ca), &token, "default"),
                );
                let out = c.kubectl(&["get", "--raw", "/readyz"]);
                if out.status.success() {
                    break;
                }
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("apiserver.log")).unwrap_or_default();
                panic!(
                    "kube-apiserver was not ready within {READY_WITHIN:?}: {}",
                    log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
        c
    }

    fn borrowed(kubeconfig: PathBuf) -> Self {
        let kubectl = which("kubectl").unwrap_or_else(|| bin_dir().join("kubectl"));
        let helm = which("helm");
        let dir = std::env::temp_dir().join(format!(
            "streamkeeper-k8s-{}-{}",
            std::process::id(),
            random_hex(4)
        ));
        let _ = std::fs::create_dir_all(&dir);
        let mut c = Self {
            dir,
            kubeconfig,
            server: String::new(),
            ca_file: None,
            kubectl,
            helm,
            audit_log: None,
            children: Vec::new(),
        };
        c.server = c
            .kubectl_ok(&[
                "config",
                "view",
                "--minify",
                "-o",
                "jsonpath={.clusters[0].cluster.server}",
            ])
            .trim()
            .to_owned();
        c
    }

    /// Whether this binary started the API server (and so has its audit log).
    pub fn owns_apiserver(&self) -> bool {
        !self.children.is_empty()
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// A scratch directory that lives as long as the server.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `kubectl` binary.
    pub fn kubectl_bin(&self) -> &Path {
        &self.kubectl
    }

    /// The `helm` binary, when built.
    pub fn helm_bin(&self) -> Option<&Path> {
        self.helm.as_deref()
    }

    /// The audit log (JSON lines, every write), when this binary owns the server.
    pub fn audit_log(&self) -> Option<&Path> {
        self.audit_log.as_deref()
    }

    /// A client with the admin kubeconfig, on the calling runtime.
    pub async fn client(&self) -> kube::Client {
        client_from(&self.kubeconfig).await
    }

    /// Writes a kubeconfig for `token` (a ServiceAccount token, say) and returns its path.
    pub fn kubeconfig_for(&self, name: &str, token: &str, namespace: &str) -> PathBuf {
        let path = self.dir.join(format!("kubeconfig-{name}"));
        if self.owns_apiserver() {
            write(
                &path,
                &kubeconfig_yaml(&self.server, self.ca_file.as_deref(), token, namespace),
            );
        } else {
            // Same cluster and CA as the borrowed kubeconfig, another user.
            let base = self.kubectl_ok(&["config", "view", "--minify", "--raw", "-o", "json"]);
            let mut v: serde_json::Value =
                serde_json::from_str(&base).unwrap_or_else(|e| panic!("kubeconfig: {e}"));
            v["users"] = serde_json::json!([{"name": "test", "user": {"token": token}}]);
            v["contexts"] = serde_json::json!([{"name": "test", "context": {"cluster": v["clusters"][0]["name"], "user": "test", "namespace": namespace}}]);
            v["current-context"] = serde_json::json!("test");
            write(&path, &v.to_string());
        }
        path
    }

    /// Runs kubectl with the admin kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with(&self.kubeconfig, args, None)
    }

    /// Runs kubectl with `kubeconfig`, feeding `stdin` if given.
    pub fn kubectl_with(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(&self.kubectl);
        cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.kubectl.display()));
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use std::io::Write as _;
            let _ = pipe.write_all(text.as_bytes());
        }
        child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
    }

    /// Runs kubectl (admin); panics with its stderr unless it succeeds; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` with `yaml` (admin); returns the output, success or not.
    pub fn apply(&self, yaml: &str) -> Output {
        self.kubectl_with(&self.kubeconfig, &["apply", "-f", "-"], Some(yaml))
    }

    /// Applies a CustomResourceDefinition (`yaml`, named `name`) and waits until it is
    /// established, so its objects can be created at once.
    pub fn install_crd(&self, yaml: &str, name: &str) {
        let out = self.apply(yaml);
        assert!(
            out.status.success(),
            "CRD {name} refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            &format!("crd/{name}"),
            "--timeout=60s",
        ]);
    }

    /// Runs helm against this cluster (admin kubeconfig), with its config, cache and data
    /// directories in the scratch directory so the user's helm setup is neither read nor
    /// written. Panics, saying how to build it, when there is no helm.
    pub fn helm(&self, args: &[&str]) -> Output {
        let helm = self.helm.as_deref().unwrap_or_else(|| {
            panic!(
                "no helm beside kube-apiserver ({}): build it with `scripts/k8s-test-tools`",
                self.kubectl
                    .parent()
                    .map(Path::display)
                    .map(|d| d.to_string())
                    .unwrap_or_default()
            )
        });
        let home = self.dir.join("helm-home");
        Command::new(helm)
            .args(args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", helm.display()))
    }

    /// [`Cluster::helm`] that must succeed; returns stdout.
    pub fn helm_ok(&self, args: &[&str]) -> String {
        let out = self.helm(args);
        assert!(
            out.status.success(),
            "helm {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates a fresh namespace `{prefix}-{random}` and returns its name.
    pub fn namespace(&self, prefix: &str) -> String {
        let name = format!("{prefix}-{}", random_hex(3));
        self.kubectl_ok(&["create", "namespace", &name]);
        name
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The API server first (it would log etcd errors while draining), then etcd.
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !self.children.is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// A client from a kubeconfig file, on the calling runtime.
pub async fn client_from(kubeconfig: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", kubeconfig.display()));
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", kubeconfig.display()));
    kube::Client::try_from(cfg).unwrap_or_else(|e| panic!("kube client: {e}"))
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `bound` with `what`.
pub async fn eventually<T, F, Fut>(bound: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("not within {bound:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
