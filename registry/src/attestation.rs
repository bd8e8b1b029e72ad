//! Attestation state: outstanding challenges (single use enforced by the database), appraisal
//! results with their effect on the device (integrity, and the CA's policy on failure), the
//! freshness sweep, and firmware reference values.

use crate::devices::{DeviceStatus, Integrity};
use crate::events::{self, NewEvent};
use crate::{Registry, RegistryError, Result};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use verifier::challenge::{Challenge, Nonce};

/// Why a challenge answer's nonce was refused by the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RedeemOutcome {
    /// Accepted now; it can never be accepted again.
    Redeemed,
    /// No such nonce at all.
    Unknown,
    /// The nonce was issued to another device (the answer is foreign).
    OtherDevice {
        issued_to: String,
    },
    AlreadyUsed,
    Expired,
}

/// What a CA's devices are held to when they attest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttestationPolicy {
    /// What a failed appraisal does: `quarantine` the device (it may then only attest) or only
    /// `flag` it (integrity `failed`, an event, an audit finding).
    pub on_failure: OnFailure,
    /// PSA security lifecycle states accepted (`secured`, `non_psa_rot_debug`, …).
    pub allowed_lifecycles: Vec<String>,
    /// A verdict older than this many seconds becomes `stale`.
    pub freshness_secs: u64,
}

impl Default for AttestationPolicy {
    fn default() -> Self {
        AttestationPolicy {
            on_failure: OnFailure::Quarantine,
            allowed_lifecycles: vec!["secured".into()],
            freshness_secs: 2 * 24 * 3600,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    #[default]
    Quarantine,
    Flag,
}

/// An allowed or blocked firmware image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FirmwareReference {
    pub id: i64,
    pub name: String,
    pub version: String,
    pub digest_hex: String,
    pub signer_id_hex: Option<String>,
    /// `allowed` or `blocked`.
    pub status: String,
    pub created_at_ms: i64,
    pub created_by: String,
}

/// An appraisal to record.
#[derive(Clone, Debug, Default)]
pub struct AttestationResult<'a> {
    pub device_id: &'a str,
    /// `se-signature`, `measurement`, `psa-token`.
    pub format: &'a str,
    pub verified: bool,
    /// The failed check (`bad_signature`, `firmware_blocked`, …).
    pub reason: Option<&'a str>,
    /// The failed claim, where one did.
    pub claim: Option<&'a str>,
    /// Human-readable explanation.
    pub message: Option<&'a str>,
    /// The firmware the signed evidence measured (also when appraisal failed: a blocked image
    /// is recorded as what the device runs).
    pub firmware_name: Option<&'a str>,
    pub firmware_version: Option<&'a str>,
    pub firmware_digest: Option<&'a str>,
    /// Does this result speak about the device's integrity? Not when only the answer was
    /// stale, replayed or foreign: that says nothing about the device.
    pub affects_integrity: bool,
    /// Claims summary for the record.
    pub detail: Option<serde_json::Value>,
}

/// What recording an appraisal did to the device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AppraisalEffect {
    pub integrity: Integrity,
    pub status: DeviceStatus,
    /// `(from, to)` when the policy changed the device's status.
    pub status_changed: Option<(DeviceStatus, DeviceStatus)>,
}

/// A stored appraisal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AttestationRecord {
    pub id: i64,
    pub device_id: String,
    pub at_ms: i64,
    pub format: String,
    pub result: String,
    pub reason: Option<String>,
    pub firmware_name: Option<String>,
    pub firmware_version: Option<String>,
    pub firmware_digest: Option<String>,
    pub detail: Option<serde_json::Value>,
}

/// The actor recorded for status changes the attestation policy makes.
pub const ATTESTATION_ACTOR: &str = "attestation";

