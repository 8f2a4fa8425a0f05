//! `corral down`: stop workloads on purpose and remove their groups, and their leases.

use std::collections::BTreeSet;

use anyhow::{Context, bail};

use super::run::Where;
use crate::agent::node::{Agent, Trigger};
use crate::cgroup::fs::Cgroupfs;
use crate::cgroup::layout::Layout;
use crate::lease::embedded::EmbeddedStore;
use crate::lease::{LeaseChange, LeaseStore};
use crate::source::{self, nodes};
use crate::state::StateDir;

/// Arguments of `corral down`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub place: Where,
    /// Only the workloads in these manifests; default: every workload.
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    pub paths: Vec<std::path::PathBuf>,
}

/// Stops the workloads and removes their groups and leases. Returns 0, or 1 when
/// something could not be stopped or removed (it is listed).
///
/// # Errors
/// A `corral run` or `corral agent` is running (it would start them again), or the state cannot be used.
pub fn run(args: &Args) -> anyhow::Result<u8> {
    let state = StateDir(args.place.state_dir.clone());
    if let Some(pid) = state.running_pid() {
        bail!(
            "corral (pid {pid}) is running with this state directory and would start the workloads again; stop it first (Ctrl-C or kill -TERM {pid})"
        );
    }
    crate::telemetry::init(crate::telemetry::Output::Stderr, false)?;
    let _lock = state.lock_run().map_err(anyhow::Error::msg)?;
    let store = EmbeddedStore::open(&state.0)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("starting the runtime")?;
    let leases = runtime.block_on(store.leases())?;
    let chosen: Option<BTreeSet<String>> = if args.paths.is_empty() {
        None
    } else {
        let manifests = source::load(&args.paths);
        if !manifests.problems.is_empty() {
            for p in &manifests.problems {
                eprintln!("{p}");
            }
            bail!("the manifests have problems; nothing was stopped");
        }
        Some(
            manifests
                .workloads
                .iter()
                .map(|w| {
                    let ns = w.object.metadata.namespace.as_deref().unwrap_or("default");
                    format!(
                        "{ns}/{}",
                        w.object.metadata.name.as_deref().unwrap_or_default()
                    )
                })
                .collect(),
        )
    };
    let (gone, kept): (Vec<_>, Vec<_>) = leases.into_iter().partition(|l| {
        chosen
            .as_ref()
            .is_none_or(|c| c.contains(&l.key.workload()))
    });
    let epoch = store.next_epoch()?;
    let changes: Vec<LeaseChange> = gone
        .iter()
        .map(|l| LeaseChange::Delete {
            node: l.node.clone(),
            key: l.key.clone(),
        })
        .collect();
    runtime.block_on(store.write_leases(epoch, &changes))?;
    let node = match &args.place.node {
        Some(name) => name.clone(),
        None => nodes::this_machine()?.name,
    };
    // The root the last run or agent used, unless one is named.
    let fs = match (&args.place.cgroup_root, state.recorded_cgroup_root()) {
        (None, Some(recorded)) => Cgroupfs::at(Layout::detect()?, recorded),
        (root, _) => super::cgroupfs(root.as_deref(), args.place.host_cgroup_namespace)?,
    };
    // corral's own delegated group (`self`) is the unit's, not corral's to remove.
    let root_dirs = if fs.root().own {
        Vec::new()
    } else {
        fs.root_dirs()
    };
    let mut agent = Agent::new(&node, fs, &state.0, false)?;
    // The agent stops a removed lease's processes with that lease's grace period.
    agent.set_leases(gone.clone());
    agent.set_leases(kept.iter().filter(|l| l.node == node).cloned().collect());
    let pass = agent.settle(Trigger::Leases);
    runtime.block_on(store.write_reports(&node, &pass.reports))?;
    for op in &pass.outcome.done {
        eprintln!("{op}");
    }
    for failure in &pass.outcome.failures {
        eprintln!("failed: {}: {}", failure.op, failure.error);
    }
    if kept.is_empty() && pass.outcome.failures.is_empty() {
        for dir in root_dirs {
            // The root goes too when nothing is left in it.
            let _ = std::fs::remove_dir(dir);
        }
    }
    let stopped = pass
        .ops
        .iter()
        .filter(|op| matches!(op, crate::cgroup::diff::Op::Stop { .. }))
        .count();
    eprintln!("stopped {stopped} replica(s); {} left running", kept.len());
    Ok(u8::from(!pass.outcome.failures.is_empty()))
}
