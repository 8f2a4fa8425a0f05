//! The Helm chart on a real one-node Kubernetes (tests/common/kube_node.rs: etcd,
//! kube-apiserver, controller-manager, scheduler, containerd, runc, kubelet, kube-proxy and
//! CoreDNS in a network namespace), with the images built here (scripts/image/), as a
//! platform engineer installs it:
//! - `helm install` with the embedded ZooKeeper; Workloads applied with kubectl become
//!   Ready, their values are in the kernel's files, a CPU limit holds and an OOM kill
//!   reaches the status;
//! - the agent pod deleted, `helm upgrade` to a new image (controller and agent DaemonSet
//!   rolled), kubelet and containerd restarted: every workload process lives on, the same
//!   PIDs, taken over by the new agent;
//! - `helm uninstall` after deleting the Workloads leaves no process and no group below
//!   corral's root, only the empty root and the state directory, as the README says;
//! - `helm install` against an external ensemble (three servers inside the node's
//!   namespace), with digest credentials for the controller and the agent.
//!
//! The corral image holds this test's own `corral` binary (debug, stripped), so it tests
//! the code under test. A few minutes in all: two nodes, each up in about 10 s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;

use common::cgroups::{gone, hierarchies, is_log_pump, procs, remove_tree};
use common::kube_node::{KubeNode, NODE_NAME};
use common::zk::{ZkCluster, ZkNetwork};

const RELEASE: &str = "corral";
const NAMESPACE: &str = "corral-system";
const IMAGE: &str = "ghcr.io/corral-dev/corral";
/// The agents' cgroup root: at the top of each hierarchy, as the chart's default is (whose
/// directory there is mode 0555), and swept by [`Swept`].
const ROOT: &str = "corral-chart-e2e";
const WAIT: Duration = Duration::from_secs(180);

/// Removes corral's root in every hierarchy, with whatever runs there, when made and when
/// dropped: the node's teardown sweeps only its own cgroup.
struct Swept;

impl Swept {
    fn new() -> Swept {
        Swept.sweep();
        Swept
    }

    fn sweep(&self) {
        for hierarchy in hierarchies() {
            remove_tree(&hierarchy.join(ROOT));
        }
    }
}

