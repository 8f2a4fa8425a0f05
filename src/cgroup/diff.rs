//! The pure diff: desired tree × observed tree → the operations that make the second the
//! first, in an order the kernel accepts. Only differences become operations, so applying
//! the same state twice writes nothing.

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

use super::knobs::{Knob, Phase};
use super::tree::{DesiredTree, GroupPath, ObservedGroup, ObservedTree, Work};

/// One step of reconciliation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "op")]
pub enum Op {
    /// Create a group.
    Create {
        /// The group.
        group: GroupPath,
    },
    /// Write a knob (of the root when `group` is `None`).
    Write {
        /// The group.
        group: Option<GroupPath>,
        /// The knob.
        knob: Knob,
        /// The value.
        value: String,
    },
    /// Start the group's command.
    Start {
        /// The group.
        group: GroupPath,
    },
    /// Move processes that match the group's adopt rule into it.
    Adopt {
        /// The group.
        group: GroupPath,
        /// The processes.
        pids: Vec<u32>,
    },
    /// Stop every process in the group: SIGTERM, then SIGKILL after the grace period.
    Stop {
        /// The group.
        group: GroupPath,
        /// Seconds between the two.
        grace_seconds: u32,
    },
    /// Stop the group's processes, which run an older revision of its command, so that the
    /// current one starts once the group is empty (a rolling update's step on this node).
    Replace {
        /// The group.
        group: GroupPath,
        /// Seconds between SIGTERM and SIGKILL.
        grace_seconds: u32,
        /// The revision that starts next.
        revision: String,
    },
    /// Move the group's adopted processes back to the groups they came from, running.
    Release {
        /// The replica group.
        group: GroupPath,
    },
    /// Remove an empty group.
    Remove {
        /// The group.
        group: GroupPath,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Create { group } => write!(f, "create {group}"),
            Op::Write { group, knob, value } => match group {
                Some(g) => write!(f, "write {g}/{knob} = {value}"),
                None => write!(f, "write {knob} = {value}"),
            },
            Op::Start { group } => write!(f, "start the command of {group}"),
            Op::Adopt { group, pids } => write!(f, "adopt {pids:?} into {group}"),
            Op::Stop {
                group,
                grace_seconds,
            } => {
                write!(f, "stop the processes of {group} (grace {grace_seconds}s)")
            }
            Op::Replace {
                group,
                grace_seconds,
                revision,
            } => write!(
                f,
                "replace the command of {group} with revision {revision}: stop it (grace {grace_seconds}s), then start the new one"
            ),
            Op::Release { group } => write!(f, "release the adopted processes of {group}"),
            Op::Remove { group } => write!(f, "remove {group}"),
        }
    }
}

impl Op {
    /// True for the operations that make other knobs' files: creating a group, and writing
    /// a knob of the [`Phase::Structure`] pass. The agent applies them first and reads the
    /// tree again, so that one pass converges.
    pub fn is_structural(&self) -> bool {
        match self {
            Op::Create { .. } => true,
            Op::Write { knob, .. } => knob.phase() == Phase::Structure,
            Op::Start { .. }
            | Op::Adopt { .. }
            | Op::Stop { .. }
            | Op::Replace { .. }
            | Op::Release { .. }
            | Op::Remove { .. } => false,
        }
    }
}

/// The operations, and the knobs the kernel does not offer (reported, not written).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// In order.
    pub ops: Vec<Op>,
    /// `(group, knob)` for each knob the kernel lacks.
    pub unavailable: Vec<(Option<GroupPath>, Knob)>,
}

