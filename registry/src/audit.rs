//! Fleet audit: findings computed from the registry, modelled on AWS IoT Device Defender's
//! audit checks (certificate shared, conflicting client ids, certificates expiring, revoked CA
//! still active, revoked device certificate still active, key quality, …) plus fleetward's
//! own (attestation, firmware reference values, silent devices).
//!
//! Every check is a bounded query: counters kept by triggers (`fleet_counts`), index range
//! scans, or a capped count, so the audit costs about the same at 1,000,000 devices as at 10.

use crate::cas::CaStatus;
use crate::{Registry, Result};
use serde::Serialize;
use sqlx::{AssertSqlSafe, Row};
use std::collections::BTreeSet;

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
        }
    }
}

/// Every check the audit runs, with its severity, in report order.
pub const CHECKS: &[(&str, Severity)] = &[
    ("revoked_ca_active_devices", Severity::Critical),
    ("revoked_device_certificate_still_active", Severity::Critical),
    ("device_certificate_shared", Severity::Critical),
    ("ca_certificate_expired", Severity::Critical),
    ("conflicting_client_ids", Severity::High),
    ("device_certificate_expired", Severity::High),
    ("ca_certificate_expiring", Severity::High),
    ("ca_certificate_key_quality", Severity::High),
    ("device_certificate_key_quality", Severity::High),
    ("attestation_failing", Severity::High),
    ("firmware_blocked", Severity::High),
    ("device_certificate_expiring", Severity::Medium),
    ("firmware_not_in_reference_set", Severity::Medium),
    ("attestation_never_passed", Severity::Medium),
    ("devices_silent", Severity::Low),
];

fn severity_of(check: &str) -> Severity {
    CHECKS
        .iter()
        .find(|(c, _)| *c == check)
        .map_or(Severity::Low, |(_, s)| *s)
}

/// Audit parameters.
#[derive(Clone, Copy, Debug)]
pub struct AuditOptions {
    /// Certificates expiring within this many days are reported.
    pub expiry_warning_days: i64,
    /// Active devices not seen for this many days are reported.
    pub silent_days: i64,
    /// Event-based checks (clones, client ids) look back this many days.
    pub window_days: i64,
    /// Device ids listed per finding.
    pub sample: u32,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            expiry_warning_days: 30,
            silent_days: 7,
            window_days: 30,
            sample: 20,
        }
    }
}

/// One non-compliant check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub severity: Severity,
    pub title: String,
    pub description: String,
    /// How many devices (or, for CA checks, CAs) are affected.
    pub affected_count: i64,
    /// `affected_count` is a lower bound (counts stop at [`COUNT_CAP`]).
    pub affected_count_capped: bool,
    /// Up to `sample` affected device ids.
    pub affected_devices: Vec<String>,
    /// Affected CA ids.
    pub affected_cas: Vec<String>,
    pub suggested_action: String,
}

/// The audit: which checks ran, and what they found (most severe first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    pub generated_at_ms: i64,
    pub checks_run: Vec<&'static str>,
    pub findings: Vec<Finding>,
}

/// Counts larger than this are reported as "at least".
pub const COUNT_CAP: i64 = 100_000;

const DAY_MS: i64 = 86_400_000;

/// Key algorithms we consider strong for device and CA keys.
fn key_is_weak(key: &str) -> bool {
    match key {
        "ECDSA P-256" | "ECDSA P-384" | "ECDSA P-521" | "Ed25519" | "unknown" => false,
        other => match other.strip_prefix("RSA ").and_then(|b| b.parse::<u32>().ok()) {
            // NIST SP 800-57: RSA below 3072 bits gives less than 128-bit security.
            Some(bits) => bits < 3072,
            None => true,
        },
    }
}

/// `1 device`, `2 devices`.
fn devices(n: i64) -> String {
    if n == 1 {
        "1 device".into()
    } else {
        format!("{n} devices")
    }
}

struct Builder {
    findings: Vec<Finding>,
}

impl Builder {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        check: &'static str,
        title: String,
        description: String,
        (count, capped): (i64, bool),
        devices: Vec<String>,
        cas: Vec<String>,
        action: &str,
    ) {
        if count == 0 {
            return;
        }
        self.findings.push(Finding {
            check,
            severity: severity_of(check),
            title,
            description,
            affected_count: count,
            affected_count_capped: capped,
            affected_devices: devices,
            affected_cas: cas,
            suggested_action: action.to_owned(),
        });
    }
}

