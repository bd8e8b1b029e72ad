//! What a `sim-devices run` measured: latency histograms (HDR, microsecond resolution), counters,
//! errors by kind, and the gateway's CPU and memory when it runs on this machine. Rendered as
//! text for people and as JSON (`--json`) for scripts.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;

/// A latency histogram, microseconds, 1 µs to 10 min at 3 significant digits.
#[derive(Clone, Debug)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        // Valid bounds (1 ≤ low, high ≥ 2·low, sigfig ≤ 5): construction cannot fail.
        #[allow(clippy::unwrap_used)]
        Latency(Histogram::new_with_bounds(1, 600_000_000, 3).unwrap())
    }
}

impl Latency {
    pub fn record(&mut self, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.0.saturating_record(us);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// Percentiles in milliseconds (`None` when nothing was recorded).
    pub fn summary(&self) -> Option<Percentiles> {
        if self.0.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Percentiles {
            count: self.0.len(),
            p50: ms(self.0.value_at_quantile(0.50)),
            p90: ms(self.0.value_at_quantile(0.90)),
            p99: ms(self.0.value_at_quantile(0.99)),
            max: ms(self.0.max()),
        })
    }
}

/// Latency percentiles, milliseconds.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// A local process's cost over the run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProcessCost {
    pub pid: u32,
    /// CPU seconds (user + system) used during the run.
    pub cpu_seconds: f64,
    /// `cpu_seconds` over the run's wall time, percent of one core.
    pub cpu_percent: f64,
    pub rss_start_kib: u64,
    pub rss_end_kib: u64,
    pub rss_peak_kib: u64,
}

/// Counts for one LPWAN technology.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LpwanCounts {
    pub devices: u64,
    /// Joined (LoRaWAN OTAA) or provisioned (Sigfox).
    pub ready: u64,
    pub uplinks_sent: u64,
    /// Uplinks the server stored, from its API.
    pub uplinks_accepted: u64,
}

/// The final report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunReport {
    pub mode: String,
    pub profile: String,
    pub devices: u64,
    pub duration_s: f64,
    /// Connection attempts, successful MQTT sessions (CONNACK 0), and the rate of the latter.
    pub connects_attempted: u64,
    pub connects_ok: u64,
    pub connects_per_s: f64,
    /// Sessions lost and opened again (jittered back-off).
    pub reconnects: u64,
    /// Devices connected at the end (before the final DISCONNECTs).
    pub connected_at_end: u64,
    /// When every device had had its first session, seconds from the start (`None`: some never
    /// did). With a fresh PKI this is the just-in-time registration ramp.
    pub all_connected_after_s: Option<f64>,
    /// TCP connect + TLS handshake.
    pub handshake_ms: Option<Percentiles>,
    /// TCP connect through CONNACK (handshake, registration, session).
    pub connect_ms: Option<Percentiles>,
    /// QoS 1 PUBLISH → PUBACK.
    pub publish_ack_ms: Option<Percentiles>,
    pub messages_sent: u64,
    pub messages_acked: u64,
    pub messages_per_s: f64,
    /// Telemetry messages the backend consumer received (`--consume`).
    pub messages_delivered: Option<u64>,
    pub attestations_verified: u64,
    pub attestations_failed: u64,
    pub errors: BTreeMap<String, u64>,
    pub lorawan: Option<LpwanCounts>,
    pub sigfox: Option<LpwanCounts>,
    /// The gateway process, when it runs on this machine.
    pub gateway: Option<ProcessCost>,
    /// Gateway CPU microseconds per successful connect (handshakes mode).
    pub gateway_cpu_us_per_connect: Option<f64>,
    /// Gateway RSS growth per connected device, KiB (idle mode).
    pub gateway_kib_per_connection: Option<f64>,
    /// This process.
    pub client: Option<ProcessCost>,
}

