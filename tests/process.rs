//! Process supervision against real processes and real cgroup v1 groups.
//!
//! Needs root and the v1 `cpu`, `memory` and `pids` hierarchies mounted under
//! `/sys/fs/cgroup/<controller>`. Every test creates its own groups,
//! `/sys/fs/cgroup/<controller>/corral-test-<pid>-<n>`, and a [`TestCgroup`] guard kills
//! whatever is left in them and removes them, also when the test panics. Processes started
//! outside a test group are owned by a [`Reaped`] guard.

mod common;

use common::wait::wait_until;
use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use corral::agent::logs::LogSink;
use corral::agent::process::{
    AdoptError, ExitStatusInfo, LAUNCH_PATH, LaunchError, LaunchSpec, Launched, MoveError,
    ProcessId, StopError, StopOutcome, launch, move_into, pid_from_file, pids_in_cgroup,
    pids_matching, procs, stop,
};
use corral::alloc::admit::RunAs;
use corral::lease::LogLimits;
use nix::sys::signal::{SigHandler, Signal, kill, killpg, signal};
use nix::unistd::{Pid, getsid};
use regex::Regex;
use tempfile::TempDir;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A name no other test, and no other run of this binary, uses.
fn unique(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

fn nix_pid(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).unwrap())
}

/// A PID no process can have: PIDs are below `pid_max`.
fn impossible_pid() -> u32 {
    fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// One cgroup per listed v1 controller, all named alike, removed on drop with every process
/// left in them killed first.
struct TestCgroup {
    name: String,
    dirs: Vec<(String, PathBuf)>,
}

impl TestCgroup {
    fn new(controllers: &[&str]) -> TestCgroup {
        let mut group = TestCgroup {
            name: unique("corral-test"),
            dirs: Vec::new(),
        };
        for controller in controllers {
            let dir = Path::new(CGROUP_ROOT).join(controller).join(&group.name);
            fs::create_dir(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
            // Registered right after creation, so a failure on the next one still removes it.
            group.dirs.push((controller.to_string(), dir));
        }
        group
    }

    /// The `cgroup.procs` file of every group, in the order of `new`.
    fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|(_, dir)| dir.join("cgroup.procs"))
            .collect()
    }

    fn procs_file(&self, controller: &str) -> PathBuf {
        let (_, dir) = self.dirs.iter().find(|(c, _)| c == controller).unwrap();
        dir.join("cgroup.procs")
    }

    fn is_empty(&self) -> bool {
        self.procs_files()
            .iter()
            .all(|file| procs(file).unwrap().is_empty())
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let me = std::process::id();
        for (_, dir) in &self.dirs {
            let file = dir.join("cgroup.procs");
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let pids = procs(&file).unwrap_or_default();
                if pids.is_empty() || Instant::now() >= deadline {
                    break;
                }
                for pid in pids.into_iter().filter(|&pid| pid != me) {
                    let _ = kill(nix_pid(pid), Signal::SIGKILL);
                }
                thread::sleep(Duration::from_millis(10));
            }
            // No panic here: this may run while a failed test is already unwinding.
            if let Err(e) = fs::remove_dir(dir) {
                eprintln!("cannot remove test cgroup {}: {e}", dir.display());
            }
        }
    }
}

/// A process started without a test cgroup, as the leader of its own process group; the
/// whole group is killed and the process reaped on drop.
struct Reaped(Child);

