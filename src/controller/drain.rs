//! Draining: an operator cordons a node (`corral drain`); the controller places nothing new
//! there, and moves the replicas there to other nodes a few at a time, as `kubectl drain`
//! evicts pods within their disruption budget: for each workload, at most
//! `update.maxUnavailable` of its replicas are unavailable at once, the ones being moved
//! included (a move stops the old copy, then starts the new one, as an eviction does). A
//! replica that fits nowhere else stays where it is, running, and the drain waits for
//! room. Pure.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::rollout::Availability;
use crate::alloc::ReplicaKey;
use crate::api::{Workload, WorkloadRef};
use crate::lease::{Lease, Report};

/// A replica kept on its cordoned node for now.
#[derive(Clone, Debug, PartialEq)]
pub struct Kept {
    /// Its lease, as it is.
    pub lease: Lease,
    /// Why, for a person.
    pub reason: String,
}

/// `desired` (allocated without the `cordoned` nodes) with the moves off those nodes held
/// to each workload's budget: a replica whose move must wait keeps its current lease.
/// Returns the leases to write and the replicas kept.
pub fn gate(
    desired: Vec<Lease>,
    current: &[Lease],
    reports: &[Report],
    workloads: &[Workload],
    cordoned: &BTreeSet<String>,
) -> (Vec<Lease>, Vec<Kept>) {
    if cordoned.is_empty() {
        return (desired, Vec::new());
    }
    let on_cordoned: Vec<&Lease> = current
        .iter()
        .filter(|l| cordoned.contains(&l.node))
        .collect();
    if on_cordoned.is_empty() {
        return (desired, Vec::new());
    }
    let seen = Availability::new(current, reports);
    let placed: HashMap<&ReplicaKey, &Lease> = desired.iter().map(|l| (&l.key, l)).collect();
    let now: HashMap<&ReplicaKey, &Lease> = current.iter().map(|l| (&l.key, l)).collect();
    let specs = super::leases::by_name(workloads);
    let mut by_workload: BTreeMap<&WorkloadRef, Vec<&Lease>> = BTreeMap::new();
    for lease in on_cordoned {
        by_workload
            .entry(&lease.key.workload)
            .or_default()
            .push(lease);
    }
    let mut kept = Vec::new();
    for (name, mut leases) in by_workload {
        // Deleted: its leases go, as always.
        let Some(workload) = specs.get(name) else {
            continue;
        };
        leases.sort_by_key(|l| l.key.index);
        let replicas = u32::try_from(workload.spec.replicas.max(0)).unwrap_or(0);
        let max_unavailable =
            u32::try_from(workload.spec.update.max_unavailable.max(1)).unwrap_or(1);
        // Unavailable now, or changed by this pass otherwise than by the drain (a move off a
        // lost node, a rollout's replacement).
        let unavailable = (0..replicas)
            .filter(|i| {
                let key = name.replica(*i);
                let changed = match (now.get(&key), placed.get(&key)) {
                    (Some(cur), Some(new)) if cur.node == new.node => cur.revision != new.revision,
                    (Some(cur), Some(_)) => !cordoned.contains(&cur.node),
                    _ => false,
                };
                changed || !seen.available(&key)
            })
            .count();
        let mut budget =
            max_unavailable.saturating_sub(u32::try_from(unavailable).unwrap_or(u32::MAX));
        for lease in leases {
            if lease.key.index >= replicas {
                continue;
            }
            let reason = match placed.get(&lease.key) {
                None => format!(
                    "node {} is cordoned, and the replica fits on no other node yet",
                    lease.node
                ),
                // Unavailable already: its move costs nothing, and was counted above.
                Some(_) if !seen.available(&lease.key) => continue,
                Some(_) if budget > 0 => {
                    budget -= 1;
                    continue;
                }
                Some(to) => format!(
                    "node {} is cordoned; it moves to {} once fewer than maxUnavailable ({max_unavailable}) \
                     replicas of {name} are unavailable",
                    lease.node, to.node
                ),
            };
            kept.push(Kept {
                lease: (*lease).clone(),
                reason,
            });
        }
    }
    let keys: BTreeSet<&ReplicaKey> = kept.iter().map(|k| &k.lease.key).collect();
    let mut out: Vec<Lease> = desired
        .into_iter()
        .filter(|l| !keys.contains(&l.key))
        .collect();
    out.extend(kept.iter().map(|k| k.lease.clone()));
    (out, kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::fixtures::{mk_lease, mk_workload};
    use crate::lease::ProcessReport;
    use serde_json::json;

    fn ready(lease: &Lease) -> Report {
        Report {
            key: Some(lease.key.clone()),
            node: lease.node.clone(),
            process: ProcessReport {
                state: crate::lease::ProcessState::Running,
                ready: Some(true),
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

    fn nodes(leases: &[Lease]) -> Vec<(u32, &str)> {
        let mut out: Vec<(u32, &str)> = leases
            .iter()
            .map(|l| (l.key.index, l.node.as_str()))
            .collect();
        out.sort_unstable();
        out
    }

    #[test]
    fn replicas_leave_a_cordoned_node_max_unavailable_at_a_time() {
        let current: Vec<Lease> = (0..3).map(|i| mk_lease("n1", "w", i, 1)).collect();
        let reports: Vec<Report> = current.iter().map(ready).collect();
        let desired: Vec<Lease> = (0..3).map(|i| mk_lease("n2", "w", i, 1)).collect();
        let cordoned = BTreeSet::from(["n1".to_string()]);
        let (out, kept) = gate(
            desired.clone(),
            &current,
            &reports,
            &[workload(3, 1)],
            &cordoned,
        );
        assert_eq!(nodes(&out), [(0, "n2"), (1, "n1"), (2, "n1")]);
        assert_eq!(kept.len(), 2);
        assert!(
            kept[0]
                .reason
                .contains("moves to n2 once fewer than maxUnavailable (1)"),
            "{}",
            kept[0].reason
        );
        // Replica 0 moved and is not ready on n2 yet: the others still wait.
        let mut moved = current.clone();
        moved[0] = mk_lease("n2", "w", 0, 1);
        let mut reports2: Vec<Report> = moved.iter().map(ready).collect();
        reports2[0].process.ready = Some(false);
        let (out, _) = gate(
            desired.clone(),
            &moved,
            &reports2,
            &[workload(3, 1)],
            &cordoned,
        );
        assert_eq!(nodes(&out), [(0, "n2"), (1, "n1"), (2, "n1")]);
        // Ready there: the next one goes.
        let reports3: Vec<Report> = moved.iter().map(ready).collect();
        let (out, _) = gate(desired, &moved, &reports3, &[workload(3, 1)], &cordoned);
        assert_eq!(nodes(&out), [(0, "n2"), (1, "n2"), (2, "n1")]);
    }

    #[test]
    fn a_replica_with_nowhere_to_go_stays_and_nothing_cordoned_changes_nothing() {
        let current = vec![mk_lease("n1", "w", 0, 1)];
        let reports: Vec<Report> = current.iter().map(ready).collect();
        let cordoned = BTreeSet::from(["n1".to_string()]);
        let (out, kept) = gate(Vec::new(), &current, &reports, &[workload(1, 1)], &cordoned);
        assert_eq!(out, current);
        assert!(
            kept[0].reason.contains("fits on no other node"),
            "{}",
            kept[0].reason
        );
        let desired = vec![mk_lease("n2", "w", 0, 1)];
        let (out, kept) = gate(
            desired.clone(),
            &current,
            &reports,
            &[workload(1, 1)],
            &BTreeSet::new(),
        );
        assert_eq!((out, kept.len()), (desired, 0));
    }

    #[test]
    fn an_unavailable_replica_moves_at_once() {
        let current: Vec<Lease> = (0..2).map(|i| mk_lease("n1", "w", i, 1)).collect();
        let mut reports: Vec<Report> = current.iter().map(ready).collect();
        reports[1].process.ready = Some(false);
        let desired: Vec<Lease> = (0..2).map(|i| mk_lease("n2", "w", i, 1)).collect();
        let cordoned = BTreeSet::from(["n1".to_string()]);
        let (out, _) = gate(desired, &current, &reports, &[workload(2, 1)], &cordoned);
        // Replica 1 is down anyway and uses the budget: replica 0 waits.
        assert_eq!(nodes(&out), [(0, "n1"), (1, "n2")]);
    }
}
