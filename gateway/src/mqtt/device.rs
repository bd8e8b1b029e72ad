//! A device's MQTT session, from its CONNECT to its last byte: just-in-time registration during
//! this very connection, lifecycle and identity checks, clone policy, then the session loop
//! (publishes into the durable pipeline, PUBACK after commit; commands out with an in-flight
//! window; keep-alive at 1.5×; will on abnormal end).

use super::codec::{Connect, ConnectCode, DisconnectReason, Incoming, Publish, Qos};
use super::conn::{Conn, ConnError};
use super::hub::{CloneEvidence, DeviceHandle, DeviceSignal};
use super::topic::{DeviceScope, device_may_publish, device_may_subscribe, matches};
use super::{ClonePolicy, Ctx};
use crate::attestation::{AttestError, Issued, NotSent, Submission};
use crate::clock::{monotonic, now_ms};
use crate::ingest::{AckTo, IngestItem};
use crate::stats::inc;
use registry::{DeviceStatus, NewEvent, Sighting, Source, TelemetryMessage};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use verifier::x509::VerifiedDevice;

/// The TLS facts recorded with each sighting.
#[derive(Clone, Debug)]
pub struct TlsFacts {
    pub peer: SocketAddr,
    pub version: Option<String>,
    pub suite: Option<String>,
    pub leaf_der: Vec<u8>,
    /// When the TCP connection was accepted (the connect latency's start).
    pub accepted: std::time::Instant,
}

/// How a device session ended (for tests and the demo's summary).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Refused(ConnectCode, &'static str),
    Closed(&'static str),
}

fn refuse_event(device_id: &str, check: &'static str, reason: String, peer: SocketAddr) -> NewEvent {
    NewEvent::new("device.refused", "gateway")
        .device(device_id)
        .reason(reason)
        .detail(serde_json::json!({ "check": check, "peer": peer.to_string() }))
}

