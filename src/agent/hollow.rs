//! Hollow agents, as Kubernetes' kubemark has hollow kubelets: many simulated nodes in one
//! process, to measure the controller and ZooKeeper at a scale this machine cannot run for
//! real.
//!
//! Each hollow agent is a node to everyone else: its own ZooKeeper session, registered
//! through the path a real agent takes ([`super::daemon::register`]: the join request when
//! the cluster uses identities, the registration, the ephemeral `agent` znode), its leases
//! followed and vetted by the real agent's reader ([`super::daemon::read_leases`]) and its
//! reports sent by the real agent's writer. Only the enforcement is hollow: it touches no
//! cgroup and starts no process, and reports every accepted lease as running and ready,
//! with the knob values a real agent would write (computed by the same pure functions,
//! [`crate::agent::desired`]) and the lease's revision.
//!
//! A hollow agent ends as a real one does: its process killed, its session times out; one
//! stopped on purpose ([`Hollow::stop`]) closes its session, and its registration goes at
//! once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::daemon::{self, Vetted};
use super::desired::desired_tree;
use super::trust;
use crate::alloc::ReplicaKey;
use crate::cgroup::layout::Mode;
use crate::cgroup::tree::{GroupPath, Work};
use crate::lease::zookeeper::{Role, ZkConfig, ZkStore};
use crate::lease::{
    FORMAT_VERSION, Lease, NodeRegistration, ProcessReport, ProcessState, Report, unix_now,
};
use crate::sync::Lock;

/// The cgroup mode hollow nodes register with, and whose knobs they report.
pub const HOLLOW_CGROUP_MODE: Mode = Mode::V2;

/// The v2 controllers a hollow node pretends its root enables for its tenants.
const HOLLOW_CONTROLLERS: [&str; 4] = ["cpu", "io", "memory", "pids"];

/// The page size hollow nodes compute memory values with.
const HOLLOW_PAGE_SIZE: i64 = 4096;

/// How many hollow agents connect to ZooKeeper at once when the process starts: a thousand
/// sessions opened in the same instant would only queue at the servers.
const CONNECT_CONCURRENCY: usize = 16;

