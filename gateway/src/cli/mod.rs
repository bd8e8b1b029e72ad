//! Command-line interface: flags (clap) and the commands they run.

mod verify;

use clap::{Parser, Subcommand};
use std::io::Write;

pub use verify::{ChainArgs, ChallengeArgs, RegistrationArgs, VerifyCommand};

/// fleetward — proves, for every byte a device sends, that it really is that device.
#[derive(Debug, Parser)]
#[command(
    name = "fleetward",
    version,
    about = "fleetward: proves, for every byte a device sends, that it really is that device",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Offline checks of certificates and signatures, exactly as the server makes them.
    #[command(subcommand)]
    Verify(VerifyCommand),
}

/// How a command ended; the process exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Outcome {
    /// Verified.
    Valid = 0,
    /// Checked, and refused (the output says which check failed).
    Rejected = 1,
    /// The command could not run (bad flags, unreadable input).
    UsageError = 2,
}

/// Runs a parsed command, writing its report to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Verify(cmd) => verify::run(cmd, out),
    }
}
