//! The supervisor of each replica's command: starts it in its group, notices when it exits,
//! decides when to restart it (restart policy and backoff), and remembers the running
//! processes in the state directory so that a new corral takes them over instead of
//! starting them again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::exits::ExitWatch;
use super::health::{Probes, Target};
use super::logs::LogSink;
use super::process::{self, Backoff, ExitStatusInfo, LaunchSpec, ProcessId};
use crate::alloc::ReplicaKey;
use crate::api::workload::{AdoptOnDelete, RestartPolicy};
use crate::cgroup::exec::Processes;
use crate::cgroup::fs::Cgroupfs;
use crate::cgroup::tree::{DesiredGroup, DesiredTree, GroupPath, ObservedTree, Work};
use crate::lease::{Lease, LogLimits, ProcessReport, ProcessState};
use crate::state::private;

/// What is known of one replica's command across corral restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    /// The main process, while it runs.
    main: Option<ProcessId>,
    /// Times started after the first.
    restarts: u32,
    /// How the last run ended.
    last_exit: Option<String>,
    /// Whether the last run failed; `None` when unknown (it was started by an earlier corral,
    /// which alone could read its exit status).
    last_failed: Option<bool>,
    /// Unix milliseconds before which it must not be started again.
    not_before_ms: u64,
    /// Unix milliseconds of the last start.
    started_ms: u64,
    /// Processes adopted into the group.
    adopted: usize,
    /// Where the adopted processes came from (a `cgroup.procs` file per hierarchy), to
    /// move them back when the replica goes (`onDelete: Release`); empty for `Stop`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    release_to: Vec<PathBuf>,
    /// The revision of the lease the running command started from; empty when it started
    /// before corral knew revisions (it then takes the first revision it is leased with).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    revision: String,
}

/// The supervisor of one node's replicas.
pub struct Supervisor {
    state_file: PathBuf,
    log_dir: PathBuf,
    records: BTreeMap<ReplicaKey, Record>,
    /// Processes this corral started: their exit status can be read.
    children: HashMap<ReplicaKey, Child>,
    backoffs: HashMap<ReplicaKey, Backoff>,
    saved: BTreeMap<ReplicaKey, Record>,
    /// Groups being stopped in the background, so that no pass waits out a grace period.
    stopping: HashMap<GroupPath, JoinHandle<Result<process::StopOutcome, String>>>,
    /// Called when a background stop ends, to run a pass that removes the group.
    waker: Option<Waker>,
    /// corral's executable, to start `corral log-pump` for each command's output.
    log_pump: Option<PathBuf>,
    /// The log pumps started, reaped once they end.
    pumps: Vec<Child>,
    /// The health checks of the running replicas.
    probes: Probes,
    /// Whether each replica was ready in its last report, to notice when that changes.
    reported_ready: HashMap<ReplicaKey, bool>,
    /// Watches the main processes an earlier corral started, whose exits no SIGCHLD tells.
    exits: Option<ExitWatch>,
}

/// Wakes whoever runs passes.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

impl Supervisor {
    /// The supervisor of `node`, with what an earlier corral recorded in `state_dir`.
    pub fn load(state_dir: &Path, node: &str) -> Supervisor {
        let state_file = state_dir.join("agent").join(format!("{node}.json"));
        let records: BTreeMap<ReplicaKey, Record> = std::fs::read_to_string(&state_file)
            .ok()
            .and_then(|text| serde_json::from_str::<Vec<(ReplicaKey, Record)>>(&text).ok())
            .map(|list| list.into_iter().collect())
            .unwrap_or_default();
        Supervisor {
            state_file,
            log_dir: state_dir.join("logs"),
            saved: records.clone(),
            records,
            children: HashMap::new(),
            backoffs: HashMap::new(),
            stopping: HashMap::new(),
            waker: None,
            log_pump: None,
            pumps: Vec::new(),
            probes: Probes::default(),
            reported_ready: HashMap::new(),
            exits: None,
        }
    }

