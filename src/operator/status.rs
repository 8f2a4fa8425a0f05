//! The status a person reads with `kubectl get` and `kubectl describe`, computed from the
//! controller's last plan, the leases it wrote and the agents' reports. Pure: no I/O, so
//! every condition's reason and message is unit-tested.
//!
//! A Workload has six conditions (`Allocated`, `Enforced`, `Ready`, `RolledOut`, and
//! `Reconciling` and `Stalled` as kstatus reads them), a ResourcePolicy four (`Valid`,
//! `Ready`, `Reconciling`, `Stalled`); [`super::conditions`] lists each one's reasons and
//! what they mean.
//!
//! A condition keeps its `lastTransitionTime` while its status does not change.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::alloc::Res;
use crate::alloc::plan::{Plan, PolicyReport};
use crate::api::WorkloadRef;
use crate::api::conditions::{ConditionType, Reason, condition};
use crate::api::policy::{ResourcePolicy, ResourcePolicyStatus, ResourceTotals};
use crate::api::quantity::Quantity;
use crate::api::workload::{
    Granted, MemoryEventCounts, PressureStatus, ReplicaStatus, ResourcePressure, StallStatus,
    Usage, Workload, WorkloadPhase, WorkloadStatus,
};
use crate::cgroup::observe::MemoryEvents;
use crate::cgroup::pressure::{Pressure, Pressures, Stall};
use crate::lease::{Lease, ProcessState, Report, UsageSample};

/// What the statuses are computed from.
#[derive(Clone, Debug, Default)]
pub struct Observed<'a> {
    /// The controller's last plan.
    pub plan: Option<&'a Plan>,
    /// Every lease, as written.
    pub leases: &'a [Lease],
    /// Every report.
    pub reports: &'a [Report],
    /// Nodes registered now: a report from another node is stale.
    pub registered: &'a [String],
    /// Where the workload's rollout stands, after the controller's last pass.
    pub rollout: Option<&'a crate::controller::rollout::Rollout>,
    /// Its replicas kept on their missing node (`disconnect`): index → why.
    pub held: Option<&'a BTreeMap<u32, String>>,
}

/// How many items a condition's message lists before it says "and N more".
const MESSAGE_ITEMS: usize = 3;

/// The status of `workload`. `problem` is why the object is refused, when it is; `now`
/// stamps conditions that change.
///
/// In three steps: this workload's part of what was observed (`Mine`), what each replica
/// says (`Tally`), and the conditions and phase that follow (`Facts`).
pub fn workload_status(
    workload: &Workload,
    observed: &Observed<'_>,
    problem: Option<&str>,
    now: &Time,
) -> WorkloadStatus {
    let generation = workload.metadata.generation;
    let replicas = u32::try_from(workload.spec.replicas.max(0)).unwrap_or(0);
    let mine = Mine::of(&WorkloadRef::of(workload), observed);
    let tally = Tally::of(replicas, &mine, observed.held, refusal(problem, generation));
    let facts = Facts::new(
        problem,
        generation,
        replicas,
        observed.rollout,
        &mine,
        &tally,
    );
    let conditions = vec![
        facts.allocated(),
        facts.enforced(),
        facts.ready(),
        facts.rolled_out(),
        facts.reconciling(),
        facts.stalled(),
    ];
    let phase = facts.phase(workload.metadata.deletion_timestamp.is_some());
    let previous = workload
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    WorkloadStatus {
        observed_generation: generation,
        phase,
        replicas: i32::try_from(tally.allocated).unwrap_or(i32::MAX),
        ready_replicas: i32::try_from(tally.ready).unwrap_or(i32::MAX),
        updated_replicas: i32::try_from(observed.rollout.map_or(tally.allocated, |r| r.updated))
            .unwrap_or(i32::MAX),
        revision: observed
            .rollout
            .map(|r| r.revision.clone())
            .filter(|r| !r.is_empty()),
        selector: Some(format!("corral.dev/workload={}", workload.name_any())),
        request: mine.leases.values().next().map(|l| granted(&l.request)),
        replica_statuses: tally.rows,
        conditions: stamp(conditions, previous, generation, now),
    }
}

/// What `Stalled` says of a refused generation, first of all it says.
fn refusal(problem: Option<&str>, generation: Option<i64>) -> Option<(Reason, String)> {
    problem.map(|problem| {
        (
            Reason::SpecRefused,
            format!(
                "generation {} is refused: {problem}",
                generation.unwrap_or_default()
            ),
        )
    })
}

/// One workload's part of what was observed, by replica index.
struct Mine<'a> {
    /// Its leases.
    leases: BTreeMap<u32, &'a Lease>,
    /// Its reports from registered nodes.
    reports: BTreeMap<u32, &'a Report>,
    /// Its pending replicas: the allocator's reason, and whether no waiting mends it.
    pending: BTreeMap<u32, (&'a str, bool)>,
}

impl<'a> Mine<'a> {
    /// The part of `observed` that is the workload `name`'s.
    fn of(name: &WorkloadRef, observed: &Observed<'a>) -> Mine<'a> {
        let leases = observed
            .leases
            .iter()
            .filter(|l| l.key.workload == *name)
            .map(|l| (l.key.index, l))
            .collect();
        let reports = observed
            .reports
            .iter()
            .filter_map(|r| {
                let key = r.key.as_ref()?;
                (key.workload == *name && observed.registered.contains(&r.node))
                    .then_some((key.index, r))
            })
            .collect();
        let pending = observed
            .plan
            .map(|p| {
                p.pending
                    .iter()
                    .filter(|p| p.workload == *name)
                    .map(|p| (p.replica, (p.reason.as_str(), p.stalled)))
                    .collect()
            })
            .unwrap_or_default();
        Mine {
            leases,
            reports,
            pending,
        }
    }

    /// The report that counts for replica `index`: from its lease's node, of this lease.
    fn report(&self, index: u32) -> Option<&'a Report> {
        let lease = self.leases.get(&index)?;
        self.reports
            .get(&index)
            .copied()
            .filter(|r| lease.node == r.node && r.lease_epoch == lease.epoch)
    }
}

