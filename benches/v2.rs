//! `corral run` measured on a real cgroup v2 kernel, as `scripts/measure-run.py` measures
//! it on v1 (the VM has no Python):
//!
//! 1. latency: one Workload running `sleep infinity` with a CPU limit under
//!    `corral run --ui log --resync 30`; `--edits N` times (40) its manifest is replaced
//!    (written beside it and renamed over it, as editors do) with the other of two limits,
//!    and the replica's `cpu.max` is polled every millisecond until it shows the new quota;
//! 2. idle cost: one Workload of `--replicas N` (20) replicas of `sleep infinity` under
//!    `corral run --ui log` (resync every 5 s); once all run, corral's CPU time (utime +
//!    stime from /proc/PID/stat) and memory (VmRSS every second, VmHWM) over
//!    `--idle-seconds S` (30), with the agent's passes and writes from `corral status`;
//! 3. yardsticks of the VM's slowdown: a fixed CPU-bound loop and a fixed number of small
//!    file reads; `--yardsticks` runs only these (on any machine), and `--host-loop-ms MS`
//!    and `--host-files-ms MS` (the host's figures) make the VM's run print the ratios.
//!
//! `scripts/v2-measure.sh` runs it in a qemu VM with a cgroup v2 kernel and the release
//! build (`--corral PATH`, default the one cargo built beside it). Each phase has its own
//! state directory and cgroup root, removed with its processes whatever happens. On a
//! machine that is not pure v2, only the loop runs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corral::cgroup::layout::{Layout, Mode};
use serde_json::Value;

// The tests' `remove_tree`; only that file, not the tests' whole `common` module.
#[allow(dead_code)]
#[path = "../tests/common/cgroups.rs"]
mod cgroups;

use cgroups::remove_tree;

const POLICY: &str = "apiVersion: corral.dev/v1alpha1\nkind: ResourcePolicy\n\
    metadata: {name: measure}\nspec: {strategy: Priority}\n";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let number =
        |flag: &str, default: u64| value(flag).and_then(|n| n.parse().ok()).unwrap_or(default);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let (loop_ms, files_ms) = yardsticks();
    if args.iter().any(|a| a == "--yardsticks") {
        println!(
            "yardsticks: cpu loop {loop_ms:.1} ms, file reads {files_ms:.1} ms ({cores} cores)"
        );
        return;
    }
    let layout = Layout::detect().expect("reading /proc/self/mountinfo");
    if layout.mode != Mode::V2 {
        println!(
            "not a pure cgroup v2 system ({}): scripts/v2-measure.sh runs this in a VM; yardsticks: cpu loop {loop_ms:.1} ms, file reads {files_ms:.1} ms",
            layout.mode
        );
        return;
    }
    let mount = layout.unified.expect("a v2 layout has its mount");
    let corral = value("--corral").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_corral")),
        PathBuf::from,
    );
    println!(
        "corral run on cgroup v2 ({cores} cores), {}\n",
        corral.display()
    );

    let edits = number("--edits", 40);
    let samples = latency(&corral, &mount, edits);
    println!(
        "edit → cpu.max, {} edits: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, mean {:.1} ms",
        samples.len(),
        percentile(&samples, 50.0),
        percentile(&samples, 99.0),
        samples.iter().copied().fold(0.0, f64::max),
        samples.iter().sum::<f64>() / samples.len() as f64
    );

    let replicas = number("--replicas", 20);
    let seconds = number("--idle-seconds", 30);
    let idle = idle(&corral, &mount, replicas, seconds);
    println!(
        "{replicas} replicas from start to all running: {:.2} s",
        idle.start_seconds
    );
    println!(
        "idle, {seconds} s with {replicas} replicas: CPU {:.2}% of a core ({} passes, {:.1} ms CPU per pass, mean pass {:.1} ms wall), {} writes",
        idle.cpu_percent, idle.passes, idle.cpu_ms_per_pass, idle.pass_ms, idle.writes
    );
    println!(
        "memory of corral run: VmRSS {:.1} MiB (largest seen), VmHWM {:.1} MiB",
        idle.rss_mib, idle.hwm_mib
    );

    let host = |flag: &str| value(flag).and_then(|ms| ms.parse::<f64>().ok());
    for (what, here, flag) in [
        ("cpu loop", loop_ms, "--host-loop-ms"),
        ("file reads", files_ms, "--host-files-ms"),
    ] {
        match host(flag) {
            Some(host) => println!(
                "yardstick {what}: {here:.1} ms here, {host:.1} ms on the host: {:.1}× slower",
                here / host
            ),
            None => println!("yardstick {what}: {here:.1} ms"),
        }
    }
}

