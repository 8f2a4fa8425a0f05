//! `corral run`: controller and agent for this machine in one process, no cluster needed.
//! Watches the manifests, allocates, keeps leases and reports in the embedded store under
//! the state directory, enforces them in cgroups, restores drift, and shows a live table
//! on a terminal (log lines otherwise). Workloads outlive it: stopping corral leaves them
//! running, and the next `corral run` takes them over.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use super::ManifestArgs;
use super::live;
use crate::agent::enforcer::{Enforcer, Wake};
use crate::agent::node::{Agent, Trigger};
use crate::alloc::NodeInfo;
use crate::api::{ResourcePolicy, Workload};
use crate::cgroup::fs::Cgroupfs;
use crate::controller::{self, ControllerPass, UsageHistory};
use crate::lease::embedded::EmbeddedStore;
use crate::lease::{LeaseStore, NodeRegistration, unix_now};
use crate::source::watch::{ManifestSource, Reload};
use crate::source::{self, nodes};
use crate::state::{RunStatus, StateDir};
use crate::validate::Manifests;

/// How `corral run` shows progress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Ui {
    /// A live table on a terminal, log lines otherwise.
    #[default]
    Auto,
    /// The live table.
    Table,
    /// Log lines.
    Log,
}

/// Where corral keeps its state and cgroups; shared by run, status and down.
#[derive(Debug, Clone, clap::Args)]
pub struct Where {
    /// State directory: leases, reports, process records, workload logs.
    #[arg(
        long,
        env = "CORRAL_STATE_DIR",
        default_value = "/var/lib/corral",
        value_name = "DIR"
    )]
    pub state_dir: PathBuf,
    /// corral's cgroup subtree below each hierarchy's mount point: a path of cgroup names
    /// (`corral`, `system.slice/corral.service`), or `self` for the delegated cgroup corral
    /// runs in (a systemd unit with Delegate=yes). Default: `corral`; for `down`, the root
    /// the last run used.
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<String>,
    /// Join the cgroup namespace of PID 1 first, then drop CAP_SYS_ADMIN and CAP_SYS_PTRACE: for a pod on
    /// cgroup v2 that shares the host's PID namespace and mounts its /sys/fs/cgroup.
    #[arg(long, env = "CORRAL_HOST_CGROUP_NAMESPACE")]
    pub host_cgroup_namespace: bool,
    /// This node's name; default: the host name.
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
}

/// Arguments of `corral run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub manifests: ManifestArgs,
    #[command(flatten)]
    pub place: Where,
    /// Seconds between re-reads of the cgroup tree that restore values changed behind
    /// corral's back.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS", value_parser = super::seconds::resync)]
    pub resync: f64,
    /// Converge once and exit.
    #[arg(long)]
    pub once: bool,
    /// Print the operations corral would perform, perform none, and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Live table or log lines.
    #[arg(long, value_enum, default_value_t)]
    pub ui: Ui,
    /// Log lines as JSON.
    #[arg(long)]
    pub log_json: bool,
    /// Keep leases in ZooKeeper instead of the embedded store (controller and agent still in
    /// this one process; other controllers and agents may join).
    #[command(flatten)]
    pub zk: super::zk::ZkArgs,
}

/// Runs until interrupted (or once). Returns 0, or 1 when the manifests are invalid at
/// start or a `--once` pass failed.
///
/// # Errors
/// The state directory, the cgroup root or the store cannot be used.
pub fn run(args: &Args) -> anyhow::Result<u8> {
    if !args.dry_run {
        super::join_host_cgroup_namespace(
            args.place.host_cgroup_namespace,
            args.place.cgroup_root.as_deref(),
        )?;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run_async(args))
}

/// The signals that end `corral run`, listened to from the start so that one arriving
/// during the first pass ends it cleanly.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

