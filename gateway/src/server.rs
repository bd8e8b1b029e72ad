//! `fleetward serve`: opens the registry, loads the trust store, starts the telemetry pipeline,
//! the MQTT/TLS listener and the HTTP server, and keeps the trust store current. Everything is
//! a library call so tests run the real server on port 0.

use crate::config::Config;
use crate::eventlog::EventSink;
use crate::ingest::{Ingest, IngestSettings};
use crate::listener::{self, ListenerSettings};
use crate::mqtt::codec::DisconnectReason;
use crate::mqtt::hub::Hub;
use crate::mqtt::{Ctx, SessionSettings};
use crate::stats::Stats;
use crate::tls::client_auth::DeviceCertVerifier;
use crate::tls::{TlsSettings, server_cert};
use crate::trust::TrustState;
use crate::{clock, http};
use anyhow::{Context, Result};
use registry::{Keyring, NewCa, Registry, RegistryError};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use verifier::Timestamp;
use verifier::challenge::DigestMode;
use verifier::x509::IdentitySource;

/// A running server.
#[derive(Debug)]
pub struct Running {
    /// This node's name (among gateways sharing a database and NATS).
    pub node: String,
    pub mqtt_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The LoRaWAN packet-forwarder (Semtech UDP) listener.
    pub lorawan_udp_addr: SocketAddr,
    pub data_dir: PathBuf,
    /// The CA devices must trust to verify the server (PEM file).
    pub server_ca: Option<PathBuf>,
    /// On the first start against a database: an admin API token, to show the operator once.
    pub initial_admin_token: Option<zeroize::Zeroizing<String>>,
    pub registry: Registry,
    pub stats: Arc<Stats>,
    pub hub: Arc<Hub>,
    pub trust: Arc<TrustState>,
    pub events: EventSink,
    sessions: Arc<crate::dashboard::Sessions>,
    stream_slots: Arc<tokio::sync::Semaphore>,
    pub attestor: Arc<crate::attestation::Attestor>,
    join_server: Arc<crate::lorawan::backend::JoinServerConfig>,
    pub lorawan_sessions: Arc<crate::lorawan::uplink::Sessions>,
    /// Sigfox callback settings (the secret file's path is shown to the operator).
    pub sigfox: Arc<crate::sigfox::CallbackSettings>,
    command_ttl_secs: u64,
    /// How long shutdown spreads the ending of MQTT sessions over.
    drain: Duration,
    shutdown: watch::Sender<bool>,
    ctx: Option<Arc<Ctx>>,
    listener: JoinHandle<()>,
    ingest: JoinHandle<()>,
    event_writer: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    /// Runs the writers; stops when this is dropped, after everything above.
    storage_thread: crate::storage::StorageThread,
}

/// Opens the registry a configuration names (creating the data directory and a KEK there if
/// none is configured).
pub async fn open_registry(config: &Config) -> Result<Registry> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let keyring = match &config.kek_file {
        Some(path) => crate::cli::KekArgs {
            kek_file: Some(path.clone()),
            kek: None,
        }
        .keyring()?
        .context("KEK file holds no key")?,
        None => generated_keyring(&config.data_dir)?,
    };
    let url = match &config.database_url {
        Some(url) => url.clone(),
        None => Registry::sqlite_url(&config.data_dir),
    };
    let pool = registry::PoolSize {
        postgres_max_connections: config.database_max_connections,
    };
    Registry::open_with(&url, keyring, pool).await.map_err(|e| match e {
        RegistryError::Unavailable { .. } => {
            anyhow::anyhow!(
                "{e}\nhint: is the database running and the URL right? ({})",
                redact(&url)
            )
        }
        other => anyhow::Error::new(other).context("cannot open the fleet registry"),
    })
}

/// The configured node name, or the host name with a random suffix (two replicas of one
/// image on one host still differ).
fn node_name(config: &Config) -> String {
    if let Some(n) = &config.node_name {
        return n.clone();
    }
    let mut b = [0u8; 3];
    let _ = aws_lc_rs::rand::fill(&mut b);
    let host = server_cert::host_name()
        .map(|h| h.replace('.', "-"))
        .unwrap_or_else(|| "fleetward".into());
    format!("{host}-{}", hex::encode(b))
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_owned(),
    }
}

