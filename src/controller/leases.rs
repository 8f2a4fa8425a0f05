//! From an allocation to leases, and from the leases in the store to the changes that make
//! them the desired ones. Pure: read, compare, write only the difference.

use std::collections::{HashMap, HashSet};

use crate::alloc::plan::Plan;
use crate::alloc::{Observed, ReplicaKey, Res};
use crate::api::policy::ResourcePolicySpec;
use crate::api::{ResourcePolicy, Workload, WorkloadRef};
use crate::lease::{Lease, LeaseChange, Report};

/// Each workload by its identity.
pub fn by_name(workloads: &[Workload]) -> HashMap<WorkloadRef, &Workload> {
    workloads.iter().map(|w| (WorkloadRef::of(w), w)).collect()
}

/// The lease of every placed replica in `plan`, stamped with `epoch`. The workload's part
/// of a lease is computed once per workload, policy and tenant, not once per replica.
pub fn desired_leases(
    plan: &Plan,
    workloads: &[Workload],
    policies: &[ResourcePolicy],
    epoch: i64,
) -> Vec<Lease> {
    let by_name = by_name(workloads);
    let default_spec = ResourcePolicySpec::default();
    let specs: HashMap<&str, &ResourcePolicySpec> = policies
        .iter()
        .filter_map(|p| Some((p.metadata.name.as_deref()?, &p.spec)))
        .collect();
    let mut first: HashMap<(&WorkloadRef, &str, &str), Lease> = HashMap::new();
    plan.allocations
        .iter()
        .filter_map(|a| {
            let id = (&a.workload, a.policy.as_str(), a.tenant.as_str());
            if let Some(lease) = first.get(&id) {
                return Some(lease.for_replica(a, epoch));
            }
            let workload = by_name.get(&a.workload)?;
            let spec = specs
                .get(a.policy.as_str())
                .copied()
                .unwrap_or(&default_spec);
            let lease = Lease::new(a, workload, spec, epoch);
            first.insert(id, lease.clone());
            Some(lease)
        })
        .collect()
}

/// The changes that turn `current` into `desired`: a put for each lease that is new or asks
/// for something else, a delete for each that is no longer wanted. A lease that differs
/// only by its epoch is left alone.
pub fn lease_changes(current: &[Lease], desired: &[Lease]) -> Vec<LeaseChange> {
    let now: HashMap<(&str, &ReplicaKey), &Lease> = current
        .iter()
        .map(|l| ((l.node.as_str(), &l.key), l))
        .collect();
    let want: HashMap<(&str, &ReplicaKey), &Lease> = desired
        .iter()
        .map(|l| ((l.node.as_str(), &l.key), l))
        .collect();
    let mut puts: Vec<&Lease> = want
        .iter()
        .filter(|(id, lease)| {
            now.get(*id)
                .is_none_or(|existing| !existing.same_grant(lease))
        })
        .map(|(_, lease)| *lease)
        .collect();
    let mut deletes: Vec<(&str, &ReplicaKey)> = now
        .keys()
        .filter(|id| !want.contains_key(*id))
        .copied()
        .collect();
    // In the order of (node, replica), as the store's batches are cut.
    puts.sort_unstable_by(|a, b| (&a.node, &a.key).cmp(&(&b.node, &b.key)));
    deletes.sort_unstable();
    puts.into_iter()
        .map(|lease| LeaseChange::Put(Box::new(lease.clone())))
        .chain(deletes.into_iter().map(|(node, key)| LeaseChange::Delete {
            node: node.to_string(),
            key: key.clone(),
        }))
        .collect()
}

/// `current` with `changes` applied: what the store holds after writing them, in the
/// order of (node, replica). Without changes, `current` as it is.
pub fn apply(mut current: Vec<Lease>, changes: &[LeaseChange]) -> Vec<Lease> {
    if changes.is_empty() {
        return current;
    }
    let touched: HashSet<(&str, &ReplicaKey)> = changes
        .iter()
        .map(|change| match change {
            LeaseChange::Put(lease) => (lease.node.as_str(), &lease.key),
            LeaseChange::Delete { node, key } => (node.as_str(), key),
        })
        .collect();
    current.retain(|l| !touched.contains(&(l.node.as_str(), &l.key)));
    // The last change of a lease wins, as in a batch.
    let mut put: HashMap<(&str, &ReplicaKey), &Lease> = HashMap::new();
    for change in changes {
        match change {
            LeaseChange::Put(lease) => {
                put.insert((lease.node.as_str(), &lease.key), lease);
            }
            LeaseChange::Delete { node, key } => {
                put.remove(&(node.as_str(), key));
            }
        }
    }
    current.extend(put.into_values().cloned());
    // Sorted already but for the puts at the end: stable sort merges the two runs.
    current.sort_by(|a, b| (&a.node, &a.key).cmp(&(&b.node, &b.key)));
    current
}

/// Where each replica is now, by its lease.
pub fn placement(leases: &[Lease]) -> HashMap<ReplicaKey, String> {
    leases
        .iter()
        .map(|l| (l.key.clone(), l.node.clone()))
        .collect()
}

