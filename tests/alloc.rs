//! The allocator's strategies, each against expectations computed by hand.

use std::collections::{BTreeMap, HashMap};

use serde_json::json;

use corral::alloc::fixtures::{mk_node, mk_policy, mk_workload};
use corral::alloc::{self, Input, NodeInfo, Observed, Plan, ReplicaKey, Res};
use corral::api::{ResourcePolicy, Workload};

fn plan_with(
    policies: &[ResourcePolicy],
    workloads: &[Workload],
    nodes: &[NodeInfo],
    observed: &HashMap<ReplicaKey, Observed>,
    current: &HashMap<ReplicaKey, String>,
) -> Plan {
    alloc::allocate(&Input {
        policies,
        workloads,
        nodes,
        observed,
        current,
    })
}

fn plan(policies: &[ResourcePolicy], workloads: &[Workload], nodes: &[NodeInfo]) -> Plan {
    plan_with(policies, workloads, nodes, &HashMap::new(), &HashMap::new())
}

/// Replicas placed per workload.
fn placed(plan: &Plan) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for a in &plan.allocations {
        *counts.entry(a.workload.to_string()).or_insert(0) += 1;
    }
    counts
}

fn where_is(plan: &Plan, workload: &str, replica: u32) -> Option<String> {
    plan.allocations
        .iter()
        .find(|a| a.workload == workload && a.replica == replica)
        .map(|a| a.node.clone())
}

fn granted(plan: &Plan, workload: &str, replica: u32) -> Res {
    plan.allocations
        .iter()
        .find(|a| a.workload == workload && a.replica == replica)
        .map(|a| a.granted)
        .unwrap_or_else(|| panic!("{workload} {replica} not placed: {plan:#?}"))
}

#[test]
fn priority_places_higher_priority_first_and_explains_the_rest() {
    let policies = [mk_policy("p", json!({"strategy": "Priority"}))];
    let nodes = [mk_node("n1", 2000, 4096, &[])];
    let workloads = [
        mk_workload("a", "low", 2, 800, 64, json!({"priority": 1})),
        mk_workload("a", "high", 1, 1000, 64, json!({"priority": 100})),
    ];
    let plan = plan(&policies, &workloads, &nodes);
    // high takes 1000m first, then one low (800m) fits, the second does not (200m left).
    assert_eq!(
        placed(&plan),
        BTreeMap::from([("a/high".into(), 1), ("a/low".into(), 1)])
    );
    assert_eq!(plan.pending.len(), 1);
    assert_eq!(plan.pending[0].workload, "a/low");
    assert_eq!(
        plan.pending[0].reason,
        "needs 800m cpu; the most free on a matching node is 200m"
    );
}

#[test]
fn preemption_takes_only_strictly_lower_priority_and_only_when_allowed() {
    let nodes = [mk_node("n1", 2000, 4096, &[])];
    let low = mk_workload("batch", "low", 2, 1000, 64, json!({"priority": 10}));
    let same = mk_workload("batch", "same", 1, 1000, 64, json!({"priority": 10}));
    let high = mk_workload("prod", "high", 1, 1000, 64, json!({"priority": 1000}));
    let allowed = [mk_policy(
        "p",
        json!({"preemption": {"policy": "PreemptLowerPriority"}}),
    )];
    let forbidden = [mk_policy("p", json!({}))];

    // Low fills the node first; then high and same arrive.
    let before = plan(&allowed, std::slice::from_ref(&low), &nodes);
    assert_eq!(placed(&before)["batch/low"], 2);
    let current = before.placement();
    let after = plan_with(
        &allowed,
        &[low.clone(), same.clone(), high.clone()],
        &nodes,
        &HashMap::new(),
        &current,
    );
    assert_eq!(where_is(&after, "prod/high", 0).as_deref(), Some("n1"));
    assert_eq!(after.preemptions.len(), 1, "{after:#?}");
    assert_eq!(after.preemptions[0].workload, "batch/low");
    assert_eq!(after.preemptions[0].by_workload, "prod/high");
    // The equal-priority newcomer preempts nobody and waits.
    let same_pending = after
        .pending
        .iter()
        .find(|p| p.workload == "batch/same")
        .unwrap();
    assert_eq!(
        same_pending.reason,
        "needs 1 cpu; the most free on a matching node is 0"
    );
    let victim = after
        .pending
        .iter()
        .find(|p| p.workload == "batch/low")
        .unwrap();
    assert!(
        victim
            .reason
            .starts_with("preempted on n1 by prod/high (priority 1000), and needs 1 cpu"),
        "{}",
        victim.reason
    );

    let without = plan_with(
        &forbidden,
        &[low, same, high],
        &nodes,
        &HashMap::new(),
        &current,
    );
    assert!(without.preemptions.is_empty());
    assert_eq!(placed(&without)["batch/low"], 2);
    assert!(without.pending.iter().any(|p| p.workload == "prod/high"));
}

