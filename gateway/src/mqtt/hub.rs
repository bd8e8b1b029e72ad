//! The star's centre: which device sessions are online (for takeover and command delivery),
//! recent disconnects (for clone detection), backend subscribers and their persistent
//! sessions. Devices never reach each other through here; only backend applications see
//! device messages, and only devices receive commands.

use super::codec::{DisconnectReason, Qos};
use super::topic::matches;
use crate::locks::lock;
use crate::stats::{Stats, inc};
use registry::StoredMessage;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Something a device session must act on.
#[derive(Debug)]
pub enum DeviceSignal {
    /// New commands are waiting in the registry.
    CommandsPending,
    /// End the session (takeover, revocation, shutdown).
    Close(DisconnectReason),
    /// Challenge the device now (on demand); the reply says whether the challenge was sent.
    Attest(tokio::sync::oneshot::Sender<Result<crate::attestation::Issued, crate::attestation::NotSent>>),
    /// The device's status changed under the session (attestation policy): narrow or widen
    /// what it may touch without ending the session.
    Scope(super::topic::DeviceScope),
}

/// An online device session.
#[derive(Clone, Debug)]
pub struct DeviceHandle {
    pub conn_id: u64,
    pub peer: SocketAddr,
    /// When the session opened (unix ms): of two sessions on two nodes, the older one yields.
    pub since_ms: i64,
    pub signal: mpsc::Sender<DeviceSignal>,
}

/// A device session another node announced (see [`crate::bus::presence`]).
#[derive(Clone, Debug)]
struct Remote {
    node: String,
    conn: u64,
    peer: SocketAddr,
    online: bool,
    /// When it was announced up, or down.
    at: Instant,
}

/// Why a connection looks like a second copy of a device's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloneEvidence {
    /// The device is connected right now from another address.
    ConcurrentElsewhere { other: SocketAddr },
    /// It disconnected from another address moments ago.
    RecentlyElsewhere { other: IpAddr, ago: Duration },
}

/// A backend subscriber's live feed.
#[derive(Debug)]
pub struct BackendFeed {
    pub client_id: String,
    pub conn_id: u64,
    pub filters: RwLock<Vec<(String, Qos)>>,
    pub queue: mpsc::Sender<Arc<StoredMessage>>,
    /// Set when the live queue overflowed: the session catches up from the store.
    pub lagging: AtomicBool,
    pub kill: mpsc::Sender<DisconnectReason>,
}

impl BackendFeed {
    /// The QoS this subscriber gets `topic` at, if it subscribed to it.
    pub fn granted(&self, topic: &str) -> Option<Qos> {
        let filters = crate::locks::read(&self.filters);
        filters.iter().filter(|(f, _)| matches(f, topic)).map(|(_, q)| *q).max()
    }
}

/// What a persistent backend session keeps while its client is away.
#[derive(Clone, Debug, Default)]
pub struct BackendState {
    pub filters: Vec<(String, Qos)>,
    /// Every stored message up to this id was delivered and acknowledged (or skipped).
    pub cursor: i64,
}

/// Most persistent backend sessions kept (past this, an arbitrary one is forgotten).
const MAX_BACKEND_SESSIONS: usize = 1024;

#[derive(Debug)]
pub struct Hub {
    stats: Arc<Stats>,
    devices: Mutex<HashMap<String, DeviceHandle>>,
    device_sessions: Mutex<HashMap<String, Vec<(String, Qos)>>>,
    recent: Mutex<HashMap<String, (IpAddr, Instant)>>,
    backends: RwLock<Vec<Arc<BackendFeed>>>,
    backend_sessions: Mutex<HashMap<String, BackendState>>,
    next_conn: AtomicU64,
    clone_window: Duration,
    /// Every stored message, for in-process consumers (dashboards). Lossy by design: a lagging
    /// receiver skips ahead; backend applications get the lossless path above.
    live: tokio::sync::broadcast::Sender<Arc<StoredMessage>>,
    /// See [`Hub::store_turn`].
    store_turn: tokio::sync::Mutex<()>,
    /// The highest stored id fanned out so far (to detect a writer outside the store turn).
    last_fanned_out: std::sync::atomic::AtomicI64,
    /// The scale-out bus, when NATS is configured.
    bus: std::sync::OnceLock<Arc<crate::bus::Bus>>,
    /// Device sessions on other nodes (announced over the bus).
    remote: Mutex<HashMap<String, Remote>>,
    /// Other nodes, and when each was last heard from.
    nodes: Mutex<HashMap<String, Instant>>,
}

