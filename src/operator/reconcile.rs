//! The Workload controller: finalizer, status and events, after every allocation pass and
//! whenever a Workload changes. It never allocates: the allocation loop does, and this
//! shows its result on each object. Only the leader writes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, Event as Finalize, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use super::status::{
    Observed, same_but_usage, same_policy_status, same_workload_status, workload_status,
};
use super::{FIELD_MANAGER, FINALIZER, Shared, Snapshot};
use crate::alloc::plan::Plan;
use crate::api::conditions::{self, ConditionType, Reason, find, reason_of};
use crate::api::workload::WorkloadStatus;
use crate::api::{ResourcePolicy, Workload, WorkloadRef};
use crate::metrics::ControllerMetrics;
use crate::sync::Lock;

/// How soon a deletion is checked again while the agents still hold the workload.
pub const CLEANUP_RECHECK: Duration = Duration::from_secs(2);
/// How soon a reconcile is retried after a conflict.
pub const CONFLICT_RETRY: Duration = Duration::from_secs(1);
/// How soon after another error.
pub const ERROR_RETRY: Duration = Duration::from_secs(10);
/// How often a status whose only change is the observed use is written: use changes at
/// every agent's resync, and writing it for every workload each time would load the API
/// server for nothing a person reads that fast.
pub const USAGE_REFRESH: Duration = Duration::from_secs(30);
/// The event reporter's name.
pub const REPORTER: &str = "corral-controller";

/// What the reconciler works with.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// The allocation loop's results.
    pub shared: Arc<Shared>,
    /// Metrics.
    pub metrics: Arc<ControllerMetrics>,
    recorder: Recorder,
    /// What was already announced per workload, so that each event is sent once.
    noted: Mutex<HashMap<WorkloadRef, Noted>>,
    /// When each workload's status was last written.
    written: Mutex<HashMap<WorkloadRef, Instant>>,
    /// By uid, the resource version a finalizer was added to, until the watch shows it.
    finalized: Mutex<HashMap<Option<String>, Option<String>>>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Noted {
    /// The last pass whose preemptions were announced.
    preempted_in_pass: u64,
    /// Drift corrections reported so far.
    drift: u64,
}

impl Context {
    /// A context; `instance` names this controller in the events it records.
    pub fn new(
        client: Client,
        shared: Arc<Shared>,
        metrics: Arc<ControllerMetrics>,
        instance: &str,
    ) -> Context {
        let reporter = Reporter {
            controller: REPORTER.to_string(),
            instance: Some(instance.to_string()),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            shared,
            metrics,
            noted: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
            finalized: Mutex::new(HashMap::new()),
        }
    }
}

/// Why a reconcile did not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The workload is being deleted and the agents still hold it.
    #[error("waiting for the agents to remove the workload: {0}")]
    CleanupWaiting(String),
    /// Someone else changed the object first.
    #[error("conflict writing {what}: {source}")]
    Conflict {
        /// What was being written.
        what: &'static str,
        /// The API's answer.
        source: kube::Error,
    },
    /// Another API error.
    #[error("cannot write {what}: {source}")]
    Kube {
        /// What was being written.
        what: &'static str,
        /// The API's answer.
        source: kube::Error,
    },
    /// The finalizer could not be added or removed.
    #[error("finalizer {FINALIZER}: {0}")]
    Finalizer(String),
}

impl Error {
    /// The metrics category.
    pub fn category(&self) -> &'static str {
        match self {
            Error::CleanupWaiting(_) => "cleanup-waiting",
            Error::Conflict { .. } => "conflict",
            Error::Kube { .. } => "kubernetes",
            Error::Finalizer(_) => "finalizer",
        }
    }

    fn api(what: &'static str, source: kube::Error) -> Error {
        match &source {
            kube::Error::Api(status) if status.is_conflict() => Error::Conflict { what, source },
            _ => Error::Kube { what, source },
        }
    }

    fn from_finalizer(e: finalizer::Error<Error>) -> Error {
        const WHAT: &str = "the finalizer";
        match e {
            finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
            finalizer::Error::AddFinalizer(source) | finalizer::Error::RemoveFinalizer(source) => {
                match &source {
                    // The finalizer's JSON patch tests the list it read: a 422 means another
                    // writer changed it, a conflict like any other.
                    kube::Error::Api(status) if status.is_conflict() || status.code == 422 => {
                        Error::Conflict { what: WHAT, source }
                    }
                    _ => Error::Finalizer(Error::Kube { what: WHAT, source }.to_string()),
                }
            }
            other => Error::Finalizer(other.to_string()),
        }
    }
}

