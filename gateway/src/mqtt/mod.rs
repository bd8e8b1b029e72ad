//! fleetward's MQTT layer: a star, not a general broker. Devices publish into their own
//! subtree and receive commands; backend applications (API-token login) subscribe to device
//! messages and publish commands. Framing is rumqttd's codec ([`codec`]); sessions are ours.

pub mod backend;
pub mod conn;
pub mod device;
pub mod hub;
pub mod topic;

pub use mqtt_codec as codec;

use crate::eventlog::EventSink;
use crate::ingest::Ingest;
use crate::stats::Stats;
use crate::trust::TrustState;
use registry::Registry;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// What happens when a device certificate shows up from two places at once (or in quick
/// succession from two addresses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClonePolicy {
    /// The newer connection takes over; the suspicion is recorded (event + audit finding).
    #[default]
    Allow,
    /// The second connection is refused (CONNACK "not authorized").
    Refuse,
    /// The device is quarantined (it may then only attest) and the newer connection proceeds.
    Quarantine,
}

/// Session limits.
#[derive(Clone, Debug)]
pub struct SessionSettings {
    /// Largest MQTT packet accepted (bytes).
    pub max_packet: usize,
    /// QoS 1 messages a client may have unacknowledged in each direction.
    pub max_inflight: usize,
    /// A peer that does not read for this long is disconnected.
    pub write_timeout: Duration,
    /// CONNECT must arrive within this after the handshake.
    pub connect_timeout: Duration,
    /// A first connection whose registration takes longer is refused (CONNACK 3, retryable).
    pub registration_timeout: Duration,
    /// How long a command waits for an offline device.
    pub command_ttl: Duration,
    pub clone_policy: ClonePolicy,
    /// Messages a backend subscriber may have queued before it catches up from the store.
    pub backend_queue: usize,
    /// Devices are admitted from this node's cache only while the registry confirmed the trust
    /// snapshot within this long.
    pub cache_max_staleness: Duration,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            max_packet: 256 * 1024,
            max_inflight: 64,
            write_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            registration_timeout: Duration::from_secs(5),
            command_ttl: Duration::from_secs(24 * 3600),
            clone_policy: ClonePolicy::Allow,
            backend_queue: 4096,
            cache_max_staleness: Duration::from_secs(300),
        }
    }
}

/// What every session needs.
#[derive(Debug)]
pub struct Ctx {
    pub registry: Registry,
    pub hub: Arc<hub::Hub>,
    pub ingest: Ingest,
    /// Where registry writes run (see [`crate::storage`]).
    pub storage: crate::storage::Storage,
    pub events: EventSink,
    pub stats: Arc<Stats>,
    pub trust: Arc<TrustState>,
    pub attestor: Arc<crate::attestation::Attestor>,
    pub settings: SessionSettings,
}
