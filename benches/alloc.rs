//! The allocator at scale: a full allocation of 10,000 replicas on 1,000 nodes for each
//! strategy, and an incremental change (one workload removed, one added) on that state.
//! Targets on the 2-core machine: full < 100 ms, incremental < 5 ms. For scale, Mesos'
//! allocator took about 1 s for 10k agents and 1k frameworks.

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

use corral::alloc::fixtures::{mk_node, mk_policy, mk_workload};
use corral::alloc::{self, Allocator, Input, NodeInfo};
use corral::api::{ResourcePolicy, Workload};

const NODES: usize = 1_000;
const WORKLOADS: usize = 1_000;
const REPLICAS: u32 = 10;
const TENANTS: usize = 10;

/// 1,000 nodes of 16 cores and 64 GiB in 4 zones.
fn nodes() -> Vec<NodeInfo> {
    (0..NODES)
        .map(|i| {
            let zone = ["a", "b", "c", "d"][i % 4];
            mk_node(
                &format!("node-{i:04}"),
                16_000,
                64 * 1024,
                &[("zone", zone)],
            )
        })
        .collect()
}

/// 1,000 workloads of 10 replicas over 10 tenants: requests from 100m to 1900m CPU and
/// 128 MiB to 3 GiB, priorities 0 to 9, a tenth pinned to a zone, a fifth packed. They ask
/// for about 80% of the CPU.
fn workloads() -> Vec<Workload> {
    (0..WORKLOADS).map(|i| workload(i, 1)).collect()
}

/// Workload `i`, its requests multiplied by `scale`.
fn workload(i: usize, scale: i64) -> Workload {
    let mut extra = json!({"priority": i % 10});
    if i.is_multiple_of(10) {
        let zone = ["a", "b", "c", "d"][i % 4];
        extra["placement"] = json!({"nodeSelector": {"zone": zone}});
    } else if i.is_multiple_of(5) {
        extra["placement"] = json!({"mode": "Pack"});
    }
    mk_workload(
        &format!("tenant-{}", i % TENANTS),
        &format!("w-{i:04}"),
        REPLICAS,
        scale * (100 + (i as i64 * 37) % 1900),
        scale * (128 + (i as i64 * 53) % 2944),
        extra,
    )
}

fn policy(strategy: &str) -> ResourcePolicy {
    let tenants: Vec<_> = (0..TENANTS)
        .map(|t| json!({"namespace": format!("tenant-{t}"), "weight": 1 + t % 3}))
        .collect();
    mk_policy(
        "bench",
        json!({"strategy": strategy, "tenants": tenants, "reserved": {"cpu": "500m", "memory": "1Gi"},
               "preemption": {"policy": "PreemptLowerPriority"}}),
    )
}

/// Benchmarks a full allocation named `name` and returns the policies it used.
fn bench_full(
    c: &mut Criterion,
    name: &str,
    strategy: &str,
    nodes: &[NodeInfo],
    workloads: &[Workload],
) -> [ResourcePolicy; 1] {
    let policies = [policy(strategy)];
    let (observed, current) = (HashMap::new(), HashMap::new());
    let input = Input {
        policies: &policies,
        workloads,
        nodes,
        observed: &observed,
        current: &current,
    };
    let plan = alloc::allocate(&input);
    eprintln!(
        "{name}: {} replicas placed, {} pending",
        plan.allocations.len(),
        plan.pending.len()
    );
    c.bench_function(name, |b| {
        b.iter(|| black_box(alloc::allocate(black_box(&input))));
    });
    policies
}

fn bench(c: &mut Criterion) {
    let nodes = nodes();
    let workloads = workloads();
    for strategy in ["Priority", "Fair", "Demand", "Usage"] {
        let policies = bench_full(c, &format!("full/{strategy}"), strategy, &nodes, &workloads);
        let mut allocator = Allocator::new(&policies, &nodes);
        let refs: Vec<&Workload> = workloads.iter().collect();
        let current = HashMap::new();
        allocator.add_workloads(&refs, &current);
        allocator.allocate();
        // Swap one workload for a new one and back, so every iteration starts alike.
        let newcomer = workload(WORKLOADS + 1, 1);
        let leaving = workloads[WORKLOADS / 2].clone();
        let mut flip = false;
        c.bench_function(&format!("incremental/{strategy}"), |b| {
            b.iter(|| {
                let (out, into) = if flip {
                    (&newcomer, &leaving)
                } else {
                    (&leaving, &newcomer)
                };
                flip = !flip;
                allocator.remove_workload(
                    out.metadata.namespace.as_deref().unwrap_or_default(),
                    out.metadata.name.as_deref().unwrap_or_default(),
                );
                allocator.add_workloads(&[into], &current);
                allocator.allocate();
            });
        });
    }
}

/// The same with every request doubled: about 135% of the CPU is asked for, so a quarter of
/// the replicas stay pending and each needs a reason (and, under Priority, a preemption
/// search).
fn bench_contended(c: &mut Criterion) {
    let nodes = nodes();
    let workloads: Vec<Workload> = (0..WORKLOADS).map(|i| workload(i, 2)).collect();
    for strategy in ["Priority", "Fair"] {
        bench_full(
            c,
            &format!("full-contended/{strategy}"),
            strategy,
            &nodes,
            &workloads,
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench, bench_contended
}
criterion_main!(benches);
