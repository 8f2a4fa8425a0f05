//! The cluster controller: one of several replicas leads, elected through ZooKeeper; the
//! leader allocates over the registered nodes and writes the leases, fenced by its epoch.
//! It reconciles when the manifests change, when a node registers or goes, when a missing
//! node's grace period ends, and periodically (observed use feeds the `Usage` strategy).
//!
//! The leader also gives nodes their znodes in ZooKeeper ([`super::provision`]): every
//! node it knows when it starts to lead, and each agent that asks to join.
//!
//! Between passes the leader keeps what it read in a [`ClusterCache`], kept current by
//! watches: a pass reads only the registrations and reports that changed, and everything
//! whole at each new leadership, after any failure and every
//! [`super::cache::FULL_READ`].
//!
//! Guarantees: a controller that is not the leader never writes (the store refuses a write
//! whose election znode is gone); on a lost session it stops writing and runs for
//! leadership again; while disconnected it does nothing. Where it stands in the election
//! is one [`Leadership`], moved by one [`Leader`]. It trusts a node's registration
//! only from that node's own znode (see [`ZkStore::nodes`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::cache::ClusterCache;
use super::leadership::{Leader, Leadership};
use super::nodes::NodeTracker;
use super::provision::{self, JOINS_PER_PASS};
use super::{ControllerPass, UsageHistory, reconcile};
use crate::alloc::plan::Pending;
use crate::api::{ResourcePolicy, Workload};
use crate::lease::zookeeper::ZkStore;
use crate::lease::{Report, StoreError, unix_now};
use crate::metrics::ControllerMetrics;
use crate::source::watch::{ManifestSource, Reload};

/// Where the controller's desired objects come from: manifest files, or the Kubernetes
/// API (see [`crate::operator`]).
pub trait Desired: Send {
    /// Waits for the next change of the objects.
    fn changed(&mut self) -> impl Future<Output = Reload> + Send;
    /// The workloads to allocate now.
    fn workloads(&self) -> &[Workload];
    /// The policies now.
    fn policies(&self) -> &[ResourcePolicy];
    /// Why some objects are not used as written, for a person.
    fn problems(&self) -> &[String];
    /// Reads whatever changed while this controller did not lead, before its first pass
    /// as leader: a standby does not follow changes, and a first pass on what it read at
    /// start would undo everything since.
    fn catch_up(&mut self);
    /// Told whether this controller leads, and with which epoch.
    fn leading(&mut self, _epoch: Option<i64>) {}
    /// True when the reports should be read again right after a pass, not only at the
    /// next resync.
    fn wants_reports(&self) -> bool {
        false
    }
    /// Told each pass this controller made while leading, with the nodes it allocated on
    /// and the reports it read last.
    fn passed(&mut self, _pass: &ControllerPass, _nodes: &[String], _reports: &[Report]) {}
    /// True when the reports should be read whenever an agent writes one (debounced), for
    /// [`Desired::reported`]; otherwise they are read at each resync.
    fn follows_reports(&self) -> bool {
        false
    }
    /// Told the reports, read again after agents wrote new ones, while leading.
    fn reported(&mut self, _reports: &[Report]) {}
}

impl Desired for ManifestSource {
    async fn changed(&mut self) -> Reload {
        ManifestSource::changed(self).await
    }
    fn catch_up(&mut self) {
        ManifestSource::catch_up(self);
    }
    fn workloads(&self) -> &[Workload] {
        &self.workloads
    }
    fn policies(&self) -> &[ResourcePolicy] {
        &self.policies
    }
    fn problems(&self) -> &[String] {
        &self.problems
    }
}

/// How long after an agent's report the reports are read, so that a burst of them makes
/// one read.
const REPORTS_DEBOUNCE: Duration = Duration::from_millis(100);

/// The leader's summary in `/status`, for `corral status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControllerStatus {
    /// The leader's identity.
    pub leader: String,
    /// Its epoch.
    pub epoch: i64,
    /// Unix seconds of the last pass.
    pub updated_at: u64,
    /// Replicas without a node, with the reason.
    pub pending: Vec<Pending>,
    /// Nodes allocated on.
    pub nodes: Vec<String>,
    /// Problems of the last version of the manifests, which was refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manifest_problems: Vec<String>,
    /// Where each command workload's rollout stands.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollouts: Vec<super::rollout::Rollout>,
    /// Replicas kept on their missing node (`disconnect`) or, for now, on their cordoned
    /// node (`corral drain`), each with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<String>,
    /// Nodes an operator cordoned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cordoned: Vec<String>,
}

