//! The command line: argument parsing and one module per subcommand. Only this layer and
//! `main` print, and only `main` turns errors into exit codes.

pub mod agent;
pub mod controller;
pub mod crd;
pub mod down;
pub mod drain;
pub mod hollow;
pub mod live;
pub mod logs;
pub mod plan;
pub mod run;
pub mod seconds;
pub mod status;
pub mod top;
pub mod validate;
pub mod zk;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// corral: declarative cgroup resource allocation, with leases in ZooKeeper.
#[derive(Debug, Parser)]
#[command(name = "corral", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the CustomResourceDefinitions (crds/ is generated from this).
    Crd(crd::Args),
    /// Check manifests: schema, CEL rules and semantic checks. Exit 1 on any problem.
    Validate(validate::Args),
    /// Show the allocation and where each replica would run; nothing is applied.
    Plan(plan::Args),
    /// Run the manifests on this machine: controller and agent in one process.
    Run(run::Args),
    /// Show leases, grants, use and process state from the state directory.
    Status(status::Args),
    /// Grant, use, throttling, OOM kills and pressure per node, tenant and replica, live.
    Top(top::Args),
    /// Stop workloads on purpose and remove their cgroups.
    Down(down::Args),
    /// Print a replica's output on this machine (rotated files first); --follow to go on.
    Logs(logs::Args),
    /// Started by corral beside each replica: writes its output to rotated files.
    #[command(hide = true)]
    LogPump(logs::PumpArgs),
    /// The cluster controller: allocates and writes leases in ZooKeeper, leader-elected.
    Controller(controller::Args),
    /// A node's agent: enforces its node's leases from ZooKeeper.
    Agent(agent::Args),
    /// Many simulated nodes in one process, each with its own ZooKeeper session; they
    /// register, follow their leases and report them running without touching cgroups.
    HollowAgents(hollow::Args),
    /// ZooKeeper identities: the digest of user:password, the ids of a client certificate.
    Zk(zk::Args),
    /// Cordon a cluster node and move its replicas away, within each workload's
    /// maxUnavailable; waits until it holds none.
    Drain(drain::DrainArgs),
    /// Let replicas be placed on a drained node again.
    Uncordon(drain::UncordonArgs),
}

/// Manifest paths, shared by the subcommands that read manifests.
#[derive(Debug, clap::Args)]
pub struct ManifestArgs {
    /// A manifest file, a directory (searched recursively for *.yaml and *.yml) or - for
    /// standard input. Repeat for more.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,
}

/// Has `agent` start this executable's `corral log-pump` for each replica's output, so that
/// the output is rotated as the policy says.
pub fn pump_logs(agent: &mut crate::agent::node::Agent) {
    match std::env::current_exe() {
        Ok(exe) => agent.set_log_pump(exe),
        Err(e) => {
            tracing::warn!(error = %e, "cannot find corral's executable: replicas' output will not be rotated")
        }
    }
}

/// Joins the host's cgroup namespace when `--host-cgroup-namespace` asks for it, and makes
/// corral's root (`root`, `corral` when `None`) before dropping the capabilities that only
/// the start needs: the top directory of a hierarchy is mode 0555 (`CAP_DAC_OVERRIDE`),
/// and on v1 the root's devices list needs `CAP_SYS_ADMIN` (see [`crate::cgroup::others`]).
/// Call it before any thread starts (before the runtime and the log output).
///
/// # Errors
/// The kernel refused; the error says what is needed.
pub fn join_host_cgroup_namespace(asked: bool, root: Option<&str>) -> anyhow::Result<()> {
    if asked {
        let joined = crate::cgroup::root::join_host_namespace(|| make_root(root))
            .map_err(|e| anyhow::anyhow!("--host-cgroup-namespace: {e}"))?;
        if joined {
            eprintln!(
                "joined the host's cgroup namespace (PID 1's) and dropped CAP_SYS_ADMIN, CAP_SYS_PTRACE and CAP_DAC_OVERRIDE"
            );
        }
    }
    Ok(())
}

/// Makes corral's root in every hierarchy, as [`cgroupfs`] resolves it (on v1 with its
/// devices list).
fn make_root(root: Option<&str>) -> Result<(), String> {
    let fs = cgroupfs(root, true).map_err(|e| e.to_string())?;
    fs.create(None).map_err(|e| {
        format!("making corral's cgroup root while the start's capabilities last: {e}")
    })
}

/// The cgroup subtree a command manages: `--cgroup-root` resolved on this host (`corral`
/// when `None`). Refuses a cgroup2 mount out of reach of this cgroup namespace, no cgroup
/// filesystem at all, and, on a systemd host, a root nobody delegated.
///
/// # Errors
/// Each says what to do.
pub fn cgroupfs(
    root: Option<&str>,
    host_namespace: bool,
) -> anyhow::Result<crate::cgroup::fs::Cgroupfs> {
    use crate::cgroup::root;
    let layout = crate::cgroup::layout::Layout::detect()?;
    if layout.is_v2() && layout.unified_outside_namespace() {
        let mount = layout.unified.clone().unwrap_or_default();
        if host_namespace {
            anyhow::bail!(
                "{} shows a cgroup hierarchy whose top ({}) is outside corral's cgroup namespace even after --host-cgroup-namespace: PID 1 is not the host's init. Share the host's PID namespace (hostPID: true in a pod)",
                mount.display(),
                layout.unified_root
            );
        }
        anyhow::bail!(
            "corral runs in a private cgroup namespace (as a pod on cgroup v2 does), and {} shows a hierarchy whose top ({}) is outside it: the kernel would refuse to move any replica into its group. Pass --host-cgroup-namespace (it needs CAP_SYS_ADMIN and CAP_SYS_PTRACE, dropped right after, and the host's PID namespace; the Helm chart does this)",
            mount.display(),
            layout.unified_root
        );
    }
    let resolved = root::resolve(
        root.unwrap_or("corral"),
        &layout,
        &root::Host::detect(),
        root::is_delegated,
    )?;
    Ok(crate::cgroup::fs::Cgroupfs::at(layout, resolved))
}

/// Runs the parsed command and returns the process exit code.
///
/// # Errors
/// Failures that are not about the manifests themselves (output, I/O).
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Crd(args) => crd::run(&args),
        Command::Validate(args) => validate::run(&args),
        Command::Plan(args) => plan::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Status(args) => status::run(&args),
        Command::Top(args) => top::run(&args),
        Command::Down(args) => down::run(&args),
        Command::Drain(args) => drain::drain(&args),
        Command::Uncordon(args) => drain::uncordon(&args),
        Command::Logs(args) => logs::run(&args),
        Command::LogPump(args) => logs::pump(&args),
        Command::Controller(args) => controller::run(&args),
        Command::Agent(args) => agent::run(&args),
        Command::HollowAgents(args) => hollow::run(&args),
        Command::Zk(args) => zk::run(&args),
    }
}
