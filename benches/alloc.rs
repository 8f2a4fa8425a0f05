//! The allocator at scale, for each strategy:
//!
//! - `full/*`: a full allocation of 10,000 replicas on 1,000 nodes (target < 100 ms);
//! - `incremental/*`: one workload removed and another added on that state (< 5 ms);
//! - `full-contended/*`: the same with every request doubled;
//! - `envelope/full/*`: Kubernetes' envelope, 150,000 replicas on 5,000 nodes (< 1 s);
//! - `envelope/incremental/*`: on that state, one workload edited or one replica added,
//!   through the [`Allocator`] kept between changes (< 5 ms);
//! - `envelope/replan/*`: one workload edited, allocated anew with the previous placement
//!   as `current`: what a controller pass does, as it keeps no allocator between passes.
//!
//! For scale, Mesos' allocator took about 1 s for 10k agents and 1k frameworks.

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

use corral::alloc::fixtures::{mk_node, mk_policy, mk_workload};
use corral::alloc::{self, Allocator, Input, NodeInfo, ReplicaKey};
use corral::api::{ResourcePolicy, Workload};

const REPLICAS: u32 = 10;
const TENANTS: usize = 10;
const STRATEGIES: [&str; 4] = ["Priority", "Fair", "Demand", "Usage"];

/// A cluster: nodes of one size in 4 zones, and workloads of [`REPLICAS`] replicas.
#[derive(Clone, Copy)]
struct Scale {
    nodes: usize,
    workloads: usize,
    /// Cores per node: three times as many at the envelope, where a node holds three times
    /// as many replicas, so that the same share of the CPU is asked for.
    cores: i64,
}

/// 10,000 replicas on 1,000 nodes of 16 cores and 64 GiB.
const SMALL: Scale = Scale {
    nodes: 1_000,
    workloads: 1_000,
    cores: 16,
};

/// Kubernetes' documented limits: 150,000 pods on 5,000 nodes (30 a node, of at most
/// 110). Nodes of 48 cores and 192 GiB.
const ENVELOPE: Scale = Scale {
    nodes: 5_000,
    workloads: 15_000,
    cores: 48,
};

impl Scale {
    fn nodes(self) -> Vec<NodeInfo> {
        (0..self.nodes)
            .map(|i| {
                let zone = ["a", "b", "c", "d"][i % 4];
                mk_node(
                    &format!("node-{i:05}"),
                    self.cores * 1000,
                    self.cores * 4 * 1024,
                    &[("zone", zone)],
                )
            })
            .collect()
    }

    /// Workloads over 10 tenants: requests from 100m to 1900m CPU and 128 MiB to 3 GiB,
    /// priorities 0 to 9, a tenth pinned to a zone, a fifth packed. They ask for about 70%
    /// of the CPU.
    fn workloads(self, scale: i64) -> Vec<Workload> {
        (0..self.workloads).map(|i| workload(i, scale)).collect()
    }
}

/// Workload `i`, its requests multiplied by `scale`.
fn workload(i: usize, scale: i64) -> Workload {
    workload_with(i, REPLICAS, scale * cpu(i), scale)
}

/// Workload `i`'s CPU request, in millicores.
fn cpu(i: usize) -> i64 {
    100 + (i as i64 * 37) % 1900
}

