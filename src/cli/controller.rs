//! `corral controller`: the cluster controller, leader-elected through ZooKeeper.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};

use super::zk::ZkArgs;
use crate::lease::identities::AgentIdentities;
use crate::lease::zookeeper::{ZkConfig, ZkStore};
use crate::metrics::ControllerMetrics;
use crate::source::{self, watch::ManifestSource};

/// Arguments of `corral controller`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the desired objects come from: `kubernetes` (the API server of the in-cluster
    /// or KUBECONFIG configuration), or `dir:PATH`, a manifest file or directory (watched;
    /// repeat for more).
    #[arg(long = "source", value_name = "kubernetes|dir:PATH", required = true)]
    pub sources: Vec<String>,
    /// With `--source kubernetes`: the kubeconfig file to use instead of the in-cluster
    /// configuration, KUBECONFIG or ~/.kube/config.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub zk: ZkArgs,
    /// YAML mapping each node's name, or "*" for any node, to the ZooKeeper ACL ids its
    /// agent authenticates as ({node} stands for the name), e.g.
    /// `"*": ["x509:CN={node},O=corral-agents"]` or `node-a: ["digest:node-a:HASH"]` (see
    /// corral zk digest). Required with a ZooKeeper identity: the controller gives each
    /// node's znodes to that node's ids.
    #[arg(long, env = "CORRAL_AGENT_IDENTITIES", value_name = "FILE")]
    pub agent_identities: Option<PathBuf>,
    /// This controller's name in the election; default: host name and process ID.
    #[arg(long, value_name = "NAME")]
    pub identity: Option<String>,
    /// Seconds between passes when nothing changes (observed use is read then).
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS", value_parser = super::seconds::resync)]
    pub resync: f64,
    /// Serve /metrics, /healthz and /readyz on this address, e.g. 0.0.0.0:9090.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Log lines as JSON.
    #[arg(long)]
    pub log_json: bool,
}

/// Where `corral controller` reads the desired objects.
#[derive(Debug, PartialEq, Eq)]
pub enum Source {
    /// The Kubernetes API.
    Kubernetes,
    /// Manifest files and directories.
    Files(Vec<PathBuf>),
}

/// The source the `--source` options name.
///
/// # Errors
/// An unknown kind, or `kubernetes` mixed with files.
pub fn source(sources: &[String]) -> anyhow::Result<Source> {
    if sources.iter().any(|s| s == "kubernetes") {
        if sources.len() > 1 {
            bail!("--source kubernetes cannot be combined with other sources");
        }
        return Ok(Source::Kubernetes);
    }
    source_paths(sources).map(Source::Files)
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
            _ => bail!(
                "--source {s:?}: expected kubernetes, or dir:PATH (a manifest file or directory)"
            ),
        })
        .collect()
}

/// The Kubernetes client: from `kubeconfig`, else in-cluster, else ~/.kube/config.
async fn kube_client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let mut config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "--source kubernetes: no Kubernetes configuration (in-cluster, --kubeconfig, or ~/.kube/config)",
        )?,
    };
    // The API server names a write's field manager after the user agent when the request
    // names none, as kube's finalizer helper's does: without one it is `unknown`.
    config.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_static(concat!(
            "corral-controller/",
            env!("CARGO_PKG_VERSION")
        )),
    ));
    kube::Client::try_from(config).context("building the Kubernetes client")
}

/// The store's configuration with the agents' identities of `file`.
///
/// # Errors
/// The file is malformed (every problem, with its line), or missing while the controller
/// has a ZooKeeper identity: it would not know whom to give each node's znodes.
pub fn with_agent_identities(
    mut config: ZkConfig,
    file: Option<&std::path::Path>,
) -> anyhow::Result<ZkConfig> {
    match file {
        Some(path) => {
            config.agents = AgentIdentities::from_file(path)?;
            if config.agents.shared() {
                tracing::warn!(
                    file = %path.display(),
                    "the \"*\" entry gives every agent one identity: any agent may read every node's leases and register as any node; give each node its own"
                );
            }
        }
        None if config.has_identity() => bail!(
            "--agent-identities is required with a ZooKeeper identity: the controller gives \
             each node's znodes to the ACL ids of that node's agent, and without the file it \
             knows none. Write e.g. '\"*\": [\"x509:CN={{node}},O=corral-agents\"]' for a \
             certificate per node, or 'node-a: [\"digest:node-a:HASH\"]' with the HASH that \
             corral zk digest prints"
        ),
        None => {}
    }
    Ok(config)
}

/// Runs until SIGINT or SIGTERM, then resigns. Returns 1 when the manifests are invalid at
/// start (nothing is written then).
///
/// # Errors
/// No `--zookeeper`, no Kubernetes configuration, or the store cannot be reached.
pub fn run(args: &Args) -> anyhow::Result<u8> {
    crate::telemetry::init(crate::telemetry::Output::Stderr, args.log_json)?;
    let source = source(&args.sources)?;
    let Some(config) = args.zk.config()? else {
        bail!(
            "corral controller needs --zookeeper; on one machine without ZooKeeper, use corral run"
        );
    };
    let config = with_agent_identities(config, args.agent_identities.as_deref())?;
    let manifests = match &source {
        Source::Files(paths) => {
            let manifests = source::load(paths);
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
            Some((paths.clone(), manifests))
        }
        Source::Kubernetes => None,
    };
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("{}-{}", super::agent::host_name(), std::process::id()));
    let resync = super::seconds::duration(args.resync);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(async {
            let shutdown = super::agent::shutdown_on_signals()?;
            let metrics = Arc::new(ControllerMetrics::default());
            if let Some(addr) = args.metrics_addr {
                crate::metrics::serve(addr, Arc::clone(&metrics), shutdown.clone()).await?;
            }
            match manifests {
                Some((paths, manifests)) => {
                    let store = ZkStore::connect(config).await?;
                    tokio::spawn(metrics.session.clone().follow(store.session()));
                    metrics.readiness.ready();
                    let source = ManifestSource::new(&paths, manifests, true)?;
                    crate::controller::cluster::run(
                        store, source, &identity, resync, &metrics, shutdown,
                    )
                    .await?;
                }
                None => {
                    let client = kube_client(args.kubeconfig.as_deref()).await?;
                    let store = ZkStore::connect(config).await?;
                    tokio::spawn(metrics.session.clone().follow(store.session()));
                    crate::operator::run(client, store, &identity, resync, metrics, shutdown)
                        .await?;
                }
            }
            Ok::<u8, anyhow::Error>(0)
        })
}
