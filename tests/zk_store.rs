//! The ZooKeeper lease store against real servers and ensembles: leases and reports,
//! registration, election and fencing, watches, sessions that expire and ensembles that
//! lose their leader, a paused server, or restart altogether. The ACLs by role are in
//! tests/zk_acl.rs.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::zk::ZkCluster;

use corral::alloc::fixtures::mk_lease;
use corral::alloc::{ReplicaKey, Res};
use corral::lease::zookeeper::{Session, ZkConfig, ZkStore};
use corral::lease::{
    FORMAT_VERSION, Lease, LeaseChange, LeaseStore, NodeRegistration, Report, StoreError,
};

fn config(zk: &ZkCluster) -> ZkConfig {
    let mut config = ZkConfig::new(&zk.connect_string());
    config.chroot = format!("/corral-test-{}", std::process::id());
    config.session_timeout = Duration::from_secs(4);
    config.operation_timeout = Duration::from_secs(5);
    config
}

async fn store(zk: &ZkCluster) -> Arc<ZkStore> {
    ZkStore::connect(config(zk)).await.unwrap()
}

fn lease(node: &str, name: &str, index: u32, epoch: i64) -> Lease {
    mk_lease(node, name, index, epoch)
}

fn registration(name: &str) -> NodeRegistration {
    NodeRegistration {
        version: FORMAT_VERSION,
        name: name.into(),
        labels: BTreeMap::new(),
        capacity: Res::new(2000, 1 << 30, 1000),
        cgroup_mode: "v1".into(),
        agent_version: "test".into(),
    }
}

fn put(l: Lease) -> LeaseChange {
    LeaseChange::Put(Box::new(l))
}

