//! Which cgroup hierarchies this machine mounts, and where: v1 (one hierarchy per
//! controller), hybrid (v1 controllers beside a cgroup2 mount used for tracking only) or v2
//! (one unified hierarchy). Detected from `/proc/self/mountinfo`; tests build a layout on a
//! temporary directory instead.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The controllers corral uses. Which one each file belongs to is in [`super::knobs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Controller {
    /// CPU weight and bandwidth.
    Cpu,
    /// CPU accounting (v1 only; v2 reports usage in `cpu.stat`).
    Cpuacct,
    /// Memory.
    Memory,
    /// Process count.
    Pids,
    /// Block IO weight (`blkio` on v1, `io` on v2).
    Io,
}

impl Controller {
    /// Every controller corral uses.
    pub const ALL: [Controller; 5] = [
        Controller::Cpu,
        Controller::Cpuacct,
        Controller::Memory,
        Controller::Pids,
        Controller::Io,
    ];

    /// The controller's name in a v1 mount's options.
    pub fn v1_name(self) -> &'static str {
        match self {
            Controller::Cpu => "cpu",
            Controller::Cpuacct => "cpuacct",
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Io => "blkio",
        }
    }

    /// The controller's name in v2's `cgroup.controllers`; `None` for cpuacct.
    pub fn v2_name(self) -> Option<&'static str> {
        match self {
            Controller::Cpu => Some("cpu"),
            Controller::Cpuacct => None,
            Controller::Memory => Some("memory"),
            Controller::Pids => Some("pids"),
            Controller::Io => Some("io"),
        }
    }
}

/// How cgroups are mounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Only v1 hierarchies.
    V1,
    /// v1 controllers, and a cgroup2 mount without them.
    Hybrid,
    /// One unified v2 hierarchy.
    V2,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::V1 => "v1",
            Mode::Hybrid => "hybrid",
            Mode::V2 => "v2",
        })
    }
}

/// Where the hierarchies are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The mode.
    pub mode: Mode,
    /// Mount point of each v1 controller corral uses that is mounted.
    pub v1: BTreeMap<Controller, PathBuf>,
    /// Mount point of every other v1 hierarchy, by the name `/proc/PID/cgroup` gives it
    /// (`freezer`, `devices`, `cpuset`, `name=systemd`, ...), co-mounted with one of
    /// corral's controllers or not. corral sets nothing there but keeps its groups in them
    /// too: a container runtime finds and kills a container's processes through these
    /// (runc through `devices` and `freezer`, systemd through `name=systemd`), so a replica
    /// left in the agent's groups there would die with the agent's container.
    pub others: BTreeMap<String, PathBuf>,
    /// The cgroup2 mount point, if any.
    pub unified: Option<PathBuf>,
    /// The group the cgroup2 mount shows at its mount point, as this process's cgroup
    /// namespace sees it: `/` for a whole hierarchy, `/kubepods/…` for a container's view,
    /// and `/..`, `/../..` when the mount's top is outside this process's cgroup namespace
    /// (a pod with the host's `/sys/fs/cgroup` mounted, in a private namespace).
    pub unified_root: String,
}

/// No cgroup filesystem at all.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// `/proc/self/mountinfo` could not be read.
    #[error("reading /proc/self/mountinfo: {0}")]
    Mountinfo(#[from] std::io::Error),
    /// Nothing of type cgroup or cgroup2 is mounted.
    #[error(
        "no cgroup filesystem is mounted (/proc/self/mountinfo lists no cgroup or cgroup2 mount), so corral could neither limit nor track a process. Mount one (`mount -t cgroup2 none /sys/fs/cgroup`); in a network namespace, start corral with `nsenter --net=/run/netns/NAME`, because `ip netns exec` remounts /sys without the cgroup filesystems"
    )]
    NoCgroupFs,
}

