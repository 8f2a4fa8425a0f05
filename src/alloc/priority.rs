//! Placement in priority order, for the `Priority`, `Demand` and `Usage` strategies: the
//! highest priority first; under `Priority`, with preemption when the policy allows it.

use super::explain;
use super::state::{Allocator, PolicyId, Taken};
use super::strategy::PlacementStrategy;

/// Placement in priority order.
pub(super) struct PriorityOrder {
    /// Whether a replica may preempt (under `Priority`; the policy must allow it too).
    pub preempt: bool,
}

impl PlacementStrategy for PriorityOrder {
    /// Places the policy's pending replicas, highest priority first. A replica that fits
    /// nowhere may, with `preempt` and under `PreemptLowerPriority`, take the place of
    /// replicas of strictly lower priority, which then wait in turn. What still fits
    /// nowhere stays pending with a reason.
    fn place_pending(&self, a: &mut Allocator, policy: PolicyId) {
        // Preempted replicas rejoin the queue, and come in their turn.
        while let Some(taken) = a.pop_pending(policy) {
            place_one(a, policy, taken, self.preempt);
        }
    }
}

/// Places one replica: where it fits; else, when `preempts`, in the place of replicas of
/// lower priority; else it is deferred with the reason.
fn place_one(a: &mut Allocator, policy: PolicyId, mut taken: Taken, preempts: bool) {
    // A replica of a workload since removed: nothing to place.
    let Some(w) = a.workload(&taken.key().1) else {
        return;
    };
    if let Err(reason) = a.within_tenant_limit(policy, &taken.key().1, w) {
        return a.defer(taken, reason);
    }
    let searched = explain::still_failing(a, &taken.key().1).is_none();
    if searched && let Some(node) = a.choose_node(policy, w) {
        match a.place(taken, node) {
            Ok(()) => return,
            Err(back) => taken = back,
        }
    }
    if searched
        && preempts
        && let Some((node, victims)) = a.preemption_victims(policy, taken.key())
    {
        match a.preempt(taken, &victims, node) {
            Ok(()) => return,
            Err(back) => taken = back,
        }
    }
    let reason = explain::capacity(a, policy, &taken.key().1);
    let victim = Allocator::replica_key(&taken.key().1, taken.key().2);
    let reason = match a.preemptions().iter().find(|p| p.victim == victim) {
        Some(p) => format!(
            "preempted on {} by {} (priority {}), and {reason}",
            p.node, p.by.workload, p.by_priority
        ),
        None => reason,
    };
    a.defer(taken, reason);
}
