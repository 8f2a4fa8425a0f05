//! A corral cluster on this machine for tests and measurements: a ZooKeeper ensemble,
//! `corral controller` and `corral agent` processes (simulated nodes, each with its own
//! cgroup root and state directory), their logs, and `corral status` to look at it all.
//! Dropping a `Cluster`, also after a panic, kills every process it started and removes
//! its cgroups. [`Cluster::secure`] gives the controllers and each agent a digest identity
//! of their own.
//!
//! Needs root (cgroups), `java` and `/usr/share/java/zookeeper.jar`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::zk::ZkCluster;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_corral");
/// Short sessions keep the tests fast; the ensemble's tickTime of 500 ms allows 1 s.
pub const SESSION_TIMEOUT: &str = "4";
/// The policy's `nodeGracePeriodSeconds` (the least it allows).
pub const NODE_GRACE: u64 = 5;
pub const CGROUP_CONTROLLERS: [&str; 5] = ["cpu", "cpuacct", "memory", "pids", "blkio"];
pub const WORKLOAD: &str = "shop/web";
/// Written to a member's log before each start, so that one run's lines can be told apart.
const START_MARK: &str = "=== zk_cluster: start ";
pub const POLL: Duration = Duration::from_millis(100);
const LOG_TAIL_LINES: usize = 60;
/// The agents' resync period, in seconds: long enough that every lease change a test waits
/// for must come through a ZooKeeper watch, also after a reconnect or a new session.
pub const AGENT_RESYNC: &str = "30";

/// What each agent offers: three `shop/web` replicas of 300m.
pub const AGENT_CAPACITY: &str = "cpu=1,memory=1Gi";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn policy() -> String {
    format!(
        "apiVersion: corral.dev/v1alpha1\nkind: ResourcePolicy\nmetadata: {{name: cluster}}\n\
         spec: {{strategy: Priority, nodeGracePeriodSeconds: {NODE_GRACE}}}\n"
    )
}

/// The `shop/web` workload: each replica requests 300m, so a node of `cpu=1` holds three.
pub fn web(replicas: u32, cpu_limit: &str) -> String {
    format!(
        "apiVersion: corral.dev/v1alpha1\nkind: Workload\nmetadata: {{name: web, namespace: shop}}\n\
         spec:\n  replicas: {replicas}\n  resources:\n    requests: {{cpu: 300m, memory: 16Mi}}\n    \
         limits: {{cpu: {cpu_limit}, memory: 64Mi}}\n  terminationGracePeriodSeconds: 1\n  \
         command: {{args: [sleep, \"600\"]}}\n"
    )
}

/// `cpu.cfs_quota_us` of a limit in millicores, with the default 100 ms period.
pub fn quota(millicores: u64) -> String {
    (millicores * 100).to_string()
}

/// Writes a manifest as editors do: a new file renamed over the old one.
pub fn write_manifest(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, dir.join(name)).unwrap();
}

/// A controller or an agent: how to start it, its log, and the process while it runs.
pub struct Member {
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
pub struct Cluster {
    pub zk: ZkCluster,
    dir: tempfile::TempDir,
    tag: String,
    members: BTreeMap<String, Member>,
    /// The agents' `--resync`, in seconds; set before `up_with`.
    pub agent_resync: &'static str,
    /// Every process's `--session-timeout`, in seconds; set before starting any.
    pub session_timeout: &'static str,
    /// Each agent's `--capacity`; set before starting agents.
    pub agent_capacity: &'static str,
    /// With [`Cluster::secure`]: digest identities, in credentials files, and the agents'
    /// identities file.
    secured: bool,
    /// The command each named member starts under, e.g. `nsenter --net=...` to run it in a
    /// network namespace of its own (tests/faults.rs); none for the others.
    pub prefixes: BTreeMap<String, Vec<String>>,
    /// The command `corral status` runs under.
    pub status_prefix: Vec<String>,
}

/// The password of every member's digest identity: its name and this.
pub const SECRET: &str = "-s3cret";

impl Cluster {
    /// A three-server ensemble, and the manifests (`shop/web`, 3 replicas, limit 500m) in
    /// the directory `manifests`.
    pub fn new() -> Cluster {
        Cluster::on(ZkCluster::ensemble(3))
    }

    /// The same, on the given ensemble.
    pub fn on(zk: ZkCluster) -> Cluster {
        let cluster = Cluster {
            zk,
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
            session_timeout: SESSION_TIMEOUT,
            agent_capacity: AGENT_CAPACITY,
            secured: false,
            prefixes: BTreeMap::new(),
            status_prefix: Vec::new(),
        };
        cluster.manifest_dir("manifests");
        cluster
    }

