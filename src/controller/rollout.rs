//! Rolling updates. A change to what a workload's replicas run gives its leases a new
//! revision ([`crate::lease::revision`]); an agent replaces a command whose lease carries
//! another revision than the one it runs. This module decides which leases get the new
//! revision now: a replica that is not available anyway at once, an available one only
//! while fewer than `update.maxUnavailable` replicas of the workload are unavailable. The
//! others keep their lease's earlier work and revision, with everything else (limits,
//! grants) current, so a change of resources is never held back.
//!
//! A replica is available when its agent reports it ready (running for `minReadySeconds`,
//! passing its health check) from the revision of its current lease. Pure: no I/O.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::alloc::ReplicaKey;
use crate::api::{Workload, WorkloadRef};
use crate::lease::{Lease, Report};

/// Where one workload's rollout stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// The workload.
    pub workload: WorkloadRef,
    /// The revision being rolled out.
    pub revision: String,
    /// Replicas asked for.
    pub replicas: u32,
    /// Replicas whose lease carries the revision (after this pass).
    pub updated: u32,
    /// Replicas that run the revision and are available.
    pub available: u32,
    /// Replicas whose lease or process is of an earlier revision.
    pub outdated: u32,
    /// `update.maxUnavailable`.
    pub max_unavailable: u32,
    /// Replicas that still run an earlier revision and wait for their turn.
    pub waiting: Vec<u32>,
    /// Replicas given the revision in this pass, replacing an earlier one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replaced: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Rollout {
    /// True while some replica runs, or is leased, an earlier revision.
    pub fn in_progress(&self) -> bool {
        self.outdated > 0 || !self.waiting.is_empty()
    }

    /// For a person: `1 of 3 replicas updated to revision 0a1b2c3d4e, 0 available; replica 1
    /// and 2 wait (maxUnavailable 1)`.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "{} of {} updated to revision {}, {} available",
            self.updated,
            if self.replicas == 1 {
                "1 replica".to_string()
            } else {
                format!("{} replicas", self.replicas)
            },
            self.revision,
            self.available
        );
        if !self.waiting.is_empty() {
            let list: Vec<String> = self.waiting.iter().map(u32::to_string).collect();
            text.push_str(&format!(
                "; {} {} {} (maxUnavailable {})",
                if self.waiting.len() == 1 {
                    "replica"
                } else {
                    "replicas"
                },
                list.join(", "),
                if self.waiting.len() == 1 {
                    "waits"
                } else {
                    "wait"
                },
                self.max_unavailable
            ));
        }
        text
    }
}

/// Which replicas are available: their agent reports them ready, running the revision of
/// their current lease, on that lease's node.
pub struct Availability<'a> {
    now: HashMap<&'a ReplicaKey, &'a Lease>,
    reported: HashMap<(&'a str, &'a ReplicaKey), &'a Report>,
}

impl<'a> Availability<'a> {
    /// From the leases in the store and the agents' reports.
    pub fn new(current: &'a [Lease], reports: &'a [Report]) -> Self {
        Availability {
            now: current.iter().map(|l| (&l.key, l)).collect(),
            reported: reports
                .iter()
                .filter_map(|r| Some(((r.node.as_str(), r.key.as_ref()?), r)))
                .collect(),
        }
    }

    /// True when `key` is available now.
    pub fn available(&self, key: &ReplicaKey) -> bool {
        let Some(lease) = self.now.get(key) else {
            return false;
        };
        self.reported
            .get(&(lease.node.as_str(), key))
            .is_some_and(|r| {
                let ready = r
                    .process
                    .ready
                    .unwrap_or_else(|| r.process.state.ready_without_check());
                ready
                    && r.process
                        .revision
                        .as_deref()
                        .is_none_or(|rev| lease.revision.is_empty() || rev == lease.revision)
            })
    }
}

/// True when some lease in `desired` would give a replica in place (same node) another
/// revision than its lease in `current` carries: a rollout step, which must rest on fresh
/// reports.
pub fn replaces(desired: &[Lease], current: &[Lease]) -> bool {
    let now: HashMap<(&str, &ReplicaKey), &str> = current
        .iter()
        .map(|l| ((l.node.as_str(), &l.key), l.revision.as_str()))
        .collect();
    desired.iter().any(|l| {
        now.get(&(l.node.as_str(), &l.key))
            .is_some_and(|rev| !rev.is_empty() && !l.revision.is_empty() && *rev != l.revision)
    })
}

