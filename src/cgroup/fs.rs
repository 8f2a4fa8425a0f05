//! The cgroup filesystem below corral's root, for v1 (a directory per controller
//! hierarchy) and v2 (one directory). Every path is `<mount>/<root>/<group>/<file>` with a
//! validated root and [`GroupPath`], so nothing outside the root is ever written; `<file>`
//! is a [`Knob`] or a [`Stat`] of [`super::knobs`], found in its controller's hierarchy
//! and never on the version that lacks it. Every write is read back and compared as the
//! table says; a mismatch is an error, never ignored.
//!
//! Written on std::fs rather than cgroups-rs 0.5, whose builder returns Ok after failed
//! writes, whose v2 root is fixed at /sys/fs/cgroup, and which does not know
//! `blkio.bfq.weight` (this kernel has no `blkio.weight`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::knobs::{CgroupFile, Knob, Stat};
use super::layout::{Controller, Layout, Mode};
use super::tree::GroupPath;
use super::values;
use crate::sync::Lock;

/// A failed cgroup operation, with the file it was about.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The filesystem refused.
    #[error("{op} {path}: {reason}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why it failed (shown in the message, so not a separate cause).
        reason: io::Error,
    },
    /// A write succeeded but reading the file back gave something else.
    #[error("{path}: wrote {written:?} but read back {read:?}")]
    Mismatch {
        /// The knob file.
        path: PathBuf,
        /// What was written.
        written: String,
        /// What the kernel holds.
        read: String,
    },
    /// The kernel does not offer this knob here (no such file, or its controller is not
    /// mounted or enabled).
    #[error("{knob} is not offered by this kernel for {group}")]
    Unavailable {
        /// The knob.
        knob: String,
        /// The group.
        group: String,
    },
    /// The root's name could form a path outside the cgroup mounts.
    #[error(transparent)]
    BadRoot(#[from] super::root::RootError),
    /// corral's root in the devices hierarchy cannot get corral's device policy.
    #[error("{path}: {reason}")]
    Devices {
        /// The group or file.
        path: PathBuf,
        /// Why, and what to do.
        reason: String,
    },
}

impl CgroupError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        CgroupError::Io {
            op,
            path: path.to_path_buf(),
            reason: source,
        }
    }

    /// True when the error means "not allowed here" (no root, read-only filesystem).
    pub fn is_permission(&self) -> bool {
        matches!(self, CgroupError::Io { reason, .. }
            if matches!(reason.kind(), io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem)
                || reason.raw_os_error() == Some(libc::EROFS))
    }
}

/// corral's subtree in the cgroup filesystem.
#[derive(Clone, Debug)]
pub struct Cgroupfs {
    layout: Layout,
    place: super::root::Root,
    page_size: i64,
    /// Open files of the knobs and counters read on every resync. Reading an open file
    /// again from offset 0 spares the path lookup that dominates a resync's cost.
    open: std::sync::Arc<std::sync::Mutex<HashMap<PathBuf, File>>>,
}

/// The most files kept open, well below this process's limit.
fn open_file_budget() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    usize::try_from(soft / 2).unwrap_or(512).min(8192)
}

/// One hierarchy corral keeps its groups in.
struct Hierarchy {
    /// Where it is mounted.
    mount: PathBuf,
    /// What `/proc/PID/cgroup` calls it: a controller of it (`cpu`, `freezer`), a name
    /// (`name=systemd`), or `""` for cgroup2.
    name: String,
}

/// The knob that lists a group's processes.
pub const PROCS: &str = "cgroup.procs";

impl Cgroupfs {
    /// corral's subtree `root` (e.g. `corral`, or `corral/node-a` for a second agent on
    /// the same machine) in `layout`, with every ancestor corral's to write (as on a host
    /// without systemd); see [`Cgroupfs::at`] for a resolved root.
    ///
    /// # Errors
    /// [`CgroupError::BadRoot`] when `root` is not a path of cgroup names.
    pub fn new(layout: Layout, root: &str) -> Result<Cgroupfs, CgroupError> {
        Ok(Cgroupfs::at(layout, super::root::Root::named(root)?))
    }

    /// corral's subtree at a resolved root (see [`super::root::resolve`]).
    pub fn at(layout: Layout, place: super::root::Root) -> Cgroupfs {
        Cgroupfs {
            layout,
            place,
            page_size: values::page_size(),
            open: std::sync::Arc::default(),
        }
    }

