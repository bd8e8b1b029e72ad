//! A backend application's MQTT session: an operator's service logs in with username `token`
//! and an API token (role operator or admin), subscribes to device messages with wildcards,
//! and publishes commands to `devices/{id}/commands/…`.
//!
//! Delivery is driven by the durable store, so a slow subscriber never costs unbounded memory
//! and never loses a stored message: live messages arrive through a bounded queue; when that
//! queue overflows, the session re-reads what it missed from the telemetry store by id, then
//! returns to the live feed. A persistent session (clean session off) keeps its cursor while
//! the application is away and resumes from the first message it had not acknowledged.

use super::Ctx;
use super::codec::{Connect, ConnectCode, DisconnectReason, Incoming, Qos};
use super::conn::{Conn, ConnError};
use super::hub::{BackendFeed, BackendState};
use super::topic::{backend_may_subscribe, command_target};
use crate::clock::now_ms;
use crate::stats::inc;
use registry::{NewEvent, Role, StoredMessage};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

/// Messages read from the store per catch-up query.
const REPLAY_PAGE: u32 = 500;

/// Runs a backend session after its CONNECT (no client certificate).
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: Arc<Ctx>,
    mut conn: Conn<S>,
    connect: Connect,
    peer: SocketAddr,
) -> &'static str {
    let enc = conn.encoder();
    let token = match (connect.username.as_deref(), connect.password.as_deref()) {
        (Some("token"), Some(token)) => token.to_owned(),
        _ => {
            let why = "no client certificate, and no API token (username `token`, password = token)";
            refuse(&ctx, conn, peer, ConnectCode::NotAuthorized, Some(why)).await;
            return "refused: no credentials";
        }
    };
    let info = match Box::pin(ctx.registry.authenticate_token(&token, now_ms())).await {
        Ok(Some(info)) => info,
        Ok(None) => {
            let why = "invalid or revoked API token";
            refuse(&ctx, conn, peer, ConnectCode::BadUsernameOrPassword, Some(why)).await;
            return "refused: bad token";
        }
        Err(e) => {
            tracing::warn!(error = %e, "registry unavailable for token check");
            refuse(&ctx, conn, peer, ConnectCode::ServerUnavailable, None).await;
            return "refused: registry unavailable";
        }
    };
    if !matches!(info.role, Role::Admin | Role::Operator) {
        let why = "API token role may not use MQTT (operator or admin required)";
        refuse(&ctx, conn, peer, ConnectCode::NotAuthorized, Some(why)).await;
        return "refused: role";
    }
    let actor = format!("token:{}", info.id);
    let conn_id = ctx.hub.next_conn_id();
    let client_id = if connect.client_id.is_empty() {
        format!("backend-{conn_id}")
    } else {
        connect.client_id.clone()
    };

    let (queue_tx, mut queue_rx) = mpsc::channel(ctx.settings.backend_queue.max(1));
    let (kill_tx, mut kill_rx) = mpsc::channel(2);
    let resumed = if connect.clean_session {
        let _ = ctx.hub.take_backend_session(&client_id);
        None
    } else {
        ctx.hub.take_backend_session(&client_id)
    };
    let session_present = resumed.is_some();
    let feed = Arc::new(BackendFeed {
        client_id: client_id.clone(),
        conn_id,
        filters: std::sync::RwLock::new(resumed.as_ref().map(|s| s.filters.clone()).unwrap_or_default()),
        queue: queue_tx,
        lagging: std::sync::atomic::AtomicBool::new(false),
        kill: kill_tx,
    });
    // Attach first, then read the head: everything committed later is either queued or
    // recovered by catch-up.
    ctx.hub.attach_backend(feed.clone());
    let (seen, replay) = match &resumed {
        Some(state) => (state.cursor, true),
        None => match Box::pin(ctx.registry.telemetry_head()).await {
            Ok(head) => (head, false),
            Err(_) => {
                ctx.hub.detach_backend(&client_id, conn_id);
                enc.connack(ConnectCode::ServerUnavailable, false, &mut conn.out);
                Box::pin(conn.close()).await;
                return "refused: registry unavailable";
            }
        },
    };
    enc.connack(ConnectCode::Accepted, session_present, &mut conn.out);
    inc(&ctx.stats.sessions_opened);
    tracing::info!(client = %client_id, peer = %peer, actor = %actor, "backend session open");

    let mut s = Backend {
        ctx: ctx.clone(),
        feed: feed.clone(),
        actor,
        seen,
        replay,
        pending: VecDeque::new(),
        inflight: BTreeMap::new(),
        next_pkid: 1,
    };
    let keep_alive =
        (connect.keep_alive_secs > 0).then(|| Duration::from_millis(u64::from(connect.keep_alive_secs) * 1500));
    let mut deadline = tokio::time::Instant::now() + keep_alive.unwrap_or(Duration::from_secs(3600));
    let window = ctx.settings.max_inflight;

    let end: Result<&'static str, ConnError> = 'session: loop {
        loop {
            let packet = match conn.next_packet() {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => break 'session Err(e.into()),
            };
            match s.handle(packet, &mut conn).await {
                Ok(Some(end)) => break 'session Ok(end),
                Ok(None) => {}
                Err(e) => break 'session Err(e),
            }
        }
        // Send what is ready, within the window.
        while s.inflight.len() < window {
            let Some(m) = s.pending.pop_front() else { break };
            s.send(&m, &mut conn);
        }
        if let Err(e) = conn.flush().await {
            break 'session Err(e);
        }
        if s.feed.lagging.swap(false, Ordering::AcqRel) {
            s.replay = true;
        }
        let room = s.pending.is_empty() && s.inflight.len() < window;
        if room && s.replay {
            // Catch up from the store (without waiting on the socket).
            match Box::pin(s.ctx.registry.telemetry_after(s.seen, REPLAY_PAGE)).await {
                Ok(page) if page.is_empty() => s.replay = false,
                Ok(page) => {
                    for m in page {
                        s.consider(Arc::new(m));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "catch-up read failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            continue;
        }
        tokio::select! {
            read = conn.fill() => match read {
                Ok(0) => break 'session Ok("connection closed by the application"),
                Ok(_) => {
                    if let Some(k) = keep_alive {
                        deadline = tokio::time::Instant::now() + k;
                    }
                }
                Err(e) => break 'session Err(e.into()),
            },
            Some(m) = queue_rx.recv(), if room => s.consider(m),
            Some(reason) = kill_rx.recv() => {
                enc.disconnect(reason, &mut conn.out);
                break 'session Ok("closed by the server");
            }
            _ = tokio::time::sleep_until(deadline), if keep_alive.is_some() => {
                inc(&ctx.stats.keepalive_timeouts);
                break 'session Ok("keep-alive timeout");
            }
        }
    };
    ctx.hub.detach_backend(&client_id, conn_id);
    if !connect.clean_session {
        let filters = crate::locks::read(&feed.filters).clone();
        ctx.hub.keep_backend_session(
            &client_id,
            BackendState {
                filters,
                cursor: s.committed(),
            },
        );
    }
    let reason = match end {
        Ok(r) => r,
        Err(ConnError::Codec(e)) => {
            inc(&ctx.stats.protocol_errors);
            tracing::debug!(client = %client_id, error = %e, "backend protocol error");
            "protocol error"
        }
        Err(_) => "connection error",
    };
    Box::pin(conn.close()).await;
    reason
}

/// CONNACK with a refusal, an event (none for our own outage), a counter; then close.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Ctx,
    mut conn: Conn<S>,
    peer: SocketAddr,
    code: ConnectCode,
    reason: Option<&str>,
) {
    conn.encoder().connack(code, false, &mut conn.out);
    if let Some(reason) = reason {
        ctx.events.emit(
            NewEvent::new("backend.refused", "gateway")
                .reason(reason.to_owned())
                .detail(serde_json::json!({ "peer": peer.to_string(), "code": code.v311_code() })),
        );
    }
    inc(&ctx.stats.sessions_refused);
    Box::pin(conn.close()).await;
}

struct Backend {
    ctx: Arc<Ctx>,
    feed: Arc<BackendFeed>,
    actor: String,
    /// Highest stored id considered (delivered, queued for delivery, or not subscribed).
    seen: i64,
    /// Reading from the store instead of the live queue.
    replay: bool,
    pending: VecDeque<(Arc<StoredMessage>, Qos)>,
    /// QoS 1 deliveries awaiting PUBACK: packet id → stored id.
    inflight: BTreeMap<u16, i64>,
    next_pkid: u16,
}

impl Backend {
    fn consider(&mut self, m: Arc<StoredMessage>) {
        if m.id <= self.seen {
            return;
        }
        self.seen = m.id;
        if let Some(granted) = self.feed.granted(&m.topic) {
            let qos = if m.qos == 0 { Qos::AtMostOnce } else { granted };
            self.pending.push_back((m, qos));
        }
    }

    fn send<S: AsyncRead + AsyncWrite + Unpin>(&mut self, (m, qos): &(Arc<StoredMessage>, Qos), conn: &mut Conn<S>) {
        let enc = conn.encoder();
        let pkid = if *qos == Qos::AtLeastOnce {
            let pkid = loop {
                let p = self.next_pkid;
                self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
                if !self.inflight.contains_key(&p) {
                    break p;
                }
            };
            self.inflight.insert(pkid, m.id);
            pkid
        } else {
            0
        };
        enc.publish(&m.topic, &m.payload, *qos, pkid, false, &mut conn.out);
        inc(&self.ctx.stats.backend_delivered);
    }

    /// Everything up to this id is delivered and acknowledged (or skipped).
    fn committed(&self) -> i64 {
        let oldest_unacked = self.inflight.values().min().copied();
        let oldest_pending = self.pending.front().map(|(m, _)| m.id);
        match oldest_unacked.into_iter().chain(oldest_pending).min() {
            Some(id) => id - 1,
            None => self.seen,
        }
    }

    async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        packet: Incoming,
        conn: &mut Conn<S>,
    ) -> Result<Option<&'static str>, ConnError> {
        let enc = conn.encoder();
        match packet {
            Incoming::Subscribe { pkid, filters } => {
                let mut granted = Vec::with_capacity(filters.len());
                let mut current = crate::locks::write(&self.feed.filters);
                for f in filters {
                    if backend_may_subscribe(&f.filter) {
                        let qos = if f.qos == 0 { Qos::AtMostOnce } else { Qos::AtLeastOnce };
                        current.retain(|(existing, _)| existing != &f.filter);
                        current.push((f.filter, qos));
                        granted.push(Some(qos));
                    } else {
                        granted.push(None);
                    }
                }
                drop(current);
                enc.suback(pkid, &granted, &mut conn.out);
            }
            Incoming::Unsubscribe { pkid, filters } => {
                crate::locks::write(&self.feed.filters).retain(|(f, _)| !filters.contains(f));
                enc.unsuback(pkid, filters.len(), &mut conn.out);
            }
            Incoming::PubAck { pkid } => {
                self.inflight.remove(&pkid);
            }
            Incoming::Publish(p) => {
                let Some(device_id) = command_target(&p.topic).map(str::to_owned) else {
                    self.ctx
                        .events
                        .emit(NewEvent::new("backend.acl_violation", &self.actor).reason(format!(
                            "publish to `{}`: backends publish only to devices/{{id}}/commands/…",
                            p.topic.escape_debug()
                        )));
                    inc(&self.ctx.stats.acl_violations);
                    enc.disconnect(DisconnectReason::NotAuthorized, &mut conn.out);
                    return Ok(Some("publish outside devices/{id}/commands/"));
                };
                let ttl = i64::try_from(self.ctx.settings.command_ttl.as_millis()).unwrap_or(i64::MAX);
                let queued =
                    self.ctx
                        .registry
                        .enqueue_command(&device_id, &p.topic, &p.payload, p.qos as u8, ttl, now_ms());
                match Box::pin(queued).await {
                    Ok(command_id) => {
                        inc(&self.ctx.stats.commands_queued);
                        if p.qos == Qos::AtLeastOnce {
                            enc.puback(p.pkid, &mut conn.out);
                        }
                        self.ctx.hub.command_queued(&device_id, command_id);
                    }
                    Err(e) => {
                        // Not acknowledged: the application resends on reconnect.
                        tracing::warn!(device = %device_id, error = %e, "could not queue a command");
                        return Ok(Some("registry unavailable"));
                    }
                }
            }
            Incoming::PingReq => enc.pingresp(&mut conn.out),
            Incoming::Disconnect => return Ok(Some("application sent DISCONNECT")),
            Incoming::Connect(_) => {
                return Err(ConnError::Codec(super::codec::CodecError::Unexpected("second CONNECT")));
            }
        }
        Ok(None)
    }
}
