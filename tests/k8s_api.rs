//! corral's CRDs, examples and validation against a real Kubernetes API server (etcd and
//! kube-apiserver v1.32 from `scripts/k8s-apiserver.sh`, see tests/common/apiserver.rs).
//!
//! One server serves every test in this file ([`ApiServer::shared`], ~4 s to start), so
//! tests keep out of each other's way: each uses its own namespaces and names, and the
//! validation cases only dry-run. The CRDs are applied once, by whichever test needs them
//! first; `crds_are_accepted_as_structural` says why when that fails.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::apiserver::ApiServer;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_corral");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The documents of a YAML file, as JSON values.
fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// `metadata.name` of each CRD in crds/.
fn crd_names() -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(repo("crds")).unwrap() {
        let path = entry.unwrap().path();
        for doc in yaml_documents(&path) {
            assert_eq!(
                doc["kind"],
                "CustomResourceDefinition",
                "{}",
                path.display()
            );
            names.push(doc["metadata"]["name"].as_str().unwrap().to_string());
        }
    }
    names.sort();
    assert_eq!(
        names,
        ["resourcepolicies.corral.dev", "workloads.corral.dev"],
        "crds/ should hold corral's two CRDs"
    );
    names
}

/// `kubectl apply -f crds/`, then waits until every CRD is Established. `Err` holds what
/// kubectl said.
fn install_crds(server: &ApiServer) -> Result<(), String> {
    let crds = repo("crds");
    let apply = server.kubectl(&["apply", "-f", crds.to_str().unwrap()]);
    if !apply.status.success() {
        return Err(format!(
            "`kubectl apply -f crds/` failed ({}):\n{}",
            apply.status,
            text(&apply)
        ));
    }
    let mut wait = vec!["wait", "--for=condition=Established", "--timeout=60s"];
    let names: Vec<String> = crd_names()
        .into_iter()
        .map(|n| format!("crd/{n}"))
        .collect();
    wait.extend(names.iter().map(String::as_str));
    let waited = server.kubectl(&wait);
    if !waited.status.success() {
        return Err(format!(
            "the CRDs were not Established within 60 s ({}):\n{}",
            waited.status,
            text(&waited)
        ));
    }
    Ok(())
}

fn crds_result(server: &ApiServer) -> &'static Result<(), String> {
    static CRDS: OnceLock<Result<(), String>> = OnceLock::new();
    CRDS.get_or_init(|| install_crds(server))
}

/// The shared server with corral's CRDs installed and Established.
fn server_with_crds() -> &'static ApiServer {
    let server = ApiServer::shared();
    if let Err(e) = crds_result(server) {
        panic!(
            "corral's CRDs could not be installed, so this test cannot run \
             (see crds_are_accepted_as_structural):\n{e}"
        );
    }
    server
}

