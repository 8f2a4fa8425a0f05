//! A [`LeaseStore`] and an [`Election`] in memory, with no I/O, for measuring and testing
//! the loops above them (a controller pass at scale, the leader's logic) without a
//! server; corral itself never runs on them.
//!
//! - [`MemoryStore`] keeps the same contract as ZooKeeper's and the embedded store
//!   (fenced lease batches, one set of reports per node).
//! - [`MemoryElection`] runs an election among the candidates of one process as
//!   ZooKeeper's does: candidates line up in the order they run, the first in line leads,
//!   and each place has a higher epoch than every earlier one, so epochs strictly increase
//!   from one leadership to the next. A test can end a candidate's session, delete its
//!   place, or make its campaigns fail. Wired to a store ([`MemoryElection::fencing`]),
//!   it fences the lease writes of a leader the moment it stops leading, as ZooKeeper
//!   refuses a write whose election znode is gone.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use tokio::time::Instant;

use super::election::Election;
use super::zookeeper::Session;
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
    /// The highest epoch that wrote, or that [`MemoryStore::fence_below`] allows: a
    /// batch from a lower one is fenced, as a deposed leader's is.
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

    /// Refuses from now on every lease batch of an epoch below `epoch`, as ZooKeeper
    /// refuses a deposed leader's the moment its election znode goes.
    pub fn fence_below(&self, epoch: i64) {
        let mut state = self.state();
        state.epoch = state.epoch.max(epoch);
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

/// An election in memory among the candidates of one process; see the [module](self).
/// Clones are the same election.
#[derive(Clone, Debug)]
pub struct MemoryElection {
    inner: Arc<Ballot>,
}

#[derive(Debug)]
struct Ballot {
    line: Mutex<Line>,
    /// Bumped at every change of the line, for the candidates that wait.
    changed: watch::Sender<u64>,
    /// The store whose lease writes follow the election.
    store: Option<Arc<MemoryStore>>,
}

#[derive(Debug, Default)]
struct Line {
    /// The candidates in line, earliest first: the first leads.
    places: Vec<Place>,
    /// The last epoch given to a place.
    last_epoch: i64,
    /// Candidates made so far, for their ids.
    candidates: u64,
    /// The leaderships given up, in order: identity and epoch.
    resigned: Vec<(String, i64)>,
}

#[derive(Clone, Debug)]
struct Place {
    candidate: u64,
    epoch: i64,
    identity: String,
}

impl Default for MemoryElection {
    fn default() -> Self {
        MemoryElection::with_store(None)
    }
}

impl MemoryElection {
    /// An election with no candidate yet, fencing no store.
    pub fn new() -> MemoryElection {
        MemoryElection::default()
    }

    /// An election that fences `store`: whenever a leader stops leading, a lease batch of
    /// its epoch is refused.
    pub fn fencing(store: Arc<MemoryStore>) -> MemoryElection {
        MemoryElection::with_store(Some(store))
    }

    fn with_store(store: Option<Arc<MemoryStore>>) -> MemoryElection {
        MemoryElection {
            inner: Arc::new(Ballot {
                line: Mutex::new(Line::default()),
                changed: watch::Sender::new(0),
                store,
            }),
        }
    }

    /// A new candidate, with a session of its own.
    pub fn candidate(&self) -> MemoryCandidate {
        let id = {
            let mut line = self.line();
            line.candidates += 1;
            line.candidates
        };
        MemoryCandidate {
            election: self.clone(),
            id,
            session: watch::Sender::new(Session::Connected),
            failures: Mutex::new(0),
            attempts: Mutex::new(Vec::new()),
        }
    }

    /// The leader's identity and epoch: the first in line, if any.
    pub fn leader(&self) -> Option<(String, i64)> {
        self.line()
            .places
            .first()
            .map(|p| (p.identity.clone(), p.epoch))
    }

    /// The leaderships given up so far, in order: identity and epoch.
    pub fn resigned(&self) -> Vec<(String, i64)> {
        self.line().resigned.clone()
    }

    /// Puts `candidate` at the end of the line with a new epoch, leaving any place it
    /// held (in ZooKeeper, that znode is gone by then: the session ended or a write was
    /// fenced). Returns the epoch.
    fn stand(&self, candidate: u64, identity: &str) -> i64 {
        self.leave(candidate);
        let mut line = self.line();
        line.last_epoch += 1;
        let epoch = line.last_epoch;
        line.places.push(Place {
            candidate,
            epoch,
            identity: identity.to_string(),
        });
        drop(line);
        self.inner.changed.send_modify(|n| *n += 1);
        epoch
    }

    /// Waits until the place `epoch` of `candidate` is first in line.
    async fn wait_to_lead(&self, candidate: u64, epoch: i64) -> Result<i64, StoreError> {
        let mut changed = self.inner.changed.subscribe();
        loop {
            let place = {
                let line = self.line();
                line.places
                    .iter()
                    .position(|p| p.candidate == candidate && p.epoch == epoch)
            };
            match place {
                Some(0) => return Ok(epoch),
                Some(_) => {}
                None => {
                    return Err(StoreError::Unavailable(
                        "the candidate's place in the election is gone: the session ended".into(),
                    ));
                }
            }
            // The sender lives as long as `self`: an error cannot come.
            let _ = changed.changed().await;
        }
    }

    /// Gives up `candidate`'s leadership, if it leads, and records it.
    fn resign(&self, candidate: u64) {
        let leads = self
            .line()
            .places
            .first()
            .is_some_and(|p| p.candidate == candidate);
        if leads && let Some(place) = self.leave(candidate) {
            self.line().resigned.push((place.identity, place.epoch));
        }
    }

    /// Removes `candidate`'s place; when it led, fences its epoch and the next in line
    /// leads. Returns the place removed.
    fn leave(&self, candidate: u64) -> Option<Place> {
        let (place, led) = {
            let mut line = self.line();
            let index = line.places.iter().position(|p| p.candidate == candidate)?;
            (line.places.remove(index), index == 0)
        };
        if led && let Some(store) = &self.inner.store {
            store.fence_below(place.epoch + 1);
        }
        self.inner.changed.send_modify(|n| *n += 1);
        Some(place)
    }

    fn line(&self) -> MutexGuard<'_, Line> {
        self.inner.line.locked()
    }
}

