//! The node agent as a daemon against ZooKeeper: registers the node (an ephemeral znode
//! that the store registers again after a session expiry), follows the node's leases, and
//! runs passes on lease changes, process exits and a periodic resync.
//!
//! Fail-static: when ZooKeeper cannot be read, the agent keeps enforcing the last leases it
//! read; it never stops a workload for lack of ZooKeeper. Before it has read leases once,
//! it changes nothing.
//!
//! Enforcement never waits on ZooKeeper. Three tasks share the work: a reader that reads
//! the node's leases on every watch event (and each minute, as a safety net), vets them
//! ([`super::trust`]: a lease no leader wrote is refused and reported, never enforced), and
//! publishes them only when they differ; the enforcer, which runs passes; and a writer that
//! sends the latest reports. A read or write that hangs (a paused server, a client that has
//! not yet noticed its connection is gone) delays only itself, never the correction of
//! drift or the restart of an exited process.
//!
//! With an identity of its own, an agent whose node has no znodes yet asks a controller to
//! provision them (`/join/<node>`) and waits, changing nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use super::disconnect::{self, Contact};
use super::enforcer::{Enforcer, Wake};
use super::node::{Agent, Trigger};
use super::trust::{self, Refusal};
use crate::lease::zookeeper::{Session, ZkStore};
use crate::lease::{Lease, LeaseStore, NodeRegistration, Report, StoreError, unix_now};
use crate::metrics::AgentMetrics;

/// What the reader publishes: the leases to enforce, the refused ones with the Unix second
/// each refusal was first seen, and the ZooKeeper session the read was made in.
pub(crate) type Vetted = (Vec<Lease>, Vec<(Refusal, u64)>, i64);

/// Runs the agent until `shutdown` changes. Workloads keep running after it returns.
pub async fn run(
    store: Arc<ZkStore>,
    agent: Agent,
    registration: NodeRegistration,
    resync: Duration,
    metrics: Arc<AgentMetrics>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let node = registration.name.clone();
    let Some(leases_changed) = register(&store, &registration, &mut shutdown).await else {
        return Ok(());
    };
    tracing::info!(%node, "registered");
    metrics.readiness.ready();

    let enforcer = Enforcer::new(agent, resync)?;
    let (leases_tx, mut leases_rx) = watch::channel::<Option<Vetted>>(None);
    let (reports_tx, reports_rx) = watch::channel::<Option<Vec<Report>>>(None);
    let reader = tokio::spawn(read_leases(
        Arc::clone(&store),
        node.clone(),
        leases_changed,
        resync,
        leases_tx,
    ));
    let writer = tokio::spawn(write_reports(Arc::clone(&store), node.clone(), reports_rx));
    let result = enforce(
        enforcer,
        &store,
        &mut leases_rx,
        &reports_tx,
        &metrics,
        &mut shutdown,
    )
    .await;
    reader.abort();
    writer.abort();
    result
}

/// Registers the node and starts following its leases, trying again each second until it
/// can (an agent not provisioned yet waits here for a controller). Returns the counter of
/// lease changes, or `None` when `shutdown` changed first. Shared with the hollow agents
/// ([`super::hollow`]), so that a controller sees them register exactly as real ones.
pub(crate) async fn register(
    store: &ZkStore,
    registration: &NodeRegistration,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<watch::Receiver<u64>> {
    let node = &registration.name;
    let mut waiting = false;
    loop {
        let attempt = async {
            store.register_node(registration).await?;
            store.subscribe(&format!("/leases/{node}")).await
        };
        match attempt.await {
            Ok(receiver) => return Some(receiver),
            Err(e) => {
                // Waiting to be provisioned is said once; other failures each time.
                if !(waiting && matches!(e, StoreError::NotProvisioned { .. })) {
                    tracing::warn!(%node, error = %e, "cannot register with ZooKeeper yet; workloads are left as they are");
                }
                waiting = matches!(e, StoreError::NotProvisioned { .. });
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => return None,
                }
            }
        }
    }
}