/// A KEK kept in the data directory (owner-only), generated on first start.
fn generated_keyring(dir: &Path) -> Result<Keyring> {
    let path = dir.join("kek");
    if !path.exists() {
        let mut key = [0u8; 32];
        aws_lc_rs::rand::fill(&mut key).map_err(|_| anyhow::anyhow!("no randomness for a KEK"))?;
        let line = format!("local-1 {}\n", hex::encode(key));
        crate::secret_file::write(&path, line.as_bytes(), crate::secret_file::Existing::Refuse)?;
    }
    crate::cli::KekArgs {
        kek_file: Some(path),
        kek: None,
    }
    .keyring()?
    .context("generated KEK file is empty")
}

/// Registers each `--trust-ca` certificate that is not registered yet.
async fn register_trusted_cas(registry: &Registry, paths: &[PathBuf]) -> Result<()> {
    for path in paths {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read --trust-ca {}", path.display()))?;
        let certs = verifier::x509::certificates_from_pem_or_der(&bytes)
            .with_context(|| format!("--trust-ca {} is not a PEM or DER certificate", path.display()))?;
        for der in certs {
            let now = Timestamp::from_unix(clock::now_ms() / 1000);
            verifier::x509::check_ca_certificate(&der, now)
                .with_context(|| format!("--trust-ca {} cannot be a provisioning CA", path.display()))?;
            let ca = NewCa {
                cert_der: &der,
                identity_source: IdentitySource::CommonName,
                identity_pattern: None,
                digest_mode: DigestMode::Direct,
                auto_activate: true,
                registered_by: "serve --trust-ca",
            };
            match registry.insert_ca(&ca, clock::now_ms()).await {
                Ok(record) => tracing::info!(ca = %record.subject, id = %record.id, "registered provisioning CA"),
                Err(RegistryError::Conflict { .. }) => {}
                Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot register {}", path.display()))),
            }
        }
    }
    Ok(())
}

