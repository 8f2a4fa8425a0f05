//! What the leading controller knows of the cluster between passes, kept current by
//! ZooKeeper watches instead of read whole every pass: at a thousand nodes, reading every
//! registration, lease and report each pass took seconds of round trips and decoding.
//!
//! - Registrations: the persistent watch on `/nodes` logs which nodes changed
//!   ([`ZkStore::subscribe_changes`]); a pass reads only those.
//! - Leases: this controller is their only writer while it leads (every write is fenced by
//!   its election znode), so after one full read its cache is what it read plus what it
//!   wrote. A write that fails, for whatever reason, drops the cache.
//! - Reports: the persistent watch on `/reports` logs which nodes wrote; a read of the
//!   reports reads only those, after a round trip that makes sure every event of a write
//!   made before it has arrived (so it is as fresh as a full read).
//! - Remembered registrations (`/leases/<node>`, kept for a later leader) are written only
//!   when they change, and read back only on a full read.
//!
//! Guarantees: everything is read whole at the start of each leadership (so a new leader
//! never rests on what a predecessor's watches said), after a reconnect or a new session
//! (ZooKeeper does not replay what a persistent watch missed), after a failed read or
//! write, and at least every [`FULL_READ`] as a safety net, which also corrects a lease
//! that someone other than the leader wrote (possible only in open mode or with a shared
//! identity). Fencing is the store's, untouched: every lease write still checks the
//! writer's election znode.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::leases;
use crate::lease::zookeeper::{ChangeLog, Changes, ZkStore};
use crate::lease::{Lease, LeaseChange, LeaseStore, NodeRegistration, Report, StoreError};
use crate::sync::Lock;

/// The safety net: everything is read whole at least this often.
pub const FULL_READ: Duration = Duration::from_secs(60);

/// The cluster as the leader last read it.
pub struct ClusterCache {
    store: Arc<ZkStore>,
    /// Which nodes' registrations changed (events below `/nodes`).
    nodes_log: ChangeLog,
    /// Which nodes wrote reports (events below `/reports`).
    reports_log: ChangeLog,
    /// Live registrations, by node.
    registered: BTreeMap<String, NodeRegistration>,
    /// What this leader last wrote to each `/leases/<node>`.
    remembered: BTreeMap<String, NodeRegistration>,
    /// The remembered registrations are to be read back at the next pass.
    read_remembered: bool,
    /// Every lease in the store, once read; `None` until read, and after a failed write.
    leases: Mutex<Option<Vec<Lease>>>,
    /// Every node's reports, by node.
    reports: Mutex<BTreeMap<String, Vec<Report>>>,
    /// When everything was last marked to be read whole.
    last_full: Instant,
}

impl ClusterCache {
    /// A cache that reads everything at first, following the changes that `nodes_log`
    /// (below `/nodes`) and `reports_log` (below `/reports`) record.
    pub fn new(store: Arc<ZkStore>, nodes_log: ChangeLog, reports_log: ChangeLog) -> ClusterCache {
        ClusterCache {
            store,
            nodes_log,
            reports_log,
            registered: BTreeMap::new(),
            remembered: BTreeMap::new(),
            read_remembered: true,
            leases: Mutex::new(None),
            reports: Mutex::new(BTreeMap::new()),
            last_full: Instant::now(),
        }
    }

    /// Marks everything to be read whole: at the start of a leadership and after a
    /// failure.
    pub fn invalidate(&mut self) {
        self.remembered.clear();
        self.read_remembered = true;
        self.read_again();
    }

    /// Registrations, leases and reports to be read whole. What this leader wrote to the
    /// nodes' `/leases/<node>` is kept: no one else writes there while it leads, and its
    /// tracker already knows every node it read back at the start of its leadership.
    fn read_again(&mut self) {
        everything(&self.nodes_log);
        everything(&self.reports_log);
        *self.leases.locked() = None;
        self.last_full = Instant::now();
    }

    /// The safety net: registrations, leases and reports read whole when the last full
    /// read is [`FULL_READ`] old.
    pub fn expire(&mut self, now: Instant) {
        if now.duration_since(self.last_full) >= FULL_READ {
            tracing::debug!("reading the whole cluster again (safety net)");
            self.read_again();
        }
    }

    /// The registered nodes, and (on a full read only) the remembered registrations of the
    /// nodes that hold leases, as [`super::nodes::NodeTracker::observe`] takes them. Writes
    /// each registration that changed to its `/leases/<node>`, for a later leader.
    ///
    /// # Errors
    /// ZooKeeper refused or did not answer; everything is read again next time.
    pub async fn registrations(
        &mut self,
    ) -> Result<(Vec<NodeRegistration>, Vec<NodeRegistration>), StoreError> {
        match self.read_nodes().await {
            Ok(read) => Ok(read),
            Err(e) => {
                self.invalidate();
                Err(e)
            }
        }
    }

