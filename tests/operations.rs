//! Operations on a real cluster. `corral down --zookeeper` refuses while a controller runs,
//! then stops every replica on every node through their agents.
//!
//! `corral drain` and `corral uncordon` on a real cluster (a ZooKeeper, two controllers,
//! agents n1 and n2, `shop/web` with four replicas): the replicas on the drained node
//! move to the other one a replica at a time (`maxUnavailable` 1: never fewer than three
//! running, sampled from the kernel's `cgroup.procs` every 50 ms), the command waits for
//! the node to be empty, nothing new is placed there until it is uncordoned, and then it
//! takes replicas again.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::cgroups::{gone, is_log_pump, procs};
use common::cluster::{BIN, Cluster, placement, web, write_manifest};
use common::zk::ZkCluster;

fn corral(c: &Cluster, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .args([
            "--zookeeper",
            &c.zk.connect_string(),
            "--session-timeout",
            "4",
        ])
        .output()
        .unwrap()
}

#[test]
fn a_drained_node_empties_a_replica_at_a_time_and_takes_replicas_again_once_uncordoned() {
    let mut c = Cluster::on(ZkCluster::standalone());
    // Six replicas of 300m per node.
    c.agent_capacity = "cpu=2,memory=2Gi";
    let mut c = Cluster::up_with(c);
    write_manifest(&c.manifests(), "web.yaml", &web(4, "500m"));
    c.wait_until("4 replicas running", Duration::from_secs(30), |c| {
        c.try_status().is_ok_and(|s| placement(&s).len() == 4)
    });
    let before = placement(&c.status());
    let on_n1: Vec<u64> = before
        .iter()
        .filter(|(_, (node, _))| node == "n1")
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(on_n1.len(), 2, "spread puts two on n1: {before:?}");

    // The fewest replicas running at once, from the kernel's files.
    let groups: Vec<_> = ["n1", "n2"]
        .iter()
        .flat_map(|node| {
            (0..4)
                .map(|i| c.group_dir(node, "cpu", i))
                .collect::<Vec<_>>()
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let fewest = Arc::new(Mutex::new(usize::MAX));
    let sampler = std::thread::spawn({
        let (stop, fewest) = (stop.clone(), fewest.clone());
        move || {
            while !stop.load(Ordering::Relaxed) {
                let running = groups
                    .iter()
                    .filter(|dir| procs(dir).into_iter().any(|p| !is_log_pump(p) && !gone(p)))
                    .count();
                let mut least = fewest.lock().unwrap();
                *least = (*least).min(running);
                drop(least);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    });
    let drained = corral(&c, &["drain", "n1", "--timeout", "60"]);
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let said = String::from_utf8_lossy(&drained.stdout).into_owned();
    assert!(
        drained.status.success(),
        "{said}{}\n{}",
        String::from_utf8_lossy(&drained.stderr),
        c.logs()
    );
    assert!(
        said.contains("node n1 cordoned") && said.contains("node n1 drained"),
        "{said}"
    );
    let after = placement(&c.status());
    assert!(after.values().all(|(node, _)| node == "n2"), "{after:?}");
    assert_eq!(after.len(), 4);
    assert!(
        *fewest.lock().unwrap() >= 3,
        "never more than maxUnavailable (1) of 4 down; saw {} running",
        fewest.lock().unwrap()
    );
    for i in &on_n1 {
        assert!(!c.group_dir("n1", "cpu", *i).exists(), "n1's groups go");
    }
    let status = String::from_utf8_lossy(&corral(&c, &["status"]).stdout).into_owned();
    assert!(status.contains("node n1 is cordoned"), "{status}");

    // Cordoned: a new replica does not go to n1, though n2 is full (6 × 300m of 2 cpu).
    write_manifest(&c.manifests(), "web.yaml", &web(7, "500m"));
    c.wait_until("replica 6 pending", Duration::from_secs(20), |c| {
        c.try_status().is_ok_and(|s| {
            s["replicas"].as_array().is_some_and(|rows| {
                rows.iter()
                    .any(|r| r["replica"] == 6 && r["pending"].is_string())
            })
        })
    });
    let uncordoned = corral(&c, &["uncordon", "n1"]);
    assert!(uncordoned.status.success(), "{uncordoned:?}");
    c.wait_until("replica 6 running on n1", Duration::from_secs(20), |c| {
        c.try_status()
            .is_ok_and(|s| placement(&s).get(&6).is_some_and(|(node, _)| node == "n1"))
    });
}

#[test]
fn drain_names_a_node_that_does_not_exist_and_needs_a_cluster() {
    let c = Cluster::on(ZkCluster::standalone());
    let out = corral(&c, &["drain", "nowhere"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"nowhere\" is not registered"), "{err}");
    let out = Command::new(BIN).args(["drain", "n1"]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("give --zookeeper"),
        "{out:?}"
    );
}

#[test]
fn down_on_a_cluster_waits_for_no_controller_then_stops_every_replica() {
    let mut c = Cluster::up_with(Cluster::on(ZkCluster::standalone()));
    let running = placement(&c.status());
    assert_eq!(running.len(), 3);
    let refused = corral(&c, &["down"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("a controller runs") && err.contains("stop every `corral controller`"),
        "{err}"
    );
    assert_eq!(placement(&c.status()).len(), 3, "nothing was stopped");

    c.terminate("c1");
    c.terminate("c2");
    let down = corral(&c, &["down", "--timeout", "30"]);
    let said = String::from_utf8_lossy(&down.stderr).into_owned();
    assert!(down.status.success(), "{said}\n{}", c.logs());
    assert!(said.contains("deleted 3 lease(s) on 2 node(s)"), "{said}");
    c.wait_until("every group gone", Duration::from_secs(20), |c| {
        (0..3).all(|i| {
            ["n1", "n2"]
                .iter()
                .all(|n| !c.group_dir(n, "cpu", i).exists())
        })
    });
    for (_, (_, pid)) in running {
        assert!(gone(pid), "{pid} stopped");
    }
    let status = c.status();
    assert!(
        status["replicas"].as_array().is_some_and(Vec::is_empty),
        "{status:#}"
    );
}