/// What the replicas say, one by one: the status's rows, and the lines the conditions'
/// messages list.
#[derive(Default)]
struct Tally {
    /// One row per replica.
    rows: Vec<ReplicaStatus>,
    /// Replicas with a node.
    allocated: u32,
    /// Replicas that run and are ready.
    ready: u32,
    /// Leases no agent reported yet.
    not_enforced: Vec<String>,
    /// What agents could not apply.
    failures: Vec<String>,
    /// How each replica that is not ready is.
    not_ready: Vec<String>,
    /// What no waiting mends, each with the reason `Stalled` gives it; `refusal` first.
    stalled: Vec<(Reason, String)>,
}

impl Tally {
    /// The tally of `replicas` replicas; `refused` is what `Stalled` says of a refused
    /// generation.
    fn of(
        replicas: u32,
        mine: &Mine<'_>,
        held: Option<&BTreeMap<u32, String>>,
        refused: Option<(Reason, String)>,
    ) -> Tally {
        let mut tally = Tally {
            stalled: refused.into_iter().collect(),
            ..Tally::default()
        };
        for index in 0..replicas {
            let lease = mine.leases.get(&index).copied();
            let report = mine.report(index);
            tally
                .rows
                .push(row(index, lease, report, mine.pending.get(&index)));
            if let Some(report) = report {
                tally.reported(index, report);
            } else if let Some(reason) = held.and_then(|h| h.get(&index)) {
                tally.not_ready.push(format!("replica {index}: {reason}"));
            } else if let Some(lease) = lease {
                tally.not_enforced.push(format!(
                    "replica {index} on {}: no report of lease epoch {} yet",
                    lease.node, lease.epoch
                ));
                tally
                    .not_ready
                    .push(format!("replica {index}: not reported"));
            } else {
                tally.unplaced(index, mine.pending.get(&index));
            }
        }
        tally.allocated =
            u32::try_from(mine.leases.keys().filter(|i| **i < replicas).count()).unwrap_or(0);
        tally
    }

    /// Replica `index`, whose agent reported its current lease.
    fn reported(&mut self, index: u32, report: &Report) {
        for p in &report.problems {
            self.failures
                .push(format!("replica {index} on {}: {p}", report.node));
        }
        if report.process.state == ProcessState::Unenforced {
            self.stalled.push((
                Reason::LimitsNotApplied,
                format!(
                    "replica {index} on {}: its limits cannot be applied, so it is not started: {}",
                    report.node,
                    report
                        .problems
                        .first()
                        .map_or("see the node's report", String::as_str)
                ),
            ));
        }
        let is_ready = report
            .process
            .ready
            .unwrap_or_else(|| report.process.state.ready_without_check());
        if is_ready {
            self.ready += 1;
            return;
        }
        let mut state = report.process.state.to_string();
        if report.process.state.ready_without_check() {
            state.push_str(", not ready yet (minReadySeconds or its health check)");
        }
        if let Some(exit) = &report.process.last_exit {
            state.push_str(&format!(" (last exit: {exit})"));
        }
        self.not_ready.push(format!("replica {index}: {state}"));
    }

    /// Replica `index`, which has no node: pending for the allocator's reason, or not
    /// allocated yet.
    fn unplaced(&mut self, index: u32, pending: Option<&(&str, bool)>) {
        match pending {
            Some((reason, never)) => {
                if *never {
                    self.stalled
                        .push((Reason::CannotBePlaced, format!("replica {index}: {reason}")));
                }
                self.not_ready
                    .push(format!("replica {index}: pending: {reason}"));
            }
            None => self
                .not_ready
                .push(format!("replica {index}: not allocated yet")),
        }
    }
}

/// Replica `index`'s row: its lease, and what its agent reported of it.
fn row(
    index: u32,
    lease: Option<&Lease>,
    report: Option<&Report>,
    pending: Option<&(&str, bool)>,
) -> ReplicaStatus {
    let mut row = ReplicaStatus {
        index: i32::try_from(index).unwrap_or(i32::MAX),
        node: lease.map(|l| l.node.clone()),
        granted: lease.map(|l| granted(&l.granted)),
        lease_epoch: lease.map(|l| l.epoch),
        pending_reason: pending.map(|(r, _)| (*r).to_string()),
        ..ReplicaStatus::default()
    };
    if let Some(report) = report {
        row.applied.clone_from(&report.applied);
        row.revision.clone_from(&report.process.revision);
        row.usage = report.usage.as_ref().map(usage);
    }
    row
}

/// What a workload's conditions and phase are computed from.
struct Facts<'a> {
    /// Why the object is refused, when it is.
    problem: Option<&'a str>,
    /// Its generation.
    generation: Option<i64>,
    /// How many replicas it asks for.
    replicas: u32,
    /// Where its rollout stands.
    rollout: Option<&'a crate::controller::rollout::Rollout>,
    /// Its part of what was observed.
    mine: &'a Mine<'a>,
    /// What its replicas say.
    tally: &'a Tally,
    /// `N of M replicas running`.
    running: String,
    /// How far the rollout under way is, when one is.
    rolling: Option<String>,
    /// Every replica runs the current spec and is ready.
    all_running: bool,
}

