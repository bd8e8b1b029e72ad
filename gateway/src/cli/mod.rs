//! Command-line interface: flags (clap) and the commands they run.

mod admin;
mod db;
mod serve;
mod verify;

use clap::{Parser, Subcommand};
use std::io::Write;

pub use admin::{ApiArgs, AuditArgs, CaCommand, DeviceCommand, FirmwareCommand, Format, TokenCommand};
pub use db::{DbArgs, KekArgs, KeysCommand};
pub use serve::{ConfigCommand, DemoArgs, ServeArgs};
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
    /// Run the server: MQTT over mutual TLS with just-in-time registration, and HTTP.
    Serve(ServeArgs),
    /// A first look: a fresh server and a simulated fleet (good devices and bad actors).
    Demo(DemoArgs),
    /// Configuration file helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Offline checks of certificates and signatures, exactly as the server makes them.
    #[command(subcommand)]
    Verify(VerifyCommand),
    /// Apply pending database migrations (the server also does at start-up).
    Migrate(DbArgs),
    /// Key-encryption keys for sealed LPWAN keys: generate one, rotate to it.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// API tokens (`create` works offline against the registry).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Provisioning CAs, through the API: add (with proof of possession), list, revoke, CRLs.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Devices, through the API: list, show, activate, quarantine, revoke, attest.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Firmware reference values, through the API: add (allowed or blocked), list.
    #[command(subcommand)]
    Firmware(FirmwareCommand),
    /// Fleet audit findings, through the API.
    Audit(AuditArgs),
    /// Probe a running server's /healthz (or /readyz): exit 0 when it answers 200. For container
    /// health checks in images without a shell or curl.
    Health(serve::HealthArgs),
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
        Command::Serve(args) => serve::serve(args, out),
        Command::Demo(args) => serve::demo(args, out),
        Command::Config(cmd) => serve::config(cmd, out),
        Command::Health(args) => serve::health(args, out),
        Command::Verify(cmd) => verify::run(cmd, out),
        Command::Migrate(db) => db::migrate(db, out),
        Command::Keys(cmd) => db::keys(cmd, out),
        Command::Token(cmd) => admin::token(cmd, out),
        Command::Ca(cmd) => admin::ca(cmd, out),
        Command::Device(cmd) => admin::device(cmd, out),
        Command::Firmware(cmd) => admin::firmware(cmd, out),
        Command::Audit(args) => admin::audit(args, out),
    }
}
