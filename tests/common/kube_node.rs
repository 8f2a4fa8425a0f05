//! A real one-node Kubernetes cluster for end-to-end tests: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, containerd, kubelet, kube-proxy and CoreDNS,
//! all inside a network namespace made for the run, brought up by
//! `scripts/k8s-node-up.sh` (which says how; this module drives it).
//!
//! ```ignore
//! mod common;
//! use common::kube_node::KubeNode;
//!
//! let Some(node) = KubeNode::start_or_skip() else { return };  // ~10 s to Ready and DNS
//! node.create_namespace("e2e");
//! node.kubectl_ok(&["-n", "e2e", "get", "pods"]);
//! node.helm_ok(&["install", "corral", "charts/corral", "-n", "e2e"]);
//! node.import_image(Path::new("corral.tar"));   // a `docker save` archive
//! // dropped at the end, also on panic: everything is torn down (~2 s)
//! ```
//!
//! The API server listens on the node's address inside the namespace only: every client
//! runs through [`KubeNode::command`] (`nsenter --net=...`), or on a thread that entered
//! the namespace ([`KubeNode::in_netns`]).
//!
//! The binaries come from `scripts/k8s-node.sh`, run once per test process (a version
//! check of about two seconds when all is there; it builds what is missing, minutes the
//! first time). With `CORRAL_K8S_NODE_NO_PROVISION=1` it is not run: the tests then use
//! what is in `$CORRAL_K8S` (default `/var/tmp/corral-k8s`) and skip, saying so, when
//! something is missing.
//!
//! Teardown: dropping a [`KubeNode`] (or [`KubeNode::stop`]) sends SIGTERM to the script,
//! which kills everything under the cgroup `/corral-e2e` and removes the cgroups, the
//! namespace and the run's directory; if it has not finished within
//! [`TEARDOWN_TIMEOUT`], it is killed and `k8s-node-up.sh --down` sweeps. The script is
//! started with `PR_SET_PDEATHSIG` = SIGTERM, so it tears down when the test process dies
//! without dropping (a panic that aborts, SIGKILL); the next run sweeps whatever is left
//! if the script itself was SIGKILLed. One node at a time on the machine: the script holds
//! a lock on `/var/tmp/corral-k8s-node.lock` for its whole life, so a second `start` waits.
//!
//! For the chart's end-to-end tests:
//! - the teardown finds processes through the cgroups under `/corral-e2e`, and then those
//!   sharing a network or mount namespace with one of them (a workload that corral's agent
//!   started in a pod and moved to its own cgroup root). One that left both escapes: give
//!   the agent a cgroup root under [`CGROUP`] anyway (`agent.cgroupRoot`, e.g.
//!   `corral-e2e/corral`);
//! - hostPath volumes are the machine's paths: put them in the run's directory with
//!   [`KubeNode::host_path`] (`agent.hostStateDir`, `agent.zookeeper.hostPath`);
//! - images come from `docker save` archives ([`KubeNode::import_image`]); nothing can be
//!   pulled. No StorageClass and no NetworkPolicy enforcement (the CNI bridge plugin).
//!
//! A node restart: [`KubeNode::restart_runtime`] stops kubelet and containerd as systemd
//! would (SIGTERM; the shims and containers keep running) and starts them again, returning
//! once the node is Ready and its pods are Running again (~2.5 s); [`KubeNode::restart_kubelet`]
//! restarts kubelet alone (~2.5 s).
//!
//! `CORRAL_K8S_NODE_KEEP=1` keeps the run's directory (logs of every component, certificates,
//! kubeconfigs) and prints its path; `CORRAL_K8S_NODE_VERBOSE=1` echoes the script's
//! progress to stderr as it comes.

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use super::apiserver::{DEFAULT_K8S_DIR, output_with_stdin, spawn_tied_to_process_with};

