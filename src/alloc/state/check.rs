//! The allocator's invariants, recomputed from scratch: what [`Allocator::check_invariants`]
//! compares the kept totals against. It reads the replicas alone (where each is, what its
//! workload asks for) and derives everything else, so a change made around `account()`
//! shows as a difference.
//!
//! Guarantees, when it returns `Ok`:
//! - every replica of a governed workload is either placed (on one node, listed there) or
//!   in its policy's queue, once; a replica of an ungoverned workload is neither; the
//!   queues and the nodes hold no replica of a removed workload;
//! - each node's `committed` and `requested` are the sums of its replicas' footprints and
//!   requests, within what it offers, and its replicas number at most `maxReplicasPerNode`;
//! - each policy's `committed`, `total`, `unmet` and placed priorities, and each tenant's
//!   holdings and count, are the sums over its placed replicas;
//! - each policy's node index holds every node as the node is.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{Allocator, NodeId, PolicyId, WorkloadRef};
#[cfg(test)]
use crate::alloc::input::NodeInfo;
use crate::alloc::resources::Res;

/// What a node should hold, from its replicas.
#[derive(Default)]
struct NodeSums {
    committed: Res,
    requested: Res,
    replicas: BTreeSet<(i32, WorkloadRef, u32)>,
}

/// What a tenant should hold in one policy, from its placed replicas.
#[derive(Default, PartialEq, Debug)]
struct TenantSums {
    allocated: Res,
    placed: usize,
}

/// Everything derived from the replicas alone.
struct Expected {
    nodes: Vec<NodeSums>,
    /// Σ footprints placed, per policy.
    policy_committed: Vec<Res>,
    /// Placed replicas per priority, per policy.
    priorities: Vec<BTreeMap<i32, usize>>,
    tenants: BTreeMap<(PolicyId, Arc<str>), TenantSums>,
    /// Unplaced replicas per policy: what its queue must hold.
    unplaced: Vec<usize>,
}

