//! Which existing processes an adopt rule may take. Adoption hands a process to corral:
//! deleting the workload may stop it, and its group's limits bind it. So a tenant's rule
//! takes only processes of users its policy lets it use, or in cgroups below a prefix the
//! policy names, and never PID 1, a kernel thread, corral itself, its ancestors, another
//! corral process, or a process in any corral root's groups (this agent's or another's on
//! the same machine, recognised by [`crate::cgroup::fs::ROOT_MARK`]).

use std::collections::BTreeSet;
use std::path::Path;

use regex::Regex;

use super::process::{self, AdoptError};
use crate::alloc::admit::AdoptScope;
use crate::api::workload::AdoptRule;
use crate::cgroup::fs::Cgroupfs;

/// The most refused processes a problem names one by one.
const NAMED_REFUSALS: usize = 5;

/// What an adopt rule found: processes to move in, and why others were refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Processes that may be adopted, sorted.
    pub pids: Vec<u32>,
    /// Processes the rule matched but may not take, with the reason.
    pub refused: Vec<(u32, String)>,
}

impl Found {
    /// The refusals as one line for a report, or `None`.
    pub fn refusals(&self) -> Option<String> {
        if self.refused.is_empty() {
            return None;
        }
        let named: Vec<String> = self
            .refused
            .iter()
            .take(NAMED_REFUSALS)
            .map(|(pid, why)| format!("process {pid} {why}"))
            .collect();
        let more = self.refused.len().saturating_sub(NAMED_REFUSALS);
        let mut line = format!("adopt refused {}", named.join("; "));
        if more > 0 {
            line.push_str(&format!("; and {more} more"));
        }
        Some(line)
    }
}

/// The processes `rule` matches that `scope` lets the replica take, leaving out `ours`
/// (already in this agent's groups).
///
/// # Errors
/// The rule cannot be evaluated: a refused or unreadable pid file, a cgroup outside the
/// scope or unreadable, a pattern that does not compile.
pub fn find(
    rule: &AdoptRule,
    scope: &AdoptScope,
    fs: &Cgroupfs,
    ours: &BTreeSet<u32>,
    pattern: Option<&Regex>,
) -> Result<Found, String> {
    let (candidates, by_prefix) = if let Some(path) = &rule.cgroup_path {
        if !scope.allows_cgroup(path) {
            return Err(format!(
                "cgroup {path:?} is not below a prefix the policy lets this tenant adopt from"
            ));
        }
        let mount = fs
            .adopt_mount()
            .ok_or("no cgroup hierarchy to adopt from")?;
        let pids = process::pids_in_cgroup(&mount, path).map_err(|e| e.to_string())?;
        (pids, true)
    } else if let Some(file) = &rule.pid_file {
        let pid = process::pid_from_file(Path::new(file), |owner| {
            owner == 0 || scope.allows_user(owner)
        })
        .map_err(|e: AdoptError| e.to_string())?;
        (vec![pid], false)
    } else if rule.command_pattern.is_some() {
        let regex = pattern.ok_or("adopt.commandPattern does not compile")?;
        let ours: Vec<u32> = ours.iter().copied().collect();
        (process::pids_matching(regex, &ours), false)
    } else {
        (Vec::new(), false)
    };
    let corral = Corral {
        ancestors: process::self_and_ancestors().into_iter().collect(),
        exe: std::fs::read_link("/proc/self/exe").ok(),
    };
    let mut found = Found::default();
    for pid in candidates {
        if ours.contains(&pid) {
            continue;
        }
        match refusal(pid, scope, by_prefix, fs, &corral) {
            None => found.pids.push(pid),
            Some(why) => found.refused.push((pid, why)),
        }
    }
    Ok(found)
}

/// This corral, as adoption tells it apart: read once per rule, not per candidate.
struct Corral {
    /// This process and its ancestors.
    ancestors: BTreeSet<u32>,
    /// Its executable, which other corral processes (agents, log pumps) run too.
    exe: Option<std::path::PathBuf>,
}

/// Why `pid` may not be adopted, or `None` when it may. `by_prefix`: it was found in a
/// cgroup the policy delegated, so its user does not matter.
fn refusal(
    pid: u32,
    scope: &AdoptScope,
    by_prefix: bool,
    fs: &Cgroupfs,
    corral: &Corral,
) -> Option<String> {
    if pid == 1 {
        return Some("is PID 1".into());
    }
    let Some(facts) = process::facts(pid) else {
        return Some("is gone or unreadable".into());
    };
    if facts.kernel_thread {
        return Some("is a kernel thread".into());
    }
    if corral.ancestors.contains(&pid) {
        return Some("is corral or one of its ancestors".into());
    }
    if facts.exe.is_some() && facts.exe == corral.exe {
        return Some("is a corral process".into());
    }
    if fs.in_a_corral_root(pid) {
        return Some("is in a corral root's groups".into());
    }
    if !by_prefix && let Some(uid) = facts.uids.iter().find(|uid| !scope.allows_user(**uid)) {
        return Some(format!("runs as user {uid}, which this tenant may not use"));
    }
    None
}