/// Starts everything; returns once the listeners are bound.
pub async fn start(config: Config) -> Result<Running> {
    if let Err(problems) = config.validate() {
        anyhow::bail!("invalid configuration:\n  - {}", problems.join("\n  - "));
    }
    let registry = open_registry(&config).await?;
    register_trusted_cas(&registry, &config.trust_ca).await?;
    let initial_admin_token = registry
        .bootstrap_admin_token(clock::now_ms())
        .await
        .context("cannot create the first admin token")?
        .map(|t| t.secret);

    let stats = Arc::new(Stats::default());
    let trust = Arc::new(TrustState::default());
    trust.reload(&registry).await.context("cannot load the trust store")?;
    let hub = Arc::new(Hub::new(
        stats.clone(),
        Duration::from_secs(config.mqtt.clone_window_secs),
    ));
    let storage_thread = crate::storage::StorageThread::start().context("cannot start the storage thread")?;
    let storage = storage_thread.spawner();
    let (events, event_writer) = EventSink::start(registry.clone(), stats.clone(), &storage);
    let (ingest, ingest_task) = Ingest::start(
        registry.clone(),
        hub.clone(),
        stats.clone(),
        IngestSettings {
            queue: config.telemetry.ingest_queue,
            max_batch: config.telemetry.batch_size,
        },
        &storage,
    );
    // SQLite's per-device telemetry index, kept close behind the writers in sorted batches (its
    // own transactions, yielding to registrations like the ingest writer's); it stops when the
    // registry closes, or with the storage thread.
    drop(storage.spawn(registry.clone().keep_telemetry_indexed()));

    // The server's certificate.
    let (chain, key, server_ca) = match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => {
            let (chain, key) = server_cert::load_pem(cert, key)?;
            (chain, key, None)
        }
        _ => {
            let paths = server_cert::ServerIdentityPaths::under(&config.data_dir);
            let names = server_cert::default_names(&config.tls.server_names);
            let (chain, key) = server_cert::ensure_generated(&paths, &names)?;
            (chain, key, Some(paths.ca_cert))
        }
    };
    let http_tls = if config.http.tls {
        Some(crate::tls::http_server_config(chain.clone(), key.clone_key())?)
    } else {
        None
    };
    let verifier = Arc::new(DeviceCertVerifier::new(trust.clone(), stats.clone(), events.clone()));
    let tls = crate::tls::server_config(
        &TlsSettings {
            max_fragment_size: config.tls.max_fragment_size,
            tls12: config.tls.tls12,
        },
        verifier.clone(),
        chain,
        key,
    )?;

    let mqtt_listener = tokio::net::TcpListener::bind(&config.mqtt.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen for MQTT on {} (in use? try --mqtt-listen)",
                config.mqtt.listen
            )
        })?;
    let http_listener = tokio::net::TcpListener::bind(&config.http.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen for HTTP on {} (in use? try --http-listen)",
                config.http.listen
            )
        })?;
    let udp_socket = crate::lorawan::udp::bind(&config.lorawan.udp_listen).with_context(|| {
        format!(
            "cannot listen for LoRaWAN packet forwarders on UDP {} (in use? try --lorawan-udp-listen)",
            config.lorawan.udp_listen
        )
    })?;
    let mqtt_addr = mqtt_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let lorawan_udp_addr = udp_socket.local_addr()?;

    let attestor = Arc::new(crate::attestation::Attestor::new(
        registry.clone(),
        hub.clone(),
        stats.clone(),
        crate::attestation::AttestationSettings {
            challenge_lifetime: Duration::from_secs(config.attestation.challenge_lifetime_secs),
            interval: (config.attestation.interval_secs > 0)
                .then(|| Duration::from_secs(config.attestation.interval_secs)),
            sweep_interval: Duration::from_secs(config.attestation.sweep_interval_secs),
        },
    ));
    let ctx = Arc::new(Ctx {
        attestor: attestor.clone(),
        registry: registry.clone(),
        hub: hub.clone(),
        ingest,
        storage,
        events: events.clone(),
        stats: stats.clone(),
        trust: trust.clone(),
        settings: SessionSettings {
            max_packet: config.mqtt.max_packet_size,
            max_inflight: config.mqtt.max_inflight,
            write_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(config.mqtt.connect_timeout_secs),
            registration_timeout: Duration::from_secs(config.mqtt.registration_timeout_secs),
            command_ttl: Duration::from_secs(config.mqtt.command_ttl_secs),
            clone_policy: config.mqtt.clone_policy,
            backend_queue: config.mqtt.backend_queue,
            cache_max_staleness: Duration::from_secs(config.cache_max_staleness_secs),
        },
    });
    let (shutdown, shutdown_rx) = watch::channel(false);
    // The bus joins the hub before the first device is accepted, so every session is announced.
    let mut background = Vec::new();
    let node = node_name(&config);
    if let Some(url) = &config.nats_url {
        let instance = registry
            .instance_id(|| {
                let mut b = [0u8; 8];
                let _ = aws_lc_rs::rand::fill(&mut b);
                hex::encode(b)
            })
            .await
            .context("cannot read the registry's instance id")?;
        let (bus, tasks) = crate::bus::Bus::start(
            crate::bus::BusSettings {
                url: url.clone(),
                node: node.clone(),
                telemetry: crate::bus::telemetry::RelaySettings {
                    stream: config.nats.telemetry_stream.clone(),
                    buffer: config.nats.telemetry_buffer,
                    max_age: Duration::from_secs(config.nats.telemetry_max_age_secs),
                    max_bytes: config.nats.telemetry_max_bytes,
                    replicas: config.nats.telemetry_replicas,
                    instance,
                    node: node.clone(),
                },
            },
            crate::bus::BusCtx {
                hub: hub.clone(),
                trust: trust.clone(),
                registry: registry.clone(),
                events: events.clone(),
                stats: stats.clone(),
                clone_policy: config.mqtt.clone_policy,
            },
            shutdown_rx.clone(),
        )
        .await?;
        hub.set_bus(bus);
        background.extend(tasks);
        tracing::info!(node = %node, nats = %redact(url), "joined the scale-out bus");
    }
    let listener = tokio::spawn(listener::run(
        mqtt_listener,
        tokio_rustls::TlsAcceptor::from(tls),
        verifier,
        ctx.clone(),
        ListenerSettings {
            handshake_timeout: Duration::from_secs(config.mqtt.handshake_timeout_secs),
            per_ip_rate: config.mqtt.per_ip_connection_rate,
            global_rate: config.mqtt.global_connection_rate,
            max_connections: config.mqtt.max_connections,
        },
        shutdown_rx.clone(),
    ));

    background.push(
        ctx.storage
            .spawn(flush_sightings(registry.clone(), shutdown_rx.clone())),
    );
    // Changes by other processes (CLI, other nodes) reach the trust store within a second, and
    // sessions of devices revoked meanwhile are ended.
    {
        let (trust, registry, hub, mut stop) = (trust.clone(), registry.clone(), hub.clone(), shutdown_rx.clone());
        background.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        match trust.refresh_if_changed(&registry).await {
                            Ok(true) => close_revoked(&trust, &hub),
                            Ok(false) => {}
                            Err(e) => tracing::warn!(error = %e, "trust store refresh failed; keeping the current one"),
                        }
                    }
                    _ = stop.changed() => break,
                }
            }
        }));
    }
    // Is the database reachable? A connection of its own, every second: during an outage new
    // registrations and API calls fail at once (retryable) instead of waiting for the pool.
    {
        let (mut probe, mut stop) = (registry.probe(), shutdown_rx.clone());
        background.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => { probe.check(Duration::from_secs(1)).await; }
                    _ = stop.changed() => break,
                }
            }
        }));
    }
    // Retention.
    {
        let (registry, mut stop) = (registry.clone(), shutdown_rx.clone());
        let max_age_ms = i64::from(config.telemetry.retention_days) * 86_400_000;
        let keep = config.telemetry.max_messages_per_device;
        background.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(600));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let now = clock::now_ms();
                        match registry.prune_telemetry(max_age_ms, keep, now).await {
                            Ok(n) if n > 0 => tracing::info!(deleted = n, "telemetry retention"),
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "telemetry retention failed"),
                        }
                        match registry.prune_lorawan_uplinks(max_age_ms, keep, now).await {
                            Ok(n) if n > 0 => tracing::info!(deleted = n, "LoRaWAN uplink retention"),
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "LoRaWAN uplink retention failed"),
                        }
                        let _ = registry.prune_commands(7 * 86_400_000, now).await;
                    }
                    _ = stop.changed() => break,
                }
            }
        }));
    }
    // Attestation freshness: stale verdicts, expired nonces.
    {
        let (attestor, mut stop) = (attestor.clone(), shutdown_rx.clone());
        background.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(attestor.settings.sweep_interval);
            loop {
                tokio::select! {
                    _ = tick.tick() => match attestor.sweep().await {
                        Ok(n) if n > 0 => tracing::info!(devices = n, "attestation verdicts became stale"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "attestation sweep failed"),
                    },
                    _ = stop.changed() => break,
                }
            }
        }));
    }
    let join_server = Arc::new(crate::lorawan::backend::JoinServerConfig {
        settings: crate::lorawan::join::JoinServerSettings {
            net_id: config.lorawan.net_id_bytes()?,
            ..Default::default()
        },
        kek: config.lorawan.kek()?,
    });
    let sigfox = Arc::new(crate::sigfox::CallbackSettings::load(&config)?);
    let lorawan_sessions = Arc::new(crate::lorawan::uplink::Sessions::default());
    {
        // Stored sessions are loaded behind the listener: frames that arrive first are served
        // through the per-address look-up.
        let (sessions, registry) = (lorawan_sessions.clone(), registry.clone());
        background.push(tokio::spawn(async move {
            let started = crate::clock::monotonic();
            match sessions.preload(&registry).await {
                Ok(n) => tracing::info!(sessions = n, took = ?started.elapsed(), "LoRaWAN sessions loaded"),
                Err(e) => tracing::warn!(error = %e, "could not load the LoRaWAN sessions; each is looked up on its first frame"),
            }
        }));
    }
    background.push(tokio::spawn(crate::lorawan::udp::run(
        udp_socket,
        Arc::new(crate::lorawan::udp::UdpCtx {
            registry: registry.clone(),
            events: events.clone(),
            stats: stats.clone(),
            hub: hub.clone(),
            sessions: lorawan_sessions.clone(),
            join: join_server.clone(),
            settings: crate::lorawan::udp::UdpSettings {
                uplink: crate::lorawan::uplink::UplinkSettings {
                    max_fcnt_gap: config.lorawan.max_fcnt_gap,
                    ..Default::default()
                },
                queue: config.lorawan.uplink_queue,
                ..Default::default()
            },
        }),
        shutdown_rx.clone(),
    )));
    let sessions = Arc::new(crate::dashboard::Sessions::default());
    let stream_slots = Arc::new(tokio::sync::Semaphore::new(http::MAX_EVENT_STREAMS));
    background.push(tokio::spawn(http::serve(
        http_listener,
        http::AppState {
            registry: registry.clone(),
            stats: stats.clone(),
            hub: hub.clone(),
            trust: trust.clone(),
            events: events.clone(),
            shutdown: shutdown_rx.clone(),
            sessions: sessions.clone(),
            stream_slots: stream_slots.clone(),
            attestor: attestor.clone(),
            join_server: join_server.clone(),
            lorawan_sessions: lorawan_sessions.clone(),
            sigfox: sigfox.clone(),
            command_ttl_secs: config.mqtt.command_ttl_secs,
        },
        http_tls,
        shutdown_rx,
    )));

    tracing::info!(%mqtt_addr, %http_addr, %lorawan_udp_addr, data_dir = %config.data_dir.display(), node = %node, "fleetward serving");
    Ok(Running {
        node,
        mqtt_addr,
        http_addr,
        lorawan_udp_addr,
        data_dir: config.data_dir.clone(),
        server_ca,
        initial_admin_token,
        registry,
        stats,
        hub,
        trust,
        events,
        sessions,
        stream_slots,
        attestor,
        join_server,
        lorawan_sessions,
        sigfox,
        command_ttl_secs: config.mqtt.command_ttl_secs,
        drain: Duration::from_secs(config.mqtt.drain_secs),
        shutdown,
        ctx: Some(ctx),
        listener,
        ingest: ingest_task,
        event_writer,
        background,
        storage_thread,
    })
}

