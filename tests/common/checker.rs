//! The fault tests' checker: which copies of each replica run, from the kernel's own
//! cgroup files, sampled all along; and a log of the faults injected.
//!
//! A copy of replica `<ns>/<name>` index `i` runs on node `N` when the group
//! `/sys/fs/cgroup/cpu/<N's root>/<ns>/<name>.<i>` holds a live process other than corral's
//! log pump (a zombie counts as stopped). [`Sampler`] reads every agent's groups every
//! [`SAMPLE_PERIOD`] on a thread of its own and keeps each change, with its time, so the
//! history is complete at that resolution: the assertions are made on it afterwards, for any
//! window of time, and printed when one fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::cgroups::{gone, is_log_pump, procs};

/// How often the cgroup files are read.
pub const SAMPLE_PERIOD: Duration = Duration::from_millis(50);
/// The hierarchies an agent makes groups in (cgroup v1 on this machine).
pub const HIERARCHIES: [&str; 5] = ["cpu", "cpuacct", "memory", "pids", "blkio"];

/// A replica: its workload (`ns/name`) and its index.
pub type Replica = (String, u32);
/// Per replica, the nodes where a copy runs, each with the copy's main process: the oldest
/// live one in its group (the children a replica forks and reaps, such as `sleep` in a
/// shell loop, come and go without changing it; a restart does).
pub type Copies = BTreeMap<Replica, BTreeMap<String, u32>>;

/// The start time of a process, in clock ticks since boot (`/proc/PID/stat`, field 22).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// The live processes of a replica's group, corral's log pump and zombies aside.
pub fn live_procs(group: &Path) -> Vec<u32> {
    procs(group)
        .into_iter()
        .filter(|&pid| !is_log_pump(pid) && !gone(pid))
        .collect()
}

/// The copies as they were from `at` until the next change.
#[derive(Clone, Debug)]
pub struct Change {
    pub at: Instant,
    pub copies: Copies,
}

/// Reads the copies running below each node's root now.
pub fn read_copies(roots: &[(String, String)]) -> Copies {
    let mut copies = Copies::new();
    for (node, root) in roots {
        let base = Path::new("/sys/fs/cgroup/cpu").join(root);
        let Ok(namespaces) = std::fs::read_dir(&base) else {
            continue;
        };
        for ns in namespaces.flatten().filter(|e| e.path().is_dir()) {
            let Ok(groups) = std::fs::read_dir(ns.path()) else {
                continue;
            };
            for group in groups.flatten().filter(|e| e.path().is_dir()) {
                let name = group.file_name().to_string_lossy().into_owned();
                let Some((workload, index)) = name.rsplit_once('.') else {
                    continue;
                };
                let Ok(index) = index.parse::<u32>() else {
                    continue;
                };
                let live = live_procs(&group.path());
                let Some(main) = live
                    .iter()
                    .copied()
                    .min_by_key(|&pid| (start_time(pid).unwrap_or(u64::MAX), pid))
                else {
                    continue;
                };
                let key = (
                    format!("{}/{workload}", ns.file_name().to_string_lossy()),
                    index,
                );
                copies.entry(key).or_default().insert(node.clone(), main);
            }
        }
    }
    copies
}

/// Every group left below the roots, in every hierarchy (the roots themselves aside).
pub fn groups_left(roots: &[(String, String)]) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(entry.path());
                walk(&entry.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    for (_, root) in roots {
        for hierarchy in HIERARCHIES {
            walk(
                &Path::new("/sys/fs/cgroup").join(hierarchy).join(root),
                &mut out,
            );
        }
    }
    out
}

/// True when every replica of `desired` (workload → replicas) runs in exactly one copy,
/// and nothing else runs.
pub fn converged(copies: &Copies, desired: &BTreeMap<String, u32>) -> bool {
    let wanted: BTreeSet<Replica> = desired
        .iter()
        .flat_map(|(w, &n)| (0..n).map(move |i| (w.clone(), i)))
        .collect();
    wanted
        .iter()
        .all(|r| copies.get(r).is_some_and(|c| c.len() == 1))
        && copies.keys().all(|r| wanted.contains(r))
}

/// True when every replica of `desired` runs in at least one copy.
pub fn all_running(copies: &Copies, desired: &BTreeMap<String, u32>) -> bool {
    desired
        .iter()
        .all(|(w, &n)| (0..n).all(|i| copies.contains_key(&(w.clone(), i))))
}