/// The yardsticks of the VM's slowdown, each the best of three runs, ms: a CPU-bound loop
/// (xorshift, 100 million steps, all in registers), and 20,000 reads of a small
/// /proc file (open, read, close: the kind of work a resync does).
fn yardsticks() -> (f64, f64) {
    let best = |work: &dyn Fn()| {
        (0..3)
            .map(|_| {
                let started = Instant::now();
                work();
                started.elapsed().as_secs_f64() * 1000.0
            })
            .fold(f64::INFINITY, f64::min)
    };
    let cpu = best(&|| {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..100_000_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x = std::hint::black_box(x);
        }
        std::hint::black_box(x);
    });
    let files = best(&|| {
        for _ in 0..20_000 {
            std::hint::black_box(std::fs::read("/proc/self/stat").expect("/proc/self/stat"));
        }
    });
    (cpu, files)
}

/// Nearest-rank percentile.
fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn workload(name: &str, replicas: u64, requests: &str, limits: &str) -> String {
    format!(
        "apiVersion: corral.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {name}, namespace: measure}}\n\
         spec:\n  replicas: {replicas}\n  resources:\n    requests: {requests}\n    limits: {limits}\n  \
         terminationGracePeriodSeconds: 2\n  command: {{args: [sleep, infinity]}}\n"
    )
}

/// One `corral run` with its own manifests, state directory and cgroup root; on drop it is
/// stopped, `corral down` runs, and whatever is left in the root is killed and removed.
struct Run {
    corral: PathBuf,
    mount: PathBuf,
    root: String,
    manifests: tempfile::TempDir,
    state: tempfile::TempDir,
    child: Option<Child>,
}

impl Run {
    fn new(corral: &Path, mount: &Path, phase: &str) -> Run {
        Run {
            corral: corral.to_path_buf(),
            mount: mount.to_path_buf(),
            root: format!("corral-measure-{}-{phase}", std::process::id()),
            manifests: tempfile::tempdir().expect("a temporary directory"),
            state: tempfile::tempdir().expect("a temporary directory"),
            child: None,
        }
    }

    /// Writes a manifest as editors do: beside it, then renamed over it.
    fn write(&self, name: &str, text: &str) {
        let tmp = self.manifests.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("writing a manifest");
        std::fs::rename(&tmp, self.manifests.path().join(name)).expect("renaming a manifest");
    }

    fn place(&self) -> [String; 4] {
        [
            "--state-dir".into(),
            self.state.path().to_string_lossy().into_owned(),
            "--cgroup-root".into(),
            self.root.clone(),
        ]
    }

    fn start(&mut self, resync: &str) {
        let child = Command::new(&self.corral)
            .arg("run")
            .args(self.place())
            .arg("-f")
            .arg(self.manifests.path())
            .args(["--ui", "log", "--resync", resync])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting corral run");
        self.child = Some(child);
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("corral run is running").id()
    }

    fn status(&self) -> Value {
        let output = Command::new(&self.corral)
            .arg("status")
            .args(self.place())
            .args(["-o", "json"])
            .output()
            .expect("corral status");
        serde_json::from_slice(&output.stdout).unwrap_or(Value::Null)
    }

    fn knob(&self, group: &str, knob: &str) -> Option<String> {
        std::fs::read_to_string(self.mount.join(&self.root).join(group).join(knob))
            .ok()
            .map(|s| s.trim().to_string())
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
        let _ = Command::new(&self.corral)
            .arg("down")
            .args(self.place())
            .stderr(Stdio::null())
            .status();
        remove_tree(&self.mount.join(&self.root));
    }
}

/// Polls `condition` every `poll` until it holds.
fn wait_until(what: &str, timeout: Duration, poll: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(poll);
    }
}

/// How often a cgroup file is polled: each sample is up to this late.
const POLL_FILE: Duration = Duration::from_millis(1);
/// How often `corral status` runs (a process of its own, which competes with corral).
const POLL_STATUS: Duration = Duration::from_millis(250);

