//! A real Kubernetes API server for integration tests: etcd and kube-apiserver on free
//! loopback ports, with certificates made by `openssl`, a kubeconfig for an admin in
//! `system:masters`, and `kubectl` bound to it.
//!
//! ```ignore
//! mod common;
//! use common::apiserver::ApiServer;
//!
//! let server = ApiServer::start();           // one per test, ~4 s; dropped at the end
//! let server = ApiServer::shared();          // or one per test binary, started once
//! server.kubectl_ok(&["apply", "-f", "crds/"]);
//! Command::new(BIN).env("KUBECONFIG", server.kubeconfig()); // for corral itself
//! ```
//!
//! The binaries come from `scripts/k8s-apiserver.sh`, run once per test process: it checks
//! `$CORRAL_K8S/bin/{kube-apiserver,etcd}` (default `/var/tmp/corral-k8s`) and builds them
//! from Go modules when missing. It needs Go (and the Go module proxy) the first time,
//! `kubectl` and `openssl` always.
//!
//! Processes never outlive the test process:
//! - dropping an [`ApiServer`] (also during a panic) kills etcd and kube-apiserver by PID and
//!   removes its directory;
//! - the server of [`ApiServer::shared`] lives in a static, which is never dropped: an
//!   `atexit` handler kills it and removes its directory when the test binary exits;
//! - every process is started with `PR_SET_PDEATHSIG` = SIGKILL from one helper thread that
//!   lives as long as the process, so the kernel kills them if the test process dies without
//!   running either (SIGKILL, abort). The directory is left behind then.
//!
//! `CORRAL_K8S_KEEP_DIR=1` keeps the directory (certificates, kubeconfig, `etcd.log`,
//! `kube-apiserver.log`) and prints its path.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Runs `command` with `stdin` as its standard input, written from a thread of its own so
/// that a large input cannot deadlock against its output; `who` names the caller in a panic.
pub fn output_with_stdin(mut command: Command, stdin: &str, who: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{who}: cannot run {command:?}: {e}"));
    let mut input = child.stdin.take().expect("stdin");
    let text = stdin.to_string();
    let writer = thread::spawn(move || {
        let _ = input.write_all(text.as_bytes());
    });
    let output = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{who}: {command:?} failed: {e}"));
    let _ = writer.join();
    output
}

/// Where the setup script puts the binaries, unless `CORRAL_K8S` says otherwise.
pub const DEFAULT_K8S_DIR: &str = "/var/tmp/corral-k8s";
/// How long etcd plus kube-apiserver may take to report `/readyz` ok (~4 s when idle).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(90);
/// Starts are retried this often when a port picked as free was taken meanwhile.
const START_ATTEMPTS: usize = 3;
const POLL: Duration = Duration::from_millis(100);
const LOG_TAIL_LINES: usize = 40;
const KEEP_DIR_ENV: &str = "CORRAL_K8S_KEEP_DIR";
/// Prefix of the servers' directories under the temp dir.
const DIR_PREFIX: &str = "corral-k8s-";
/// In each directory: the owning test process, as `PID STARTTIME` (see [`owner_id`]).
const OWNER_FILE: &str = "owner";
/// The range of cluster IPs for Services; the apiserver takes the first for `kubernetes`.
pub const SERVICE_CIDR: &str = "10.0.0.0/24";

/// A running etcd plus kube-apiserver, owned by a test (or by the process, see
/// [`ApiServer::shared`]).
pub struct ApiServer {
    dir: Option<TempDir>,
    procs: Mutex<Vec<Proc>>,
    url: String,
    etcd_url: String,
    kubeconfig: PathBuf,
    started_in: Duration,
}

struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl ApiServer {
    /// Starts etcd and kube-apiserver on free loopback ports and waits until the apiserver is
    /// ready. Panics with the tails of both logs if it is not within [`STARTUP_TIMEOUT`].
    pub fn start() -> ApiServer {
        let bin = binaries();
        let mut last = String::new();
        for attempt in 1..=START_ATTEMPTS {
            match Self::try_start(&bin) {
                Ok(server) => return server,
                Err(Failure::PortTaken(msg)) if attempt < START_ATTEMPTS => last = msg,
                Err(Failure::PortTaken(msg) | Failure::Fatal(msg)) => panic!("{msg}"),
            }
        }
        panic!("{last}")
    }

    /// One server for the whole test binary, started by the first caller. It is never
    /// dropped: an `atexit` handler stops it and removes its directory when the binary exits.
    /// Tests sharing it must not get in each other's way (own namespaces, own names).
    pub fn shared() -> &'static ApiServer {
        static SHARED: OnceLock<ApiServer> = OnceLock::new();
        extern "C" fn stop_shared() {
            if let Some(server) = SHARED.get() {
                // Must not unwind across `extern "C"`.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    server.stop();
                    // The TempDir stays in the static; remove the directory by hand.
                    if let Some(dir) = &server.dir {
                        if std::env::var_os(KEEP_DIR_ENV).is_some() {
                            let _ = fs::remove_file(dir.path().join(OWNER_FILE));
                            let _ =
                                writeln!(io::stderr(), "apiserver: kept {}", dir.path().display());
                        } else {
                            let _ = fs::remove_dir_all(dir.path());
                        }
                    }
                }));
            }
        }
        // A server that failed to start is not tried again by every other test.
        static FAILED: OnceLock<String> = OnceLock::new();
        if let Some(msg) = FAILED.get() {
            panic!("apiserver: the shared server failed to start earlier:\n{msg}");
        }
        SHARED.get_or_init(|| {
            let server = std::panic::catch_unwind(ApiServer::start).unwrap_or_else(|e| {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let _ = FAILED.set(msg);
                std::panic::resume_unwind(e)
            });
            // SAFETY: registers a plain `extern "C" fn` that does not unwind.
            let rc = unsafe { libc::atexit(stop_shared) };
            assert_eq!(rc, 0, "apiserver: atexit failed");
            server
        })
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// etcd's client URL, `http://127.0.0.1:PORT`.
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// A kubeconfig (cluster `corral-test`, user `admin` in `system:masters`, by client
    /// certificate); pass it as `KUBECONFIG`.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The directory holding certificates, keys, kubeconfig and logs.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("apiserver: no directory").path()
    }

    /// The CA that signed the serving and the client certificates.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir().join("ca.crt")
    }

    /// The CA's private key, to sign more client certificates (e.g. for other users).
    pub fn ca_key(&self) -> PathBuf {
        self.dir().join("ca.key")
    }

    /// How long [`ApiServer::start`] took, from spawning etcd to `/readyz` ok.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// PIDs of etcd and kube-apiserver while they run.
    pub fn pids(&self) -> Vec<u32> {
        self.procs
            .lock()
            .map(|p| p.iter().map(|p| p.child.id()).collect())
            .unwrap_or_default()
    }

    /// `KUBECONFIG` and a private kubectl discovery cache, for any command talking to the
    /// server.
    pub fn envs(&self) -> [(&'static str, PathBuf); 2] {
        [
            ("KUBECONFIG", self.kubeconfig.clone()),
            ("KUBECACHEDIR", self.dir().join("kube-cache")),
        ]
    }

    /// Runs `kubectl ARGS` against this server and returns what it did.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_command(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("apiserver: cannot run kubectl: {e}"))
    }

    /// Runs `kubectl ARGS` with `stdin` as its standard input (for `-f -`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        output_with_stdin(self.kubectl_command(args), stdin, "apiserver")
    }

    /// Runs `kubectl ARGS`, panics unless it succeeds, and returns its standard output.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let output = self.kubectl(args);
        assert!(
            output.status.success(),
            "kubectl {} failed ({}):\n{}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `kubectl` with this server's environment, not yet run.
    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.args(args).envs(self.envs());
        cmd
    }

    /// The last `lines` lines of kube-apiserver's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.dir().join("kube-apiserver.log"), lines)
    }

    /// Kills both processes by PID (apiserver first) and reaps them. Idempotent.
    fn stop(&self) {
        let Ok(mut procs) = self.procs.lock() else {
            return;
        };
        for p in procs.iter_mut().rev() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        procs.clear();
    }

    fn try_start(bin: &Path) -> Result<ApiServer, Failure> {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .map_err(|e| Failure::Fatal(format!("apiserver: cannot create a temp dir: {e}")))?;
        let d = dir.path().to_path_buf();
        fs::write(
            d.join(OWNER_FILE),
            owner_id(std::process::id()).unwrap_or_default(),
        )
        .map_err(|e| Failure::Fatal(format!("apiserver: cannot write {OWNER_FILE}: {e}")))?;
        make_certs(&d).map_err(Failure::Fatal)?;
        let [client, peer, secure] = free_ports();
        let etcd_url = format!("http://127.0.0.1:{client}");
        let url = format!("https://127.0.0.1:{secure}");
        let kubeconfig = d.join("kubeconfig");
        fs::write(&kubeconfig, kubeconfig_text(&url, &d))
            .map_err(|e| Failure::Fatal(format!("apiserver: cannot write kubeconfig: {e}")))?;
        // From here on, an early return drops `server`, which kills what was started.
        let mut server = ApiServer {
            dir: Some(dir),
            procs: Mutex::new(Vec::new()),
            url,
            etcd_url,
            kubeconfig,
            started_in: Duration::ZERO,
        };
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut etcd = Command::new(bin.join("etcd"));
        etcd.arg(format!("--data-dir={}", d.join("etcd").display()))
            .arg(format!("--listen-client-urls={}", server.etcd_url))
            .arg(format!("--advertise-client-urls={}", server.etcd_url))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"))
            // A test's data need not survive a power cut.
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn");
        server.spawn("etcd", etcd)?;
        server.wait_for(Duration::from_secs(20), "etcd to listen", || {
            TcpStream::connect(("127.0.0.1", client)).is_ok()
        })?;

        let file = |name: &str| d.join(name).display().to_string();
        let mut apiserver = Command::new(bin.join("kube-apiserver"));
        apiserver
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={secure}"))
            .arg(format!("--etcd-servers={}", server.etcd_url))
            .arg("--storage-backend=etcd3")
            .arg(format!("--cert-dir={}", file("certs")))
            .arg(format!("--tls-cert-file={}", file("server.crt")))
            .arg(format!("--tls-private-key-file={}", file("server.key")))
            .arg(format!("--client-ca-file={}", file("ca.crt")))
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!("--service-account-key-file={}", file("sa.pub")))
            .arg(format!(
                "--service-account-signing-key-file={}",
                file("sa.key")
            ))
            .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
            // RBAC as in a real cluster; the admin is in system:masters, which RBAC lets do
            // anything. The default admission plugins stay on, as in a real cluster.
            .arg("--authorization-mode=RBAC")
            .arg("--profiling=false");
        server.spawn("kube-apiserver", apiserver)?;
        server.wait_for(STARTUP_TIMEOUT, "kube-apiserver /readyz", || {
            server
                .kubectl(&["get", "--raw=/readyz", "--request-timeout=2s"])
                .status
                .success()
        })?;
        server.started_in = started.elapsed();
        Ok(server)
    }

    /// Spawns one of the two servers, logging to `<dir>/<name>.log`.
    fn spawn(&self, name: &'static str, mut cmd: Command) -> Result<(), Failure> {
        let log = self.dir().join(format!("{name}.log"));
        let out = fs::File::create(&log)
            .map_err(|e| Failure::Fatal(format!("apiserver: cannot create {name}.log: {e}")))?;
        let err = out
            .try_clone()
            .map_err(|e| Failure::Fatal(format!("apiserver: {e}")))?;
        cmd.current_dir(self.dir())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group: a Ctrl-C in the terminal reaches the test process only.
            .process_group(0);
        let child = spawn_tied_to_process(cmd)
            .map_err(|e| Failure::Fatal(format!("apiserver: cannot start {name}: {e}")))?;
        self.procs
            .lock()
            .expect("apiserver: process list poisoned")
            .push(Proc { name, child, log });
        Ok(())
    }

    /// Polls `ready` until it holds; fails early when a process exits, with the logs.
    fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), Failure> {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = {
                let mut procs = self.procs.lock().expect("apiserver: process list poisoned");
                procs.iter_mut().find_map(|p| match p.child.try_wait() {
                    Ok(Some(status)) => Some(format!("{} exited ({status})", p.name)),
                    _ => None,
                })
            };
            if let Some(exited) = exited {
                let msg = self.failure(&format!("{exited} while waiting for {what}"));
                return Err(if msg.contains("address already in use") {
                    Failure::PortTaken(msg)
                } else {
                    Failure::Fatal(msg)
                });
            }
            if ready() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Failure::Fatal(
                    self.failure(&format!("no {what} within {timeout:?}")),
                ));
            }
            thread::sleep(POLL);
        }
    }

    fn failure(&self, what: &str) -> String {
        let mut msg = format!("apiserver: {what}");
        if let Ok(procs) = self.procs.lock() {
            for p in procs.iter() {
                let _ = write!(
                    msg,
                    "\n--- tail of {} ---\n{}",
                    p.log.display(),
                    tail(&p.log, LOG_TAIL_LINES)
                );
            }
        }
        msg
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
        let Some(dir) = self.dir.take() else {
            return;
        };
        if std::env::var_os(KEEP_DIR_ENV).is_some() {
            let _ = fs::remove_file(dir.path().join(OWNER_FILE));
            let path = dir.keep();
            let _ = writeln!(io::stderr(), "apiserver: kept {}", path.display());
        } else {
            let _ = dir.close();
        }
    }
}

