//! `corral controller` and `corral agent` as a cluster on this machine, against a real
//! three-server ZooKeeper ensemble: two controllers (one leads), two agents (simulated
//! nodes, each with its own cgroup root and state directory), real cgroups and real
//! processes. What a failure of ZooKeeper, of an agent or of a controller does to the
//! workloads: nothing, unless a node is lost for longer than its grace period, and then its
//! replicas move; a paused controller that lost its leadership writes nothing.
//!
//! Needs root (cgroups), `java` and `/usr/share/java/zookeeper.jar`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::zk::ZkCluster;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_corral");
/// Short sessions keep the tests fast; the ensemble's tickTime of 500 ms allows 1 s.
const SESSION_TIMEOUT: &str = "4";
/// The policy's `nodeGracePeriodSeconds` (the least it allows).
const NODE_GRACE: u64 = 5;
const CGROUP_CONTROLLERS: [&str; 5] = ["cpu", "cpuacct", "memory", "pids", "blkio"];
const WORKLOAD: &str = "shop/web";
/// Written to a member's log before each start, so that one run's lines can be told apart.
const START_MARK: &str = "=== zk_cluster: start ";
const POLL: Duration = Duration::from_millis(100);
const LOG_TAIL_LINES: usize = 60;
/// The agents' resync period, in seconds: long enough that every lease change a test waits
/// for must come through a ZooKeeper watch, also after a reconnect or a new session.
const AGENT_RESYNC: &str = "30";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn policy() -> String {
    format!(
        "apiVersion: corral.dev/v1alpha1\nkind: ResourcePolicy\nmetadata: {{name: cluster}}\n\
         spec: {{strategy: Priority, nodeGracePeriodSeconds: {NODE_GRACE}}}\n"
    )
}

/// The `shop/web` workload: each replica requests 300m, so a node of `cpu=1` holds three.
fn web(replicas: u32, cpu_limit: &str) -> String {
    format!(
        "apiVersion: corral.dev/v1alpha1\nkind: Workload\nmetadata: {{name: web, namespace: shop}}\n\
         spec:\n  replicas: {replicas}\n  resources:\n    requests: {{cpu: 300m, memory: 16Mi}}\n    \
         limits: {{cpu: {cpu_limit}, memory: 64Mi}}\n  terminationGracePeriodSeconds: 1\n  \
         command: {{args: [sleep, \"600\"]}}\n"
    )
}

/// `cpu.cfs_quota_us` of a limit in millicores, with the default 100 ms period.
fn quota(millicores: u64) -> String {
    (millicores * 100).to_string()
}

/// Writes a manifest as editors do: a new file renamed over the old one.
fn write_manifest(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, dir.join(name)).unwrap();
}

/// A controller or an agent: how to start it, its log, and the process while it runs.
struct Member {
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    starts: usize,
    /// An agent's cgroup root.
    root: Option<String>,
}

/// A ZooKeeper ensemble and the corral processes of one test, with their logs, manifests,
/// state directories and cgroup roots. Dropping it, also after a panic, kills every
/// process it started (SIGKILL, stopped ones too), kills what runs in its cgroup roots and
/// removes them; the ensemble and the temporary directory go with their own guards.
struct Cluster {
    zk: ZkCluster,
    dir: tempfile::TempDir,
    tag: String,
    members: BTreeMap<String, Member>,
    agent_resync: &'static str,
}

impl Cluster {
    /// A three-server ensemble, and the manifests (`shop/web`, 3 replicas, limit 500m) in
    /// the directory `manifests`.
    fn new() -> Cluster {
        let cluster = Cluster {
            zk: ZkCluster::ensemble(3),
            dir: tempfile::Builder::new()
                .prefix("corral-zkc-")
                .tempdir()
                .unwrap(),
            tag: format!(
                "corral-zkc-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::SeqCst)
            ),
            members: BTreeMap::new(),
            agent_resync: AGENT_RESYNC,
        };
        cluster.manifest_dir("manifests");
        cluster
    }

    /// Agents n1 and n2, both registered before controller c1 starts and leads, then c2;
    /// returns once the three replicas run.
    fn up() -> Cluster {
        Cluster::up_with(Cluster::new())
    }