    /// Where the root is and what corral may write around it.
    pub fn root(&self) -> &super::root::Root {
        &self.place
    }

    /// The root, relative to each hierarchy's mount point.
    fn root_path(&self) -> &Path {
        Path::new(&self.place.path)
    }

    /// Where the hierarchies are.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// How cgroups are mounted.
    pub fn mode(&self) -> Mode {
        self.layout.mode
    }

    /// True when knobs are v2 files.
    pub fn is_v2(&self) -> bool {
        self.layout.is_v2()
    }

    /// The system's page size.
    pub fn page_size(&self) -> i64 {
        self.page_size
    }

    /// The root's directories: one per hierarchy corral keeps its groups in (see
    /// [`Cgroupfs::hierarchies`]).
    pub fn root_dirs(&self) -> Vec<PathBuf> {
        self.mounts()
            .into_iter()
            .map(|mount| mount.join(self.root_path()))
            .collect()
    }

    /// Every hierarchy corral keeps its groups in, by mount point: on v2 the one; on v1
    /// each hierarchy mounted, those corral limits nothing in included (`devices`,
    /// `freezer`, `name=systemd`, ...: see [`super::others`]), and on a hybrid host the
    /// cgroup2 mount too (where it is in reach). A replica is in corral's group in each, so
    /// no container runtime that kills by any of them takes it along with the agent.
    fn hierarchies(&self) -> Vec<Hierarchy> {
        if self.is_v2() {
            return self
                .layout
                .unified
                .iter()
                .map(|mount| Hierarchy {
                    mount: mount.clone(),
                    name: String::new(),
                })
                .collect();
        }
        let mut by_mount: BTreeMap<&PathBuf, &str> = BTreeMap::new();
        for (controller, mount) in &self.layout.v1 {
            by_mount.entry(mount).or_insert(controller.v1_name());
        }
        for (name, mount) in &self.layout.others {
            by_mount.entry(mount).or_insert(name);
        }
        if self.layout.mode == Mode::Hybrid
            && !self.layout.unified_outside_namespace()
            && let Some(mount) = &self.layout.unified
        {
            by_mount.entry(mount).or_insert("");
        }
        by_mount
            .into_iter()
            .map(|(mount, name)| Hierarchy {
                mount: mount.clone(),
                name: name.to_string(),
            })
            .collect()
    }

    fn mounts(&self) -> Vec<PathBuf> {
        self.hierarchies().into_iter().map(|h| h.mount).collect()
    }

    /// A group's directories, one per hierarchy.
    pub fn dirs(&self, group: Option<&GroupPath>) -> Vec<PathBuf> {
        self.root_dirs()
            .into_iter()
            .map(|dir| match group {
                Some(g) => dir.join(g.to_string()),
                None => dir,
            })
            .collect()
    }

    /// The path of `file` (a [`Knob`] or a [`Stat`]) for `group` (the root when `None`);
    /// `None` when this cgroup version has no such file, or its controller is not mounted.
    pub fn knob_path(
        &self,
        group: Option<&GroupPath>,
        file: impl Into<CgroupFile>,
    ) -> Option<PathBuf> {
        let file = file.into();
        if !file.version().on(self.is_v2()) {
            return None;
        }
        let relative = match group {
            Some(g) => self.root_path().join(g.to_string()),
            None => self.root_path().to_path_buf(),
        };
        let mount = if self.is_v2() {
            self.layout.unified.as_ref()
        } else {
            self.layout.v1.get(&file.controller()?)
        };
        mount.map(|m| m.join(relative).join(file.name()))
    }

    /// The `cgroup.procs` files a process must be in to be in `group`.
    pub fn procs_files(&self, group: &GroupPath) -> Vec<PathBuf> {
        self.dirs(Some(group))
            .into_iter()
            .map(|d| d.join(PROCS))
            .collect()
    }

