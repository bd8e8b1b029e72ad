//! The scale-out bus: what crosses gateway nodes through NATS, when `nats_url` is set.
//!
//! Gateways stay stateless replicas over PostgreSQL (state) and NATS (messages):
//!
//! - **Telemetry** every node stores (MQTT, LoRaWAN, Sigfox) is published to JetStream on
//!   `fleetward.telemetry.{device}`, at least once: each publish waits for JetStream's ack and is
//!   retried until it comes, and the stored message's id (`Nats-Msg-Id`) lets JetStream drop a
//!   retry it already holds. The relay's buffer is bounded ([`telemetry`]).
//! - **Commands** queued on one node wake the node holding the device's connection
//!   (`fleetward.commands.{device}`); the command itself waits in the shared registry.
//! - **Registry changes** (revocations, quarantines, CAs) are announced on
//!   `fleetward.registry.changed`; every node reloads its trust snapshot and ends the sessions
//!   the change forbids, at once rather than at its next poll.
//! - **Presence** (`fleetward.presence.{device}`): which node holds which device, from which
//!   address, so a device moving to another node takes its session over, and one certificate
//!   used from two places is caught across nodes ([`presence`]).
//!
//! Nothing on a device's path waits for NATS: announcements go through a bounded queue to one
//! publisher task, telemetry through the relay's buffer. With NATS down, devices are served;
//! their telemetry waits in the store and is published from there when NATS is back.

pub mod presence;
pub mod telemetry;

use crate::eventlog::EventSink;
use crate::mqtt::codec::DisconnectReason;
use crate::mqtt::hub::{DeviceSignal, Hub};
use crate::stats::{Stats, inc};
use crate::trust::TrustState;
use bytes::Bytes;
use futures_util::StreamExt;
use registry::{DeviceStatus, Registry, StoredMessage};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Subject prefix of stored telemetry (`fleetward.telemetry.{device}`).
pub const TELEMETRY_PREFIX: &str = "fleetward.telemetry.";
/// How long a telemetry writer waits for room in the relay's buffer while the relay publishes
/// nothing (NATS connected but JetStream not acknowledging): then it stores anyway.
pub const RELAY_STALL: Duration = Duration::from_millis(200);
/// Subject prefix of command wake-ups (`fleetward.commands.{device}`).
pub const COMMANDS_PREFIX: &str = "fleetward.commands.";
/// Subject of registry change announcements.
pub const CHANGES_SUBJECT: &str = "fleetward.registry.changed";
/// Subject prefix of presence announcements (`fleetward.presence.{device}`).
pub const PRESENCE_PREFIX: &str = "fleetward.presence.";
/// Subject prefix of node heartbeats (`fleetward.nodes.{node}`).
pub const NODES_PREFIX: &str = "fleetward.nodes.";
/// How often a node says it is alive (see [`crate::mqtt::hub::NODE_TIMEOUT`]).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// How a node joins the bus.
#[derive(Clone, Debug)]
pub struct BusSettings {
    pub url: String,
    /// This node's name (unique among the nodes).
    pub node: String,
    pub telemetry: telemetry::RelaySettings,
}

/// Announcements waiting for the publisher task; past this they are dropped and counted (each
/// kind has a slower path that still gets there: the trust poll, a reconnecting device's
/// command check, the clone window).
const ANNOUNCE_QUEUE: usize = 16_384;

/// This node's side of the bus.
#[derive(Debug)]
pub struct Bus {
    client: async_nats::Client,
    node: String,
    announce: mpsc::Sender<(String, Bytes)>,
    relay: telemetry::Relay,
    stats: Arc<Stats>,
}

/// A registry change announced to the other nodes.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Change {
    /// The announcing node (a node ignores its own announcements).
    pub node: String,
    /// Devices whose status changed, with the new status.
    #[serde(default)]
    pub devices: Vec<DeviceChange>,
    /// Provisioning CAs, CRLs or revocation lists changed: reload the trust snapshot.
    #[serde(default)]
    pub trust: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceChange {
    pub id: String,
    pub status: DeviceStatus,
    /// The session stays and its scope follows the status (an attestation policy's change);
    /// otherwise a session the status forbids is ended.
    #[serde(default)]
    pub scope_only: bool,
}

