//! The state directory of `corral run` (default `/var/lib/corral`): the embedded lease
//! store, the supervisor's records, the workloads' output, the run lock and the latest
//! status summary.
//!
//! ```text
//! <state>/store/        leases, reports, registrations (lease::embedded)
//! <state>/agent/        process records per node (agent::supervisor)
//! <state>/logs/         each replica's stdout and stderr
//! <state>/run.lock      held by the running `corral run`
//! <state>/status.json   pending replicas and counters, for `corral status`
//! <state>/corral.log    corral's own log while the live table owns the terminal
//! <state>/cgroup-root.json  the cgroup root the last run or agent managed, for `down`
//! ```
//!
//! The directory holds tenants' environment values and output, so it is private: created
//! 0700, refused when another user owns it or group or others may write it (they could
//! plant a symbolic link corral would then write through), and every file is created
//! 0600 and opened without following a symbolic link ([`private`]).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::agent::node::AgentStats;
use crate::alloc::plan::Pending;

/// What `corral run` last knew, for `corral status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunStatus {
    /// The node.
    pub node: String,
    /// The process of `corral run`.
    pub pid: u32,
    /// Unix seconds of the last update.
    pub updated_at: u64,
    /// Replicas without a node, with the reason.
    pub pending: Vec<Pending>,
    /// The agent's counters.
    pub agent: AgentStats,
    /// Problems in the manifests, if the last edit broke them (the previous version is kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manifest_problems: Vec<String>,
    /// Where each command workload's rollout stands.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollouts: Vec<crate::controller::rollout::Rollout>,
}

/// Paths inside a state directory.
#[derive(Clone, Debug)]
pub struct StateDir(pub PathBuf);

impl StateDir {
    /// The status summary's path.
    pub fn status_file(&self) -> PathBuf {
        self.0.join("status.json")
    }

    /// Writes the status summary atomically.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write_status(&self, status: &RunStatus) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(status).map_err(std::io::Error::other)?;
        private::write_atomic(
            &self.status_file(),
            text.as_bytes(),
            private::Durability::Atomic,
        )
    }

    /// Reads the status summary; `None` when there is none.
    pub fn read_status(&self) -> Option<RunStatus> {
        let text = std::fs::read_to_string(self.status_file()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Takes the run lock, which one `corral run` holds while it runs.
    ///
    /// # Errors
    /// Another process holds it (the message names its PID), or the file cannot be opened.
    pub fn lock_run(&self) -> Result<RunLock, String> {
        private::ensure_dir(&self.0, true).map_err(|e| e.to_string())?;
        let path = self.0.join("run.lock");
        let mut file = private::open(&path, private::Mode::ReadWrite)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(mut locked) => {
                let _ = locked.set_len(0);
                let _ = locked.rewind();
                let _ = write!(locked, "{}", std::process::id());
                Ok(RunLock { _file: locked })
            }
            Err(_) => Err(format!(
                "another corral (pid {}) is using {}",
                holder.trim(),
                self.0.display()
            )),
        }
    }

    /// The PID of the `corral run` holding the lock, if one does.
    pub fn running_pid(&self) -> Option<u32> {
        let path = self.0.join("run.lock");
        let file = File::options()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .ok()?;
        let mut holder = String::new();
        let _ = (&file).read_to_string(&mut holder);
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock) {
            Ok(_) => None,
            Err(_) => holder.trim().parse().ok(),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Records the cgroup root a `corral run` or `corral agent` manages, so that
    /// `corral down` finds it without being told (it may be `self`, the group of a unit).
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn record_cgroup_root(&self, root: &crate::cgroup::root::Root) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(root).map_err(std::io::Error::other)?;
        private::write_atomic(
            &self.0.join("cgroup-root.json"),
            &bytes,
            private::Durability::Atomic,
        )
    }

    /// The cgroup root recorded by the last `corral run` or `corral agent`.
    pub fn recorded_cgroup_root(&self) -> Option<crate::cgroup::root::Root> {
        let mut text = String::new();
        File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.0.join("cgroup-root.json"))
            .ok()?
            .take(4096)
            .read_to_string(&mut text)
            .ok()?;
        let root: crate::cgroup::root::Root = serde_json::from_str(&text).ok()?;
        crate::cgroup::root::check_name(&root.path).ok()?;
        Some(root)
    }
}

/// The run lock, released when dropped.
#[derive(Debug)]
pub struct RunLock {
    _file: nix::fcntl::Flock<File>,
}

/// Private directories and files: the only way corral writes below a state directory.
pub mod private {
    use std::fs::{File, OpenOptions};
    use std::io::{self, Write};
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
    use std::path::Path;

