use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = corral::cli::Cli::parse();
    match corral::cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