/// Workload `i` with `replicas`, `cpu` millicores per replica, and its memory request
/// multiplied by `scale`.
fn workload_with(i: usize, replicas: u32, cpu: i64, scale: i64) -> Workload {
    let mut extra = json!({"priority": i % 10});
    if i.is_multiple_of(10) {
        let zone = ["a", "b", "c", "d"][i % 4];
        extra["placement"] = json!({"nodeSelector": {"zone": zone}});
    } else if i.is_multiple_of(5) {
        extra["placement"] = json!({"mode": "Pack"});
    }
    mk_workload(
        &format!("tenant-{}", i % TENANTS),
        &format!("w-{i:05}"),
        replicas,
        cpu,
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

/// Benchmarks a full allocation named `name` and returns the policies it used and the
/// placement it made.
fn bench_full(
    c: &mut Criterion,
    name: &str,
    strategy: &str,
    nodes: &[NodeInfo],
    workloads: &[Workload],
) -> ([ResourcePolicy; 1], HashMap<ReplicaKey, String>) {
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
    (policies, plan.placement())
}

/// An allocator holding `workloads`, allocated.
fn allocated(policies: &[ResourcePolicy], nodes: &[NodeInfo], workloads: &[Workload]) -> Allocator {
    let mut allocator = Allocator::new(policies, nodes);
    let refs: Vec<&Workload> = workloads.iter().collect();
    allocator.add_workloads(&refs, &HashMap::new());
    allocator.allocate();
    allocator
}

/// Benchmarks `name`: each iteration gives `allocator` the next of `versions` (of one
/// workload, round and round, so that every round starts alike) from `current`, and
/// allocates.
fn bench_versions(
    c: &mut Criterion,
    name: &str,
    allocator: &mut Allocator,
    versions: &[Workload],
    current: &HashMap<ReplicaKey, String>,
) {
    let mut next = 0;
    c.bench_function(name, |b| {
        b.iter(|| {
            allocator.add_workloads(&[&versions[next]], current);
            next = (next + 1) % versions.len();
            allocator.allocate();
        });
    });
}

fn bench(c: &mut Criterion) {
    let nodes = SMALL.nodes();
    let workloads = SMALL.workloads(1);
    for strategy in STRATEGIES {
        let (policies, _) =
            bench_full(c, &format!("full/{strategy}"), strategy, &nodes, &workloads);
        let mut allocator = allocated(&policies, &nodes, &workloads);
        let current = HashMap::new();
        // Swap one workload for a new one and back, so every iteration starts alike.
        let newcomer = workload(SMALL.workloads + 1, 1);
        let leaving = workloads[SMALL.workloads / 2].clone();
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
    let nodes = SMALL.nodes();
    let workloads = SMALL.workloads(2);
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

/// At Kubernetes' envelope. The edited workload is a spread one of priority 7 whose
/// replicas sit on 10 nodes; its CPU request goes from 949m to 1149m and back, so its
/// replicas stay where they still fit. The grown one, of priority 8, goes from 10 replicas
/// to 11 and back.
fn bench_envelope(c: &mut Criterion) {
    let nodes = ENVELOPE.nodes();
    let mut workloads = ENVELOPE.workloads(1);
    let edited = 7_777;
    let original = workloads[edited].clone();
    let bigger = workload_with(edited, REPLICAS, cpu(edited) + 200, 1);
    let grown = workload_with(edited + 1, REPLICAS + 1, cpu(edited + 1), 1);
    let shrunk = workloads[edited + 1].clone();
    for strategy in STRATEGIES {
        let (policies, placement) = bench_full(
            c,
            &format!("envelope/full/{strategy}"),
            strategy,
            &nodes,
            &workloads,
        );
        let mut allocator = allocated(&policies, &nodes, &workloads);
        bench_versions(
            c,
            &format!("envelope/incremental/{strategy}/edit"),
            &mut allocator,
            &[bigger.clone(), original.clone()],
            &placement,
        );
        bench_versions(
            c,
            &format!("envelope/incremental/{strategy}/add-replica"),
            &mut allocator,
            &[grown.clone(), shrunk.clone()],
            &placement,
        );
        let observed = HashMap::new();
        workloads[edited] = bigger.clone();
        let input = Input {
            policies: &policies,
            workloads: &workloads,
            nodes: &nodes,
            observed: &observed,
            current: &placement,
        };
        c.bench_function(&format!("envelope/replan/{strategy}"), |b| {
            b.iter(|| black_box(alloc::allocate(black_box(&input))));
        });
        workloads[edited] = original.clone();
    }
}

// Without plots: drawing them took about 4 s a benchmark on 2 cores, a third of the run.
criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).without_plots();
    targets = bench, bench_contended
}
// A full allocation at the envelope takes a few tenths of a second: ten samples fit in
// the default 5 s.
criterion_group! {
    name = envelope;
    config = Criterion::default().sample_size(10).without_plots();
    targets = bench_envelope
}
criterion_main!(benches, envelope);
