//! `corral logs`: a replica's output from this machine's state directory, rotated files
//! first, and `--follow` to keep printing; and the hidden `corral log-pump` that writes it.

use std::collections::BTreeSet;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::agent::logs::{self, LogSink};
use crate::api::WorkloadRef;
use crate::lease::LogLimits;

/// Arguments of `corral logs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The workload, NAMESPACE/NAME.
    #[arg(value_name = "NAMESPACE/NAME")]
    pub workload: String,
    /// Which replica; needed with --follow when several run on this machine.
    #[arg(long, value_name = "N")]
    pub replica: Option<u32>,
    /// Keep printing what the replica writes, across rotations, until interrupted.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// State directory of the corral run or agent on this machine.
    #[arg(
        long,
        env = "CORRAL_STATE_DIR",
        default_value = "/var/lib/corral",
        value_name = "DIR"
    )]
    pub state_dir: PathBuf,
}

/// Arguments of `corral log-pump`, which corral starts beside each replica.
#[derive(Debug, clap::Args)]
pub struct PumpArgs {
    /// Rotate the file when it reaches this many bytes.
    #[arg(long)]
    pub max_bytes: u64,
    /// Keep this many files, the current one included.
    #[arg(long)]
    pub max_files: u32,
    /// A `cgroup.procs` file to join first (the replica's groups); repeat for each.
    #[arg(long, value_name = "FILE")]
    pub join: Vec<PathBuf>,
    /// The current log file.
    pub path: PathBuf,
}

/// Prints the output. Returns 0.
///
/// # Errors
/// The name is not NAMESPACE/NAME, no output of it is here, or a file cannot be read.
pub fn run(args: &Args) -> anyhow::Result<u8> {
    let workload: WorkloadRef = args.workload.parse()?;
    let (namespace, name) = (workload.namespace(), workload.name());
    let dir = args.state_dir.join("logs");
    let replicas = replicas_logged(&dir, namespace, name)?;
    let chosen: Vec<u32> = match args.replica {
        Some(n) if replicas.contains(&n) => vec![n],
        Some(n) => bail!(
            "no output of replica {n} of {namespace}/{name} in {}; replicas here: {}",
            dir.display(),
            list(&replicas)
        ),
        None if replicas.is_empty() => bail!(
            "no output of {namespace}/{name} in {}; in a cluster, run corral logs on the node that runs it (corral status shows where)",
            dir.display()
        ),
        None if args.follow && replicas.len() > 1 => bail!(
            "replicas {} of {namespace}/{name} run here: choose one to follow with --replica N",
            list(&replicas)
        ),
        None => replicas.iter().copied().collect(),
    };
    let mut out = std::io::stdout().lock();
    for index in &chosen {
        let sink = sink(&dir, namespace, name, *index);
        if chosen.len() > 1 {
            writeln!(out, "==> replica {index} <==")?;
        }
        for file in sink.files() {
            let mut f = std::fs::File::open(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            std::io::copy(&mut f, &mut out)?;
        }
    }
    out.flush()?;
    if args.follow {
        follow(&sink(&dir, namespace, name, chosen[0]).path, &mut out)?;
    }
    Ok(0)
}

/// Runs the pump: standard input to the rotated files, until standard input ends.
///
/// # Errors
/// The log file cannot be opened or standard input read.
pub fn pump(args: &PumpArgs) -> anyhow::Result<u8> {
    let sink = LogSink {
        path: args.path.clone(),
        limits: LogLimits {
            max_bytes: args.max_bytes,
            max_files: args.max_files,
        },
    };
    // A pump that cannot be charged to its replica does not run: its work would be the
    // agent's. The replica's writes then fail, and its group is being removed anyway.
    logs::join(&args.join)?;
    logs::pump(std::io::stdin().lock(), &sink)
        .with_context(|| format!("writing {}", args.path.display()))?;
    Ok(0)
}

fn sink(dir: &Path, namespace: &str, name: &str, index: u32) -> LogSink {
    LogSink {
        path: dir.join(format!("{namespace}.{name}.{index}.log")),
        limits: LogLimits::default(),
    }
}

/// The replicas of `namespace/name` with output in `dir`.
fn replicas_logged(dir: &Path, namespace: &str, name: &str) -> anyhow::Result<BTreeSet<u32>> {
    let prefix = format!("{namespace}.{name}.");
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut out = BTreeSet::new();
    for entry in entries {
        let file = entry?.file_name().to_string_lossy().into_owned();
        if let Some(index) = file
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split_once(".log"))
            .and_then(|(index, _)| index.parse().ok())
        {
            out.insert(index);
        }
    }
    Ok(out)
}

fn list(replicas: &BTreeSet<u32>) -> String {
    if replicas.is_empty() {
        return "none".into();
    }
    replicas
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints what is appended to `path` from now on; after a rotation, the rest of the old
/// file and then the new one from its start.
fn follow(path: &Path, out: &mut impl Write) -> anyhow::Result<()> {
    let mut file = std::fs::File::open(path)?;
    file.seek(std::io::SeekFrom::End(0))?;
    let mut inode = file.metadata()?.ino();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buffer)?;
        if n > 0 {
            out.write_all(&buffer[..n])?;
            out.flush()?;
            continue;
        }
        std::thread::sleep(Duration::from_millis(200));
        match std::fs::metadata(path) {
            Ok(meta) if meta.ino() != inode => {
                // Rotated: what was written to the old file before the rename was read
                // above; the new file is read from its start.
                file = std::fs::File::open(path)?;
                inode = meta.ino();
            }
            Ok(meta) if meta.len() < file.stream_position()? => {
                // Truncated in place (a policy keeping one file).
                file.seek(std::io::SeekFrom::Start(0))?;
            }
            _ => {}
        }
    }
}