/// Runs passes: on new leases, on process exits and restarts, and on every resync, with
/// whatever leases were read last.
async fn enforce(
    mut enforcer: Enforcer,
    // Only the session's state and id are read from it, never waited on.
    store: &ZkStore,
    leases: &mut watch::Receiver<Option<Vetted>>,
    reports: &watch::Sender<Option<Vec<Report>>>,
    metrics: &AgentMetrics,
    shutdown: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut have_leases = false;
    let mut refused = Vec::new();
    let mut reader_alive = true;
    // The leases read last, and which of them are not enforced (stopped for a lost
    // session); a new read is enforced whole or in part at once.
    let mut read_leases: Vec<Lease> = Vec::new();
    let mut not_enforced: Vec<usize> = Vec::new();
    let mut fresh_read = false;
    let mut contact = Contact::new(Instant::now());
    let session = store.session();
    // The session of the last read, and whether replicas were stopped for a lost session.
    let mut read_in = 0;
    let mut stopped_for_loss = false;
    loop {
        // `None`: the 250 ms tick with no pass due, at which the time without a session is
        // weighed again.
        let trigger: Option<Trigger> = tokio::select! {
            changed = leases.changed(), if reader_alive => {
                if changed.is_err() {
                    // The reader is gone; keep enforcing what was read.
                    reader_alive = false;
                    continue;
                }
                match leases.borrow_and_update().clone() {
                    Some((read, refusals, session)) => {
                        read_leases = read;
                        refused = refusals;
                        read_in = session;
                        have_leases = true;
                        fresh_read = true;
                    }
                    None => continue,
                }
                Some(Trigger::Leases)
            }
            wake = enforcer.wake() => match wake {
                Wake::Pass(trigger) => Some(trigger),
                Wake::Tick => None,
            },
            _ = shutdown.changed() => return Ok(()),
        };
        if !have_leases {
            continue;
        }
        let now = Instant::now();
        contact.observe(*session.borrow() == Session::Connected, now);
        // Replicas stopped for a lost session come back only with leases read in the session
        // now: had it expired, the controller may have run them elsewhere meanwhile.
        if stopped_for_loss && contact.lost_for(now).is_none() && read_in == store.session_id() {
            stopped_for_loss = false;
        }
        let lost_for = if stopped_for_loss {
            Some(contact.lost_for(now).unwrap_or(Duration::MAX))
        } else {
            contact.lost_for(now)
        };
        // Which leases the lost session stops, compared without copying any lease: this
        // runs at every 250 ms tick.
        let stop = disconnect::stopped(&read_leases, lost_for);
        stopped_for_loss |= !stop.is_empty();
        // The leases to enforce, when they change in this pass.
        let mut trigger_with = None;
        let trigger = if !std::mem::take(&mut fresh_read) && stop == not_enforced {
            trigger
        } else {
            if !stop.is_empty() && stop != not_enforced {
                tracing::warn!(
                    stopped = stop.len(),
                    "no confirmed ZooKeeper session for longer than their disconnect.stopAfterSeconds: stopping those replicas"
                );
            }
            not_enforced = stop;
            trigger_with = Some(disconnect::enforceable(&read_leases, lost_for));
            Some(Trigger::Leases)
        };
        let Some(trigger) = trigger else {
            continue;
        };
        let mut pass = enforcer.pass(trigger, trigger_with.take());
        let agent = enforcer.agent();
        trust::report_refusals(agent.node(), &mut pass.reports, &refused);
        metrics.observe(&agent.stats);
        metrics.report(&pass.reports);
        reports.send_if_modified(|current| {
            if current.as_ref() == Some(&pass.reports) {
                return false;
            }
            *current = Some(pass.reports);
            true
        });
    }
}

/// How often the leases are read again without a watch event, at least: a safety net only,
/// since the store sets its watches again after every reconnect and every new session.
/// Each read costs the ensemble one read per lease, for every node.
const LEASE_REREAD: Duration = Duration::from_secs(60);

/// Reads the node's leases after every watch event, and at least every `LEASE_REREAD` (or
/// `resync`, when longer), vets them, and publishes them when they differ from the last
/// ones published. The current leader's epoch is read again when a lease claims a higher
/// one (a new leader may have been elected since); it only ever grows.
pub(crate) async fn read_leases(
    store: Arc<ZkStore>,
    node: String,
    mut changed: watch::Receiver<u64>,
    resync: Duration,
    out: watch::Sender<Option<Vetted>>,
) {
    let mut timer = tokio::time::interval(resync.max(LEASE_REREAD));
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    let mut leader: Option<i64> = None;
    let mut accepted: Vec<Lease> = Vec::new();
    let mut refused_since: BTreeMap<(String, String), u64> = BTreeMap::new();
    loop {
        tokio::select! {
            result = changed.changed() => {
                if result.is_err() {
                    return;
                }
            }
            _ = timer.tick() => {}
        }
        let session = store.session_id();
        let read = match store.read_node_leases(&node).await {
            Ok(read) => read,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot read leases; enforcing the last ones read");
                }
                failing = true;
                continue;
            }
        };
        if failing {
            tracing::info!("leases read again");
            failing = false;
        }
        if trust::needs_leader(&read, leader) {
            match store.leader_epoch().await {
                Ok(now) => leader = leader.max(now),
                Err(e) => tracing::warn!(error = %e, "cannot read the current leader's epoch"),
            }
        }
        let vetted = trust::vet(&node, read, leader, &accepted);
        accepted.clone_from(&vetted.leases);
        let mut since = BTreeMap::new();
        let refused: Vec<(Refusal, u64)> = vetted
            .refused
            .into_iter()
            .map(|refusal| {
                let id = (refusal.key.clone(), refusal.reason.clone());
                let at = refused_since.get(&id).copied().unwrap_or_else(|| {
                    tracing::warn!(key = %refusal.key, reason = %refusal.reason, "lease refused, not enforced");
                    unix_now()
                });
                since.insert(id, at);
                (refusal, at)
            })
            .collect();
        refused_since = since;
        let published = (vetted.leases, refused, session);
        out.send_if_modified(|current| {
            if current.as_ref() == Some(&published) {
                return false;
            }
            *current = Some(published);
            true
        });
    }
}

/// Writes the latest reports whenever they change; after a failure, tries again each second
/// with whatever is latest by then.
pub(crate) async fn write_reports(
    store: Arc<ZkStore>,
    node: String,
    mut latest: watch::Receiver<Option<Vec<Report>>>,
) {
    let mut written: Option<Vec<Report>> = None;
    let mut failing = false;
    loop {
        let pending = latest.borrow_and_update().clone();
        if pending.is_some() && pending != written {
            let reports = pending.unwrap_or_default();
            match store.write_reports(&node, &reports).await {
                Ok(()) => {
                    if failing {
                        tracing::info!("reports written again");
                        failing = false;
                    }
                    written = Some(reports);
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot write reports; will try again");
                    }
                    failing = true;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        if latest.changed().await.is_err() {
            return;
        }
    }
}
