//! The Helm chart, checked with Helm's own `helm lint --strict` and `helm template` (the real
//! helm binary, built by scripts/k8s-test-tools): default and non-default values, the RBAC
//! against the operator contract, the controller Deployment, values errors, and the dashboard.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml_ng::Value;
use support::{documents, helm, kind_name};

const CHART: &str = "charts/streamkeeper";
const RELEASE_NS: &str = "streamkeeper-system";

/// `helm template` of the chart with these extra arguments (`-f FILE`, `--set K=V`).
fn template(extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", "sk", CHART, "--namespace", RELEASE_NS];
    args.extend_from_slice(extra);
    let out = helm(&args);
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    documents(&String::from_utf8(out.stdout).expect("UTF-8"))
}

/// The stderr of a `helm template` that must fail.
fn template_error(extra: &[&str]) -> String {
    let mut args = vec!["template", "sk", CHART, "--namespace", RELEASE_NS];
    args.extend_from_slice(extra);
    let out = helm(&args);
    assert!(!out.status.success(), "helm {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn find<'d>(docs: &'d [Value], kind: &str, name: &str) -> &'d Value {
    docs.iter()
        .find(|d| kind_name(d) == (kind.to_owned(), name.to_owned()))
        .unwrap_or_else(|| {
            let all: Vec<_> = docs.iter().map(kind_name).collect();
            panic!("no {kind} {name} in {all:?}")
        })
}

fn kinds(docs: &[Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for d in docs {
        *out.entry(kind_name(d).0).or_default() += 1;
    }
    out
}

fn yaml(s: &str) -> Value {
    serde_yaml_ng::from_str(s).expect("valid YAML")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|x| x.as_str().expect("a string").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The rules of a Role or ClusterRole as (apiGroup, resource, verb) triples; a rule with
/// resourceNames or nonResourceURLs, or a wildcard, fails the test (the contract has none).
fn grants(role: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_sequence().expect("rules") {
        let keys: BTreeSet<&str> = rule
            .as_mapping()
            .expect("rule")
            .keys()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["apiGroups", "resources", "verbs"]),
            "{rule:?}"
        );
        for g in strings(&rule["apiGroups"]) {
            for r in strings(&rule["resources"]) {
                for v in strings(&rule["verbs"]) {
                    assert!(
                        ![&g, &r, &v].contains(&&"*".to_owned()),
                        "wildcard in {rule:?}"
                    );
                    out.insert((g.clone(), r.clone(), v.clone()));
                }
            }
        }
    }
    out
}

fn triples(spec: &[(&str, &str, &[&str])]) -> BTreeSet<(String, String, String)> {
    spec.iter()
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(move |v| ((*g).to_owned(), (*r).to_owned(), (*v).to_owned()))
        })
        .collect()
}

/// The controller's API calls, as tasks/operator-contract.md lists them.
fn contract_controller_rules() -> BTreeSet<(String, String, String)> {
    triples(&[
        (
            "streamkeeper.dev",
            "streamconnections",
            &["get", "list", "watch", "patch", "update"],
        ),
        (
            "streamkeeper.dev",
            "streamconnections/status",
            &["get", "patch", "update"],
        ),
        (
            "streamkeeper.dev",
            "streamconnections/finalizers",
            &["update"],
        ),
        (
            "",
            "configmaps",
            &[
                "get", "list", "watch", "create", "patch", "update", "delete",
            ],
        ),
        ("events.k8s.io", "events", &["create", "patch"]),
        ("", "events", &["create", "patch"]),
    ])
}

fn contract_lease_rules() -> BTreeSet<(String, String, String)> {
    triples(&[(
        "coordination.k8s.io",
        "leases",
        &["get", "list", "watch", "create", "update", "patch"],
    )])
}

fn controller_container(docs: &[Value]) -> &Value {
    &find(docs, "Deployment", "sk-streamkeeper-controller")["spec"]["template"]["spec"]["containers"]
        [0]
}

fn args(docs: &[Value]) -> Vec<String> {
    strings(&controller_container(docs)["args"])
}

