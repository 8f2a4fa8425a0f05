//! Real cgroups in tests: unique root names, the processes in a group, and removing a tree
//! of groups with whatever runs in it.
//!
//! Self-contained, so that `benches/v2.rs` can include this file alone.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// `PREFIX-PID-N`, a name no other test of this or another test process uses: for a cgroup
/// root, a group or a marker.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// The processes in a group's `cgroup.procs`; none when it is gone.
pub fn procs(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// True when `pid` is a replica's log pump (`corral log-pump`, which runs in the replica's
/// group too).
pub fn is_log_pump(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.windows(8).any(|w| w == b"log-pump"))
}

/// True when the process is gone, or a zombie whose parent has not reaped it yet.
pub fn gone(pid: impl Into<u64>) -> bool {
    let pid = pid.into();
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
    })
}

/// Kills every process below `dir` and removes the directories, deepest first. A group
/// that does not empty within 10 s is left in place.
pub fn remove_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = procs(dir);
        if pids.is_empty() || Instant::now() > deadline {
            break;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_dir(dir);
}

/// Every cgroup hierarchy this process sees (cgroup and cgroup2 mounts), by mount point:
/// where a test's root may have a directory, since corral keeps its groups in every
/// hierarchy (`devices`, `freezer` and `name=systemd` included).
pub fn hierarchies() -> Vec<std::path::PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<std::path::PathBuf> = text
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fs_type = after.split_whitespace().next()?;
            (fs_type == "cgroup" || fs_type == "cgroup2").then(|| {
                before
                    .split_whitespace()
                    .nth(4)
                    .map(std::path::PathBuf::from)
            })?
        })
        .collect();
    out.sort();
    out.dedup();
    out
}
