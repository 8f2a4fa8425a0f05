//! `corral status`: leases, reports and pending replicas from the state directory.

use std::io::Write;

use anyhow::Context;
use serde::Serialize;

use super::live::{self, Row};
use super::run::Where;
use crate::controller::cluster::ControllerStatus;
use crate::lease::embedded::EmbeddedStore;
use crate::lease::zookeeper::ZkStore;
use crate::lease::{LeaseStore, NodeRegistration};
use crate::state::{RunStatus, StateDir};

/// Output formats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table.
    #[default]
    Table,
    /// One JSON object.
    Json,
}

/// Arguments of `corral status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub place: Where,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: Format,
    /// Read the whole cluster from ZooKeeper instead of the state directory.
    #[command(flatten)]
    pub zk: super::zk::ZkArgs,
}

/// Everything `corral status -o json` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Registered nodes.
    pub nodes: Vec<NodeRegistration>,
    /// Every replica: lease, report, or why it is pending.
    pub replicas: Vec<Row>,
    /// The PID of the running `corral run`, if one runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running_pid: Option<u32>,
    /// What the last `corral run` recorded (counters, manifest problems).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<RunStatus>,
    /// What the leading cluster controller recorded (leader, epoch, nodes, pending).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller: Option<ControllerStatus>,
}

/// Prints the status. Returns 0.
///
/// # Errors
/// There is no state directory, or it cannot be read.
pub fn run(args: &Args) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let status = match args.zk.config()? {
        Some(config) => runtime.block_on(async {
            let store = ZkStore::connect(config).await?;
            let controller: Option<ControllerStatus> = store
                .read_status()
                .await?
                .and_then(|data| serde_json::from_slice(&data).ok());
            let pending = controller
                .as_ref()
                .map(|c| c.pending.clone())
                .unwrap_or_default();
            Ok::<_, anyhow::Error>(Status {
                nodes: store.nodes().await?,
                replicas: live::rows(&store.leases().await?, &store.reports().await?, &pending),
                running_pid: None,
                run: None,
                controller,
            })
        })?,
        None => {
            let state = StateDir(args.place.state_dir.clone());
            let store = EmbeddedStore::open_existing(&state.0)?;
            let (nodes, leases, reports) = runtime.block_on(async {
                Ok::<_, crate::lease::StoreError>((
                    store.nodes().await?,
                    store.leases().await?,
                    store.reports().await?,
                ))
            })?;
            let run = state.read_status();
            let pending = run.as_ref().map(|r| r.pending.clone()).unwrap_or_default();
            Status {
                nodes,
                replicas: live::rows(&leases, &reports, &pending),
                running_pid: state.running_pid(),
                run,
                controller: None,
            }
        }
    };
    let mut out = std::io::stdout().lock();
    match args.output {
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, &status)?;
            writeln!(out)?;
        }
        Format::Table => {
            write!(out, "{}", live::render(&status.replicas))?;
            if let Some(c) = &status.controller {
                let registered: Vec<&str> = status.nodes.iter().map(|n| n.name.as_str()).collect();
                writeln!(
                    out,
                    "\nleader {} (epoch {}); nodes registered: {}; allocating on: {}",
                    c.leader,
                    c.epoch,
                    registered.join(", "),
                    c.nodes.join(", ")
                )?;
            } else {
                match (status.running_pid, &status.run) {
                    (Some(pid), Some(r)) => writeln!(
                        out,
                        "\ncorral run (pid {pid}) on node {}: {} passes, {} writes, {} drift corrections",
                        r.node, r.agent.passes, r.agent.writes, r.agent.drift_corrections
                    )?,
                    (None, _) => writeln!(
                        out,
                        "\ncorral run is not running; the workloads above keep running in their cgroups"
                    )?,
                    (Some(pid), None) => writeln!(out, "\ncorral run (pid {pid}) is starting")?,
                }
            }
            let rollouts = status
                .controller
                .as_ref()
                .map(|c| c.rollouts.as_slice())
                .or(status.run.as_ref().map(|r| r.rollouts.as_slice()))
                .unwrap_or_default();
            for node in status.controller.iter().flat_map(|c| &c.cordoned) {
                writeln!(
                    out,
                    "node {node} is cordoned (corral drain); `corral uncordon {node}` lifts it"
                )?;
            }
            for kept in status.controller.iter().flat_map(|c| &c.kept) {
                writeln!(out, "kept on its missing node: {kept}")?;
            }
            for rollout in rollouts.iter().filter(|r| r.in_progress()) {
                writeln!(
                    out,
                    "rollout of {}: {}",
                    rollout.workload,
                    rollout.describe()
                )?;
            }
        }
    }
    Ok(0)
}
