//! `corral` run as a person runs it, against a manifest directory, a state directory and a
//! cgroup root of the test's own.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

use super::cgroups::{remove_tree, unique};

/// A ResourcePolicy of the Priority strategy and nothing else.
pub const POLICY: &str = "apiVersion: corral.dev/v1alpha1\nkind: ResourcePolicy\nmetadata: {name: local}\nspec: {strategy: Priority}\n";

/// Workload `test/NAME`: one replica of `sleep 600` that requests 10m and 8Mi, limited to
/// `cpu_limit` and `memory_limit`, with a 2 s grace period.
pub fn workload(name: &str, cpu_limit: &str, memory_limit: &str) -> String {
    format!(
        "apiVersion: corral.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {name}, namespace: test}}\n\
         spec:\n  resources:\n    requests: {{cpu: 10m, memory: 8Mi}}\n    \
         limits: {{cpu: {cpu_limit}, memory: {memory_limit}}}\n  \
         terminationGracePeriodSeconds: 2\n  command: {{args: [sleep, \"600\"]}}\n"
    )
}

/// A manifest directory, a state directory and a cgroup root of the test's own; on drop,
/// any `corral run` it started is killed and `corral down` (then a forced sweep of the
/// root below each of `hierarchies`) cleans up.
pub struct Cli {
    /// The cgroup mounts the root is made below: the v2 mount, or a v1 hierarchy per
    /// controller.
    pub hierarchies: Vec<PathBuf>,
    pub manifests: tempfile::TempDir,
    pub state: tempfile::TempDir,
    /// `--cgroup-root`, a unique name from `prefix`.
    pub root: String,
    pub run: Option<Child>,
}

impl Cli {
    /// Empty manifest and state directories and a root named from `prefix` below
    /// `hierarchies`.
    pub fn under(prefix: &str, hierarchies: Vec<PathBuf>) -> Cli {
        Cli {
            hierarchies,
            manifests: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
            root: unique(prefix),
            run: None,
        }
    }

    pub fn write(&self, name: &str, text: &str) {
        // As editors do: a new file renamed over the old one.
        let tmp = self.manifests.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.manifests.path().join(name)).unwrap();
    }

    /// `COMMAND --state-dir STATE --cgroup-root ROOT`.
    pub fn args(&self, command: &str) -> Vec<String> {
        vec![
            command.to_string(),
            "--state-dir".into(),
            self.state.path().to_string_lossy().into_owned(),
            "--cgroup-root".into(),
            self.root.clone(),
        ]
    }

    pub fn corral(&self, command: &str, extra: &[&str]) -> Output {
        let mut args = self.args(command);
        args.extend(extra.iter().map(ToString::to_string));
        Command::new(env!("CARGO_BIN_EXE_corral"))
            .args(&args)
            .output()
            .unwrap()
    }

    /// Starts `corral run` on the manifest directory, in the background.
    pub fn start(&mut self) {
        self.start_with_resync("30");
    }

    /// The same, re-reading the cgroup tree (and reporting use) every `resync` seconds.
    pub fn start_with_resync(&mut self, resync: &str) {
        let mut args = self.args("run");
        args.extend([
            "-f".into(),
            self.manifests.path().to_string_lossy().into_owned(),
            "--ui".into(),
            "log".into(),
            "--resync".into(),
            resync.into(),
        ]);
        self.run = Some(
            Command::new(env!("CARGO_BIN_EXE_corral"))
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }

    /// Stops the `corral run` that [`Cli::start`] started with SIGTERM, and waits for it.
    pub fn stop(&mut self) -> Output {
        let child = self.run.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        child.wait_with_output().unwrap()
    }

    /// `corral status -o json`, which must succeed.
    pub fn status(&self) -> Value {
        let output = self.corral("status", &["-o", "json"]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        if let Some(mut child) = self.run.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.corral("down", &[]);
        for hierarchy in &self.hierarchies {
            remove_tree(&hierarchy.join(&self.root));
        }
    }
}