/// What turns `observed` into `desired`. `start_now` names the replica groups whose command
/// should be started now (the supervisor decides it from exits, restart policy and
/// backoff); a group is started only when it holds no process.
///
/// A desired group whose command runs an older revision (`outdated`, as the supervisor
/// knows) is replaced: its processes are stopped, and a later pass starts the new one.
///
/// Order: the root's knobs; then each desired group, parents first: create, knobs, start,
/// replace or adopt; then groups no longer desired, replicas before tenants: stop, remove.
pub fn diff(
    desired: &DesiredTree,
    observed: &ObservedTree,
    start_now: &BTreeSet<GroupPath>,
) -> Diff {
    let mut out = Diff::default();
    for (knob, value) in &desired.root_knobs {
        match observed.root_knobs.get(knob) {
            Some(None) => out.unavailable.push((None, *knob)),
            Some(Some(current)) if knob.same(value, current) => {}
            _ => out.ops.push(Op::Write {
                group: None,
                knob: *knob,
                value: value.clone(),
            }),
        }
    }
    // BTreeMap order puts a tenant before its replicas ("t" < "t/w.0").
    for (group, want) in &desired.groups {
        let found = observed.groups.get(group);
        if found.is_none() {
            out.ops.push(Op::Create {
                group: group.clone(),
            });
        }
        for (knob, value) in &want.knobs {
            match found.and_then(|f| f.knobs.get(knob)) {
                Some(None) => out.unavailable.push((Some(group.clone()), *knob)),
                Some(Some(current)) if knob.same(value, current) => {}
                _ => out.ops.push(Op::Write {
                    group: Some(group.clone()),
                    knob: *knob,
                    value: value.clone(),
                }),
            }
        }
        let empty = found.is_none_or(|f| f.pids.is_empty());
        // Nothing starts, and nothing is adopted, without every limit of its group and
        // its tenant's in place.
        let limited = !out
            .unavailable
            .iter()
            .any(|(g, _)| g.as_ref() == Some(group) || *g == group.parent());
        match &want.work {
            _ if !limited => {}
            Some(Work::Command { args, .. })
                if !args.is_empty() && empty && start_now.contains(group) =>
            {
                out.ops.push(Op::Start {
                    group: group.clone(),
                });
            }
            Some(Work::Command { .. })
                if !empty && found.is_some_and(|f| f.outdated && !f.stopping) =>
            {
                out.ops.push(Op::Replace {
                    group: group.clone(),
                    grace_seconds: want.grace_seconds,
                    revision: want.revision.clone(),
                });
            }
            Some(Work::Adopt(_)) => {
                if let Some(pids) = observed.adoptable.get(group).filter(|p| !p.is_empty()) {
                    out.ops.push(Op::Adopt {
                        group: group.clone(),
                        pids: pids.clone(),
                    });
                }
            }
            _ => {}
        }
    }
    let stale: Vec<(&GroupPath, _)> = observed
        .groups
        .iter()
        .filter(|(g, _)| !desired.groups.contains_key(*g))
        .collect();
    // Releases and stops first. A stop runs in the background (the supervisor's), so a
    // group being stopped is neither stopped again nor removed: a later pass removes it
    // once it is empty. A released group is empty at once.
    for (group, found) in &stale {
        if !found.pids.is_empty() && found.release {
            out.ops.push(Op::Release {
                group: (*group).clone(),
            });
        }
    }
    for (group, found) in &stale {
        if !found.pids.is_empty() && !found.release && !found.stopping {
            out.ops.push(Op::Stop {
                group: (*group).clone(),
                grace_seconds: found.grace_seconds.unwrap_or(DEFAULT_GRACE_SECONDS),
            });
        }
    }
    let emptied =
        |found: &ObservedGroup| !found.stopping && (found.pids.is_empty() || found.release);
    // Replicas before their tenants; a tenant only once every group below it goes.
    for (group, found) in &stale {
        if !group.is_tenant() && emptied(found) {
            out.ops.push(Op::Remove {
                group: (*group).clone(),
            });
        }
    }
    for (group, found) in &stale {
        let children_go = observed.groups.iter().all(|(g, f)| {
            g.parent().as_ref() != Some(*group) || (!desired.groups.contains_key(g) && emptied(f))
        });
        if group.is_tenant() && emptied(found) && children_go {
            out.ops.push(Op::Remove {
                group: (*group).clone(),
            });
        }
    }
    out
}