/// Set (to anything but `0`) to not run `scripts/k8s-node.sh`.
pub const NO_PROVISION_ENV: &str = "CORRAL_K8S_NODE_NO_PROVISION";
const KEEP_ENV: &str = "CORRAL_K8S_NODE_KEEP";
const VERBOSE_ENV: &str = "CORRAL_K8S_NODE_VERBOSE";
/// How long the node may take to be up, once the machine lock is ours (~10 s when idle).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(240);
/// How long another run may hold the machine lock before `start` gives up.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(1800);
/// How long the script's own teardown may take (~2 s) before it is killed and swept.
pub const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a restart of kubelet (and containerd) may take until the node is Ready and its
/// pods are Running again (the script gives up on each step within its own limits first).
pub const RESTART_TIMEOUT: Duration = Duration::from_secs(300);
/// kubelet's cgroupRoot, and the cgroup of every process of the node.
pub const CGROUP: &str = "corral-e2e";
/// The node's name and address (inside its network namespace).
pub const NODE_NAME: &str = "corral-node";
pub const NODE_IP: &str = "10.214.0.2";
/// The Service IP of the cluster DNS (kube-dns).
pub const DNS_IP: &str = "10.96.0.10";
/// Images loaded into the node's containerd at start (built by `scripts/k8s-node.sh`).
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";
pub const BUSYBOX_IMAGE: &str = "busybox:1.35";
const POLL: Duration = Duration::from_millis(200);

/// A running one-node cluster; torn down on drop.
pub struct KubeNode {
    script: Option<Child>,
    messages: Arc<Mutex<Vec<String>>>,
    /// The script's standard output, line by line (`ready ...`, `restarted ...`); the lock
    /// also makes restarts one at a time.
    stdout: Mutex<mpsc::Receiver<String>>,
    dir: PathBuf,
    netns: PathBuf,
    kubeconfig: PathBuf,
    containerd: PathBuf,
    up_in: Duration,
    down_in: Option<Duration>,
    /// Processes seen under the node's cgroup (`PID`, start time), for [`KubeNode::leftovers`].
    seen: Mutex<Vec<(u32, String)>>,
}

impl KubeNode {
    /// Starts the node and waits until it is Ready, kube-proxy is synced and the cluster DNS
    /// answers. Panics with the script's messages if it fails. Provisions first (see the
    /// module's doc); panics if provisioning is off and something is missing.
    pub fn start() -> KubeNode {
        if let Err(why) = provision() {
            panic!("kube_node: {why}");
        }
        Self::spawn()
    }

    /// [`KubeNode::start`], or `None` (after printing why) when provisioning is off and the
    /// binaries are missing: the only case a test may skip.
    pub fn start_or_skip() -> Option<KubeNode> {
        match provision() {
            Ok(()) => Some(Self::spawn()),
            Err(why) => {
                eprintln!("kube_node: SKIPPED: {why}");
                None
            }
        }
    }

