//! The Helm chart (`charts/corral`), offline: every values file in `tests/chart/values`
//! lints, renders, validates against Kubernetes' own schemas and says what it must (the
//! controller's replicas, the agent's flags and privileges, exactly the expected RBAC);
//! every file in `tests/chart/invalid` is refused with the field named; the chart's CRDs
//! are the generated ones and pass the structural-schema rules; the alerts it renders pass
//! `promtool check rules`, and by default are `rules/corral.rules.yaml` as it is.
//!
//! Needs Helm, promtool and kubernetes-validate, which `tests/chart/setup.sh` installs into
//! `/var/tmp/corral-tools` (or `$CORRAL_TOOLS`) when missing; it runs once, first.

#[path = "common/tools.rs"]
mod tools;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use serde_json::{Value, json};

/// The Kubernetes version the chart is rendered and validated for.
const KUBE_VERSION: &str = "1.32.0";
const RELEASE: &str = "corral-test";
const NAMESPACE: &str = "corral-system";

/// Kinds that Kubernetes' built-in schemas do not describe, and what checks them instead.
/// Any other kind without a schema fails validation: kubernetes-validate itself only warns.
const NOT_BUILT_IN: &[(&str, &str, &str)] = &[
    (
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        "a Prometheus Operator CRD; check_service_monitor checks what it selects and scrapes",
    ),
    (
        "monitoring.coreos.com/v1",
        "PrometheusRule",
        "a Prometheus Operator CRD; check_prometheus_rule has promtool check its rules",
    ),
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    root().join("charts/corral")
}

/// The installed tools.
struct Tools {
    helm: PathBuf,
    promtool: PathBuf,
    validate: PathBuf,
}

/// The tools `tests/chart/setup.sh` installs, set up once for all the tests of this file.
fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let dir = tools::dir();
        Tools {
            helm: dir.join("bin/helm"),
            promtool: dir.join("bin/promtool"),
            validate: dir.join("venv/bin/kubernetes-validate"),
        }
    })
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn helm_lint(values: &Path) -> Output {
    helm_lint_with(values, &[])
}

fn helm_lint_with(values: &Path, args: &[&str]) -> Output {
    run(Command::new(&tools().helm)
        .args(["lint", "--strict", "--kube-version", KUBE_VERSION, "-f"])
        .arg(values)
        .args(args)
        .arg(chart()))
}

fn helm_template(values: &Path) -> Output {
    helm_template_with(values, &[])
}

/// `helm template` with `values` and more arguments (`--set`).
fn helm_template_with(values: &Path, args: &[&str]) -> Output {
    run(Command::new(&tools().helm)
        .args(["template", RELEASE])
        .arg(chart())
        .args(["--namespace", NAMESPACE, "--kube-version", KUBE_VERSION])
        .args(["--include-crds", "-f"])
        .arg(values)
        .args(args))
}

/// Validates YAML documents with `kubernetes-validate --strict`; returns its complaints,
/// warnings included (an object of a kind it has no schema for is only a warning there).
fn kubernetes_validate(documents: &[&str]) -> Vec<String> {
    let mut child = Command::new(&tools().validate)
        .args([
            "--strict",
            "--quiet",
            "--kubernetes-version",
            KUBE_VERSION,
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting kubernetes-validate");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(documents.join("\n---\n").as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let mut complaints: Vec<String> = text(&output.stdout)
        .lines()
        .chain(text(&output.stderr).lines())
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    if !output.status.success() && complaints.is_empty() {
        complaints.push(format!("kubernetes-validate failed: {}", output.status));
    }
    complaints
}

/// Splits a multi-document YAML stream as Helm writes it (`---` alone on a line).
fn split_documents(stream: &str) -> Vec<String> {
    let mut documents = vec![String::new()];
    for line in stream.lines() {
        if line == "---" {
            documents.push(String::new());
        } else {
            let last = documents.last_mut().unwrap();
            last.push_str(line);
            last.push('\n');
        }
    }
    documents
}

/// One rendered object.
struct Object {
    /// As Helm wrote it.
    source: String,
    value: Value,
}

impl Object {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }
    fn api_version(&self) -> &str {
        self.value["apiVersion"].as_str().unwrap_or_default()
    }
    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }
    /// The value at a JSON pointer; panics naming the object and the path.
    fn at(&self, pointer: &str) -> &Value {
        self.value
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{} {}: nothing at {pointer}", self.kind(), self.name()))
    }
}

/// The chart rendered with one values file.
struct Rendered {
    file: String,
    objects: Vec<Object>,
}

impl Rendered {
    /// Lints and renders the chart with `tests/chart/values/<file>`, and validates every
    /// object. Panics with Helm's or the validator's words on any failure.
    fn new(file: &str) -> Rendered {
        Rendered::with(file, &[])
    }

    /// The same, with more arguments for `helm template` and `helm lint`.
    fn with(file: &str, args: &[&str]) -> Rendered {
        let values = root().join("tests/chart/values").join(file);
        assert!(values.is_file(), "{} is missing", values.display());
        let lint = helm_lint_with(&values, args);
        assert!(
            lint.status.success(),
            "helm lint --strict with {file} failed:\n{}{}",
            text(&lint.stdout),
            text(&lint.stderr)
        );
        let rendered = helm_template_with(&values, args);
        assert!(
            rendered.status.success(),
            "helm template with {file} failed:\n{}",
            text(&rendered.stderr)
        );
        let mut objects = Vec::new();
        for source in split_documents(&text(&rendered.stdout)) {
            let blank = |l: &str| l.trim().is_empty() || l.trim_start().starts_with('#');
            if source.lines().all(blank) {
                continue;
            }
            let value: Value = serde_saphyr::from_str(&source)
                .unwrap_or_else(|e| panic!("{file}: rendered YAML does not parse: {e}\n{source}"));
            objects.push(Object { source, value });
        }
        let rendered = Rendered {
            file: file.to_string(),
            objects,
        };
        rendered.validate();
        rendered.check_common();
        rendered
    }

    /// Every object against the Kubernetes schemas, but the kinds in [`NOT_BUILT_IN`].
    fn validate(&self) {
        let built_in: Vec<&str> = self
            .objects
            .iter()
            .filter(|o| {
                !NOT_BUILT_IN
                    .iter()
                    .any(|(api, kind, _)| o.api_version() == *api && o.kind() == *kind)
            })
            .map(|o| o.source.as_str())
            .collect();
        let complaints = kubernetes_validate(&built_in);
        assert!(
            complaints.is_empty(),
            "{}: kubernetes-validate --strict against {KUBE_VERSION}:\n{}",
            self.file,
            complaints.join("\n")
        );
        for object in self.objects.iter().filter(|o| o.kind() == "ServiceMonitor") {
            self.check_service_monitor(object);
        }
        for object in self.objects.iter().filter(|o| o.kind() == "PrometheusRule") {
            self.check_prometheus_rule(object);
        }
    }

