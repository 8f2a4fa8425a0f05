//! Where this controller stands in the election, as one explicit state ([`Leadership`])
//! that one driver ([`Leader`]) moves through: `Campaigning` → `Leading { epoch }` →
//! `Campaigning` again when the session ends or a write is fenced, and `Stopped` at
//! shutdown.
//!
//! Guarantees: a failed campaign is tried again after [`RETRY`], with a warning; a
//! shutdown ends a campaign at once (without resigning: a candidate that never led has
//! nothing to hand over) and ends a leadership by resigning, so that the next candidate
//! leads now rather than when the session times out; the `leader` gauge is 0 except
//! between [`Leader::announce`] and the end of that leadership.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use crate::lease::election::Election;
use crate::lease::zookeeper::Session;

/// How long after a failed campaign the next one starts.
pub const RETRY: Duration = Duration::from_secs(1);

/// Where this controller stands in the election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// Running for leadership, or about to: writes nothing.
    Campaigning,
    /// Leading: lease writes carry `epoch`, and the store refuses them once another
    /// controller leads.
    Leading {
        /// The epoch of this leadership, higher than every earlier one.
        epoch: i64,
    },
    /// Shut down: resigned, or stopped before it led.
    Stopped,
}

/// The one owner of this controller's [`Leadership`]: campaigns, follows the session,
/// resigns.
#[derive(Debug)]
pub struct Leader<E> {
    election: Arc<E>,
    identity: String,
    gauge: Gauge,
    session: watch::Receiver<Session>,
    state: Leadership,
}

impl<E: Election> Leader<E> {
    /// A controller that is to campaign in `election` as `identity`, showing its
    /// leadership in `gauge` (1 while it leads).
    pub fn new(election: Arc<E>, identity: &str, gauge: Gauge) -> Leader<E> {
        let session = election.session();
        Leader {
            election,
            identity: identity.to_string(),
            gauge,
            session,
            state: Leadership::Campaigning,
        }
    }

    /// Where this controller stands now.
    pub fn state(&self) -> Leadership {
        self.state
    }

    /// True while the session is connected: writes may go through.
    pub fn connected(&self) -> bool {
        *self.session.borrow() == Session::Connected
    }

    /// Campaigns until this controller leads, trying again [`RETRY`] after each failure.
    /// Returns the epoch (now [`Leadership::Leading`]), or `None` once `shutdown` changes
    /// ([`Leadership::Stopped`], without resigning).
    pub async fn campaign(&mut self, shutdown: &mut watch::Receiver<bool>) -> Option<i64> {
        loop {
            self.enter(Leadership::Campaigning);
            let attempt = tokio::select! {
                result = self.election.campaign(&self.identity) => result,
                _ = shutdown.changed() => return self.stop(),
            };
            match attempt {
                Ok(epoch) => return Some(self.lead(epoch)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot run for leadership yet");
                    tokio::select! {
                        () = tokio::time::sleep(RETRY) => {}
                        _ = shutdown.changed() => return self.stop(),
                    }
                }
            }
        }
    }

    /// Shows the leadership in the gauge: called once the first steps as leader are done.
    pub fn announce(&self) {
        if matches!(self.state, Leadership::Leading { .. }) {
            self.gauge.set(1);
        }
    }

    /// Waits for the session to change and returns the state after it: still
    /// [`Leadership::Leading`] after a disconnection or a reconnection (a pass may be due),
    /// [`Leadership::Campaigning`] once the session ended.
    pub async fn session_changed(&mut self) -> Leadership {
        let changed = self.session.changed().await;
        if changed.is_err() || *self.session.borrow() == Session::Expired {
            tracing::warn!("session lost: leadership with it");
            self.enter(Leadership::Campaigning);
        }
        self.state
    }

    /// A lease write was fenced: another controller leads now; back to campaigning.
    pub fn fenced(&mut self) {
        if let Leadership::Leading { epoch } = self.state {
            tracing::warn!(
                epoch,
                "fenced: another controller leads now; running for leadership again"
            );
        }
        self.enter(Leadership::Campaigning);
    }

    /// Shutdown while leading: resigns (a failure is logged: the leadership then ends with
    /// the session) and stops.
    pub async fn resign(&mut self) {
        self.enter(Leadership::Stopped);
        if let Err(e) = self.election.resign().await {
            tracing::warn!(error = %e, "cannot resign; another controller takes over when the session ends");
        }
    }

