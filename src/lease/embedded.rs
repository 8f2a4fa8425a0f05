//! The embedded lease store of `corral run`: JSON files under the state directory, each
//! replaced atomically (write a temporary file, then rename), guarded by an advisory lock
//! so that `corral status` and `corral down` can read and write beside a running corral.
//! The store's asynchronous methods do their file work (the lock, reads, fsync) on
//! tokio's blocking threads, never on the executor's.
//!
//! ```text
//! <state>/store/nodes.json     registrations
//! <state>/store/leases.json    every lease, and the controller epoch
//! <state>/store/reports.json   every report
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{FORMAT_VERSION, Lease, LeaseChange, LeaseStore, NodeRegistration, Report, StoreError};
use crate::state::private;

/// The store under `<state>/store`.
#[derive(Debug)]
pub struct EmbeddedStore {
    files: Files,
    changes: watch::Sender<u64>,
}

/// The store's files: cheap to clone into a blocking task.
#[derive(Clone, Debug)]
struct Files {
    dir: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct LeaseFile {
    version: u32,
    epoch: i64,
    leases: Vec<Lease>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ReportFile {
    version: u32,
    reports: Vec<Report>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct NodeFile {
    version: u32,
    nodes: Vec<NodeRegistration>,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store under `state_dir`.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn open(state_dir: &Path) -> Result<EmbeddedStore, StoreError> {
        let dir = state_dir.join("store");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io {
                op: "use",
                path,
                source,
            }
        };
        private::ensure_dir(state_dir, true).map_err(io(state_dir))?;
        private::ensure_dir(&dir, false).map_err(io(&dir))?;
        // Files an older corral left readable by anyone.
        for name in ["leases.json", "reports.json", "nodes.json", ".lock"] {
            let path = dir.join(name);
            private::tighten(&path).map_err(io(&path))?;
        }
        Ok(EmbeddedStore {
            files: Files { dir },
            changes: watch::Sender::new(0),
        })
    }

    /// Opens the store for reading only: it must exist.
    ///
    /// # Errors
    /// There is no store under `state_dir`.
    pub fn open_existing(state_dir: &Path) -> Result<EmbeddedStore, StoreError> {
        let dir = state_dir.join("store");
        if !dir.is_dir() {
            return Err(StoreError::Io {
                op: "open",
                path: dir,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no corral state here; corral run creates it",
                ),
            });
        }
        Ok(EmbeddedStore {
            files: Files { dir },
            changes: watch::Sender::new(0),
        })
    }

    /// Takes the next controller epoch: one above the last written. A controller that
    /// starts later has a higher epoch, and this one's writes are then refused.
    ///
    /// # Errors
    /// The lease file cannot be read or written.
    pub fn next_epoch(&self) -> Result<i64, StoreError> {
        self.files.update("leases.json", |file: &mut LeaseFile| {
            file.epoch += 1;
            Ok(file.epoch)
        })
    }

    /// A receiver that sees a new value whenever leases change through this handle.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Runs `work` on the files in one of tokio's blocking threads: it locks, reads and
    /// syncs, which must not stall the executor.
    async fn off_executor<R: Send + 'static>(
        &self,
        work: impl FnOnce(&Files) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let files = self.files.clone();
        tokio::task::spawn_blocking(move || work(&files))
            .await
            .map_err(|e| StoreError::Unavailable(format!("the store's file work failed: {e}")))?
    }
}

impl Files {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read<T: DeserializeOwned + Default>(&self, name: &str) -> Result<T, StoreError> {
        let _lock = self.lock(false)?;
        self.read_unlocked(name)
    }

    fn read_unlocked<T: DeserializeOwned + Default>(&self, name: &str) -> Result<T, StoreError> {
        let path = self.path(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(T::default()),
            Err(source) => {
                return Err(StoreError::Io {
                    op: "read",
                    path,
                    source,
                });
            }
        };
        super::decode_versioned(&path, text.as_bytes())
    }

    /// Read, change and write one file under the lock. Writes only when the change changed
    /// something.
    fn update<T, R>(
        &self,
        name: &str,
        change: impl FnOnce(&mut T) -> Result<R, StoreError>,
    ) -> Result<R, StoreError>
    where
        T: DeserializeOwned + Serialize + Default,
    {
        let _lock = self.lock(true)?;
        let mut value: T = self.read_unlocked(name)?;
        let before = serde_json::to_vec(&value).unwrap_or_default();
        let result = change(&mut value)?;
        let after = serde_json::to_vec_pretty(&value).map_err(|e| StoreError::Corrupt {
            path: self.path(name),
            message: e.to_string(),
        })?;
        if serde_json::to_vec(&value).unwrap_or_default() != before {
            self.replace(name, &after)?;
        }
        Ok(result)
    }

    fn replace(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.path(name);
        private::write_atomic(&path, bytes, private::Durability::Synced).map_err(|source| {
            StoreError::Io {
                op: "write",
                path,
                source,
            }
        })
    }