/// Edit → new `cpu.max`, one sample per edit, ms.
fn latency(corral: &Path, mount: &Path, edits: u64) -> Vec<f64> {
    let mut run = Run::new(corral, mount, "latency");
    let requests = "{cpu: 10m, memory: 8Mi}";
    run.write("policy.yaml", POLICY);
    run.write("lat.yaml", &workload("lat", 1, requests, "{cpu: 300m}"));
    run.start("30");
    let quota = |run: &Run| run.knob("measure/lat.0", "cpu.max");
    wait_until(
        "the first cpu.max",
        Duration::from_secs(60),
        POLL_FILE,
        || quota(&run).as_deref() == Some("30000 100000"),
    );
    let mut samples = Vec::new();
    for i in 0..edits {
        let (limit, want) = if i % 2 == 0 {
            ("400m", "40000 100000")
        } else {
            ("300m", "30000 100000")
        };
        let limits = format!("{{cpu: {limit}}}");
        let started = Instant::now();
        run.write("lat.yaml", &workload("lat", 1, requests, &limits));
        wait_until(
            &format!("cpu.max {want}"),
            Duration::from_secs(20),
            POLL_FILE,
            || quota(&run).as_deref() == Some(want),
        );
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(50));
    }
    samples
}

/// What the idle window measured.
struct Idle {
    start_seconds: f64,
    cpu_percent: f64,
    passes: u64,
    cpu_ms_per_pass: f64,
    pass_ms: f64,
    writes: u64,
    rss_mib: f64,
    hwm_mib: f64,
}

/// utime + stime of `pid`, seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("corral run's stat");
    let (_, rest) = stat.rsplit_once(") ").expect("a stat line");
    // Fields 14 and 15; `rest` starts at field 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / per_second as f64
}

/// A field of /proc/PID/status in MiB (`VmRSS`, `VmHWM`).
fn status_mib(pid: u32, field: &str) -> f64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("corral run's status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn agent_counter(status: &Value, name: &str) -> u64 {
    status["run"]["agent"][name].as_u64().unwrap_or(0)
}

fn idle(corral: &Path, mount: &Path, replicas: u64, seconds: u64) -> Idle {
    let mut run = Run::new(corral, mount, "idle");
    run.write("policy.yaml", POLICY);
    run.write(
        "idle.yaml",
        &workload(
            "idle",
            replicas,
            "{cpu: 1m, memory: 1Mi}",
            "{cpu: 10m, memory: 16Mi, pids: 4}",
        ),
    );
    let started = Instant::now();
    run.start("5");
    let running = |status: &Value| {
        status["replicas"].as_array().map_or(0, |rows| {
            rows.iter()
                .filter(|r| r["report"]["process"]["state"] == "Running")
                .count()
        })
    };
    wait_until(
        "every replica to run",
        Duration::from_secs(300),
        POLL_STATUS,
        || running(&run.status()) as u64 == replicas,
    );
    let start_seconds = started.elapsed().as_secs_f64();
    // One more pass, so that the window holds only resyncs.
    let passes = agent_counter(&run.status(), "passes");
    wait_until(
        "one more pass",
        Duration::from_secs(30),
        POLL_STATUS,
        || agent_counter(&run.status(), "passes") > passes,
    );
    let pid = run.pid();
    let before = run.status();
    let (cpu_before, window) = (cpu_seconds(pid), Instant::now());
    let mut rss_mib: f64 = 0.0;
    while window.elapsed() < Duration::from_secs(seconds) {
        rss_mib = rss_mib.max(status_mib(pid, "VmRSS"));
        std::thread::sleep(Duration::from_secs(1));
    }
    let cpu = cpu_seconds(pid) - cpu_before;
    let wall = window.elapsed().as_secs_f64();
    let after = run.status();
    rss_mib = rss_mib.max(status_mib(pid, "VmRSS"));
    let delta =
        |name: &str| agent_counter(&after, name).saturating_sub(agent_counter(&before, name));
    let passes = delta("passes");
    Idle {
        start_seconds,
        cpu_percent: cpu / wall * 100.0,
        passes,
        cpu_ms_per_pass: cpu * 1000.0 / passes.max(1) as f64,
        pass_ms: delta("passMicros") as f64 / 1000.0 / passes.max(1) as f64,
        writes: delta("writes"),
        rss_mib,
        hwm_mib: status_mib(pid, "VmHWM"),
    }
}