    fn lead(&mut self, epoch: i64) -> i64 {
        tracing::info!(epoch, identity = %self.identity, "leading");
        self.enter(Leadership::Leading { epoch });
        epoch
    }

    fn stop(&mut self) -> Option<i64> {
        self.enter(Leadership::Stopped);
        None
    }

    /// Moves to `state`; the gauge goes to 0 unless it is a leadership (then
    /// [`Leader::announce`] sets it).
    fn enter(&mut self, state: Leadership) {
        if !matches!(state, Leadership::Leading { .. }) {
            self.gauge.set(0);
        }
        self.state = state;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Mutex;

    use serde_json::json;
    use tokio::time::Instant;

    use super::*;
    use crate::alloc::fixtures::{mk_node, mk_policy, mk_workload};
    use crate::api::Workload;
    use crate::controller::{Seen, UsageHistory, reconcile};
    use crate::lease::memory::{MemoryCandidate, MemoryElection, MemoryStore};
    use crate::lease::{LeaseStore, StoreError};

    fn candidate(
        election: &MemoryElection,
        identity: &str,
    ) -> (Arc<MemoryCandidate>, Leader<MemoryCandidate>) {
        let candidate = Arc::new(election.candidate());
        let leader = Leader::new(Arc::clone(&candidate), identity, Gauge::default());
        (candidate, leader)
    }

    /// Campaigns in a task of its own; the task returns the driver, the epoch and when
    /// the campaign ended.
    fn campaign_apart(
        mut leader: Leader<MemoryCandidate>,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<(Leader<MemoryCandidate>, Option<i64>, Instant)> {
        tokio::spawn(async move {
            let epoch = leader.campaign(&mut shutdown).await;
            (leader, epoch, Instant::now())
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_campaign_is_tried_again_after_one_second_not_before() {
        let election = MemoryElection::new();
        let (a, leader) = candidate(&election, "a");
        a.fail_campaigns(1);
        let (_stop, shutdown) = watch::channel(false);
        let start = Instant::now();
        let task = campaign_apart(leader, shutdown);

        tokio::time::sleep(RETRY - Duration::from_millis(1)).await;
        assert_eq!(a.attempts(), [start], "not tried again before a second");
        assert!(!task.is_finished());

        let (leader, epoch, _) = task.await.unwrap();
        assert_eq!(a.attempts(), [start, start + RETRY]);
        let epoch = epoch.unwrap();
        assert_eq!(leader.state(), Leadership::Leading { epoch });
        assert_eq!(election.leader(), Some(("a".into(), epoch)));
        assert_eq!(leader.gauge.get(), 0, "1 only once announced");
        leader.announce();
        assert_eq!(leader.gauge.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_resignation_hands_leadership_to_the_next_candidate() {
        let election = MemoryElection::new();
        let (_, mut first) = candidate(&election, "a");
        let (_, second) = candidate(&election, "b");
        let (_stop, shutdown) = watch::channel(false);
        let e1 = first.campaign(&mut shutdown.clone()).await.unwrap();
        first.announce();
        let waiting = campaign_apart(second, shutdown);

        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(
            !waiting.is_finished(),
            "the second waits while the first leads"
        );
        assert_eq!(election.leader(), Some(("a".into(), e1)));

        first.resign().await;
        let (second, e2, _) = waiting.await.unwrap();
        let e2 = e2.unwrap();
        assert!(e2 > e1, "epochs increase: {e1} then {e2}");
        assert_eq!(second.state(), Leadership::Leading { epoch: e2 });
        assert_eq!(first.state(), Leadership::Stopped);
        assert_eq!(first.gauge.get(), 0);
        assert_eq!(election.resigned(), [("a".to_string(), e1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_session_sends_the_leader_back_to_campaigning() {
        let election = MemoryElection::new();
        let (a, mut first) = candidate(&election, "a");
        let (_, second) = candidate(&election, "b");
        let (_stop, shutdown) = watch::channel(false);
        let e1 = first.campaign(&mut shutdown.clone()).await.unwrap();
        first.announce();
        let waiting = campaign_apart(second, shutdown.clone());
        tokio::task::yield_now().await;

        a.expire();
        assert_eq!(first.session_changed().await, Leadership::Campaigning);
        assert_eq!(first.state(), Leadership::Campaigning);
        assert_eq!(first.gauge.get(), 0);
        let (mut second, e2, _) = waiting.await.unwrap();
        let e2 = e2.unwrap();
        assert!(e2 > e1, "the next in line leads: {e1} then {e2}");

        // The first runs again, with a new session, behind the second.
        let again = campaign_apart(first, shutdown);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!again.is_finished());
        second.resign().await;
        let (first, e3, _) = again.await.unwrap();
        let e3 = e3.unwrap();
        assert!(e3 > e2, "leads again, later: {e2} then {e3}");
        assert_eq!(first.state(), Leadership::Leading { epoch: e3 });
        assert!(first.connected());
    }

    #[tokio::test(start_paused = true)]
    async fn a_disconnection_keeps_leadership_but_not_writes() {
        let election = MemoryElection::new();
        let (a, mut leader) = candidate(&election, "a");
        let (_stop, mut shutdown) = watch::channel(false);
        let epoch = leader.campaign(&mut shutdown).await.unwrap();

        a.disconnect();
        assert_eq!(
            leader.session_changed().await,
            Leadership::Leading { epoch }
        );
        assert!(!leader.connected());
        a.reconnect();
        assert_eq!(
            leader.session_changed().await,
            Leadership::Leading { epoch }
        );
        assert!(leader.connected());
        assert_eq!(election.leader(), Some(("a".into(), epoch)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_ends_a_campaign_at_once_without_resigning() {
        let election = MemoryElection::new();
        let (_, mut first) = candidate(&election, "a");
        let (_, second) = candidate(&election, "b");
        let (_keep, mut running) = watch::channel(false);
        let e1 = first.campaign(&mut running).await.unwrap();

        // Waiting behind a leader.
        let (stop, shutdown) = watch::channel(false);
        let waiting = campaign_apart(second, shutdown);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let asked = Instant::now();
        stop.send_replace(true);
        let (second, epoch, ended) = waiting.await.unwrap();
        assert_eq!((epoch, ended), (None, asked));
        assert_eq!(second.state(), Leadership::Stopped);

        // Waiting to try again after a failure.
        let (c, third) = candidate(&election, "c");
        c.fail_campaigns(1);
        let (stop, shutdown) = watch::channel(false);
        let retrying = campaign_apart(third, shutdown);
        tokio::time::sleep(RETRY / 10).await;
        let asked = Instant::now();
        stop.send_replace(true);
        let (third, epoch, ended) = retrying.await.unwrap();
        assert_eq!((epoch, ended), (None, asked));
        assert_eq!(third.state(), Leadership::Stopped);
        assert_eq!(c.attempts().len(), 1);

        assert!(
            election.resigned().is_empty(),
            "no candidate that never led resigns"
        );
        assert_eq!(election.leader(), Some(("a".into(), e1)));
    }

    /// What a controller loop over the memory store did, in order.
    #[derive(Clone, Debug, PartialEq)]
    enum Step {
        Led(i64),
        Wrote(i64, usize),
        Fenced(i64),
    }

    type Steps = Arc<Mutex<Vec<Step>>>;

    /// A controller's loop as [`crate::controller::cluster::run`] runs it, over the memory
    /// store: a real pass whenever the workloads or the session change, back to
    /// campaigning when fenced or when the session ends, a resignation at shutdown.
    async fn serve(
        mut leader: Leader<MemoryCandidate>,
        store: Arc<MemoryStore>,
        mut desired: watch::Receiver<Vec<Workload>>,
        mut shutdown: watch::Receiver<bool>,
        steps: Steps,
    ) -> Leader<MemoryCandidate> {
        let policies = [mk_policy("p", json!({"strategy": "Priority"}))];
        let nodes = [mk_node("n1", 4_000, 4_096, &[])];
        let (missing, cordoned) = (BTreeMap::new(), BTreeSet::new());
        let usage = UsageHistory::new(20);
        let seen = Seen {
            nodes: &nodes,
            missing: &missing,
            usage: &usage,
            reports: &[],
            cordoned: &cordoned,
        };
        'campaign: loop {
            let Some(epoch) = leader.campaign(&mut shutdown).await else {
                return leader;
            };
            steps.lock().unwrap().push(Step::Led(epoch));
            leader.announce();
            loop {
                if leader.connected() {
                    let workloads = desired.borrow_and_update().clone();
                    match reconcile(&*store, epoch, &workloads, &policies, &seen).await {
                        Ok(done) => steps.lock().unwrap().push(Step::Wrote(epoch, done.changes)),
                        Err(StoreError::Fenced { .. }) => {
                            steps.lock().unwrap().push(Step::Fenced(epoch));
                            leader.fenced();
                            continue 'campaign;
                        }
                        Err(e) => panic!("pass: {e}"),
                    }
                }
                tokio::select! {
                    _ = desired.changed() => {}
                    state = leader.session_changed() => {
                        if state == Leadership::Campaigning {
                            continue 'campaign;
                        }
                    }
                    _ = shutdown.changed() => {
                        leader.resign().await;
                        return leader;
                    }
                }
            }
        }
    }

    fn web(replicas: u32) -> Vec<Workload> {
        vec![mk_workload("t", "web", replicas, 100, 10, json!({}))]
    }

    #[tokio::test(start_paused = true)]
    async fn a_deposed_leader_is_fenced_by_the_store_and_campaigns_again() {
        let store = Arc::new(MemoryStore::new());
        let election = MemoryElection::fencing(Arc::clone(&store));
        let (a, first) = candidate(&election, "a");
        let (_, second) = candidate(&election, "b");
        // Each its own view of the workloads, so that the first sees a change first.
        let (workloads_a, workloads_b) = (watch::Sender::new(web(2)), watch::Sender::new(web(2)));
        let (stop_a, shutdown_a) = watch::channel(false);
        let (stop_b, shutdown_b) = watch::channel(false);
        let (steps_a, steps_b) = (Steps::default(), Steps::default());
        let first = tokio::spawn(serve(
            first,
            Arc::clone(&store),
            workloads_a.subscribe(),
            shutdown_a,
            Arc::clone(&steps_a),
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let second = tokio::spawn(serve(
            second,
            Arc::clone(&store),
            workloads_b.subscribe(),
            shutdown_b,
            Arc::clone(&steps_b),
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(("a", e1)) = election.leader().as_ref().map(|(i, e)| (i.as_str(), *e)) else {
            panic!("a leads: {:?}", election.leader());
        };
        assert_eq!(
            *steps_a.lock().unwrap(),
            [Step::Led(e1), Step::Wrote(e1, 2)]
        );
        assert!(steps_b.lock().unwrap().is_empty(), "b waits");

        // Its election znode deleted, the first leads no more but does not know it yet.
        a.depose();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(("b", e2)) = election.leader().as_ref().map(|(i, e)| (i.as_str(), *e)) else {
            panic!("b leads: {:?}", election.leader());
        };
        assert!(e2 > e1);
        assert_eq!(
            *steps_a.lock().unwrap(),
            [Step::Led(e1), Step::Wrote(e1, 2)]
        );

        // A change: the store refuses the first's write; the second's goes through.
        workloads_a.send_replace(web(3));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            *steps_a.lock().unwrap(),
            [Step::Led(e1), Step::Wrote(e1, 2), Step::Fenced(e1)]
        );
        assert_eq!(store.leases().await.unwrap().len(), 2);
        workloads_b.send_replace(web(3));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            *steps_b.lock().unwrap(),
            [Step::Led(e2), Step::Wrote(e2, 0), Step::Wrote(e2, 1)]
        );
        let epochs: Vec<i64> = store
            .leases()
            .await
            .unwrap()
            .iter()
            .map(|l| l.epoch)
            .collect();
        assert_eq!(epochs, [e1, e1, e2]);

        // The first campaigns again, behind the second: a shutdown ends that at once; the
        // second, leading, resigns.
        stop_a.send_replace(true);
        assert_eq!(first.await.unwrap().state(), Leadership::Stopped);
        stop_b.send_replace(true);
        let second = second.await.unwrap();
        assert_eq!(second.state(), Leadership::Stopped);
        assert_eq!(second.gauge.get(), 0);
        assert_eq!(election.resigned(), [("b".to_string(), e2)]);
        // As in ZooKeeper, the place of the campaign that the shutdown ended stays until
        // the session does.
        let Some(("a", e3)) = election.leader().as_ref().map(|(i, e)| (i.as_str(), *e)) else {
            panic!("a's place leads: {:?}", election.leader());
        };
        assert!(e3 > e2);
    }
}
