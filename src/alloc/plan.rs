//! The allocator's result: what each replica is granted and where, what is pending and why,
//! what was preempted, and totals per node, tenant and policy. `corral plan -o json` prints
//! it as it is.

use serde::{Deserialize, Serialize};

use crate::api::WorkloadRef;

use super::fair;
use super::resources::Res;
use super::state::{Allocator, Preempted};

/// The result of an allocation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Every placed replica, by workload and replica.
    pub allocations: Vec<Allocation>,
    /// Every replica without a node, with the reason.
    pub pending: Vec<Pending>,
    /// Replicas that lost their node to a replica of higher priority in this allocation.
    pub preemptions: Vec<Preemption>,
    /// Every node, by name.
    pub nodes: Vec<NodeReport>,
    /// Every tenant of every policy.
    pub tenants: Vec<TenantReport>,
    /// Every policy, with the built-in default last when it governs anything.
    pub policies: Vec<PolicyReport>,
}

/// One placed replica.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    /// The workload.
    pub workload: WorkloadRef,
    /// The replica's index.
    pub replica: u32,
    /// The lease key, `namespace.name.index`.
    pub key: String,
    /// The node.
    pub node: String,
    /// The governing policy.
    pub policy: String,
    /// The tenant (the namespace).
    pub tenant: String,
    /// The workload's priority.
    pub priority: i32,
    /// What is guaranteed: CPU millicores, memory bytes, pids.
    pub granted: Res,
    /// What was requested.
    pub request: Res,
    /// The limits to enforce; `null` for none.
    pub limits: Limits,
    /// Block IO weight, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_weight: Option<i32>,
}

/// Limits per resource; `None` for "no limit".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// CPU millicores.
    pub cpu: Option<i64>,
    /// Memory bytes.
    pub memory: Option<i64>,
    /// Processes.
    pub pids: Option<i64>,
}

impl Limits {
    /// From allocator amounts, where `i64::MAX` means no limit.
    pub fn from_res(limit: Res) -> Limits {
        let some = |v: i64| (v != i64::MAX).then_some(v);
        Limits {
            cpu: some(limit.cpu),
            memory: some(limit.memory),
            pids: some(limit.pids),
        }
    }
}

/// One replica without a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pending {
    /// The workload.
    pub workload: WorkloadRef,
    /// The replica's index.
    pub replica: u32,
    /// Why, for a person.
    pub reason: String,
    /// Nothing short of a change to the spec, the policy or the nodes places it: the
    /// workload is refused, or one replica needs more than any matching node offers even
    /// empty. Otherwise it waits for room (a stop, a new node) and may be placed any time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stalled: bool,
}

/// One preemption.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Preemption {
    /// The preempted replica's workload.
    pub workload: WorkloadRef,
    /// Its index.
    pub replica: u32,
    /// The node it lost.
    pub node: String,
    /// The workload of the replica that took its place.
    pub by_workload: WorkloadRef,
    /// That replica's index.
    pub by_replica: u32,
}

/// One node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    /// The node's name.
    pub name: String,
    /// The governing policy; absent when the node is not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// What the node has.
    pub capacity: Res,
    /// What the policy lets be granted: (capacity − reserved) × overcommit.
    pub allocatable: Res,
    /// Σ grants on the node.
    pub allocated: Res,
    /// Replicas placed on the node.
    pub replicas: usize,
    /// Why the node is not used, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// One tenant of one policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantReport {
    /// The policy.
    pub policy: String,
    /// The tenant (a namespace).
    pub tenant: String,
    /// Its weight.
    pub weight: i32,
    /// Σ footprints placed (the grants' guaranteed part).
    pub allocated: Res,
    /// Its guarantee, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guarantee: Option<Res>,
    /// Its limit, if any (`i64::MAX` for an unlimited resource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<Res>,
    /// Its dominant share of the policy's resources, 0 to 1.
    pub dominant_share: f64,
}

/// One policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReport {
    /// The policy's name, `(default)` for the built-in one.
    pub name: String,
    /// Its strategy.
    pub strategy: String,
    /// Nodes it governs.
    pub nodes: usize,
    /// Σ allocatable over its nodes.
    pub capacity: Res,
    /// Σ grants over its nodes.
    pub allocated: Res,
    /// Replicas it governs that are pending.
    pub pending: usize,
}