    /// Creates the group in every hierarchy; an existing one is left as it is. The root is
    /// marked as a corral root (see [`ROOT_MARK`]).
    ///
    /// # Errors
    /// A directory could not be created.
    pub fn create(&self, group: Option<&GroupPath>) -> Result<(), CgroupError> {
        let cpuset = self.layout.others.get("cpuset");
        let devices = self.layout.others.get("devices");
        for mount in self.mounts() {
            let dir = match group {
                Some(g) => mount.join(self.root_path()).join(g.to_string()),
                None => mount.join(self.root_path()),
            };
            // The root's missing ancestors too, where they are corral's to make (no
            // systemd); a delegated group above it exists already.
            let made = if group.is_none() && self.place.owned_from.is_empty() {
                std::fs::create_dir_all(&dir)
            } else {
                std::fs::create_dir(&dir)
            };
            match made {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(CgroupError::io("create", &dir, e)),
            }
            if group.is_none() {
                mark_root(&dir);
            }
            if cpuset == Some(&mount) {
                super::others::inherit_cpuset(&mount, &dir)?;
            }
            if group.is_none() && devices == Some(&mount) {
                super::others::restrict_devices(&dir)?;
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files of the groups process `pid` is in now, one per hierarchy in
    /// the order of [`Cgroupfs::procs_files`]: where to move it back to.
    ///
    /// # Errors
    /// `/proc/PID/cgroup` cannot be read, or lacks one of the hierarchies.
    pub fn procs_files_of(&self, pid: u32) -> io::Result<Vec<PathBuf>> {
        let paths = process_cgroups(pid)?;
        self.hierarchies()
            .into_iter()
            .map(|Hierarchy { mount, name }| {
                let path = paths.get(&name).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("/proc/{pid}/cgroup does not list {}", mount.display()),
                    )
                })?;
                // v2 paths are relative to this process's cgroup namespace; the mount may
                // show a part of it only.
                let path = if name.is_empty() {
                    below(path, &self.layout.unified_root).ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::NotFound,
                            format!(
                                "process {pid}'s group {path} is not under {} (which shows {})",
                                mount.display(),
                                self.layout.unified_root
                            ),
                        )
                    })?
                } else {
                    path.trim_start_matches('/')
                };
                Ok(mount.join(path).join(PROCS))
            })
            .collect()
    }

    /// The `cgroup.procs` file at the root of each hierarchy, in the order of
    /// [`Cgroupfs::procs_files`]: where a process goes when its own group is gone.
    pub fn hierarchy_procs_files(&self) -> Vec<PathBuf> {
        self.mounts().into_iter().map(|m| m.join(PROCS)).collect()
    }

    /// True when process `pid` is in a group below a corral root (this corral's or another
    /// agent's on the same machine), in any hierarchy: such a process is never adopted.
    pub fn in_a_corral_root(&self, pid: u32) -> bool {
        let Ok(files) = self.procs_files_of(pid) else {
            return false;
        };
        let mounts = self.mounts();
        files.iter().zip(&mounts).any(|(file, mount)| {
            let mut dir = file.parent();
            while let Some(d) = dir {
                if d == mount.as_path() || !d.starts_with(mount) {
                    break;
                }
                if is_marked_root(d) {
                    return true;
                }
                dir = d.parent();
            }
            false
        }) || files
            .iter()
            .any(|f| self.root_dirs().iter().any(|root| f.starts_with(root)))
    }

    /// Removes the group from every hierarchy; a missing one is fine. The group must be
    /// empty of processes and children.
    ///
    /// # Errors
    /// A directory could not be removed (busy: processes or children left).
    pub fn remove(&self, group: &GroupPath) -> Result<(), CgroupError> {
        {
            let mut open = self.open.locked();
            let prefixes = self.dirs(Some(group));
            open.retain(|path, _| !prefixes.iter().any(|p| path.starts_with(p)));
        }
        for dir in self.dirs(Some(group)) {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(CgroupError::io("remove", &dir, e)),
            }
        }
        Ok(())
    }

    /// Reads a knob or a stat; `Ok(None)` when the kernel does not offer it.
    ///
    /// # Errors
    /// The file exists but cannot be read.
    pub fn read(
        &self,
        group: Option<&GroupPath>,
        file: impl Into<CgroupFile>,
    ) -> Result<Option<String>, CgroupError> {
        let Some(path) = self.knob_path(group, file) else {
            return Ok(None);
        };
        match self.read_cached(&path) {
            Ok(text) => Ok(Some(text.trim_end().to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CgroupError::io("read", &path, e)),
        }
    }

    /// Writes a knob as the table says ([`Knob::text`]) and reads it back; returns what the
    /// kernel holds.
    ///
    /// # Errors
    /// [`CgroupError::Unavailable`] when the file does not exist, [`CgroupError::Io`] when
    /// the write is refused, [`CgroupError::Mismatch`] when the value read back is not the
    /// one written ([`Knob::same`]).
    pub fn write(
        &self,
        group: Option<&GroupPath>,
        knob: Knob,
        value: &str,
    ) -> Result<String, CgroupError> {
        let unavailable = || CgroupError::Unavailable {
            knob: knob.to_string(),
            group: group.map_or_else(|| "the root".to_string(), ToString::to_string),
        };
        let path = self.knob_path(group, knob).ok_or_else(unavailable)?;
        if !path.exists() {
            return Err(unavailable());
        }
        let text = knob.text(value);
        std::fs::write(&path, &text).map_err(|e| CgroupError::io("write", &path, e))?;
        let read = std::fs::read_to_string(&path)
            .map_err(|e| CgroupError::io("read back", &path, e))?
            .trim_end()
            .to_string();
        if !knob.same(value, &read) {
            return Err(CgroupError::Mismatch {
                path,
                written: value.to_string(),
                read,
            });
        }
        Ok(read)
    }

    /// The processes in a group, as listed by one hierarchy (v1: the cpu hierarchy, else the
    /// first mounted). corral puts a process in every hierarchy at once, so one list is the
    /// group's; reading one file instead of five keeps a resync cheap.
    ///
    /// # Errors
    /// The `cgroup.procs` file exists but cannot be read.
    pub fn procs(&self, group: &GroupPath) -> Result<Vec<u32>, CgroupError> {
        let Some(file) = self.primary_procs_file(group) else {
            return Ok(Vec::new());
        };
        match super::procs::read(&file) {
            Ok(pids) => Ok(pids),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(CgroupError::io("read", &file, e)),
        }
    }

    fn primary_procs_file(&self, group: &GroupPath) -> Option<PathBuf> {
        let relative = self.root_path().join(group.to_string()).join(PROCS);
        if self.is_v2() {
            return self.layout.unified.as_ref().map(|m| m.join(relative));
        }
        [Controller::Cpu, Controller::Pids, Controller::Memory]
            .iter()
            .find_map(|c| self.layout.v1.get(c))
            .or_else(|| self.layout.v1.values().next())
            .map(|m| m.join(relative))
    }

    /// Every corral group below the root, tenants before their replicas. Directories whose
    /// names are not corral groups are not corral's and are left alone. Listed in the
    /// hierarchies of corral's controllers only: it makes and removes a group in the others
    /// with them, and listing those too made each resync a third slower.
    ///
    /// # Errors
    /// The root exists but cannot be listed.
    pub fn groups(&self) -> Result<Vec<GroupPath>, CgroupError> {
        let mut found = BTreeSet::new();
        let limited: BTreeSet<&PathBuf> = if self.is_v2() {
            self.layout.unified.iter().collect()
        } else {
            self.layout.v1.values().collect()
        };
        for root in limited.into_iter().map(|m| m.join(self.root_path())) {
            for tenant in subdirs(&root)? {
                let Ok(tenant_group) = GroupPath::parse(&tenant) else {
                    continue;
                };
                for leaf in subdirs(&root.join(&tenant))? {
                    if let Ok(replica) = GroupPath::parse(&format!("{tenant}/{leaf}")) {
                        found.insert(replica);
                    }
                }
                found.insert(tenant_group);
            }
        }
        Ok(found.into_iter().collect())
    }

    /// The hierarchy an adopt rule's `cgroupPath` is looked up in: v1's cpu hierarchy (else
    /// memory), or the v2 one.
    pub fn adopt_mount(&self) -> Option<PathBuf> {
        if self.is_v2() {
            return self.layout.unified.clone();
        }
        [Controller::Cpu, Controller::Memory]
            .iter()
            .find_map(|c| self.layout.v1.get(c).cloned())
    }

    /// v2: the controllers the root may hand to its children (its `cgroup.controllers`),
    /// among those corral uses. Empty on v1.
    pub fn v2_controllers(&self) -> Vec<&'static str> {
        if !self.is_v2() {
            return Vec::new();
        }
        let offered = self
            .read(None, Stat::Controllers)
            .ok()
            .flatten()
            .unwrap_or_default();
        let offered: BTreeSet<&str> = offered.split_whitespace().collect();
        Controller::ALL
            .iter()
            .filter_map(|c| c.v2_name())
            .filter(|name| offered.contains(name))
            .collect()
    }
}

