//! The agent on this machine's real cgroup filesystem, with real processes: values land in
//! the files, limits are enforced by the kernel, drift is reverted, a new agent adopts what
//! an old one started, deletion cleans up, and knobs the kernel lacks are reported.
//!
//! Every test owns a uniquely named root below each hierarchy; a guard kills whatever runs
//! in it and removes it, also when the test fails.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use corral::agent::node::Trigger;
use corral::alloc::admit::AdoptScope;
use corral::alloc::fixtures::mk_workload;
use corral::alloc::plan::Limits;
use corral::alloc::{ReplicaKey, Res};
use corral::api::ResourcePolicySpec;
use corral::api::policy::IdRange;
use corral::api::workload::{AdoptOnDelete, AdoptRule};
use corral::cgroup::fs::Cgroupfs;
use corral::cgroup::knobs::{CgroupFile, Knob, Stat};
use corral::cgroup::layout::{Controller, Layout};
use corral::cgroup::tree::GroupPath;
use corral::cgroup::tree::Work;
use corral::lease::Lease;

mod common;

use common::agent::{TestRoot, allocation, command_spec, report_of};
use common::cgroups::is_log_pump;
use common::wait::wait_until;

impl TestRoot {
    fn new(layout: Layout) -> TestRoot {
        TestRoot::named("corral-test", layout)
    }

    fn v1() -> TestRoot {
        TestRoot::new(Layout::detect().unwrap())
    }

    fn knob(&self, group: &GroupPath, knob: impl Into<CgroupFile>) -> String {
        let path = self.fs().knob_path(Some(group), knob).unwrap();
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_string()
    }
}

/// A command that ignores SIGTERM, and says so once it does.
const STUBBORN: &str = "trap '' TERM; echo trapped; while :; do sleep 1; done";

/// The processes of a group but its log pump.
fn workload_pids(fs: &Cgroupfs, group: &GroupPath) -> Vec<u32> {
    fs.procs(group)
        .unwrap()
        .into_iter()
        .filter(|pid| !is_log_pump(*pid))
        .collect()
}

/// A lease for replica 0 of `ns/name` running `args`, with a CPU limit in millicores and
/// a memory limit in MiB.
fn lease(
    ns: &str,
    name: &str,
    args: &[&str],
    extra: serde_json::Value,
    cpu: Option<i64>,
    memory_mib: Option<i64>,
) -> Lease {
    let workload = mk_workload(ns, name, 1, 100, 16, command_spec(args, extra));
    let limits = Limits {
        cpu,
        memory: memory_mib.map(|m| m << 20),
        pids: Some(64),
    };
    let allocation = allocation(ns, name, Res::new(250, 16 << 20, 0), limits, None);
    Lease::new(&allocation, &workload, &ResourcePolicySpec::default(), 1)
}

fn group(ns: &str, name: &str) -> GroupPath {
    GroupPath::replica(&ReplicaKey::new(ns, name, 0)).unwrap()
}

#[test]
fn values_land_in_the_real_files_and_a_second_pass_writes_nothing() {
    let root = TestRoot::v1();
    let mut agent = root.agent();
    agent.set_leases(vec![lease(
        "shop",
        "api",
        &["sleep", "60"],
        json!({}),
        Some(1500),
        Some(64),
    )]);
    let first = agent.pass(Trigger::Leases);
    assert!(
        first.outcome.failures.is_empty(),
        "{:?}",
        first.outcome.failures
    );
    let g = group("shop", "api");
    assert_eq!(root.knob(&g, Knob::CpuShares), "256", "250m is 256 shares");
    assert_eq!(root.knob(&g, Knob::CpuCfsPeriod), "100000");
    assert_eq!(
        root.knob(&g, Knob::CpuCfsQuota),
        "150000",
        "1.5 CPU over 100 ms"
    );
    assert_eq!(root.knob(&g, Knob::MemoryLimit), (64 << 20).to_string());
    assert_eq!(root.knob(&g, Knob::PidsMax), "64");
    let tenant = g.parent().unwrap();
    assert_eq!(
        root.knob(&tenant, Knob::CpuShares),
        "256",
        "a tenant's shares are its replicas' sum"
    );
    let pid = report_of(&first, "api").process.pid.unwrap();
    assert!(root.fs().procs(&g).unwrap().contains(&pid));
    // Every v1 file of corral's table is a file of a real group (BFQ's weight where the
    // kernel has BFQ); knob_path finds none of v2's.
    let fs = root.fs();
    let mounted = &fs.layout().v1;
    let bfq = mounted
        .get(&Controller::Io)
        .is_some_and(|m| m.join("blkio.bfq.io_service_bytes").exists());
    let files = Knob::ALL
        .map(CgroupFile::from)
        .into_iter()
        .chain(Stat::ALL.map(CgroupFile::from));
    for file in files {
        let Some(path) = fs.knob_path(Some(&g), file) else {
            // Only v2's files, and those of a controller this machine does not mount.
            let unmounted = file.controller().is_some_and(|c| !mounted.contains_key(&c));
            assert!(!file.version().on(false) || unmounted, "{file}");
            continue;
        };
        if file == Knob::BlkioBfqWeight.into() && !bfq {
            continue;
        }
        assert!(path.exists(), "{}", path.display());
    }

    let writes_before = agent.stats.writes;
    let second = agent.pass(Trigger::Resync);
    assert!(second.ops.is_empty(), "{:?}", second.ops);
    assert_eq!(
        agent.stats.writes, writes_before,
        "the same state twice writes nothing"
    );
    assert_eq!(report_of(&second, "api").process.pid, Some(pid));
}