async fn run_async(args: &Args) -> anyhow::Result<u8> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut signals = Signals {
        interrupt: signal(SignalKind::interrupt())?,
        terminate: signal(SignalKind::terminate())?,
    };
    let state = StateDir(args.place.state_dir.clone());
    let table = match args.ui {
        Ui::Table => true,
        Ui::Log => false,
        Ui::Auto => std::io::stdout().is_terminal() && !args.once && !args.dry_run,
    };
    if table {
        crate::telemetry::init(
            crate::telemetry::Output::File(&state.0.join("corral.log")),
            args.log_json,
        )?;
    } else {
        crate::telemetry::init(crate::telemetry::Output::Stderr, args.log_json)?;
    }
    let manifests = source::load(&args.manifests.paths);
    for notice in &manifests.notices {
        eprintln!("note: {notice}");
    }
    if !manifests.is_valid() {
        for problem in &manifests.problems {
            eprintln!("{problem}");
        }
        eprintln!(
            "nothing applied: {} problem(s) in the manifests",
            manifests.problems.len()
        );
        return Ok(1);
    }
    let mut node = nodes::this_machine().context("reading this machine's capacity from /proc")?;
    if let Some(name) = &args.place.node {
        if !nodes::is_node_name(name) {
            bail!("--node {name:?} must be a DNS subdomain");
        }
        node.name.clone_from(name);
    }
    let fs = super::cgroupfs(
        args.place.cgroup_root.as_deref(),
        args.place.host_cgroup_namespace,
    )?;
    let root_dir = fs.root_dirs().first().cloned().unwrap_or_default();
    if args.dry_run {
        return dry_run(&state, fs, &node, &manifests).await;
    }
    // One corral per state directory: its process records are not shared.
    let _lock = state.lock_run().map_err(anyhow::Error::msg)?;
    if let Some(config) = args.zk.config()? {
        return with_zookeeper(args, config, fs, node, manifests, signals).await;
    }
    let store = EmbeddedStore::open(&state.0)?;
    let epoch = store.next_epoch()?;
    store
        .register_node(&NodeRegistration::new(
            &node.name,
            node.labels.clone(),
            node.capacity,
            fs.mode(),
        ))
        .await?;
    let mut agent = Agent::new(&node.name, fs, &state.0, false)?;
    super::pump_logs(&mut agent);
    let mut enforcer = Enforcer::new(agent, super::seconds::duration(args.resync))?;
    let source = ManifestSource::new(&args.manifests.paths, manifests, !args.once)?;
    let mut run = Run {
        store,
        epoch,
        node,
        state,
        usage: UsageHistory::new(20),
        source,
        last: None,
        reported: Vec::new(),
        recontrol: false,
    };
    run.control().await?;
    let failures = if args.once {
        // Converge for good before exiting: stops run in the background otherwise.
        run.enforce_with(&mut enforcer, |e, leases| e.settle(Trigger::Leases, leases))
            .await?
    } else {
        run.enforce(&mut enforcer, Trigger::Leases).await?
    };
    if args.once {
        print!("{}", run.table(enforcer.agent()).await?);
        return Ok(u8::from(failures > 0));
    }
    // The first pass has run.
    enforcer.postpone_resync();
    run.watch_loop(&mut enforcer, table, &mut signals).await?;
    let running = run.store.node_leases(&run.node.name).await?.len();
    eprintln!(
        "corral stopped. {running} replica(s) keep running in their cgroups under {}; `corral down` stops them and removes the groups.",
        root_dir.display()
    );
    Ok(0)
}

/// Shows what one pass would do, changing nothing: no store, no cgroup, no process.
async fn dry_run(
    state: &StateDir,
    fs: Cgroupfs,
    node: &NodeInfo,
    manifests: &Manifests,
) -> anyhow::Result<u8> {
    let current = match EmbeddedStore::open_existing(&state.0) {
        Ok(store) => store.leases().await?,
        Err(_) => Vec::new(),
    };
    let workloads: Vec<Workload> = manifests
        .workloads
        .iter()
        .map(|w| w.object.clone())
        .collect();
    let policies: Vec<ResourcePolicy> = manifests
        .policies
        .iter()
        .map(|p| p.object.clone())
        .collect();
    let plan = crate::alloc::allocate(&crate::alloc::Input {
        policies: &policies,
        workloads: &workloads,
        nodes: std::slice::from_ref(node),
        observed: &std::collections::HashMap::new(),
        current: &controller::leases::placement(&current),
    });
    let leases = controller::leases::desired_leases(&plan, &workloads, &policies, 0);
    let mut agent = Agent::new(&node.name, fs, &state.0, true)?;
    agent.set_leases(leases);
    let pass = agent.pass(Trigger::Leases);
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "# corral run --dry-run: {} operation(s) on node {}, none performed",
        pass.ops.len(),
        node.name
    )?;
    for op in &pass.ops {
        writeln!(out, "{op}")?;
    }
    for pending in &plan.pending {
        writeln!(
            out,
            "# pending {} replica {}: {}",
            pending.workload, pending.replica, pending.reason
        )?;
    }
    Ok(0)
}

