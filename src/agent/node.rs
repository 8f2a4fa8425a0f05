//! One node's agent: each pass turns the node's leases into the desired tree, reads the
//! tree as it is, diffs, applies, and reports what it applied and observed. Passes run when
//! leases change, when a process exits, and periodically to undo drift.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Instant;

use regex::Regex;

use super::adopt;
use super::desired::desired_tree;
use super::process;
use super::supervisor::Supervisor;
use crate::alloc::ReplicaKey;
use crate::cgroup::diff::{self, Op};
use crate::cgroup::exec::{self, Outcome};
use crate::cgroup::fs::{CgroupError, Cgroupfs};
use crate::cgroup::observe::{self, Counters};
use crate::cgroup::root::Missing;
use crate::cgroup::tree::{DesiredTree, GroupPath, ObservedTree, Work};
use crate::lease::{DriftNote, FORMAT_VERSION, Lease, Report, UsageSample, unix_now};

/// Why a pass runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The leases changed.
    Leases,
    /// The periodic re-read: whatever it changes is drift.
    Resync,
    /// A process exited, or a restart became due.
    Processes,
}

/// Counts over the agent's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStats {
    /// Passes run.
    pub passes: u64,
    /// Knob files written.
    pub writes: u64,
    /// Values restored by a resync after something else changed them.
    pub drift_corrections: u64,
    /// Processes started.
    pub starts: u64,
    /// Operations that failed.
    pub failures: u64,
    /// Wall time spent in passes, microseconds: with `passes`, the mean time of a pass.
    #[serde(default)]
    pub pass_micros: u64,
}

/// The result of one pass.
#[derive(Clone, Debug, Default)]
pub struct Pass {
    /// The operations the diff asked for.
    pub ops: Vec<Op>,
    /// What applying them did (empty in a dry run).
    pub outcome: Outcome,
    /// A report per lease.
    pub reports: Vec<Report>,
}

/// A node's agent.
pub struct Agent {
    node: String,
    fs: Cgroupfs,
    supervisor: Supervisor,
    leases: Vec<Lease>,
    /// Grace periods of groups seen in leases, kept after the lease is gone.
    graces: HashMap<GroupPath, u32>,
    counters: HashMap<GroupPath, (Instant, Counters)>,
    patterns: HashMap<String, Option<Regex>>,
    /// The last report of each replica, so that an unchanged one keeps its `changedAt`.
    last_reports: HashMap<ReplicaKey, Report>,
    /// Drift restored in each replica's group.
    drift: HashMap<ReplicaKey, DriftNote>,
    dry_run: bool,
    /// The controllers corral's groups cannot have, as of the last pass.
    missing: Missing,
    /// Counts over the agent's life.
    pub stats: AgentStats,
}

/// Why the agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// corral's root group could not be created.
    #[error(
        "{0}\ncorral needs root (or a delegated cgroup subtree) to manage cgroups, and a cgroup filesystem mounted read-write (in a pod: the host's /sys/fs/cgroup and --host-cgroup-namespace, as the chart does); `corral run --dry-run` shows what it would do without changing anything"
    )]
    NoPermission(CgroupError),
    /// corral could not move itself into the leaf of its own delegated group.
    #[error("--cgroup-root self: moving corral into a leaf of {}: {error}", root.display())]
    Leaf {
        /// corral's root.
        root: std::path::PathBuf,
        /// Why not.
        error: std::io::Error,
    },
    /// Another cgroup error.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