#[test]
fn helm_lint_strict_passes_with_default_and_non_default_values() {
    for values in [
        None,
        Some("charts/streamkeeper/ci/bundled-redis-values.yaml"),
        Some("charts/streamkeeper/ci/external-redis-values.yaml"),
        Some("manifests/tenant-limits/values.yaml"),
    ] {
        let mut args = vec!["lint", "--strict", CHART];
        if let Some(v) = values {
            args.extend(["-f", v]);
        }
        let out = helm(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("0 chart(s) failed"),
            "helm {args:?}:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!stdout.contains("[WARNING]"), "{stdout}");
    }
}

#[test]
fn default_values_render_the_controller_its_rbac_service_pdb_and_dashboard() {
    let docs = template(&[]);
    assert_eq!(
        kinds(&docs),
        BTreeMap::from([
            ("ClusterRole".to_owned(), 1),
            ("ClusterRoleBinding".to_owned(), 1),
            ("ConfigMap".to_owned(), 1),
            ("Deployment".to_owned(), 1),
            ("PodDisruptionBudget".to_owned(), 1),
            ("Role".to_owned(), 1),
            ("RoleBinding".to_owned(), 1),
            ("Service".to_owned(), 1),
            ("ServiceAccount".to_owned(), 1),
        ])
    );
    let pdb = find(&docs, "PodDisruptionBudget", "sk-streamkeeper-controller");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        find(&docs, "Deployment", "sk-streamkeeper-controller")["spec"]["selector"]["matchLabels"]
    );
    let svc = find(&docs, "Service", "sk-streamkeeper-metrics");
    assert_eq!(
        svc["spec"]["ports"],
        yaml("[{name: metrics, port: 9465, targetPort: admin, protocol: TCP}]")
    );
    for d in &docs {
        if d["kind"] != "ClusterRole" && d["kind"] != "ClusterRoleBinding" {
            assert_eq!(d["metadata"]["namespace"], RELEASE_NS, "{:?}", kind_name(d));
        }
    }
}

#[test]
fn rbac_grants_exactly_the_contract_cluster_wide_and_no_secret() {
    let docs = template(&[]);
    let cluster = find(&docs, "ClusterRole", "sk-streamkeeper-controller");
    assert_eq!(grants(cluster), contract_controller_rules());
    let lease = find(&docs, "Role", "sk-streamkeeper-leader-election");
    assert_eq!(lease["metadata"]["namespace"], RELEASE_NS);
    assert_eq!(grants(lease), contract_lease_rules());
    for binding in [
        find(&docs, "ClusterRoleBinding", "sk-streamkeeper-controller"),
        find(&docs, "RoleBinding", "sk-streamkeeper-leader-election"),
    ] {
        assert_eq!(
            binding["subjects"],
            yaml(&format!(
                "[{{kind: ServiceAccount, name: sk-streamkeeper, namespace: {RELEASE_NS}}}]"
            ))
        );
        assert_eq!(binding["roleRef"]["name"], binding["metadata"]["name"]);
    }
    let every: BTreeSet<_> = docs
        .iter()
        .filter(|d| matches!(d["kind"].as_str(), Some("Role" | "ClusterRole")))
        .flat_map(grants)
        .collect();
    assert!(every.iter().all(|(_, r, _)| r != "secrets"), "{every:?}");
}

#[test]
fn a_watched_namespace_turns_the_cluster_role_into_a_role_there() {
    let docs = template(&["--set", "controller.watchNamespace=contact-center"]);
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"] == "ClusterRole" || d["kind"] == "ClusterRoleBinding"),
        "nothing cluster-wide"
    );
    let role = find(&docs, "Role", "sk-streamkeeper-controller");
    assert_eq!(role["metadata"]["namespace"], "contact-center");
    assert_eq!(grants(role), contract_controller_rules());
    let binding = find(&docs, "RoleBinding", "sk-streamkeeper-controller");
    assert_eq!(binding["metadata"]["namespace"], "contact-center");
    assert_eq!(binding["subjects"][0]["namespace"], RELEASE_NS);
    assert_eq!(
        grants(find(&docs, "Role", "sk-streamkeeper-leader-election")),
        contract_lease_rules()
    );
    assert!(args(&docs).contains(&"--namespace=contact-center".to_owned()));
}