/// Applies `Namespace` objects (idempotent, unlike `kubectl create namespace`).
fn ensure_namespaces<'a>(server: &ApiServer, names: impl IntoIterator<Item = &'a str>) {
    let manifest: String = names
        .into_iter()
        .map(|n| format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {n}\n---\n"))
        .collect();
    let output = server.kubectl_stdin(&["apply", "-f", "-"], &manifest);
    assert!(output.status.success(), "{}", text(&output));
}

#[test]
fn crds_are_accepted_as_structural() {
    let server = ApiServer::shared();
    eprintln!("API server ready in {:?}", server.started_in());
    if let Err(e) = crds_result(server) {
        panic!("the API server refuses corral's CRDs:\n{e}");
    }
    for name in crd_names() {
        let crd: Value = serde_json::from_str(&server.kubectl_ok(&[
            "get",
            &format!("crd/{name}"),
            "-o",
            "json",
        ]))
        .unwrap();
        let conditions: BTreeMap<&str, &str> = crd["status"]["conditions"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no status.conditions: {crd:#}"))
            .iter()
            .map(|c| (c["type"].as_str().unwrap(), c["status"].as_str().unwrap()))
            .collect();
        assert_eq!(
            conditions.get("Established"),
            Some(&"True"),
            "{name}: {conditions:?}"
        );
        assert_eq!(
            conditions.get("NamesAccepted"),
            Some(&"True"),
            "{name}: {conditions:?}"
        );
        // The server sets NonStructuralSchema (status True) when a schema is not structural.
        assert_eq!(
            conditions.get("NonStructuralSchema"),
            None,
            "{name}: {conditions:?}"
        );
        assert_eq!(
            crd["status"]["acceptedNames"]["kind"], crd["spec"]["names"]["kind"],
            "{name}"
        );
    }
    // Only structural schemas are published in the OpenAPI document, which `kubectl explain`
    // reads. Publication lags Established a little, so poll for it (bounded).
    for field in [
        "workloads.spec.resources.limits",
        "resourcepolicies.spec.strategy",
    ] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let output = server.kubectl(&["explain", field]);
            if output.status.success() {
                assert!(
                    text(&output).contains("DESCRIPTION"),
                    "kubectl explain {field}:\n{}",
                    text(&output)
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "kubectl explain {field} still fails after 30 s:\n{}",
                text(&output)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Files under examples/ that are not Kubernetes objects: node lists for
/// `corral plan --nodes`. `kubectl apply -R -f examples/` fails on them ("invalid object to
/// validate"), so the test applies the other files by name, and checks that this list is
/// exactly the set of such files.
const NOT_KUBERNETES: &[&str] = &["examples/nodes.yaml", "examples/one-node.yaml"];

#[test]
fn examples_apply() {
    let server = server_with_crds();
    let mut files = Vec::new();
    let mut stack = vec![repo("examples")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
            {
                files.push(path);
            }
        }
    }
    files.sort();

    let mut node_lists = BTreeSet::new();
    let mut manifests = Vec::new();
    let mut workloads = BTreeSet::new();
    let mut policies = BTreeSet::new();
    for path in &files {
        let rel = path
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let docs = yaml_documents(path);
        if !docs.is_empty() && docs.iter().all(Value::is_array) {
            node_lists.insert(rel);
            continue;
        }
        for doc in &docs {
            assert!(
                doc.get("apiVersion").is_some() && doc.get("kind").is_some(),
                "{rel}: a document that is neither a Kubernetes object nor a node list"
            );
            let name = doc["metadata"]["name"].as_str().unwrap().to_string();
            match doc["kind"].as_str().unwrap() {
                "Workload" => {
                    let ns = doc["metadata"]["namespace"].as_str().unwrap_or("default");
                    workloads.insert((ns.to_string(), name));
                }
                "ResourcePolicy" => {
                    policies.insert(name);
                }
                other => panic!("{rel}: unexpected kind {other}"),
            }
        }
        manifests.push(path.clone());
    }
    assert_eq!(
        node_lists,
        NOT_KUBERNETES.iter().map(|s| s.to_string()).collect(),
        "files under examples/ that are not Kubernetes objects"
    );
    assert!(workloads.len() >= 5 && policies.len() >= 3, "{workloads:?}");

    ensure_namespaces(server, workloads.iter().map(|(ns, _)| ns.as_str()));
    let mut args = vec!["apply", "--server-side"];
    for path in &manifests {
        args.extend(["-f", path.to_str().unwrap()]);
    }
    let applied = server.kubectl_ok(&args);
    assert_eq!(
        applied.lines().count(),
        workloads.len() + policies.len(),
        "{applied}"
    );

    // `kubectl get workloads -A` as a person reads it: NAMESPACE and NAME columns.
    let listed = server.kubectl_ok(&["get", "workloads", "-A"]);
    let rows: BTreeSet<(String, String)> = listed
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut cells = l.split_whitespace();
            Some((cells.next()?.to_string(), cells.next()?.to_string()))
        })
        .collect();
    let missing: Vec<_> = workloads.difference(&rows).collect();
    assert!(missing.is_empty(), "not listed: {missing:?}\n{listed}");
    let listed = server.kubectl_ok(&["get", "resourcepolicies", "-o", "name"]);
    for policy in &policies {
        assert!(
            listed
                .lines()
                .any(|l| l == format!("resourcepolicy.corral.dev/{policy}")),
            "{policy} not listed:\n{listed}"
        );
    }
}

/// The cells of a `kubectl get` table, by header. kubectl left-aligns each column at its
/// header, and empty cells are blank, so cells are cut at the headers' offsets.
fn table(output: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = output.lines();
    let header = lines.next().expect("no header line");
    let mut starts = Vec::new();
    let mut prev = ' ';
    for (i, c) in header.char_indices() {
        if c != ' ' && prev == ' ' {
            starts.push(i);
        }
        prev = c;
    }
    let names: Vec<String> = header.split_whitespace().map(str::to_string).collect();
    lines
        .map(|line| {
            names
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let from = starts[i].min(line.len());
                    let to = starts
                        .get(i + 1)
                        .copied()
                        .unwrap_or(line.len())
                        .min(line.len());
                    (name.clone(), line[from..to].trim().to_string())
                })
                .collect()
        })
        .collect()
}

fn headers(output: &str) -> Vec<String> {
    output
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// `wanted` appear in `got` in this order (other columns may sit between them).
fn in_order(got: &[String], wanted: &[&str]) -> bool {
    let mut rest = got.iter();
    wanted.iter().all(|w| rest.any(|g| g == w))
}

#[test]
fn printer_columns_show_phase_ready_cpu_memory_and_age() {
    let server = server_with_crds();
    ensure_namespaces(server, ["columns"]);
    let manifest = "apiVersion: corral.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: shown\n  \
                    namespace: columns\nspec:\n  replicas: 2\n  resources:\n    requests: \
                    {cpu: 250m, memory: 64Mi}\n    limits: {cpu: 500m, memory: 128Mi}\n  \
                    command: {args: [sleep, infinity]}\n";
    let output = server.kubectl_stdin(&["apply", "--server-side", "-f", "-"], manifest);
    assert!(output.status.success(), "{}", text(&output));
    // What the controller would write, through the status subresource.
    server.kubectl_ok(&[
        "patch",
        "workload",
        "shown",
        "-n",
        "columns",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running","readyReplicas":2,"request":{"cpu":"250m","memory":"64Mi"}}}"#,
    ]);

    let listed = server.kubectl_ok(&["get", "workloads", "-n", "columns"]);
    let got = headers(&listed);
    assert!(
        in_order(&got, &["NAME", "PHASE", "READY", "CPU", "MEMORY", "AGE"]),
        "headers {got:?}:\n{listed}"
    );
    let rows = table(&listed);
    assert_eq!(rows.len(), 1, "{listed}");
    let row = &rows[0];
    assert_eq!(row["NAME"], "shown", "{listed}");
    assert_eq!(row["PHASE"], "Running", "{listed}");
    assert_eq!(row["READY"], "2", "{listed}");
    assert_eq!(row["CPU"], "250m", "{listed}");
    assert_eq!(row["MEMORY"], "64Mi", "{listed}");
    assert!(
        row["AGE"].ends_with('s') || row["AGE"].ends_with('m'),
        "{listed}"
    );
    if let Some(replicas) = row.get("REPLICAS") {
        assert_eq!(replicas, "2", "{listed}");
    }
    // The short name and the category reach the same objects.
    let short = server.kubectl_ok(&["get", "wl", "-n", "columns", "-o", "name"]);
    assert_eq!(short.trim(), "workload.corral.dev/shown");
    let category = server.kubectl_ok(&["get", "corral", "-n", "columns", "-o", "name"]);
    assert!(category.contains("workload.corral.dev/shown"), "{category}");

    let policy = "apiVersion: corral.dev/v1alpha1\nkind: ResourcePolicy\nmetadata:\n  \
                  name: columns-policy\nspec:\n  strategy: Fair\n  namespaces: [columns]\n";
    let output = server.kubectl_stdin(&["apply", "--server-side", "-f", "-"], policy);
    assert!(output.status.success(), "{}", text(&output));
    let listed = server.kubectl_ok(&["get", "resourcepolicies", "columns-policy"]);
    let got = headers(&listed);
    assert!(
        in_order(&got, &["NAME", "STRATEGY", "AGE"]),
        "headers {got:?}:\n{listed}"
    );
    assert_eq!(table(&listed)[0]["STRATEGY"], "Fair", "{listed}");
}

/// An invalid manifest, and the words that must appear in both the server's and corral's
/// messages: the field (or, for kind and version, the offending value).
struct Case {
    name: &'static str,
    yaml: String,
    names: &'static str,
}

const WORKLOAD: &str = "apiVersion: corral.dev/v1alpha1\nkind: Workload\nmetadata:\n  \
                        name: web\n  namespace: shop\nspec:\n";
const POLICY: &str =
    "apiVersion: corral.dev/v1alpha1\nkind: ResourcePolicy\nmetadata:\n  name: gold\nspec:\n";

fn workload(spec: &str) -> String {
    format!("{WORKLOAD}{spec}")
}

fn policy(spec: &str) -> String {
    format!("{POLICY}{spec}")
}

fn named(name: &str, rest: &str) -> String {
    format!(
        "apiVersion: corral.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: {name}\n  \
         namespace: shop\n{rest}spec:\n  command: {{args: [x]}}\n"
    )
}

fn case(name: &'static str, yaml: String, names: &'static str) -> Case {
    Case { name, yaml, names }
}

/// Manifests both must reject.
fn invalid_cases() -> Vec<Case> {
    let cmd = "  command: {args: [x]}\n";
    vec![
        case(
            "limits-below-requests-cpu",
            workload(&format!(
                "  resources:\n    requests: {{cpu: \"2\"}}\n    limits: {{cpu: 1500m}}\n{cmd}"
            )),
            "spec.resources.limits.cpu",
        ),
        case(
            "limits-below-requests-memory",
            workload(&format!(
                "  resources:\n    requests: {{memory: 1Gi}}\n    limits: {{memory: 1G}}\n{cmd}"
            )),
            "spec.resources.limits.memory",
        ),
        case(
            "limits-below-requests-pids",
            workload(&format!(
                "  resources:\n    requests: {{pids: 100}}\n    limits: {{pids: 50}}\n{cmd}"
            )),
            "spec.resources.limits.pids",
        ),
        case(
            "both-command-and-adopt",
            workload(&format!("{cmd}  adopt: {{pidFile: /run/x.pid}}\n")),
            "exactly one of command or adopt",
        ),
        case(
            "neither-command-nor-adopt",
            workload("  replicas: 1\n"),
            "exactly one of command or adopt",
        ),
        case(
            "adopt-two-ways",
            workload("  adopt: {pidFile: /run/x.pid, cgroupPath: /system.slice/x.service}\n"),
            "spec.adopt",
        ),
        case(
            "replicas-above-1000",
            workload(&format!("  replicas: 1001\n{cmd}")),
            "spec.replicas",
        ),
        case(
            "replicas-negative",
            workload(&format!("  replicas: -1\n{cmd}")),
            "spec.replicas",
        ),
        case(
            "replicas-not-a-number",
            workload(&format!("  replicas: two\n{cmd}")),
            "spec.replicas",
        ),
        case(
            "priority-negative",
            workload(&format!("  priority: -3\n{cmd}")),
            "spec.priority",
        ),
        case(
            "grace-period-too-long",
            workload(&format!("  terminationGracePeriodSeconds: 4000\n{cmd}")),
            "spec.terminationGracePeriodSeconds",
        ),
        case(
            "bad-quantity-12XB",
            workload(&format!("  resources:\n    limits: {{cpu: 12XB}}\n{cmd}")),
            "spec.resources.limits.cpu",
        ),
        case(
            "negative-quantity-string",
            workload(&format!(
                "  resources:\n    requests: {{memory: \"-1\"}}\n{cmd}"
            )),
            "spec.resources.requests.memory",
        ),
        case(
            "negative-quantity-integer",
            workload(&format!(
                "  resources:\n    requests: {{memory: -1}}\n{cmd}"
            )),
            "spec.resources.requests.memory",
        ),
        case(
            "quantity-as-float",
            workload(&format!("  resources:\n    limits: {{memory: 1.5}}\n{cmd}")),
            "spec.resources.limits.memory",
        ),
        case(
            "unknown-field",
            workload(&format!("  priorty: 5\n{cmd}")),
            "spec.priorty",
        ),
        case(
            "unknown-nested-field",
            workload("  command: {args: [x], restart: Never}\n"),
            "spec.command.restart",
        ),
        case(
            "policy-unknown-field",
            policy("  strategy: Fair\n  overcommit: {disk: 2}\n"),
            "spec.overcommit.disk",
        ),
        case(
            "missing-spec",
            WORKLOAD.trim_end_matches("spec:\n").to_string(),
            "spec",
        ),
        case(
            "empty-args",
            workload("  command: {args: []}\n"),
            "spec.command.args",
        ),
        case(
            "unknown-restart-policy",
            workload("  command: {args: [x], restartPolicy: Sometimes}\n"),
            "spec.command.restartPolicy",
        ),
        case(
            "env-name-not-an-identifier",
            workload("  command:\n    args: [x]\n    env: [{name: 1X, value: v}]\n"),
            "spec.command.env[0].name",
        ),
        case(
            "duplicate-env",
            workload(
                "  command:\n    args: [x]\n    env: [{name: A, value: \"1\"}, {name: A, value: \"2\"}]\n",
            ),
            "spec.command.env",
        ),
        case(
            "io-weight-zero",
            workload(&format!("  resources: {{ioWeight: 0}}\n{cmd}")),
            "spec.resources.ioWeight",
        ),
        case(
            "unknown-placement-mode",
            workload(&format!("  placement: {{mode: Scatter}}\n{cmd}")),
            "spec.placement.mode",
        ),
        case("name-uppercase", named("Web", ""), "metadata.name"),
        case("name-with-a-dot", named("web.1", ""), "metadata.name"),
        case(
            "name-longer-than-63",
            named(&"a".repeat(64), ""),
            "metadata.name",
        ),
        case(
            "wrong-api-version",
            WORKLOAD.replace("corral.dev/v1alpha1", "corral.dev/v1") + cmd,
            "corral.dev/v1\"",
        ),
        case(
            "unknown-kind",
            WORKLOAD.replace("kind: Workload", "kind: Workloads") + cmd,
            "\"Workloads\"",
        ),
        case(
            "unknown-strategy",
            policy("  strategy: fair\n"),
            "spec.strategy",
        ),
        case(
            "overcommit-below-1",
            policy("  strategy: Fair\n  overcommit: {cpu: 0.5}\n"),
            "spec.overcommit.cpu",
        ),
        case(
            "cpu-period-too-short",
            policy("  strategy: Fair\n  cgroup: {cpuPeriodMicros: 500}\n"),
            "spec.cgroup.cpuPeriodMicros",
        ),
        case(
            "unknown-memory-protection",
            policy("  strategy: Fair\n  cgroup: {memoryProtection: Max}\n"),
            "spec.cgroup.memoryProtection",
        ),
        case(
            "node-grace-too-short",
            policy("  strategy: Fair\n  nodeGracePeriodSeconds: 1\n"),
            "spec.nodeGracePeriodSeconds",
        ),
        case(
            "precedence-too-high",
            policy("  strategy: Fair\n  precedence: 5000\n"),
            "spec.precedence",
        ),
        case(
            "unknown-preemption-policy",
            policy("  strategy: Priority\n  preemption: {policy: Always}\n"),
            "spec.preemption.policy",
        ),
        case(
            "demand-floor-above-100",
            policy("  strategy: Demand\n  demand: {floorPercent: 101}\n"),
            "spec.demand.floorPercent",
        ),
        case(
            "duplicate-tenants",
            policy(
                "  strategy: Fair\n  tenants:\n  - namespace: a\n  - namespace: a\n    weight: 2\n",
            ),
            "spec.tenants",
        ),
        case(
            "duplicate-namespaces",
            policy("  strategy: Fair\n  namespaces: [a, a]\n"),
            "spec.namespaces",
        ),
        case(
            "tenant-weight-zero",
            policy("  strategy: Fair\n  tenants: [{namespace: a, weight: 0}]\n"),
            "spec.tenants[0].weight",
        ),
        case(
            "policy-defaults-limits-below-requests",
            policy(
                "  strategy: Fair\n  defaults:\n    requests: {cpu: \"1\"}\n    limits: {cpu: 500m}\n",
            ),
            "spec.defaults.limits.cpu",
        ),
        case(
            "relative-working-dir",
            workload("  command: {args: [x], workingDir: tmp}\n"),
            "spec.command.workingDir",
        ),
        case(
            "relative-pid-file",
            workload("  adopt: {pidFile: x.pid}\n"),
            "spec.adopt.pidFile",
        ),
        case(
            "cgroup-path-with-dotdot",
            workload("  adopt: {cgroupPath: /a/../../etc}\n"),
            "spec.adopt.cgroupPath",
        ),
        case(
            "policy-ref-not-a-dns-label",
            workload(&format!("  policyRef: {{name: ../gold}}\n{cmd}")),
            "spec.policyRef.name",
        ),
        case(
            "policy-namespace-not-a-dns-label",
            policy("  strategy: Fair\n  namespaces: [Team_A]\n"),
            "spec.namespaces[0]",
        ),
        case(
            "memory-high-ratio-zero",
            policy("  strategy: Fair\n  cgroup: {memoryHighRatio: 0}\n"),
            "spec.cgroup.memoryHighRatio",
        ),
        case(
            "empty-program",
            workload("  command: {args: [\"\"]}\n"),
            "spec.command.args",
        ),
        case(
            "nul-byte-in-args",
            workload("  command: {args: [\"a\\0b\"]}\n"),
            "spec.command.args[0]",
        ),
        case(
            "id-range-max-below-min",
            policy("  tenantDefaults:\n    security: {allowedUsers: [{min: 10, max: 9}]}\n"),
            "spec.tenantDefaults.security.allowedUsers[0].max",
        ),
        case(
            "run-as-user-negative",
            workload("  command:\n    args: [x]\n    securityContext: {runAsUser: -1}\n"),
            "spec.command.securityContext.runAsUser",
        ),
        case(
            "max-replicas-per-node-zero",
            policy("  maxReplicasPerNode: 0\n"),
            "spec.maxReplicasPerNode",
        ),
        case(
            "log-files-zero",
            policy("  logs: {maxFiles: 0}\n"),
            "spec.logs.maxFiles",
        ),
        case(
            "adopt-prefix-relative",
            policy(
                "  tenantDefaults:\n    security:\n      adopt: {enabled: true, cgroupPrefixes: [system.slice]}\n",
            ),
            "spec.tenantDefaults.security.adopt.cgroupPrefixes[0]",
        ),
        case(
            "adopt-on-delete-unknown",
            workload("  adopt: {pidFile: /run/x.pid, onDelete: Kill}\n"),
            "spec.adopt.onDelete",
        ),
    ]
}

/// Cases where the API server and `corral validate` are known to disagree today. Each needs
/// a change in src/ (the CRD schema generated from src/api, or src/validate), and each is
/// still checked: the test fails when one starts to agree, so that it moves to
/// `invalid_cases`.
///
/// `server_accepts: true`: `kubectl apply` stores an object that `corral validate` (and so
/// presumably the controller) refuses. `false`: `corral validate` passes a file that
/// `kubectl apply` refuses, so a CI gate on `corral validate` lets it through.
fn known_disagreements() -> Vec<(Case, bool, &'static str)> {
    let cmd = "  command: {args: [x]}\n";
    vec![
        // --- corral validate passes, kubectl apply fails -----------------------------------
        (
            case(
                "yaml-1.1-boolean-env-value",
                workload("  command:\n    args: [x]\n    env: [{name: DEBUG, value: yes}]\n"),
                "spec.command.env",
            ),
            false,
            "corral reads YAML 1.2 (`yes` is a string, as its issue requires); kubectl reads \
             YAML 1.1 (`yes` is true) and the server refuses a boolean env value. corral \
             validate prints a warning naming the field and saying to quote it, but passes",
        ),
        (
            case(
                "yaml-1.1-boolean-label",
                named("web", "  labels: {enabled: no}\n"),
                "metadata.labels",
            ),
            false,
            "as above, for label values; kubectl cannot even decode the object \
             (tests/validate.rs asserts corral's YAML 1.2 reading of the same label)",
        ),
        // --- kubectl apply stores it, corral validate refuses it ---------------------------
        (
            case(
                "cpu-finer-than-1m",
                workload(&format!(
                    "  resources:\n    requests: {{cpu: \"0.0001\"}}\n{cmd}"
                )),
                "spec.resources.requests.cpu",
            ),
            true,
            "the quantity pattern allows any precision",
        ),
        (
            case(
                "memory-fractional-bytes",
                workload(&format!(
                    "  resources:\n    limits: {{memory: \"0.5\"}}\n{cmd}"
                )),
                "spec.resources.limits.memory",
            ),
            true,
            "the quantity pattern allows fractions of a byte",
        ),
        (
            case(
                "quantity-too-large-1e400",
                workload(&format!("  resources:\n    limits: {{cpu: 1e400}}\n{cmd}")),
                "spec.resources.limits.cpu",
            ),
            true,
            "the quantity pattern has no range",
        ),
        (
            case(
                "command-pattern-not-a-regex",
                workload("  adopt: {commandPattern: \"(unclosed\"}\n"),
                "spec.adopt.commandPattern",
            ),
            true,
            "a schema cannot check a regular expression",
        ),
        (
            case(
                "node-selector-key-not-a-label",
                workload(&format!(
                    "  placement: {{nodeSelector: {{\"bad key\": v}}}}\n{cmd}"
                )),
                "spec.placement.nodeSelector",
            ),
            true,
            "nodeSelector keys and values are not checked by the schema",
        ),
        (
            case(
                "tenant-guarantee-above-limit",
                policy(
                    "  strategy: Fair\n  tenants:\n  - namespace: a\n    guarantee: {cpu: \"2\"}\n    limit: {cpu: \"1\"}\n",
                ),
                "spec.tenants[0].limit.cpu",
            ),
            true,
            "deliberate (commit 58a9b01): the CEL rule exceeded the server's cost budget inside \
             the tenants list, so only corral validate and the controller refuse it",
        ),
        (
            case(
                "refused-by-its-policy",
                format!(
                    "{POLICY}  namespaces: [shop]\n  tenantDefaults: {{maxPriority: 10}}\n---\n{}",
                    workload(&format!("  priority: 11\n{cmd}"))
                ),
                "spec.priority",
            ),
            true,
            "by design: what a tenant may ask for is its policy's to say, and the server checks \
             an object alone; the controller keeps the last admitted version and shows why in \
             status (a ValidatingAdmissionPolicy could refuse it on the server)",
        ),
        (
            case(
                "selector-operator-unknown",
                policy(
                    "  strategy: Fair\n  nodeSelector:\n    matchExpressions: [{key: zone, operator: Like, values: [a]}]\n",
                ),
                "spec.nodeSelector.matchExpressions[0].operator",
            ),
            true,
            "k8s-openapi's LabelSelector schema has no enum for operator",
        ),
    ]
}

/// Manifests both must accept, so that the cases above cannot pass by rejecting everything
/// (edges of every range, equal requests and limits, 1G under 1Gi, a quoted "yes").
fn valid_cases() -> Vec<Case> {
    vec![
        case(
            "valid-full-workload",
            format!(
                "{POLICY}  strategy: Priority\n---\n{}",
                workload(
                    "  replicas: 1000\n  priority: 1000000000\n  terminationGracePeriodSeconds: 0\n  \
                     policyRef: {name: gold}\n  placement: {mode: Pack, nodeSelector: {zone: a}}\n  \
                     resources:\n    requests: {cpu: 2, memory: 1G, pids: 10}\n    \
                     limits: {cpu: \"2\", memory: 1Gi, pids: 10}\n    ioWeight: 10000\n  \
                     command:\n    args: [/bin/sh, -c, \"sleep 1\"]\n    env: [{name: DEBUG, value: \"yes\"}]\n    \
                     workingDir: /tmp\n    restartPolicy: OnFailure\n",
                )
            ),
            "",
        ),
        case(
            "valid-adopting-workload",
            format!(
                "{POLICY}  namespaces: [shop]\n  tenantDefaults:\n    security:\n      \
                 adopt: {{enabled: true, cgroupPrefixes: [/system.slice]}}\n---\n{}",
                workload(
                    "  replicas: 0\n  adopt: {cgroupPath: /system.slice/nginx.service, onDelete: Stop}\n"
                )
            ),
            "",
        ),
        case(
            "valid-tenant-settings",
            format!(
                "{POLICY}  namespaces: [shop]\n  maxReplicasPerNode: 10000\n  \
                 maxTerminationGracePeriodSeconds: 0\n  logs: {{maxSize: 4Ki, maxFiles: 100}}\n  \
                 replicaBounds:\n    min: {{cpu: 1m, memory: 1Mi, pids: 1}}\n    \
                 max: {{cpu: \"4\", memory: 1Gi, pids: 4194304}}\n  \
                 tenantDefaults:\n    maxPriority: 0\n    maxWorkloads: 0\n    maxReplicas: 1000000\n    \
                 security: {{runAsUser: 2147483647, runAsGroup: 0, allowRoot: true, \
                 allowedUsers: [{{min: 2147483647, max: 2147483647}}], allowedGroups: [{{min: 0, max: 0}}]}}\n  \
                 tenants:\n  - namespace: shop\n    maxPriority: 1000000000\n    maxWorkloads: 1000000\n    \
                 maxReplicas: 0\n    security: {{runAsUser: 1000, allowedUsers: [{{min: 0, max: 2147483647}}]}}\n---\n{}",
                workload(
                    "  command:\n    args: [x]\n    securityContext: {runAsUser: 0, runAsGroup: 0, \
                     supplementalGroups: [0]}\n  resources:\n    requests: {cpu: 1m, memory: 1Mi}\n"
                )
            ),
            "",
        ),
        case(
            "valid-full-policy",
            policy(
                "  strategy: Fair\n  precedence: -1000\n  namespaces: [team-a, team-b]\n  \
                 nodeGracePeriodSeconds: 5\n  reserved: {cpu: 100m, memory: 256Mi}\n  \
                 overcommit: {cpu: 100, memory: 1}\n  cgroup: {cpuPeriodMicros: 1000, memoryHighRatio: 1, \
                 memoryProtection: Min}\n  demand: {floorPercent: 0}\n  \
                 nodeSelector:\n    matchExpressions: [{key: zone, operator: In, values: [a]}]\n  \
                 tenants:\n  - namespace: team-a\n    weight: 2\n    guarantee: {cpu: 250m}\n    \
                 limit: {cpu: 250m, memory: 1Gi}\n",
            ),
            "",
        ),
    ]
}

/// What each side said about one file.
struct Verdicts {
    server_rejects: bool,
    server: String,
    corral_rejects: bool,
    corral: String,
}

fn judge(server: &ApiServer, dir: &Path, case: &Case) -> Verdicts {
    let file = dir.join(format!("{}.yaml", case.name));
    std::fs::write(&file, &case.yaml).unwrap();
    let file = file.to_str().unwrap();
    // Dry run: nothing is stored, so every case is judged as a create, and validation
    // ratcheting against an object left by an earlier case cannot let one through.
    let applied = server.kubectl(&["apply", "--server-side", "--dry-run=server", "-f", file]);
    let validated = Command::new(BIN)
        .args(["validate", "-f", file])
        .output()
        .unwrap();
    let corral_rejects = match validated.status.code() {
        Some(0) => false,
        Some(1) => true,
        _ => panic!(
            "{}: corral validate neither accepted nor rejected ({}):\n{}",
            case.name,
            validated.status,
            text(&validated)
        ),
    };
    Verdicts {
        server_rejects: !applied.status.success(),
        server: text(&applied),
        corral_rejects,
        corral: text(&validated),
    }
}

fn verdict(rejects: bool) -> &'static str {
    if rejects { "rejects" } else { "accepts" }
}

#[test]
fn server_and_corral_validate_agree() {
    let server = server_with_crds();
    ensure_namespaces(server, ["shop"]);
    let dir = tempfile::tempdir().unwrap();
    let invalid = invalid_cases();
    let known = known_disagreements();
    let valid = valid_cases();
    let all: Vec<&Case> = invalid
        .iter()
        .chain(known.iter().map(|(c, _, _)| c))
        .chain(&valid)
        .collect();
    let names: BTreeSet<&str> = all.iter().map(|c| c.name).collect();
    assert_eq!(names.len(), all.len(), "case names must be unique");

    // kubectl takes ~0.1 s a call; judge a few cases at once.
    let verdicts: BTreeMap<&str, Verdicts> = std::thread::scope(|s| {
        let chunks: Vec<Vec<&Case>> = all
            .chunks(all.len().div_ceil(4))
            .map(<[_]>::to_vec)
            .collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let dir = dir.path();
                s.spawn(move || {
                    chunk
                        .into_iter()
                        .map(|c| (c.name, judge(server, dir, c)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });

    let mut failures = Vec::new();
    let show = |v: &Verdicts| {
        format!(
            "    server {}: {}\n    corral {}: {}",
            verdict(v.server_rejects),
            v.server.trim().replace('\n', "\n      "),
            verdict(v.corral_rejects),
            v.corral.trim().replace('\n', "\n      ")
        )
    };
    for case in &invalid {
        let v = &verdicts[case.name];
        let mut wrong = Vec::new();
        if !v.server_rejects {
            wrong.push("the server accepts it".to_string());
        } else if !v.server.contains(case.names) {
            wrong.push(format!(
                "the server's message does not name {:?}",
                case.names
            ));
        }
        if !v.corral_rejects {
            wrong.push("corral validate accepts it".to_string());
        } else if !v.corral.contains(case.names) {
            wrong.push(format!("corral's message does not name {:?}", case.names));
        }
        if !wrong.is_empty() {
            failures.push(format!("{}: {}\n{}", case.name, wrong.join("; "), show(v)));
        }
    }
    // Both quote the values, as written, that break a rule comparing two fields.
    for (name, says) in [
        (
            "limits-below-requests-cpu",
            "must be at least requests.cpu (2), not 1500m",
        ),
        (
            "limits-below-requests-memory",
            "must be at least requests.memory (1Gi), not 1G",
        ),
        (
            "limits-below-requests-pids",
            "must be at least requests.pids (100), not 50",
        ),
    ] {
        let v = &verdicts[name];
        if !(v.server.contains(says) && v.corral.contains(says)) {
            failures.push(format!("{name}: not both say {says:?}\n{}", show(v)));
        }
    }
    for case in &valid {
        let v = &verdicts[case.name];
        if v.server_rejects || v.corral_rejects {
            failures.push(format!(
                "{}: a valid manifest is refused\n{}",
                case.name,
                show(v)
            ));
        }
    }
    let mut still = Vec::new();
    for (case, server_accepts, why) in &known {
        let v = &verdicts[case.name];
        let expected = (!server_accepts, *server_accepts);
        if (v.server_rejects, v.corral_rejects) == expected {
            still.push(format!(
                "  {}: server {}, corral {} ({why})",
                case.name,
                verdict(v.server_rejects),
                verdict(v.corral_rejects)
            ));
        } else {
            failures.push(format!(
                "{}: listed as a known disagreement (server {}, corral {}) but now server {}, \
                 corral {}; if both reject, move it to invalid_cases\n{}",
                case.name,
                verdict(!server_accepts),
                verdict(*server_accepts),
                verdict(v.server_rejects),
                verdict(v.corral_rejects),
                show(v)
            ));
        }
    }
    eprintln!(
        "{} known disagreements between the API server and corral validate:\n{}",
        still.len(),
        still.join("\n")
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases went wrong:\n\n{}",
        failures.len(),
        all.len(),
        failures.join("\n\n")
    );
}

/// The fixture itself: dropping a server, also while a test panics, kills its processes and
/// removes its directory.
#[test]
fn a_dropped_server_leaves_no_process_or_directory() {
    let (pids, dir) = {
        let result = std::panic::catch_unwind(|| {
            let server = ApiServer::start();
            let pids = server.pids();
            let dir = server.dir().to_path_buf();
            assert_eq!(pids.len(), 2);
            assert!(server.kubectl_ok(&["get", "--raw=/readyz"]).contains("ok"));
            std::panic::resume_unwind(Box::new((pids, dir)));
        });
        match result
            .expect_err("the closure panics")
            .downcast::<(Vec<u32>, PathBuf)>()
        {
            Ok(ours) => *ours,
            // A real failure (the server did not start): pass it on as it was.
            Err(other) => std::panic::resume_unwind(other),
        }
    };
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone (Drop reaped it), or the PID now belongs to an unrelated process.
        assert!(
            stat.is_empty() || !stat.contains("kube-apiserver") && !stat.contains("(etcd)"),
            "pid {pid} still runs: {stat}"
        );
    }
    assert!(!dir.exists(), "{} still exists", dir.display());
}

/// `kubectl scale` goes through the scale subresource: it sets `spec.replicas`, and the
/// scale object reports `status.replicas` and the selector the HorizontalPodAutoscaler needs.
#[test]
fn kubectl_scale_sets_the_replicas_through_the_scale_subresource() {
    let server = server_with_crds();
    ensure_namespaces(server, ["scaled"]);
    let manifest = "apiVersion: corral.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: web\n  \
                    namespace: scaled\nspec:\n  replicas: 1\n  resources:\n    requests: \
                    {cpu: 10m, memory: 8Mi}\n  command: {args: [sleep, infinity]}\n";
    let output = server.kubectl_stdin(&["apply", "-f", "-"], manifest);
    assert!(output.status.success(), "{}", text(&output));
    server.kubectl_ok(&[
        "patch",
        "workload",
        "web",
        "-n",
        "scaled",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":1,"selector":"corral.dev/workload=web"}}"#,
    ]);
    server.kubectl_ok(&["scale", "workload/web", "-n", "scaled", "--replicas=3"]);
    let object: serde_json::Value = serde_json::from_str(&server.kubectl_ok(&[
        "get",
        "workload/web",
        "-n",
        "scaled",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(object["spec"]["replicas"], 3, "{object:#}");
    let scale: serde_json::Value = serde_json::from_str(&server.kubectl_ok(&[
        "get",
        "--raw",
        "/apis/corral.dev/v1alpha1/namespaces/scaled/workloads/web/scale",
    ]))
    .unwrap();
    assert_eq!(scale["kind"], "Scale", "{scale:#}");
    assert_eq!(scale["spec"]["replicas"], 3, "{scale:#}");
    assert_eq!(scale["status"]["replicas"], 1, "{scale:#}");
    assert_eq!(
        scale["status"]["selector"], "corral.dev/workload=web",
        "{scale:#}"
    );
}