/// Puts the processes of corral's groups in those groups in every hierarchy. Before corral
/// kept its groups in the hierarchies it limits nothing in (`devices`, `freezer`,
/// `name=systemd`, ...), its replicas stayed in the agent's own groups there, where a
/// container runtime stopping the agent's container would kill them; an agent taking over
/// from such a version moves them. A process already there is not moved.
fn complete_groups(fs: &Cgroupfs) {
    let groups = match fs.groups() {
        Ok(groups) => groups,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list corral's groups to complete them");
            return;
        }
    };
    let mut moved = 0;
    for group in &groups {
        if let Err(e) = fs.create(Some(group)) {
            tracing::warn!(%group, error = %e, "cannot complete the group in every hierarchy");
            continue;
        }
        let files = fs.procs_files(group);
        for pid in fs.procs(group).unwrap_or_default() {
            let missing: Vec<_> = match fs.procs_files_of(pid) {
                Ok(now) => files.iter().filter(|f| !now.contains(f)).cloned().collect(),
                Err(_) => continue,
            };
            if missing.is_empty() {
                continue;
            }
            match process::move_into(pid, &missing) {
                Ok(()) => moved += 1,
                Err(process::MoveError::Gone { .. }) => {}
                Err(e) => tracing::warn!(%group, error = %e, "cannot complete a process's groups"),
            }
        }
    }
    if moved > 0 {
        tracing::info!(
            processes = moved,
            "moved processes into corral's groups of the hierarchies they were missing from"
        );
    }
}

impl Agent {
    /// The agent of `node`, owning the subtree of `fs`, with its records in `state_dir`.
    /// Creates the root group unless `dry_run`.
    ///
    /// # Errors
    /// The root group cannot be created; without root this says to try `--dry-run`.
    pub fn new(
        node: &str,
        fs: Cgroupfs,
        state_dir: &Path,
        dry_run: bool,
    ) -> Result<Agent, AgentError> {
        if !dry_run {
            crate::cgroup::root::enter_leaf(&fs).map_err(|error| AgentError::Leaf {
                root: fs.root_dirs().first().cloned().unwrap_or_default(),
                error,
            })?;
            fs.create(None).map_err(|e| {
                if e.is_permission() {
                    AgentError::NoPermission(e)
                } else {
                    AgentError::Cgroup(e)
                }
            })?;
            complete_groups(&fs);
        }
        let supervisor = Supervisor::load(state_dir, node);
        if !dry_run
            && let Err(e) =
                crate::state::StateDir(state_dir.to_path_buf()).record_cgroup_root(fs.root())
        {
            tracing::warn!(error = %e, "cannot record the cgroup root for `corral down`");
        }
        Ok(Agent {
            node: node.to_string(),
            supervisor,
            fs,
            leases: Vec::new(),
            graces: HashMap::new(),
            counters: HashMap::new(),
            patterns: HashMap::new(),
            last_reports: HashMap::new(),
            drift: HashMap::new(),
            dry_run,
            missing: Missing::default(),
            stats: AgentStats::default(),
        })
    }

    /// The node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The cgroup filesystem it owns.
    pub fn cgroupfs(&self) -> &Cgroupfs {
        &self.fs
    }

    /// Replaces the leases the agent enforces.
    pub fn set_leases(&mut self, leases: Vec<Lease>) {
        for lease in &leases {
            if let Ok(group) = GroupPath::replica(&lease.key) {
                self.graces.insert(group, lease.grace_seconds);
            }
        }
        self.leases = leases;
    }

    /// True when a pass is due now: a command that exited may be started again, a
    /// background stop has ended (its group can go, or a replacement start), or a replica's
    /// readiness changed (a health check's verdict, or `minReadySeconds` passed). Runs the
    /// health checks that are due, each in a thread of its own.
    pub fn restart_due(&mut self, now_ms: u64) -> bool {
        let readiness = !self.dry_run
            && self
                .supervisor
                .readiness_changed(&self.fs, &self.leases, now_ms);
        readiness
            || self.supervisor.any_stop_finished()
            || self.leases.iter().any(|lease| match &lease.work {
                Work::Command { restart, .. } => {
                    self.supervisor.restart_due(&lease.key, *restart, now_ms)
                }
                Work::Adopt(_) => false,
            })
    }