/// Keeps the last `keep` usage samples of every replica, for the `Usage` strategy.
#[derive(Clone, Debug, Default)]
pub struct UsageHistory {
    samples: HashMap<ReplicaKey, Observed>,
    keep: usize,
}

impl UsageHistory {
    /// A history of `keep` samples per replica.
    pub fn new(keep: usize) -> Self {
        UsageHistory {
            samples: HashMap::new(),
            keep: keep.max(1),
        }
    }

    /// Adds each report's usage, and forgets replicas without a report.
    pub fn record(&mut self, reports: &[Report]) {
        let mut seen = std::collections::HashSet::new();
        for report in reports {
            let (Some(key), Some(usage)) = (&report.key, report.usage) else {
                continue;
            };
            seen.insert(key.clone());
            let entry = self.samples.entry(key.clone()).or_default();
            let sample = Res::new(usage.cpu, usage.memory, usage.pids);
            for (series, value) in [
                (&mut entry.cpu, sample.cpu),
                (&mut entry.memory, sample.memory),
                (&mut entry.pids, sample.pids),
            ] {
                series.push(value);
                if series.len() > self.keep {
                    series.remove(0);
                }
            }
            // Pressure is a state, not a series: the latest report's counts.
            entry.memory_pressure = usage.pressure.and_then(|p| p.memory).map(|m| m.some.avg10);
        }
        self.samples.retain(|k, _| seen.contains(k));
    }

    /// The samples.
    pub fn observed(&self) -> &HashMap<ReplicaKey, Observed> {
        &self.samples
    }