    /// Starts `program log-pump` (corral's executable) for each command's output, which
    /// rotates it; without it output goes to the log file directly, unrotated.
    pub fn set_log_pump(&mut self, program: PathBuf) {
        self.log_pump = Some(program);
    }

    /// The sink of a replica's output under `limits`.
    pub fn log_sink(&self, key: &ReplicaKey, limits: crate::lease::LogLimits) -> LogSink {
        LogSink {
            path: self.log_file(key),
            limits,
        }
    }

    /// Sets what is called whenever a background stop ends, or a main process an earlier
    /// corral started exits.
    pub fn set_waker(&mut self, waker: Waker) {
        self.exits = ExitWatch::start(waker.clone())
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot watch for the exits of processes an earlier corral started; they are seen at the next pass");
            })
            .ok();
        self.waker = Some(waker);
        self.watch_inherited();
    }

    /// Watches the main processes this corral did not start, and only those.
    fn watch_inherited(&self) {
        if let Some(exits) = &self.exits {
            exits.set(
                self.records
                    .iter()
                    .filter(|(key, _)| !self.children.contains_key(*key))
                    .filter_map(|(_, r)| r.main),
            );
        }
    }

    /// True while `group` is being stopped in the background.
    pub fn is_stopping(&self, group: &GroupPath) -> bool {
        self.stopping.contains_key(group)
    }

    /// True while any group is being stopped in the background.
    pub fn any_stopping(&self) -> bool {
        !self.stopping.is_empty()
    }

    /// True when a background stop has ended and no pass has taken its result yet. The
    /// stop's thread wakes the agent just before it ends, so the pass it wakes may come too
    /// early to see it; this lets the next tick catch it.
    pub fn any_stop_finished(&self) -> bool {
        self.stopping
            .values()
            .any(std::thread::JoinHandle::is_finished)
    }

    /// Starts stopping `group` (its `procs_files`) in a thread of its own: SIGTERM, SIGKILL
    /// after `grace`, and a process that even SIGKILL does not end within 5 s is reported,
    /// never waited for. The thread also reaps the replica's main process when this corral
    /// started it, so that no zombie is left. Nothing happens when the group is already
    /// being stopped.
    pub fn stop_in_background(
        &mut self,
        group: &GroupPath,
        procs_files: Vec<PathBuf>,
        grace: Duration,
    ) {
        if self.stopping.contains_key(group) {
            return;
        }
        let mut main = group.key().and_then(|key| self.children.remove(&key));
        let waker = self.waker.clone();
        let name = group.to_string();
        let spawned = std::thread::Builder::new()
            .name(format!("stop {name}"))
            .spawn(move || {
                let outcome = process::stop(&procs_files, grace).map_err(|e| e.to_string());
                if let Some(child) = main.as_mut() {
                    let _ = child.try_wait();
                }
                if let Some(wake) = waker {
                    wake();
                }
                outcome
            });
        match spawned {
            Ok(handle) => {
                self.stopping.insert(group.clone(), handle);
            }
            Err(e) => {
                tracing::warn!(group = %name, error = %e, "cannot start a thread to stop the group")
            }
        }
    }

    /// The background stops that ended since the last call, with how each ended.
    pub fn finished_stops(&mut self) -> Vec<(GroupPath, Result<process::StopOutcome, String>)> {
        let done: Vec<GroupPath> = self
            .stopping
            .iter()
            .filter(|(_, h)| h.is_finished())
            .map(|(g, _)| g.clone())
            .collect();
        let mut out = Vec::new();
        for group in done {
            let Some(handle) = self.stopping.remove(&group) else {
                continue;
            };
            let outcome = handle
                .join()
                .unwrap_or_else(|_| Err("stopping panicked".to_string()));
            match &outcome {
                Ok(o) => {
                    tracing::info!(group = %group, terminated = o.terminated, killed = o.killed, "stopped")
                }
                Err(e) => tracing::warn!(group = %group, error = %e, "cannot stop"),
            }
            out.push((group, outcome));
        }
        out
    }

    /// Waits until a background stop ends, or `timeout` passes.
    pub fn wait_for_a_stop(&self, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline
            && !self.stopping.is_empty()
            && !self.stopping.values().any(JoinHandle::is_finished)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The file a replica's output goes to.
    pub fn log_file(&self, key: &ReplicaKey) -> PathBuf {
        self.log_dir.join(format!("{key}.log"))
    }

    /// Writes the records if they changed.
    ///
    /// # Errors
    /// The state file cannot be written.
    pub fn save(&mut self) -> std::io::Result<()> {
        if self.records == self.saved {
            return Ok(());
        }
        if let Some(dir) = self.state_file.parent() {
            if let Some(state) = dir.parent() {
                private::ensure_dir(state, true)?;
            }
            private::ensure_dir(dir, false)?;
        }
        let list: Vec<(&ReplicaKey, &Record)> = self.records.iter().collect();
        let text = serde_json::to_string_pretty(&list).map_err(std::io::Error::other)?;
        private::write_atomic(
            &self.state_file,
            text.as_bytes(),
            private::Durability::Atomic,
        )?;
        self.saved = self.records.clone();
        Ok(())
    }

    /// Notices main processes that exited since the last call, records how they ended and
    /// when they may start again; returns their replicas.
    pub fn reap(&mut self, now_ms: u64) -> Vec<ReplicaKey> {
        self.pumps
            .retain_mut(|pump| !matches!(pump.try_wait(), Ok(Some(_)) | Err(_)));
        let mut exited = Vec::new();
        for (key, record) in &mut self.records {
            let Some(main) = record.main else { continue };
            let (ended, description, failed) = match self.children.get_mut(key) {
                Some(child) => match child.try_wait() {
                    Ok(Some(status)) => {
                        let info = ExitStatusInfo::from(status);
                        (true, info.to_string(), Some(!status.success()))
                    }
                    Ok(None) => (false, String::new(), None),
                    Err(e) => (
                        !main.is_alive(),
                        format!("exited (status unreadable: {e})"),
                        None,
                    ),
                },
                None => (
                    !main.is_alive(),
                    "exited (status unknown: started by an earlier corral)".to_string(),
                    None,
                ),
            };
            if !ended {
                continue;
            }
            self.children.remove(key);
            let ran_for = Duration::from_millis(now_ms.saturating_sub(record.started_ms));
            let delay = self
                .backoffs
                .entry(key.clone())
                .or_default()
                .next_delay(ran_for);
            record.main = None;
            record.last_exit = Some(description);
            record.last_failed = failed;
            record.not_before_ms = now_ms + u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            exited.push(key.clone());
        }
        self.watch_inherited();
        exited
    }

    /// The replica groups whose command should start now: commands not running whose
    /// restart policy allows it and whose backoff has passed.
    pub fn due(
        &self,
        desired: &DesiredTree,
        observed: &ObservedTree,
        now_ms: u64,
    ) -> BTreeSet<GroupPath> {
        let mut due = BTreeSet::new();
        for (group, want) in &desired.groups {
            let Some(Work::Command { restart, .. }) = &want.work else {
                continue;
            };
            let Some(key) = group.key() else { continue };
            // A group still being stopped (a replacement) starts once the stop has ended.
            if self.is_stopping(group)
                || observed
                    .groups
                    .get(group)
                    .is_some_and(|g| !g.pids.is_empty())
            {
                continue;
            }
            let start = match self.records.get(&key) {
                None => true,
                Some(r) if r.main.is_some() => false,
                Some(r) if r.last_exit.is_none() => true,
                // A new revision of an exited command starts at once, as a new pod does:
                // neither the old one's backoff nor its restart policy holds it back.
                // (A command from before revisions has none: an upgrade starts nothing.)
                Some(r)
                    if !want.revision.is_empty()
                        && !r.revision.is_empty()
                        && r.revision != want.revision =>
                {
                    true
                }
                Some(r) => restart.restarts(r.last_failed) && now_ms >= r.not_before_ms,
            };
            if start {
                due.insert(group.clone());
            }
        }
        due
    }

    /// True when the command of `key`, which exited, may start again now under `restart`.
    /// No system call: cheap enough to ask often.
    pub fn restart_due(&self, key: &ReplicaKey, restart: RestartPolicy, now_ms: u64) -> bool {
        self.records.get(key).is_some_and(|r| {
            r.main.is_none()
                && r.last_exit.is_some()
                && now_ms >= r.not_before_ms
                && restart.restarts(r.last_failed)
        })
    }

    /// True when the adopted processes of `key` go back where they came from once its lease
    /// is gone, rather than being stopped.
    pub fn releases(&self, key: &ReplicaKey) -> bool {
        self.records
            .get(key)
            .is_some_and(|r| !r.release_to.is_empty())
    }

    /// Forgets replicas that are no longer leased here, except adopted processes still to be
    /// released from a group that exists (`groups`): a failed release is tried again, never
    /// turned into a stop.
    pub fn retain(&mut self, keep: &BTreeSet<ReplicaKey>, groups: &BTreeSet<ReplicaKey>) {
        self.records
            .retain(|k, r| keep.contains(k) || (!r.release_to.is_empty() && groups.contains(k)));
        self.children.retain(|k, _| keep.contains(k));
        self.backoffs.retain(|k, _| keep.contains(k));
        self.reported_ready.retain(|k, _| keep.contains(k));
    }

    /// True when the command of `group` runs an older revision than `want`'s, and so is to
    /// be replaced. A command started before corral knew revisions takes `want`'s instead:
    /// an upgrade of corral replaces nothing.
    pub fn outdated(&mut self, group: &GroupPath, want: &DesiredGroup) -> bool {
        let Some(record) = group.key().and_then(|k| self.records.get_mut(&k)) else {
            return false;
        };
        if record.main.is_none() || want.revision.is_empty() {
            return false;
        }
        if record.revision.is_empty() {
            record.revision.clone_from(&want.revision);
        }
        record.revision != want.revision
    }

    /// True when `key`'s command runs, has run for `min_ready_seconds` and passes its
    /// health check, if it has one. No system call.
    fn ready(&self, key: &ReplicaKey, health: bool, min_ready_seconds: u32, now_ms: u64) -> bool {
        self.records.get(key).is_some_and(|r| {
            r.main.is_some()
                && now_ms.saturating_sub(r.started_ms) >= u64::from(min_ready_seconds) * 1000
                && (!health || self.probes.healthy(key, r.started_ms))
        })
    }

    /// Runs the health checks that are due for `leases` and collects those that ended;
    /// true when a replica's readiness differs from its last report (a check's verdict
    /// changed, or `minReadySeconds` have passed), so that a pass reports it.
    pub fn readiness_changed(&mut self, fs: &Cgroupfs, leases: &[Lease], now_ms: u64) -> bool {
        let mut targets = Vec::new();
        for lease in leases {
            let Some(probe) = &lease.health else { continue };
            let Some(record) = self.records.get(&lease.key) else {
                continue;
            };
            if record.main.is_none() {
                continue;
            }
            // An exec check's launch (the replica's user, env and groups) is built only when
            // a check starts, not at every 250 ms tick.
            let launch = match &probe.check {
                crate::lease::ProbeCheck::Exec(_)
                    if self.probes.due(&lease.key, record.started_ms, now_ms) =>
                {
                    GroupPath::replica(&lease.key)
                        .ok()
                        .and_then(|group| {
                            self.launch_spec(fs, &group, &lease.work, LogLimits::default())
                                .ok()
                        })
                        .map(|mut spec| {
                            spec.log.path = PathBuf::new();
                            spec.log_pump = None;
                            spec
                        })
                }
                _ => None,
            };
            targets.push(Target {
                key: &lease.key,
                probe,
                process_started_ms: record.started_ms,
                launch,
            });
        }
        self.probes.tick(targets, now_ms);
        leases.iter().any(|lease| {
            let ready = self.ready(
                &lease.key,
                lease.health.is_some(),
                lease.min_ready_seconds,
                now_ms,
            );
            matches!(lease.work, Work::Command { .. })
                && self
                    .reported_ready
                    .get(&lease.key)
                    .copied()
                    .unwrap_or(false)
                    != ready
        })
    }

    /// The state of a replica's processes, for its report.
    pub fn report(
        &mut self,
        key: &ReplicaKey,
        want: Option<&DesiredGroup>,
        pids: usize,
        now_ms: u64,
    ) -> ProcessReport {
        let work = want.and_then(|w| w.work.as_ref());
        let record = self.records.get(key).cloned().unwrap_or_default();
        let restarts = match work {
            Some(Work::Command { restart, .. }) => restart.restarts(record.last_failed),
            _ => false,
        };
        let state = match work {
            Some(Work::Adopt(_)) if pids > 0 => ProcessState::Adopted,
            Some(Work::Adopt(_)) => ProcessState::Waiting,
            _ if record.main.is_some() || pids > 0 => ProcessState::Running,
            _ if record.last_exit.is_some() && restarts && record.not_before_ms > now_ms => {
                ProcessState::BackingOff
            }
            _ if record.last_exit.is_some() => ProcessState::Exited,
            Some(Work::Command { .. }) => ProcessState::Starting,
            None => ProcessState::None,
        };
        let ready = match (want, work) {
            // Processes no record knows (a state directory lost): they ran before this
            // agent, so minReadySeconds has passed; without a check to run, they are ready.
            (Some(want), Some(Work::Command { .. })) if record.main.is_none() && pids > 0 => {
                // Being stopped (a replacement): not ready, whatever it was.
                let stopping = GroupPath::replica(key).is_ok_and(|g| self.is_stopping(&g));
                let ready = want.health.is_none() && !stopping;
                self.reported_ready.insert(key.clone(), ready);
                Some(ready)
            }
            (Some(want), Some(Work::Command { .. })) => {
                let ready = self.ready(key, want.health.is_some(), want.min_ready_seconds, now_ms);
                self.reported_ready.insert(key.clone(), ready);
                Some(ready)
            }
            (_, Some(Work::Adopt(_))) => Some(pids > 0),
            _ => None,
        };
        ProcessReport {
            state,
            pid: record.main.map(|m| m.pid),
            pids,
            restarts: record.restarts,
            last_exit: record.last_exit,
            revision: (record.main.is_some() && !record.revision.is_empty())
                .then_some(record.revision),
            ready,
        }
    }

    /// How `group`'s command is launched: `work` with the replica's identity in its
    /// environment, in the group, its output rotated under `logs`.
    ///
    /// # Errors
    /// `group` is a tenant's, or `work` is not a command.
    fn launch_spec(
        &self,
        fs: &Cgroupfs,
        group: &GroupPath,
        work: &Work,
        logs: LogLimits,
    ) -> Result<LaunchSpec, ProcessError> {
        let key = group
            .key()
            .ok_or_else(|| ProcessError::TenantGroup(group.clone()))?;
        let Work::Command {
            args,
            env,
            working_dir,
            run_as,
            ..
        } = work
        else {
            return Err(ProcessError::NoCommand(group.clone()));
        };
        let mut env = env.clone();
        env.push(("CORRAL_WORKLOAD".into(), key.workload.to_string()));
        env.push(("CORRAL_REPLICA".into(), key.index.to_string()));
        Ok(LaunchSpec {
            args: args.clone(),
            env,
            working_dir: working_dir.as_ref().map(PathBuf::from),
            log: LogSink {
                path: self.log_file(&key),
                limits: logs,
            },
            log_pump: self.log_pump.clone(),
            join: fs.procs_files(group),
            run_as: run_as.clone(),
        })
    }

    /// The process operations of one pass, bound to the desired tree they serve.
    pub fn ops<'a>(
        &'a mut self,
        fs: &'a Cgroupfs,
        desired: &'a DesiredTree,
        now_ms: u64,
    ) -> ProcessOps<'a> {
        ProcessOps {
            supervisor: self,
            fs,
            desired,
            now_ms,
        }
    }
}