/// The reports a hollow node writes for `leases`: each replica running and ready, with the
/// values a real agent on cgroup v2 would apply, and `changed_at` kept from `last` where
/// nothing else changed (as a real agent keeps it).
pub fn hollow_reports(
    node: &str,
    leases: &[Lease],
    last: &BTreeMap<ReplicaKey, Report>,
) -> Vec<Report> {
    let (desired, refused) = desired_tree(leases, true, &HOLLOW_CONTROLLERS, HOLLOW_PAGE_SIZE);
    let mut reports = Vec::with_capacity(leases.len());
    for lease in leases {
        let mut problems = Vec::new();
        if let Some((_, reason)) = refused.iter().find(|(key, _)| *key == lease.key) {
            problems.push(reason.clone());
        }
        let applied = GroupPath::replica(&lease.key)
            .ok()
            .and_then(|group| desired.groups.get(&group))
            .map(|group| {
                group
                    .knobs
                    .iter()
                    .map(|(knob, value)| ((*knob).to_string(), value.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let adopted = matches!(lease.work, Work::Adopt(_));
        let process = ProcessReport {
            state: if adopted {
                ProcessState::Adopted
            } else {
                ProcessState::Running
            },
            pid: None,
            pids: 1,
            restarts: 0,
            last_exit: None,
            revision: (!adopted && !lease.revision.is_empty()).then(|| lease.revision.clone()),
            ready: Some(problems.is_empty()),
        };
        let mut report = Report {
            version: FORMAT_VERSION,
            key: Some(lease.key.clone()),
            node: node.to_string(),
            lease_epoch: lease.epoch,
            applied,
            usage: None,
            process,
            problems,
            drift: None,
            changed_at: 0,
        };
        report.changed_at = match last.get(&lease.key) {
            Some(before)
                if Report {
                    changed_at: 0,
                    ..before.clone()
                } == report =>
            {
                before.changed_at
            }
            _ => unix_now(),
        };
        reports.push(report);
    }
    reports
}

/// One hollow node, as it runs: the node's name and how to stop it.
struct Member {
    name: String,
    stop: watch::Sender<bool>,
}

/// Hollow agents running in this process.
pub struct Hollow {
    members: Mutex<Vec<Member>>,
}

impl Hollow {
    /// The names of the hollow nodes still running.
    pub fn nodes(&self) -> Vec<String> {
        self.members
            .locked()
            .iter()
            .map(|m| m.name.clone())
            .collect()
    }

    /// Stops the hollow agent of `node`: its session is closed, so its registration goes at
    /// once, as when a real agent stops. False when no such agent runs here.
    pub fn stop(&self, node: &str) -> bool {
        let mut members = self.members.locked();
        let Some(at) = members.iter().position(|m| m.name == node) else {
            return false;
        };
        members.remove(at).stop.send_replace(true);
        true
    }
}

/// Starts a hollow agent for each of `registrations`, each with its own session of
/// `config`, and returns at once; each agent stops when `shutdown` changes or when
/// [`Hollow::stop`] names it. The tasks are spawned on the current runtime.
pub fn start(
    config: &ZkConfig,
    registrations: Vec<NodeRegistration>,
    resync: Duration,
    shutdown: &watch::Receiver<bool>,
) -> Arc<Hollow> {
    let hollow = Arc::new(Hollow {
        members: Mutex::new(Vec::new()),
    });
    let gate = Arc::new(tokio::sync::Semaphore::new(CONNECT_CONCURRENCY));
    for registration in registrations {
        let (stop, stopped) = watch::channel(false);
        {
            let mut members = hollow.members.locked();
            members.push(Member {
                name: registration.name.clone(),
                stop: stop.clone(),
            });
        }
        // Either the process's shutdown or this agent's own stop ends it.
        let mut all = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = all.changed() => {}
                () = stop.closed() => {}
            }
            stop.send_replace(true);
        });
        let mut config = config.clone();
        config.role = Role::Agent;
        tokio::spawn(run_one(
            config,
            registration,
            resync,
            Arc::clone(&gate),
            stopped,
        ));
    }
    hollow
}

/// One hollow agent: connects (at most [`CONNECT_CONCURRENCY`] at once), registers, and
/// reports its leases as running until `shutdown` changes.
async fn run_one(
    config: ZkConfig,
    registration: NodeRegistration,
    resync: Duration,
    gate: Arc<tokio::sync::Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let node = registration.name.clone();
    let mut delay = Duration::from_millis(200);
    let store = loop {
        let connected = {
            let _turn = gate.acquire().await;
            ZkStore::connect(config.clone()).await
        };
        match connected {
            Ok(store) => break store,
            Err(e) => {
                tracing::warn!(%node, error = %e, "hollow agent cannot connect to ZooKeeper yet");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    };
    let Some(leases_changed) = daemon::register(&store, &registration, &mut shutdown).await else {
        return;
    };
    tracing::debug!(%node, "hollow agent registered");
    let (leases_tx, mut leases_rx) = watch::channel::<Option<Vetted>>(None);
    let (reports_tx, reports_rx) = watch::channel::<Option<Vec<Report>>>(None);
    let reader = tokio::spawn(daemon::read_leases(
        Arc::clone(&store),
        node.clone(),
        leases_changed,
        resync,
        leases_tx,
    ));
    let writer = tokio::spawn(daemon::write_reports(
        Arc::clone(&store),
        node.clone(),
        reports_rx,
    ));
    let mut last: BTreeMap<ReplicaKey, Report> = BTreeMap::new();
    loop {
        tokio::select! {
            changed = leases_rx.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = shutdown.changed() => break,
        }
        let Some((leases, refused, _)) = leases_rx.borrow_and_update().clone() else {
            continue;
        };
        let mut reports = hollow_reports(&node, &leases, &last);
        last = reports
            .iter()
            .filter_map(|r| r.key.clone().map(|k| (k, r.clone())))
            .collect();
        trust::report_refusals(&node, &mut reports, &refused);
        reports_tx.send_replace(Some(reports));
    }
    // The reader and writer hold the store: once they are gone, dropping it closes the
    // session, and the node's registration goes with it.
    reader.abort();
    writer.abort();
    let _ = reader.await;
    let _ = writer.await;
    drop(store);
    tracing::debug!(%node, "hollow agent stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::fixtures::mk_lease;

    #[test]
    fn every_lease_is_reported_running_and_ready_with_its_revision_and_values() {
        let mut lease = mk_lease("n1", "web", 0, 7);
        lease.revision = "abc123".into();
        let reports = hollow_reports("n1", &[lease.clone()], &BTreeMap::new());
        assert_eq!(reports.len(), 1);
        let report = &reports[0];
        assert_eq!(report.key.as_ref(), Some(&lease.key));
        assert_eq!(report.node, "n1");
        assert_eq!(report.lease_epoch, 7);
        assert_eq!(report.process.state, crate::lease::ProcessState::Running);
        assert_eq!(report.process.ready, Some(true));
        assert_eq!(report.process.revision.as_deref(), Some("abc123"));
        assert!(
            report.applied.contains_key("cpu.weight"),
            "{:?}",
            report.applied
        );
        assert!(report.problems.is_empty());
    }

    #[test]
    fn an_unchanged_report_keeps_when_it_changed() {
        let lease = mk_lease("n1", "web", 0, 7);
        let first = hollow_reports("n1", std::slice::from_ref(&lease), &BTreeMap::new());
        let mut earlier = first[0].clone();
        earlier.changed_at = 12;
        let last = BTreeMap::from([(lease.key.clone(), earlier)]);
        let again = hollow_reports("n1", &[lease], &last);
        assert_eq!(again[0].changed_at, 12);
    }
}
