//! `corral plan`: run the allocator on manifests and nodes, apply nothing, and show the
//! result as tables or JSON.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use comfy_table::{Table, presets};

use super::ManifestArgs;
use crate::alloc::plan::{Limits, Plan};
use crate::alloc::resources::Kind;
use crate::alloc::{self, Input, Res};
use crate::api::{ResourcePolicy, Workload};
use crate::source::{self, nodes};

/// Output formats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Tables a person reads.
    #[default]
    Table,
    /// One JSON object, the format documented in README.md.
    Json,
}

/// Arguments of `corral plan`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub manifests: ManifestArgs,
    /// A YAML list of nodes (`name`, `labels`, `capacity: {cpu, memory, pids}`). Without it,
    /// this machine is the one node.
    #[arg(long, value_name = "FILE")]
    pub nodes: Option<PathBuf>,
    /// The JSON of an earlier `corral plan -o json`: replicas stay where it put them while
    /// they fit, as they would in a running cluster.
    #[arg(long, value_name = "FILE")]
    pub current: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: Format,
}

/// Prints the plan. Returns 0, or 1 when the manifests or nodes are invalid (their problems
/// are printed on standard error and nothing is planned).
///
/// # Errors
/// Standard output could not be written, or `--current` could not be read.
pub fn run(args: &Args) -> anyhow::Result<u8> {
    let manifests = source::load(&args.manifests.paths);
    for notice in &manifests.notices {
        eprintln!("note: {notice}");
    }
    if !manifests.is_valid() {
        for problem in &manifests.problems {
            eprintln!("{problem}");
        }
        eprintln!(
            "not planned: {} problem(s) in the manifests; `corral validate` lists them",
            manifests.problems.len()
        );
        return Ok(1);
    }
    let nodes = match &args.nodes {
        Some(path) => match nodes::from_file(path) {
            Ok(nodes) => nodes,
            Err(problems) => {
                for p in problems {
                    eprintln!("{p}");
                }
                return Ok(1);
            }
        },
        None => vec![nodes::this_machine().context("reading this machine's capacity from /proc")?],
    };
    let current = match &args.current {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let earlier: Plan = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not the JSON of `corral plan -o json`",
                    path.display()
                )
            })?;
            earlier.placement()
        }
        None => HashMap::new(),
    };
    let workloads: Vec<Workload> = manifests.workloads.into_iter().map(|w| w.object).collect();
    let policies: Vec<ResourcePolicy> = manifests.policies.into_iter().map(|p| p.object).collect();
    let plan = alloc::allocate(&Input {
        policies: &policies,
        workloads: &workloads,
        nodes: &nodes,
        observed: &HashMap::new(),
        current: &current,
    });
    let mut out = std::io::stdout().lock();
    match args.output {
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, &plan).context("writing the plan")?;
            writeln!(out)?;
        }
        Format::Table => write!(out, "{}", render(&plan)).context("writing the plan")?,
    }
    Ok(0)
}

/// The plan as tables: policies, allocations, pending replicas, preemptions, nodes.
pub fn render(plan: &Plan) -> String {
    let mut text = String::new();
    let mut section = |title: &str, table: Table| {
        text.push_str(title);
        text.push('\n');
        text.push_str(&table.to_string());
        text.push_str("\n\n");
    };
    let mut policies = table([
        "POLICY",
        "STRATEGY",
        "NODES",
        "ALLOCATED / CAPACITY",
        "PENDING",
    ]);
    for p in &plan.policies {
        policies.add_row([
            p.name.clone(),
            p.strategy.clone(),
            p.nodes.to_string(),
            of(p.allocated, p.capacity),
            p.pending.to_string(),
        ]);
    }
    section("POLICIES", policies);

    let mut allocations = table(["WORKLOAD", "REPLICA", "NODE", "GRANTED", "LIMITS"]);
    for a in &plan.allocations {
        allocations.add_row([
            a.workload.to_string(),
            a.replica.to_string(),
            a.node.clone(),
            amounts(a.granted),
            limits(a.limits),
        ]);
    }
    section(
        &format!("ALLOCATIONS ({})", plan.allocations.len()),
        allocations,
    );

    if !plan.pending.is_empty() {
        let mut pending = table(["WORKLOAD", "REPLICA", "REASON"]);
        for p in &plan.pending {
            pending.add_row([
                p.workload.to_string(),
                p.replica.to_string(),
                p.reason.clone(),
            ]);
        }
        section(&format!("PENDING ({})", plan.pending.len()), pending);
    }
    if !plan.preemptions.is_empty() {
        let mut preempted = table(["WORKLOAD", "REPLICA", "NODE", "PREEMPTED BY"]);
        for p in &plan.preemptions {
            preempted.add_row([
                p.workload.to_string(),
                p.replica.to_string(),
                p.node.clone(),
                format!("{} replica {}", p.by_workload, p.by_replica),
            ]);
        }
        section("PREEMPTIONS", preempted);
    }
    let mut nodes = table([
        "NODE",
        "POLICY",
        "REPLICAS",
        "ALLOCATED / ALLOCATABLE",
        "NOTE",
    ]);
    for n in &plan.nodes {
        nodes.add_row([
            n.name.clone(),
            n.policy.clone().unwrap_or_else(|| "-".to_string()),
            n.replicas.to_string(),
            of(n.allocated, n.allocatable),
            n.problem.clone().unwrap_or_default(),
        ]);
    }
    section("NODES", nodes);
    // The last column's padding would leave spaces at every line's end.
    let mut trimmed: String = text
        .lines()
        .map(|l| format!("{}\n", l.trim_end()))
        .collect();
    trimmed.truncate(trimmed.trim_end().len());
    trimmed.push('\n');
    trimmed
}

fn table<const N: usize>(header: [&str; N]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::NOTHING);
    t.set_header(header);
    for i in 0..N {
        if let Some(column) = t.column_mut(i) {
            column.set_padding((0, 3));
        }
    }
    t
}

/// An amount of one resource for a table: exact when short, else rounded (`7.6Gi`).
pub fn human(kind: Kind, amount: i64) -> String {
    if amount == i64::MAX {
        return "-".to_string();
    }
    if kind != Kind::Memory {
        return kind.format(amount);
    }
    let exact = kind.format(amount);
    if exact.len() <= 6 {
        return exact;
    }
    const UNITS: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let mut value = amount as f64;
    let mut unit = "";
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    format!("{value:.1}{unit}")
}

fn amounts(r: Res) -> String {
    format!(
        "cpu {}, mem {}, pids {}",
        human(Kind::Cpu, r.cpu),
        human(Kind::Memory, r.memory),
        human(Kind::Pids, r.pids)
    )
}

fn limits(l: Limits) -> String {
    let show = |kind: Kind, v: Option<i64>| v.map_or_else(|| "-".to_string(), |v| human(kind, v));
    format!(
        "cpu {}, mem {}, pids {}",
        show(Kind::Cpu, l.cpu),
        show(Kind::Memory, l.memory),
        show(Kind::Pids, l.pids)
    )
}

fn of(used: Res, total: Res) -> String {
    Kind::ALL
        .iter()
        .map(|k| {
            format!(
                "{} {}/{}",
                k.name(),
                human(*k, used.get(*k)),
                human(*k, total.get(*k))
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