/// Runs a device session after its handshake and CONNECT.
///
/// Registry calls are boxed: their futures are large, and an unboxed one would make every
/// idle session's task as big as the largest query it might ever run.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: Arc<Ctx>,
    mut conn: Conn<S>,
    connect: Connect,
    device: Arc<VerifiedDevice>,
    mut tls: TlsFacts,
) -> Outcome {
    let id = device.device_id.as_str().to_owned();
    tracing::Span::current().record("device", id.as_str());
    let peer = tls.peer;
    let accepted = tls.accepted;
    let enc = conn.encoder();

    // Refusal helper: CONNACK with a code, event, counter.
    macro_rules! refuse {
        ($code:expr, $check:literal, $reason:expr) => {{
            enc.connack($code, false, &mut conn.out);
            ctx.events.emit(refuse_event(&id, $check, $reason, peer));
            inc(&ctx.stats.sessions_refused);
            ctx.stats.rejected($check);
            Box::pin(conn.close()).await;
            return Outcome::Refused($code, $check);
        }};
    }

    // Just-in-time registration: in this connection, before CONNACK.
    let snapshot = ctx.trust.snapshot();
    let ca_id = device.ca.sha256.clone();
    let auto_activate = snapshot.auto_activate.get(&ca_id).copied().unwrap_or(false);
    // A device this process already admitted reconnects from the registry's directory (no
    // transaction; its bookkeeping is written in bulk). Otherwise the registration runs on the
    // storage thread (see `crate::storage`): one wake-up here instead of one per statement. The
    // certificate and TLS facts move there (the session keeps no use for them).
    let peer_text = peer.to_string();
    let cert_not_after_ms = device.certificate.not_after.unix().saturating_mul(1000);
    // The cache is trusted only while the registry confirmed the trust snapshot recently: a
    // revocation made elsewhere during a long database outage is not missed for longer.
    let cache_fresh = ctx
        .trust
        .staleness(monotonic())
        .is_some_and(|age| age <= ctx.settings.cache_max_staleness);
    let known = if cache_fresh {
        ctx.registry.admit_known(
            &Sighting {
                device_id: &id,
                ca_id: &ca_id,
                cert_der: &[],
                cert_sha256: &device.certificate.sha256,
                cert_serial: &device.certificate.serial,
                cert_not_after_ms,
                peer: Some(&peer_text),
                tls_version: tls.version.as_deref(),
                tls_suite: tls.suite.as_deref(),
            },
            now_ms(),
        )
    } else {
        None
    };
    let registration = match known {
        Some(admission) => Ok(admission),
        None => {
            let registry = ctx.registry.clone();
            let (device_id, ca_id) = (id.clone(), ca_id.clone());
            let (cert_sha256, cert_serial) = (device.certificate.sha256.clone(), device.certificate.serial.clone());
            let (leaf_der, tls_version, tls_suite) =
                (std::mem::take(&mut tls.leaf_der), tls.version.take(), tls.suite.take());
            let work = async move {
                let sighting = Sighting {
                    device_id: &device_id,
                    ca_id: &ca_id,
                    cert_der: &leaf_der,
                    cert_sha256: &cert_sha256,
                    cert_serial: &cert_serial,
                    cert_not_after_ms,
                    peer: Some(&peer_text),
                    tls_version: tls_version.as_deref(),
                    tls_suite: tls_suite.as_deref(),
                };
                registry.register_and_remember(&sighting, auto_activate, now_ms()).await
            };
            // Boxed: the registration's state (~1.7 KiB) would otherwise size the session future
            // for as long as the device stays connected.
            // A registration caught waiting on the pool when the database goes away is refused
            // as soon as the probe says so (the device retries), not at the pool's timeout.
            let outage = ctx.registry.clone();
            let limit = ctx.settings.registration_timeout;
            tokio::select! {
                done = Box::pin(tracing::Instrument::instrument(
                    ctx.storage.run(work),
                    tracing::info_span!(target: crate::observability::SPANS, "device.registration", device = %id),
                )) => match done {
                    Ok(Ok(r)) => Ok(r),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(stopped) => Err(stopped.to_string()),
                },
                _ = Box::pin(async move { outage.until_unreachable().await }) => Err("database unreachable".to_owned()),
                // The registration goes on without us (it runs on the storage thread); the
                // device, told to retry, finds it done.
                () = tokio::time::sleep(limit) => {
                    inc(&ctx.stats.registrations_timed_out);
                    Err(format!("registration took longer than {limit:?}"))
                }
            }
        }
    };
    let registration = match registration {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(device = %id, error = %e, "registry unavailable during connect");
            refuse!(
                ConnectCode::ServerUnavailable,
                "registry_unavailable",
                "the registry could not record the connection; retry later".into()
            );
        }
    };
    // The session keeps only what it uses: a long-lived idle session should not hold the
    // certificate, the verdict or the trust snapshot.
    let cert_sha256 = device.certificate.sha256.clone();
    let status = registration.status;
    let registered_now = registration.created;
    if registration.created {
        inc(&ctx.stats.devices_registered);
        tracing::info!(device = %id, status = status.as_str(), "device registered just in time");
    }
    drop((snapshot, device, tls, registration));

    let mut scope = match status {
        DeviceStatus::Active => DeviceScope::Full,
        DeviceStatus::Quarantined => DeviceScope::AttestationOnly,
        DeviceStatus::Pending => refuse!(
            ConnectCode::NotAuthorized,
            "device_pending",
            "device is pending approval by an operator".into()
        ),
        DeviceStatus::Revoked => {
            ctx.trust.note_revoked(&id);
            refuse!(ConnectCode::NotAuthorized, "device_revoked", "device is revoked".into())
        }
    };

    // MQTT client id must be the certificate's device id (empty: we assign it).
    if !connect.client_id.is_empty() && connect.client_id != id {
        refuse!(
            ConnectCode::ClientIdNotValid,
            "client_id_mismatch",
            format!(
                "client id `{}` is not the certificate's device id",
                connect.client_id.escape_debug()
            )
        );
    }
    if let Some(will) = &connect.will
        && !device_may_publish(&id, scope, &will.topic)
    {
        {
            inc(&ctx.stats.acl_violations);
            refuse!(
                ConnectCode::NotAuthorized,
                "will_topic_forbidden",
                format!(
                    "will topic `{}` is outside the device's own topics",
                    will.topic.escape_debug()
                )
            );
        }
    }

    // Clone detection and session takeover.
    let now = monotonic();
    let evidence = ctx.hub.clone_evidence(&id, peer, now);
    let judged = evidence.is_some();
    if let Some(evidence) = evidence {
        inc(&ctx.stats.clones_suspected);
        let (other, detail) = match &evidence {
            CloneEvidence::ConcurrentElsewhere { other } => {
                (other.to_string(), "connected concurrently from two addresses")
            }
            CloneEvidence::RecentlyElsewhere { other, .. } => (
                other.to_string(),
                "connected from two addresses within the clone window",
            ),
        };
        let action = match ctx.settings.clone_policy {
            ClonePolicy::Allow => "allowed",
            ClonePolicy::Refuse => "refused",
            ClonePolicy::Quarantine => "quarantined",
        };
        ctx.events.emit(
            NewEvent::new("device.clone_suspected", "gateway")
                .device(&id)
                .reason(format!("certificate {detail}"))
                .detail(serde_json::json!({
                    "first_peer": other, "second_peer": peer.to_string(),
                    "cert_sha256": cert_sha256, "policy": action,
                })),
        );
        match ctx.settings.clone_policy {
            ClonePolicy::Allow => {}
            ClonePolicy::Refuse => refuse!(
                ConnectCode::NotAuthorized,
                "clone_suspected",
                "refused: the device's certificate is already in use elsewhere".into()
            ),
            ClonePolicy::Quarantine => {
                if scope != DeviceScope::AttestationOnly {
                    let quarantine = ctx.registry.set_device_status(
                        &id,
                        DeviceStatus::Quarantined,
                        "gateway",
                        "clone suspected",
                        now_ms(),
                    );
                    if Box::pin(quarantine).await.is_ok()
                        && let Some(bus) = ctx.hub.bus()
                    {
                        // The session elsewhere ends; the device comes back attestation-only.
                        bus.registry_changed(
                            vec![crate::bus::DeviceChange {
                                id: id.clone(),
                                status: DeviceStatus::Quarantined,
                                scope_only: false,
                            }],
                            false,
                        );
                    }
                }
                scope = DeviceScope::AttestationOnly;
            }
        }
    }
    let conn_id = ctx.hub.next_conn_id();
    let (signal_tx, mut signal_rx) = mpsc::channel(4);
    let handle = DeviceHandle {
        conn_id,
        peer,
        since_ms: now_ms(),
        signal: signal_tx,
    };
    if let Some(previous) = ctx.hub.attach_device(&id, handle, judged) {
        inc(&ctx.stats.sessions_taken_over);
        let _ = previous
            .signal
            .try_send(DeviceSignal::Close(DisconnectReason::SessionTakenOver));
        ctx.events.emit(
            NewEvent::new("device.session_taken_over", "gateway")
                .device(&id)
                .detail(serde_json::json!({ "previous_peer": previous.peer.to_string(), "peer": peer.to_string() })),
        );
    }

    let previous_session = if connect.clean_session {
        ctx.hub.forget_device_session(&id);
        None
    } else {
        ctx.hub.take_device_session(&id)
    };
    let session_present = previous_session.is_some();
    enc.connack(ConnectCode::Accepted, session_present, &mut conn.out);
    inc(&ctx.stats.sessions_opened);
    tracing::debug!(
        version = enc.version.as_str(),
        clean = connect.clean_session,
        "session open"
    );

    let mut session = Session {
        ctx: ctx.clone(),
        id: id.clone(),
        scope,
        subs: previous_session.unwrap_or_default(),
        inflight_in: 0,
        out_inflight: HashMap::new(),
        next_pkid: 1,
        challenged: false,
        next_challenge: None,
    };
    let (ack_tx, mut ack_rx) = mpsc::channel::<u16>(ctx.settings.max_inflight);
    if session.wants_commands() {
        session.deliver_commands(&mut conn).await;
    }
    // A persistent session that already covers the challenge topic is challenged at once.
    if session.granted(&session.challenge_topic()).is_some() {
        let _ = session.send_challenge(&mut conn).await;
    }
    let keep_alive =
        (connect.keep_alive_secs > 0).then(|| Duration::from_millis(u64::from(connect.keep_alive_secs) * 1500));
    let mut deadline = tokio::time::Instant::now() + keep_alive.unwrap_or(Duration::from_secs(3600));
    // The connect latency ends when the CONNACK is written (the first flush below).
    let mut connect_latency = Some(if registered_now {
        &ctx.stats.connect_new
    } else {
        &ctx.stats.connect_known
    });

    let end: Result<&'static str, ConnError> = 'session: loop {
        // Handle every packet already buffered (unless too many messages await the store).
        while session.inflight_in < ctx.settings.max_inflight {
            let packet = match conn.next_packet() {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => break 'session Err(e.into()),
            };
            match session.handle(packet, &mut conn, &ack_tx).await {
                Ok(Some(end)) => break 'session Ok(end),
                Ok(None) => {}
                Err(e) => break 'session Err(e),
            }
        }
        if let Err(e) = conn.flush().await {
            break 'session Err(e);
        }
        if let Some(histogram) = connect_latency.take() {
            histogram.record(monotonic().saturating_duration_since(accepted));
        }
        tokio::select! {
            read = conn.fill(), if session.inflight_in < ctx.settings.max_inflight => match read {
                Ok(0) => break 'session Ok("connection closed by the device"),
                Ok(_) => {
                    if let Some(k) = keep_alive {
                        deadline = tokio::time::Instant::now() + k;
                    }
                }
                Err(e) => break 'session Err(e.into()),
            },
            Some(pkid) = ack_rx.recv() => {
                session.inflight_in = session.inflight_in.saturating_sub(1);
                enc.puback(pkid, &mut conn.out);
                inc(&ctx.stats.pubacks_sent);
                // Batch further acks that are already here.
                while let Ok(pkid) = ack_rx.try_recv() {
                    session.inflight_in = session.inflight_in.saturating_sub(1);
                    enc.puback(pkid, &mut conn.out);
                    inc(&ctx.stats.pubacks_sent);
                }
            }
            Some(signal) = signal_rx.recv() => match signal {
                DeviceSignal::CommandsPending => {
                    if session.wants_commands() {
                        session.deliver_commands(&mut conn).await;
                    }
                }
                DeviceSignal::Attest(reply) => {
                    let sent = session.send_challenge(&mut conn).await;
                    let _ = reply.send(sent);
                }
                DeviceSignal::Scope(scope) => session.set_scope(scope),
                DeviceSignal::Close(reason) => {
                    enc.disconnect(reason, &mut conn.out);
                    break 'session Ok(match reason {
                        DisconnectReason::SessionTakenOver => "session taken over",
                        DisconnectReason::ServerShuttingDown => "server shutting down",
                        DisconnectReason::NotAuthorized => "device no longer authorized",
                        _ => "closed by the server",
                    });
                }
            },
            _ = sleep_until_opt(session.next_challenge), if session.next_challenge.is_some() => {
                session.next_challenge = None;
                let _ = session.send_challenge(&mut conn).await;
            }
            _ = tokio::time::sleep_until(deadline), if keep_alive.is_some() => {
                inc(&ctx.stats.keepalive_timeouts);
                enc.disconnect(DisconnectReason::KeepAliveTimeout, &mut conn.out);
                break 'session Ok("keep-alive timeout");
            }
        }
    };

    // Wait briefly for acknowledgements of messages already handed to the store, so a device
    // that disconnects right after publishing still gets its PUBACKs when it can.
    let graceful = matches!(end, Ok("client sent DISCONNECT"));
    let reason = match &end {
        Ok(r) => *r,
        Err(ConnError::Codec(_)) => {
            inc(&ctx.stats.protocol_errors);
            "protocol error"
        }
        Err(_) => "connection error",
    };
    if let Err(e) = &end {
        tracing::debug!(device = %id, error = %e, "session ended");
    }
    if !graceful
        && !matches!(reason, "session taken over" | "server shutting down")
        && let Some(will) = &connect.will
    {
        {
            let _ = ctx
                .ingest
                .submit(IngestItem {
                    msg: TelemetryMessage {
                        device_id: id.clone(),
                        topic: will.topic.clone(),
                        payload: will.payload.to_vec(),
                        qos: will.qos as u8,
                        source: Source::Mqtt,
                        received_at_ms: now_ms(),
                    },
                    ack: None,
                })
                .await;
        }
    }
    ctx.hub.detach_device(&id, conn_id, peer, monotonic());
    if !connect.clean_session {
        ctx.hub.keep_device_session(&id, std::mem::take(&mut session.subs));
    }
    Box::pin(conn.close()).await;
    Outcome::Closed(reason)
}

