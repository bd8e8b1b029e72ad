//! `sim-devices`: the simulated fleet's command line.
//!
//! - `sim-devices pki init --out DIR`: a simulated personalization service — a provisioning CA
//!   hierarchy and N device identities in the STSAFE-A profile, as PEM files any client can use.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "sim-devices",
    version,
    about = "Simulated secure-element devices for fleetward"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The simulated personalization service.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
}

#[derive(Subcommand, Debug)]
enum PkiCommand {
    /// Makes a provisioning CA (root, optionally an intermediate) and N device identities (P-256,
    /// X.509 v3 without extensions, CN `<profile>-<die serial>`) as PEM files in DIR.
    Init {
        /// Directory to write (created; an existing PKI there is never overwritten).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Device identities to make.
        #[arg(long, default_value_t = 10)]
        devices: usize,
        /// Issue the devices from an intermediate CA under the root.
        #[arg(long)]
        intermediate: bool,
        /// STSAFE profile in the devices' common name.
        #[arg(long, default_value = "eval3")]
        profile: String,
        /// The root CA's common name.
        #[arg(long, default_value = "sim-devices provisioning CA")]
        ca_name: String,
        /// Device certificates' validity, days from now.
        #[arg(long, default_value_t = 365 * 30)]
        valid_days: i64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Pki {
            command:
                PkiCommand::Init {
                    out,
                    devices,
                    intermediate,
                    profile,
                    ca_name,
                    valid_days,
                },
        } => {
            let opts = sim_devices::pki_dir::InitOptions {
                devices,
                intermediate,
                profile,
                ca_name,
                valid_days,
            };
            let step = (devices / 20).max(1);
            let mut stderr = std::io::stderr();
            let made = sim_devices::pki_dir::init(&out, &opts, time::OffsetDateTime::now_utc(), |n| {
                if n % step == 0 || n == devices {
                    let _ = write!(stderr, "\rdevice identities: {n}/{devices}");
                }
            })?;
            let _ = writeln!(stderr);
            let d = out.display();
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "wrote {d}:")?;
            writeln!(
                stdout,
                "  {d}/ca.pem, {d}/ca.key          provisioning root CA and its key"
            )?;
            if intermediate {
                writeln!(
                    stdout,
                    "  {d}/intermediate.pem, .key     issuing CA (sent by devices after their certificate)"
                )?;
            }
            writeln!(
                stdout,
                "  {d}/devices/<ID>.pem, <ID>.key  {} device identities (ids in {d}/devices.txt)",
                made.len()
            )?;
            if let Some(first) = made.first() {
                writeln!(stdout, "next:")?;
                writeln!(stdout, "  fleetward serve --trust-ca {d}/ca.pem")?;
                writeln!(
                    stdout,
                    "  mosquitto_pub -h localhost -p 8883 --cafile fleetward-data/tls/server-ca.pem \\\n      --cert {d}/devices/{id}.pem --key {d}/devices/{id}.key -i {id} -t devices/{id}/telemetry -m hello -q 1",
                    id = first.id
                )?;
            }
            Ok(())
        }
    }
}
