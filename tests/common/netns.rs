//! A network of Linux network namespaces on this machine, for fault injection.
//!
//! [`Net::new`] makes a hub namespace holding a bridge, and one namespace per member
//! (`zk1`, `c1`, `n1`, ...) joined to the bridge by a veth pair: `eth0` in the member's
//! namespace with the address `10.213.0.<k>/24`, and `v-<member>` in the hub. The hub's
//! bridge has `10.213.0.254`, from where the test itself talks to the members
//! ([`Net::in_hub`]). None of these addresses exists in the machine's own namespace, and
//! each run has its own hub and bridge, so two runs never share a link or an address.
//!
//! Faults:
//! - [`Net::isolate`]: the member's link on the hub side goes down; the member reaches
//!   nobody and nobody reaches it, the test included; packets are dropped silently;
//! - [`Net::split`]: components that reach each other but no other component; for each
//!   pair across components, each side's `eth0` drops what it sends to the other (a tc u32
//!   filter redirecting to a link that is down: this kernel has no netem and no gact, and
//!   the machine no iptables). The hub's address stays reachable from every member;
//! - [`Net::heal`]: every link up and every filter gone.
//!
//! Processes are started in a member's namespace with [`Net::prefix`] (`nsenter --net=`,
//! which changes only the network namespace: `ip netns exec` would mount a /sys without
//! the cgroup filesystems).
//!
//! Dropping the `Net`, also after a panic, deletes every namespace it made (and with them
//! the bridge and the veth pairs). Namespaces whose test process died without dropping
//! (SIGKILL) are deleted by the next run ([`sweep_stale`]). [`MachineLock`] serializes the
//! fault tests of every process on the machine.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The first three octets of every member's address.
pub const SUBNET: &str = "10.213.0";
/// The hub's address on its bridge.
pub const HUB_ADDR: &str = "10.213.0.254";
/// Every namespace this module makes starts with this, then the test process's PID.
const PREFIX: &str = "corral-f";
/// The link packets are redirected to in order to drop them: an ifb that stays down.
const DROP_LINK: &str = "drop0";
/// The lock file of [`MachineLock`].
const LOCK_FILE: &str = "/var/tmp/corral-faults.lock";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Runs `f` on a thread of its own that has entered the network namespace `ns` (a path
/// such as `/run/netns/NAME`): sockets it makes belong to that namespace. The rest of the
/// process stays where it is.
pub fn in_netns<T: Send>(ns: &Path, f: impl FnOnce() -> T + Send) -> T {
    let file =
        File::open(ns).unwrap_or_else(|e| panic!("netns: cannot open {}: {e}", ns.display()));
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on a descriptor we own; it changes this thread's network
                // namespace only.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    rc,
                    0,
                    "netns: setns({}): {}",
                    ns.display(),
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Runs a command; panics with its output when it fails.
fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("netns: cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "netns: {program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

/// Runs a command, whatever comes of it (cleanup).
fn run_quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// True when `pid` names a live process.
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Deletes the namespaces (and so their links) of fault tests whose process is gone, and
/// lazily unmounts their state filesystems (see [`Tmpfs`]).
pub fn sweep_stale() {
    let list = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !alive(pid)) {
            run_quiet("ip", ["netns", "del", name].as_slice());
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(source), Some(target)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Some(pid) = source.strip_prefix(TMPFS_SOURCE) else {
            continue;
        };
        if pid.parse::<u32>().is_ok_and(|pid| !alive(pid)) {
            run_quiet("umount", &["-l", target]);
        }
    }
}

/// An exclusive lock on `/var/tmp/corral-faults.lock`, held while it lives: one fault test
/// at a time on the machine (their timings assume the cores are not shared with another),
/// whether in this test process or another.
pub struct MachineLock {
    _lock: nix::fcntl::Flock<File>,
}

impl MachineLock {
    /// Waits for the lock.
    pub fn acquire() -> MachineLock {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(LOCK_FILE)
            .unwrap_or_else(|e| panic!("netns: cannot open {LOCK_FILE}: {e}"));
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .unwrap_or_else(|(_, e)| panic!("netns: cannot lock {LOCK_FILE}: {e}"));
        MachineLock { _lock: lock }
    }
}

/// The namespaces of one test: a hub with a bridge, and the members.
pub struct Net {
    /// `corral-f<pid>-<n>`: the start of every namespace's name.
    name: String,
    /// Member → the last octet of its address.
    members: BTreeMap<String, u8>,
    /// Namespaces made so far, deleted on drop (the hub last).
    made: Vec<String>,
    isolated: BTreeSet<String>,
    /// Members whose `eth0` has drop filters.
    filtered: BTreeSet<String>,
}

impl Net {
    /// The hub and one namespace per member, addresses `10.213.0.1`, `.2`, ... in order.
    pub fn new(members: &[&str]) -> Net {
        assert!(members.len() < 250, "netns: too many members");
        let mut net = Net {
            name: format!(
                "{PREFIX}{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::SeqCst)
            ),
            members: BTreeMap::new(),
            made: Vec::new(),
            isolated: BTreeSet::new(),
            filtered: BTreeSet::new(),
        };
        let hub = net.ns("hub");
        run("ip", &["netns", "add", &hub]);
        net.made.push(hub.clone());
        run("ip", &["-n", &hub, "link", "set", "lo", "up"]);
        run("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        run(
            "ip",
            &[
                "-n",
                &hub,
                "addr",
                "add",
                &format!("{HUB_ADDR}/24"),
                "dev",
                "br0",
            ],
        );
        run("ip", &["-n", &hub, "link", "set", "br0", "up"]);
        for (i, member) in members.iter().enumerate() {
            let octet = u8::try_from(i + 1).unwrap();
            assert!(
                net.members.insert(member.to_string(), octet).is_none(),
                "netns: member {member} twice"
            );
            let ns = net.ns(member);
            run("ip", &["netns", "add", &ns]);
            net.made.push(ns.clone());
            let veth = Net::veth(member);
            run(
                "ip",
                &[
                    "-n", &hub, "link", "add", &veth, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ],
            );
            run(
                "ip",
                &["-n", &hub, "link", "set", &veth, "master", "br0", "up"],
            );
            run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
            run(
                "ip",
                &[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{SUBNET}.{octet}/24"),
                    "dev",
                    "eth0",
                ],
            );
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
            run("ip", &["-n", &ns, "link", "add", DROP_LINK, "type", "ifb"]);
        }
        net
    }

    /// The name of a member's namespace (`hub` for the hub).
    pub fn ns(&self, member: &str) -> String {
        format!("{}-{member}", self.name)
    }

    /// The path of a member's namespace, for `nsenter --net=` and [`in_netns`].
    pub fn ns_path(&self, member: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(self.ns(member))
    }

    /// The hub's side of a member's veth pair.
    fn veth(member: &str) -> String {
        let name = format!("v-{member}");
        assert!(
            name.len() <= 15,
            "netns: {name} is too long for a link name"
        );
        name
    }

    /// The member's address.
    pub fn addr(&self, member: &str) -> String {
        let octet = self
            .members
            .get(member)
            .unwrap_or_else(|| panic!("netns: no member {member}"));
        format!("{SUBNET}.{octet}")
    }

    /// The members, in the order given.
    pub fn members(&self) -> Vec<String> {
        let mut members: Vec<(&String, &u8)> = self.members.iter().collect();
        members.sort_by_key(|(_, octet)| **octet);
        members.into_iter().map(|(m, _)| m.clone()).collect()
    }

    /// The command prefix that runs a program in the member's namespace.
    pub fn prefix(&self, member: &str) -> Vec<String> {
        assert!(
            self.members.contains_key(member) || member == "hub",
            "netns: no member {member}"
        );
        vec![
            "nsenter".into(),
            format!("--net={}", self.ns_path(member).display()),
            "--".into(),
        ]
    }

    /// Runs `f` in the hub's namespace (see [`in_netns`]).
    pub fn in_hub<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.ns_path("hub"), f)
    }

    /// Cuts the member off: its link on the hub side goes down.
    pub fn isolate(&mut self, member: &str) {
        run(
            "ip",
            &[
                "-n",
                &self.ns("hub"),
                "link",
                "set",
                &Net::veth(member),
                "down",
            ],
        );
        self.isolated.insert(member.to_string());
    }

    /// Splits the members into `components`: every member of one drops what it sends to
    /// every member of another. Members in no component are not affected.
    pub fn split(&mut self, components: &[&[&str]]) {
        for (i, from) in components.iter().enumerate() {
            for (j, to) in components.iter().enumerate() {
                if i == j {
                    continue;
                }
                for a in from.iter() {
                    for b in to.iter() {
                        self.drop_to(a, b);
                    }
                }
            }
        }
    }

    /// `from` drops every packet it sends to `to`.
    fn drop_to(&mut self, from: &str, to: &str) {
        let ns = self.ns(from);
        if self.filtered.insert(from.to_string()) {
            run("tc", &["-n", &ns, "qdisc", "add", "dev", "eth0", "clsact"]);
        }
        let dst = format!("{}/32", self.addr(to));
        run(
            "tc",
            &[
                "-n", &ns, "filter", "add", "dev", "eth0", "egress", "protocol", "ip", "pref", "1",
                "u32", "match", "ip", "dst", &dst, "action", "mirred", "egress", "redirect", "dev",
                DROP_LINK,
            ],
        );
    }

    /// Every link up, every filter removed.
    pub fn heal(&mut self) {
        let hub = self.ns("hub");
        for member in std::mem::take(&mut self.isolated) {
            run(
                "ip",
                &["-n", &hub, "link", "set", &Net::veth(&member), "up"],
            );
        }
        for member in std::mem::take(&mut self.filtered) {
            run(
                "tc",
                &[
                    "-n",
                    &self.ns(&member),
                    "qdisc",
                    "del",
                    "dev",
                    "eth0",
                    "clsact",
                ],
            );
        }
    }

    /// True when some fault is in place.
    pub fn is_faulty(&self) -> bool {
        !self.isolated.is_empty() || !self.filtered.is_empty()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Members first: deleting the hub then finds no veth left to take down.
        for ns in self.made.iter().rev() {
            run_quiet("ip", &["netns", "del", ns]);
        }
    }
}

/// The source name of every [`Tmpfs`], then the test process's PID.
const TMPFS_SOURCE: &str = "corral-faults-";

/// A small tmpfs mounted on a directory (a state directory to fill), private to root
/// (mode 0700, as corral wants its state directory). Unmounted on drop.
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`2m`) holding at most `inodes` files and directories.
    pub fn mount(path: &Path, size: &str, inodes: u32) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let source = format!("{TMPFS_SOURCE}{}", std::process::id());
        let options = format!("size={size},nr_inodes={inodes},mode=0700");
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &options,
                &source,
                &path.to_string_lossy(),
            ],
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }

    /// The directory of the filler files.
    fn filler(&self) -> PathBuf {
        self.path.join("filler")
    }

    /// Fills the filesystem: files until no inode is left, then one file until no block is
    /// left. Returns the bytes written.
    pub fn fill(&self) -> u64 {
        use std::io::Write;
        let dir = self.filler();
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0.. {
            if File::create(dir.join(format!("i{i}"))).is_err() {
                break;
            }
        }
        // The directory's own entries are in; the data goes into the first file.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("i0"))
            .expect("the first filler file");
        let chunk = vec![0xa5u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n as u64,
            }
        }
        written
    }

    /// Removes the filler files.
    pub fn unfill(&self) {
        let _ = std::fs::remove_dir_all(self.filler());
    }

    /// Free bytes and free inodes, from statvfs.
    pub fn free(&self) -> (u64, u64) {
        let stat = nix::sys::statvfs::statvfs(&self.path).unwrap();
        (
            stat.blocks_available() * stat.fragment_size(),
            stat.files_available(),
        )
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        run_quiet("umount", &["-l", &self.path.to_string_lossy()]);
    }
}