/// A node's heartbeat, or its goodbye at shutdown.
#[derive(Debug, Serialize, Deserialize)]
struct Heartbeat {
    node: String,
    alive: bool,
}

/// A command wake-up.
#[derive(Debug, Serialize, Deserialize)]
struct CommandWakeUp {
    node: String,
    command_id: i64,
}

/// What the bus's listeners act on.
#[derive(Clone, Debug)]
pub struct BusCtx {
    pub hub: Arc<Hub>,
    pub trust: Arc<TrustState>,
    pub registry: Registry,
    pub events: EventSink,
    pub stats: Arc<Stats>,
    pub clone_policy: crate::mqtt::ClonePolicy,
}

impl Bus {
    /// Connects (in the background: a NATS server that is down at start is retried, and the
    /// gateway serves devices meanwhile) and starts the publisher, the telemetry relay and the
    /// listeners. The returned tasks end when `stop` flips (the relay after draining its
    /// buffer for a few seconds).
    pub async fn start(
        settings: BusSettings,
        ctx: BusCtx,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<(Arc<Bus>, Vec<JoinHandle<()>>)> {
        let node = settings.node.clone();
        let client = async_nats::ConnectOptions::new()
            .name(format!("fleetward {node}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("NATS connected"),
                    async_nats::Event::Disconnected => tracing::warn!("NATS disconnected; reconnecting"),
                    other => tracing::debug!(event = %other, "NATS"),
                }
            })
            .connect(settings.url.as_str())
            .await
            .map_err(|e| anyhow::anyhow!("cannot use NATS at {}: {e}", settings.url))?;
        let (announce, announce_rx) = mpsc::channel(ANNOUNCE_QUEUE);
        let (relay, relay_tasks) = telemetry::Relay::start(
            async_nats::jetstream::new(client.clone()),
            ctx.registry.clone(),
            settings.telemetry.clone(),
            ctx.stats.clone(),
            ctx.events.clone(),
            stop.clone(),
        )
        .await?;
        let bus = Arc::new(Bus {
            client: client.clone(),
            node,
            announce,
            relay,
            stats: ctx.stats.clone(),
        });
        let mut tasks = relay_tasks;
        tasks.push(tokio::spawn(publisher(client.clone(), announce_rx, stop.clone())));
        let commands = client
            .subscribe(format!("{COMMANDS_PREFIX}>"))
            .await
            .map_err(|e| anyhow::anyhow!("cannot subscribe to NATS command wake-ups: {e}"))?;
        let changes = client
            .subscribe(CHANGES_SUBJECT)
            .await
            .map_err(|e| anyhow::anyhow!("cannot subscribe to NATS registry changes: {e}"))?;
        let presence = client
            .subscribe(format!("{PRESENCE_PREFIX}>"))
            .await
            .map_err(|e| anyhow::anyhow!("cannot subscribe to NATS presence: {e}"))?;
        let nodes = client
            .subscribe(format!("{NODES_PREFIX}>"))
            .await
            .map_err(|e| anyhow::anyhow!("cannot subscribe to NATS node heartbeats: {e}"))?;
        tasks.push(tokio::spawn(heartbeat(bus.clone(), ctx.clone(), nodes, stop.clone())));
        tasks.push(tokio::spawn(listen_commands(
            bus.clone(),
            ctx.clone(),
            commands,
            stop.clone(),
        )));
        tasks.push(tokio::spawn(listen_changes(
            bus.clone(),
            ctx.clone(),
            changes,
            stop.clone(),
        )));
        tasks.push(tokio::spawn(presence::listen(bus.clone(), ctx, presence, stop)));
        Ok((bus, tasks))
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Is the connection to NATS up right now (readiness, metrics)?
    pub fn connected(&self) -> bool {
        matches!(self.client.connection_state(), async_nats::connection::State::Connected)
    }

    /// Every message committed from now on is offered ([`Bus::offer_telemetry`]): the relay may
    /// take them from the writers rather than from the store.
    pub fn attach_relay(&self) {
        self.relay.attach();
    }

    /// Hands stored messages to the JetStream relay (never waits; see [`telemetry::Relay`]).
    pub fn offer_telemetry(&self, messages: &[Arc<StoredMessage>]) {
        self.relay.offer(messages);
    }

    /// Of `n` messages about to be committed, how many one commit may hand the relay (at most
    /// its buffer's size), once its buffer has room for them and the relay takes from the
    /// writers. It waits as long as NATS is connected and the relay keeps draining: a relay
    /// slower than the devices then slows the devices, as a full telemetry store does, instead
    /// of falling behind into the store. When NATS is away, or the relay has published nothing
    /// for [`RELAY_STALL`] (and not since), it returns at once; past the buffer the relay defers
    /// to the store and publishes from there later (devices keep being served).
    pub async fn wait_for_relay_room(&self, n: usize) -> usize {
        self.relay.wait_for_room(n, || self.connected()).await
    }

    /// Messages waiting in the relay's buffer.
    pub fn telemetry_backlog(&self) -> usize {
        self.relay.backlog()
    }

    /// Stored messages JetStream has not acknowledged yet, the deferred ones included.
    pub fn telemetry_unpublished(&self) -> u64 {
        self.relay.unpublished()
    }

    /// Queues an announcement for the publisher task (never waits).
    fn announce(&self, subject: String, payload: Vec<u8>) {
        if self.announce.try_send((subject, Bytes::from(payload))).is_err() {
            tracing::warn!("NATS announcement queue full; an announcement was dropped");
        }
    }

    /// Wakes the node holding `device_id`'s connection: a command waits for it in the registry.
    pub fn command_queued(&self, device_id: &str, command_id: i64) {
        inc(&self.stats.bus_commands_relayed);
        let body = CommandWakeUp {
            node: self.node.clone(),
            command_id,
        };
        if let Ok(json) = serde_json::to_vec(&body) {
            self.announce(format!("{COMMANDS_PREFIX}{device_id}"), json);
        }
    }

    /// Tells the other nodes about a registry change made here (after its commit).
    pub fn registry_changed(&self, devices: Vec<DeviceChange>, trust: bool) {
        inc(&self.stats.bus_changes_sent);
        let change = Change {
            node: self.node.clone(),
            devices,
            trust,
        };
        if let Ok(json) = serde_json::to_vec(&change) {
            self.announce(CHANGES_SUBJECT.to_owned(), json);
        }
    }
}

/// Publishes queued announcements, in order; while NATS is away the client buffers them.
async fn publisher(
    client: async_nats::Client,
    mut rx: mpsc::Receiver<(String, Bytes)>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (subject, payload) = tokio::select! {
            next = rx.recv() => match next { Some(m) => m, None => break },
            _ = stop.changed() => break,
        };
        if let Err(e) = client.publish(subject, payload).await {
            tracing::warn!(error = %e, "could not publish an announcement to NATS");
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
}

/// Says this node is alive every [`HEARTBEAT_EVERY`], tracks the other nodes' heartbeats, and
/// says goodbye at shutdown (the other nodes then count its sessions as ended).
async fn heartbeat(bus: Arc<Bus>, ctx: BusCtx, mut sub: async_nats::Subscriber, mut stop: watch::Receiver<bool>) {
    let subject = format!("{NODES_PREFIX}{}", bus.node);
    let beat = |alive: bool| {
        serde_json::to_vec(&Heartbeat {
            node: bus.node.clone(),
            alive,
        })
        .map(Bytes::from)
        .unwrap_or_default()
    };
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // Never waits on a NATS that is away: the heartbeat is skipped.
                if bus.connected() {
                    let _ = bus.client.publish(subject.clone(), beat(true)).await;
                }
            }
            next = sub.next() => match next {
                Some(msg) => match serde_json::from_slice::<Heartbeat>(&msg.payload) {
                    Ok(h) if h.node == bus.node => {}
                    Ok(h) if h.alive => ctx.hub.node_alive(&h.node, crate::clock::monotonic()),
                    Ok(h) => ctx.hub.node_gone(&h.node, crate::clock::monotonic()),
                    Err(e) => tracing::warn!(error = %e, "unreadable node heartbeat on NATS"),
                },
                None => break,
            },
            _ = stop.changed() => break,
        }
    }
    if bus.connected() {
        let _ = bus.client.publish(subject, beat(false)).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), bus.client.flush()).await;
    }
}

