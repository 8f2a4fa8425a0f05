//! Leader election as the controller's loops see it: run for leadership until leading,
//! with an epoch; learn when the session that holds it ends; give it up.
//!
//! Two elections keep this contract: ZooKeeper's ([`ZkStore`], ephemeral sequential
//! znodes) and one in memory ([`super::memory::MemoryElection`]), which lets the loops be
//! tested without a server and with tokio's paused time.
//!
//! Guarantees of every [`Election`]: epochs strictly increase from one leadership to the
//! next; a candidate leads until it resigns, its session ends ([`Session::Expired`]), or
//! its place in the election is deleted; and once it no longer leads, the store it
//! fences refuses its lease writes ([`super::StoreError::Fenced`]), so a leader that has
//! not yet noticed writes nothing (ZooKeeper's always; the memory election, the
//! [`super::memory::MemoryStore`] it is given with
//! [`super::memory::MemoryElection::fencing`]).

use std::future::Future;

use tokio::sync::watch;

use super::StoreError;
use super::zookeeper::{Session, ZkStore};

/// An election among controllers, as one candidate takes part in it.
pub trait Election: Send + Sync {
    /// Runs for leadership and returns once this candidate leads, with its epoch: higher
    /// than every earlier leader's. Dropping the future stops waiting.
    ///
    /// # Errors
    /// The session ended or the store cannot be reached; run again later.
    fn campaign(&self, identity: &str) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Gives up leadership, so that the next candidate leads at once rather than when the
    /// session times out. Does nothing when this candidate does not lead.
    ///
    /// # Errors
    /// The store could not be told; the leadership ends with the session.
    fn resign(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The session's state, as it changes: [`Session::Expired`] means the leadership is
    /// gone, [`Session::Disconnected`] that writes must wait.
    fn session(&self) -> watch::Receiver<Session>;
}

/// ZooKeeper's election, exactly as [`ZkStore::campaign`], [`ZkStore::resign`] and
/// [`ZkStore::session`] run it.
impl Election for ZkStore {
    fn campaign(&self, identity: &str) -> impl Future<Output = Result<i64, StoreError>> + Send {
        ZkStore::campaign(self, identity)
    }

    fn resign(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        ZkStore::resign(self)
    }

    fn session(&self) -> watch::Receiver<Session> {
        ZkStore::session(self)
    }
}
