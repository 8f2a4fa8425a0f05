//! Process supervision: starting a workload inside its cgroups, recognising it later, stopping
//! every process of a cgroup, and finding existing processes to adopt.
//!
//! Everything here is synchronous and may block for up to the stop timeouts; an async caller
//! runs it through `tokio::task::spawn_blocking`.
//!
//! Kernel behaviour this module relies on (checked by `tests/process.rs`):
//! - writing `0` to a `cgroup.procs` file moves the writing process, so a forked child can put
//!   itself into its cgroups before it execs the workload;
//! - a process that has exited but is not yet reaped (a zombie) is no longer listed in
//!   `cgroup.procs`, so an unreaped child never keeps a group non-empty, and [`stop`] leaves
//!   the exit status for whoever holds the [`std::process::Child`].

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use regex::Regex;
use serde::{Deserialize, Serialize};

pub use crate::cgroup::procs::{read as procs, read_bounded};

use super::logs::{self, LogSink};
use super::sandbox::{Sandbox, SandboxError, Step};
use crate::alloc::admit::RunAs;
use crate::state::private;

/// `PATH` of every launched process, and where a bare program name is looked up.
pub const LAUNCH_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How often [`stop`] re-reads the group while it waits for it to empty.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How long [`stop`] waits for the group to empty after SIGKILL. SIGKILL cannot be caught, so
/// only a process stuck in the kernel (uninterruptible I/O) takes this long.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// What to start and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchSpec {
    /// The program and its arguments. A program without `/` is looked up in the launched
    /// process's `PATH` ([`LAUNCH_PATH`] unless `env` sets another).
    pub args: Vec<String>,
    /// Environment variables added to the minimal `PATH` and `HOME=/`; these win over both.
    pub env: Vec<(String, String)>,
    /// Working directory; `/` when `None`.
    pub working_dir: Option<PathBuf>,
    /// Where stdout and stderr go, and how they are rotated; an empty path discards them
    /// (a health check's output).
    pub log: LogSink,
    /// corral's executable, to start `corral log-pump` for the output; without it the
    /// output is appended to `log.path` directly, unrotated (for tools and tests).
    pub log_pump: Option<PathBuf>,
    /// The `cgroup.procs` files of the cgroups the process runs in: one per v1 hierarchy, or
    /// the single file of the v2 group.
    pub join: Vec<PathBuf>,
    /// The user and groups it runs as, in [`sandbox`](super::sandbox).
    pub run_as: RunAs,
}

/// A process started by [`launch`].
#[derive(Debug)]
pub struct Launched {
    /// Its process ID.
    pub pid: u32,
    /// Its start time in clock ticks since boot (field 22 of `/proc/PID/stat`), which tells
    /// it apart from a later process that reuses the PID.
    pub start_time: u64,
    /// The handle to wait for its exit status with. Dropping it neither kills nor reaps the
    /// process: once the process exits it stays a zombie until someone waits for it.
    pub child: Child,
    /// The log pump, when one was started; it ends after the last writer of the output.
    pub pump: Option<Child>,
}

impl Launched {
    /// The identity of the launched process, to check on it after the handle is gone.
    pub fn process_id(&self) -> ProcessId {
        ProcessId {
            pid: self.pid,
            start_time: self.start_time,
        }
    }
}

