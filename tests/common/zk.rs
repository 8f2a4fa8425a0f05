//! A self-contained ZooKeeper harness for integration tests.
//!
//! [`ZkCluster`] starts real ZooKeeper servers (the Debian `zookeeper`
//! package, run with `java`) on free loopback ports, each in its own
//! directory under one temporary directory, and waits until they serve.
//! Individual servers can be killed, stopped, paused, resumed and restarted
//! by id (ids are `1..=n`, the `myid` of each server). Dropping the cluster
//! kills every server and removes the temporary directory, also when a test
//! panics.
//!
//! ```ignore
//! mod common;
//! use common::zk::ZkCluster;
//!
//! let mut zk = ZkCluster::ensemble(3);
//! let hosts = zk.connect_string(); // "127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3"
//! let leader = zk.leader().unwrap();
//! zk.kill(leader);
//! ```
//!
//! Requirements: `java` on `PATH` (or `JAVA_HOME`), and
//! `/usr/share/java/zookeeper.jar` (`apt-get install -y zookeeper`). The
//! class path can be overridden with `ZK_HARNESS_CLASSPATH`. Set
//! `ZK_HARNESS_KEEP_DIR=1` to keep the server directories (configs, data,
//! logs) after the cluster is dropped; their path is printed to stderr.
//!
//! [`ZkCluster::standalone_with`] starts a standalone server with extra
//! `zoo.cfg` lines, class path jars and JVM system properties, and optionally
//! a second, secure client port, e.g. for TLS (see [`ZkOptions`]).
//!
//! [`ZkCluster::ensemble_on`] starts an ensemble whose servers listen on addresses of their
//! own (each in a network namespace of `tests/common/netns.rs`), started under a command
//! prefix (`nsenter --net=...`), the harness itself talking to them from another namespace.
//!
//! Servers must not outlive the test process. `Drop` handles normal returns
//! and panics; for a test process that dies without unwinding (SIGKILL,
//! `abort`), every server gets a small `sh` watchdog that SIGKILLs it once the
//! test process is gone. Servers run in their own process group, so a Ctrl-C
//! in the terminal reaches the test process (and then the watchdog) rather
//! than the JVMs directly.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// `tickTime` written to every `zoo.cfg`, in milliseconds.
pub const TICK_TIME_MS: u64 = 500;
/// `initLimit` in ticks (10 s): generous, JVMs start slowly on small machines.
pub const INIT_LIMIT: u32 = 20;
/// `syncLimit` in ticks (2.5 s): how long a silent peer is tolerated.
pub const SYNC_LIMIT: u32 = 5;
/// How long starting (or restarting) servers may take before we panic.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop` waits after SIGTERM before falling back to SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Default timeout of one four-letter-word exchange.
pub const FOUR_LETTER_TIMEOUT: Duration = Duration::from_secs(2);

const POLL_INTERVAL: Duration = Duration::from_millis(50);
const KILL_WAIT: Duration = Duration::from_secs(10);
const LOG_TAIL_LINES: usize = 40;
const ZK_JAR: &str = "/usr/share/java/zookeeper.jar";
/// Optional jars appended to the class path when present: an SLF4J binding so
/// the server log is not silent. Everything else comes from the `Class-Path`
/// of Debian's zookeeper.jar manifest.
const OPTIONAL_JARS: &[&str] = &["/usr/share/java/slf4j-simple.jar"];
const CLASSPATH_ENV: &str = "ZK_HARNESS_CLASSPATH";
const KEEP_DIR_ENV: &str = "ZK_HARNESS_KEEP_DIR";
const MAIN_CLASS: &str = "org.apache.zookeeper.server.quorum.QuorumPeerMain";