impl Registry {
    /// Runs every audit check at `now_ms`.
    pub async fn audit(&self, opts: &AuditOptions, now_ms: i64) -> Result<AuditReport> {
        let mut b = Builder { findings: Vec::new() };
        let sample = i64::from(opts.sample.clamp(1, 1000));
        let window_start = now_ms - opts.window_days * DAY_MS;
        let summary = self.fleet_summary().await?;
        let cas = self.cas().await?;

        // --- CAs ---------------------------------------------------------------------------
        let mut revoked_cas = Vec::new();
        let (mut expired, mut expiring, mut weak) = (Vec::new(), Vec::new(), Vec::new());
        for ca in &cas {
            if ca.status == CaStatus::Revoked {
                revoked_cas.push(ca.id.clone());
                continue;
            }
            let Ok(info) = verifier::x509::describe_certificate(&ca.cert_der) else {
                continue;
            };
            let not_after_ms = info.not_after.unix().saturating_mul(1000);
            if not_after_ms < now_ms {
                expired.push(ca.id.clone());
            } else if not_after_ms < now_ms + opts.expiry_warning_days * DAY_MS {
                expiring.push(ca.id.clone());
            }
            if key_is_weak(&info.key) {
                weak.push((ca.id.clone(), info.key.clone()));
            }
        }
        let devices_under = |ids: &[String]| {
            ids.iter()
                .map(|id| summary.by_ca.get(id).copied().unwrap_or(0))
                .sum::<i64>()
        };
        b.add(
            "ca_certificate_expired",
            format!("{} active provisioning CA(s) have expired", expired.len()),
            format!(
                "Devices issued by an expired CA fail chain validation at every connection ({} devices registered under them).",
                devices_under(&expired)
            ),
            (expired.len() as i64, false),
            Vec::new(),
            expired,
            "Register the CA's successor, re-provision the devices, then revoke the expired CA.",
        );
        b.add(
            "ca_certificate_expiring",
            format!(
                "{} provisioning CA(s) expire within {} days",
                expiring.len(),
                opts.expiry_warning_days
            ),
            format!(
                "{} devices are registered under them and will be refused once the CA expires.",
                devices_under(&expiring)
            ),
            (expiring.len() as i64, false),
            Vec::new(),
            expiring,
            "Plan the CA rollover now: register a successor CA and rotate device certificates before expiry.",
        );
        b.add(
            "ca_certificate_key_quality",
            format!("{} provisioning CA(s) have a weak key", weak.len()),
            format!(
                "Key(s): {}. Below 128-bit security (NIST SP 800-57).",
                weak.iter().map(|(_, k)| k.as_str()).collect::<Vec<_>>().join(", ")
            ),
            (weak.len() as i64, false),
            Vec::new(),
            weak.into_iter().map(|(id, _)| id).collect(),
            "Replace the CA with one on ECDSA P-256/P-384 or RSA ≥ 3072 and re-issue its devices.",
        );

        // Revoked CA with devices still not revoked (the cascade makes this rare: it means a
        // write outside fleetward, or a partially restored database).
        if !revoked_cas.is_empty() {
            let mut count = 0;
            let mut ids = Vec::new();
            for ca in &revoked_cas {
                count += self
                    .capped_count(
                        "SELECT 1 FROM devices WHERE ca_id = $1 AND status <> 'revoked'",
                        Some(ca.as_str()),
                        None,
                    )
                    .await?
                    .0;
                ids.extend(
                    self.sample_ids(
                        "SELECT id FROM devices WHERE ca_id = $1 AND status <> 'revoked' ORDER BY id LIMIT $2",
                        ca,
                        sample,
                    )
                    .await?,
                );
            }
            ids.truncate(sample as usize);
            b.add(
                "revoked_ca_active_devices",
                format!("{} under a revoked CA not revoked", devices(count)),
                "A revoked CA's devices are refused at the handshake, but their records say otherwise: \
                 the registry was changed outside fleetward."
                    .into(),
                (count, false),
                ids,
                revoked_cas.clone(),
                "Revoke the devices (POST /api/v1/devices/{id}/revoke, or fleetward device revoke ID).",
            );
        }

        // Device certificates a CA revoked (serial list or newest CRL) on devices still active.
        {
            let mut count = 0i64;
            let mut ids = BTreeSet::new();
            let mut affected_cas = Vec::new();
            for ca in cas.iter().filter(|c| c.status == CaStatus::Active) {
                let (mut serials, crl) = self.revocation_inputs(&ca.id).await?;
                if let Some(der) = crl
                    && let Ok(crl) = verifier::x509::Crl::from_der(&der)
                {
                    serials.extend(crl.revoked_serials_hex());
                }
                let before = count;
                for chunk in serials.chunks(500) {
                    let mut q = crate::sql::SqlBuilder::new(
                        self.backend(),
                        "SELECT id FROM devices WHERE status <> 'revoked' AND ca_id = ",
                    );
                    q.bind(ca.id.clone());
                    q.push(" AND cert_serial IN (");
                    for (i, s) in chunk.iter().enumerate() {
                        if i > 0 {
                            q.push(", ");
                        }
                        q.bind(s.clone());
                    }
                    q.push(")");
                    for row in q.build()?.fetch_all(self.pool()).await? {
                        count += 1;
                        if ids.len() < sample as usize {
                            ids.insert(row.try_get::<String, _>("id")?);
                        }
                    }
                }
                if count > before {
                    affected_cas.push(ca.id.clone());
                }
            }
            b.add(
                "revoked_device_certificate_still_active",
                format!("{} with a certificate their CA has revoked", devices(count)),
                "The serial is on the CA's revoked list or CRL, so the handshake refuses it, but the device \
                 record is not revoked."
                    .into(),
                (count, false),
                ids.into_iter().collect(),
                affected_cas,
                "Revoke these devices so that the registry, the dashboards and the audit trail agree.",
            );
        }

        // --- devices: events ---------------------------------------------------------------
        let (count, ids) = self
            .event_devices(
                "SELECT e.device_id AS id FROM events e JOIN devices d ON d.id = e.device_id \
                 WHERE e.kind = 'device.clone_suspected' AND e.at >= $1 AND d.status <> 'revoked' \
                 GROUP BY e.device_id ORDER BY e.device_id",
                window_start,
                sample,
            )
            .await?;
        b.add(
            "device_certificate_shared",
            format!(
                "{}: certificate used by two peers at once (last {} days)",
                devices(count),
                opts.window_days
            ),
            "Concurrent connections with one certificate from different addresses: the device key may have been \
             extracted and cloned."
                .into(),
            (count, false),
            ids,
            Vec::new(),
            "Quarantine the devices, attest them (challenge-response proves which holds the secure element), \
             revoke the certificate if the clone cannot be told apart.",
        );
        let (count, ids) = self
            .event_devices(
                "SELECT e.device_id AS id FROM events e WHERE e.kind = 'device.refused' AND e.at >= $1 \
                 AND e.detail LIKE '%\"check\":\"client_id_mismatch\"%' AND e.device_id IS NOT NULL \
                 GROUP BY e.device_id ORDER BY e.device_id",
                window_start,
                sample,
            )
            .await?;
        b.add(
            "conflicting_client_ids",
            format!(
                "{} tried MQTT client ids not their own (last {} days)",
                devices(count),
                opts.window_days
            ),
            "A certificate valid for one device was used to claim another device's client id.".into(),
            (count, false),
            ids,
            Vec::new(),
            "Inspect the device's events; if it is not misconfigured firmware, quarantine it.",
        );

        // --- devices: certificates ---------------------------------------------------------
        let not_revoked = "status <> 'revoked'";
        let expired = self
            .capped_count(
                &format!("SELECT 1 FROM devices WHERE cert_not_after < $1 AND {not_revoked}"),
                None,
                Some(now_ms),
            )
            .await?;
        let ids = self
            .sample_by_time(
                &format!("SELECT id FROM devices WHERE cert_not_after < $1 AND {not_revoked} ORDER BY cert_not_after LIMIT $2"),
                now_ms,
                sample,
            )
            .await?;
        b.add(
            "device_certificate_expired",
            format!("{} with an expired certificate", devices(expired.0)),
            "They are refused at every connection until re-provisioned.".into(),
            expired,
            ids,
            Vec::new(),
            "Re-provision the devices with new certificates, or revoke them if retired.",
        );
        let horizon = now_ms + opts.expiry_warning_days * DAY_MS;
        let expiring = self.capped_count_between(now_ms, horizon).await?;
        let ids = self.sample_between(now_ms, horizon, sample).await?;
        b.add(
            "device_certificate_expiring",
            format!(
                "{} device certificates expire within {} days",
                expiring.0, opts.expiry_warning_days
            ),
            "These devices will be refused once their certificate expires.".into(),
            expiring,
            ids,
            Vec::new(),
            "Rotate the device certificates before they expire.",
        );
        let weak: Vec<(&String, &i64)> = summary.by_key.iter().filter(|(k, _)| key_is_weak(k)).collect();
        let mut ids = Vec::new();
        for (key, _) in &weak {
            ids.extend(
                self.sample_ids(
                    "SELECT id FROM devices WHERE cert_key = $1 AND status <> 'revoked' ORDER BY id LIMIT $2",
                    key,
                    sample,
                )
                .await?,
            );
        }
        ids.truncate(sample as usize);
        b.add(
            "device_certificate_key_quality",
            format!(
                "{} with a weak key",
                devices(weak.iter().map(|(_, n)| **n).sum::<i64>())
            ),
            format!(
                "Key(s): {}. Secure elements hold ECDSA P-256 keys; anything weaker deserves a look.",
                weak.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", ")
            ),
            (weak.iter().map(|(_, n)| **n).sum(), false),
            ids,
            Vec::new(),
            "Re-provision the devices with keys generated in the secure element (ECDSA P-256).",
        );