    /// A PrometheusRule holds rule groups alone, and `promtool check rules` accepts them.
    fn check_prometheus_rule(&self, rule: &Object) {
        assert_eq!(rule.api_version(), "monitoring.coreos.com/v1");
        let spec = rule.at("/spec").as_object().unwrap();
        assert_eq!(
            spec.keys().collect::<Vec<_>>(),
            ["groups"],
            "{}: a PrometheusRule's spec",
            self.file
        );
        let dir = tempfile::tempdir().unwrap();
        // JSON is YAML.
        let file = dir.path().join("rules.yaml");
        std::fs::write(&file, json!({"groups": spec["groups"]}).to_string()).unwrap();
        let checked = run(Command::new(&tools().promtool)
            .args(["check", "rules"])
            .arg(&file));
        assert!(
            checked.status.success(),
            "{}: promtool check rules refuses the PrometheusRule's groups:\n{}{}",
            self.file,
            text(&checked.stdout),
            text(&checked.stderr)
        );
    }

    fn all(&self, kind: &str) -> Vec<&Object> {
        self.objects.iter().filter(|o| o.kind() == kind).collect()
    }

    /// The one object of `kind` labelled with `component`; any component when it is empty.
    fn one(&self, kind: &str, component: &str) -> &Object {
        let found: Vec<&Object> = self
            .all(kind)
            .into_iter()
            .filter(|o| {
                o.value["metadata"]["labels"]["app.kubernetes.io/component"] == component
                    || component.is_empty()
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{}: expected one {kind} of component {component:?}, found {}",
            self.file,
            found.len()
        );
        found[0]
    }

    fn kinds(&self) -> BTreeMap<String, usize> {
        let mut kinds = BTreeMap::new();
        for object in &self.objects {
            *kinds.entry(object.kind().to_string()).or_insert(0) += 1;
        }
        kinds
    }

    fn controller(&self) -> &Object {
        self.one("Deployment", "controller")
    }

    fn agent(&self) -> &Object {
        self.one("DaemonSet", "agent")
    }

    /// The ConfigMap the corral processes read (the embedded ZooKeeper's has a component).
    fn configmap(&self) -> &Object {
        self.all("ConfigMap")
            .into_iter()
            .find(|o| o.value["metadata"]["labels"]["app.kubernetes.io/component"].is_null())
            .expect("the chart's ConfigMap")
    }

    /// What holds whatever the values: names, namespaces, RBAC, the processes' flags and
    /// privileges, and that each Service and budget selects the pods it is for.
    fn check_common(&self) {
        for object in &self.objects {
            let name = object.name();
            assert!(
                !name.is_empty() && name.len() <= 63,
                "{}: {} {name:?}: a name must be 1 to 63 characters",
                self.file,
                object.kind()
            );
            let cluster_scoped = matches!(
                object.kind(),
                "ClusterRole" | "ClusterRoleBinding" | "CustomResourceDefinition"
            );
            let namespace = &object.value["metadata"]["namespace"];
            if cluster_scoped {
                assert!(namespace.is_null(), "{}: {name} has a namespace", self.file);
            } else {
                assert_eq!(namespace, NAMESPACE, "{}: {name}'s namespace", self.file);
                assert_eq!(
                    object.value["metadata"]["labels"]["app.kubernetes.io/instance"],
                    RELEASE,
                    "{}: {} {name} lacks the release's labels",
                    self.file,
                    object.kind()
                );
            }
        }

        let crds: BTreeSet<&str> = self
            .all("CustomResourceDefinition")
            .iter()
            .map(|o| o.name())
            .collect();
        assert_eq!(
            crds,
            BTreeSet::from(["resourcepolicies.corral.dev", "workloads.corral.dev"])
        );

        self.check_rbac();
        self.check_controller();
        self.check_agent();

        let controller_pods = self.controller().at("/spec/template/metadata/labels");
        let agent_pods = self.agent().at("/spec/template/metadata/labels");
        let controller_service = self.one("Service", "controller");
        assert_eq!(
            controller_service.at("/spec/ports"),
            &json!([{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}])
        );
        assert!(selects(
            controller_service.at("/spec/selector"),
            controller_pods
        ));
        assert!(!selects(
            controller_service.at("/spec/selector"),
            agent_pods
        ));
        let agent_service = self.one("Service", "agent");
        assert_eq!(
            agent_service.at("/spec/ports"),
            &json!([{"name": "metrics", "port": 9091, "targetPort": "metrics", "protocol": "TCP"}])
        );
        assert_eq!(
            agent_service.at("/spec/clusterIP"),
            "None",
            "every agent is its own scrape target"
        );
        assert!(selects(agent_service.at("/spec/selector"), agent_pods));
        assert!(!selects(
            agent_service.at("/spec/selector"),
            controller_pods
        ));
        assert!(selects(
            self.controller().at("/spec/selector/matchLabels"),
            controller_pods
        ));
        assert!(selects(
            self.agent().at("/spec/selector/matchLabels"),
            agent_pods
        ));
        for pdb in self.all("PodDisruptionBudget") {
            assert!(selects(
                pdb.at("/spec/selector/matchLabels"),
                controller_pods
            ));
            assert!(!selects(pdb.at("/spec/selector/matchLabels"), agent_pods));
        }
    }

    /// The controller may only read and patch corral's objects and their status, and
    /// record events; the agent has no RBAC and no token.
    fn check_rbac(&self) {
        let role = self.one("ClusterRole", "controller");
        let mut rules: Vec<(Vec<&str>, Vec<&str>, Vec<&str>)> = role
            .at("/rules")
            .as_array()
            .unwrap()
            .iter()
            .map(|rule| {
                let sorted = |key: &str| -> Vec<&str> {
                    let mut v: Vec<&str> = rule[key]
                        .as_array()
                        .unwrap_or_else(|| panic!("a rule without {key}: {rule}"))
                        .iter()
                        .map(|s| s.as_str().unwrap())
                        .collect();
                    v.sort_unstable();
                    v
                };
                for key in rule.as_object().unwrap().keys() {
                    assert!(
                        ["apiGroups", "resources", "verbs"].contains(&key.as_str()),
                        "unexpected {key} in rule {rule}"
                    );
                }
                (sorted("apiGroups"), sorted("resources"), sorted("verbs"))
            })
            .collect();
        rules.sort();
        let mut expected = vec![
            (
                vec!["corral.dev"],
                vec!["resourcepolicies", "workloads"],
                vec!["list", "patch", "watch"],
            ),
            (
                vec!["corral.dev"],
                vec!["resourcepolicies/status", "workloads/status"],
                vec!["patch"],
            ),
            (
                vec!["events.k8s.io"],
                vec!["events"],
                vec!["create", "patch"],
            ),
        ];
        expected.sort();
        assert_eq!(
            rules, expected,
            "{}: the controller's ClusterRole",
            self.file
        );

        assert_eq!(self.all("ClusterRole").len(), 1, "{}", self.file);
        assert_eq!(self.all("ClusterRoleBinding").len(), 1, "{}", self.file);
        assert!(
            self.all("Role").is_empty() && self.all("RoleBinding").is_empty(),
            "{}: no namespaced RBAC",
            self.file
        );
        let binding = self.one("ClusterRoleBinding", "controller");
        assert_eq!(binding.at("/roleRef/name"), role.at("/metadata/name"));
        assert_eq!(binding.at("/roleRef/kind"), "ClusterRole");
        let controller_account = self.one("ServiceAccount", "controller");
        assert_eq!(
            binding.at("/subjects"),
            &json!([{
                "kind": "ServiceAccount",
                "name": controller_account.name(),
                "namespace": NAMESPACE,
            }])
        );
        assert_eq!(
            self.controller()
                .at("/spec/template/spec/serviceAccountName"),
            controller_account.name()
        );

        let agent_account = self.one("ServiceAccount", "agent");
        assert_eq!(agent_account.at("/automountServiceAccountToken"), false);
        let agent_pod = self.agent().at("/spec/template/spec");
        assert_eq!(agent_pod["serviceAccountName"], agent_account.name());
        assert_eq!(agent_pod["automountServiceAccountToken"], false);
    }

    fn check_controller(&self) {
        let deployment = self.controller();
        let pod = deployment.at("/spec/template/spec");
        let container = only_container(deployment);
        assert_eq!(
            &args(container)[..9],
            [
                "controller",
                "--source",
                "kubernetes",
                "--zookeeper",
                "$(CORRAL_ZOOKEEPER)",
                "--identity",
                "$(POD_NAME)",
                "--metrics-addr",
                "0.0.0.0:9090",
            ],
            "{}: the controller's arguments",
            self.file
        );
        assert_eq!(
            env(container)["POD_NAME"],
            json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
        );
        check_metrics_port(container, 9090);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["securityContext"]["runAsUser"], 65532);
        assert_eq!(
            container["securityContext"],
            json!({
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]},
            }),
            "{}: the controller needs no privilege",
            self.file
        );
        assert!(pod["hostPID"].is_null() && pod["hostNetwork"].is_null());
        self.check_zookeeper_client(deployment);
    }

    fn check_agent(&self) {
        let daemonset = self.agent();
        let pod = daemonset.at("/spec/template/spec");
        let container = only_container(daemonset);
        let mut args = args(container);
        // Joining the node's cgroup namespace (v2) and making the root come with SYS_ADMIN,
        // SYS_PTRACE and DAC_OVERRIDE (which the agent drops at once), and only then.
        let joins = args.contains(&"--host-cgroup-namespace");
        args.retain(|a| *a != "--host-cgroup-namespace");
        let added = strings(&container["securityContext"]["capabilities"]["add"]);
        for capability in ["SYS_ADMIN", "SYS_PTRACE", "DAC_OVERRIDE"] {
            assert_eq!(
                added.contains(&capability),
                joins,
                "{}: {capability} is added exactly when the agent joins the node's cgroup namespace",
                self.file
            );
        }
        assert_eq!(
            &args[..9],
            [
                "agent",
                "--zookeeper",
                "$(CORRAL_ZOOKEEPER)",
                "--state-dir",
                "/var/lib/corral",
                "--cgroup-root",
                args[6],
                "--metrics-addr",
                "0.0.0.0:9091",
            ],
            "{}: the agent's arguments",
            self.file
        );
        assert_eq!(
            env(container)["CORRAL_NODE_NAME"],
            json!({"name": "CORRAL_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}})
        );
        check_metrics_port(container, 9091);

        let security = &container["securityContext"];
        assert_eq!(security["runAsUser"], 0);
        assert_eq!(security["privileged"], false);
        assert_eq!(security["allowPrivilegeEscalation"], false);
        assert_eq!(security["readOnlyRootFilesystem"], true);
        assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
        for capability in strings(&security["capabilities"]["add"]) {
            assert!(
                [
                    "KILL",
                    "SETUID",
                    "SETGID",
                    "SETPCAP",
                    "SYS_ADMIN",
                    "SYS_PTRACE",
                    "DAC_OVERRIDE"
                ]
                .contains(&capability),
                "{}: the agent is given {capability}; the chart's README says which it needs",
                self.file
            );
        }

        let mounts = mounts(container);
        assert_eq!(
            mounts["/sys/fs/cgroup"],
            json!({"name": "cgroup", "mountPath": "/sys/fs/cgroup"}),
            "{}: the cgroup hierarchy, writable",
            self.file
        );
        assert_eq!(
            volume(pod, "cgroup")["hostPath"],
            json!({"path": "/sys/fs/cgroup", "type": "Directory"})
        );
        assert_eq!(mounts["/var/lib/corral"]["name"], "state");
        assert_eq!(
            volume(pod, "state")["hostPath"]["type"],
            "DirectoryOrCreate"
        );
        self.check_zookeeper_client(daemonset);
    }

    /// How a corral process finds ZooKeeper: hosts from the ConfigMap, and every file its
    /// flags or CORRAL_ZK_CREDENTIALS_FILE name mounted where they point. The agent never
    /// sees the controller's identity: of the controller's Secrets it mounts `ca.crt` alone,
    /// and its own identity comes from its node's disk or a Secret of its own.
    fn check_zookeeper_client(&self, workload: &Object) {
        let container = only_container(workload);
        let env = env(container);
        let config = self.configmap();
        assert_eq!(
            env["CORRAL_ZOOKEEPER"]["valueFrom"]["configMapKeyRef"],
            json!({"name": config.name(), "key": "zookeeper"})
        );
        assert_eq!(
            env["CORRAL_LOG"]["valueFrom"]["configMapKeyRef"],
            json!({"name": config.name(), "key": "log"})
        );
        let pod = workload.at("/spec/template/spec");
        let (files, directories) = mounted_files(pod, container);
        let flags = [
            "--zookeeper-tls-ca",
            "--zookeeper-tls-cert",
            "--zookeeper-tls-key",
            "--agent-identities",
        ];
        let credentials = env
            .get("CORRAL_ZK_CREDENTIALS_FILE")
            .map(|v| v["value"].as_str().expect("a file"));
        for file in flag_values(&args(container), &flags)
            .into_iter()
            .chain(credentials)
        {
            assert!(
                files.contains(file) || directories.iter().any(|d| file.starts_with(d.as_str())),
                "{}: {}: {file} is not mounted ({files:?}, host directories {directories:?})",
                self.file,
                workload.name()
            );
        }
        if files.iter().any(|f| f.ends_with("/credentials")) {
            assert!(
                credentials.is_some(),
                "{}: {}: credentials mounted but CORRAL_ZK_CREDENTIALS_FILE unset",
                self.file,
                workload.name()
            );
        }
        if workload.kind() == "DaemonSet" {
            let client = pod["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == "zookeeper-client");
            let keys: Vec<Value> = client
                .and_then(|v| v["projected"]["sources"].as_array())
                .into_iter()
                .flatten()
                .flat_map(|s| s["secret"]["items"].as_array().cloned().unwrap_or_default())
                .map(|item| item["key"].clone())
                .collect();
            assert!(
                keys.iter().all(|k| k == "ca.crt"),
                "{}: the agent mounts {keys:?} of zookeeper.tls, more than the CA",
                self.file
            );
            for secret in self.all("Secret") {
                assert!(
                    !workload
                        .source
                        .contains(&format!("name: {}", secret.name())),
                    "{}: the agent mounts the controller's Secret {}",
                    self.file,
                    secret.name()
                );
            }
            assert!(
                !args(container).contains(&"--agent-identities"),
                "{}: only the controller knows the agents' identities",
                self.file
            );
        }
    }

    /// Evaluates the ServiceMonitor's selector on the rendered Services: it must select
    /// exactly the controller's and the agents', and scrape a port each of them names.
    fn check_service_monitor(&self, monitor: &Object) {
        assert_eq!(monitor.api_version(), "monitoring.coreos.com/v1");
        let spec = monitor.at("/spec");
        for key in spec.as_object().unwrap().keys() {
            assert!(
                ["selector", "namespaceSelector", "endpoints"].contains(&key.as_str()),
                "{}: unexpected ServiceMonitor field spec.{key}",
                self.file
            );
        }
        assert_eq!(
            spec["namespaceSelector"],
            json!({"matchNames": [NAMESPACE]})
        );
        let selected: BTreeSet<&str> = self
            .all("Service")
            .into_iter()
            .filter(|s| label_selector_matches(&spec["selector"], &s.value["metadata"]["labels"]))
            .map(|s| s.name())
            .collect();
        let expected = BTreeSet::from([
            self.one("Service", "controller").name(),
            self.one("Service", "agent").name(),
        ]);
        assert_eq!(
            selected, expected,
            "{}: what the ServiceMonitor selects",
            self.file
        );
        let endpoints = spec["endpoints"].as_array().expect("endpoints");
        assert_eq!(endpoints.len(), 1);
        assert_eq!(endpoints[0]["port"], "metrics");
        assert_eq!(endpoints[0]["path"], "/metrics");
        assert_eq!(
            endpoints[0]["honorLabels"], true,
            "a replica's namespace label is its Workload's, not the target's"
        );
        for key in endpoints[0].as_object().unwrap().keys() {
            assert!(
                ["port", "path", "honorLabels", "interval", "scrapeTimeout"]
                    .contains(&key.as_str()),
                "{}: unexpected endpoint field {key}",
                self.file
            );
        }
    }
}

fn only_container(workload: &Object) -> &Value {
    let containers = workload.at("/spec/template/spec/containers");
    assert_eq!(
        containers.as_array().map(Vec::len),
        Some(1),
        "{}: one container",
        workload.name()
    );
    &containers[0]
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().expect("a string"))
        .collect()
}

fn args(container: &Value) -> Vec<&str> {
    strings(&container["args"])
}

/// The values that follow each of `flags` in `args`.
fn flag_values<'a>(args: &[&'a str], flags: &[&str]) -> Vec<&'a str> {
    args.windows(2)
        .filter(|w| flags.contains(&w[0]))
        .map(|w| w[1])
        .collect()
}

