//! Rollouts with `corral run` on this machine's cgroups and real processes: a change to what
//! replicas run replaces them `maxUnavailable` at a time, each waiting for the one before
//! to be ready; a change of resources alone restarts nothing; the restart annotation
//! replaces every replica; a failing health check holds the rollout, and a fixed check
//! lets it go on without a restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::cgroups::{gone, is_log_pump, procs};
use common::cli::{Cli as Setup, POLICY};
use common::wait::wait_until;

/// Workload `test/web`: `replicas` of `sleep 600` with `V=version` in the environment, a
/// CPU limit, and `extra` lines appended to its spec (2-space indented).
fn web(replicas: u32, version: &str, cpu_limit: &str, annotations: &str, extra: &str) -> String {
    format!(
        "apiVersion: corral.dev/v1alpha1\nkind: Workload\n\
         metadata: {{name: web, namespace: test{annotations}}}\n\
         spec:\n  replicas: {replicas}\n  terminationGracePeriodSeconds: 1\n  \
         resources:\n    requests: {{cpu: 10m, memory: 8Mi}}\n    limits: {{cpu: {cpu_limit}, memory: 32Mi}}\n  \
         command:\n    args: [sleep, \"600\"]\n    env: [{{name: V, value: \"{version}\"}}]\n{extra}"
    )
}

fn setup() -> Setup {
    let setup = Setup::under("corral-rollout", common::cgroups::hierarchies());
    setup.write("policy.yaml", POLICY);
    setup
}

fn group(setup: &Setup, index: u32) -> PathBuf {
    Path::new("/sys/fs/cgroup/cpu")
        .join(&setup.root)
        .join("test")
        .join(format!("web.{index}"))
}

/// True when `pid` is a replica's command, `sleep` (not its log pump, nor a health check).
fn is_command(pid: u32) -> bool {
    !is_log_pump(pid)
        && !gone(pid)
        && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep\0"))
}

/// The replica's command, when one runs.
fn main_pid(setup: &Setup, index: u32) -> Option<u32> {
    procs(&group(setup, index))
        .into_iter()
        .find(|p| is_command(*p))
}

/// True when `corral status` reports every one of `replicas` ready.
fn all_ready(setup: &Setup, replicas: usize) -> bool {
    setup.status()["replicas"].as_array().is_some_and(|r| {
        r.len() == replicas && r.iter().all(|r| r["report"]["process"]["ready"] == true)
    })
}

