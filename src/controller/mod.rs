//! The controller: desired objects in, leases out. Each pass allocates from the current
//! placement (so replicas stay where they are) and the observed use, and writes only the
//! leases that changed, fenced by its epoch.

pub mod cache;
pub mod cluster;
pub mod disconnect;
pub mod drain;
pub mod leadership;
pub mod leases;
pub mod nodes;
pub mod provision;
pub mod rollout;

use crate::alloc::plan::Plan;
use crate::alloc::{self, Input, NodeInfo};
use crate::api::{ResourcePolicy, Workload};
use crate::lease::{Lease, LeaseStore, Report, StoreError};

pub use leases::UsageHistory;

/// What a pass knows of the cluster besides the desired objects and the leases.
#[derive(Clone, Copy)]
pub struct Seen<'a> {
    /// The nodes to allocate on.
    pub nodes: &'a [NodeInfo],
    /// Nodes whose registration is missing, with how long each has been.
    pub missing: &'a std::collections::BTreeMap<String, std::time::Duration>,
    /// Observed use, for the `Usage` strategy.
    pub usage: &'a UsageHistory,
    /// The agents' latest reports, for rollouts and drains.
    pub reports: &'a [Report],
    /// Nodes an operator cordoned (`corral drain`): nothing new goes there, and what is
    /// there moves away. `nodes` includes them.
    pub cordoned: &'a std::collections::BTreeSet<String>,
}

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
    /// Replicas kept on their missing node (`disconnect`).
    pub held: Vec<disconnect::Held>,
    /// Replicas kept on their cordoned node for now (`corral drain`).
    pub draining: Vec<drain::Kept>,
    /// The nodes cordoned during the pass.
    pub cordoned: Vec<String>,
}

impl ControllerPass {
    /// How soon a replica kept on its missing node may move: a pass is due then.
    pub fn next_release(&self) -> Option<std::time::Duration> {
        self.held.iter().filter_map(|h| h.release_in).min()
    }
}

/// Allocates `workloads` under `policies` on the nodes `seen` and brings the store's leases
/// in line, rolling out changes to what replicas run as the reports allow, and keeping on
/// missing nodes the replicas whose `disconnect` says so.
///
/// # Errors
/// The store cannot be read or written, or this controller's epoch is fenced.
pub async fn reconcile<S: LeaseStore>(
    store: &S,
    epoch: i64,
    workloads: &[Workload],
    policies: &[ResourcePolicy],
    seen: &Seen<'_>,
) -> Result<ControllerPass, StoreError> {
    let Seen {
        nodes,
        missing,
        usage,
        reports,
        cordoned,
    } = *seen;
    // A cordoned node takes nothing: its replicas are placed elsewhere, and moved there as
    // their budget allows (`drain`).
    let open: Vec<NodeInfo>;
    let nodes = if cordoned.is_empty() {
        nodes
    } else {
        open = nodes
            .iter()
            .filter(|n| !cordoned.contains(&n.name))
            .cloned()
            .collect();
        &open
    };
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
    let moves_off_cordoned = current.iter().any(|l| cordoned.contains(&l.node));
    let reports = if moves_off_cordoned || rollout::replaces(&desired, &current) {
        fresh = store.reports().await?;
        &fresh
    } else {
        reports
    };
    let (desired, rollouts) = rollout::gate(desired, &current, reports, workloads);
    let (desired, draining) = drain::gate(desired, &current, reports, workloads, cordoned);
    let held = disconnect::held(&current, missing, workloads);
    let desired = disconnect::keep(desired, &held);
    let changes = leases::lease_changes(&current, &desired);
    store.write_leases(epoch, &changes).await?;
    Ok(ControllerPass {
        plan,
        changes: changes.len(),
        leases: leases::apply(current, &changes),
        rollouts,
        held,
        draining,
        cordoned: cordoned.iter().cloned().collect(),
    })
}