impl Cgroupfs {
    /// Reads a file, through an open file kept for the next read. A file whose group went
    /// away fails; it is then opened afresh once, which reports the real state.
    fn read_cached(&self, path: &Path) -> io::Result<String> {
        let mut open = self.open.locked();
        if let Some(file) = open.get(path) {
            match read_at_start(file) {
                Ok(text) => return Ok(text),
                Err(_) => {
                    open.remove(path);
                }
            }
        }
        let file = File::open(path)?;
        let text = read_at_start(&file)?;
        if open.len() >= open_file_budget() {
            open.clear();
        }
        open.insert(path.to_path_buf(), file);
        Ok(text)
    }
}

/// Reads a cgroup file from its start. Such files are small and report a size of 0: read
/// until a short read (the kernel hands them over in one piece), without asking the size.
fn read_at_start(file: &File) -> io::Result<String> {
    use std::os::unix::fs::FileExt;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = file.read_at(&mut chunk, bytes.len() as u64)?;
        bytes.extend_from_slice(&chunk[..n]);
        if n < chunk.len() {
            break;
        }
    }
    String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The extended attribute that marks a directory as a corral root. A `trusted.` attribute
/// needs `CAP_SYS_ADMIN` to set or read, so no tenant can forge or remove it. Where the
/// filesystem refuses attributes, only this corral's own root is recognised.
pub const ROOT_MARK: &str = "trusted.corral.root";

