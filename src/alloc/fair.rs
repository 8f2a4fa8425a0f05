//! The `Fair` strategy: weighted Dominant Resource Fairness across tenants, as in Mesos'
//! allocator (Ghodsi et al., NSDI 2011).
//!
//! A tenant's dominant share is the largest, over resources, of what it holds divided by
//! what the policy's nodes offer; divided by its weight. Progressive filling: the tenant
//! with the smallest weighted dominant share places its next replica, again and again.
//! Tenants below their guarantee go before all others, a tenant's limit is never
//! exceeded, and what others are guaranteed but do not hold yet is kept free for them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use super::explain;
use super::resources::Kind;
use super::state::{Allocator, NodeId, PolicyId, PolicyState, Taken, TenantState};
use super::strategy::PlacementStrategy;
use crate::api::WorkloadRef;

/// Weighted DRF across the policy's tenants.
pub(super) struct Fair;

impl PlacementStrategy for Fair {
    /// Places the policy's pending replicas by weighted DRF. Within a tenant, replicas go
    /// in priority order; one that cannot be placed stays pending and the tenant's next is
    /// tried.
    fn place_pending(&self, a: &mut Allocator, policy: PolicyId) {
        let mut queues: BTreeMap<Arc<str>, VecDeque<Taken>> = BTreeMap::new();
        for taken in a.take_pending(policy) {
            queues
                .entry(taken.key().1.namespace_arc().clone())
                .or_default()
                .push_back(taken);
        }
        let mut turn: BTreeSet<(bool, u64, Arc<str>)> =
            queues.keys().map(|t| order(a.policy(policy), t)).collect();
        while let Some((_, _, tenant)) = turn.pop_first() {
            let Some(queue) = queues.get_mut(&tenant) else {
                continue;
            };
            let Some(taken) = queue.pop_front() else {
                continue;
            };
            place_one(a, policy, taken);
            if queues.get(&tenant).is_some_and(|q| !q.is_empty()) {
                turn.insert(order(a.policy(policy), &tenant));
            }
        }
    }
}

/// Places one replica, or defers it with the reason it cannot be placed now.
fn place_one(a: &mut Allocator, policy: PolicyId, taken: Taken) {
    let node = match node_for(a, policy, &taken.key().1) {
        Ok(Some(node)) => node,
        // A replica of a workload since removed: nothing to place, nothing to explain.
        Ok(None) => return,
        Err(reason) => return a.defer(taken, reason),
    };
    if let Err(taken) = a.place(taken, node) {
        let reason = explain::capacity(a, policy, &taken.key().1);
        a.defer(taken, reason);
    }
}

/// A tenant's turn: those below their guarantee first, then by weighted dominant share
/// (f64 bits order as the numbers do for non-negative values), then by name.
fn order(p: &PolicyState, tenant: &Arc<str>) -> (bool, u64, Arc<str>) {
    let (below, share) = p.tenants.get(tenant).map_or((false, 0.0), |t| {
        (
            t.guarantee.is_some() && !t.unmet().is_zero(),
            weighted_share(p, t),
        )
    });
    (!below, share.to_bits(), tenant.clone())
}

/// The tenant's dominant share divided by its weight.
pub(super) fn weighted_share(p: &PolicyState, t: &TenantState) -> f64 {
    dominant_share(p, t) / f64::from(t.weight.max(1))
}

/// The largest, over resources, of what the tenant holds over what the policy offers.
pub(super) fn dominant_share(p: &PolicyState, t: &TenantState) -> f64 {
    Kind::ALL
        .iter()
        .filter(|k| p.total.get(**k) > 0)
        .map(|k| t.allocated.get(*k) as f64 / p.total.get(*k) as f64)
        .fold(0.0, f64::max)
}

/// The node for a replica of `key`; `Ok(None)` when its workload was removed; why not,
/// when the tenant's limit or others' guarantees hold it back, or no node has room.
fn node_for(
    a: &mut Allocator,
    policy: PolicyId,
    key: &WorkloadRef,
) -> Result<Option<NodeId>, String> {
    let Some(w) = a.workload(key) else {
        return Ok(None);
    };
    let footprint = w.footprint;
    let p = a.policy(policy);
    a.within_tenant_limit(policy, key, w)?;
    if let Some(t) = p.tenants.get(key.namespace_arc()) {
        let others_unmet = p.unmet.minus(t.unmet());
        let needed = p.committed.plus(footprint).plus(others_unmet);
        if let Some(kind) = needed.first_excess(&p.total)
            && others_unmet.get(kind) > 0
        {
            return Err(format!(
                "the {} {} left is held for other tenants' guarantees",
                kind.format(
                    p.total
                        .get(kind)
                        .saturating_sub(p.committed.get(kind))
                        .max(0)
                ),
                kind.name()
            ));
        }
    }
    if let Some(reason) = explain::still_failing(a, key) {
        return Err(reason);
    }
    match a.choose_node(policy, w) {
        Some(node) => Ok(Some(node)),
        None => Err(explain::capacity(a, policy, key)),
    }
}
