//! One contract for every [`LeaseStore`], run over each of them, as Mesos runs one suite
//! over both of its sorters: ZooKeeper's (a real standalone server), the embedded store
//! `corral run` uses (real files), and the in-memory one the benches use. What the
//! controller and the agents rely on: registrations that replace each other, lease
//! batches applied whole, a batch under a stale epoch refused with nothing changed, each
//! node's reports replaced as a set.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::zk::ZkCluster;

use corral::alloc::fixtures::mk_lease;
use corral::alloc::{ReplicaKey, Res};
use corral::lease::embedded::EmbeddedStore;
use corral::lease::memory::MemoryStore;
use corral::lease::zookeeper::{ZkConfig, ZkStore};
use corral::lease::{
    FORMAT_VERSION, Lease, LeaseChange, LeaseStore, NodeRegistration, Report, StoreError,
};

fn registration(name: &str, cpu: i64) -> NodeRegistration {
    NodeRegistration::new(
        name,
        BTreeMap::from([("zone".to_string(), "a".to_string())]),
        Res::new(cpu, 1 << 30, 1000),
        "v1",
    )
}

fn report(node: &str, name: &str, index: u32) -> Report {
    Report {
        version: FORMAT_VERSION,
        key: Some(ReplicaKey::new("t", name, index)),
        node: node.into(),
        ..Report::default()
    }
}

fn put(lease: &Lease) -> LeaseChange {
    LeaseChange::Put(Box::new(lease.clone()))
}

/// The leases as a set of (node, key, CPU granted), which every store must agree on
/// whatever order it lists them in.
async fn leases<S: LeaseStore>(store: &S) -> BTreeSet<(String, String, i64)> {
    store
        .leases()
        .await
        .expect("leases")
        .into_iter()
        .map(|l| (l.node, l.key.to_string(), l.granted.cpu))
        .collect()
}

async fn reports<S: LeaseStore>(store: &S) -> BTreeSet<(String, String)> {
    store
        .reports()
        .await
        .expect("reports")
        .into_iter()
        .map(|r| (r.node, r.key.map(|k| k.to_string()).unwrap_or_default()))
        .collect()
}

/// The contract, on an empty `store` whose writer leads with `epoch`.
async fn contract<S: LeaseStore>(store: &S, epoch: i64) {
    assert!(store.leases().await.unwrap().is_empty(), "an empty store");
    assert!(store.reports().await.unwrap().is_empty());

    // Registrations: a node registered again replaces its registration.
    store
        .register_node(&registration("n1", 1000))
        .await
        .unwrap();
    store
        .register_node(&registration("n2", 2000))
        .await
        .unwrap();
    store
        .register_node(&registration("n1", 4000))
        .await
        .unwrap();
    let mut nodes = store.nodes().await.unwrap();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(nodes, [registration("n1", 4000), registration("n2", 2000)]);

    // A batch is applied whole; each node lists its own leases.
    let written: Vec<Lease> = (0..5)
        .map(|i| mk_lease(if i < 3 { "n1" } else { "n2" }, "w", i, epoch))
        .collect();
    store
        .write_leases(epoch, &written.iter().map(put).collect::<Vec<_>>())
        .await
        .unwrap();
    let all = leases(store).await;
    assert_eq!(all.len(), 5, "{all:?}");
    let mut on_n1: Vec<u32> = store
        .node_leases("n1")
        .await
        .unwrap()
        .iter()
        .map(|l| l.key.index)
        .collect();
    on_n1.sort_unstable();
    assert_eq!(on_n1, [0, 1, 2]);
    assert_eq!(store.node_leases("n3").await.unwrap_or_default(), []);

    // An empty batch changes nothing, and is not refused.
    store.write_leases(epoch, &[]).await.unwrap();
    assert_eq!(leases(store).await, all);

    // A put that replaces and a delete, in one batch; the epoch of a lease is what
    // its writer stamped.
    let mut grown = written[0].clone();
    grown.granted.cpu = 250;
    store
        .write_leases(
            epoch,
            &[
                put(&grown),
                LeaseChange::Delete {
                    node: "n2".into(),
                    key: written[4].key.clone(),
                },
            ],
        )
        .await
        .unwrap();
    let after = leases(store).await;
    assert_eq!(after.len(), 4);
    assert!(
        after.contains(&("n1".into(), "t.w.0".into(), 250)),
        "{after:?}"
    );
    assert!(!after.iter().any(|(_, key, _)| key == "t.w.4"));

    // A deposed writer's batch is refused, and nothing of it is written.
    let late = mk_lease("n2", "late", 0, epoch - 1);
    let refused = store
        .write_leases(
            epoch - 1,
            &[
                put(&late),
                LeaseChange::Delete {
                    node: "n1".into(),
                    key: written[1].key.clone(),
                },
            ],
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::Fenced { ours }) if ours == epoch - 1),
        "{refused:?}"
    );
    assert_eq!(leases(store).await, after, "a fenced batch changes nothing");

    // Reports: each node's are replaced as a set.
    store
        .write_reports("n1", &[report("n1", "w", 0), report("n1", "w", 1)])
        .await
        .unwrap();
    store
        .write_reports("n2", &[report("n2", "w", 3)])
        .await
        .unwrap();
    assert_eq!(reports(store).await.len(), 3);
    store
        .write_reports("n1", &[report("n1", "w", 2)])
        .await
        .unwrap();
    assert_eq!(
        reports(store).await,
        BTreeSet::from([
            ("n1".to_string(), "t.w.2".to_string()),
            ("n2".to_string(), "t.w.3".to_string())
        ])
    );
    store.write_reports("n1", &[]).await.unwrap();
    assert_eq!(reports(store).await.len(), 1);
}

#[tokio::test]
async fn the_memory_store_keeps_the_contract() {
    contract(&MemoryStore::new(), 3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    // Two epochs, so that the one before the writer's is a real one.
    store.next_epoch().unwrap();
    let epoch = store.next_epoch().unwrap();
    contract(&store, epoch).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_zookeeper_store_keeps_the_contract() {
    let zk = ZkCluster::standalone();
    let mut config = ZkConfig::new(&zk.connect_string());
    config.chroot = format!("/corral-contract-{}", std::process::id());
    let store = ZkStore::connect(config).await.unwrap();
    let epoch = store.campaign("contract").await.unwrap();
    contract(&*store, epoch).await;
}