/// The container's environment by name.
fn env(container: &Value) -> BTreeMap<String, Value> {
    let mut env = BTreeMap::new();
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().expect("a variable's name").to_string();
        assert!(
            env.insert(name.clone(), var.clone()).is_none(),
            "{name} is set twice"
        );
    }
    env
}

/// The container's volume mounts by path.
fn mounts(container: &Value) -> BTreeMap<String, Value> {
    let mut mounts = BTreeMap::new();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let path = mount["mountPath"]
            .as_str()
            .expect("a mount's path")
            .to_string();
        assert!(
            mounts.insert(path.clone(), mount.clone()).is_none(),
            "{path} is mounted twice"
        );
    }
    mounts
}

/// The files a container sees from Secrets and ConfigMaps (projected or not, with items),
/// and the directories it mounts from the node, whose files the chart cannot know.
fn mounted_files(pod: &Value, container: &Value) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut files = BTreeSet::new();
    let mut directories = BTreeSet::new();
    for (path, mount) in mounts(container) {
        let name = mount["name"].as_str().unwrap();
        let Some(volume) = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == name)
        else {
            panic!("{path}: no volume {name}");
        };
        if volume["hostPath"].is_object() {
            directories.insert(format!("{path}/"));
            continue;
        }
        let sources: Vec<Value> = match volume["projected"]["sources"].as_array() {
            Some(sources) => sources.clone(),
            None => vec![volume.clone()],
        };
        for source in sources {
            for kind in ["secret", "configMap"] {
                for item in source[kind]["items"].as_array().into_iter().flatten() {
                    files.insert(format!("{path}/{}", item["path"].as_str().unwrap()));
                }
            }
        }
    }
    (files, directories)
}

