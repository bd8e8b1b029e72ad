//! `fleetward serve`, `fleetward config print` and `fleetward demo`.

use super::Outcome;
use crate::config::{Config, DEFAULT_TOML};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::io::Write;
use std::path::PathBuf;

/// Flags of `serve` (each overrides the config file and `FLEETWARD_*` environment).
#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// Configuration file (see `fleetward config print`). Default: ./fleetward.toml if present.
    #[arg(long, env = "FLEETWARD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (SQLite database, generated TLS identity and KEK).
    #[arg(long, env = "FLEETWARD_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL or SQLite URL (default: SQLite in the data directory).
    #[arg(long, env = "FLEETWARD_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// PostgreSQL connections this node pools (plus one for its health probe).
    #[arg(long, env = "FLEETWARD_DATABASE_MAX_CONNECTIONS", value_name = "N")]
    pub database_max_connections: Option<u32>,
    /// NATS with JetStream (nats://host:4222): run as one of several gateway nodes.
    #[arg(long, env = "FLEETWARD_NATS_URL", value_name = "URL")]
    pub nats_url: Option<String>,
    /// This node's name among the gateways (default: host name and a random suffix).
    #[arg(long, env = "FLEETWARD_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// Logs on stderr as `text` or `json` lines.
    #[arg(long, env = "FLEETWARD_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<crate::config::LogFormat>,
    /// OTLP/HTTP collector for traces and metrics (`http://collector:4318`).
    #[arg(long, env = "FLEETWARD_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// At shutdown, end MQTT sessions spread over this many seconds (0: at once).
    #[arg(long, env = "FLEETWARD_DRAIN_SECS", value_name = "SECS")]
    pub drain_secs: Option<u64>,
    /// MQTT over mutual TLS listens here.
    #[arg(long, env = "FLEETWARD_MQTT_LISTEN", value_name = "ADDR")]
    pub mqtt_listen: Option<String>,
    /// HTTP (API, dashboard, metrics) listens here.
    #[arg(long, env = "FLEETWARD_HTTP_LISTEN", value_name = "ADDR")]
    pub http_listen: Option<String>,
    /// Serve the HTTP listener over TLS (HTTPS) with the server certificate.
    #[arg(long, env = "FLEETWARD_HTTP_TLS")]
    pub http_tls: bool,
    /// File of accepted Sigfox callback secrets, one per line.
    #[arg(long, env = "FLEETWARD_SIGFOX_CALLBACK_SECRET_FILE", value_name = "FILE")]
    pub sigfox_callback_secret_file: Option<PathBuf>,
    /// LoRaWAN packet forwarders (Semtech UDP) send to this address.
    #[arg(long, env = "FLEETWARD_LORAWAN_UDP_LISTEN", value_name = "ADDR")]
    pub lorawan_udp_listen: Option<String>,
    /// Register this provisioning CA (PEM) at start if new: auto-activate, CN identity. Repeatable.
    #[arg(long, env = "FLEETWARD_TRUST_CA", value_name = "PEM", value_delimiter = ',')]
    pub trust_ca: Vec<PathBuf>,
    /// An extra name (DNS or IP) for the generated server certificate. Repeatable.
    #[arg(long, env = "FLEETWARD_SERVER_NAME", value_name = "NAME", value_delimiter = ',')]
    pub server_name: Vec<String>,
    /// Server certificate chain (PEM) instead of a generated one (with --tls-key).
    #[arg(long, env = "FLEETWARD_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, env = "FLEETWARD_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// Largest TLS record sent (bytes), for devices with small receive buffers.
    #[arg(long, env = "FLEETWARD_MAX_FRAGMENT_SIZE", value_name = "BYTES")]
    pub max_fragment_size: Option<usize>,
    /// KEK file (`ID HEX` lines) for sealed keys (default: generated in the data directory).
    #[arg(long, env = "FLEETWARD_KEK_FILE", value_name = "FILE")]
    pub kek_file: Option<PathBuf>,
}