/// The example of the DRF paper (Ghodsi et al., NSDI 2011, section 4): 9 CPUs and 18 GB;
/// user A runs tasks of ⟨1 CPU, 4 GB⟩, user B of ⟨3 CPUs, 1 GB⟩. DRF gives A three tasks
/// and B two: both end with a dominant share of 2/3.
#[test]
fn drf_reproduces_the_mesos_paper_example() {
    let policies = [mk_policy("fair", json!({"strategy": "Fair"}))];
    let nodes = [mk_node("n1", 9000, 18 * 1024, &[])];
    let workloads = [
        mk_workload("user-a", "tasks", 10, 1000, 4 * 1024, json!({})),
        mk_workload("user-b", "tasks", 10, 3000, 1024, json!({})),
    ];
    let plan = plan(&policies, &workloads, &nodes);
    assert_eq!(
        placed(&plan),
        BTreeMap::from([("user-a/tasks".into(), 3), ("user-b/tasks".into(), 2)])
    );
    let shares: Vec<f64> = plan.tenants.iter().map(|t| t.dominant_share).collect();
    assert_eq!(shares.len(), 2);
    for share in shares {
        assert!((share - 2.0 / 3.0).abs() < 1e-9, "{share}");
    }
}

#[test]
fn weighted_drf_gives_a_weight_2_tenant_twice_the_share() {
    let policies = [mk_policy(
        "fair",
        json!({"strategy": "Fair", "tenants": [{"namespace": "a", "weight": 2}, {"namespace": "b", "weight": 1}]}),
    )];
    let nodes = [mk_node("n1", 9000, 9000, &[])];
    let workloads = [
        mk_workload("a", "w", 20, 1000, 10, json!({})),
        mk_workload("b", "w", 20, 1000, 10, json!({})),
    ];
    let plan = plan(&policies, &workloads, &nodes);
    assert_eq!(
        placed(&plan),
        BTreeMap::from([("a/w".into(), 6), ("b/w".into(), 3)])
    );
}

#[test]
fn fair_meets_guarantees_first_and_never_exceeds_limits() {
    let policies = [mk_policy(
        "fair",
        json!({"strategy": "Fair", "tenants": [
            {"namespace": "big", "weight": 10},
            {"namespace": "small", "guarantee": {"cpu": "3"}},
            {"namespace": "capped", "weight": 10, "limit": {"cpu": "2"}},
        ]}),
    )];
    let nodes = [mk_node("n1", 10_000, 100_000, &[])];
    let workloads = [
        mk_workload("big", "w", 10, 1000, 1, json!({})),
        mk_workload("small", "w", 10, 1000, 1, json!({})),
        mk_workload("capped", "w", 10, 1000, 1, json!({})),
    ];
    let plan = plan(&policies, &workloads, &nodes);
    let counts = placed(&plan);
    // small is guaranteed 3 cpu and gets them although its weight is 1 against 10;
    // capped stops at its limit of 2; big takes the rest.
    assert_eq!(counts["small/w"], 3);
    assert_eq!(counts["capped/w"], 2);
    assert_eq!(counts["big/w"], 5);
    let capped = plan
        .pending
        .iter()
        .find(|p| p.workload == "capped/w")
        .unwrap();
    assert_eq!(
        capped.reason,
        "tenant capped is at its limit: it holds 2 cpu of 2, and a replica needs 1 more"
    );
}

#[test]
fn fair_holds_unmet_guarantees_back_from_other_tenants() {
    let policies = [mk_policy(
        "fair",
        json!({"strategy": "Fair", "tenants": [{"namespace": "reserved", "guarantee": {"cpu": "4"}}]}),
    )];
    let nodes = [mk_node("n1", 10_000, 100_000, &[])];
    // The tenant with the guarantee runs nothing yet; the other may use only 6 of 10 cpu.
    let workloads = [mk_workload("other", "w", 10, 1000, 1, json!({}))];
    let plan = plan(&policies, &workloads, &nodes);
    assert_eq!(placed(&plan)["other/w"], 6);
    assert_eq!(
        plan.pending[0].reason,
        "the 4 cpu left is held for other tenants' guarantees"
    );
}