impl Drop for Swept {
    fn drop(&mut self) {
        self.sweep();
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs an image script, which prints the archive's path last.
fn image_script(script: &str, args: &[&str], images: Option<&Path>) -> PathBuf {
    let mut command = Command::new(repo().join("scripts/image").join(script));
    command.args(args);
    if let Some(dir) = images {
        command.env("CORRAL_IMAGES", dir);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    PathBuf::from(stdout.lines().last().unwrap().trim())
}

/// The corral image with this test's binary (stripped of its debug information), tagged
/// `IMAGE:tag`, and the embedded ZooKeeper's image; both loaded into the node.
fn load_images(node: &KubeNode, tag: &str) {
    let started = Instant::now();
    let binary = node.dir().join("corral");
    let strip = Command::new("objcopy")
        .args(["--strip-debug", env!("CARGO_BIN_EXE_corral")])
        .arg(&binary)
        .status()
        .unwrap();
    assert!(strip.success());
    let images = node.dir().join("images");
    let corral = image_script(
        "corral.sh",
        &[
            "--binary",
            &binary.to_string_lossy(),
            "--tag",
            &format!("{IMAGE}:{tag}"),
        ],
        Some(&images),
    );
    let zookeeper = image_script("zookeeper.sh", &[], None);
    node.import_image(&corral);
    node.import_image(&zookeeper);
    println!("images built and loaded in {:?}", started.elapsed());
}

/// `helm install` (or `upgrade`) of the chart with `values` (a values file's content),
/// waiting for every pod.
fn helm(node: &KubeNode, verb: &str, values: &Value) -> Duration {
    let started = Instant::now();
    let chart = repo().join("charts/corral");
    let file = node.dir().join(format!("values-{verb}.json"));
    std::fs::write(&file, values.to_string()).unwrap();
    let mut args = vec![
        verb.to_string(),
        RELEASE.to_string(),
        chart.to_string_lossy().into_owned(),
        "-n".into(),
        NAMESPACE.into(),
        "--wait".into(),
        "--timeout".into(),
        "5m".into(),
    ];
    if verb == "install" {
        args.push("--create-namespace".into());
    }
    args.extend(["-f".to_string(), file.to_string_lossy().into_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = node.helm(&args);
    assert!(
        output.status.success(),
        "helm {verb}: {}\n{}\n--- pods ---\n{}\n--- agent ---\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout),
        describe(node),
        agent_logs(node)
    );
    started.elapsed()
}

/// The values every install here needs: the image loaded, never pulled; the agents' root
/// and state on the node's run directory; and `zookeeper`.
fn values(node: &KubeNode, tag: &str, zookeeper: Value) -> Value {
    json!({
        "image": {"tag": tag, "pullPolicy": "Never"},
        "agent": {
            "cgroupRoot": ROOT,
            "hostStateDir": node.host_path("corral-state"),
        },
        // One node: one controller is enough, and a second would only stand by.
        "controller": {"replicas": 1, "podDisruptionBudget": {"enabled": false}},
        "zookeeper": zookeeper,
    })
}

/// Polls `ready` until it holds; after `WAIT`, panics with what the release shows.
fn wait(node: &KubeNode, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ready() {
        if Instant::now() > deadline {
            panic!(
                "no {what} within {WAIT:?}\n--- pods ---\n{}\n--- workloads ---\n{}\n--- agent ---\n{}\n--- controller ---\n{}",
                describe(node),
                String::from_utf8_lossy(
                    &node
                        .kubectl(&["get", "workloads", "-A", "-o", "yaml"])
                        .stdout
                ),
                agent_logs(node),
                logs(node, "controller"),
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn describe(node: &KubeNode) -> String {
    String::from_utf8_lossy(&node.kubectl(&["get", "pods", "-A", "-o", "wide"]).stdout).into()
}

fn agent_logs(node: &KubeNode) -> String {
    logs(node, "agent")
}

/// The last lines of the logs of the release's `component` pods.
fn logs(node: &KubeNode, component: &str) -> String {
    let selector = format!("app.kubernetes.io/component={component}");
    let out = node.kubectl(&["-n", NAMESPACE, "logs", "-l", &selector, "--tail", "40"]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The agent pod's name, once there is exactly one and it is Ready. `helm --wait` does not
/// wait for it: a DaemonSet of one pod with `maxUnavailable: 1` counts as ready without.
fn agent_pod(node: &KubeNode) -> String {
    let mut name = String::new();
    wait(node, "one Ready agent pod", || {
        let out = node.kubectl(&[
            "-n",
            NAMESPACE,
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/component=agent",
            "-o",
            "json",
        ]);
        let Ok(list) = serde_json::from_slice::<Value>(&out.stdout) else {
            return false;
        };
        let pods: Vec<&Value> = list["items"].as_array().into_iter().flatten().collect();
        let ready = pods.len() == 1
            && pods[0]["metadata"]["deletionTimestamp"].is_null()
            && pods[0]["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
        if ready {
            name = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
        }
        ready
    });
    name
}

/// A Workload's object.
fn workload(node: &KubeNode, namespace: &str, name: &str) -> Value {
    let out = node.kubectl(&["-n", namespace, "get", "workload", name, "-o", "json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn condition(object: &Value, kind: &str) -> Option<String> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str().map(str::to_string))
}

/// A replica's group in one hierarchy.
fn group(hierarchy: &str, namespace: &str, name: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup")
        .join(hierarchy)
        .join(ROOT)
        .join(namespace)
        .join(format!("{name}.0"))
}

/// The workload processes (not the log pumps) of each replica, by workload name.
fn processes(names: &[&str]) -> BTreeMap<String, Vec<u32>> {
    names
        .iter()
        .map(|name| {
            let pids = procs(&group("cpu", "demo", name))
                .into_iter()
                .filter(|p| !is_log_pump(*p))
                .collect();
            ((*name).to_string(), pids)
        })
        .collect()
}

/// [`processes`] once each replica runs one process (memory-capped's shell forks a few
/// while it fills its memory).
fn settled(node: &KubeNode, names: &[&str]) -> BTreeMap<String, Vec<u32>> {
    let mut found = BTreeMap::new();
    wait(node, "one process per replica", || {
        found = processes(names);
        found.values().all(|p| p.len() == 1)
    });
    found
}

/// CPU the group used over `window`, in cores, from `cpuacct.usage`.
fn cores_used(dir: &Path, window: Duration) -> f64 {
    let read = || -> f64 {
        std::fs::read_to_string(dir.join("cpuacct.usage"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (before, started) = (read(), Instant::now());
    std::thread::sleep(window);
    (read() - before) / 1e9 / started.elapsed().as_secs_f64()
}

const HOG: &str = "apiVersion: corral.dev/v1alpha1
kind: Workload
metadata: {name: hog, namespace: demo}
spec:
  resources:
    requests: {cpu: 10m, memory: 16Mi}
    limits: {cpu: 200m, memory: 64Mi}
  # Reads /dev/zero into memory, which has no line end, until the OOM killer ends it.
  command: {args: [/bin/sh, -c, tail /dev/zero], restartPolicy: Never}
";

/// Every running workload process is alive and the same as `before`.
fn assert_same(before: &BTreeMap<String, Vec<u32>>, what: &str) {
    let names: Vec<&str> = before.keys().map(String::as_str).collect();
    let now = processes(&names);
    assert_eq!(
        &now, before,
        "after {what}: the workloads' processes changed"
    );
    for pid in before.values().flatten() {
        assert!(!gone(*pid), "after {what}: process {pid} is gone");
    }
}

#[test]
fn the_chart_runs_workloads_on_a_real_node_and_replacing_its_pods_disturbs_none() {
    // Before the node: dropped after it, once no agent can make the root again.
    let _swept = Swept::new();
    let node = KubeNode::start();
    println!("node up in {:?}", node.up_in());
    load_images(&node, "e2e");
    let embedded = json!({"embedded": {"enabled": true}});
    let took = helm(&node, "install", &values(&node, "e2e", embedded.clone()));
    agent_pod(&node);
    println!("helm install (embedded ZooKeeper) to every pod Ready: {took:?}");

    // The quickstart, as the README applies it, and a memory hog.
    node.kubectl_ok(&["create", "namespace", "demo"]);
    node.kubectl_ok(&[
        "apply",
        "-f",
        &repo().join("examples/quickstart").to_string_lossy(),
    ]);
    node.apply(HOG);
    let names = ["memory-capped", "spin-large", "spin-small"];
    let started = Instant::now();
    wait(&node, "the quickstart's Workloads Ready", || {
        names.iter().all(|name| {
            condition(&workload(&node, "demo", name), "Ready").as_deref() == Some("True")
        })
    });
    println!(
        "quickstart applied to every Workload Ready: {:?}",
        started.elapsed()
    );

    // Their values, in the kernel's files; the CPU limit holds.
    let small = group("cpu", "demo", "spin-small");
    let read = |dir: &Path, file: &str| std::fs::read_to_string(dir.join(file)).unwrap();
    assert_eq!(read(&small, "cpu.cfs_quota_us").trim(), "50000");
    assert_eq!(read(&small, "cpu.cfs_period_us").trim(), "100000");
    assert_eq!(
        read(
            &group("memory", "demo", "memory-capped"),
            "memory.limit_in_bytes"
        )
        .trim(),
        (64 << 20).to_string()
    );
    let used = cores_used(
        &group("cpuacct", "demo", "spin-small"),
        Duration::from_secs(2),
    );
    assert!(
        (0.05..=0.56).contains(&used),
        "spin-small used {used:.2} cores under its 500m limit"
    );
    // Out of the agent's container in every hierarchy: no group of a pod holds them.
    let before = settled(&node, &names);
    for pid in before.values().flatten() {
        let groups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert_eq!(groups.lines().count(), hierarchies().len(), "{groups}");
        assert!(
            groups
                .lines()
                .all(|l| l.contains(&format!(":/{ROOT}/demo/"))),
            "process {pid}: {groups}"
        );
    }

    // The hog is OOM-killed at its limit, and the status says so.
    wait(&node, "the hog's OOM kill in its status", || {
        workload(&node, "demo", "hog")["status"]["replicaStatuses"][0]["usage"]["oomKills"]
            .as_i64()
            .is_some_and(|n| n >= 1)
    });

    // The agent pod deleted, as `kubectl delete pod` or a node drain does.
    let agent = agent_pod(&node);
    let started = Instant::now();
    node.kubectl_ok(&["-n", NAMESPACE, "delete", "pod", &agent, "--wait=true"]);
    let next = agent_pod(&node);
    assert_ne!(next, agent);
    println!(
        "agent pod deleted to its successor Ready: {:?}",
        started.elapsed()
    );
    assert_same(&before, "the agent pod was deleted");

    // helm upgrade to a new image: the controller and the agent DaemonSet roll.
    node.tag_image(&format!("{IMAGE}:e2e"), &format!("{IMAGE}:e2e-next"));
    let took = helm(&node, "upgrade", &values(&node, "e2e-next", embedded));
    println!("helm upgrade to every pod Ready: {took:?}");
    let rolled = agent_pod(&node);
    assert_ne!(rolled, next, "the DaemonSet replaced its pod");
    let image = node.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "get",
        "pod",
        &rolled,
        "-o",
        "jsonpath={.spec.containers[0].image}",
    ]);
    assert_eq!(image, format!("{IMAGE}:e2e-next"));
    assert_same(&before, "helm upgrade");
    for name in names {
        let w = workload(&node, "demo", name);
        assert_eq!(condition(&w, "Ready").as_deref(), Some("True"), "{w:#}");
    }

    // The node's runtime restarted (kubelet and containerd stopped and started).

    // The node's runtime restarted (kubelet and containerd stopped and started).
    let took = node.restart_runtime();
    println!("kubelet and containerd restarted, node Ready again in {took:?}");
    agent_pod(&node);
    assert_same(&before, "kubelet and containerd restarted");

    // Uninstalling as the README says: the Workloads first, then the release.
    node.kubectl_ok(&["delete", "workloads", "--all", "-n", "demo", "--wait=true"]);
    for pid in before.values().flatten() {
        assert!(gone(*pid), "process {pid} outlived its Workload");
    }
    node.helm_ok(&["uninstall", RELEASE, "-n", NAMESPACE, "--wait"]);
    wait(&node, "the release's pods gone", || {
        node.kubectl_ok(&["-n", NAMESPACE, "get", "pods", "-o", "name"])
            .trim()
            .is_empty()
    });
    // What is left: corral's empty root in each hierarchy and the agents' state directory.
    for hierarchy in hierarchies() {
        let root = hierarchy.join(ROOT);
        assert!(root.is_dir(), "{}", root.display());
        let below: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        assert!(below.is_empty(), "groups left below the root: {below:?}");
    }
    assert!(
        std::fs::read_dir(node.host_path("corral-state")).is_ok_and(|mut d| d.next().is_some()),
        "the agents' state directory stays on the node"
    );
}

#[test]
fn the_chart_runs_on_an_external_ensemble_with_credentials() {
    let _swept = Swept::new();
    let node = KubeNode::start();
    // Three servers on addresses of their own in the node's namespace, as an ensemble
    // outside the cluster would be.
    let addresses: Vec<String> = (11..=13).map(|i| format!("10.214.0.{i}")).collect();
    let prefix = vec![
        "nsenter".to_string(),
        format!("--net={}", node.netns().display()),
        "--".to_string(),
    ];
    for address in &addresses {
        let status = node
            .command("ip")
            .args(["addr", "add", &format!("{address}/32"), "dev", "lo"])
            .status()
            .unwrap();
        assert!(status.success());
    }
    let zk = ZkCluster::ensemble_on(&ZkNetwork {
        servers: addresses
            .iter()
            .map(|a| (a.clone(), prefix.clone()))
            .collect(),
        observer: Some(node.netns().to_path_buf()),
    });
    load_images(&node, "e2e");

    // The controller's identity, and one per node for the agent (corral zk digest).
    let password = "e2e-controller-secret";
    let agent_password = "e2e-node-secret";
    let identity = node.host_path("zk-identity");
    std::fs::write(
        identity.join("credentials"),
        format!("{NODE_NAME}:{agent_password}"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        identity.join("credentials"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let digest = corral::lease::acl::AclId::digest(NODE_NAME, agent_password).to_acl_string();
    let mut values = values(
        &node,
        "e2e",
        json!({
            "hosts": zk.connect_string(),
            "credentials": {"user": "corral", "password": password},
            "insecure": true,
            "agentIdentities": {NODE_NAME: [digest]},
        }),
    );
    values["agent"]["zookeeper"] = json!({"identity": "digest", "hostPath": identity});
    let took = helm(&node, "install", &values);
    agent_pod(&node);
    println!("helm install (external ensemble, credentials) to every pod Ready: {took:?}");

    node.kubectl_ok(&["create", "namespace", "demo"]);
    node.kubectl_ok(&[
        "apply",
        "-f",
        &repo()
            .join("examples/quickstart/policy.yaml")
            .to_string_lossy(),
        "-f",
        &repo()
            .join("examples/quickstart/memory-capped.yaml")
            .to_string_lossy(),
    ]);
    wait(&node, "memory-capped Ready", || {
        condition(&workload(&node, "demo", "memory-capped"), "Ready").as_deref() == Some("True")
    });
    let w = workload(&node, "demo", "memory-capped");
    assert_eq!(
        w["status"]["replicaStatuses"][0]["node"], NODE_NAME,
        "{w:#}"
    );
    let pids = settled(&node, &["memory-capped"]);
    // No embedded server: the release talks to the ensemble only.
    let sets = node.kubectl_ok(&["-n", NAMESPACE, "get", "statefulsets", "-o", "name"]);
    assert!(sets.trim().is_empty(), "{sets}");
    node.kubectl_ok(&["delete", "workloads", "--all", "-n", "demo", "--wait=true"]);
    assert!(pids["memory-capped"].iter().all(|p| gone(*p)));
}