    fn up_with(mut c: Cluster) -> Cluster {
        c.start_agents();
        let manifests = c.manifests();
        c.start_controller("c1", &manifests);
        c.wait_for_log("c1", "leading epoch=", Duration::from_secs(20));
        c.start_controller("c2", &manifests);
        c.wait_until("3 replicas Running", Duration::from_secs(30), |c| {
            c.try_status().is_ok_and(|s| all_running(&s, 3))
        });
        c
    }

    /// A manifest directory below the cluster's directory, with the policy and `shop/web`.
    fn manifest_dir(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join(name);
        fs::create_dir_all(&dir).unwrap();
        write_manifest(&dir, "policy.yaml", &policy());
        write_manifest(&dir, "web.yaml", &web(3, "500m"));
        dir
    }

    fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    /// Starts agents n1 and n2 and waits until both are registered.
    fn start_agents(&mut self) {
        self.start_agent("n1");
        self.start_agent("n2");
        self.wait_until("n1 and n2 registered", Duration::from_secs(20), |c| {
            c.try_status().is_ok_and(|s| registered(&s) == ["n1", "n2"])
        });
    }

    fn start_agent(&mut self, node: &str) {
        let root = format!("{}-{node}", self.tag);
        let state = self.dir.path().join(format!("state-{node}"));
        let args = vec![
            "agent".into(),
            "--node".into(),
            node.into(),
            "--zookeeper".into(),
            self.zk.connect_string(),
            "--session-timeout".into(),
            SESSION_TIMEOUT.into(),
            "--cgroup-root".into(),
            root.clone(),
            "--state-dir".into(),
            state.to_string_lossy().into_owned(),
            "--capacity".into(),
            "cpu=1,memory=1Gi".into(),
            "--resync".into(),
            self.agent_resync.into(),
        ];
        self.add(node, args, Some(root));
        self.start(node);
    }

    fn start_controller(&mut self, name: &str, manifests: &Path) {
        let args = vec![
            "controller".into(),
            "--source".into(),
            format!("dir:{}", manifests.display()),
            "--zookeeper".into(),
            self.zk.connect_string(),
            "--session-timeout".into(),
            SESSION_TIMEOUT.into(),
            "--identity".into(),
            name.into(),
            "--resync".into(),
            "1".into(),
        ];
        self.add(name, args, None);
        self.start(name);
    }

    fn add(&mut self, name: &str, args: Vec<String>, root: Option<String>) {
        let log = self.dir.path().join(format!("{name}.log"));
        let old = self.members.insert(
            name.to_string(),
            Member {
                args,
                log,
                child: None,
                starts: 0,
                root,
            },
        );
        assert!(old.is_none(), "{name} added twice");
    }

    fn member(&self, name: &str) -> &Member {
        self.members
            .get(name)
            .unwrap_or_else(|| panic!("no member {name}"))
    }