impl Reaped {
    fn spawn(command: &mut Command) -> Reaped {
        Reaped(
            command
                .process_group(0)
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = killpg(nix_pid(self.0.id()), Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// A spec that runs `args` in `group`, logging to `log` in `dir`.
fn spec(args: &[&str], group: &TestCgroup, dir: &TempDir) -> LaunchSpec {
    LaunchSpec {
        args: args.iter().map(|a| a.to_string()).collect(),
        env: Vec::new(),
        working_dir: None,
        log: LogSink {
            path: dir.path().join("w.log"),
            limits: LogLimits::default(),
        },
        log_pump: None,
        join: group.procs_files(),
        run_as: RunAs::default(),
    }
}

fn log_of(spec: &LaunchSpec) -> String {
    fs::read_to_string(&spec.log.path).unwrap_or_default()
}

fn wait_for_log(spec: &LaunchSpec, text: &str) -> String {
    wait_until(
        &format!("the log shows {text:?}"),
        Duration::from_secs(5),
        || log_of(spec).contains(text),
    );
    log_of(spec)
}

fn wait_for_count(file: &Path, count: usize) {
    wait_until(
        &format!("{} lists {count} processes", file.display()),
        Duration::from_secs(5),
        || procs(file).unwrap().len() == count,
    );
}

fn exit_of(launched: &mut Launched) -> ExitStatusInfo {
    launched.child.wait().unwrap().into()
}

#[test]
fn launched_process_is_in_its_cgroups_from_its_first_output() {
    let group = TestCgroup::new(&["cpu", "memory", "pids"]);
    let dir = TempDir::new().unwrap();
    let spec = spec(
        &["sh", "-c", "cat /proc/self/cgroup; sleep 30"],
        &group,
        &dir,
    );

    let launched = launch(&spec).unwrap();

    let log = wait_for_log(&spec, ":pids:");
    for controller in ["cpu", "memory", "pids"] {
        let line = log
            .lines()
            .find(|line| {
                line.split(':')
                    .nth(1)
                    .is_some_and(|c| c.split(',').any(|c| c == controller))
            })
            .unwrap_or_else(|| panic!("no {controller} line in {log:?}"));
        assert_eq!(
            line.rsplit(':').next(),
            Some(format!("/{}", group.name).as_str()),
            "{log}"
        );
        assert!(
            procs(&group.procs_file(controller))
                .unwrap()
                .contains(&launched.pid)
        );
    }
    assert_eq!(ProcessId::of(launched.pid), Some(launched.process_id()));
}

#[test]
fn launch_fails_naming_a_missing_cgroup_and_leaves_nothing_running() {
    let group = TestCgroup::new(&["pids"]);
    let dir = TempDir::new().unwrap();
    let missing = Path::new(CGROUP_ROOT)
        .join("cpu")
        .join(unique("corral-test-missing"))
        .join("cgroup.procs");
    let mut spec = spec(&["sleep", "30"], &group, &dir);
    // The pids group is joined first, so a process left over from the failed launch would
    // show up there.
    spec.join.push(missing.clone());

    let error = launch(&spec).unwrap_err();

    match &error {
        LaunchError::Join {
            path,
            program,
            source,
        } => {
            assert_eq!(path, &missing);
            assert_eq!(program, "sleep");
            assert_eq!(source.kind(), io::ErrorKind::NotFound);
        }
        other => panic!("expected a join error, got {other:?}"),
    }
    assert!(
        error.to_string().contains(&missing.display().to_string()),
        "{error}"
    );
    assert!(group.is_empty(), "the failed launch left a process behind");
    assert_eq!(log_of(&spec), "", "the program ran");
}

#[test]
fn launch_of_an_unknown_program_fails_and_leaves_nothing_running() {
    let group = TestCgroup::new(&["pids"]);
    let dir = TempDir::new().unwrap();
    let spec = spec(&["corral-no-such-program"], &group, &dir);

    let error = launch(&spec).unwrap_err();

    match &error {
        LaunchError::Spawn { program, source } => {
            assert_eq!(program, "corral-no-such-program");
            assert_eq!(source.kind(), io::ErrorKind::NotFound);
        }
        other => panic!("expected a spawn error, got {other:?}"),
    }
    assert!(group.is_empty());
    assert!(matches!(
        launch(&LaunchSpec {
            args: vec![],
            ..spec
        }),
        Err(LaunchError::EmptyArgs)
    ));
}

#[test]
fn launched_process_is_detached_and_outlives_its_handle() {
    let group = TestCgroup::new(&["pids"]);
    let dir = TempDir::new().unwrap();
    let spec = spec(&["sleep", "30"], &group, &dir);

    let Launched {
        pid,
        start_time,
        child,
        ..
    } = launch(&spec).unwrap();
    drop(child);

    let id = ProcessId { pid, start_time };
    assert!(id.is_alive());
    assert_eq!(
        getsid(Some(nix_pid(pid))).unwrap(),
        nix_pid(pid),
        "not a session leader"
    );
    let fd = |n: u32| fs::read_link(format!("/proc/{pid}/fd/{n}")).unwrap();
    assert_eq!(fd(0), Path::new("/dev/null"));
    assert_eq!(fd(1), spec.log.path);
    assert_eq!(fd(2), spec.log.path);
    assert_eq!(procs(&group.procs_file("pids")).unwrap(), [pid]);
}

/// Set by `launched_process_outlives_its_launcher` for `launcher_helper`: the `cgroup.procs`
/// file to join and the log file, separated by a newline.
const LAUNCHER_ENV: &str = "CORRAL_TEST_LAUNCHER";

/// Not a test by itself: `launched_process_outlives_its_launcher` runs it in a process of its
/// own, which launches `sleep`, prints its identity and exits.
#[test]
#[ignore = "helper that launched_process_outlives_its_launcher runs in a separate process"]
fn launcher_helper() {
    let Ok(config) = std::env::var(LAUNCHER_ENV) else {
        return;
    };
    let (join, log) = config.split_once('\n').unwrap();
    let launched = launch(&LaunchSpec {
        args: vec!["sleep".into(), "30".into()],
        env: Vec::new(),
        working_dir: None,
        log: LogSink {
            path: log.into(),
            limits: LogLimits::default(),
        },
        log_pump: None,
        join: vec![join.into()],
        run_as: RunAs::default(),
    })
    .unwrap();
    println!("launched {} {}", launched.pid, launched.start_time);
}

#[test]
fn launched_process_outlives_its_launcher() {
    let group = TestCgroup::new(&["pids"]);
    let dir = TempDir::new().unwrap();
    let join = group.procs_file("pids");
    let log = dir.path().join("w.log");

    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "launcher_helper",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            LAUNCHER_ENV,
            format!("{}\n{}", join.display(), log.display()),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "launcher failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // libtest prints the test's name on the same line, before the helper's output.
    let (_, launched) = stdout
        .split_once("launched ")
        .unwrap_or_else(|| panic!("{stdout}"));
    let mut fields = launched.split_whitespace();
    let (pid, start_time) = (fields.next().unwrap(), fields.next().unwrap());
    let id = ProcessId {
        pid: pid.parse().unwrap(),
        start_time: start_time.parse().unwrap(),
    };
    assert!(id.is_alive(), "the launched process died with its launcher");
    assert_eq!(getsid(Some(nix_pid(id.pid))).unwrap(), nix_pid(id.pid));
    assert_eq!(procs(&join).unwrap(), [id.pid]);
}

#[test]
fn launched_process_gets_a_minimal_environment_and_its_working_directory() {
    let group = TestCgroup::new(&["pids"]);
    let dir = TempDir::new().unwrap();
    let work = TempDir::new().unwrap();
    let mut spec = spec(&["env"], &group, &dir);
    spec.log.path = dir.path().join("logs/deep/w.log");
    spec.env = vec![
        ("FOO".into(), "bar".into()),
        ("HOME".into(), "/home/w".into()),
    ];
    spec.working_dir = Some(work.path().to_owned());

    let mut launched = launch(&spec).unwrap();
    assert_eq!(exit_of(&mut launched), ExitStatusInfo::Exited { code: 0 });
    let mut pwd = launch(&LaunchSpec {
        args: vec!["pwd".into()],
        ..spec.clone()
    })
    .unwrap();
    assert_eq!(exit_of(&mut pwd).to_string(), "exited with code 0");

    let log = log_of(&spec);
    let mut lines: Vec<&str> = log.lines().collect();
    // Both runs appended to the same log: env's lines, then pwd's.
    assert_eq!(lines.pop(), Some(work.path().to_str().unwrap()));
    lines.sort_unstable();
    assert_eq!(
        lines,
        ["FOO=bar", "HOME=/home/w", &format!("PATH={LAUNCH_PATH}")]
    );
}

#[test]
fn launched_process_starts_with_default_signal_handling() {
    /// Restores SIGUSR2's default action in this test process on drop.
    struct DefaultUsr2;
    impl Drop for DefaultUsr2 {
        fn drop(&mut self) {
            // SAFETY: SIG_DFL installs no handler code.
            let _ = unsafe { signal(Signal::SIGUSR2, SigHandler::SigDfl) };
        }
    }
    let group = TestCgroup::new(&["pids"]);
    let dir = TempDir::new().unwrap();
    let _restore = DefaultUsr2;
    // SAFETY: SIG_IGN installs no handler code. No test in this binary uses SIGUSR2.
    unsafe { signal(Signal::SIGUSR2, SigHandler::SigIgn) }.unwrap();

    let mut launched = launch(&spec(
        &["grep", "^Sig[IB]", "/proc/self/status"],
        &group,
        &dir,
    ))
    .unwrap();

    assert_eq!(exit_of(&mut launched), ExitStatusInfo::Exited { code: 0 });
    let log = fs::read_to_string(dir.path().join("w.log")).unwrap();
    assert_eq!(
        log,
        "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"
    );
}

#[test]
fn stop_kills_a_process_that_ignores_sigterm_after_the_grace_period() {
    let group = TestCgroup::new(&["cpu", "memory", "pids"]);
    let dir = TempDir::new().unwrap();
    let spec = spec(
        &["sh", "-c", "trap '' TERM; echo ready; sleep 30"],
        &group,
        &dir,
    );
    let mut launched = launch(&spec).unwrap();
    wait_for_log(&spec, "ready");
    wait_for_count(&group.procs_file("pids"), 2);

    let grace = Duration::from_millis(300);
    let started = Instant::now();
    let outcome = stop(&group.procs_files(), grace).unwrap();

    assert!(
        started.elapsed() >= grace,
        "killed before the grace period ended"
    );
    assert_eq!(
        outcome,
        StopOutcome {
            terminated: 0,
            killed: 2
        }
    );
    assert!(group.is_empty());
    assert_eq!(exit_of(&mut launched).to_string(), "killed by SIGKILL");
}

#[test]
fn stop_reports_a_process_that_exits_on_sigterm_as_terminated() {
    let group = TestCgroup::new(&["cpu", "pids"]);
    let dir = TempDir::new().unwrap();
    let mut launched = launch(&spec(&["sleep", "30"], &group, &dir)).unwrap();

    let started = Instant::now();
    let outcome = stop(&group.procs_files(), Duration::from_secs(10)).unwrap();

    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stop waited for the grace period"
    );
    assert_eq!(
        outcome,
        StopOutcome {
            terminated: 1,
            killed: 0
        }
    );
    assert!(group.is_empty());
    assert_eq!(
        exit_of(&mut launched),
        ExitStatusInfo::Killed {
            signal: "SIGTERM".into(),
            core_dumped: false
        }
    );
}

#[test]
fn stop_reaches_every_forked_child_even_outside_the_process_tree() {
    let group = TestCgroup::new(&["memory", "pids"]);
    let dir = TempDir::new().unwrap();
    // A background child, one in a session of its own, and one orphaned by a subshell that
    // exits at once: none of them is reachable through the launched process's group.
    let script = "sleep 30 & setsid sleep 30 & (sleep 30 &); echo forked; wait";
    let spec = spec(&["sh", "-c", script], &group, &dir);
    let _launched = launch(&spec).unwrap();
    wait_for_log(&spec, "forked");
    wait_for_count(&group.procs_file("pids"), 4);

    let outcome = stop(&group.procs_files(), Duration::from_secs(5)).unwrap();

    assert_eq!(
        outcome,
        StopOutcome {
            terminated: 4,
            killed: 0
        }
    );
    assert!(group.is_empty());
}

#[test]
fn stop_kills_children_forked_during_the_grace_period() {
    let group = TestCgroup::new(&["pids"]);
    let dir = TempDir::new().unwrap();
    let spec = spec(
        &[
            "sh",
            "-c",
            "trap '' TERM; echo ready; while :; do sleep 0.01; done",
        ],
        &group,
        &dir,
    );
    let mut launched = launch(&spec).unwrap();
    wait_for_log(&spec, "ready");

    let outcome = stop(&group.procs_files(), Duration::from_millis(200)).unwrap();

    assert!(outcome.killed >= 1, "{outcome:?}");
    assert!(group.is_empty());
    assert_eq!(exit_of(&mut launched).to_string(), "killed by SIGKILL");
}

#[test]
fn unreaped_zombie_is_not_listed_and_keeps_its_exit_status() {
    let group = TestCgroup::new(&["cpu", "pids"]);
    let dir = TempDir::new().unwrap();
    let mut launched = launch(&spec(&["sh", "-c", "exit 3"], &group, &dir)).unwrap();
    let id = launched.process_id();
    wait_until("the child has exited", Duration::from_secs(5), || {
        !id.is_alive()
    });

    // Still a zombie of this process: nothing has waited for it yet.
    assert_eq!(ProcessId::of(id.pid), Some(id));
    assert!(
        group.is_empty(),
        "the kernel lists a zombie in cgroup.procs"
    );
    assert_eq!(
        stop(&group.procs_files(), Duration::from_secs(10)).unwrap(),
        StopOutcome::default()
    );
    assert_eq!(exit_of(&mut launched), ExitStatusInfo::Exited { code: 3 });
}

#[test]
fn stop_refuses_a_group_that_contains_the_caller() {
    let dir = TempDir::new().unwrap();
    let fake = dir.path().join("cgroup.procs");
    fs::write(&fake, format!("{}\n", std::process::id())).unwrap();

    let error = stop(std::slice::from_ref(&fake), Duration::ZERO).unwrap_err();

    assert!(
        matches!(&error, StopError::ContainsSelf { path, pid } if path == &fake && *pid == std::process::id()),
        "{error:?}"
    );
}

#[test]
fn stop_of_a_removed_cgroup_succeeds() {
    let gone = Path::new(CGROUP_ROOT)
        .join("pids")
        .join(unique("corral-test-gone"))
        .join("cgroup.procs");
    assert_eq!(
        stop(&[gone], Duration::ZERO).unwrap(),
        StopOutcome::default()
    );
}

#[test]
fn move_into_moves_a_process_that_pids_in_cgroup_then_lists() {
    let group = TestCgroup::new(&["cpu", "pids"]);
    let sleeper = Reaped::spawn(Command::new("sleep").arg("30"));

    move_into(sleeper.pid(), &group.procs_files()).unwrap();

    let cgroup_path = format!("/{}", group.name);
    for controller in ["cpu", "pids"] {
        let mount = Path::new(CGROUP_ROOT).join(controller);
        assert_eq!(
            pids_in_cgroup(&mount, &cgroup_path).unwrap(),
            [sleeper.pid()]
        );
    }
    let own = fs::read_to_string(format!("/proc/{}/cgroup", sleeper.pid())).unwrap();
    assert!(
        own.lines()
            .any(|l| l.ends_with(&format!(":pids:{cgroup_path}"))),
        "{own}"
    );
}

#[test]
fn move_into_reports_a_missing_cgroup_and_a_missing_process() {
    let group = TestCgroup::new(&["pids"]);
    let sleeper = Reaped::spawn(Command::new("sleep").arg("30"));
    let missing = Path::new(CGROUP_ROOT)
        .join("pids")
        .join(unique("corral-test-missing"))
        .join("cgroup.procs");

    let error = move_into(sleeper.pid(), std::slice::from_ref(&missing)).unwrap_err();
    assert!(
        matches!(&error, MoveError::Write { path, pid, .. } if path == &missing && *pid == sleeper.pid()),
        "{error:?}"
    );
    assert!(error.to_string().contains(&missing.display().to_string()));

    let nobody = impossible_pid();
    let error = move_into(nobody, &group.procs_files()).unwrap_err();
    assert!(
        matches!(error, MoveError::Gone { pid } if pid == nobody),
        "{error:?}"
    );
}

#[test]
fn pids_in_cgroup_rejects_paths_outside_a_cgroup_and_names_a_missing_one() {
    let mount = Path::new(CGROUP_ROOT).join("pids");
    for path in ["/", "relative", "/a/../../etc"] {
        assert!(
            matches!(
                pids_in_cgroup(&mount, path),
                Err(AdoptError::InvalidCgroupPath { .. })
            ),
            "{path}"
        );
    }
    let missing = format!("/{}", unique("corral-test-missing"));
    match pids_in_cgroup(&mount, &missing) {
        Err(AdoptError::ReadCgroup { path, source }) => {
            assert_eq!(path, mount.join(&missing[1..]).join("cgroup.procs"));
            assert_eq!(source.kind(), io::ErrorKind::NotFound);
        }
        other => panic!("expected a read error, got {other:?}"),
    }
}

#[test]
fn pids_matching_finds_a_process_by_a_marker_in_its_command_line() {
    let group = TestCgroup::new(&["pids"]);
    let dir = TempDir::new().unwrap();
    // The marker is in sleep's own argument, as digits sleep accepts, so that no fork of
    // the process (a shell's, say) can match too.
    let digits: String = unique("").chars().filter(char::is_ascii_digit).collect();
    let marker = format!("1000.{digits}");
    let launched = launch(&spec(&["sleep", &marker], &group, &dir)).unwrap();
    let pattern = Regex::new(&format!("^sleep {}$", regex::escape(&marker))).unwrap();

    // Until the launched child execs, its command line is still this test's.
    wait_until(
        "the launched sleep to match",
        Duration::from_secs(5),
        || !pids_matching(&pattern, &[]).is_empty(),
    );
    assert_eq!(pids_matching(&pattern, &[]), [launched.pid]);
    assert_eq!(pids_matching(&pattern, &[launched.pid]), Vec::<u32>::new());

    // This very process matches its own executable's path, but is never returned.
    let me = Regex::new(&regex::escape(
        std::env::current_exe().unwrap().to_str().unwrap(),
    ))
    .unwrap();
    assert!(!pids_matching(&me, &[]).contains(&std::process::id()));
}

fn root_only(owner: u32) -> bool {
    owner == 0
}

#[test]
fn pid_from_file_reads_a_running_process_and_explains_failures() {
    let group = TestCgroup::new(&["pids"]);
    let dir = TempDir::new().unwrap();
    let launched = launch(&spec(&["sleep", "30"], &group, &dir)).unwrap();
    let pid_file = dir.path().join("sleep.pid");

    fs::write(&pid_file, format!("  {}\n", launched.pid)).unwrap();
    assert_eq!(pid_from_file(&pid_file, root_only).unwrap(), launched.pid);

    fs::write(&pid_file, "sleep\n").unwrap();
    assert!(
        matches!(pid_from_file(&pid_file, root_only), Err(AdoptError::InvalidPidFile { path, .. }) if path == pid_file)
    );

    fs::write(&pid_file, format!("{}\n", impossible_pid())).unwrap();
    let error = pid_from_file(&pid_file, root_only).unwrap_err();
    assert!(
        matches!(&error, AdoptError::NotRunning { pid, .. } if *pid == impossible_pid()),
        "{error:?}"
    );
    assert!(error.to_string().contains(pid_file.to_str().unwrap()));

    let missing = dir.path().join("missing.pid");
    match pid_from_file(&missing, root_only) {
        Err(AdoptError::ReadPidFile { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), io::ErrorKind::NotFound);
        }
        other => panic!("expected a read error, got {other:?}"),
    }
}

#[test]
fn process_id_recognises_its_process_and_sees_it_die() {
    let group = TestCgroup::new(&["pids"]);
    let dir = TempDir::new().unwrap();
    let mut launched = launch(&spec(&["sleep", "30"], &group, &dir)).unwrap();
    let id = launched.process_id();

    assert_eq!(ProcessId::of(id.pid), Some(id));
    assert!(id.is_alive());
    let reused = ProcessId {
        start_time: id.start_time + 1,
        ..id
    };
    assert!(
        !reused.is_alive(),
        "a different start time is a different process"
    );

    kill(nix_pid(id.pid), Signal::SIGKILL).unwrap();
    wait_until(
        "the killed process is a zombie",
        Duration::from_secs(5),
        || !id.is_alive(),
    );
    assert_eq!(exit_of(&mut launched).to_string(), "killed by SIGKILL");
    assert!(!id.is_alive());
    assert_eq!(ProcessId::of(id.pid), None);
}

/// The fields of /proc/PID/status a sandboxed process is checked by.
fn status_fields(pid: u32) -> std::collections::BTreeMap<String, String> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| {
            (
                k.to_string(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect()
}

/// A command runs as its user and groups, with no capability (not even in the bounding set),
/// `no_new_privs` and the seccomp filter, whatever corral runs as.
#[test]
fn launched_process_runs_as_its_user_without_capabilities_under_seccomp() {
    let group = TestCgroup::new(&["pids"]);
    let dir = TempDir::new().unwrap();
    let mut spec = spec(&["sleep", "30"], &group, &dir);
    spec.run_as = RunAs {
        uid: 4242,
        gid: 4343,
        groups: vec![4444, 4545],
    };
    let launched = Reaped(launch(&spec).unwrap().child);
    let status = status_fields(launched.pid());
    assert_eq!(status["Uid"], "4242 4242 4242 4242");
    assert_eq!(status["Gid"], "4343 4343 4343 4343");
    assert_eq!(status["Groups"], "4444 4545");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status[caps], "0000000000000000", "{caps}");
    }
    assert_eq!(status["NoNewPrivs"], "1");
    assert_eq!(status["Seccomp"], "2");

    // Root, where a policy allows it, is root without a capability.
    spec.run_as = RunAs {
        uid: 0,
        gid: 0,
        groups: vec![],
    };
    let root = Reaped(launch(&spec).unwrap().child);
    let status = status_fields(root.pid());
    assert_eq!(status["Uid"], "0 0 0 0");
    assert_eq!(status["CapEff"], "0000000000000000");
    assert_eq!(status["CapBnd"], "0000000000000000");
}

/// What the filter refuses fails inside the process with EPERM, and what a process does
/// every day still works.
#[test]
fn the_seccomp_filter_refuses_namespaces_and_mounts_only() {
    // Without the filter, any user may make a user namespace on this kernel.
    let control = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["unshare", "--user", "true"])
        .status()
        .unwrap();
    assert!(control.success(), "the control run failed: {control}");
    let group = TestCgroup::new(&["pids"]);
    let dir = TempDir::new().unwrap();
    let script = "unshare --user true 2>/dev/null && echo unshare-allowed; \
                  unshare --mount true 2>/dev/null && echo mount-ns-allowed; \
                  mount -t tmpfs none /mnt 2>/dev/null && echo mount-allowed; \
                  sh -c 'echo child-ok'; echo done";
    let mut spec = spec(&["sh", "-c", script], &group, &dir);
    spec.run_as = RunAs {
        uid: 0,
        gid: 0,
        groups: vec![],
    };
    let mut launched = launch(&spec).unwrap();
    assert_eq!(exit_of(&mut launched), ExitStatusInfo::Exited { code: 0 });
    assert_eq!(log_of(&spec), "child-ok\ndone\n");
}

/// A working directory the user cannot enter is an error naming the step and the user, and
/// the program never runs.
#[test]
fn a_working_directory_the_user_cannot_reach_is_refused() {
    let group = TestCgroup::new(&["pids"]);
    let dir = TempDir::new().unwrap();
    let private = TempDir::new().unwrap();
    fs::set_permissions(
        private.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let mut spec = spec(&["touch", "/tmp/never"], &group, &dir);
    spec.working_dir = Some(private.path().to_owned());
    let error = launch(&spec).unwrap_err().to_string();
    assert!(
        error.contains(&format!(
            "cannot enter the working directory {} as user 65534",
            private.path().display()
        )) && error.contains("Permission denied"),
        "{error}"
    );
}

/// A pid file is a tenant's input: it can name neither a secret (its content is never
/// shown, a large file is not read), nor a FIFO or device that would stall or bloat the
/// agent, nor a path through a symbolic link, nor a file of a user the tenant may not use.
#[test]
fn a_hostile_pid_file_is_refused_without_reading_or_echoing_it() {
    let dir = TempDir::new().unwrap();
    let refused = |path: &Path, allowed: fn(u32) -> bool| {
        let started = Instant::now();
        let error = pid_from_file(path, allowed).unwrap_err().to_string();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{} took {:?}",
            path.display(),
            started.elapsed()
        );
        error
    };

    let secret = dir.path().join("credentials");
    fs::write(&secret, "corral:s3cr3t\n").unwrap();
    let error = refused(&secret, root_only);
    assert!(!error.contains("s3cr3t"), "the content leaked: {error}");
    assert!(error.contains("does not hold a process ID"), "{error}");

    let big = dir.path().join("big");
    fs::write(&big, "1".repeat(4096)).unwrap();
    assert!(refused(&big, root_only).contains("larger than 32 bytes"));

    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    assert!(refused(&fifo, root_only).contains("not a regular file"));
    assert!(refused(Path::new("/dev/zero"), root_only).contains("not a regular file"));

    let link_dir = dir.path().join("link");
    std::os::unix::fs::symlink(dir.path(), &link_dir).unwrap();
    fs::write(
        dir.path().join("real.pid"),
        format!("{}\n", std::process::id()),
    )
    .unwrap();
    let through_link = link_dir.join("real.pid");
    assert!(
        refused(&through_link, root_only).contains("Too many levels of symbolic links"),
        "a symbolic link in any component is refused"
    );

    let foreign = dir.path().join("foreign.pid");
    fs::write(&foreign, format!("{}\n", std::process::id())).unwrap();
    nix::unistd::chown(&foreign, Some(nix::unistd::Uid::from_raw(4242)), None).unwrap();
    assert!(refused(&foreign, root_only).contains("belongs to user 4242"));
    assert_eq!(
        pid_from_file(&foreign, |owner| owner == 4242).unwrap(),
        std::process::id()
    );
}

/// A replica's output goes through `corral log-pump`, in the replica's own groups: however
/// fast it writes, at most `max_bytes × max_files` stay on disk, and its last words are kept.
#[test]
fn output_through_the_pump_is_rotated_and_bounded() {
    let group = TestCgroup::new(&["pids", "cpu"]);
    let dir = TempDir::new().unwrap();
    // The replica's last words wait for the test to have seen the pump in the group: a pump
    // that drained 3 MB and ended before the first look would have left it again.
    let go = dir.path().join("go");
    let script = format!(
        "yes corral | head -c 3000000; while [ ! -e {} ]; do sleep 0.02; done; echo last words",
        go.display()
    );
    let mut spec = spec(&["sh", "-c", &script], &group, &dir);
    spec.log = LogSink {
        path: dir.path().join("logs/t.w.0.log"),
        limits: LogLimits {
            max_bytes: 64 << 10,
            max_files: 3,
        },
    };
    spec.log_pump = Some(env!("CARGO_BIN_EXE_corral").into());
    let mut launched = launch(&spec).unwrap();
    let pump = launched.pump.take().expect("a pump");
    let pump_pid = pump.id();
    // The pump joins the replica's groups once it has started.
    wait_until(
        "the pump to join the replica's group",
        Duration::from_secs(5),
        || {
            fs::read_to_string(group.procs_file("pids"))
                .unwrap()
                .lines()
                .any(|l| l == pump_pid.to_string())
        },
    );
    fs::write(&go, "").unwrap();
    assert_eq!(exit_of(&mut launched), ExitStatusInfo::Exited { code: 0 });
    let mut pump = Reaped(pump);
    let status = pump.0.wait().unwrap();
    assert!(
        status.success(),
        "the pump ends after the last writer: {status}"
    );
    let files = spec.log.files();
    assert_eq!(files.len(), 3, "{files:?}");
    let total: u64 = files.iter().map(|f| fs::metadata(f).unwrap().len()).sum();
    assert!(total <= 3 * (64 << 10), "{total} bytes kept");
    for file in &files {
        assert!(fs::metadata(file).unwrap().len() <= 64 << 10);
    }
    let last = fs::read_to_string(&spec.log.path).unwrap();
    assert!(
        last.ends_with("corral\nlast words\n") || last.ends_with("last words\n"),
        "{last:?}"
    );
}