/// Ports handed out by this process, never handed out twice, so parallel
/// tests in one test binary cannot pick the same port.
static USED_PORTS: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Sends a four-letter word (`ruok`, `srvr`, `mntr`, `stat`, ...) to `addr`
/// ("127.0.0.1:2181") and returns the whole reply. The exchange as a whole is
/// bounded by `timeout`; a server that accepts but never replies (e.g. one
/// stopped with SIGSTOP) yields an `ErrorKind::TimedOut` error.
pub fn four_letter_word(addr: &str, cmd: &str, timeout: Duration) -> io::Result<String> {
    let sock: SocketAddr = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&sock, timeout)?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(cmd.as_bytes())?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{cmd} to {addr}: no complete reply within {timeout:?}"),
            ));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{cmd} to {addr}: no complete reply within {timeout:?}"),
                ));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// Extracts the value of the `Mode:` line of a `srvr`/`stat` reply
/// ("leader", "follower", "standalone", ...).
pub fn parse_mode(srvr_reply: &str) -> Option<String> {
    srvr_reply
        .lines()
        .find_map(|l| l.strip_prefix("Mode:"))
        .map(|m| m.trim().to_string())
}

/// Extra settings for a standalone server started with
/// [`ZkCluster::standalone_with`]. The default adds nothing, so
/// `standalone_with(&ZkOptions::default())` is [`ZkCluster::standalone`].
///
/// The plain `clientPort` is always kept: the harness checks that the server
/// serves with four-letter words over it.
#[derive(Clone, Debug, Default)]
pub struct ZkOptions {
    /// Lines appended verbatim to `zoo.cfg`, e.g. `"ssl.clientAuth=need"`.
    /// ZooKeeper 3.8 turns every key it does not know into the system
    /// property `zookeeper.<key>`, so `serverCnxnFactory=...` and `ssl.*=...`
    /// work here as well as with `-Dzookeeper.<key>=...`.
    pub config_lines: Vec<String>,
    /// Jars appended to the class path, e.g. the Netty jars that Debian's
    /// `zookeeper.jar` manifest leaves out but TLS needs.
    pub classpath: Vec<PathBuf>,
    /// JVM system properties, passed as `-D<key>=<value>`.
    pub system_properties: Vec<(String, String)>,
    /// Also listen on a second free loopback port, written as
    /// `secureClientPort` (with `secureClientPortAddress=127.0.0.1`); see
    /// [`ZkCluster::secure_client_addr`]. The TLS settings themselves
    /// (`serverCnxnFactory`, `ssl.*`) go in [`ZkOptions::config_lines`].
    pub secure_client_port: bool,
}

/// Where the servers of [`ZkCluster::ensemble_on`] run: each on an address of its own
/// (client port [`NETWORK_CLIENT_PORT`], quorum ports 2888 and 3888 on it), its JVM started
/// under a command prefix, e.g. `["nsenter", "--net=/run/netns/NAME", "--"]`.
#[derive(Clone, Debug, Default)]
pub struct ZkNetwork {
    /// Server `i + 1`'s address and command prefix.
    pub servers: Vec<(String, Vec<String>)>,
    /// The network namespace (`/run/netns/NAME`) from which the harness sends its
    /// four-letter words; `None` for this process's own.
    pub observer: Option<PathBuf>,
}

/// The client port of every server of [`ZkCluster::ensemble_on`]: each has an address of
/// its own.
pub const NETWORK_CLIENT_PORT: u16 = 2181;

/// One server of a [`ZkCluster`].
struct Server {
    id: usize,
    /// The address it listens on.
    host: String,
    /// The command its JVM starts under; empty for none.
    prefix: Vec<String>,
    dir: PathBuf,
    client_port: u16,
    secure_client_port: Option<u16>,
    child: Option<Child>,
    watchdog: Option<Child>,
    paused: bool,
}

