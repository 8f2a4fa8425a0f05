//! A [`LeaseStore`] in memory: the same contract as ZooKeeper's and the embedded store's
//! (fenced lease batches, one set of reports per node), with no I/O. For measuring and
//! testing the loops above the store (a controller pass at scale, the leader's logic)
//! without a server; corral itself never runs on it.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use super::{Lease, LeaseChange, LeaseStore, NodeRegistration, Report, StoreError};
use crate::alloc::ReplicaKey;
use crate::sync::Lock;

/// Everything a store holds, in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    nodes: BTreeMap<String, NodeRegistration>,
    leases: BTreeMap<(String, ReplicaKey), Lease>,
    reports: BTreeMap<String, Vec<Report>>,
    /// The highest epoch that wrote: a batch from a lower one is fenced, as a deposed
    /// leader's is.
    epoch: i64,
    /// Lease batches written.
    batches: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// How many lease batches were written (an empty one is not a write).
    pub fn batches(&self) -> u64 {
        self.state().batches
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.locked()
    }
}

impl LeaseStore for MemoryStore {
    async fn register_node(&self, node: &NodeRegistration) -> Result<(), StoreError> {
        self.state().nodes.insert(node.name.clone(), node.clone());
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeRegistration>, StoreError> {
        Ok(self.state().nodes.values().cloned().collect())
    }

    async fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        Ok(self.state().leases.values().cloned().collect())
    }

    async fn node_leases(&self, node: &str) -> Result<Vec<Lease>, StoreError> {
        Ok(self
            .state()
            .leases
            .range((node.to_string(), ReplicaKey::new("", "", 0))..)
            .take_while(|((n, _), _)| n == node)
            .map(|(_, l)| l.clone())
            .collect())
    }

    async fn write_leases(&self, epoch: i64, changes: &[LeaseChange]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut state = self.state();
        if epoch < state.epoch {
            return Err(StoreError::Fenced { ours: epoch });
        }
        state.epoch = epoch;
        for change in changes {
            match change {
                LeaseChange::Put(lease) => {
                    state
                        .leases
                        .insert((lease.node.clone(), lease.key.clone()), (**lease).clone());
                }
                LeaseChange::Delete { node, key } => {
                    state.leases.remove(&(node.clone(), key.clone()));
                }
            }
        }
        state.batches += 1;
        Ok(())
    }

    async fn reports(&self) -> Result<Vec<Report>, StoreError> {
        Ok(self.state().reports.values().flatten().cloned().collect())
    }

    async fn write_reports(&self, node: &str, reports: &[Report]) -> Result<(), StoreError> {
        self.state()
            .reports
            .insert(node.to_string(), reports.to_vec());
        Ok(())
    }
}
