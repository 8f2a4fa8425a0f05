//! The executor: performs a diff's operations on the filesystem, and hands process
//! operations to whoever supervises processes. Thin: every decision was made by the diff.

use std::collections::BTreeSet;
use std::time::Duration;

use super::diff::Op;
use super::fs::{CgroupError, Cgroupfs};
use super::tree::GroupPath;

/// Starting, adopting and stopping processes, for the executor.
pub trait Processes {
    /// Starts the command of a replica group.
    ///
    /// # Errors
    /// Why it could not start, for a person.
    fn start(&mut self, group: &GroupPath) -> Result<(), String>;
    /// Moves processes into a group.
    ///
    /// # Errors
    /// Why not, for a person.
    fn adopt(&mut self, group: &GroupPath, pids: &[u32]) -> Result<(), String>;
    /// Moves a group's adopted processes back where they came from, leaving them running.
    ///
    /// # Errors
    /// Processes are left in the group.
    fn release(&mut self, group: &GroupPath) -> Result<(), String>;
    /// Stops every process in a group: SIGTERM, then SIGKILL after `grace`.
    ///
    /// # Errors
    /// Processes are left.
    fn stop(&mut self, group: &GroupPath, grace: Duration) -> Result<(), String>;

    /// Stops several groups; one result per group, in order. By default one after the
    /// other; an implementation may stop them together.
    fn stop_all(&mut self, groups: &[(GroupPath, Duration)]) -> Vec<Result<(), String>> {
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
    pub knob: Option<&'static str>,
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
pub fn apply(fs: &Cgroupfs, ops: &[Op], processes: &mut impl Processes) -> Outcome {
    let mut outcome = Outcome::default();
    let mut broken: BTreeSet<GroupPath> = BTreeSet::new();
    let mut retry: Vec<&Op> = Vec::new();
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
                        outcome.fail(op, Some(group), &e.to_string());
                    }
                }
            }
            Op::Write { group, knob, value } => {
                if group.as_ref().is_some_and(|g| skip(&broken, g)) {
                    continue;
                }
                match fs.write(group.as_ref(), knob, value) {
                    Ok(_) => {
                        outcome.writes += 1;
                        outcome.done.push(op.to_string());
                    }
                    Err(CgroupError::Unavailable { .. }) => {
                        outcome
                            .unavailable
                            .push((group.clone(), (*knob).to_string()));
                    }
                    Err(_) => retry.push(op),
                }
            }
            Op::Start { group } => {
                if skip(&broken, group) {
                    continue;
                }
                match processes.start(group) {
                    Ok(()) => outcome.done.push(op.to_string()),
                    Err(e) => outcome.fail(op, Some(group), &e),
                }
            }
            Op::Adopt { group, pids } => match processes.adopt(group, pids) {
                Ok(()) => outcome.done.push(op.to_string()),
                Err(e) => outcome.fail(op, Some(group), &e),
            },
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
            Op::Release { group } => match processes.release(group) {
                Ok(()) => outcome.done.push(op.to_string()),
                Err(e) => outcome.fail(op, Some(group), &e),
            },
            Op::Remove { group } => match fs.remove(group) {
                Ok(()) => outcome.done.push(op.to_string()),
                Err(e) => outcome.fail(op, Some(group), &e.to_string()),
            },
        }
    }
    for op in retry.into_iter().rev() {
        if let Op::Write { group, knob, value } = op {
            match fs.write(group.as_ref(), knob, value) {
                Ok(_) => {
                    outcome.writes += 1;
                    outcome.done.push(op.to_string());
                }
                Err(e) => outcome.fail(op, group.as_ref(), &e.to_string()),
            }
        }
    }
    outcome
}

impl Outcome {
    fn fail(&mut self, op: &Op, group: Option<&GroupPath>, error: &str) {
        self.failures.push(Failure {
            op: op.to_string(),
            group: group.cloned(),
            knob: match op {
                Op::Write { knob, .. } => Some(knob),
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
                knob: "cpu.weight",
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
        // On a plain directory no knob file exists: it is reported, not written.
        assert_eq!(outcome.writes, 0);
        assert_eq!(
            outcome.unavailable,
            [(Some(replica.clone()), "cpu.weight".to_string())]
        );
        assert_eq!(recorder.0, ["start t/w.0"]);
        assert_eq!(outcome.failures.len(), 1);
        assert_eq!(outcome.failures[0].error, "t would not stop");
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
}
