//! Why a replica is pending, in words a person can act on. It only reads the allocator's
//! state (and keeps its cache of reasons through [`Allocator::remember_reason`]).

use super::resources::{Kind, Res};
use super::state::{Allocator, DEFAULT_POLICY, PolicyId, labels_match};
use crate::api::WorkloadRef;

/// Why a replica of `key` fits on none of the policy's nodes. Replicas of one workload fail
/// for the same reason until something is placed, so the text is cached per workload and
/// placement epoch.
pub(super) fn capacity(a: &mut Allocator, policy: PolicyId, key: &WorkloadRef) -> String {
    if let Some(reason) = a.fresh_reason(key) {
        return reason.to_string();
    }
    let reason = describe(a, policy, key);
    a.remember_reason(key, reason.clone());
    reason
}

/// The reason a replica of `key` failed for, if one did and nothing was placed or removed
/// since: another replica of the workload would fail the same way, so it need not search.
pub(super) fn still_failing(a: &Allocator, key: &WorkloadRef) -> Option<String> {
    a.fresh_reason(key).map(str::to_string)
}

/// True when a replica of `key` needs more than any node offers that the policy governs
/// and the workload selects, even with nothing else on it: only a new node, or a change to
/// the spec or the policy, places it. False without such nodes (it waits for one).
pub(super) fn never_fits(a: &Allocator, policy: PolicyId, key: &WorkloadRef) -> bool {
    let Some(w) = a.workload(key) else {
        return false;
    };
    a.policy(policy)
        .nodes
        .iter()
        .map(|id| a.node(*id))
        .filter(|n| labels_match(&w.demand.node_selector, &n.info.labels))
        .map(|n| n.allocatable)
        .reduce(|m, n| m.max(n))
        .is_some_and(|largest| w.footprint.first_excess(&largest).is_some())
}

fn describe(a: &Allocator, policy: PolicyId, key: &WorkloadRef) -> String {
    let p = a.policy(policy);
    let Some(w) = a.workload(key) else {
        return "its workload was removed".to_string();
    };
    if p.nodes.is_empty() {
        return if p.name == DEFAULT_POLICY {
            "no ResourcePolicy governs this workload and every node belongs to one; set spec.policyRef or widen a policy's namespaces".to_string()
        } else {
            format!("ResourcePolicy {:?} governs no nodes", p.name)
        };
    }
    let matching: Vec<_> = p
        .nodes
        .iter()
        .map(|id| a.node(*id))
        .filter(|n| labels_match(&w.demand.node_selector, &n.info.labels))
        .collect();
    if matching.is_empty() {
        let wanted: Vec<String> = w
            .demand
            .node_selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        return format!(
            "none of the {} nodes of ResourcePolicy {:?} has the labels {}",
            p.nodes.len(),
            p.name,
            wanted.join(", ")
        );
    }
    let max = p.max_per_node();
    let matching: Vec<_> = matching
        .into_iter()
        .filter(|n| n.replicas.len() < max)
        .collect();
    if matching.is_empty() {
        return format!(
            "every matching node already runs {max} replica(s), the most ResourcePolicy {:?} allows on one node (maxReplicasPerNode)",
            p.name
        );
    }
    let need = w.footprint;
    let largest = matching.iter().fold(Res::ZERO, |m, n| m.max(n.allocatable));
    if let Some(kind) = need.first_excess(&largest) {
        return format!(
            "needs {} {} per replica, more than any matching node offers ({} at most)",
            kind.format(need.get(kind)),
            kind.name(),
            kind.format(largest.get(kind))
        );
    }
    let most_free = matching
        .iter()
        .fold(Res::new(i64::MIN, i64::MIN, i64::MIN), |m, n| {
            m.max(n.allocatable.minus(n.committed))
        });
    if let Some(kind) = need.first_excess(&most_free) {
        return format!(
            "needs {} {}; the most free on a matching node is {}",
            kind.format(need.get(kind)),
            kind.name(),
            kind.format(most_free.get(kind).max(0))
        );
    }
    let wanted: Vec<String> = Kind::ALL
        .iter()
        .filter(|k| need.get(**k) > 0)
        .map(|k| format!("{} {}", k.format(need.get(*k)), k.name()))
        .collect();
    format!(
        "needs {} on one node; each is free somewhere, but no matching node has all of it",
        wanted.join(" and ")
    )
}