fn volume<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// Whether a Service-style selector (labels that must all be present) matches `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().expect("a selector");
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether a LabelSelector (matchLabels and matchExpressions) matches `labels`.
fn label_selector_matches(selector: &Value, labels: &Value) -> bool {
    let match_labels = selector["matchLabels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let labels_match = match_labels.iter().all(|(k, v)| labels.get(k) == Some(v));
    let expressions_match = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let value = labels.get(e["key"].as_str().unwrap());
            let values = e["values"].as_array().cloned().unwrap_or_default();
            match e["operator"].as_str().unwrap() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                other => panic!("unknown selector operator {other}"),
            }
        });
    labels_match && expressions_match
}

fn values_files(dir: &str) -> Vec<PathBuf> {
    let dir = root().join("tests/chart").join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no values files in {}", dir.display());
    files
}

/// Every values file is covered by a test below (they check what is specific to each).
#[test]
fn every_values_file_has_its_test() {
    let tested = [
        "certificate-per-node.yaml",
        "embedded-zookeeper.yaml",
        "existing-secret-tls.yaml",
        "minimal.yaml",
        "monitoring-custom.yaml",
        "observability.yaml",
    ];
    let files: Vec<String> = values_files("values")
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        files, tested,
        "add a test for each file in tests/chart/values"
    );
}

