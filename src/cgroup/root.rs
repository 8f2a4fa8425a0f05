//! Which subtree corral owns, and making it usable before any replica starts:
//! - the `--cgroup-root` name: a path of cgroup names (systemd unit names such as
//!   `system.slice/corral.service` included), or `self` for the delegated cgroup corral
//!   runs in;
//! - systemd's delegation rules: on a systemd host (v2) corral writes only inside a
//!   subtree delegated to it (`Delegate=yes`, which systemd marks with the
//!   `trusted.delegate` attribute);
//! - in `self` mode, corral moves itself into a leaf ([`LEAF`]) so that its root may hand
//!   controllers to the replicas' groups (v2's no-internal-processes rule);
//! - enabling the controllers corral's groups need in the ancestors it may write, and for
//!   each controller it cannot have, the reason: the file to write and what to write.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use super::fs::Cgroupfs;
use super::knobs::{Knob, Stat};
use super::layout::{Controller, Layout};

/// The `--cgroup-root` value that means "the delegated cgroup corral runs in".
pub const SELF: &str = "self";

/// In `self` mode, the leaf of corral's root that corral itself (and whatever else ran in
/// the root) moves into. Not a DNS label, so it can never be a tenant's group.
pub const LEAF: &str = "_corral";

/// Facts about the host that decide what corral may write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// systemd manages the host (`/run/systemd/system` exists, as `sd_booted()` checks).
    pub systemd: bool,
    /// This process's v2 group, from `/proc/self/cgroup` (`0::/system.slice/x.service`),
    /// relative to its cgroup namespace.
    pub own_cgroup: Option<String>,
}

impl Host {
    /// This host and this process.
    pub fn detect() -> Host {
        Host {
            systemd: Path::new("/run/systemd/system").is_dir(),
            own_cgroup: std::fs::read_to_string("/proc/self/cgroup")
                .ok()
                .and_then(|text| {
                    text.lines()
                        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
                }),
        }
    }
}

/// Where corral's root is, and what corral may write around it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Root {
    /// The root, relative to the hierarchy's mount point: `corral`,
    /// `system.slice/corral.service`.
    pub path: String,
    /// The root is corral's own delegated cgroup (`self`): corral runs in its [`LEAF`] and
    /// never removes the root.
    pub own: bool,
    /// The highest group, relative to the mount point, whose `cgroup.subtree_control`
    /// corral may write: `""` for the mount's top (no systemd), the delegated group on a
    /// systemd host.
    pub owned_from: String,
}

impl Root {
    /// A root at `path`, with every ancestor corral's to write (no systemd), as tests and
    /// v1 use it.
    ///
    /// # Errors
    /// The name is not a path of cgroup names.
    pub fn named(path: &str) -> Result<Root, RootError> {
        check_name(path)?;
        Ok(Root {
            path: path.to_string(),
            own: false,
            owned_from: String::new(),
        })
    }
}

/// Why a root cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// A name that could form a path outside the mounts, or that the kernel reserves.
    #[error(
        "cgroup root {0:?} must be one or more cgroup names separated by '/': letters, digits and - _ . @ : \\ (so systemd units such as system.slice/corral.service work), not . or .., and not starting with \"cgroup.\""
    )]
    BadName(String),
    /// `self` on a host without cgroup v2.
    #[error(
        "--cgroup-root self needs cgroup v2 (this host mounts {0}); name a root instead, e.g. --cgroup-root corral"
    )]
    SelfNeedsV2(String),
    /// `self` while corral runs in the hierarchy's top group.
    #[error(
        "--cgroup-root self: corral runs in the top group of the hierarchy, which is nobody's to delegate; run it in a systemd unit with Delegate=yes (contrib/systemd/) or `systemd-run --scope -p Delegate=yes corral …`, or name a root"
    )]
    SelfAtTop,
    /// corral's own group is not under the mount it would use.
    #[error(
        "--cgroup-root self: corral's group {own} is not visible under {mount} (which shows {shown}); mount the whole hierarchy"
    )]
    SelfNotVisible {
        /// corral's group.
        own: String,
        /// The cgroup2 mount.
        mount: PathBuf,
        /// What the mount shows.
        shown: String,
    },
    /// systemd manages the host and nobody delegated this root.
    #[error(
        "{dir} is not in a cgroup subtree delegated to corral, and systemd manages this host: writing there would break systemd's delegation rules (systemd may undo or fight corral's values). Run corral in a unit with Delegate=yes and --cgroup-root self (contrib/systemd/corral.service), or `systemd-run --scope -p Delegate=yes corral … --cgroup-root self`, or point --cgroup-root into a subtree delegated to it"
    )]
    NotDelegated {
        /// The root's directory.
        dir: PathBuf,
    },
}

