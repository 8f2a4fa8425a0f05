//! Placement in priority order, for the `Priority`, `Demand` and `Usage` strategies: the
//! highest priority first; under `Priority`, with preemption when the policy allows it.

use std::cmp::Reverse;
use std::collections::BTreeSet;

use super::explain;
use super::state::{Allocator, PolicyId, Preempted};
use crate::api::policy::Strategy;

/// Places the policy's pending replicas, highest priority first. A replica that fits
/// nowhere may, under `Priority` and `PreemptLowerPriority`, take the place of replicas of
/// strictly lower priority, which then wait in turn. What still fits nowhere stays pending
/// with a reason.
pub(super) fn place_pending(a: &mut Allocator, policy: PolicyId) {
    let preempts = a.policies[policy].spec.strategy == Strategy::Priority;
    let mut waiting = BTreeSet::new();
    while let Some(queue_key) = a.policies[policy].pending.pop_first() {
        // A replica of a workload since removed: nothing to place.
        let Some(w) = a.workloads.get(&queue_key.1) else {
            continue;
        };
        if let Err(reason) = a.within_tenant_limit(policy, &queue_key.1, w) {
            a.set_reason(&queue_key, reason);
            waiting.insert(queue_key);
            continue;
        }
        let searched = explain::still_failing(a, &queue_key.1).is_none();
        if searched && let Some(node) = a.choose_node(policy, w) {
            a.place(&queue_key, node);
            continue;
        }
        if searched
            && preempts
            && let Some((node, victims)) = a.preemption_victims(policy, &queue_key)
        {
            let by = Allocator::replica_key(&queue_key.1, queue_key.2);
            let Reverse(by_priority) = queue_key.0;
            for victim in victims {
                a.unplace(&victim);
                a.preemptions.push(Preempted {
                    victim: Allocator::replica_key(&victim.1, victim.2),
                    by: by.clone(),
                    by_priority,
                    node: a.nodes[node].info.name.clone(),
                });
                a.policies[policy].pending.insert(victim);
            }
            a.place(&queue_key, node);
            continue;
        }
        let reason = explain::capacity(a, policy, &queue_key.1);
        let victim = Allocator::replica_key(&queue_key.1, queue_key.2);
        let reason = match a.preemptions.iter().find(|p| p.victim == victim) {
            Some(p) => format!(
                "preempted on {} by {} (priority {}), and {reason}",
                p.node, p.by.workload, p.by_priority
            ),
            None => reason,
        };
        a.set_reason(&queue_key, reason);
        waiting.insert(queue_key);
    }
    a.policies[policy].pending = waiting;
}