        // --- attestation and firmware ------------------------------------------------------
        let failed = summary.by_integrity.get("failed").copied().unwrap_or(0);
        let ids = self
            .sample_ids(
                "SELECT id FROM devices WHERE integrity = $1 AND status <> 'revoked' ORDER BY id LIMIT $2",
                "failed",
                sample,
            )
            .await?;
        b.add(
            "attestation_failing",
            format!("{} failed their last attestation", devices(failed)),
            "Their evidence did not verify or their firmware measurement is not an allowed reference value.".into(),
            (failed, false),
            ids,
            Vec::new(),
            "Quarantine the devices and re-attest; update or re-flash their firmware.",
        );
        let never = summary.by_integrity.get("unknown").copied().unwrap_or(0);
        let ids = self
            .sample_ids(
                "SELECT id FROM devices WHERE integrity = $1 AND status = 'active' ORDER BY id LIMIT $2",
                "unknown",
                sample,
            )
            .await?;
        b.add(
            "attestation_never_passed",
            format!("{} never passed attestation", devices(never)),
            "Their certificate proves a key was provisioned, not that the device holds it now or runs trusted \
             firmware."
                .into(),
            (never, false),
            ids,
            Vec::new(),
            "Attest the devices (secure-element challenge-response, signed firmware measurement); quarantine those that cannot.",
        );
        let references = self.firmware_references().await?;
        let allowed: BTreeSet<&str> = references
            .iter()
            .filter(|r| r.status == "allowed")
            .map(|r| r.digest_hex.as_str())
            .collect();
        let blocked: BTreeSet<&str> = references
            .iter()
            .filter(|r| r.status == "blocked")
            .map(|r| r.digest_hex.as_str())
            .collect();
        let (mut blocked_n, mut unknown_n, mut blocked_ids, mut unknown_ids) = (0, 0, Vec::new(), Vec::new());
        let digests = self.firmware_digest_counts().await?;
        for (digest, n) in digests.iter().filter(|(d, _)| d.as_str() != "unknown") {
            let (total, list) = if blocked.contains(digest.as_str()) {
                (&mut blocked_n, &mut blocked_ids)
            } else if allowed.contains(digest.as_str()) {
                continue;
            } else {
                (&mut unknown_n, &mut unknown_ids)
            };
            *total += n;
            if (list.len() as i64) < sample {
                list.extend(
                    self.sample_ids(
                        "SELECT id FROM devices WHERE firmware_digest = $1 AND status <> 'revoked' ORDER BY id LIMIT $2",
                        digest,
                        sample,
                    )
                    .await?,
                );
                list.truncate(sample as usize);
            }
        }
        b.add(
            "firmware_blocked",
            format!("{} running a blocked firmware image", devices(blocked_n)),
            "Their reported firmware digest is on the blocked list of reference values.".into(),
            (blocked_n, false),
            blocked_ids,
            Vec::new(),
            "Quarantine the devices and update their firmware.",
        );
        b.add(
            "firmware_not_in_reference_set",
            format!(
                "{} running firmware that is not a known-good reference value",
                devices(unknown_n)
            ),
            "Their reported firmware digest matches no allowed entry in /api/v1/firmware.".into(),
            (unknown_n, false),
            unknown_ids,
            Vec::new(),
            "Add the image to the firmware reference values if it is yours; otherwise quarantine the devices.",
        );