    fn spawn() -> KubeNode {
        let started = Instant::now();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/k8s-node-up.sh");
        let mut cmd = Command::new("bash");
        cmd.arg(&script)
            .env("CORRAL_K8S", k8s_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C in the terminal reaches the test process, whose
            // death reaches the script as SIGTERM.
            .process_group(0);
        if env_set(KEEP_ENV) {
            cmd.arg("--keep");
        }
        let mut child = spawn_tied_to_process_with(cmd, libc::SIGTERM)
            .unwrap_or_else(|e| panic!("kube_node: cannot run {}: {e}", script.display()));

        let messages = Arc::new(Mutex::new(Vec::new()));
        let waiting = Arc::new(Mutex::new(false));
        {
            let stderr = child.stderr.take().expect("kube_node: script stderr");
            let messages = Arc::clone(&messages);
            let waiting = Arc::clone(&waiting);
            let verbose = env_set(VERBOSE_ENV);
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if verbose {
                        let _ = writeln!(io::stderr(), "{line}");
                    }
                    if line.contains("waiting for another run") {
                        *waiting.lock().unwrap() = true;
                    } else if line.contains("k8s-node-up:") {
                        *waiting.lock().unwrap() = false;
                    }
                    messages.lock().unwrap().push(line);
                }
            });
        }
        let (tx, rx) = mpsc::channel::<String>();
        {
            let stdout = child.stdout.take().expect("kube_node: script stdout");
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }

        // From here on, a panic drops `node`, which tears down what was started.
        let mut node = KubeNode {
            script: Some(child),
            messages,
            stdout: Mutex::new(rx),
            dir: PathBuf::new(),
            netns: PathBuf::new(),
            kubeconfig: PathBuf::new(),
            containerd: PathBuf::new(),
            up_in: Duration::ZERO,
            down_in: None,
            seen: Mutex::new(Vec::new()),
        };
        let mut lock_wait = Duration::ZERO;
        let ready = loop {
            let line = node.stdout.lock().unwrap().recv_timeout(POLL);
            match line {
                Ok(line) if line.starts_with("ready ") => break line,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = node.script.as_mut().and_then(|c| c.wait().ok());
                    panic!(
                        "kube_node: k8s-node-up.sh exited ({status:?}) before the node was up:\n{}",
                        node.messages()
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if *waiting.lock().unwrap() {
                lock_wait += POLL;
                assert!(
                    lock_wait < LOCK_TIMEOUT,
                    "kube_node: another run held the machine lock for {LOCK_TIMEOUT:?}"
                );
            }
            assert!(
                started.elapsed() < STARTUP_TIMEOUT + lock_wait,
                "kube_node: the node was not up within {STARTUP_TIMEOUT:?}:\n{}",
                node.messages()
            );
        };
        let field = |key: &str| -> PathBuf {
            ready
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .map(PathBuf::from)
                .unwrap_or_else(|| panic!("kube_node: no {key} in {ready:?}"))
        };
        node.dir = field("dir");
        node.netns = field("netns");
        node.kubeconfig = field("kubeconfig");
        node.containerd = field("containerd");
        node.up_in = started.elapsed() - lock_wait;
        node.note_processes();
        node
    }

    /// Restarts the node's runtime as `systemctl restart kubelet containerd` would on a real
    /// node: kubelet and containerd get SIGTERM and are waited for (containerd's shims and
    /// the containers keep running), then start again with the same configuration and state,
    /// in the same cgroup and namespaces. Returns once the new kubelet has reported the node
    /// Ready and every pod Running before is Running again (and Ready again if it was), with
    /// how long that took from the request. Panics, with the script's messages and the tails
    /// of kubelet's and containerd's logs, if the restart fails or takes longer than
    /// [`RESTART_TIMEOUT`]. The script logs the steps' times (`restarted ... stop_ms=..
    /// containerd_ms=.. ready_ms=.. pods_ms=..`).
    pub fn restart_runtime(&self) -> Duration {
        self.restart(libc::SIGUSR1, "kubelet and containerd")
    }

    /// [`KubeNode::restart_runtime`] for kubelet only (containerd keeps running).
    pub fn restart_kubelet(&self) -> Duration {
        self.restart(libc::SIGUSR2, "kubelet")
    }

    fn restart(&self, signal: libc::c_int, what: &str) -> Duration {
        let stdout = self.stdout.lock().unwrap();
        let script = self
            .script
            .as_ref()
            .unwrap_or_else(|| panic!("kube_node: restart of {what} after stop"));
        // Lines from before this request (none is expected) are not its answer.
        while stdout.try_recv().is_ok() {}
        let started = Instant::now();
        // SAFETY: signals the child we spawned and have not reaped (`script` is still ours).
        if unsafe { libc::kill(script.id() as libc::pid_t, signal) } != 0 {
            panic!(
                "kube_node: cannot signal k8s-node-up.sh to restart {what}: {}",
                io::Error::last_os_error()
            );
        }
        let fail = |why: String| -> ! {
            panic!(
                "kube_node: restart of {what}: {why}\n--- script ---\n{}\n--- kubelet ---\n{}\n\
                 --- containerd ---\n{}",
                self.messages(),
                self.log_tail("kubelet", 30),
                self.log_tail("containerd", 20)
            )
        };
        loop {
            let left = RESTART_TIMEOUT.saturating_sub(started.elapsed());
            match stdout.recv_timeout(left) {
                Ok(line) if line.starts_with("restarted ") => break,
                Ok(line) if line.starts_with("restart-failed ") => fail(line),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    fail(format!("not done within {RESTART_TIMEOUT:?}"))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    fail("k8s-node-up.sh exited".to_string())
                }
            }
        }
        let took = started.elapsed();
        drop(stdout);
        self.note_processes();
        took
    }

    /// From `start` to the node up (Ready, kube-proxy synced, DNS answering), not counting
    /// a wait for another run's lock.
    pub fn up_in(&self) -> Duration {
        self.up_in
    }

    /// How long the teardown took, once [`KubeNode::stop`] ran.
    pub fn down_in(&self) -> Option<Duration> {
        self.down_in
    }

    /// The run's directory: logs in `log/`, certificates in `pki/`, kubeconfigs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The network namespace, `/run/netns/corral-node-<pid>`.
    pub fn netns(&self) -> &Path {
        &self.netns
    }

    /// A kubeconfig for an admin (`system:masters`); usable inside the namespace only.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// containerd's socket (namespace `k8s.io` holds the node's images).
    pub fn containerd_socket(&self) -> &Path {
        &self.containerd
    }

    /// A directory inside the run's directory, made if missing, for a pod's hostPath (e.g.
    /// the chart's `agent.hostStateDir`): hostPath volumes are the machine's paths (kubelet's
    /// mount namespace shares the machine's filesystems, but for /run, /var/log, /var/lib/cni
    /// and /var/lib/kubelet), so one outside the run's directory would outlive it.
    pub fn host_path(&self, name: &str) -> PathBuf {
        let path = self.dir.join("hostpath").join(name);
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("kube_node: cannot create {}: {e}", path.display()));
        path
    }

    /// What the script said so far.
    pub fn messages(&self) -> String {
        self.messages
            .lock()
            .map(|m| m.join("\n"))
            .unwrap_or_default()
    }

    /// The last `lines` lines of a component's log (`kubelet`, `kube-apiserver`,
    /// `containerd`, `coredns`, ...).
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        let path = self.dir.join("log").join(format!("{component}.log"));
        match fs::read_to_string(&path) {
            Ok(text) => {
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(e) => format!("<cannot read {}: {e}>", path.display()),
        }
    }

    /// `program` run inside the node's network namespace, with `KUBECONFIG` and Helm's
    /// directories set to the run's: for kubectl, helm, curl, or corral itself.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns.display()))
            .arg("--")
            .arg(program)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", self.dir.join("kube-cache"))
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `f` on a thread inside the node's network namespace (see `netns::in_netns`).
    pub fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        super::netns::in_netns(&self.netns, f)
    }

    /// Runs `kubectl ARGS` against the node.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.command("kubectl")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("kube_node: cannot run kubectl: {e}"))
    }

    /// Runs `kubectl ARGS`, panics unless it succeeds, returns its standard output.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        ok("kubectl", args, self.kubectl(args))
    }

    /// Runs `kubectl ARGS` with `stdin` as its standard input (for `apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut command = self.command("kubectl");
        command.args(args);
        output_with_stdin(command, stdin, "kube_node")
    }

    /// `kubectl apply -f -` of `manifest`; panics unless it succeeds.
    pub fn apply(&self, manifest: &str) -> String {
        ok(
            "kubectl",
            &["apply", "-f", "-"],
            self.kubectl_stdin(&["apply", "-f", "-"], manifest),
        )
    }

    /// Runs Helm (from `tests/chart/setup.sh`) against the node.
    pub fn helm(&self, args: &[&str]) -> Output {
        self.command(super::tools::dir().join("bin/helm"))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("kube_node: cannot run helm: {e}"))
    }

    /// Runs Helm, panics unless it succeeds, returns its standard output.
    pub fn helm_ok(&self, args: &[&str]) -> String {
        ok("helm", args, self.helm(args))
    }

    /// Loads a `docker save` archive into the node's containerd, where kubelet finds it (pods
    /// using it need `imagePullPolicy: IfNotPresent` or `Never`, or a tag other than latest).
    pub fn import_image(&self, archive: &Path) {
        let archive = archive.to_string_lossy();
        self.ctr_images(&["import", &archive]);
    }

    /// Tags the loaded image `from` also as `to` (`ctr images tag`): a new image name for
    /// a chart upgrade, without building anything.
    pub fn tag_image(&self, from: &str, to: &str) {
        self.ctr_images(&["tag", from, to]);
    }

    /// `ctr -n k8s.io images ARGS` against the node's containerd; panics unless it succeeds.
    fn ctr_images(&self, args: &[&str]) {
        let output = Command::new("ctr")
            .arg("--address")
            .arg(&self.containerd)
            .args(["-n", "k8s.io", "images"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("kube_node: cannot run ctr: {e}"));
        ok("ctr images", args, output);
    }

    /// Creates a namespace and waits for its default ServiceAccount, without which no pod
    /// can be created in it.
    pub fn create_namespace(&self, name: &str) {
        self.kubectl_ok(&["create", "namespace", name]);
        self.wait_for(
            &format!("the default ServiceAccount of {name}"),
            Duration::from_secs(60),
            || {
                self.kubectl(&["get", "serviceaccount", "default", "-n", name])
                    .status
                    .success()
            },
        );
    }

    /// Polls `ready` until it holds; panics after `timeout` with the script's messages and the
    /// tail of kubelet's log.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !ready() {
            if Instant::now() >= deadline {
                panic!(
                    "kube_node: no {what} within {timeout:?}\n--- script ---\n{}\n--- kubelet ---\n{}",
                    self.messages(),
                    self.log_tail("kubelet", 30)
                );
            }
            thread::sleep(POLL);
        }
    }

    /// The processes under the node's cgroup now (components, shims, containers), recorded
    /// for [`KubeNode::leftovers`].
    pub fn processes(&self) -> Vec<u32> {
        self.note_processes();
        cgroup_pids()
    }

    fn note_processes(&self) {
        let mut seen = self.seen.lock().unwrap();
        for pid in cgroup_pids() {
            if let Some(start) = start_time(pid)
                && !seen.iter().any(|(p, s)| *p == pid && *s == start)
            {
                seen.push((pid, start));
            }
        }
    }

    /// Tears the node down (idempotent; dropping does it too) and returns how long it took.
    pub fn stop(&mut self) -> Duration {
        if let Some(took) = self.down_in {
            return took;
        }
        let Some(mut child) = self.script.take() else {
            return Duration::ZERO;
        };
        if !self.dir.as_os_str().is_empty() {
            self.note_processes();
        }
        let started = Instant::now();
        if let Ok(None) = child.try_wait() {
            // SAFETY: signals the child we spawned and have not reaped (its PID is still ours).
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let deadline = started + TEARDOWN_TIMEOUT;
        let finished = loop {
            match child.try_wait() {
                Ok(Some(_)) => break true,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => break false,
            }
        };
        if !finished {
            let _ = child.kill();
            let _ = child.wait();
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/k8s-node-up.sh");
            let _ = Command::new("bash")
                .arg(script)
                .arg("--down")
                .stdin(Stdio::null())
                .status();
        }
        let took = started.elapsed();
        self.down_in = Some(took);
        if env_set(KEEP_ENV) && !self.dir.as_os_str().is_empty() {
            let _ = writeln!(io::stderr(), "kube_node: kept {}", self.dir.display());
        }
        took
    }

    /// After [`KubeNode::stop`]: what of the run is still there (empty when all is gone):
    /// live processes it had (zombies count as gone: PID 1 here does not reap), cgroups
    /// under `/corral-e2e`, the network namespace, the run's directory, mounts naming it.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for (pid, start) in self.seen.lock().unwrap().iter() {
            if start_time(*pid).as_ref() == Some(start) && !is_zombie(*pid) {
                left.push(format!("process {pid} ({})", comm(*pid)));
            }
        }
        for mount in cgroup_mounts() {
            let group = mount.join(CGROUP);
            if group.exists() {
                left.push(format!("cgroup {}", group.display()));
            }
        }
        if self.netns.exists() {
            left.push(format!("network namespace {}", self.netns.display()));
        }
        let name = self.netns.file_name().unwrap_or_default().to_string_lossy();
        let listed = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if !name.is_empty()
            && listed
                .lines()
                .any(|l| l.split_whitespace().next() == Some(&name))
        {
            left.push(format!("network namespace {name} (ip netns list)"));
        }
        if !env_set(KEEP_ENV) && self.dir.exists() {
            left.push(format!("directory {}", self.dir.display()));
        }
        let dir = self.dir.to_string_lossy();
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mounts.lines() {
            if (!dir.is_empty() && line.contains(&*dir)) || line.contains("corral-node-") {
                left.push(format!("mount {line}"));
            }
        }
        left
    }
}