/// The state of a running `corral run`.
struct Run {
    store: EmbeddedStore,
    epoch: i64,
    node: NodeInfo,
    state: StateDir,
    usage: UsageHistory,
    source: ManifestSource,
    last: Option<ControllerPass>,
    /// The reports last written, to skip writing the same again.
    reported: Vec<crate::lease::Report>,
    /// New reports arrived during a rollout: a controller pass may let it go on.
    recontrol: bool,
}

impl Run {
    async fn control(&mut self) -> anyhow::Result<()> {
        let pass = controller::reconcile(
            &self.store,
            self.epoch,
            &self.source.workloads,
            &self.source.policies,
            &controller::Seen {
                nodes: std::slice::from_ref(&self.node),
                // One node, this one: it is never missing.
                missing: &std::collections::BTreeMap::new(),
                usage: &self.usage,
                reports: &self.reported,
                cordoned: &std::collections::BTreeSet::new(),
            },
        )
        .await?;
        if pass.changes > 0 {
            tracing::info!(
                changes = pass.changes,
                pending = pass.plan.pending.len(),
                "leases written"
            );
        }
        self.last = Some(pass);
        Ok(())
    }

    /// One agent pass; returns the number of failed operations.
    async fn enforce(
        &mut self,
        enforcer: &mut Enforcer,
        trigger: Trigger,
    ) -> anyhow::Result<usize> {
        self.enforce_with(enforcer, |e, leases| e.pass(trigger, leases))
            .await
    }

    /// Passes as `passes` runs them, with the leases of the last controller pass; returns
    /// the number of failed operations.
    async fn enforce_with(
        &mut self,
        enforcer: &mut Enforcer,
        passes: impl FnOnce(&mut Enforcer, Option<Vec<crate::lease::Lease>>) -> crate::agent::node::Pass,
    ) -> anyhow::Result<usize> {
        let node = enforcer.agent().node().to_string();
        // This process is the store's only writer while it runs (the run lock), so the
        // leases of the last controller pass are the store's.
        let leases = match &self.last {
            Some(pass) => pass
                .leases
                .iter()
                .filter(|l| l.node == node)
                .cloned()
                .collect(),
            None => self.store.node_leases(&node).await?,
        };
        let pass = passes(enforcer, Some(leases));
        for failure in &pass.outcome.failures {
            tracing::warn!(op = %failure.op, error = %failure.error, "failed");
        }
        if self.reported != pass.reports {
            self.store.write_reports(&node, &pass.reports).await?;
            self.reported.clone_from(&pass.reports);
            // A rollout goes on as replaced replicas become ready, and its status with it.
            self.recontrol |= self
                .last
                .as_ref()
                .is_some_and(|p| p.rollouts.iter().any(|r| r.in_progress()));
        }
        self.usage.record(&pass.reports);
        self.publish(enforcer.agent());
        // A replica without its limits is a failure too: `--once` must not exit 0 for it.
        let unenforced = pass
            .reports
            .iter()
            .filter(|r| r.process.state == crate::lease::ProcessState::Unenforced)
            .count();
        Ok(pass.outcome.failures.len() + unenforced)
    }

    /// Writes `status.json` for `corral status`.
    fn publish(&self, agent: &Agent) {
        let status = RunStatus {
            node: self.node.name.clone(),
            pid: std::process::id(),
            updated_at: unix_now(),
            pending: self
                .last
                .as_ref()
                .map(|p| p.plan.pending.clone())
                .unwrap_or_default(),
            agent: agent.stats,
            manifest_problems: self.source.problems.clone(),
            rollouts: self
                .last
                .as_ref()
                .map(|p| p.rollouts.clone())
                .unwrap_or_default(),
        };
        if let Err(e) = self.state.write_status(&status) {
            tracing::warn!(error = %e, "cannot write status.json");
        }
    }