/// Reconciles one Workload: keeps the finalizer, writes the status, records events; on
/// deletion, lets the object go once its leases and groups are gone.
///
/// # Errors
/// An API call failed, or a deletion waits for the agents.
pub async fn reconcile(workload: Arc<Workload>, ctx: Arc<Context>) -> Result<Action, Error> {
    if ctx.shared.epoch().is_none() {
        // A standby writes nothing; the leader's first pass triggers every object.
        return Ok(Action::await_change());
    }
    // The finalizer was added to this very version already, and the watch has not yet
    // brought the object back with it: another try would fail its JSON-patch test. The
    // update that brings it triggers the next reconcile.
    let adding = workload.metadata.deletion_timestamp.is_none()
        && !workload.finalizers().iter().any(|f| f == FINALIZER);
    let version = (workload.uid(), workload.resource_version());
    if adding && ctx.finalized.locked().get(&version.0) == Some(&version.1) {
        return Ok(Action::await_change());
    }
    let started = Instant::now();
    ctx.metrics.reconciled("Workload");
    let api: Api<Workload> = Api::namespaced(
        ctx.client.clone(),
        crate::api::identity::namespace_of(&workload),
    );
    let result = finalizer(&api, FINALIZER, workload, |event| async {
        match event {
            Finalize::Apply(workload) => apply(&workload, &ctx, &api).await,
            Finalize::Cleanup(workload) => cleanup(&workload, &ctx, &api).await,
        }
    })
    .await
    .map_err(Error::from_finalizer);
    {
        let mut finalized = ctx.finalized.locked();
        if adding && result.is_ok() {
            finalized.insert(version.0, version.1);
        } else if !adding {
            finalized.remove(&version.0);
        }
    }
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    result
}

/// What to do after a failed reconcile.
pub fn error_policy(workload: Arc<Workload>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(error.category());
    let name = WorkloadRef::of(workload.as_ref());
    match error {
        Error::CleanupWaiting(why) => {
            tracing::info!(workload = %name, %why, "deletion waits for the agents");
            Action::requeue(CLEANUP_RECHECK)
        }
        Error::Conflict { .. } => {
            tracing::info!(workload = %name, %error, "retrying after a conflict");
            Action::requeue(CONFLICT_RETRY)
        }
        _ => {
            tracing::warn!(workload = %name, %error, "reconcile failed");
            Action::requeue(ERROR_RETRY)
        }
    }
}

async fn apply(workload: &Workload, ctx: &Context, api: &Api<Workload>) -> Result<Action, Error> {
    let snapshot = ctx.shared.snapshot();
    let name = WorkloadRef::of(workload);
    let problem = ctx.shared.workload_problems.locked().get(&name).cloned();
    // A new object the allocator has not seen yet: its first status would only say "not
    // allocated yet", and the pass that follows triggers this again. One write less per
    // object, which counts when thousands are applied at once.
    let view = snapshot.view(&name);
    let seen = workload.spec.replicas == 0
        || view.placed
        || !view.leases.is_empty()
        || !view.pending.is_empty();
    // The CRD's default status (Reconciling: NotYetSeen) counts as none.
    let unwritten = workload.status.as_ref().is_none_or(|s| {
        s.observed_generation.is_none()
            && !s.conditions.is_empty()
            && s.conditions
                .iter()
                .all(|c| reason_of(c) == Some(Reason::NotYetSeen))
    });
    if unwritten && problem.is_none() && !seen {
        return Ok(Action::await_change());
    }
    let status = status_of(workload, &snapshot, problem.as_deref());
    write_status(workload, &status, ctx, api).await?;
    announce(workload, &status, &snapshot, ctx).await;
    Ok(Action::await_change())
}

async fn cleanup(workload: &Workload, ctx: &Context, api: &Api<Workload>) -> Result<Action, Error> {
    let snapshot = ctx.shared.snapshot();
    let name = WorkloadRef::of(workload);
    let status = status_of(workload, &snapshot, None);
    write_status(workload, &status, ctx, api).await?;
    if let Some(why) = holding(&name, &snapshot) {
        return Err(Error::CleanupWaiting(why));
    }
    publish(
        ctx,
        workload,
        EventType::Normal,
        "Released",
        "the leases are released and the agents removed the groups",
    )
    .await;
    tracing::info!(workload = %name, "released; the finalizer goes");
    ctx.noted.locked().remove(&name);
    ctx.written.locked().remove(&name);
    Ok(Action::await_change())
}

