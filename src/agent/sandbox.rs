//! What a replica's command may do once it runs: the user and groups it runs as, no
//! capabilities (the bounding set emptied too, so not even root regains any at exec),
//! `no_new_privs`, and a seccomp filter refusing what a tenant never needs and what has
//! been the way out of containers: mounts and namespaces, kernel modules, kexec, BPF,
//! perf, io_uring, ptrace and reading other processes' memory, keyrings, clocks, swap,
//! reboot.
//!
//! The filter is a deny list, like systemd's `SystemCallFilter=~@mount @module ...` and
//! Docker's default profile in spirit: a tenant's program keeps every ordinary system call.
//! Refused calls fail with `EPERM`; `clone3` fails with `ENOSYS`, so that C libraries fall
//! back to `clone`, whose flags the filter can see (it refuses the namespace flags). The
//! filter also lists each call's x32 number, and any other architecture is killed, so
//! neither ABI is a way around it.
//!
//! [`Sandbox::prepare`] does everything that allocates, before the fork; [`Sandbox::enter`]
//! runs in the forked child and makes only system calls.

use std::collections::BTreeMap;
use std::io;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::alloc::admit::RunAs;

/// System calls a replica may not make (besides `clone3` and namespace flags of `clone`).
const DENIED: &[(i64, &str)] = &[
    (libc::SYS_mount, "mount"),
    (libc::SYS_umount2, "umount2"),
    (libc::SYS_pivot_root, "pivot_root"),
    (libc::SYS_chroot, "chroot"),
    (libc::SYS_move_mount, "move_mount"),
    (libc::SYS_open_tree, "open_tree"),
    (libc::SYS_fsopen, "fsopen"),
    (libc::SYS_fsconfig, "fsconfig"),
    (libc::SYS_fsmount, "fsmount"),
    (libc::SYS_fspick, "fspick"),
    (libc::SYS_mount_setattr, "mount_setattr"),
    (libc::SYS_unshare, "unshare"),
    (libc::SYS_setns, "setns"),
    (libc::SYS_swapon, "swapon"),
    (libc::SYS_swapoff, "swapoff"),
    (libc::SYS_reboot, "reboot"),
    (libc::SYS_kexec_load, "kexec_load"),
    (libc::SYS_kexec_file_load, "kexec_file_load"),
    (libc::SYS_init_module, "init_module"),
    (libc::SYS_finit_module, "finit_module"),
    (libc::SYS_delete_module, "delete_module"),
    (libc::SYS_bpf, "bpf"),
    (libc::SYS_perf_event_open, "perf_event_open"),
    (libc::SYS_userfaultfd, "userfaultfd"),
    (libc::SYS_io_uring_setup, "io_uring_setup"),
    (libc::SYS_io_uring_enter, "io_uring_enter"),
    (libc::SYS_io_uring_register, "io_uring_register"),
    (libc::SYS_ptrace, "ptrace"),
    (libc::SYS_process_vm_readv, "process_vm_readv"),
    (libc::SYS_process_vm_writev, "process_vm_writev"),
    (libc::SYS_kcmp, "kcmp"),
    (libc::SYS_pidfd_getfd, "pidfd_getfd"),
    (libc::SYS_keyctl, "keyctl"),
    (libc::SYS_add_key, "add_key"),
    (libc::SYS_request_key, "request_key"),
    (libc::SYS_open_by_handle_at, "open_by_handle_at"),
    (libc::SYS_name_to_handle_at, "name_to_handle_at"),
    (libc::SYS_acct, "acct"),
    (libc::SYS_quotactl, "quotactl"),
    (libc::SYS_syslog, "syslog"),
    (libc::SYS_vhangup, "vhangup"),
    (libc::SYS_settimeofday, "settimeofday"),
    (libc::SYS_clock_settime, "clock_settime"),
    (libc::SYS_adjtimex, "adjtimex"),
    (libc::SYS_clock_adjtime, "clock_adjtime"),
    (libc::SYS_lookup_dcookie, "lookup_dcookie"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_iopl, "iopl"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_ioperm, "ioperm"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_uselib, "uselib"),
];