    /// One pass: reconcile the node with its leases, and report.
    pub fn pass(&mut self, trigger: Trigger) -> Pass {
        let started = Instant::now();
        let pass = self.pass_once(trigger);
        self.stats.pass_micros = self
            .stats
            .pass_micros
            .saturating_add(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        pass
    }

    fn pass_once(&mut self, trigger: Trigger) -> Pass {
        let now_ms = unix_now_ms();
        self.stats.passes += 1;
        let mut problems_by_key: HashMap<ReplicaKey, Vec<String>> = HashMap::new();
        let mut stop_failures = Vec::new();
        if !self.dry_run {
            for (group, outcome) in self.supervisor.finished_stops() {
                if let Err(error) = outcome {
                    if let Some(key) = group.key() {
                        problems_by_key.entry(key).or_default().push(error.clone());
                    }
                    stop_failures.push(exec::Failure {
                        op: format!("stop every process in {group}"),
                        group: Some(group),
                        knob: None,
                        error,
                    });
                }
            }
            for key in self.supervisor.reap(now_ms) {
                tracing::info!(replica = %key, "process exited");
                self.clean_after_exit(&key);
            }
        }
        // Controllers first: a replica's knobs exist only once they reach its group.
        let missing = if self.dry_run {
            Missing::default()
        } else {
            crate::cgroup::root::enable_controllers(&self.fs)
        };
        let (desired, refused) = desired_tree(
            &self.leases,
            self.fs.is_v2(),
            &self.fs.v2_controllers(),
            self.fs.page_size(),
        );
        for (key, reason) in refused {
            problems_by_key.entry(key).or_default().push(reason);
        }
        let mut observed = match self.observe(&desired, &mut problems_by_key) {
            Ok(observed) => observed,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the cgroup tree");
                for lease in &self.leases {
                    problems_by_key
                        .entry(lease.key.clone())
                        .or_default()
                        .push(e.to_string());
                }
                return Pass {
                    reports: self.reports(
                        &desired,
                        &ObservedTree::default(),
                        &Outcome::default(),
                        problems_by_key,
                        now_ms,
                    ),
                    ..Pass::default()
                };
            }
        };
        let mut start_now = self.supervisor.due(&desired, &observed, now_ms);
        let mut diff = diff::diff(&desired, &observed, &start_now);
        // Groups created and controllers enabled make new knob files: do that first, read
        // the tree again, and so converge in one pass.
        let structural: Vec<Op> = diff
            .ops
            .iter()
            .filter(|op| op.is_structural())
            .cloned()
            .collect();
        let mut early = Outcome::default();
        if !self.dry_run && !structural.is_empty() {
            early = exec::apply(&self.fs, &structural, &mut NoProcesses);
            if let Ok(again) = self.observe(&desired, &mut HashMap::new()) {
                observed = again;
                start_now = self.supervisor.due(&desired, &observed, now_ms);
                diff = diff::diff(&desired, &observed, &start_now);
            }
        }
        self.missing = missing;
        let unavailable_now: Vec<(Option<GroupPath>, String)> = diff
            .unavailable
            .iter()
            .map(|(g, k)| (g.clone(), (*k).to_string()))
            .collect();
        if self.dry_run {
            let seen = Outcome {
                unavailable: unavailable_now,
                ..Outcome::default()
            };
            return Pass {
                reports: self.reports(&desired, &observed, &seen, problems_by_key, now_ms),
                ops: diff.ops,
                outcome: Outcome::default(),
            };
        }
        let mut outcome = exec::apply(
            &self.fs,
            &diff.ops,
            &mut self.supervisor.ops(&self.fs, &desired, now_ms),
        );
        outcome.failures.extend(stop_failures);
        outcome.merge_earlier(early);
        outcome.unavailable.extend(unavailable_now);
        // A replica's output goes with its group, as a pod's logs go with the pod.
        for op in &diff.ops {
            if let Op::Remove { group } = op
                && let Some(key) = group.key()
                && !outcome
                    .failures
                    .iter()
                    .any(|f| f.group.as_ref() == Some(group))
                && let Err(e) = self
                    .supervisor
                    .log_sink(&key, crate::lease::LogLimits::default())
                    .remove()
            {
                tracing::warn!(replica = %key, error = %e, "cannot remove the replica's log files");
            }
        }
        self.account(trigger, &diff.ops, &observed, &outcome);
        let keep: BTreeSet<ReplicaKey> = self.leases.iter().map(|l| l.key.clone()).collect();
        let groups: BTreeSet<ReplicaKey> =
            observed.groups.keys().filter_map(GroupPath::key).collect();
        self.supervisor.retain(&keep, &groups);
        if let Err(e) = self.supervisor.save() {
            tracing::warn!(error = %e, "cannot save the supervisor's records");
        }
        // Read the tree again only if something was done to it.
        let observed = if outcome.done.is_empty() {
            observed
        } else {
            observe::observe(&self.fs, &desired).unwrap_or(observed)
        };
        let reports = self.reports(&desired, &observed, &outcome, problems_by_key, now_ms);
        Pass {
            ops: diff.ops,
            outcome,
            reports,
        }
    }