impl<'a> Facts<'a> {
    /// The facts of a workload of `replicas` replicas.
    fn new(
        problem: Option<&'a str>,
        generation: Option<i64>,
        replicas: u32,
        rollout: Option<&'a crate::controller::rollout::Rollout>,
        mine: &'a Mine<'a>,
        tally: &'a Tally,
    ) -> Facts<'a> {
        let rolling = rollout
            .filter(|r| r.in_progress())
            .map(crate::controller::rollout::Rollout::describe);
        Facts {
            problem,
            generation,
            replicas,
            rollout,
            mine,
            tally,
            running: format!("{} running", of(tally.ready, replicas, "replica")),
            all_running: tally.ready == replicas && rolling.is_none(),
            rolling,
        }
    }

    /// `Allocated`: which replicas have a node, and why the others have none.
    fn allocated(&self) -> Condition {
        let (replicas, allocated) = (self.replicas, self.tally.allocated);
        if let Some(problem) = self.problem {
            return condition(ConditionType::Allocated, false, Reason::Invalid, problem);
        }
        if allocated == replicas {
            return condition(
                ConditionType::Allocated,
                true,
                Reason::AllReplicasAllocated,
                &format!(
                    "{} {} a node",
                    of(replicas, replicas, "replica"),
                    if replicas == 1 { "has" } else { "have" }
                ),
            );
        }
        let reasons: Vec<String> = (0..replicas)
            .filter(|i| !self.mine.leases.contains_key(i))
            .map(|i| match self.mine.pending.get(&i) {
                Some((reason, _)) => format!("replica {i}: {reason}"),
                None => format!("replica {i}: not allocated yet"),
            })
            .collect();
        condition(
            ConditionType::Allocated,
            false,
            Reason::ReplicasPending,
            &format!(
                "{} pending: {}",
                of(replicas - allocated, replicas, "replica"),
                listed(&reasons)
            ),
        )
    }

    /// `Enforced`: whether the agents applied the leases, or what failed.
    fn enforced(&self) -> Condition {
        let tally = self.tally;
        if !tally.failures.is_empty() {
            condition(
                ConditionType::Enforced,
                false,
                Reason::EnforcementFailed,
                &listed(&tally.failures),
            )
        } else if !tally.not_enforced.is_empty() {
            condition(
                ConditionType::Enforced,
                false,
                Reason::WaitingForAgents,
                &listed(&tally.not_enforced),
            )
        } else if tally.allocated == 0 && self.replicas > 0 {
            condition(
                ConditionType::Enforced,
                false,
                Reason::NothingAllocated,
                "no replica has a node yet, so there is nothing to enforce",
            )
        } else {
            condition(
                ConditionType::Enforced,
                true,
                Reason::Applied,
                &format!(
                    "the agents applied the leases of {}",
                    count(tally.allocated, "replica")
                ),
            )
        }
    }

    /// `Ready`: whether every replica runs the current spec and is ready.
    fn ready(&self) -> Condition {
        let running = &self.running;
        if let Some(problem) = self.problem {
            condition(
                ConditionType::Ready,
                false,
                Reason::SpecRefused,
                &format!(
                    "generation {} is not applied: {problem}. What runs is the last accepted spec: {running}",
                    self.generation.unwrap_or_default()
                ),
            )
        } else if self.all_running {
            condition(
                ConditionType::Ready,
                true,
                Reason::AllReplicasRunning,
                running,
            )
        } else if let Some(rolling) = &self.rolling {
            condition(
                ConditionType::Ready,
                false,
                Reason::RollingOut,
                &format!("not every replica runs the current spec yet: {rolling}; {running}"),
            )
        } else {
            condition(
                ConditionType::Ready,
                false,
                Reason::ReplicasNotRunning,
                &format!("{running}; {}", listed(&self.tally.not_ready)),
            )
        }
    }

    /// `RolledOut`: how far the rollout is.
    fn rolled_out(&self) -> Condition {
        match (&self.rolling, self.rollout) {
            (Some(rolling), _) => {
                condition(ConditionType::RolledOut, false, Reason::RollingOut, rolling)
            }
            (None, Some(rollout)) => condition(
                ConditionType::RolledOut,
                true,
                Reason::AllReplicasUpdated,
                &format!(
                    "every allocated replica runs revision {} of the spec",
                    rollout.revision
                ),
            ),
            (None, None) => condition(
                ConditionType::RolledOut,
                true,
                Reason::NothingToRollOut,
                "no rollout: adopted processes, or no allocation pass yet",
            ),
        }
    }

    /// `Stalled`: what no waiting mends. kstatus (Flux, Helm's --wait) reads Stalled=True
    /// as Failed, Reconciling=True as InProgress, neither (with observedGeneration current)
    /// as Current.
    fn stalled(&self) -> Condition {
        match self.tally.stalled.first() {
            Some((reason, _)) => {
                let lines: Vec<String> =
                    self.tally.stalled.iter().map(|(_, m)| m.clone()).collect();
                condition(ConditionType::Stalled, true, *reason, &listed(&lines))
            }
            None => condition(
                ConditionType::Stalled,
                false,
                Reason::NotStalled,
                "nothing stands in the way",
            ),
        }
    }

    /// `Reconciling`: what corral still works toward, unless it is stalled.
    fn reconciling(&self) -> Condition {
        let tally = self.tally;
        if !tally.stalled.is_empty() {
            return condition(
                ConditionType::Reconciling,
                false,
                Reason::Stalled,
                "corral cannot make progress; see Stalled",
            );
        }
        if self.all_running {
            return condition(
                ConditionType::Reconciling,
                false,
                Reason::Reconciled,
                &self.running,
            );
        }
        if let Some(rolling) = &self.rolling {
            return condition(
                ConditionType::Reconciling,
                true,
                Reason::RollingOut,
                rolling,
            );
        }
        let reason = if tally.allocated < self.replicas {
            Reason::ReplicasPending
        } else if !tally.not_enforced.is_empty() {
            Reason::WaitingForAgents
        } else {
            Reason::ReplicasStarting
        };
        condition(
            ConditionType::Reconciling,
            true,
            reason,
            &format!("{}; {}", self.running, listed(&tally.not_ready)),
        )
    }

    /// The phase; `deleting` when the object has a deletion timestamp.
    fn phase(&self, deleting: bool) -> WorkloadPhase {
        let tally = self.tally;
        if deleting {
            WorkloadPhase::Terminating
        } else if self.all_running {
            WorkloadPhase::Running
        } else if tally.allocated == 0 {
            WorkloadPhase::Pending
        } else if tally.allocated < self.replicas || !tally.failures.is_empty() {
            WorkloadPhase::Degraded
        } else {
            WorkloadPhase::Allocated
        }
    }
}

