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
            /// TCP accept to CONNACK written, for devices registered just in time by this very
            /// connection (`fleetward_connect_duration_seconds{device="new"}`).
            pub connect_new: LatencyHistogram,
            /// The same for devices already registered (`{device="known"}`).
            pub connect_known: LatencyHistogram,
            /// TCP accept to the end of the TLS handshake, devices and backends alike
            /// (`fleetward_tls_handshake_duration_seconds`).
            pub handshake: LatencyHistogram,
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
    bus_telemetry_deferred: "stored messages the JetStream relay's buffer had no room for, published from the store instead (each range reported by an event)",
    bus_telemetry_from_store: "stored messages the JetStream relay read back from the store (deferred ones, and those committed before it took from the writers)",
    bus_telemetry_republished: "stored messages of a stopped relay's outbox published to JetStream by the relay that adopted it",
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

/// Upper bounds of the latency histograms' buckets, in microseconds (exported in seconds as
/// Prometheus `le` labels). Fine below 10 ms, where a connect's latency lives; coarse above,
/// where only outages and timeouts land.
pub const LATENCY_BOUNDS_US: [u64; 20] = [
    250, 500, 750, 1_000, 1_500, 2_000, 3_000, 4_000, 5_000, 7_500, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// What `fleetward_connect_duration_seconds` (OTLP: `fleetward.connect_duration`) measures.
pub const CONNECT_DURATION_HELP: &str = "device connections accepted, from TCP accept to CONNACK written: \
     device=\"new\" when this connection registered the device just in time";
/// What `fleetward_tls_handshake_duration_seconds` (OTLP: `fleetward.tls_handshake_duration`)
/// measures.
pub const HANDSHAKE_DURATION_HELP: &str = "completed TLS handshakes, from TCP accept";

/// A latency histogram with fixed buckets, recorded from any task without a lock and exported
/// in Prometheus' histogram form (`_bucket{le}`, `_sum`, `_count`).
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Observations per bucket, not cumulative; the last one is above every bound (`+Inf`).
    buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
    /// The same observations for OpenTelemetry, once its exporter is set up (see
    /// [`LatencyHistogram::export_to`]): an OTLP histogram cannot be observed from a callback
    /// as the counters are.
    otel: std::sync::OnceLock<(opentelemetry::metrics::Histogram<f64>, Vec<opentelemetry::KeyValue>)>,
}

impl LatencyHistogram {
    pub fn record(&self, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_US.partition_point(|&bound| bound < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        if let Some((histogram, attributes)) = self.otel.get() {
            histogram.record(d.as_secs_f64(), attributes);
        }
    }

    /// Also records into `histogram`, with `attributes`, from now on (the first call wins).
    pub fn export_to(
        &self,
        histogram: opentelemetry::metrics::Histogram<f64>,
        attributes: Vec<opentelemetry::KeyValue>,
    ) {
        let _ = self.otel.set((histogram, attributes));
    }

    /// The buckets' upper bounds in seconds (for an OpenTelemetry histogram's boundaries).
    pub fn bounds_secs() -> Vec<f64> {
        LATENCY_BOUNDS_US.iter().map(|&us| us as f64 / 1e6).collect()
    }

    /// Cumulative counts per bound (the last is `+Inf`, the total), and the sum in microseconds.
    pub fn snapshot(&self) -> ([u64; LATENCY_BOUNDS_US.len() + 1], u64) {
        let mut cumulative = [0; LATENCY_BOUNDS_US.len() + 1];
        let mut total = 0u64;
        for (c, b) in cumulative.iter_mut().zip(&self.buckets) {
            total = total.saturating_add(b.load(Ordering::Relaxed));
            *c = total;
        }
        (cumulative, self.sum_us.load(Ordering::Relaxed))
    }

    /// Writes the series of one labelled histogram (`labels` like `device="new"`, or empty);
    /// the caller writes `# HELP` and `# TYPE` once per metric name.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        use std::fmt::Write;
        let (cumulative, sum_us) = self.snapshot();
        let sep = if labels.is_empty() { "" } else { "," };
        for (le, n) in Self::bounds_secs().iter().zip(&cumulative) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {n}");
        }
        let total = cumulative[LATENCY_BOUNDS_US.len()];
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {:.6}", sum_us as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{braces} {total}");
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn latency_histogram_buckets_are_inclusive_upper_bounds_and_render_cumulatively() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_micros(250)); // on a bound: that bucket (le is "less or equal")
        h.record(Duration::from_micros(251));
        h.record(Duration::from_micros(1_800));
        h.record(Duration::from_secs(60)); // above every bound
        let (cumulative, sum_us) = h.snapshot();
        assert_eq!(&cumulative[..6], &[1, 2, 2, 2, 2, 3]);
        assert_eq!(cumulative[LATENCY_BOUNDS_US.len() - 1], 3);
        assert_eq!(cumulative[LATENCY_BOUNDS_US.len()], 4);
        assert_eq!(sum_us, 250 + 251 + 1_800 + 60_000_000);

        let mut out = String::new();
        h.render(&mut out, "x_seconds", "device=\"new\"");
        assert!(
            out.contains("x_seconds_bucket{device=\"new\",le=\"0.00025\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{device=\"new\",le=\"0.002\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_bucket{device=\"new\",le=\"10\"} 3\n"), "{out}");
        assert!(
            out.contains("x_seconds_bucket{device=\"new\",le=\"+Inf\"} 4\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_sum{device=\"new\"} 60.002301\n"), "{out}");
        assert!(out.contains("x_seconds_count{device=\"new\"} 4\n"), "{out}");
        let mut bare = String::new();
        LatencyHistogram::default().render(&mut bare, "y_seconds", "");
        assert!(
            bare.contains("y_seconds_bucket{le=\"+Inf\"} 0\n") && bare.contains("y_seconds_count 0\n"),
            "{bare}"
        );
    }
}