/// Why [`launch`] did not start a process. Whenever it returns an error, no process of the
/// launch is left running.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// `args` was empty.
    #[error("nothing to launch: the command has no arguments")]
    EmptyArgs,
    /// The log file or its directory could not be created or opened.
    #[error("cannot open log file {path}: {source}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The child could not join one of its cgroups, so it never ran the program.
    #[error(
        "cannot join cgroup via {path} before starting `{program}`: {source}; check that the \
         cgroup exists and its controllers are set up"
    )]
    Join {
        /// The `cgroup.procs` file that could not be written.
        path: PathBuf,
        /// The program that was to run.
        program: String,
        /// The underlying error.
        source: io::Error,
    },
    /// Forking, changing directory or executing the program failed.
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        /// The program that was to run.
        program: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The child could not drop to its user, capabilities and filter, so it never ran the
    /// program.
    #[error("cannot start `{program}`: cannot {step}: {source}")]
    Sandbox {
        /// What the child was doing.
        step: String,
        /// The program that was to run.
        program: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The seccomp filter could not be built.
    #[error(transparent)]
    Filter(#[from] SandboxError),
    /// The process started but its start time could not be read; it was killed again.
    #[error("cannot read the start time of process {pid} (it was killed again): {source}")]
    StartTime {
        /// The process ID.
        pid: u32,
        /// The underlying error.
        source: io::Error,
    },
}

/// Starts `spec.args` as a detached process inside the cgroups of `spec.join`.
///
/// Guarantees:
/// - the child joins every cgroup before it execs, so no instruction of the program runs
///   outside them; if a join fails the program is never executed and the error names the file;
/// - the process is in its own session (`setsid`) without a controlling terminal, reads
///   `/dev/null` and appends stdout and stderr to `spec.log_file`, so it outlives the caller
///   and gets neither SIGHUP nor SIGPIPE from it;
/// - it starts with every signal at its default disposition and none blocked, whatever the
///   caller ignores or blocks;
/// - its environment is `PATH` ([`LAUNCH_PATH`]), `HOME=/` and `spec.env`, nothing inherited;
///   its working directory is `spec.working_dir` or `/`, entered as its user;
/// - after joining, and before exec, it becomes `spec.run_as` with no capabilities (none in
///   the bounding set either), `no_new_privs` and the seccomp filter of
///   [`sandbox`](super::sandbox); if any step fails the program is never executed.
pub fn launch(spec: &LaunchSpec) -> Result<Launched, LaunchError> {
    let program = spec.args.first().ok_or(LaunchError::EmptyArgs)?.clone();
    let spawn_error = |program: &str, source| LaunchError::Spawn {
        program: program.to_owned(),
        source,
    };

    let log_error = |source| LaunchError::Log {
        path: spec.log.path.clone(),
        source,
    };
    let (log, mut pump): (OwnedFd, Option<Child>) = match &spec.log_pump {
        _ if spec.log.path.as_os_str().is_empty() => (
            fs::OpenOptions::new()
                .write(true)
                .open("/dev/null")
                .map_err(log_error)?
                .into(),
            None,
        ),
        Some(program) => {
            let started = logs::start_pump(program, &spec.log, &spec.join).map_err(log_error)?;
            (started.input, Some(started.pump))
        }
        None => (open_log(&spec.log.path).map_err(log_error)?.into(), None),
    };
    let log_for_stderr = log.try_clone().map_err(log_error)?;

    // Everything the child touches between fork and exec is prepared here: after fork only
    // async-signal-safe calls are allowed, so no allocation.
    let join_paths = spec
        .join
        .iter()
        .map(|path| {
            CString::new(path.as_os_str().as_bytes()).map_err(|_| LaunchError::Join {
                path: path.clone(),
                program: program.clone(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // std reports only an errno when `pre_exec` fails; the child writes the index of the
    // cgroup it could not join here so the error can name the file. Close-on-exec, so a
    // successful exec leaves it empty.
    let (failed_join_read, failed_join_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .map_err(|errno| spawn_error(&program, io::Error::from(errno)))?;
    let failed_join_fd = failed_join_write.as_raw_fd();
    let working_dir = spec
        .working_dir
        .as_deref()
        .unwrap_or(Path::new("/"))
        .to_string_lossy()
        .into_owned();
    let sandbox = Sandbox::prepare(&spec.run_as, &working_dir)?;

    let mut command = Command::new(&program);
    command
        .args(&spec.args[1..])
        .env_clear()
        .env("PATH", LAUNCH_PATH)
        .env("HOME", "/")
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_for_stderr);
    // SAFETY: the closure runs in the forked child, where only async-signal-safe functions
    // may be called. It calls only setsid, rt_sigaction, open, write, close and the system
    // calls of `Sandbox::enter`, and reads `join_paths`, `failed_join_fd` and `sandbox`,
    // which were prepared before the fork; it allocates nothing (`io::Error::last_os_error`
    // and `from_raw_os_error` do not allocate).
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            reset_signal_dispositions();
            let report = |code: u32| {
                let code = code.to_ne_bytes();
                libc::write(failed_join_fd, code.as_ptr().cast(), code.len());
            };
            for (index, path) in join_paths.iter().enumerate() {
                if let Err(errno) = join_self(path) {
                    report(u32::try_from(index).unwrap_or(u32::MAX));
                    return Err(io::Error::from_raw_os_error(errno));
                }
            }
            if let Err((step, errno)) = sandbox.enter() {
                report(SANDBOX_STEP | step as u32);
                return Err(io::Error::from_raw_os_error(errno));
            }
            Ok(())
        });
    }

    let spawned = command.spawn();
    // The parent's copy of the write end must be closed before reading, or the read could
    // wait on it. Its copies of the output pipe went with `command`.
    drop(command);
    drop(failed_join_write);
    let mut child = match spawned {
        Ok(child) => child,
        Err(source) => {
            // No writer is left: the pump ends by itself; reap it.
            if let Some(pump) = pump.as_mut() {
                let _ = pump.wait();
            }
            return Err(match failed_join(failed_join_read) {
                Some(code) if code & SANDBOX_STEP != 0 => {
                    match Step::from_code(code & !SANDBOX_STEP) {
                        Some(step) => LaunchError::Sandbox {
                            step: step.describe(&spec.run_as, &working_dir),
                            program,
                            source,
                        },
                        None => spawn_error(&program, source),
                    }
                }
                Some(code) => match usize::try_from(code) {
                    Ok(index) if index < spec.join.len() => LaunchError::Join {
                        path: spec.join[index].clone(),
                        program,
                        source,
                    },
                    _ => spawn_error(&program, source),
                },
                None => spawn_error(&program, source),
            });
        }
    };

    let pid = child.id();
    match read_stat(pid) {
        Ok(stat) => Ok(Launched {
            pid,
            start_time: stat.start_time,
            child,
            pump,
        }),
        Err(source) => {
            // /proc is unavailable, or something reaped the child already (SIGCHLD ignored).
            // In the first case the process runs, and is killed so that nothing is left.
            let _ = child.kill();
            let _ = child.wait();
            Err(LaunchError::StartTime { pid, source })
        }
    }
}

fn open_log(path: &Path) -> io::Result<fs::File> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        private::create_dir(dir)?;
    }
    private::open(path, private::Mode::Append)
}

/// Restores the default action of every signal. Ignored signals survive exec: a workload that
/// inherited an ignored SIGTERM could not be stopped gracefully.
///
/// This calls the kernel directly because glibc's `sigaction` refuses signals 32 and 33, which
/// it reserves for itself, and those do arrive ignored: glibc's `posix_spawn` (used by std and
/// by cargo, for instance) sets them to SIG_IGN in its children.
fn reset_signal_dispositions() {
    // An all-zero kernel `struct sigaction` is SIG_DFL with no flags and an empty mask on
    // every architecture; the buffer is larger than the struct on any of them.
    let default_action = [0u64; 8];
    // The kernel's sigset_t size (_NSIG / 8), which `rt_sigaction` insists on.
    const SIGSET_SIZE: libc::size_t = 8;
    for signal in 1..=64 {
        // SAFETY: rt_sigaction is a system call, async-signal-safe; `default_action` outlives
        // the call and the old action is not requested. SIGKILL and SIGSTOP fail with EINVAL,
        // which is expected and harmless.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                default_action.as_ptr(),
                std::ptr::null_mut::<u64>(),
                SIGSET_SIZE,
            );
        }
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is `procs_file`, returning
/// the errno on failure. Async-signal-safe.
fn join_self(procs_file: &CString) -> Result<(), i32> {
    let errno = || {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    };
    // SAFETY: `procs_file` is a valid NUL-terminated string and the buffers outlive the calls.
    unsafe {
        let fd = libc::open(procs_file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd == -1 {
            return Err(errno());
        }
        // "0" means the writing process itself.
        let written = libc::write(fd, b"0".as_ptr().cast(), 1);
        let result = if written == 1 { Ok(()) } else { Err(errno()) };
        libc::close(fd);
        result
    }
}

/// Marks a failure code as a sandbox step rather than the index of a cgroup.
const SANDBOX_STEP: u32 = 1 << 31;

/// What the child reported before failing: the index of the cgroup it could not join, or
/// [`SANDBOX_STEP`] with the step of the sandbox that failed.
fn failed_join(read_end: OwnedFd) -> Option<u32> {
    let mut bytes = [0u8; 4];
    fs::File::from(read_end).read_exact(&mut bytes).ok()?;
    Some(u32::from_ne_bytes(bytes))
}

/// A process, recognisable despite PID reuse: a later process with the same PID has a
/// different start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessId {
    /// The process ID.
    pub pid: u32,
    /// Start time in clock ticks since boot (field 22 of `/proc/PID/stat`).
    pub start_time: u64,
}

impl ProcessId {
    /// The identity of the process `pid` now, `None` when there is no such process.
    pub fn of(pid: u32) -> Option<ProcessId> {
        let stat = read_stat(pid).ok()?;
        Some(ProcessId {
            pid,
            start_time: stat.start_time,
        })
    }

    /// Whether this very process still runs: the PID exists, has the same start time and has
    /// not exited (a zombie waiting to be reaped counts as exited).
    pub fn is_alive(&self) -> bool {
        read_stat(self.pid)
            .is_ok_and(|stat| stat.start_time == self.start_time && !stat.has_exited())
    }
}

/// The most read of a `/proc/PID/stat` file (its name is at most 64 bytes, the rest numbers).
const STAT_MAX: usize = 4096;
/// The most of a command line a pattern is matched against.
const CMDLINE_MAX: usize = 64 << 10;
/// The largest pid file accepted: a process ID is at most 7 digits, with room for spaces.
pub const PID_FILE_MAX: u64 = 32;

/// The fields of `/proc/PID/stat` this module uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stat {
    state: char,
    ppid: u32,
    start_time: u64,
}

