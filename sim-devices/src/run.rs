//! `sim-devices run`: a fleet of simulated devices against a gateway, as a rehearsal or a load
//! test. Each MQTT device opens mutual TLS (a full handshake every time: devices keep no session
//! tickets), sends CONNECT with its id, subscribes to its commands (and attestation topics with
//! `attest`), answers attestation challenges with a signed measurement, publishes telemetry at
//! its share of the fleet's rate, and when its session is lost comes back with jittered
//! exponential back-off. Three modes:
//!
//! - [`Mode::Telemetry`]: the above;
//! - [`Mode::Handshakes`]: connect, CONNECT, DISCONNECT, again, as fast as the server allows
//!   (full mutual-TLS handshakes per second, and the gateway's CPU per handshake);
//! - [`Mode::Idle`]: connect and hold the sessions (keep-alive pings only): memory per connection.
//!
//! LoRaWAN (OTAA, then uplinks through a simulated packet forwarder) and Sigfox devices (raw
//! frames) can join the same run; they are provisioned through the operator API.

use crate::attest::{self, Firmware};
use crate::client::{Client, ClientError, ClientTls, ConnectOptions, Connector, ServerPacket, TlsProfile};
use crate::pki::DeviceIdentity;
use crate::procstat;
use crate::report::{Latency, LpwanCounts, ProcessCost, RunReport};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// What the devices do once connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Telemetry,
    Handshakes,
    Idle,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Telemetry => "telemetry",
            Mode::Handshakes => "handshakes",
            Mode::Idle => "idle",
        }
    }
}

/// The devices' TLS stacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileChoice {
    /// STM32 + mbedTLS: TLS 1.2, ECDHE-ECDSA-AES128-GCM-SHA256, P-256 only.
    MbedtlsTls12,
    Tls13,
    /// Half and half.
    Mixed,
}

impl ProfileChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            ProfileChoice::MbedtlsTls12 => "mbedtls-tls12",
            ProfileChoice::Tls13 => "tls13",
            ProfileChoice::Mixed => "mixed",
        }
    }

    fn for_device(self, i: usize) -> TlsProfile {
        match self {
            ProfileChoice::MbedtlsTls12 => TlsProfile::Stm32Tls12,
            ProfileChoice::Tls13 => TlsProfile::Tls13,
            ProfileChoice::Mixed if i.is_multiple_of(2) => TlsProfile::Stm32Tls12,
            ProfileChoice::Mixed => TlsProfile::Tls13,
        }
    }
}

/// The fleet's telemetry rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rate {
    /// Messages per second for the whole fleet, spread evenly over the MQTT devices.
    PerSecond(f64),
    /// As fast as the server acknowledges (QoS 1: `window` messages in flight per device).
    Max,
}

/// Who reads the telemetry on the backend side, counting what was delivered.
#[derive(Clone, Debug)]
pub enum Consumer {
    /// fleetward's backend consumer: an API token as the MQTT password (user name `token`), no
    /// client certificate.
    Token(String),
    /// A certificate-holding client (a broker such as Mosquitto that wants one from everybody).
    Identity(DeviceIdentity),
}

/// LoRaWAN and Sigfox devices in the run, provisioned through the operator API.
#[derive(Clone, Debug)]
pub struct LpwanOptions {
    /// `http://host:port` of fleetward's API.
    pub api: String,
    pub token: String,
    /// The packet-forwarder UDP port (LoRaWAN devices need it).
    pub lorawan_udp: Option<SocketAddr>,
    pub lorawan_devices: usize,
    pub sigfox_devices: usize,
    /// Each LPWAN device sends an uplink this often.
    pub interval: Duration,
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub gateway: SocketAddr,
    pub server_name: String,
    pub server_ca_der: Vec<u8>,
    pub identities: Vec<DeviceIdentity>,
    pub mode: Mode,
    pub profile: ProfileChoice,
    pub rate: Rate,
    pub duration: Duration,
    pub qos: u8,
    /// QoS 1 messages in flight per device.
    pub window: usize,
    pub payload_bytes: usize,
    /// New connections per second, fleet-wide (`None`: no limit).
    pub connect_rate: Option<f64>,
    pub attest: bool,
    pub firmware: Firmware,
    /// Local addresses to spread the devices over (several 127.0.0.x for many connections).
    pub binds: Vec<IpAddr>,
    pub consumer: Option<Consumer>,
    /// The gateway's process id, for its CPU and memory (found from the port when local).
    pub gateway_pid: Option<u32>,
    pub keep_alive_secs: u16,
    pub lpwan: Option<LpwanOptions>,
}

