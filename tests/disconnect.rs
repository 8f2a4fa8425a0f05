//! Partitions of one agent from ZooKeeper, with real processes: the agent reaches the
//! ensemble through a proxy the test cuts, while the controller and the other agent still
//! reach it. A sampler reads the kernel's `cgroup.procs` of both nodes every 50 ms.
//! - `disconnect.stopAfterSeconds`: the cut-off agent stops the replica, and the
//!   controller runs it on the other node only afterwards: never two copies. A workload
//!   without `disconnect` beside it shows the sampler does see two (fail static).
//! - `disconnect.replace: false`: the replica never moves, keeps running, and is there
//!   after the partition heals.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::cgroups::{gone, is_log_pump, procs};
use common::cluster::{Cluster, NODE_GRACE, policy, write_manifest};
use common::proxy::Proxy;
use common::zk::ZkCluster;

/// Workload `shop/<name>`: one replica of `sleep 600`, grace 1 s, and `extra` spec lines.
fn workload(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: corral.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  resources:\n    requests: {{cpu: 100m, memory: 16Mi}}\n  \
         terminationGracePeriodSeconds: 1\n  command: {{args: [sleep, \"600\"]}}\n{extra}"
    )
}

fn group(c: &Cluster, node: &str, name: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup/cpu")
        .join(c.root(node))
        .join("shop")
        .join(format!("{name}.0"))
}

/// The replica's live command on `node`, if one runs there.
fn running(c: &Cluster, node: &str, name: &str) -> Option<u32> {
    procs(&group(c, node, name))
        .into_iter()
        .find(|p| !is_log_pump(*p) && !gone(*p))
}

/// Counts, every 50 ms, the nodes that run a copy of each workload; keeps the most seen.
struct Copies {
    stop: Arc<AtomicBool>,
    most: Arc<Mutex<Vec<usize>>>,
}

impl Copies {
    fn sample(groups: Vec<Vec<PathBuf>>) -> Copies {
        let stop = Arc::new(AtomicBool::new(false));
        let most = Arc::new(Mutex::new(vec![0; groups.len()]));
        std::thread::spawn({
            let (stop, most) = (stop.clone(), most.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    for (i, copies) in groups.iter().enumerate() {
                        let now = copies
                            .iter()
                            .filter(|dir| {
                                procs(dir).into_iter().any(|p| !is_log_pump(p) && !gone(p))
                            })
                            .count();
                        let mut most = most.lock().unwrap();
                        most[i] = most[i].max(now);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        });
        Copies { stop, most }
    }

    fn most(&self) -> Vec<usize> {
        self.most.lock().unwrap().clone()
    }
}

impl Drop for Copies {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A cluster whose n1 reaches ZooKeeper through `proxy`, running `manifests` on n1 (n2
/// joins once they run, so that n1 holds them).
fn cluster(zk: ZkCluster, proxy: &Proxy, manifests: &[(&str, String)], on_n1: &[&str]) -> Cluster {
    let mut c = Cluster::on(zk);
    let dir = c.manifests();
    std::fs::remove_file(dir.join("web.yaml")).unwrap();
    write_manifest(&dir, "policy.yaml", &policy());
    for (file, text) in manifests {
        write_manifest(&dir, file, text);
    }
    c.start_agent_via("n1", proxy.addr());
    c.start_controller("c1", &dir);
    c.wait_until("the workloads to run on n1", Duration::from_secs(30), |c| {
        on_n1.iter().all(|name| running(c, "n1", name).is_some())
    });
    c.start_agent("n2");
    c
}

#[test]
fn a_cut_off_agent_stops_its_replica_before_it_runs_elsewhere() {
    let zk = ZkCluster::standalone();
    let proxy = Proxy::to(&zk.connect_string());
    let mut c = cluster(
        zk,
        &proxy,
        &[
            (
                "once.yaml",
                workload("once", "  disconnect: {stopAfterSeconds: 2}\n"),
            ),
            ("twice.yaml", workload("twice", "")),
        ],
        &["once", "twice"],
    );
    let first = running(&c, "n1", "once").unwrap();
    let copies = Copies::sample(vec![
        vec![group(&c, "n1", "once"), group(&c, "n2", "once")],
        vec![group(&c, "n1", "twice"), group(&c, "n2", "twice")],
    ]);
    let cut_at = Instant::now();
    proxy.cut();
    c.wait_until("n1 to stop `once`", Duration::from_secs(20), |c| {
        running(c, "n1", "once").is_none()
    });
    let stopped_after = cut_at.elapsed();
    assert!(gone(first));
    c.wait_until(
        "`once` and `twice` to run on n2",
        Duration::from_secs(40),
        |c| running(c, "n2", "once").is_some() && running(c, "n2", "twice").is_some(),
    );
    let moved_after = cut_at.elapsed();
    // n1 has no session, so it cannot learn of the move: `twice` (fail static) runs on.
    assert!(running(&c, "n1", "twice").is_some());
    let most = copies.most();
    assert_eq!(most[0], 1, "at most one copy of `once` at any time");
    assert_eq!(most[1], 2, "the sampler sees two copies of `twice`");
    // stopAfterSeconds 2, after a loss the client notices within the session timeout.
    assert!(
        stopped_after < Duration::from_secs(10),
        "stopped {stopped_after:?} after the cut"
    );
    // The node's grace (5 s) and 2 + 1 + 5 s after the registration went.
    assert!(
        moved_after >= stopped_after + Duration::from_secs(NODE_GRACE.min(8)),
        "moved {moved_after:?}, stopped {stopped_after:?}"
    );

    // The partition heals: n1 comes back with a new session and learns `once` moved; it
    // never runs there again, and `twice` stops on n1 (its lease is gone).
    proxy.heal();
    c.wait_until("`twice` to stop on n1", Duration::from_secs(30), |c| {
        running(c, "n1", "twice").is_none()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(copies.most()[0], 1, "still never two copies of `once`");
    assert!(running(&c, "n1", "once").is_none());
    assert!(running(&c, "n2", "once").is_some());
}

#[test]
fn replace_false_keeps_the_replica_on_its_node_through_a_partition() {
    let zk = ZkCluster::standalone();
    let proxy = Proxy::to(&zk.connect_string());
    let mut c = cluster(
        zk,
        &proxy,
        &[(
            "stay.yaml",
            workload("stay", "  disconnect: {replace: false}\n"),
        )],
        &["stay"],
    );
    let first = running(&c, "n1", "stay").unwrap();
    proxy.cut();
    // Well past the session (4 s) and the node's grace (5 s).
    std::thread::sleep(Duration::from_secs(15));
    assert!(running(&c, "n2", "stay").is_none(), "never moved");
    assert_eq!(
        running(&c, "n1", "stay"),
        Some(first),
        "runs on, fail static"
    );
    let status = c.try_status().unwrap();
    let kept = status["controller"]["kept"].to_string();
    assert!(
        kept.contains("shop.stay.0") || kept.contains("shop/stay"),
        "corral status says why: {status:#}"
    );
    proxy.heal();
    c.wait_until("n1 to report again", Duration::from_secs(30), |c| {
        c.try_status().is_ok_and(|s| {
            s["replicas"].as_array().is_some_and(|rows| {
                rows.iter()
                    .any(|r| r["node"] == "n1" && r["report"]["process"]["state"] == "Running")
            })
        })
    });
    assert_eq!(
        running(&c, "n1", "stay"),
        Some(first),
        "the same process, never stopped"
    );
    assert!(running(&c, "n2", "stay").is_none());
}
