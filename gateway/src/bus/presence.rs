//! Presence across nodes: which node holds a device's connection, from which address.
//!
//! A node announces each device session it opens (`up`) and ends (`down`) on
//! `fleetward.presence.{device}`. Every node keeps the other nodes' announcements in its hub, so
//! a connection is judged for cloning against the whole deployment
//! ([`crate::mqtt::hub::Hub::clone_evidence`]) without a round trip.
//!
//! When two nodes open a session for one device at nearly the same time, neither has seen the
//! other's announcement yet. Each then receives the other's `up`; the node holding the *older*
//! session (earlier `since_ms`, then the node name) decides, so exactly one of them acts:
//!
//! - same address, or the newer node already judged the connection: the newer session takes
//!   over (MQTT's rule for a client id), and the older one is closed;
//! - another address, not yet judged: a clone suspicion (counter, `device.clone_suspected`
//!   event), then the clone policy: `allow` takes over, `refuse` asks the newer node to close
//!   its session (`kick`), `quarantine` quarantines the device in the registry and announces it,
//!   which ends both sessions.

use super::{Bus, BusCtx, DeviceChange, PRESENCE_PREFIX, device_of};
use crate::clock::{monotonic, now_ms};
use crate::mqtt::ClonePolicy;
use crate::mqtt::codec::DisconnectReason;
use crate::mqtt::hub::DeviceSignal;
use crate::stats::inc;
use futures_util::StreamExt;
use registry::{DeviceStatus, NewEvent};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;

/// What a presence announcement says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A session opened on `node`.
    Up,
    /// That session ended.
    Down,
    /// `target_node` must close its session `conn` of this device (clone policy `refuse`).
    Kick,
}

/// One announcement on `fleetward.presence.{device}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub kind: Kind,
    pub node: String,
    pub conn: u64,
    pub peer: SocketAddr,
    /// When the session opened (unix ms), to tell the older of two sessions.
    pub since_ms: i64,
    /// The announcing node already judged this connection for cloning (it saw the other
    /// session): the receiver only takes over.
    #[serde(default)]
    pub judged: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node: Option<String>,
}

impl Bus {
    /// Announces a session opened here.
    pub fn session_up(&self, device_id: &str, conn: u64, peer: SocketAddr, since_ms: i64, judged: bool) {
        self.presence(
            device_id,
            &Presence {
                kind: Kind::Up,
                node: self.node.clone(),
                conn,
                peer,
                since_ms,
                judged,
                target_node: None,
            },
        );
    }

    /// Announces a session ended here.
    pub fn session_down(&self, device_id: &str, conn: u64, peer: SocketAddr) {
        self.presence(
            device_id,
            &Presence {
                kind: Kind::Down,
                node: self.node.clone(),
                conn,
                peer,
                since_ms: now_ms(),
                judged: false,
                target_node: None,
            },
        );
    }

    fn kick(&self, device_id: &str, target: &Presence) {
        self.presence(
            device_id,
            &Presence {
                kind: Kind::Kick,
                node: self.node.clone(),
                conn: target.conn,
                peer: target.peer,
                since_ms: now_ms(),
                judged: true,
                target_node: Some(target.node.clone()),
            },
        );
    }

    fn presence(&self, device_id: &str, p: &Presence) {
        if let Ok(json) = serde_json::to_vec(p) {
            self.announce(format!("{PRESENCE_PREFIX}{device_id}"), json);
        }
    }
}

pub(super) async fn listen(
    bus: Arc<Bus>,
    ctx: BusCtx,
    mut sub: async_nats::Subscriber,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let msg = tokio::select! {
            next = sub.next() => match next { Some(m) => m, None => break },
            _ = stop.changed() => break,
        };
        let Some(device) = device_of(msg.subject.as_str(), PRESENCE_PREFIX) else {
            continue;
        };
        match serde_json::from_slice::<Presence>(&msg.payload) {
            Ok(p) if p.node == bus.node => {}
            Ok(p) => on_presence(&bus, &ctx, device, &p).await,
            Err(e) => tracing::warn!(subject = %msg.subject, error = %e, "unreadable presence announcement on NATS"),
        }
    }
}

