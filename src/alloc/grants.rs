//! What each replica on a node is granted, once placement is done: its request under
//! `Priority` and `Fair`; a proportional share under `Demand` when requests exceed the
//! node; its observed use, between request and limit, under `Usage`, where a replica under
//! memory pressure keeps the memory it has.
//!
//! Grants change no total the allocator keeps (placement reserves footprints), and are
//! set only on placed replicas ([`Allocator::set_grant`]).

use super::resources::{Kind, Res};
use super::state::{Allocator, NodeId};
use crate::api::WorkloadRef;
use crate::api::policy::Strategy;

/// Recomputes the grants of every replica on `node`.
pub(super) fn recompute(a: &mut Allocator, node: NodeId) {
    let n = a.node(node);
    let Some(policy) = n.policy else { return };
    let p = a.policy(policy);
    // A replica is granted its request when placed (`Allocator::place`): under these two
    // strategies that is all, and at 5,000 nodes going over them again cost a sixth of a
    // full allocation.
    if matches!(p.spec.strategy, Strategy::Priority | Strategy::Fair) {
        return;
    }
    let allocatable = n.allocatable;
    // Highest priority first, then by key: the order spare room and rounding go in. The
    // node holds them lowest priority first, then by key: its runs of one priority, last
    // run first.
    let held: Vec<&(i32, WorkloadRef, u32)> = n.replicas.iter().collect();
    let replicas: Vec<(WorkloadRef, u32)> = held
        .chunk_by(|a, b| a.0 == b.0)
        .rev()
        .flatten()
        .map(|(_, key, index)| (key.clone(), *index))
        .collect();
    let grants: Vec<Res> = match p.spec.strategy {
        // Returned above.
        Strategy::Priority | Strategy::Fair => return,
        Strategy::Demand => {
            let parts: Vec<(Res, Res)> = replicas
                .iter()
                .map(|(key, _)| {
                    // Every replica on a node has its workload.
                    a.workload(key)
                        .map_or((Res::ZERO, Res::ZERO), |w| (w.footprint, w.demand.request))
                })
                .collect();
            proportional(&parts, allocatable)
        }
        Strategy::Usage => {
            let percentile = p.spec.usage.percentile;
            let threshold = f64::from(p.spec.usage.memory_pressure_percent);
            let parts: Vec<Elastic> = replicas
                .iter()
                .map(|(key, index)| {
                    let Some(w) = a.workload(key) else {
                        return Elastic::default();
                    };
                    let observed = if a.observed().is_empty() {
                        None
                    } else {
                        // The key shares the workload's text: no string is allocated.
                        a.observed().get(&key.replica(*index))
                    };
                    let used = observed.map(|o| o.percentile(percentile));
                    let within = |kind: Kind, amount: i64| {
                        amount
                            .min(w.demand.limit.get(kind))
                            .max(w.demand.request.get(kind))
                    };
                    let mut target = w.demand.request.map(|kind, request| {
                        used.and_then(|o| o[kind as usize])
                            .map_or(request, |used| within(kind, used))
                    });
                    let mut hold = w.demand.request;
                    if let Some(granted) = observed.and_then(|o| o.memory_hold(threshold)) {
                        hold.memory = within(Kind::Memory, granted);
                        target.memory = target.memory.max(hold.memory);
                    }
                    Elastic {
                        request: w.demand.request,
                        hold,
                        target,
                    }
                })
                .collect();
            elastic(&parts, allocatable)
        }
    };
    for ((key, index), grant) in replicas.into_iter().zip(grants) {
        a.set_grant(&key, index, grant);
    }
}

/// `Demand`: each `(floor, request)` gets its request when the requests fit in
/// `allocatable`; otherwise its floor plus a share of what is left in proportion to
/// request − floor, so that the grants sum to exactly `allocatable` (largest remainders
/// take the units lost to rounding, earlier entries first on ties). With floors at 0 this
/// is `allocatable × request / Σ requests`.
pub(super) fn proportional(parts: &[(Res, Res)], allocatable: Res) -> Vec<Res> {
    let mut grants: Vec<Res> = parts.iter().map(|(_, request)| *request).collect();
    for kind in Kind::ALL {
        let total: i128 = parts.iter().map(|(_, r)| i128::from(r.get(kind))).sum();
        let available = i128::from(allocatable.get(kind));
        if total <= available {
            continue;
        }
        let floors: i128 = parts.iter().map(|(f, _)| i128::from(f.get(kind))).sum();
        let share = (available - floors).max(0);
        let extra: i128 = total - floors;
        let mut given = 0i128;
        let mut remainders = Vec::with_capacity(parts.len());
        for (i, (floor, request)) in parts.iter().enumerate() {
            let want = i128::from(request.get(kind) - floor.get(kind));
            let (part, remainder) = if extra > 0 {
                (share * want / extra, share * want % extra)
            } else {
                (0, 0)
            };
            given += part;
            remainders.push((remainder, i));
            grants[i].set(kind, floor.get(kind) + i64::try_from(part).unwrap_or(0));
        }
        remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let left = usize::try_from(share - given).unwrap_or(0);
        for &(_, i) in remainders.iter().take(left) {
            let granted = grants[i].get(kind);
            grants[i].set(kind, granted + 1);
        }
    }
    grants
}

