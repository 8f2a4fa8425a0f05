//! `corral crd`: print the generated CRDs, or write them to a directory.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use crate::api::crd;

/// Arguments of `corral crd`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write one file per CRD into this directory (e.g. crds/) instead of printing them.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Prints or writes the CRDs.
///
/// # Errors
/// Serialization or file writing failed.
pub fn run(args: &Args) -> anyhow::Result<u8> {
    let mut stdout = std::io::stdout().lock();
    for generated in crd::all() {
        let yaml = crd::to_yaml(&generated.crd).context("serializing a CRD")?;
        match &args.dir {
            Some(dir) => {
                let path = dir.join(generated.file_name);
                std::fs::write(&path, &yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            None => write!(stdout, "---\n{yaml}").context("writing to standard output")?,
        }
    }
    Ok(0)
}