impl Running {
    /// The HTTP side's state (tests drive the router with it directly).
    pub fn http_state(&self) -> http::AppState {
        http::AppState {
            registry: self.registry.clone(),
            stats: self.stats.clone(),
            hub: self.hub.clone(),
            trust: self.trust.clone(),
            events: self.events.clone(),
            shutdown: self.shutdown.subscribe(),
            sessions: self.sessions.clone(),
            stream_slots: self.stream_slots.clone(),
            attestor: self.attestor.clone(),
            join_server: self.join_server.clone(),
            lorawan_sessions: self.lorawan_sessions.clone(),
            sigfox: self.sigfox.clone(),
            command_ttl_secs: self.command_ttl_secs,
        }
    }

    /// Makes registry changes (a CA registered or revoked, a device revoked) count from the
    /// next handshake, and ends sessions of devices that may no longer connect.
    pub async fn registry_changed(&self) -> Result<()> {
        Ok(apply_trust_change(&self.trust, &self.registry, &self.hub).await?)
    }

    /// Graceful shutdown: stop accepting, DISCONNECT every session, let the pipeline flush
    /// what it holds (every acknowledged message is already stored), then close the registry.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        self.hub.drain(DisconnectReason::ServerShuttingDown, self.drain).await;
        let _ = (&mut self.listener).await;
        // Sessions hold the pipeline's sender through the context; with all of them gone the
        // writer drains and stops.
        drop(self.ctx.take());
        let _ = tokio::time::timeout(Duration::from_secs(15), &mut self.ingest).await;
        drop(self.events);
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.event_writer).await;
        for task in self.background {
            task.abort();
        }
        if let Err(e) = self.registry.flush_sightings().await {
            tracing::warn!(error = %e, "could not record the last connections' bookkeeping");
        }
        self.registry.close().await;
        // Last: the writers that ran there have finished or timed out above.
        drop(self.storage_thread);
    }
}