#[test]
fn a_memory_hog_is_oom_killed_in_a_64_mib_group() {
    let root = TestRoot::v1();
    let mut agent = root.agent();
    let hog = [
        "/bin/sh",
        "-c",
        "x=$(head -c 200000000 /dev/zero | tr '\\000' x); echo survived",
    ];
    agent.set_leases(vec![lease(
        "lab",
        "hog",
        &hog,
        json!({"command": {"args": hog, "restartPolicy": "Never"}}),
        None,
        Some(64),
    )]);
    agent.pass(Trigger::Leases);
    let g = group("lab", "hog");
    wait_until("the hog to be killed", Duration::from_secs(30), || {
        root.fs().procs(&g).unwrap().is_empty()
    });
    let pass = agent.pass(Trigger::Processes);
    let report = report_of(&pass, "hog");
    assert_eq!(
        report.process.last_exit.as_deref(),
        Some("killed by SIGKILL"),
        "{report:?}"
    );
    let oom = root.knob(&g, Stat::MemoryOomControl);
    assert!(oom.contains("oom_kill 1"), "{oom}");
    assert!(report.usage.is_none_or(|u| u.oom_kills >= 1), "{report:?}");
    let log =
        std::fs::read_to_string(root.state.path().join("logs/lab.hog.0.log")).unwrap_or_default();
    assert!(!log.contains("survived"), "{log}");
}

#[test]
fn a_busy_loop_under_a_20_percent_quota_uses_about_20_percent() {
    let root = TestRoot::v1();
    let mut agent = root.agent();
    agent.set_leases(vec![lease(
        "lab",
        "spin",
        &["/bin/sh", "-c", "while :; do :; done"],
        json!({}),
        Some(200),
        None,
    )]);
    agent.pass(Trigger::Leases);
    let g = group("lab", "spin");
    let usage = || root.knob(&g, Stat::CpuacctUsage).parse::<u64>().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (start, before) = (Instant::now(), usage());
    std::thread::sleep(Duration::from_secs(3));
    let share = (usage() - before) as f64 / start.elapsed().as_nanos() as f64;
    assert!(
        (0.15..=0.25).contains(&share),
        "used {:.1}% of a core under a 20% quota",
        share * 100.0
    );
    let throttled = root.knob(&g, Stat::CpuStat);
    assert!(!throttled.contains("nr_throttled 0"), "{throttled}");
}

#[test]
fn drift_is_reverted_and_counted() {
    let root = TestRoot::v1();
    let mut agent = root.agent();
    agent.set_leases(vec![lease(
        "shop",
        "api",
        &["sleep", "60"],
        json!({}),
        Some(500),
        None,
    )]);
    agent.pass(Trigger::Leases);
    let g = group("shop", "api");
    let path = root.fs().knob_path(Some(&g), Knob::CpuCfsQuota).unwrap();
    std::fs::write(&path, "90000").unwrap();
    assert_eq!(root.knob(&g, Knob::CpuCfsQuota), "90000");
    agent.pass(Trigger::Resync);
    assert_eq!(root.knob(&g, Knob::CpuCfsQuota), "50000");
    assert_eq!(agent.stats.drift_corrections, 1);
}

