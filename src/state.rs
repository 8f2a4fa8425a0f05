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
//! ```

use std::fs::File;
use std::io::{Read, Seek, Write};
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
        let tmp = self.0.join(".status.json.tmp");
        let text = serde_json::to_string_pretty(status).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.status_file())
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
        std::fs::create_dir_all(&self.0)
            .map_err(|e| format!("cannot create {}: {e}", self.0.display()))?;
        let path = self.0.join("run.lock");
        let mut file = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
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
        let file = File::options().read(true).write(true).open(&path).ok()?;
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
}

/// The run lock, released when dropped.
#[derive(Debug)]
pub struct RunLock {
    _file: nix::fcntl::Flock<File>,
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