    /// Starts a member (again) with the same arguments, its output appended to its log.
    fn start(&mut self, name: &str) {
        let member = self
            .members
            .get_mut(name)
            .unwrap_or_else(|| panic!("no member {name}"));
        assert!(member.child.is_none(), "{name} runs already");
        member.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log)
            .unwrap();
        writeln!(log, "{START_MARK}{} ===", member.starts).unwrap();
        let stderr = log.try_clone().unwrap();
        let child = Command::new(BIN)
            .args(&member.args)
            .env("CORRAL_LOG", "info")
            .env_remove("CORRAL_ZK_CREDENTIALS")
            .env_remove("CORRAL_ZK_CREDENTIALS_FILE")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .unwrap();
        member.child = Some(child);
    }

    fn pid(&self, name: &str) -> Pid {
        let child = self.member(name).child.as_ref();
        let pid = child
            .unwrap_or_else(|| panic!("{name} is not running"))
            .id();
        Pid::from_raw(i32::try_from(pid).unwrap())
    }

    /// SIGKILL, and reap.
    fn kill(&mut self, name: &str) {
        let member = self.members.get_mut(name).unwrap();
        let mut child = member.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGSTOP, and wait until the kernel reports it stopped.
    fn pause(&mut self, name: &str) {
        let pid = self.pid(name);
        kill(pid, Signal::SIGSTOP).unwrap();
        self.wait_until(&format!("{name} stopped"), Duration::from_secs(5), |_| {
            proc_state(pid.as_raw()).is_some_and(|s| s == 'T')
        });
    }

    fn resume(&mut self, name: &str) {
        kill(self.pid(name), Signal::SIGCONT).unwrap();
    }

    /// The member's log since its last start.
    fn log(&self, name: &str) -> String {
        let text = fs::read_to_string(&self.member(name).log).unwrap_or_default();
        match text.rfind(START_MARK) {
            Some(at) => text[at..].to_string(),
            None => text,
        }
    }

    /// The tail of every member's log, for failure messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        for (name, member) in &self.members {
            let text = fs::read_to_string(&member.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("\n--- {name} ({}) ---\n", member.log.display()));
            out.push_str(&lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n"));
        }
        out
    }

    fn wait_for_log(&mut self, name: &str, needle: &str, timeout: Duration) {
        self.wait_until(&format!("{name} to log {needle:?}"), timeout, |c| {
            c.log(name).contains(needle)
        });
    }

    /// The servers to ask: running and not paused (a client that picks a paused server
    /// waits for its whole connection timeout).
    fn live_hosts(&mut self) -> String {
        let ids: Vec<usize> = self.zk.ids().collect();
        let live: Vec<usize> = ids
            .into_iter()
            .filter(|&id| self.zk.is_running(id) && !self.zk.is_paused(id))
            .collect();
        live.iter()
            .map(|&id| self.zk.client_addr(id))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The ZooKeeper sessions of the running members, from their logs.
    fn sessions(&self) -> BTreeSet<u64> {
        self.members
            .iter()
            .filter(|(_, m)| m.child.is_some())
            .filter_map(|(name, _)| {
                let log = self.log(name);
                let line = log
                    .lines()
                    .rfind(|l| l.contains("new session established: 0x"))?;
                let hex = line
                    .split("established: 0x")
                    .nth(1)?
                    .split_whitespace()
                    .next()?;
                u64::from_str_radix(hex, 16).ok()
            })
            .collect()
    }

    /// The sessions connected to a running, unpaused server (`cons` of each).
    fn served_sessions(&mut self) -> BTreeSet<u64> {
        let ids: Vec<usize> = self.zk.ids().collect();
        let mut served = BTreeSet::new();
        for id in ids {
            if !self.zk.is_running(id) || self.zk.is_paused(id) {
                continue;
            }
            let Ok(cons) = self.zk.four_letter(id, "cons") else {
                continue;
            };
            served.extend(cons.split("sid=0x").skip(1).filter_map(|rest| {
                let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
                u64::from_str_radix(&hex, 16).ok()
            }));
        }
        served
    }

    /// `corral status -o json` of the whole cluster.
    fn try_status(&mut self) -> Result<Value, String> {
        let hosts = self.live_hosts();
        if hosts.is_empty() {
            return Err("no ZooKeeper server serves".into());
        }
        let output = Command::new(BIN)
            .args(["status", "-o", "json", "--zookeeper", &hosts])
            .args(["--session-timeout", SESSION_TIMEOUT])
            .env_remove("CORRAL_ZK_CREDENTIALS")
            .env_remove("CORRAL_ZK_CREDENTIALS_FILE")
            .output()
            .unwrap();
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())
    }

    fn status(&mut self) -> Value {
        self.try_status()
            .unwrap_or_else(|e| panic!("corral status failed: {e}"))
    }

    /// Polls `condition` every 100 ms; panics with the last status after `timeout` (the
    /// logs follow from `Drop`). Returns how long it took.
    fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut condition: impl FnMut(&mut Cluster) -> bool,
    ) -> Duration {
        let start = Instant::now();
        while !condition(self) {
            if start.elapsed() > timeout {
                let status = self
                    .try_status()
                    .map_or_else(|e| e, |s| serde_json::to_string_pretty(&s).unwrap());
                panic!("timed out after {timeout:?} waiting for {what}\n--- status ---\n{status}");
            }
            std::thread::sleep(POLL);
        }
        start.elapsed()
    }

    fn root(&self, node: &str) -> &str {
        self.member(node).root.as_deref().unwrap()
    }

    /// The group of `shop/web` replica `index` on `node`, in one hierarchy.
    fn group_dir(&self, node: &str, controller: &str, index: u64) -> PathBuf {
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(self.root(node))
            .join("shop")
            .join(format!("web.{index}"))
    }

    fn knob(&self, node: &str, index: u64, knob: &str) -> Option<String> {
        let controller = knob.split('.').next().unwrap();
        fs::read_to_string(self.group_dir(node, controller, index).join(knob))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// True when every replica of `placement` runs in its groups on its node, with the
    /// quota `want` and the 64 MiB memory limit.
    fn enforced(&self, placement: &Placement, want: &str) -> bool {
        placement.iter().all(|(&index, (node, pid))| {
            self.knob(node, index, "cpu.cfs_quota_us").as_deref() == Some(want)
                && self.knob(node, index, "memory.limit_in_bytes").as_deref()
                    == Some(&(64 << 20).to_string())
                && CGROUP_CONTROLLERS[..4].iter().all(|controller| {
                    fs::read_to_string(self.group_dir(node, controller, index).join("cgroup.procs"))
                        .is_ok_and(|procs| procs.lines().any(|l| l.trim() == pid.to_string()))
                })
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The logs of every member, for whatever assertion failed.
        if std::thread::panicking() {
            eprintln!("logs of the failed test:{}", self.logs());
        }
        for member in self.members.values_mut() {
            if let Some(mut child) = member.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for member in self.members.values() {
            if let Some(root) = &member.root {
                for controller in CGROUP_CONTROLLERS {
                    sweep(&Path::new("/sys/fs/cgroup").join(controller).join(root));
                }
            }
        }
    }
}

/// Kills what is left below `dir` and removes it, deepest first.
fn sweep(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            sweep(&entry.path());
        }
    }
    for _ in 0..100 {
        let pids = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if pids.trim().is_empty() {
            break;
        }
        for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = fs::remove_dir(dir);
}

/// The state letter of /proc/PID/stat.
fn proc_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// True when the process is gone, or a zombie nobody reaped yet.
fn gone(pid: u64) -> bool {
    proc_state(i32::try_from(pid).unwrap()).is_none_or(|s| s == 'Z')
}

/// Replica index → (node, pid) of the running replicas of `shop/web`.
type Placement = BTreeMap<u64, (String, u64)>;

fn web_rows(status: &Value) -> Vec<&Value> {
    status["replicas"]
        .as_array()
        .map(|rows| rows.iter().filter(|r| r["workload"] == WORKLOAD).collect())
        .unwrap_or_default()
}

/// True when `shop/web` has exactly `n` replicas, each with a lease and Running.
fn all_running(status: &Value, n: usize) -> bool {
    let rows = web_rows(status);
    rows.len() == n
        && rows.iter().all(|r| {
            r["pending"].is_null()
                && r["node"].is_string()
                && r["report"]["process"]["state"] == "Running"
                && r["report"]["process"]["pid"].is_u64()
        })
}

fn placement(status: &Value) -> Placement {
    web_rows(status)
        .into_iter()
        .filter(|r| r["report"]["process"]["state"] == "Running")
        .filter_map(|r| {
            Some((
                r["replica"].as_u64()?,
                (
                    r["node"].as_str()?.to_string(),
                    r["report"]["process"]["pid"].as_u64()?,
                ),
            ))
        })
        .collect()
}

fn registered(status: &Value) -> Vec<String> {
    status["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|n| n["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn leader(status: &Value) -> (String, i64) {
    (
        status["controller"]["leader"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        status["controller"]["epoch"].as_i64().unwrap_or(-1),
    )
}

/// The leases of `shop/web`, as written.
fn leases(status: &Value) -> Vec<Value> {
    web_rows(status)
        .into_iter()
        .filter(|r| !r["lease"].is_null())
        .map(|r| r["lease"].clone())
        .collect()
}

fn restarts(status: &Value) -> Vec<u64> {
    web_rows(status)
        .into_iter()
        .map(|r| {
            r["report"]["process"]["restarts"]
                .as_u64()
                .unwrap_or(u64::MAX)
        })
        .collect()
}

/// Log lines that say a session ended or was built again, or that leadership was lost.
fn session_trouble(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            l.contains("session ended")
                || l.contains("session rebuilt")
                || l.contains("session lost")
                || l.contains("fenced")
        })
        .collect()
}

#[test]
fn a_three_server_ensemble_two_controllers_and_two_agents_run_the_workloads() {
    let started = Instant::now();
    let mut c = Cluster::up();
    let status = c.status();
    let placed = placement(&status);
    let nodes: BTreeSet<&str> = placed.values().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        nodes,
        BTreeSet::from(["n1", "n2"]),
        "spread over both nodes: {placed:?}"
    );
    assert!(
        c.enforced(&placed, &quota(500)),
        "every replica runs in its groups with its quota: {placed:?}"
    );
    assert_eq!(leader(&status).0, "c1", "{status:#}");
    let leading: Vec<&str> = ["c1", "c2"]
        .into_iter()
        .filter(|name| c.log(name).contains("leading epoch="))
        .collect();
    assert_eq!(leading, ["c1"], "exactly one leader");
    assert_eq!(
        status["controller"]["nodes"],
        serde_json::json!(["n1", "n2"])
    );
    eprintln!("took {:?}", started.elapsed());
}

#[test]
fn killing_the_ensemble_leader_disturbs_no_workload() {
    let started = Instant::now();
    let mut c = Cluster::up();
    let before = c.status();
    let placed = placement(&before);
    let zk_leader = c.zk.leader().expect("an ensemble leader");
    c.zk.kill(zk_leader);
    assert!(
        c.zk.wait_for_leader(Duration::from_secs(20)).is_some(),
        "the two others elect a leader"
    );
    write_manifest(&c.manifests(), "web.yaml", &web(4, "500m"));
    c.wait_until("the 4th replica Running", Duration::from_secs(20), |c| {
        c.try_status().is_ok_and(|s| all_running(&s, 4))
    });
    let after = c.status();
    let now = placement(&after);
    for (index, was) in &placed {
        assert_eq!(now.get(index), Some(was), "replica {index} untouched");
    }
    assert!(c.enforced(&placed, &quota(500)), "untouched: {placed:?}");
    assert_eq!(restarts(&after), [0; 4]);
    assert_eq!(
        leader(&after),
        leader(&before),
        "the same leader with the same epoch"
    );
    for name in ["c1", "c2", "n1", "n2"] {
        let log = c.log(name);
        assert!(
            session_trouble(&log).is_empty(),
            "{name} kept its session:\n{log}"
        );
    }
    eprintln!("took {:?}", started.elapsed());
}

#[test]
fn a_paused_zookeeper_server_disturbs_nothing() {
    let started = Instant::now();
    let mut c = Cluster::up();
    let before = c.status();
    let placed = placement(&before);
    let ids: Vec<usize> = c.zk.ids().collect();
    for (id, limit) in ids.into_iter().zip([450, 400, 350]) {
        let role = c.zk.mode(id).unwrap_or_default();
        let paused = Instant::now();
        c.zk.pause(id);
        write_manifest(&c.manifests(), "web.yaml", &web(3, &format!("{limit}m")));
        c.wait_until(
            &format!("limit {limit}m with server {id} ({role}) paused"),
            Duration::from_secs(20),
            |c| c.enforced(&placed, &quota(limit)),
        );
        let applied = paused.elapsed();
        c.wait_until(
            &format!("every session served by another server than {id}"),
            Duration::from_secs(20),
            |c| {
                let ours = c.sessions();
                ours.len() == 4 && ours.is_subset(&c.served_sessions())
            },
        );
        eprintln!(
            "server {id} ({role}) paused: edit applied after {applied:?}, \
             every session elsewhere after {:?}",
            paused.elapsed()
        );
        c.zk.resume(id);
        assert!(c.zk.wait_until_settled(Duration::from_secs(20)));
    }
    let after = c.status();
    assert_eq!(placement(&after), placed, "the same processes");
    assert_eq!(restarts(&after), [0; 3]);
    assert_eq!(leader(&after), leader(&before));
    for name in ["c1", "c2", "n1", "n2"] {
        let log = c.log(name);
        assert!(
            session_trouble(&log).is_empty(),
            "{name} kept its session:\n{log}"
        );
    }
    for node in ["n1", "n2"] {
        let log = c.log(node);
        assert!(
            !log.contains("drift corrected"),
            "{node}: an edit is not drift:\n{log}"
        );
    }
    eprintln!("took {:?}", started.elapsed());
}

#[test]
fn an_agent_whose_session_expires_loses_its_node_and_its_replicas_move() {
    let started = Instant::now();
    let mut c = Cluster::up();
    let placed = placement(&c.status());
    let (victim, survivor) = ("n1", "n2");
    let moved: Placement = placed
        .iter()
        .filter(|(_, (node, _))| node == victim)
        .map(|(i, p)| (*i, p.clone()))
        .collect();
    assert!(!moved.is_empty(), "{victim} runs replicas: {placed:?}");

    let stopped = Instant::now();
    c.pause(victim);
    c.wait_until(
        &format!("{victim}'s registration to go"),
        Duration::from_secs(20),
        |c| c.try_status().is_ok_and(|s| registered(&s) == [survivor]),
    );
    let expired = stopped.elapsed();
    c.wait_until(
        "every replica Running on the other node",
        Duration::from_secs(30),
        |c| {
            c.try_status().is_ok_and(|s| {
                all_running(&s, 3) && placement(&s).values().all(|(node, _)| node == survivor)
            })
        },
    );
    let took = stopped.elapsed();
    eprintln!(
        "SIGSTOP of {victim}: registration gone after {expired:?}, \
         all replicas Running on {survivor} after {took:?}"
    );
    // Less the time it took to see the registration go.
    assert!(
        took - expired >= Duration::from_secs(NODE_GRACE) - Duration::from_millis(500),
        "the replicas stay for the grace period: moved {:?} after the registration went",
        took - expired
    );
    let controller = c.log("c1");
    assert!(
        controller.contains("node lost"),
        "the leader says so:\n{controller}"
    );
    let now = placement(&c.status());
    for (index, was) in &placed {
        if !moved.contains_key(index) {
            assert_eq!(&now[index], was, "replica {index} on {survivor} untouched");
        }
    }
    for (index, (_, pid)) in &moved {
        assert!(!gone(*pid), "the frozen node's replica {index} still runs");
        assert_ne!(
            now[index].1, *pid,
            "replica {index} runs anew on {survivor}"
        );
    }
    assert!(
        c.enforced(&now, &quota(500)),
        "enforced on {survivor}: {now:?}"
    );

    c.resume(victim);
    c.wait_until(
        "the old processes stopped and their groups removed",
        Duration::from_secs(20),
        |c| {
            moved.iter().all(|(index, (_, pid))| {
                gone(*pid)
                    && CGROUP_CONTROLLERS
                        .iter()
                        .all(|ctl| !c.group_dir(victim, ctl, *index).exists())
            })
        },
    );
    c.wait_until(
        &format!("{victim} registered again"),
        Duration::from_secs(10),
        |c| c.try_status().is_ok_and(|s| registered(&s) == ["n1", "n2"]),
    );
    let log = c.log(victim);
    assert!(
        log.contains("session ended") && log.contains("session rebuilt"),
        "{victim} built a new session:\n{log}"
    );
    let after = c.status();
    assert_eq!(
        placement(&after),
        now,
        "the moved replicas stay where they run"
    );
    eprintln!("took {:?}", started.elapsed());
}

#[test]
fn the_controller_fails_over_and_a_paused_old_leader_is_fenced() {
    let started = Instant::now();
    let mut c = Cluster::new();
    c.start_agents();
    let (dir_a, dir_b) = (c.manifest_dir("a"), c.manifest_dir("b"));
    c.start_controller("c1", &dir_a);
    c.wait_for_log("c1", "leading epoch=", Duration::from_secs(20));
    c.start_controller("c2", &dir_b);
    c.wait_until("3 replicas Running", Duration::from_secs(30), |c| {
        c.try_status().is_ok_and(|s| all_running(&s, 3))
    });
    let (first, old_epoch) = leader(&c.status());
    assert_eq!(first, "c1");

    let stopped = Instant::now();
    c.pause("c1");
    c.wait_until("c2 to lead", Duration::from_secs(30), |c| {
        c.try_status().is_ok_and(|s| {
            let (name, epoch) = leader(&s);
            name == "c2" && epoch > old_epoch
        })
    });
    let took = stopped.elapsed();
    eprintln!("SIGSTOP of the leader to c2 leading: {took:?}");
    let (_, new_epoch) = leader(&c.status());
    // Only c1 sees this edit; it must never reach the leases.
    write_manifest(&dir_a, "web.yaml", &web(5, "500m"));
    let before = c.status();
    let leases_before = leases(&before);
    assert_eq!(leases_before.len(), 3);

    c.resume("c1");
    c.wait_until("c1 to learn it lost", Duration::from_secs(20), |c| {
        let log = c.log("c1");
        log.contains("session lost") || log.contains("fenced")
    });
    // c1 has tried whatever it was going to; watch the leases for a while longer.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(3) {
        let s = c.status();
        let now = leases(&s);
        assert_eq!(now.len(), 3, "dir A's 5 replicas never appear: {s:#}");
        for lease in &now {
            let epoch = lease["epoch"].as_i64().unwrap();
            assert!(
                leases_before.contains(lease) || epoch == new_epoch,
                "a lease written after the takeover by another than c2: {lease:#}"
            );
            assert!(epoch <= new_epoch, "{lease:#}");
        }
        assert_eq!(leader(&s), ("c2".to_string(), new_epoch));
        std::thread::sleep(POLL);
    }
    let log = c.log("c1");
    assert_eq!(
        log.matches("leading epoch=").count(),
        1,
        "c1 does not lead again:\n{log}"
    );
    eprintln!("took {:?}", started.elapsed());
}

#[test]
fn an_agent_restart_disturbs_no_workload() {
    let started = Instant::now();
    let mut c = Cluster::up();
    let placed = placement(&c.status());
    c.kill("n1");
    c.start("n1");
    c.wait_for_log("n1", "registered", Duration::from_secs(20));
    // The restarted agent follows a change, so it is the one enforcing.
    write_manifest(&c.manifests(), "web.yaml", &web(3, "400m"));
    c.wait_until("the new limit reported", Duration::from_secs(20), |c| {
        c.try_status().is_ok_and(|s| {
            all_running(&s, 3)
                && web_rows(&s).iter().all(|r| {
                    r["report"]["applied"]["cpu.cfs_quota_us"].as_str() == Some(&quota(400))
                })
        })
    });
    let after = c.status();
    assert_eq!(placement(&after), placed, "the same processes");
    assert_eq!(restarts(&after), [0; 3]);
    assert!(
        c.enforced(&placed, &quota(400)),
        "groups intact: {placed:?}"
    );
    eprintln!("took {:?}", started.elapsed());
}

#[test]
fn losing_all_of_zookeeper_stops_no_workload() {
    let started = Instant::now();
    // Drift is found by the resync, which must not wait for ZooKeeper.
    let mut c = Cluster::new();
    c.agent_resync = "1";
    let mut c = Cluster::up_with(c);
    let placed = placement(&c.status());
    let ids: Vec<usize> = c.zk.ids().collect();
    for &id in &ids {
        c.zk.stop(id);
    }
    let down = Instant::now();
    let (&index, (node, _)) = placed.iter().next().unwrap();
    let knob = c.group_dir(node, "cpu", index).join("cpu.cfs_quota_us");
    fs::write(&knob, "20000").unwrap();
    let restored = c.wait_until(
        "the drifted quota restored without ZooKeeper",
        Duration::from_secs(30),
        |c| c.enforced(&placed, &quota(500)),
    );
    eprintln!("drift restored {restored:?} after it was written, ZooKeeper down");
    assert!(
        restored < Duration::from_secs(3),
        "a resync each second restores drift without waiting on ZooKeeper: took {restored:?}"
    );
    // Longer than any session; every workload keeps running meanwhile.
    while down.elapsed() < Duration::from_secs(8) {
        assert!(
            c.enforced(&placed, &quota(500)),
            "{:?} without ZooKeeper: {placed:?}",
            down.elapsed()
        );
        std::thread::sleep(POLL);
    }
    c.zk.restart_all();
    write_manifest(&c.manifests(), "web.yaml", &web(3, "400m"));
    c.wait_until("the edit applied", Duration::from_secs(30), |c| {
        c.enforced(&placed, &quota(400))
    });
    let after = c.status();
    assert_eq!(placement(&after), placed);
    assert_eq!(restarts(&after), [0; 3]);
    eprintln!("took {:?}", started.elapsed());
}