    /// From now on every member authenticates with a digest identity of its own (plain TCP,
    /// so with --zookeeper-insecure): `controller` for the controllers and `corral status`,
    /// the node's name for each agent; the controllers know n1's and n2's from an identities
    /// file. Agents then wait for a controller to provision their node before they register.
    pub fn secure(&mut self) {
        self.secured = true;
        let ids: String = ["n1", "n2"]
            .iter()
            .map(|node| format!("{node}: [\"{}\"]\n", digest_id(node)))
            .collect();
        fs::write(self.identities_file(), ids).unwrap();
    }

    /// The identities file of the controllers, after [`Cluster::secure`].
    pub fn identities_file(&self) -> PathBuf {
        self.dir.path().join("agent-identities.yaml")
    }

    /// A credentials file for `user` (written on first use): `user:user-s3cret`.
    pub fn credentials_file(&self, user: &str) -> PathBuf {
        let path = self.dir.path().join(format!("credentials-{user}"));
        if !path.exists() {
            fs::write(&path, format!("{user}:{user}{SECRET}\n")).unwrap();
        }
        path
    }

    /// The arguments that give a member the identity `user`, when secured.
    fn identity_args(&self, user: &str) -> Vec<String> {
        if !self.secured {
            return Vec::new();
        }
        vec![
            "--zookeeper-credentials-file".into(),
            self.credentials_file(user).to_string_lossy().into_owned(),
            "--zookeeper-insecure".into(),
        ]
    }

    /// The arguments of a controller: its identity and the agents' identities file.
    fn controller_identity_args(&self) -> Vec<String> {
        let mut args = self.identity_args("controller");
        if self.secured {
            args.push("--agent-identities".into());
            args.push(self.identities_file().to_string_lossy().into_owned());
        }
        args
    }

    /// Agents n1 and n2, both registered before controller c1 starts and leads, then c2;
    /// returns once the three replicas run.
    pub fn up() -> Cluster {
        Cluster::up_with(Cluster::new())
    }

    pub fn up_with(mut c: Cluster) -> Cluster {
        c.start_agents();
        let manifests = c.manifests();
        c.start_controller("c1", &manifests);
        c.wait_for_log("c1", "leading epoch=", Duration::from_secs(20));
        c.start_controller("c2", &manifests);
        // A test may stop c2 at once: it must be past its start, with its signal handlers.
        c.wait_for_log("c2", "standing by", Duration::from_secs(20));
        c.wait_until("3 replicas Running", Duration::from_secs(30), |c| {
            c.try_status().is_ok_and(|s| all_running(&s, 3))
        });
        c
    }

    /// A manifest directory below the cluster's directory, with the policy and `shop/web`.
    pub fn manifest_dir(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join(name);
        fs::create_dir_all(&dir).unwrap();
        write_manifest(&dir, "policy.yaml", &policy());
        write_manifest(&dir, "web.yaml", &web(3, "500m"));
        dir
    }

    pub fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    /// Starts agents n1 and n2 and waits until both are registered.
    pub fn start_agents(&mut self) {
        self.start_agent("n1");
        self.start_agent("n2");
        self.wait_until("n1 and n2 registered", Duration::from_secs(20), |c| {
            c.try_status().is_ok_and(|s| registered(&s) == ["n1", "n2"])
        });
    }

    pub fn start_agent(&mut self, node: &str) {
        let zookeeper = self.zk.connect_string();
        self.start_agent_via(node, &zookeeper);
    }

    /// The same, connecting to ZooKeeper at `zookeeper` (a proxy the test can cut).
    pub fn start_agent_via(&mut self, node: &str, zookeeper: &str) {
        let root = self.root_for(node);
        let state = self.dir.path().join(format!("state-{node}"));
        let args = vec![
            "agent".into(),
            "--node".into(),
            node.into(),
            "--zookeeper".into(),
            zookeeper.into(),
            "--session-timeout".into(),
            self.session_timeout.into(),
            "--cgroup-root".into(),
            root.clone(),
            "--state-dir".into(),
            state.to_string_lossy().into_owned(),
            "--capacity".into(),
            self.agent_capacity.into(),
            "--resync".into(),
            self.agent_resync.into(),
        ];
        let args = [args, self.identity_args(node)].concat();
        self.add(node, args, Some(root));
        self.start(node);
    }

