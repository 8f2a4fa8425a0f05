//! corral as a Kubernetes operator: `corral controller --source kubernetes`.
//!
//! Two loops share one [`Shared`]:
//! - the allocation loop ([`crate::controller::cluster::run`]) over a [`KubeSource`]: the
//!   leader allocates every Workload under the ResourcePolicies and writes the leases in
//!   ZooKeeper, exactly as with manifest files;
//! - a `kube::runtime::Controller` over Workloads ([`reconcile`]): while this controller
//!   leads, it keeps the `corral.dev/cleanup` finalizer on each Workload, writes its status
//!   (and each policy's) with server-side apply under the field manager
//!   `corral-controller`, and records events. It runs after every allocation pass and when
//!   an object changes.
//!
//! Deleting a Workload: the source leaves it out, so the next pass deletes its leases; the
//! agents stop its processes and remove its groups, and their reports of it disappear;
//! then the finalizer goes and the object with it. A deletion made while no controller
//! runs waits for the finalizer, and is handled when one comes back.

pub mod reconcile;
pub mod source;
pub mod status;
pub mod watch;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch as channel;

use crate::alloc::plan::{Pending, Plan, Preemption};
use crate::api::WorkloadRef;
use crate::controller::ControllerPass;
use crate::lease::{Lease, Report};
use crate::sync::Lock;

pub use source::KubeSource;

/// The finalizer corral keeps on every Workload.
pub const FINALIZER: &str = "corral.dev/cleanup";
/// The field manager of corral's status writes.
pub const FIELD_MANAGER: &str = "corral-controller";

/// What the allocation loop last did, for status.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The epoch that made it.
    pub epoch: i64,
    /// The allocation.
    pub plan: Option<Plan>,
    /// The leases after the pass.
    pub leases: Vec<Lease>,
    /// The reports read last.
    pub reports: Vec<Report>,
    /// The nodes allocated on.
    pub nodes: Vec<String>,
    /// Workloads being deleted when the pass was made: their leases are gone.
    pub deleting: BTreeSet<WorkloadRef>,
    /// Passes so far.
    pub passes: u64,
    /// Where each command workload's rollout stands.
    pub rollouts: Vec<crate::controller::rollout::Rollout>,
    /// Replicas kept on their missing node, with why.
    pub held: Vec<crate::controller::disconnect::Held>,
    /// The same, by workload (`namespace/name`): what its status is computed from.
    pub views: HashMap<WorkloadRef, WorkloadView>,
}

/// What the last pass and reports say of one workload.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkloadView {
    /// Its leases.
    pub leases: Vec<Lease>,
    /// The reports of its replicas.
    pub reports: Vec<Report>,
    /// Its replicas without a node, with the reasons.
    pub pending: Vec<Pending>,
    /// Its replicas that lost their node in the pass.
    pub preemptions: Vec<Preemption>,
    /// True when the pass placed at least one of its replicas.
    pub placed: bool,
    /// Being deleted when the pass was made.
    pub deleting: bool,
    /// Where its rollout stands (command workloads).
    pub rollout: Option<crate::controller::rollout::Rollout>,
    /// Its replicas kept on their missing node: index → why.
    pub held: BTreeMap<u32, String>,
}

impl Snapshot {
    /// What the snapshot says of `workload` (`namespace/name`).
    pub fn view(&self, workload: &WorkloadRef) -> Cow<'_, WorkloadView> {
        self.views
            .get(workload)
            .map_or_else(|| Cow::Owned(WorkloadView::default()), Cow::Borrowed)
    }

    /// Builds [`Snapshot::views`]: one walk over the pass, so that a reconcile reads only
    /// its own workload's part.
    pub fn index(&mut self) {
        let mut views: HashMap<WorkloadRef, WorkloadView> = HashMap::new();
        for lease in &self.leases {
            views
                .entry(lease.key.workload.clone())
                .or_default()
                .leases
                .push(lease.clone());
        }
        for report in &self.reports {
            if let Some(key) = &report.key {
                views
                    .entry(key.workload.clone())
                    .or_default()
                    .reports
                    .push(report.clone());
            }
        }
        if let Some(plan) = &self.plan {
            for allocation in &plan.allocations {
                views.entry(allocation.workload.clone()).or_default().placed = true;
            }
            for pending in &plan.pending {
                views
                    .entry(pending.workload.clone())
                    .or_default()
                    .pending
                    .push(pending.clone());
            }
            for preemption in &plan.preemptions {
                views
                    .entry(preemption.workload.clone())
                    .or_default()
                    .preemptions
                    .push(preemption.clone());
            }
        }
        for name in &self.deleting {
            views.entry(name.clone()).or_default().deleting = true;
        }
        for held in &self.held {
            views
                .entry(held.lease.key.workload.clone())
                .or_default()
                .held
                .insert(held.lease.key.index, held.reason.clone());
        }
        for rollout in &self.rollouts {
            views.entry(rollout.workload.clone()).or_default().rollout = Some(rollout.clone());
        }
        self.views = views;
    }

    /// The workloads whose view differs between `self` and `other`.
    fn changed(&self, other: &Snapshot) -> BTreeSet<WorkloadRef> {
        self.views
            .keys()
            .chain(other.views.keys())
            .filter(|name| self.views.get(*name) != other.views.get(*name))
            .cloned()
            .collect()
    }
}