impl Layout {
    /// Reads this process's mounts.
    ///
    /// # Errors
    /// `/proc/self/mountinfo` cannot be read, or no cgroup filesystem is mounted.
    pub fn detect() -> Result<Layout, LayoutError> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")?;
        let layout = Layout::from_mountinfo(&text);
        if layout.v1.is_empty() && layout.unified.is_none() {
            return Err(LayoutError::NoCgroupFs);
        }
        Ok(layout)
    }

    /// True when the cgroup2 mount's top is outside this process's cgroup namespace: the
    /// kernel then refuses (ENOENT) to move a process into its groups.
    pub fn unified_outside_namespace(&self) -> bool {
        self.unified.is_some() && self.unified_root.starts_with("/..")
    }

    /// The layout described by the text of a `mountinfo` file.
    pub fn from_mountinfo(text: &str) -> Layout {
        let mut v1 = BTreeMap::new();
        let mut others = BTreeMap::new();
        // Each cgroup2 mount point with the root of the mount seen there: a later mount on
        // the same point hides the earlier one (a pod's hostPath over the runtime's view).
        let mut unified_mounts: Vec<(PathBuf, String)> = Vec::new();
        for line in text.lines() {
            // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
            let Some((before, after)) = line.split_once(" - ") else {
                continue;
            };
            let mut fields = before.split_whitespace();
            let root = fields.nth(3).map(unescape);
            let mount_point = fields.next();
            let mut after = after.split_whitespace();
            let (fs_type, super_options) = (after.next(), after.nth(1));
            let Some(mount_point) = mount_point.map(unescape) else {
                continue;
            };
            match fs_type {
                Some("cgroup2") => {
                    let point = PathBuf::from(mount_point);
                    unified_mounts.retain(|(p, _)| *p != point);
                    unified_mounts.push((point, root.unwrap_or_else(|| "/".to_string())));
                }
                Some("cgroup") => {
                    let options: Vec<&str> = super_options.unwrap_or_default().split(',').collect();
                    for controller in Controller::ALL {
                        if options.contains(&controller.v1_name()) {
                            v1.entry(controller)
                                .or_insert_with(|| PathBuf::from(&mount_point));
                        }
                    }
                    for name in options.iter().filter(|o| is_other_hierarchy(o)) {
                        others
                            .entry((*name).to_string())
                            .or_insert_with(|| PathBuf::from(&mount_point));
                    }
                }
                _ => {}
            }
        }
        // Of the visible cgroup2 mounts, the one that shows the most: the whole hierarchy
        // (`/`) over a container's own view, and either over a mount whose top is out of
        // this namespace; the last mounted among equals.
        let mut unified: Option<(PathBuf, String)> = None;
        for (point, root) in unified_mounts {
            if unified
                .as_ref()
                .is_none_or(|(_, was)| rank(&root) <= rank(was))
            {
                unified = Some((point, root));
            }
        }
        let mode = match (v1.is_empty(), unified.is_some()) {
            (false, true) => Mode::Hybrid,
            (false, false) => Mode::V1,
            (true, _) => Mode::V2,
        };
        let (unified, unified_root) = match unified {
            Some((mount, root)) => (Some(mount), root),
            None => (None, "/".to_string()),
        };
        Layout {
            mode,
            v1,
            others,
            unified,
            unified_root,
        }
    }

    /// A v1 layout with every controller in `<root>/<name>`, for tests on a directory.
    pub fn v1_at(root: &Path) -> Layout {
        Layout {
            mode: Mode::V1,
            v1: Controller::ALL
                .into_iter()
                .map(|c| (c, root.join(c.v1_name())))
                .collect(),
            others: BTreeMap::new(),
            unified: None,
            unified_root: "/".to_string(),
        }
    }

    /// A v2 layout with the unified hierarchy at `root`.
    pub fn v2_at(root: &Path) -> Layout {
        Layout {
            mode: Mode::V2,
            v1: BTreeMap::new(),
            others: BTreeMap::new(),
            unified: Some(root.to_path_buf()),
            unified_root: "/".to_string(),
        }
    }

    /// True when resource controllers are driven through v2 files.
    pub fn is_v2(&self) -> bool {
        self.mode == Mode::V2
    }
}

/// The v1 controllers corral does not use, as mount options name them; a named hierarchy
/// (`name=systemd`) is one too.
const OTHER_CONTROLLERS: [&str; 9] = [
    "cpuset",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "perf_event",
    "hugetlb",
    "rdma",
    "misc",
];

/// True when a v1 mount option names a hierarchy corral keeps its groups in without
/// setting anything there (see [`Layout::others`]).
fn is_other_hierarchy(option: &str) -> bool {
    OTHER_CONTROLLERS.contains(&option)
        || option.strip_prefix("name=").is_some_and(|n| !n.is_empty())
}

/// How much of the hierarchy a cgroup2 mount with this root shows, from this namespace:
/// 0 for all of it, 1 for a part of it (a container's own view), 2 for a mount whose top
/// is outside this namespace.
fn rank(root: &str) -> u8 {
    if root == "/" {
        0
    } else if root.starts_with("/..") {
        2
    } else {
        1
    }
}