    /// After a main process exited, stops what it left in its group, in the background, so
    /// that a restart starts clean (as a container's processes go with its first one); the
    /// command starts again once the group is empty.
    fn clean_after_exit(&mut self, key: &ReplicaKey) {
        let Ok(group) = GroupPath::replica(key) else {
            return;
        };
        let files = self.fs.procs_files(&group);
        let left = files
            .iter()
            .any(|f| process::procs(f).is_ok_and(|p| !p.is_empty()));
        if left {
            let grace = std::time::Duration::from_secs(u64::from(
                self.graces.get(&group).copied().unwrap_or(10),
            ));
            self.supervisor.stop_in_background(&group, files, grace);
        }
    }

    /// Starts `program log-pump` (corral's own executable) for each command's output, which
    /// rotates it as the lease says. Without it, output is appended unrotated.
    pub fn set_log_pump(&mut self, program: std::path::PathBuf) {
        self.supervisor.set_log_pump(program);
    }

    /// Calls `waker` whenever a background stop ends: a pass should then run, to remove the
    /// emptied group or start the command again.
    pub fn set_waker(&mut self, waker: super::supervisor::Waker) {
        self.supervisor.set_waker(waker);
    }

    /// Passes until nothing is being stopped any more (each stop ends within its grace period
    /// and 5 s): what a command that runs once (`corral down`, `corral run --once`) waits for.
    /// Returns every operation asked for and done, and the last reports.
    pub fn settle(&mut self, trigger: Trigger) -> Pass {
        let mut all = self.pass(trigger);
        while !self.dry_run && self.supervisor.any_stopping() {
            self.supervisor
                .wait_for_a_stop(std::time::Duration::from_secs(1));
            let next = self.pass(Trigger::Processes);
            all.ops.extend(next.ops);
            all.outcome.writes += next.outcome.writes;
            all.outcome.failures.extend(next.outcome.failures);
            all.outcome.unavailable.extend(next.outcome.unavailable);
            all.outcome.done.extend(next.outcome.done);
            all.reports = next.reports;
        }
        all
    }

    /// Reads the tree, with what only the agent knows about each group.
    fn observe(
        &mut self,
        desired: &DesiredTree,
        problems: &mut HashMap<ReplicaKey, Vec<String>>,
    ) -> Result<ObservedTree, CgroupError> {
        let mut observed = observe::observe(&self.fs, desired)?;
        self.fill_adoptable(desired, &mut observed, problems);
        for (group, found) in &mut observed.groups {
            found.grace_seconds = self.graces.get(group).copied();
            found.release = group.key().is_some_and(|k| self.supervisor.releases(&k));
            found.stopping = self.supervisor.is_stopping(group);
            if let Some(want) = desired.groups.get(group) {
                found.outdated = self.supervisor.outdated(group, want);
            }
        }
        Ok(observed)
    }

