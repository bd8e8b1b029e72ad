//! `fleetward`: parses flags, installs logging (and, when configured, the OpenTelemetry
//! exporters), hands over to the library.

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
    // `serve` reads its configuration first: the log format and the OTLP endpoint are in it.
    let (observability, node) = match &cli.command {
        gateway::cli::Command::Serve(args) => match args.config() {
            Ok(c) => (c.observability.clone(), c.node_name.clone()),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(gateway::cli::Outcome::UsageError as u8);
            }
        },
        _ => (gateway::config::ObservabilityConfig::default(), None),
    };
    let _telemetry = match gateway::observability::init(&observability, default, node.as_deref()) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(gateway::cli::Outcome::UsageError as u8);
        }
    };
    let mut stdout = std::io::stdout().lock();
    match gateway::cli::run(cli, &mut stdout) {
        Ok(outcome) => ExitCode::from(outcome as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(gateway::cli::Outcome::UsageError as u8)
        }
    }
}
