//! The Kubernetes API as the controller's source of desired objects: Workloads and
//! ResourcePolicies from reflectors, each checked as `corral validate` checks a manifest.
//!
//! An object that cannot be read, or whose spec corral refuses, keeps its last good
//! version in use (nothing running is disturbed by a bad edit) and its problem is shown in
//! its status. A Workload being deleted is left out, so its leases are released; its
//! finalizer waits for the agents (see [`super::reconcile`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::reflector::Store;
use tokio::sync::watch;

use super::Shared;
use super::watch::{Unreadable, full_name};
use crate::alloc::admit;
use crate::api::{ResourcePolicy, ResourcePolicySpec, Workload, WorkloadRef};
use crate::controller::ControllerPass;
use crate::controller::cluster::Desired;
use crate::lease::Report;
use crate::source::watch::Reload;
use crate::sync::Lock;
use crate::validate::FieldError;
use crate::validate::semantic::{check_policy, check_workload};

/// A burst of changes (a `kubectl apply -f DIR`) makes one pass.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// Workloads and policies from the API server.
pub struct KubeSource {
    workload_store: Store<Workload>,
    policy_store: Store<ResourcePolicy>,
    unreadable_workloads: Unreadable<WorkloadRef>,
    unreadable_policies: Unreadable<String>,
    changes: watch::Receiver<u64>,
    shared: Arc<Shared>,
    workloads: Vec<Workload>,
    policies: Vec<ResourcePolicy>,
    problems: Vec<String>,
    /// Workloads being deleted.
    deleting: BTreeSet<WorkloadRef>,
    /// A change was seen and not yet read.
    dirty: bool,
    /// The last version of each object that corral accepted.
    good_workloads: BTreeMap<WorkloadRef, Workload>,
    good_policies: BTreeMap<String, ResourcePolicy>,
}

impl KubeSource {
    /// The source over reflector stores that are ready; `changes` is bumped on every
    /// event either reflector applied.
    pub fn new(
        workload_store: Store<Workload>,
        policy_store: Store<ResourcePolicy>,
        unreadable_workloads: Unreadable<WorkloadRef>,
        unreadable_policies: Unreadable<String>,
        changes: watch::Receiver<u64>,
        shared: Arc<Shared>,
    ) -> KubeSource {
        let mut source = KubeSource {
            workload_store,
            policy_store,
            unreadable_workloads,
            unreadable_policies,
            changes,
            shared,
            workloads: Vec::new(),
            policies: Vec::new(),
            problems: Vec::new(),
            deleting: BTreeSet::new(),
            dirty: false,
            good_workloads: BTreeMap::new(),
            good_policies: BTreeMap::new(),
        };
        source.refresh();
        source
    }

    /// Reads the stores again: checks each object, keeps the last good version of a
    /// refused one, and leaves out workloads being deleted.
    fn refresh(&mut self) {
        let mut problems: BTreeMap<String, String> = BTreeMap::new();
        let mut policy_problems = self.unreadable_policies.all();
        let mut policies = Vec::new();
        let mut seen = BTreeMap::new();
        for policy in self.policy_store.state() {
            let name = full_name(policy.as_ref());
            let errors = check_policy(&policy.spec);
            let chosen = if errors.is_empty() {
                self.good_policies.insert(name.clone(), (*policy).clone());
                Some((*policy).clone())
            } else {
                policy_problems.insert(
                    name.clone(),
                    refused(
                        &errors,
                        self.good_policies.get(&name).map(|p| p.metadata.generation),
                    ),
                );
                self.good_policies.get(&name).cloned()
            };
            seen.insert(name, ());
            policies.extend(chosen);
        }
        self.good_policies.retain(|name, _| seen.contains_key(name));
        let mut workload_problems = self.unreadable_workloads.all();
        let mut workloads = Vec::new();
        let mut seen = BTreeMap::new();
        let policy_refs: Vec<&ResourcePolicy> = policies.iter().collect();
        self.deleting.clear();
        for workload in self.workload_store.state() {
            let name = WorkloadRef::of(workload.as_ref());
            seen.insert(name.clone(), ());
            if workload.metadata.deletion_timestamp.is_some() {
                self.deleting.insert(name);
                continue;
            }
            let mut errors = check_workload(&workload.spec);
            if errors.is_empty() {
                // What its tenant may ask for: a refused edit keeps the last admitted version.
                errors = admit::check_governed(&workload, &policy_refs);
            }
            if errors.is_empty() {
                self.good_workloads
                    .insert(name.clone(), (*workload).clone());
                workloads.push((*workload).clone());
            } else {
                workload_problems.insert(
                    name.clone(),
                    refused(
                        &errors,
                        self.good_workloads
                            .get(&name)
                            .map(|w| w.metadata.generation),
                    ),
                );
                workloads.extend(self.good_workloads.get(&name).cloned());
            }
        }
        self.good_workloads
            .retain(|name, _| seen.contains_key(name));
        // A tenant beyond its maxWorkloads: the newest are left out, with the reason.
        let default_spec = ResourcePolicySpec::default();
        let over = admit::over_quota(&admit::governed(&workloads, &policies, &default_spec));
        for refused in &over {
            workload_problems.insert(refused.workload.clone(), refused.message.clone());
        }
        workloads.retain(|w| !over.iter().any(|o| o.workload.is(w)));
        for (name, problem) in &policy_problems {
            problems.insert(format!("ResourcePolicy {name}"), problem.clone());
        }
        for (name, problem) in &workload_problems {
            problems.insert(format!("Workload {name}"), problem.clone());
        }
        self.problems = problems
            .into_iter()
            .map(|(object, problem)| format!("{object}: {problem}"))
            .collect();
        workloads.sort_by_key(WorkloadRef::of);
        policies.sort_by_key(ResourceExt::name_any);
        self.workloads = workloads;
        self.policies = policies;
        // A Workload whose problem came or went shows it in its status: reconcile it, as
        // its own event may have been handled before this read.
        let changed: Vec<WorkloadRef> = {
            let mut p = self.shared.workload_problems.locked();
            let changed = p
                .keys()
                .chain(workload_problems.keys())
                .filter(|name| p.get(*name) != workload_problems.get(*name))
                .cloned()
                .collect();
            *p = workload_problems;
            changed
        };
        self.shared.trigger(changed);
        *self.shared.policy_problems.locked() = policy_problems;
    }
}