/// The device id at the end of `subject` after `prefix`.
fn device_of<'a>(subject: &'a str, prefix: &str) -> Option<&'a str> {
    subject.strip_prefix(prefix).filter(|d| !d.is_empty())
}

async fn listen_commands(bus: Arc<Bus>, ctx: BusCtx, mut sub: async_nats::Subscriber, mut stop: watch::Receiver<bool>) {
    loop {
        let msg = tokio::select! {
            next = sub.next() => match next { Some(m) => m, None => break },
            _ = stop.changed() => break,
        };
        let Some(device) = device_of(msg.subject.as_str(), COMMANDS_PREFIX) else {
            continue;
        };
        match serde_json::from_slice::<CommandWakeUp>(&msg.payload) {
            Ok(w) if w.node == bus.node => {}
            Ok(w) => {
                if ctx.hub.signal_device(device, DeviceSignal::CommandsPending) {
                    inc(&ctx.stats.bus_remote_commands);
                    tracing::debug!(device, command = w.command_id, from = %w.node, "command wake-up from another node");
                }
            }
            Err(e) => tracing::warn!(subject = %msg.subject, error = %e, "unreadable command wake-up on NATS"),
        }
    }
}

async fn listen_changes(bus: Arc<Bus>, ctx: BusCtx, mut sub: async_nats::Subscriber, mut stop: watch::Receiver<bool>) {
    loop {
        let msg = tokio::select! {
            next = sub.next() => match next { Some(m) => m, None => break },
            _ = stop.changed() => break,
        };
        let change = match serde_json::from_slice::<Change>(&msg.payload) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable registry change on NATS");
                continue;
            }
        };
        if change.node == bus.node {
            continue;
        }
        inc(&ctx.stats.bus_changes_received);
        apply_remote_change(&ctx, &change).await;
    }
}