    fn lock(&self, exclusive: bool) -> Result<nix::fcntl::Flock<File>, StoreError> {
        let path = self.path(".lock");
        let file =
            private::open(&path, private::Mode::ReadWrite).map_err(|source| StoreError::Io {
                op: "open",
                path: path.clone(),
                source,
            })?;
        let arg = if exclusive {
            nix::fcntl::FlockArg::LockExclusive
        } else {
            nix::fcntl::FlockArg::LockShared
        };
        nix::fcntl::Flock::lock(file, arg).map_err(|(_, errno)| StoreError::Io {
            op: "lock",
            path,
            source: std::io::Error::from(errno),
        })
    }
}

impl LeaseStore for EmbeddedStore {
    async fn register_node(&self, node: &NodeRegistration) -> Result<(), StoreError> {
        let node = node.clone();
        self.off_executor(move |files| {
            files.update("nodes.json", |file: &mut NodeFile| {
                file.version = FORMAT_VERSION;
                file.nodes.retain(|n| n.name != node.name);
                file.nodes.push(node);
                file.nodes.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(())
            })
        })
        .await
    }

    async fn nodes(&self) -> Result<Vec<NodeRegistration>, StoreError> {
        self.off_executor(|files| Ok(files.read::<NodeFile>("nodes.json")?.nodes))
            .await
    }

    async fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        self.off_executor(|files| Ok(files.read::<LeaseFile>("leases.json")?.leases))
            .await
    }

    async fn write_leases(&self, epoch: i64, changes: &[LeaseChange]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let changes = changes.to_vec();
        self.off_executor(move |files| {
            files.update("leases.json", |file: &mut LeaseFile| {
                if epoch < file.epoch {
                    return Err(StoreError::Fenced { ours: epoch });
                }
                file.version = FORMAT_VERSION;
                for change in &changes {
                    match change {
                        LeaseChange::Put(lease) => {
                            file.leases
                                .retain(|l| !(l.node == lease.node && l.key == lease.key));
                            file.leases.push((**lease).clone());
                        }
                        LeaseChange::Delete { node, key } => {
                            file.leases.retain(|l| !(&l.node == node && &l.key == key));
                        }
                    }
                }
                file.leases
                    .sort_by(|a, b| (&a.node, &a.key).cmp(&(&b.node, &b.key)));
                Ok(())
            })
        })
        .await?;
        self.changes.send_modify(|generation| *generation += 1);
        Ok(())
    }

    async fn reports(&self) -> Result<Vec<Report>, StoreError> {
        self.off_executor(|files| Ok(files.read::<ReportFile>("reports.json")?.reports))
            .await
    }

    async fn write_reports(&self, node: &str, reports: &[Report]) -> Result<(), StoreError> {
        let (node, reports) = (node.to_string(), reports.to_vec());
        self.off_executor(move |files| {
            files.update("reports.json", |file: &mut ReportFile| {
                file.version = FORMAT_VERSION;
                file.reports.retain(|r| r.node != node);
                file.reports.extend(reports);
                file.reports
                    .sort_by(|a, b| (&a.node, &a.key).cmp(&(&b.node, &b.key)));
                Ok(())
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::ReplicaKey;
    use crate::alloc::fixtures::mk_lease;

    fn lease(node: &str, name: &str, epoch: i64) -> Lease {
        mk_lease(node, name, 0, epoch)
    }

    #[tokio::test]
    async fn leases_survive_reopening_and_deposed_epochs_are_fenced() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let first = store.next_epoch().unwrap();
        let changes = store.subscribe();
        store
            .write_leases(
                first,
                &[
                    LeaseChange::Put(Box::new(lease("n1", "a", first))),
                    LeaseChange::Put(Box::new(lease("n2", "b", first))),
                ],
            )
            .await
            .unwrap();
        assert!(changes.has_changed().unwrap());

        let reopened = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(reopened.leases().await.unwrap().len(), 2);
        assert_eq!(
            reopened.node_leases("n1").await.unwrap()[0].key,
            ReplicaKey::new("t", "a", 0)
        );
        let second = reopened.next_epoch().unwrap();
        assert!(second > first);
        let stale = store
            .write_leases(
                first,
                &[LeaseChange::Delete {
                    node: "n1".into(),
                    key: ReplicaKey::new("t", "a", 0),
                }],
            )
            .await;
        assert!(matches!(stale, Err(StoreError::Fenced { ours }) if ours == first));
        assert_eq!(
            reopened.leases().await.unwrap().len(),
            2,
            "a fenced write changes nothing"
        );
    }

    #[tokio::test]
    async fn unchanged_writes_do_not_touch_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let report = Report {
            node: "n1".into(),
            ..Report::default()
        };
        store
            .write_reports("n1", std::slice::from_ref(&report))
            .await
            .unwrap();
        let path = dir.path().join("store/reports.json");
        let before = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        store.write_reports("n1", &[report]).await.unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            before
        );
    }

    #[tokio::test]
    async fn a_newer_format_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        std::fs::write(
            dir.path().join("store/leases.json"),
            r#"{"version": 99, "epoch": 1, "leases": []}"#,
        )
        .unwrap();
        let err = store.leases().await.unwrap_err().to_string();
        assert!(
            err.contains("leases.json") && err.contains("newer corral"),
            "{err}"
        );
    }
}