/// One candidate of a [`MemoryElection`], with its own session: what one controller
/// process is to ZooKeeper's election.
#[derive(Debug)]
pub struct MemoryCandidate {
    election: MemoryElection,
    id: u64,
    session: watch::Sender<Session>,
    /// Campaigns still to fail at once.
    failures: Mutex<u32>,
    /// When each campaign started.
    attempts: Mutex<Vec<Instant>>,
}

impl MemoryCandidate {
    /// Makes the next `count` campaigns fail at once, as when ZooKeeper cannot be reached.
    pub fn fail_campaigns(&self, count: u32) {
        *self.failures.locked() = count;
    }

    /// When each campaign so far started (tokio's clock, paused or not).
    pub fn attempts(&self) -> Vec<Instant> {
        self.attempts.locked().clone()
    }

    /// Ends the session: the candidate's place goes (the next in line leads, a campaign
    /// waiting fails) and the session reads [`Session::Expired`] until the next
    /// campaign, which starts a new session.
    pub fn expire(&self) {
        self.election.leave(self.id);
        self.session.send_replace(Session::Expired);
    }

    /// Loses the connection but not the session: leadership stays, writes must wait.
    pub fn disconnect(&self) {
        self.session.send_replace(Session::Disconnected);
    }

    /// Connects again within the session.
    pub fn reconnect(&self) {
        self.session.send_replace(Session::Connected);
    }

    /// Deletes this candidate's place, as a person deleting its election znode would:
    /// its session goes on, and a leader learns it only from a fenced write.
    pub fn depose(&self) {
        self.election.leave(self.id);
    }

    /// True when a campaign is to fail now; counts it.
    fn take_failure(&self) -> bool {
        let mut failures = self.failures.locked();
        let fail = *failures > 0;
        *failures = failures.saturating_sub(1);
        fail
    }
}

impl Election for MemoryCandidate {
    async fn campaign(&self, identity: &str) -> Result<i64, StoreError> {
        self.attempts.locked().push(Instant::now());
        if self.take_failure() {
            return Err(StoreError::Unavailable("a campaign made to fail".into()));
        }
        // An ended session is replaced by a new one, as `ZkStore` builds one.
        self.session.send_if_modified(|s| {
            let ended = *s == Session::Expired;
            if ended {
                *s = Session::Connected;
            }
            ended
        });
        let epoch = self.election.stand(self.id, identity);
        self.election.wait_to_lead(self.id, epoch).await
    }

    async fn resign(&self) -> Result<(), StoreError> {
        self.election.resign(self.id);
        Ok(())
    }

    fn session(&self) -> watch::Receiver<Session> {
        self.session.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::fixtures::mk_lease;

    fn put(epoch: i64) -> Vec<LeaseChange> {
        vec![LeaseChange::Put(Box::new(mk_lease("n1", "web", 0, epoch)))]
    }

    #[tokio::test]
    async fn a_leader_is_fenced_the_moment_it_stops_leading() {
        let store = Arc::new(MemoryStore::new());
        let election = MemoryElection::fencing(Arc::clone(&store));
        let (a, b) = (election.candidate(), election.candidate());
        let e1 = a.campaign("a").await.unwrap();
        store.write_leases(e1, &put(e1)).await.unwrap();

        // No one else leads yet: its writes are refused all the same.
        a.depose();
        assert_eq!(election.leader(), None);
        assert!(matches!(
            store.write_leases(e1, &put(e1)).await,
            Err(StoreError::Fenced { ours }) if ours == e1
        ));

        let e2 = b.campaign("b").await.unwrap();
        assert!(e2 > e1);
        store.write_leases(e2, &put(e2)).await.unwrap();
        b.resign().await.unwrap();
        assert!(store.write_leases(e2, &put(e2)).await.is_err());
        assert_eq!(election.resigned(), [("b".to_string(), e2)]);
    }

    #[tokio::test]
    async fn a_waiting_campaign_fails_when_its_session_ends() {
        let election = MemoryElection::new();
        let (a, b) = (election.candidate(), election.candidate());
        let e1 = a.campaign("a").await.unwrap();
        let mut session = b.session();
        let (waited, ()) = tokio::join!(b.campaign("b"), async {
            tokio::task::yield_now().await;
            b.expire();
        });
        assert!(matches!(waited, Err(StoreError::Unavailable(_))));
        assert_eq!(*session.borrow_and_update(), Session::Expired);
        assert_eq!(election.leader(), Some(("a".into(), e1)));

        // The next campaign has a new session, and a place behind the leader.
        a.resign().await.unwrap();
        let e2 = b.campaign("b").await.unwrap();
        assert!(e2 > e1);
        assert_eq!(*session.borrow(), Session::Connected);
    }

    #[tokio::test]
    async fn a_campaign_made_to_fail_fails_at_once() {
        let election = MemoryElection::new();
        let a = election.candidate();
        a.fail_campaigns(2);
        assert!(a.campaign("a").await.is_err());
        assert!(a.campaign("a").await.is_err());
        assert_eq!(election.leader(), None);
        let epoch = a.campaign("a").await.unwrap();
        assert_eq!(election.leader(), Some(("a".into(), epoch)));
        assert_eq!(a.attempts().len(), 3);
    }
}