/// One line per replica: where its copies run.
pub fn describe(copies: &Copies) -> String {
    if copies.is_empty() {
        return "nothing runs".into();
    }
    copies
        .iter()
        .map(|((w, i), nodes)| {
            let at: Vec<String> = nodes
                .iter()
                .map(|(node, pid)| format!("{node} (pid {pid})"))
                .collect();
            format!("{w}.{i} on {}", at.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Samples the copies every [`SAMPLE_PERIOD`] until dropped.
pub struct Sampler {
    roots: Vec<(String, String)>,
    history: Arc<Mutex<Vec<Change>>>,
    samples: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// When sampling started, and the same on the wall clock.
    pub start: Instant,
    pub start_unix_ms: i64,
}

impl Sampler {
    /// Starts sampling the groups below each node's root (`(node, root)`).
    pub fn start(roots: Vec<(String, String)>) -> Sampler {
        let history = Arc::new(Mutex::new(Vec::<Change>::new()));
        let samples = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let start_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let thread = {
            let (roots, history, samples, stop) = (
                roots.clone(),
                Arc::clone(&history),
                Arc::clone(&samples),
                Arc::clone(&stop),
            );
            std::thread::Builder::new()
                .name("sampler".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let at = Instant::now();
                        let copies = read_copies(&roots);
                        samples.fetch_add(1, Ordering::Relaxed);
                        {
                            let mut h = history.lock().unwrap_or_else(|e| e.into_inner());
                            if h.last().is_none_or(|last| last.copies != copies) {
                                h.push(Change { at, copies });
                            }
                        }
                        std::thread::sleep(SAMPLE_PERIOD.saturating_sub(at.elapsed()));
                    }
                })
                .unwrap()
        };
        Sampler {
            roots,
            history,
            samples,
            stop,
            thread: Some(thread),
            start,
            start_unix_ms,
        }
    }

    /// The roots sampled.
    pub fn roots(&self) -> &[(String, String)] {
        &self.roots
    }

    /// The copies at `at` (the last change before it).
    pub fn at(&self, at: Instant) -> Copies {
        self.history()
            .iter()
            .rev()
            .find(|c| c.at <= at)
            .map(|c| c.copies.clone())
            .unwrap_or_default()
    }

    /// The replicas that ran both at `from` and at `to` but not as the same processes on
    /// the same nodes: restarted, or moved.
    pub fn replaced(&self, from: Instant, to: Instant) -> Vec<String> {
        let (before, after) = (self.at(from), self.at(to));
        before
            .iter()
            .filter_map(|(r, was)| {
                let now = after.get(r)?;
                (now != was).then(|| format!("{}.{}: {was:?} then {now:?}", r.0, r.1))
            })
            .collect()
    }

    /// Samples taken so far.
    pub fn samples(&self) -> u64 {
        self.samples.load(Ordering::Relaxed)
    }

    /// Every change so far.
    pub fn history(&self) -> Vec<Change> {
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The copies at the last sample.
    pub fn now(&self) -> Copies {
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .map(|c| c.copies.clone())
            .unwrap_or_default()
    }

    /// Seconds since sampling started, for messages.
    pub fn secs(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.start).as_secs_f64()
    }

    /// Seconds since sampling started of a Unix time in milliseconds (ZooKeeper's clock).
    pub fn secs_of_unix_ms(&self, ms: i64) -> f64 {
        (ms - self.start_unix_ms) as f64 / 1000.0
    }

    /// The changes that overlap `[from, to]`, each with the end of its interval.
    fn intervals(&self, from: Instant, to: Instant) -> Vec<(Instant, Instant, Copies)> {
        let history = self.history();
        let mut out = Vec::new();
        for (i, change) in history.iter().enumerate() {
            let end = history.get(i + 1).map_or_else(Instant::now, |next| next.at);
            if end > from && change.at <= to {
                out.push((change.at, end, change.copies.clone()));
            }
        }
        out
    }

    /// Where a replica of one of `workloads` ran in more than one copy during `[from,
    /// to]`: each interval, with a line for a person.
    pub fn duplicates(
        &self,
        workloads: &BTreeSet<String>,
        from: Instant,
        to: Instant,
    ) -> Vec<(Instant, Instant, String)> {
        let mut out = Vec::new();
        for (start, end, copies) in self.intervals(from, to) {
            for ((w, i), nodes) in &copies {
                if workloads.contains(w) && nodes.len() > 1 {
                    let at: Vec<String> = nodes
                        .iter()
                        .map(|(node, pid)| format!("{node} (pid {pid})"))
                        .collect();
                    let line = format!(
                        "{:.2}s-{:.2}s: {w}.{i} on {}",
                        self.secs(start),
                        self.secs(end),
                        at.join(", ")
                    );
                    out.push((start, end, line));
                }
            }
        }
        out
    }

    /// [`Sampler::duplicates`], the lines only.
    pub fn more_than_one(
        &self,
        workloads: &BTreeSet<String>,
        from: Instant,
        to: Instant,
    ) -> Vec<String> {
        self.duplicates(workloads, from, to)
            .into_iter()
            .map(|(_, _, line)| line)
            .collect()
    }

    /// The longest time, within `[from, to]`, that a replica of `desired` had no copy.
    pub fn longest_gap(
        &self,
        desired: &BTreeMap<String, u32>,
        from: Instant,
        to: Instant,
    ) -> Option<(Replica, Duration)> {
        let mut missing_since: BTreeMap<Replica, Instant> = BTreeMap::new();
        let mut longest: Option<(Replica, Duration)> = None;
        let mut note = |r: &Replica, d: Duration| {
            if longest.as_ref().is_none_or(|(_, l)| d > *l) {
                longest = Some((r.clone(), d));
            }
        };
        for (start, end, copies) in self.intervals(from, to) {
            let start = start.max(from);
            for (w, &n) in desired {
                for i in 0..n {
                    let r = (w.clone(), i);
                    if copies.contains_key(&r) {
                        if let Some(since) = missing_since.remove(&r) {
                            note(&r, start - since);
                        }
                    } else {
                        missing_since.entry(r).or_insert(start);
                    }
                }
            }
            let _ = end;
        }
        let to = to.min(Instant::now());
        for (r, since) in missing_since {
            note(&r, to.saturating_duration_since(since));
        }
        longest
    }

    /// Waits until the copies match `desired` exactly (see [`converged`]) and have for
    /// `stable`, at most until `since + bound`. Returns, after `since`, when every replica
    /// first ran again (at least one copy each) and when the copies first matched for good,
    /// or the history of the wait.
    pub fn wait_converged(
        &self,
        desired: &BTreeMap<String, u32>,
        since: Instant,
        bound: Duration,
        stable: Duration,
    ) -> Result<(Duration, Duration), String> {
        self.wait_converged_with(desired, since, bound, stable, || {})
    }

    /// [`Sampler::wait_converged`], calling `tick` at every look meanwhile.
    pub fn wait_converged_with(
        &self,
        desired: &BTreeMap<String, u32>,
        since: Instant,
        bound: Duration,
        stable: Duration,
        mut tick: impl FnMut(),
    ) -> Result<(Duration, Duration), String> {
        let deadline = since + bound;
        loop {
            tick();
            let history = self.history();
            // The last change from which the copies matched, if they still do.
            let settled = history
                .iter()
                .rposition(|c| !converged(&c.copies, desired))
                .map_or(Some(0), |i| (i + 1 < history.len()).then_some(i + 1))
                .map(|i| history[i].at);
            if let Some(at) = settled {
                let at = at.max(since);
                if at.elapsed() >= stable {
                    if at > deadline {
                        return Err(format!(
                            "converged only {:.2}s after {:.2}s, beyond the bound of {bound:?}",
                            (at - since).as_secs_f64(),
                            self.secs(since)
                        ));
                    }
                    let running = self.first_all_running(desired, since).unwrap_or(at);
                    return Ok((running - since, at - since));
                }
            }
            if Instant::now() > deadline + stable {
                return Err(format!(
                    "not converged within {bound:?} after {:.2}s: want {desired:?}\n{}",
                    self.secs(since),
                    self.timeline(since)
                ));
            }
            std::thread::sleep(SAMPLE_PERIOD);
        }
    }

    /// When, from `since`, every replica of `desired` first had a copy.
    fn first_all_running(
        &self,
        desired: &BTreeMap<String, u32>,
        since: Instant,
    ) -> Option<Instant> {
        let history = self.history();
        let mut at = None;
        for (i, change) in history.iter().enumerate() {
            let end = history.get(i + 1).map(|n| n.at);
            if end.is_some_and(|e| e <= since) {
                continue;
            }
            if all_running(&change.copies, desired) {
                at = Some(change.at.max(since));
                break;
            }
        }
        at
    }

    /// The changes since `since`, one line each, for a person.
    pub fn timeline(&self, since: Instant) -> String {
        self.history()
            .iter()
            .filter(|c| c.at + Duration::from_secs(1) >= since)
            .map(|c| format!("  {:8.2}s {}", self.secs(c.at), describe(&c.copies)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The faults injected and what came of them, with the time since the test started;
/// printed as they happen and again at the end.
pub struct FaultLog {
    start: Instant,
    entries: Mutex<Vec<(Duration, String)>>,
}

impl FaultLog {
    pub fn new(start: Instant) -> FaultLog {
        FaultLog {
            start,
            entries: Mutex::new(Vec::new()),
        }
    }

    /// Notes `what` now, and prints it.
    pub fn note(&self, what: impl Into<String>) {
        let what = what.into();
        let at = self.start.elapsed();
        eprintln!("[{:8.2}s] {what}", at.as_secs_f64());
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((at, what));
    }

    /// Everything noted, one line each.
    pub fn text(&self) -> String {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(at, what)| format!("  [{:8.2}s] {what}", at.as_secs_f64()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