/// Checks a `--cgroup-root` path: cgroup names separated by `/`, each of which the kernel
/// and systemd accept and none of which can climb out of the mount.
///
/// # Errors
/// [`RootError::BadName`].
pub fn check_name(path: &str) -> Result<(), RootError> {
    let good = |part: &str| {
        !part.is_empty()
            && part != "."
            && part != ".."
            && !part.starts_with("cgroup.")
            && part.len() <= 255
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@:\\".contains(&b))
    };
    if path.is_empty() || !path.split('/').all(good) {
        return Err(RootError::BadName(path.to_string()));
    }
    Ok(())
}

/// Resolves `--cgroup-root` on this host. `delegated(dir)` tells whether systemd
/// delegated a directory (see [`is_delegated`]).
///
/// # Errors
/// See [`RootError`].
pub fn resolve(
    spec: &str,
    layout: &Layout,
    host: &Host,
    delegated: impl Fn(&Path) -> bool,
) -> Result<Root, RootError> {
    let mount = layout.unified.clone().filter(|_| layout.is_v2());
    // Naming the group corral runs in is asking for `self`: corral must leave it for a
    // leaf before the group can hand controllers down.
    let named_own = mount.is_some()
        && host.own_cgroup.as_deref().is_some_and(|own| {
            let own = own.strip_suffix(&format!("/{LEAF}")).unwrap_or(own);
            let shown = layout.unified_root.trim_end_matches('/');
            own.strip_prefix(shown)
                .is_some_and(|rest| rest.trim_start_matches('/') == spec)
        });
    if spec == SELF || named_own {
        let Some(mount) = mount else {
            return Err(RootError::SelfNeedsV2(layout.mode.to_string()));
        };
        let own = host.own_cgroup.clone().unwrap_or_else(|| "/".to_string());
        // Started again from its leaf (a restart by systemd with KillMode=process starts
        // the new process in the root; `corral down` from the unit, in the leaf).
        let own = own
            .strip_suffix(&format!("/{LEAF}"))
            .unwrap_or(&own)
            .to_string();
        let shown = layout.unified_root.trim_end_matches('/');
        let relative = own
            .strip_prefix(shown)
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
            .ok_or_else(|| RootError::SelfNotVisible {
                own: own.clone(),
                mount: mount.clone(),
                shown: layout.unified_root.clone(),
            })?
            .trim_start_matches('/')
            .to_string();
        if relative.is_empty() {
            return Err(RootError::SelfAtTop);
        }
        check_name(&relative)?;
        if host.systemd && !delegated(&mount.join(&relative)) {
            return Err(RootError::NotDelegated {
                dir: mount.join(&relative),
            });
        }
        return Ok(Root {
            owned_from: relative.clone(),
            path: relative,
            own: true,
        });
    }
    check_name(spec)?;
    let mut root = Root::named(spec)?;
    if let Some(mount) = mount.filter(|_| host.systemd) {
        // The deepest delegated group at or above the root: corral's to write below.
        let parts: Vec<&str> = spec.split('/').collect();
        let owned = (1..=parts.len())
            .rev()
            .map(|n| parts[..n].join("/"))
            .find(|dir| delegated(&mount.join(dir)))
            .ok_or_else(|| RootError::NotDelegated {
                dir: mount.join(spec),
            })?;
        root.owned_from = owned;
    }
    Ok(root)
}

/// True when systemd delegated `dir` (it sets `trusted.delegate`, or `user.delegate` for a
/// user's manager, on the group of a unit with `Delegate=yes`).
pub fn is_delegated(dir: &Path) -> bool {
    ["trusted.delegate", "user.delegate"]
        .iter()
        .any(|name| super::fs::has_xattr(dir, name))
}