/// State the allocation loop and the status controller share.
#[derive(Debug)]
pub struct Shared {
    /// This controller's epoch while it leads.
    pub leading: channel::Sender<Option<i64>>,
    /// The last pass.
    /// Shared, not copied: every Workload's reconcile reads it, after every pass.
    pub snapshot: RwLock<Arc<Snapshot>>,
    /// Bumped after every pass and every new read of the reports.
    pub passes: channel::Sender<u64>,
    /// The epoch of the first pass made in each leadership: every Workload is reconciled
    /// then.
    pub first_pass: channel::Sender<i64>,
    /// Where to send the workloads to reconcile because what their status shows changed.
    pub triggers: Mutex<Option<tokio::sync::mpsc::UnboundedSender<WorkloadRef>>>,
    /// Why a Workload is not used as written.
    pub workload_problems: Mutex<BTreeMap<WorkloadRef, String>>,
    /// Why a ResourcePolicy is not used as written, by name.
    pub policy_problems: Mutex<BTreeMap<String, String>>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            leading: channel::Sender::new(None),
            snapshot: RwLock::new(Arc::default()),
            passes: channel::Sender::new(0),
            first_pass: channel::Sender::new(0),
            triggers: Mutex::new(None),
            workload_problems: Mutex::new(BTreeMap::new()),
            policy_problems: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Shared {
    /// Records a pass made while leading, with the workloads being deleted then.
    pub fn record(
        &self,
        pass: &ControllerPass,
        nodes: &[String],
        reports: &[Report],
        deleting: &BTreeSet<WorkloadRef>,
    ) {
        let epoch = (*self.leading.borrow()).unwrap_or_default();
        let mut changed = BTreeSet::new();
        if let Ok(mut snapshot) = self.snapshot.write() {
            let mut next = Snapshot {
                epoch,
                plan: Some(pass.plan.clone()),
                leases: pass.leases.clone(),
                reports: reports.to_vec(),
                nodes: nodes.to_vec(),
                deleting: deleting.clone(),
                passes: snapshot.passes + 1,
                rollouts: pass.rollouts.clone(),
                held: pass.held.clone(),
                views: HashMap::new(),
            };
            next.index();
            changed = next.changed(&snapshot);
            // A preemption is news in the pass that made it, even when the same one
            // was in the last pass's plan too.
            changed.extend(
                next.views
                    .iter()
                    .filter(|(_, v)| !v.preemptions.is_empty())
                    .map(|(n, _)| n.clone()),
            );
            *snapshot = Arc::new(next);
        }
        self.passes.send_modify(|n| *n += 1);
        self.first_pass.send_if_modified(|first| {
            let new = *first != epoch;
            *first = epoch;
            new
        });
        self.trigger(changed);
    }

    /// Records reports read after agents wrote new ones: the statuses follow without an
    /// allocation pass.
    pub fn record_reports(&self, reports: &[Report]) {
        let mut changed = BTreeSet::new();
        if let Ok(mut snapshot) = self.snapshot.write() {
            let mut next = (**snapshot).clone();
            next.reports = reports.to_vec();
            next.index();
            changed = next.changed(&snapshot);
            *snapshot = Arc::new(next);
        }
        self.passes.send_modify(|n| *n += 1);
        self.trigger(changed);
    }

    /// Asks for a reconcile of each of `workloads`.
    pub fn trigger(&self, workloads: impl IntoIterator<Item = WorkloadRef>) {
        if let Some(tx) = self.triggers.locked().as_ref() {
            for name in workloads {
                let _ = tx.send(name);
            }
        }
    }

    /// This controller's epoch, while it leads.
    pub fn epoch(&self) -> Option<i64> {
        *self.leading.borrow()
    }

    /// A copy of the last pass.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .map(|s| Arc::clone(&s))
            .unwrap_or_default()
    }
}

