//! The Semtech UDP packet-forwarder listener: what real LoRaWAN gateways speak.
//!
//! One task receives datagrams. Every datagram is hostile: it is decoded by `semtech_udp`
//! (typed refusals, counted, and an event), and the frames it carries are trusted only after
//! their MIC verified ([`super::uplink`]).
//!
//! A PUSH_DATA that decodes is acknowledged at once, before its frames are verified or stored.
//! The protocol defines PUSH_ACK that way ("acknowledge immediately all the PUSH_DATA packets
//! received"): it measures the network path for the gateway's statistics and is never a delivery
//! receipt, since a forwarder does not resend a PUSH_DATA. Semtech's reference forwarder also
//! blocks its upstream thread up to 100 ms (PUSH_TIMEOUT_MS) waiting for each PUSH_ACK, so an
//! acknowledgement held back for a database commit would stall the gateway's radio polling. What
//! fleetward promises instead: a frame is published to subscribers, listed by the API and counted
//! as accepted only after it is committed.
//!
//! Verified frames go, a datagram at a time, to one batching writer: one transaction per batch
//! holds the uplink rows, each device's FCntUp and the payloads' telemetry messages; then the
//! messages go to backend subscribers as MQTT telemetry does (`devices/{DevEUI}/telemetry`).
//! The writer's queue is bounded. When it is full, the frames of the datagrams that arrive are
//! dropped before verification (so no session counter moves for them), counted in
//! `lorawan_uplinks_overloaded` and reported by an event at most once a second. Blocking the
//! receiver instead would only move the loss into the kernel's socket buffer, where nobody
//! counts it. Join-requests go to the join server ([`super::join`]) in their own task; the
//! join-accept goes back in a PULL_RESP to the gateway that heard the request, timed for RX1
//! (JOIN_ACCEPT_DELAY1, 5 s after the uplink).
//!
//! Bounded everywhere: the writer's queue, the gateway table, the join de-duplication table, the
//! joins in flight, and the sessions (one per provisioned device).

use super::backend::JoinServerConfig;
use super::join::{JoinAccepted, JoinRefusal, join};
use super::uplink::{Accepted, Reception, Rejection, Sessions, UplinkSettings, Verdict};
use crate::clock::now_ms;
use crate::eventlog::EventSink;
use crate::mqtt::hub::Hub;
use crate::stats::{Stats, add, inc};
use registry::{NewEvent, NewLorawanUplink, Registry, UplinkOutcome};
use semtech_udp::{GatewayEui, Packet, RxPk, TxPk};
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

/// Listener sizes and timing.
#[derive(Clone, Debug)]
pub struct UdpSettings {
    pub uplink: UplinkSettings,
    /// Datagrams whose verified frames may wait for the writer; past it, frames are dropped
    /// unverified and counted (`lorawan_uplinks_overloaded`).
    pub queue: usize,
    /// Most datagrams per commit. The writer takes whatever waited while it last committed, so a
    /// batch grows with the load and one commit's cost is shared by more frames.
    pub max_batch: usize,
    /// Most gateways remembered (their downlink address); past it, new gateways get no downlinks.
    pub max_gateways: usize,
    /// Microseconds from the join-request to the join-accept's RX1 window (JOIN_ACCEPT_DELAY1).
    pub join_accept_delay_us: u32,
    /// Transmit power for downlinks, dBm.
    pub tx_power: i32,
    /// Join-requests handled at once (each reads and writes the registry); more are refused
    /// (`lorawan_joins_throttled`) rather than queued without bound.
    pub max_concurrent_joins: usize,
}

impl Default for UdpSettings {
    fn default() -> Self {
        UdpSettings {
            uplink: UplinkSettings::default(),
            queue: 8192,
            max_batch: 2048,
            max_gateways: 65_536,
            join_accept_delay_us: 5_000_000,
            tx_power: 14,
            max_concurrent_joins: 64,
        }
    }
}

/// What the listener shares with its tasks.
#[derive(Debug)]
pub struct UdpCtx {
    pub registry: Registry,
    pub events: EventSink,
    pub stats: Arc<Stats>,
    /// Backend subscribers (telemetry fan-out).
    pub hub: Arc<Hub>,
    pub sessions: Arc<Sessions>,
    pub join: Arc<JoinServerConfig>,
    pub settings: UdpSettings,
}

/// Per gateway: where its PULL_DATA came from (its downlink socket) and its protocol version.
type Gateways = Mutex<HashMap<GatewayEui, (SocketAddr, u8)>>;

/// One datagram's verified frames, for the writer.
type WriteJob = Vec<(Verdict, Reception)>;

