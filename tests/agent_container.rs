//! corral in a container, as the chart runs the agent, on this machine's cgroup v1.
//!
//! When a container stops, its runtime kills every process in the container's groups, in
//! whichever hierarchy it looks: runc through `devices` and `freezer`, systemd through
//! `name=systemd`. A replica left in the agent container's group of any hierarchy died
//! with every agent restart. Here a "container" is a group of the test's own in every
//! hierarchy this machine mounts; `corral run` starts in it, and "stopping the container"
//! kills every process its groups hold in any hierarchy, more than any one runtime does.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

mod common;

use common::cgroups::{gone, hierarchies, procs, remove_tree, unique};
use common::cli::{Cli, POLICY};
use common::wait::wait_until;

/// A group named alike in every hierarchy, standing for a container's groups.
struct Container {
    dirs: Vec<PathBuf>,
}

impl Container {
    fn new() -> Container {
        let name = unique("corral-ctr");
        let mut container = Container { dirs: Vec::new() };
        for hierarchy in hierarchies() {
            let dir = hierarchy.join(&name);
            std::fs::create_dir(&dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
            // Registered at once, so that a failure below still removes it.
            container.dirs.push(dir.clone());
            // A new cpuset group has no CPUs: nothing could join it.
            for file in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(value) = std::fs::read_to_string(hierarchy.join(file)) {
                    std::fs::write(dir.join(file), value.trim()).unwrap();
                }
            }
        }
        container
    }

    /// `corral ARGS` started inside the container: the child joins its groups before exec.
    fn spawn(&self, args: &[String]) -> Child {
        let files: Vec<std::ffi::CString> = self
            .dirs
            .iter()
            .map(|d| {
                std::ffi::CString::new(d.join("cgroup.procs").into_os_string().into_encoded_bytes())
                    .unwrap()
            })
            .collect();
        let mut command = Command::new(env!("CARGO_BIN_EXE_corral"));
        command
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: between fork and exec, only open/write/close system calls on strings
        // made before the fork.
        unsafe {
            command.pre_exec(move || {
                for file in &files {
                    let fd = libc::open(file.as_ptr(), libc::O_WRONLY);
                    if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(fd);
                }
                Ok(())
            });
        }
        command.spawn().unwrap()
    }