/// Why a process operation of a pass failed, as the replica's report shows it.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// A tenant's group runs and holds no process of its own.
    #[error("{0} is a tenant group: it runs no command and holds no adopted process")]
    TenantGroup(GroupPath),
    /// No lease asks for this group.
    #[error("{0} has no lease")]
    NoLease(GroupPath),
    /// The group's lease asks for no command.
    #[error("{0} has no command")]
    NoCommand(GroupPath),
    /// The command could not be started.
    #[error(transparent)]
    Launch(#[from] process::LaunchError),
    /// A process could not be moved into or out of the group.
    #[error(transparent)]
    Move(#[from] process::MoveError),
    /// The group's processes could not be read.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::fs::CgroupError),
    /// Processes that could not be moved back where they came from, each with why.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    NotReleased(Vec<process::MoveError>),
}

/// [`Processes`] for the executor: starts, adopts and stops through [`process`].
pub struct ProcessOps<'a> {
    supervisor: &'a mut Supervisor,
    fs: &'a Cgroupfs,
    desired: &'a DesiredTree,
    now_ms: u64,
}

impl Processes for ProcessOps<'_> {
    type Error = ProcessError;

    fn start(&mut self, group: &GroupPath) -> Result<(), ProcessError> {
        let key = group
            .key()
            .ok_or_else(|| ProcessError::TenantGroup(group.clone()))?;
        let want = self
            .desired
            .groups
            .get(group)
            .ok_or_else(|| ProcessError::NoLease(group.clone()))?;
        let work = want
            .work
            .as_ref()
            .ok_or_else(|| ProcessError::NoCommand(group.clone()))?;
        let spec = self
            .supervisor
            .launch_spec(self.fs, group, work, want.logs)?;
        let launched = process::launch(&spec)?;
        let record = self.supervisor.records.entry(key.clone()).or_default();
        if record.last_exit.is_some() {
            record.restarts += 1;
        }
        record.main = Some(launched.process_id());
        record.started_ms = self.now_ms;
        record.revision.clone_from(&want.revision);
        self.supervisor.pumps.extend(launched.pump);
        self.supervisor.children.insert(key, launched.child);
        Ok(())
    }

    fn adopt(&mut self, group: &GroupPath, pids: &[u32]) -> Result<(), ProcessError> {
        let join = self.fs.procs_files(group);
        let release = matches!(
            self.desired.groups.get(group).and_then(|g| g.work.as_ref()),
            Some(Work::Adopt(rule)) if rule.on_delete == AdoptOnDelete::Release
        );
        if release
            && let Some(key) = group.key()
            && let Some(first) = pids.first()
        {
            let record = self.supervisor.records.entry(key).or_default();
            if record.release_to.is_empty() {
                record.release_to = self.fs.procs_files_of(*first).unwrap_or_default();
            }
        }
        let mut moved = 0;
        for pid in pids {
            match process::move_into(*pid, &join) {
                Ok(()) => moved += 1,
                // It exited between the scan and the move: nothing to adopt.
                Err(process::MoveError::Gone { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(key) = group.key() {
            self.supervisor.records.entry(key).or_default().adopted += moved;
        }
        Ok(())
    }

    /// Moves each process of the group back to the groups the first adopted process came
    /// from, or to each hierarchy's root where those are gone.
    fn release(&mut self, group: &GroupPath) -> Result<(), ProcessError> {
        let key = group
            .key()
            .ok_or_else(|| ProcessError::TenantGroup(group.clone()))?;
        let origin = self
            .supervisor
            .records
            .get(&key)
            .map(|r| r.release_to.clone())
            .unwrap_or_default();
        let roots = self.fs.hierarchy_procs_files();
        let target: Vec<PathBuf> = origin
            .iter()
            .zip(&roots)
            .map(|(from, root)| {
                if from.exists() {
                    from.clone()
                } else {
                    root.clone()
                }
            })
            .collect();
        let target = if target.len() == roots.len() {
            target
        } else {
            roots
        };
        let mut left = Vec::new();
        for pid in self.fs.procs(group)? {
            match process::move_into(pid, &target) {
                Ok(()) | Err(process::MoveError::Gone { .. }) => {}
                Err(e) => left.push(e),
            }
        }
        if !left.is_empty() {
            return Err(ProcessError::NotReleased(left));
        }
        self.supervisor.records.remove(&key);
        tracing::info!(group = %group, "released the adopted processes");
        Ok(())
    }

    fn stop(&mut self, group: &GroupPath, grace: Duration) -> Result<(), ProcessError> {
        self.stop_all(&[(group.clone(), grace)]).remove(0)
    }

    /// Starts stopping the groups, each in a thread of its own, and returns at once: no pass
    /// waits out a grace period, and stopping many replicas takes one grace period, not one
    /// per replica. The group is removed by a later pass, once it is empty.
    fn stop_all(&mut self, groups: &[(GroupPath, Duration)]) -> Vec<Result<(), ProcessError>> {
        groups
            .iter()
            .map(|(group, grace)| {
                let files = self.fs.procs_files(group);
                self.supervisor.stop_in_background(group, files, *grace);
                if let Some(key) = group.key() {
                    self.supervisor.records.remove(&key);
                }
                Ok(())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::tree::{DesiredGroup, ObservedGroup};

    fn tree(restart: RestartPolicy) -> (DesiredTree, GroupPath) {
        let group = GroupPath::replica(&ReplicaKey::new("t", "w", 0)).unwrap();
        let mut desired = DesiredTree::default();
        desired.groups.insert(
            group.clone(),
            DesiredGroup {
                knobs: BTreeMap::new(),
                work: Some(Work::Command {
                    args: vec!["true".into()],
                    env: vec![],
                    working_dir: None,
                    restart,
                    run_as: Default::default(),
                }),
                grace_seconds: 1,
                logs: Default::default(),
                ..DesiredGroup::default()
            },
        );
        (desired, group)
    }

    fn exited(failed: Option<bool>, not_before_ms: u64) -> Record {
        Record {
            last_exit: Some("exited".into()),
            last_failed: failed,
            not_before_ms,
            ..Record::default()
        }
    }

    #[test]
    fn restart_policies_and_backoff_decide_what_starts() {
        let dir = tempfile::tempdir().unwrap();
        let key = ReplicaKey::new("t", "w", 0);
        for (policy, record, now, expected) in [
            (RestartPolicy::Never, None, 0, true),
            (RestartPolicy::Never, Some(exited(Some(true), 0)), 10, false),
            (
                RestartPolicy::Always,
                Some(exited(Some(false), 100)),
                50,
                false,
            ),
            (
                RestartPolicy::Always,
                Some(exited(Some(false), 100)),
                100,
                true,
            ),
            (
                RestartPolicy::OnFailure,
                Some(exited(Some(false), 0)),
                10,
                false,
            ),
            (
                RestartPolicy::OnFailure,
                Some(exited(Some(true), 0)),
                10,
                true,
            ),
            (RestartPolicy::OnFailure, Some(exited(None, 0)), 10, true),
        ] {
            let (desired, group) = tree(policy);
            let mut supervisor = Supervisor::load(dir.path(), "n");
            if let Some(r) = record.clone() {
                supervisor.records.insert(key.clone(), r);
            }
            let due = supervisor.due(&desired, &ObservedTree::default(), now);
            assert_eq!(
                due.contains(&group),
                expected,
                "{policy:?} {record:?} at {now}"
            );
        }
    }

    #[test]
    fn a_new_revision_of_an_exited_command_starts_at_once_and_an_old_one_waits() {
        let dir = tempfile::tempdir().unwrap();
        let key = ReplicaKey::new("t", "w", 0);
        let (mut desired, group) = tree(RestartPolicy::Never);
        if let Some(want) = desired.groups.get_mut(&group) {
            want.revision = "new".into();
        }
        let mut supervisor = Supervisor::load(dir.path(), "n");
        for (ran, expected) in [("old", true), ("new", false), ("", false)] {
            supervisor.records.insert(
                key.clone(),
                Record {
                    revision: ran.into(),
                    ..exited(Some(true), 1_000_000)
                },
            );
            let due = supervisor.due(&desired, &ObservedTree::default(), 0);
            assert_eq!(due.contains(&group), expected, "after running {ran:?}");
        }
    }

    #[test]
    fn a_running_command_of_another_revision_is_outdated_one_from_before_revisions_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let key = ReplicaKey::new("t", "w", 0);
        let (mut desired, group) = tree(RestartPolicy::Always);
        let want = desired.groups.get_mut(&group).unwrap();
        want.revision = "new".into();
        let want = want.clone();
        let mut supervisor = Supervisor::load(dir.path(), "n");
        let running = |revision: &str| Record {
            main: Some(ProcessId {
                pid: 1,
                start_time: 1,
            }),
            revision: revision.into(),
            ..Record::default()
        };
        supervisor.records.insert(key.clone(), running("old"));
        assert!(supervisor.outdated(&group, &want));
        supervisor.records.insert(key.clone(), running("new"));
        assert!(!supervisor.outdated(&group, &want));
        // Started before corral knew revisions: it takes the lease's, and stays.
        supervisor.records.insert(key.clone(), running(""));
        assert!(!supervisor.outdated(&group, &want));
        assert_eq!(supervisor.records[&key].revision, "new");
    }

    #[test]
    fn processes_no_record_knows_are_ready_unless_a_check_must_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let key = ReplicaKey::new("t", "w", 0);
        let (mut desired, group) = tree(RestartPolicy::Always);
        let mut supervisor = Supervisor::load(dir.path(), "n");
        let report = supervisor.report(&key, desired.groups.get(&group), 1, 0);
        assert_eq!(
            (report.state.as_str(), report.ready),
            ("Running", Some(true))
        );
        if let Some(want) = desired.groups.get_mut(&group) {
            want.health = Some(crate::lease::HealthProbe {
                check: crate::lease::ProbeCheck::Tcp(1),
                period_seconds: 1,
                timeout_seconds: 1,
                failure_threshold: 1,
            });
        }
        assert_eq!(
            supervisor
                .report(&key, desired.groups.get(&group), 1, 0)
                .ready,
            Some(false)
        );
        assert_eq!(
            supervisor
                .report(&key, desired.groups.get(&group), 0, 0)
                .ready,
            Some(false),
            "nothing runs"
        );
    }

    #[test]
    fn a_group_with_processes_is_never_due() {
        let dir = tempfile::tempdir().unwrap();
        let (desired, group) = tree(RestartPolicy::Always);
        let mut observed = ObservedTree::default();
        observed.groups.insert(
            group,
            ObservedGroup {
                pids: vec![1],
                ..ObservedGroup::default()
            },
        );
        assert!(
            Supervisor::load(dir.path(), "n")
                .due(&desired, &observed, 0)
                .is_empty()
        );
    }

    #[test]
    fn records_survive_in_the_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let key = ReplicaKey::new("t", "w", 0);
        let mut supervisor = Supervisor::load(dir.path(), "n");
        supervisor
            .records
            .insert(key.clone(), exited(Some(true), 5));
        supervisor.save().unwrap();
        let mut again = Supervisor::load(dir.path(), "n");
        assert_eq!(again.records[&key], exited(Some(true), 5));
        let (desired, group) = tree(RestartPolicy::Always);
        let want = desired.groups.get(&group);
        assert_eq!(
            again.report(&key, want, 0, 0).state,
            crate::lease::ProcessState::BackingOff
        );
        assert_eq!(
            again.report(&key, want, 0, 5).state,
            crate::lease::ProcessState::Exited
        );
        let (never, group) = tree(RestartPolicy::Never);
        assert_eq!(
            again.report(&key, never.groups.get(&group), 0, 0).state,
            "Exited"
        );
    }
}
