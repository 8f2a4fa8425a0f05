//! `corral hollow-agents`: many simulated nodes in one process, each with its own
//! ZooKeeper session, for measuring the controller and ZooKeeper at scale (see
//! [`crate::agent::hollow`]). They touch no cgroup and start no process.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use std::io::BufRead;

use super::agent::{parse_capacity, shutdown_on_signals};
use super::zk::ZkArgs;
use crate::agent::hollow::{self, HOLLOW_CGROUP_MODE};
use crate::alloc::Res;
use crate::api::names::{check_label_key, check_label_value};
use crate::lease::NodeRegistration;
use crate::source::nodes;

/// What a hollow node offers unless `--capacity` says otherwise: 4 cores, 8 GiB, 10,000 pids.
const DEFAULT_CAPACITY: Res = Res::new(4000, 8 << 30, 10_000);

/// The most hollow agents one process runs.
const MAX_COUNT: usize = 100_000;

/// Arguments of `corral hollow-agents`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many hollow nodes this process runs.
    #[arg(long, value_name = "N")]
    pub count: usize,
    /// The nodes' names: this prefix and a number, `hollow-0000`, `hollow-0001`, ...
    #[arg(long, default_value = "hollow-", value_name = "PREFIX")]
    pub prefix: String,
    /// The number of the first node.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub first: usize,
    /// What each node offers, e.g. cpu=4,memory=8Gi,pids=10000 (the default).
    #[arg(long, value_name = "AMOUNTS")]
    pub capacity: Option<String>,
    /// A label of every node, key=value. Repeat for more.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    #[command(flatten)]
    pub zk: ZkArgs,
    /// Seconds between the safety-net re-reads of each node's leases (at least 60, as a
    /// real agent's).
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    pub resync: f64,
    /// Read commands on standard input, one a line: `stop NODE` stops that node's hollow
    /// agent (its session is closed, so it goes as a stopped agent does). For tests.
    #[arg(long)]
    pub control_stdin: bool,
    /// Log lines as JSON.
    #[arg(long)]
    pub log_json: bool,
}

/// The registrations of the hollow nodes `args` asks for.
///
/// # Errors
/// A count of 0 or too many, a name that is not a DNS subdomain, a bad label or capacity.
pub fn registrations(args: &Args) -> anyhow::Result<Vec<NodeRegistration>> {
    if args.count == 0 || args.count > MAX_COUNT {
        bail!("--count {} must be between 1 and {MAX_COUNT}", args.count);
    }
    let capacity = match &args.capacity {
        Some(text) => parse_capacity(text, DEFAULT_CAPACITY)?,
        None => DEFAULT_CAPACITY,
    };
    let mut labels = BTreeMap::new();
    for label in &args.labels {
        let Some((key, value)) = label.split_once('=') else {
            bail!("--label {label:?}: expected KEY=VALUE");
        };
        check_label_key(key)
            .and_then(|()| check_label_value(value))
            .map_err(|e| anyhow::anyhow!("--label {label:?}: {e}"))?;
        labels.insert(key.to_string(), value.to_string());
    }
    let width = (args.first + args.count - 1).to_string().len().max(4);
    (args.first..args.first + args.count)
        .map(|i| {
            let name = format!("{}{i:0width$}", args.prefix);
            if !nodes::is_node_name(&name) {
                bail!(
                    "--prefix {:?} makes {name:?}, not a DNS subdomain",
                    args.prefix
                );
            }
            let mut labels = labels.clone();
            labels.insert("kubernetes.io/hostname".to_string(), name.clone());
            Ok(NodeRegistration::new(
                &name,
                labels,
                capacity,
                HOLLOW_CGROUP_MODE,
            ))
        })
        .collect()
}

/// Runs the hollow agents until SIGINT or SIGTERM.
///
/// # Errors
/// A bad option or no `--zookeeper`.
pub fn run(args: &Args) -> anyhow::Result<u8> {
    crate::telemetry::init(crate::telemetry::Output::Stderr, args.log_json)?;
    let Some(config) = args.zk.config()? else {
        bail!("corral hollow-agents needs --zookeeper");
    };
    let registrations = registrations(args)?;
    let count = registrations.len();
    let resync = Duration::from_secs_f64(args.resync.max(1.0));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(async {
            let mut shutdown = shutdown_on_signals()?;
            let hollow = hollow::start(&config, registrations, resync, &shutdown);
            eprintln!("corral hollow-agents: {count} hollow nodes starting");
            if args.control_stdin {
                // Standard input is read on a thread of its own: a blocking read there
                // holds up no agent.
                let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
                std::thread::spawn(move || {
                    for line in std::io::stdin().lock().lines() {
                        let Ok(line) = line else { return };
                        if tx.send(line).is_err() {
                            return;
                        }
                    }
                });
                loop {
                    tokio::select! {
                        line = lines.recv() => match line {
                            Some(line) => match line.split_whitespace().collect::<Vec<_>>()[..] {
                                ["stop", node] => {
                                    let stopped = hollow.stop(node);
                                    println!("{} {node}", if stopped { "stopped" } else { "unknown" });
                                }
                                [] => {}
                                _ => println!("unknown command {line:?}: stop NODE"),
                            },
                            // Standard input closed: the commands end, the agents go on.
                            None => break,
                        },
                        _ = shutdown.changed() => break,
                    }
                }
            }
            let _ = shutdown.wait_for(|stop| *stop).await;
            // Closing the sessions takes a moment; the ephemerals then go at once.
            tokio::time::sleep(Duration::from_millis(200)).await;
            eprintln!(
                "corral hollow-agents stopped ({} nodes were running)",
                hollow.nodes().len()
            );
            Ok::<u8, anyhow::Error>(0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(line: &[&str]) -> Args {
        Cli::parse_from([&["hollow"], line].concat()).args
    }

    #[test]
    fn nodes_are_numbered_from_first_with_the_prefix() {
        let regs =
            registrations(&args(&["--count", "3", "--first", "9", "--prefix", "h-a-"])).unwrap();
        let names: Vec<&str> = regs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["h-a-0009", "h-a-0010", "h-a-0011"]);
        assert_eq!(regs[0].capacity, DEFAULT_CAPACITY);
        assert_eq!(regs[0].labels["kubernetes.io/hostname"], "h-a-0009");
    }

    #[test]
    fn bad_options_are_refused() {
        assert!(registrations(&args(&["--count", "0"])).is_err());
        assert!(registrations(&args(&["--count", "1", "--prefix", "Bad_"])).is_err());
        assert!(registrations(&args(&["--count", "1", "--capacity", "gpu=1"])).is_err());
        assert!(registrations(&args(&["--count", "1", "--label", "novalue"])).is_err());
    }
}