fn mark_root(dir: &Path) {
    let (Ok(path), Ok(name)) = (
        std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()),
        std::ffi::CString::new(ROOT_MARK),
    ) else {
        return;
    };
    // SAFETY: valid NUL-terminated strings and a one-byte value that outlive the call.
    let rc = unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), b"1".as_ptr().cast(), 1, 0) };
    if rc == -1 {
        tracing::debug!(dir = %dir.display(), error = %io::Error::last_os_error(), "cannot mark the corral root");
    }
}

fn is_marked_root(dir: &Path) -> bool {
    has_xattr(dir, ROOT_MARK)
}

/// True when `dir` carries the extended attribute `name` (false when it cannot be read).
pub(super) fn has_xattr(dir: &Path, name: &str) -> bool {
    let (Ok(path), Ok(name)) = (
        std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()),
        std::ffi::CString::new(name),
    ) else {
        return false;
    };
    // SAFETY: valid NUL-terminated strings; a zero-size query writes nothing.
    let size = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    size >= 0
}

/// The group of `pid` in each hierarchy, from `/proc/PID/cgroup`: by v1 controller name, and
/// under `""` the v2 one.
fn process_cgroups(pid: u32) -> io::Result<HashMap<String, String>> {
    let text = String::from_utf8(super::procs::read_bounded(
        Path::new(&format!("/proc/{pid}/cgroup")),
        64 << 10,
    )?)
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            out.insert(String::new(), path.to_string());
        }
        for controller in controllers.split(',').filter(|c| !c.is_empty()) {
            out.insert(controller.to_string(), path.to_string());
        }
    }
    Ok(out)
}

/// `path` relative to `top` (both `/`-rooted group paths), when it is at or below it.
fn below<'a>(path: &'a str, top: &str) -> Option<&'a str> {
    let top = top.trim_end_matches('/');
    let rest = path.strip_prefix(top)?;
    if !rest.is_empty() && !rest.starts_with('/') {
        return None;
    }
    Some(rest.trim_start_matches('/'))
}

