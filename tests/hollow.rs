//! Hollow agents (`corral hollow-agents`) against a real 3-server ensemble and a real
//! controller: every hollow node registers, every lease gets a `Running` report from its
//! node, a killed hollow process's nodes vanish and their replicas move to the other
//! process's nodes, and a hollow agent stopped through standard input closes its session.
//! Needs `java` and Debian's `zookeeper`; no root (hollow nodes touch no cgroup).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use common::zk::ZkCluster;
use corral::lease::zookeeper::{ZkConfig, ZkStore};
use corral::lease::{Lease, LeaseStore, NodeRegistration, Report};

const BIN: &str = env!("CARGO_BIN_EXE_corral");
const PER_PROCESS: usize = 10;
const REPLICAS: usize = 20;

/// A corral process of this test: SIGKILLed by its PID when dropped, also on a panic.
struct Proc {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    log: std::path::PathBuf,
}

impl Proc {
    fn start(dir: &Path, name: &str, args: &[&str]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = fs::File::create(&log).unwrap();
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        Proc {
            child: Some(child),
            stdin,
            log,
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn manifests(dir: &Path) {
    fs::write(
        dir.join("policy.yaml"),
        "apiVersion: corral.dev/v1alpha1\nkind: ResourcePolicy\nmetadata: {name: cluster}\n\
         spec: {strategy: Priority, nodeGracePeriodSeconds: 5}\n",
    )
    .unwrap();
    fs::write(
        dir.join("web.yaml"),
        format!(
            "apiVersion: corral.dev/v1alpha1\nkind: Workload\nmetadata: {{name: web, namespace: shop}}\n\
             spec:\n  replicas: {REPLICAS}\n  resources:\n    requests: {{cpu: 300m, memory: 16Mi}}\n    \
             limits: {{cpu: 500m, memory: 64Mi}}\n  command: {{args: [sleep, \"600\"]}}\n"
        ),
    )
    .unwrap();
}

fn hollow(dir: &Path, name: &str, prefix: &str, session: &str, hosts: &str) -> Proc {
    let count = PER_PROCESS.to_string();
    Proc::start(
        dir,
        name,
        &[
            "hollow-agents",
            "--count",
            &count,
            "--prefix",
            prefix,
            "--capacity",
            "cpu=1,memory=1Gi",
            "--zookeeper",
            hosts,
            "--session-timeout",
            session,
            "--control-stdin",
        ],
    )
}

struct Seen {
    nodes: Vec<NodeRegistration>,
    leases: Vec<Lease>,
    reports: Vec<Report>,
}

async fn look(store: &ZkStore) -> Seen {
    Seen {
        nodes: store.nodes().await.unwrap_or_default(),
        leases: store.leases().await.unwrap_or_default(),
        reports: store.reports().await.unwrap_or_default(),
    }
}

/// Every lease has a report from its node that says `Running`, ready, at the lease's
/// revision, with the values applied.
fn all_running(seen: &Seen) -> bool {
    let reports: BTreeMap<(String, String), &Report> = seen
        .reports
        .iter()
        .filter_map(|r| Some(((r.node.clone(), r.key.as_ref()?.to_string()), r)))
        .collect();
    seen.leases.len() == REPLICAS
        && seen.leases.iter().all(|lease| {
            reports
                .get(&(lease.node.clone(), lease.key.to_string()))
                .is_some_and(|r| {
                    r.process.state == "Running"
                        && r.process.ready == Some(true)
                        && r.process.revision.as_deref() == Some(lease.revision.as_str())
                        && r.applied.contains_key("cpu.max")
                })
        })
}

async fn wait_for(
    store: &ZkStore,
    what: &str,
    timeout: Duration,
    procs: &[&Proc],
    done: impl Fn(&Seen) -> bool,
) -> Seen {
    let start = Instant::now();
    loop {
        let seen = look(store).await;
        if done(&seen) {
            return seen;
        }
        if start.elapsed() > timeout {
            let logs: Vec<String> = procs.iter().map(|p| p.log()).collect();
            panic!(
                "{what}: not after {timeout:?}; nodes {:?}, {} leases, {} reports\n{}",
                seen.nodes.iter().map(|n| &n.name).collect::<Vec<_>>(),
                seen.leases.len(),
                seen.reports.len(),
                logs.join("\n-----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn names(prefix: &str) -> BTreeSet<String> {
    (0..PER_PROCESS)
        .map(|i| format!("{prefix}{i:04}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hollow_nodes_register_report_running_and_die_like_nodes() {
    let zk = ZkCluster::ensemble(3);
    let hosts = zk.connect_string();
    let dir = tempfile::tempdir().unwrap();
    let manifest_dir = dir.path().join("manifests");
    fs::create_dir_all(&manifest_dir).unwrap();
    manifests(&manifest_dir);

    // One process dies with sessions of 4 s; the other keeps 10 s sessions, so that a node
    // of it that goes sooner than that was stopped, not expired.
    let mut a = hollow(dir.path(), "hollow-a", "a-", "4", &hosts);
    let mut b = hollow(dir.path(), "hollow-b", "b-", "10", &hosts);
    let source = format!("dir:{}", manifest_dir.display());
    let controller = Proc::start(
        dir.path(),
        "controller",
        &[
            "controller",
            "--source",
            &source,
            "--zookeeper",
            &hosts,
            "--session-timeout",
            "4",
            "--resync",
            "1",
            "--identity",
            "c1",
        ],
    );
    let store = ZkStore::connect(ZkConfig::new(&hosts)).await.unwrap();
    let all: BTreeSet<String> = names("a-").union(&names("b-")).cloned().collect();
    let seen = wait_for(
        &store,
        "every hollow node registered",
        Duration::from_secs(60),
        &[&a, &b, &controller],
        |s| {
            s.nodes
                .iter()
                .map(|n| n.name.clone())
                .collect::<BTreeSet<_>>()
                == all
        },
    )
    .await;
    assert!(seen.nodes.iter().all(|n| n.cgroup_mode == "v2"));
    let seen = wait_for(
        &store,
        "every lease reported Running by its node",
        Duration::from_secs(60),
        &[&a, &b, &controller],
        all_running,
    )
    .await;

    // Kill the process whose nodes hold the most replicas; the others have room for all.
    let on_a = seen
        .leases
        .iter()
        .filter(|l| l.node.starts_with("a-"))
        .count();
    let (victim, survivor, dead, alive) = if on_a * 2 >= REPLICAS {
        (&mut a, &mut b, "a-", "b-")
    } else {
        (&mut b, &mut a, "b-", "a-")
    };
    assert!(seen.leases.iter().any(|l| l.node.starts_with(dead)));
    victim.kill();
    let survivors = names(alive);
    wait_for(
        &store,
        "the killed process's nodes gone",
        Duration::from_secs(30),
        &[survivor, &controller],
        |s| {
            s.nodes
                .iter()
                .map(|n| n.name.clone())
                .collect::<BTreeSet<_>>()
                == survivors
        },
    )
    .await;
    let moved = wait_for(
        &store,
        "every replica leased on the other process's nodes and Running there",
        Duration::from_secs(60),
        &[survivor, &controller],
        |s| all_running(s) && s.leases.iter().all(|l| l.node.starts_with(alive)),
    )
    .await;

    // One hollow agent stopped through its process's standard input: its session is closed,
    // so its registration goes at once, well before its 10 s session would expire.
    let node = moved
        .leases
        .first()
        .map(|l| l.node.clone())
        .expect("a lease");
    survivor.say(&format!("stop {node}"));
    let stopped = Instant::now();
    wait_for(
        &store,
        "the stopped hollow node's registration gone",
        Duration::from_secs(20),
        &[survivor, &controller],
        |s| !s.nodes.iter().any(|n| n.name == node),
    )
    .await;
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "{node} went after {:?}: its session was not closed",
        stopped.elapsed()
    );
    drop(controller);
}
