//! Placement strategies: how a policy's pending replicas find nodes. A strategy sees the
//! allocator only through its narrow API (take pending replicas, place, preempt, defer:
//! see [`super::state`]), so whatever order it places in, the allocator's invariants hold.
//! Which strategy a policy's `spec.strategy` selects is decided here, and only here.

use super::fair::Fair;
use super::priority::PriorityOrder;
use super::state::{Allocator, PolicyId};
use crate::api::policy::Strategy;

/// A way of placing a policy's pending replicas.
pub(super) trait PlacementStrategy {
    /// Places what it can of `policy`'s pending replicas. Each replica it takes off the
    /// queue it places, lets preempt, or defers with the reason; the allocator queues the
    /// deferred ones again once this returns.
    fn place_pending(&self, a: &mut Allocator, policy: PolicyId);
}

/// The placement of a policy whose `spec.strategy` is `strategy`: weighted DRF for `Fair`,
/// priority order for the others, with preemption under `Priority` (when the policy allows
/// it).
pub(super) fn for_strategy(strategy: Strategy) -> &'static dyn PlacementStrategy {
    match strategy {
        Strategy::Fair => &Fair,
        Strategy::Priority => &PriorityOrder { preempt: true },
        Strategy::Demand | Strategy::Usage => &PriorityOrder { preempt: false },
    }
}
