//! Logging: tracing to standard error, or to a file while a live table owns the terminal.
//! The level comes from `CORRAL_LOG` (e.g. `debug`, `corral=debug`), default `info`.

use std::path::Path;

use tracing_subscriber::EnvFilter;

/// Where log lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output<'a> {
    /// Standard error.
    Stderr,
    /// Appended to this file.
    File(&'a Path),
}

/// Installs the global subscriber once; later calls do nothing.
///
/// # Errors
/// The log file cannot be opened.
pub fn init(output: Output<'_>, json: bool) -> std::io::Result<()> {
    let filter = EnvFilter::try_from_env("CORRAL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match (output, json) {
        (Output::Stderr, false) => builder.with_writer(std::io::stderr).try_init(),
        (Output::Stderr, true) => builder.json().with_writer(std::io::stderr).try_init(),
        (Output::File(path), json) => {
            if let Some(dir) = path.parent() {
                crate::state::private::ensure_dir(dir, true)?;
            }
            let file = crate::state::private::open(path, crate::state::private::Mode::Append)?;
            let writer = std::sync::Mutex::new(file);
            if json {
                builder
                    .json()
                    .with_ansi(false)
                    .with_writer(writer)
                    .try_init()
            } else {
                builder.with_ansi(false).with_writer(writer).try_init()
            }
        }
    };
    // A subscriber already installed (tests run many commands in one process) is fine.
    drop(result);
    Ok(())
}