impl Allocator {
    /// Recomputes the totals the allocator keeps (per node, policy and tenant) from where
    /// each replica is, checks that every replica is placed or queued and never both, and
    /// says what differs first. Cost: a pass over every replica; debug builds run it after
    /// every change, tests call it.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let expected = self.expected()?;
        self.check_nodes(&expected.nodes)?;
        self.check_policies(&expected)?;
        self.check_queues(&expected.unplaced)
    }

    /// Step 1: the sums over the replicas, checking each replica on the way.
    fn expected(&self) -> Result<Expected, String> {
        let mut e = Expected {
            nodes: (0..self.nodes.len()).map(|_| NodeSums::default()).collect(),
            policy_committed: vec![Res::ZERO; self.policies.len()],
            priorities: vec![BTreeMap::new(); self.policies.len()],
            tenants: BTreeMap::new(),
            unplaced: vec![0; self.policies.len()],
        };
        for (key, w) in &self.workloads {
            let mut per_node: BTreeMap<NodeId, u32> = BTreeMap::new();
            for (index, r) in w.replicas.iter().enumerate() {
                let at = format!("replica {key}.{index}");
                let index = u32::try_from(index).map_err(|_| format!("{at}: index too large"))?;
                let (policy, node) = match (&w.policy, r.node) {
                    (Err(_), None) => continue,
                    (Err(_), Some(_)) => return Err(format!("{at}: placed, yet ungoverned")),
                    (Ok(p), None) => {
                        if !r.grant.is_zero() {
                            return Err(format!("{at}: pending, yet granted {}", r.grant));
                        }
                        e.unplaced[*p] += 1;
                        continue;
                    }
                    (Ok(p), Some(n)) => (*p, n),
                };
                let n = e
                    .nodes
                    .get_mut(node)
                    .ok_or_else(|| format!("{at}: on node {node}, which does not exist"))?;
                if self.nodes[node].policy != Some(policy) {
                    return Err(format!(
                        "{at}: on {}, another policy's node",
                        self.nodes[node].info.name
                    ));
                }
                n.committed = n.committed.plus(w.footprint);
                n.requested = n.requested.plus(w.demand.request);
                n.replicas.insert((w.demand.priority, key.clone(), index));
                *per_node.entry(node).or_insert(0) += 1;
                e.policy_committed[policy] = e.policy_committed[policy].plus(w.footprint);
                *e.priorities[policy].entry(w.demand.priority).or_insert(0) += 1;
                let t = e
                    .tenants
                    .entry((policy, key.namespace_arc().clone()))
                    .or_default();
                t.allocated = t.allocated.plus(w.footprint);
                t.placed += 1;
            }
            if per_node != w.per_node {
                return Err(format!(
                    "workload {key}: replicas per node {:?}, counted {:?}",
                    w.per_node, per_node
                ));
            }
        }
        Ok(e)
    }

    /// Step 2: each node against its replicas, its capacity and its policy's index.
    fn check_nodes(&self, expected: &[NodeSums]) -> Result<(), String> {
        for (id, (n, e)) in self.nodes.iter().zip(expected).enumerate() {
            let name = &n.info.name;
            if n.committed != e.committed {
                return Err(format!(
                    "node {name}: committed {}, its replicas' footprints sum to {}",
                    n.committed, e.committed
                ));
            }
            if n.requested != e.requested {
                return Err(format!(
                    "node {name}: requested {}, its replicas' requests sum to {}",
                    n.requested, e.requested
                ));
            }
            if n.replicas != e.replicas {
                return Err(format!(
                    "node {name}: lists {} replica(s), {} are placed on it",
                    n.replicas.len(),
                    e.replicas.len()
                ));
            }
            if !n.committed.fits_in(&n.allocatable) {
                return Err(format!(
                    "node {name}: committed {}, more than its {}",
                    n.committed, n.allocatable
                ));
            }
            let Some(policy) = n.policy else { continue };
            let p = &self.policies[policy];
            if n.replicas.len() > p.max_per_node() {
                return Err(format!(
                    "node {name}: {} replicas, more than maxReplicasPerNode",
                    n.replicas.len()
                ));
            }
            if p.by_free.entry(id) != Some(&n.entry(id)) {
                return Err(format!(
                    "node {name}: the node index of {:?} is stale",
                    p.name
                ));
            }
        }
        Ok(())
    }

    /// Step 3: each policy's and tenant's totals.
    fn check_policies(&self, e: &Expected) -> Result<(), String> {
        for (id, p) in self.policies.iter().enumerate() {
            let name = &p.name;
            let committed: Res = p
                .nodes
                .iter()
                .fold(Res::ZERO, |sum, n| sum.plus(self.nodes[*n].committed));
            let total: Res = p
                .nodes
                .iter()
                .fold(Res::ZERO, |sum, n| sum.plus(self.nodes[*n].allocatable));
            if p.committed != committed || p.committed != e.policy_committed[id] {
                return Err(format!(
                    "policy {name:?}: committed {}, its nodes hold {committed}, its replicas {}",
                    p.committed, e.policy_committed[id]
                ));
            }
            if p.total != total {
                return Err(format!(
                    "policy {name:?}: total {}, its nodes offer {total}",
                    p.total
                ));
            }
            if p.placed_priorities != e.priorities[id] {
                return Err(format!(
                    "policy {name:?}: placed per priority {:?}, counted {:?}",
                    p.placed_priorities, e.priorities[id]
                ));
            }
            let mut unmet = Res::ZERO;
            for (tenant, t) in &p.tenants {
                let held = TenantSums {
                    allocated: t.allocated,
                    placed: t.placed,
                };
                let counted = e.tenants.get(&(id, tenant.clone()));
                if held != *counted.unwrap_or(&TenantSums::default()) {
                    return Err(format!(
                        "policy {name:?}, tenant {tenant}: holds {held:?}, its replicas {counted:?}"
                    ));
                }
                unmet = unmet.plus(t.unmet());
            }
            if let Some(((_, tenant), _)) = e
                .tenants
                .iter()
                .find(|((policy, t), _)| *policy == id && !p.tenants.contains_key(t))
            {
                return Err(format!(
                    "policy {name:?}: tenant {tenant} has replicas placed but no holdings kept"
                ));
            }
            if p.unmet != unmet {
                return Err(format!(
                    "policy {name:?}: unmet {}, its tenants' sum to {unmet}",
                    p.unmet
                ));
            }
        }
        Ok(())
    }

    /// Step 4: each queue holds every unplaced replica of its policy, and nothing else.
    fn check_queues(&self, unplaced: &[usize]) -> Result<(), String> {
        for (id, p) in self.policies.iter().enumerate() {
            for (Reverse(priority), key, index) in &p.pending {
                let at = format!("queue of {:?}: {key}.{index}", p.name);
                let w = self
                    .workloads
                    .get(key)
                    .ok_or_else(|| format!("{at}: its workload was removed"))?;
                let r = w
                    .replicas
                    .get(*index as usize)
                    .ok_or_else(|| format!("{at}: the workload has no such replica"))?;
                if w.policy != Ok(id) {
                    return Err(format!("{at}: another policy governs it"));
                }
                if w.demand.priority != *priority {
                    return Err(format!(
                        "{at}: queued at priority {priority}, not {}",
                        w.demand.priority
                    ));
                }
                if let Some(node) = r.node {
                    return Err(format!(
                        "{at}: also placed, on {}",
                        self.nodes[node].info.name
                    ));
                }
            }
            // Every key is a distinct unplaced replica of the policy: as many as there are
            // means all of them.
            if p.pending.len() != unplaced[id] {
                return Err(format!(
                    "policy {:?}: {} replica(s) queued, {} unplaced",
                    p.name,
                    p.pending.len(),
                    unplaced[id]
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;
    use crate::alloc::fixtures::{mk_node, mk_policy, mk_workload};
    use crate::api::Workload;

    /// A policy of `strategy` over two nodes of 2 cores, with a guarantee and a limit for
    /// tenants `a` and `b`; workloads of both, and of an unlisted `c`, that ask for more than
    /// the nodes have, at three priorities, spread and packed, one pinned to a zone.
    fn contended(
        strategy: &str,
    ) -> (
        Vec<crate::api::ResourcePolicy>,
        Vec<NodeInfo>,
        Vec<Workload>,
    ) {
        let policies = vec![mk_policy(
            "p",
            json!({"strategy": strategy,
                   "preemption": {"policy": "PreemptLowerPriority"},
                   "maxReplicasPerNode": 5,
                   "demand": {"floorPercent": 50},
                   "tenants": [
                       {"namespace": "a", "weight": 2, "guarantee": {"cpu": "1"}},
                       {"namespace": "b", "weight": 1, "limit": {"cpu": "2", "memory": "4Gi"}}]}),
        )];
        let nodes = vec![
            mk_node("n1", 2000, 4096, &[("zone", "x")]),
            mk_node("n2", 2000, 4096, &[("zone", "y")]),
        ];
        let workloads = vec![
            mk_workload("a", "web", 3, 900, 256, json!({"priority": 5})),
            mk_workload(
                "b",
                "batch",
                4,
                1000,
                512,
                json!({"priority": 1, "placement": {"mode": "Pack"}}),
            ),
            mk_workload(
                "c",
                "pinned",
                2,
                700,
                128,
                json!({"priority": 9, "placement": {"nodeSelector": {"zone": "y"}}}),
            ),
        ];
        (policies, nodes, workloads)
    }

    fn allocated(strategy: &str) -> Allocator {
        let (policies, nodes, workloads) = contended(strategy);
        let mut a = Allocator::new(&policies, &nodes);
        let refs: Vec<&Workload> = workloads.iter().collect();
        a.add_workloads(&refs, &HashMap::new());
        a.allocate();
        a
    }

    /// Every change each strategy makes goes through the allocator's own bookkeeping, so
    /// the totals it keeps are the sums recomputed from scratch: after a full allocation,
    /// a removal, an addition that preempts, and a reallocation from the placement.
    #[test]
    fn every_strategy_keeps_the_invariants() {
        for strategy in ["Priority", "Fair", "Demand", "Usage"] {
            let mut a = allocated(strategy);
            assert_eq!(a.check_invariants(), Ok(()), "{strategy}");
            let plan = a.plan();
            assert!(
                !plan.allocations.is_empty() && !plan.pending.is_empty(),
                "{strategy}: {plan:#?}"
            );

            a.remove_workload("a", "web");
            assert_eq!(a.check_invariants(), Ok(()), "{strategy}: removed");
            let urgent = mk_workload("a", "urgent", 3, 900, 256, json!({"priority": 100}));
            a.add_workloads(&[&urgent], &HashMap::new());
            assert_eq!(a.check_invariants(), Ok(()), "{strategy}: added");
            a.allocate();
            assert_eq!(a.check_invariants(), Ok(()), "{strategy}: reallocated");
            if strategy == "Priority" {
                assert!(!a.plan().preemptions.is_empty(), "nothing preempted");
            }

            let (policies, nodes, workloads) = contended(strategy);
            let mut again = Allocator::new(&policies, &nodes);
            let refs: Vec<&Workload> = workloads.iter().collect();
            again.add_workloads(&refs, &a.plan().placement());
            again.allocate();
            assert_eq!(
                again.check_invariants(),
                Ok(()),
                "{strategy}: from a placement"
            );
        }
    }

    /// The first placed replica, as the key it is listed under on its node.
    fn some_placed(a: &Allocator) -> (NodeId, (i32, WorkloadRef, u32)) {
        let (node, n) = a
            .nodes
            .iter()
            .enumerate()
            .find(|(_, n)| !n.replicas.is_empty())
            .expect("a placed replica");
        (node, n.replicas.first().cloned().expect("a placed replica"))
    }

    fn some_pending(a: &Allocator) -> (Reverse<i32>, WorkloadRef, u32) {
        a.policies[0]
            .pending
            .first()
            .cloned()
            .expect("a pending replica")
    }

    /// What a strategy that changed the state around `account()` would leave: each of
    /// these is found.
    #[test]
    fn a_change_made_around_account_is_found() {
        type Tamper = fn(&mut Allocator);
        let tampers: [(&str, Tamper); 8] = [
            ("node committed", |a| {
                let (node, _) = some_placed(a);
                a.nodes[node].committed.cpu += 1;
            }),
            ("node requested", |a| {
                let (node, _) = some_placed(a);
                a.nodes[node].requested.memory -= 1;
            }),
            ("tenant holdings", |a| {
                let t = a.policies[0].tenants.values_mut().next().expect("a tenant");
                t.allocated.cpu += 100;
            }),
            ("replica moved without accounting", |a| {
                let (_, (_, key, index)) = some_placed(a);
                let w = a.workloads.get_mut(&key).expect("its workload");
                let other = 1 - w.replicas[index as usize].node.expect("placed");
                w.replicas[index as usize].node = Some(other);
            }),
            ("replica placed and still queued", |a| {
                // Accounted for, but left in the queue.
                let queue_key = some_pending(a);
                let w = a.workloads.get_mut(&queue_key.1).expect("its workload");
                w.replicas[queue_key.2 as usize].node = Some(0);
                *w.per_node.entry(0).or_insert(0) += 1;
                let amounts = (w.footprint, w.demand.request);
                a.account(0, 0, &queue_key, amounts, true);
            }),
            ("pending replica dropped from the queue", |a| {
                let queue_key = some_pending(a);
                a.policies[0].pending.remove(&queue_key);
            }),
            ("replica unplaced and not queued", |a| {
                let (_, (priority, key, index)) = some_placed(a);
                a.unplace(&(Reverse(priority), key, index));
            }),
            ("removed workload still queued", |a| {
                let (_, key, _) = some_pending(a);
                a.workloads.remove(&key);
            }),
        ];
        for strategy in ["Priority", "Fair", "Demand", "Usage"] {
            for (what, tamper) in tampers {
                let mut a = allocated(strategy);
                tamper(&mut a);
                assert!(
                    a.check_invariants().is_err(),
                    "{strategy}: {what} not found"
                );
            }
        }
    }

    /// The narrow API refuses what would break the invariants, and changes nothing then.
    #[test]
    fn the_api_refuses_what_would_break_the_invariants() {
        use crate::alloc::state::Taken;
        let mut a = allocated("Priority");
        // Waiting, of a priority above everything placed.
        let urgent = mk_workload("a", "urgent", 1, 100, 64, json!({"priority": 100}));
        a.add_workloads(&[&urgent], &HashMap::new());
        let before = a.plan();
        let (node, (priority, key, index)) = some_placed(&a);
        let placed = (Reverse(priority), key, index);
        let elsewhere = 1 - node;

        let back = a.place(Taken(placed.clone()), elsewhere);
        assert_eq!(back.map_err(|t| t.0), Err(placed.clone()), "placed twice");
        a.defer(Taken(placed.clone()), "deferred while placed".into());
        let pending = some_pending(&a);
        a.set_grant(&pending.1, pending.2, Res::new(5, 0, 0));

        // The lowest-priority pending replica, and a placed one of no lower priority.
        let low = a.policies[0]
            .pending
            .last()
            .cloned()
            .expect("a pending replica");
        let (top_node, (top_priority, top_key, top_index)) = a
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(n, s)| s.replicas.last().map(|r| (n, r.clone())))
            .max_by_key(|(_, r)| r.0)
            .expect("a placed replica");
        assert!(top_priority >= low.0.0, "{top_priority} < {}", low.0.0);
        let top = [(Reverse(top_priority), top_key, top_index)];
        assert!(
            a.preempt(Taken(low.clone()), &top, top_node).is_err(),
            "preempted a replica of no lower priority"
        );
        let lower = [placed.clone()];
        let misqueued = (Reverse(i32::MAX), low.1.clone(), low.2);
        assert!(
            a.preempt(Taken(misqueued), &lower, node).is_err(),
            "took a key of another priority than its workload's"
        );
        assert!(
            a.preempt(Taken(placed.clone()), &[], node).is_err(),
            "preempted for a replica already placed"
        );
        let high = a.policies[0]
            .pending
            .first()
            .cloned()
            .expect("a pending replica");
        assert!(placed.0.0 < high.0.0);
        assert!(
            a.preempt(Taken(high.clone()), &lower, elsewhere).is_err(),
            "preempted a replica on another node"
        );
        let twice = [placed.clone(), placed.clone()];
        assert!(
            a.preempt(Taken(high), &twice, node).is_err(),
            "evicted twice"
        );
        a.end_pass(0);

        assert_eq!(a.check_invariants(), Ok(()));
        assert_eq!(a.plan(), before, "a refused change changed something");

        // And what is allowed is done, through `account()`.
        let urgent = a.pop_pending(0).expect("a pending replica");
        assert_eq!(urgent.key().1.name_arc().as_ref(), "urgent");
        assert!(a.preempt(urgent, &lower, node).is_ok());
        a.end_pass(0);
        assert_eq!(a.check_invariants(), Ok(()));
        assert_eq!(a.preemptions().len(), 1);
        assert!(
            a.policies[0].pending.contains(&lower[0]),
            "the victim waits"
        );
    }

    #[test]
    fn a_grant_left_on_an_unplaced_replica_is_found() {
        let mut a = allocated("Priority");
        let (_, key, index) = some_pending(&a);
        let w = a.workloads.get_mut(&key).expect("its workload");
        w.replicas[index as usize].grant = Res::new(1, 0, 0);
        let found = a.check_invariants().expect_err("found");
        assert!(found.contains("pending, yet granted"), "{found}");
    }
}