enum Failure {
    /// A process could not bind a port picked as free: worth another try.
    PortTaken(String),
    Fatal(String),
}

/// Runs `scripts/k8s-apiserver.sh` once per process and returns the directory holding
/// `kube-apiserver` and `etcd`. Panics with the script's output if it fails.
pub fn binaries() -> PathBuf {
    static SETUP: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    SETUP
        .get_or_init(|| {
            sweep_stale_dirs();
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/k8s-apiserver.sh");
            let dir = std::env::var_os("CORRAL_K8S")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_K8S_DIR));
            let output = Command::new("bash")
                .arg(&script)
                .env("CORRAL_K8S", &dir)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
            if output.status.success() {
                Ok(dir.join("bin"))
            } else {
                Err(format!(
                    "{} failed ({}); it builds kube-apiserver and etcd into {} and needs Go, \
                     kubectl and openssl. Its output:\n{}{}",
                    script.display(),
                    output.status,
                    dir.display(),
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ))
            }
        })
        .clone()
        .unwrap_or_else(|e| panic!("apiserver: {e}"))
}

/// Spawns `cmd` from a thread that lives as long as the process, with `PR_SET_PDEATHSIG`
/// set to SIGKILL: the kernel kills the child when that thread, i.e. the process, dies.
/// (The death signal follows the thread that forked, so test threads, which end with their
/// test, must not fork these.)
fn spawn_tied_to_process(cmd: Command) -> io::Result<Child> {
    spawn_tied_to_process_with(cmd, libc::SIGKILL)
}