#[test]
fn a_new_agent_adopts_running_processes_without_restarting_them() {
    let root = TestRoot::v1();
    let leases = vec![lease(
        "shop",
        "api",
        &["sleep", "60"],
        json!({}),
        Some(500),
        None,
    )];
    let pid = {
        let mut first = root.agent();
        first.set_leases(leases.clone());
        let pass = first.pass(Trigger::Leases);
        report_of(&pass, "api").process.pid.unwrap()
    };
    let mut second = root.agent();
    second.set_leases(leases);
    let pass = second.pass(Trigger::Leases);
    assert!(
        pass.ops.is_empty(),
        "a restarted agent changes nothing: {:?}",
        pass.ops
    );
    let report = report_of(&pass, "api");
    assert_eq!(report.process.pid, Some(pid));
    assert_eq!(report.process.state, "Running");
    assert_eq!(second.stats.starts, 0);
    assert!(
        root.fs()
            .procs(&group("shop", "api"))
            .unwrap()
            .contains(&pid)
    );
}

#[test]
fn deleting_a_workload_stops_its_processes_and_removes_its_groups() {
    let root = TestRoot::v1();
    let mut agent = root.agent();
    // One replica exits on SIGTERM, one ignores it and is killed after its grace.
    let stubborn = ["/bin/sh", "-c", STUBBORN];
    agent.set_leases(vec![
        lease("shop", "api", &["sleep", "60"], json!({}), None, None),
        lease("shop", "stubborn", &stubborn, json!({}), None, None),
    ]);
    let pass = agent.pass(Trigger::Leases);
    let pids: Vec<u32> = pass.reports.iter().filter_map(|r| r.process.pid).collect();
    assert_eq!(pids.len(), 2);
    root.wait_for_output("shop.stubborn.0", "trapped", Duration::from_secs(5));
    agent.set_leases(vec![]);
    let started = Instant::now();
    agent.pass(Trigger::Leases);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "a pass never waits out a grace period: {:?}",
        started.elapsed()
    );
    let pass = agent.settle(Trigger::Leases);
    assert!(
        pass.outcome.failures.is_empty(),
        "{:?}",
        pass.outcome.failures
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the stubborn one had a 1 s grace"
    );
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default()
                    .contains(") Z "),
            "process {pid} is still running"
        );
    }
    for dir in root.fs().dirs(Some(&GroupPath::tenant("shop").unwrap())) {
        assert!(!dir.exists(), "{} is still there", dir.display());
    }
}

#[test]
fn commands_restart_by_policy_with_backoff() {
    let root = TestRoot::v1();
    let mut agent = root.agent();
    let failing = ["/bin/sh", "-c", "exit 3"];
    let succeeding = ["/bin/sh", "-c", "exit 0"];
    agent.set_leases(vec![
        lease("lab", "always", &failing, json!({}), None, None),
        lease(
            "lab",
            "onfailure",
            &succeeding,
            json!({"command": {"args": succeeding, "restartPolicy": "OnFailure"}}),
            None,
            None,
        ),
    ]);
    agent.pass(Trigger::Leases);
    wait_until("both to exit", Duration::from_secs(10), || {
        root.fs().procs(&group("lab", "always")).unwrap().is_empty()
            && root
                .fs()
                .procs(&group("lab", "onfailure"))
                .unwrap()
                .is_empty()
    });
    // A process leaves its group a moment before its parent can reap it (the kernel
    // takes it out of the cgroup early in exit): pass until both are reaped.
    let mut pass = agent.pass(Trigger::Processes);
    wait_until("both exits to be reaped", Duration::from_secs(10), || {
        let reaped = ["always", "onfailure"]
            .iter()
            .all(|n| report_of(&pass, n).process.state != "Running");
        if !reaped {
            pass = agent.pass(Trigger::Processes);
        }
        reaped
    });
    let always = report_of(&pass, "always");
    assert_eq!(always.process.state, "BackingOff");
    assert_eq!(
        always.process.last_exit.as_deref(),
        Some("exited with code 3")
    );
    assert_eq!(
        report_of(&pass, "onfailure").process.state,
        "Exited",
        "a success is not restarted under OnFailure"
    );
    // The first backoff is 1 s.
    wait_until("the backoff to pass", Duration::from_secs(5), || {
        agent.restart_due(corral::agent::node::unix_now_ms())
    });
    let pass = agent.pass(Trigger::Processes);
    assert_eq!(report_of(&pass, "always").process.restarts, 1);
}

