//! Provisioning CAs: registration, revocation (cascading to their devices), revoked serials and
//! CRLs — and the `verifier::x509::TrustStore` the gateway validates handshakes against.

use crate::events::{self, NewEvent};
use crate::{Registry, RegistryError, Result};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};
use verifier::challenge::DigestMode;
use verifier::x509::{
    Crl, IdentityPolicy, IdentitySource, ProvisioningCa, RevokedSerials, TrustStore, normalize_serial_hex,
};

/// A CA to register. Registration checks (proof of possession, key quality) are made by
/// `verifier::x509::check_ca_registration` before this is called.
#[derive(Clone, Debug)]
pub struct NewCa<'a> {
    pub cert_der: &'a [u8],
    pub identity_source: IdentitySource,
    pub identity_pattern: Option<&'a str>,
    pub digest_mode: DigestMode,
    /// JITR puts new devices straight into `active` (else `pending`, awaiting approval).
    pub auto_activate: bool,
    pub registered_by: &'a str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CaStatus {
    Active,
    Revoked,
}

/// A registered provisioning CA.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CaRecord {
    /// SHA-256 of the certificate, lower-case hex.
    pub id: String,
    pub subject: String,
    #[serde(skip)]
    pub cert_der: Vec<u8>,
    pub identity_source: IdentitySource,
    pub identity_pattern: Option<String>,
    pub digest_mode: DigestMode,
    pub auto_activate: bool,
    pub status: CaStatus,
    pub registered_at_ms: i64,
    pub registered_by: String,
    pub revoked_at_ms: Option<i64>,
    pub revoked_by: Option<String>,
    pub revoked_reason: Option<String>,
}

fn source_name(s: IdentitySource) -> &'static str {
    match s {
        IdentitySource::CommonName => "common_name",
        IdentitySource::SerialNumber => "serial_number",
        IdentitySource::SpkiSha256 => "spki_sha256",
    }
}

fn ca_from_row(r: &AnyRow) -> Result<CaRecord> {
    let corrupt = |what: &str| RegistryError::Invalid {
        what: "stored CA",
        detail: format!("unknown {what}"),
    };
    let source: String = r.try_get("identity_source")?;
    let mode: String = r.try_get("digest_mode")?;
    let status: String = r.try_get("status")?;
    Ok(CaRecord {
        id: r.try_get("id")?,
        subject: r.try_get("subject")?,
        cert_der: r.try_get("cert_der")?,
        identity_source: IdentitySource::parse(&source).ok_or_else(|| corrupt("identity source"))?,
        identity_pattern: r.try_get("identity_pattern")?,
        digest_mode: DigestMode::parse(&mode).ok_or_else(|| corrupt("digest mode"))?,
        auto_activate: r.try_get::<i64, _>("auto_activate")? != 0,
        status: match status.as_str() {
            "active" => CaStatus::Active,
            "revoked" => CaStatus::Revoked,
            _ => return Err(corrupt("status")),
        },
        registered_at_ms: r.try_get("registered_at")?,
        registered_by: r.try_get("registered_by")?,
        revoked_at_ms: r.try_get("revoked_at")?,
        revoked_by: r.try_get("revoked_by")?,
        revoked_reason: r.try_get("revoked_reason")?,
    })
}

const CA_COLUMNS: &str = "id, subject, cert_der, identity_source, identity_pattern, digest_mode, auto_activate, \
                          status, registered_at, registered_by, revoked_at, revoked_by, revoked_reason";