/// One replica under `Usage`: request ≤ hold ≤ target, each within its limit.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Elastic {
    /// Guaranteed: placement made room for it.
    pub request: Res,
    /// What it keeps before anyone grows: its current memory grant while under memory
    /// pressure, else its request.
    pub hold: Res,
    /// What it would use.
    pub target: Res,
}

/// `Usage`: each replica gets its request; then, from what is left on the node, first
/// what it holds, then as much more toward its target, each round in the order given. A
/// held grant therefore gives way only to other replicas' requests (a new placement, a
/// smaller node), never to their growth.
pub(super) fn elastic(parts: &[Elastic], allocatable: Res) -> Vec<Res> {
    let requested = parts.iter().fold(Res::ZERO, |sum, p| sum.plus(p.request));
    let mut spare = allocatable.minus(requested).max(Res::ZERO);
    let mut grants: Vec<Res> = parts.iter().map(|p| p.request).collect();
    let rounds: [fn(&Elastic) -> Res; 2] = [|p| p.hold, |p| p.target];
    for want in rounds {
        for (grant, part) in grants.iter_mut().zip(parts) {
            let extra = want(part).minus(*grant).max(Res::ZERO).min(spare);
            spare = spare.minus(extra);
            *grant = grant.plus(extra);
        }
    }
    grants
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;
    use crate::alloc::fixtures::{mk_node, mk_policy, mk_workload};
    use crate::alloc::{Input, Observed, ReplicaKey, allocate};
    use crate::api::Workload;

    fn cpu(v: i64) -> Res {
        Res::new(v, 0, 0)
    }

    #[test]
    fn proportional_gives_requests_when_they_fit() {
        let parts = [(cpu(100), cpu(1000)), (cpu(100), cpu(500))];
        assert_eq!(proportional(&parts, cpu(2000)), [cpu(1000), cpu(500)]);
    }

    #[test]
    fn proportional_scales_to_exactly_capacity() {
        // No floor: capacity × request / Σ requests = 1000 × {1, 2, 3} / 6.
        let parts = [
            (cpu(0), cpu(1000)),
            (cpu(0), cpu(2000)),
            (cpu(0), cpu(3000)),
        ];
        let grants = proportional(&parts, cpu(1000));
        assert_eq!(grants, [cpu(167), cpu(333), cpu(500)]);
        assert_eq!(grants.iter().map(|g| g.cpu).sum::<i64>(), 1000);
        // With floors the result is still proportional, and never below a floor.
        let parts = [(cpu(100), cpu(1000)), (cpu(300), cpu(3000))];
        assert_eq!(proportional(&parts, cpu(2000)), [cpu(500), cpu(1500)]);
    }

    fn part(request: Res, hold: Res, target: Res) -> Elastic {
        Elastic {
            request,
            hold,
            target,
        }
    }

    #[test]
    fn elastic_tops_up_in_order_until_the_node_is_full() {
        let parts = [
            part(cpu(200), cpu(200), cpu(900)),
            part(cpu(200), cpu(200), cpu(500)),
            part(cpu(100), cpu(100), cpu(100)),
        ];
        assert_eq!(elastic(&parts, cpu(1200)), [cpu(900), cpu(200), cpu(100)]);
        assert_eq!(elastic(&parts, cpu(2000)), [cpu(900), cpu(500), cpu(100)]);
    }

    #[test]
    fn elastic_serves_holds_before_anyone_grows() {
        // The second holds 600 (it is under pressure); the first, earlier, would take all
        // the spare room for its growth.
        let parts = [
            part(cpu(200), cpu(200), cpu(900)),
            part(cpu(200), cpu(600), cpu(600)),
        ];
        assert_eq!(elastic(&parts, cpu(1000)), [cpu(400), cpu(600)]);
        // A node too small for every hold: requests first, holds in order.
        assert_eq!(elastic(&parts, cpu(500)), [cpu(200), cpu(300)]);
    }

    const MIB: i64 = 1 << 20;

    /// A `Usage` workload `t/<name>` of one replica: request 100m and 64 MiB, memory limit
    /// `limit_mib`, and `priority`.
    fn usage_workload(name: &str, limit_mib: i64, priority: i32) -> Workload {
        mk_workload(
            "t",
            name,
            1,
            100,
            64,
            json!({"priority": priority,
                   "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                                 "limits": {"memory": format!("{limit_mib}Mi")}}}),
        )
    }

    /// Memory in use `used_mib` (every sample), granted `granted_mib` now, under
    /// `pressure` percent of memory pressure.
    fn seen(used_mib: i64, granted_mib: i64, pressure: Option<f64>) -> Observed {
        Observed {
            memory: vec![used_mib * MIB; 3],
            memory_pressure: pressure,
            memory_granted: Some(granted_mib * MIB),
            ..Observed::default()
        }
    }

    /// The memory grants, in MiB, of `workloads` on one node of `node_mib` under a `Usage`
    /// policy with `usage` settings.
    fn memory_grants(
        usage: serde_json::Value,
        node_mib: i64,
        workloads: &[Workload],
        observed: &[(&str, Observed)],
    ) -> Vec<i64> {
        let policies = [mk_policy("u", json!({"strategy": "Usage", "usage": usage}))];
        let nodes = [mk_node("n", 8000, node_mib, &[])];
        let observed: HashMap<ReplicaKey, Observed> = observed
            .iter()
            .map(|(name, o)| (ReplicaKey::new("t", name, 0), o.clone()))
            .collect();
        let plan = allocate(&Input {
            policies: &policies,
            workloads,
            nodes: &nodes,
            observed: &observed,
            current: &HashMap::new(),
        });
        workloads
            .iter()
            .map(|w| {
                let name = WorkloadRef::of(w);
                let a = plan.allocations.iter().find(|a| a.workload == name);
                a.map_or(-1, |a| a.granted.memory / MIB)
            })
            .collect()
    }

    #[test]
    fn usage_shrinks_memory_to_its_use_without_pressure() {
        let w = [usage_workload("a", 1024, 0)];
        let shrink = |o: Observed| memory_grants(json!({"percentile": 100}), 4096, &w, &[("a", o)]);
        assert_eq!(shrink(seen(100, 400, None)), [100], "v1: no pressure known");
        assert_eq!(shrink(seen(100, 400, Some(0.0))), [100]);
        assert_eq!(shrink(seen(100, 400, Some(9.99))), [100], "just below 10 %");
        assert_eq!(
            shrink(seen(10, 400, Some(0.0))),
            [64],
            "never below the request"
        );
    }

    #[test]
    fn usage_never_shrinks_memory_under_pressure() {
        let w = [usage_workload("a", 1024, 0)];
        let grant = |usage, o: Observed| memory_grants(usage, 4096, &w, &[("a", o)]);
        let default = json!({"percentile": 100});
        assert_eq!(
            grant(default.clone(), seen(100, 400, Some(10.0))),
            [400],
            "at 10 %"
        );
        assert_eq!(grant(default.clone(), seen(100, 400, Some(80.0))), [400]);
        assert_eq!(
            grant(default.clone(), seen(500, 400, Some(80.0))),
            [500],
            "it still grows toward its use"
        );
        let lenient = json!({"percentile": 100, "memoryPressurePercent": 50});
        assert_eq!(
            grant(lenient, seen(100, 400, Some(20.0))),
            [100],
            "below the policy's threshold"
        );
    }

    #[test]
    fn growth_under_pressure_stays_within_the_limit_and_the_node() {
        let usage = json!({"percentile": 100});
        let limited = [usage_workload("a", 512, 0)];
        assert_eq!(
            memory_grants(
                usage.clone(),
                4096,
                &limited,
                &[("a", seen(900, 400, Some(50.0)))]
            ),
            [512],
            "use above the limit: the limit"
        );
        assert_eq!(
            memory_grants(
                usage.clone(),
                4096,
                &limited,
                &[("a", seen(100, 800, Some(50.0)))]
            ),
            [512],
            "a grant above a lowered limit is held only up to the limit"
        );
        assert_eq!(
            memory_grants(
                usage.clone(),
                300,
                &limited,
                &[("a", seen(900, 400, Some(50.0)))]
            ),
            [300],
            "a node smaller than the grant: the node"
        );
        // `b` ranks first and wants to grow into everything; `a`, under pressure, keeps
        // its 300 MiB ahead of that growth, and the two never exceed the node.
        let two = [usage_workload("a", 4096, 0), usage_workload("b", 4096, 5)];
        let b_grows = ("b", seen(2000, 64, None));
        assert_eq!(
            memory_grants(
                usage.clone(),
                600,
                &two,
                &[("a", seen(100, 300, Some(50.0))), b_grows.clone()]
            ),
            [300, 300]
        );
        assert_eq!(
            memory_grants(usage, 600, &two, &[("a", seen(100, 300, None)), b_grows]),
            [64, 536],
            "without pressure `a` shrinks and `b` takes the room"
        );
    }
}
