//! The one-node cluster of tests/common/kube_node.rs works, and leaves nothing behind: a pod
//! runs (on the locally built pause image), Service names resolve through the cluster DNS
//! from inside a pod, a ClusterIP Service answers through kube-proxy, a hostPath of
//! /sys/fs/cgroup shows the machine's cgroups, and after teardown no process (not even one
//! moved out of the node's cgroup), mount, network namespace, cgroup or directory of the
//! run remains.
//!
//! A second test restarts the node's runtime (kubelet and containerd, then kubelet alone)
//! and checks that a pod's container runs on in the same process, that the node and the pod
//! are Ready again and `kubectl exec` works, and that teardown still leaves nothing.
//!
//! About 15 s each on an idle machine (node up in ~10 s, down in ~2 s, restarts ~5 s), after
//! `scripts/k8s-node.sh` (run by the harness; a version check when all is built). The two
//! nodes come up one after the other (the machine lock).

mod common;

use std::time::{Duration, Instant};

use common::kube_node::{
    BUSYBOX_IMAGE, CGROUP, DNS_IP, KubeNode, NODE_NAME, PAUSE_IMAGE, cgroup_mounts, cgroup_pids,
};

/// Shaped like the chart's: `corral-zookeeper.<namespace>.svc.cluster.local`.
const NAMESPACE: &str = "corral-smoke";
const SERVICE: &str = "corral-zookeeper";