/// The x32 ABI's calls are the x86_64 numbers with this bit set; other architectures have
/// no such second numbering, and a filter entry for it is harmless there.
const X32_BIT: i64 = 0x4000_0000;

/// `clone` flags that make new namespaces: a way to gain capabilities in a user namespace.
const NAMESPACE_FLAGS: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

/// The highest capability number any kernel has had; dropping beyond the kernel's last one
/// fails with EINVAL, which is ignored.
const CAP_MAX: libc::c_ulong = 63;

/// Why the sandbox cannot be built (before any process starts).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the seccomp filter: {0}")]
pub struct SandboxError(String);

/// A step of [`Sandbox::enter`], reported when it fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    /// Emptying the capability bounding set.
    BoundingSet = 1,
    /// Clearing ambient capabilities.
    Ambient,
    /// Setting the supplementary groups.
    Groups,
    /// Setting the group.
    Group,
    /// Setting the user.
    User,
    /// Clearing the remaining capabilities.
    Capabilities,
    /// Changing to the working directory, as the user.
    WorkingDir,
    /// Setting `no_new_privs`.
    NoNewPrivs,
    /// Installing the seccomp filter.
    Seccomp,
}

impl Step {
    /// The step a reported number stands for.
    pub fn from_code(code: u32) -> Option<Step> {
        [
            Step::BoundingSet,
            Step::Ambient,
            Step::Groups,
            Step::Group,
            Step::User,
            Step::Capabilities,
            Step::WorkingDir,
            Step::NoNewPrivs,
            Step::Seccomp,
        ]
        .into_iter()
        .find(|s| *s as u32 == code)
    }

    /// What the step does, for an error message.
    pub fn describe(self, run_as: &RunAs, working_dir: &str) -> String {
        match self {
            Step::BoundingSet => "empty the capability bounding set".to_string(),
            Step::Ambient => "clear ambient capabilities".to_string(),
            Step::Groups => format!("set the supplementary groups {:?}", run_as.groups),
            Step::Group => format!("switch to group {}", run_as.gid),
            Step::User => format!("switch to user {}", run_as.uid),
            Step::Capabilities => "clear capabilities".to_string(),
            Step::WorkingDir => format!(
                "enter the working directory {working_dir} as user {} (can that user reach it?)",
                run_as.uid
            ),
            Step::NoNewPrivs => "set no_new_privs".to_string(),
            Step::Seccomp => "install the seccomp filter".to_string(),
        }
    }
}

/// Everything the child needs, made before the fork.
pub struct Sandbox {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    working_dir: std::ffi::CString,
    /// `clone3` → ENOSYS, then the deny list → EPERM.
    filters: [BpfProgram; 2],
}

impl Sandbox {
    /// The sandbox for a command run as `run_as` in `working_dir`.
    ///
    /// # Errors
    /// The filter cannot be compiled for this architecture, or the directory holds a NUL.
    pub fn prepare(run_as: &RunAs, working_dir: &str) -> Result<Sandbox, SandboxError> {
        Ok(Sandbox {
            uid: run_as.uid,
            gid: run_as.gid,
            groups: run_as.groups.clone(),
            working_dir: std::ffi::CString::new(working_dir)
                .map_err(|_| SandboxError("the working directory holds a NUL byte".into()))?,
            filters: filters()?,
        })
    }

