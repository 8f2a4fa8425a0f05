//! The tree a node's leases ask for: a group per tenant, holding the tenant's limit and the
//! sum of its replicas' grants, and a group per replica with its values and its work. The
//! one translation from leases to the cgroup layer: the cgroup layer knows nothing of
//! leases.

use std::collections::BTreeMap;

use crate::alloc::{ReplicaKey, Res};
use crate::cgroup::knobs::Knob;
use crate::cgroup::tree::{DesiredGroup, DesiredTree, GroupPath, LogLimits};
use crate::cgroup::values::{self, Amounts};
use crate::lease::Lease;

/// The desired tree for `leases` (all of one node). `v2_controllers` are the controllers
/// the root may enable for its children (empty on v1). Leases whose names cannot be groups
/// are returned apart, with the reason; validation makes them impossible, but a lease store
/// is input too.
pub fn desired_tree(
    leases: &[Lease],
    v2: bool,
    v2_controllers: &[&str],
    page_size: i64,
) -> (DesiredTree, Vec<(ReplicaKey, String)>) {
    let mut tree = DesiredTree::default();
    let mut refused = Vec::new();
    let mut tenants: BTreeMap<GroupPath, (Res, &Lease)> = BTreeMap::new();
    for lease in leases {
        let group = match GroupPath::replica(&lease.key) {
            Ok(group) => group,
            Err(e) => {
                refused.push((lease.key.clone(), e.to_string()));
                continue;
            }
        };
        let Some(tenant) = group.parent() else {
            continue;
        };
        let entry = tenants.entry(tenant).or_insert((Res::ZERO, lease));
        entry.0 = entry.0.plus(lease.granted);
        let parent_quota = if v2 {
            None
        } else {
            values::tenant_quota(lease.tenant_limit, &lease.cgroup)
        };
        let amounts = Amounts {
            granted: lease.granted,
            request: lease.request,
            limits: lease.limits,
            io_weight: lease.io_weight,
        };
        tree.groups.insert(
            group,
            DesiredGroup {
                knobs: values::replica_knobs(v2, &amounts, &lease.cgroup, parent_quota, page_size),
                work: Some(lease.work.clone()),
                grace_seconds: lease.grace_seconds,
                logs: lease.logs,
                revision: lease.revision.clone(),
                health: lease.health.clone(),
                min_ready_seconds: lease.min_ready_seconds,
            },
        );
    }
    let enabled = v2_controllers.join(" ");
    for (tenant, (granted, lease)) in tenants {
        let mut knobs =
            values::tenant_knobs(v2, granted, lease.tenant_limit, &lease.cgroup, page_size);
        if v2 {
            knobs.insert(Knob::SubtreeControl, enabled.clone());
        }
        tree.groups.insert(
            tenant,
            DesiredGroup {
                knobs,
                work: None,
                grace_seconds: 0,
                logs: LogLimits::default(),
                revision: String::new(),
                health: None,
                min_ready_seconds: 0,
            },
        );
    }
    if v2 {
        tree.root_knobs.insert(Knob::SubtreeControl, enabled);
    }
    (tree, refused)
}