    /// Every process the container's groups (and groups below them) hold, in any
    /// hierarchy.
    fn processes(&self) -> Vec<u32> {
        fn walk(dir: &Path, out: &mut Vec<u32>) {
            out.extend(procs(dir));
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&entry.path(), out);
                }
            }
        }
        let mut out = Vec::new();
        for dir in &self.dirs {
            walk(dir, &mut out);
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// What a runtime does when the container stops: SIGKILL to every process in it,
    /// until none is left. Returns the processes killed.
    fn stop(&self) -> Vec<u32> {
        let mut killed = Vec::new();
        for _ in 0..100 {
            let left: Vec<u32> = self.processes().into_iter().filter(|&p| !gone(p)).collect();
            if left.is_empty() {
                break;
            }
            for pid in left {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                killed.push(pid);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        killed.sort_unstable();
        killed.dedup();
        killed
    }

    fn holds(&self, pid: u32) -> bool {
        self.processes().contains(&pid)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        for dir in &self.dirs {
            remove_tree(dir);
        }
    }
}

/// Workload `test/NAME` running `script` under `sh -c`.
fn workload(name: &str, script: &str) -> String {
    format!(
        "apiVersion: corral.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {name}, namespace: test}}\n\
         spec:\n  resources:\n    requests: {{cpu: 10m, memory: 8Mi}}\n    \
         limits: {{cpu: 100m, memory: 32Mi}}\n  \
         terminationGracePeriodSeconds: 2\n  command: {{args: [sh, -c, {script:?}]}}\n"
    )
}

/// Each replica's name and process, once all `count` run.
fn running(setup: &Cli, count: usize) -> Vec<(String, u32)> {
    let mut found = Vec::new();
    wait_until(
        &format!("{count} replicas running"),
        Duration::from_secs(60),
        || {
            let output = setup.corral("status", &["-o", "json"]);
            let Ok(status) = serde_json::from_slice::<Value>(&output.stdout) else {
                return false;
            };
            found = status["replicas"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["report"]["process"]["state"] == "Running")
                .filter_map(|r| {
                    let pid = r["report"]["process"]["pid"].as_u64()?;
                    Some((
                        r["workload"].as_str()?.to_string(),
                        u32::try_from(pid).ok()?,
                    ))
                })
                .collect();
            found.sort();
            found.len() == count
        },
    );
    found
}

/// The `corral run` arguments of `setup`, in the foreground with log output.
fn run_args(setup: &Cli) -> Vec<String> {
    let mut args = setup.args("run");
    args.extend([
        "-f".to_string(),
        setup.manifests.path().to_string_lossy().into_owned(),
        "--ui".into(),
        "log".into(),
    ]);
    args
}

/// The group of `pid` in each hierarchy, as /proc/PID/cgroup lists it.
fn groups_of(pid: u32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn replicas_outlive_the_container_corral_runs_in_and_the_next_corral_takes_them_over() {
    let mut setup = Cli::under("corral-ctrtest", hierarchies());
    setup.write("policy.yaml", POLICY);
    setup.write("a.yaml", &workload("a", "exec sleep 600"));
    // A replica that tries a device outside corral's list, and one inside it.
    setup.write(
        "b.yaml",
        &workload(
            "b",
            "if true </dev/net/tun; then echo tun-opened; else echo tun-refused; fi; \
             head -c 1 /dev/urandom >/dev/null && echo urandom-read; exec sleep 600",
        ),
    );
    let first = Container::new();
    setup.run = Some(first.spawn(&run_args(&setup)));
    let before = running(&setup, 2);
    let pids: Vec<u32> = before.iter().map(|(_, pid)| *pid).collect();

    // Out of the container in every hierarchy, into corral's root in each.
    let root = format!("/{}/", setup.root);
    for &pid in &pids {
        assert!(
            !first.holds(pid),
            "replica {pid} is in the container's groups"
        );
        let groups = groups_of(pid);
        assert_eq!(groups.len(), hierarchies().len(), "{groups:?}");
        for line in &groups {
            assert!(
                line.contains(&root),
                "replica {pid}: {line} is not below {root}"
            );
        }
    }

    // corral's device list, inherited by every replica's group, and enforced.
    let devices = hierarchies()
        .into_iter()
        .find(|h| h.ends_with("devices"))
        .expect("this test needs the v1 devices hierarchy this machine mounts");
    let list =
        std::fs::read_to_string(devices.join(&setup.root).join("test/b.0/devices.list")).unwrap();
    let mut list: Vec<&str> = list.lines().collect();
    list.sort_unstable();
    let mut allowed = corral::cgroup::others::ALLOWED.to_vec();
    allowed.sort_unstable();
    assert_eq!(list, allowed);
    let log = setup.state.path().join("logs/test.b.0.log");
    wait_until(
        "b to report on its devices",
        Duration::from_secs(10),
        || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("urandom-read")),
    );
    let output = std::fs::read_to_string(&log).unwrap();
    assert!(
        output.contains("tun-refused") && !output.contains("tun-opened"),
        "{output}"
    );

    // An older corral left its replicas in its own groups of the hierarchies it set nothing
    // in. The next corral moves them out.
    let run = setup.run.take().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let ended = run.wait_with_output().unwrap();
    assert!(
        ended.status.success(),
        "{}",
        String::from_utf8_lossy(&ended.stderr)
    );
    let a = before[0].1;
    for dir in first.dirs.iter().filter(|d| {
        ["devices", "freezer", "systemd"]
            .iter()
            .any(|h| d.parent().unwrap().ends_with(h))
    }) {
        std::fs::write(dir.join("cgroup.procs"), a.to_string()).unwrap();
    }
    assert!(first.holds(a));
    let second = Container::new();
    setup.run = Some(second.spawn(&run_args(&setup)));
    wait_until(
        "the older corral's replica moved out",
        Duration::from_secs(30),
        || !first.holds(a),
    );
    assert_eq!(running(&setup, 2), before, "the same processes, taken over");

    // Both containers stop, as a runtime stops them: the replicas live on.
    let killed = [first.stop(), second.stop()].concat();
    assert!(!killed.is_empty(), "corral ran in the second container");
    if let Some(mut run) = setup.run.take() {
        let _ = run.wait();
    }
    std::thread::sleep(Duration::from_millis(500));
    for &pid in &pids {
        assert!(!killed.contains(&pid), "replica {pid} was in a container");
        assert!(!gone(pid), "replica {pid} died with the container");
    }

    // The next corral takes the same processes over and starts nothing.
    let third = Container::new();
    let run = third.spawn(&run_args(&setup));
    let pid = u64::from(run.id());
    setup.run = Some(run);
    let mut status = Value::Null;
    wait_until(
        "the third corral's first pass",
        Duration::from_secs(60),
        || {
            let output = setup.corral("status", &["-o", "json"]);
            status = serde_json::from_slice(&output.stdout).unwrap_or_default();
            status["run"]["pid"].as_u64() == Some(pid)
                && status["run"]["agent"]["passes"].as_u64() > Some(0)
        },
    );
    assert_eq!(running(&setup, 2), before, "the same processes, taken over");
    assert_eq!(status["run"]["agent"]["starts"], 0, "{status:#}");
}
