//! The controller: desired objects in, leases out. Each pass allocates from the current
//! placement (so replicas stay where they are) and the observed use, and writes only the
//! leases that changed, fenced by its epoch.

pub mod cache;
pub mod cluster;
pub mod leases;
pub mod nodes;
pub mod provision;
pub mod rollout;

use crate::alloc::plan::Plan;
use crate::alloc::{self, Input, NodeInfo};
use crate::api::{ResourcePolicy, Workload};
use crate::lease::{Lease, LeaseStore, Report, StoreError};

pub use leases::UsageHistory;

/// What one controller pass did.
#[derive(Clone, Debug, Default)]
pub struct ControllerPass {
    /// The allocation.
    pub plan: Plan,
    /// Leases put or deleted.
    pub changes: usize,
    /// The leases in the store after the pass.
    pub leases: Vec<Lease>,
    /// Where each command workload's rollout stands.
    pub rollouts: Vec<rollout::Rollout>,
}

/// Allocates `workloads` under `policies` on `nodes` and brings the store's leases in line,
/// rolling out changes to what replicas run as `reports` (the agents' latest) allow.
///
/// # Errors
/// The store cannot be read or written, or this controller's epoch is fenced.
pub async fn reconcile<S: LeaseStore>(
    store: &S,
    epoch: i64,
    workloads: &[Workload],
    policies: &[ResourcePolicy],
    nodes: &[NodeInfo],
    usage: &UsageHistory,
    reports: &[Report],
) -> Result<ControllerPass, StoreError> {
    let current = store.leases().await?;
    let placement = leases::placement(&current);
    let plan = alloc::allocate(&Input {
        policies,
        workloads,
        nodes,
        observed: &usage.observed_under(&current),
        current: &placement,
    });
    let desired = leases::desired_leases(&plan, workloads, policies, epoch);
    // A replacement must not rest on stale reports (a cluster controller reads them at each
    // resync): one more replica down than `maxUnavailable` allows would be the cost.
    let fresh;
    let reports = if rollout::replaces(&desired, &current) {
        fresh = store.reports().await?;
        &fresh
    } else {
        reports
    };
    let (desired, rollouts) = rollout::gate(desired, &current, reports, workloads);
    let changes = leases::lease_changes(&current, &desired);
    store.write_leases(epoch, &changes).await?;
    Ok(ControllerPass {
        plan,
        changes: changes.len(),
        leases: leases::apply(current, &changes),
        rollouts,
    })
}