#[test]
fn minimal_values_install_the_defaults() {
    let r = Rendered::new("minimal.yaml");
    assert_eq!(
        r.kinds(),
        BTreeMap::from(
            [
                ("ClusterRole", 1),
                ("ClusterRoleBinding", 1),
                ("ConfigMap", 1),
                ("CustomResourceDefinition", 2),
                ("DaemonSet", 1),
                ("Deployment", 1),
                ("PodDisruptionBudget", 1),
                ("Service", 2),
                ("ServiceAccount", 2),
            ]
            .map(|(k, n)| (k.to_string(), n))
        ),
        "no Secret without credentials, no ServiceMonitor, no ZooKeeper, no dashboard, no PrometheusRule"
    );
    assert_eq!(
        r.configmap().at("/data"),
        &json!({"zookeeper": "zk-0.zk:2181,zk-1.zk:2181,zk-2.zk:2181", "log": "info"})
    );

    let controller = r.controller();
    assert_eq!(controller.at("/spec/replicas"), 2, "leader and standby");
    assert_eq!(
        args(only_container(controller))[9..],
        [
            "--zookeeper-chroot",
            "/corral",
            "--session-timeout",
            "15",
            "--log-json"
        ]
    );
    assert_eq!(
        r.one("PodDisruptionBudget", "controller")
            .at("/spec/maxUnavailable"),
        1
    );

    let agent = r.agent();
    let pod = agent.at("/spec/template/spec");
    let container = only_container(agent);
    assert_eq!(
        args(container),
        [
            "agent",
            "--zookeeper",
            "$(CORRAL_ZOOKEEPER)",
            "--state-dir",
            "/var/lib/corral",
            "--cgroup-root",
            "corral",
            "--host-cgroup-namespace",
            "--metrics-addr",
            "0.0.0.0:9091",
            "--zookeeper-chroot",
            "/corral",
            "--session-timeout",
            "15",
            "--log-json"
        ]
    );
    assert_eq!(pod["hostPID"], true, "workloads must outlive the agent");
    assert!(pod["hostNetwork"].is_null());
    assert_eq!(
        container["securityContext"]["capabilities"],
        json!({"drop": ["ALL"], "add": ["KILL", "SETUID", "SETGID", "SETPCAP", "SYS_ADMIN", "SYS_PTRACE", "DAC_OVERRIDE"]})
    );
    assert_eq!(pod["tolerations"], json!([{"operator": "Exists"}]));
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(volume(pod, "state")["hostPath"]["path"], "/var/lib/corral");
    assert!(
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["name"] != "zookeeper-client"),
        "no credentials, no TLS: nothing to mount"
    );
    assert_eq!(
        only_container(agent)["image"],
        format!("ghcr.io/corral-dev/corral:{}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn embedded_zookeeper_runs_one_server_and_corral_uses_it() {
    let r = Rendered::new("embedded-zookeeper.yaml");
    let server = r.one("StatefulSet", "zookeeper");
    assert_eq!(server.at("/spec/replicas"), 1);
    let container = only_container(server);
    assert_eq!(container["image"], "zookeeper:3.8");
    assert_eq!(container["ports"][0]["containerPort"], 2181);
    assert_eq!(
        server.at("/spec/volumeClaimTemplates/0/spec/resources/requests/storage"),
        "2Gi"
    );
    assert_eq!(
        server.at("/spec/volumeClaimTemplates/0/spec/storageClassName"),
        "standard"
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);

    let services: Vec<&Object> = r
        .all("Service")
        .into_iter()
        .filter(|s| s.value["metadata"]["labels"]["app.kubernetes.io/component"] == "zookeeper")
        .collect();
    assert_eq!(services.len(), 2, "a client Service and a headless one");
    let headless = services
        .iter()
        .find(|s| s.value["spec"]["clusterIP"] == "None")
        .expect("the headless Service");
    assert_eq!(server.at("/spec/serviceName"), headless.name());
    let client = services
        .iter()
        .find(|s| s.value["spec"]["clusterIP"].is_null())
        .expect("the client Service");
    let server_pods = server.at("/spec/template/metadata/labels");
    for service in &services {
        assert!(selects(&service.value["spec"]["selector"], server_pods));
        assert_eq!(service.value["spec"]["ports"][0]["port"], 2181);
    }
    assert!(!selects(
        &client.value["spec"]["selector"],
        r.controller().at("/spec/template/metadata/labels")
    ));
    assert_eq!(
        r.configmap().at("/data/zookeeper"),
        &json!(format!("{}.{NAMESPACE}.svc:2181", client.name())),
        "hosts default to the embedded server"
    );
    let zoo_cfg = r
        .one("ConfigMap", "zookeeper")
        .at("/data/zoo.cfg")
        .as_str()
        .unwrap();
    assert!(zoo_cfg.contains("clientPort=2181") && !zoo_cfg.contains("server.1"));

    let secret = r.one("Secret", "");
    assert_eq!(
        secret.at("/data/credentials"),
        "Y29ycmFsOnMzY3JldDp3aXRoLWNvbG9u",
        "base64 of corral:s3cret:with-colon"
    );
    let controller = r.controller();
    let pod = controller.at("/spec/template/spec");
    assert_eq!(
        volume(pod, "zookeeper-client")["projected"]["sources"][0]["secret"]["name"],
        secret.name(),
        "the controller's identity"
    );
    // Each agent's digest comes from its node's disk; no TLS here, so insecure.
    let agent = r.agent();
    let pod = agent.at("/spec/template/spec");
    let container = only_container(agent);
    assert_eq!(
        volume(pod, "zookeeper-identity")["hostPath"],
        json!({"path": "/etc/corral/zookeeper", "type": "Directory"})
    );
    assert_eq!(
        env(container)["CORRAL_ZK_CREDENTIALS_FILE"]["value"],
        "/etc/corral/zookeeper-identity/credentials"
    );
    for workload in [r.controller(), r.agent()] {
        assert!(args(only_container(workload)).contains(&"--zookeeper-insecure"));
        assert!(
            !workload.source.contains("checksum/credentials"),
            "no hash of the password in an annotation"
        );
    }
    assert_eq!(
        r.configmap().at("/data/agent-identities.yaml"),
        "node-a:\n- digest:node-a:IF6qvZgLcCNevwo5PBOP3aQ7rZU=\nnode-b:\n- digest:node-b:hPB9mxQJp65JScIgUUFMlcba4go=\n"
    );

    // Only corral's pods reach the server's client port.
    let policy = r.one("NetworkPolicy", "zookeeper");
    assert!(label_selector_matches(
        policy.at("/spec/podSelector"),
        server_pods
    ));
    assert_eq!(policy.at("/spec/policyTypes"), &json!(["Ingress"]));
    let ingress = policy.at("/spec/ingress").as_array().unwrap();
    assert_eq!(ingress.len(), 1);
    assert_eq!(
        ingress[0]["ports"],
        json!([{"port": "client", "protocol": "TCP"}])
    );
    let allowed = |labels: &Value| {
        ingress[0]["from"]
            .as_array()
            .unwrap()
            .iter()
            .any(|peer| label_selector_matches(&peer["podSelector"], labels))
    };
    assert!(allowed(r.controller().at("/spec/template/metadata/labels")));
    assert!(allowed(r.agent().at("/spec/template/metadata/labels")));
    assert!(!allowed(server_pods));
    assert!(!allowed(&json!({"app.kubernetes.io/name": "other"})));
    assert_eq!(
        container_port(only_container(server), "client"),
        2181,
        "the port the policy names"
    );
}

fn container_port(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no port {name}"))
}

#[test]
fn existing_secret_and_tls_are_mounted_where_the_flags_point() {
    let r = Rendered::new("existing-secret-tls.yaml");
    assert!(r.all("Secret").is_empty(), "the Secret exists already");
    assert!(
        r.objects.iter().all(|o| o
            .name()
            .starts_with("corral-operator-with-a-very-long-name")
            || o.kind() == "CustomResourceDefinition"),
        "fullnameOverride names everything"
    );
    let controller = only_container(r.controller());
    assert_eq!(
        flag_values(
            &args(controller),
            &[
                "--zookeeper-chroot",
                "--session-timeout",
                "--zookeeper-tls-ca",
                "--zookeeper-tls-cert",
                "--zookeeper-tls-key",
                "--agent-identities"
            ]
        ),
        [
            "/corral-prod",
            "20",
            "/etc/corral/zookeeper/tls/ca.crt",
            "/etc/corral/zookeeper/tls/tls.crt",
            "/etc/corral/zookeeper/tls/tls.key",
            "/etc/corral/zookeeper/agent-identities.yaml"
        ]
    );
    assert_eq!(
        volume(r.controller().at("/spec/template/spec"), "zookeeper-client")["projected"],
        json!({
            "defaultMode": 0o440,
            "sources": [
                {"secret": {"name": "corral-zk-identity",
                            "items": [{"key": "credentials", "path": "credentials"}]}},
                {"secret": {"name": "corral-zk-tls",
                            "items": [{"key": "ca.crt", "path": "tls/ca.crt"},
                                      {"key": "tls.crt", "path": "tls/tls.crt"},
                                      {"key": "tls.key", "path": "tls/tls.key"}]}},
                {"configMap": {"name": r.configmap().name(),
                               "items": [{"key": "agent-identities.yaml",
                                          "path": "agent-identities.yaml"}]}},
            ],
        })
    );
    // Every agent shares one digest identity, from a Secret of their own: the CA of
    // zookeeper.tls, and no certificate.
    let agent_pod = r.agent().at("/spec/template/spec");
    let agent = only_container(r.agent());
    assert_eq!(
        flag_values(
            &args(agent),
            &[
                "--zookeeper-tls-ca",
                "--zookeeper-tls-cert",
                "--zookeeper-tls-key"
            ]
        ),
        ["/etc/corral/zookeeper/tls/ca.crt"]
    );
    assert_eq!(
        volume(agent_pod, "zookeeper-identity")["secret"],
        json!({"secretName": "corral-zk-agents", "defaultMode": 0o400,
               "items": [{"key": "credentials", "path": "credentials"}]})
    );
    assert_eq!(
        volume(agent_pod, "zookeeper-client")["projected"]["sources"],
        json!([{"secret": {"name": "corral-zk-tls",
                           "items": [{"key": "ca.crt", "path": "tls/ca.crt"}]}}])
    );
    for workload in [r.controller(), r.agent()] {
        let container = only_container(workload);
        let args = args(container);
        assert!(!args.contains(&"--log-json"), "logJson: false");
        assert!(!args.contains(&"--zookeeper-insecure"), "TLS: no need");
        assert_eq!(container["imagePullPolicy"], "Always");
        assert_eq!(container["image"], "ghcr.io/corral-dev/corral:0.1.0-rc.1");
        let pod = workload.at("/spec/template/spec");
        assert_eq!(pod["imagePullSecrets"], json!([{"name": "regcred"}]));
    }
    assert_eq!(r.configmap().at("/data/log"), "corral=debug,kube=info");
}

/// The recommended setup: the controller's identity is its certificate, and each agent's
/// the certificate its node holds on disk, CN=<node>.
#[test]
fn a_certificate_per_node_comes_from_each_nodes_disk() {
    let r = Rendered::new("certificate-per-node.yaml");
    assert!(r.all("Secret").is_empty());
    assert!(
        r.all("NetworkPolicy").is_empty(),
        "the ensemble is not the chart's"
    );
    let controller = only_container(r.controller());
    assert_eq!(
        flag_values(
            &args(controller),
            &[
                "--zookeeper-tls-cert",
                "--zookeeper-tls-key",
                "--agent-identities"
            ]
        ),
        [
            "/etc/corral/zookeeper/tls/tls.crt",
            "/etc/corral/zookeeper/tls/tls.key",
            "/etc/corral/zookeeper/agent-identities.yaml"
        ]
    );
    assert!(!env(controller).contains_key("CORRAL_ZK_CREDENTIALS_FILE"));
    assert_eq!(
        r.configmap().at("/data/agent-identities.yaml"),
        "'*':\n- x509:CN={node},O=corral-agents\n"
    );
    let agent_pod = r.agent().at("/spec/template/spec");
    let agent = only_container(r.agent());
    assert_eq!(
        flag_values(
            &args(agent),
            &[
                "--zookeeper-tls-ca",
                "--zookeeper-tls-cert",
                "--zookeeper-tls-key"
            ]
        ),
        [
            "/etc/corral/zookeeper/tls/ca.crt",
            "/etc/corral/zookeeper-identity/tls.crt",
            "/etc/corral/zookeeper-identity/tls.key"
        ]
    );
    assert!(!env(agent).contains_key("CORRAL_ZK_CREDENTIALS_FILE"));
    assert_eq!(
        volume(agent_pod, "zookeeper-identity")["hostPath"],
        json!({"path": "/etc/corral/zookeeper", "type": "Directory"})
    );
    assert_eq!(
        mounts(agent)["/etc/corral/zookeeper-identity"],
        json!({"name": "zookeeper-identity", "mountPath": "/etc/corral/zookeeper-identity",
               "readOnly": true})
    );
}

#[test]
fn monitoring_and_custom_agent_settings_are_honoured() {
    let r = Rendered::new("monitoring-custom.yaml");
    let monitor = r.one("ServiceMonitor", "");
    assert_eq!(monitor.at("/metadata/labels/release"), "prometheus");
    assert_eq!(monitor.at("/spec/endpoints/0/interval"), "15s");
    assert_eq!(monitor.at("/spec/endpoints/0/scrapeTimeout"), "5s");
    assert!(r.all("PodDisruptionBudget").is_empty());

    let controller = r.controller();
    assert_eq!(controller.at("/spec/replicas"), 3);
    assert_eq!(
        controller.at("/spec/template/spec/priorityClassName"),
        "system-cluster-critical"
    );
    assert!(args(only_container(controller)).ends_with(&["--resync", "10"]));

    let agent = r.agent();
    let pod = agent.at("/spec/template/spec");
    let container = only_container(agent);
    assert_eq!(pod["hostPID"], false);
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(
        container["securityContext"]["capabilities"],
        json!({"drop": ["ALL"]}),
        "capabilities: [] and hostCgroupNamespace: false add none"
    );
    let args = args(container);
    assert_eq!(
        flag_values(&args, &["--cgroup-root", "--capacity"]),
        ["corral.slice/prod", "cpu=4,memory=8Gi"]
    );
    assert_eq!(
        volume(pod, "state")["hostPath"]["path"],
        "/var/lib/corral-prod"
    );
    assert_eq!(pod["nodeSelector"], json!({"corral.dev/agent": "true"}));
    assert_eq!(
        pod["tolerations"],
        json!([{"key": "dedicated", "operator": "Equal", "value": "batch", "effect": "NoSchedule"}])
    );
    assert_eq!(
        container["resources"],
        json!({"requests": {"cpu": "100m", "memory": "128Mi"},
               "limits": {"cpu": "1", "memory": "512Mi"}})
    );
    assert_eq!(
        agent.at("/spec/updateStrategy/rollingUpdate/maxUnavailable"),
        "10%"
    );
    assert_eq!(
        agent.at("/spec/template/metadata/annotations/example.com~1team"),
        "infra"
    );
    assert_eq!(
        mounts(container)["/opt/app"],
        json!({"name": "opt-app", "mountPath": "/opt/app", "readOnly": true})
    );
    assert_eq!(
        volume(pod, "opt-app")["hostPath"],
        json!({"path": "/opt/app", "type": "Directory"})
    );
}

/// The groups of `charts/corral/rules/corral.rules.yaml`, alert by alert.
fn rules_file_alerts() -> BTreeMap<String, Value> {
    let source = std::fs::read_to_string(chart().join("rules/corral.rules.yaml")).unwrap();
    let file: Value = serde_saphyr::from_str(&source).unwrap();
    alerts(&file["groups"])
}

/// The alerts of rule groups, by name.
fn alerts(groups: &Value) -> BTreeMap<String, Value> {
    let mut alerts = BTreeMap::new();
    for group in groups.as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().expect("an alert").to_string();
            assert!(
                alerts.insert(name.clone(), rule.clone()).is_none(),
                "{name} twice"
            );
        }
    }
    alerts
}