    async fn read_nodes(
        &mut self,
    ) -> Result<(Vec<NodeRegistration>, Vec<NodeRegistration>), StoreError> {
        let changes = take(&self.nodes_log);
        if changes.all {
            self.registered = self
                .store
                .nodes()
                .await?
                .into_iter()
                .map(|r| (r.name.clone(), r))
                .collect();
        } else {
            let names: Vec<String> = nodes_named(&changes, "nodes").into_iter().collect();
            if !names.is_empty() {
                for name in &names {
                    self.registered.remove(name);
                }
                for registration in self.store.nodes_named(&names).await? {
                    self.registered
                        .insert(registration.name.clone(), registration);
                }
            }
        }
        for registration in self.registered.values() {
            if self.remembered.get(&registration.name) != Some(registration) {
                self.store.remember_node(registration).await?;
                self.remembered
                    .insert(registration.name.clone(), registration.clone());
            }
        }
        let remembered = if self.read_remembered {
            let read = self.store.remembered_nodes().await?;
            self.read_remembered = false;
            read
        } else {
            Vec::new()
        };
        Ok((self.registered.values().cloned().collect(), remembered))
    }

    /// Every node's reports, current as of this call: the nodes that wrote since the last
    /// read are read again.
    ///
    /// # Errors
    /// ZooKeeper refused or did not answer; everything is read again next time.
    pub async fn read_reports(&self) -> Result<Vec<Report>, StoreError> {
        let result = self.refresh_reports().await;
        if result.is_err() {
            everything(&self.reports_log);
        }
        result
    }

    async fn refresh_reports(&self) -> Result<Vec<Report>, StoreError> {
        // Every event of a report written before now arrives before this returns.
        self.store.barrier().await?;
        let changes = take(&self.reports_log);
        if changes.all {
            let mut by_node: BTreeMap<String, Vec<Report>> = BTreeMap::new();
            for report in self.store.reports().await? {
                by_node.entry(report.node.clone()).or_default().push(report);
            }
            *self.reports.locked() = by_node;
        } else {
            let names: Vec<String> = nodes_named(&changes, "reports").into_iter().collect();
            if !names.is_empty() {
                let read = self.store.reports_of(&names).await?;
                {
                    let mut reports = self.reports.locked();
                    for name in &names {
                        reports.remove(name);
                    }
                    reports.extend(read);
                }
            }
        }
        Ok(self.reports.locked().values().flatten().cloned().collect())
    }
}

/// Leases from the cache, written through to the store; reports as
/// [`ClusterCache::read_reports`] reads them. What [`super::reconcile`] is given.
impl LeaseStore for ClusterCache {
    async fn register_node(&self, node: &NodeRegistration) -> Result<(), StoreError> {
        self.store.register_node(node).await
    }

    async fn nodes(&self) -> Result<Vec<NodeRegistration>, StoreError> {
        self.store.nodes().await
    }

    async fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        if let Some(leases) = self.leases.locked().clone() {
            return Ok(leases);
        }
        let read = self.store.leases().await?;
        *self.leases.locked() = Some(read.clone());
        Ok(read)
    }

    async fn write_leases(&self, epoch: i64, changes: &[LeaseChange]) -> Result<(), StoreError> {
        let result = self.store.write_leases(epoch, changes).await;
        {
            let mut leases = self.leases.locked();
            *leases = match (&result, leases.take()) {
                (Ok(()), Some(current)) => Some(leases::apply(current, changes)),
                // Some batches may have been written, others not: read them again.
                _ => None,
            };
        }
        result
    }

    async fn reports(&self) -> Result<Vec<Report>, StoreError> {
        self.read_reports().await
    }

    async fn write_reports(&self, node: &str, reports: &[Report]) -> Result<(), StoreError> {
        self.store.write_reports(node, reports).await
    }
}

fn take(log: &ChangeLog) -> Changes {
    // A poisoned log may have lost paths: read everything.
    let poisoned = log.is_poisoned();
    let taken = log.locked().take();
    if poisoned { Changes::default() } else { taken }
}

fn everything(log: &ChangeLog) {
    {
        let mut changes = log.locked();
        changes.all = true;
        changes.paths.clear();
    }
}

/// The nodes named by the changed paths below `/<dir>`: `/<dir>/<node>` and anything
/// below it.
fn nodes_named(changes: &Changes, dir: &str) -> BTreeSet<String> {
    changes
        .paths
        .iter()
        .filter_map(|path| {
            let mut parts = path.split('/').skip(1);
            match (parts.next(), parts.next()) {
                (Some(top), Some(node)) if top == dir && !node.is_empty() => Some(node.to_string()),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_paths_name_their_nodes() {
        let changes = Changes {
            all: false,
            paths: [
                "/nodes",
                "/nodes/n1",
                "/nodes/n1/agent",
                "/nodes/n2/agent",
                "/reports/n3",
                "/nodes/",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
        };
        assert_eq!(
            nodes_named(&changes, "nodes"),
            BTreeSet::from(["n1".to_string(), "n2".to_string()])
        );
        assert_eq!(
            nodes_named(&changes, "reports"),
            BTreeSet::from(["n3".to_string()])
        );
    }

    #[test]
    fn a_new_log_asks_for_everything_and_a_take_leaves_nothing() {
        let log = ChangeLog::default();
        assert!(take(&log).all);
        let after = take(&log);
        assert!(!after.all && after.paths.is_empty());
        everything(&log);
        assert!(take(&log).all);
    }
}
