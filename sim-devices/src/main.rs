//! `sim-devices`: the simulated fleet's command line.
//!
//! - `sim-devices pki init --out DIR`: a simulated personalization service — a provisioning CA
//!   hierarchy and N device identities in the STSAFE-A profile, as PEM files any client can use.
//! - `sim-devices run --gateway HOST:PORT --pki DIR --server-ca PEM`: the fleet against a gateway
//!   (rehearsal and load test), with a report in text or `--json`.
//! - `sim-devices attack --gateway HOST:PORT --pki DIR --server-ca PEM --scenario all|NAME`: the
//!   security regression suite; exit code 0 only if every attack was stopped.

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use sim_devices::attack::{self, AttackTarget, Verdict};
use sim_devices::attest::Firmware;
use sim_devices::run::{Consumer, Live, LpwanOptions, Mode, ProfileChoice, Rate, RunOptions};
use std::io::{IsTerminal, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "sim-devices",
    version,
    about = "Simulated secure-element devices for fleetward: PKI, fleet runs and load tests, attacks"
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
    /// Runs the fleet against a gateway: mutual TLS, MQTT, attestation answers, telemetry,
    /// reconnects; reports connects/s, latency percentiles, messages/s, errors, gateway CPU/RSS.
    Run(Box<RunArgs>),
    /// Runs attack scenarios and checks that fleetward stopped each (exit 1 if any got through).
    Attack(AttackArgs),
    /// Prints the `fleetward firmware add` command that registers the simulated devices' firmware
    /// image as a known-good reference value (what `run --attest` measures).
    Firmware,
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

/// Where the gateway is and what the devices are.
#[derive(Args, Debug)]
struct TargetArgs {
    /// The gateway's MQTT/TLS endpoint.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8883")]
    gateway: String,
    /// A `sim-devices pki init` directory: the devices' certificates and keys.
    #[arg(long, value_name = "DIR")]
    pki: PathBuf,
    /// The CA that signs the gateway's server certificate (fleetward writes it to
    /// `DATA_DIR/tls/server-ca.pem`; default: `fleetward-data/tls/server-ca.pem` when present).
    #[arg(long, value_name = "PEM")]
    server_ca: Option<PathBuf>,
    /// The name to check the server certificate against (default: HOST).
    #[arg(long)]
    server_name: Option<String>,
    /// fleetward's operator API (for LoRaWAN/Sigfox devices and the server's side of attacks).
    #[arg(long, value_name = "URL")]
    api: Option<String>,
    /// An API token (`fleetward token create --role admin`: provisioning LoRaWAN and Sigfox devices
    /// needs the admin role; reading events, operator).
    #[arg(long, env = "FLEETWARD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// fleetward's LoRaWAN packet-forwarder UDP endpoint (e.g. 127.0.0.1:1700).
    #[arg(long, value_name = "HOST:PORT")]
    lorawan: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// MQTT devices to run (the first N of the PKI directory; default: all of them).
    #[arg(long)]
    devices: Option<usize>,
    /// Telemetry rate of the whole fleet: `R/s` (or `R`), or `max` (as fast as acknowledged).
    #[arg(long, default_value = "1/s", value_parser = parse_rate)]
    rate: Rate,
    /// How long to run: `10s`, `2m`, `500ms` (or seconds).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// What the devices do once connected.
    #[arg(long, value_enum, default_value_t = ModeArg::Telemetry)]
    mode: ModeArg,
    /// The devices' TLS stack.
    #[arg(long, value_enum, default_value_t = ProfileArg::MbedtlsTls12)]
    profile: ProfileArg,
    /// Telemetry QoS (0 or 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// QoS 1 messages in flight per device.
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Telemetry payload size, bytes (JSON).
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// New connections per second, fleet-wide (`0`: no limit).
    #[arg(long, default_value_t = 500.0)]
    connect_rate: f64,
    /// Subscribe to the attestation topics and answer challenges (signed firmware measurement of
    /// the demo image: register it with `fleetward firmware add`, see README).
    #[arg(long)]
    attest: bool,
    /// MQTT keep-alive, seconds.
    #[arg(long, default_value_t = 60)]
    keep_alive: u16,
    /// Local addresses to connect from, comma-separated (e.g. 127.0.0.2,127.0.0.3 for many
    /// connections).
    #[arg(long, value_delimiter = ',')]
    bind: Vec<IpAddr>,
    /// Count delivered telemetry with a backend consumer subscribed to `devices/+/telemetry`:
    /// with --token it logs in with the token (fleetward); otherwise it uses the PKI's last device
    /// certificate (a broker such as Mosquitto).
    #[arg(long)]
    consume: bool,
    /// The gateway's process id for its CPU and RSS (default: found from the port when local).
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// LoRaWAN devices to add to the fleet (needs --api, --token and --lorawan).
    #[arg(long, default_value_t = 0)]
    lorawan_devices: usize,
    /// Sigfox devices to add to the fleet (needs --api and --token).
    #[arg(long, default_value_t = 0)]
    sigfox_devices: usize,
    /// How often each LoRaWAN and Sigfox device sends an uplink.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    lpwan_interval: Duration,
    /// Exit 1 if anything went wrong (an error of any kind, a device that never connected, an
    /// acknowledged message the consumer did not get).
    #[arg(long)]
    strict: bool,
}

#[derive(Args, Debug)]
struct AttackArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// `all`, or one scenario's name (see --list).
    #[arg(long, default_value = "all")]
    scenario: String,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    /// Connect, answer challenges, publish at the rate, reconnect when lost.
    Telemetry,
    /// Full handshake + CONNECT + DISCONNECT, again and again.
    Handshakes,
    /// Connect and hold (keep-alive only).
    Idle,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProfileArg {
    /// TLS 1.2, ECDHE-ECDSA-AES128-GCM-SHA256, P-256 (STM32 + mbedTLS).
    #[value(name = "mbedtls-tls12")]
    MbedtlsTls12,
    /// TLS 1.3.
    #[value(name = "tls13")]
    Tls13,
    /// Half TLS 1.2 (mbedTLS profile), half TLS 1.3.
    Mixed,
}

fn parse_rate(s: &str) -> Result<Rate, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("max") {
        return Ok(Rate::Max);
    }
    let n = s.strip_suffix("/s").unwrap_or(s);
    n.parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r >= 0.0)
        .map(Rate::PerSecond)
        .ok_or_else(|| format!("`{s}` is not a rate: use e.g. `200/s` or `max`"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)
        .ok_or_else(|| format!("`{s}` is not a duration: use e.g. `10s`, `2m`, `500ms`"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (ms, s, m, h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// The resolved target: addresses, trust, devices.
struct Resolved {
    gateway: SocketAddr,
    server_name: String,
    server_ca_der: Vec<u8>,
    devices: Vec<sim_devices::pki::DeviceIdentity>,
    api: Option<sim_devices::api::Api>,
    lorawan: Option<SocketAddr>,
}

fn resolve(t: &TargetArgs) -> Result<Resolved> {
    let gateway = t
        .gateway
        .to_socket_addrs()
        .with_context(|| format!("--gateway {}: not a HOST:PORT", t.gateway))?
        .next()
        .ok_or_else(|| anyhow!("--gateway {}: no address", t.gateway))?;
    let host = t.gateway.rsplit_once(':').map_or(t.gateway.as_str(), |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let server_ca = match &t.server_ca {
        Some(p) => p.clone(),
        None => {
            let default = PathBuf::from("fleetward-data/tls/server-ca.pem");
            if !default.exists() {
                bail!(
                    "pass --server-ca PEM: the CA of the gateway's server certificate (fleetward writes it to DATA_DIR/tls/server-ca.pem)"
                );
            }
            default
        }
    };
    let pem = std::fs::read(&server_ca).with_context(|| format!("--server-ca {}", server_ca.display()))?;
    let server_ca_der = verifier::x509::certificates_from_pem_or_der(&pem)
        .map_err(|e| anyhow!("--server-ca {}: {e}", server_ca.display()))?
        .first()
        .map(|c| c.to_vec())
        .ok_or_else(|| anyhow!("--server-ca {}: no certificate", server_ca.display()))?;
    let devices = sim_devices::pki_dir::load(&t.pki).with_context(|| {
        format!(
            "--pki {}: make one with `sim-devices pki init --out {}`",
            t.pki.display(),
            t.pki.display()
        )
    })?;
    let api = match (&t.api, &t.token) {
        (Some(url), Some(token)) => {
            let ca = url.starts_with("https://").then_some(server_ca_der.as_slice());
            Some(sim_devices::api::Api::with_ca(url, token, ca)?)
        }
        (Some(_), None) => bail!("--api needs --token (or FLEETWARD_TOKEN): `fleetward token create --role operator`"),
        _ => None,
    };
    let lorawan = match &t.lorawan {
        Some(a) => Some(
            a.to_socket_addrs()
                .with_context(|| format!("--lorawan {a}: not a HOST:PORT"))?
                .next()
                .ok_or_else(|| anyhow!("--lorawan {a}: no address"))?,
        ),
        None => None,
    };
    Ok(Resolved {
        gateway,
        server_name: t.server_name.clone().unwrap_or_else(|| host.to_owned()),
        server_ca_der,
        devices,
        api,
        lorawan,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = match cli.command {
        Command::Pki { command } => pki(command).map(|()| ExitCode::SUCCESS),
        Command::Run(args) => runtime().and_then(|rt| rt.block_on(run(*args))),
        Command::Attack(args) => runtime().and_then(|rt| rt.block_on(attack_cmd(args))),
        Command::Firmware => {
            let fw = Firmware::demo();
            writeln!(
                std::io::stdout(),
                "fleetward firmware add --name {} --version {} --digest {} --signer-id {}",
                fw.name,
                fw.version,
                fw.digest_hex(),
                fw.signer_id_hex()
            )
            .map(|()| ExitCode::SUCCESS)
            .map_err(Into::into)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "sim-devices: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

async fn run(a: RunArgs) -> Result<ExitCode> {
    let r = resolve(&a.target)?;
    let mut identities = r.devices;
    let consumer = if a.consume {
        Some(match &a.target.token {
            Some(t) => Consumer::Token(t.clone()),
            None => Consumer::Identity(
                identities
                    .pop()
                    .ok_or_else(|| anyhow!("--consume needs a device of the PKI (or --token)"))?,
            ),
        })
    } else {
        None
    };
    if let Some(n) = a.devices {
        if n > identities.len() {
            bail!(
                "--devices {n}: the PKI directory has {} device identities{}; make more with `sim-devices pki init --out NEWDIR --devices {n}`",
                identities.len(),
                if consumer.is_some() {
                    " besides the consumer's"
                } else {
                    ""
                }
            );
        }
        identities.truncate(n);
    }
    let lpwan = if a.lorawan_devices + a.sigfox_devices > 0 {
        let (Some(url), Some(token)) = (&a.target.api, &a.target.token) else {
            bail!("LoRaWAN and Sigfox devices are provisioned through the API: pass --api URL and --token");
        };
        if a.lorawan_devices > 0 && r.lorawan.is_none() {
            bail!("LoRaWAN devices need the packet-forwarder endpoint: pass --lorawan HOST:PORT (default port 1700)");
        }
        Some(LpwanOptions {
            api: url.clone(),
            token: token.clone(),
            lorawan_udp: r.lorawan,
            lorawan_devices: a.lorawan_devices,
            sigfox_devices: a.sigfox_devices,
            interval: a.lpwan_interval,
        })
    } else {
        None
    };
    let opts = RunOptions {
        gateway: r.gateway,
        server_name: r.server_name,
        server_ca_der: r.server_ca_der,
        identities,
        mode: match a.mode {
            ModeArg::Telemetry => Mode::Telemetry,
            ModeArg::Handshakes => Mode::Handshakes,
            ModeArg::Idle => Mode::Idle,
        },
        profile: match a.profile {
            ProfileArg::MbedtlsTls12 => ProfileChoice::MbedtlsTls12,
            ProfileArg::Tls13 => ProfileChoice::Tls13,
            ProfileArg::Mixed => ProfileChoice::Mixed,
        },
        rate: a.rate,
        duration: a.duration,
        qos: a.qos,
        window: a.window,
        payload_bytes: a.payload_bytes,
        connect_rate: (a.connect_rate > 0.0).then_some(a.connect_rate),
        attest: a.attest,
        firmware: Firmware::demo(),
        binds: a.bind,
        consumer,
        gateway_pid: a.gateway_pid,
        keep_alive_secs: a.keep_alive,
        lpwan,
    };
    let devices = opts.identities.len();
    let duration = opts.duration;
    let live = Arc::new(Live::default());
    let progress = tokio::spawn(show_progress(live.clone(), duration, devices));
    let report = sim_devices::run::run(opts, live.clone()).await;
    progress.abort();
    let _ = progress.await;
    let mut out = std::io::stdout().lock();
    if a.target.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write!(out, "{}", report.to_text())?;
    }
    let mut problems = Vec::new();
    if report.connects_ok == 0 && devices > 0 {
        problems.push("no device connected".to_owned());
    }
    if a.strict {
        if report.error_total() > 0 {
            problems.push(format!("{} errors", report.error_total()));
        }
        if report.mode != "handshakes" && report.connected_at_end < devices as u64 {
            problems.push(format!(
                "{} of {devices} devices connected at the end",
                report.connected_at_end
            ));
        }
        if let Some(d) = report.messages_delivered
            && report.qos_acked_lost(d)
        {
            problems.push(format!(
                "{} acknowledged messages, {d} delivered to the consumer",
                report.messages_acked
            ));
        }
        for (name, c) in [("LoRaWAN", &report.lorawan), ("Sigfox", &report.sigfox)] {
            if let Some(c) = c
                && (c.ready < c.devices || c.uplinks_accepted < c.uplinks_sent)
            {
                problems.push(format!(
                    "{name}: {} of {} devices ready, {} of {} uplinks accepted",
                    c.ready, c.devices, c.uplinks_accepted, c.uplinks_sent
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        let _ = writeln!(std::io::stderr(), "sim-devices run: {}", problems.join("; "));
        Ok(ExitCode::from(1))
    }
}

/// A progress bar with live rates at a terminal; a plain line every 5 s otherwise (CI logs).
async fn show_progress(live: Arc<Live>, duration: Duration, devices: usize) {
    let started = tokio::time::Instant::now();
    let tty = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::new(duration.as_millis() as u64);
    if tty {
        bar.set_style(
            indicatif::ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let (mut last_msgs, mut last_conn, mut last_at) = (0u64, 0u64, started);
    let mut last_line = started;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = tokio::time::Instant::now();
        let dt = now.duration_since(last_at).as_secs_f64().max(1e-3);
        let msgs = live
            .acked
            .load(Ordering::Relaxed)
            .max(live.sent.load(Ordering::Relaxed));
        let conns = live.connects_ok.load(Ordering::Relaxed);
        let lpwan = live.lpwan_uplinks.load(Ordering::Relaxed);
        let msg = format!(
            "{}/{devices} connected, {:.0} connects/s, {:.0} msg/s, {} errors{}",
            live.connected.load(Ordering::Relaxed),
            (conns - last_conn) as f64 / dt,
            (msgs - last_msgs) as f64 / dt,
            live.errors.load(Ordering::Relaxed),
            if lpwan > 0 {
                format!(", {lpwan} LoRaWAN/Sigfox uplinks")
            } else {
                String::new()
            }
        );
        (last_msgs, last_conn, last_at) = (msgs, conns, now);
        let elapsed = now.duration_since(started);
        if tty {
            bar.set_position(elapsed.as_millis().min(duration.as_millis()) as u64);
            bar.set_message(msg);
        } else if now.duration_since(last_line) >= Duration::from_secs(5) {
            last_line = now;
            let _ = writeln!(std::io::stderr(), "[{:>5.1}s] {msg}", elapsed.as_secs_f64());
        }
    }
}

async fn attack_cmd(a: AttackArgs) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    if a.list {
        for s in attack::SCENARIOS {
            writeln!(out, "{:<24} {}\n{:<24} must: {}", s.name, s.attempt, "", s.expect)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let scenarios: Vec<&'static attack::Scenario> = if a.scenario == "all" {
        attack::SCENARIOS.iter().collect()
    } else {
        vec![attack::scenario(&a.scenario).ok_or_else(|| {
            anyhow!(
                "--scenario {}: no such scenario; one of: all, {}",
                a.scenario,
                attack::SCENARIOS.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
            )
        })?]
    };
    let r = resolve(&a.target)?;
    let issuer = sim_devices::pki_dir::load_issuer(&a.target.pki)?.map(Arc::new);
    let target = AttackTarget {
        gateway: r.gateway,
        server_name: r.server_name,
        server_ca_der: r.server_ca_der,
        devices: r.devices,
        issuer,
        api: r.api,
        lorawan_udp: r.lorawan,
        firmware: Firmware::demo(),
    };
    let outcomes = attack::run(&target, &scenarios).await;
    let failed = outcomes.iter().filter(|o| o.verdict == Verdict::NotStopped).count();
    if a.target.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "outcomes": outcomes,
                "stopped": outcomes.iter().filter(|o| o.verdict == Verdict::Stopped).count(),
                "not_stopped": failed,
                "skipped": outcomes.iter().filter(|o| o.verdict == Verdict::Skipped).count(),
            }))?
        )?;
    } else {
        write!(out, "{}", attack::to_text(&outcomes))?;
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn pki(command: PkiCommand) -> Result<()> {
    let PkiCommand::Init {
        out,
        devices,
        intermediate,
        profile,
        ca_name,
        valid_days,
    } = command;
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
            "  sim-devices run --gateway 127.0.0.1:8883 --pki {d} --server-ca fleetward-data/tls/server-ca.pem --duration 10s"
        )?;
        writeln!(
            stdout,
            "  mosquitto_pub -h localhost -p 8883 --cafile fleetward-data/tls/server-ca.pem \\\n      --cert {d}/devices/{id}.pem --key {d}/devices/{id}.key -i {id} -t devices/{id}/telemetry -m hello -q 1",
            id = first.id
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_durations() {
        assert_eq!(parse_rate("200/s"), Ok(Rate::PerSecond(200.0)));
        assert_eq!(parse_rate("12.5"), Ok(Rate::PerSecond(12.5)));
        assert_eq!(parse_rate("MAX"), Ok(Rate::Max));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("-1/s").is_err());
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("7 parsecs").is_err());
        assert!(parse_duration("ten").is_err());
    }
}