/// With the default values the PrometheusRule holds the rules file as it is (for a release
/// whose Services are those the file names), so what promtool tests is what is installed.
#[test]
fn default_alerts_are_the_rules_file_as_it_is() {
    let r = Rendered::with(
        "minimal.yaml",
        &[
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            "fullnameOverride=corral",
        ],
    );
    let rule = r.one("PrometheusRule", "alerts");
    let source = std::fs::read_to_string(chart().join("rules/corral.rules.yaml")).unwrap();
    let file: Value = serde_saphyr::from_str(&source).unwrap();
    let mut rendered = rule.at("/spec/groups").clone();
    let mut expected = file["groups"].clone();
    // A block scalar's final line break is the only difference the template may make.
    for groups in [&mut rendered, &mut expected] {
        for group in groups.as_array_mut().unwrap() {
            for rule in group["rules"].as_array_mut().unwrap() {
                let expr = rule["expr"].as_str().unwrap().trim_end().to_string();
                rule["expr"] = json!(expr);
            }
        }
    }
    assert_eq!(rendered, expected);
    assert_eq!(alerts(&expected).len(), 7, "the alerts of the README");
}

#[test]
fn dashboards_and_alerts_follow_their_values() {
    let r = Rendered::new("observability.yaml");
    let dashboards = r.one("ConfigMap", "dashboards");
    assert_eq!(
        dashboards.at("/metadata/labels/grafana_dashboard_corral"),
        "yes"
    );
    assert_eq!(
        dashboards.at("/metadata/annotations"),
        &json!({"grafana_folder": "corral"})
    );
    let json_file = std::fs::read_to_string(chart().join("dashboards/corral.json")).unwrap();
    assert_eq!(
        dashboards.at("/data/corral.json").as_str().unwrap(),
        json_file.trim_end(),
        "the ConfigMap holds dashboards/corral.json as it is"
    );
    serde_json::from_str::<Value>(&json_file).expect("the dashboard is JSON");

    let rule = r.one("PrometheusRule", "alerts");
    assert_eq!(rule.at("/metadata/labels/release"), "prometheus");
    let rendered = alerts(rule.at("/spec/groups"));
    let file = rules_file_alerts();
    let mut expected_names: Vec<&String> = file.keys().collect();
    expected_names.retain(|n| *n != "CorralAgentStalled");
    assert_eq!(
        rendered.keys().collect::<Vec<_>>(),
        expected_names,
        "agentStalled is disabled"
    );
    let controller_job = format!("job=\"{}\"", r.one("Service", "controller").name());
    let settings = [
        ("CorralNoLeader", "2m", "page", None),
        ("CorralAgentDown", "5m", "warning", None),
        ("CorralReplicasPending", "30m", "ticket", None),
        ("CorralEnforcementFailures", "5m", "warning", Some("> 20")),
        ("CorralDriftStorm", "15m", "warning", Some("> 0.5")),
        ("CorralZooKeeperSessionLost", "1m", "critical", None),
    ];
    for (name, duration, severity, threshold) in settings {
        let alert = &rendered[name];
        let original = &file[name];
        assert_eq!(alert["for"], duration, "{name}");
        assert_eq!(
            alert["labels"],
            json!({"severity": severity, "team": "infra"}),
            "{name}"
        );
        assert_eq!(alert["annotations"], original["annotations"], "{name}");
        let expected = original["expr"]
            .as_str()
            .unwrap()
            .replace("job=\"corral-controller\"", &controller_job)
            .replace("job=\"corral-agent\"", "job=\"corral-nodes\"");
        let expr = alert["expr"].as_str().unwrap().trim_end();
        match threshold {
            None => assert_eq!(expr, expected.trim_end(), "{name}"),
            Some(threshold) => {
                let cut = |e: &str| e[..e.rfind('>').unwrap()].to_string();
                assert!(expr.ends_with(threshold), "{name}: {expr}");
                assert_eq!(cut(expr), cut(&expected), "{name}");
            }
        }
        assert!(!expr.contains("corral-agent\""), "{name}: {expr}");
    }
}