    fn fill_adoptable(
        &mut self,
        desired: &DesiredTree,
        observed: &mut ObservedTree,
        problems: &mut HashMap<ReplicaKey, Vec<String>>,
    ) {
        let ours: BTreeSet<u32> = observed
            .groups
            .values()
            .flat_map(|g| g.pids.iter().copied())
            .collect();
        for (group, want) in &desired.groups {
            let Some(Work::Adopt(rule)) = &want.work else {
                continue;
            };
            let Some(key) = group.key() else { continue };
            // A lease without a scope (written before corral knew scopes, or forged) adopts
            // nothing.
            let scope = self
                .leases
                .iter()
                .find(|l| l.key == key)
                .and_then(|l| l.adopt_scope.clone())
                .unwrap_or_default();
            let pattern = rule.command_pattern.as_ref().and_then(|pattern| {
                self.patterns
                    .entry(pattern.clone())
                    .or_insert_with(|| Regex::new(pattern).ok())
                    .as_ref()
            });
            match adopt::find(rule, &scope, &self.fs, &ours, pattern) {
                Ok(found) => {
                    if let Some(line) = found.refusals() {
                        problems.entry(key).or_default().push(line);
                    }
                    observed.adoptable.insert(group.clone(), found.pids);
                }
                Err(e) => problems.entry(key).or_default().push(format!("adopt: {e}")),
            }
        }
    }

    fn account(
        &mut self,
        trigger: Trigger,
        ops: &[Op],
        observed: &ObservedTree,
        outcome: &Outcome,
    ) {
        self.stats.writes += outcome.writes as u64;
        self.stats.failures += outcome.failures.len() as u64;
        self.stats.starts += ops.iter().filter(|o| matches!(o, Op::Start { .. })).count() as u64;
        for failure in &outcome.failures {
            tracing::warn!(op = %failure.op, error = %failure.error, "operation failed");
        }
        if trigger != Trigger::Resync {
            return;
        }
        // Leases did not change, so a write to a group that existed restores drift.
        for op in ops {
            if let Op::Write {
                group: Some(group),
                knob,
                value,
            } = op
                && let Some(Some(was)) = observed.groups.get(group).and_then(|g| g.knobs.get(knob))
            {
                self.stats.drift_corrections += 1;
                tracing::info!(group = %group, knob = knob.name(), was = %was, now = %value, "drift corrected");
                if let Some(key) = GroupPath::key(group) {
                    let note = self.drift.entry(key).or_default();
                    note.corrections += 1;
                    note.last = format!("{knob} was {was}, now {value}");
                }
            }
        }
    }

    fn reports(
        &mut self,
        desired: &DesiredTree,
        observed: &ObservedTree,
        outcome: &Outcome,
        mut problems: HashMap<ReplicaKey, Vec<String>>,
        now_ms: u64,
    ) -> Vec<Report> {
        for failure in &outcome.failures {
            if let Some(key) = failure.group.as_ref().and_then(GroupPath::key) {
                problems
                    .entry(key)
                    .or_default()
                    .push(format!("{}: {}", failure.op, failure.error));
            }
        }
        // A limit missing in a replica's group, or in its tenant's, leaves it unenforced.
        let mut unenforced: BTreeSet<GroupPath> = BTreeSet::new();
        for (group, knob) in &outcome.unavailable {
            if let Some(group) = group {
                unenforced.insert(group.clone());
            }
            if let Some(key) = group.as_ref().and_then(GroupPath::key) {
                let line = unavailable(&self.missing, knob);
                let lines = problems.entry(key).or_default();
                if !lines.contains(&line) {
                    lines.push(line);
                }
            }
        }
        unenforced.extend(
            outcome
                .failures
                .iter()
                .filter(|f| f.knob.is_some())
                .filter_map(|f| f.group.clone()),
        );
        let now = Instant::now();
        let mut reports = Vec::with_capacity(self.leases.len());
        let leases = std::mem::take(&mut self.leases);
        for lease in &leases {
            let Ok(group) = GroupPath::replica(&lease.key) else {
                continue;
            };
            let found = observed.groups.get(&group);
            let failed: BTreeSet<_> = outcome
                .failures
                .iter()
                .filter(|f| f.group.as_ref() == Some(&group))
                .filter_map(|f| f.knob)
                .collect();
            let applied = desired
                .groups
                .get(&group)
                .map(|want| {
                    want.knobs
                        .iter()
                        .filter(|(knob, _)| {
                            found
                                .and_then(|f| f.knobs.get(*knob))
                                .is_some_and(Option::is_some)
                                && !failed.contains(*knob)
                        })
                        .map(|(knob, value)| ((*knob).to_string(), value.clone()))
                        .collect()
                })
                .unwrap_or_default();
            let usage = self.usage(&group, now);
            let pids = found.map_or(0, |f| f.pids.len());
            let mut process =
                self.supervisor
                    .report(&lease.key, desired.groups.get(&group), pids, now_ms);
            if unenforced.contains(&group)
                || group.parent().is_some_and(|t| unenforced.contains(&t))
            {
                process.state = crate::lease::ProcessState::Unenforced;
            }
            let mut report = Report {
                version: FORMAT_VERSION,
                key: Some(lease.key.clone()),
                node: self.node.clone(),
                lease_epoch: lease.epoch,
                applied,
                usage,
                process,
                problems: problems.remove(&lease.key).unwrap_or_default(),
                drift: self.drift.get(&lease.key).cloned(),
                changed_at: 0,
            };
            report.changed_at = match self.last_reports.get(&lease.key) {
                Some(last)
                    if Report {
                        changed_at: 0,
                        ..last.clone()
                    } == report =>
                {
                    last.changed_at
                }
                _ => unix_now(),
            };
            self.last_reports.insert(lease.key.clone(), report.clone());
            reports.push(report);
        }
        self.leases = leases;
        let live: BTreeSet<GroupPath> = self
            .leases
            .iter()
            .filter_map(|l| GroupPath::replica(&l.key).ok())
            .collect();
        self.counters.retain(|g, _| live.contains(g));
        self.last_reports
            .retain(|k, _| self.leases.iter().any(|l| &l.key == k));
        self.drift
            .retain(|k, _| self.leases.iter().any(|l| &l.key == k));
        reports
    }