/// Mount points escape spaces and a few other bytes as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(code) = u8::from_str_radix(&field[i + 1..i + 4], 8)
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:22 / /sys rw,nosuid - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
33 31 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
35 31 0:30 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
36 31 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
37 31 0:32 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
38 31 0:33 / /sys/fs/cgroup/blkio rw - cgroup cgroup rw,blkio
";

    #[test]
    fn hybrid_layouts_use_the_v1_controllers() {
        let layout = Layout::from_mountinfo(HYBRID);
        assert_eq!(layout.mode, Mode::Hybrid);
        assert_eq!(
            layout.v1[&Controller::Cpu],
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(
            layout.v1[&Controller::Cpuacct],
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(
            layout.v1[&Controller::Io],
            PathBuf::from("/sys/fs/cgroup/blkio")
        );
        assert_eq!(
            layout.unified,
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert!(!layout.is_v2());
    }

    #[test]
    fn the_other_v1_hierarchies_are_found_by_their_proc_names() {
        let text = "\
32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
34 31 0:31 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset
36 31 0:33 / /sys/fs/cgroup/devices rw - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer
40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
42 31 0:39 / /sys/fs/cgroup/net_cls,net_prio rw - cgroup cgroup rw,net_cls,net_prio
43 31 0:40 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory,clone_children
";
        let layout = Layout::from_mountinfo(text);
        let names: Vec<&str> = layout.others.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "cpuset",
                "devices",
                "freezer",
                "name=systemd",
                "net_cls",
                "net_prio"
            ]
        );
        assert_eq!(
            layout.others["name=systemd"],
            PathBuf::from("/sys/fs/cgroup/systemd")
        );
        assert_eq!(
            layout.others["net_prio"],
            PathBuf::from("/sys/fs/cgroup/net_cls,net_prio")
        );
        // Options that are not hierarchies are not taken for one.
        assert!(!layout.others.contains_key("xattr"));
        assert!(!layout.others.contains_key("clone_children"));
        assert!(!is_other_hierarchy("name="));
    }

    #[test]
    fn unified_only_is_v2_and_escapes_are_decoded() {
        let text = "30 25 0:26 / /sys/fs/cgroup\\040x rw - cgroup2 cgroup2 rw\n";
        let layout = Layout::from_mountinfo(text);
        assert_eq!(layout.mode, Mode::V2);
        assert_eq!(layout.unified, Some(PathBuf::from("/sys/fs/cgroup x")));
    }

    #[test]
    fn the_mount_that_shows_the_whole_hierarchy_wins() {
        // A pod in a private cgroup namespace: the runtime's view of the pod's own group,
        // and the host's hierarchy, whose top is outside the namespace.
        let pod = "\
40 30 0:26 / /sys/fs/cgroup ro - cgroup2 cgroup2 rw
41 30 0:26 /../../.. /host/cgroup rw - cgroup2 cgroup2 rw,nsdelegate
";
        let layout = Layout::from_mountinfo(pod);
        assert_eq!(layout.unified, Some(PathBuf::from("/sys/fs/cgroup")));
        assert!(!layout.unified_outside_namespace());
        // The same pod once in the host's cgroup namespace.
        let joined = "\
40 30 0:26 /kubepods/pod1/c1 /sys/fs/cgroup ro - cgroup2 cgroup2 rw
41 30 0:26 / /host/cgroup rw - cgroup2 cgroup2 rw,nsdelegate
";
        let layout = Layout::from_mountinfo(joined);
        assert_eq!(layout.unified, Some(PathBuf::from("/host/cgroup")));
        assert_eq!(layout.unified_root, "/");
        // The chart's hostPath mounted over the runtime's view at the same point: only the
        // later one is visible there.
        let hidden = "\
40 30 0:26 / /sys/fs/cgroup ro - cgroup2 cgroup2 rw
41 40 0:26 /../../.. /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate
";
        let layout = Layout::from_mountinfo(hidden);
        assert!(layout.unified_outside_namespace());
        let only_outside = "41 30 0:26 /../.. /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let layout = Layout::from_mountinfo(only_outside);
        assert!(layout.unified_outside_namespace());
    }

    #[test]
    fn this_machine_has_a_layout() {
        let layout = Layout::detect().unwrap();
        // Whatever the machine, some hierarchy is mounted where tests run.
        assert!(!layout.v1.is_empty() || layout.unified.is_some());
    }
}
