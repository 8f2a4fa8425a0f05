//! ZooKeeper by role, against real servers: the controller has one digest identity and each
//! node's agent its own (plain TCP with --zookeeper-insecure here; tests/zk_tls.rs does the
//! same with a client certificate per node). Every attack runs as an agent or a stranger
//! would, with its own credentials straight through zookeeper-client, and each test checks
//! both that it fails and that the other node is untouched.
//!
//! Needs `java` and `/usr/share/java/zookeeper.jar` (`apt-get install -y zookeeper`).

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::zk::ZkCluster;
use zookeeper_client::{Acl, Acls, AuthId, Client, CreateMode, Error as ZkError, Permission};

use corral::alloc::Res;
use corral::alloc::fixtures::mk_lease;
use corral::controller::provision;
use corral::lease::acl::{AclId, AclSet, Perms};
use corral::lease::identities::AgentIdentities;
use corral::lease::zookeeper::{Credentials, Role, ZkConfig, ZkStore};
use corral::lease::{
    FORMAT_VERSION, Lease, LeaseChange, LeaseStore, NodeRegistration, Report, StoreError,
};

/// Everyone's password: the user's name and this.
const SECRET: &str = "-s3cret";

fn creds(user: &str) -> Credentials {
    Credentials::parse(&format!("{user}:{user}{SECRET}")).unwrap()
}

fn digest(user: &str) -> String {
    creds(user).acl_id().to_acl_string()
}

/// A chroot of its own per test.
fn chroot(test: &str) -> String {
    format!("/corral-acl-{}-{test}", std::process::id())
}

fn config(zk: &ZkCluster, chroot: &str, user: Option<&str>, role: Role) -> ZkConfig {
    let mut config = ZkConfig::new(&zk.connect_string());
    config.chroot = chroot.to_string();
    config.session_timeout = Duration::from_secs(4);
    config.operation_timeout = Duration::from_secs(5);
    config.credentials = user.map(creds);
    config.insecure = true;
    config.role = role;
    config
}

/// The controller `controller`, knowing the agents by `identities` (YAML).
async fn controller(zk: &ZkCluster, chroot: &str, identities: &str) -> Arc<ZkStore> {
    let mut config = config(zk, chroot, Some("controller"), Role::Controller);
    config.agents = AgentIdentities::parse("identities.yaml", identities).unwrap();
    ZkStore::connect(config).await.unwrap()
}

/// The agent of `node`, authenticated as `user`.
async fn agent(zk: &ZkCluster, chroot: &str, user: &str) -> Arc<ZkStore> {
    ZkStore::connect(config(zk, chroot, Some(user), Role::Agent))
        .await
        .unwrap()
}

/// One identity per node: node-a and node-b.
fn per_node() -> String {
    format!(
        "node-a: [\"{}\"]\nnode-b: [\"{}\"]\n",
        digest("node-a"),
        digest("node-b")
    )
}

/// A bare client below `chroot`, authenticated as `user` (anonymous with `None`): what an
/// attacker holding those credentials, or none, can do.
async fn raw(zk: &ZkCluster, chroot: &str, user: Option<&str>) -> Client {
    let mut connector = Client::connector();
    if let Some(user) = user {
        connector = connector.with_auth("digest", format!("{user}:{user}{SECRET}").as_bytes());
    }
    connector
        .connect(&zk.connect_string())
        .await
        .unwrap()
        .chroot(chroot.to_string())
        .unwrap()
}

fn registration(name: &str, cpu: i64) -> NodeRegistration {
    NodeRegistration {
        version: FORMAT_VERSION,
        name: name.into(),
        labels: BTreeMap::new(),
        capacity: Res::new(cpu, 1 << 30, 1000),
        cgroup_mode: "v1".into(),
        agent_version: "test".into(),
    }
}

fn put(lease: &Lease) -> LeaseChange {
    LeaseChange::Put(Box::new(lease.clone()))
}

/// What the leading controller does with join requests (`cluster.rs`): provision each node
/// the identities file gives ids, then remove its request.
async fn serve_joins(controller: &ZkStore) {
    let requests = controller.join_requests().await.unwrap();
    let plan = provision::plan_joins(
        &requests,
        controller.agent_identities(),
        false,
        provision::JOINS_PER_PASS,
    );
    let (_, failed) = controller.provision_nodes(&plan.serve).await;
    assert!(failed.is_empty(), "{failed:?}");
    for (node, _) in &plan.serve {
        controller.finish_join(node).await.unwrap();
    }
}