/// Grace period for stopping a group whose lease, and so its own grace, is gone.
pub const DEFAULT_GRACE_SECONDS: u32 = 10;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::alloc::ReplicaKey;
    use crate::api::workload::RestartPolicy;
    use crate::cgroup::knobs::Knob::{CpuShares, PidsMax};
    use crate::cgroup::tree::{DesiredGroup, ObservedGroup};

    fn replica(ns: &str, name: &str, i: u32) -> GroupPath {
        GroupPath::replica(&ReplicaKey::new(ns, name, i)).unwrap()
    }

    fn command() -> Work {
        Work::Command {
            args: vec!["sleep".into()],
            env: vec![],
            working_dir: None,
            restart: RestartPolicy::Always,
            run_as: Default::default(),
        }
    }

    fn desired() -> DesiredTree {
        let mut tree = DesiredTree::default();
        tree.groups.insert(
            GroupPath::tenant("t").unwrap(),
            DesiredGroup {
                knobs: BTreeMap::from([(CpuShares, "512".to_string())]),
                work: None,
                grace_seconds: 0,
                logs: Default::default(),
                ..DesiredGroup::default()
            },
        );
        tree.groups.insert(
            replica("t", "w", 0),
            DesiredGroup {
                knobs: BTreeMap::from([
                    (CpuShares, "512".to_string()),
                    (PidsMax, "max".to_string()),
                ]),
                work: Some(command()),
                grace_seconds: 5,
                logs: Default::default(),
                ..DesiredGroup::default()
            },
        );
        tree
    }

    /// What the tree looks like once `desired()` was applied.
    fn applied() -> ObservedTree {
        let mut tree = ObservedTree::default();
        tree.groups.insert(
            GroupPath::tenant("t").unwrap(),
            ObservedGroup {
                knobs: BTreeMap::from([(CpuShares, Some("512".into()))]),
                ..ObservedGroup::default()
            },
        );
        tree.groups.insert(
            replica("t", "w", 0),
            ObservedGroup {
                knobs: BTreeMap::from([
                    (CpuShares, Some("512".into())),
                    (PidsMax, Some("max".into())),
                ]),
                pids: vec![42],
                ..ObservedGroup::default()
            },
        );
        tree
    }

    #[test]
    fn from_nothing_everything_is_created_parents_first() {
        let start = BTreeSet::from([replica("t", "w", 0)]);
        let ops: Vec<String> = diff(&desired(), &ObservedTree::default(), &start)
            .ops
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            ops,
            [
                "create t",
                "write t/cpu.shares = 512",
                "create t/w.0",
                "write t/w.0/cpu.shares = 512",
                "write t/w.0/pids.max = max",
                "start the command of t/w.0",
            ]
        );
    }

    #[test]
    fn the_same_state_twice_is_no_operation() {
        let start = BTreeSet::from([replica("t", "w", 0)]);
        assert_eq!(diff(&desired(), &applied(), &start), Diff::default());
    }

    #[test]
    fn drift_is_written_back_and_missing_knobs_are_reported() {
        let mut observed = applied();
        let w = observed.groups.get_mut(&replica("t", "w", 0)).unwrap();
        w.knobs.insert(CpuShares, Some("1024".into()));
        w.knobs.insert(PidsMax, None);
        let d = diff(&desired(), &observed, &BTreeSet::new());
        assert_eq!(
            d.ops,
            [Op::Write {
                group: Some(replica("t", "w", 0)),
                knob: CpuShares,
                value: "512".into()
            }]
        );
        assert_eq!(d.unavailable, [(Some(replica("t", "w", 0)), PidsMax)]);
    }

    #[test]
    fn groups_no_longer_desired_are_stopped_then_removed_replicas_first() {
        let mut observed = applied();
        observed
            .groups
            .insert(GroupPath::tenant("gone").unwrap(), ObservedGroup::default());
        observed.groups.insert(
            replica("gone", "x", 1),
            ObservedGroup {
                pids: vec![7, 8],
                grace_seconds: Some(3),
                ..ObservedGroup::default()
            },
        );
        let ops: Vec<String> = diff(&desired(), &observed, &BTreeSet::new())
            .ops
            .iter()
            .map(ToString::to_string)
            .collect();
        // The stop runs in the background; nothing is removed while processes are left.
        assert_eq!(ops, ["stop the processes of gone/x.1 (grace 3s)"]);
        let group = observed.groups.get_mut(&replica("gone", "x", 1)).unwrap();
        group.stopping = true;
        assert!(
            diff(&desired(), &observed, &BTreeSet::new()).ops.is_empty(),
            "a group being stopped is neither stopped again nor removed"
        );
        let group = observed.groups.get_mut(&replica("gone", "x", 1)).unwrap();
        group.stopping = false;
        group.pids.clear();
        let ops: Vec<String> = diff(&desired(), &observed, &BTreeSet::new())
            .ops
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(ops, ["remove gone/x.1", "remove gone"], "replicas first");
    }

    #[test]
    fn every_stop_is_asked_for_in_one_pass() {
        let mut observed = ObservedTree::default();
        for name in ["a", "b"] {
            observed.groups.insert(
                replica("gone", name, 0),
                ObservedGroup {
                    pids: vec![1],
                    ..ObservedGroup::default()
                },
            );
        }
        let ops: Vec<String> = diff(&DesiredTree::default(), &observed, &BTreeSet::new())
            .ops
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            ops,
            [
                "stop the processes of gone/a.0 (grace 10s)",
                "stop the processes of gone/b.0 (grace 10s)",
            ]
        );
    }

    #[test]
    fn nothing_starts_without_its_limits_or_its_tenants() {
        let start = BTreeSet::from([replica("t", "w", 0)]);
        let mut observed = applied();
        observed
            .groups
            .get_mut(&replica("t", "w", 0))
            .unwrap()
            .pids
            .clear();
        assert!(
            diff(&desired(), &observed, &start)
                .ops
                .contains(&Op::Start {
                    group: replica("t", "w", 0)
                })
        );
        for group in [replica("t", "w", 0), GroupPath::tenant("t").unwrap()] {
            let mut observed = observed.clone();
            observed
                .groups
                .get_mut(&group)
                .unwrap()
                .knobs
                .insert(CpuShares, None);
            let d = diff(&desired(), &observed, &start);
            assert!(d.ops.is_empty(), "{group}: {:?}", d.ops);
            assert_eq!(d.unavailable, [(Some(group.clone()), CpuShares)]);
        }
    }

    /// Read-backs are compared by the knob's rule, and a group's knobs are written
    /// structure first, then by name.
    #[test]
    fn knobs_are_compared_and_ordered_by_the_table() {
        use crate::cgroup::knobs::Knob::{CpuMax, MemoryLimit, SubtreeControl};
        let t = GroupPath::tenant("t").unwrap();
        let mut want = DesiredTree::default();
        want.groups.insert(
            t.clone(),
            DesiredGroup {
                knobs: BTreeMap::from([
                    (MemoryLimit, "-1".to_string()),
                    (CpuMax, "max 100000".to_string()),
                    (SubtreeControl, "cpu memory".to_string()),
                ]),
                ..DesiredGroup::default()
            },
        );
        let mut found = ObservedTree::default();
        found.groups.insert(
            t.clone(),
            ObservedGroup {
                knobs: BTreeMap::from([
                    (MemoryLimit, Some("9223372036854771712".into())),
                    (CpuMax, Some("max 100000\n".into())),
                    (SubtreeControl, Some("memory cpu".into())),
                ]),
                ..ObservedGroup::default()
            },
        );
        assert!(diff(&want, &found, &BTreeSet::new()).ops.is_empty());
        let ops = diff(&want, &ObservedTree::default(), &BTreeSet::new()).ops;
        let order: Vec<String> = ops.iter().map(ToString::to_string).collect();
        assert_eq!(
            order,
            [
                "create t",
                "write t/cgroup.subtree_control = cpu memory",
                "write t/cpu.max = max 100000",
                "write t/memory.limit_in_bytes = -1",
            ]
        );
        let structural: Vec<bool> = ops.iter().map(Op::is_structural).collect();
        assert_eq!(structural, [true, true, false, false]);
        assert_eq!(
            serde_json::to_value(&ops[1]).unwrap(),
            serde_json::json!({"op": "write", "group": "t", "knob": "cgroup.subtree_control", "value": "cpu memory"})
        );
    }

    #[test]
    fn a_running_group_is_never_started_again() {
        let start = BTreeSet::from([replica("t", "w", 0)]);
        assert!(diff(&desired(), &applied(), &start).ops.is_empty());
    }

    #[test]
    fn an_outdated_command_is_replaced_once_and_its_group_kept() {
        let mut want = desired();
        let group = replica("t", "w", 0);
        if let Some(g) = want.groups.get_mut(&group) {
            g.revision = "new".into();
            g.grace_seconds = 4;
        }
        let mut found = applied();
        if let Some(g) = found.groups.get_mut(&group) {
            g.outdated = true;
        }
        let ops: Vec<String> = diff(&want, &found, &BTreeSet::new())
            .ops
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            ops,
            [
                "replace the command of t/w.0 with revision new: stop it (grace 4s), then start the new one"
            ]
        );
        // Being stopped: not asked again; emptied: started (the supervisor says when).
        if let Some(g) = found.groups.get_mut(&group) {
            g.stopping = true;
        }
        assert!(diff(&want, &found, &BTreeSet::new()).ops.is_empty());
    }
}
