//! Attestation state: outstanding challenges (single use enforced by the database), results,
//! and firmware reference values.

use crate::events::{self, NewEvent};
use crate::{Registry, RegistryError, Result};
use serde::Serialize;
use sqlx::Row;
use verifier::challenge::{Challenge, Nonce};

/// Why a challenge answer's nonce was refused by the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RedeemOutcome {
    /// Accepted now; it can never be accepted again.
    Redeemed,
    /// No such nonce for this device.
    Unknown,
    AlreadyUsed,
    Expired,
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
    pub reason: Option<&'a str>,
    pub firmware_name: Option<&'a str>,
    pub firmware_version: Option<&'a str>,
    pub firmware_digest: Option<&'a str>,
}

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
        let row = sqlx::query("SELECT used_at FROM attestation_challenges WHERE nonce = $1 AND device_id = $2")
            .bind(&hex)
            .bind(device_id)
            .fetch_optional(self.pool())
            .await?;
        Ok(match row {
            None => RedeemOutcome::Unknown,
            Some(r) if r.try_get::<Option<i64>, _>("used_at")?.is_some() => RedeemOutcome::AlreadyUsed,
            Some(_) => RedeemOutcome::Expired,
        })
    }

    /// Records an appraisal, with an event.
    pub async fn record_attestation(&self, a: &AttestationResult<'_>, now_ms: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let result = if a.verified { "verified" } else { "failed" };
        sqlx::query(
            "INSERT INTO attestation_results (device_id, at, format, result, reason, firmware_name, firmware_version, \
             firmware_digest) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(a.device_id)
        .bind(now_ms)
        .bind(a.format)
        .bind(result)
        .bind(a.reason)
        .bind(a.firmware_name)
        .bind(a.firmware_version)
        .bind(a.firmware_digest)
        .execute(&mut *tx)
        .await?;
        let mut event = NewEvent::new("attestation.result", "attestation")
            .device(a.device_id)
            .detail(
                serde_json::json!({ "format": a.format, "result": result, "firmware_version": a.firmware_version }),
            );
        if let Some(reason) = a.reason {
            event = event.reason(reason);
        }
        events::insert(&mut tx, &event, now_ms).await?;
        tx.commit().await?;
        Ok(())
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
        let _turn = self.write_turn().await;
        let is_hex = |s: &str| !s.is_empty() && s.len().is_multiple_of(2) && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_hex(digest_hex) || signer_id_hex.is_some_and(|s| !is_hex(s)) {
            return Err(RegistryError::Invalid {
                what: "firmware reference",
                detail: "digest and signer id must be hex".into(),
            });
        }
        let status = if allowed { "allowed" } else { "blocked" };
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO firmware_references (name, version, digest, signer_id, status, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(name)
        .bind(version)
        .bind(digest_hex.to_ascii_lowercase())
        .bind(signer_id_hex.map(str::to_ascii_lowercase))
        .bind(status)
        .bind(now_ms)
        .bind(by)
        .fetch_one(self.pool())
        .await?;
        Ok(FirmwareReference {
            id,
            name: name.into(),
            version: version.into(),
            digest_hex: digest_hex.to_ascii_lowercase(),
            signer_id_hex: signer_id_hex.map(str::to_ascii_lowercase),
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