impl Stat {
    /// Zombie (`Z`) or dead (`X`).
    fn has_exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

fn read_stat(pid: u32) -> io::Result<Stat> {
    let contents = String::from_utf8_lossy(&read_bounded(
        Path::new(&format!("/proc/{pid}/stat")),
        STAT_MAX,
    )?)
    .into_owned();
    parse_stat(&contents).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected format of /proc/{pid}/stat"),
        )
    })
}

/// Parses `/proc/PID/stat`. The command name (field 2) is in parentheses and may itself
/// contain spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(contents: &str) -> Option<Stat> {
    let (_, rest) = contents.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 of the stat line.
    let field = |number: usize| fields.get(number - 3).copied();
    Some(Stat {
        state: field(3)?.chars().next()?,
        ppid: field(4)?.parse().ok()?,
        start_time: field(22)?.parse().ok()?,
    })
}

/// How [`stop`] emptied a group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StopOutcome {
    /// Processes that exited after SIGTERM, within the grace period.
    pub terminated: usize,
    /// Processes still there after the grace period, sent SIGKILL.
    pub killed: usize,
}

/// Why [`stop`] could not empty a group.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    /// A `cgroup.procs` file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The `cgroup.procs` file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A process could not be signalled (other than for having exited).
    #[error("cannot send {signal} to process {pid}: {source}")]
    Signal {
        /// The process ID.
        pid: u32,
        /// The signal's name.
        signal: &'static str,
        /// The underlying error.
        source: Errno,
    },
    /// The group contains the calling process, which would have signalled itself.
    #[error(
        "{path} lists this process ({pid}); refusing to stop its own group — move it out first"
    )]
    ContainsSelf {
        /// The `cgroup.procs` file.
        path: PathBuf,
        /// The calling process's ID.
        pid: u32,
    },
    /// Processes were still listed after SIGKILL and the kill timeout.
    #[error(
        "{path} still lists processes {pids:?} {timeout:?} after SIGKILL; they are probably \
         stuck in uninterruptible I/O (state D in /proc/PID/stat)"
    )]
    StillRunning {
        /// The `cgroup.procs` file.
        path: PathBuf,
        /// The processes it still lists.
        pids: Vec<u32>,
        /// How long they were given after SIGKILL.
        timeout: Duration,
    },
}