/// The problem text for a refused spec; `good` is the last accepted version's generation,
/// when there is one.
fn refused(errors: &[FieldError], good: Option<Option<i64>>) -> String {
    let mut text = errors
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect::<Vec<_>>()
        .join("; ");
    text.push_str(&match good {
        Some(Some(generation)) => {
            format!(" (generation {generation}, the last accepted, stays in use)")
        }
        Some(None) => " (the last accepted version stays in use)".to_string(),
        None => " (not used until corrected)".to_string(),
    });
    text
}

impl Desired for KubeSource {
    /// Cancel-safe: a change seen by a call dropped during the debounce is read by the
    /// next call (the controller's loop drops this future whenever another event wins).
    async fn changed(&mut self) -> Reload {
        if !self.dirty {
            if self.changes.changed().await.is_err() {
                // The reflectors are gone: nothing changes any more.
                std::future::pending::<()>().await;
            }
            self.dirty = true;
        }
        tokio::time::sleep(DEBOUNCE).await;
        self.changes.borrow_and_update();
        self.dirty = false;
        self.refresh();
        Reload::Applied
    }

    fn catch_up(&mut self) {
        self.changes.borrow_and_update();
        self.dirty = false;
        self.refresh();
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

    fn leading(&mut self, epoch: Option<i64>) {
        self.shared.leading.send_replace(epoch);
    }

    fn wants_reports(&self) -> bool {
        // A finalizer waits for the agents' reports after the leases are gone.
        !self.deleting.is_empty()
    }

    fn passed(&mut self, pass: &ControllerPass, nodes: &[String], reports: &[Report]) {
        self.shared.record(pass, nodes, reports, &self.deleting);
    }

    fn follows_reports(&self) -> bool {
        // Status shows what the agents did as soon as they report it.
        true
    }

    fn reported(&mut self, reports: &[Report]) {
        self.shared.record_reports(reports);
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::reflector::store::Writer;

    use super::*;

    fn source() -> (KubeSource, watch::Sender<u64>) {
        let changes = watch::Sender::new(0);
        let source = KubeSource::new(
            Writer::<Workload>::default().as_reader(),
            Writer::<ResourcePolicy>::default().as_reader(),
            Unreadable::default(),
            Unreadable::default(),
            changes.subscribe(),
            Arc::new(Shared::default()),
        );
        (source, changes)
    }

    #[tokio::test]
    async fn a_change_seen_by_a_dropped_call_is_read_by_the_next() {
        let (mut source, changes) = source();
        changes.send_modify(|n| *n += 1);
        // The controller's loop drops the future when another event wins, here during
        // the debounce.
        let dropped =
            tokio::time::timeout(Duration::from_millis(10), Desired::changed(&mut source)).await;
        assert!(dropped.is_err());
        let next =
            tokio::time::timeout(Duration::from_millis(500), Desired::changed(&mut source)).await;
        assert_eq!(next.ok(), Some(Reload::Applied));
    }

    #[tokio::test]
    async fn catching_up_consumes_the_pending_change() {
        let (mut source, changes) = source();
        changes.send_modify(|n| *n += 1);
        source.catch_up();
        let next =
            tokio::time::timeout(Duration::from_millis(200), Desired::changed(&mut source)).await;
        assert!(next.is_err(), "nothing changed since the catch-up");
    }
}