    /// Use since the previous pass; `None` on the first one.
    fn usage(&mut self, group: &GroupPath, now: Instant) -> Option<UsageSample> {
        let counters = observe::counters(&self.fs, group).ok()?;
        let previous = self.counters.insert(group.clone(), (now, counters));
        let (then, before) = previous?;
        let elapsed = now.duration_since(then).as_nanos().max(1);
        let cpu_nanos = u128::from(counters.cpu_nanos.saturating_sub(before.cpu_nanos));
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Some(UsageSample {
            cpu: i64::try_from(cpu_nanos * 1000 / elapsed).unwrap_or(i64::MAX),
            memory: as_i64(counters.memory),
            memory_peak: as_i64(counters.memory_peak.max(counters.memory)),
            throttled_seconds: counters.throttled_nanos as f64 / 1e9,
            oom_kills: as_i64(counters.oom_kills),
            pids: as_i64(counters.pids),
            pressure: counters.pressure.any(),
            memory_events: counters.memory_events,
        })
    }
}

/// What a person reads about a knob that has no file: the reason its controller is
/// missing, with what to do, when corral knows it.
fn unavailable(missing: &Missing, knob: &str) -> String {
    match missing.reason_for(knob) {
        Some(reason) => format!("{knob} cannot be applied: {reason}"),
        None => format!("{knob} is not offered by this kernel"),
    }
}

/// Processes for the structural operations of a pass, which hold none.
struct NoProcesses;

/// A process operation handed to [`NoProcesses`].
#[derive(Debug, thiserror::Error)]
#[error("not a structural operation")]
struct NotStructural;

impl exec::Processes for NoProcesses {
    type Error = NotStructural;

    fn start(&mut self, _: &GroupPath) -> Result<(), NotStructural> {
        Err(NotStructural)
    }
    fn adopt(&mut self, _: &GroupPath, _: &[u32]) -> Result<(), NotStructural> {
        Err(NotStructural)
    }
    fn release(&mut self, _: &GroupPath) -> Result<(), NotStructural> {
        Err(NotStructural)
    }
    fn stop(&mut self, _: &GroupPath, _: std::time::Duration) -> Result<(), NotStructural> {
        Err(NotStructural)
    }
}

/// Unix milliseconds now.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