/// Runs for leadership and, while leading, keeps the leases in line with the manifests
/// and the nodes, until `shutdown` changes; then resigns, so that another controller takes
/// over at once.
///
/// # Errors
/// The store could not be watched at all.
pub async fn run<D: Desired>(
    store: Arc<ZkStore>,
    source: D,
    identity: &str,
    resync: Duration,
    metrics: &ControllerMetrics,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let mut controller = Controller::follow(store, source, identity, metrics).await?;
    let mut leader = Leader::new(
        Arc::clone(&controller.store),
        identity,
        metrics.leader.clone(),
    );
    loop {
        controller.source.leading(None);
        let Some(epoch) = leader.campaign(&mut shutdown).await else {
            return Ok(());
        };
        let mut term = controller.take_over(epoch, resync).await;
        leader.announce();
        loop {
            if !std::mem::take(&mut term.reports_only)
                && leader.connected()
                && controller.pass(&mut term).await == Passed::Fenced
            {
                leader.fenced();
                break;
            }
            match controller.wait(&mut term, &mut leader, &mut shutdown).await {
                Next::Pass => {}
                Next::Campaign => break,
                Next::Shutdown => {
                    controller.source.leading(None);
                    leader.resign().await;
                    return Ok(());
                }
            }
        }
    }
}

/// What the controller keeps across leaderships: the store's watches, what it read, and
/// the nodes' history.
struct Controller<'a, D> {
    store: Arc<ZkStore>,
    source: D,
    identity: &'a str,
    metrics: &'a ControllerMetrics,
    registrations: watch::Receiver<u64>,
    joins: watch::Receiver<u64>,
    cordons: watch::Receiver<u64>,
    /// Reports are followed for the source's status and for rollouts, which go on as
    /// replaced replicas become ready; `None` once the watch ended.
    reports_changed: Option<watch::Receiver<u64>>,
    cache: ClusterCache,
    tracker: NodeTracker,
    usage: UsageHistory,
    reports: Vec<Report>,
}

/// What one leadership keeps between its passes.
struct Term {
    epoch: i64,
    resync: tokio::time::Interval,
    /// A new read of the reports alone needs no allocation pass.
    reports_only: bool,
    /// A rollout waits for reports: while one does, a new read of them calls for a pass.
    rolling: bool,
    /// When a replica kept on its missing node may move.
    release_at: Option<Instant>,
    /// The cordoned nodes, read again only after the watch on `/cordons` fires (and at
    /// each new leadership), not at every pass.
    cordoned: Option<BTreeSet<String>>,
    /// More agents wait to join than one pass serves.
    more_joins: bool,
}

/// How a pass ended.
#[derive(Debug, PartialEq, Eq)]
enum Passed {
    /// Made, or failed and to be tried again at the next change.
    Done,
    /// Refused: another controller leads now.
    Fenced,
}

/// What to do after a wait.
enum Next {
    /// Pass (unless only the reports were read: [`Term::reports_only`]).
    Pass,
    /// Leadership was lost: run for it again.
    Campaign,
    /// Shut down.
    Shutdown,
}

impl<'a, D: Desired> Controller<'a, D> {
    /// Sets the watches on the nodes, the join requests, the cordons and the reports.
    async fn follow(
        store: Arc<ZkStore>,
        source: D,
        identity: &'a str,
        metrics: &'a ControllerMetrics,
    ) -> Result<Self, StoreError> {
        let (registrations, nodes_log) = store.subscribe_changes("/nodes").await?;
        let joins = store.subscribe("/join").await?;
        let cordons = store.subscribe("/cordons").await?;
        let (reports_changed, reports_log) = store.subscribe_changes("/reports").await?;
        let cache = ClusterCache::new(Arc::clone(&store), nodes_log, reports_log);
        Ok(Controller {
            store,
            source,
            identity,
            metrics,
            registrations,
            joins,
            cordons,
            reports_changed: Some(reports_changed),
            cache,
            tracker: NodeTracker::default(),
            usage: UsageHistory::new(20),
            reports: Vec::new(),
        })
    }

