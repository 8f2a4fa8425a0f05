//! `corral down`: stop workloads on purpose and remove their groups, and their leases.

use std::collections::BTreeSet;

use anyhow::{Context, bail};

use super::run::Where;
use crate::agent::node::{Agent, Trigger};
use crate::api::WorkloadRef;
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
    /// A whole cluster: delete its leases in ZooKeeper (every node's agent then stops the
    /// replicas and removes their groups). No controller may run: it would write them again.
    #[command(flatten)]
    pub zk: super::zk::ZkArgs,
    /// With --zookeeper: seconds to wait for the agents to drop the replicas.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS", value_parser = super::seconds::timeout)]
    pub timeout: f64,
}

/// The workloads `paths` name (`namespace/name`); `None` without paths: every workload.
///
/// # Errors
/// The manifests have problems (they are printed).
fn chosen(paths: &[std::path::PathBuf]) -> anyhow::Result<Option<BTreeSet<WorkloadRef>>> {
    if paths.is_empty() {
        return Ok(None);
    }
    let manifests = source::load(paths);
    if !manifests.problems.is_empty() {
        for p in &manifests.problems {
            eprintln!("{p}");
        }
        bail!("the manifests have problems; nothing was stopped");
    }
    Ok(Some(
        manifests
            .workloads
            .iter()
            .map(|w| WorkloadRef::of(&w.object))
            .collect(),
    ))
}

/// `corral down --zookeeper`: runs for leadership (so that no controller writes while it
/// does), deletes the chosen leases in one fenced batch, waits until the agents report
/// none of them, and resigns.
fn down_cluster(args: &Args, config: crate::lease::zookeeper::ZkConfig) -> anyhow::Result<u8> {
    let chosen = chosen(&args.paths)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let store = crate::lease::zookeeper::ZkStore::connect(config).await?;
        if let Some(epoch) = store.leader_epoch().await? {
            bail!(
                "a controller runs (leader epoch {epoch}) and would write the leases again: stop every `corral controller` (and `corral run --zookeeper`) first"
            );
        }
        let identity = format!("corral-down-{}", std::process::id());
        let epoch = store.campaign(&identity).await?;
        let result = async {
            let gone: Vec<crate::lease::Lease> = store
                .leases()
                .await?
                .into_iter()
                .filter(|l| chosen.as_ref().is_none_or(|c| c.contains(&l.key.workload)))
                .collect();
            let changes: Vec<LeaseChange> = gone
                .iter()
                .map(|l| LeaseChange::Delete {
                    node: l.node.clone(),
                    key: l.key.clone(),
                })
                .collect();
            store.write_leases(epoch, &changes).await?;
            let nodes: BTreeSet<&str> = gone.iter().map(|l| l.node.as_str()).collect();
            eprintln!(
                "deleted {} lease(s) on {} node(s); their agents stop the replicas (SIGTERM, SIGKILL after the grace period) and remove the groups",
                gone.len(),
                nodes.len()
            );
            let keys: BTreeSet<(String, String)> = gone
                .iter()
                .map(|l| (l.node.clone(), l.key.to_string()))
                .collect();
            let deadline = std::time::Instant::now()
                + super::seconds::duration(args.timeout);
            loop {
                let registered: BTreeSet<String> =
                    store.nodes().await?.into_iter().map(|n| n.name).collect();
                let left: Vec<String> = store
                    .reports()
                    .await?
                    .into_iter()
                    .filter(|r| registered.contains(&r.node))
                    .filter_map(|r| {
                        let key = r.key?.to_string();
                        keys.contains(&(r.node.clone(), key.clone()))
                            .then(|| format!("{key} on {}", r.node))
                    })
                    .collect();
                if left.is_empty() {
                    eprintln!("every agent has dropped them");
                    return Ok(0);
                }
                if std::time::Instant::now() >= deadline {
                    eprintln!(
                        "timed out after {}s; still reported: {} (their agents apply the change when they read it)",
                        args.timeout,
                        left.join(", ")
                    );
                    return Ok(1);
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        }
        .await;
        if let Err(e) = store.resign().await {
            eprintln!("cannot resign; the election znode goes with this session: {e}");
        }
        result
    })
}

/// Stops the workloads and removes their groups and leases: on this machine, or with
/// `--zookeeper` on a whole cluster. Returns 0, or 1 when something could not be stopped
/// or removed (it is listed), or, on a cluster, an agent did not drop them in time.
///
/// # Errors
/// A `corral run` or `corral agent` is running (it would start them again), or the state cannot be used.
pub fn run(args: &Args) -> anyhow::Result<u8> {
    if let Some(config) = args.zk.config()? {
        return down_cluster(args, config);
    }
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
    let chosen = chosen(&args.paths)?;
    let (gone, kept): (Vec<_>, Vec<_>) = leases
        .into_iter()
        .partition(|l| chosen.as_ref().is_none_or(|c| c.contains(&l.key.workload)));
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