/// Counters shared with a progress display while the run goes on.
#[derive(Debug, Default)]
pub struct Live {
    pub connected: AtomicU64,
    pub connects_ok: AtomicU64,
    pub attempted: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub errors: AtomicU64,
    pub delivered: AtomicU64,
    pub lpwan_uplinks: AtomicU64,
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// The fleet's latency histograms: one set for all devices (a histogram is tens of KiB; one per
/// device would take gigabytes at 19,000 devices).
#[derive(Default)]
struct Latencies {
    handshake: Latency,
    connect: Latency,
    ack: Latency,
}

/// What one device saw.
#[derive(Default)]
struct DeviceStats {
    errors: BTreeMap<String, u64>,
    reconnects: u64,
    attest_ok: u64,
    attest_failed: u64,
    connected_at_end: bool,
    /// When this device's first session opened (from the run's start).
    first_connected: Option<Duration>,
}

impl DeviceStats {
    fn error(&mut self, live: &Live, kind: String) {
        bump(&live.errors);
        *self.errors.entry(kind).or_default() += 1;
    }
}

/// Spaces new connections fleet-wide.
struct Pacer {
    interval: Option<Duration>,
    next: Mutex<Instant>,
}

impl Pacer {
    /// Waits for this connection's slot; `false` if it falls after `deadline`.
    async fn wait(&self, deadline: Instant) -> bool {
        let Some(interval) = self.interval else {
            return Instant::now() < deadline;
        };
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let slot = (*next).max(Instant::now());
            *next = slot + interval;
            slot
        };
        if slot >= deadline {
            return false;
        }
        tokio::time::sleep_until(slot).await;
        true
    }
}

/// A cheap per-device generator for back-off jitter and start offsets (not for secrets).
struct Jitter(u64);