/// [`spawn_tied_to_process`] with another death signal, e.g. SIGTERM for a child that
/// cleans up after itself when the test process dies (tests/common/kube_node.rs).
pub fn spawn_tied_to_process_with(mut cmd: Command, signal: libc::c_int) -> io::Result<Child> {
    type Job = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("apiserver-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("apiserver: cannot start the spawner thread");
        Mutex::new(tx)
    });
    let parent = std::process::id();
    // SAFETY: only async-signal-safe calls (prctl, getppid, kill) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() as u32 != parent {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner
        .lock()
        .map_err(|_| io::Error::other("spawner poisoned"))?
        .send((cmd, tx))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("spawner thread is gone"))?
}

/// A CA; a serving certificate for 127.0.0.1 and localhost; an admin client certificate
/// (CN admin, O system:masters); a service-account key pair. ECDSA P-256: fast to make.
fn make_certs(dir: &Path) -> Result<(), String> {
    let run = |args: &[&str]| -> Result<(), String> {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("apiserver: cannot run openssl: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "apiserver: openssl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    };
    let write = |name: &str, text: &str| {
        fs::write(dir.join(name), text).map_err(|e| format!("apiserver: cannot write {name}: {e}"))
    };
    for key in ["ca.key", "server.key", "admin.key", "sa.key"] {
        run(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            key,
        ])?;
    }
    run(&["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
    run(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-subj",
        "/CN=corral-test-ca",
        "-days",
        "7",
        "-out",
        "ca.crt",
    ])?;
    write(
        "server.ext",
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,\
         DNS:kubernetes.default.svc,IP:10.0.0.1\nextendedKeyUsage=serverAuth\n",
    )?;
    write("admin.ext", "extendedKeyUsage=clientAuth\n")?;
    for (name, subject) in [
        ("server", "/CN=kube-apiserver"),
        ("admin", "/O=system:masters/CN=admin"),
    ] {
        let (key, csr, ext, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.ext"),
            format!("{name}.crt"),
        );
        run(&["req", "-new", "-key", &key, "-subj", subject, "-out", &csr])?;
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "7",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ])?;
    }
    Ok(())
}