/// A node not heard from for this long is taken to be gone (killed): its sessions count as
/// ended when it was last heard from.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(10);

impl Hub {
    pub fn new(stats: Arc<Stats>, clone_window: Duration) -> Self {
        Hub {
            stats,
            devices: Mutex::default(),
            device_sessions: Mutex::default(),
            recent: Mutex::default(),
            backends: RwLock::default(),
            backend_sessions: Mutex::default(),
            next_conn: AtomicU64::new(1),
            clone_window,
            live: tokio::sync::broadcast::channel(1024).0,
            store_turn: tokio::sync::Mutex::new(()),
            last_fanned_out: std::sync::atomic::AtomicI64::new(0),
            bus: std::sync::OnceLock::new(),
            remote: Mutex::default(),
            nodes: Mutex::default(),
        }
    }

    /// Joins the hub to the scale-out bus (once, at start).
    pub fn set_bus(&self, bus: Arc<crate::bus::Bus>) {
        if self.bus.set(bus.clone()).is_ok() {
            // From here on fan_out offers every commit to it.
            bus.attach_relay();
        }
    }

    pub fn bus(&self) -> Option<&Arc<crate::bus::Bus>> {
        self.bus.get()
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Does a connection of `device_id` from `peer` look like a clone? Judged against this
    /// node's sessions and, with the bus, against the sessions other nodes announced.
    pub fn clone_evidence(&self, device_id: &str, peer: SocketAddr, now: Instant) -> Option<CloneEvidence> {
        if let Some(h) = lock(&self.devices).get(device_id) {
            if h.peer.ip() != peer.ip() {
                return Some(CloneEvidence::ConcurrentElsewhere { other: h.peer });
            }
            return None;
        }
        {
            let mut recent = lock(&self.recent);
            if let Some((ip, at)) = recent.get(device_id).copied() {
                let ago = now.saturating_duration_since(at);
                if ago > self.clone_window {
                    recent.remove(device_id);
                } else if ip != peer.ip() {
                    return Some(CloneEvidence::RecentlyElsewhere { other: ip, ago });
                }
            }
        }
        // Sessions on other nodes are known only through the bus.
        self.bus.get()?;
        let remote = lock(&self.remote).get(device_id).cloned()?;
        if remote.peer.ip() == peer.ip() {
            return None;
        }
        let last_heard = lock(&self.nodes).get(&remote.node).copied();
        let node_alive = last_heard.is_some_and(|t| now.saturating_duration_since(t) <= NODE_TIMEOUT);
        if remote.online && node_alive {
            return Some(CloneEvidence::ConcurrentElsewhere { other: remote.peer });
        }
        let ended = if remote.online {
            last_heard.unwrap_or(remote.at).max(remote.at)
        } else {
            remote.at
        };
        let ago = now.saturating_duration_since(ended);
        (ago <= self.clone_window).then_some(CloneEvidence::RecentlyElsewhere {
            other: remote.peer.ip(),
            ago,
        })
    }

    /// Registers an online session; returns the one it replaces. With the bus, the session is
    /// announced to the other nodes (`judged`: this connection was already judged for cloning
    /// against a session elsewhere).
    pub fn attach_device(&self, device_id: &str, handle: DeviceHandle, judged: bool) -> Option<DeviceHandle> {
        if let Some(bus) = self.bus.get() {
            bus.session_up(device_id, handle.conn_id, handle.peer, handle.since_ms, judged);
        }
        lock(&self.devices).insert(device_id.to_owned(), handle)
    }

    /// Removes a session (only if it is still the registered one) and remembers where it was.
    pub fn detach_device(&self, device_id: &str, conn_id: u64, peer: SocketAddr, now: Instant) {
        let mut devices = lock(&self.devices);
        if devices.get(device_id).is_some_and(|h| h.conn_id == conn_id) {
            devices.remove(device_id);
            drop(devices);
            if let Some(bus) = self.bus.get() {
                bus.session_down(device_id, conn_id, peer);
            }
            let mut recent = lock(&self.recent);
            if recent.len() > 100_000 {
                let window = self.clone_window;
                recent.retain(|_, (_, at)| now.saturating_duration_since(*at) <= window);
            }
            recent.insert(device_id.to_owned(), (peer.ip(), now));
        }
    }

    /// The session of `device_id` open here, if any.
    pub fn device_handle(&self, device_id: &str) -> Option<DeviceHandle> {
        lock(&self.devices).get(device_id).cloned()
    }

    /// Another node is alive (a heartbeat or any announcement).
    pub fn node_alive(&self, node: &str, now: Instant) {
        let mut nodes = lock(&self.nodes);
        match nodes.get_mut(node) {
            Some(t) => *t = now,
            None => {
                nodes.insert(node.to_owned(), now);
            }
        }
    }

    /// Another node stopped: its sessions ended now.
    pub fn node_gone(&self, node: &str, now: Instant) {
        lock(&self.nodes).remove(node);
        for r in lock(&self.remote).values_mut() {
            if r.online && r.node == node {
                r.online = false;
                r.at = now;
            }
        }
    }

    /// Another node opened a session of `device_id`.
    pub fn remote_up(&self, device_id: &str, node: &str, conn: u64, peer: SocketAddr, now: Instant) {
        self.node_alive(node, now);
        let mut remote = lock(&self.remote);
        if remote.len() > 1_000_000 {
            let window = self.clone_window;
            remote.retain(|_, r| r.online || now.saturating_duration_since(r.at) <= window);
        }
        remote.insert(
            device_id.to_owned(),
            Remote {
                node: node.to_owned(),
                conn,
                peer,
                online: true,
                at: now,
            },
        );
    }

    /// Another node's session of `device_id` ended (ignored if a newer one replaced it).
    pub fn remote_down(&self, device_id: &str, node: &str, conn: u64, now: Instant) {
        if let Some(r) = lock(&self.remote).get_mut(device_id)
            && r.node == node
            && r.conn == conn
        {
            r.online = false;
            r.at = now;
        }
    }

    /// Queues a command wake-up for `device_id`: its session here, or (with the bus) the node
    /// holding it. The command itself waits in the registry.
    pub fn command_queued(&self, device_id: &str, command_id: i64) {
        if self.signal_device(device_id, DeviceSignal::CommandsPending) {
            return;
        }
        if let Some(bus) = self.bus.get() {
            bus.command_queued(device_id, command_id);
        }
    }

    /// Tells one particular session something (not a newer session of the same device).
    pub fn signal_conn(&self, device_id: &str, conn_id: u64, signal: DeviceSignal) -> bool {
        let handle = lock(&self.devices)
            .get(device_id)
            .filter(|h| h.conn_id == conn_id)
            .cloned();
        match handle {
            Some(h) => {
                tokio::spawn(async move {
                    let _ = h.signal.send(signal).await;
                });
                true
            }
            None => false,
        }
    }

    pub fn device_online(&self, device_id: &str) -> bool {
        lock(&self.devices).contains_key(device_id)
    }

    pub fn online_devices(&self) -> usize {
        lock(&self.devices).len()
    }

    /// Tells a device's session something, if it is online.
    pub fn signal_device(&self, device_id: &str, signal: DeviceSignal) -> bool {
        let handle = lock(&self.devices).get(device_id).cloned();
        match handle {
            Some(h) => {
                if matches!(signal, DeviceSignal::CommandsPending) {
                    // A full signal queue already holds a wake-up.
                    let _ = h.signal.try_send(signal);
                } else {
                    let tx = h.signal.clone();
                    tokio::spawn(async move {
                        let _ = tx.send(signal).await;
                    });
                }
                true
            }
            None => false,
        }
    }

    /// A persistent device session's subscriptions (taken), or `None` for a fresh session.
    pub fn take_device_session(&self, device_id: &str) -> Option<Vec<(String, Qos)>> {
        lock(&self.device_sessions).remove(device_id)
    }

    pub fn keep_device_session(&self, device_id: &str, filters: Vec<(String, Qos)>) {
        let mut sessions = lock(&self.device_sessions);
        if sessions.len() < 1_000_000 {
            sessions.insert(device_id.to_owned(), filters);
        }
    }

    pub fn forget_device_session(&self, device_id: &str) {
        lock(&self.device_sessions).remove(device_id);
    }

    /// Ends every session (shutdown).
    pub fn close_all(&self, reason: DisconnectReason) {
        let devices: Vec<DeviceHandle> = lock(&self.devices).values().cloned().collect();
        for h in devices {
            let _ = h.signal.try_send(DeviceSignal::Close(reason));
        }
        let backends: Vec<Arc<BackendFeed>> = crate::locks::read(&self.backends).clone();
        for b in backends {
            let _ = b.kill.try_send(reason);
        }
    }

    /// Ends every device session spread over `over` (in 20 steps), so that devices reconnect to
    /// the other replicas without a storm; then ends what is left, backends included. A few
    /// sessions (100 or fewer) are ended at once.
    pub async fn drain(&self, reason: DisconnectReason, over: Duration) {
        let devices: Vec<DeviceHandle> = lock(&self.devices).values().cloned().collect();
        if !over.is_zero() && devices.len() > 100 {
            const STEPS: u32 = 20;
            let per_step = devices.len().div_ceil(STEPS as usize);
            tracing::info!(sessions = devices.len(), over = ?over, "draining MQTT sessions");
            for chunk in devices.chunks(per_step) {
                for h in chunk {
                    let _ = h.signal.try_send(DeviceSignal::Close(reason));
                }
                tokio::time::sleep(over / STEPS).await;
            }
        }
        self.close_all(reason);
    }

    /// Registers a backend subscriber's feed; ends an older connection with the same client id.
    pub fn attach_backend(&self, feed: Arc<BackendFeed>) {
        let mut backends = crate::locks::write(&self.backends);
        backends.retain(|b| {
            if b.client_id == feed.client_id {
                let _ = b.kill.try_send(DisconnectReason::SessionTakenOver);
                inc(&self.stats.sessions_taken_over);
                false
            } else {
                true
            }
        });
        backends.push(feed);
    }

    pub fn detach_backend(&self, client_id: &str, conn_id: u64) {
        let mut backends = crate::locks::write(&self.backends);
        backends.retain(|b| !(b.client_id == client_id && b.conn_id == conn_id));
    }

    pub fn take_backend_session(&self, client_id: &str) -> Option<BackendState> {
        lock(&self.backend_sessions).remove(client_id)
    }

    pub fn keep_backend_session(&self, client_id: &str, state: BackendState) {
        let mut sessions = lock(&self.backend_sessions);
        if sessions.len() >= MAX_BACKEND_SESSIONS
            && !sessions.contains_key(client_id)
            && let Some(oldest) = sessions.keys().next().cloned()
        {
            sessions.remove(&oldest);
        }
        sessions.insert(client_id.to_owned(), state);
    }

    /// Stored messages as they are committed (in-process consumers; may skip when lagging).
    pub fn subscribe_stored(&self) -> tokio::sync::broadcast::Receiver<Arc<StoredMessage>> {
        self.live.subscribe()
    }

    /// The turn under which telemetry is stored and then fanned out. Every writer (the MQTT
    /// batcher, LoRaWAN, Sigfox) commits and calls [`Hub::fan_out`] while holding it, so ids
    /// reach backend sessions in increasing order, and a backend's catch-up read never passes
    /// an id this process has yet to commit. Backend sessions rely on both: their cursor is the
    /// highest id seen. Held for one commit; nothing else is awaited under it.
    pub async fn store_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.store_turn.lock().await
    }