/// Ends the sessions of devices that are revoked (by themselves or through their CA).
/// Rebuilds the trust snapshot from the registry and ends the sessions of devices that may no
/// longer connect (after a CA or device change made in this process).
pub(crate) async fn apply_trust_change(
    trust: &TrustState,
    registry: &Registry,
    hub: &Hub,
) -> Result<(), RegistryError> {
    trust.reload(registry).await?;
    close_revoked(trust, hub);
    Ok(())
}

/// How often the bookkeeping of reconnections admitted from the registry's directory is written.
const SIGHTINGS_EVERY: Duration = Duration::from_millis(500);

/// Writes reconnections' bookkeeping (last seen, connection count, peer, TLS) in bulk, on the
/// storage thread; a failed write is kept and retried on the next tick.
async fn flush_sightings(registry: Registry, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SIGHTINGS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = registry.flush_sightings().await {
                    tracing::warn!(error = %e, "could not record reconnections' bookkeeping; retrying");
                }
            }
            _ = stop.changed() => break,
        }
    }
}

pub(crate) fn close_revoked(trust: &TrustState, hub: &Hub) {
    for id in &trust.snapshot().revoked_devices {
        hub.signal_device(
            id,
            crate::mqtt::hub::DeviceSignal::Close(DisconnectReason::NotAuthorized),
        );
    }
}

/// Waits for SIGINT or SIGTERM.
pub async fn termination_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