#[test]
fn hostile_names_never_leave_the_root() {
    let root = TestRoot::v1();
    let mut agent = root.agent();
    let mut hostile = lease("shop", "api", &["sleep", "60"], json!({}), None, None);
    hostile.key = ReplicaKey::new("../../escape", "api", 0);
    let mut dotted = hostile.clone();
    dotted.key = ReplicaKey::new("shop", "..", 0);
    agent.set_leases(vec![hostile, dotted]);
    let pass = agent.pass(Trigger::Leases);
    assert!(pass.ops.is_empty(), "{:?}", pass.ops);
    for dir in root.fs().root_dirs() {
        let parent = dir.parent().unwrap();
        assert!(!parent.join("escape").exists());
        assert!(!parent.parent().unwrap().join("escape").exists());
        assert_eq!(
            std::fs::read_dir(&dir)
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_dir())
                .count(),
            0
        );
    }
}

/// A process that is killed and reaped when the test ends, however it ends.
struct Outside(std::process::Child);

impl Outside {
    /// `sleep 60` named `marker`, as user `uid`.
    fn spawn(marker: &str, uid: u32) -> Outside {
        let child = std::process::Command::new("sleep")
            .arg0(marker)
            .arg("60")
            .uid(uid)
            .spawn()
            .unwrap();
        let pid = child.id();
        let outside = Outside(child);
        wait_until("the marker process to exec", Duration::from_secs(5), || {
            std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.contains(marker))
        });
        outside
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn is_alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .is_ok_and(|s| !s.rsplit_once(')').unwrap().1.trim_start().starts_with('Z'))
    }

    fn cpu_cgroup(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/cgroup", self.pid()))
            .unwrap()
            .lines()
            .find(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|c| c.split(',').any(|c| c == "cpu"))
            })
            .unwrap()
            .to_string()
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn adopt_lease(name: &str, rule: AdoptRule, scope: Option<AdoptScope>) -> Lease {
    let mut l = lease("ops", name, &["x"], json!({}), Some(300), None);
    l.work = Work::Adopt(rule);
    l.adopt_scope = scope;
    l
}

fn users(uid: i64) -> AdoptScope {
    AdoptScope {
        users: vec![IdRange { min: uid, max: uid }],
        ..AdoptScope::default()
    }
}

/// A tenant adopts only processes of users its policy lets it use; deleting the workload
/// moves them back where they came from, running (`onDelete: Release`, the default).
#[test]
fn adoption_takes_only_allowed_users_and_releases_them_on_delete() {
    let root = TestRoot::v1();
    let marker = format!("corral-adopt-{}", std::process::id());
    let mine = Outside::spawn(&marker, 4242);
    let roots = Outside::spawn(&marker, 0);
    let before = mine.cpu_cgroup();
    let mut agent = root.agent();
    let rule = AdoptRule {
        command_pattern: Some(format!("^{marker}")),
        ..Default::default()
    };
    agent.set_leases(vec![adopt_lease("legacy", rule.clone(), Some(users(4242)))]);
    let pass = agent.pass(Trigger::Leases);
    let g = group("ops", "legacy");
    assert_eq!(
        root.fs().procs(&g).unwrap(),
        [mine.pid()],
        "only user 4242's process"
    );
    let problems = &report_of(&pass, "legacy").problems;
    assert!(
        problems.iter().any(|p| p.contains(&format!(
            "process {} runs as user 0, which this tenant may not use",
            roots.pid()
        ))),
        "{problems:?}"
    );
    let pass = agent.pass(Trigger::Resync);
    assert!(
        pass.ops.is_empty(),
        "adopting twice does nothing: {:?}",
        pass.ops
    );
    assert_eq!(report_of(&pass, "legacy").process.state, "Adopted");

    agent.set_leases(Vec::new());
    let pass = agent.pass(Trigger::Leases);
    assert!(
        pass.outcome.failures.is_empty(),
        "{:?}",
        pass.outcome.failures
    );
    assert!(mine.is_alive(), "a released process keeps running");
    assert_eq!(mine.cpu_cgroup(), before, "back in the group it came from");
    assert!(
        !root.fs().dirs(Some(&g))[0].exists(),
        "the group is removed"
    );
}