#[test]
fn demand_scales_requests_in_proportion_when_they_exceed_capacity() {
    let policies = [mk_policy(
        "d",
        json!({"strategy": "Demand", "demand": {"floorPercent": 20}}),
    )];
    let nodes = [mk_node("n1", 3000, 3000, &[])];
    // Requests of 1000m, 2000m and 3000m on 3000m: 3000 × r / 6000 = 500, 1000, 1500.
    let workloads = [
        mk_workload("a", "one", 1, 1000, 100, json!({})),
        mk_workload("a", "two", 1, 2000, 100, json!({})),
        mk_workload("a", "three", 1, 3000, 100, json!({})),
    ];
    let plan = plan(&policies, &workloads, &nodes);
    assert!(plan.pending.is_empty(), "{:?}", plan.pending);
    assert_eq!(granted(&plan, "a/one", 0).cpu, 500);
    assert_eq!(granted(&plan, "a/two", 0).cpu, 1000);
    assert_eq!(granted(&plan, "a/three", 0).cpu, 1500);
    // Memory requests (300Mi) fit in 3000Mi, so they are granted in full.
    assert_eq!(granted(&plan, "a/one", 0).memory, 100 << 20);
}

#[test]
fn demand_never_grants_below_the_floor() {
    let policies = [mk_policy(
        "d",
        json!({"strategy": "Demand", "demand": {"floorPercent": 30}}),
    )];
    let nodes = [mk_node("n1", 2000, 3000, &[])];
    // Replicas of 1000m with a floor of 300m: six floors fit in 2000m (1800m), a seventh
    // does not. The 200m above the floors is shared in proportion: 34 or 33 each.
    let workloads = [mk_workload("a", "w", 7, 1000, 1, json!({}))];
    let plan = plan(&policies, &workloads, &nodes);
    let grants: Vec<i64> = (0..6).map(|i| granted(&plan, "a/w", i).cpu).collect();
    assert_eq!(grants, [334, 334, 333, 333, 333, 333]);
    assert_eq!(plan.pending.len(), 1);
    assert_eq!(
        plan.pending[0].reason,
        "needs 300m cpu; the most free on a matching node is 200m"
    );
}