    /// The samples with each replica's memory grant from `leases` (the larger, should a
    /// replica have two), as the allocator takes them.
    pub fn observed_under(&self, leases: &[Lease]) -> HashMap<ReplicaKey, Observed> {
        let mut observed = self.samples.clone();
        for lease in leases {
            if let Some(o) = observed.get_mut(&lease.key) {
                o.memory_granted = o.memory_granted.max(Some(lease.granted.memory));
            }
        }
        observed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::fixtures::{mk_node, mk_policy, mk_workload};
    use crate::alloc::{self, Input};
    use crate::lease::UsageSample;
    use serde_json::json;

    fn plan(workloads: &[Workload], policies: &[ResourcePolicy]) -> Plan {
        alloc::allocate(&Input {
            policies,
            workloads,
            nodes: &[mk_node("n1", 4000, 4096, &[])],
            observed: &HashMap::new(),
            current: &HashMap::new(),
        })
    }

    #[test]
    fn leases_carry_the_policy_settings_and_tenant_limit() {
        let policies = [mk_policy(
            "p",
            json!({"cgroup": {"cpuPeriodMicros": 50000},
            "tenants": [{"namespace": "t", "limit": {"cpu": "2"}}]}),
        )];
        let workloads = [mk_workload(
            "t",
            "w",
            2,
            500,
            64,
            json!({"terminationGracePeriodSeconds": 3}),
        )];
        let leases = desired_leases(&plan(&workloads, &policies), &workloads, &policies, 7);
        assert_eq!(leases.len(), 2);
        assert_eq!(leases[0].cgroup.cpu_period_micros, 50_000);
        assert_eq!(
            leases[0].tenant_limit,
            Some(Res::new(2000, i64::MAX, i64::MAX))
        );
        assert_eq!(leases[0].grace_seconds, 3);
        assert_eq!(leases[0].epoch, 7);
    }

    #[test]
    fn only_differences_become_changes() {
        let policies = [mk_policy("p", json!({}))];
        let workloads = [mk_workload("t", "w", 2, 500, 64, json!({}))];
        let first = desired_leases(&plan(&workloads, &policies), &workloads, &policies, 1);
        assert_eq!(lease_changes(&[], &first).len(), 2);
        // A new epoch alone changes nothing.
        let again = desired_leases(&plan(&workloads, &policies), &workloads, &policies, 2);
        assert!(lease_changes(&first, &again).is_empty());
        // One replica fewer: one delete.
        let fewer = [mk_workload("t", "w", 1, 500, 64, json!({}))];
        let third = desired_leases(&plan(&fewer, &policies), &fewer, &policies, 2);
        assert_eq!(
            lease_changes(&first, &third),
            [LeaseChange::Delete {
                node: "n1".into(),
                key: ReplicaKey::new("t", "w", 1)
            }]
        );
        // A new limit: a put.
        let bigger = [mk_workload("t", "w", 1, 600, 64, json!({}))];
        let fourth = desired_leases(&plan(&bigger, &policies), &bigger, &policies, 2);
        assert!(
            matches!(&lease_changes(&third, &fourth)[..], [LeaseChange::Put(l)] if l.granted.cpu == 600)
        );
    }

    #[test]
    fn applying_the_changes_gives_what_was_desired() {
        let policies = [mk_policy("p", json!({}))];
        let before = [mk_workload("t", "w", 2, 500, 64, json!({}))];
        let after = [
            mk_workload("t", "w", 1, 600, 64, json!({})),
            mk_workload("t", "v", 1, 100, 8, json!({})),
        ];
        let current = desired_leases(&plan(&before, &policies), &before, &policies, 1);
        let desired = desired_leases(&plan(&after, &policies), &after, &policies, 2);
        let changes = lease_changes(&current, &desired);
        assert_eq!(changes.len(), 3, "{changes:?}");
        let mut expected = desired.clone();
        expected.sort_by(|a, b| (&a.node, &a.key).cmp(&(&b.node, &b.key)));
        assert_eq!(apply(current, &changes), expected);
    }

    #[test]
    fn a_lease_built_from_another_replicas_is_the_one_built_anew() {
        let policies = [mk_policy(
            "p",
            json!({"tenants": [{"namespace": "t", "limit": {"cpu": "3"}}]}),
        )];
        let workloads = [mk_workload(
            "t",
            "w",
            3,
            500,
            64,
            json!({"command": {"args": ["sh", "-c", "sleep 9"], "env": [{"name": "A", "value": "1"}],
                   "healthCheck": {"tcp": {"port": 8080}}},
                   "update": {"minReadySeconds": 2}, "disconnect": {"stopAfterSeconds": 5},
                   "limits": {"cpu": "1", "memory": "128Mi"}}),
        )];
        let plan = plan(&workloads, &policies);
        let leases = desired_leases(&plan, &workloads, &policies, 4);
        assert_eq!(leases.len(), 3);
        for (lease, allocation) in leases.iter().zip(&plan.allocations) {
            assert_eq!(
                *lease,
                Lease::new(allocation, &workloads[0], &policies[0].spec, 4)
            );
        }
        assert!(leases[1].same_grant(&leases[0].for_replica(&plan.allocations[1], 9)));
        assert!(!leases[1].same_grant(&leases[0]));
    }

    #[test]
    fn applying_nothing_or_a_later_change_of_the_same_lease() {
        let policies = [mk_policy("p", json!({}))];
        let workloads = [mk_workload("t", "w", 2, 500, 64, json!({}))];
        let current = desired_leases(&plan(&workloads, &policies), &workloads, &policies, 1);
        assert_eq!(apply(current.clone(), &[]), current);
        let mut changed = current[0].clone();
        changed.granted.cpu = 1;
        let put = LeaseChange::Put(Box::new(changed.clone()));
        let delete = LeaseChange::Delete {
            node: changed.node.clone(),
            key: changed.key.clone(),
        };
        assert_eq!(
            apply(current.clone(), &[put.clone(), delete.clone()]),
            current[1..]
        );
        let after = apply(current.clone(), &[delete, put]);
        assert_eq!(after.len(), 2);
        assert!(after.contains(&changed));
    }

    #[test]
    fn usage_history_keeps_the_latest_samples() {
        let mut history = UsageHistory::new(2);
        let report = |cpu| Report {
            key: Some(ReplicaKey::new("t", "w", 0)),
            usage: Some(UsageSample {
                cpu,
                ..UsageSample::default()
            }),
            ..Report::default()
        };
        for cpu in [10, 20, 30] {
            history.record(&[report(cpu)]);
        }
        assert_eq!(
            history.observed()[&ReplicaKey::new("t", "w", 0)].cpu,
            [20, 30]
        );
        history.record(&[]);
        assert!(history.observed().is_empty());
    }

    #[test]
    fn usage_history_keeps_the_latest_memory_pressure_and_takes_grants_from_leases() {
        use crate::alloc::fixtures::mk_lease;
        use crate::cgroup::pressure::{Pressure, Pressures, Stall};
        let mut history = UsageHistory::new(5);
        let report = |pressure: Option<f64>| Report {
            key: Some(ReplicaKey::new("t", "w", 0)),
            usage: Some(UsageSample {
                pressure: pressure.map(|avg10| Pressures {
                    memory: Some(Pressure {
                        some: Stall {
                            avg10,
                            ..Stall::default()
                        },
                        full: None,
                    }),
                    ..Pressures::default()
                }),
                ..UsageSample::default()
            }),
            ..Report::default()
        };
        let key = ReplicaKey::new("t", "w", 0);
        history.record(&[report(Some(30.0))]);
        history.record(&[report(Some(12.5))]);
        assert_eq!(history.observed()[&key].memory_pressure, Some(12.5));
        assert_eq!(history.observed()[&key].memory_granted, None);
        let leases = [mk_lease("n1", "w", 0, 1), mk_lease("n1", "other", 0, 1)];
        let observed = history.observed_under(&leases);
        assert_eq!(observed[&key].memory_granted, Some(10 << 20));
        assert_eq!(observed.len(), 1, "no samples, no entry");
        history.record(&[report(None)]);
        assert_eq!(
            history.observed()[&key].memory_pressure,
            None,
            "a report without pressure (v1) clears it"
        );
    }
}
