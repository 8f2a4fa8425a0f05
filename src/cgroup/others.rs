//! The v1 hierarchies corral limits nothing in but keeps its groups in all the same
//! ([`super::layout::Layout::others`]): `devices`, `freezer`, `cpuset`, `name=systemd`, ...
//!
//! Why: a container runtime kills a container by the processes its groups hold. When the
//! agent runs in a pod and a replica stayed in the agent container's `devices` or
//! `freezer` group, replacing the agent pod (a rolling update, `kubectl delete pod`) killed
//! every replica of the node. So a replica goes into corral's groups in every hierarchy,
//! and two of them need something written before a process may join:
//! - **devices**: a new group inherits its parent's policy, and at the top of the hierarchy
//!   that is "every device". A replica left in a pod's group had the runtime's default
//!   list; moving it to the top would hand a tenant every disk and `/dev/mem`. corral's
//!   root therefore allows only [`ALLOWED`] (runc's default list, without mknod and
//!   tun), and every group below inherits it. Changing a group's default needs
//!   `CAP_SYS_ADMIN` and a group without children, so it is written when the root is made
//!   (the chart's agent holds `CAP_SYS_ADMIN` until then, see `cli::join_host_cgroup_namespace`).
//! - **cpuset**: a new group has no CPUs and no memory nodes, and the kernel refuses to
//!   move a process into it (ENOSPC); each group corral makes copies its parent's.

use std::collections::BTreeSet;
use std::io;
use std::path::Path;

use super::fs::CgroupError;

/// The devices a replica may open or create nodes of: `/dev/null`, `zero`, `full`,
/// `random`, `urandom`, `tty`, `ptmx` and the pseudo-terminals of `/dev/pts`. As
/// `devices.list` shows them.
pub const ALLOWED: [&str; 8] = [
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
];

/// What `devices.list` shows for a group that allows every device.
const EVERYTHING: &str = "a *:* rwm";

/// Gives `dir`, corral's root in the devices hierarchy, the policy [`ALLOWED`]; nothing is
/// written when it has it already.
///
/// # Errors
/// [`CgroupError::Devices`] when the group allows every device and already has groups
/// below it (the kernel changes a default only without children), or when the kernel
/// refuses a write (no `CAP_SYS_ADMIN`); [`CgroupError::Mismatch`] when the list read back
/// is not [`ALLOWED`].
pub fn restrict_devices(dir: &Path) -> Result<(), CgroupError> {
    let wanted: BTreeSet<&str> = ALLOWED.into_iter().collect();
    let mut list = device_list(dir)?;
    if list.iter().map(String::as_str).eq(wanted.iter().copied()) {
        return Ok(());
    }
    if list.contains(EVERYTHING) {
        if has_children(dir) {
            return Err(CgroupError::Devices {
                path: dir.to_path_buf(),
                reason: "allows every device and already has groups below it, and the kernel changes a group's default only while it has none; stop what runs below it (`corral down`) and start corral again".to_string(),
            });
        }
        write(dir, "devices.deny", "a")?;
        list = device_list(dir)?;
    }
    for extra in list.iter().filter(|e| !wanted.contains(e.as_str())) {
        write(dir, "devices.deny", extra)?;
    }
    for missing in wanted.iter().filter(|w| !list.contains(**w)) {
        write(dir, "devices.allow", missing)?;
    }
    let read = device_list(dir)?;
    if !read.iter().map(String::as_str).eq(wanted.iter().copied()) {
        return Err(CgroupError::Mismatch {
            path: dir.join("devices.list"),
            written: ALLOWED.join(", "),
            read: read.into_iter().collect::<Vec<_>>().join(", "),
        });
    }
    Ok(())
}

/// The lines of a group's `devices.list`.
fn device_list(dir: &Path) -> Result<BTreeSet<String>, CgroupError> {
    let path = dir.join("devices.list");
    let text = std::fs::read_to_string(&path).map_err(|e| CgroupError::Io {
        op: "read",
        path: path.clone(),
        reason: e,
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

fn write(dir: &Path, file: &str, line: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    std::fs::write(&path, line).map_err(|e| {
        let needs = if e.kind() == io::ErrorKind::PermissionDenied {
            "; the devices policy needs CAP_SYS_ADMIN (the chart's agent holds it until corral's root is made, then drops it)"
        } else {
            ""
        };
        CgroupError::Devices {
            path: path.clone(),
            reason: format!("writing {line:?}: {e}{needs}"),
        }
    })
}

fn has_children(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_type().is_ok_and(|t| t.is_dir()))
    })
}

/// Gives `dir` and each of its ancestors below `mount` that has no CPUs or no memory nodes
/// yet its parent's, top down, so that a process may join it.
///
/// # Errors
/// A `cpuset.cpus` or `cpuset.mems` file cannot be read or written.
pub fn inherit_cpuset(mount: &Path, dir: &Path) -> Result<(), CgroupError> {
    let Ok(below) = dir.strip_prefix(mount) else {
        return Ok(());
    };
    let mut parent = mount.to_path_buf();
    for part in below.components() {
        let child = parent.join(part);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let read = |d: &Path| {
                let path = d.join(file);
                std::fs::read_to_string(&path)
                    .map(|t| t.trim().to_string())
                    .map_err(|e| CgroupError::Io {
                        op: "read",
                        path,
                        reason: e,
                    })
            };
            if read(&child)?.is_empty() {
                let value = read(&parent)?;
                let path = child.join(file);
                std::fs::write(&path, &value).map_err(|e| CgroupError::Io {
                    op: "write",
                    path,
                    reason: e,
                })?;
            }
        }
        parent = child;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowed_list_has_no_duplicate_and_no_dangerous_device() {
        // restrict_devices compares the kernel's list with ALLOWED as sets.
        let set: BTreeSet<&str> = ALLOWED.into_iter().collect();
        assert_eq!(set.len(), ALLOWED.len());
        assert!(!set.contains(EVERYTHING));
        // Nothing that opens a disk, memory or the kernel log.
        assert!(ALLOWED.iter().all(|l| l.starts_with("c ")));
        assert!(!ALLOWED.contains(&"c 1:1 rwm"));
    }

    #[test]
    fn a_cpuset_group_copies_its_parents_cpus_and_nodes() {
        // On a directory standing in for the hierarchy: the files are plain files here.
        let tmp = tempfile::tempdir().unwrap();
        let mount = tmp.path();
        std::fs::write(mount.join("cpuset.cpus"), "0-1\n").unwrap();
        std::fs::write(mount.join("cpuset.mems"), "0\n").unwrap();
        let dir = mount.join("corral/node-a");
        std::fs::create_dir_all(&dir).unwrap();
        for d in [mount.join("corral"), dir.clone()] {
            std::fs::write(d.join("cpuset.cpus"), "").unwrap();
            std::fs::write(d.join("cpuset.mems"), "\n").unwrap();
        }
        inherit_cpuset(mount, &dir).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("cpuset.cpus")).unwrap(),
            "0-1"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("cpuset.mems")).unwrap(),
            "0"
        );
        // A group that has its own is left alone.
        std::fs::write(dir.join("cpuset.cpus"), "1").unwrap();
        inherit_cpuset(mount, &dir).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("cpuset.cpus")).unwrap(),
            "1"
        );
    }
}