impl RunReport {
    /// More QoS 1 messages were acknowledged than the consumer received: acknowledged messages
    /// were lost.
    pub fn qos_acked_lost(&self, delivered: u64) -> bool {
        self.messages_acked > delivered
    }

    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Human-readable.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "sim-devices run: {} devices, mode {}, profile {}, {:.1} s",
            self.devices, self.mode, self.profile, self.duration_s
        );
        let _ = writeln!(
            s,
            "  connects      {} ok of {} attempted ({:.1}/s), {} reconnects, {} connected at the end",
            self.connects_ok, self.connects_attempted, self.connects_per_s, self.reconnects, self.connected_at_end
        );
        let line = |s: &mut String, name: &str, p: &Option<Percentiles>| {
            if let Some(p) = p {
                let _ = writeln!(
                    s,
                    "  {name:<13} p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (n = {})",
                    p.p50, p.p90, p.p99, p.max, p.count
                );
            }
        };
        if let Some(t) = self.all_connected_after_s {
            let _ = writeln!(
                s,
                "  first sessions every device connected once after {t:.2} s ({:.0} devices/s)",
                self.devices as f64 / t.max(1e-9)
            );
        }
        line(&mut s, "handshake", &self.handshake_ms);
        line(&mut s, "connect", &self.connect_ms);
        line(&mut s, "publish→ack", &self.publish_ack_ms);
        if self.messages_sent > 0 {
            let _ = write!(
                s,
                "  messages      {} sent, {} acknowledged ({:.0}/s)",
                self.messages_sent, self.messages_acked, self.messages_per_s
            );
            match self.messages_delivered {
                Some(d) => {
                    let _ = writeln!(s, ", {d} delivered to the backend consumer");
                }
                None => s.push('\n'),
            }
        }
        if self.attestations_verified + self.attestations_failed > 0 {
            let _ = writeln!(
                s,
                "  attestations  {} verified, {} failed",
                self.attestations_verified, self.attestations_failed
            );
        }
        for (name, c) in [("lorawan", &self.lorawan), ("sigfox", &self.sigfox)] {
            if let Some(c) = c {
                let _ = writeln!(
                    s,
                    "  {name:<13} {} devices, {} ready, {} uplinks sent, {} accepted by the server",
                    c.devices, c.ready, c.uplinks_sent, c.uplinks_accepted
                );
            }
        }
        if self.errors.is_empty() {
            let _ = writeln!(s, "  errors        none");
        } else {
            let _ = writeln!(s, "  errors        {} in all:", self.error_total());
            for (kind, n) in &self.errors {
                let _ = writeln!(s, "    {n:>8}  {kind}");
            }
        }
        for (name, p) in [("gateway", &self.gateway), ("client", &self.client)] {
            if let Some(p) = p {
                let _ = writeln!(
                    s,
                    "  {name:<13} pid {}: {:.2} CPU s ({:.0} % of a core), RSS {} → {} KiB (peak {})",
                    p.pid, p.cpu_seconds, p.cpu_percent, p.rss_start_kib, p.rss_end_kib, p.rss_peak_kib
                );
            }
        }
        if let Some(us) = self.gateway_cpu_us_per_connect {
            let _ = writeln!(
                s,
                "  gateway CPU per connect: {us:.0} µs ({:.0} connects per CPU-second)",
                1e6 / us.max(1e-9)
            );
        }
        if let Some(kib) = self.gateway_kib_per_connection {
            let _ = writeln!(s, "  gateway memory per connection: {kib:.1} KiB");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut a = Latency::default();
        for ms in (1..=100u64).rev() {
            a.record(Duration::from_millis(ms));
        }
        let p = a.summary().unwrap();
        assert_eq!(p.count, 100);
        assert!((p.p50 - 50.0).abs() < 0.1, "{p:?}");
        assert!((p.p90 - 90.0).abs() < 0.1, "{p:?}");
        assert!((p.p99 - 99.0).abs() < 0.1, "{p:?}");
        assert!((p.max - 100.0).abs() < 0.1, "{p:?}");
        assert_eq!(Latency::default().summary(), None);
    }
}