/// Each file in `tests/chart/invalid` starts with `# error: TEXT`; `helm template` must
/// refuse it with TEXT in the message (values.schema.json names the field as a JSON
/// pointer, the chart's own checks by its dotted path). `helm lint` must refuse the
/// schema's refusals too; it reports a template's `fail` only as information.
#[test]
fn invalid_values_are_refused_with_the_field_named() {
    let mut problems = Vec::new();
    for file in values_files("invalid") {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let content = std::fs::read_to_string(&file).unwrap();
        let Some(expected) = content
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# error: "))
        else {
            problems.push(format!("{name}: the first line must be `# error: TEXT`"));
            continue;
        };
        let output = helm_template(&file);
        let stderr = text(&output.stderr);
        if output.status.success() {
            problems.push(format!("{name}: helm template accepted it"));
        } else if !stderr.contains(expected) {
            problems.push(format!(
                "{name}: expected {expected:?} in helm template's error:\n{stderr}"
            ));
        }
        if expected.starts_with("at '") || expected.starts_with("additional properties") {
            let lint = helm_lint(&file);
            let lint_output = text(&lint.stdout) + &text(&lint.stderr);
            if lint.status.success() || !lint_output.contains(expected) {
                problems.push(format!(
                    "{name}: expected helm lint to fail with {expected:?}:\n{lint_output}"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// The validator must refuse what is wrong, and an unknown kind must not pass unseen:
/// otherwise every validation above could pass without checking anything.
#[test]
fn the_validator_refuses_bad_objects_and_unknown_kinds() {
    let good = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: v}\n";
    assert_eq!(kubernetes_validate(&[good]), Vec::<String>::new());
    let cases = [
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: a}\nspec:\n  replicas: two\n  selector: {matchLabels: {a: b}}\n  template: {metadata: {labels: {a: b}}, spec: {containers: [{name: a, image: a}]}}\n",
            "replicas",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: v}\nextra: 1\n",
            "extra",
        ),
        (
            "apiVersion: example.com/v1\nkind: Unknown\nmetadata: {name: a}\n",
            "Unknown",
        ),
    ];
    for (document, expected) in cases {
        let complaints = kubernetes_validate(&[document]).join("\n");
        assert!(
            complaints.contains(expected),
            "expected a complaint about {expected}, got {complaints:?} for\n{document}"
        );
    }
}

/// The chart installs the CRDs `corral crd` generates, byte for byte.
#[test]
fn chart_crds_are_the_generated_ones() {
    let names = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let generated = root().join("crds");
    let in_chart = chart().join("crds");
    assert_eq!(
        names(&in_chart),
        names(&generated),
        "charts/corral/crds must hold exactly the files of crds/"
    );
    for name in names(&generated) {
        assert!(
            std::fs::read(generated.join(&name)).unwrap()
                == std::fs::read(in_chart.join(&name)).unwrap(),
            "charts/corral/crds/{name} differs from crds/{name}; copy it: cp crds/*.yaml charts/corral/crds/"
        );
    }
}

/// The CRD objects validate against apiextensions.k8s.io/v1, and their schemas follow the
/// structural-schema rules that can be checked offline.
#[test]
fn chart_crds_are_valid_and_structural() {
    let dir = chart().join("crds");
    let mut sources = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        sources.push(std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    sources.sort();
    assert!(!sources.is_empty());
    let documents: Vec<&str> = sources.iter().map(String::as_str).collect();
    assert_eq!(kubernetes_validate(&documents), Vec::<String>::new());

    let mut problems = Vec::new();
    for source in &sources {
        let crd: Value = serde_saphyr::from_str(source).unwrap();
        assert_eq!(crd["apiVersion"], "apiextensions.k8s.io/v1");
        let name = crd["metadata"]["name"].as_str().unwrap();
        for version in crd["spec"]["versions"].as_array().unwrap() {
            let schema = &version["schema"]["openAPIV3Schema"];
            let path = format!("{name} {}", version["name"].as_str().unwrap());
            if schema["type"] != "object" {
                problems.push(format!("{path}: the root must be of type object"));
            }
            structural(&path, schema, false, &mut problems);
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The structural-schema rules (Kubernetes docs, "Specifying a structural schema"): every
/// node says its type (or is int-or-string or preserves unknown fields); properties and
/// additionalProperties never together; no $ref; inside allOf, anyOf, oneOf and not, no
/// type, default, description, nullable, additionalProperties or x-kubernetes-* (the
/// int-or-string pattern excepted).
fn structural(path: &str, node: &Value, in_junctor: bool, problems: &mut Vec<String>) {
    let Some(map) = node.as_object() else {
        problems.push(format!("{path}: not a schema"));
        return;
    };
    let int_or_string = map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let preserve = map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if map.contains_key("$ref") {
        problems.push(format!("{path}: $ref"));
    }
    if map.contains_key("properties") && map.contains_key("additionalProperties") {
        problems.push(format!("{path}: properties beside additionalProperties"));
    }
    if in_junctor {
        for key in map.keys() {
            let forbidden = [
                "type",
                "default",
                "description",
                "nullable",
                "additionalProperties",
            ]
            .contains(&key.as_str())
                || key.starts_with("x-kubernetes-");
            if forbidden {
                problems.push(format!("{path}: {key} inside a logical junctor"));
            }
        }
    } else if !(map.contains_key("type") || int_or_string || preserve) {
        problems.push(format!("{path}: no type"));
    }
    if let Some(properties) = map.get("properties").and_then(Value::as_object) {
        for (key, child) in properties {
            structural(&format!("{path}.{key}"), child, in_junctor, problems);
        }
    }
    if let Some(items) = map.get("items") {
        structural(&format!("{path}[]"), items, in_junctor, problems);
    }
    if let Some(additional) = map.get("additionalProperties").filter(|a| a.is_object()) {
        structural(&format!("{path}{{}}"), additional, in_junctor, problems);
    }
    for junctor in ["allOf", "anyOf", "oneOf"] {
        for (i, child) in map
            .get(junctor)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let int_or_string_branch = int_or_string
                && junctor != "oneOf"
                && child.as_object().is_some_and(|c| {
                    c.len() == 1 && (c["type"] == "integer" || c["type"] == "string")
                });
            if !int_or_string_branch {
                structural(&format!("{path}.{junctor}[{i}]"), child, true, problems);
            }
        }
    }
    if let Some(not) = map.get("not") {
        structural(&format!("{path}.not"), not, true, problems);
    }
}

/// Chart.yaml's appVersion, the default image tag, follows the crate's version.
#[test]
fn app_version_is_the_crate_version() {
    let chart_yaml: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(chart_yaml["appVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart_yaml["name"], "corral");
}

/// The container serves its metrics and probes on the port named `metrics`, `port`.
fn check_metrics_port(container: &Value, port: u16) {
    assert_eq!(
        container["ports"],
        json!([{"name": "metrics", "containerPort": port, "protocol": "TCP"}])
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], "metrics");
    }
}