    /// Drops to the sandbox, in the forked child before exec. Makes only system calls, in an
    /// order where each still has the privilege it needs: capabilities go before the user
    /// changes (dropping them needs `CAP_SETPCAP`), the directory is entered as the user,
    /// and the filter comes last.
    ///
    /// # Errors
    /// The step that failed, and its errno.
    pub fn enter(&self) -> Result<(), (Step, i32)> {
        let errno = || {
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EPERM)
        };
        // SAFETY: every call below is a system call with arguments that outlive it; none
        // allocates, so all are safe between fork and exec.
        unsafe {
            for cap in 0..=CAP_MAX {
                if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) == -1 && errno() != libc::EINVAL
                {
                    return Err((Step::BoundingSet, errno()));
                }
            }
            if libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ) == -1
                && errno() != libc::EINVAL
            {
                return Err((Step::Ambient, errno()));
            }
            if libc::setgroups(self.groups.len(), self.groups.as_ptr()) == -1 {
                return Err((Step::Groups, errno()));
            }
            if libc::setresgid(self.gid, self.gid, self.gid) == -1 {
                return Err((Step::Group, errno()));
            }
            if libc::setresuid(self.uid, self.uid, self.uid) == -1 {
                return Err((Step::User, errno()));
            }
            // A non-root user lost its capabilities with setresuid; root keeps them until
            // this clears them (effective, permitted and inheritable).
            let header = CapHeader {
                version: LINUX_CAPABILITY_VERSION_3,
                pid: 0,
            };
            let data = [CapData::default(); 2];
            if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) == -1 {
                return Err((Step::Capabilities, errno()));
            }
            if libc::chdir(self.working_dir.as_ptr()) == -1 {
                return Err((Step::WorkingDir, errno()));
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == -1 {
                return Err((Step::NoNewPrivs, errno()));
            }
            for filter in &self.filters {
                let program = libc::sock_fprog {
                    len: u16::try_from(filter.len()).unwrap_or(u16::MAX),
                    filter: filter.as_ptr().cast_mut().cast(),
                };
                if libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    &program,
                ) == -1
                {
                    return Err((Step::Seccomp, errno()));
                }
            }
        }
        Ok(())
    }
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Drops capability `cap` from the calling thread for good: from its bounding set, and
/// from its effective, permitted and inheritable sets. Capabilities are per thread, so
/// call it before any other thread starts (threads started later inherit the sets).
///
/// # Errors
/// The kernel refused.
pub fn drop_capability(cap: u32) -> io::Result<()> {
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: prctl and capget/capset with a header and two data slots that outlive the
    // calls, as the kernel's v3 interface wants.
    unsafe {
        if libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) == -1 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
        }
        if libc::syscall(libc::SYS_capget, &header, data.as_mut_ptr()) == -1 {
            return Err(io::Error::last_os_error());
        }
        let (slot, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
        if let Some(d) = data.get_mut(slot) {
            d.effective &= !bit;
            d.permitted &= !bit;
            d.inheritable &= !bit;
        }
        if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The names of the system calls a replica may not make, for documentation and tests.
pub fn denied_calls() -> Vec<&'static str> {
    let mut names: Vec<&str> = DENIED.iter().map(|(_, name)| *name).collect();
    names.push("clone3");
    names.push("clone with a namespace flag");
    names
}

fn arch() -> Result<TargetArch, SandboxError> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|e| SandboxError(format!("{e:?}")))
}

/// The two programs: `clone3` → ENOSYS, and the deny list → EPERM.
fn filters() -> Result<[BpfProgram; 2], SandboxError> {
    let bad = |e: seccompiler::BackendError| SandboxError(e.to_string());
    let clone3 = SeccompFilter::new(
        BTreeMap::from([
            (libc::SYS_clone3, Vec::new()),
            (libc::SYS_clone3 | X32_BIT, Vec::new()),
        ]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch()?,
    )
    .map_err(bad)?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, _) in DENIED {
        rules.insert(*nr, Vec::new());
        rules.insert(nr | X32_BIT, Vec::new());
    }
    let namespaces = NAMESPACE_FLAGS
        .iter()
        .map(|flag| {
            SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(*flag),
                *flag,
            )
            .and_then(|c| SeccompRule::new(vec![c]))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    rules.insert(libc::SYS_clone, namespaces.clone());
    rules.insert(libc::SYS_clone | X32_BIT, namespaces);
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch()?,
    )
    .map_err(bad)?;
    let compile = |f: SeccompFilter| -> Result<BpfProgram, SandboxError> {
        f.try_into()
            .map_err(|e: seccompiler::BackendError| SandboxError(e.to_string()))
    };
    Ok([compile(clone3)?, compile(deny)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile_and_name_every_call() {
        let sandbox = Sandbox::prepare(&RunAs::default(), "/").unwrap();
        assert!(sandbox.filters.iter().all(|f| !f.is_empty()));
        assert!(denied_calls().contains(&"mount"));
        assert!(denied_calls().contains(&"ptrace"));
        assert_eq!(Step::from_code(Step::User as u32), Some(Step::User));
        assert_eq!(Step::from_code(0), None);
    }
}