fn manifest() -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: server
  namespace: {NAMESPACE}
  labels: {{app: server}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: httpd
    image: {BUSYBOX_IMAGE}
    command: [sh, -c, "mkdir -p /www && echo hello-from-server > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports: [{{containerPort: 8080}}]
    readinessProbe:
      tcpSocket: {{port: 8080}}
      periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: {SERVICE}
  namespace: {NAMESPACE}
spec:
  selector: {{app: server}}
  ports: [{{port: 2181, targetPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: {NAMESPACE}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: sleep
    image: {BUSYBOX_IMAGE}
    command: [sleep, "3600"]
    volumeMounts: [{{name: cgroup, mountPath: /host/sys/fs/cgroup, readOnly: true}}]
  # What corral's agent needs: the machine's cgroup filesystems through a hostPath.
  volumes: [{{name: cgroup, hostPath: {{path: /sys/fs/cgroup, type: Directory}}}}]
"#
    )
}

/// The node's Ready condition: `True` once kubelet reports it healthy.
fn node_ready(node: &KubeNode) -> String {
    node.kubectl_ok(&[
        "get",
        "node",
        NODE_NAME,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ])
}

/// `kubectl exec` in the client pod; returns (success, stdout + stderr).
fn exec(node: &KubeNode, script: &str) -> (bool, String) {
    let output = node.kubectl(&["-n", NAMESPACE, "exec", "client", "--", "sh", "-c", script]);
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// Retries `script` in the client pod until its output contains `want` (kube-proxy and
/// CoreDNS see a new Service within a second or so).
fn exec_until(node: &KubeNode, what: &str, script: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out) = exec(node, script);
        if ok && out.contains(want) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: `{script}` in the client pod never gave {want:?}; last output:\n{out}\n\
             --- kube-proxy ---\n{}\n--- coredns ---\n{}",
            node.log_tail("kube-proxy", 20),
            node.log_tail("coredns", 20)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn one_node_cluster_runs_pods_serves_dns_and_cluster_ips_then_leaves_nothing() {
    let Some(mut node) = KubeNode::start_or_skip() else {
        return;
    };
    println!("node up in {:?}", node.up_in());

    let ready = node_ready(&node);
    assert_eq!(ready, "True");

    node.create_namespace(NAMESPACE);
    node.apply(&manifest());
    let started = Instant::now();
    node.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "wait",
        "--for=condition=Ready",
        "pod/server",
        "pod/client",
        "--timeout=120s",
    ]);
    println!("pods Ready in {:?}", started.elapsed());
    let phase = node.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "get",
        "pod",
        "client",
        "-o",
        "jsonpath={.status.phase}",
    ]);
    assert_eq!(phase, "Running");

    // The sandboxes run the pause image built and loaded locally.
    let images = std::process::Command::new("ctr")
        .arg("--address")
        .arg(node.containerd_socket())
        .args(["-n", "k8s.io", "images", "ls", "-q"])
        .output()
        .expect("ctr");
    let images = String::from_utf8_lossy(&images.stdout);
    assert!(images.contains(PAUSE_IMAGE), "images: {images}");

    // The cluster DNS, from inside a pod: the pod's resolv.conf names it, and it answers
    // for a Service in another namespace and for the API server's Service.
    let (ok, resolv) = exec(&node, "cat /etc/resolv.conf");
    assert!(
        ok && resolv.contains(&format!("nameserver {DNS_IP}")),
        "{resolv}"
    );
    let cluster_ip = node.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "get",
        "service",
        SERVICE,
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    let fqdn = format!("{SERVICE}.{NAMESPACE}.svc.cluster.local");
    exec_until(
        &node,
        "DNS",
        &format!("nslookup {fqdn}"),
        &format!("Address: {cluster_ip}"),
    );
    exec_until(
        &node,
        "DNS",
        "nslookup kubernetes.default.svc.cluster.local",
        "Address: 10.96.0.1",
    );

    // The ClusterIP Service answers through kube-proxy, by address and by name (busybox's
    // nc; its wget crashes in this static build).
    let request = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5";
    exec_until(
        &node,
        "ClusterIP",
        &format!("{request} {cluster_ip} 2181"),
        "hello-from-server",
    );
    exec_until(
        &node,
        "ClusterIP by name",
        &format!("{request} {fqdn} 2181"),
        "hello-from-server",
    );
    // The API server through its ClusterIP, as a pod's client library reaches it.
    exec_until(
        &node,
        "kubernetes Service",
        "nc -w 5 10.96.0.1 443 </dev/null && echo reachable",
        "reachable",
    );

    // A hostPath of /sys/fs/cgroup shows the machine's cgroups (the node's private mount
    // namespace keeps them visible), the pod's own among them.
    let (ok, own) = exec(&node, "cat /proc/self/cgroup");
    assert!(
        ok && own.contains(&format!(":/{CGROUP}/kubepods/")),
        "{own}"
    );
    let (ok, groups) = exec(&node, &format!("ls /host/sys/fs/cgroup/memory/{CGROUP}"));
    assert!(ok && groups.contains("kubepods"), "{groups}");

    let processes = node.processes();
    assert!(
        processes.len() >= 10,
        "expected the components, shims, pause and pod processes under the cgroup: {processes:?}"
    );
    // A pod's process moved out of /corral-e2e, as a workload of corral's agent with another
    // cgroup root would be: the teardown still finds it, by its namespaces.
    let escapee = processes
        .iter()
        .copied()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == b"sleep\x003600\x00")
        })
        .expect("the client pod's sleep under the node's cgroup");
    for mount in cgroup_mounts() {
        std::fs::write(mount.join("cgroup.procs"), escapee.to_string())
            .unwrap_or_else(|e| panic!("moving {escapee} to {}: {e}", mount.display()));
    }
    assert!(!cgroup_pids().contains(&escapee));
    let down = node.stop();
    println!("node down in {down:?}");
    let left = node.leftovers();
    assert!(left.is_empty(), "left after teardown:\n{}", left.join("\n"));
}

const RESTART_NAMESPACE: &str = "corral-restart";

/// A pod whose container is one long-lived process, with an exec readiness probe (which
/// needs containerd, and kubelet's prober, to work after a restart).
fn restart_manifest() -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: worker
  namespace: {RESTART_NAMESPACE}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: sleep
    image: {BUSYBOX_IMAGE}
    command: [sleep, "3600"]
    readinessProbe:
      exec: {{command: ["true"]}}
      periodSeconds: 1
