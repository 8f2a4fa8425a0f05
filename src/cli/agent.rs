//! `corral agent`: one node's agent against ZooKeeper. Several agents with different node
//! names and cgroup roots can run on one machine; that is how the tests simulate a cluster.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use tokio::sync::watch;

use super::zk::ZkArgs;
use crate::agent::node::Agent;
use crate::alloc::Res;
use crate::api::Quantity;
use crate::api::names::{check_label_key, check_label_value};
use crate::cgroup::layout::Mode;
use crate::lease::NodeRegistration;
use crate::lease::zookeeper::{Role, ZkStore};
use crate::source::nodes;

/// Arguments of `corral agent`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// This node's name (in Kubernetes, from the downward API: spec.nodeName).
    #[arg(long, env = "CORRAL_NODE_NAME", value_name = "NAME")]
    pub node: String,
    #[command(flatten)]
    pub zk: ZkArgs,
    /// corral's cgroup subtree below each hierarchy's mount point: a path of cgroup names
    /// (`corral`, `system.slice/corral-agent.service`), or `self` for the delegated cgroup
    /// corral runs in (a systemd unit with Delegate=yes).
    #[arg(long, default_value = "corral", value_name = "PATH")]
    pub cgroup_root: String,
    /// Join the cgroup namespace of PID 1 first, then drop CAP_SYS_ADMIN and CAP_SYS_PTRACE: for a pod on
    /// cgroup v2 that shares the host's PID namespace and mounts its /sys/fs/cgroup (the
    /// Helm chart's agent).
    #[arg(long, env = "CORRAL_HOST_CGROUP_NAMESPACE")]
    pub host_cgroup_namespace: bool,
    /// State directory: process records and workload logs.
    #[arg(
        long,
        env = "CORRAL_STATE_DIR",
        default_value = "/var/lib/corral",
        value_name = "DIR"
    )]
    pub state_dir: PathBuf,
    /// Seconds between re-reads that restore drift.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS", value_parser = super::seconds::resync)]
    pub resync: f64,
    /// A label of this node, key=value. Repeat for more.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// What this node offers instead of what the machine has, e.g. cpu=2,memory=4Gi,pids=1000
    /// (for several simulated nodes on one machine).
    #[arg(long, value_name = "AMOUNTS")]
    pub capacity: Option<String>,
    /// Serve /metrics, /healthz and /readyz on this address, e.g. 0.0.0.0:9091.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Log lines as JSON.
    #[arg(long)]
    pub log_json: bool,
}

/// Runs until SIGINT or SIGTERM. Workloads keep running after.
///
/// # Errors
/// A bad option, no `--zookeeper`, or no permission to manage cgroups.
pub fn run(args: &Args) -> anyhow::Result<u8> {
    super::join_host_cgroup_namespace(args.host_cgroup_namespace, Some(&args.cgroup_root))?;
    crate::telemetry::init(crate::telemetry::Output::Stderr, args.log_json)?;
    let Some(mut config) = args.zk.config()? else {
        bail!("corral agent needs --zookeeper");
    };
    config.role = Role::Agent;
    let fs = super::cgroupfs(Some(&args.cgroup_root), args.host_cgroup_namespace)?;
    let registration = registration(args, fs.mode())?;
    // One agent per state directory, and no `corral down` or `corral run` beside it.
    let state = crate::state::StateDir(args.state_dir.clone());
    let _lock = state.lock_run().map_err(anyhow::Error::msg)?;
    let mut agent = Agent::new(&args.node, fs, &args.state_dir, false)?;
    super::pump_logs(&mut agent);
    let resync = super::seconds::duration(args.resync);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(async {
            let shutdown = shutdown_on_signals()?;
            let metrics = std::sync::Arc::new(crate::metrics::AgentMetrics::default());
            if let Some(addr) = args.metrics_addr {
                crate::metrics::serve(addr, std::sync::Arc::clone(&metrics), shutdown.clone())
                    .await?;
            }
            let store = ZkStore::connect(config).await?;
            tokio::spawn(metrics.session.clone().follow(store.session()));
            crate::agent::daemon::run(store, agent, registration, resync, metrics, shutdown)
                .await?;
            eprintln!(
                "corral agent stopped; the workloads of node {} keep running",
                args.node
            );
            Ok::<u8, anyhow::Error>(0)
        })
}

/// The node's registration from this machine, its cgroup mode and the options.
///
/// # Errors
/// A bad node name, label or capacity.
pub fn registration(args: &Args, cgroup_mode: Mode) -> anyhow::Result<NodeRegistration> {
    if !nodes::is_node_name(&args.node) {
        bail!("--node {:?} must be a DNS subdomain", args.node);
    }
    let machine = nodes::this_machine().context("reading this machine's capacity from /proc")?;
    let mut labels = BTreeMap::from([("kubernetes.io/hostname".to_string(), args.node.clone())]);
    for label in &args.labels {
        let Some((key, value)) = label.split_once('=') else {
            bail!("--label {label:?}: expected KEY=VALUE");
        };
        check_label_key(key)
            .and_then(|()| check_label_value(value))
            .map_err(|e| anyhow::anyhow!("--label {label:?}: {e}"))?;
        labels.insert(key.to_string(), value.to_string());
    }
    let capacity = match &args.capacity {
        Some(text) => parse_capacity(text, machine.capacity)?,
        None => machine.capacity,
    };
    Ok(NodeRegistration::new(
        &args.node,
        labels,
        capacity,
        cgroup_mode,
    ))
}

/// `cpu=2,memory=4Gi,pids=1000`, each part optional, over `base`.
pub(crate) fn parse_capacity(text: &str, base: Res) -> anyhow::Result<Res> {
    let mut capacity = base;
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (name, value) = part
            .split_once('=')
            .with_context(|| format!("--capacity {part:?}: expected NAME=AMOUNT"))?;
        let quantity = Quantity::new(value);
        let amount = match name {
            "cpu" => quantity.millis(),
            "memory" | "pids" => quantity.units(),
            _ => bail!("--capacity {part:?}: the resources are cpu, memory and pids"),
        }
        .map_err(|e| anyhow::anyhow!("--capacity {part:?}: {value:?} {e}"))?;
        match name {
            "cpu" => capacity.cpu = amount,
            "memory" => capacity.memory = amount,
            _ => capacity.pids = amount,
        }
    }
    Ok(capacity)
}

/// This machine's host name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}

/// A receiver that changes on the first SIGINT or SIGTERM.
///
/// # Errors
/// The signal handlers cannot be installed.
pub fn shutdown_on_signals() -> anyhow::Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tx.send_replace(true);
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacities_override_the_machine() {
        let base = Res::new(2000, 1 << 30, 100);
        assert_eq!(
            parse_capacity("cpu=500m,memory=2Gi", base).unwrap(),
            Res::new(500, 2 << 30, 100)
        );
        assert!(parse_capacity("gpu=1", base).is_err());
        assert!(parse_capacity("cpu=12XB", base).is_err());
    }
}