/// `onDelete: Stop` hands the processes over for good: deleting stops them.
#[test]
fn adoption_with_on_delete_stop_stops_the_processes() {
    let root = TestRoot::v1();
    let marker = format!("corral-adopt-stop-{}", std::process::id());
    let mine = Outside::spawn(&marker, 4242);
    let mut agent = root.agent();
    let rule = AdoptRule {
        command_pattern: Some(format!("^{marker}")),
        on_delete: AdoptOnDelete::Stop,
        ..Default::default()
    };
    agent.set_leases(vec![adopt_lease("legacy", rule, Some(users(4242)))]);
    agent.pass(Trigger::Leases);
    assert_eq!(
        root.fs().procs(&group("ops", "legacy")).unwrap(),
        [mine.pid()]
    );
    agent.set_leases(Vec::new());
    agent.pass(Trigger::Leases);
    wait_until(
        "the adopted process to be stopped",
        Duration::from_secs(5),
        || !mine.is_alive(),
    );
}

/// What no policy can hand a tenant: PID 1, this corral, a process in another corral
/// root's groups, and anything at all without a scope in the lease.
#[test]
fn adoption_never_takes_pid_1_corral_or_another_roots_processes() {
    let root = TestRoot::v1();
    let other = TestRoot::v1();
    let state = tempfile::tempdir().unwrap();
    let pid_file = |name: &str, pid: u32| {
        let path = state.path().join(name);
        std::fs::write(&path, format!("{pid}\n")).unwrap();
        path.to_string_lossy().into_owned()
    };
    // A replica of another agent (another corral root on this machine), user 4242.
    let mut other_agent = other.agent();
    let mut theirs = lease("them", "svc", &["sleep", "60"], json!({}), None, None);
    if let Work::Command { run_as, .. } = &mut theirs.work {
        run_as.uid = 4242;
    }
    other_agent.set_leases(vec![theirs]);
    other_agent.pass(Trigger::Leases);
    let their_pid = workload_pids(&other.fs(), &group("them", "svc"))[0];
    let loose = Outside::spawn(&format!("corral-loose-{}", std::process::id()), 4242);

    let everyone = AdoptScope {
        users: vec![IdRange {
            min: 0,
            max: 2_147_483_647,
        }],
        allow_root: true,
        ..AdoptScope::default()
    };
    let by_file = |name: &str, pid: u32| AdoptRule {
        pid_file: Some(pid_file(name, pid)),
        ..Default::default()
    };
    let mut agent = root.agent();
    agent.set_leases(vec![
        adopt_lease("init", by_file("init.pid", 1), Some(everyone.clone())),
        adopt_lease(
            "me",
            by_file("me.pid", std::process::id()),
            Some(everyone.clone()),
        ),
        adopt_lease(
            "theirs",
            by_file("theirs.pid", their_pid),
            Some(everyone.clone()),
        ),
        adopt_lease("unscoped", by_file("unscoped.pid", loose.pid()), None),
    ]);
    let pass = agent.pass(Trigger::Leases);
    for (name, why) in [
        ("init", "process 1 is PID 1".to_string()),
        (
            "me",
            format!(
                "process {} is corral or one of its ancestors",
                std::process::id()
            ),
        ),
        (
            "theirs",
            format!("process {their_pid} is in a corral root's groups"),
        ),
        (
            "unscoped",
            format!(
                "process {} runs as user 4242, which this tenant may not use",
                loose.pid()
            ),
        ),
    ] {
        let problems = &report_of(&pass, name).problems;
        assert!(
            problems.iter().any(|p| p.contains(&why)),
            "{name}: {problems:?}"
        );
        assert!(
            root.fs().procs(&group("ops", name)).unwrap().is_empty(),
            "{name}"
        );
    }
    assert_eq!(
        workload_pids(&other.fs(), &group("them", "svc")),
        [their_pid]
    );
    other_agent.set_leases(Vec::new());
    other_agent.pass(Trigger::Leases);
}