#[test]
fn the_controller_runs_two_hardened_replicas_with_probes_on_its_admin_port() {
    let docs = template(&[]);
    let deploy = find(&docs, "Deployment", "sk-streamkeeper-controller");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "sk-streamkeeper");
    assert_eq!(
        pod["securityContext"],
        yaml(
            "{runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, seccompProfile: {type: RuntimeDefault}}"
        )
    );
    let anti =
        &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(
        anti["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert_eq!(
        anti["podAffinityTerm"]["labelSelector"]["matchLabels"],
        deploy["spec"]["selector"]["matchLabels"]
    );
    let c = controller_container(&docs);
    assert_eq!(c["image"], "ghcr.io/streamkeeper/streamkeeper:0.1.0");
    assert_eq!(
        args(&docs),
        [
            "controller",
            "--admin=0.0.0.0:9465",
            "--default-tenant-limit=50"
        ]
    );
    assert_eq!(
        c["env"],
        yaml(
            "[{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}},
              {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}},
              {name: STREAMKEEPER_LOG, value: info}]"
        )
    );
    assert_eq!(
        c["ports"],
        yaml("[{name: admin, containerPort: 9465, protocol: TCP}]")
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"],
        yaml("{path: /healthz, port: admin}")
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        yaml("{path: /readyz, port: admin}")
    );
    assert_eq!(
        c["securityContext"],
        yaml(
            "{runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, readOnlyRootFilesystem: true,
              allowPrivilegeEscalation: false, capabilities: {drop: [ALL]},
              seccompProfile: {type: RuntimeDefault}}"
        )
    );
    assert!(c["resources"]["requests"]["memory"].is_string());
}

#[test]
fn bundled_redis_tenant_limits_and_monitors_reach_the_objects() {
    let docs = template(&["-f", "charts/streamkeeper/ci/bundled-redis-values.yaml"]);
    assert_eq!(
        args(&docs),
        [
            "controller",
            "--admin=0.0.0.0:9465",
            "--default-tenant-limit=20",
            "--tenant-limit=acme=50",
            "--tenant-limit=globex=10",
            "--namespace=contact-center",
            &format!("--redis=redis://sk-streamkeeper-redis.{RELEASE_NS}.svc:6379"),
            "--lease-duration=20s",
        ]
    );
    let redis = find(&docs, "Deployment", "sk-streamkeeper-redis");
    let pod = &redis["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["image"], "redis:7");
    assert_eq!(
        strings(&pod["containers"][0]["args"]),
        ["--save", "", "--appendonly", "no", "--protected-mode", "no"],
        "no persistence"
    );
    assert_eq!(pod["volumes"], yaml("[{name: data, emptyDir: {}}]"));
    let svc = find(&docs, "Service", "sk-streamkeeper-redis");
    assert_eq!(
        svc["spec"]["selector"],
        redis["spec"]["selector"]["matchLabels"]
    );
    // One replica: a PDB of minAvailable 1 would block every drain.
    assert!(!docs.iter().any(|d| d["kind"] == "PodDisruptionBudget"));

    let sm = find(&docs, "ServiceMonitor", "sk-streamkeeper-controller");
    assert_eq!(sm["metadata"]["labels"]["release"], "kube-prometheus-stack");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(
        sm["spec"]["selector"]["matchLabels"],
        find(&docs, "Service", "sk-streamkeeper-metrics")["spec"]["selector"]
    );
    let pm = find(&docs, "PodMonitor", "sk-streamkeeper-sidecars");
    assert_eq!(
        pm["spec"]["selector"]["matchLabels"],
        yaml("{streamkeeper.dev/injected: 'true'}")
    );
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "sk-admin");
    assert_eq!(
        find(&docs, "ConfigMap", "sk-streamkeeper-dashboard")["metadata"]["namespace"],
        "monitoring"
    );
}

