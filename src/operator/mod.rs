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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch as channel;

use crate::alloc::plan::Plan;
use crate::controller::ControllerPass;
use crate::lease::{Lease, Report};

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
    pub deleting: BTreeSet<String>,
    /// Passes so far.
    pub passes: u64,
}

/// State the allocation loop and the status controller share.
#[derive(Debug)]
pub struct Shared {
    /// This controller's epoch while it leads.
    pub leading: channel::Sender<Option<i64>>,
    /// The last pass.
    /// Shared, not copied: every Workload's reconcile reads it, after every pass.
    pub snapshot: RwLock<Arc<Snapshot>>,
    /// Bumped after every pass and every new read of the reports: every Workload is
    /// reconciled then.
    pub passes: channel::Sender<u64>,
    /// Why a Workload is not used as written, by `namespace/name`.
    pub workload_problems: Mutex<BTreeMap<String, String>>,
    /// Why a ResourcePolicy is not used as written, by name.
    pub policy_problems: Mutex<BTreeMap<String, String>>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            leading: channel::Sender::new(None),
            snapshot: RwLock::new(Arc::default()),
            passes: channel::Sender::new(0),
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
        deleting: &BTreeSet<String>,
    ) {
        let epoch = (*self.leading.borrow()).unwrap_or_default();
        if let Ok(mut snapshot) = self.snapshot.write() {
            *snapshot = Arc::new(Snapshot {
                epoch,
                plan: Some(pass.plan.clone()),
                leases: pass.leases.clone(),
                reports: reports.to_vec(),
                nodes: nodes.to_vec(),
                deleting: deleting.clone(),
                passes: snapshot.passes + 1,
            });
        }
        self.passes.send_modify(|n| *n += 1);
    }

    /// Records reports read after agents wrote new ones: the statuses follow without an
    /// allocation pass.
    pub fn record_reports(&self, reports: &[Report]) {
        if let Ok(mut snapshot) = self.snapshot.write() {
            Arc::make_mut(&mut snapshot).reports = reports.to_vec();
        }
        self.passes.send_modify(|n| *n += 1);
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
    let unreadable_workloads = watch::Unreadable::default();
    let unreadable_policies = watch::Unreadable::default();
    let (workload_store, workload_events, mut workloads_listed) = watch::typed_reflector::<Workload>(
        watch::untyped_api::<Workload>(client.clone()),
        watcher::Config::default(),
        unreadable_workloads.clone(),
        changes.clone(),
    );
    let (policy_store, policy_events, mut policies_listed) = watch::typed_reflector::<ResourcePolicy>(
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
    // Every Workload again after each allocation pass.
    let passes = futures::stream::unfold(shared.passes.subscribe(), |mut rx| async move {
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
            .reconcile_all_on(passes)
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
    let policy_status = tokio::spawn({
        let (ctx, policy_store) = (Arc::clone(&ctx), policy_store.clone());
        let mut passes = shared.passes.subscribe();
        async move {
            while passes.changed().await.is_ok() {
                if ctx.shared.epoch().is_some() {
                    reconcile::policy_statuses(&policy_store.state(), &ctx).await;
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