fn kubeconfig_text(url: &str, dir: &Path) -> String {
    let file = |name: &str| dir.join(name).display().to_string();
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: corral-test\n  \
           cluster:\n    \
             server: {url}\n    \
             certificate-authority: {ca}\n\
         users:\n\
         - name: admin\n  \
           user:\n    \
             client-certificate: {cert}\n    \
             client-key: {key}\n\
         contexts:\n\
         - name: corral-test\n  \
           context:\n    \
             cluster: corral-test\n    \
             user: admin\n\
         current-context: corral-test\n",
        ca = file("ca.crt"),
        cert = file("admin.crt"),
        key = file("admin.key"),
    )
}

/// Three distinct free loopback ports, never handed out before by this process.
fn free_ports() -> [u16; 3] {
    static USED: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut used = USED.lock().unwrap_or_else(|e| e.into_inner());
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < 3 {
        let listener =
            TcpListener::bind("127.0.0.1:0").expect("apiserver: cannot bind 127.0.0.1:0");
        let port = listener.local_addr().expect("apiserver: no address").port();
        if !used.contains(&port) {
            used.push(port);
            ports.push(port);
        }
        held.push(listener);
        assert!(held.len() < 100, "apiserver: cannot find free ports");
    }
    [ports[0], ports[1], ports[2]]
}

fn tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// `PID STARTTIME` of a live process (start time in clock ticks since boot, from
/// /proc/PID/stat), which tells it apart from a later process that reuses the PID.
fn owner_id(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22; the command name (field 2) is in parentheses and may contain spaces.
    let start = stat.rsplit_once(')')?.1.split_whitespace().nth(19)?;
    Some(format!("{pid} {start}"))
}

/// Removes the directories of servers whose test process died without cleaning up (SIGKILL,
/// Ctrl-C): the kernel killed their processes (`PR_SET_PDEATHSIG`), but each directory keeps
/// ~125 MB of etcd data. Only directories with an `owner` file naming a process that is gone.
fn sweep_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let Ok(owner) = fs::read_to_string(entry.path().join(OWNER_FILE)) else {
            continue;
        };
        if owner.trim().is_empty() {
            continue;
        }
        let alive = owner
            .split_whitespace()
            .next()
            .and_then(|pid| pid.parse().ok())
            .and_then(owner_id)
            .is_some_and(|id| id == owner.trim());
        if !alive {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}