impl Server {
    fn client_addr(&self) -> String {
        format!("{}:{}", self.host, self.client_port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Returns the exit status if the process was started and has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn log_tail(&self, lines: usize) -> String {
        match fs::read(self.log_path()) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(e) => format!("<cannot read {}: {e}>", self.log_path().display()),
        }
    }

    /// Kills the server (resuming it first if paused, optionally trying
    /// SIGTERM first) and reaps it and its watchdog. Never panics.
    fn shut_down(&mut self, graceful: bool) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id();
            let mut done = false;
            if graceful {
                send_signal(pid, "TERM");
                if self.paused {
                    send_signal(pid, "CONT");
                }
                done = wait_timeout(&mut child, STOP_TIMEOUT).is_some();
            } else if self.paused {
                send_signal(pid, "CONT");
            }
            if !done {
                let _ = child.kill();
                let _ = wait_timeout(&mut child, KILL_WAIT);
            }
        }
        self.paused = false;
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = wait_timeout(&mut watchdog, KILL_WAIT);
        }
    }
}

/// A standalone ZooKeeper server or an ensemble, owned by one test.
///
/// Dropping it kills all servers and deletes their directories.
pub struct ZkCluster {
    root: Option<TempDir>,
    servers: Vec<Server>,
    standalone: bool,
    /// Jars appended to the class path (from [`ZkOptions::classpath`]).
    extra_classpath: Vec<PathBuf>,
    /// `-D` arguments of every JVM (from [`ZkOptions::system_properties`]).
    jvm_properties: Vec<String>,
    /// The network namespace of the harness's four-letter words (see [`ZkNetwork`]).
    observer: Option<PathBuf>,
}

impl ZkCluster {
    /// Starts one standalone server (id 1) and waits until it serves.
    pub fn standalone() -> ZkCluster {
        Self::start(1, true, false, &ZkOptions::default(), None)
    }

    /// Starts one standalone server (id 1) with the extra settings of
    /// `options` and waits until it serves (on its plain client port).
    /// Restarts keep the settings.
    pub fn standalone_with(options: &ZkOptions) -> ZkCluster {
        Self::start(1, true, false, options, None)
    }

    /// Starts an ensemble of `n` servers (ids `1..=n`) and waits until every
    /// server serves, with exactly one leader and `n - 1` followers.
    /// `ensemble(1)` is the same as [`ZkCluster::standalone`].
    pub fn ensemble(n: usize) -> ZkCluster {
        assert!(n >= 1, "a ZooKeeper ensemble needs at least one server");
        Self::start(n, n == 1, false, &ZkOptions::default(), None)
    }

    /// Starts an ensemble of one server per entry of `network` (ids `1..`), each listening
    /// on its own address, and waits as [`ZkCluster::ensemble`] does.
    pub fn ensemble_on(network: &ZkNetwork) -> ZkCluster {
        let n = network.servers.len();
        assert!(n >= 1, "a ZooKeeper ensemble needs at least one server");
        Self::start(n, n == 1, false, &ZkOptions::default(), Some(network))
    }

    /// Like [`ZkCluster::ensemble`], but every server syncs its transaction log to disk
    /// before acknowledging (`forceSync=yes`, ZooKeeper's default), as in production. The
    /// tests leave it off for speed; measurements of write latency need it.
    pub fn durable_ensemble(n: usize) -> ZkCluster {
        assert!(n >= 1, "a ZooKeeper ensemble needs at least one server");
        Self::start(n, n == 1, true, &ZkOptions::default(), None)
    }

