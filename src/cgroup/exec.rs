//! The executor: performs a diff's operations on the filesystem, and hands process
//! operations to whoever supervises processes. Thin: every decision was made by the diff.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::diff::Op;
use super::fs::{CgroupError, Cgroupfs};
use super::knobs::Knob;
use super::tree::GroupPath;

/// Starting, adopting and stopping processes, for the executor.
pub trait Processes {
    /// Why an operation failed, as the replica's report shows it.
    type Error: std::fmt::Display;

    /// Starts the command of a replica group.
    ///
    /// # Errors
    /// Why it could not start, for a person.
    fn start(&mut self, group: &GroupPath) -> Result<(), Self::Error>;
    /// Moves processes into a group.
    ///
    /// # Errors
    /// Why not, for a person.
    fn adopt(&mut self, group: &GroupPath, pids: &[u32]) -> Result<(), Self::Error>;
    /// Moves a group's adopted processes back where they came from, leaving them running.
    ///
    /// # Errors
    /// Processes are left in the group.
    fn release(&mut self, group: &GroupPath) -> Result<(), Self::Error>;
    /// Stops every process in a group: SIGTERM, then SIGKILL after `grace`.
    ///
    /// # Errors
    /// Processes are left.
    fn stop(&mut self, group: &GroupPath, grace: Duration) -> Result<(), Self::Error>;

    /// Stops several groups; one result per group, in order. By default one after the
    /// other; an implementation may stop them together.
    fn stop_all(&mut self, groups: &[(GroupPath, Duration)]) -> Vec<Result<(), Self::Error>> {
        groups
            .iter()
            .map(|(g, grace)| self.stop(g, *grace))
            .collect()
    }
}

/// One operation that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The operation.
    pub op: String,
    /// The group it was about (`None` for the root).
    pub group: Option<GroupPath>,
    /// The knob, for a failed write.
    pub knob: Option<Knob>,
    /// Why, with the file.
    pub error: String,
}

/// What applying a diff did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Knob files written (each read back and found as written).
    pub writes: usize,
    /// Operations that failed.
    pub failures: Vec<Failure>,
    /// Knobs the kernel turned out not to offer.
    pub unavailable: Vec<(Option<GroupPath>, String)>,
    /// Operations done, in order.
    pub done: Vec<String>,
}