/// Stops every process in the groups of `procs_files` (one cgroup, one file per hierarchy):
/// SIGTERM to each, SIGKILL to whatever is left after `grace`, and returns once every file
/// lists no process.
///
/// The files are re-read every 20 ms so that processes forked meanwhile are signalled too. A
/// missing file counts as an empty group, so stopping a removed cgroup succeeds.
///
/// Errors: a file that cannot be read, a group still populated 5 s after SIGKILL, or a group
/// that contains the calling process (nothing is signalled then).
pub fn stop(procs_files: &[PathBuf], grace: Duration) -> Result<StopOutcome, StopError> {
    let mut sent_term = BTreeSet::new();
    let grace_end = Instant::now() + grace;
    loop {
        let listed = read_group(procs_files)?;
        if listed.is_empty() {
            return Ok(StopOutcome {
                terminated: sent_term.len(),
                killed: 0,
            });
        }
        for pid in union(&listed) {
            if sent_term.insert(pid) {
                signal(pid, Signal::SIGTERM)?;
            }
        }
        if Instant::now() >= grace_end {
            break;
        }
        thread::sleep(POLL_INTERVAL);
    }

    let mut sent_kill = BTreeSet::new();
    let kill_end = Instant::now() + KILL_TIMEOUT;
    loop {
        let listed = read_group(procs_files)?;
        let Some((path, pids)) = listed.first() else {
            break;
        };
        if Instant::now() >= kill_end {
            return Err(StopError::StillRunning {
                path: path.to_path_buf(),
                pids: pids.clone(),
                timeout: KILL_TIMEOUT,
            });
        }
        if sent_kill.is_empty() {
            tracing::info!(path = %path.display(), ?pids, ?grace, "processes outlived the grace period, sending SIGKILL");
        }
        // SIGKILL again every round: it is idempotent, and it also reaches children forked
        // between reading the list and the previous signal.
        for pid in union(&listed) {
            signal(pid, Signal::SIGKILL)?;
            sent_kill.insert(pid);
        }
        thread::sleep(POLL_INTERVAL);
    }
    Ok(StopOutcome {
        terminated: sent_term.difference(&sent_kill).count(),
        killed: sent_kill.len(),
    })
}

