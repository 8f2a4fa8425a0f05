//! Manifest files as a source that follows edits: the paths are watched (inotify), each
//! change is read and validated, and what an edit changes is handed on once the edit is
//! finished.
//!
//! Guarantees: a version with problems is never handed on (the previous one is kept and
//! the problems are reported); a version that drops workloads is handed on only once it
//! reads the same [`REMOVAL_SETTLE`] later, so the moment an editor truncates a file to
//! save it in place never stops a workload.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use notify::Watcher;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::files::is_manifest;
use crate::api::{ResourcePolicy, Workload, WorkloadRef};
use crate::validate::{Manifests, Memo};

/// How long after a file event corral waits for the rest of an editor's writes.
pub const DEBOUNCE: Duration = Duration::from_millis(15);

/// How long a version that drops workloads must stay the same before it is applied.
pub const REMOVAL_SETTLE: Duration = Duration::from_millis(500);

/// What reading the manifests again gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reload {
    /// A valid new version, now current.
    Applied,
    /// An invalid version: the previous one is kept; the problems are in `problems`.
    Kept,
}

/// Workloads and policies from manifest files, following edits.
pub struct ManifestSource {
    paths: Vec<PathBuf>,
    /// The current workloads.
    pub workloads: Vec<Workload>,
    /// The current policies.
    pub policies: Vec<ResourcePolicy>,
    /// The problems of the last version refused; empty once a valid one is read.
    pub problems: Vec<String>,
    events: mpsc::UnboundedReceiver<()>,
    _watcher: Option<notify::RecommendedWatcher>,
    /// An event was taken and its version not read yet.
    dirty: bool,
    /// The reading in progress on a blocking thread: a `changed()` dropped while it waits
    /// leaves it to the next call, which takes it up where it is, so that a busy select
    /// can never starve it by starting it over and over.
    /// It holds the memo of what was checked, and hands it back.
    loading: Option<tokio::task::JoinHandle<(Manifests, Memo)>>,
    /// A version that drops workloads, waiting to be read the same again.
    settling: Option<(BTreeSet<WorkloadRef>, Instant)>,
    /// What each file gave when last read: an edit re-checks its own file only.
    memo: Memo,
}

impl ManifestSource {
    /// The source of `manifests` (already read and valid) at `paths`; `watch` starts
    /// following edits. The watch starts before anything is applied, and the files are
    /// read once more after it starts (at the first [`ManifestSource::changed`] or
    /// [`ManifestSource::catch_up`]), so an edit made between the first read and the
    /// watch is not missed either.
    ///
    /// # Errors
    /// A path cannot be watched.
    pub fn new(
        paths: &[PathBuf],
        manifests: Manifests,
        watch: bool,
    ) -> anyhow::Result<ManifestSource> {
        let (tx, events) = mpsc::unbounded_channel();
        let watcher = if watch {
            Some(watch_paths(paths, tx)?)
        } else {
            None
        };
        let mut source = ManifestSource {
            paths: paths.to_vec(),
            workloads: Vec::new(),
            policies: Vec::new(),
            problems: Vec::new(),
            events,
            _watcher: watcher,
            dirty: watch,
            loading: None,
            settling: None,
            memo: Memo::default(),
        };
        source.take(manifests);
        Ok(source)
    }

    fn take(&mut self, manifests: Manifests) {
        self.workloads = manifests.workloads.into_iter().map(|w| w.object).collect();
        self.policies = manifests.policies.into_iter().map(|p| p.object).collect();
        self.problems.clear();
    }

    /// Waits for the next version to hand on. Cancel-safe: an event taken by a call that
    /// is dropped is read by the next one.
    pub async fn changed(&mut self) -> Reload {
        loop {
            if !self.dirty {
                let settle_at = self.settling.as_ref().map(|(_, at)| *at);
                tokio::select! {
                    Some(()) = self.events.recv() => {}
                    () = tokio::time::sleep_until(settle_at.unwrap_or_else(Instant::now)), if settle_at.is_some() => {}
                    else => std::future::pending::<()>().await,
                }
                self.dirty = true;
            }
            if self.loading.is_none() {
                tokio::time::sleep(DEBOUNCE).await;
                while self.events.try_recv().is_ok() {}
                // Reading and validating (file reads, CEL) run on a blocking thread, not
                // on the executor.
                let paths = self.paths.clone();
                let mut memo = std::mem::take(&mut self.memo);
                self.loading = Some(tokio::task::spawn_blocking(move || {
                    let manifests = super::load_with(&paths, &mut memo);
                    (manifests, memo)
                }));
            }
            let Some(loading) = self.loading.as_mut() else {
                continue;
            };
            let loaded = loading.await;
            self.loading = None;
            self.dirty = false;
            let manifests = match loaded {
                Ok((manifests, memo)) => {
                    self.memo = memo;
                    manifests
                }
                Err(e) => {
                    self.problems = vec![format!("reading the manifests failed: {e}")];
                    tracing::warn!(error = %e, "reading the manifests failed; the previous version is kept");
                    return Reload::Kept;
                }
            };
            if let Some(result) = self.apply(manifests) {
                return result;
            }
        }
    }