/// Applies `ops` in order. A write the kernel refuses is retried once after every other
/// operation, in reverse order: v1 refuses a child's CPU quota above its parent's, so a
/// parent lowered after its children (or a child raised after its parent) only succeeds in
/// the second pass. A group that could not be created is skipped with its children.
///
/// A command is started, and processes adopted, only into a group whose limits (and its
/// tenant's) are all in place: when a write is waiting for its retry, the start waits
/// too; when a limit cannot be applied at all, the start fails and says which, so that no
/// replica ever runs without its limits.
pub fn apply(fs: &Cgroupfs, ops: &[Op], processes: &mut impl Processes) -> Outcome {
    let mut outcome = Outcome::default();
    let mut broken: BTreeSet<GroupPath> = BTreeSet::new();
    let mut retry: Vec<&Op> = Vec::new();
    // Groups with a limit not in place yet, and the knobs.
    let mut unapplied: BTreeMap<GroupPath, Vec<Knob>> = BTreeMap::new();
    let mut waiting: Vec<&Op> = Vec::new();
    let skip = |broken: &BTreeSet<GroupPath>, group: &GroupPath| {
        broken.contains(group) || group.parent().is_some_and(|p| broken.contains(&p))
    };
    let mut i = 0;
    while i < ops.len() {
        let op = &ops[i];
        i += 1;
        match op {
            Op::Create { group } => {
                if skip(&broken, group) {
                    continue;
                }
                match fs.create(Some(group)) {
                    Ok(()) => outcome.done.push(op.to_string()),
                    Err(e) => {
                        broken.insert(group.clone());
                        outcome.fail(op, Some(group), e);
                    }
                }
            }
            Op::Write { group, knob, value } => {
                if group.as_ref().is_some_and(|g| skip(&broken, g)) {
                    continue;
                }
                match fs.write(group.as_ref(), *knob, value) {
                    Ok(_) => {
                        outcome.writes += 1;
                        outcome.done.push(op.to_string());
                    }
                    Err(CgroupError::Unavailable { .. }) => {
                        outcome.unavailable.push((group.clone(), knob.to_string()));
                        if let Some(g) = group {
                            unapplied.entry(g.clone()).or_default().push(*knob);
                        }
                    }
                    Err(_) => {
                        if let Some(g) = group {
                            unapplied.entry(g.clone()).or_default().push(*knob);
                        }
                        retry.push(op);
                    }
                }
            }
            Op::Start { group } | Op::Adopt { group, .. } => {
                if skip(&broken, group) {
                    continue;
                }
                if limits_pending(&unapplied, group).is_some() {
                    waiting.push(op);
                    continue;
                }
                start_or_adopt(op, processes, &mut outcome);
            }
            Op::Stop { .. } => {
                // Stop consecutive groups together.
                let mut batch = vec![op];
                while let Some(next @ Op::Stop { .. }) = ops.get(i) {
                    batch.push(next);
                    i += 1;
                }
                let groups: Vec<(GroupPath, Duration)> = batch
                    .iter()
                    .filter_map(|op| match op {
                        Op::Stop {
                            group,
                            grace_seconds,
                        } => Some((
                            group.clone(),
                            Duration::from_secs(u64::from(*grace_seconds)),
                        )),
                        _ => None,
                    })
                    .collect();
                for ((op, (group, _)), result) in
                    batch.iter().zip(&groups).zip(processes.stop_all(&groups))
                {
                    match result {
                        Ok(()) => outcome.done.push(op.to_string()),
                        Err(e) => outcome.fail(op, Some(group), &e),
                    }
                }
            }
            Op::Replace {
                group,
                grace_seconds,
                ..
            } => match processes.stop(group, Duration::from_secs(u64::from(*grace_seconds))) {
                Ok(()) => outcome.done.push(op.to_string()),
                Err(e) => outcome.fail(op, Some(group), &e),
            },
            Op::Release { group } => match processes.release(group) {
                Ok(()) => outcome.done.push(op.to_string()),
                Err(e) => outcome.fail(op, Some(group), &e),
            },
            Op::Remove { group } => match fs.remove(group) {
                Ok(()) => outcome.done.push(op.to_string()),
                Err(e) => outcome.fail(op, Some(group), e),
            },
        }
    }
    for op in retry.into_iter().rev() {
        if let Op::Write { group, knob, value } = op {
            match fs.write(group.as_ref(), *knob, value) {
                Ok(_) => {
                    outcome.writes += 1;
                    outcome.done.push(op.to_string());
                    if let Some(g) = group
                        && let Some(knobs) = unapplied.get_mut(g)
                    {
                        knobs.retain(|k| k != knob);
                    }
                }
                Err(e) => outcome.fail(op, group.as_ref(), e),
            }
        }
    }
    for op in waiting {
        let (Op::Start { group } | Op::Adopt { group, .. }) = op else {
            continue;
        };
        match limits_pending(&unapplied, group) {
            None => start_or_adopt(op, processes, &mut outcome),
            Some(knobs) => outcome.fail(
                op,
                Some(group),
                format!(
                    "not done, so that nothing runs without its limits: {} could not be applied",
                    knobs
                        .iter()
                        .map(|k| k.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        }
    }
    outcome
}

/// The knobs of `group`, or of its tenant, that are not in place.
fn limits_pending(
    unapplied: &BTreeMap<GroupPath, Vec<Knob>>,
    group: &GroupPath,
) -> Option<Vec<Knob>> {
    let knobs: Vec<Knob> = [Some(group.clone()), group.parent()]
        .iter()
        .flatten()
        .filter_map(|g| unapplied.get(g))
        .flatten()
        .copied()
        .collect();
    (!knobs.is_empty()).then_some(knobs)
}

fn start_or_adopt(op: &Op, processes: &mut impl Processes, outcome: &mut Outcome) {
    let result = match op {
        Op::Start { group } => processes.start(group).map(|()| group),
        Op::Adopt { group, pids } => processes.adopt(group, pids).map(|()| group),
        _ => return,
    };
    match result {
        Ok(_) => outcome.done.push(op.to_string()),
        Err(e) => {
            let group = match op {
                Op::Start { group } | Op::Adopt { group, .. } => Some(group),
                _ => None,
            };
            outcome.fail(op, group, &e);
        }
    }
}

impl Outcome {
    /// Takes in what an earlier application in the same pass did (the structural part):
    /// its work counts, and its failures unless this one failed the same operation again.
    pub fn merge_earlier(&mut self, earlier: Outcome) {
        self.writes += earlier.writes;
        let mut done = earlier.done;
        done.append(&mut self.done);
        self.done = done;
        for failure in earlier.failures {
            if !self.failures.iter().any(|f| f.op == failure.op) {
                self.failures.push(failure);
            }
        }
    }

    fn fail(&mut self, op: &Op, group: Option<&GroupPath>, error: impl std::fmt::Display) {
        self.failures.push(Failure {
            op: op.to_string(),
            group: group.cloned(),
            knob: match op {
                Op::Write { knob, .. } => Some(*knob),
                _ => None,
            },
            error: error.to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::ReplicaKey;
    use crate::cgroup::layout::Layout;

    #[derive(Default)]
    struct Recorder(Vec<String>);

    impl Processes for Recorder {
        type Error = String;

        fn start(&mut self, group: &GroupPath) -> Result<(), String> {
            self.0.push(format!("start {group}"));
            Ok(())
        }
        fn adopt(&mut self, group: &GroupPath, pids: &[u32]) -> Result<(), String> {
            self.0.push(format!("adopt {pids:?} {group}"));
            Ok(())
        }
        fn release(&mut self, group: &GroupPath) -> Result<(), String> {
            self.0.push(format!("release {group}"));
            Ok(())
        }
        fn stop(&mut self, group: &GroupPath, _: Duration) -> Result<(), String> {
            Err(format!("{group} would not stop"))
        }
    }

    #[test]
    fn creates_writes_and_reports_what_the_kernel_lacks() {
        let tmp = tempfile::tempdir().unwrap();
        let fs = Cgroupfs::new(Layout::v2_at(tmp.path()), "corral").unwrap();
        fs.create(None).unwrap();
        let tenant = GroupPath::tenant("t").unwrap();
        let replica = GroupPath::replica(&ReplicaKey::new("t", "w", 0)).unwrap();
        let ops = vec![
            Op::Create {
                group: tenant.clone(),
            },
            Op::Create {
                group: replica.clone(),
            },
            Op::Write {
                group: Some(replica.clone()),
                knob: Knob::CpuWeight,
                value: "100".into(),
            },
            Op::Start {
                group: replica.clone(),
            },
            Op::Stop {
                group: tenant.clone(),
                grace_seconds: 0,
            },
        ];
        let mut recorder = Recorder::default();
        let outcome = apply(&fs, &ops, &mut recorder);
        // On a plain directory no knob file exists: it is reported, not written, and the
        // command is not started without it.
        assert_eq!(outcome.writes, 0);
        assert_eq!(
            outcome.unavailable,
            [(Some(replica.clone()), "cpu.weight".to_string())]
        );
        assert!(recorder.0.is_empty(), "{:?}", recorder.0);
        let errors: Vec<&str> = outcome.failures.iter().map(|f| f.error.as_str()).collect();
        assert_eq!(
            errors,
            [
                "t would not stop",
                "not done, so that nothing runs without its limits: cpu.weight could not be applied"
            ]
        );
        assert!(tmp.path().join("corral/t/w.0").is_dir());
    }

    #[test]
    fn a_group_that_cannot_be_created_is_skipped_with_its_children() {
        let tmp = tempfile::tempdir().unwrap();
        // No root directory: creating the tenant fails.
        let fs = Cgroupfs::new(Layout::v2_at(&tmp.path().join("missing")), "corral").unwrap();
        let tenant = GroupPath::tenant("t").unwrap();
        let replica = GroupPath::replica(&ReplicaKey::new("t", "w", 0)).unwrap();
        let ops = vec![
            Op::Create {
                group: tenant.clone(),
            },
            Op::Create {
                group: replica.clone(),
            },
            Op::Start { group: replica },
        ];
        let mut recorder = Recorder::default();
        let outcome = apply(&fs, &ops, &mut recorder);
        assert_eq!(outcome.failures.len(), 1);
        assert!(
            outcome.failures[0].error.contains("missing/corral/t"),
            "{:?}",
            outcome.failures
        );
        assert!(recorder.0.is_empty());
    }

    #[test]
    fn a_start_waits_for_a_retried_write_and_runs_once_it_lands() {
        let tmp = tempfile::tempdir().unwrap();
        let fs = Cgroupfs::new(Layout::v2_at(tmp.path()), "corral").unwrap();
        fs.create(None).unwrap();
        let tenant = GroupPath::tenant("t").unwrap();
        let replica = GroupPath::replica(&ReplicaKey::new("t", "w", 0)).unwrap();
        fs.create(Some(&tenant)).unwrap();
        fs.create(Some(&replica)).unwrap();
        // A knob the tenant's file refuses (a directory where the file should be): the
        // write fails, its retry fails too, and the start never happens.
        std::fs::create_dir(tmp.path().join("corral/t/memory.max")).unwrap();
        std::fs::write(tmp.path().join("corral/t/w.0/cpu.weight"), "100").unwrap();
        let ops = vec![
            Op::Write {
                group: Some(tenant.clone()),
                knob: Knob::MemoryMax,
                value: "100".into(),
            },
            Op::Write {
                group: Some(replica.clone()),
                knob: Knob::CpuWeight,
                value: "50".into(),
            },
            Op::Start {
                group: replica.clone(),
            },
        ];
        let mut recorder = Recorder::default();
        let outcome = apply(&fs, &ops, &mut recorder);
        assert!(recorder.0.is_empty(), "{:?}", recorder.0);
        assert_eq!(outcome.writes, 1);
        assert!(
            outcome
                .failures
                .iter()
                .any(|f| f.op == "start the command of t/w.0"
                    && f.error.contains("memory.max could not be applied")),
            "{:?}",
            outcome.failures
        );
        // Once the tenant's file takes the value, the same operations start the command.
        std::fs::remove_dir(tmp.path().join("corral/t/memory.max")).unwrap();
        std::fs::write(tmp.path().join("corral/t/memory.max"), "max").unwrap();
        let outcome = apply(&fs, &ops, &mut recorder);
        assert!(outcome.failures.is_empty(), "{:?}", outcome.failures);
        assert_eq!(recorder.0, ["start t/w.0"]);
    }
}