"#
    )
}

/// One process: its PID and start time (field 22 of /proc/PID/stat), which name it even if
/// the PID is reused.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Proc {
    pid: u32,
    start: String,
}

impl Proc {
    fn of(pid: u32) -> Option<Proc> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // fields[0] is the state (field 3); a zombie has exited.
        if fields.first() == Some(&"Z") {
            return None;
        }
        Some(Proc {
            pid,
            start: fields.get(19)?.to_string(),
        })
    }

    fn alive(&self) -> bool {
        Proc::of(self.pid).as_ref() == Some(self)
    }

    fn parent(&self) -> Option<Proc> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        Proc::of(
            stat.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?,
        )
    }

    fn namespace(&self, kind: &str) -> String {
        std::fs::read_link(format!("/proc/{}/ns/{kind}", self.pid))
            .map(|l| l.display().to_string())
            .unwrap_or_else(|e| panic!("ns/{kind} of {self:?}: {e}"))
    }
}

/// The node's component named `comm` (`kubelet`, `containerd`, `kube-apiserver`), found in
/// the cgroup /corral-e2e/system of every hierarchy (panics unless it is in all of them).
fn component(comm: &str) -> Proc {
    let mut found: Option<Proc> = None;
    for mount in cgroup_mounts() {
        let procs = mount.join(CGROUP).join("system/cgroup.procs");
        let text =
            std::fs::read_to_string(&procs).unwrap_or_else(|e| panic!("{}: {e}", procs.display()));
        let here: Vec<Proc> = text
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
            })
            .filter_map(Proc::of)
            .collect();
        assert_eq!(here.len(), 1, "{comm} in {}: {here:?}", procs.display());
        if let Some(other) = &found {
            assert_eq!(other, &here[0], "{comm} differs in {}", procs.display());
        }
        found = Some(here[0].clone());
    }
    found.unwrap_or_else(|| panic!("no cgroup hierarchy"))
}

/// What identifies the worker pod's container: its ID, the restart count, its process on
/// the machine (from containerd's task list) and that process's parent, the shim.
#[derive(Debug, PartialEq, Eq)]
struct Worker {
    container_id: String,
    restarts: String,
    started_at: String,
    process: Proc,
    shim: Proc,
}

fn worker(node: &KubeNode) -> Worker {
    let status = node.kubectl_ok(&[
        "-n",
        RESTART_NAMESPACE,
        "get",
        "pod",
        "worker",
        "-o",
        "jsonpath={.status.containerStatuses[0].containerID} \
         {.status.containerStatuses[0].restartCount} \
         {.status.containerStatuses[0].state.running.startedAt}",
    ]);
    let fields: Vec<&str> = status.split_whitespace().collect();
    assert_eq!(fields.len(), 3, "the worker's status: {status:?}");
    let container_id = fields[0]
        .strip_prefix("containerd://")
        .unwrap_or_else(|| panic!("container ID {status:?}"))
        .to_string();
    let tasks = std::process::Command::new("ctr")
        .arg("--address")
        .arg(node.containerd_socket())
        .args(["-n", "k8s.io", "tasks", "ls"])
        .output()
        .expect("ctr");
    let tasks = String::from_utf8_lossy(&tasks.stdout);
    let pid: u32 = tasks
        .lines()
        .find_map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            (t.len() == 3 && t[0] == container_id && t[2] == "RUNNING")
                .then(|| t[1].parse().ok())?
        })
        .unwrap_or_else(|| panic!("no RUNNING task {container_id} in:\n{tasks}"));
    let process = Proc::of(pid).unwrap_or_else(|| panic!("no process {pid}"));
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    assert!(
        cgroup.contains(&format!("/{CGROUP}/kubepods/")) && cgroup.contains(&container_id),
        "the worker's process {pid} is not in its container's cgroup:\n{cgroup}"
    );
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert_eq!(cmdline, b"sleep\x003600\x00", "the worker's process {pid}");
    let shim = process.parent().expect("the worker's shim");
    Worker {
        container_id,
        restarts: fields[1].to_string(),
        started_at: fields[2].to_string(),
        process,
        shim,
    }
}