    /// Reads the manifests now if they changed since the last read (for a controller that
    /// starts to lead after standing by). A version that drops workloads starts to settle
    /// instead, as in [`ManifestSource::changed`].
    pub fn catch_up(&mut self) {
        let mut pending = self.dirty;
        while self.events.try_recv().is_ok() {
            pending = true;
        }
        // A reading started before this one could hold an older version.
        if let Some(loading) = self.loading.take() {
            loading.abort();
            pending = true;
        }
        tracing::debug!(pending, "catching up with the manifests");
        if pending {
            self.dirty = false;
            if let Some(Reload::Kept) = self.reload() {
                tracing::warn!(
                    "the manifests changed while standing by and are invalid now; leading with the last valid version"
                );
            }
        }
    }

    /// Reads the manifests; `None` while a version that drops workloads settles.
    fn reload(&mut self) -> Option<Reload> {
        let manifests = super::load_with(&self.paths, &mut self.memo);
        self.apply(manifests)
    }

    /// Takes `manifests` if they are valid; `None` while a version that drops workloads
    /// settles.
    fn apply(&mut self, manifests: crate::validate::Manifests) -> Option<Reload> {
        if !manifests.is_valid() {
            self.problems = manifests.problems.iter().map(ToString::to_string).collect();
            for problem in &self.problems {
                tracing::warn!(%problem, "manifests invalid; the previous version is kept");
            }
            return Some(Reload::Kept);
        }
        let names: BTreeSet<WorkloadRef> = manifests
            .workloads
            .iter()
            .map(|w| WorkloadRef::of(&w.object))
            .collect();
        let drops = self
            .workloads
            .iter()
            .any(|w| !names.contains(&WorkloadRef::of(w)));
        let same_as_settling = self.settling.as_ref().is_some_and(|(n, _)| *n == names);
        if drops && !same_as_settling {
            self.settling = Some((names, Instant::now() + REMOVAL_SETTLE));
            return None;
        }
        self.settling = None;
        self.take(manifests);
        tracing::info!("manifests reloaded");
        Some(Reload::Applied)
    }
}

/// Watches the paths (a file's parent directory, since editors replace files by renaming)
/// and sends an event for each change to a manifest.
fn watch_paths(
    paths: &[PathBuf],
    tx: mpsc::UnboundedSender<()>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    let files: BTreeSet<PathBuf> = paths
        .iter()
        .filter(|p| p.is_file())
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    let dirs: Vec<PathBuf> = paths
        .iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    let (watched_files, watched_dirs) = (files.clone(), dirs.clone());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        let relevant = event.paths.iter().any(|p| {
            watched_files.contains(p)
                || (is_manifest(p) && watched_dirs.iter().any(|d| p.starts_with(d)))
        });
        if relevant {
            let _ = tx.send(());
        }
    })?;
    for dir in &dirs {
        watcher.watch(dir, notify::RecursiveMode::Recursive)?;
    }
    let parents: BTreeSet<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(PathBuf::from))
        .collect();
    for parent in parents {
        watcher.watch(&parent, notify::RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(replicas: u32) -> String {
        format!(
            "apiVersion: corral.dev/v1alpha1\nkind: Workload\nmetadata: {{name: web, namespace: shop}}\n\
             spec:\n  replicas: {replicas}\n  command: {{args: [sleep, \"1\"]}}\n"
        )
    }

    #[tokio::test]
    async fn an_edit_between_the_first_read_and_the_watch_is_not_missed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("web.yaml");
        std::fs::write(&file, workload(3)).unwrap();
        let paths = vec![dir.path().to_path_buf()];
        let first = super::super::load(&paths);
        // The edit lands after the read and before the watch starts.
        std::fs::write(&file, workload(2)).unwrap();
        let mut source = ManifestSource::new(&paths, first, true).unwrap();
        assert_eq!(source.workloads[0].spec.replicas, 3);
        source.catch_up();
        assert_eq!(source.workloads[0].spec.replicas, 2);
        // Nothing pending after that.
        let next = tokio::time::timeout(Duration::from_millis(300), source.changed()).await;
        assert!(next.is_err(), "{next:?}");
    }

    #[tokio::test]
    async fn a_standby_catches_up_with_edits_it_did_not_follow() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("web.yaml");
        std::fs::write(&file, workload(3)).unwrap();
        let paths = vec![dir.path().to_path_buf()];
        let mut source = ManifestSource::new(&paths, super::super::load(&paths), true).unwrap();
        source.catch_up();
        std::fs::write(&file, workload(1)).unwrap();
        // The watcher's thread delivers the event.
        tokio::time::sleep(Duration::from_millis(200)).await;
        source.catch_up();
        assert_eq!(source.workloads[0].spec.replicas, 1);
    }
}