/// A v2 hierarchy laid out in a temporary directory: the agent writes cgroup v2 files
/// (`cpu.weight`, `cpu.max`, `memory.max`, `memory.high`) and enables controllers.
#[test]
fn v2_files_on_a_directory_laid_out_like_a_v2_hierarchy() {
    let tmp = tempfile::tempdir().unwrap();
    let root = TestRoot::new(Layout::v2_at(tmp.path()));
    let fs = root.fs();
    let mut agent = root.agent();
    let mut l = lease("shop", "api", &["x"], json!({}), Some(1500), Some(200));
    l.work = Work::Adopt(AdoptRule {
        pid_file: Some("/nonexistent/api.pid".into()),
        ..Default::default()
    });
    agent.set_leases(vec![l]);
    // The kernel makes a new group's files; here the test does, as each pass creates groups.
    let make_files = |dir: &Path| {
        for knob in [
            "cgroup.subtree_control",
            "cgroup.procs",
            "cpu.weight",
            "cpu.max",
            "memory.max",
            "memory.high",
            "memory.min",
            "memory.low",
            "pids.max",
        ] {
            let file = dir.join(knob);
            if !file.exists() {
                std::fs::write(file, "").unwrap();
            }
        }
    };
    make_files(&fs.root_dirs()[0]);
    // What the parent delegates to corral's root.
    std::fs::write(
        fs.root_dirs()[0].join("cgroup.controllers"),
        "cpuset cpu io memory hugetlb pids\n",
    )
    .unwrap();
    agent.pass(Trigger::Leases);
    let g = group("shop", "api");
    for dir in fs
        .dirs(g.parent().as_ref())
        .into_iter()
        .chain(fs.dirs(Some(&g)))
    {
        make_files(&dir);
    }
    let pass = agent.pass(Trigger::Leases);
    assert!(
        pass.outcome.failures.is_empty(),
        "{:?}",
        pass.outcome.failures
    );
    let read = |group: Option<&GroupPath>, knob: Knob| {
        std::fs::read_to_string(fs.knob_path(group, knob).unwrap()).unwrap()
    };
    assert_eq!(read(None, Knob::SubtreeControl), "+cpu +memory +pids +io");
    assert_eq!(
        read(Some(&g), Knob::CpuWeight),
        "35",
        "250m is 256 shares, weight 35"
    );
    assert_eq!(read(Some(&g), Knob::CpuMax), "150000 100000");
    assert_eq!(read(Some(&g), Knob::MemoryMax), (200 << 20).to_string());
    let high = corral::cgroup::values::memory_high(16 << 20, 200 << 20, 0.9, fs.page_size());
    assert_eq!(read(Some(&g), Knob::MemoryHigh), high.to_string());
    assert_eq!(read(Some(&g), Knob::PidsMax), "64");
    let report = report_of(&pass, "api");
    assert_eq!(report.process.state, "Waiting");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("/nonexistent/api.pid")),
        "{:?}",
        report.problems
    );
    drop(agent);
    // On a plain directory the files must go before the directories can.
    for dir in [
        fs.dirs(Some(&g)),
        fs.dirs(g.parent().as_ref()),
        fs.root_dirs(),
    ]
    .concat()
    {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.file_type().unwrap().is_file() {
                std::fs::remove_file(entry.path()).unwrap();
            }
        }
    }
}