#[test]
fn usage_grants_the_observed_percentile_between_request_and_limit() {
    let policies = [mk_policy(
        "u",
        json!({"strategy": "Usage", "usage": {"percentile": 90}}),
    )];
    let nodes = [mk_node("n1", 4000, 4096, &[])];
    let limits = json!({"resources": {"requests": {"cpu": "200m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}}});
    let workloads = [
        mk_workload("a", "busy", 1, 200, 64, limits.clone()),
        mk_workload("a", "idle", 1, 200, 64, limits.clone()),
        mk_workload("a", "new", 1, 200, 64, limits),
    ];
    let samples = |cpu: Vec<i64>, memory_mib: Vec<i64>| Observed {
        cpu,
        memory: memory_mib.into_iter().map(|m| m << 20).collect(),
        ..Observed::default()
    };
    let observed = HashMap::from([
        // p90 of 100..1500 by 100 is 1400m: clamped to the 1 cpu limit; memory p90 128Mi.
        (
            ReplicaKey::new("a", "busy", 0),
            samples((1..=15).map(|i| i * 100).collect(), vec![100, 128, 90]),
        ),
        // Below its request: the request.
        (
            ReplicaKey::new("a", "idle", 0),
            samples(vec![10, 20], vec![8]),
        ),
    ]);
    let plan = plan_with(&policies, &workloads, &nodes, &observed, &HashMap::new());
    assert_eq!(granted(&plan, "a/busy", 0), Res::new(1000, 128 << 20, 0));
    assert_eq!(granted(&plan, "a/idle", 0), Res::new(200, 64 << 20, 0));
    assert_eq!(
        granted(&plan, "a/new", 0),
        Res::new(200, 64 << 20, 0),
        "no observation: the request"
    );
}

#[test]
fn spread_and_pack_place_differently() {
    let policies = [mk_policy("p", json!({}))];
    let nodes = [
        mk_node("n1", 4000, 4096, &[]),
        mk_node("n2", 4000, 4096, &[]),
        mk_node("n3", 4000, 4096, &[]),
    ];
    let spread = [mk_workload("a", "w", 3, 1000, 64, json!({}))];
    let plan_spread = plan(&policies, &spread, &nodes);
    let mut spread_nodes: Vec<_> = (0..3)
        .filter_map(|i| where_is(&plan_spread, "a/w", i))
        .collect();
    spread_nodes.sort();
    assert_eq!(spread_nodes, ["n1", "n2", "n3"]);

    let pack = [mk_workload(
        "a",
        "w",
        3,
        1000,
        64,
        json!({"placement": {"mode": "Pack"}}),
    )];
    let plan_pack = plan(&policies, &pack, &nodes);
    let packed: Vec<_> = (0..3)
        .filter_map(|i| where_is(&plan_pack, "a/w", i))
        .collect();
    assert_eq!(packed, ["n1", "n1", "n1"]);
}

#[test]
fn node_selectors_and_policies_partition_nodes() {
    let policies = [
        // Both policies select gpu-1; the higher precedence governs it.
        mk_policy(
            "gpu",
            json!({"nodeSelector": {"matchLabels": {"gpu": "yes"}}, "namespaces": ["ml"], "precedence": 10}),
        ),
        mk_policy("rest", json!({"namespaces": ["web"]})),
    ];
    let nodes = [
        mk_node("cpu-1", 4000, 4096, &[("zone", "a")]),
        mk_node("gpu-1", 4000, 4096, &[("gpu", "yes"), ("zone", "b")]),
    ];
    let workloads = [
        mk_workload("ml", "train", 1, 1000, 64, json!({})),
        mk_workload("web", "api", 2, 1000, 64, json!({})),
        mk_workload(
            "web",
            "zoned",
            1,
            1000,
            64,
            json!({"placement": {"nodeSelector": {"zone": "b"}}}),
        ),
    ];
    let plan = plan(&policies, &workloads, &nodes);
    assert_eq!(where_is(&plan, "ml/train", 0).as_deref(), Some("gpu-1"));
    assert_eq!(where_is(&plan, "web/api", 0).as_deref(), Some("cpu-1"));
    assert_eq!(where_is(&plan, "web/api", 1).as_deref(), Some("cpu-1"));
    assert_eq!(
        plan.pending[0].reason,
        "none of the 1 nodes of ResourcePolicy \"rest\" has the labels zone=b"
    );
}

#[test]
fn reserved_and_overcommit_shape_what_a_node_offers() {
    let policies = [mk_policy(
        "p",
        json!({"reserved": {"cpu": "500m", "memory": "1Gi"}, "overcommit": {"cpu": 2}}),
    )];
    let nodes = [mk_node("n1", 2000, 4096, &[])];
    let plan = plan(&policies, &[], &nodes);
    // cpu (2000 − 500) × 2 = 3000m; memory 4Gi − 1Gi, not overcommitted.
    assert_eq!(plan.nodes[0].allocatable, Res::new(3000, 3 << 30, 1000));
}

#[test]
fn contested_nodes_and_policies_without_nodes_are_explained() {
    let policies = [
        mk_policy("x", json!({"namespaces": ["a"]})),
        mk_policy("y", json!({"namespaces": ["b"]})),
    ];
    let nodes = [mk_node("n1", 4000, 4096, &[])];
    let workloads = [mk_workload("a", "w", 1, 100, 1, json!({}))];
    let plan = plan(&policies, &workloads, &nodes);
    assert_eq!(
        plan.nodes[0].problem.as_deref(),
        Some("not used: claimed by ResourcePolicies \"x\" and \"y\" with the same precedence 0")
    );
    assert_eq!(
        plan.pending[0].reason,
        "ResourcePolicy \"x\" governs no nodes"
    );
}

#[test]
fn an_unchanged_input_keeps_every_replica_where_it_is() {
    let policies = [mk_policy("p", json!({}))];
    let nodes: Vec<NodeInfo> = (0..5)
        .map(|i| mk_node(&format!("n{i}"), 4000, 8192, &[]))
        .collect();
    let workloads: Vec<Workload> = (0..8)
        .map(|i| mk_workload("a", &format!("w{i}"), 3, 300 + i * 100, 128, json!({})))
        .collect();
    let first = plan(&policies, &workloads, &nodes);
    let second = plan_with(
        &policies,
        &workloads,
        &nodes,
        &HashMap::new(),
        &first.placement(),
    );
    assert_eq!(first, second);
    // Removing one node moves only the replicas that were on it.
    let fewer = &nodes[1..];
    let third = plan_with(
        &policies,
        &workloads,
        fewer,
        &HashMap::new(),
        &first.placement(),
    );
    for a in &first.allocations {
        if a.node != "n0" {
            assert_eq!(
                where_is(&third, &a.workload.to_string(), a.replica),
                Some(a.node.clone())
            );
        }
    }
}

#[test]
fn workloads_without_a_policy_get_the_default_on_unclaimed_nodes() {
    let nodes = [mk_node("n1", 1000, 1024, &[])];
    let workloads = [mk_workload("a", "w", 1, 500, 64, json!({}))];
    let plan = plan(&[], &workloads, &nodes);
    assert_eq!(plan.allocations[0].policy, "(default)");
    let governed = [mk_policy("all", json!({"namespaces": ["other"]}))];
    let plan = plan_with(
        &governed,
        &workloads,
        &nodes,
        &HashMap::new(),
        &HashMap::new(),
    );
    assert!(
        plan.pending[0]
            .reason
            .starts_with("no ResourcePolicy governs this workload")
    );
}

/// A tenant's explicit zero requests cannot crowd a node: no more than
/// `maxReplicasPerNode` (110 unless the policy says) run on one node.
#[test]
fn zero_requests_fill_a_node_only_up_to_max_replicas_per_node() {
    let nodes = [mk_node("n1", 2000, 4096, &[])];
    let zero = json!({"resources": {"requests": {"cpu": "0", "memory": "0"}}});
    let workloads = [mk_workload("a", "swarm", 1000, 0, 0, zero)];
    let plan = plan(&[mk_policy("p", json!({}))], &workloads, &nodes);
    assert_eq!(placed(&plan)["a/swarm"], 110);
    assert_eq!(plan.pending.len(), 890);
    assert!(
        plan.pending[0].reason.contains("maxReplicasPerNode"),
        "{}",
        plan.pending[0].reason
    );
    let tight = mk_policy("p", json!({"maxReplicasPerNode": 3}));
    let plan = self::plan(&[tight], &workloads, &nodes);
    assert_eq!(placed(&plan)["a/swarm"], 3);
}

/// Priority and replica counts are the tenant's policy's, whatever a Workload says.
#[test]
fn tenant_bounds_hold_in_the_allocator() {
    let policy = mk_policy(
        "p",
        json!({"preemption": {"policy": "PreemptLowerPriority"},
               "tenants": [{"namespace": "a", "maxPriority": 10, "maxReplicas": 2}]}),
    );
    let nodes = [mk_node("n1", 1000, 4096, &[])];
    // b's service fills the node; a asks for a priority above its bound: refused, and so
    // it preempts nothing.
    let workloads = [
        mk_workload("b", "critical", 1, 1000, 64, json!({"priority": 100})),
        mk_workload(
            "a",
            "greedy",
            1,
            500,
            64,
            json!({"priority": 1_000_000_000}),
        ),
    ];
    let plan = plan(std::slice::from_ref(&policy), &workloads, &nodes);
    assert_eq!(where_is(&plan, "b/critical", 0).as_deref(), Some("n1"));
    assert!(plan.preemptions.is_empty());
    let refused = plan
        .pending
        .iter()
        .find(|p| p.workload == "a/greedy")
        .unwrap();
    assert!(
        refused
            .reason
            .starts_with("refused: spec.priority: 1000000000 is above 10"),
        "{}",
        refused.reason
    );
    // maxReplicas: two of five placed, the rest pending with the reason.
    let nodes = [mk_node("n1", 8000, 8192, &[])];
    let workloads = [mk_workload("a", "many", 5, 100, 16, json!({}))];
    let plan = self::plan(&[policy], &workloads, &nodes);
    assert_eq!(placed(&plan)["a/many"], 2);
    assert!(
        plan.pending[0].reason.contains("maxReplicas"),
        "{}",
        plan.pending[0].reason
    );
}

/// A workload listed twice counts once, as its last copy: what the first would have kept
/// or queued goes with it (replicas the last copy no longer has included).
#[test]
fn a_workload_given_twice_counts_as_its_last_copy() {
    let policies = [mk_policy("p", json!({}))];
    let nodes = [
        mk_node("n1", 4000, 4096, &[]),
        mk_node("n2", 4000, 4096, &[]),
    ];
    let three = mk_workload("a", "w", 3, 500, 64, json!({"priority": 5}));
    let one = mk_workload("a", "w", 1, 700, 64, json!({}));
    let before = plan(&policies, std::slice::from_ref(&three), &nodes);
    assert_eq!(before.allocations.len(), 3);
    for current in [HashMap::new(), before.placement()] {
        let twice = [three.clone(), one.clone()];
        let plan = plan_with(&policies, &twice, &nodes, &HashMap::new(), &current);
        assert_eq!(placed(&plan), BTreeMap::from([("a/w".into(), 1)]));
        assert!(plan.pending.is_empty());
        assert_eq!(granted(&plan, "a/w", 0).cpu, 700);
        assert_eq!(plan.allocations[0].priority, 0);
    }
}