async fn wait_for(what: &str, timeout: Duration, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn leases_and_reports_round_trip_in_batches() {
    let zk = ZkCluster::standalone();
    let store = store(&zk).await;
    let epoch = store.campaign("test").await.unwrap();
    let leases: Vec<Lease> = (0..600)
        .map(|i| lease(if i % 2 == 0 { "n1" } else { "n2" }, "w", i, epoch))
        .collect();
    store
        .write_leases(epoch, &leases.iter().cloned().map(put).collect::<Vec<_>>())
        .await
        .unwrap();
    let mut read = store.leases().await.unwrap();
    read.sort_by_key(|l| l.key.index);
    assert_eq!(read, leases, "600 leases, more than one multi");
    assert_eq!(store.node_leases("n1").await.unwrap().len(), 300);

    // Replacing and deleting.
    let mut changed = lease("n1", "w", 0, epoch);
    changed.granted.cpu = 250;
    store
        .write_leases(
            epoch,
            &[
                put(changed.clone()),
                LeaseChange::Delete {
                    node: "n2".into(),
                    key: ReplicaKey::new("t", "w", 1),
                },
            ],
        )
        .await
        .unwrap();
    let read = store.leases().await.unwrap();
    assert_eq!(read.len(), 599);
    assert!(read.contains(&changed));

    let report = Report {
        version: FORMAT_VERSION,
        key: Some(ReplicaKey::new("t", "w", 0)),
        node: "n1".into(),
        ..Report::default()
    };
    store
        .write_reports("n1", std::slice::from_ref(&report))
        .await
        .unwrap();
    assert_eq!(store.reports().await.unwrap(), [report]);
    store.write_reports("n1", &[]).await.unwrap();
    assert!(
        store.reports().await.unwrap().is_empty(),
        "reports of leases gone are removed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_leader_writes_and_a_deposed_one_is_fenced() {
    let zk = ZkCluster::standalone();
    let first = store(&zk).await;
    let second = store(&zk).await;
    let epoch1 = first.campaign("first").await.unwrap();
    let waiting = tokio::spawn({
        let second = second.clone();
        async move { second.campaign("second").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the second candidate waits while the first leads"
    );
    // A candidate that does not lead cannot write, whatever epoch it claims.
    let refused = second
        .write_leases(epoch1, &[put(lease("n1", "w", 0, epoch1))])
        .await;
    assert!(
        matches!(refused, Err(StoreError::Fenced { .. })),
        "{refused:?}"
    );

    first.resign().await.unwrap();
    let epoch2 = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(epoch2 > epoch1, "a later leader has a higher epoch");
    second
        .write_leases(epoch2, &[put(lease("n1", "w", 0, epoch2))])
        .await
        .unwrap();
    let stale = first
        .write_leases(epoch1, &[put(lease("n1", "w", 0, epoch1))])
        .await;
    assert!(matches!(stale, Err(StoreError::Fenced { .. })), "{stale:?}");
    assert_eq!(second.leases().await.unwrap()[0].epoch, epoch2);
}

/// The server-side fence: a leader that still believes it leads, but whose election node
/// is gone (as when its session expired while it was paused and it has not yet heard), has
/// its whole batch refused by ZooKeeper, and nothing of the batch is written.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_whose_election_node_is_gone_is_refused_by_the_server() {
    let zk = ZkCluster::standalone();
    let cfg = config(&zk);
    let leader = store(&zk).await;
    let epoch = leader.campaign("leader").await.unwrap();
    leader
        .write_leases(epoch, &[put(lease("n1", "w", 0, epoch))])
        .await
        .unwrap();

    let other = zookeeper_client::Client::connect(&zk.connect_string())
        .await
        .unwrap();
    let election = format!("{}/leader", cfg.chroot);
    let (candidates, _) = other.get_children(&election).await.unwrap();
    assert_eq!(candidates.len(), 1, "{candidates:?}");
    other
        .delete(&format!("{election}/{}", candidates[0]), None)
        .await
        .unwrap();

    let batch = [
        put(lease("n1", "w", 0, epoch)),
        put(lease("n1", "w", 1, epoch)),
        put(lease("n2", "w", 2, epoch)),
    ];
    let refused = leader.write_leases(epoch, &batch).await;
    assert!(
        matches!(refused, Err(StoreError::Fenced { .. })),
        "{refused:?}"
    );
    let leases = leader.leases().await.unwrap();
    assert_eq!(
        leases.iter().map(|l| l.key.to_string()).collect::<Vec<_>>(),
        ["t.w.0"],
        "nothing of the refused batch was written"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn registrations_are_ephemeral_and_watches_fire() {
    let zk = ZkCluster::standalone();
    let controller = store(&zk).await;
    let mut nodes = controller.subscribe("/nodes").await.unwrap();
    {
        let agent = store(&zk).await;
        agent.register_node(&registration("n1")).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), nodes.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(controller.nodes().await.unwrap()[0].name, "n1");
        // Registering again (a restart within the old session) replaces, not fails.
        let restarted = store(&zk).await;
        restarted.register_node(&registration("n1")).await.unwrap();
        assert_eq!(controller.nodes().await.unwrap().len(), 1);
        drop(agent);
        drop(restarted);
    }
    wait_for(
        "the registration to go with its session",
        Duration::from_secs(15),
        async || controller.nodes().await.unwrap().is_empty(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_session_is_rebuilt_and_the_node_registered_again() {
    let mut zk = ZkCluster::standalone();
    let agent = store(&zk).await;
    agent.register_node(&registration("n1")).await.unwrap();
    let mut leases = agent.subscribe("/leases/n1").await.unwrap();
    let first_session = agent.session_id();
    let session = agent.session();
    // Freeze the server longer than the session timeout: on resuming it expires the session.
    zk.pause(1);
    tokio::time::sleep(Duration::from_secs(6)).await;
    zk.resume(1);
    wait_for(
        "the session to expire and a new one to be built",
        Duration::from_secs(20),
        async || agent.session_id() != first_session && *session.borrow() == Session::Connected,
    )
    .await;
    let observer = store(&zk).await;
    wait_for(
        "the node to be registered again",
        Duration::from_secs(10),
        async || observer.nodes().await.is_ok_and(|n| n.len() == 1),
    )
    .await;
    // The watch is back too: a lease written now is seen.
    let epoch = observer.campaign("observer").await.unwrap();
    let seen = *leases.borrow_and_update();
    observer
        .write_leases(epoch, &[put(lease("n1", "w", 0, epoch))])
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while *leases.borrow_and_update() == seen {
            leases.changed().await.unwrap();
        }
    })
    .await
    .expect("the restored watch fires");
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_resume_and_sessions_survive_when_the_ensemble_leader_dies() {
    let mut zk = ZkCluster::ensemble(3);
    let store = store(&zk).await;
    let epoch = store.campaign("test").await.unwrap();
    store
        .write_leases(epoch, &[put(lease("n1", "w", 0, epoch))])
        .await
        .unwrap();
    let leader = zk.leader().unwrap();
    zk.kill(leader);
    let started = Instant::now();
    wait_for(
        "a write to succeed again",
        Duration::from_secs(20),
        async || {
            store
                .write_leases(epoch, &[put(lease("n1", "w", 1, epoch))])
                .await
                .is_ok()
        },
    )
    .await;
    eprintln!(
        "writes resumed {:?} after the leader died",
        started.elapsed()
    );
    assert_eq!(
        store.epoch(),
        Some(epoch),
        "the session, and so the leadership, survived"
    );
    assert_eq!(store.leases().await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_server_does_not_stop_writes() {
    let mut zk = ZkCluster::ensemble(3);
    let store = store(&zk).await;
    let epoch = store.campaign("test").await.unwrap();
    let follower = zk.ids().find(|id| Some(*id) != zk.leader()).unwrap();
    zk.pause(follower);
    for i in 0..5 {
        let write = store
            .write_leases(epoch, &[put(lease("n1", "w", i, epoch))])
            .await;
        if write.is_err() {
            // The client may have been talking to the paused server: it moves on.
            wait_for(
                "writes to go through",
                Duration::from_secs(20),
                async || {
                    store
                        .write_leases(epoch, &[put(lease("n1", "w", i, epoch))])
                        .await
                        .is_ok()
                },
            )
            .await;
        }
    }
    zk.resume(follower);
    assert_eq!(store.leases().await.unwrap().len(), 5);
    assert_eq!(store.epoch(), Some(epoch));
}

#[tokio::test(flavor = "multi_thread")]
async fn leases_survive_a_restart_of_the_whole_ensemble() {
    let mut zk = ZkCluster::ensemble(3);
    let written: Vec<Lease> = {
        let store = store(&zk).await;
        let epoch = store.campaign("test").await.unwrap();
        let leases: Vec<Lease> = (0..50).map(|i| lease("n1", "w", i, epoch)).collect();
        store
            .write_leases(epoch, &leases.iter().cloned().map(put).collect::<Vec<_>>())
            .await
            .unwrap();
        leases
    };
    for id in zk.ids().collect::<Vec<_>>() {
        zk.stop(id);
    }
    zk.restart_all();
    let store = store(&zk).await;
    let mut read = store.leases().await.unwrap();
    read.sort_by_key(|l| l.key.index);
    assert_eq!(read, written, "nothing lost");
}

/// An agent's read of a lease directory that is gone fails: read as "no leases", it would
/// stop every workload of the node; failed, the agent keeps enforcing what it read last.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_lease_directory_is_an_error_for_the_agent_not_no_leases() {
    let zk = ZkCluster::standalone();
    let store = store(&zk).await;
    let read = store.read_node_leases("gone").await;
    assert!(
        matches!(
            &read,
            Err(StoreError::Zk { source: zookeeper_client::Error::NoNode, path, .. })
                if path == "/leases/gone"
        ),
        "{read:?}"
    );
}
