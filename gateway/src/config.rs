//! `fleetward serve` configuration: serde defaults ← `fleetward.toml` ← `FLEETWARD_*` env ←
//! flags. [`DEFAULT_TOML`] is the commented default file (`fleetward config print`); a test
//! keeps it equal to [`Config::default`].

use crate::mqtt::ClonePolicy;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Data directory: the embedded SQLite database, generated TLS identity, generated KEK.
    pub data_dir: PathBuf,
    /// PostgreSQL or SQLite URL; empty: SQLite in the data directory.
    pub database_url: Option<String>,
    /// Pooled PostgreSQL connections of this node (it opens one more for its health probe).
    pub database_max_connections: u32,
    /// File of key-encryption keys (`ID HEX` lines); empty: one generated in the data directory.
    pub kek_file: Option<PathBuf>,
    /// While the database is unreachable, devices this node already knows keep connecting from
    /// its cache for at most this many seconds after the database last answered (0: never).
    pub cache_max_staleness_secs: u64,
    /// Provisioning CAs (PEM files) registered at start if new: auto-activate, CN identity.
    pub trust_ca: Vec<PathBuf>,
    /// NATS with JetStream (`nats://host:4222`): the scale-out bus. Empty: a single node.
    pub nats_url: Option<String>,
    /// This node's name among the gateways sharing a database and NATS. Empty: the host name
    /// and a random suffix.
    pub node_name: Option<String>,
    pub nats: NatsConfig,
    pub mqtt: MqttConfig,
    pub tls: TlsConfig,
    pub http: HttpConfig,
    pub telemetry: TelemetryConfig,
    pub attestation: AttestationConfig,
    pub lorawan: LorawanConfig,
    pub sigfox: SigfoxConfig,
    pub observability: ObservabilityConfig,
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObservabilityConfig {
    pub log_format: LogFormat,
    /// OTLP/HTTP endpoint (`http://collector:4318`) for traces and metrics. Unset: the standard
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, else nothing is exported.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of what is exported.
    pub service_name: String,
    /// How often metrics are exported over OTLP.
    pub metrics_interval_secs: u64,
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        ObservabilityConfig {
            log_format: LogFormat::Text,
            otlp_endpoint: None,
            service_name: "fleetward".into(),
            metrics_interval_secs: 15,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// JetStream stream holding `fleetward.telemetry.>` (created if missing).
    pub telemetry_stream: String,
    /// Stored messages that may wait for JetStream (NATS away); past it they are counted as
    /// dropped from the bus, with an event naming their stored ids. A telemetry commit holds at
    /// most this many messages (the writer waits for that much room while NATS is up).
    pub telemetry_buffer: usize,
    /// The stream keeps messages this long (0: until telemetry_max_bytes).
    pub telemetry_max_age_secs: u64,
    /// The stream's size limit in bytes (-1: none).
    pub telemetry_max_bytes: i64,
    /// Stream replicas: 1 on one NATS server, 3 on a NATS cluster.
    pub telemetry_replicas: usize,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            telemetry_stream: "FLEETWARD_TELEMETRY".into(),
            telemetry_buffer: 100_000,
            telemetry_max_age_secs: 7 * 86_400,
            telemetry_max_bytes: -1,
            telemetry_replicas: 1,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    pub listen: String,
    pub max_packet_size: usize,
    pub max_inflight: usize,
    pub handshake_timeout_secs: u64,
    pub connect_timeout_secs: u64,
    /// A first connection whose just-in-time registration takes longer is refused with CONNACK 3.
    pub registration_timeout_secs: u64,
    pub per_ip_connection_rate: f64,
    pub global_connection_rate: f64,
    pub max_connections: usize,
    pub clone_policy: ClonePolicy,
    pub clone_window_secs: u64,
    pub command_ttl_secs: u64,
    pub backend_queue: usize,
    /// At shutdown, MQTT sessions are ended spread over this many seconds (0: at once).
    pub drain_secs: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain (PEM); empty: generated under a local server CA.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Extra names for the generated certificate (besides localhost, loopback, host name).
    pub server_names: Vec<String>,
    /// Largest TLS record sent, for devices with small receive buffers.
    pub max_fragment_size: Option<usize>,
    pub tls12: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: String,
    /// Serve HTTPS (the server certificate of `[tls]`) instead of plain HTTP: for Sigfox
    /// callbacks and operators reaching fleetward without a TLS-terminating proxy.
    pub tls: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    pub retention_days: u32,
    pub max_messages_per_device: u32,
    pub ingest_queue: usize,
    pub batch_size: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttestationConfig {
    /// Seconds a challenge nonce may be answered in.
    pub challenge_lifetime_secs: u64,
    /// Connected devices (subscribed to their challenge topic) are challenged again this often;
    /// 0: only on connect and on demand.
    pub interval_secs: u64,
    /// How often verdicts are checked for staleness and expired nonces deleted.
    pub sweep_interval_secs: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LorawanConfig {
    /// Semtech UDP packet-forwarder listener (what LoRaWAN gateways send uplinks to).
    pub udp_listen: String,
    /// Largest forward jump of a device's uplink frame counter accepted.
    pub max_fcnt_gap: u32,
    /// PUSH_DATA datagrams whose verified frames may wait for the uplink writer (a burst the
    /// store absorbs); past it, frames are dropped unverified and counted.
    pub uplink_queue: usize,
    /// The network's NetID (6 hex digits); joined devices get DevAddrs in its block.
    pub net_id: String,
    /// Label of the key-encryption key for Backend Interfaces KeyEnvelopes.
    pub join_kek_label: Option<String>,
    /// File holding that KEK in hex (16 or 32 bytes). Unset: session keys travel in clear
    /// (over the API's TLS).
    pub join_kek_file: Option<PathBuf>,
}

impl Default for LorawanConfig {
    fn default() -> Self {
        LorawanConfig {
            udp_listen: "127.0.0.1:1700".into(),
            max_fcnt_gap: 16_384,
            uplink_queue: 8_192,
            net_id: String::new(),
            join_kek_label: None,
            join_kek_file: None,
        }
    }
}

/// What a callback for a device not yet known does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownSigfoxDevices {
    /// Register it (without a NAK): the Sigfox backend only calls back for devices of the
    /// operator's device types, and the shared secret proves the backend called.
    Register,
    /// Refuse the callback (404); devices are provisioned through the API first.
    Refuse,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SigfoxConfig {
    /// Header the Sigfox backend's callbacks carry the shared secret in.
    pub callback_header: String,
    /// File of accepted callback secrets, one per line (two during a rotation). Unset: one is
    /// generated in data_dir/sigfox-callback.secret.
    pub callback_secret_file: Option<PathBuf>,
    /// Source addresses allowed to call back, as CIDR blocks (`185.110.97.0/24`) or addresses.
    /// Empty: any source with the secret.
    pub callback_allow: Vec<String>,
    /// A callback for a device not yet known: `register` it or `refuse` it.
    pub unknown_devices: UnknownSigfoxDevices,
    /// Furthest ahead of the last sequence number a message is taken to be (1..=4095); further,
    /// or behind, is a replay.
    pub max_seq_gap: u16,
}

impl Default for SigfoxConfig {
    fn default() -> Self {
        SigfoxConfig {
            callback_header: "x-callback-secret".into(),
            callback_secret_file: None,
            callback_allow: Vec::new(),
            unknown_devices: UnknownSigfoxDevices::Register,
            max_seq_gap: verifier::sigfox::DEFAULT_MAX_SEQ_GAP,
        }
    }
}

impl LorawanConfig {
    pub fn net_id_bytes(&self) -> anyhow::Result<[u8; 3]> {
        let s = if self.net_id.is_empty() {
            "000000"
        } else {
            self.net_id.as_str()
        };
        let b = hex::decode(s).map_err(|_| anyhow::anyhow!("lorawan.net_id `{s}` is not 6 hex digits"))?;
        b.try_into()
            .map_err(|_| anyhow::anyhow!("lorawan.net_id `{s}` is not 6 hex digits"))
    }

    pub fn kek(&self) -> anyhow::Result<Option<(String, zeroize::Zeroizing<Vec<u8>>)>> {
        let Some(path) = &self.join_kek_file else {
            return Ok(None);
        };
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read lorawan.join_kek_file {}: {e}", path.display()))?,
        );
        let key = zeroize::Zeroizing::new(
            hex::decode(text.trim())
                .map_err(|_| anyhow::anyhow!("lorawan.join_kek_file {} does not hold a hex key", path.display()))?,
        );
        if key.len() != 16 && key.len() != 32 {
            anyhow::bail!("lorawan.join_kek_file {}: a KEK is 16 or 32 bytes", path.display());
        }
        Ok(Some((self.join_kek_label.clone().unwrap_or_default(), key)))
    }
}

impl Default for AttestationConfig {
    fn default() -> Self {
        AttestationConfig {
            challenge_lifetime_secs: 60,
            interval_secs: 86_400,
            sweep_interval_secs: 60,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./fleetward-data"),
            database_url: None,
            database_max_connections: 16,
            kek_file: None,
            cache_max_staleness_secs: 300,
            trust_ca: Vec::new(),
            nats_url: None,
            node_name: None,
            nats: NatsConfig::default(),
            mqtt: MqttConfig::default(),
            tls: TlsConfig::default(),
            http: HttpConfig::default(),
            telemetry: TelemetryConfig::default(),
            attestation: AttestationConfig::default(),
            lorawan: LorawanConfig::default(),
            sigfox: SigfoxConfig::default(),
            observability: ObservabilityConfig::default(),
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: "127.0.0.1:8883".into(),
            max_packet_size: 256 * 1024,
            max_inflight: 64,
            handshake_timeout_secs: 10,
            connect_timeout_secs: 10,
            registration_timeout_secs: 5,
            per_ip_connection_rate: 1000.0,
            global_connection_rate: 10000.0,
            max_connections: 100_000,
            clone_policy: ClonePolicy::Allow,
            clone_window_secs: 60,
            command_ttl_secs: 86_400,
            backend_queue: 4096,
            drain_secs: 0,
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: None,
            key: None,
            server_names: Vec::new(),
            max_fragment_size: None,
            tls12: true,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".into(),
            tls: false,
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            retention_days: 30,
            max_messages_per_device: 100_000,
            ingest_queue: 8192,
            batch_size: 500,
        }
    }
}

/// The commented default configuration.
pub const DEFAULT_TOML: &str = r#"# fleetward.toml — every setting, with its default.
# Precedence: these defaults < this file < FLEETWARD_* environment < command-line flags.

# Data directory: embedded SQLite database, generated TLS identity (tls/), generated KEK.
data_dir = "./fleetward-data"
# PostgreSQL (postgres://user@host/db) or SQLite (sqlite://path) URL. Unset: SQLite in data_dir.
# database_url = "postgres://postgres@127.0.0.1:5432/fleetward"
# PostgreSQL connections this node pools (4 at least), plus one for its health probe. Keep
# nodes × (this + 1) under the server's max_connections (PostgreSQL's default: 100).
database_max_connections = 16
# Key-encryption keys for sealed LPWAN keys (`ID HEX` lines). Unset: generated in data_dir.
# kek_file = "/etc/fleetward/kek"
# Database unreachable: devices this node already knows (same certificate, known status) keep
# connecting from its cache for at most this many seconds after the database last answered;
# then, and for new devices at once, CONNACK "server unavailable" (retryable). 0: never.
cache_max_staleness_secs = 300
# Provisioning CAs registered at start if new (auto-activate, identity from the subject CN).
trust_ca = []
# NATS with JetStream: set it to run several gateways as one (with a shared PostgreSQL).
# Telemetry goes to JetStream (fleetward.telemetry.{device}); commands, registry changes and
# device presence cross the nodes. Unset: a single node.
# nats_url = "nats://127.0.0.1:4222"
# This node's name among the gateways. Unset: the host name and a random suffix.
# node_name = "gw-1"

[nats]
# The JetStream stream for telemetry (created if missing), with its limits.
telemetry_stream = "FLEETWARD_TELEMETRY"
# Stored messages that may wait in memory for JetStream; past it the relay publishes from the
# store instead (bus_telemetry_deferred, and an event names their stored ids): slower, nothing
# lost. A telemetry commit holds at most this many messages.
telemetry_buffer = 100000
telemetry_max_age_secs = 604800
telemetry_max_bytes = -1
# 1 on one NATS server; 3 on a NATS cluster.
telemetry_replicas = 1

[mqtt]
# MQTT over mutual TLS.
listen = "127.0.0.1:8883"
# Largest MQTT packet accepted, bytes.
max_packet_size = 262144
# QoS 1 messages a client may have unacknowledged, each direction.
max_inflight = 64
# A TLS handshake must finish within this; CONNECT must follow within connect_timeout_secs.
handshake_timeout_secs = 10
connect_timeout_secs = 10
# A first connection whose just-in-time registration takes longer than this (a busy or locked
# database) is refused with CONNACK 3 "server unavailable": the device backs off and retries
# instead of waiting past its own CONNACK timeout. The registration still completes.
registration_timeout_secs = 5
# New connections per second from one IP address, and in total; each also the burst allowed.
# Excess connections are closed at accept, before any TLS work. The per-IP default leaves
# room for a fleet reconnecting through one NAT, or a load test from one host. Lower it
# where devices have their own addresses.
per_ip_connection_rate = 1000.0
global_connection_rate = 10000.0
# Connections open at once.
max_connections = 100000
# A device certificate seen from two addresses at once (or within clone_window_secs):
# "allow" (newer connection takes over; event + audit finding), "refuse", or "quarantine".
clone_policy = "allow"
clone_window_secs = 60
# How long a command waits for an offline device.
command_ttl_secs = 86400
# Messages queued per backend subscriber before it catches up from the store instead.
backend_queue = 4096
# At shutdown (SIGTERM), end device sessions spread over this many seconds, so that they
# reconnect to the other replicas without a storm (0: all at once). Set it below the
# orchestrator's grace period (Kubernetes: terminationGracePeriodSeconds).
drain_secs = 0

[tls]
# Server certificate chain and key (PEM). Unset: generated under a local server CA whose
# certificate devices must trust: data_dir/tls/server-ca.pem.
# cert = "/etc/fleetward/server.pem"
# key = "/etc/fleetward/server.key"
# Extra DNS names or IPs for the generated certificate (localhost, 127.0.0.1, ::1 and the
# host name are always included).
server_names = []
# Largest TLS record sent to devices (bytes), for small receive buffers (mbedTLS). Unset: 16384.
# max_fragment_size = 4096
# Accept TLS 1.2 besides TLS 1.3 (STM32 + mbedTLS devices typically need it).
tls12 = true

[http]
# Operator API, dashboard, Sigfox callbacks, LoRaWAN join server, /metrics, /healthz.
listen = "127.0.0.1:8080"
# HTTPS with the server certificate of [tls] (clients trust data_dir/tls/server-ca.pem when it is
# generated). Off: plain HTTP, for loopback or behind a TLS-terminating proxy.
tls = false

[telemetry]
# Stored device messages are deleted after this many days, and beyond this many per device.
retention_days = 30
max_messages_per_device = 100000
# Messages waiting for the store (a full queue slows devices down; memory stays bounded).
ingest_queue = 8192
# Most messages per commit.
batch_size = 500

[attestation]
# Devices subscribed to devices/{id}/attestation/challenge get a fresh 32-byte nonce when they
# subscribe, every interval_secs after that (0: never again), and on demand
# (POST /api/v1/devices/{id}/attest). An answer must arrive within challenge_lifetime_secs.
challenge_lifetime_secs = 60
interval_secs = 86400
# Verdicts older than the CA's freshness window become "stale"; expired nonces are deleted.
sweep_interval_secs = 60

[lorawan]
# Semtech UDP packet-forwarder protocol: point gateways' forwarders (server_address,
# serv_port_up, serv_port_down) here. Every datagram is untrusted; the frame MIC decides.
udp_listen = "127.0.0.1:1700"
# Uplink frame counters must increase, by at most this much (LoRaWAN MAX_FCNT_GAP).
max_fcnt_gap = 16384
# Datagrams of verified frames waiting to be stored (a burst absorbed); past it, frames are
# dropped before verification, counted (lorawan_uplinks_overloaded) and reported by an event.
uplink_queue = 8192
# The network's NetID (6 hex digits; empty: 000000); joined devices get DevAddrs in its block.
net_id = ""
# Join server (POST /lorawan/join, LoRaWAN Backend Interfaces): session keys in JoinAns are
# wrapped (RFC 3394) under this KEK; unset: sent in clear (over the API's TLS).
# join_kek_label = "ns-kek-1"
# join_kek_file = "/etc/fleetward/join-kek.hex"

[sigfox]
# Sigfox backend callbacks (POST /sigfox/callback): in the Sigfox backend, add this header to
# the device type's data callback, with a secret from callback_secret_file as its value.
callback_header = "x-callback-secret"
# Accepted secrets, one per line (keep two during a rotation). Unset: one is generated in
# data_dir/sigfox-callback.secret.
# callback_secret_file = "/etc/fleetward/sigfox-callback.secret"
# Source addresses allowed to call back (CIDR blocks or addresses); empty: any, with the secret.
callback_allow = []
# A callback for a device not yet known: "register" it (no NAK; the Sigfox cloud verified the
# message) or "refuse" it (404).
unknown_devices = "register"
# A sequence number must be 1 to max_seq_gap steps after the last one (12-bit, rolling over).
max_seq_gap = 2048

[observability]
# Logs on stderr: "text" or "json" (one object per line). RUST_LOG filters them.
log_format = "text"
# OTLP/HTTP collector for traces (a span per connection, handshake, registration, uplink, API
# request) and metrics. Unset: OTEL_EXPORTER_OTLP_ENDPOINT if set, else nothing is exported.
# otlp_endpoint = "http://127.0.0.1:4318"
service_name = "fleetward"
metrics_interval_secs = 15
"#;

impl Config {
    /// Reads a configuration file (unknown keys are errors, naming the key).
    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Every problem at once (not just the first), for a config error a person can fix in one go.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.mqtt.listen.parse::<std::net::SocketAddr>().is_err() {
            problems.push(format!("mqtt.listen `{}` is not an address:port", self.mqtt.listen));
        }
        if self.lorawan.udp_listen.parse::<std::net::SocketAddr>().is_err() {
            problems.push(format!(
                "lorawan.udp_listen `{}` is not an address:port",
                self.lorawan.udp_listen
            ));
        }
        if self.lorawan.max_fcnt_gap == 0 {
            problems.push("lorawan.max_fcnt_gap must be positive".into());
        }
        if self.lorawan.uplink_queue == 0 {
            problems.push("lorawan.uplink_queue must be positive".into());
        }
        if self.sigfox.callback_header.is_empty()
            || axum::http::HeaderName::from_bytes(self.sigfox.callback_header.as_bytes()).is_err()
        {
            problems.push(format!(
                "sigfox.callback_header `{}` is not an HTTP header name",
                self.sigfox.callback_header
            ));
        }
        for block in &self.sigfox.callback_allow {
            if crate::sigfox::IpBlock::parse(block).is_none() {
                problems.push(format!(
                    "sigfox.callback_allow `{block}` is not an address or CIDR block (10.0.0.0/8, 2001:db8::/32)"
                ));
            }
        }
        if !(1..verifier::sigfox::SEQ_MODULUS).contains(&self.sigfox.max_seq_gap) {
            problems.push("sigfox.max_seq_gap must be 1..=4095".into());
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            problems.push(format!("http.listen `{}` is not an address:port", self.http.listen));
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            problems.push("tls.cert and tls.key must be given together".into());
        }
        if let Some(size) = self.tls.max_fragment_size
            && !(32..=16_384).contains(&size)
        {
            problems.push(format!("tls.max_fragment_size {size} is outside 32..=16384"));
        }
        if self.mqtt.registration_timeout_secs == 0 {
            problems.push("mqtt.registration_timeout_secs must be positive".into());
        }
        if self.database_max_connections < registry::PoolSize::MIN {
            problems.push(format!(
                "database_max_connections must be at least {}",
                registry::PoolSize::MIN
            ));
        }
        if self.mqtt.max_inflight == 0 || self.mqtt.max_inflight > 65_535 {
            problems.push("mqtt.max_inflight must be 1..=65535".into());
        }
        if self.mqtt.max_packet_size < 64 {
            problems.push("mqtt.max_packet_size must be at least 64 bytes".into());
        }
        if self.mqtt.per_ip_connection_rate <= 0.0 || self.mqtt.global_connection_rate <= 0.0 {
            problems.push("connection rates must be positive".into());
        }
        if !(5..=3600).contains(&self.attestation.challenge_lifetime_secs) {
            problems.push("attestation.challenge_lifetime_secs must be 5..=3600".into());
        }
        if self.attestation.sweep_interval_secs == 0 {
            problems.push("attestation.sweep_interval_secs must be positive".into());
        }
        if let Some(url) = &self.nats_url
            && !(url.starts_with("nats://")
                || url.starts_with("tls://")
                || url.starts_with("ws://")
                || url.starts_with("wss://"))
        {
            problems.push(format!(
                "nats_url `{url}` is not a nats://, tls://, ws:// or wss:// URL"
            ));
        }
        if let Some(node) = &self.node_name
            && (node.is_empty()
                || node.len() > 64
                || !node.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            problems.push(format!(
                "node_name `{node}` must be 1-64 letters, digits, `-` or `_` (it is a NATS subject token)"
            ));
        }
        if let Some(e) = &self.observability.otlp_endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            problems.push(format!(
                "observability.otlp_endpoint `{e}` is not an http:// or https:// URL"
            ));
        }
        if self.observability.metrics_interval_secs == 0 {
            problems.push("observability.metrics_interval_secs must be positive".into());
        }
        if self.mqtt.drain_secs > 600 {
            problems.push("mqtt.drain_secs must be at most 600".into());
        }
        if self.nats.telemetry_buffer == 0 {
            problems.push("nats.telemetry_buffer must be positive".into());
        }
        if self.nats.telemetry_stream.is_empty()
            || !self
                .nats
                .telemetry_stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            problems.push(format!(
                "nats.telemetry_stream `{}` must be letters, digits, `-` or `_`",
                self.nats.telemetry_stream
            ));
        }
        if self.telemetry.batch_size == 0 || self.telemetry.ingest_queue == 0 {
            problems.push("telemetry.batch_size and telemetry.ingest_queue must be positive".into());
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_default_is_the_default() {
        let parsed = Config::from_toml(DEFAULT_TOML).expect("default template parses");
        assert_eq!(parsed, Config::default());
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn the_operations_guide_shows_the_whole_default_configuration() {
        let guide = include_str!("../../docs/operations.md");
        assert!(
            guide.contains(&format!("```toml\n{DEFAULT_TOML}```")),
            "docs/operations.md's configuration reference differs from DEFAULT_TOML: copy it again"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_reported() {
        let err = Config::from_toml("[mqtt]\nlisten = \"x\"\nlisen = 1\n").unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
        let mut c = Config::default();
        c.mqtt.listen = "nowhere".into();
        c.tls.cert = Some("a.pem".into());
        c.database_max_connections = 1;
        let problems = c.validate().unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems.iter().any(|p| p.contains("database_max_connections")),
            "{problems:?}"
        );
    }
}