async fn on_presence(bus: &Bus, ctx: &BusCtx, device: &str, p: &Presence) {
    let now = monotonic();
    match p.kind {
        Kind::Down => ctx.hub.remote_down(device, &p.node, p.conn, now),
        Kind::Kick => {
            if p.target_node.as_deref() == Some(bus.node()) {
                ctx.hub
                    .signal_conn(device, p.conn, DeviceSignal::Close(DisconnectReason::NotAuthorized));
            }
        }
        Kind::Up => {
            ctx.hub.remote_up(device, &p.node, p.conn, p.peer, now);
            let Some(local) = ctx.hub.device_handle(device) else {
                return;
            };
            // The node with the older session decides (see the module's notes).
            let local_is_older = (local.since_ms, bus.node()) < (p.since_ms, p.node.as_str());
            if !local_is_older {
                return;
            }
            let clone = local.peer.ip() != p.peer.ip() && !p.judged;
            if clone {
                inc(&ctx.stats.clones_suspected);
                let policy = match ctx.clone_policy {
                    ClonePolicy::Allow => "allowed",
                    ClonePolicy::Refuse => "refused",
                    ClonePolicy::Quarantine => "quarantined",
                };
                ctx.events.emit(
                    NewEvent::new("device.clone_suspected", "gateway")
                        .device(device)
                        .reason("certificate connected concurrently from two addresses (two gateway nodes)")
                        .detail(serde_json::json!({
                            "first_peer": local.peer.to_string(), "second_peer": p.peer.to_string(),
                            "first_node": bus.node(), "second_node": p.node, "policy": policy,
                        })),
                );
                match ctx.clone_policy {
                    ClonePolicy::Allow => {}
                    ClonePolicy::Refuse => {
                        // The first connection keeps its session; the second is closed.
                        bus.kick(device, p);
                        return;
                    }
                    ClonePolicy::Quarantine => {
                        let changed = ctx.registry.set_device_status(
                            device,
                            DeviceStatus::Quarantined,
                            "gateway",
                            "clone suspected",
                            now_ms(),
                        );
                        match Box::pin(changed).await {
                            Ok(_) => bus.registry_changed(
                                vec![DeviceChange {
                                    id: device.to_owned(),
                                    status: DeviceStatus::Quarantined,
                                    scope_only: false,
                                }],
                                false,
                            ),
                            Err(e) => tracing::warn!(device, error = %e, "could not quarantine a suspected clone"),
                        }
                        ctx.registry.forget_device(device);
                        ctx.hub.signal_conn(
                            device,
                            local.conn_id,
                            DeviceSignal::Close(DisconnectReason::NotAuthorized),
                        );
                        return;
                    }
                }
            }
            if ctx.hub.signal_conn(
                device,
                local.conn_id,
                DeviceSignal::Close(DisconnectReason::SessionTakenOver),
            ) {
                inc(&ctx.stats.bus_remote_takeovers);
                inc(&ctx.stats.sessions_taken_over);
                ctx.events.emit(
                    NewEvent::new("device.session_taken_over", "gateway")
                        .device(device)
                        .detail(serde_json::json!({
                            "previous_peer": local.peer.to_string(), "peer": p.peer.to_string(),
                            "node": p.node,
                        })),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announcement_reads_back() {
        let p = Presence {
            kind: Kind::Up,
            node: "a".into(),
            conn: 4,
            peer: "127.0.0.2:5000".parse().expect("addr"),
            since_ms: 1,
            judged: false,
            target_node: None,
        };
        let json = serde_json::to_string(&p).expect("serializes");
        assert!(json.contains(r#""kind":"up""#), "{json}");
        assert_eq!(serde_json::from_str::<Presence>(&json).expect("reads"), p);
    }
}