/// `V` in the environment of `pid`.
fn version_of(pid: u32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ
        .split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(b"V="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The version each replica runs, by index; `None` where none runs.
fn versions(setup: &Setup, replicas: u32) -> Vec<Option<String>> {
    (0..replicas)
        .map(|i| main_pid(setup, i).and_then(version_of))
        .collect()
}

fn all(version: &str, replicas: u32) -> Vec<Option<String>> {
    vec![Some(version.to_string()); replicas as usize]
}

/// Each pid seen: its replica, the `V` it ran, when it was first and last seen.
type Seen = BTreeMap<u32, (u32, String, Instant, Instant)>;

/// Samples which process runs in each replica's group every 20 ms until stopped: for each
/// pid, when it was first and last seen, and the version it ran.
struct Sampler {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    /// The most replicas seen without a process at once.
    most_empty: Arc<Mutex<usize>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(groups: Vec<PathBuf>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let most_empty = Arc::new(Mutex::new(0));
        let thread = std::thread::spawn({
            let (stop, seen, most_empty) = (stop.clone(), seen.clone(), most_empty.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    let mut empty = 0;
                    for (index, dir) in groups.iter().enumerate() {
                        let main = procs(dir).into_iter().find(|p| is_command(*p));
                        let Some(pid) = main else {
                            empty += 1;
                            continue;
                        };
                        let version = version_of(pid).unwrap_or_default();
                        let mut seen = seen.lock().unwrap();
                        let entry = seen.entry(pid).or_insert((
                            u32::try_from(index).unwrap(),
                            version,
                            now,
                            now,
                        ));
                        entry.3 = now;
                    }
                    let mut most = most_empty.lock().unwrap();
                    *most = (*most).max(empty);
                    drop(most);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        Sampler {
            stop,
            seen,
            most_empty,
            thread: Some(thread),
        }
    }

    /// Stops sampling; returns what was seen, by pid, and the most empty groups at once.
    fn finish(mut self) -> (Seen, usize) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let seen = self.seen.lock().unwrap().clone();
        let most = *self.most_empty.lock().unwrap();
        (seen, most)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn an_edit_of_the_environment_replaces_replicas_one_at_a_time_each_after_the_last_is_ready() {
    let mut setup = setup();
    let update = "  update: {maxUnavailable: 1, minReadySeconds: 1}\n";
    setup.write("web.yaml", &web(3, "1", "200m", "", update));
    setup.start();
    wait_until("3 ready replicas of V=1", Duration::from_secs(30), || {
        versions(&setup, 3) == all("1", 3) && all_ready(&setup, 3)
    });
    let before: Vec<u32> = (0..3).map(|i| main_pid(&setup, i).unwrap()).collect();
    let sampler = Sampler::start((0..3).map(|i| group(&setup, i)).collect());
    setup.write("web.yaml", &web(3, "2", "200m", "", update));
    wait_until("3 replicas of V=2", Duration::from_secs(60), || {
        versions(&setup, 3) == all("2", 3)
    });
    let (seen, most_empty) = sampler.finish();
    assert!(
        before.iter().all(|p| gone(*p)),
        "the old processes are gone"
    );
    assert!(
        most_empty <= 1,
        "at most maxUnavailable (1) replica without a process at once, saw {most_empty}"
    );
    // Each old process stops only once the replica replaced before it has run its new
    // process for minReadySeconds (1 s), less the sampling interval.
    let mut stops: Vec<(Instant, u32)> = before
        .iter()
        .map(|pid| (seen[pid].3, seen[pid].0))
        .collect();
    stops.sort();
    for pair in stops.windows(2) {
        let (_, replaced) = pair[0];
        let (next_stop, next) = pair[1];
        let new_start = seen
            .values()
            .find(|(index, version, _, _)| *index == replaced && version == "2")
            .map(|(_, _, first, _)| *first)
            .expect("the replaced replica's new process was seen");
        assert!(
            next_stop >= new_start + Duration::from_millis(900),
            "replica {next} stopped {:?} after replica {replaced}'s new process started, \
             before it was ready (minReadySeconds 1)",
            next_stop.saturating_duration_since(new_start)
        );
    }
    // Status: every replica reports the lease's revision and no rollout is in progress.
    wait_until(
        "the rollout to be reported done",
        Duration::from_secs(10),
        || {
            let status = setup.status();
            let rows = status["replicas"].as_array().unwrap();
            let done = status["run"]["rollouts"]
                .as_array()
                .is_some_and(|r| r.iter().all(|r| r["outdated"] == 0 && r["updated"] == 3));
            done && rows.len() == 3
                && rows.iter().all(|r| {
                    r["report"]["process"]["revision"] == r["lease"]["revision"]
                        && r["report"]["process"]["ready"] == true
                })
        },
    );
    let table = setup.corral("status", &[]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(!text.contains("rollout of"), "{text}");
}

#[test]
fn a_change_of_resources_alone_restarts_nothing_and_the_restart_annotation_replaces_all() {
    let mut setup = setup();
    let update = "  update: {maxUnavailable: 2}\n";
    setup.write("web.yaml", &web(2, "1", "200m", "", update));
    setup.start();
    wait_until("2 ready replicas", Duration::from_secs(30), || {
        versions(&setup, 2) == all("1", 2) && all_ready(&setup, 2)
    });
    let before: Vec<u32> = (0..2).map(|i| main_pid(&setup, i).unwrap()).collect();
    let quota = |i: u32| {
        std::fs::read_to_string(group(&setup, i).join("cpu.cfs_quota_us"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    setup.write("web.yaml", &web(2, "1", "300m", "", update));
    wait_until("the new quota", Duration::from_secs(20), || {
        quota(0) == "30000" && quota(1) == "30000"
    });
    // Give a wrongful replacement every chance to show.
    std::thread::sleep(Duration::from_secs(2));
    let after: Vec<u32> = (0..2).map(|i| main_pid(&setup, i).unwrap()).collect();
    assert_eq!(
        before, after,
        "a change of resources alone restarts nothing"
    );

    let restarted = ", annotations: {corral.dev/restartedAt: \"2026-11-30T03:00:00Z\"}";
    setup.write("web.yaml", &web(2, "1", "300m", restarted, update));
    wait_until("both replicas replaced", Duration::from_secs(30), || {
        (0..2).all(|i| main_pid(&setup, i).is_some_and(|p| !before.contains(&p)))
    });
    assert_eq!(versions(&setup, 2), all("1", 2), "the same spec runs again");
    assert!(before.iter().all(|p| gone(*p)));
}

#[test]
fn a_failing_health_check_holds_the_rollout_and_a_fixed_check_lets_it_go_on() {
    let mut setup = setup();
    let check = |test: &str| {
        format!(
            "    healthCheck: {{exec: {{command: [sh, -c, '{test}']}}, periodSeconds: 1, timeoutSeconds: 5, failureThreshold: 3}}\n  \
             update: {{maxUnavailable: 1}}\n"
        )
    };
    // Healthy only while V is 1.
    setup.write(
        "web.yaml",
        &web(2, "1", "200m", "", &check("test \"$V\" = 1")),
    );
    setup.start();
    wait_until("2 ready replicas of V=1", Duration::from_secs(30), || {
        versions(&setup, 2) == all("1", 2) && all_ready(&setup, 2)
    });
    let held = main_pid(&setup, 1).unwrap();
    setup.write(
        "web.yaml",
        &web(2, "2", "200m", "", &check("test \"$V\" = 1")),
    );
    wait_until("replica 0 to run V=2", Duration::from_secs(30), || {
        versions(&setup, 2)[0].as_deref() == Some("2")
    });
    // Replica 0 never becomes ready: replica 1 keeps its process, and status says why.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(main_pid(&setup, 1), Some(held), "the rollout is held");
    let status = setup.status();
    let rollout = &status["run"]["rollouts"][0];
    assert_eq!(rollout["waiting"], serde_json::json!([1]), "{status:#}");
    assert_eq!(status["replicas"][0]["report"]["process"]["ready"], false);
    let text = String::from_utf8_lossy(&setup.corral("status", &[]).stdout).into_owned();
    assert!(
        text.contains("rollout of test/web: 1 of 2 replicas updated")
            && text.contains("replica 1 waits"),
        "{text}"
    );
    assert!(text.contains("not ready"), "{text}");

    // A check that passes is applied in place: replica 0 keeps its process, becomes
    // ready, and the rollout goes on to replica 1.
    let replaced = main_pid(&setup, 0).unwrap();
    setup.write("web.yaml", &web(2, "2", "200m", "", &check("true")));
    wait_until("replica 1 to run V=2", Duration::from_secs(30), || {
        versions(&setup, 2) == all("2", 2)
    });
    assert_eq!(
        main_pid(&setup, 0),
        Some(replaced),
        "a new check restarts nothing"
    );
    assert!(gone(held));
}