    fn start(
        n: usize,
        standalone: bool,
        force_sync: bool,
        options: &ZkOptions,
        network: Option<&ZkNetwork>,
    ) -> ZkCluster {
        let root = tempfile::Builder::new()
            .prefix("corral-zk-")
            .tempdir()
            .expect("zk harness: cannot create temporary directory");
        let secure = if options.secure_client_port { n } else { 0 };
        let ports = match network {
            // An address each: the same ports on every one.
            Some(_) => [NETWORK_CLIENT_PORT]
                .repeat(n)
                .into_iter()
                .chain([2888, 3888].repeat(n))
                .collect(),
            None => free_ports(3 * n + secure),
        };
        let hosts: Vec<String> = (0..n)
            .map(|i| network.map_or("127.0.0.1".to_string(), |net| net.servers[i].0.clone()))
            .collect();
        let (client, rest) = ports.split_at(n);
        let (secure_ports, peers) = rest.split_at(secure);
        let server_lines: String = (0..n)
            .map(|i| {
                format!(
                    "server.{}={}:{}:{}\n",
                    i + 1,
                    hosts[i],
                    peers[2 * i],
                    peers[2 * i + 1]
                )
            })
            .collect();
        let mut servers = Vec::with_capacity(n);
        for (i, &client_port) in client.iter().enumerate() {
            let id = i + 1;
            let dir = root.path().join(format!("server-{id}"));
            let data = dir.join("data");
            fs::create_dir_all(&data).expect("zk harness: cannot create data dir");
            fs::write(data.join("myid"), format!("{id}\n")).expect("zk harness: cannot write myid");
            let mut cfg = format!(
                "tickTime={TICK_TIME_MS}\n\
                 initLimit={INIT_LIMIT}\n\
                 syncLimit={SYNC_LIMIT}\n\
                 dataDir={data}\n\
                 clientPort={client_port}\n\
                 clientPortAddress={host}\n\
                 admin.enableServer=false\n\
                 4lw.commands.whitelist=*\n\
                 maxClientCnxns=0\n\
                 maxSessionTimeout=60000\n\
                 forceSync={force_sync}\n\
                 snapshot.trust.empty=true\n",
                data = data.display(),
                host = hosts[i],
                force_sync = if force_sync { "yes" } else { "no" },
            );
            if !standalone {
                cfg.push_str("cnxTimeout=2000\n");
                cfg.push_str(&server_lines);
            }
            let secure_client_port = secure_ports.get(i).copied();
            if let Some(port) = secure_client_port {
                cfg.push_str(&format!(
                    "secureClientPort={port}\nsecureClientPortAddress=127.0.0.1\n"
                ));
            }
            for line in &options.config_lines {
                cfg.push_str(line);
                cfg.push('\n');
            }
            fs::write(dir.join("zoo.cfg"), cfg).expect("zk harness: cannot write zoo.cfg");
            servers.push(Server {
                id,
                host: hosts[i].clone(),
                prefix: network.map_or_else(Vec::new, |net| net.servers[i].1.clone()),
                dir,
                client_port,
                secure_client_port,
                child: None,
                watchdog: None,
                paused: false,
            });
        }
        // From here on, a panic drops `cluster`, which kills what was started.
        let mut cluster = ZkCluster {
            root: Some(root),
            servers,
            standalone,
            extra_classpath: options.classpath.clone(),
            jvm_properties: options
                .system_properties
                .iter()
                .map(|(key, value)| format!("-D{key}={value}"))
                .collect(),
            observer: network.and_then(|net| net.observer.clone()),
        };
        let classpath = cluster.classpath();
        for id in 1..=n {
            cluster.spawn(id, &classpath);
        }
        cluster.wait_until_ready(STARTUP_TIMEOUT);
        cluster
    }

    /// Server ids, `1..=len()`.
    pub fn ids(&self) -> std::ops::RangeInclusive<usize> {
        1..=self.servers.len()
    }

    /// Whether this is a standalone server rather than an ensemble.
    pub fn is_standalone(&self) -> bool {
        self.standalone
    }

