//! `fleetward`: parses flags, installs logging, hands over to the library.

use clap::Parser;
use std::process::ExitCode;

#[allow(clippy::print_stderr)]
fn main() -> ExitCode {
    let cli = gateway::cli::Cli::parse();
    // Logs go to stderr (RUST_LOG=debug for more); command output goes to stdout.
    // The demo prints its own story; the server logs what it does.
    let default = match cli.command {
        gateway::cli::Command::Demo(_) => "warn",
        _ => "warn,gateway=info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let mut stdout = std::io::stdout().lock();
    match gateway::cli::run(cli, &mut stdout) {
        Ok(outcome) => ExitCode::from(outcome as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(gateway::cli::Outcome::UsageError as u8)
        }
    }
}
