//! Properties of the allocator over random policies, workloads and nodes: the capacity
//! invariant, determinism, no churn, monotonicity and incremental = full; and after every
//! allocation and change, the allocator's own invariants (its totals are the sums of what
//! is placed; each replica is placed or queued, never both).

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use serde_json::{Value, json};

use corral::alloc::fixtures::{mk_node, mk_policy, mk_workload};
use corral::alloc::{self, Allocator, Input, NodeInfo, Observed, Plan, ReplicaKey, Res};
use corral::api::{ResourcePolicy, Workload, WorkloadRef};

const TENANTS: [&str; 3] = ["t0", "t1", "t2"];

fn arb_nodes() -> impl Strategy<Value = Vec<NodeInfo>> {
    prop::collection::vec((500i64..8000, 256i64..8192, any::<bool>()), 1..6).prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (cpu, mem, zone_a))| {
                mk_node(
                    &format!("n{i}"),
                    cpu,
                    mem,
                    &[("zone", if zone_a { "a" } else { "b" })],
                )
            })
            .collect()
    })
}

fn arb_amounts() -> impl Strategy<Value = Value> {
    (0i64..4000, 0i64..4096)
        .prop_map(|(cpu, mem)| json!({"cpu": format!("{cpu}m"), "memory": format!("{mem}Mi")}))
}

fn arb_policy(i: usize) -> impl Strategy<Value = ResourcePolicy> {
    (
        prop::sample::select(&["Priority", "Fair", "Demand", "Usage"][..]),
        prop::sample::subsequence(TENANTS.to_vec(), 0..=3),
        any::<bool>(),
        0i64..500,
        1.0f64..2.0,
        prop::collection::vec((1i32..4, prop::option::of(arb_amounts()), prop::option::of(arb_amounts())), 0..3),
        any::<bool>(),
        0i32..60,
        1i32..100,
    )
        .prop_map(
            move |(strategy, namespaces, zoned, reserved, overcommit, tenants, preempt, floor, percentile)| {
                let tenants: Vec<Value> = tenants
                    .into_iter()
                    .zip(TENANTS)
                    .map(|((weight, guarantee, limit), ns)| {
                        let mut t = json!({"namespace": ns, "weight": weight});
                        if let Some(g) = guarantee {
                            t["guarantee"] = g;
                        }
                        if let Some(l) = limit {
                            // A limit below the guarantee is refused by validation.
                            t["limit"] = l;
                            if let Some(g) = t.get("guarantee").cloned() {
                                t["limit"] = g;
                            }
                        }
                        t
                    })
                    .collect();
                let mut spec = json!({
                    "strategy": strategy,
                    "namespaces": namespaces,
                    "precedence": i,
                    "reserved": {"cpu": format!("{reserved}m")},
                    "overcommit": {"cpu": overcommit},
                    "tenants": tenants,
                    "preemption": {"policy": if preempt { "PreemptLowerPriority" } else { "Never" }},
                    "demand": {"floorPercent": floor},
                    "usage": {"percentile": percentile},
                });
                if zoned {
                    spec["nodeSelector"] = json!({"matchLabels": {"zone": "a"}});
                }
                mk_policy(&format!("p{i}"), spec)
            },
        )
}

fn arb_policies() -> impl Strategy<Value = Vec<ResourcePolicy>> {
    (0usize..3).prop_flat_map(|n| (0..n).map(arb_policy).collect::<Vec<_>>())
}

fn arb_workload(i: usize) -> impl Strategy<Value = Workload> {
    (
        prop::sample::select(TENANTS.to_vec()),
        0u32..4,
        0i64..3000,
        0i64..2048,
        0i32..4,
        prop::option::of(prop::sample::select(&["a", "b"][..])),
        any::<bool>(),
        prop::option::of(0i64..2000),
    )
        .prop_map(move |(ns, replicas, cpu, mem, priority, zone, pack, extra_limit)| {
            let mut extra = json!({"priority": priority, "placement": {"mode": if pack { "Pack" } else { "Spread" }}});
            if let Some(zone) = zone {
                extra["placement"]["nodeSelector"] = json!({"zone": zone});
            }
            let mut requests = json!({"cpu": format!("{cpu}m"), "memory": format!("{mem}Mi")});
            if let Some(more) = extra_limit {
                extra["resources"] = json!({"requests": requests.take(), "limits": {"cpu": format!("{}m", cpu + more)}});
            }
            mk_workload(ns, &format!("w{i}"), replicas, cpu, mem, extra)
        })
}