    pub fn start_controller(&mut self, name: &str, manifests: &Path) {
        let args = vec![
            "controller".into(),
            "--source".into(),
            format!("dir:{}", manifests.display()),
            "--zookeeper".into(),
            self.zk.connect_string(),
            "--session-timeout".into(),
            self.session_timeout.into(),
            "--identity".into(),
            name.into(),
            "--resync".into(),
            "1".into(),
        ];
        let args = [args, self.controller_identity_args()].concat();
        self.add(name, args, None);
        self.start(name);
    }

    /// Starts `corral controller --source kubernetes` named `name`, with the API server of
    /// `kubeconfig`, resyncing every `resync` seconds, serving metrics on `metrics`.
    pub fn start_kube_controller(
        &mut self,
        name: &str,
        kubeconfig: &Path,
        resync: &str,
        metrics: Option<&str>,
    ) {
        let mut args: Vec<String> = [
            "controller",
            "--source",
            "kubernetes",
            "--kubeconfig",
            &kubeconfig.to_string_lossy(),
            "--zookeeper",
            &self.zk.connect_string(),
            "--session-timeout",
            self.session_timeout,
            "--identity",
            name,
            "--resync",
            resync,
        ]
        .map(String::from)
        .to_vec();
        if let Some(addr) = metrics {
            args.extend(["--metrics-addr".to_string(), addr.to_string()]);
        }
        args.extend(self.controller_identity_args());
        self.add(name, args, None);
        self.start(name);
    }

