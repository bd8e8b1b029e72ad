//! Counters for what the gateway did and refused (exported as metrics by the HTTP server).

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident: $doc:literal,)*) => {
        /// Monotonic counters, cheap to bump from any task.
        #[derive(Debug, Default)]
        pub struct Stats {
            $(#[doc = $doc] pub $name: AtomicU64,)*
            /// Refusals by the check that failed (see [`Stats::rejected`]).
            rejections: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
        }

        /// A point-in-time copy of [`Stats`].
        #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
        pub struct StatsSnapshot {
            $(#[doc = $doc] pub $name: u64,)*
        }

        impl Stats {
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }

            /// `(name, help, value)` for every counter (Prometheus exposition).
            pub fn describe(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($name), $doc, self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    connections_accepted: "TCP connections accepted",
    connections_rate_limited: "TCP connections refused by the per-IP or global rate limit",
    handshakes_completed: "TLS handshakes completed",
    handshakes_failed: "TLS handshakes that failed (bad chain, protocol error)",
    handshakes_timed_out: "TLS handshakes dropped for taking too long",
    chain_verdicts_reused: "client chains accepted on an earlier verdict (same chain bytes, same trust snapshot, inside the validity)",
    chains_rejected: "device certificate chains rejected by the verifier",
    devices_registered: "devices created by just-in-time registration",
    registrations_timed_out: "first connections refused because their registration took longer than mqtt.registration_timeout_secs",
    sessions_opened: "MQTT sessions accepted (CONNACK 0)",
    sessions_refused: "MQTT CONNECTs refused (CONNACK non-zero)",
    sessions_taken_over: "MQTT sessions replaced by a newer connection of the same id",
    clones_suspected: "connections that looked like a cloned device certificate",
    acl_violations: "publishes or subscriptions outside the device's own topics",
    protocol_errors: "connections closed for malformed or unexpected MQTT packets",
    keepalive_timeouts: "sessions closed because the client went silent past 1.5x keep-alive",
    messages_received: "PUBLISH packets received from devices",
    messages_stored: "messages committed to the telemetry store",
    pubacks_sent: "QoS 1 PUBACKs sent to devices (each after its message was stored)",
    store_failures: "telemetry batch commits that failed (retried; never acknowledged)",
    backend_delivered: "messages delivered to backend subscribers",
    backend_overflows: "times a backend subscriber's live queue was full (it then catches up from the store)",
    fan_out_out_of_order: "stored messages handed to backends after a later id (a writer outside the store turn; should stay 0)",
    commands_queued: "commands accepted from backend applications",
    commands_delivered: "commands delivered to devices",
    events_dropped: "events not recorded because the event writer was saturated",
    api_unauthorized: "API requests refused for a missing, invalid or revoked token (401)",
    api_forbidden: "API requests refused because the token's role is insufficient (403)",
    challenges_issued: "attestation challenges issued (MQTT and HTTP)",
    attestations_verified: "attestation answers verified and appraised as good",
    attestations_failed: "attestation answers that failed (nonce, signature, claims or appraisal)",
    attestations_stale: "verdicts that became stale (no fresh evidence within the CA's window)",
    lorawan_joins_accepted: "LoRaWAN join-requests accepted by the join server",
    lorawan_joins_refused: "LoRaWAN join-requests refused (unknown device, MIC, DevNonce replay, malformed)",
    lorawan_joins_throttled: "LoRaWAN join-requests refused because too many were being handled at once",
    lorawan_datagrams_received: "packet-forwarder UDP datagrams received",
    lorawan_datagrams_dropped: "packet-forwarder datagrams dropped as malformed (typed refusal, with an event)",
    lorawan_crc_failed: "LoRaWAN receptions the gateway reported with a failed radio CRC (ignored)",
    lorawan_uplinks_accepted: "LoRaWAN data uplinks verified (MIC, frame counter) and stored",
    lorawan_uplinks_rejected: "LoRaWAN data uplinks refused (unknown DevAddr, MIC, replay, counter gap, malformed)",
    lorawan_uplinks_duplicate: "further receptions of an accepted LoRaWAN frame (other gateways), recorded with it",
    lorawan_uplinks_overloaded: "LoRaWAN data frames dropped unverified because the uplink writer's queue was full (with an event)",
    lorawan_downlinks_sent: "LoRaWAN downlinks (join-accepts) sent to gateways in PULL_RESP",
    lorawan_downlinks_failed: "LoRaWAN downlinks not sent or not transmitted (no downlink path, TX_ACK error)",
    sigfox_frames_accepted: "Sigfox frames verified (CRC, UL-AUTH with the NAK, sequence number) and stored",
    sigfox_frames_rejected: "Sigfox frames refused (malformed, CRC, unknown device, UL-AUTH, replayed sequence number)",
    sigfox_frames_duplicate: "further transmissions (replicas) of an accepted Sigfox message",
    sigfox_messages_lost: "Sigfox sequence numbers skipped between accepted messages (messages lost on the way)",
    sigfox_callbacks_accepted: "Sigfox backend callbacks whose message was stored",
    sigfox_callbacks_rejected: "Sigfox backend callbacks refused (secret, source address, malformed body, unknown device, replayed sequence number)",
    sigfox_callbacks_duplicate: "Sigfox backend callbacks for a message already stored (the backend's retries, other base stations' copies)",
    sigfox_downlinks_sent: "Sigfox downlinks answered to callbacks that asked for one",
    bus_telemetry_published: "stored messages published to JetStream and acknowledged by it",
    bus_telemetry_duplicates: "JetStream publishes its de-duplication window recognised as already stored (a retry)",
    bus_telemetry_dropped: "stored messages not published to JetStream because its buffer was full (each range reported by an event)",
    bus_publish_retries: "JetStream publishes retried after a failure or a missing acknowledgement",
    bus_commands_relayed: "command wake-ups sent to other nodes because the device is not connected here",
    bus_remote_commands: "command wake-ups from other nodes for a device connected here",
    bus_changes_sent: "registry changes announced to other nodes",
    bus_changes_received: "registry changes announced by other nodes and applied here",
    bus_remote_takeovers: "sessions here ended because the device connected to another node",
}

/// Most distinct refusal reasons kept (the checks are a fixed set; this only bounds a mistake).
const MAX_REASONS: usize = 256;

impl Stats {
    /// Counts a refusal under the name of the check that failed (`expired`,
    /// `registry_unavailable`, `mic_mismatch`, …): the labelled counter
    /// `fleetward_rejections_total{reason}`.
    pub fn rejected(&self, reason: &str) {
        let mut map = crate::locks::lock(&self.rejections);
        if let Some(n) = map.get_mut(reason) {
            *n += 1;
        } else if map.len() < MAX_REASONS {
            map.insert(reason.to_owned(), 1);
        }
    }

    /// Refusals so far, by reason.
    pub fn rejections(&self) -> Vec<(String, u64)> {
        crate::locks::lock(&self.rejections)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

/// Adds one.
pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n`.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
