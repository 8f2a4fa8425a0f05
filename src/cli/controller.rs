//! `corral controller`: the cluster controller, leader-elected through ZooKeeper.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use super::zk::ZkArgs;
use crate::lease::zookeeper::ZkStore;
use crate::source::{self, watch::ManifestSource};

/// Arguments of `corral controller`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the desired objects come from: `dir:PATH`, a manifest file or directory
    /// (watched). Repeat for more.
    #[arg(long = "source", value_name = "dir:PATH", required = true)]
    pub sources: Vec<String>,
    #[command(flatten)]
    pub zk: ZkArgs,
    /// This controller's name in the election; default: host name and process ID.
    #[arg(long, value_name = "NAME")]
    pub identity: Option<String>,
    /// Seconds between passes when nothing changes (observed use is read then).
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    pub resync: f64,
    /// Log lines as JSON.
    #[arg(long)]
    pub log_json: bool,
}

/// The paths of `dir:PATH` sources.
///
/// # Errors
/// A source of another kind.
pub fn source_paths(sources: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    sources
        .iter()
        .map(|s| match s.strip_prefix("dir:") {
            Some(path) if !path.is_empty() => Ok(PathBuf::from(path)),
            _ => bail!("--source {s:?}: expected dir:PATH (a manifest file or directory)"),
        })
        .collect()
}

/// Runs until SIGINT or SIGTERM, then resigns. Returns 1 when the manifests are invalid at
/// start (nothing is written then).
///
/// # Errors
/// No `--zookeeper`, or the store cannot be reached.
pub fn run(args: &Args) -> anyhow::Result<u8> {
    crate::telemetry::init(crate::telemetry::Output::Stderr, args.log_json)?;
    let paths = source_paths(&args.sources)?;
    let Some(config) = args.zk.config()? else {
        bail!(
            "corral controller needs --zookeeper; on one machine without ZooKeeper, use corral run"
        );
    };
    let manifests = source::load(&paths);
    if !manifests.is_valid() {
        for problem in &manifests.problems {
            eprintln!("{problem}");
        }
        eprintln!(
            "not started: {} problem(s) in the manifests",
            manifests.problems.len()
        );
        return Ok(1);
    }
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("{}-{}", super::agent::host_name(), std::process::id()));
    let resync = Duration::from_secs_f64(args.resync.max(0.1));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(async {
            let shutdown = super::agent::shutdown_on_signals()?;
            let source = ManifestSource::new(&paths, manifests, true)?;
            let store = ZkStore::connect(config).await?;
            crate::controller::cluster::run(store, source, &identity, resync, shutdown).await?;
            Ok::<u8, anyhow::Error>(0)
        })
}