/// An agent that registers: asks to join, is provisioned, registers.
async fn join(controller: &ZkStore, agent: &ZkStore, node: &str) {
    let first = agent.register_node(&registration(node, 2000)).await;
    assert!(
        matches!(&first, Err(StoreError::NotProvisioned { node: n, .. }) if n == node),
        "{first:?}"
    );
    assert!(
        controller
            .join_requests()
            .await
            .unwrap()
            .contains(&node.to_string())
    );
    serve_joins(controller).await;
    agent
        .register_node(&registration(node, 2000))
        .await
        .unwrap();
}

/// The controller leads, node-a and node-b joined, and each has one lease (holding a secret
/// env value) and one report.
struct Cluster {
    controller: Arc<ZkStore>,
    a: Arc<ZkStore>,
    b: Arc<ZkStore>,
    lease_a: Lease,
    lease_b: Lease,
    epoch: i64,
}

async fn cluster(zk: &ZkCluster, chroot: &str, identities: &str, users: [&str; 2]) -> Cluster {
    let controller = controller(zk, chroot, identities).await;
    let epoch = controller.campaign("c1").await.unwrap();
    let a = agent(zk, chroot, users[0]).await;
    let b = agent(zk, chroot, users[1]).await;
    join(&controller, &a, "node-a").await;
    join(&controller, &b, "node-b").await;
    let lease_a = mk_lease("node-a", "web", 0, epoch);
    let lease_b = mk_lease("node-b", "web", 1, epoch);
    controller
        .write_leases(epoch, &[put(&lease_a), put(&lease_b)])
        .await
        .unwrap();
    for (store, lease) in [(&a, &lease_a), (&b, &lease_b)] {
        let report = Report {
            version: FORMAT_VERSION,
            key: Some(lease.key.clone()),
            node: lease.node.clone(),
            ..Report::default()
        };
        store.write_reports(&lease.node, &[report]).await.unwrap();
    }
    Cluster {
        controller,
        a,
        b,
        lease_a,
        lease_b,
        epoch,
    }
}

fn anyone_all() -> [Acl; 1] {
    [Acl::new(Permission::ALL, AuthId::anyone())]
}

fn refused<T: std::fmt::Debug>(what: &str, result: Result<T, ZkError>) {
    assert!(
        matches!(result, Err(ZkError::NoAuth)),
        "{what}: expected NoAuth, got {result:?}"
    );
}

/// The controller's view is as the test set it up: both nodes registered with their real
/// capacity, each with exactly its lease and report.
async fn assert_untouched(c: &Cluster) {
    let nodes = c.controller.nodes().await.unwrap();
    assert_eq!(
        nodes,
        [registration("node-a", 2000), registration("node-b", 2000)]
    );
    let mut leases = c.controller.leases().await.unwrap();
    leases.sort_by_key(|l| l.node.clone());
    assert_eq!(leases, [c.lease_a.clone(), c.lease_b.clone()]);
    assert_eq!(c.controller.reports().await.unwrap().len(), 2);
    assert_eq!(c.controller.epoch(), Some(c.epoch));
}