/// After a restart: the node is Ready, the worker is Running and Ready (again: kubelet turns
/// it not Ready until its first probe), in the same process (not restarted, same shim), and
/// `kubectl exec` reaches it again.
fn check_after_restart(node: &KubeNode, before: &Worker) {
    let ready = node_ready(node);
    assert_eq!(ready, "True");
    let phase = node.kubectl_ok(&[
        "-n",
        RESTART_NAMESPACE,
        "get",
        "pod",
        "worker",
        "-o",
        "jsonpath={.status.phase} {.status.conditions[?(@.type==\"Ready\")].status}",
    ]);
    assert_eq!(phase, "Running True");
    assert!(before.process.alive() && before.shim.alive(), "{before:?}");
    assert_eq!(&worker(node), before);
    assert_eq!(before.restarts, "0");
    // kubelet's streaming and containerd's exec, through the new processes: at once.
    let started = Instant::now();
    let output = node.kubectl(&[
        "-n",
        RESTART_NAMESPACE,
        "exec",
        "worker",
        "--",
        "sh",
        "-c",
        "echo exec-ok; cat /proc/1/cmdline",
    ]);
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && out.starts_with("exec-ok\nsleep\u{0}3600"),
        "kubectl exec after the restart: {}{out}{}\n--- kubelet ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        node.log_tail("kubelet", 30)
    );
    println!("kubectl exec after the restart: {:?}", started.elapsed());
}

#[test]
fn pods_keep_running_across_a_restart_of_kubelet_and_containerd_then_nothing_is_left() {
    let Some(mut node) = KubeNode::start_or_skip() else {
        return;
    };
    println!("node up in {:?}", node.up_in());
    node.create_namespace(RESTART_NAMESPACE);
    node.apply(&restart_manifest());
    node.kubectl_ok(&[
        "-n",
        RESTART_NAMESPACE,
        "wait",
        "--for=condition=Ready",
        "pod/worker",
        "--timeout=120s",
    ]);
    let before = worker(&node);
    let apiserver = component("kube-apiserver");
    let (kubelet, containerd) = (component("kubelet"), component("containerd"));

    // Both: new kubelet and containerd, in the namespaces of the components that stayed
    // (component() checks the cgroup).
    let took = node.restart_runtime();
    println!("kubelet and containerd restarted, node Ready and pods Running in {took:?}");
    let (kubelet2, containerd2) = (component("kubelet"), component("containerd"));
    assert!(
        !kubelet.alive() && !containerd.alive(),
        "the old ones run on"
    );
    assert_ne!(kubelet2, kubelet);
    assert_ne!(containerd2, containerd);
    for new in [&kubelet2, &containerd2] {
        for kind in ["net", "mnt"] {
            assert_eq!(
                new.namespace(kind),
                apiserver.namespace(kind),
                "{new:?} {kind}"
            );
        }
    }
    check_after_restart(&node, &before);

    // kubelet alone.
    let took = node.restart_kubelet();
    println!("kubelet restarted, node Ready and pods Running in {took:?}");
    let kubelet3 = component("kubelet");
    assert!(!kubelet2.alive());
    assert_ne!(kubelet3, kubelet2);
    assert_eq!(component("containerd"), containerd2);
    check_after_restart(&node, &before);

    let down = node.stop();
    println!("node down in {down:?}");
    let left = node.leftovers();
    assert!(left.is_empty(), "left after teardown:\n{}", left.join("\n"));
    assert!(!before.process.alive() && !before.shim.alive());
}