impl Registry {
    /// Registers a provisioning CA (and records the event). `Conflict` if it is already registered.
    pub async fn insert_ca(&self, ca: &NewCa<'_>, now_ms: i64) -> Result<CaRecord> {
        let info = verifier::x509::describe_certificate(ca.cert_der).map_err(|e| RegistryError::Invalid {
            what: "CA certificate",
            detail: e.to_string(),
        })?;
        // The policy must be valid before it is stored.
        IdentityPolicy::new(ca.identity_source, ca.identity_pattern).map_err(|e| RegistryError::Invalid {
            what: "identity policy",
            detail: e.to_string(),
        })?;
        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO provisioning_cas (id, subject, cert_der, identity_source, identity_pattern, digest_mode, \
             auto_activate, status, registered_at, registered_by) VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', $8, $9) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&info.sha256)
        .bind(&info.subject)
        .bind(ca.cert_der)
        .bind(source_name(ca.identity_source))
        .bind(ca.identity_pattern)
        .bind(ca.digest_mode.as_str())
        .bind(i64::from(ca.auto_activate))
        .bind(now_ms)
        .bind(ca.registered_by)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(RegistryError::Conflict {
                what: "provisioning CA",
                detail: format!("`{}` is already registered", info.subject),
            });
        }
        let event = NewEvent::new("ca.registered", ca.registered_by)
            .ca(&info.sha256)
            .detail(serde_json::json!({ "subject": info.subject, "auto_activate": ca.auto_activate }));
        events::insert(&mut tx, &event, now_ms).await?;
        tx.commit_trust_changes(1).await?;
        self.ca(&info.sha256).await
    }

    pub async fn ca(&self, id: &str) -> Result<CaRecord> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {CA_COLUMNS} FROM provisioning_cas WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| RegistryError::not_found("provisioning CA", id))?;
        ca_from_row(&row)
    }

    pub async fn cas(&self) -> Result<Vec<CaRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {CA_COLUMNS} FROM provisioning_cas ORDER BY registered_at, id"
        )))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(ca_from_row).collect()
    }

    /// Revokes a CA and every device under it, with an event for the CA and one per device.
    /// Returns how many devices were revoked.
    pub async fn revoke_ca(&self, id: &str, by: &str, reason: &str, now_ms: i64) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let changed = sqlx::query(
            "UPDATE provisioning_cas SET status = 'revoked', revoked_at = $2, revoked_by = $3, revoked_reason = $4 \
             WHERE id = $1 AND status = 'active'",
        )
        .bind(id)
        .bind(now_ms)
        .bind(by)
        .bind(reason)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            let exists: Option<String> = sqlx::query_scalar("SELECT status FROM provisioning_cas WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            return match exists {
                None => Err(RegistryError::not_found("provisioning CA", id)),
                Some(_) => Ok(0), // already revoked: idempotent
            };
        }
        // One event per device, written by the database in one statement.
        let device_events = sqlx::query(
            "INSERT INTO events (at, kind, actor, device_id, ca_id, reason, detail) \
             SELECT $1, 'device.status', $2, id, ca_id, $3, \
                    '{\"from\":\"' || status || '\",\"to\":\"revoked\",\"cause\":\"ca_revoked\"}' \
             FROM devices WHERE ca_id = $4 AND status <> 'revoked'",
        )
        .bind(now_ms)
        .bind(by)
        .bind(reason)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let devices = sqlx::query(
            "UPDATE devices SET status = 'revoked', status_changed_at = $1 WHERE ca_id = $2 AND status <> 'revoked'",
        )
        .bind(now_ms)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let event = NewEvent::new("ca.revoked", by)
            .ca(id)
            .reason(reason)
            .detail(serde_json::json!({ "devices_revoked": devices }));
        events::insert(&mut tx, &event, now_ms).await?;
        tx.commit_trust_changes(device_events + 1).await?;
        self.directory.forget_all();
        Ok(devices)
    }

    /// Adds a revoked serial (hex) under a CA.
    pub async fn revoke_serial(
        &self,
        ca_id: &str,
        serial_hex: &str,
        reason: &str,
        by: &str,
        now_ms: i64,
    ) -> Result<()> {
        let normalized = normalize_serial_hex(serial_hex).map_err(|_| RegistryError::Invalid {
            what: "serial number",
            detail: "expected hex".into(),
        })?;
        self.ca(ca_id).await?;
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO ca_revoked_serials (ca_id, serial, revoked_at, reason) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (ca_id, serial) DO NOTHING",
        )
        .bind(ca_id)
        .bind(&normalized)
        .bind(now_ms)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        let event = NewEvent::new("ca.serial_revoked", by)
            .ca(ca_id)
            .reason(reason)
            .detail(serde_json::json!({ "serial": normalized }));
        events::insert(&mut tx, &event, now_ms).await?;
        tx.commit_trust_changes(1).await?;
        Ok(())
    }

    /// Stores a CRL for a CA after checking that the CA signed it.
    pub async fn add_crl(&self, ca_id: &str, crl_der: &[u8], by: &str, now_ms: i64) -> Result<()> {
        let ca = self.ca(ca_id).await?;
        let crl = Crl::from_der(crl_der).map_err(|e| RegistryError::Invalid {
            what: "CRL",
            detail: e.to_string(),
        })?;
        crl.check_issued_by(&ca.cert_der).map_err(|e| RegistryError::Invalid {
            what: "CRL",
            detail: e.to_string(),
        })?;
        let info = crl.info();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO ca_crls (ca_id, crl_der, this_update, next_update, added_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (ca_id, this_update) DO NOTHING",
        )
        .bind(ca_id)
        .bind(crl_der)
        .bind(info.this_update.unix() * 1000)
        .bind(info.next_update.unix() * 1000)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        let event = NewEvent::new("ca.crl_added", by)
            .ca(ca_id)
            .detail(serde_json::json!({ "revoked": info.revoked, "next_update": info.next_update }));
        events::insert(&mut tx, &event, now_ms).await?;
        tx.commit_trust_changes(1).await?;
        Ok(())
    }

    /// What a CA has revoked: its revoked serials (normalized hex) and its newest CRL (DER).
    pub(crate) async fn revocation_inputs(&self, ca_id: &str) -> Result<(Vec<String>, Option<Vec<u8>>)> {
        let serials = sqlx::query_scalar("SELECT serial FROM ca_revoked_serials WHERE ca_id = $1")
            .bind(ca_id)
            .fetch_all(self.pool())
            .await?;
        let crl = sqlx::query_scalar("SELECT crl_der FROM ca_crls WHERE ca_id = $1 ORDER BY this_update DESC LIMIT 1")
            .bind(ca_id)
            .fetch_optional(self.pool())
            .await?;
        Ok((serials, crl))
    }

    /// The trust store for handshakes: active CAs with their policies, revoked serials and the
    /// newest CRL of each; revoked CAs are distrusted (so their devices get `ca_revoked`).
    pub async fn trust_store(&self) -> Result<TrustStore> {
        let mut store = TrustStore::new();
        for ca in self.cas().await? {
            if ca.status == CaStatus::Revoked {
                store.distrust_ca(&ca.cert_der).map_err(|e| RegistryError::Invalid {
                    what: "stored CA",
                    detail: e.to_string(),
                })?;
                continue;
            }
            let (rows, crl) = self.revocation_inputs(&ca.id).await?;
            let mut serials = RevokedSerials::new();
            for s in rows {
                // Stored normalized; cannot fail.
                let _ = serials.insert_hex(&s);
            }
            let identity = IdentityPolicy::new(ca.identity_source, ca.identity_pattern.as_deref()).map_err(|e| {
                RegistryError::Invalid {
                    what: "stored identity policy",
                    detail: e.to_string(),
                }
            })?;
            let anchor = ProvisioningCa::from_der(&ca.cert_der)
                .map_err(|e| RegistryError::Invalid {
                    what: "stored CA",
                    detail: e.to_string(),
                })?
                .with_identity(identity)
                .with_digest_mode(ca.digest_mode)
                .with_revoked_serials(serials);
            store.add_ca(anchor);
            if let Some(der) = crl {
                store.add_crl(Crl::from_der(&der).map_err(|e| RegistryError::Invalid {
                    what: "stored CRL",
                    detail: e.to_string(),
                })?);
            }
        }
        Ok(store)
    }
}