/// Joins the cgroup namespace of PID 1 (the host's init, when the host's PID namespace is
/// shared, as the chart's agent has it), runs `before_drop` (which may need
/// `CAP_SYS_ADMIN` and `CAP_DAC_OVERRIDE` too), then drops `CAP_SYS_ADMIN`,
/// `CAP_SYS_PTRACE` and `CAP_DAC_OVERRIDE` (also when corral already was in that namespace,
/// and when `before_drop` failed, whose error is then returned). On v1 and hybrid hosts it
/// joins nothing (see below) and returns false. A pod on cgroup v2 gets a private cgroup
/// namespace, and the kernel refuses to
/// move a process into a group outside it (ENOENT); in the host's namespace, corral's
/// groups are in reach. Returns false when corral already was in PID 1's namespace.
/// Namespaces and capabilities are per thread: call it before any other thread starts.
///
/// # Errors
/// Other threads run, or the kernel refused (no `CAP_SYS_ADMIN`).
pub fn join_host_namespace(
    before_drop: impl FnOnce() -> Result<(), String>,
) -> Result<bool, String> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let threads = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|n| n.trim().to_string()))
        });
    if threads.as_deref() != Some("1") {
        return Err(
            "joining the host's cgroup namespace must happen before other threads start".into(),
        );
    }
    // On v1 and hybrid hosts the runtime shares the host's cgroup namespace (runtimes make
    // private ones on v2 only), and the v1 hierarchies show no namespace boundary anyway:
    // nothing to join, and PID 1's namespace files need not be readable.
    if super::layout::Layout::detect().is_ok_and(|l| !l.is_v2()) {
        let prepared = before_drop();
        drop_start_capabilities()?;
        prepared?;
        return Ok(false);
    }
    let ns = |pid: &str| std::fs::metadata(format!("/proc/{pid}/ns/cgroup")).map(|m| m.ino());
    let (own, host) = match (ns("self"), ns("1")) {
        (Ok(own), Ok(host)) => (own, host),
        (Err(e), _) | (_, Err(e)) => {
            return Err(format!(
                "reading /proc/{{self,1}}/ns/cgroup: {e}; reaching PID 1's namespaces needs CAP_SYS_PTRACE (the chart's agent adds it, and corral drops it right after)"
            ));
        }
    };
    if own != host {
        let file = std::fs::File::open("/proc/1/ns/cgroup").map_err(|e| {
            format!("opening /proc/1/ns/cgroup: {e}; it needs CAP_SYS_PTRACE (the chart's agent adds it, and corral drops it right after)")
        })?;
        // SAFETY: setns on a descriptor that stays open for the call.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWCGROUP) } == -1 {
            return Err(format!(
                "joining the cgroup namespace of PID 1 (/proc/1/ns/cgroup): {}; it needs CAP_SYS_ADMIN (the chart's agent adds it, and corral drops it right after)",
                io::Error::last_os_error()
            ));
        }
    }
    let prepared = before_drop();
    drop_start_capabilities()?;
    prepared?;
    Ok(own != host)
}

/// Drops what only the start needed from every capability set and the bounding set.
fn drop_start_capabilities() -> Result<(), String> {
    for (cap, name) in [
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
        (CAP_DAC_OVERRIDE, "CAP_DAC_OVERRIDE"),
    ] {
        crate::agent::sandbox::drop_capability(cap).map_err(|e| format!("dropping {name}: {e}"))?;
    }
    Ok(())
}

const CAP_SYS_ADMIN: u32 = 21;
/// Reading and opening another process's namespace files (`/proc/1/ns/cgroup`) is a
/// ptrace-mode access: a process whose capabilities are not a superset of PID 1's (the
/// chart's agent, which keeps a few) needs this one for it.
const CAP_SYS_PTRACE: u32 = 19;
/// The top directory of every cgroup hierarchy is mode 0555: making corral's root there
/// (`before_drop`) needs this one; the groups below are corral's own, mode 0755.
const CAP_DAC_OVERRIDE: u32 = 1;

/// In `self` mode, moves every process of the root group (corral first, when it runs
/// there) into [`LEAF`], so that the root may enable controllers for its children.
/// Nothing to do otherwise; a `corral down` started from a shell stays where it is.
///
/// # Errors
/// The leaf cannot be created, or corral cannot move itself.
pub fn enter_leaf(fs: &Cgroupfs) -> io::Result<()> {
    if !fs.root().own {
        return Ok(());
    }
    let shown = fs.layout().unified_root.trim_end_matches('/').to_string();
    let inside = Host::detect().own_cgroup.is_some_and(|own| {
        let own = own
            .strip_prefix(&shown)
            .unwrap_or(&own)
            .trim_start_matches('/');
        own == fs.root().path || own == format!("{}/{LEAF}", fs.root().path)
    });
    for dir in fs.root_dirs() {
        let leaf = dir.join(LEAF);
        match std::fs::create_dir(&leaf) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(annotate(e, &leaf)),
        }
        let procs = leaf.join("cgroup.procs");
        if inside {
            std::fs::write(&procs, "0").map_err(|e| annotate(e, &procs))?;
        }
        let left = super::procs::read(&dir.join("cgroup.procs")).unwrap_or_default();
        for pid in left {
            // A process may exit meanwhile; what stays is named by the controller check.
            if let Err(e) = std::fs::write(&procs, pid.to_string()) {
                tracing::debug!(pid, error = %e, "cannot move a process into corral's leaf");
            }
        }
    }
    Ok(())
}