/// The files of `procs_files` that list processes, with their processes. Refuses a group with
/// the calling process in it.
fn read_group(procs_files: &[PathBuf]) -> Result<Vec<(&Path, Vec<u32>)>, StopError> {
    let me = std::process::id();
    let mut populated = Vec::new();
    for path in procs_files {
        let pids = match procs(path) {
            Ok(pids) => pids,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(StopError::Read {
                    path: path.clone(),
                    source,
                });
            }
        };
        if pids.contains(&me) {
            return Err(StopError::ContainsSelf {
                path: path.clone(),
                pid: me,
            });
        }
        if !pids.is_empty() {
            populated.push((path.as_path(), pids));
        }
    }
    Ok(populated)
}

fn union(listed: &[(&Path, Vec<u32>)]) -> BTreeSet<u32> {
    listed
        .iter()
        .flat_map(|(_, pids)| pids.iter().copied())
        .collect()
}

/// Sends `sig` to `pid`; a process that has already gone is not an error.
fn signal(pid: u32, sig: Signal) -> Result<(), StopError> {
    let target = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
    match kill(target, sig) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(source) => Err(StopError::Signal {
            pid,
            signal: sig.as_str(),
            source,
        }),
    }
}

/// Why [`move_into`] did not move a process.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// The process does not exist (any more).
    #[error("process {pid} does not exist")]
    Gone {
        /// The process ID.
        pid: u32,
    },
    /// Writing to a `cgroup.procs` file failed for another reason.
    #[error("cannot move process {pid} into {path}: {source}")]
    Write {
        /// The `cgroup.procs` file.
        path: PathBuf,
        /// The process ID.
        pid: u32,
        /// The underlying error.
        source: io::Error,
    },
}

