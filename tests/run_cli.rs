//! `corral run`, `status` and `down` as a person uses them, on this machine's cgroups:
//! converge once, take running workloads over after a restart, follow manifest edits,
//! keep the last valid manifests, stop on purpose, and refuse clearly without root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::cgroups::{gone, is_log_pump, procs};
use common::cli::{Cli as Setup, POLICY};
use common::wait::wait_until;

fn workload(name: &str, cpu_limit: &str) -> String {
    common::cli::workload(name, cpu_limit, "32Mi")
}

impl Setup {
    /// A root below every v1 hierarchy, the policy and workload `test/a` (200m).
    fn new() -> Setup {
        let setup = Setup::under("corral-clitest", common::cgroups::hierarchies());
        setup.write("policy.yaml", POLICY);
        setup.write("a.yaml", &workload("a", "200m"));
        setup
    }

    /// `corral top` on the state directory (it takes no cgroup root).
    fn top(&self, extra: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_corral"))
            .arg("top")
            .arg("--state-dir")
            .arg(self.state.path())
            .args(extra)
            .output()
            .unwrap()
    }

    fn run_once(&self) -> Output {
        let dir = self.manifests.path().to_string_lossy().into_owned();
        self.corral("run", &["-f", &dir, "--once"])
    }

    fn group_dir(&self, controller: &str, name: &str) -> PathBuf {
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(&self.root)
            .join("test")
            .join(format!("{name}.0"))
    }

    fn knob(&self, controller: &str, name: &str, knob: &str) -> Option<String> {
        std::fs::read_to_string(self.group_dir(controller, name).join(knob))
            .ok()
            .map(|s| s.trim().to_string())
    }
}