/// `1 replica`, `3 replicas`.
fn count(n: u32, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `1 of 1 replica`, `2 of 3 replicas`.
fn of(n: u32, total: u32, noun: &str) -> String {
    format!("{n} of {}", count(total, noun))
}

/// The status of a Workload corral cannot read at all (`problem` says which field and
/// why): nothing of it is used.
pub fn unreadable_status(generation: Option<i64>, problem: &str, now: &Time) -> WorkloadStatus {
    let message = format!("corral cannot read this object, so nothing of it runs: {problem}");
    WorkloadStatus {
        observed_generation: generation,
        phase: WorkloadPhase::Pending,
        conditions: stamp(
            vec![
                condition(
                    ConditionType::Allocated,
                    false,
                    Reason::Unreadable,
                    &message,
                ),
                condition(
                    ConditionType::Enforced,
                    false,
                    Reason::Unreadable,
                    "see Allocated",
                ),
                condition(
                    ConditionType::Ready,
                    false,
                    Reason::Unreadable,
                    "see Allocated",
                ),
                condition(
                    ConditionType::Reconciling,
                    false,
                    Reason::Stalled,
                    "see Stalled",
                ),
                condition(ConditionType::Stalled, true, Reason::Unreadable, &message),
            ],
            &[],
            generation,
            now,
        ),
        ..WorkloadStatus::default()
    }
}

/// The status of `policy`: nodes, capacity, allocation and pending replicas from the plan.
/// `problem` is why the object is refused, when it is.
pub fn policy_status(
    policy: &ResourcePolicy,
    plan: Option<&Plan>,
    problem: Option<&str>,
    now: &Time,
) -> ResourcePolicyStatus {
    let name = policy.name_any();
    let report = plan.and_then(|p| p.policies.iter().find(|r| r.name == name));
    let generation = policy.metadata.generation;
    let previous = policy
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    ResourcePolicyStatus {
        observed_generation: generation,
        node_count: report.map_or(0, |r| i32::try_from(r.nodes).unwrap_or(i32::MAX)),
        capacity: report.map(|r| totals(&r.capacity)),
        allocated: report.map(|r| totals(&r.allocated)),
        pending: report.map_or(0, |r| i32::try_from(r.pending).unwrap_or(i32::MAX)),
        conditions: stamp(
            policy_conditions(problem, report, generation),
            previous,
            generation,
            now,
        ),
    }
}

/// A policy's conditions: `Valid`, `Ready`, `Reconciling`, `Stalled`. `report` is what the
/// last plan says of it.
fn policy_conditions(
    problem: Option<&str>,
    report: Option<&PolicyReport>,
    generation: Option<i64>,
) -> Vec<Condition> {
    let valid = match problem {
        Some(problem) => condition(ConditionType::Valid, false, Reason::Invalid, problem),
        None => condition(
            ConditionType::Valid,
            true,
            Reason::Accepted,
            "the policy is in use as written",
        ),
    };
    let ready = match (problem, report) {
        (Some(_), _) => condition(
            ConditionType::Ready,
            false,
            Reason::Invalid,
            "the policy is refused; see Valid",
        ),
        (None, Some(r)) if r.nodes > 0 => condition(
            ConditionType::Ready,
            true,
            Reason::GoverningNodes,
            &format!(
                "governs {} node(s) with {}; {} replica(s) pending",
                r.nodes,
                totals_text(&r.capacity),
                r.pending
            ),
        ),
        (None, _) => condition(
            ConditionType::Ready,
            false,
            Reason::NoNodes,
            "no registered node matches the policy's nodeSelector, or a policy of higher precedence governs them",
        ),
    };
    // A refused policy is Failed for kstatus; an accepted one is Current, whether it
    // governs nodes yet or not (that is its Ready).
    let stalled = match problem {
        Some(problem) => condition(
            ConditionType::Stalled,
            true,
            Reason::SpecRefused,
            &format!(
                "generation {} is refused: {problem}",
                generation.unwrap_or_default()
            ),
        ),
        None => condition(
            ConditionType::Stalled,
            false,
            Reason::NotStalled,
            "the policy is in use",
        ),
    };
    let reconciling = condition(
        ConditionType::Reconciling,
        false,
        if problem.is_some() {
            Reason::Stalled
        } else {
            Reason::Reconciled
        },
        "corral has read this generation",
    );
    vec![valid, ready, reconciling, stalled]
}

/// A report's usage sample as the status shows it.
fn usage(u: &UsageSample) -> Usage {
    let stall = |s: Stall| StallStatus {
        avg10: s.avg10,
        avg60: s.avg60,
        total_seconds: s.total_micros as f64 / 1e6,
    };
    let pressure = |p: Option<Pressure>| {
        p.map(|p| PressureStatus {
            some: stall(p.some),
            full: p.full.map(stall),
        })
    };
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    Usage {
        cpu: Some(Quantity::from_millis(u.cpu)),
        memory: Some(Quantity::from_bytes(u.memory)),
        memory_peak: Some(Quantity::from_bytes(u.memory_peak)),
        throttled_seconds: Some(u.throttled_seconds),
        oom_kills: Some(u.oom_kills),
        pids: Some(u.pids),
        pressure: u.pressure.map(|p: Pressures| ResourcePressure {
            cpu: pressure(p.cpu),
            memory: pressure(p.memory),
            io: pressure(p.io),
        }),
        memory_events: u.memory_events.map(|e: MemoryEvents| MemoryEventCounts {
            high: count(e.high),
            max: count(e.max),
            oom_kill: count(e.oom_kill),
        }),
    }
}

fn granted(res: &Res) -> Granted {
    Granted {
        cpu: Quantity::from_millis(res.cpu),
        memory: Quantity::from_bytes(res.memory),
        pids: (res.pids > 0).then_some(res.pids),
    }
}

fn totals(res: &Res) -> ResourceTotals {
    ResourceTotals {
        cpu: Quantity::from_millis(res.cpu),
        memory: Quantity::from_bytes(res.memory),
        pids: res.pids,
    }
}

fn totals_text(res: &Res) -> String {
    format!(
        "{} cpu, {} memory",
        Quantity::from_millis(res.cpu).as_str(),
        Quantity::from_bytes(res.memory).as_str()
    )
}

/// At most [`MESSAGE_ITEMS`] items, then how many more.
fn listed(items: &[String]) -> String {
    let mut text = items
        .iter()
        .take(MESSAGE_ITEMS)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if items.len() > MESSAGE_ITEMS {
        text.push_str(&format!("; and {} more", items.len() - MESSAGE_ITEMS));
    }
    text
}

/// Sets each condition's generation, and its transition time: kept from `previous` when
/// the status is the same, `now` otherwise.
fn stamp(
    mut conditions: Vec<Condition>,
    previous: &[Condition],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    for c in &mut conditions {
        c.observed_generation = generation;
        c.last_transition_time = previous
            .iter()
            .find(|p| p.type_ == c.type_ && p.status == c.status)
            .map_or_else(|| now.clone(), |p| p.last_transition_time.clone());
    }
    conditions
}

/// True when `a` and `b` say the same, whatever their condition times.
pub fn same_workload_status(a: &WorkloadStatus, b: &WorkloadStatus) -> bool {
    same_conditions(&a.conditions, &b.conditions)
        && WorkloadStatus {
            conditions: Vec::new(),
            ..a.clone()
        } == WorkloadStatus {
            conditions: Vec::new(),
            ..b.clone()
        }
}

/// True when `a` and `b` differ at most in observed use (and condition times).
pub fn same_but_usage(a: &WorkloadStatus, b: &WorkloadStatus) -> bool {
    let strip = |s: &WorkloadStatus| {
        let mut s = s.clone();
        for r in &mut s.replica_statuses {
            r.usage = None;
        }
        s
    };
    same_workload_status(&strip(a), &strip(b))
}

/// True when `a` and `b` say the same, whatever their condition times.
pub fn same_policy_status(a: &ResourcePolicyStatus, b: &ResourcePolicyStatus) -> bool {
    same_conditions(&a.conditions, &b.conditions)
        && ResourcePolicyStatus {
            conditions: Vec::new(),
            ..a.clone()
        } == ResourcePolicyStatus {
            conditions: Vec::new(),
            ..b.clone()
        }
}

/// The same conditions, in order, whatever their transition times.
fn same_conditions(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            Condition {
                last_transition_time: y.last_transition_time.clone(),
                ..x.clone()
            } == *y
        })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;
    use crate::alloc::fixtures::{mk_lease, mk_node, mk_policy, mk_workload};
    use crate::alloc::{Input, allocate};
    use crate::lease::ProcessReport;

    fn at(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
    }

    fn running(lease: &Lease) -> Report {
        Report {
            key: Some(lease.key.clone()),
            node: lease.node.clone(),
            lease_epoch: lease.epoch,
            applied: BTreeMap::from([("cpu.shares".into(), "102".into())]),
            process: ProcessReport {
                state: crate::lease::ProcessState::Running,
                pid: Some(42),
                pids: 1,
                ..ProcessReport::default()
            },
            ..Report::default()
        }
    }

    fn find<'a>(status: &'a WorkloadStatus, type_: &str) -> &'a Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition in {status:?}"))
    }

    #[test]
    fn enforced_and_running_replicas_make_the_workload_running() {
        let workload = mk_workload("t", "web", 2, 100, 10, json!({}));
        let leases = [mk_lease("n1", "web", 0, 7), mk_lease("n2", "web", 1, 7)];
        let reports: Vec<Report> = leases.iter().map(running).collect();
        let registered = ["n1".to_string(), "n2".to_string()];
        let observed = Observed {
            plan: None,
            leases: &leases,
            reports: &reports,
            registered: &registered,
            rollout: None,
            held: None,
        };
        let status = workload_status(&workload, &observed, None, &at(100));
        assert_eq!(status.phase, WorkloadPhase::Running);
        assert_eq!(status.ready_replicas, 2);
        assert_eq!(find(&status, "Allocated").reason, "AllReplicasAllocated");
        assert_eq!(find(&status, "Enforced").reason, "Applied");
        assert_eq!(find(&status, "Ready").status, "True");
        assert_eq!(status.replica_statuses[1].node.as_deref(), Some("n2"));
        assert_eq!(status.replica_statuses[1].lease_epoch, Some(7));
        assert_eq!(status.replica_statuses[0].applied["cpu.shares"], "102");
    }

    #[test]
    fn usage_shows_pressure_and_memory_events_when_reported_and_nothing_more_on_v1() {
        let workload = mk_workload("t", "web", 2, 100, 10, json!({}));
        let leases = [mk_lease("n1", "web", 0, 7), mk_lease("n1", "web", 1, 7)];
        let mut reports: Vec<Report> = leases.iter().map(running).collect();
        let v1 = UsageSample {
            cpu: 250,
            memory: 64 << 20,
            ..UsageSample::default()
        };
        reports[0].usage = Some(v1);
        reports[1].usage = Some(UsageSample {
            pressure: Some(Pressures {
                memory: Some(Pressure {
                    some: Stall {
                        avg10: 12.5,
                        avg60: 4.0,
                        total_micros: 2_500_000,
                    },
                    full: None,
                }),
                io: Some(Pressure::default()),
                cpu: None,
            }),
            memory_events: Some(MemoryEvents {
                high: 7,
                max: 2,
                oom_kill: u64::MAX,
            }),
            ..v1
        });
        let observed = Observed {
            leases: &leases,
            reports: &reports,
            registered: &["n1".to_string()],
            ..Observed::default()
        };
        let status = workload_status(&workload, &observed, None, &at(100));
        let on_v1 = status.replica_statuses[0].usage.as_ref().unwrap();
        assert_eq!((&on_v1.pressure, &on_v1.memory_events), (&None, &None));
        let on_v2 = status.replica_statuses[1].usage.as_ref().unwrap();
        let pressure = on_v2.pressure.as_ref().unwrap();
        let memory = pressure.memory.as_ref().unwrap();
        assert_eq!((memory.some.avg10, memory.some.avg60), (12.5, 4.0));
        assert_eq!(memory.some.total_seconds, 2.5);
        assert_eq!((&memory.full, &pressure.cpu), (&None, &None));
        assert_eq!(pressure.io.as_ref().unwrap().some.avg10, 0.0);
        assert_eq!(
            on_v2.memory_events,
            Some(MemoryEventCounts {
                high: 7,
                max: 2,
                oom_kill: i64::MAX
            })
        );
        let json = serde_json::to_value(on_v2).unwrap();
        assert_eq!(json["pressure"]["memory"]["some"]["totalSeconds"], 2.5);
        assert_eq!(json["memoryEvents"]["oomKill"], i64::MAX);
        assert!(
            serde_json::to_value(on_v1)
                .unwrap()
                .get("pressure")
                .is_none()
        );
    }

    #[test]
    fn pending_replicas_carry_the_allocators_reason() {
        let workload = mk_workload("t", "big", 2, 3000, 10, json!({}));
        let policy = mk_policy("p", json!({"strategy": "Priority"}));
        let nodes = [mk_node("n1", 4000, 4096, &[])];
        let plan = allocate(&Input {
            policies: std::slice::from_ref(&policy),
            workloads: std::slice::from_ref(&workload),
            nodes: &nodes,
            observed: &HashMap::new(),
            current: &HashMap::new(),
        });
        assert_eq!(plan.pending.len(), 1, "{plan:?}");
        let leases = [mk_lease("n1", "big", 0, 3)];
        let observed = Observed {
            plan: Some(&plan),
            leases: &leases,
            reports: &[],
            registered: &["n1".to_string()],
            rollout: None,
            held: None,
        };
        let status = workload_status(&workload, &observed, None, &at(100));
        let allocated = find(&status, "Allocated");
        assert_eq!(allocated.status, "False");
        assert_eq!(allocated.reason, "ReplicasPending");
        assert!(
            allocated
                .message
                .starts_with("1 of 2 replicas pending: replica 1: ")
                && allocated.message.contains(&plan.pending[0].reason),
            "{}",
            allocated.message
        );
        assert_eq!(find(&status, "Enforced").reason, "WaitingForAgents");
        assert_eq!(status.phase, WorkloadPhase::Degraded);
        assert_eq!(
            status.replica_statuses[1].pending_reason.as_deref(),
            Some(plan.pending[0].reason.as_str())
        );
    }

    #[test]
    fn agent_problems_make_enforcement_failed() {
        let workload = mk_workload("t", "web", 1, 100, 10, json!({}));
        let leases = [mk_lease("n1", "web", 0, 7)];
        let mut report = running(&leases[0]);
        report.problems = vec!["write memory.limit_in_bytes: Device or resource busy".into()];
        let observed = Observed {
            plan: None,
            leases: &leases,
            reports: std::slice::from_ref(&report),
            registered: &["n1".to_string()],
            rollout: None,
            held: None,
        };
        let status = workload_status(&workload, &observed, None, &at(100));
        let enforced = find(&status, "Enforced");
        assert_eq!(enforced.reason, "EnforcementFailed");
        assert_eq!(
            enforced.message,
            "replica 0 on n1: write memory.limit_in_bytes: Device or resource busy"
        );
    }

    #[test]
    fn reports_of_old_epochs_or_unregistered_nodes_do_not_count() {
        let workload = mk_workload("t", "web", 1, 100, 10, json!({}));
        let leases = [mk_lease("n1", "web", 0, 8)];
        let mut stale = running(&leases[0]);
        stale.lease_epoch = 7;
        for (report, registered) in [(stale, "n1"), (running(&leases[0]), "n2")] {
            let observed = Observed {
                plan: None,
                leases: &leases,
                reports: std::slice::from_ref(&report),
                registered: &[registered.to_string()],
                rollout: None,
                held: None,
            };
            let status = workload_status(&workload, &observed, None, &at(100));
            assert_eq!(find(&status, "Enforced").reason, "WaitingForAgents");
            assert_eq!(status.ready_replicas, 0);
        }
    }

    #[test]
    fn a_refused_object_says_why() {
        let workload = mk_workload("t", "web", 1, 100, 10, json!({}));
        let observed = Observed::default();
        let problem = "spec.resources.limits.cpu: below the request (not used until corrected)";
        let status = workload_status(&workload, &observed, Some(problem), &at(100));
        let allocated = find(&status, "Allocated");
        assert_eq!(
            (allocated.status.as_str(), allocated.reason.as_str()),
            ("False", "Invalid")
        );
        assert_eq!(allocated.message, problem);
    }

    /// What kstatus (Flux, Helm's --wait) makes of a status: Failed when Stalled is True,
    /// InProgress when Reconciling is True or observedGeneration lags, Current otherwise.
    fn kstatus(generation: i64, status: &WorkloadStatus) -> &'static str {
        let is = |t: &str| {
            status
                .conditions
                .iter()
                .any(|c| c.type_ == t && c.status == "True")
        };
        if status.observed_generation != Some(generation) || is("Reconciling") {
            "InProgress"
        } else if is("Stalled") {
            "Failed"
        } else {
            "Current"
        }
    }

    #[test]
    fn a_rollout_in_progress_is_in_progress_not_ready_and_says_how_far_it_is() {
        use crate::controller::rollout::Rollout;
        let mut workload = mk_workload("t", "web", 2, 100, 10, json!({}));
        workload.metadata.generation = Some(5);
        let leases = [mk_lease("n1", "web", 0, 7), mk_lease("n1", "web", 1, 7)];
        let mut reports: Vec<Report> = leases.iter().map(running).collect();
        reports[0].process.revision = Some("new".into());
        reports[0].process.ready = Some(false);
        reports[1].process.revision = Some("old".into());
        reports[1].process.ready = Some(true);
        let registered = ["n1".to_string()];
        let mut rollout = Rollout {
            workload: "t/web".parse().unwrap(),
            revision: "new".into(),
            replicas: 2,
            updated: 1,
            available: 0,
            outdated: 1,
            max_unavailable: 1,
            waiting: vec![1],
            replaced: 0,
        };
        let status = |reports: &[Report], rollout: &Rollout| {
            workload_status(
                &workload,
                &Observed {
                    plan: None,
                    leases: &leases,
                    reports,
                    registered: &registered,
                    rollout: Some(rollout),
                    held: None,
                },
                None,
                &at(100),
            )
        };
        let rolling = status(&reports, &rollout);
        assert_eq!(kstatus(5, &rolling), "InProgress");
        assert_eq!(
            (rolling.updated_replicas, rolling.ready_replicas),
            (1, 1),
            "replica 0 runs the new revision, not ready yet"
        );
        assert_eq!(rolling.revision.as_deref(), Some("new"));
        assert_eq!(rolling.replica_statuses[1].revision.as_deref(), Some("old"));
        let ready = find(&rolling, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "RollingOut")
        );
        let rolled_out = find(&rolling, "RolledOut");
        assert_eq!(rolled_out.status, "False");
        assert_eq!(
            rolled_out.message,
            "1 of 2 replicas updated to revision new, 0 available; replica 1 waits (maxUnavailable 1)"
        );
        assert_eq!(find(&rolling, "Reconciling").reason, "RollingOut");
        assert_ne!(rolling.phase, WorkloadPhase::Running);

        // Done: every replica runs the new revision, ready.
        for report in &mut reports {
            report.process.revision = Some("new".into());
            report.process.ready = Some(true);
        }
        rollout.updated = 2;
        rollout.available = 2;
        rollout.outdated = 0;
        rollout.waiting.clear();
        let done = status(&reports, &rollout);
        assert_eq!(kstatus(5, &done), "Current", "{done:#?}");
        assert_eq!(find(&done, "RolledOut").reason, "AllReplicasUpdated");
        assert_eq!(find(&done, "Ready").status, "True");
        assert_eq!(done.updated_replicas, 2);

        // Running but not ready (minReadySeconds, a failing check) is not ready.
        reports[1].process.ready = Some(false);
        let waiting = status(&reports, &rollout);
        let ready = find(&waiting, "Ready");
        assert_eq!(ready.reason, "ReplicasNotRunning");
        assert!(
            ready.message.contains("replica 1: Running, not ready yet"),
            "{}",
            ready.message
        );
    }

    #[test]
    fn kstatus_reads_running_as_current_and_starting_as_in_progress() {
        let mut workload = mk_workload("t", "web", 2, 100, 10, json!({}));
        workload.metadata.generation = Some(4);
        let leases = [mk_lease("n1", "web", 0, 7), mk_lease("n1", "web", 1, 7)];
        let mut reports: Vec<Report> = leases.iter().map(running).collect();
        let registered = ["n1".to_string()];
        let observed = |reports: &[Report]| {
            workload_status(
                &workload,
                &Observed {
                    plan: None,
                    leases: &leases,
                    reports,
                    registered: &registered,
                    rollout: None,
                    held: None,
                },
                None,
                &at(100),
            )
        };
        let status = observed(&reports);
        assert_eq!(kstatus(4, &status), "Current", "{status:#?}");
        assert_eq!(status.observed_generation, Some(4));
        reports[1].process.state = crate::lease::ProcessState::Starting;
        let status = observed(&reports);
        assert_eq!(kstatus(4, &status), "InProgress");
        let reconciling = find(&status, "Reconciling");
        assert_eq!(reconciling.reason, "ReplicasStarting");
        assert_eq!(
            reconciling.message,
            "1 of 2 replicas running; replica 1: Starting"
        );
    }

    #[test]
    fn a_refused_edit_is_failed_and_says_the_last_accepted_spec_runs() {
        let mut workload = mk_workload("t", "web", 1, 100, 10, json!({}));
        workload.metadata.generation = Some(3);
        let leases = [mk_lease("n1", "web", 0, 7)];
        let reports = [running(&leases[0])];
        let problem = "spec.resources.requests.cpu: 0.5m is finer than a millicore (generation 2, the last accepted, stays in use)";
        let status = workload_status(
            &workload,
            &Observed {
                plan: None,
                leases: &leases,
                reports: &reports,
                registered: &["n1".to_string()],
                rollout: None,
                held: None,
            },
            Some(problem),
            &at(100),
        );
        assert_eq!(kstatus(3, &status), "Failed");
        let ready = find(&status, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "SpecRefused")
        );
        assert!(
            ready.message.contains("generation 3 is not applied")
                && ready
                    .message
                    .contains("the last accepted spec: 1 of 1 replica running"),
            "{}",
            ready.message
        );
        let stalled = find(&status, "Stalled");
        assert_eq!(stalled.reason, "SpecRefused");
        assert!(stalled.message.starts_with("generation 3 is refused: "));
        assert_eq!(find(&status, "Reconciling").status, "False");
    }

    #[test]
    fn a_replica_that_can_never_fit_is_failed_one_waiting_for_room_in_progress() {
        let policy = mk_policy("p", json!({"strategy": "Priority"}));
        let nodes = [mk_node("n1", 2000, 4096, &[])];
        for (cpu, expected, stalled) in [(500_000, "Failed", true), (1500, "InProgress", false)] {
            // Two replicas: with 1500m each, the second waits for room on the 2-core node.
            let mut workload = mk_workload("t", "big", 2, cpu, 10, json!({}));
            workload.metadata.generation = Some(1);
            let plan = allocate(&Input {
                policies: std::slice::from_ref(&policy),
                workloads: std::slice::from_ref(&workload),
                nodes: &nodes,
                observed: &HashMap::new(),
                current: &HashMap::new(),
            });
            assert!(
                plan.pending.iter().all(|p| p.stalled == stalled),
                "{plan:?}"
            );
            let leases: Vec<Lease> = if stalled {
                Vec::new()
            } else {
                vec![mk_lease("n1", "big", 0, 3)]
            };
            let reports: Vec<Report> = leases.iter().map(running).collect();
            let status = workload_status(
                &workload,
                &Observed {
                    plan: Some(&plan),
                    leases: &leases,
                    reports: &reports,
                    registered: &["n1".to_string()],
                    rollout: None,
                    held: None,
                },
                None,
                &at(100),
            );
            let generation = workload.metadata.generation.unwrap_or_default();
            assert_eq!(kstatus(generation, &status), expected, "{status:#?}");
            // The allocator's reason is in the message kstatus shows.
            let shown = if stalled {
                find(&status, "Stalled")
            } else {
                find(&status, "Reconciling")
            };
            assert!(
                shown.message.contains(&plan.pending[0].reason),
                "{}",
                shown.message
            );
        }
    }

    #[test]
    fn an_unenforced_replica_is_failed_and_a_pending_workload_is_not_enforced() {
        let mut workload = mk_workload("t", "web", 1, 100, 10, json!({}));
        workload.metadata.generation = Some(1);
        let leases = [mk_lease("n1", "web", 0, 7)];
        let mut report = running(&leases[0]);
        report.process.state = crate::lease::ProcessState::Unenforced;
        report.process.pid = None;
        report.problems = vec![
            "memory.max cannot be applied: the memory controller is not delegated to corral".into(),
        ];
        let status = workload_status(
            &workload,
            &Observed {
                plan: None,
                leases: &leases,
                reports: std::slice::from_ref(&report),
                registered: &["n1".to_string()],
                rollout: None,
                held: None,
            },
            None,
            &at(100),
        );
        let stalled = find(&status, "Stalled");
        assert_eq!(stalled.reason, "LimitsNotApplied");
        assert!(
            stalled.message.contains("not delegated"),
            "{}",
            stalled.message
        );
        let generation = workload.metadata.generation.unwrap_or_default();
        assert_eq!(kstatus(generation, &status), "Failed");

        let status = workload_status(&workload, &Observed::default(), None, &at(100));
        let enforced = find(&status, "Enforced");
        assert_eq!(
            (enforced.status.as_str(), enforced.reason.as_str()),
            ("False", "NothingAllocated")
        );
        assert!(!find(&status, "Allocated").message.contains("1 replicas"));
    }

    #[test]
    fn a_deleting_workload_is_terminating() {
        let mut workload = mk_workload("t", "web", 1, 100, 10, json!({}));
        workload.metadata.deletion_timestamp = Some(at(50));
        let status = workload_status(&workload, &Observed::default(), None, &at(100));
        assert_eq!(status.phase, WorkloadPhase::Terminating);
    }

    #[test]
    fn transition_times_change_only_with_the_status() {
        let mut workload = mk_workload("t", "web", 1, 100, 10, json!({}));
        workload.metadata.generation = Some(3);
        let leases = [mk_lease("n1", "web", 0, 7)];
        let first = workload_status(
            &workload,
            &Observed {
                leases: &leases,
                registered: &["n1".to_string()],
                ..Observed::default()
            },
            None,
            &at(100),
        );
        workload.status = Some(first.clone());
        let reports = [running(&leases[0])];
        let second = workload_status(
            &workload,
            &Observed {
                leases: &leases,
                reports: &reports,
                registered: &["n1".to_string()],
                ..Observed::default()
            },
            None,
            &at(200),
        );
        assert_eq!(find(&second, "Allocated").last_transition_time, at(100));
        assert_eq!(find(&second, "Ready").last_transition_time, at(200));
        assert_eq!(find(&second, "Ready").observed_generation, Some(3));
        assert!(!same_workload_status(&first, &second));
        let again = workload_status(
            &Workload {
                status: Some(second.clone()),
                ..workload.clone()
            },
            &Observed {
                leases: &leases,
                reports: &reports,
                registered: &["n1".to_string()],
                ..Observed::default()
            },
            None,
            &at(300),
        );
        assert!(same_workload_status(&second, &again));
        assert_eq!(again, second, "an unchanged status keeps its times");
    }

    #[test]
    fn an_unreadable_object_says_which_field_and_that_nothing_runs() {
        let status = unreadable_status(
            Some(4),
            "spec.replicas: invalid type: string \"three\"",
            &at(100),
        );
        assert_eq!(status.phase, WorkloadPhase::Pending);
        let allocated = find(&status, "Allocated");
        assert_eq!(
            (allocated.status.as_str(), allocated.reason.as_str()),
            ("False", "Unreadable")
        );
        assert_eq!(
            allocated.message,
            "corral cannot read this object, so nothing of it runs: spec.replicas: invalid type: string \"three\""
        );
        assert_eq!(allocated.observed_generation, Some(4));
        assert_eq!(find(&status, "Ready").reason, "Unreadable");
    }

    #[test]
    fn policy_status_shows_capacity_allocation_and_pending() {
        let policy = mk_policy("p", json!({"strategy": "Priority"}));
        let workload = mk_workload("t", "big", 2, 3000, 10, json!({}));
        let nodes = [mk_node("n1", 4000, 4096, &[])];
        let plan = allocate(&Input {
            policies: std::slice::from_ref(&policy),
            workloads: std::slice::from_ref(&workload),
            nodes: &nodes,
            observed: &HashMap::new(),
            current: &HashMap::new(),
        });
        let status = policy_status(&policy, Some(&plan), None, &at(100));
        assert_eq!(status.node_count, 1);
        assert_eq!(status.pending, 1);
        assert_eq!(status.allocated.as_ref().unwrap().cpu.as_str(), "3");
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.reason, "GoverningNodes");
        let refused = policy_status(
            &policy,
            Some(&plan),
            Some("spec.tenants[1]: duplicate"),
            &at(100),
        );
        let valid = refused
            .conditions
            .iter()
            .find(|c| c.type_ == "Valid")
            .unwrap();
        assert_eq!(
            (valid.status.as_str(), valid.message.as_str()),
            ("False", "spec.tenants[1]: duplicate")
        );
        let nowhere = policy_status(&policy, None, None, &at(100));
        assert_eq!(nowhere.conditions[1].reason, "NoNodes");
    }
}