    /// The start of a leadership: everything is read again (the predecessor may have
    /// written since), the known nodes and waiting agents are provisioned, and the source
    /// catches up with what changed while this controller stood by.
    async fn take_over(&mut self, epoch: i64, resync: Duration) -> Term {
        self.cache.invalidate();
        provision_known(&self.store).await;
        let more_joins = serve_joins(&self.store).await;
        self.source.catch_up();
        self.source.leading(Some(epoch));
        let mut resync = tokio::time::interval(resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Term {
            epoch,
            resync,
            reports_only: false,
            rolling: false,
            release_at: None,
            cordoned: None,
            more_joins,
        }
    }

    /// One pass, and what follows it: the term learns whether a rollout or a drain goes
    /// on and when a kept replica may move; the source, the metrics and `/status` are told.
    async fn pass(&mut self, term: &mut Term) -> Passed {
        match self.allocate(term).await {
            Ok((done, nodes)) => {
                // A rollout or a drain goes on as replicas become ready elsewhere.
                term.rolling =
                    done.rollouts.iter().any(|r| r.in_progress()) || !done.draining.is_empty();
                term.release_at = done.next_release().map(|d| Instant::now() + d);
                for held in &done.held {
                    tracing::debug!(replica = %held.lease.key, reason = %held.reason, "kept on its missing node");
                }
                self.metrics.passed(&done);
                if self.source.wants_reports() {
                    self.read_reports().await;
                }
                self.source.passed(&done, &nodes, &self.reports);
                Passed::Done
            }
            Err(StoreError::Fenced { .. }) => Passed::Fenced,
            Err(e) => {
                self.cache.invalidate();
                term.cordoned = None;
                tracing::warn!(error = %e, "controller pass failed; retrying on the next change");
                Passed::Done
            }
        }
    }

    /// The nodes available now, the allocation, the leases written. Returns the pass and
    /// the nodes it allocated on.
    async fn allocate(
        &mut self,
        term: &mut Term,
    ) -> Result<(ControllerPass, Vec<String>), StoreError> {
        let (registered, remembered) = self.cache.registrations().await?;
        self.tracker.observe(registered, remembered, Instant::now());
        let nodes = self
            .tracker
            .available(Instant::now(), self.source.policies());
        if term.cordoned.is_none() {
            term.cordoned = Some(self.store.cordons().await?.into_keys().collect());
        }
        let cordoned = term.cordoned.clone().unwrap_or_default();
        let done = reconcile(
            &self.cache,
            term.epoch,
            self.source.workloads(),
            self.source.policies(),
            &super::Seen {
                nodes: &nodes,
                missing: &self.tracker.missing(Instant::now()),
                usage: &self.usage,
                reports: &self.reports,
                cordoned: &cordoned,
            },
        )
        .await?;
        if done.changes > 0 {
            tracing::info!(
                changes = done.changes,
                pending = done.plan.pending.len(),
                "leases written"
            );
        }
        let names: Vec<String> = nodes.into_iter().map(|n| n.name).collect();
        self.publish(term.epoch, &done, &names).await;
        Ok((done, names))
    }

    /// Waits for what calls for the next pass: a change of the objects, the nodes, the
    /// cordons or the join requests, reports (read here when the source or a rollout
    /// follows them), the resync, a grace period's end; or for the end of the leadership.
    async fn wait(
        &mut self,
        term: &mut Term,
        leader: &mut Leader<ZkStore>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Next {
        // A node's grace ending, or a replica kept on a missing node free to move.
        let deadline = [
            self.tracker.next_deadline(self.source.policies()),
            term.release_at,
        ]
        .into_iter()
        .flatten()
        .min()
        .map(tokio::time::Instant::from_std);
        tokio::select! {
            reload = self.source.changed() => {
                if reload == Reload::Kept {
                    self.publish(term.epoch, &ControllerPass::default(), &[]).await;
                }
            }
            _ = self.registrations.changed() => {}
            _ = self.cordons.changed() => term.cordoned = None,
            _ = self.joins.changed() => {
                term.more_joins = serve_joins(&self.store).await;
                term.reports_only = true;
            }
            () = tokio::time::sleep(Duration::from_secs(1)), if term.more_joins => {
                term.more_joins = serve_joins(&self.store).await;
                term.reports_only = true;
            }
            changed = async {
                match self.reports_changed.as_mut() {
                    Some(rx) => rx.changed().await,
                    None => std::future::pending().await,
                }
            } => self.reports_changed(changed.is_ok(), term).await,
            _ = term.resync.tick() => {
                self.cache.expire(Instant::now());
                term.more_joins = serve_joins(&self.store).await;
                if self.read_reports().await {
                    self.usage.record(&self.reports);
                }
            }
            () = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {}
            state = leader.session_changed() => {
                if state == Leadership::Campaigning {
                    return Next::Campaign;
                }
            }
            _ = shutdown.changed() => return Next::Shutdown,
        }
        Next::Pass
    }

    /// Agents wrote reports (or, `ok` false, the watch on them ended): read them once per
    /// burst when the source or a rollout follows them; a pass follows only for a rollout.
    async fn reports_changed(&mut self, ok: bool, term: &mut Term) {
        if let Some(rx) = self.reports_changed.as_mut() {
            rx.borrow_and_update();
        }
        if !ok {
            self.reports_changed = None;
            term.reports_only = true;
        } else if self.source.follows_reports() || term.rolling {
            // Agents write their reports one by one: read them once per burst.
            tokio::time::sleep(REPORTS_DEBOUNCE).await;
            if let Some(rx) = self.reports_changed.as_mut() {
                rx.borrow_and_update();
            }
            if self.read_reports().await {
                self.source.reported(&self.reports);
            }
            term.reports_only = !term.rolling;
        } else {
            term.reports_only = true;
        }
    }

    /// Reads the reports again; false (with a warning) when they cannot be read.
    async fn read_reports(&mut self) -> bool {
        match self.cache.read_reports().await {
            Ok(read) => {
                self.reports = read;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read reports");
                false
            }
        }
    }

    async fn publish(&self, epoch: i64, done: &ControllerPass, nodes: &[String]) {
        publish(&self.store, epoch, self.identity, &self.source, done, nodes).await;
    }
}

/// Provisions every node that has znodes or that the identities file names, with the ids
/// the file gives it now: after a failover, a change of the file, or an upgrade from a
/// layout with other ACLs. Failures are logged; the nodes concerned are tried again at the
/// next leadership.
async fn provision_known(store: &ZkStore) {
    let known = match store.known_nodes().await {
        Ok(known) => known,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the provisioned nodes");
            return;
        }
    };
    let nodes = provision::known_nodes(known, store.agent_identities());
    let (changed, failed) = store.provision_nodes(&nodes).await;
    if !changed.is_empty() {
        tracing::info!(nodes = ?changed, "nodes provisioned");
    }
    for (node, e) in failed {
        tracing::warn!(%node, error = %e, "cannot provision the node");
    }
}

/// Serves the agents' join requests: provisions each node the identities file gives ids,
/// at most [`JOINS_PER_PASS`] of them, and removes their requests. Returns true when more
/// wait.
async fn serve_joins(store: &ZkStore) -> bool {
    let requests = match store.join_requests().await {
        Ok(requests) => requests,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the join requests");
            return false;
        }
    };
    if requests.is_empty() {
        return false;
    }
    let plan = provision::plan_joins(
        &requests,
        store.agent_identities(),
        store.identity().is_empty(),
        JOINS_PER_PASS,
    );
    for (node, reason) in &plan.ignored {
        tracing::debug!(%node, reason, "join request ignored");
    }
    let (_, failed) = store.provision_nodes(&plan.serve).await;
    for (node, _) in &plan.serve {
        if let Some((_, e)) = failed.iter().find(|(n, _)| n == node) {
            tracing::warn!(%node, error = %e, "cannot provision the node that asked to join");
            continue;
        }
        tracing::info!(%node, "node provisioned on its request");
        if let Err(e) = store.finish_join(node).await {
            tracing::warn!(%node, error = %e, "cannot remove the join request");
        }
    }
    plan.deferred > 0
}

async fn publish<D: Desired>(
    store: &ZkStore,
    epoch: i64,
    identity: &str,
    source: &D,
    done: &ControllerPass,
    nodes: &[String],
) {
    let status = ControllerStatus {
        leader: identity.to_string(),
        epoch,
        updated_at: unix_now(),
        pending: done.plan.pending.clone(),
        nodes: nodes.to_vec(),
        manifest_problems: source.problems().to_vec(),
        rollouts: done.rollouts.clone(),
        kept: done
            .held
            .iter()
            .map(|h| format!("{}: {}", h.lease.key, h.reason))
            .chain(
                done.draining
                    .iter()
                    .map(|k| format!("{}: {}", k.lease.key, k.reason)),
            )
            .collect(),
        cordoned: done.cordoned.clone(),
    };
    if let Err(e) = store
        .write_status(&serde_json::to_vec(&status).unwrap_or_default())
        .await
    {
        tracing::warn!(error = %e, "cannot write /status");
    }
}
