//! The tools `tests/chart/setup.sh` installs under `CORRAL_TOOLS` (default
//! `/var/tmp/corral-tools`): Helm, promtool and kubernetes-validate. The script runs once
//! per test binary; later calls reuse its result.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The directory the tools are in, after `tests/chart/setup.sh` made sure of them.
///
/// # Panics
/// When the script fails: with its output.
pub fn dir() -> &'static Path {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let result = DIR.get_or_init(|| {
        let dir = std::env::var_os("CORRAL_TOOLS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp/corral-tools"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chart/setup.sh");
        let output = Command::new("bash")
            .arg(&script)
            .env("CORRAL_TOOLS", &dir)
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if !output.status.success() {
            return Err(format!(
                "tests/chart/setup.sh failed ({}):\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(dir)
    });
    result
        .as_ref()
        .map(PathBuf::as_path)
        .unwrap_or_else(|e| panic!("{e}"))
}
