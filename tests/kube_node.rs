//! The one-node cluster of tests/common/kube_node.rs works, and leaves nothing behind: a pod
//! runs (on the locally built pause image), Service names resolve through the cluster DNS
//! from inside a pod, a ClusterIP Service answers through kube-proxy, a hostPath of
//! /sys/fs/cgroup shows the machine's cgroups, and after teardown no process (not even one
//! moved out of the node's cgroup), mount, network namespace, cgroup or directory of the
//! run remains.
//!
//! About 15 s on an idle machine (node up in ~10 s, down in ~2 s), after
//! `scripts/k8s-node.sh` (run by the harness; a version check when all is built).

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

    let ready = node.kubectl_ok(&[
        "get",
        "node",
        NODE_NAME,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ]);
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