struct Session {
    ctx: Arc<Ctx>,
    id: String,
    scope: DeviceScope,
    subs: Vec<(String, Qos)>,
    /// QoS 1 messages handed to the store and not yet acknowledged.
    inflight_in: usize,
    /// Commands sent at QoS 1 awaiting the device's PUBACK: packet id → command id.
    out_inflight: HashMap<u16, i64>,
    next_pkid: u16,
    /// A challenge was sent in this connection (the first one goes out when the device
    /// subscribes to its challenge topic).
    challenged: bool,
    /// When the device is challenged again (`attestation.interval_secs`).
    next_challenge: Option<tokio::time::Instant>,
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Session {
    /// Handles one packet; `Some(reason)` ends the session.
    async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        packet: Incoming,
        conn: &mut Conn<S>,
        ack_tx: &mpsc::Sender<u16>,
    ) -> Result<Option<&'static str>, ConnError> {
        let enc = conn.encoder();
        match packet {
            Incoming::Publish(p) => return self.publish(p, conn, ack_tx).await,
            Incoming::PubAck { pkid } => {
                if let Some(command_id) = self.out_inflight.remove(&pkid) {
                    inc(&self.ctx.stats.commands_delivered);
                    if let Err(e) = Box::pin(self.ctx.registry.mark_command_delivered(command_id, now_ms())).await {
                        tracing::warn!(device = %self.id, error = %e, "could not mark a command delivered; it will be resent");
                    }
                    self.deliver_commands(conn).await;
                }
            }
            Incoming::Subscribe { pkid, filters } => {
                let mut granted = Vec::with_capacity(filters.len());
                for f in filters {
                    if device_may_subscribe(&self.id, self.scope, &f.filter) {
                        let qos = if f.qos == 0 { Qos::AtMostOnce } else { Qos::AtLeastOnce };
                        self.subs.retain(|(existing, _)| existing != &f.filter);
                        self.subs.push((f.filter, qos));
                        granted.push(Some(qos));
                    } else {
                        inc(&self.ctx.stats.acl_violations);
                        self.ctx.events.emit(
                            NewEvent::new("device.acl_violation", "gateway")
                                .device(&self.id)
                                .reason(format!(
                                    "subscription to `{}` outside the device's own topics",
                                    f.filter.escape_debug()
                                ))
                                .detail(serde_json::json!({ "action": "subscribe", "filter": f.filter })),
                        );
                        granted.push(None);
                    }
                }
                enc.suback(pkid, &granted, &mut conn.out);
                if self.wants_commands() {
                    self.deliver_commands(conn).await;
                }
                if !self.challenged && self.granted(&self.challenge_topic()).is_some() {
                    let _ = self.send_challenge(conn).await;
                }
            }
            Incoming::Unsubscribe { pkid, filters } => {
                self.subs.retain(|(f, _)| !filters.contains(f));
                enc.unsuback(pkid, filters.len(), &mut conn.out);
            }
            Incoming::PingReq => enc.pingresp(&mut conn.out),
            Incoming::Disconnect => return Ok(Some("client sent DISCONNECT")),
            Incoming::Connect(_) => {
                return Err(ConnError::Codec(super::codec::CodecError::Unexpected("second CONNECT")));
            }
        }
        Ok(None)
    }

    async fn publish<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        p: Publish,
        conn: &mut Conn<S>,
        ack_tx: &mpsc::Sender<u16>,
    ) -> Result<Option<&'static str>, ConnError> {
        inc(&self.ctx.stats.messages_received);
        if !device_may_publish(&self.id, self.scope, &p.topic) {
            inc(&self.ctx.stats.acl_violations);
            let why = if self.scope == DeviceScope::AttestationOnly {
                "quarantined device may only publish attestation evidence"
            } else {
                "publish outside the device's own topics"
            };
            self.ctx.events.emit(
                NewEvent::new("device.acl_violation", "gateway")
                    .device(&self.id)
                    .reason(format!("{why}: `{}`", p.topic.escape_debug()))
                    .detail(serde_json::json!({ "action": "publish", "topic": p.topic })),
            );
            conn.encoder()
                .disconnect(DisconnectReason::NotAuthorized, &mut conn.out);
            return Ok(Some("topic trespass"));
        }
        if self.is_evidence_topic(&p.topic) {
            // Boxed: evidence is rare, and inline it would add ~0.8 KiB to every session.
            return Box::pin(self.evidence(p, conn)).await;
        }
        let item = IngestItem {
            msg: TelemetryMessage {
                device_id: self.id.clone(),
                topic: p.topic,
                payload: p.payload.to_vec(),
                qos: p.qos as u8,
                source: Source::Mqtt,
                received_at_ms: now_ms(),
            },
            ack: (p.qos == Qos::AtLeastOnce).then(|| AckTo {
                tx: ack_tx.clone(),
                pkid: p.pkid,
            }),
        };
        if self.ctx.ingest.submit(item).await.is_err() {
            return Ok(Some("server shutting down"));
        }
        if p.qos == Qos::AtLeastOnce {
            self.inflight_in += 1;
        }
        Ok(None)
    }

    fn challenge_topic(&self) -> String {
        format!("devices/{}/attestation/challenge", self.id)
    }

    /// `devices/{id}/attestation/evidence`, checked without allocating (every publish asks).
    fn is_evidence_topic(&self, topic: &str) -> bool {
        topic
            .strip_prefix("devices/")
            .and_then(|rest| rest.strip_prefix(self.id.as_str()))
            == Some("/attestation/evidence")
    }

    /// Issues a challenge and publishes it on the device's challenge topic (QoS 0: a lost
    /// challenge is simply answered never, and the next one is as good).
    async fn send_challenge<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
    ) -> Result<Issued, NotSent> {
        let topic = self.challenge_topic();
        if self.granted(&topic).is_none() {
            return Err(NotSent::NotSubscribed);
        }
        let issued = match Box::pin(self.ctx.attestor.challenge(&self.id)).await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(device = %self.id, error = %e, "could not issue an attestation challenge");
                return Err(NotSent::Unavailable);
            }
        };
        conn.encoder()
            .publish(&topic, &issued.payload(), Qos::AtMostOnce, 0, false, &mut conn.out);
        self.challenged = true;
        self.next_challenge = self
            .ctx
            .attestor
            .settings
            .interval
            .map(|i| tokio::time::Instant::now() + i);
        Ok(issued)
    }

    /// An answer on `devices/{id}/attestation/evidence`: appraised at once (not telemetry), the
    /// verdict published on `…/attestation/result` when the device subscribed to it, the PUBACK
    /// sent once the verdict is recorded.
    async fn evidence<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        p: Publish,
        conn: &mut Conn<S>,
    ) -> Result<Option<&'static str>, ConnError> {
        #[derive(serde::Deserialize)]
        struct Payload {
            device_id: Option<String>,
            nonce: String,
            format: String,
            signature_hex: Option<String>,
            token_b64: Option<String>,
        }
        let attestor = self.ctx.attestor.clone();
        let parsed = serde_json::from_slice::<Payload>(&p.payload);
        let verdict = match parsed {
            Ok(body) if body.device_id.as_deref().is_none_or(|d| d == self.id) => {
                let submission = Submission {
                    device_id: self.id.clone(),
                    nonce: body.nonce,
                    format: body.format,
                    signature_hex: body.signature_hex,
                    token_b64: body.token_b64,
                };
                match Box::pin(attestor.evidence(&submission)).await {
                    Ok(v) => Ok(v),
                    Err(AttestError::BadRequest { message, .. }) => {
                        Box::pin(attestor.malformed(&self.id, &message)).await
                    }
                    Err(e) => Err(e),
                }
            }
            Ok(_) => {
                Box::pin(attestor.malformed(&self.id, "the evidence names another device than the connected one")).await
            }
            Err(e) => {
                let message = format!("evidence is not the attestation JSON: {e}");
                Box::pin(attestor.malformed(&self.id, &message)).await
            }
        };
        let verdict = match verdict {
            Ok(v) => v,
            Err(e) => {
                // Not recorded: no PUBACK, so a QoS 1 answer is sent again.
                tracing::warn!(device = %self.id, error = %e, "could not record an attestation answer");
                return Ok(None);
            }
        };
        let enc = conn.encoder();
        if p.qos == Qos::AtLeastOnce {
            enc.puback(p.pkid, &mut conn.out);
            inc(&self.ctx.stats.pubacks_sent);
        }
        let result_topic = format!("devices/{}/attestation/result", self.id);
        if self.granted(&result_topic).is_some() {
            let payload = serde_json::to_vec(&verdict).unwrap_or_default();
            enc.publish(&result_topic, &payload, Qos::AtMostOnce, 0, false, &mut conn.out);
        }
        self.set_scope(match verdict.status {
            DeviceStatus::Active => DeviceScope::Full,
            _ => DeviceScope::AttestationOnly,
        });
        Ok(None)
    }

    /// Narrows or widens what the device may touch; subscriptions outside a narrowed scope end.
    fn set_scope(&mut self, scope: DeviceScope) {
        if scope == self.scope {
            return;
        }
        self.scope = scope;
        let id = self.id.clone();
        self.subs.retain(|(f, _)| device_may_subscribe(&id, scope, f));
    }

    fn wants_commands(&self) -> bool {
        !self.subs.is_empty() && self.scope == DeviceScope::Full
    }

    fn granted(&self, topic: &str) -> Option<Qos> {
        self.subs
            .iter()
            .filter(|(f, _)| matches(f, topic))
            .map(|(_, q)| *q)
            .max()
    }

    /// Sends pending commands the device subscribed to, within the in-flight window.
    async fn deliver_commands<S: AsyncRead + AsyncWrite + Unpin>(&mut self, conn: &mut Conn<S>) {
        let window = self.ctx.settings.max_inflight;
        if self.out_inflight.len() >= window {
            return;
        }
        let limit = u32::try_from(window + self.out_inflight.len()).unwrap_or(u32::MAX);
        let pending = match Box::pin(self.ctx.registry.pending_commands(&self.id, now_ms(), limit)).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(device = %self.id, error = %e, "could not load pending commands");
                return;
            }
        };
        let in_flight: HashSet<i64> = self.out_inflight.values().copied().collect();
        let enc = conn.encoder();
        for command in pending {
            if self.out_inflight.len() >= window {
                break;
            }
            if in_flight.contains(&command.id) {
                continue;
            }
            let Some(granted) = self.granted(&command.topic) else {
                continue;
            };
            let qos = if command.qos == 0 { Qos::AtMostOnce } else { granted };
            if qos == Qos::AtLeastOnce {
                let pkid = self.next_pkid();
                enc.publish(&command.topic, &command.payload, qos, pkid, false, &mut conn.out);
                self.out_inflight.insert(pkid, command.id);
            } else {
                enc.publish(&command.topic, &command.payload, qos, 0, false, &mut conn.out);
                inc(&self.ctx.stats.commands_delivered);
                let _ = Box::pin(self.ctx.registry.mark_command_delivered(command.id, now_ms())).await;
            }
        }
    }

    fn next_pkid(&mut self) -> u16 {
        loop {
            let pkid = self.next_pkid;
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.out_inflight.contains_key(&pkid) {
                return pkid;
            }
        }
    }
}