        // --- liveness ----------------------------------------------------------------------
        let cutoff = now_ms - opts.silent_days * DAY_MS;
        let silent = self
            .capped_count(
                "SELECT 1 FROM devices WHERE last_seen < $1 AND status = 'active'",
                None,
                Some(cutoff),
            )
            .await?;
        let ids = self
            .sample_by_time(
                "SELECT id FROM devices WHERE last_seen < $1 AND status = 'active' ORDER BY last_seen LIMIT $2",
                cutoff,
                sample,
            )
            .await?;
        b.add(
            "devices_silent",
            format!(
                "{} active devices silent for {} days or more",
                silent.0, opts.silent_days
            ),
            "No connection or message recorded since the cutoff.".into(),
            silent,
            ids,
            Vec::new(),
            "Check power and connectivity; decommission (revoke) devices that are gone.",
        );

        let mut findings = b.findings;
        findings.sort_by(|a, b| {
            a.severity
                .cmp(&b.severity)
                .then(b.affected_count.cmp(&a.affected_count))
        });
        Ok(AuditReport {
            generated_at_ms: now_ms,
            checks_run: CHECKS.iter().map(|(c, _)| *c).collect(),
            findings,
        })
    }

    /// `COUNT(*)` of `select` (a `SELECT 1 …` with `$1` bound to `text` or `time`), stopping
    /// at [`COUNT_CAP`].
    async fn capped_count(&self, select: &str, text: Option<&str>, time: Option<i64>) -> Result<(i64, bool)> {
        let sql = format!(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM ({select} LIMIT {}) t",
            COUNT_CAP + 1
        );
        let q = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql));
        let q = match (text, time) {
            (Some(t), _) => q.bind(t.to_owned()),
            (None, Some(t)) => q.bind(t),
            (None, None) => q,
        };
        let n = q.fetch_one(self.pool()).await?;
        Ok((n.min(COUNT_CAP), n > COUNT_CAP))
    }

    async fn capped_count_between(&self, from: i64, to: i64) -> Result<(i64, bool)> {
        let sql = format!(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM (SELECT 1 FROM devices WHERE cert_not_after >= $1 AND \
             cert_not_after < $2 AND status <> 'revoked' LIMIT {}) t",
            COUNT_CAP + 1
        );
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(from)
            .bind(to)
            .fetch_one(self.pool())
            .await?;
        Ok((n.min(COUNT_CAP), n > COUNT_CAP))
    }

    async fn sample_between(&self, from: i64, to: i64, limit: i64) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM devices WHERE cert_not_after >= $1 AND cert_not_after < $2 AND status <> 'revoked' \
             ORDER BY cert_not_after LIMIT $3",
        )
        .bind(from)
        .bind(to)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    async fn sample_ids(&self, sql: &'static str, arg: &str, limit: i64) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(sql)
            .bind(arg.to_owned())
            .bind(limit)
            .fetch_all(self.pool())
            .await?)
    }

    async fn sample_by_time(&self, sql: &str, at: i64, limit: i64) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(AssertSqlSafe(sql.to_owned()))
            .bind(at)
            .bind(limit)
            .fetch_all(self.pool())
            .await?)
    }

    /// Distinct devices from an event query (`$1` = window start), with a sample.
    async fn event_devices(&self, sql: &'static str, since: i64, limit: i64) -> Result<(i64, Vec<String>)> {
        let ids: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!("{sql} LIMIT {}", COUNT_CAP + 1)))
            .bind(since)
            .fetch_all(self.pool())
            .await?;
        let count = (ids.len() as i64).min(COUNT_CAP);
        Ok((count, ids.into_iter().take(limit as usize).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::key_is_weak;

    #[test]
    fn key_quality() {
        assert!(!key_is_weak("ECDSA P-256"));
        assert!(!key_is_weak("ECDSA P-384"));
        assert!(!key_is_weak("RSA 3072"));
        assert!(key_is_weak("RSA 2048"));
        assert!(key_is_weak("DSA 1024"));
        assert!(!key_is_weak("unknown"));
    }
}