/// What a node does with another node's change: forget what it remembers of the devices, end
/// the sessions their new status forbids, and reload the trust snapshot.
pub async fn apply_remote_change(ctx: &BusCtx, change: &Change) {
    for d in &change.devices {
        ctx.registry.forget_device(&d.id);
        match d.status {
            DeviceStatus::Revoked => ctx.trust.note_revoked(&d.id),
            DeviceStatus::Quarantined | DeviceStatus::Pending | DeviceStatus::Active => {}
        }
        if d.scope_only && d.status != DeviceStatus::Revoked {
            let scope = if d.status == DeviceStatus::Active {
                crate::mqtt::topic::DeviceScope::Full
            } else {
                crate::mqtt::topic::DeviceScope::AttestationOnly
            };
            ctx.hub.signal_device(&d.id, DeviceSignal::Scope(scope));
        } else if d.status != DeviceStatus::Active {
            ctx.hub
                .signal_device(&d.id, DeviceSignal::Close(DisconnectReason::NotAuthorized));
        }
    }
    if let Err(e) = crate::server::apply_trust_change(&ctx.trust, &ctx.registry, &ctx.hub).await {
        // The 1-second poll retries.
        tracing::warn!(error = %e, from = %change.node, "could not reload trust after another node's change");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_come_from_the_whole_rest_of_the_subject() {
        assert_eq!(device_of("fleetward.commands.dev-1", COMMANDS_PREFIX), Some("dev-1"));
        assert_eq!(device_of("fleetward.commands.a.b", COMMANDS_PREFIX), Some("a.b"));
        assert_eq!(device_of("fleetward.commands.", COMMANDS_PREFIX), None);
        assert_eq!(device_of("other.dev", COMMANDS_PREFIX), None);
    }

    #[test]
    fn a_change_reads_back_and_tolerates_missing_fields() {
        let c = Change {
            node: "a".into(),
            devices: vec![DeviceChange {
                id: "d".into(),
                status: DeviceStatus::Revoked,
                scope_only: false,
            }],
            trust: true,
        };
        let json = serde_json::to_vec(&c).expect("serializes");
        assert_eq!(serde_json::from_slice::<Change>(&json).expect("reads"), c);
        let bare: Change = serde_json::from_str(r#"{"node":"b"}"#).expect("reads");
        assert!(bare.devices.is_empty() && !bare.trust);
    }
}
