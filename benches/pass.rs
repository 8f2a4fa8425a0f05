//! One controller pass ([`corral::controller::reconcile`]) at 1,000 nodes and 10,000
//! replicas, on the in-memory store, so that what is measured is the pass itself: the
//! allocation, the desired leases, the gates and the diff, without ZooKeeper's round trips.
//!
//! - `pass/edit`: one Workload's CPU limit changed (its 10 leases rewritten), what an edit
//!   costs the leader before its write reaches ZooKeeper;
//! - `pass/resync`: nothing changed, what every periodic pass costs.
//!
//! `benches/scale.rs` measures the same edit end to end, through a real ensemble.

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

use corral::alloc::NodeInfo;
use corral::alloc::fixtures::{mk_node, mk_policy, mk_workload};
use corral::api::Workload;
use corral::controller::{Seen, UsageHistory, reconcile};
use corral::lease::memory::MemoryStore;

const NODES: usize = 1_000;
const WORKLOADS: usize = 1_000;
const REPLICAS: u32 = 10;

fn nodes() -> Vec<NodeInfo> {
    (0..NODES)
        .map(|i| {
            mk_node(
                &format!("node-{i:04}"),
                16_000,
                64 << 10,
                &[("zone", ["a", "b", "c", "d"][i % 4])],
            )
        })
        .collect()
}

/// Workload `i`, limited to `cpu_limit` millicores, as `benches/scale.rs` writes them.
fn workload(i: usize, cpu_limit: i64) -> Workload {
    mk_workload(
        &format!("tenant-{}", i % 10),
        &format!("w{i:05}"),
        REPLICAS,
        100,
        64,
        json!({"resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                             "limits": {"cpu": format!("{cpu_limit}m"), "memory": "128Mi"}},
               "terminationGracePeriodSeconds": 1}),
    )
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let policies = vec![mk_policy("bench", json!({"strategy": "Priority"}))];
    let nodes = nodes();
    let mut workloads: Vec<Workload> = (0..WORKLOADS).map(|i| workload(i, 500)).collect();
    let missing = BTreeMap::new();
    let cordoned = BTreeSet::new();
    let usage = UsageHistory::new(20);
    let seen = Seen {
        nodes: &nodes,
        missing: &missing,
        usage: &usage,
        reports: &[],
        cordoned: &cordoned,
    };
    let store = MemoryStore::new();
    let first = runtime
        .block_on(reconcile(&store, 1, &workloads, &policies, &seen))
        .expect("the first pass");
    assert_eq!(
        first.changes,
        WORKLOADS * REPLICAS as usize,
        "every replica placed"
    );

    let mut group = c.benchmark_group("pass");
    group.sample_size(20);
    let mut limit = 500;
    group.bench_function("edit", |b| {
        b.iter(|| {
            limit = if limit == 500 { 600 } else { 500 };
            workloads[7] = workload(7, limit);
            let done = runtime
                .block_on(reconcile(&store, 1, &workloads, &policies, &seen))
                .expect("a pass");
            assert_eq!(done.changes, REPLICAS as usize);
            black_box(done)
        });
    });
    group.bench_function("resync", |b| {
        b.iter(|| {
            let done = runtime
                .block_on(reconcile(&store, 1, &workloads, &policies, &seen))
                .expect("a pass");
            assert_eq!(done.changes, 0);
            black_box(done)
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