impl Registry {
    /// Stores an issued challenge (`verifier::challenge::Challenge::issue`).
    pub async fn store_challenge(&self, c: &Challenge) -> Result<()> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "INSERT INTO attestation_challenges (nonce, device_id, issued_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(c.nonce.to_hex())
        .bind(&c.device_id)
        .bind(c.issued_at.unix() * 1000)
        .bind(c.expires_at.unix() * 1000)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Marks a nonce used, atomically: of any number of concurrent answers, one is `Redeemed`.
    pub async fn redeem_challenge(&self, device_id: &str, nonce: &Nonce, now_ms: i64) -> Result<RedeemOutcome> {
        let _turn = self.write_turn().await;
        let hex = nonce.to_hex();
        let n = sqlx::query(
            "UPDATE attestation_challenges SET used_at = $3 \
             WHERE nonce = $1 AND device_id = $2 AND used_at IS NULL AND expires_at >= $3",
        )
        .bind(&hex)
        .bind(device_id)
        .bind(now_ms)
        .execute(self.pool())
        .await?
        .rows_affected();
        if n == 1 {
            return Ok(RedeemOutcome::Redeemed);
        }
        let row = sqlx::query("SELECT device_id, used_at FROM attestation_challenges WHERE nonce = $1")
            .bind(&hex)
            .fetch_optional(self.pool())
            .await?;
        Ok(match row {
            None => RedeemOutcome::Unknown,
            Some(r) if r.try_get::<String, _>("device_id")? != device_id => RedeemOutcome::OtherDevice {
                issued_to: r.try_get("device_id")?,
            },
            Some(r) if r.try_get::<Option<i64>, _>("used_at")?.is_some() => RedeemOutcome::AlreadyUsed,
            Some(_) => RedeemOutcome::Expired,
        })
    }

    /// Deletes challenges that expired before `before_ms` (answered or not); returns how many.
    pub async fn prune_challenges(&self, before_ms: i64) -> Result<u64> {
        let _turn = self.write_turn().await;
        Ok(sqlx::query("DELETE FROM attestation_challenges WHERE expires_at < $1")
            .bind(before_ms)
            .execute(self.pool())
            .await?
            .rows_affected())
    }

    /// The CA's attestation policy (defaults if none was set).
    pub async fn attestation_policy(&self, ca_id: &str) -> Result<AttestationPolicy> {
        let row: Option<Option<String>> =
            sqlx::query_scalar("SELECT attestation_policy FROM provisioning_cas WHERE id = $1")
                .bind(ca_id)
                .fetch_optional(self.pool())
                .await?;
        match row {
            None => Err(RegistryError::not_found("provisioning CA", ca_id)),
            Some(None) => Ok(AttestationPolicy::default()),
            Some(Some(json)) => serde_json::from_str(&json).map_err(|e| RegistryError::Invalid {
                what: "stored attestation policy",
                detail: e.to_string(),
            }),
        }
    }