    async fn table(&self, agent: &Agent) -> anyhow::Result<String> {
        let leases = self.store.leases().await?;
        let reports = self.store.reports().await?;
        let pending = self
            .last
            .as_ref()
            .map(|p| p.plan.pending.clone())
            .unwrap_or_default();
        let mut text = live::render(&live::rows(&leases, &reports, &pending));
        let s = agent.stats;
        text.push_str(&format!(
            "\nnode {}: {} passes, {} writes, {} drift corrections, {} starts, {} failures\n",
            self.node.name, s.passes, s.writes, s.drift_corrections, s.starts, s.failures
        ));
        for problem in &self.source.problems {
            text.push_str(&format!(
                "manifest problem (previous version kept): {problem}\n"
            ));
        }
        Ok(text)
    }

    async fn watch_loop(
        &mut self,
        enforcer: &mut Enforcer,
        table: bool,
        signals: &mut Signals,
    ) -> anyhow::Result<()> {
        let mut redraw = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = signals.interrupt.recv() => break,
                _ = signals.terminate.recv() => break,
                reload = self.source.changed() => match reload {
                    Reload::Applied => {
                        self.control().await?;
                        self.enforce(enforcer, Trigger::Leases).await?;
                    }
                    Reload::Kept => self.publish(enforcer.agent()),
                },
                wake = enforcer.wake() => match wake {
                    Wake::Pass(Trigger::Resync) => {
                        // Grants change between edits only under the Usage strategy.
                        if self.source.policies.iter().any(|p| p.spec.strategy == crate::api::Strategy::Usage) {
                            self.control().await?;
                        }
                        self.enforce(enforcer, Trigger::Resync).await?;
                    }
                    Wake::Pass(trigger) => {
                        self.enforce(enforcer, trigger).await?;
                    }
                    Wake::Tick => {}
                },
                _ = redraw.tick(), if table => {
                    let text = self.table(enforcer.agent()).await?;
                    let mut out = std::io::stdout().lock();
                    // Clear the screen and draw from the top.
                    write!(out, "\x1b[H\x1b[2J{text}\nCtrl-C exits; workloads keep running.\n")?;
                    out.flush()?;
                }
            }
            // Reports changed during a rollout: its next step may be due. Bounded, as the
            // reports settle within a few passes (a replacement stops in the background).
            for _ in 0..8 {
                if !std::mem::take(&mut self.recontrol) {
                    break;
                }
                self.control().await?;
                self.enforce(enforcer, Trigger::Leases).await?;
            }
        }
        Ok(())
    }
}

/// `corral run --zookeeper`: the cluster controller and this machine's agent in one
/// process, with leases in ZooKeeper (other controllers and agents may join). Logs only.
async fn with_zookeeper(
    args: &Args,
    config: crate::lease::zookeeper::ZkConfig,
    fs: Cgroupfs,
    node: NodeInfo,
    manifests: Manifests,
    mut signals: Signals,
) -> anyhow::Result<u8> {
    let registration =
        NodeRegistration::new(&node.name, node.labels.clone(), node.capacity, fs.mode());
    let root_dir = fs.root_dirs().first().cloned().unwrap_or_default();
    let mut agent = Agent::new(&node.name, fs, &args.place.state_dir, false)?;
    super::pump_logs(&mut agent);
    let source = ManifestSource::new(&args.manifests.paths, manifests, true)?;
    let store = crate::lease::zookeeper::ZkStore::connect(config).await?;
    let resync = super::seconds::duration(args.resync);
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let identity = format!("{}-{}", node.name, std::process::id());
    let controller = tokio::spawn({
        let (store, shutdown) = (store.clone(), shutdown.clone());
        let metrics = crate::metrics::ControllerMetrics::default();
        async move {
            crate::controller::cluster::run(store, source, &identity, resync, &metrics, shutdown)
                .await
        }
    });
    let agent = tokio::spawn(crate::agent::daemon::run(
        store,
        agent,
        registration,
        resync,
        std::sync::Arc::default(),
        shutdown,
    ));
    tokio::select! {
        _ = signals.interrupt.recv() => {}
        _ = signals.terminate.recv() => {}
    }
    stop.send_replace(true);
    controller.await??;
    agent.await??;
    eprintln!(
        "corral stopped. The workloads of node {} keep running in their cgroups under {}.",
        node.name,
        root_dir.display()
    );
    Ok(0)
}