/// Runs the operator until `shutdown` changes: the reflectors, the Workload controller,
/// the policy statuses and the allocation loop. Ready (`/readyz`) once both kinds are
/// listed; only the leader writes.
///
/// # Errors
/// The ZooKeeper store cannot be watched at all.
pub async fn run(
    client: kube::Client,
    store: std::sync::Arc<crate::lease::zookeeper::ZkStore>,
    identity: &str,
    resync: std::time::Duration,
    metrics: std::sync::Arc<crate::metrics::ControllerMetrics>,
    mut shutdown: channel::Receiver<bool>,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    use kube::runtime::{Controller, watcher};

    use crate::api::{ResourcePolicy, Workload};

    let shared = Arc::new(Shared::default());
    let changes = channel::Sender::new(0u64);
    let unreadable_workloads = watch::Unreadable::<WorkloadRef>::default();
    let unreadable_policies = watch::Unreadable::<String>::default();
    let (workload_store, workload_events, mut workloads_listed) =
        watch::typed_reflector::<Workload, _>(
            watch::untyped_api::<Workload>(client.clone()),
            watcher::Config::default(),
            unreadable_workloads.clone(),
            changes.clone(),
        );
    let (policy_store, policy_events, mut policies_listed) =
        watch::typed_reflector::<ResourcePolicy, _>(
            watch::untyped_api::<ResourcePolicy>(client.clone()),
            watcher::Config::default(),
            unreadable_policies.clone(),
            changes.clone(),
        );
    let ctx = Arc::new(reconcile::Context::new(
        client,
        Arc::clone(&shared),
        Arc::clone(&metrics),
        identity,
    ));
    // The policies' reflector runs while its stream is polled.
    let policies = tokio::spawn(policy_events.for_each(|event| {
        if let Err(e) = event {
            tracing::warn!(error = %e, "watching ResourcePolicies");
        }
        std::future::ready(())
    }));
    // A Workload is reconciled when it changes, when what its status shows changed (a
    // pass or the agents' reports: `Shared::trigger`), and all of them after the first
    // pass of each leadership.
    let (trigger_tx, trigger_rx) = tokio::sync::mpsc::unbounded_channel::<WorkloadRef>();
    *shared.triggers.locked() = Some(trigger_tx);
    let triggered = futures::stream::unfold(trigger_rx, |mut rx| async move {
        let name = rx.recv().await?;
        let reference = kube::runtime::reflector::ObjectRef::<Workload>::new(name.name())
            .within(name.namespace());
        Some((reference, rx))
    });
    let leadership = futures::stream::unfold(shared.first_pass.subscribe(), |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    });
    let stop = {
        let mut shutdown = shutdown.clone();
        async move {
            let _ = shutdown.changed().await;
        }
    };
    let controller = tokio::spawn(
        Controller::for_stream(workload_events, workload_store.clone())
            .reconcile_on(triggered)
            .reconcile_all_on(leadership)
            .graceful_shutdown_on(stop)
            .run(
                reconcile::reconcile,
                reconcile::error_policy,
                Arc::clone(&ctx),
            )
            .for_each(|result| {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "reconcile");
                }
                std::future::ready(())
            }),
    );
    // Policy statuses after each pass, while leading.
    // And the status of Workloads corral cannot read at all.
    let policy_status = tokio::spawn({
        let (ctx, policy_store) = (Arc::clone(&ctx), policy_store.clone());
        let (unreadable, workloads) = (unreadable_workloads.clone(), workload_store.clone());
        let mut passes = shared.passes.subscribe();
        async move {
            let mut written = BTreeMap::new();
            while passes.changed().await.is_ok() {
                if ctx.shared.epoch().is_some() {
                    reconcile::policy_statuses(&policy_store.state(), &ctx).await;
                    reconcile::unreadable_statuses(
                        &unreadable.all(),
                        &workloads,
                        &mut written,
                        &ctx,
                    )
                    .await;
                }
            }
        }
    });
    tracing::info!("listing Workloads and ResourcePolicies");
    let synced = async {
        workloads_listed.wait_for(|listed| *listed).await?;
        policies_listed.wait_for(|listed| *listed).await?;
        Ok::<(), channel::error::RecvError>(())
    };
    tokio::select! {
        synced = synced => synced.map_err(|e| anyhow::anyhow!("the Kubernetes watch ended before it listed the objects: {e}"))?,
        _ = shutdown.changed() => {
            controller.abort();
            policies.abort();
            policy_status.abort();
            return Ok(());
        }
    }
    metrics.readiness.ready();
    tracing::info!(
        workloads = workload_store.state().len(),
        policies = policy_store.state().len(),
        "listed; campaigning for leadership"
    );
    let source = KubeSource::new(
        workload_store,
        policy_store,
        unreadable_workloads,
        unreadable_policies,
        changes.subscribe(),
        Arc::clone(&shared),
    );
    let result =
        crate::controller::cluster::run(store, source, identity, resync, &metrics, shutdown).await;
    policy_status.abort();
    policies.abort();
    let _ = controller.await;
    result.map_err(anyhow::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::fixtures::mk_lease;

    fn shared() -> (Shared, tokio::sync::mpsc::UnboundedReceiver<WorkloadRef>) {
        let shared = Shared::default();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *shared.triggers.lock().unwrap() = Some(tx);
        shared.leading.send_replace(Some(7));
        (shared, rx)
    }

    fn drain(rx: &mut tokio::sync::mpsc::UnboundedReceiver<WorkloadRef>) -> BTreeSet<String> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|r| r.to_string())
            .collect()
    }

    fn w(name: &str) -> WorkloadRef {
        name.parse().unwrap()
    }

    fn pass(leases: Vec<Lease>) -> ControllerPass {
        ControllerPass {
            rollouts: Vec::new(),
            held: Vec::new(),
            draining: Vec::new(),
            cordoned: Vec::new(),
            plan: Plan::default(),
            changes: 0,
            leases,
        }
    }

    #[test]
    fn only_the_workloads_whose_part_changed_are_triggered() {
        let (shared, mut rx) = shared();
        let nodes = ["n1".to_string()];
        let leases = vec![mk_lease("n1", "web", 0, 7), mk_lease("n1", "db", 0, 7)];
        shared.record(&pass(leases.clone()), &nodes, &[], &BTreeSet::new());
        assert_eq!(
            drain(&mut rx),
            BTreeSet::from(["t/web".into(), "t/db".into()])
        );

        // The same pass again: nothing to show.
        shared.record(&pass(leases.clone()), &nodes, &[], &BTreeSet::new());
        assert!(drain(&mut rx).is_empty());

        // One report arrives: only its workload.
        let report = Report {
            key: Some(leases[1].key.clone()),
            node: "n1".into(),
            lease_epoch: 7,
            ..Report::default()
        };
        shared.record_reports(std::slice::from_ref(&report));
        assert_eq!(drain(&mut rx), BTreeSet::from(["t/db".into()]));
        assert_eq!(shared.snapshot().view(&w("t/db")).reports, [report]);
        assert!(shared.snapshot().view(&w("t/web")).reports.is_empty());

        // web is deleted: its lease goes and it is marked deleting.
        shared.record(
            &pass(leases[1..].to_vec()),
            &nodes,
            &[],
            &BTreeSet::from([w("t/web")]),
        );
        assert_eq!(
            drain(&mut rx),
            BTreeSet::from(["t/web".into(), "t/db".into()])
        );
        assert!(shared.snapshot().view(&w("t/web")).deleting);
    }

    #[test]
    fn the_first_pass_of_a_leadership_is_announced_once() {
        let (shared, _rx) = shared();
        let mut first = shared.first_pass.subscribe();
        shared.record(&pass(vec![]), &[], &[], &BTreeSet::new());
        assert!(first.has_changed().unwrap());
        first.borrow_and_update();
        shared.record(&pass(vec![]), &[], &[], &BTreeSet::new());
        assert!(!first.has_changed().unwrap());
        shared.leading.send_replace(Some(9));
        shared.record(&pass(vec![]), &[], &[], &BTreeSet::new());
        assert!(first.has_changed().unwrap());
    }
}