impl Jitter {
    fn new(i: usize) -> Self {
        let mut seed = [0u8; 8];
        let _ = aws_lc_rs::rand::fill(&mut seed);
        Jitter(u64::from_le_bytes(seed) ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// "Full jitter" exponential back-off: uniform in [0, min(cap, base · 2^attempt)].
    fn backoff(&mut self, attempt: u32) -> Duration {
        let ceiling = (0.2 * f64::from(1u32 << attempt.min(6))).min(10.0);
        Duration::from_secs_f64(ceiling * self.unit())
    }
}

struct Ctx {
    opts: RunOptions,
    latencies: Mutex<Latencies>,
    live: Arc<Live>,
    pacer: Pacer,
    started: Instant,
    deadline: Instant,
    /// Interval between one device's messages (`None`: as fast as acknowledged).
    send_interval: Option<Duration>,
}

impl Ctx {
    fn record(&self, f: impl FnOnce(&mut Latencies)) {
        f(&mut self.latencies.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// Runs the fleet and reports. `live` can be watched meanwhile.
pub async fn run(opts: RunOptions, live: Arc<Live>) -> RunReport {
    let started = Instant::now();
    let deadline = started + opts.duration;
    let mqtt_devices = opts.identities.len();
    let send_interval = match opts.rate {
        Rate::Max => None,
        Rate::PerSecond(r) if r > 0.0 && mqtt_devices > 0 => Some(Duration::from_secs_f64(mqtt_devices as f64 / r)),
        Rate::PerSecond(_) => Some(opts.duration * 2),
    };
    let gateway_pid = opts.gateway_pid.or_else(|| procstat::listener_pid(opts.gateway));
    let gw_start = gateway_pid.and_then(procstat::sample);
    let own_start = procstat::own();
    let ctx = Arc::new(Ctx {
        latencies: Mutex::new(Latencies::default()),
        pacer: Pacer {
            interval: opts
                .connect_rate
                .filter(|r| *r > 0.0)
                .map(|r| Duration::from_secs_f64(1.0 / r)),
            next: Mutex::new(Instant::now()),
        },
        opts,
        live: live.clone(),
        started,
        deadline,
        send_interval,
    });

    // The gateway's memory: peak, and at the most connections (for memory per connection).
    let sampler = gateway_pid.map(|pid| {
        let live = live.clone();
        tokio::spawn(async move {
            let (mut peak, mut best) = (0u64, (0u64, 0u64));
            loop {
                if let Some(s) = procstat::sample(pid) {
                    peak = peak.max(s.rss_kib);
                    let connected = live.connected.load(Ordering::Relaxed);
                    if connected >= best.0 {
                        best = (connected, s.rss_kib);
                    }
                }
                if Instant::now() >= deadline {
                    return (peak, best);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    });

    let consumer = ctx.opts.consumer.clone().map(|c| {
        let ctx = ctx.clone();
        tokio::spawn(async move { consume(&ctx, c).await })
    });
    let lpwan = ctx.opts.lpwan.clone().map(|l| {
        let ctx = ctx.clone();
        tokio::spawn(async move { run_lpwan(&ctx, &l).await })
    });

    let mut tasks = tokio::task::JoinSet::new();
    for (i, identity) in ctx.opts.identities.iter().enumerate() {
        let (ctx, identity) = (ctx.clone(), identity.clone());
        tasks.spawn(async move { device(i, identity, &ctx).await });
    }
    let mut stats = DeviceStats::default();
    let mut at_end = 0u64;
    let mut all_connected: Option<Duration> = Some(Duration::ZERO);
    while let Some(done) = tasks.join_next().await {
        let Ok(d) = done else {
            *stats.errors.entry("simulator task panicked".into()).or_default() += 1;
            continue;
        };
        for (k, n) in d.errors {
            *stats.errors.entry(k).or_default() += n;
        }
        stats.reconnects += d.reconnects;
        stats.attest_ok += d.attest_ok;
        stats.attest_failed += d.attest_failed;
        at_end += u64::from(d.connected_at_end);
        all_connected = match (all_connected, d.first_connected) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
    }
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    let (handshake, connect, ack) = {
        let l = ctx.latencies.lock().unwrap_or_else(|p| p.into_inner());
        (l.handshake.summary(), l.connect.summary(), l.ack.summary())
    };
    let run_wall = ctx.opts.duration.as_secs_f64().max(1e-9);
    let delivered = match consumer {
        Some(task) => Some(task.await.unwrap_or(0)),
        None => None,
    };
    let (lorawan, sigfox) = match lpwan {
        Some(task) => task.await.unwrap_or((None, None)),
        None => (None, None),
    };
    let gw_end = gateway_pid.and_then(procstat::sample);
    let own_end = procstat::own();
    let (peak, best) = match sampler {
        Some(t) => t.await.unwrap_or_default(),
        None => (0, (0, 0)),
    };
    let cost = |pid: u32, a: Option<procstat::Sample>, b: Option<procstat::Sample>, peak: u64| {
        let (a, b) = (a?, b?);
        let wall = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
        Some(ProcessCost {
            pid,
            cpu_seconds: b.cpu_seconds - a.cpu_seconds,
            cpu_percent: 100.0 * (b.cpu_seconds - a.cpu_seconds) / wall,
            rss_start_kib: a.rss_kib,
            rss_end_kib: b.rss_kib,
            rss_peak_kib: peak.max(a.rss_kib).max(b.rss_kib),
        })
    };
    let gateway = gateway_pid.and_then(|pid| cost(pid, gw_start, gw_end, peak));
    let client = cost(std::process::id(), own_start, own_end, 0);
    let connects_ok = live.connects_ok.load(Ordering::Relaxed);
    let acked = live.acked.load(Ordering::Relaxed);
    let sent = live.sent.load(Ordering::Relaxed);
    let opts = &ctx.opts;
    RunReport {
        mode: opts.mode.as_str().into(),
        profile: opts.profile.as_str().into(),
        devices: mqtt_devices as u64,
        duration_s: elapsed,
        connects_attempted: live.attempted.load(Ordering::Relaxed),
        connects_ok,
        connects_per_s: connects_ok as f64 / run_wall,
        reconnects: stats.reconnects,
        connected_at_end: at_end,
        all_connected_after_s: all_connected.filter(|_| mqtt_devices > 0).map(|d| d.as_secs_f64()),
        handshake_ms: handshake,
        connect_ms: connect,
        publish_ack_ms: ack,
        messages_sent: sent,
        messages_acked: acked,
        messages_per_s: if opts.qos == 0 { sent } else { acked } as f64 / run_wall,
        messages_delivered: delivered,
        attestations_verified: stats.attest_ok,
        attestations_failed: stats.attest_failed,
        errors: stats.errors,
        lorawan,
        sigfox,
        gateway_cpu_us_per_connect: gateway
            .as_ref()
            .filter(|_| opts.mode == Mode::Handshakes && connects_ok > 0)
            .map(|g| g.cpu_seconds * 1e6 / connects_ok as f64),
        gateway_kib_per_connection: gateway
            .as_ref()
            .filter(|_| opts.mode == Mode::Idle && best.0 > 0)
            .map(|g| best.1.saturating_sub(g.rss_start_kib) as f64 / best.0 as f64),
        gateway,
        client,
    }
}

/// One MQTT device, from start to the deadline.
async fn device(i: usize, identity: DeviceIdentity, ctx: &Ctx) -> DeviceStats {
    let opts = &ctx.opts;
    let live = &ctx.live;
    let mut stats = DeviceStats::default();
    let connector = match Connector::new(&ClientTls {
        server_ca_der: opts.server_ca_der.clone(),
        server_name: opts.server_name.clone(),
        profile: opts.profile.for_device(i),
        identity: Some((identity.chain(), identity.key_der.clone())),
        bind: (!opts.binds.is_empty()).then(|| opts.binds[i % opts.binds.len()]),
    }) {
        Ok(c) => c,
        Err(e) => {
            stats.error(live, e.kind());
            return stats;
        }
    };
    let mut jitter = Jitter::new(i);
    let mut attempt = 0u32;
    let mut had_session = false;
    while ctx.pacer.wait(ctx.deadline).await {
        bump(&live.attempted);
        let t0 = Instant::now();
        let left = ctx.deadline.saturating_duration_since(t0) + Duration::from_secs(10);
        let connected = tokio::time::timeout(left, async {
            let mut c = connector.connect(opts.gateway).await?;
            let handshake = t0.elapsed();
            let (_, code) = c
                .mqtt_connect(&ConnectOptions {
                    client_id: identity.id.clone(),
                    keep_alive_secs: opts.keep_alive_secs,
                    clean_session: true,
                    ..Default::default()
                })
                .await?;
            Ok::<_, ClientError>((c, handshake, code))
        })
        .await
        .unwrap_or(Err(ClientError::Timeout("the handshake and CONNACK")));
        let mut client = match connected {
            Ok((c, handshake, 0)) => {
                ctx.record(|l| {
                    l.handshake.record(handshake);
                    l.connect.record(t0.elapsed());
                });
                stats.first_connected.get_or_insert(ctx.started.elapsed());
                bump(&live.connects_ok);
                c
            }
            Ok((_, handshake, code)) => {
                ctx.record(|l| l.handshake.record(handshake));
                stats.error(
                    live,
                    format!("CONNACK {code} ({})", crate::fleet::connack_meaning(code)),
                );
                back_off(ctx, &mut jitter, &mut attempt).await;
                continue;
            }
            Err(e) => {
                stats.error(live, e.kind());
                back_off(ctx, &mut jitter, &mut attempt).await;
                continue;
            }
        };
        if had_session {
            stats.reconnects += 1;
        }
        had_session = true;
        attempt = 0;
        if opts.mode == Mode::Handshakes {
            let _ = client.disconnect().await;
            continue;
        }
        live.connected.fetch_add(1, Ordering::Relaxed);
        let outcome = session(&mut client, &identity, ctx, &mut stats, &mut jitter).await;
        live.connected.fetch_sub(1, Ordering::Relaxed);
        match outcome {
            Ok(()) => {
                stats.connected_at_end = true;
                let _ = client.disconnect().await;
                break;
            }
            Err(e) => {
                stats.error(live, format!("session lost: {}", e.kind()));
                back_off(ctx, &mut jitter, &mut attempt).await;
            }
        }
    }
    stats
}

async fn back_off(ctx: &Ctx, jitter: &mut Jitter, attempt: &mut u32) {
    let wait = jitter.backoff(*attempt);
    *attempt = attempt.saturating_add(1);
    let until = (Instant::now() + wait).min(ctx.deadline);
    tokio::time::sleep_until(until).await;
}

/// A connected session until the deadline (`Ok`) or until it is lost.
async fn session(
    c: &mut Client,
    identity: &DeviceIdentity,
    ctx: &Ctx,
    stats: &mut DeviceStats,
    jitter: &mut Jitter,
) -> Result<(), ClientError> {
    let opts = &ctx.opts;
    let live = &ctx.live;
    let id = &identity.id;
    let commands = format!("devices/{id}/commands/#");
    let attestation = format!("devices/{id}/attestation/#");
    let mut filters = vec![(commands.as_str(), 1)];
    if opts.attest {
        filters.push((attestation.as_str(), 1));
    }
    c.subscribe(&filters).await?;
    let topic = format!("devices/{id}/telemetry");
    let telemetry = opts.mode == Mode::Telemetry;
    let window = opts.window.max(1);
    let mut outstanding: HashMap<u16, Instant> = HashMap::new();
    let mut acks = AckSamples::new(ctx);
    let mut seq = 0u64;
    // Spread the devices' first messages over one interval.
    let mut next_send = Instant::now() + ctx.send_interval.map_or(Duration::ZERO, |iv| iv.mul_f64(jitter.unit()));
    let ping_every = Duration::from_secs(u64::from(opts.keep_alive_secs.max(2)) / 2);
    let mut last_sent = Instant::now();
    // Timers armed once and moved, not one new timer per message: at 40k msg/s the loop's
    // own overhead is what a load tester must not add.
    let deadline = tokio::time::sleep_until(ctx.deadline);
    let ping = tokio::time::sleep_until(last_sent + ping_every);
    let pace = tokio::time::sleep_until(next_send);
    tokio::pin!(deadline, ping, pace);
    loop {
        if telemetry {
            // Whatever is due goes now: the window refilled as acks come (QoS 1), or one
            // message per turn of the loop (QoS 0, so the loop still reads what arrives and a
            // run "as fast as possible" measures the server, not the kernel's socket buffers).
            let now = Instant::now();
            let burst = if opts.qos == 0 { 1 } else { window };
            let mut sent = 0;
            while next_send <= now && (opts.qos == 0 || outstanding.len() < window) && sent < burst {
                let payload = reading(seq, opts.payload_bytes);
                let pkid = c.publish_nowait(&topic, &payload, opts.qos).await?;
                if opts.qos > 0 {
                    outstanding.insert(pkid, now);
                }
                bump(&live.sent);
                seq += 1;
                sent += 1;
                last_sent = now;
                next_send = match ctx.send_interval {
                    // Late sends do not pile up into a burst.
                    Some(iv) => (next_send + iv).max(now - iv),
                    None => now,
                };
            }
        }
        let room = telemetry && (opts.qos == 0 || outstanding.len() < window);
        // Sending as fast as possible with room left: only look at what already arrived.
        let go_on = room && ctx.send_interval.is_none();
        let paced = room && ctx.send_interval.is_some();
        if paced && pace.deadline() != next_send {
            pace.as_mut().reset(next_send);
        }
        tokio::select! {
            biased;
            () = &mut deadline => break,
            packet = c.recv_untimed() => {
                match packet? {
                    ServerPacket::PubAck { pkid } => {
                        if let Some(t) = outstanding.remove(&pkid) {
                            acks.record(t.elapsed());
                            bump(&live.acked);
                        }
                    }
                    ServerPacket::Publish { topic: t, payload, qos, pkid } => {
                        if qos == 1 {
                            c.puback(pkid).await?;
                        }
                        if t.ends_with("/attestation/challenge") && opts.attest {
                            if let Some(answer) = attest::answer(identity, &opts.firmware, &payload) {
                                c.publish_nowait(&format!("devices/{id}/attestation/evidence"), &answer, 1).await?;
                                last_sent = Instant::now();
                            }
                        } else if t.ends_with("/attestation/result") {
                            let verdict: serde_json::Value = serde_json::from_slice(&payload).unwrap_or_default();
                            if verdict["result"] == "verified" {
                                stats.attest_ok += 1;
                            } else {
                                stats.attest_failed += 1;
                                let reason = verdict["reason"].as_str().unwrap_or("?").to_owned();
                                stats.error(live, format!("attestation failed: {reason}"));
                            }
                        }
                    }
                    ServerPacket::Disconnect => return Err(ClientError::Closed),
                    _ => {}
                }
            }
            () = std::future::ready(()), if go_on => {}
            () = &mut pace, if paced => {}
            () = &mut ping => {
                if Instant::now() >= last_sent + ping_every {
                    c.ping().await?;
                    last_sent = Instant::now();
                }
                ping.as_mut().reset(last_sent + ping_every);
            }
        }
    }
    // Collect the acknowledgements still in flight.
    let drain_until = Instant::now() + Duration::from_secs(5);
    while !outstanding.is_empty() && Instant::now() < drain_until {
        match c.recv(drain_until.saturating_duration_since(Instant::now())).await? {
            ServerPacket::PubAck { pkid } => {
                if let Some(t) = outstanding.remove(&pkid) {
                    acks.record(t.elapsed());
                    bump(&live.acked);
                }
            }
            ServerPacket::Publish { qos: 1, pkid, .. } => c.puback(pkid).await?,
            ServerPacket::Disconnect => return Err(ClientError::Closed),
            _ => {}
        }
    }
    Ok(())
}

/// Publish→ack latencies of one session, handed to the fleet's histogram a few dozen at a time
/// (one lock per message measured as contention between the two runtime threads), and the
/// rest when the session ends, however it ends.
struct AckSamples<'a> {
    ctx: &'a Ctx,
    pending: Vec<Duration>,
}

impl<'a> AckSamples<'a> {
    const BATCH: usize = 64;

    fn new(ctx: &'a Ctx) -> Self {
        AckSamples {
            ctx,
            pending: Vec::new(),
        }
    }

    fn record(&mut self, d: Duration) {
        self.pending.push(d);
        if self.pending.len() >= Self::BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let pending = &mut self.pending;
        self.ctx.record(|l| {
            for d in pending.drain(..) {
                l.ack.record(d);
            }
        });
    }
}

impl Drop for AckSamples<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// A telemetry reading of about `size` bytes (JSON).
fn reading(seq: u64, size: usize) -> Vec<u8> {
    let mut s = format!(
        "{{\"seq\":{seq},\"temperature_c\":{:.1}",
        20.0 + (seq % 11) as f64 * 0.5
    );
    if s.len() + 2 < size {
        s.push_str(",\"pad\":\"");
        while s.len() + 2 < size {
            s.push('x');
        }
        s.push('"');
    }
    s.push('}');
    s.into_bytes()
}

/// The backend consumer: subscribes to every device's telemetry and counts what the run's devices
/// sent, until
/// the run is over and the stream has been quiet for two seconds (at most 30 s more).
async fn consume(ctx: &Ctx, consumer: Consumer) -> u64 {
    let opts = &ctx.opts;
    let (identity, options) = match &consumer {
        Consumer::Token(token) => (
            None,
            ConnectOptions {
                client_id: format!("sim-devices-consumer-{}", std::process::id()),
                keep_alive_secs: 60,
                clean_session: true,
                username: Some("token".into()),
                password: Some(token.clone()),
                will: None,
            },
        ),
        Consumer::Identity(d) => (
            Some((d.chain(), d.key_der.clone())),
            ConnectOptions {
                client_id: d.id.clone(),
                keep_alive_secs: 60,
                clean_session: true,
                ..Default::default()
            },
        ),
    };
    let tls = ClientTls {
        server_ca_der: opts.server_ca_der.clone(),
        server_name: opts.server_name.clone(),
        profile: TlsProfile::Tls13,
        identity,
        bind: None,
    };
    let live = &ctx.live;
    // Only this run's MQTT devices count (LoRaWAN and Sigfox uplinks are published there too).
    let topics: std::collections::HashSet<String> = opts
        .identities
        .iter()
        .map(|d| format!("devices/{}/telemetry", d.id))
        .collect();
    let result = async {
        let mut c = Client::connect(opts.gateway, &tls).await?;
        let (_, code) = c.mqtt_connect(&options).await?;
        if code != 0 {
            return Err(ClientError::Protocol(format!("the consumer got CONNACK {code}")));
        }
        c.subscribe(&[("devices/+/telemetry", opts.qos)]).await?;
        let hard_stop = ctx.deadline + Duration::from_secs(30);
        loop {
            let wait = if Instant::now() < ctx.deadline + Duration::from_secs(1) {
                ctx.deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(2)
            } else {
                Duration::from_secs(2)
            };
            match c.recv(wait).await {
                Ok(ServerPacket::Publish { topic, qos, pkid, .. }) => {
                    if qos == 1 {
                        c.puback(pkid).await?;
                    }
                    if topics.contains(&topic) {
                        bump(&live.delivered);
                    }
                }
                Ok(ServerPacket::Disconnect) => return Err(ClientError::Closed),
                Ok(_) => {}
                Err(ClientError::Timeout(_)) if Instant::now() >= ctx.deadline => break,
                Err(e) => return Err(e),
            }
            if Instant::now() >= hard_stop {
                break;
            }
        }
        let _ = c.disconnect().await;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "the backend consumer failed");
    }
    live.delivered.load(Ordering::Relaxed)
}

/// LoRaWAN and Sigfox devices: provisioned through the API, then an uplink each per interval.
async fn run_lpwan(ctx: &Ctx, l: &LpwanOptions) -> (Option<LpwanCounts>, Option<LpwanCounts>) {
    let api = match crate::api::Api::new(&l.api, &l.token) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "LPWAN devices not run");
            return (None, None);
        }
    };
    let lorawan = async {
        if l.lorawan_devices == 0 {
            return None;
        }
        let Some(udp) = l.lorawan_udp else {
            tracing::warn!("LoRaWAN devices need the packet-forwarder address (--lorawan)");
            return None;
        };
        Some(crate::lpwan::lorawan_devices(&api, udp, l.lorawan_devices, l.interval, ctx.deadline, &ctx.live).await)
    };
    let sigfox = async {
        if l.sigfox_devices == 0 {
            return None;
        }
        Some(crate::lpwan::sigfox_devices(&api, l.sigfox_devices, l.interval, ctx.deadline, &ctx.live).await)
    };
    tokio::join!(lorawan, sigfox)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_have_the_asked_size_and_are_json() {
        for size in [0, 10, 64, 256] {
            let r = reading(7, size);
            let v: serde_json::Value = serde_json::from_slice(&r).unwrap();
            assert_eq!(v["seq"], 7);
            if size > 40 {
                assert_eq!(r.len(), size, "{}", String::from_utf8_lossy(&r));
            }
        }
    }

    #[test]
    fn back_off_is_jittered_and_capped() {
        let mut j = Jitter::new(3);
        let waits: Vec<Duration> = (0..200).map(|_| j.backoff(10)).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(10)));
        let distinct: std::collections::BTreeSet<_> = waits.iter().map(|w| w.as_millis()).collect();
        assert!(distinct.len() > 100, "jitter spreads the retries");
        assert!(Jitter::new(1).backoff(0) <= Duration::from_millis(200));
    }
}