fn arb_workloads() -> impl Strategy<Value = Vec<Workload>> {
    (0usize..10).prop_flat_map(|n| (0..n).map(arb_workload).collect::<Vec<_>>())
}

fn arb_observed() -> impl Strategy<Value = HashMap<ReplicaKey, Observed>> {
    prop::collection::hash_map(
        (prop::sample::select(TENANTS.to_vec()), 0usize..10, 0u32..4)
            .prop_map(|(ns, w, i)| ReplicaKey::new(ns, &format!("w{w}"), i)),
        (
            prop::collection::vec(0i64..4000, 0..5),
            prop::collection::vec(0i64..(4 << 30), 0..5),
            prop::option::of(0.0f64..=100.0),
            prop::option::of(0i64..(8 << 30)),
        )
            .prop_map(|(cpu, memory, memory_pressure, memory_granted)| Observed {
                cpu,
                memory,
                memory_pressure,
                memory_granted,
                ..Observed::default()
            }),
        0..8,
    )
}

/// What `alloc::allocate` does, step by step, with the allocator's invariants checked after
/// the workloads are added and after the allocation.
fn run(
    policies: &[ResourcePolicy],
    workloads: &[Workload],
    nodes: &[NodeInfo],
    observed: &HashMap<ReplicaKey, Observed>,
    current: &HashMap<ReplicaKey, String>,
) -> Plan {
    let mut allocator = Allocator::new(policies, nodes);
    allocator.set_observed(observed.clone());
    let refs: Vec<&Workload> = workloads.iter().collect();
    allocator.add_workloads(&refs, current);
    assert_eq!(
        allocator.check_invariants(),
        Ok(()),
        "after adding the workloads"
    );
    allocator.allocate();
    assert_eq!(allocator.check_invariants(), Ok(()), "after allocating");
    allocator.plan()
}

/// Node and grant of each placed replica, and the replicas pending.
type Outcome = (
    BTreeMap<(WorkloadRef, u32), (String, Res)>,
    Vec<(WorkloadRef, u32)>,
);