/// `desired` (the leases the allocation asks for) with the rollout applied against
/// `current` (the leases in the store) and `reports`: outdated replicas beyond the
/// workload's budget keep their current work and revision. Returns the leases to write and
/// where each command workload's rollout stands.
pub fn gate(
    mut desired: Vec<Lease>,
    current: &[Lease],
    reports: &[Report],
    workloads: &[Workload],
) -> (Vec<Lease>, Vec<Rollout>) {
    let seen = Availability::new(current, reports);
    let now = &seen.now;
    let reported = &seen.reported;
    let available = |key: &ReplicaKey| seen.available(key);
    let specs = super::leases::by_name(workloads);
    // Each workload's leases in `desired`, by its name as the workload spells it.
    let mut by_workload: BTreeMap<WorkloadRef, (&Workload, Vec<usize>)> = BTreeMap::new();
    for (i, lease) in desired.iter().enumerate() {
        if lease.revision.is_empty() {
            continue;
        }
        if let Some(workload) = specs.get(&lease.key.workload).copied() {
            // A cheap clone (shared text): `desired`, which the gate changes, is not
            // borrowed.
            by_workload
                .entry(lease.key.workload.clone())
                .or_insert_with(|| (workload, Vec::new()))
                .1
                .push(i);
        }
    }
    let mut rollouts = Vec::new();
    for (name, (workload, mut indices)) in by_workload {
        indices.sort_by_key(|i| desired[*i].key.index);
        let replicas = u32::try_from(workload.spec.replicas.max(0)).unwrap_or(0);
        let max_unavailable =
            u32::try_from(workload.spec.update.max_unavailable.max(1)).unwrap_or(1);
        let revision = desired[indices[0]].revision.clone();
        let mut probe = name.replica(0);
        let available_now = (0..replicas)
            .filter(|i| {
                probe.index = *i;
                available(&probe)
            })
            .count();
        let unavailable = u32::try_from(replicas as usize - available_now.min(replicas as usize))
            .unwrap_or(u32::MAX);
        let mut budget = max_unavailable.saturating_sub(unavailable);
        let mut rollout = Rollout {
            workload: name.clone(),
            revision: revision.clone(),
            replicas,
            max_unavailable,
            updated: 0,
            available: 0,
            outdated: 0,
            waiting: Vec::new(),
            replaced: 0,
        };
        for i in indices {
            let lease = &mut desired[i];
            let outdated = now.get(&lease.key).filter(|cur| {
                cur.node == lease.node && !cur.revision.is_empty() && cur.revision != lease.revision
            });
            let runs_another = now
                .get(&lease.key)
                .and_then(|cur| reported.get(&(cur.node.as_str(), &lease.key)))
                .and_then(|r| r.process.revision.as_deref())
                .is_some_and(|rev| rev != revision);
            if outdated.is_some() || runs_another {
                rollout.outdated += 1;
            }
            if let Some(cur) = outdated {
                if available(&lease.key) {
                    if budget > 0 {
                        budget -= 1;
                    } else {
                        lease.work = cur.work.clone();
                        lease.revision.clone_from(&cur.revision);
                        rollout.waiting.push(lease.key.index);
                        continue;
                    }
                }
                rollout.replaced += 1;
            } else if available(&lease.key)
                && now
                    .get(&lease.key)
                    .is_some_and(|cur| cur.revision == revision)
            {
                rollout.available += 1;
            }
            rollout.updated += 1;
        }
        rollouts.push(rollout);
    }
    (desired, rollouts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::fixtures::{mk_lease, mk_workload};
    use crate::cgroup::tree::Work;
    use crate::lease::ProcessReport;
    use serde_json::json;

    fn lease(index: u32, revision: &str, program: &str) -> Lease {
        let mut lease = mk_lease("n1", "w", index, 1);
        lease.revision = revision.into();
        lease.work = Work::Command {
            args: vec![program.into()],
            env: vec![],
            working_dir: None,
            restart: crate::api::workload::RestartPolicy::Always,
            run_as: Default::default(),
        };
        lease
    }

    fn report(index: u32, revision: &str, ready: bool) -> Report {
        Report {
            key: Some(ReplicaKey::new("t", "w", index)),
            node: "n1".into(),
            process: ProcessReport {
                state: crate::lease::ProcessState::Running,
                revision: Some(revision.into()),
                ready: Some(ready),
                ..ProcessReport::default()
            },
            ..Report::default()
        }
    }

    fn workload(replicas: u32, max_unavailable: i32) -> Workload {
        mk_workload(
            "t",
            "w",
            replicas,
            100,
            8,
            json!({"update": {"maxUnavailable": max_unavailable}}),
        )
    }

    fn revisions(leases: &[Lease]) -> Vec<&str> {
        leases.iter().map(|l| l.revision.as_str()).collect()
    }

    #[test]
    fn available_replicas_are_replaced_max_unavailable_at_a_time() {
        let current: Vec<Lease> = (0..3).map(|i| lease(i, "old", "a")).collect();
        let desired: Vec<Lease> = (0..3).map(|i| lease(i, "new", "b")).collect();
        let reports: Vec<Report> = (0..3).map(|i| report(i, "old", true)).collect();
        let (out, rollouts) = gate(desired.clone(), &current, &reports, &[workload(3, 1)]);
        assert_eq!(revisions(&out), ["new", "old", "old"]);
        // A held replica keeps its work, and its limits are the new ones.
        assert_eq!(out[1].work, current[1].work);
        assert_eq!(rollouts[0].waiting, [1, 2]);
        assert_eq!((rollouts[0].updated, rollouts[0].available), (1, 0));
        assert_eq!((rollouts[0].outdated, rollouts[0].replaced), (3, 1));
        assert!(rollouts[0].in_progress());
        let (out, _) = gate(desired, &current, &reports, &[workload(3, 2)]);
        assert_eq!(revisions(&out), ["new", "new", "old"]);
    }

    #[test]
    fn the_next_replica_waits_until_the_replaced_one_is_ready() {
        let mut current: Vec<Lease> = (0..3).map(|i| lease(i, "old", "a")).collect();
        current[0] = lease(0, "new", "b");
        let desired: Vec<Lease> = (0..3).map(|i| lease(i, "new", "b")).collect();
        // Replica 0's agent still reports the old process, ready: it has not replaced it yet.
        let mut reports: Vec<Report> = (0..3).map(|i| report(i, "old", true)).collect();
        let (out, _) = gate(desired.clone(), &current, &reports, &[workload(3, 1)]);
        assert_eq!(revisions(&out), ["new", "old", "old"]);
        // Running the new revision, not ready yet.
        reports[0] = report(0, "new", false);
        let (out, _) = gate(desired.clone(), &current, &reports, &[workload(3, 1)]);
        assert_eq!(revisions(&out), ["new", "old", "old"]);
        reports[0] = report(0, "new", true);
        let (out, rollouts) = gate(desired, &current, &reports, &[workload(3, 1)]);
        assert_eq!(revisions(&out), ["new", "new", "old"]);
        assert_eq!((rollouts[0].updated, rollouts[0].available), (2, 1));
        assert_eq!(rollouts[0].outdated, 2);
        assert!(
            rollouts[0]
                .describe()
                .contains("replica 2 waits (maxUnavailable 1)")
        );
    }

    #[test]
    fn unavailable_replicas_are_replaced_at_once_and_count_against_the_budget() {
        let current: Vec<Lease> = (0..3).map(|i| lease(i, "old", "a")).collect();
        let desired: Vec<Lease> = (0..3).map(|i| lease(i, "new", "b")).collect();
        // Replica 1 crashes: replacing it costs no availability. It uses the budget up, so
        // the available ones wait.
        let reports = vec![
            report(0, "old", true),
            report(1, "old", false),
            report(2, "old", true),
        ];
        let (out, _) = gate(desired, &current, &reports, &[workload(3, 1)]);
        assert_eq!(revisions(&out), ["old", "new", "old"]);
    }

    #[test]
    fn only_a_change_of_revision_in_place_is_a_replacement() {
        let current: Vec<Lease> = (0..2).map(|i| lease(i, "old", "a")).collect();
        assert!(!replaces(&current, &current));
        let mut moved = lease(0, "new", "b");
        moved.node = "n2".into();
        assert!(!replaces(&[moved, lease(1, "old", "a")], &current));
        assert!(!replaces(&[lease(0, "new", "b")], &[lease(0, "", "a")]));
        assert!(replaces(
            &[lease(0, "old", "a"), lease(1, "new", "b")],
            &current
        ));
    }

    #[test]
    fn new_and_moved_replicas_and_leases_without_revisions_are_not_held() {
        let mut current = vec![lease(0, "old", "a"), lease(1, "", "a")];
        current[0].node = "n2".into();
        let desired: Vec<Lease> = (0..3).map(|i| lease(i, "new", "b")).collect();
        let (out, rollouts) = gate(desired, &current, &[], &[workload(3, 1)]);
        assert_eq!(revisions(&out), ["new", "new", "new"]);
        assert!(rollouts[0].waiting.is_empty());
    }

    #[test]
    fn a_finished_rollout_is_not_in_progress() {
        let current: Vec<Lease> = (0..2).map(|i| lease(i, "new", "b")).collect();
        let reports: Vec<Report> = (0..2).map(|i| report(i, "new", true)).collect();
        let (out, rollouts) = gate(current.clone(), &current, &reports, &[workload(2, 1)]);
        assert_eq!(out, current);
        assert!(!rollouts[0].in_progress(), "{rollouts:?}");
        assert_eq!(
            rollouts[0].describe(),
            "2 of 2 replicas updated to revision new, 2 available"
        );
    }
}
