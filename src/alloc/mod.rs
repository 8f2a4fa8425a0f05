//! The allocator: a pure function from policies, workloads, nodes, observed use and the
//! current placement to an allocation. No I/O, deterministic, and incremental: the
//! controller, `corral plan` and the benchmark all run this code.
//!
//! Guarantee: on every node and for every resource, Σ grants ≤ (capacity − reserved) ×
//! overcommit, whatever the strategy.
//!
//! - Which policy governs a workload or a node: [`govern`].
//! - The state, placement (spread, pack) and preemption: [`state`].
//! - Strategies, behind one trait chosen from the policy's `spec.strategy` ([`strategy`]):
//!   `Priority`, `Demand` and `Usage` place in priority order ([`priority`]), `Fair` by
//!   weighted DRF ([`fair`]); they change the state only through its narrow API, which
//!   keeps its invariants. Grants per node: [`grants`].
//! - Reasons for pending replicas: [`explain`]; the result: [`plan`].

pub mod admit;
mod explain;
mod fair;
pub mod fixtures;
pub mod govern;
mod grants;
pub mod input;
mod node_index;
pub mod plan;
mod priority;
pub mod resources;
pub mod selector;
pub mod state;
mod strategy;

use std::collections::HashMap;

pub use input::{NodeInfo, Observed, ReplicaKey};
pub use plan::Plan;
pub use resources::Res;
pub use state::Allocator;

use crate::api::{ResourcePolicy, Workload};

/// Everything an allocation depends on.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// The policies.
    pub policies: &'a [ResourcePolicy],
    /// The workloads.
    pub workloads: &'a [Workload],
    /// The nodes.
    pub nodes: &'a [NodeInfo],
    /// Observed use per replica, for the `Usage` strategy.
    pub observed: &'a HashMap<ReplicaKey, Observed>,
    /// Where replicas are now, by node name: they stay there while they fit.
    pub current: &'a HashMap<ReplicaKey, String>,
}

/// Allocates from scratch (apart from `current`). The same input always gives the same plan.
pub fn allocate(input: &Input<'_>) -> Plan {
    let mut allocator = Allocator::new(input.policies, input.nodes);
    allocator.set_observed(input.observed.clone());
    let workloads: Vec<&Workload> = input.workloads.iter().collect();
    allocator.add_workloads(&workloads, input.current);
    allocator.allocate();
    allocator.plan()
}

impl Plan {
    /// Where each placed replica is, by key: the `current` of the next allocation.
    pub fn placement(&self) -> HashMap<ReplicaKey, String> {
        self.allocations
            .iter()
            .map(|a| (a.workload.replica(a.replica), a.node.clone()))
            .collect()
    }
}