/// Frames dropped because the writer's queue was full, reported by one event a second at most.
#[derive(Debug, Default)]
struct Overload {
    dropped: u64,
    reported_at: Option<Instant>,
}

impl Overload {
    fn drop_frame(&mut self, ctx: &UdpCtx, gateway: GatewayEui) {
        inc(&ctx.stats.lorawan_uplinks_overloaded);
        self.dropped += 1;
        let now = crate::clock::monotonic();
        if self
            .reported_at
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
        {
            return;
        }
        ctx.events.emit(
            NewEvent::new("lorawan.datagram_dropped", "lorawan")
                .reason(format!(
                    "the uplink writer is behind (its queue of {} datagrams is full): {} frames dropped unverified",
                    ctx.settings.queue, self.dropped
                ))
                .detail(json!({ "check": "overloaded", "gateway": gateway.to_string(), "frames": self.dropped })),
        );
        self.dropped = 0;
        self.reported_at = Some(now);
    }
}

/// The receive buffer asked for: a busy gateway sends bursts of PUSH_DATA, and what does not fit
/// while the listener is busy is dropped by the kernel (the protocol never resends).
pub const RECEIVE_BUFFER: usize = 4 << 20;

/// Binds the listener's socket with a large receive buffer (the kernel may grant less: Linux caps
/// it at `net.core.rmem_max`; the size granted is logged).
pub fn bind(addr: &str) -> std::io::Result<UdpSocket> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if let Err(e) = socket.set_recv_buffer_size(RECEIVE_BUFFER) {
        tracing::warn!(error = %e, "could not enlarge the LoRaWAN UDP receive buffer");
    }
    tracing::debug!(
        granted = socket.recv_buffer_size().unwrap_or(0),
        "LoRaWAN UDP receive buffer"
    );
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Runs the listener until `shutdown`; returns when the writer has drained.
pub async fn run(socket: UdpSocket, ctx: Arc<UdpCtx>, mut shutdown: watch::Receiver<bool>) {
    let socket = Arc::new(socket);
    let gateways: Arc<Gateways> = Arc::default();
    let (tx, rx) = mpsc::channel::<WriteJob>(ctx.settings.queue.max(1));
    let writer = tokio::spawn(writer(rx, ctx.clone()));
    // Join-requests just handled (several gateways hear each one): bytes → when.
    let mut joins_seen: HashMap<Vec<u8>, Instant> = HashMap::new();
    let join_slots = Arc::new(tokio::sync::Semaphore::new(ctx.settings.max_concurrent_joins.max(1)));
    let mut overload = Overload::default();
    let mut buf = vec![0u8; semtech_udp::MAX_DATAGRAM + 1];
    loop {
        let (n, peer) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    // ICMP port-unreachable from a gateway that went away shows up here on Linux.
                    tracing::debug!(error = %e, "LoRaWAN UDP receive error");
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        inc(&ctx.stats.lorawan_datagrams_received);
        let packet = match semtech_udp::decode(&buf[..n]) {
            Ok(p) => p,
            Err(e) => {
                inc(&ctx.stats.lorawan_datagrams_dropped);
                ctx.stats.rejected(e.check());
                ctx.events.emit(
                    NewEvent::new("lorawan.datagram_dropped", "lorawan")
                        .reason(e.to_string())
                        .detail(json!({ "check": e.check(), "peer": peer.to_string(), "bytes": n })),
                );
                continue;
            }
        };
        match packet {
            Packet::PullData {
                version,
                token,
                gateway,
            } => {
                remember_pull(&gateways, ctx.settings.max_gateways, gateway, peer, version);
                let _ = socket.send_to(&semtech_udp::pull_ack(version, token), peer).await;
            }
            Packet::TxAck { gateway, error, .. } => {
                if let Some(error) = error.filter(|e| e != "NONE") {
                    inc(&ctx.stats.lorawan_downlinks_failed);
                    ctx.events.emit(
                        NewEvent::new("lorawan.downlink_failed", "lorawan")
                            .reason(format!("gateway {gateway} did not transmit: {error}"))
                            .detail(json!({ "gateway": gateway.to_string(), "error": error })),
                    );
                }
            }
            Packet::PushData {
                version,
                token,
                gateway,
                rxpk,
                ..
            } => {
                // Acknowledged on receipt, as the protocol asks (see the module's doc).
                let _ = socket.send_to(&semtech_udp::push_ack(version, token), peer).await;
                // Room for this datagram's frames is taken before they are verified: a frame
                // that cannot be stored must not move its session's counter.
                let permit = match tx.try_reserve() {
                    Ok(permit) => Some(permit),
                    Err(mpsc::error::TrySendError::Full(())) => None,
                    Err(mpsc::error::TrySendError::Closed(())) => break,
                };
                let mut job: WriteJob = Vec::with_capacity(rxpk.len());
                for rx in rxpk {
                    let frame = Frame { gateway, rx };
                    handle_rxpk(
                        &ctx,
                        &socket,
                        &gateways,
                        &mut joins_seen,
                        &join_slots,
                        frame,
                        permit.is_some(),
                        &mut job,
                        &mut overload,
                    )
                    .await;
                }
                if let Some(permit) = permit
                    && !job.is_empty()
                {
                    permit.send(job);
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

fn remember_pull(gateways: &Gateways, max: usize, gateway: GatewayEui, peer: SocketAddr, version: u8) {
    let mut g = crate::locks::lock(gateways);
    if g.len() >= max && !g.contains_key(&gateway) {
        return;
    }
    g.insert(gateway, (peer, version));
}

fn reception(gateway: GatewayEui, rx: &RxPk) -> Reception {
    Reception {
        gateway: gateway.to_string(),
        freq: rx.freq,
        datr: rx.datr.clone(),
        rssi: rx.rssi,
        lsnr: rx.lsnr,
        tmst: rx.tmst,
    }
}

/// One `rxpk` of a PUSH_DATA, with the gateway that heard it.
struct Frame {
    gateway: GatewayEui,
    rx: RxPk,
}

/// One received frame: a join-request goes to the join server; a data uplink is verified when
/// the writer has room for it (`room`), else dropped and counted.
#[allow(clippy::too_many_arguments)]
async fn handle_rxpk(
    ctx: &Arc<UdpCtx>,
    socket: &Arc<UdpSocket>,
    gateways: &Arc<Gateways>,
    joins_seen: &mut HashMap<Vec<u8>, Instant>,
    join_slots: &Arc<tokio::sync::Semaphore>,
    Frame { gateway, rx }: Frame,
    room: bool,
    job: &mut WriteJob,
    overload: &mut Overload,
) {
    if rx.stat != 1 {
        // The radio's CRC failed (or was absent): not a frame anyone sent.
        inc(&ctx.stats.lorawan_crc_failed);
        return;
    }
    let heard = reception(gateway, &rx);
    match rx.data.first().map(|m| m >> 5) {
        Some(0b000) => {
            // Copies from other gateways arrive within the de-duplication window; the same
            // bytes later are a replay, for the join server's DevNonce rule to refuse.
            let window = ctx.settings.uplink.dedup_window;
            let now = crate::clock::monotonic();
            if joins_seen.len() > 10_000 {
                joins_seen.retain(|_, at| now.duration_since(*at) < window);
            }
            if let Some(at) = joins_seen.get(&rx.data)
                && now.duration_since(*at) < window
            {
                inc(&ctx.stats.lorawan_uplinks_duplicate);
                return;
            }
            let Ok(slot) = join_slots.clone().try_acquire_owned() else {
                inc(&ctx.stats.lorawan_joins_throttled);
                ctx.events.emit(
                    NewEvent::new("lorawan.join_refused", "lorawan")
                        .reason(format!(
                            "{} join-requests are already being handled: refused (a join flood?)",
                            ctx.settings.max_concurrent_joins
                        ))
                        .detail(json!({ "check": "join_throttled", "gateway": heard.gateway })),
                );
                return;
            };
            joins_seen.insert(rx.data.clone(), now);
            let (ctx, socket, gateways) = (ctx.clone(), socket.clone(), gateways.clone());
            tokio::spawn(async move {
                join_over_udp(ctx, socket, gateways, rx, gateway).await;
                drop(slot);
            });
        }
        _ if !room => overload.drop_frame(ctx, gateway),
        _ => {
            let span = tracing::info_span!(
                target: crate::observability::SPANS,
                "lorawan.uplink",
                gateway = %gateway,
                device = tracing::field::Empty,
                verdict = tracing::field::Empty,
            );
            let verdict = tracing::Instrument::instrument(
                ctx.sessions
                    .verify(&ctx.registry, &ctx.settings.uplink, &rx.data, &heard),
                span.clone(),
            )
            .await;
            match &verdict {
                Verdict::Accepted(a) => span.record("device", a.dev_eui.as_str()).record("verdict", "accepted"),
                Verdict::Duplicate { dev_eui, .. } => {
                    span.record("device", dev_eui.as_str()).record("verdict", "duplicate")
                }
                Verdict::Rejected(r) => span
                    .record("device", r.dev_eui.as_deref().unwrap_or(""))
                    .record("verdict", r.check),
            };
            match verdict {
                Verdict::Rejected(r) => reject(ctx, &r, &heard),
                v => job.push((v, heard)),
            }
        }
    }
}

fn reject(ctx: &UdpCtx, r: &Rejection, heard: &Reception) {
    inc(&ctx.stats.lorawan_uplinks_rejected);
    ctx.stats.rejected(r.check);
    let mut event = NewEvent::new("lorawan.uplink_rejected", "lorawan")
        .reason(r.reason.clone())
        .detail(json!({
            "check": r.check, "dev_addr": r.dev_addr, "dev_eui": r.dev_eui,
            "gateway": heard.gateway, "rssi": heard.rssi, "lsnr": heard.lsnr,
        }));
    if let Some(eui) = &r.dev_eui {
        event = event.device(eui);
    }
    ctx.events.emit(event);
}

/// Records a join's outcome (counters and an event) for both join transports.
pub(crate) fn record_join(
    stats: &Stats,
    events: &EventSink,
    actor: &str,
    outcome: &Result<JoinAccepted, JoinRefusal>,
    dev_eui_hint: &str,
) {
    match outcome {
        Ok(accepted) => {
            inc(&stats.lorawan_joins_accepted);
            events.emit(
                NewEvent::new("lorawan.join_accepted", actor)
                    .device(&accepted.dev_eui)
                    .detail(json!({
                        "dev_eui": accepted.dev_eui, "dev_addr": accepted.dev_addr,
                        "join_nonce": accepted.join_nonce, "mac_version": accepted.mac_version,
                    })),
            );
        }
        Err(refusal) => {
            inc(&stats.lorawan_joins_refused);
            stats.rejected(refusal.check());
            if let JoinRefusal::Unavailable(e) = refusal {
                tracing::warn!(error = %e, "join server: registry unavailable");
            }
            let mut event = NewEvent::new("lorawan.join_refused", actor)
                .reason(refusal.to_string())
                .detail(json!({ "check": refusal.check(), "dev_eui": dev_eui_hint }));
            if !dev_eui_hint.is_empty() {
                event = event.device(dev_eui_hint);
            }
            events.emit(event);
        }
    }
}

async fn join_over_udp(
    ctx: Arc<UdpCtx>,
    socket: Arc<UdpSocket>,
    gateways: Arc<Gateways>,
    rx: RxPk,
    gateway: GatewayEui,
) {
    let mut random = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut random);
    let outcome = join(&ctx.registry, &ctx.join.settings, &rx.data, random, now_ms()).await;
    let hint = verifier::lorawan::peek_join_request(&rx.data)
        .map(|j| j.dev_eui.to_ascii_uppercase())
        .unwrap_or_default();
    record_join(&ctx.stats, &ctx.events, "lorawan", &outcome, &hint);
    let Ok(accepted) = outcome else {
        return;
    };
    ctx.sessions.install_joined(&accepted);
    let gateway_eui = gateway.to_string();
    let pull = crate::locks::lock(&gateways).get(&gateway).copied();
    let Some((to, version)) = pull else {
        inc(&ctx.stats.lorawan_downlinks_failed);
        ctx.events.emit(
            NewEvent::new("lorawan.downlink_failed", "lorawan")
                .device(&accepted.dev_eui)
                .reason(format!(
                    "gateway {gateway_eui} has no downlink path (no PULL_DATA seen): the join-accept cannot be sent"
                ))
                .detail(json!({ "gateway": gateway_eui, "error": "NO_PULL_DATA" })),
        );
        return;
    };
    let txpk = TxPk::lora(
        &accepted.phy_payload,
        rx.tmst.wrapping_add(ctx.settings.join_accept_delay_us),
        rx.freq,
        &rx.datr,
        ctx.settings.tx_power,
    );
    let mut token = [0u8; 2];
    let _ = aws_lc_rs::rand::fill(&mut token);
    let datagram = semtech_udp::pull_resp(version, u16::from_be_bytes(token), &txpk);
    match socket.send_to(&datagram, to).await {
        Ok(_) => inc(&ctx.stats.lorawan_downlinks_sent),
        Err(e) => {
            inc(&ctx.stats.lorawan_downlinks_failed);
            tracing::warn!(error = %e, gateway = %gateway_eui, "could not send PULL_RESP");
        }
    }
}

/// Commits accepted frames in batches, then publishes them.
async fn writer(mut rx: mpsc::Receiver<WriteJob>, ctx: Arc<UdpCtx>) {
    let mut jobs: Vec<WriteJob> = Vec::with_capacity(ctx.settings.max_batch);
    while rx.recv_many(&mut jobs, ctx.settings.max_batch.max(1)).await > 0 {
        let now = now_ms();
        // Accepted frames, with every reception heard in this batch; receptions of frames
        // stored by an earlier batch are added to their rows.
        let mut accepted: Vec<(Accepted, Vec<serde_json::Value>)> = Vec::new();
        let mut index: HashMap<(String, i64, u32), usize> = HashMap::new();
        let mut late: Vec<((String, i64, u32), serde_json::Value)> = Vec::new();
        for job in &mut jobs {
            for (verdict, heard) in job.drain(..) {
                match verdict {
                    Verdict::Accepted(a) => {
                        index.insert((a.dev_eui.clone(), a.session, a.fcnt), accepted.len());
                        accepted.push((a, vec![heard.to_json()]));
                    }
                    Verdict::Duplicate { dev_eui, session, fcnt } => {
                        inc(&ctx.stats.lorawan_uplinks_duplicate);
                        let key = (dev_eui, session, fcnt);
                        match index.get(&key) {
                            Some(&i) => accepted[i].1.push(heard.to_json()),
                            None => late.push((key, heard.to_json())),
                        }
                    }
                    Verdict::Rejected(_) => {}
                }
            }
        }
        let gateways: Vec<serde_json::Value> = accepted
            .iter()
            .map(|(_, g)| serde_json::Value::Array(g.clone()))
            .collect();
        let topics: Vec<String> = accepted
            .iter()
            .map(|(a, _)| format!("devices/{}/telemetry", a.dev_eui))
            .collect();
        let rows: Vec<NewLorawanUplink<'_>> = accepted
            .iter()
            .zip(&gateways)
            .zip(&topics)
            .map(|(((a, _), g), topic)| NewLorawanUplink {
                dev_eui: &a.dev_eui,
                session: a.session,
                f_cnt: a.fcnt,
                f_port: a.f_port,
                payload: &a.payload,
                gateways: g,
                // FPort 0 (or none) carries MAC commands for the network, not application data:
                // stored with the frame, not published.
                topic: a.f_port.filter(|p| *p > 0).map(|_| topic.as_str()),
            })
            .collect();
        let mut backoff = Duration::from_millis(20);
        // Committed and fanned out under the hub's store turn (backends see ids in order).
        let (telemetry, outcomes) = loop {
            let turn = ctx.hub.store_turn().await;
            match ctx.registry.store_lorawan_uplinks(&rows, now).await {
                Ok(o) => {
                    let telemetry: Vec<Arc<registry::StoredMessage>> = o.telemetry.into_iter().map(Arc::new).collect();
                    ctx.hub.fan_out(&telemetry);
                    drop(turn);
                    break (telemetry, o.outcomes);
                }
                Err(e) => {
                    drop(turn);
                    inc(&ctx.stats.store_failures);
                    tracing::warn!(error = %e, uplinks = rows.len(), retry_in = ?backoff, "LoRaWAN uplink commit failed; retrying (nothing published)");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        };
        drop(rows);
        for (key, reception) in &late {
            if let Err(e) = ctx
                .registry
                .add_lorawan_receptions(&key.0, key.1, key.2, std::slice::from_ref(reception))
                .await
            {
                tracing::warn!(error = %e, "could not record a further LoRaWAN reception");
            }
        }
        let published = telemetry.len() as u64;
        add(&ctx.stats.lorawan_uplinks_accepted, published);
        add(&ctx.stats.messages_stored, published);
        jobs.clear();
        for ((a, g), outcome) in accepted.into_iter().zip(outcomes) {
            match outcome {
                UplinkOutcome::Stored => {}
                UplinkOutcome::Duplicate => inc(&ctx.stats.lorawan_uplinks_duplicate),
                UplinkOutcome::Replayed => {
                    let heard = g.first().cloned().unwrap_or_default();
                    inc(&ctx.stats.lorawan_uplinks_rejected);
                    ctx.stats.rejected("fcnt_replay");
                    ctx.events.emit(
                        NewEvent::new("lorawan.uplink_rejected", "lorawan")
                            .device(&a.dev_eui)
                            .reason(format!(
                                "frame counter {} was already accepted (by another node)",
                                a.fcnt
                            ))
                            .detail(
                                json!({ "check": "fcnt_replay", "dev_eui": a.dev_eui, "gateway": heard["gateway"] }),
                            ),
                    );
                }
            }
        }
    }
}