fn pids(status: &Value) -> Vec<u64> {
    status["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["report"]["process"]["pid"].as_u64())
        .collect()
}

#[test]
fn run_once_converges_and_a_second_run_takes_the_workloads_over() {
    let setup = Setup::new();
    let first = setup.run_once();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let table = String::from_utf8(first.stdout).unwrap();
    assert!(
        table.contains("test/a") && table.contains("Running (pid"),
        "{table}"
    );
    assert_eq!(
        setup.knob("cpu", "a", "cpu.cfs_quota_us").as_deref(),
        Some("20000")
    );
    let before = pids(&setup.status());
    assert_eq!(before.len(), 1);

    let second = setup.run_once();
    assert!(second.status.success());
    let status = setup.status();
    assert_eq!(pids(&status), before, "the same process, not a new one");
    assert_eq!(status["run"]["agent"]["starts"], 0);
    assert_eq!(
        status["run"]["agent"]["writes"], 0,
        "nothing changed, nothing written"
    );

    let down = setup.corral("down", &[]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(!setup.group_dir("cpu", "a").exists());
    assert!(gone(before[0]), "process {} still runs", before[0]);
}

#[test]
fn a_running_corral_follows_edits_keeps_the_last_valid_manifests_and_leaves_workloads_running() {
    let mut setup = Setup::new();
    setup.start();
    wait_until("the first quota", Duration::from_secs(20), || {
        setup.knob("cpu", "a", "cpu.cfs_quota_us").as_deref() == Some("20000")
    });
    setup.write("a.yaml", &workload("a", "300m"));
    wait_until("the edited quota", Duration::from_secs(10), || {
        setup.knob("cpu", "a", "cpu.cfs_quota_us").as_deref() == Some("30000")
    });
    // A broken edit changes nothing, and says why.
    setup.write("a.yaml", &workload("a", "12XB"));
    wait_until(
        "the problem to be reported",
        Duration::from_secs(10),
        || {
            setup.status()["run"]["manifestProblems"]
                .as_array()
                .is_some_and(|p| !p.is_empty())
        },
    );
    assert_eq!(
        setup.knob("cpu", "a", "cpu.cfs_quota_us").as_deref(),
        Some("30000")
    );
    // A second workload appears, then is removed: its processes and groups go.
    setup.write("a.yaml", &workload("a", "300m"));
    setup.write("b.yaml", &workload("b", "100m"));
    wait_until("b to run", Duration::from_secs(10), || {
        setup
            .knob("cpu", "b", "cgroup.procs")
            .is_some_and(|p| !p.is_empty())
    });
    // The replica and its log pump.
    let pids = |name: &str| -> Vec<u64> {
        setup
            .knob("cpu", name, "cgroup.procs")
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect()
    };
    let b_pids = pids("b");
    std::fs::remove_file(setup.manifests.path().join("b.yaml")).unwrap();
    // Well within its 2 s grace period plus a pass, though the resync is 30 s away: the
    // end of the background stop is what removes the group.
    wait_until("b's group to go", Duration::from_secs(10), || {
        !setup.group_dir("cpu", "b").exists()
    });
    assert!(b_pids.iter().all(|p| gone(*p)), "b's processes are gone");

    let a_pids = pids("a");
    let output = setup.stop();
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("1 replica(s) keep running"), "{stderr}");
    assert!(
        a_pids.iter().all(|p| !gone(*p)),
        "stopping corral leaves workloads running"
    );
}

#[test]
fn dry_run_shows_the_operations_and_changes_nothing() {
    let setup = Setup::new();
    let dir = setup.manifests.path().to_string_lossy().into_owned();
    let output = setup.corral("run", &["-f", &dir, "--dry-run"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("write test/a.0/cpu.cfs_quota_us = 20000"),
        "{text}"
    );
    assert!(text.contains("start the command of test/a.0"), "{text}");
    assert!(!Path::new("/sys/fs/cgroup/cpu").join(&setup.root).exists());
    assert!(!setup.state.path().join("store").exists());
}

#[test]
fn without_root_run_says_so_and_suggests_dry_run() {
    let setup = Setup::new();
    let state = tempfile::tempdir().unwrap();
    // A state directory of its own, as corral requires: private to the user running it.
    nix::unistd::chown(state.path(), Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    std::fs::set_permissions(
        state.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    std::fs::set_permissions(
        setup.manifests.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let output = Command::new("runuser")
        .args([
            "-u",
            "nobody",
            "--",
            env!("CARGO_BIN_EXE_corral"),
            "run",
            "--once",
            "--ui",
            "log",
        ])
        .arg("-f")
        .arg(setup.manifests.path())
        .arg("--state-dir")
        .arg(state.path())
        .args(["--cgroup-root", &setup.root])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("Permission denied") && stderr.contains("--dry-run"),
        "{stderr}"
    );
}

#[test]
fn invalid_manifests_at_start_apply_nothing() {
    let setup = Setup::new();
    setup.write("a.yaml", &workload("a", "-1"));
    let output = setup.run_once();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("spec.resources.limits.cpu") && stderr.contains("nothing applied"),
        "{stderr}"
    );
    assert!(!Path::new("/sys/fs/cgroup/cpu").join(&setup.root).exists());
}

#[test]
fn a_slow_save_in_place_does_not_restart_a_workload() {
    let mut setup = Setup::new();
    setup.start();
    // The workload's own process: its log pump joins the group a moment after it starts.
    let own = |setup: &Setup| -> Vec<u32> {
        procs(&setup.group_dir("cpu", "a"))
            .into_iter()
            .filter(|pid| !is_log_pump(*pid))
            .collect()
    };
    wait_until("a to run", Duration::from_secs(20), || {
        !own(&setup).is_empty()
    });
    let pid = own(&setup);
    // An editor saving in place: the file is empty for a moment, then holds the new text.
    let path = setup.manifests.path().join("a.yaml");
    std::fs::write(&path, "").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    std::fs::write(&path, workload("a", "300m")).unwrap();
    wait_until("the new quota", Duration::from_secs(10), || {
        setup.knob("cpu", "a", "cpu.cfs_quota_us").as_deref() == Some("30000")
    });
    assert_eq!(own(&setup), pid, "the same process");
    assert_eq!(setup.status()["run"]["agent"]["starts"], 1);
    setup.stop();
}

#[test]
fn stopping_several_stubborn_replicas_takes_one_grace_period() {
    let setup = Setup::new();
    let stubborn = "apiVersion: corral.dev/v1alpha1\nkind: Workload\nmetadata: {name: stubborn, namespace: test}\n\
         spec:\n  replicas: 3\n  resources:\n    requests: {cpu: 10m, memory: 8Mi}\n  terminationGracePeriodSeconds: 2\n  \
         command: {args: [/bin/sh, -c, \"trap '' TERM; while :; do sleep 1; done\"]}\n";
    setup.write("a.yaml", stubborn);
    assert!(setup.run_once().status.success());
    let started = Instant::now();
    let down = setup.corral("down", &[]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "each had a 2 s grace: {took:?}"
    );
    assert!(
        took < Duration::from_secs(4),
        "stopped together, not one after another: {took:?}"
    );
}

/// The state directory holds tenants' environment values and output: it and everything in
/// it is private, a directory others may write is refused before anything runs, and a
/// link planted in it is never written through.
#[test]
fn the_state_directory_is_private_and_never_written_through_a_link() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let setup = Setup::new();
    let output = setup.run_once();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let state = setup.state.path();
    let mut checked = 0;
    for entry in walk(state) {
        let meta = std::fs::symlink_metadata(&entry).unwrap();
        let mode = meta.mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", entry.display());
        } else {
            assert_eq!(mode, 0o600, "{} is {mode:o}", entry.display());
            checked += 1;
        }
    }
    assert!(
        checked >= 4,
        "leases, reports, records and a log: {checked} files"
    );

    // A link planted where corral writes: refused, and its target untouched.
    let victim = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(victim.path(), "precious").unwrap();
    let lock = state.join("run.lock");
    std::fs::remove_file(&lock).unwrap();
    std::os::unix::fs::symlink(victim.path(), &lock).unwrap();
    let output = setup.run_once();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("run.lock"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(std::fs::read_to_string(victim.path()).unwrap(), "precious");
    std::fs::remove_file(&lock).unwrap();

    // A state directory anyone may write is refused before anything is applied.
    std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let output = setup.run_once();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("group or others may write it (mode 777); chmod 700 it"),
        "{stderr}"
    );
    std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// Every path below `dir`, depth first.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if std::fs::symlink_metadata(&path).unwrap().is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

/// `corral logs` prints a replica's output from the state directory; the output goes with
/// the workload.
#[test]
fn logs_show_a_replicas_output_and_go_with_the_workload() {
    let setup = Setup::new();
    setup.write(
        "a.yaml",
        &workload("a", "200m").replace(
            "command: {args: [sleep, \"600\"]}",
            "command: {args: [sh, -c, \"echo hello from a; exec sleep 600\"]}",
        ),
    );
    let output = setup.run_once();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let logs = |extra: &[&str]| {
        let mut args = vec![
            "logs".to_string(),
            "--state-dir".into(),
            setup.state.path().to_string_lossy().into_owned(),
        ];
        args.extend(extra.iter().map(ToString::to_string));
        Command::new(env!("CARGO_BIN_EXE_corral"))
            .args(&args)
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let shown = logs(&["test/a"]);
        if String::from_utf8_lossy(&shown.stdout) == "hello from a\n" {
            assert!(shown.status.success());
            break;
        }
        assert!(Instant::now() < deadline, "{shown:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let missing = logs(&["test/a", "--replica", "3"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no output of replica 3 of test/a")
            && String::from_utf8_lossy(&missing.stderr).contains("replicas here: 0"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    let bad = logs(&["a"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not NAMESPACE/NAME"));

    let down = setup.corral("down", &[]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    let gone = logs(&["test/a"]);
    assert!(!gone.status.success(), "the output went with the workload");
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no output of test/a"));
}

/// `corral ARGS…` in a mount namespace of its own where `unmount` (a path below which
/// every cgroup mount goes) is detached first: what `ip netns exec` leaves (no cgroup
/// filesystem at all), or a v1 controller that is not mounted.
fn corral_without(unmount: &str, args: &[String]) -> Output {
    use std::os::unix::process::CommandExt;
    let target = std::ffi::CString::new(unmount).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_corral"));
    command.args(args);
    // SAFETY: only system calls between fork and exec, on a string built before the fork.
    unsafe {
        command.pre_exec(move || {
            let none = std::ptr::null();
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    none,
                    c"/".as_ptr(),
                    none,
                    libc::MS_REC | libc::MS_PRIVATE,
                    none.cast(),
                ) != 0
                || libc::umount2(target.as_ptr(), libc::MNT_DETACH) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.output().unwrap()
}

/// No cgroup filesystem at all (as `ip netns exec` leaves /sys): `corral run --once` starts
/// nothing and `corral down` stops nothing, and both say why and what to do, exit 2.
#[test]
fn without_a_cgroup_filesystem_run_and_down_refuse_and_say_what_to_do() {
    let s = Setup::new();
    let dir = s.manifests.path().to_string_lossy().into_owned();
    for command in ["run", "down"] {
        let mut args = s.args(command);
        if command == "run" {
            args.extend(["-f".into(), dir.clone(), "--once".into()]);
        }
        let out = corral_without("/sys/fs/cgroup", &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains("no cgroup filesystem is mounted") && stderr.contains("nsenter --net="),
            "{command}: {stderr}"
        );
    }
    let status = s.status();
    assert!(pids(&status).is_empty(), "nothing started: {status:#}");
}

/// A v1 controller that is not mounted: the replica is made in the other hierarchies but
/// never started without its memory limit; it is Unenforced, says which mount is missing
/// and how to mount it, and `--once` exits 1.
#[test]
fn a_controller_that_is_not_mounted_leaves_the_replica_unenforced() {
    let layout = corral::cgroup::layout::Layout::detect().unwrap();
    let Some(memory) = layout.v1.get(&corral::cgroup::layout::Controller::Memory) else {
        panic!("this test needs the v1 memory hierarchy this machine mounts");
    };
    let s = Setup::new();
    let mut args = s.args("run");
    let dir = s.manifests.path().to_string_lossy().into_owned();
    args.extend(["-f".into(), dir, "--once".into()]);
    let out = corral_without(&memory.to_string_lossy(), &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let status = s.status();
    let report = &status["replicas"][0]["report"];
    assert_eq!(report["process"]["state"], "Unenforced", "{status:#}");
    assert!(report["process"]["pid"].is_null(), "{status:#}");
    let problems = report["problems"].to_string();
    assert!(
        problems.contains("memory.limit_in_bytes cannot be applied: no cgroup v1 hierarchy has the memory controller")
            && problems.contains("mount -t cgroup -o memory"),
        "{problems}"
    );
}

#[test]
fn top_shows_a_busy_replica_using_its_cpu_limit_and_throttled() {
    let mut setup = Setup::new();
    setup.write(
        "a.yaml",
        &workload("a", "100m").replace(
            "args: [sleep, \"600\"]",
            "args: [sh, -c, \"while :; do :; done\"]",
        ),
    );
    setup.start_with_resync("1");
    wait_until("a's use reported", Duration::from_secs(30), || {
        // Before corral run's first pass there is no store to read.
        let output = setup.corral("status", &["-o", "json"]);
        serde_json::from_slice::<Value>(&output.stdout).is_ok_and(|status| {
            status["replicas"][0]["report"]["usage"]["cpu"]
                .as_i64()
                .is_some_and(|cpu| cpu > 0)
        })
    });
    let output = setup.top(&["--once", "-o", "json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let top: Value = serde_json::from_slice(&output.stdout).unwrap();
    let node = &top["nodes"][0];
    assert_eq!(node["agentAlive"], true, "{top:#}");
    let tenant = &node["tenants"][0];
    assert_eq!(tenant["name"], "test", "{top:#}");
    let replica = &tenant["replicas"][0];
    assert_eq!(
        (&replica["name"], &replica["replica"]),
        (&Value::from("a"), &Value::from(0))
    );
    let cpu = replica["cpu"].as_i64().unwrap_or_default();
    assert!((70..=130).contains(&cpu), "near its 100m limit: {top:#}");
    let throttled = replica["throttled"].as_f64().unwrap_or_default();
    assert!(throttled > 0.0, "throttled by its quota: {top:#}");
    assert_eq!(tenant["cpu"], replica["cpu"], "the tenant's sum: {top:#}");
    assert_eq!(node["cpu"], replica["cpu"], "the node's sum: {top:#}");

    let output = setup.top(&["--once"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    let row: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("    a.0 "))
        .unwrap_or_else(|| panic!("a row for a.0:\n{text}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[1], "10m", "the grant: {text}");
    assert!(
        row[7].ends_with("s/s") && row[7] != "0.00s/s",
        "throttled: {text}"
    );
    assert_eq!(row.last(), Some(&"Running"), "{text}");
    assert!(
        text.lines()
            .next()
            .is_some_and(|l| l.starts_with("1 nodes, 1 tenants, 1 replicas")),
        "{text}"
    );
}

#[test]
fn top_says_clearly_when_there_is_no_state_to_read() {
    let missing = tempfile::tempdir().unwrap();
    let dir = missing.path().join("nothing");
    let output = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(["top", "--once", "--state-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot read the state directory {}",
            dir.display()
        )) && stderr.contains("corral run creates it"),
        "{stderr}"
    );
}

/// `corral top` live, in a terminal (`script` gives it a pty): `m` orders by memory at
/// once, `p` pauses, `q` quits with status 0, and the terminal is restored (cursor shown,
/// the alternate screen left).
#[test]
fn top_in_a_terminal_follows_its_keys_and_restores_the_terminal() {
    use std::io::{Read, Write};
    let mut setup = Setup::new();
    setup.start();
    wait_until("a store to read", Duration::from_secs(30), || {
        setup.corral("status", &["-o", "json"]).status.success()
    });
    let command = format!(
        "{} top --state-dir {} --interval 30",
        env!("CARGO_BIN_EXE_corral"),
        setup.state.path().display()
    );
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let screen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = std::thread::spawn({
        let screen = screen.clone();
        move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                screen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        }
    });
    let shown = |what: &str| String::from_utf8_lossy(&screen.lock().unwrap()).contains(what);
    wait_until("the first frame", Duration::from_secs(20), || {
        shown("sorted by cpu")
    });
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"m").unwrap();
    stdin.flush().unwrap();
    // At once, though the next read is 30 s away.
    wait_until("the rows ordered by memory", Duration::from_secs(5), || {
        shown("sorted by memory")
    });
    stdin.write_all(b"p").unwrap();
    stdin.flush().unwrap();
    wait_until("paused", Duration::from_secs(5), || shown("paused"));
    stdin.write_all(b"q").unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "q did not quit: {}",
                String::from_utf8_lossy(&screen.lock().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    reader.join().unwrap();
    assert!(status.success(), "{status:?}");
    let all = String::from_utf8_lossy(&screen.lock().unwrap()).into_owned();
    assert!(
        all.contains("\x1b[?25h") && all.contains("\x1b[?1049l"),
        "the cursor shown again and the alternate screen left: {all:?}"
    );
}

/// Every flag that takes seconds refuses what is not a finite number in its range, naming
/// the flag and the range, with clap's usage status (2), never a panic.
#[test]
fn numeric_flags_refuse_hostile_values_clearly() {
    let cases: [(&[&str], &str, &str); 8] = [
        (
            &["run", "-f", "/nonexistent"],
            "--resync",
            "from 0.1 to 86400",
        ),
        (
            &["agent", "--node", "n1", "--zookeeper", "127.0.0.1:1"],
            "--resync",
            "from 0.1 to 86400",
        ),
        (
            &[
                "controller",
                "--source",
                "dir:/nonexistent",
                "--zookeeper",
                "127.0.0.1:1",
            ],
            "--resync",
            "from 0.1 to 86400",
        ),
        (
            &["status", "--zookeeper", "127.0.0.1:1"],
            "--session-timeout",
            "from 1 to 600",
        ),
        (&["top"], "--interval", "from 0.1 to 3600"),
        (
            &["drain", "n1", "--zookeeper", "127.0.0.1:1"],
            "--timeout",
            "from 0 to 86400",
        ),
        (
            &["down", "--zookeeper", "127.0.0.1:1"],
            "--timeout",
            "from 0 to 86400",
        ),
        (
            &["agent", "--node", "n1", "--zookeeper", "127.0.0.1:1"],
            "--session-timeout",
            "from 1 to 600",
        ),
    ];
    for (command, flag, range) in cases {
        for hostile in ["inf", "NaN", "-1", "1e400", "soon"] {
            let output = Command::new(env!("CARGO_BIN_EXE_corral"))
                .args(command)
                .arg(format!("{flag}={hostile}"))
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(
                output.status.code(),
                Some(2),
                "{command:?} {flag} {hostile}: {stderr}"
            );
            assert!(
                !stderr.contains("panicked"),
                "{command:?} {flag} {hostile}: {stderr}"
            );
            assert!(
                stderr.contains(flag),
                "{command:?} {flag} {hostile}: {stderr}"
            );
            if hostile != "soon" {
                assert!(
                    stderr.contains(range),
                    "{command:?} {flag} {hostile}: {stderr}"
                );
            }
        }
    }
}