    /// How a file is opened.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Mode {
        /// Read and write, created if missing, never truncated.
        ReadWrite,
        /// Appended to, created if missing.
        Append,
    }

    /// Creates `dir` with mode 0700 if it is missing, then checks it is a directory owned by
    /// this user that neither group nor others may write. `top`: the state directory itself,
    /// which may be reached through a symbolic link an administrator made; a directory
    /// inside it may not be a link at all.
    ///
    /// # Errors
    /// It cannot be created, or fails a check; the message names the path and what to do.
    pub fn ensure_dir(dir: &Path, top: bool) -> io::Result<()> {
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) if top && e.kind() == io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(dir.parent().unwrap_or(Path::new("/")))?;
                std::fs::DirBuilder::new().mode(0o700).create(dir)?;
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot create {}: {e}", dir.display()),
                ));
            }
        }
        let meta = if top {
            std::fs::metadata(dir)?
        } else {
            std::fs::symlink_metadata(dir)?
        };
        let refuse = |why: String| {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "refusing the state directory {}: {why}; it holds tenants' environment values and output",
                    dir.display()
                ),
            ))
        };
        if !meta.is_dir() {
            return refuse("it is not a directory (a symbolic link is refused inside it)".into());
        }
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            return refuse(format!(
                "it belongs to user {}, not to this user ({me}); remove it or chown it",
                meta.uid()
            ));
        }
        if meta.mode() & 0o022 != 0 {
            return refuse(format!(
                "group or others may write it (mode {:o}); chmod 700 it",
                meta.mode() & 0o7777
            ));
        }
        Ok(())
    }

    /// Creates `dir` and what is missing above it, 0700, then checks it as [`ensure_dir`]
    /// checks a directory inside the state directory.
    ///
    /// # Errors
    /// It cannot be created, or fails a check.
    pub fn create_dir(dir: &Path) -> io::Result<()> {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        ensure_dir(dir, false)
    }

    /// Opens a file in a checked directory: created 0600 if missing, never through a
    /// symbolic link, never blocking on a FIFO.
    ///
    /// # Errors
    /// The file cannot be opened, or is a symbolic link.
    pub fn open(path: &Path, mode: Mode) -> io::Result<File> {
        let mut options = OpenOptions::new();
        match mode {
            Mode::ReadWrite => options.read(true).write(true),
            Mode::Append => options.append(true),
        };
        options
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
    }

    /// How much a write must survive.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Durability {
        /// Synced to disk before the rename: it survives a crash of the machine (leases).
        Synced,
        /// Whole or not at all after a crash of corral, and cheap (summaries, records).
        Atomic,
    }

    /// Replaces `path` with `bytes` atomically: a new 0600 file beside it (created
    /// exclusively, never through a link), synced when `durability` asks, then renamed
    /// over it.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write_atomic(path: &Path, bytes: &[u8], durability: Durability) -> io::Result<()> {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = path.with_file_name(format!(".{name}.tmp"));
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        file.write_all(bytes)?;
        if durability == Durability::Synced {
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    }

    /// Makes an existing file private (0600), as older corrals left them 0644.
    ///
    /// # Errors
    /// The mode cannot be changed.
    pub fn tighten(path: &Path) -> io::Result<()> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_file() && meta.mode() & 0o077 != 0 => {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            }
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_run_per_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir(dir.path().to_path_buf());
        assert_eq!(state.running_pid(), None);
        let lock = state.lock_run().unwrap();
        assert_eq!(state.running_pid(), Some(std::process::id()));
        let refused = state.lock_run().unwrap_err();
        assert!(
            refused.contains(&format!("pid {}", std::process::id())),
            "{refused}"
        );
        drop(lock);
        assert_eq!(state.running_pid(), None);
        assert!(state.lock_run().is_ok());
    }

    #[test]
    fn status_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir(dir.path().to_path_buf());
        assert_eq!(state.read_status(), None);
        let status = RunStatus {
            node: "n".into(),
            pid: 7,
            ..RunStatus::default()
        };
        state.write_status(&status).unwrap();
        assert_eq!(state.read_status(), Some(status));
    }
}

#[cfg(test)]
mod private_tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::private::{self, Mode};

    #[test]
    fn directories_are_created_private_and_refused_when_others_may_write() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        private::ensure_dir(&state, true).unwrap();
        assert_eq!(std::fs::metadata(&state).unwrap().mode() & 0o777, 0o700);
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = private::ensure_dir(&state, true).unwrap_err().to_string();
        assert!(
            error.contains("group or others may write it (mode 777)"),
            "{error}"
        );
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        let other = tmp.path().join("other");
        std::fs::create_dir(&other).unwrap();
        nix::unistd::chown(&other, Some(nix::unistd::Uid::from_raw(4242)), None).unwrap();
        let error = private::ensure_dir(&other, true).unwrap_err().to_string();
        assert!(error.contains("belongs to user 4242"), "{error}");
        let link = state.join("logs");
        std::os::unix::fs::symlink(tmp.path(), &link).unwrap();
        let error = private::ensure_dir(&link, false).unwrap_err().to_string();
        assert!(error.contains("not a directory"), "{error}");
    }

    #[test]
    fn files_are_private_and_never_written_through_a_link() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let planted = tmp.path().join("run.lock");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        assert!(private::open(&planted, Mode::ReadWrite).is_err());
        assert!(private::open(&planted, Mode::Append).is_err());
        let tmp_link = tmp.path().join(".status.json.tmp");
        std::os::unix::fs::symlink(&victim, &tmp_link).unwrap();
        private::write_atomic(
            &tmp.path().join("status.json"),
            b"{}",
            private::Durability::Atomic,
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let status = std::fs::metadata(tmp.path().join("status.json")).unwrap();
        assert_eq!(status.mode() & 0o777, 0o600);
        let log = tmp.path().join("a.log");
        private::open(&log, Mode::Append).unwrap();
        assert_eq!(std::fs::metadata(&log).unwrap().mode() & 0o777, 0o600);
    }
}