impl ServeArgs {
    /// The effective configuration: defaults ← file ← env/flags.
    pub fn config(&self) -> Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None if std::path::Path::new("fleetward.toml").exists() => Config::from_file("fleetward.toml".as_ref())?,
            None => Config::default(),
        };
        if let Some(d) = &self.data_dir {
            config.data_dir = d.clone();
        }
        if let Some(u) = &self.database_url {
            config.database_url = Some(u.clone());
        }
        if let Some(n) = self.database_max_connections {
            config.database_max_connections = n;
        }
        if let Some(u) = &self.nats_url {
            config.nats_url = Some(u.clone());
        }
        if let Some(n) = &self.node_name {
            config.node_name = Some(n.clone());
        }
        if let Some(f) = self.log_format {
            config.observability.log_format = f;
        }
        if let Some(e) = &self.otlp_endpoint {
            config.observability.otlp_endpoint = Some(e.clone());
        }
        if let Some(d) = self.drain_secs {
            config.mqtt.drain_secs = d;
        }
        if let Some(a) = &self.mqtt_listen {
            config.mqtt.listen = a.clone();
        }
        if let Some(a) = &self.http_listen {
            config.http.listen = a.clone();
        }
        if let Some(a) = &self.lorawan_udp_listen {
            config.lorawan.udp_listen = a.clone();
        }
        if self.http_tls {
            config.http.tls = true;
        }
        if let Some(f) = &self.sigfox_callback_secret_file {
            config.sigfox.callback_secret_file = Some(f.clone());
        }
        config.trust_ca.extend(self.trust_ca.iter().cloned());
        config.tls.server_names.extend(self.server_name.iter().cloned());
        if let Some(c) = &self.tls_cert {
            config.tls.cert = Some(c.clone());
        }
        if let Some(k) = &self.tls_key {
            config.tls.key = Some(k.clone());
        }
        if let Some(m) = self.max_fragment_size {
            config.tls.max_fragment_size = Some(m);
        }
        if let Some(k) = &self.kek_file {
            config.kek_file = Some(k.clone());
        }
        Ok(config)
    }
}

/// Flags of `health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The server's HTTP address.
    #[arg(long, env = "FLEETWARD_HEALTH_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Probe readiness (`/readyz`: the registry answers) instead of liveness (`/healthz`).
    #[arg(long)]
    pub ready: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3)]
    pub timeout_secs: u64,
}