    /// Before a writer stores `n` messages: how many of them one commit may hold (with a bus, no
    /// more than the JetStream relay's buffer), once the relay has room for them. It waits while
    /// the relay is draining (see [`crate::bus::Bus::wait_for_relay_room`]), so devices that
    /// outrun the relay are slowed instead of their messages missing the bus.
    pub async fn wait_for_bus_room(&self, n: usize) -> usize {
        match self.bus.get() {
            Some(bus) => bus.wait_for_relay_room(n).await,
            None => n,
        }
    }

    /// Hands stored messages to every backend subscriber whose filters match. Never waits: a
    /// full queue marks the subscriber lagging, and it re-reads what it missed from the store.
    /// Call it under [`Hub::store_turn`], with the messages that turn committed.
    pub fn fan_out(&self, messages: &[Arc<StoredMessage>]) {
        for m in messages {
            let before = self.last_fanned_out.fetch_max(m.id, Ordering::AcqRel);
            if m.id <= before {
                // A writer outside the store turn: a backend would skip this message live
                // (it is still in the store).
                inc(&self.stats.fan_out_out_of_order);
                tracing::warn!(id = m.id, after = before, "stored message fanned out after a later one");
            }
        }
        if self.live.receiver_count() > 0 {
            for m in messages {
                let _ = self.live.send(m.clone());
            }
        }
        if let Some(bus) = self.bus.get() {
            bus.offer_telemetry(messages);
        }
        let backends: Vec<Arc<BackendFeed>> = crate::locks::read(&self.backends).clone();
        for feed in &backends {
            if feed.lagging.load(Ordering::Acquire) {
                continue;
            }
            for m in messages {
                if feed.granted(&m.topic).is_none() {
                    continue;
                }
                if feed.queue.try_send(m.clone()).is_err() {
                    feed.lagging.store(true, Ordering::Release);
                    inc(&self.stats.backend_overflows);
                    break;
                }
            }
        }
    }
}