impl Drop for KubeNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Makes sure the binaries and images are there: runs `scripts/k8s-node.sh` once per test
/// process, unless [`NO_PROVISION_ENV`] says not to. `Err` (a reason to skip) only when
/// provisioning is off and something is missing; panics when the script fails.
pub fn provision() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = k8s_dir();
        if env_set(NO_PROVISION_ENV) {
            let missing: Vec<String> = [
                "bin/etcd",
                "bin/kube-apiserver",
                "bin/kube-controller-manager",
                "bin/kube-scheduler",
                "bin/kubelet",
                "bin/kube-proxy",
                "bin/coredns",
                "images/pause.tar",
                "images/busybox.tar",
            ]
            .iter()
            .filter(|f| !dir.join(f).exists())
            .map(|f| dir.join(f).display().to_string())
            .collect();
            return if missing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{NO_PROVISION_ENV} is set and scripts/k8s-node.sh has not provided {}",
                    missing.join(", ")
                ))
            };
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/k8s-node.sh");
        let output = Command::new("bash")
            .arg(&script)
            .env("CORRAL_K8S", &dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("kube_node: cannot run {}: {e}", script.display()));
        assert!(
            output.status.success(),
            "kube_node: {} failed ({}); it builds the node's binaries into {} and needs Go, \
             python3, kubectl, openssl and apt-get. Its output:\n{}{}",
            script.display(),
            output.status,
            dir.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    })
    .clone()
}

fn k8s_dir() -> PathBuf {
    std::env::var_os("CORRAL_K8S")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_K8S_DIR))
}

fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0")
}

fn ok(program: &str, args: &[&str], output: Output) -> String {
    assert!(
        output.status.success(),
        "{program} {} failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The mount points of every cgroup hierarchy (v1 controllers, name=systemd, cgroup2).
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && (f[2] == "cgroup" || f[2] == "cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .collect()
}

/// Every PID in `/corral-e2e` and below, in any hierarchy.
pub fn cgroup_pids() -> Vec<u32> {
    fn walk(dir: &Path, pids: &mut Vec<u32>) {
        if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), pids);
                }
            }
        }
    }
    let mut pids = Vec::new();
    for mount in cgroup_mounts() {
        walk(&mount.join(CGROUP), &mut pids);
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Field 22 of /proc/PID/stat (start time since boot, in clock ticks): with the PID, names
/// one process even if the PID is reused later.
fn start_time(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(19)?
            .to_string(),
    )
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s.rsplit_once(')')?.1.split_whitespace().next()? == "Z"))
        .unwrap_or(true)
}

fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