    /// Client connect string of all servers: "127.0.0.1:p1,127.0.0.1:p2,...".
    pub fn connect_string(&self) -> String {
        self.servers
            .iter()
            .map(Server::client_addr)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Client address of one server: "127.0.0.1:port".
    pub fn client_addr(&self, id: usize) -> String {
        self.server(id).client_addr()
    }

    /// Client port of one server.
    pub fn client_port(&self, id: usize) -> u16 {
        self.server(id).client_port
    }

    /// Secure client address of one server: "127.0.0.1:port". Panics unless
    /// the cluster was started with [`ZkOptions::secure_client_port`].
    pub fn secure_client_addr(&self, id: usize) -> String {
        match self.server(id).secure_client_port {
            Some(port) => format!("127.0.0.1:{port}"),
            None => panic!(
                "zk harness: server {id} has no secure client port \
                 (start it with ZkOptions::secure_client_port)"
            ),
        }
    }

    /// PID of the server's JVM, or `None` if it is not started (killed/stopped).
    pub fn pid(&self, id: usize) -> Option<u32> {
        self.server(id).pid()
    }

    /// PIDs of all started JVMs.
    pub fn pids(&self) -> Vec<u32> {
        self.servers.iter().filter_map(Server::pid).collect()
    }

    /// The server's directory (holds `zoo.cfg`, `data/` and `server.log`).
    pub fn dir(&self, id: usize) -> &Path {
        &self.server(id).dir
    }

    /// The last `lines` lines of the server's log (stdout and stderr).
    pub fn log_tail(&self, id: usize, lines: usize) -> String {
        self.server(id).log_tail(lines)
    }

    /// Whether the server's process was started and has not exited (a paused
    /// server counts as running).
    pub fn is_running(&mut self, id: usize) -> bool {
        let s = self.server_mut(id);
        s.child.is_some() && s.exited().is_none()
    }

    /// Whether the server is paused with [`ZkCluster::pause`].
    pub fn is_paused(&self, id: usize) -> bool {
        self.server(id).paused
    }

    /// Kills the server with SIGKILL and waits for it to exit. No-op if it is
    /// not running.
    pub fn kill(&mut self, id: usize) {
        self.server_mut(id).shut_down(false);
    }

    /// Stops the server with SIGTERM and waits for it to exit (SIGKILL after
    /// [`STOP_TIMEOUT`]). No-op if it is not running.
    pub fn stop(&mut self, id: usize) {
        self.server_mut(id).shut_down(true);
    }

    /// Freezes the server with SIGSTOP and waits until the kernel reports it
    /// stopped. Its ports still accept connections, but nothing answers.
    pub fn pause(&mut self, id: usize) {
        let s = self.server_mut(id);
        let pid = s
            .pid()
            .unwrap_or_else(|| panic!("zk harness: pause({id}): server {id} is not running"));
        assert!(
            send_signal(pid, "STOP"),
            "zk harness: pause({id}): kill -STOP {pid} failed"
        );
        s.paused = true;
        let stopped = poll_until(Duration::from_secs(5), || {
            process_state(pid).is_some_and(|st| st == 'T' || st == 't')
        });
        assert!(stopped, "zk harness: pause({id}): pid {pid} did not stop");
    }

    /// Resumes a paused server with SIGCONT. Does not wait for it to serve
    /// again; use [`ZkCluster::wait_until_settled`] for that.
    pub fn resume(&mut self, id: usize) {
        let s = self.server_mut(id);
        let pid = s
            .pid()
            .unwrap_or_else(|| panic!("zk harness: resume({id}): server {id} is not running"));
        assert!(
            send_signal(pid, "CONT"),
            "zk harness: resume({id}): kill -CONT {pid} failed"
        );
        s.paused = false;
    }

    /// Starts the server again with the same config, ports and data dir, and
    /// waits until it serves (standalone, or leader/follower in an ensemble).
    /// A server that is still running is killed first. Panics with the log
    /// tail if it does not serve within [`STARTUP_TIMEOUT`].
    pub fn restart(&mut self, id: usize) {
        self.kill(id);
        let classpath = self.classpath();
        self.spawn(id, &classpath);
        if !self.wait_until_serving(id, STARTUP_TIMEOUT) {
            panic!(
                "zk harness: server {id} did not serve within {STARTUP_TIMEOUT:?} after restart \
                 (mode: {:?})\n--- tail of {} ---\n{}",
                self.mode(id),
                self.server(id).log_path().display(),
                self.log_tail(id, LOG_TAIL_LINES)
            );
        }
    }

    /// Starts the server again as [`ZkCluster::restart`] does, without waiting for it to
    /// serve (it may not, cut off from a quorum); [`ZkCluster::wait_until_settled`] waits.
    pub fn restart_nowait(&mut self, id: usize) {
        self.kill(id);
        let classpath = self.classpath();
        self.spawn(id, &classpath);
    }

    /// Starts every server again with the same configs, ports and data dirs (killing any
    /// still running) and waits until the whole cluster serves, as after a power cut: a
    /// single server of a stopped ensemble cannot serve without a quorum.
    pub fn restart_all(&mut self) {
        let classpath = self.classpath();
        for id in self.ids() {
            self.kill(id);
        }
        for id in self.ids() {
            self.spawn(id, &classpath);
        }
        self.wait_until_ready(STARTUP_TIMEOUT);
    }

    /// Sends a four-letter word to one server (see [`four_letter_word`]).
    pub fn four_letter(&self, id: usize, cmd: &str) -> io::Result<String> {
        let addr = self.client_addr(id);
        match &self.observer {
            Some(ns) => {
                super::netns::in_netns(ns, || four_letter_word(&addr, cmd, FOUR_LETTER_TIMEOUT))
            }
            None => four_letter_word(&addr, cmd, FOUR_LETTER_TIMEOUT),
        }
    }

    /// The server's `Mode:` from `srvr` ("leader", "follower", "standalone"),
    /// or `None` if it is not running, does not answer within
    /// [`FOUR_LETTER_TIMEOUT`], or is not serving requests yet.
    pub fn mode(&self, id: usize) -> Option<String> {
        self.server(id).child.as_ref()?;
        parse_mode(&self.four_letter(id, "srvr").ok()?)
    }

    /// The id of the single serving leader (the standalone server counts as
    /// leader), asking every running, unpaused server. `None` if there is no
    /// leader or more than one server claims to lead.
    pub fn leader(&self) -> Option<usize> {
        let leaders: Vec<usize> = self
            .servers
            .iter()
            .filter(|s| s.child.is_some() && !s.paused)
            .filter(|s| {
                matches!(
                    self.mode(s.id).as_deref(),
                    Some("leader") | Some("standalone")
                )
            })
            .map(|s| s.id)
            .collect();
        match leaders[..] {
            [one] => Some(one),
            _ => None,
        }
    }

    /// Polls [`ZkCluster::leader`] until there is exactly one leader or
    /// `timeout` passes.
    pub fn wait_for_leader(&self, timeout: Duration) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(id) = self.leader() {
                return Some(id);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Polls until the server serves (mode standalone, leader or follower),
    /// returning `false` if `timeout` passes or its process exits. Right after
    /// a long pause a server may still report its stale mode; prefer
    /// [`ZkCluster::wait_until_settled`] there.
    pub fn wait_until_serving(&mut self, id: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running(id) {
                return false;
            }
            if self.mode(id).as_deref().is_some_and(is_serving_mode) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Polls until the cluster has settled: exactly one leader, every running
    /// unpaused server serving, and in an ensemble the leader counting all of
    /// the other running unpaused servers as synced followers
    /// (`zk_synced_followers` of `mntr`). Returns `false` after `timeout`.
    ///
    /// Use this after [`ZkCluster::resume`]: a server paused for longer than
    /// `syncLimit` ticks has been dropped by the leader, but may briefly keep
    /// claiming to be a follower before it notices and rejoins.
    pub fn wait_until_settled(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_settled() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    fn is_settled(&self) -> bool {
        let live: Vec<usize> = self
            .servers
            .iter()
            .filter(|s| s.child.is_some() && !s.paused)
            .map(|s| s.id)
            .collect();
        let mut leader = None;
        for &id in &live {
            match self.mode(id).as_deref() {
                Some("leader") | Some("standalone") if leader.is_none() => leader = Some(id),
                Some("follower") | Some("observer") => {}
                _ => return false,
            }
        }
        let Some(leader) = leader else {
            return false;
        };
        if self.standalone {
            return true;
        }
        let Ok(mntr) = self.four_letter(leader, "mntr") else {
            return false;
        };
        let synced = mntr.lines().find_map(|l| {
            l.strip_prefix("zk_synced_followers")
                .and_then(|v| v.trim().parse::<f64>().ok())
        });
        synced == Some((live.len() - 1) as f64)
    }

    fn server(&self, id: usize) -> &Server {
        let n = self.servers.len();
        id.checked_sub(1)
            .and_then(|i| self.servers.get(i))
            .unwrap_or_else(|| panic!("zk harness: no server with id {id} (ids are 1..={n})"))
    }

    fn server_mut(&mut self, id: usize) -> &mut Server {
        let n = self.servers.len();
        id.checked_sub(1)
            .and_then(|i| self.servers.get_mut(i))
            .unwrap_or_else(|| panic!("zk harness: no server with id {id} (ids are 1..={n})"))
    }

    /// The class path of every server: the base one plus
    /// [`ZkOptions::classpath`].
    fn classpath(&self) -> String {
        let mut cp = classpath();
        for jar in &self.extra_classpath {
            cp.push(':');
            cp.push_str(&jar.to_string_lossy());
        }
        cp
    }

    /// Starts the JVM of one server plus its orphan watchdog.
    fn spawn(&mut self, id: usize, classpath: &str) {
        let jvm_properties = self.jvm_properties.clone();
        let s = self.server_mut(id);
        assert!(s.child.is_none(), "zk harness: server {id} already started");
        let log_path = s.log_path();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("zk harness: cannot open {}: {e}", log_path.display()));
        let _ = writeln!(log, "=== zk harness: starting server {id} ===");
        let log_err = log
            .try_clone()
            .expect("zk harness: cannot clone log handle");
        let mut command = match s.prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(java());
                command
            }
            None => Command::new(java()),
        };
        let child = command
            .args([
                "-Xms32m",
                "-Xmx256m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-Djava.net.preferIPv4Stack=true",
            ])
            .args(&jvm_properties)
            .args(["-cp", classpath, MAIN_CLASS])
            .arg(s.dir.join("zoo.cfg"))
            .current_dir(&s.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("zk harness: cannot run java: {e}"));
        let pid = child.id();
        s.child = Some(child);
        s.paused = false;
        // Kills the JVM once the test process is gone; exits by itself once the
        // JVM is gone. Own process group: a terminal Ctrl-C must not kill it.
        let watchdog = Command::new("sh")
            .args([
                "-c",
                "trap '' INT HUP; \
                 while kill -0 \"$1\" 2>/dev/null && kill -0 \"$2\" 2>/dev/null; do sleep 0.5; done; \
                 kill -0 \"$1\" 2>/dev/null || kill -9 \"$2\" 2>/dev/null",
                "zk-harness-watchdog",
                &std::process::id().to_string(),
                &pid.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        match watchdog {
            Ok(w) => s.watchdog = Some(w),
            Err(e) => panic!("zk harness: cannot start watchdog for server {id}: {e}"),
        }
    }

    /// Waits until every server serves and exactly one leads; panics with the
    /// state of every server and the tails of their logs otherwise.
    fn wait_until_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            for s in &mut self.servers {
                if let Some(status) = s.exited() {
                    let (id, tail) = (s.id, s.log_tail(LOG_TAIL_LINES));
                    panic!(
                        "zk harness: server {id} exited during startup ({status})\n\
                         --- tail of {} ---\n{tail}",
                        s.log_path().display()
                    );
                }
            }
            let modes: Vec<Option<String>> = self.ids().map(|id| self.mode(id)).collect();
            let serving = modes
                .iter()
                .all(|m| m.as_deref().is_some_and(is_serving_mode));
            let leaders = modes
                .iter()
                .filter(|m| matches!(m.as_deref(), Some("leader") | Some("standalone")))
                .count();
            if serving && leaders == 1 {
                return;
            }
            if Instant::now() >= deadline {
                let mut msg = format!(
                    "zk harness: {} did not come up within {timeout:?}",
                    if self.standalone {
                        "standalone ZooKeeper".to_string()
                    } else {
                        format!("{}-server ZooKeeper ensemble", self.servers.len())
                    }
                );
                for (s, m) in self.servers.iter().zip(&modes) {
                    msg.push_str(&format!(
                        "\n--- server {} ({}, mode {m:?}), tail of {} ---\n{}",
                        s.id,
                        s.client_addr(),
                        s.log_path().display(),
                        s.log_tail(LOG_TAIL_LINES)
                    ));
                }
                panic!("{msg}");
            }
            thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for ZkCluster {
    fn drop(&mut self) {
        for s in &mut self.servers {
            s.shut_down(false);
        }
        let Some(root) = self.root.take() else {
            return;
        };
        // `writeln!` rather than `eprintln!`: it cannot panic (but bypasses
        // libtest's output capture, hence only one short line).
        if std::env::var_os(KEEP_DIR_ENV).is_some() {
            let path = root.keep();
            let _ = writeln!(
                io::stderr(),
                "zk harness: kept server dirs (configs, data, server.log) in {}",
                path.display()
            );
        } else {
            if thread::panicking() {
                let _ = writeln!(
                    io::stderr(),
                    "zk harness: removing server dirs in {} after a panic; \
                     set {KEEP_DIR_ENV}=1 to keep their logs",
                    root.path().display()
                );
            }
            let _ = root.close();
        }
    }
}

fn is_serving_mode(mode: &str) -> bool {
    matches!(mode, "standalone" | "leader" | "follower" | "observer")
}

fn classpath() -> String {
    if let Ok(cp) = std::env::var(CLASSPATH_ENV) {
        return cp;
    }
    assert!(
        Path::new(ZK_JAR).exists(),
        "zk harness: {ZK_JAR} not found; install ZooKeeper with \
         `apt-get install -y zookeeper` or set {CLASSPATH_ENV}"
    );
    let mut cp = ZK_JAR.to_string();
    for jar in OPTIONAL_JARS {
        if Path::new(jar).exists() {
            cp.push(':');
            cp.push_str(jar);
        }
    }
    cp
}

fn java() -> PathBuf {
    std::env::var_os("JAVA_HOME")
        .map(|home| PathBuf::from(home).join("bin/java"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("java"))
}

/// Returns `n` distinct free loopback ports, never returned before by this
/// process. All are held open while choosing, so they are distinct.
fn free_ports(n: usize) -> Vec<u16> {
    let mut used = USED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let mut held = Vec::new();
    let mut ports = Vec::with_capacity(n);
    while ports.len() < n {
        assert!(
            held.len() < 10 * n + 100,
            "zk harness: cannot find free ports"
        );
        let listener =
            TcpListener::bind("127.0.0.1:0").expect("zk harness: cannot bind 127.0.0.1:0");
        let port = listener
            .local_addr()
            .expect("zk harness: no local address")
            .port();
        if used.insert(port) {
            ports.push(port);
        }
        held.push(listener);
    }
    ports
}

/// Sends a signal by name ("STOP", "CONT", "TERM", ...) with the shell's
/// `kill`. Returns whether it was delivered.
fn send_signal(pid: u32, signal: &str) -> bool {
    Command::new("sh")
        .args(["-c", "kill -s \"$0\" \"$1\"", signal, &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The state letter from /proc/PID/stat ('R', 'S', 'T', 'Z', ...).
fn process_state(pid: u32) -> Option<char> {
    let mut stat = String::new();
    File::open(format!("/proc/{pid}/stat"))
        .ok()?
        .read_to_string(&mut stat)
        .ok()?;
    // The command name is in parentheses and may contain spaces.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}

fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}
