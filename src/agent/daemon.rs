//! The node agent as a daemon against ZooKeeper: registers the node (an ephemeral znode
//! that the store registers again after a session expiry), follows the node's leases, and
//! runs passes on lease changes, process exits and a periodic resync.
//!
//! Fail-static: when ZooKeeper cannot be read, the agent keeps enforcing the last leases it
//! read; it never stops a workload for lack of ZooKeeper. Before it has read leases once,
//! it changes nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::node::{Agent, Trigger, unix_now_ms};
use crate::lease::zookeeper::ZkStore;
use crate::lease::{Lease, LeaseStore, NodeRegistration, Report};

/// Runs the agent until `shutdown` changes. Workloads keep running after it returns.
pub async fn run(
    store: Arc<ZkStore>,
    mut agent: Agent,
    registration: NodeRegistration,
    resync: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let node = registration.name.clone();
    let mut leases_changed = loop {
        let attempt = async {
            store.register_node(&registration).await?;
            store.subscribe(&format!("/leases/{node}")).await
        };
        match attempt.await {
            Ok(receiver) => break receiver,
            Err(e) => {
                tracing::warn!(error = %e, "cannot register with ZooKeeper yet; workloads are left as they are");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
            }
        }
    };
    tracing::info!(%node, "registered");
    let mut resync_timer = tokio::time::interval(resync);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut child_exited = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
    let mut enforced: Option<Vec<Lease>> = None;
    let mut reported: Vec<Report> = Vec::new();
    loop {
        let trigger = tokio::select! {
            _ = leases_changed.changed() => Trigger::Leases,
            _ = resync_timer.tick() => Trigger::Resync,
            _ = child_exited.recv() => Trigger::Processes,
            _ = tick.tick() => {
                if !agent.restart_due(unix_now_ms()) {
                    continue;
                }
                Trigger::Processes
            }
            _ = shutdown.changed() => return Ok(()),
        };
        if trigger != Trigger::Processes {
            match store.node_leases(&node).await {
                Ok(leases) => enforced = Some(leases),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read leases; enforcing the last ones read")
                }
            }
        }
        let Some(leases) = &enforced else {
            continue;
        };
        agent.set_leases(leases.clone());
        let pass = tokio::task::block_in_place(|| agent.pass(trigger));
        if pass.reports != reported {
            match store.write_reports(&node, &pass.reports).await {
                Ok(()) => reported = pass.reports,
                Err(e) => tracing::warn!(error = %e, "cannot write reports"),
            }
        }
    }
}