/// On a v2 hierarchy (laid out in a temporary directory) a replica's report carries its
/// pressure stall information and `memory.events`; a resource without a valid pressure
/// file is absent, not zero.
#[test]
fn v2_reports_carry_pressure_and_memory_events() {
    let tmp = tempfile::tempdir().unwrap();
    let root = TestRoot::new(Layout::v2_at(tmp.path()));
    let fs = root.fs();
    let mut agent = root.agent();
    let mut l = lease("shop", "api", &["x"], json!({}), Some(1500), Some(200));
    l.work = Work::Adopt(AdoptRule {
        pid_file: Some("/nonexistent/api.pid".into()),
        ..Default::default()
    });
    agent.set_leases(vec![l]);
    std::fs::write(
        fs.root_dirs()[0].join("cgroup.controllers"),
        "cpu io memory pids\n",
    )
    .unwrap();
    agent.pass(Trigger::Leases);
    let g = group("shop", "api");
    let write = |stat: Stat, text: &str| {
        std::fs::write(fs.knob_path(Some(&g), stat).unwrap(), text).unwrap();
    };
    write(
        Stat::MemoryPressure,
        "some avg10=23.45 avg60=10.00 avg300=2.00 total=5000000\n\
         full avg10=3.00 avg60=1.00 avg300=0.25 total=700000\n",
    );
    write(
        Stat::CpuPressure,
        "some avg10=0.50 avg60=0.10 avg300=0.00 total=1234\n",
    );
    write(Stat::IoPressure, "some avg10=twelve\n");
    write(
        Stat::MemoryEvents,
        "low 0\nhigh 42\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n",
    );
    write(Stat::MemoryCurrent, "1048576\n");
    agent.pass(Trigger::Resync);
    let pass = agent.pass(Trigger::Resync);
    let usage = report_of(&pass, "api")
        .usage
        .expect("a usage sample from the second observation on");
    let pressure = usage.pressure.expect("pressure on v2");
    let memory = pressure.memory.unwrap();
    assert_eq!(
        (
            memory.some.avg10,
            memory.some.avg60,
            memory.some.total_micros
        ),
        (23.45, 10.0, 5_000_000)
    );
    assert_eq!(memory.full.map(|f| f.total_micros), Some(700_000));
    let cpu = pressure.cpu.unwrap();
    assert_eq!((cpu.some.total_micros, cpu.full), (1234, None));
    assert_eq!(pressure.io, None, "a malformed file is absent");
    let events = usage.memory_events.expect("memory.events on v2");
    assert_eq!((events.high, events.max, events.oom_kill), (42, 5, 1));
    assert_eq!((usage.oom_kills, usage.memory), (1, 1 << 20));
    let json = serde_json::to_value(report_of(&pass, "api")).unwrap();
    assert_eq!(json["usage"]["pressure"]["memory"]["some"]["avg10"], 23.45);
    assert_eq!(json["usage"]["memoryEvents"]["high"], 42);
    assert!(json["usage"]["pressure"].get("io").is_none());
}

/// The real v2 hierarchy of this machine offers no controller corral uses (only hugetlb):
/// the replica's group is made, but its command never starts without its limits; it shows
/// as Unenforced, and each missing knob names the file that says why.
#[test]
fn the_real_v2_hierarchy_without_controllers_starts_nothing_and_says_why() {
    let Some(unified) = Layout::detect().unwrap().unified else {
        eprintln!("no cgroup2 mount here; nothing to test");
        return;
    };
    let offered: String = std::fs::read_to_string(unified.join("cgroup.controllers")).unwrap();
    assert!(
        !offered.split_whitespace().any(|c| c == "cpu"),
        "this test needs a cgroup2 mount without the cpu controller: {offered}"
    );
    let root = TestRoot::new(Layout::v2_at(&unified));
    let mut agent = root.agent();
    agent.set_leases(vec![lease(
        "shop",
        "api",
        &["sleep", "60"],
        json!({}),
        Some(500),
        Some(64),
    )]);
    let pass = agent.pass(Trigger::Leases);
    let report = report_of(&pass, "api");
    assert_eq!(report.process.state, "Unenforced", "{report:?}");
    assert_eq!(report.process.pid, None, "{report:?}");
    let g = group("shop", "api");
    assert!(root.fs().dirs(Some(&g))[0].is_dir());
    assert!(workload_pids(&root.fs(), &g).is_empty());
    let controllers = unified.join("cgroup.controllers");
    for knob in ["cpu.weight", "memory.max"] {
        let controller = knob.split('.').next().unwrap();
        let line = format!(
            "{knob} cannot be applied: the cgroup v2 hierarchy offers no {controller} controller ({}",
            controllers.display()
        );
        assert!(
            report.problems.iter().any(|p| p.starts_with(&line)),
            "{line}\n{:?}",
            report.problems
        );
    }
    let again = agent.pass(Trigger::Resync);
    assert!(again.ops.is_empty(), "{:?}", again.ops);
    assert_eq!(report_of(&again, "api").process.state, "Unenforced");
}