pub(super) fn health(args: HealthArgs, out: &mut dyn Write) -> Result<Outcome> {
    let path = if args.ready { "readyz" } else { "healthz" };
    let url = format!("{}/{path}", args.url.trim_end_matches('/'));
    // reqwest's rustls is built without a provider: ours (aws-lc-rs) serves https:// URLs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let answer = super::db::runtime()?.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(args.timeout_secs.max(1)))
            .build()?;
        let r = client.get(&url).send().await?;
        Ok::<_, reqwest::Error>((r.status(), r.text().await.unwrap_or_default()))
    });
    match answer {
        Ok((status, body)) if status.is_success() => {
            write!(out, "{url}: {}", body)?;
            Ok(Outcome::Valid)
        }
        Ok((status, body)) => {
            writeln!(out, "{url}: {status} {}", body.trim())?;
            Ok(Outcome::Rejected)
        }
        Err(e) => {
            writeln!(out, "{url}: no answer ({e}); is fleetward serving there?")?;
            Ok(Outcome::Rejected)
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the commented default configuration (save it as fleetward.toml and edit).
    Print,
    /// Check a configuration (file, FLEETWARD_* environment and flags, as `serve` would take
    /// them) and report every problem at once; exit 1 if there is any.
    Check(Box<ServeArgs>),
}

pub(super) fn config(cmd: ConfigCommand, out: &mut dyn Write) -> Result<Outcome> {
    match cmd {
        ConfigCommand::Print => out.write_all(DEFAULT_TOML.as_bytes())?,
        ConfigCommand::Check(args) => {
            let config = match args.config() {
                Ok(c) => c,
                Err(e) => {
                    writeln!(out, "{e:#}")?;
                    return Ok(Outcome::Rejected);
                }
            };
            match config.validate() {
                Ok(()) => writeln!(out, "configuration ok")?,
                Err(problems) => {
                    writeln!(out, "invalid configuration:\n  - {}", problems.join("\n  - "))?;
                    return Ok(Outcome::Rejected);
                }
            }
        }
    }
    Ok(Outcome::Valid)
}

pub(super) fn serve(args: ServeArgs, out: &mut dyn Write) -> Result<Outcome> {
    let config = args.config()?;
    super::db::runtime()?.block_on(async {
        let export = crate::observability::otlp_endpoint(&config.observability).is_some();
        let running = crate::server::start(config).await?;
        if export {
            crate::observability::export_metrics(running.stats.clone(), running.hub.clone(), running.registry.clone());
        }
        writeln!(out, "fleetward serving")?;
        writeln!(out, "  MQTT/TLS  {}", running.mqtt_addr)?;
        writeln!(out, "  HTTP      http://{}", running.http_addr)?;
        writeln!(
            out,
            "  LoRaWAN   udp://{} (Semtech packet forwarder)",
            running.lorawan_udp_addr
        )?;
        if let Some(ca) = &running.server_ca {
            writeln!(out, "  devices trust the server through {}", ca.display())?;
        }
        if running.hub.bus().is_some() {
            writeln!(out, "  node      {} (scale-out bus: NATS JetStream)", running.node)?;
        }
        writeln!(out, "  dashboard http://{}/", running.http_addr)?;
        if let Some(token) = &running.initial_admin_token {
            writeln!(
                out,
                "\nfirst start: an admin API token, shown this once (keep it secret):"
            )?;
            writeln!(out, "  {}", token.as_str())?;
            writeln!(
                out,
                "  more tokens: fleetward token create --role admin|operator|viewer --data-dir DIR\n"
            )?;
        }
        writeln!(out, "  stop with Ctrl-C")?;
        out.flush()?;
        crate::server::termination_signal().await;
        writeln!(out, "shutting down: closing sessions, flushing telemetry")?;
        running.shutdown().await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(Outcome::Valid)
}

/// Flags of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo keeps its data (wiped at start). Default: a fresh temporary directory.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Good devices in the simulated fleet.
    #[arg(long, default_value_t = 6)]
    pub devices: usize,
    /// Telemetry readings each good device sends.
    #[arg(long, default_value_t = 5)]
    pub messages: usize,
    /// Keep serving after the demo (until Ctrl-C), to look around in the dashboard. The default
    /// when the output is a terminal.
    #[arg(long, conflicts_with = "exit")]
    pub stay: bool,
    /// Stop once the demo has run (the default when the output is not a terminal).
    #[arg(long)]
    pub exit: bool,
    /// MQTT listen address (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    pub mqtt_listen: String,
    /// HTTP listen address (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    pub http_listen: String,
    /// LoRaWAN packet-forwarder (UDP) listen address (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    pub lorawan_udp_listen: String,
}

pub(super) fn demo(args: DemoArgs, out: &mut dyn Write) -> Result<Outcome> {
    super::db::runtime()?.block_on(async {
        let (dir, _temp) = match &args.data_dir {
            Some(d) => {
                if d.exists() {
                    std::fs::remove_dir_all(d).with_context(|| format!("cannot clear {}", d.display()))?;
                }
                (d.clone(), None)
            }
            None => {
                let t = tempdir()?;
                (t.0.clone(), Some(t))
            }
        };
        let report = crate::demo::run(
            &crate::demo::DemoOptions {
                data_dir: dir,
                good_devices: args.devices,
                messages: args.messages,
                mqtt_listen: args.mqtt_listen.clone(),
                http_listen: args.http_listen.clone(),
                lorawan_udp_listen: args.lorawan_udp_listen.clone(),
            },
            out,
        )
        .await?;
        let stay = args.stay || (!args.exit && std::io::IsTerminal::is_terminal(&std::io::stdout()));
        if stay {
            writeln!(out, "\nstill serving: open the dashboard above (Ctrl-C to stop)")?;
            out.flush()?;
            crate::server::termination_signal().await;
        }
        report.running.shutdown().await;
        Ok::<_, anyhow::Error>(if report.as_expected {
            Outcome::Valid
        } else {
            Outcome::Rejected
        })
    })
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> Result<TempDir> {
    let mut random = [0u8; 8];
    aws_lc_rs::rand::fill(&mut random).map_err(|_| anyhow::anyhow!("no randomness"))?;
    let dir = std::env::temp_dir().join(format!("fleetward-demo-{}", hex::encode(random)));
    std::fs::create_dir_all(&dir)?;
    Ok(TempDir(dir))
}