impl Allocator {
    /// The plan for the current state.
    pub fn plan(&self) -> Plan {
        let mut plan = Plan::default();
        // Grown once rather than doubling through 150,000 entries at Kubernetes' scale.
        let (placed, waiting) = self.workloads().values().fold((0, 0), |(p, w), s| {
            let on = s.replicas.iter().filter(|r| r.node.is_some()).count();
            (p + on, w + s.replicas.len() - on)
        });
        plan.allocations.reserve(placed);
        plan.pending.reserve(waiting);
        let (nodes, policies) = (self.nodes(), self.policies());
        let mut node_allocated = vec![Res::ZERO; nodes.len()];
        let mut policy_allocated = vec![Res::ZERO; policies.len()];
        let mut policy_pending = vec![0usize; policies.len()];
        for (key, w) in self.workloads() {
            let workload = key.clone();
            // Its replicas are alike: whether one can never fit is asked once.
            let mut never_fits: Option<bool> = None;
            for (index, replica) in w.replicas.iter().enumerate() {
                let index = u32::try_from(index).unwrap_or(u32::MAX);
                match (replica.node, &w.policy) {
                    (Some(node), Ok(policy)) => {
                        node_allocated[node] = node_allocated[node].plus(replica.grant);
                        policy_allocated[*policy] = policy_allocated[*policy].plus(replica.grant);
                        plan.allocations.push(Allocation {
                            workload: workload.clone(),
                            replica: index,
                            // `ReplicaKey`'s form, without building one.
                            key: key.replica(index).to_string(),
                            node: nodes[node].info.name.clone(),
                            policy: policies[*policy].name.clone(),
                            tenant: key.namespace().to_string(),
                            priority: w.demand.priority,
                            granted: replica.grant,
                            request: w.demand.request,
                            limits: Limits::from_res(w.demand.limit),
                            io_weight: w.demand.io_weight,
                        });
                    }
                    (_, policy) => {
                        if let Ok(p) = policy {
                            policy_pending[*p] += 1;
                        }
                        let (reason, stalled) = match policy {
                            Err(reason) => (reason.clone(), true),
                            Ok(p) => (
                                replica
                                    .reason
                                    .clone()
                                    .unwrap_or_else(|| "not yet allocated".to_string()),
                                *never_fits.get_or_insert_with(|| {
                                    super::explain::never_fits(self, *p, key)
                                }),
                            ),
                        };
                        plan.pending.push(Pending {
                            workload: workload.clone(),
                            replica: index,
                            reason,
                            stalled,
                        });
                    }
                }
            }
        }
        plan.preemptions = self.preemptions().iter().map(preemption).collect();
        for (id, n) in nodes.iter().enumerate() {
            plan.nodes.push(NodeReport {
                name: n.info.name.clone(),
                policy: n.policy.map(|p| policies[p].name.clone()),
                capacity: n.info.capacity,
                allocatable: n.allocatable,
                allocated: node_allocated[id],
                replicas: n.replicas.len(),
                problem: n.unusable.clone(),
            });
        }
        for (id, p) in policies.iter().enumerate() {
            let is_default = id == policies.len() - 1;
            let governs = !p.nodes.is_empty() || !p.tenants.is_empty();
            if is_default && !governs {
                continue;
            }
            for (tenant, t) in &p.tenants {
                plan.tenants.push(TenantReport {
                    policy: p.name.clone(),
                    tenant: tenant.to_string(),
                    weight: t.weight,
                    allocated: t.allocated,
                    guarantee: t.guarantee,
                    limit: t.limit,
                    dominant_share: fair::dominant_share(p, t),
                });
            }
            plan.policies.push(PolicyReport {
                name: p.name.clone(),
                strategy: p.spec.strategy.to_string(),
                nodes: p.nodes.len(),
                capacity: p.total,
                allocated: policy_allocated[id],
                pending: policy_pending[id],
            });
        }
        plan
    }
}

fn preemption(p: &Preempted) -> Preemption {
    Preemption {
        workload: p.victim.workload.clone(),
        replica: p.victim.index,
        node: p.node.clone(),
        by_workload: p.by.workload.clone(),
        by_replica: p.by.index,
    }
}
