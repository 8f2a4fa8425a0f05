//! `corral drain NODE` and `corral uncordon NODE`: take a node out of a cluster for
//! maintenance and bring it back, as `kubectl drain` and `kubectl uncordon` do (and Mesos'
//! maintenance mode). The cordon is a znode the leading controller follows
//! ([`crate::controller::drain`]); this command writes it and waits.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::controller::cluster::ControllerStatus;
use crate::lease::LeaseStore;
use crate::lease::zookeeper::ZkStore;

/// Arguments of `corral drain`.
#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    /// The node.
    pub node: String,
    /// Seconds to wait for the node to hold no replica; 0: cordon and return at once.
    #[arg(long, default_value_t = 300.0, value_name = "SECONDS", value_parser = super::seconds::timeout)]
    pub timeout: f64,
    /// How to reach the cluster's ZooKeeper (the controller's credentials).
    #[command(flatten)]
    pub zk: super::zk::ZkArgs,
}

/// Arguments of `corral uncordon`.
#[derive(Debug, clap::Args)]
pub struct UncordonArgs {
    /// The node.
    pub node: String,
    /// How to reach the cluster's ZooKeeper (the controller's credentials).
    #[command(flatten)]
    pub zk: super::zk::ZkArgs,
}

/// How often the progress is read.
const POLL: Duration = Duration::from_millis(500);

/// Cordons the node, then waits until no replica is leased there, printing what is left
/// and why. Returns 0 once it is empty (or at once with `--timeout 0`), 1 on timeout: the
/// node stays cordoned either way.
///
/// # Errors
/// No `--zookeeper`, an unusable timeout, or ZooKeeper refused.
pub fn drain(args: &DrainArgs) -> anyhow::Result<u8> {
    let Some(config) = args.zk.config()? else {
        bail!(
            "corral drain works on a cluster: give --zookeeper (a `corral run` machine is one node; `corral down` stops its workloads)"
        );
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let store = ZkStore::connect(config).await?;
        let known = store.nodes().await?;
        if !known.iter().any(|n| n.name == args.node)
            && store.node_leases(&args.node).await?.is_empty()
        {
            bail!(
                "node {:?} is not registered and holds no lease; registered: {}",
                args.node,
                known
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let why = serde_json::json!({"by": "corral drain", "since": crate::lease::unix_now()});
        store
            .cordon(&args.node, why.to_string().as_bytes())
            .await
            .with_context(|| format!("cordoning {}", args.node))?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "node {} cordoned: nothing new is placed there", args.node)?;
        if args.timeout == 0.0 {
            return Ok(0);
        }
        let deadline = Instant::now() + super::seconds::duration(args.timeout);
        let mut last = String::new();
        loop {
            // The node's own leases, not the cluster's, at every poll.
            let left: Vec<String> = store
                .node_leases(&args.node)
                .await?
                .into_iter()
                .map(|l| l.key.to_string())
                .collect();
            if left.is_empty() {
                writeln!(out, "node {} drained: no replica is leased there", args.node)?;
                return Ok(0);
            }
            let status: Option<ControllerStatus> = store
                .read_status()
                .await?
                .and_then(|data| serde_json::from_slice(&data).ok());
            let reasons: Vec<&String> = status
                .as_ref()
                .map(|s| {
                    s.kept
                        .iter()
                        .filter(|k| left.iter().any(|l| k.starts_with(&format!("{l}:"))))
                        .collect()
                })
                .unwrap_or_default();
            let mut now = format!("{} replica(s) left on {}: {}", left.len(), args.node, left.join(", "));
            for reason in reasons {
                now.push_str(&format!("\n  {reason}"));
            }
            if now != last {
                writeln!(out, "{now}")?;
                last = now;
            }
            if Instant::now() >= deadline {
                writeln!(
                    out,
                    "timed out after {}s; the node stays cordoned, and its replicas move as room and their budgets allow (`corral uncordon {}` undoes it)",
                    args.timeout, args.node
                )?;
                return Ok(1);
            }
            tokio::time::sleep(POLL).await;
        }
    })
}

/// Lifts the node's cordon. Returns 0.
///
/// # Errors
/// No `--zookeeper`, or ZooKeeper refused.
pub fn uncordon(args: &UncordonArgs) -> anyhow::Result<u8> {
    let Some(config) = args.zk.config()? else {
        bail!("corral uncordon works on a cluster: give --zookeeper");
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let store = ZkStore::connect(config).await?;
        store
            .uncordon(&args.node)
            .await
            .with_context(|| format!("uncordoning {}", args.node))?;
        println!(
            "node {} uncordoned: replicas may be placed there again",
            args.node
        );
        Ok(0)
    })
}