/// Moves process `pid` (all its threads) into each cgroup of `join`, in order.
///
/// Caveats: the moves are not atomic across hierarchies (after an error the process may be in
/// some of the cgroups already), and only this process moves: its existing children stay where
/// they are, while children it forks later start in the new cgroups.
pub fn move_into(pid: u32, join: &[PathBuf]) -> Result<(), MoveError> {
    for path in join {
        let result = OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut file| file.write_all(pid.to_string().as_bytes()));
        match result {
            Ok(()) => {}
            Err(error) if error.raw_os_error() == Some(libc::ESRCH) => {
                return Err(MoveError::Gone { pid });
            }
            Err(source) => {
                return Err(MoveError::Write {
                    path: path.clone(),
                    pid,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Why no process could be found to adopt.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// The cgroup path is not absolute, leaves the mount with `..`, or is the root cgroup.
    #[error(
        "invalid cgroup path {path:?}: {reason}; give an absolute path below the root, as in \
         /proc/PID/cgroup (e.g. /system.slice/nginx.service)"
    )]
    InvalidCgroupPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The cgroup's `cgroup.procs` could not be read (for instance, the cgroup does not exist).
    #[error("cannot list the processes of cgroup {path}: {source}")]
    ReadCgroup {
        /// The `cgroup.procs` file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The pid file could not be read.
    #[error("cannot read pid file {path}: {source}")]
    ReadPidFile {
        /// The pid file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The pid file does not hold a process ID. What it holds is never shown: it might be
    /// another file's secret.
    #[error("pid file {path} does not hold a process ID")]
    InvalidPidFile {
        /// The pid file.
        path: PathBuf,
    },
    /// The pid file is not one corral reads.
    #[error("pid file {path} is refused: {reason}")]
    RefusedPidFile {
        /// The pid file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The pid file names a process that is not running.
    #[error("pid file {path} names process {pid}, which is not running (stale pid file?)")]
    NotRunning {
        /// The pid file.
        path: PathBuf,
        /// The process ID it holds.
        pid: u32,
    },
}

/// The processes in cgroup `cgroup_path` of the hierarchy mounted at `controller_mount`.
///
/// `cgroup_path` is absolute relative to the mount, as in `/proc/PID/cgroup`
/// (`/system.slice/nginx.service`). Paths with `..` components are rejected, and so is `/`:
/// adopting the root cgroup would adopt every process of the node, this one included.
pub fn pids_in_cgroup(controller_mount: &Path, cgroup_path: &str) -> Result<Vec<u32>, AdoptError> {
    let relative =
        relative_cgroup_path(cgroup_path).map_err(|reason| AdoptError::InvalidCgroupPath {
            path: cgroup_path.to_owned(),
            reason,
        })?;
    let path = controller_mount.join(relative).join("cgroup.procs");
    procs(&path).map_err(|source| AdoptError::ReadCgroup { path, source })
}

/// `cgroup_path` without its leading `/`, or why it is not acceptable.
fn relative_cgroup_path(cgroup_path: &str) -> Result<&Path, &'static str> {
    let relative = cgroup_path
        .strip_prefix('/')
        .ok_or("it must start with /")?;
    let relative = Path::new(relative);
    let mut normal = 0;
    for component in relative.components() {
        match component {
            Component::Normal(_) => normal += 1,
            Component::CurDir => {}
            _ => return Err("it must not contain .."),
        }
    }
    if normal == 0 {
        return Err("it names the root cgroup");
    }
    Ok(relative)
}

/// The process ID in the pid file at `path` (surrounding whitespace ignored), provided that
/// process is running. `owner_allowed` says which owners of the file are trusted (the
/// tenant's users, or root).
///
/// The file is opened without following a symbolic link anywhere in its path (where the
/// kernel offers `openat2`; else the last component only), without blocking on a FIFO or
/// device, and must be a regular file of at most [`PID_FILE_MAX`] bytes: a pid file can be
/// neither a way to read another file nor to stall the agent. Its content never appears in
/// an error.
///
/// # Errors
/// See [`AdoptError`].
pub fn pid_from_file(path: &Path, owner_allowed: impl Fn(u32) -> bool) -> Result<u32, AdoptError> {
    use std::os::unix::fs::MetadataExt;
    let read_error = |source| AdoptError::ReadPidFile {
        path: path.to_owned(),
        source,
    };
    let file = open_no_symlinks(path).map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    let refuse = |reason: String| AdoptError::RefusedPidFile {
        path: path.to_owned(),
        reason,
    };
    if !meta.file_type().is_file() {
        return Err(refuse("it is not a regular file".into()));
    }
    if meta.len() > PID_FILE_MAX {
        return Err(refuse(format!(
            "it is larger than {PID_FILE_MAX} bytes, more than a process ID"
        )));
    }
    if !owner_allowed(meta.uid()) {
        return Err(refuse(format!(
            "it belongs to user {}, neither root nor a user the tenant may use",
            meta.uid()
        )));
    }
    let mut bytes = Vec::new();
    file.take(PID_FILE_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    let pid = std::str::from_utf8(&bytes)
        .ok()
        .and_then(parse_pid)
        .ok_or_else(|| AdoptError::InvalidPidFile {
            path: path.to_owned(),
        })?;
    if read_stat(pid).is_ok_and(|stat| !stat.has_exited()) {
        Ok(pid)
    } else {
        Err(AdoptError::NotRunning {
            path: path.to_owned(),
            pid,
        })
    }
}

/// Opens `path` for reading with no symbolic link followed in any component (`openat2` with
/// `RESOLVE_NO_SYMLINKS`), falling back to `O_NOFOLLOW` on kernels before 5.6; never blocks.
fn open_no_symlinks(path: &Path) -> io::Result<fs::File> {
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let flags =
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: `open_how` is plain integers, for which all zeroes is valid (mode 0).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = u64::try_from(flags).unwrap_or_default();
    how.resolve = libc::RESOLVE_NO_SYMLINKS;
    // SAFETY: a valid path and `open_how` that outlive the call; the returned descriptor is
    // owned by the File below and nowhere else.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            &how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd >= 0 {
        // SAFETY: the descriptor was just opened and is owned by nothing else.
        return Ok(unsafe { fs::File::from_raw_fd(i32::try_from(fd).unwrap_or(-1)) });
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() != Some(libc::ENOSYS) {
        return Err(error);
    }
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

/// A positive process ID surrounded by optional whitespace.
fn parse_pid(contents: &str) -> Option<u32> {
    contents.trim().parse().ok().filter(|&pid| pid > 0)
}

/// The running processes whose command line (arguments joined by spaces) matches `pattern`,
/// sorted.
///
/// Never returns kernel threads (they have no command line), zombies, the calling process or
/// its ancestors (whose command lines often contain the pattern itself), nor any PID in
/// `exclude`. Processes that exit during the scan are skipped.
pub fn pids_matching(pattern: &Regex, exclude: &[u32]) -> Vec<u32> {
    let skip: BTreeSet<u32> = exclude
        .iter()
        .copied()
        .chain(self_and_ancestors())
        .collect();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid| !skip.contains(pid))
        .filter(|pid| {
            read_bounded(Path::new(&format!("/proc/{pid}/cmdline")), CMDLINE_MAX)
                .ok()
                .and_then(|raw| command_line(&raw))
                .is_some_and(|line| pattern.is_match(&line))
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// What adoption needs to know of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// A kernel thread (`PF_KTHREAD`).
    pub kernel_thread: bool,
    /// Its real, effective, saved and filesystem user IDs.
    pub uids: Vec<u32>,
    /// The executable it runs, when readable.
    pub exe: Option<PathBuf>,
}

/// What adoption needs to know of `pid`; `None` when it is gone or unreadable.
pub fn facts(pid: u32) -> Option<Facts> {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let stat = String::from_utf8_lossy(
        &read_bounded(Path::new(&format!("/proc/{pid}/stat")), STAT_MAX).ok()?,
    )
    .into_owned();
    let (_, rest) = stat.rsplit_once(')')?;
    // Field 9, the flags; `rest` starts at field 3.
    let flags: u64 = rest.split_whitespace().nth(6)?.parse().ok()?;
    let status = String::from_utf8_lossy(
        &read_bounded(Path::new(&format!("/proc/{pid}/status")), STAT_MAX * 4).ok()?,
    )
    .into_owned();
    let uids = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .filter_map(|u| u.parse().ok())
        .collect();
    Some(Facts {
        kernel_thread: flags & PF_KTHREAD != 0,
        uids,
        exe: fs::read_link(format!("/proc/{pid}/exe")).ok(),
    })
}

/// The calling process and every ancestor up to PID 1.
pub fn self_and_ancestors() -> Vec<u32> {
    let mut chain = vec![std::process::id()];
    while let Some(&pid) = chain.last() {
        match read_stat(pid) {
            Ok(stat) if stat.ppid > 0 && !chain.contains(&stat.ppid) => chain.push(stat.ppid),
            _ => break,
        }
    }
    chain
}

/// The command line in `/proc/PID/cmdline` format (NUL-terminated arguments) with the
/// arguments joined by spaces; `None` when empty, as for kernel threads and zombies.
fn command_line(raw: &[u8]) -> Option<String> {
    let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
    if raw.is_empty() {
        return None;
    }
    let joined: Vec<u8> = raw
        .iter()
        .map(|&byte| if byte == 0 { b' ' } else { byte })
        .collect();
    Some(String::from_utf8_lossy(&joined).into_owned())
}

/// Delays between restarts of a process that keeps exiting: 1 s, doubling up to 5 min, back
/// to 1 s once the process has run for 10 min.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    /// The first delay, and the delay after a run long enough to reset.
    pub const INITIAL: Duration = Duration::from_secs(1);
    /// The longest delay.
    pub const MAX: Duration = Duration::from_secs(5 * 60);
    /// A run at least this long counts as healthy and resets the delay.
    pub const RESET_AFTER: Duration = Duration::from_secs(10 * 60);

    /// How long to wait before restarting a process that exited after running for `ran_for`.
    pub fn next_delay(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= Self::RESET_AFTER {
            self.next = Self::INITIAL;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Self::INITIAL,
        }
    }
}

/// How a process ended, for reports. Displays as `exited with code 1` or
/// `killed by SIGKILL`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ExitStatusInfo {
    /// It exited by itself with this code.
    Exited {
        /// The exit code, 0 to 255.
        code: i32,
    },
    /// A signal ended it.
    #[serde(rename_all = "camelCase")]
    Killed {
        /// The signal's name (`SIGKILL`), or `signal N` for one without a name.
        signal: String,
        /// Whether it left a core dump.
        core_dumped: bool,
    },
    /// A stopped or continued status, which waiting for an exit never returns; kept so that
    /// every `ExitStatus` converts.
    #[serde(rename_all = "camelCase")]
    Other {
        /// The raw wait status.
        wait_status: i32,
    },
}

impl From<ExitStatus> for ExitStatusInfo {
    fn from(status: ExitStatus) -> Self {
        if let Some(code) = status.code() {
            ExitStatusInfo::Exited { code }
        } else if let Some(number) = status.signal() {
            ExitStatusInfo::Killed {
                signal: signal_name(number),
                core_dumped: status.core_dumped(),
            }
        } else {
            ExitStatusInfo::Other {
                wait_status: status.into_raw(),
            }
        }
    }
}

fn signal_name(number: i32) -> String {
    Signal::try_from(number).map_or_else(|_| format!("signal {number}"), |s| s.as_str().into())
}

impl fmt::Display for ExitStatusInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatusInfo::Exited { code } => write!(f, "exited with code {code}"),
            ExitStatusInfo::Killed {
                signal,
                core_dumped,
            } => {
                write!(f, "killed by {signal}")?;
                if *core_dumped {
                    f.write_str(" (core dumped)")?;
                }
                Ok(())
            }
            ExitStatusInfo::Other { wait_status } => {
                write!(f, "ended with wait status {wait_status:#x}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_five_minutes() {
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..12)
            .map(|_| backoff.next_delay(Duration::from_secs(3)).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }

    #[test]
    fn backoff_resets_after_ten_minutes_of_running() {
        let mut backoff = Backoff::default();
        for _ in 0..5 {
            backoff.next_delay(Duration::ZERO);
        }
        assert_eq!(
            backoff.next_delay(Duration::from_secs(599)),
            Duration::from_secs(32)
        );
        assert_eq!(
            backoff.next_delay(Duration::from_secs(600)),
            Duration::from_secs(1)
        );
        assert_eq!(backoff.next_delay(Duration::ZERO), Duration::from_secs(2));
    }

    #[test]
    fn exit_status_describes_code_signal_and_core_dump() {
        let exited = ExitStatusInfo::from(ExitStatus::from_raw(1 << 8));
        assert_eq!(exited, ExitStatusInfo::Exited { code: 1 });
        assert_eq!(exited.to_string(), "exited with code 1");

        let killed = ExitStatusInfo::from(ExitStatus::from_raw(libc::SIGKILL));
        assert_eq!(killed.to_string(), "killed by SIGKILL");

        let dumped = ExitStatusInfo::from(ExitStatus::from_raw(libc::SIGSEGV | 0x80));
        assert_eq!(dumped.to_string(), "killed by SIGSEGV (core dumped)");

        let realtime = ExitStatusInfo::from(ExitStatus::from_raw(libc::SIGRTMIN() + 1));
        assert_eq!(
            realtime.to_string(),
            format!("killed by signal {}", libc::SIGRTMIN() + 1)
        );

        // A stopped status (0x7f in the low byte), which waiting for an exit never returns.
        let stopped = ExitStatusInfo::from(ExitStatus::from_raw((libc::SIGSTOP << 8) | 0x7f));
        assert!(matches!(stopped, ExitStatusInfo::Other { .. }));
    }

    #[test]
    fn exit_status_serializes_for_reports() {
        let killed = ExitStatusInfo::Killed {
            signal: "SIGTERM".into(),
            core_dumped: false,
        };
        let json = serde_json::to_value(&killed).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"killed": {"signal": "SIGTERM", "coreDumped": false}})
        );
        assert_eq!(
            serde_json::from_value::<ExitStatusInfo>(json).unwrap(),
            killed
        );
        assert_eq!(
            serde_json::to_value(ExitStatusInfo::Exited { code: 3 }).unwrap(),
            serde_json::json!({"exited": {"code": 3}})
        );
    }

    #[test]
    fn command_line_joins_arguments_with_spaces() {
        assert_eq!(
            command_line(b"sleep\x003600\0").as_deref(),
            Some("sleep 3600")
        );
        assert_eq!(
            command_line(b"sh\0-c\0echo a  b\0").as_deref(),
            Some("sh -c echo a  b")
        );
        // A process that rewrote its command line may drop the final NUL.
        assert_eq!(
            command_line(b"nginx: master process").as_deref(),
            Some("nginx: master process")
        );
        assert_eq!(command_line(b""), None);
        assert_eq!(command_line(b"\0"), None);
    }

    #[test]
    fn pid_file_contents_are_trimmed_and_checked() {
        assert_eq!(parse_pid("1234\n"), Some(1234));
        assert_eq!(parse_pid("  42 \t\n"), Some(42));
        assert_eq!(parse_pid(""), None);
        assert_eq!(parse_pid("0\n"), None);
        assert_eq!(parse_pid("-5"), None);
        assert_eq!(parse_pid("12 34"), None);
        assert_eq!(parse_pid("nginx"), None);
    }

    #[test]
    fn stat_is_parsed_after_the_last_parenthesis() {
        let line = "4242 (we ird) (name)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 \
                    1 0 987654 1000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: 'S',
                ppid: 1,
                start_time: 987654
            })
        );
        assert_eq!(parse_stat("4242 (truncated) S 1"), None);
        assert!(
            parse_stat(&line.replace(") S ", ") Z "))
                .unwrap()
                .has_exited()
        );
    }

    #[test]
    fn cgroup_paths_must_be_absolute_and_below_the_root() {
        assert_eq!(
            relative_cgroup_path("/system.slice/nginx.service"),
            Ok(Path::new("system.slice/nginx.service"))
        );
        assert!(relative_cgroup_path("system.slice").is_err());
        assert!(relative_cgroup_path("/a/../../etc").is_err());
        assert!(relative_cgroup_path("/..").is_err());
        assert!(relative_cgroup_path("/").is_err());
        assert!(relative_cgroup_path("/./").is_err());
    }
}