#[test]
fn an_external_redis_comes_from_its_url_or_a_secret() {
    let docs = template(&["-f", "charts/streamkeeper/ci/external-redis-values.yaml"]);
    let a = args(&docs);
    assert!(
        a.contains(
            &"--redis=redis+cluster://redis-0.redis:6379,redis-1.redis:6379,redis-2.redis:6379"
                .to_owned()
        ),
        "{a:?}"
    );
    assert!(
        a.iter()
            .any(|x| x.starts_with("--sidecar-redis=redis+cluster://redis-0.redis.data.svc"))
    );
    assert_eq!(
        controller_container(&docs)["image"],
        "ghcr.io/streamkeeper/streamkeeper:0.1.0-rc.1"
    );
    assert_eq!(
        find(&docs, "ServiceAccount", "streamkeeper-operator")["metadata"]["annotations"]["example.com/owner"],
        "platform"
    );
    assert!(
        !docs.iter().any(|d| d["kind"] == "ConfigMap"),
        "dashboards off"
    );

    let docs = template(&["--set", "redis.existingSecret.name=redis-url"]);
    assert!(!args(&docs).iter().any(|a| a.starts_with("--redis")));
    let env = controller_container(&docs)["env"]
        .as_sequence()
        .expect("env");
    assert!(env.contains(&yaml(
        "{name: REDIS_URL, valueFrom: {secretKeyRef: {name: redis-url, key: url}}}"
    )));
}

#[test]
fn the_tenant_limits_example_sets_the_controller_flags() {
    let docs = template(&["-f", "manifests/tenant-limits/values.yaml"]);
    let a = args(&docs);
    for flag in [
        "--default-tenant-limit=20",
        "--tenant-limit=acme=50",
        "--tenant-limit=globex=10",
    ] {
        assert!(a.contains(&flag.to_owned()), "{flag} in {a:?}");
    }
}

#[test]
fn wrong_values_fail_naming_the_key() {
    let err = template_error(&[
        "--set",
        "redis.url=redis://r:6379",
        "--set",
        "redis.bundled.enabled=true",
    ]);
    assert!(
        err.contains(
            "redis: set only one of redis.url, redis.existingSecret.name and redis.bundled.enabled"
        ),
        "{err}"
    );
    let err = template_error(&["--set", "controller.replicas=0"]);
    assert!(err.contains("/controller/replicas"), "{err}");
    let err = template_error(&["--set", "controler.replicas=2"]);
    assert!(err.contains("controler"), "{err}");
    let err = template_error(&["--set", "redis.url=localhost:6379"]);
    assert!(err.contains("/redis/url"), "{err}");
    let err = template_error(&["--set", "tenantLimits.perTenant.acme=0"]);
    assert!(err.contains("/tenantLimits/perTenant/acme"), "{err}");
    let err = template_error(&["--set", "serviceAccount.create=false"]);
    assert!(err.contains("serviceAccount.name"), "{err}");
}

#[test]
fn the_dashboard_shows_every_sidecar_metric_of_the_design() {
    let docs = template(&[]);
    let cm = find(&docs, "ConfigMap", "sk-streamkeeper-dashboard");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: serde_json::Value =
        serde_json::from_str(cm["data"]["streamkeeper.json"].as_str().expect("JSON text"))
            .expect("the dashboard is JSON");
    let exprs: Vec<String> = json["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("expr").to_owned())
        .collect();
    for (metric, panel_needs) in [
        ("streamkeeper_stream_state", "by (state)"),
        ("streamkeeper_reaped_total", "by (reason)"),
        ("streamkeeper_reconnects_total", "rate("),
        (
            "streamkeeper_pong_rtt_seconds_bucket",
            "histogram_quantile(0.99",
        ),
        ("streamkeeper_token_refresh_total", "result"),
        ("streamkeeper_gaps_total", "increase("),
        ("streamkeeper_redis_up", "min("),
    ] {
        assert!(
            exprs
                .iter()
                .any(|e| e.contains(metric) && e.contains(panel_needs)),
            "no panel queries {metric} with {panel_needs}: {exprs:#?}"
        );
    }
    // Every metric the dashboard queries is one the sidecar exports.
    let source = std::fs::read_to_string(support::root().join("crates/sidecar/src/metrics.rs"))
        .expect("the sidecar's metrics");
    for e in &exprs {
        for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if let Some(family) = word.strip_prefix("streamkeeper_") {
                let family = family.strip_suffix("_bucket").unwrap_or(family);
                assert!(
                    source.contains(&format!("\"streamkeeper_{family}\"")),
                    "the dashboard queries streamkeeper_{family}, which the sidecar does not export"
                );
            }
        }
    }
}
