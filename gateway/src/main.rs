//! `fleetward`: parses flags and hands over to the library.

use clap::Parser;
use std::process::ExitCode;

#[allow(clippy::print_stderr)]
fn main() -> ExitCode {
    let cli = gateway::cli::Cli::parse();
    let mut stdout = std::io::stdout().lock();
    match gateway::cli::run(cli, &mut stdout) {
        Ok(outcome) => ExitCode::from(outcome as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(gateway::cli::Outcome::UsageError as u8)
        }
    }
}