/// Placement and grants, without the reasons' wording (which depends on when a replica
/// was last tried).
fn outcome(plan: &Plan) -> Outcome {
    let placed = plan
        .allocations
        .iter()
        .map(|a| ((a.workload.clone(), a.replica), (a.node.clone(), a.granted)))
        .collect();
    let pending = plan
        .pending
        .iter()
        .map(|p| (p.workload.clone(), p.replica))
        .collect();
    (placed, pending)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// On every node and for every resource, Σ grants ≤ (capacity − reserved) × overcommit;
    /// no tenant holds more than its limit.
    #[test]
    fn grants_never_exceed_what_a_node_offers(
        policies in arb_policies(), workloads in arb_workloads(), nodes in arb_nodes(), observed in arb_observed(),
    ) {
        let plan = run(&policies, &workloads, &nodes, &observed, &HashMap::new());
        let mut sums: BTreeMap<&str, Res> = BTreeMap::new();
        for a in &plan.allocations {
            let sum = sums.entry(a.node.as_str()).or_default();
            *sum = sum.plus(a.granted);
            prop_assert!(a.granted.fits_in(&Res::new(
                a.limits.cpu.unwrap_or(i64::MAX), a.limits.memory.unwrap_or(i64::MAX), a.limits.pids.unwrap_or(i64::MAX))),
                "grant above limit: {a:?}");
        }
        for n in &plan.nodes {
            let sum = sums.get(n.name.as_str()).copied().unwrap_or_default();
            prop_assert_eq!(sum, n.allocated);
            prop_assert!(sum.fits_in(&n.allocatable), "node {} holds {} of {}", n.name, sum, n.allocatable);
        }
        for t in &plan.tenants {
            if let Some(limit) = t.limit {
                prop_assert!(t.allocated.fits_in(&limit), "tenant {} holds {} over its limit {}", t.tenant, t.allocated, limit);
            }
        }
        prop_assert_eq!(
            plan.allocations.len() + plan.pending.len(),
            workloads.iter().map(|w| w.spec.replicas as usize).sum::<usize>()
        );
    }

    /// The same input gives the same plan, whatever the order it is given in.
    #[test]
    fn allocation_is_deterministic(
        policies in arb_policies(), workloads in arb_workloads(), nodes in arb_nodes(), observed in arb_observed(),
    ) {
        let plan = run(&policies, &workloads, &nodes, &observed, &HashMap::new());
        prop_assert_eq!(&plan, &run(&policies, &workloads, &nodes, &observed, &HashMap::new()));
        let current = HashMap::new();
        let input = Input { policies: &policies, workloads: &workloads, nodes: &nodes, observed: &observed, current: &current };
        prop_assert_eq!(&plan, &alloc::allocate(&input), "`run` is `alloc::allocate`");
        let mut rp = policies.clone();
        rp.reverse();
        let mut rw = workloads.clone();
        rw.reverse();
        let mut rn = nodes.clone();
        rn.reverse();
        prop_assert_eq!(&plan, &run(&rp, &rw, &rn, &observed, &HashMap::new()));
    }

    /// Allocating again from the result, with nothing changed, moves nothing.
    #[test]
    fn an_unchanged_input_causes_no_churn(
        policies in arb_policies(), workloads in arb_workloads(), nodes in arb_nodes(), observed in arb_observed(),
    ) {
        let first = run(&policies, &workloads, &nodes, &observed, &HashMap::new());
        let second = run(&policies, &workloads, &nodes, &observed, &first.placement());
        prop_assert_eq!(outcome(&first), outcome(&second));
        prop_assert!(second.preemptions.is_empty());
    }

    /// More capacity never makes a placed replica pending, unless a replica of higher
    /// priority preempted it.
    #[test]
    fn more_capacity_never_unplaces_a_replica(
        policies in arb_policies(), workloads in arb_workloads(), nodes in arb_nodes(),
        grow in prop::collection::vec((0i64..4000, 0i64..4096), 1..6), extra_node in any::<bool>(),
    ) {
        let first = run(&policies, &workloads, &nodes, &HashMap::new(), &HashMap::new());
        let mut bigger = nodes.clone();
        for (n, (cpu, mem)) in bigger.iter_mut().zip(grow) {
            n.capacity.cpu += cpu;
            n.capacity.memory += mem << 20;
        }
        if extra_node {
            bigger.push(mk_node("n9", 4000, 4096, &[("zone", "a")]));
        }
        let second = run(&policies, &workloads, &bigger, &HashMap::new(), &first.placement());
        for a in &first.allocations {
            let still = second.allocations.iter().any(|b| b.workload == a.workload && b.replica == a.replica);
            let preempted = second.preemptions.iter().any(|p| p.workload == a.workload && p.replica == a.replica);
            prop_assert!(still || preempted, "{} replica {} lost its place", a.workload, a.replica);
        }
    }

    /// Removing one workload and adding another to a running allocator gives what a full
    /// allocation of the new set, from the old placement, gives.
    #[test]
    fn an_incremental_change_equals_a_full_allocation(
        policies in arb_policies(), workloads in arb_workloads(), nodes in arb_nodes(),
        added in arb_workload(10), removed in any::<prop::sample::Index>(),
    ) {
        let mut allocator = Allocator::new(&policies, &nodes);
        let refs: Vec<&Workload> = workloads.iter().collect();
        allocator.add_workloads(&refs, &HashMap::new());
        allocator.allocate();
        prop_assert_eq!(allocator.check_invariants(), Ok(()));
        let before = allocator.plan();

        let mut after_set = workloads.clone();
        if !after_set.is_empty() {
            let gone = after_set.remove(removed.index(after_set.len()));
            allocator.remove_workload(gone.metadata.namespace.as_deref().unwrap(), gone.metadata.name.as_deref().unwrap());
            prop_assert_eq!(allocator.check_invariants(), Ok(()), "after the removal");
        }
        allocator.add_workloads(&[&added], &HashMap::new());
        prop_assert_eq!(allocator.check_invariants(), Ok(()), "after the addition");
        allocator.allocate();
        prop_assert_eq!(allocator.check_invariants(), Ok(()), "after allocating again");
        after_set.push(added);
        let incremental = allocator.plan();
        let full = run(&policies, &after_set, &nodes, &HashMap::new(), &before.placement());
        prop_assert_eq!(outcome(&incremental), outcome(&full));
        prop_assert_eq!(&incremental.preemptions, &full.preemptions);
    }
}
