//! `corral validate`: every problem in the manifests, one line each.

use std::io::Write;

use anyhow::Context;

use super::ManifestArgs;
use crate::source;

/// Arguments of `corral validate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub manifests: ManifestArgs,
}

/// Prints one line per problem on standard output and a summary on standard error.
/// Returns 0 when there is no problem, 1 otherwise.
///
/// # Errors
/// Standard output could not be written.
pub fn run(args: &Args) -> anyhow::Result<u8> {
    let manifests = source::load(&args.manifests.paths);
    let mut stdout = std::io::stdout().lock();
    for problem in &manifests.problems {
        writeln!(stdout, "{problem}").context("writing to standard output")?;
    }
    for notice in &manifests.notices {
        eprintln!("note: {notice}");
    }
    let objects = format!(
        "{} Workload{}, {} ResourcePolic{} in {} file{}",
        manifests.workloads.len(),
        plural(manifests.workloads.len(), "", "s"),
        manifests.policies.len(),
        plural(manifests.policies.len(), "y", "ies"),
        manifests.files,
        plural(manifests.files, "", "s"),
    );
    if manifests.is_valid() {
        eprintln!("valid: {objects}");
        Ok(0)
    } else {
        let n = manifests.problems.len();
        eprintln!(
            "invalid: {n} problem{} ({objects} valid)",
            plural(n, "", "s")
        );
        Ok(1)
    }
}

fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}