fn annotate(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// The controllers corral's groups cannot have, each with why and what to do. Empty when
/// every controller corral uses reaches its root.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Missing(pub BTreeMap<Controller, String>);

impl Missing {
    /// Why the controller of `knob` (a knob's file name, as reports carry it) is missing,
    /// if it is.
    pub fn reason_for(&self, knob: &str) -> Option<&str> {
        Knob::named(knob)
            .and_then(Knob::controller)
            .and_then(|c| self.0.get(&c))
            .map(String::as_str)
    }
}

/// Makes every controller corral uses reach its root: on v2, enables them in the
/// `cgroup.subtree_control` of each group from [`Root::owned_from`] down to the root
/// itself, where they are offered and not enabled yet; on v1, checks they are mounted.
/// Writes only what is missing, so a second call writes nothing.
pub fn enable_controllers(fs: &Cgroupfs) -> Missing {
    let mut missing = BTreeMap::new();
    let layout = fs.layout();
    if !layout.is_v2() {
        for controller in Controller::ALL {
            if !layout.v1.contains_key(&controller) {
                let name = controller.v1_name();
                missing.insert(
                    controller,
                    format!(
                        "no cgroup v1 hierarchy has the {name} controller (/proc/self/mountinfo lists none): mount one, e.g. `mkdir -p /sys/fs/cgroup/{name} && mount -t cgroup -o {name} cgroup /sys/fs/cgroup/{name}`"
                    ),
                );
            }
        }
        return Missing(missing);
    }
    let Some(mount) = layout.unified.clone() else {
        return Missing(missing);
    };
    let root = fs.root();
    let wanted: Vec<(Controller, &str)> = Controller::ALL
        .iter()
        .filter_map(|c| c.v2_name().map(|n| (*c, n)))
        .collect();
    let parts: Vec<&str> = root.path.split('/').collect();
    let skip = if root.owned_from.is_empty() {
        0
    } else {
        root.owned_from.split('/').count()
    };
    // The groups corral may write, top first: the owned top, then each one below it down
    // to the root (inclusive).
    let mut chain: Vec<PathBuf> = Vec::new();
    if skip == 0 {
        chain.push(mount.clone());
    }
    for n in skip.max(1)..=parts.len() {
        chain.push(mount.join(parts[..n].join("/")));
    }
    for (i, dir) in chain.iter().enumerate() {
        let offered = words(&dir.join(Stat::Controllers.name()));
        let enabled = words(&dir.join(Knob::SubtreeControl.name()));
        let mut enable = Vec::new();
        for (controller, name) in &wanted {
            if missing.contains_key(controller) || enabled.contains(*name) {
                continue;
            }
            if !offered.contains(*name) {
                let listed = offered.iter().cloned().collect::<Vec<_>>().join(" ");
                let reason = if i > 0 {
                    // Corral enabled it above, or failed to and said why there.
                    format!(
                        "the {name} controller does not reach {} (its cgroup.controllers lists {listed:?})",
                        dir.display()
                    )
                } else if dir == &mount {
                    format!(
                        "the cgroup v2 hierarchy offers no {name} controller ({}/cgroup.controllers lists {listed:?}): the kernel lacks it, or a v1 hierarchy holds it (boot with cgroup_no_v1=all or systemd.unified_cgroup_hierarchy=1)",
                        dir.display()
                    )
                } else {
                    let parent = dir.parent().unwrap_or(dir);
                    format!(
                        "the {name} controller is not delegated to corral: {}/cgroup.controllers lists {listed:?}. Write \"+{name}\" to {}/cgroup.subtree_control, or give corral's unit Delegate=yes",
                        dir.display(),
                        parent.display()
                    )
                };
                missing.insert(*controller, reason);
                continue;
            }
            enable.push((*controller, *name));
        }
        if enable.is_empty() {
            continue;
        }
        let file = dir.join(Knob::SubtreeControl.name());
        let text = Knob::SubtreeControl
            .text(&enable.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(" "));
        match std::fs::write(&file, &text) {
            Ok(()) => {
                tracing::info!(file = %file.display(), enabled = %text, "enabled controllers for corral's groups");
            }
            Err(e) => {
                let hint = write_hint(&e, dir);
                for (controller, name) in enable {
                    missing.insert(
                        controller,
                        format!(
                            "cannot enable the {name} controller for corral's groups: writing \"+{name}\" to {} failed: {e}{hint}",
                            file.display()
                        ),
                    );
                }
            }
        }
    }
    Missing(missing)
}

/// What to do about a refused `cgroup.subtree_control` write.
fn write_hint(e: &io::Error, dir: &Path) -> String {
    match e.raw_os_error() {
        // Which processes is the admin's to look up: the line reaches every tenant's
        // status, and naming them would show another group's PIDs.
        Some(libc::EBUSY) => format!(
            ". {} holds processes (see its cgroup.procs); cgroup v2 lets only a group without processes (or the top one) hand controllers to its children. Move them into a leaf group, or run corral in a unit with Delegate=yes and --cgroup-root self",
            dir.display()
        ),
        Some(libc::EROFS) => {
            ". The cgroup filesystem is mounted read-only (as container runtimes mount it): mount the host's hierarchy read-write (in a pod, see the chart's --host-cgroup-namespace)".to_string()
        }
        Some(libc::EACCES | libc::EPERM) => {
            ". corral needs root, or write access to that file".to_string()
        }
        _ => String::new(),
    }
}

/// The words of a small file (`cgroup.controllers`); none when it cannot be read.
fn words(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2() -> Layout {
        Layout::v2_at(Path::new("/sys/fs/cgroup"))
    }

    fn host(systemd: bool, own: &str) -> Host {
        Host {
            systemd,
            own_cgroup: Some(own.to_string()),
        }
    }

    #[test]
    fn systemd_unit_names_are_roots_and_escapes_are_not() {
        for good in [
            "corral",
            "system.slice/corral.service",
            "corral.slice/node-a",
            "system.slice/corral@x.service",
            "machine.slice/a\\x2db.scope",
        ] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/../b",
            "/abs",
            "a//b",
            "a/",
            "cgroup.procs",
            "a/cgroup.x",
            "a b",
            "a\nb",
            "ä",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn self_is_the_delegated_group_corral_runs_in() {
        let root = resolve(
            SELF,
            &v2(),
            &host(true, "/system.slice/corral.service/_corral"),
            |d| d == Path::new("/sys/fs/cgroup/system.slice/corral.service"),
        )
        .unwrap();
        assert_eq!(
            root,
            Root {
                path: "system.slice/corral.service".into(),
                own: true,
                owned_from: "system.slice/corral.service".into(),
            }
        );
        assert!(matches!(
            resolve(
                SELF,
                &v2(),
                &host(true, "/user.slice/session-1.scope"),
                |_| { false }
            ),
            Err(RootError::NotDelegated { .. })
        ));
        assert!(matches!(
            resolve(SELF, &v2(), &host(false, "/"), |_| true),
            Err(RootError::SelfAtTop)
        ));
        assert!(matches!(
            resolve(
                SELF,
                &Layout::v1_at(Path::new("/x")),
                &host(false, "/a"),
                |_| true
            ),
            Err(RootError::SelfNeedsV2(_))
        ));
    }

    #[test]
    fn naming_the_group_corral_runs_in_is_self() {
        let root = resolve(
            "system.slice/corral.service",
            &v2(),
            &host(false, "/system.slice/corral.service"),
            |_| false,
        )
        .unwrap();
        assert!(root.own);
        let other = resolve(
            "system.slice/other.service",
            &v2(),
            &host(false, "/system.slice/corral.service"),
            |_| false,
        )
        .unwrap();
        assert!(!other.own);
    }

    #[test]
    fn on_systemd_a_named_root_must_be_delegated() {
        let delegated = |d: &Path| d == Path::new("/sys/fs/cgroup/system.slice/corral.service");
        let root = resolve(
            "system.slice/corral.service/workloads",
            &v2(),
            &host(true, "/"),
            delegated,
        )
        .unwrap();
        assert_eq!(root.owned_from, "system.slice/corral.service");
        assert!(!root.own);
        let refused = resolve("corral", &v2(), &host(true, "/"), delegated).unwrap_err();
        assert!(refused.to_string().contains("Delegate=yes"), "{refused}");
        // Without systemd, corral may write from the top.
        let root = resolve("corral", &v2(), &host(false, "/"), |_| false).unwrap();
        assert_eq!(root.owned_from, "");
    }

    #[test]
    fn in_a_namespace_own_groups_are_relative_to_the_mount() {
        let mut layout = v2();
        layout.unified_root = "/kubepods/pod1".into();
        let root = resolve(SELF, &layout, &host(false, "/kubepods/pod1/c1"), |_| true).unwrap();
        assert_eq!(root.path, "c1");
        assert!(matches!(
            resolve(SELF, &layout, &host(false, "/other/c1"), |_| true),
            Err(RootError::SelfNotVisible { .. })
        ));
    }
}