/// Names of the subdirectories of `dir`; none when it does not exist.
fn subdirs(dir: &Path) -> Result<Vec<String>, CgroupError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CgroupError::io("list", dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| CgroupError::io("list", dir, e))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::ReplicaKey;

    fn replica(ns: &str, name: &str, i: u32) -> GroupPath {
        GroupPath::replica(&ReplicaKey::new(ns, name, i)).unwrap()
    }

    #[test]
    fn group_paths_below_a_mounts_view() {
        assert_eq!(below("/a/b", "/"), Some("a/b"));
        assert_eq!(below("/k/p/c", "/k/p"), Some("c"));
        assert_eq!(below("/k/p", "/k/p"), Some(""));
        assert_eq!(below("/k/px", "/k/p"), None);
        assert_eq!(below("/x", "/k"), None);
    }

    #[test]
    fn roots_must_be_cgroup_names() {
        let layout = Layout::v1_at(Path::new("/sys/fs/cgroup"));
        assert!(Cgroupfs::new(layout.clone(), "system.slice/corral.service").is_ok());
        for bad in ["", "..", "a/../b", "/abs", "a//b", "a b", "a/"] {
            assert!(
                matches!(
                    Cgroupfs::new(layout.clone(), bad),
                    Err(CgroupError::BadRoot(_))
                ),
                "{bad:?}"
            );
        }
        assert!(Cgroupfs::new(layout, "corral/node-a").is_ok());
    }

    #[test]
    fn v1_paths_follow_the_knob_controller() {
        let fs = Cgroupfs::new(Layout::v1_at(Path::new("/cg")), "corral").unwrap();
        let g = replica("t", "w", 0);
        assert_eq!(
            fs.knob_path(Some(&g), Knob::CpuShares).unwrap(),
            PathBuf::from("/cg/cpu/corral/t/w.0/cpu.shares")
        );
        assert_eq!(
            fs.knob_path(Some(&g), Knob::MemoryLimit).unwrap(),
            PathBuf::from("/cg/memory/corral/t/w.0/memory.limit_in_bytes")
        );
        assert_eq!(
            fs.knob_path(Some(&g), Knob::BlkioBfqWeight).unwrap(),
            PathBuf::from("/cg/blkio/corral/t/w.0/blkio.bfq.weight")
        );
        assert_eq!(
            fs.knob_path(Some(&g), Stat::CpuacctUsage).unwrap(),
            PathBuf::from("/cg/cpuacct/corral/t/w.0/cpuacct.usage")
        );
        // Never a file of the other version, nor a core file v1 has not.
        assert_eq!(fs.knob_path(Some(&g), Knob::CpuWeight), None);
        assert_eq!(fs.knob_path(None, Knob::SubtreeControl), None);
        assert_eq!(fs.knob_path(None, Stat::Controllers), None);
        let v2 = Cgroupfs::new(Layout::v2_at(Path::new("/cg2")), "corral").unwrap();
        assert_eq!(v2.knob_path(Some(&g), Knob::CpuShares), None);
        assert_eq!(
            v2.knob_path(Some(&g), Knob::PidsMax).unwrap(),
            PathBuf::from("/cg2/corral/t/w.0/pids.max")
        );
        assert_eq!(fs.procs_files(&g).len(), 5);
        for dir in fs.dirs(Some(&g)) {
            assert!(dir.starts_with("/cg") && dir.to_string_lossy().contains("/corral/t/w.0"));
        }
    }

    #[test]
    fn on_a_directory_writes_are_read_back_and_groups_listed() {
        let tmp = tempfile::tempdir().unwrap();
        let fs = Cgroupfs::new(Layout::v2_at(tmp.path()), "corral").unwrap();
        let g = replica("t", "w", 1);
        fs.create(None).unwrap();
        fs.create(g.parent().as_ref()).unwrap();
        fs.create(Some(&g)).unwrap();
        std::fs::write(fs.knob_path(Some(&g), Knob::CpuWeight).unwrap(), "100\n").unwrap();
        assert_eq!(fs.write(Some(&g), Knob::CpuWeight, "59").unwrap(), "59");
        assert_eq!(
            fs.read(Some(&g), Knob::CpuWeight).unwrap().as_deref(),
            Some("59")
        );
        assert!(matches!(
            fs.write(Some(&g), Knob::CpuMax, "max 100000"),
            Err(CgroupError::Unavailable { .. })
        ));
        assert_eq!(fs.read(Some(&g), Knob::CpuMax).unwrap(), None);
        std::fs::create_dir(tmp.path().join("corral/not-ours.x")).unwrap();
        std::fs::create_dir(tmp.path().join("corral/t/stray")).unwrap();
        let groups: Vec<String> = fs
            .groups()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(groups, ["t", "t/w.1"]);
        std::fs::remove_dir(tmp.path().join("corral/t/stray")).unwrap();
        // A real cgroup directory goes with its files; a plain one must be emptied first.
        std::fs::remove_file(fs.knob_path(Some(&g), Knob::CpuWeight).unwrap()).unwrap();
        fs.remove(&g).unwrap();
        fs.remove(&g).unwrap();
    }
}