    /// Sets a CA's attestation policy, with a `ca.attestation_policy` event.
    pub async fn set_attestation_policy(
        &self,
        ca_id: &str,
        policy: &AttestationPolicy,
        by: &str,
        now_ms: i64,
    ) -> Result<()> {
        let json = serde_json::to_value(policy).map_err(|e| RegistryError::Invalid {
            what: "attestation policy",
            detail: e.to_string(),
        })?;
        let mut tx = self.begin_write().await?;
        let n = sqlx::query("UPDATE provisioning_cas SET attestation_policy = $2 WHERE id = $1")
            .bind(ca_id)
            .bind(json.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(RegistryError::not_found("provisioning CA", ca_id));
        }
        events::insert(
            &mut tx,
            &NewEvent::new("ca.attestation_policy", by).ca(ca_id).detail(json),
            now_ms,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records an appraisal and applies it, in one transaction: the result row, the event
    /// (`attestation.verified` / `attestation.failed`), the device's integrity and firmware, and
    /// the CA's policy: a failure quarantines an active device (`on_failure = quarantine`); a
    /// verified firmware appraisal releases a device that the policy itself quarantined.
    ///
    /// Key possession alone (`se-signature`) never clears a failed *firmware* verdict: otherwise
    /// a device running blocked firmware would answer with a plain signature and be trusted.
    pub async fn record_attestation(
        &self,
        a: &AttestationResult<'_>,
        policy: &AttestationPolicy,
        now_ms: i64,
    ) -> Result<AppraisalEffect> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query("SELECT status, integrity FROM devices WHERE id = $1")
            .bind(a.device_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| RegistryError::not_found("device", a.device_id))?;
        let corrupt = |what: &str| RegistryError::Invalid {
            what: "stored device",
            detail: format!("unknown {what}"),
        };
        let status_s: String = row.try_get("status")?;
        let integrity_s: String = row.try_get("integrity")?;
        let status = DeviceStatus::parse(&status_s).ok_or_else(|| corrupt("status"))?;
        let current = Integrity::parse(&integrity_s).ok_or_else(|| corrupt("integrity"))?;
        let measures_firmware = a.format != "se-signature";

        let mut integrity = current;
        if a.affects_integrity {
            integrity = if a.verified {
                Integrity::Verified
            } else {
                Integrity::Failed
            };
            if a.verified && !measures_firmware && current == Integrity::Failed {
                let last_failed: Option<String> = sqlx::query_scalar(
                    "SELECT format FROM attestation_results WHERE device_id = $1 AND result = 'failed' \
                     AND reason NOT IN ('unknown_nonce', 'replayed_nonce', 'expired_nonce', 'wrong_device') \
                     ORDER BY id DESC LIMIT 1",
                )
                .bind(a.device_id)
                .fetch_optional(&mut *tx)
                .await?;
                if last_failed.is_some_and(|f| f != "se-signature") {
                    integrity = Integrity::Failed;
                }
            }
        }
        let result = if a.verified { "verified" } else { "failed" };
        let detail = a.detail.as_ref().map(|d| d.to_string());
        sqlx::query(
            "INSERT INTO attestation_results (device_id, at, format, result, reason, firmware_name, firmware_version, \
             firmware_digest, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(a.device_id)
        .bind(now_ms)
        .bind(a.format)
        .bind(result)
        .bind(a.reason)
        .bind(a.firmware_name)
        .bind(a.firmware_version)
        .bind(a.firmware_digest)
        .bind(detail)
        .execute(&mut *tx)
        .await?;
        if a.affects_integrity {
            let reason = if a.verified {
                None
            } else {
                Some(a.message.or(a.reason).unwrap_or("attestation failed"))
            };
            sqlx::query("UPDATE devices SET integrity = $2, integrity_at = $3, integrity_reason = $4 WHERE id = $1")
                .bind(a.device_id)
                .bind(integrity.as_str())
                .bind(now_ms)
                .bind(reason)
                .execute(&mut *tx)
                .await?;
            if let (Some(version), Some(digest)) = (a.firmware_version, a.firmware_digest) {
                sqlx::query("UPDATE devices SET firmware_version = $2, firmware_digest = $3 WHERE id = $1")
                    .bind(a.device_id)
                    .bind(version)
                    .bind(digest)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let kind = if a.verified {
            "attestation.verified"
        } else {
            "attestation.failed"
        };
        let mut event = NewEvent::new(kind, ATTESTATION_ACTOR)
            .device(a.device_id)
            .detail(serde_json::json!({
                "format": a.format, "result": result, "check": a.reason, "claim": a.claim,
                "integrity": integrity, "firmware_name": a.firmware_name,
                "firmware_version": a.firmware_version, "firmware_digest": a.firmware_digest,
            }));
        if let Some(m) = a.message.or(a.reason) {
            event = event.reason(m);
        }
        events::insert(&mut tx, &event, now_ms).await?;

        // The CA's policy.
        let mut status_changed = None;
        let mut new_status = status;
        if a.affects_integrity
            && !a.verified
            && policy.on_failure == OnFailure::Quarantine
            && status == DeviceStatus::Active
        {
            new_status = DeviceStatus::Quarantined;
        } else if a.affects_integrity
            && integrity == Integrity::Verified
            && measures_firmware
            && status == DeviceStatus::Quarantined
        {
            // Release only what the policy itself quarantined (an operator's or the clone
            // policy's quarantine stays until an operator lifts it).
            let by: Option<String> = sqlx::query_scalar(
                "SELECT actor FROM events WHERE device_id = $1 AND kind = 'device.status' ORDER BY id DESC LIMIT 1",
            )
            .bind(a.device_id)
            .fetch_optional(&mut *tx)
            .await?;
            if by.as_deref() == Some(ATTESTATION_ACTOR) {
                new_status = DeviceStatus::Active;
            }
        }
        if new_status != status {
            let changed =
                sqlx::query("UPDATE devices SET status = $2, status_changed_at = $3 WHERE id = $1 AND status = $4")
                    .bind(a.device_id)
                    .bind(new_status.as_str())
                    .bind(now_ms)
                    .bind(status.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            if changed == 1 {
                let why = if new_status == DeviceStatus::Quarantined {
                    format!("attestation failed: {}", a.message.or(a.reason).unwrap_or("failed"))
                } else {
                    "attestation verified: firmware is a known-good reference value".to_owned()
                };
                events::insert(
                    &mut tx,
                    &NewEvent::new("device.status", ATTESTATION_ACTOR)
                        .device(a.device_id)
                        .reason(why)
                        .detail(serde_json::json!({ "from": status, "to": new_status })),
                    now_ms,
                )
                .await?;
                status_changed = Some((status, new_status));
            } else {
                new_status = status;
            }
        }
        if status_changed.is_some() {
            tx.commit_trust_changes(1).await?;
            self.directory.forget(a.device_id);
        } else {
            tx.commit().await?;
        }
        Ok(AppraisalEffect {
            integrity,
            status: new_status,
            status_changed,
        })
    }

    /// A device's latest appraisals, newest first.
    pub async fn attestation_history(&self, device_id: &str, limit: u32) -> Result<Vec<AttestationRecord>> {
        let rows = sqlx::query(
            "SELECT id, device_id, at, format, result, reason, firmware_name, firmware_version, firmware_digest, detail \
             FROM attestation_results WHERE device_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(device_id)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let detail: Option<String> = r.try_get("detail")?;
                Ok(AttestationRecord {
                    id: r.try_get("id")?,
                    device_id: r.try_get("device_id")?,
                    at_ms: r.try_get("at")?,
                    format: r.try_get("format")?,
                    result: r.try_get("result")?,
                    reason: r.try_get("reason")?,
                    firmware_name: r.try_get("firmware_name")?,
                    firmware_version: r.try_get("firmware_version")?,
                    firmware_digest: r.try_get("firmware_digest")?,
                    detail: detail.and_then(|d| serde_json::from_str(&d).ok()),
                })
            })
            .collect()
    }

    /// Marks verdicts older than their CA's freshness window `stale` (at most `limit` devices
    /// per call, oldest first), each with an `attestation.stale` event. Returns the devices.
    pub async fn mark_stale(&self, now_ms: i64, limit: u32) -> Result<Vec<String>> {
        let cas = sqlx::query("SELECT id, attestation_policy FROM provisioning_cas")
            .fetch_all(self.pool())
            .await?;
        let mut marked = Vec::new();
        for ca in cas {
            let remaining = limit.saturating_sub(u32::try_from(marked.len()).unwrap_or(u32::MAX));
            if remaining == 0 {
                break;
            }
            let ca_id: String = ca.try_get("id")?;
            let policy: Option<String> = ca.try_get("attestation_policy")?;
            let policy: AttestationPolicy = policy.and_then(|p| serde_json::from_str(&p).ok()).unwrap_or_default();
            let window_ms = i64::try_from(policy.freshness_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
            let cutoff = now_ms.saturating_sub(window_ms);
            // Read first; a write transaction only when there is something to mark (the sweep
            // runs every minute on every node). The UPDATE below re-checks the condition.
            let ids: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM devices WHERE integrity = 'verified' AND integrity_at < $1 AND ca_id = $2 \
                 ORDER BY integrity_at LIMIT $3",
            )
            .bind(cutoff)
            .bind(&ca_id)
            .bind(i64::from(remaining))
            .fetch_all(self.pool())
            .await?;
            if ids.is_empty() {
                continue;
            }
            let mut tx = self.begin_write().await?;
            for id in &ids {
                let n = sqlx::query(
                    "UPDATE devices SET integrity = 'stale', integrity_at = $2, integrity_reason = $3 \
                     WHERE id = $1 AND integrity = 'verified' AND integrity_at < $4",
                )
                .bind(id)
                .bind(now_ms)
                .bind(format!("no fresh evidence within {} s", policy.freshness_secs))
                .bind(cutoff)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if n == 1 {
                    events::insert(
                        &mut tx,
                        &NewEvent::new("attestation.stale", ATTESTATION_ACTOR)
                            .device(id)
                            .ca(&ca_id)
                            .reason(format!("no fresh evidence within {} s", policy.freshness_secs))
                            .detail(serde_json::json!({ "freshness_secs": policy.freshness_secs })),
                        now_ms,
                    )
                    .await?;
                    marked.push(id.clone());
                }
            }
            tx.commit().await?;
        }
        Ok(marked)
    }

    /// Adds a firmware reference value. `Conflict` if (name, version, digest) exists.
    #[allow(clippy::too_many_arguments)]
    pub async fn add_firmware_reference(
        &self,
        name: &str,
        version: &str,
        digest_hex: &str,
        signer_id_hex: Option<&str>,
        allowed: bool,
        by: &str,
        now_ms: i64,
    ) -> Result<FirmwareReference> {
        let is_hex = |s: &str| !s.is_empty() && s.len().is_multiple_of(2) && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_hex(digest_hex) || signer_id_hex.is_some_and(|s| !is_hex(s)) {
            return Err(RegistryError::Invalid {
                what: "firmware reference",
                detail: "digest and signer id must be hex".into(),
            });
        }
        let status = if allowed { "allowed" } else { "blocked" };
        let digest = digest_hex.to_ascii_lowercase();
        let signer = signer_id_hex.map(str::to_ascii_lowercase);
        let mut tx = self.begin_write().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO firmware_references (name, version, digest, signer_id, status, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(name)
        .bind(version)
        .bind(&digest)
        .bind(signer.as_deref())
        .bind(status)
        .bind(now_ms)
        .bind(by)
        .fetch_one(&mut *tx)
        .await?;
        events::insert(
            &mut tx,
            &NewEvent::new("firmware.reference_added", by).detail(serde_json::json!({
                "id": id, "name": name, "version": version, "digest": digest, "signer_id": signer, "status": status,
            })),
            now_ms,
        )
        .await?;
        tx.commit().await?;
        Ok(FirmwareReference {
            id,
            name: name.into(),
            version: version.into(),
            digest_hex: digest,
            signer_id_hex: signer,
            status: status.into(),
            created_at_ms: now_ms,
            created_by: by.into(),
        })
    }

    /// All firmware reference values, by name then version.
    pub async fn firmware_references(&self) -> Result<Vec<FirmwareReference>> {
        let rows = sqlx::query(
            "SELECT id, name, version, digest, signer_id, status, created_at, created_by FROM firmware_references \
             ORDER BY name, version, id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(FirmwareReference {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    version: r.try_get("version")?,
                    digest_hex: r.try_get("digest")?,
                    signer_id_hex: r.try_get("signer_id")?,
                    status: r.try_get("status")?,
                    created_at_ms: r.try_get("created_at")?,
                    created_by: r.try_get("created_by")?,
                })
            })
            .collect()
    }
}