/// A tenant cannot hold up the agent: a process that ignores SIGTERM under the longest
/// grace period, a FIFO as pid file, or /dev/zero as pid file delay no pass, and another
/// tenant's drift is corrected at once.
#[test]
fn one_tenants_stubborn_processes_and_hostile_files_never_delay_another_tenant() {
    let root = TestRoot::v1();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.pid");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let stubborn = ["/bin/sh", "-c", STUBBORN];
    let mut slow = lease("team-a", "stubborn", &stubborn, json!({}), None, None);
    slow.grace_seconds = 30;
    let adopt_from = |name: &str, path: &Path| {
        adopt_lease(
            name,
            AdoptRule {
                pid_file: Some(path.to_string_lossy().into_owned()),
                ..Default::default()
            },
            Some(users(4242)),
        )
    };
    let b = lease(
        "team-b",
        "api",
        &["sleep", "60"],
        json!({}),
        Some(500),
        None,
    );
    let mut agent = root.agent();
    agent.set_leases(vec![slow, b.clone()]);
    let pass = agent.pass(Trigger::Leases);
    let stubborn_pid = report_of(&pass, "stubborn").process.pid.unwrap();
    root.wait_for_output("team-a.stubborn.0", "trapped", Duration::from_secs(5));

    // team-a's workload is deleted (a 30 s grace starts), and it adopts from a FIFO and
    // from /dev/zero; team-b's quota is changed behind corral's back.
    agent.set_leases(vec![
        b.clone(),
        adopt_from("fifo", &fifo),
        adopt_from("zero", Path::new("/dev/zero")),
    ]);
    let g = group("team-b", "api");
    let quota = root.fs().knob_path(Some(&g), Knob::CpuCfsQuota).unwrap();
    std::fs::write(&quota, "90000").unwrap();
    let started = Instant::now();
    let pass = agent.pass(Trigger::Resync);
    let took = started.elapsed();
    assert!(took < Duration::from_millis(500), "the pass took {took:?}");
    assert_eq!(
        root.knob(&g, Knob::CpuCfsQuota),
        "50000",
        "team-b's drift is corrected"
    );
    for name in ["fifo", "zero"] {
        let problems = &report_of(&pass, name).problems;
        assert!(
            problems.iter().any(|p| p.contains("not a regular file")),
            "{name}: {problems:?}"
        );
    }
    assert!(
        Path::new(&format!("/proc/{stubborn_pid}")).exists(),
        "still within its grace period"
    );
    // Ending the test without waiting 30 s: the stubborn process dies, the stop ends, and a
    // pass removes its group.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(stubborn_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    agent.set_leases(vec![b]);
    agent.settle(Trigger::Processes);
    assert!(!root.fs().dirs(Some(&group("team-a", "stubborn")))[0].exists());
}

/// Starting replicas under the smallest CPU quota (1 ms in 100) does not stall the agent:
/// what runs in their groups before a pass returns is only the exec of the command, and the
/// log pump starts outside them and joins them once started.
#[test]
fn starting_replicas_under_the_smallest_quota_takes_no_time_from_the_agent() {
    let root = TestRoot::v1();
    let mut agent = root.agent();
    let leases: Vec<Lease> = (0..10)
        .map(|i| {
            lease(
                "tiny",
                &format!("r{i}"),
                &["sleep", "60"],
                json!({}),
                Some(1),
                None,
            )
        })
        .collect();
    agent.set_leases(leases);
    let started = Instant::now();
    let pass = agent.pass(Trigger::Leases);
    let took = started.elapsed();
    assert_eq!(agent.stats.starts, 10, "{:?}", pass.outcome.failures);
    assert!(took < Duration::from_secs(1), "ten starts took {took:?}");
    for i in 0..10 {
        let g = group("tiny", &format!("r{i}"));
        assert_eq!(root.knob(&g, Knob::CpuCfsQuota), "1000");
        wait_until(
            "the log pump to join its replica",
            Duration::from_secs(10),
            || root.fs().procs(&g).unwrap().len() == 2,
        );
    }
}

/// A replica this agent started and then stopped is reaped: no zombie of it is left while
/// the agent runs on.
#[test]
fn a_stopped_replica_leaves_no_zombie() {
    let root = TestRoot::v1();
    let mut agent = root.agent();
    agent.set_leases(vec![lease(
        "shop",
        "api",
        &["sleep", "60"],
        json!({}),
        None,
        None,
    )]);
    let pass = agent.pass(Trigger::Leases);
    let pid = report_of(&pass, "api").process.pid.unwrap();
    agent.set_leases(vec![]);
    agent.settle(Trigger::Leases);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} is left as a zombie"
    );
}