    pub fn add(&mut self, name: &str, args: Vec<String>, root: Option<String>) {
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

    pub fn member(&self, name: &str) -> &Member {
        self.members
            .get(name)
            .unwrap_or_else(|| panic!("no member {name}"))
    }

    /// Starts a member (again) with the same arguments, its output appended to its log.
    pub fn start(&mut self, name: &str) {
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
        let child = command(self.prefixes.get(name).map_or(&[][..], Vec::as_slice))
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

    /// The exit status of a member that exited by itself since it was started (it then
    /// counts as not running); `None` while it runs, or when it was not started.
    pub fn exited(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        let member = self.members.get_mut(name)?;
        let status = member.child.as_mut()?.try_wait().ok()??;
        member.child = None;
        Some(status)
    }

    /// True when the member was started and not killed or terminated since (a stopped one
    /// counts as running).
    pub fn is_running(&self, name: &str) -> bool {
        self.member(name).child.is_some()
    }

    pub fn pid(&self, name: &str) -> Pid {
        let child = self.member(name).child.as_ref();
        let pid = child
            .unwrap_or_else(|| panic!("{name} is not running"))
            .id();
        Pid::from_raw(i32::try_from(pid).unwrap())
    }

    /// SIGTERM, and wait for the exit (at most 10 s, then SIGKILL).
    pub fn terminate(&mut self, name: &str) -> std::process::ExitStatus {
        let pid = self.pid(name);
        kill(pid, Signal::SIGTERM).unwrap();
        let member = self.members.get_mut(name).unwrap();
        let mut child = member.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                return child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A cgroup root of this cluster's own, for a member named `name`.
    pub fn root_for(&self, name: &str) -> String {
        format!("{}-{name}", self.tag)
    }

    /// The cluster's scratch directory (manifests, logs, state directories).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self, name: &str) {
        let member = self.members.get_mut(name).unwrap();
        let mut child = member.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGSTOP, and wait until the kernel reports it stopped.
    pub fn pause(&mut self, name: &str) {
        let pid = self.pid(name);
        kill(pid, Signal::SIGSTOP).unwrap();
        self.wait_until(&format!("{name} stopped"), Duration::from_secs(5), |_| {
            proc_state(pid.as_raw()).is_some_and(|s| s == 'T')
        });
    }

    pub fn resume(&mut self, name: &str) {
        kill(self.pid(name), Signal::SIGCONT).unwrap();
    }

    /// The member's log since its last start.
    pub fn log(&self, name: &str) -> String {
        let text = fs::read_to_string(&self.member(name).log).unwrap_or_default();
        match text.rfind(START_MARK) {
            Some(at) => text[at..].to_string(),
            None => text,
        }
    }

    /// The tail of every member's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (name, member) in &self.members {
            let text = fs::read_to_string(&member.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("\n--- {name} ({}) ---\n", member.log.display()));
            out.push_str(&lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n"));
        }
        out
    }

    pub fn wait_for_log(&mut self, name: &str, needle: &str, timeout: Duration) {
        self.wait_until(&format!("{name} to log {needle:?}"), timeout, |c| {
            c.log(name).contains(needle)
        });
    }

    /// The servers to ask: running and not paused (a client that picks a paused server
    /// waits for its whole connection timeout).
    pub fn live_hosts(&mut self) -> String {
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
    pub fn sessions(&self) -> BTreeSet<u64> {
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
    pub fn served_sessions(&mut self) -> BTreeSet<u64> {
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
    pub fn try_status(&mut self) -> Result<Value, String> {
        let hosts = self.live_hosts();
        if hosts.is_empty() {
            return Err("no ZooKeeper server serves".into());
        }
        let output = command(&self.status_prefix)
            .args(["status", "-o", "json", "--zookeeper", &hosts])
            .args(["--session-timeout", self.session_timeout])
            .args(self.identity_args("controller"))
            .env_remove("CORRAL_ZK_CREDENTIALS")
            .env_remove("CORRAL_ZK_CREDENTIALS_FILE")
            .output()
            .unwrap();
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())
    }

    pub fn status(&mut self) -> Value {
        self.try_status()
            .unwrap_or_else(|e| panic!("corral status failed: {e}"))
    }

    /// Polls `condition` every 100 ms; panics with the last status after `timeout` (the
    /// logs follow from `Drop`). Returns how long it took.
    pub fn wait_until(
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

    pub fn root(&self, node: &str) -> &str {
        self.member(node).root.as_deref().unwrap()
    }

    /// The group of `shop/web` replica `index` on `node`, in one hierarchy.
    pub fn group_dir(&self, node: &str, controller: &str, index: u64) -> PathBuf {
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(self.root(node))
            .join("shop")
            .join(format!("web.{index}"))
    }

    pub fn knob(&self, node: &str, index: u64, knob: &str) -> Option<String> {
        let controller = knob.split('.').next().unwrap();
        fs::read_to_string(self.group_dir(node, controller, index).join(knob))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// True when every replica of `placement` runs in its groups on its node, with the
    /// quota `want` and the 64 MiB memory limit.
    pub fn enforced(&self, placement: &Placement, want: &str) -> bool {
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
                for hierarchy in super::cgroups::hierarchies() {
                    sweep(&hierarchy.join(root));
                }
            }
        }
    }
}

/// corral's binary, run under `prefix` (a program and its arguments) unless it is empty.
fn command(prefix: &[String]) -> Command {
    match prefix.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(BIN);
            command
        }
        None => Command::new(BIN),
    }
}

/// The digest ACL id of `user` with the password [`Cluster::credentials_file`] gives it.
pub fn digest_id(user: &str) -> String {
    corral::lease::acl::AclId::digest(user, &format!("{user}{SECRET}")).to_acl_string()
}

/// Kills what is left below `dir` and removes it, deepest first.
pub fn sweep(dir: &Path) {
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
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// True when the process is gone, or a zombie nobody reaped yet.
pub fn gone(pid: u64) -> bool {
    proc_state(i32::try_from(pid).unwrap()).is_none_or(|s| s == 'Z')
}

/// Replica index → (node, pid) of the running replicas of `shop/web`.
pub type Placement = BTreeMap<u64, (String, u64)>;

pub fn web_rows(status: &Value) -> Vec<&Value> {
    status["replicas"]
        .as_array()
        .map(|rows| rows.iter().filter(|r| r["workload"] == WORKLOAD).collect())
        .unwrap_or_default()
}

/// True when `shop/web` has exactly `n` replicas, each with a lease and Running.
pub fn all_running(status: &Value, n: usize) -> bool {
    let rows = web_rows(status);
    rows.len() == n
        && rows.iter().all(|r| {
            r["pending"].is_null()
                && r["node"].is_string()
                && r["report"]["process"]["state"] == "Running"
                && r["report"]["process"]["pid"].is_u64()
        })
}

pub fn placement(status: &Value) -> Placement {
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

pub fn registered(status: &Value) -> Vec<String> {
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

pub fn leader(status: &Value) -> (String, i64) {
    (
        status["controller"]["leader"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        status["controller"]["epoch"].as_i64().unwrap_or(-1),
    )
}

/// The leases of `shop/web`, as written.
pub fn leases(status: &Value) -> Vec<Value> {
    web_rows(status)
        .into_iter()
        .filter(|r| !r["lease"].is_null())
        .map(|r| r["lease"].clone())
        .collect()
}

pub fn restarts(status: &Value) -> Vec<u64> {
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
pub fn session_trouble(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            l.contains("session ended")
                || l.contains("session rebuilt")
                || l.contains("session lost")
                || l.contains("fenced")
        })
        .collect()
}

/// A free loopback address, for a metrics server.
pub fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// GET `path` from `addr`: the status line and the body.
pub fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}