/// Why the workload `name`, being deleted, is still held: a pass made since the deletion
/// still has a lease of it, or an agent of a registered node still reports it. `None` once
/// it is gone everywhere.
pub fn holding(name: &WorkloadRef, snapshot: &Snapshot) -> Option<String> {
    let view = snapshot.view(name);
    if !view.deleting {
        return Some("no allocation pass has seen the deletion yet".into());
    }
    if !view.leases.is_empty() {
        return Some(format!("{} lease(s) not yet deleted", view.leases.len()));
    }
    let nodes: Vec<&str> = view
        .reports
        .iter()
        .filter(|r| snapshot.nodes.contains(&r.node))
        .map(|r| r.node.as_str())
        .collect();
    if nodes.is_empty() {
        None
    } else {
        Some(format!(
            "the agents of {} still report it",
            nodes.join(", ")
        ))
    }
}

fn status_of(workload: &Workload, snapshot: &Snapshot, problem: Option<&str>) -> WorkloadStatus {
    let view = snapshot.view(&WorkloadRef::of(workload));
    // Only this workload's part of the plan: the status reads its pending replicas.
    let plan = Plan {
        pending: view.pending.clone(),
        ..Plan::default()
    };
    let observed = Observed {
        plan: Some(&plan),
        leases: &view.leases,
        reports: &view.reports,
        registered: &snapshot.nodes,
        rollout: view.rollout.as_ref(),
        held: Some(&view.held),
    };
    workload_status(workload, &observed, problem, &now())
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Writes `status` with server-side apply, unless the object already says the same, or
/// only the observed use changed and it was written less than [`USAGE_REFRESH`] ago.
async fn write_status(
    workload: &Workload,
    status: &WorkloadStatus,
    ctx: &Context,
    api: &Api<Workload>,
) -> Result<(), Error> {
    let name = WorkloadRef::of(workload);
    if let Some(old) = &workload.status {
        if same_workload_status(old, status) {
            return Ok(());
        }
        let recent = ctx
            .written
            .locked()
            .get(&name)
            .copied()
            .is_some_and(|at| at.elapsed() < USAGE_REFRESH);
        if recent && same_but_usage(old, status) {
            return Ok(());
        }
    }
    let patch = json!({
        "apiVersion": Workload::api_version(&()),
        "kind": Workload::kind(&()),
        "status": status,
    });
    api.patch_status(
        &workload.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|e| Error::api("the status", e))?;
    ctx.metrics.status_written("Workload");
    ctx.written.locked().insert(name, Instant::now());
    Ok(())
}

/// The events a change of status calls for, with their type, reason and note.
pub fn events_for(
    old: Option<&WorkloadStatus>,
    new: &WorkloadStatus,
) -> Vec<(EventType, &'static str, String)> {
    let before = |type_: ConditionType| -> Option<&Condition> {
        old.and_then(|s| find(&s.conditions, type_))
    };
    let after = |type_: ConditionType| find(&new.conditions, type_);
    let changed = |type_: ConditionType| match (before(type_), after(type_)) {
        (Some(b), Some(a)) => {
            b.status != a.status || b.reason != a.reason || b.message != a.message
        }
        (None, Some(_)) => true,
        _ => false,
    };
    let mut events = Vec::new();
    if let Some(allocated) = after(ConditionType::Allocated)
        && changed(ConditionType::Allocated)
    {
        match (conditions::status_of(allocated), reason_of(allocated)) {
            (Some(true), _)
                if before(ConditionType::Allocated)
                    .is_none_or(|b| conditions::status_of(b) != Some(true)) =>
            {
                let nodes: BTreeMap<&str, usize> = new
                    .replica_statuses
                    .iter()
                    .filter_map(|r| r.node.as_deref())
                    .fold(BTreeMap::new(), |mut m, n| {
                        *m.entry(n).or_default() += 1;
                        m
                    });
                let placed = nodes
                    .iter()
                    .map(|(node, n)| format!("{n} on {node}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                events.push((
                    EventType::Normal,
                    "Allocated",
                    format!("{}; {placed}", allocated.message),
                ));
            }
            // Only once the allocator said why: before its first pass over a new object,
            // "not allocated yet" is no news.
            (Some(false), Some(Reason::ReplicasPending))
                if new
                    .replica_statuses
                    .iter()
                    .any(|r| r.pending_reason.is_some()) =>
            {
                events.push((EventType::Warning, "Pending", allocated.message.clone()));
            }
            (Some(false), Some(Reason::Invalid)) => {
                events.push((EventType::Warning, "Invalid", allocated.message.clone()));
            }
            _ => {}
        }
    }
    if let Some(enforced) = after(ConditionType::Enforced)
        && changed(ConditionType::Enforced)
        && reason_of(enforced) == Some(Reason::EnforcementFailed)
    {
        events.push((
            EventType::Warning,
            "EnforcementFailed",
            enforced.message.clone(),
        ));
    }
    events
}

/// Records the events this reconcile calls for: status transitions, preemptions made by
/// the last pass, drift the agents corrected since the last look.
async fn announce(
    workload: &Workload,
    status: &WorkloadStatus,
    snapshot: &Snapshot,
    ctx: &Context,
) {
    let name = WorkloadRef::of(workload);
    let mut events = events_for(workload.status.as_ref(), status);
    let view = snapshot.view(&name);
    let drift: u64 = view
        .reports
        .iter()
        .filter_map(|r| r.drift.as_ref())
        .map(|d| d.corrections)
        .sum();
    let last_drift = view
        .reports
        .iter()
        .filter_map(|r| Some((r.node.as_str(), r.drift.as_ref()?)))
        .map(|(node, d)| format!("on {node}: {}", d.last))
        .collect::<Vec<_>>();
    let preemptions: Vec<String> = view
        .preemptions
        .iter()
        .map(|p| {
            format!(
                "replica {} lost node {} to {} replica {} of higher priority",
                p.replica, p.node, p.by_workload, p.by_replica
            )
        })
        .collect();
    {
        let mut noted = ctx.noted.locked();
        match noted.get_mut(&name) {
            None => {
                // The first look since this controller started: what was reported
                // before is old news.
                noted.insert(
                    name.clone(),
                    Noted {
                        preempted_in_pass: snapshot.passes,
                        drift,
                    },
                );
                if !preemptions.is_empty() {
                    events.push((EventType::Warning, "Preempted", preemptions.join("; ")));
                }
            }
            Some(seen) => {
                if seen.preempted_in_pass < snapshot.passes && !preemptions.is_empty() {
                    events.push((EventType::Warning, "Preempted", preemptions.join("; ")));
                }
                seen.preempted_in_pass = snapshot.passes;
                if drift > seen.drift {
                    ctx.metrics.drift_corrections.inc_by(drift - seen.drift);
                    events.push((
                        EventType::Normal,
                        "DriftCorrected",
                        format!(
                            "{} value(s) restored after something else changed them; last {}",
                            drift - seen.drift,
                            last_drift.join("; ")
                        ),
                    ));
                }
                seen.drift = drift;
            }
        }
    }
    for (type_, reason, note) in events {
        publish(ctx, workload, type_, reason, &note).await;
    }
}

/// Records one event on `workload`; a failure is logged, never fatal.
async fn publish(ctx: &Context, workload: &Workload, type_: EventType, reason: &str, note: &str) {
    record(ctx, &workload.object_ref(&()), type_, reason, note).await;
}

/// Records one event on the object `reference`; a failure is logged, never fatal.
async fn record(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    // The API limits a note to 1 kB.
    let note: String = note.chars().take(1000).collect();
    let event = KubeEvent {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: "Reconcile".to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, reference).await {
        let object = reference.name.as_deref().unwrap_or_default();
        tracing::warn!(object, reason, error = %e, "cannot record the event");
    }
}

/// Writes each policy's status that changed. Run after every pass while leading.
pub async fn policy_statuses(policies: &[Arc<ResourcePolicy>], ctx: &Context) {
    let snapshot = ctx.shared.snapshot();
    let problems = ctx.shared.policy_problems.locked().clone();
    let api: Api<ResourcePolicy> = Api::all(ctx.client.clone());
    for policy in policies {
        ctx.metrics.reconciled("ResourcePolicy");
        let name = policy.name_any();
        let status = super::status::policy_status(
            policy,
            snapshot.plan.as_ref(),
            problems.get(&name).map(String::as_str),
            &now(),
        );
        if policy
            .status
            .as_ref()
            .is_some_and(|old| same_policy_status(old, &status))
        {
            continue;
        }
        // A policy that becomes invalid says so once, as a refused Workload does.
        let was_invalid = policy
            .status
            .as_ref()
            .and_then(|old| find(&old.conditions, ConditionType::Valid))
            .is_some_and(|valid| conditions::status_of(valid) == Some(false));
        if let Some(problem) = problems.get(&name)
            && !was_invalid
        {
            record(
                ctx,
                &policy.object_ref(&()),
                EventType::Warning,
                "Invalid",
                problem,
            )
            .await;
        }
        let patch = json!({
            "apiVersion": ResourcePolicy::api_version(&()),
            "kind": ResourcePolicy::kind(&()),
            "status": status,
        });
        let written = api
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await;
        if written.is_ok() {
            ctx.metrics.status_written("ResourcePolicy");
        }
        if let Err(e) = written {
            let error = Error::api("the status", e);
            ctx.metrics.error(error.category());
            tracing::warn!(policy = %name, %error, "cannot write the policy's status");
        }
    }
}

/// Writes the status of each Workload corral has never been able to read (one it could
/// read once keeps that version, and its status says what is wrong now), once per
/// problem: the typed controller never sees such an object.
pub async fn unreadable_statuses(
    unreadable: &BTreeMap<WorkloadRef, String>,
    readable: &Store<Workload>,
    written: &mut BTreeMap<WorkloadRef, String>,
    ctx: &Context,
) {
    written.retain(|name, _| unreadable.contains_key(name));
    for (name, problem) in unreadable {
        let (namespace, object) = (name.namespace(), name.name());
        let key = ObjectRef::<Workload>::new(object).within(namespace);
        if readable.get(&key).is_some() || written.get(name) == Some(problem) {
            continue;
        }
        let resource = ApiResource::erase::<Workload>(&());
        let api: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), namespace, &resource);
        let status = super::status::unreadable_status(None, problem, &now());
        // A merge patch, not server-side apply: apply needs the object to match its
        // schema, and this one does not.
        let patch = json!({ "status": status });
        // Once per problem, written or not: a failure would only repeat.
        written.insert(name.clone(), problem.clone());
        match api
            .patch_status(
                object,
                &PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PatchParams::default()
                },
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => ctx.metrics.status_written("Workload"),
            Err(e) => {
                let error = Error::api("the status", e);
                ctx.metrics.error(error.category());
                tracing::warn!(workload = %name, %error, "cannot write the status of an unreadable object");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::condition;
    use crate::api::workload::ReplicaStatus;

    fn with(conditions: Vec<Condition>, pending: Option<&str>) -> WorkloadStatus {
        WorkloadStatus {
            replica_statuses: vec![ReplicaStatus {
                node: pending.is_none().then(|| "n1".to_string()),
                pending_reason: pending.map(str::to_string),
                ..ReplicaStatus::default()
            }],
            conditions,
            ..WorkloadStatus::default()
        }
    }

    fn reasons(events: &[(EventType, &'static str, String)]) -> Vec<&'static str> {
        events.iter().map(|(_, reason, _)| *reason).collect()
    }

    #[test]
    fn a_change_of_condition_is_announced_once() {
        let allocated = |status, reason| {
            condition(
                ConditionType::Allocated,
                status,
                reason,
                "1 of 1 replica has a node",
            )
        };
        let pending = with(
            vec![allocated(false, Reason::ReplicasPending)],
            Some("no node has 4 cpu free"),
        );
        let placed = with(vec![allocated(true, Reason::AllReplicasAllocated)], None);
        let failed = with(
            vec![condition(
                ConditionType::Enforced,
                false,
                Reason::EnforcementFailed,
                "memory.max: denied",
            )],
            None,
        );
        let refused = with(vec![allocated(false, Reason::Invalid)], None);

        assert_eq!(reasons(&events_for(None, &pending)), ["Pending"]);
        assert_eq!(reasons(&events_for(Some(&pending), &placed)), ["Allocated"]);
        assert_eq!(
            events_for(Some(&pending), &placed)[0].2,
            "1 of 1 replica has a node; 1 on n1"
        );
        assert!(events_for(Some(&placed), &placed).is_empty());
        assert_eq!(reasons(&events_for(None, &failed)), ["EnforcementFailed"]);
        assert!(events_for(Some(&failed), &failed).is_empty());
        assert_eq!(reasons(&events_for(None, &refused)), ["Invalid"]);
        // Not yet allocated, before the allocator said why: no news.
        let unplaced = with(vec![allocated(false, Reason::ReplicasPending)], None);
        assert!(events_for(None, &unplaced).is_empty());
    }

    #[test]
    fn a_reason_from_another_version_is_no_event_and_no_error() {
        let mut foreign = condition(ConditionType::Allocated, false, Reason::Invalid, "?");
        foreign.reason = "QuotaExceeded".into();
        let mut unknown_status = condition(
            ConditionType::Enforced,
            false,
            Reason::EnforcementFailed,
            "memory.max: denied",
        );
        unknown_status.status = "Unknown".into();
        let status = with(vec![foreign], None);
        assert!(events_for(None, &status).is_empty());
        // The reason alone says enforcement failed, whatever the status.
        let status = with(vec![unknown_status], None);
        assert_eq!(reasons(&events_for(None, &status)), ["EnforcementFailed"]);
    }
}