#[tokio::test(flavor = "multi_thread")]
async fn each_agent_reads_its_own_leases_and_writes_its_own_reports_only() {
    let zk = ZkCluster::standalone();
    let chroot = chroot("own");
    let c = cluster(&zk, &chroot, &per_node(), ["node-a", "node-b"]).await;
    assert_eq!(
        c.a.node_leases("node-a").await.unwrap(),
        std::slice::from_ref(&c.lease_a)
    );
    let read = c.a.read_node_leases("node-a").await.unwrap();
    assert_eq!(read.len(), 1);
    assert!(
        read[0].written > c.epoch,
        "a lease is written after its epoch"
    );
    let other = c.a.node_leases("node-b").await;
    assert!(
        matches!(&other, Err(StoreError::Zk { source: ZkError::NoAuth, path, .. }) if path == "/leases/node-b"),
        "{other:?}"
    );
    // Writing another node's reports is refused, and leaves them as they were.
    let forged = Report {
        version: FORMAT_VERSION,
        key: Some(c.lease_b.key.clone()),
        node: "node-b".into(),
        problems: vec!["forged".into()],
        ..Report::default()
    };
    assert!(c.a.write_reports("node-b", &[forged]).await.is_err());
    // The agent sees the epoch of the leader, and the ACLs are the documented ones.
    assert_eq!(c.a.leader_epoch().await.unwrap(), Some(c.epoch));
    let admin = raw(&zk, &chroot, Some("controller")).await;
    let (acl, _) = admin.get_acl("/leases/node-a/t.web.0").await.unwrap();
    let acl = AclSet::from_zk(&acl);
    assert_eq!(
        acl.perms_of(&creds("controller").acl_id()),
        Some(Perms::ALL)
    );
    assert_eq!(acl.perms_of(&creds("node-a").acl_id()), Some(Perms::READ));
    assert_eq!(acl.ids().count(), 2, "{acl}");
    let (acl, _) = admin.get_acl("/reports/node-a").await.unwrap();
    assert_eq!(
        AclSet::from_zk(&acl).perms_of(&creds("node-a").acl_id()),
        Some(Perms::READ | Perms::WRITE)
    );
    let (acl, stat) = admin.get_acl("/nodes/node-a/agent").await.unwrap();
    assert_ne!(stat.ephemeral_owner, 0);
    assert_eq!(
        AclSet::from_zk(&acl).perms_of(&creds("controller").acl_id()),
        None,
        "the agent's own, empty, ephemeral znode"
    );
    assert_untouched(&c).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_nodes_identity_cannot_forge_a_lease_register_another_node_or_jam_the_election() {
    let zk = ZkCluster::standalone();
    let chroot = chroot("forge");
    let c = cluster(&zk, &chroot, &per_node(), ["node-a", "node-b"]).await;
    let attacker = raw(&zk, &chroot, Some("node-b")).await;
    let persistent = CreateMode::Persistent.with_acls(Acls::anyone_all());

    // A lease for node-a that runs `id` as root there: created, replaced, removed.
    let mut evil = mk_lease("node-a", "evil", 0, c.epoch);
    evil.work = corral::cgroup::tree::Work::Command {
        args: vec!["/bin/sh".into(), "-c".into(), "id > /tmp/pwned".into()],
        env: vec![],
        working_dir: None,
        restart: corral::api::workload::RestartPolicy::Never,
        run_as: corral::alloc::admit::RunAs {
            uid: 0,
            gid: 0,
            groups: vec![],
        },
    };
    let data = serde_json::to_vec(&evil).unwrap();
    refused(
        "create a lease for node-a",
        attacker
            .create("/leases/node-a/t.evil.0", &data, &persistent)
            .await,
    );
    refused(
        "replace node-a's lease",
        attacker
            .set_data("/leases/node-a/t.web.0", &data, None)
            .await,
    );
    refused(
        "delete node-a's lease",
        attacker.delete("/leases/node-a/t.web.0", None).await,
    );
    refused(
        "open node-a's leases to all",
        attacker
            .set_acl("/leases/node-a/t.web.0", &anyone_all(), None)
            .await,
    );
    refused(
        "create a lease directory for a new node",
        attacker.create("/leases/fake", b"", &persistent).await,
    );

    // A fake node with a huge capacity, in every place it could go.
    let huge = serde_json::to_vec(&registration("fake", 1_000_000)).unwrap();
    refused(
        "register a fake node",
        attacker.create("/nodes/fake", &huge, &persistent).await,
    );
    refused(
        "register below node-a",
        attacker
            .create("/nodes/node-a/agent-2", &huge, &persistent)
            .await,
    );
    refused(
        "change node-a's registration",
        attacker.set_data("/nodes/node-a", &huge, None).await,
    );
    refused(
        "take node-a's liveness",
        attacker.delete("/nodes/node-a/agent", None).await,
    );
    refused(
        "write into node-a's liveness",
        attacker.set_data("/nodes/node-a/agent", &huge, None).await,
    );
    // Its own node takes a registration, but one that outlives its session is not believed.
    let own = format!("/nodes/node-b/{}", corral::lease::zookeeper::REGISTRATION);
    attacker.delete(&own, None).await.unwrap();
    attacker.create(&own, b"", &persistent).await.unwrap();
    attacker
        .set_data("/nodes/node-b", &huge, None)
        .await
        .unwrap();
    assert_eq!(
        c.controller.nodes().await.unwrap(),
        [registration("node-a", 2000)],
        "a registration that outlives its session is not one"
    );
    attacker.delete(&own, None).await.unwrap();
    c.b.register_node(&registration("node-b", 2000))
        .await
        .unwrap();

    // The election: a persistent candidate that would sort first, and the leader's status.
    refused(
        "create /leader/c-0000000000",
        attacker
            .create("/leader/c-0000000000", b"evil", &persistent)
            .await,
    );
    refused(
        "write /status",
        attacker.set_data("/status", b"{}", None).await,
    );
    refused(
        "take over /leader",
        attacker.set_acl("/leader", &anyone_all(), None).await,
    );

    // A join request for a name the identities file does not know provisions nothing.
    let ephemeral = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
    attacker
        .create("/join/fake", b"", &ephemeral)
        .await
        .unwrap();
    serve_joins(&c.controller).await;
    assert!(attacker.check_stat("/nodes/fake").await.unwrap().is_none());

    assert_untouched(&c).await;
    // A second controller still follows the first, and leads when it resigns.
    let standby = controller(&zk, &chroot, &per_node()).await;
    let waiting = tokio::spawn({
        let standby = standby.clone();
        async move { standby.campaign("c2").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the standby waits for the leader");
    c.controller.resign().await.unwrap();
    let epoch = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the standby leads once the leader resigns")
        .unwrap()
        .unwrap();
    assert!(epoch > c.epoch);
}

#[tokio::test(flavor = "multi_thread")]
async fn nobody_else_reads_leases_reports_or_status() {
    let zk = ZkCluster::standalone();
    let chroot = chroot("read");
    let c = cluster(&zk, &chroot, &per_node(), ["node-a", "node-b"]).await;
    c.controller
        .write_status(b"{\"pending\":[]}")
        .await
        .unwrap();
    for (who, user) in [("node-b", Some("node-b")), ("anyone", None)] {
        let client = raw(&zk, &chroot, user).await;
        for path in [
            "/leases/node-a/t.web.0",
            "/leases/node-a",
            "/reports/node-a",
            "/nodes/node-a",
            "/status",
        ] {
            refused(&format!("{who} reads {path}"), client.get_data(path).await);
        }
        for path in ["/leases/node-a", "/nodes", "/leases", "/reports", "/"] {
            refused(
                &format!("{who} lists {path}"),
                client.list_children(path).await,
            );
        }
        // The election holds controller names only, readable so agents learn the epoch.
        let candidates = client.list_children("/leader").await.unwrap();
        assert_eq!(candidates.len(), 1);
        let (name, _) = client
            .get_data(&format!("/leader/{}", candidates[0]))
            .await
            .unwrap();
        assert_eq!(name, b"c1");
    }
    // Without credentials a store sees no leases either.
    let anonymous = ZkStore::connect(config(&zk, &chroot, None, Role::Agent))
        .await
        .unwrap();
    assert!(anonymous.leases().await.is_err());
    assert_untouched(&c).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_identity_shared_by_every_agent_still_works_and_is_weaker() {
    let zk = ZkCluster::standalone();
    let chroot = chroot("shared");
    let identities = format!("\"*\": [\"{}\"]\n", digest("agents"));
    assert!(
        AgentIdentities::parse("f", &identities).unwrap().shared(),
        "the controller warns about it"
    );
    let c = cluster(&zk, &chroot, &identities, ["agents", "agents"]).await;
    assert_eq!(
        c.a.node_leases("node-a").await.unwrap(),
        std::slice::from_ref(&c.lease_a)
    );
    assert_eq!(
        c.b.node_leases("node-b").await.unwrap(),
        std::slice::from_ref(&c.lease_b)
    );
    // The weakness the README states: one agent reads the other's leases.
    assert_eq!(
        c.b.node_leases("node-a").await.unwrap(),
        std::slice::from_ref(&c.lease_a)
    );
    // It still cannot write them: only the controller does.
    let attacker = raw(&zk, &chroot, Some("agents")).await;
    refused(
        "replace node-a's lease",
        attacker
            .set_data("/leases/node-a/t.web.0", b"{}", None)
            .await,
    );
    assert_untouched(&c).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_with_the_controllers_identity_provisions_its_own_node() {
    // corral run --zookeeper: the controller and this machine's agent in one process.
    let zk = ZkCluster::standalone();
    let chroot = chroot("run");
    let store = controller(&zk, &chroot, "{}").await;
    store
        .register_node(&registration("solo", 2000))
        .await
        .expect("no join request: the controller's identity provisions its node itself");
    let epoch = store.campaign("run").await.unwrap();
    let lease = mk_lease("solo", "web", 0, epoch);
    store.write_leases(epoch, &[put(&lease)]).await.unwrap();
    assert_eq!(store.node_leases("solo").await.unwrap(), [lease]);
    refused(
        "anyone reads solo's lease",
        raw(&zk, &chroot, None)
            .await
            .get_data("/leases/solo/t.web.0")
            .await,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_creates_nothing_before_a_controller_prepared_the_layout() {
    let zk = ZkCluster::standalone();
    let chroot = chroot("early");
    let a = agent(&zk, &chroot, "node-a").await;
    let early = a.register_node(&registration("node-a", 2000)).await;
    assert!(
        matches!(&early, Err(StoreError::NotProvisioned { detail, .. }) if detail.contains("no controller")),
        "{early:?}"
    );
    let root = Client::connect(&zk.connect_string()).await.unwrap();
    assert!(
        root.check_stat(&chroot).await.unwrap().is_none(),
        "the chroot is the controller's to create"
    );
    // The controller then takes the layout as its own.
    let c = controller(&zk, &chroot, &per_node()).await;
    join(&c, &a, "node-a").await;
    let (acl, _) = raw(&zk, &chroot, Some("controller"))
        .await
        .get_acl("/")
        .await
        .unwrap();
    assert_eq!(
        AclSet::from_zk(&acl),
        AclSet::default().grant([&creds("controller").acl_id()], Perms::ALL)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_layout_someone_else_owns_is_refused_and_an_older_corrals_is_taken_over() {
    let zk = ZkCluster::standalone();
    // Someone else's chroot: the controller may not set its ACL, and says so.
    let taken = chroot("taken");
    let other = Client::connector()
        .with_auth("digest", b"other:other")
        .connect(&zk.connect_string())
        .await
        .unwrap();
    let theirs = AclSet::default()
        .grant([&AclId::digest("other", "other")], Perms::ALL)
        .to_zk();
    other
        .create(
            &taken,
            b"",
            &CreateMode::Persistent.with_acls(theirs.as_slice().into()),
        )
        .await
        .unwrap();
    let error = ZkStore::connect(config(&zk, &taken, Some("controller"), Role::Controller))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::Acl { path, .. } if path == &taken),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("unreadable to this identity"), "{message}");
    assert!(message.contains("--zookeeper-chroot"), "{message}");
    assert!(!message.contains(SECRET), "{message}");

    // An older corral's layout, made with this same identity: every znode readable by
    // anyone, and the agent's registration the ephemeral /nodes/<node> itself.
    let old = chroot("old");
    let legacy = raw(&zk, "/", Some("controller")).await;
    let readable = [
        Acl::new(Permission::ALL, AuthId::authed()),
        Acl::new(Permission::READ, AuthId::anyone()),
    ];
    let persistent = CreateMode::Persistent.with_acls(readable.as_slice().into());
    for path in [
        "",
        "/nodes",
        "/leader",
        "/leases",
        "/leases/node-a",
        "/reports",
    ] {
        legacy
            .create(&format!("{old}{path}"), b"", &persistent)
            .await
            .unwrap();
    }
    let lease = mk_lease("node-a", "web", 0, 1);
    legacy
        .create(
            &format!("{old}/leases/node-a/t.web.0"),
            &serde_json::to_vec(&lease).unwrap(),
            &persistent,
        )
        .await
        .unwrap();
    let ephemeral = CreateMode::Ephemeral.with_acls(readable.as_slice().into());
    legacy
        .create(&format!("{old}/nodes/node-a"), b"{}", &ephemeral)
        .await
        .unwrap();

    let c = controller(&zk, &old, &per_node()).await;
    let known = c.known_nodes().await.unwrap();
    let nodes = provision::known_nodes(known, c.agent_identities());
    let (changed, failed) = c.provision_nodes(&nodes).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(changed, ["node-a", "node-b"]);
    let anyone = raw(&zk, &old, None).await;
    refused(
        "anyone reads the old lease",
        anyone.get_data("/leases/node-a/t.web.0").await,
    );
    refused(
        "anyone lists /leases",
        anyone.list_children("/leases").await,
    );
    let a = agent(&zk, &old, "node-a").await;
    assert_eq!(a.node_leases("node-a").await.unwrap(), [lease]);
    a.register_node(&registration("node-a", 2000))
        .await
        .expect("the old registration was replaced by the node's directory");
    assert_eq!(c.nodes().await.unwrap(), [registration("node-a", 2000)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn in_open_mode_a_persistent_or_misnamed_election_child_is_ignored() {
    let zk = ZkCluster::standalone();
    let chroot = chroot("open-election");
    let open = ZkStore::connect(config(&zk, &chroot, None, Role::Controller))
        .await
        .unwrap();
    assert!(open.identity().is_empty());
    let stranger = raw(&zk, &chroot, None).await;
    let persistent = CreateMode::Persistent.with_acls(Acls::anyone_all());
    for name in ["c-0000000000", "c-0", "x"] {
        stranger
            .create(&format!("/leader/{name}"), b"evil", &persistent)
            .await
            .unwrap();
    }
    let epoch = tokio::time::timeout(Duration::from_secs(5), open.campaign("c1"))
        .await
        .expect("the persistent c-0000000000 does not hold the election")
        .unwrap();
    assert_eq!(open.leader_epoch().await.unwrap(), Some(epoch));
    // One made while a second candidate waits, with a name that sorts first, does not
    // get ahead of it: sequence numbers follow creation, and its name lies.
    let second = ZkStore::connect(config(&zk, &chroot, None, Role::Controller))
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let second = second.clone();
        async move { second.campaign("c2").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished());
    let ephemeral = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
    stranger.delete("/leader/c-0000000000", None).await.unwrap();
    stranger
        .create("/leader/c-0000000000", b"evil", &ephemeral)
        .await
        .unwrap();
    open.resign().await.unwrap();
    let epoch2 = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the impostor made after c2 is not waited for")
        .unwrap()
        .unwrap();
    assert!(epoch2 > epoch);
    assert_eq!(second.leader_epoch().await.unwrap(), Some(epoch2));
    let lease = mk_lease("n1", "w", 0, epoch2);
    second.write_leases(epoch2, &[put(&lease)]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn digest_credentials_without_tls_are_refused_unless_insecure() {
    let zk = ZkCluster::standalone();
    let chroot = chroot("insecure");
    let mut strict = config(&zk, &chroot, Some("controller"), Role::Controller);
    strict.insecure = false;
    let refused = ZkStore::connect(strict).await;
    assert!(matches!(refused, Err(StoreError::Insecure)), "{refused:?}");
    let root = Client::connect(&zk.connect_string()).await.unwrap();
    assert!(
        root.check_stat(&chroot).await.unwrap().is_none(),
        "nothing sent"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials");
    std::fs::write(&file, format!("controller:controller{SECRET}\n")).unwrap();
    let hosts = zk.connect_string();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let corral = |args: &[&str], insecure: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_corral"));
        command
            .args(args)
            .args(["--zookeeper", &hosts, "--zookeeper-chroot", &chroot])
            .arg("--zookeeper-credentials-file")
            .arg(&file)
            .env_remove("CORRAL_ZOOKEEPER")
            .env_remove("CORRAL_ZK_CREDENTIALS")
            .env_remove("CORRAL_ZK_INSECURE");
        if insecure {
            command.arg("--zookeeper-insecure");
        }
        command.output().unwrap()
    };
    let source = format!("dir:{}", manifests.display());
    for args in [
        vec!["status"],
        vec!["agent", "--node", "n1"],
        vec!["controller", "--source", &source],
        vec!["zk", "whoami"],
    ] {
        let output = corral(&args, false);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "corral {args:?} ran");
        assert!(
            stderr.contains("--zookeeper-insecure") && stderr.contains("clear text"),
            "corral {args:?}: {stderr}"
        );
        assert!(!stderr.contains(SECRET), "corral {args:?}: {stderr}");
    }
    assert!(root.check_stat(&chroot).await.unwrap().is_none());

    let output = corral(&["status", "-o", "json"], true);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains(SECRET), "{stderr}");
    let output = corral(&["zk", "whoami"], true);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        digest("controller")
    );
    // The controller wants to know the agents before it gives their nodes znodes.
    let output = corral(&["controller", "--source", &source], true);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--agent-identities is required"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn zk_digest_prints_the_acl_id_of_user_and_password() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(["zk", "digest"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"super:test\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "digest:super:D/InIHSb7yEEbrWz8b9l71RjZJU=\n"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(["zk", "digest"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("user:password"));
}
