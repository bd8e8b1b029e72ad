//! Devices: just-in-time registration, lifecycle, integrity, labels and fleet queries.

use crate::events::{self, NewEvent};
use crate::sql::SqlBuilder;
use crate::{Registry, RegistryError, Result, WriteTx};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    /// Seen, awaiting approval.
    Pending,
    Active,
    /// Integrity or clone suspicion: may connect only to attest.
    Quarantined,
    /// Refused at the handshake. Terminal.
    Revoked,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Pending => "pending",
            DeviceStatus::Active => "active",
            DeviceStatus::Quarantined => "quarantined",
            DeviceStatus::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => DeviceStatus::Pending,
            "active" => DeviceStatus::Active,
            "quarantined" => DeviceStatus::Quarantined,
            "revoked" => DeviceStatus::Revoked,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Integrity {
    Unknown,
    Verified,
    Failed,
    Stale,
}

impl Integrity {
    pub fn as_str(self) -> &'static str {
        match self {
            Integrity::Unknown => "unknown",
            Integrity::Verified => "verified",
            Integrity::Failed => "failed",
            Integrity::Stale => "stale",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "unknown" => Integrity::Unknown,
            "verified" => Integrity::Verified,
            "failed" => Integrity::Failed,
            "stale" => Integrity::Stale,
            _ => return None,
        })
    }
}

/// A device connection as the gateway saw it (after its chain validated).
#[derive(Clone, Debug)]
pub struct Sighting<'a> {
    pub device_id: &'a str,
    pub ca_id: &'a str,
    pub cert_der: &'a [u8],
    pub cert_sha256: &'a str,
    pub cert_serial: &'a str,
    pub cert_not_after_ms: i64,
    pub peer: Option<&'a str>,
    pub tls_version: Option<&'a str>,
    pub tls_suite: Option<&'a str>,
}

/// A device row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceRecord {
    pub id: String,
    pub ca_id: String,
    #[serde(skip)]
    pub cert_der: Vec<u8>,
    pub cert_sha256: String,
    pub cert_serial: String,
    pub cert_not_after_ms: i64,
    /// The device key's algorithm, e.g. `ECDSA P-256` (recorded at registration).
    pub cert_key: Option<String>,
    pub status: DeviceStatus,
    pub status_changed_at_ms: i64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub last_peer: Option<String>,
    pub tls_version: Option<String>,
    pub tls_suite: Option<String>,
    pub firmware_version: Option<String>,
    pub firmware_digest: Option<String>,
    pub integrity: Integrity,
    pub integrity_at_ms: Option<i64>,
    pub integrity_reason: Option<String>,
    pub connections: i64,
}

/// What just-in-time registration did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub device: DeviceRecord,
    /// This connection created the device (exactly one concurrent connection sees `true`).
    pub created: bool,
    /// The device presented a different certificate than the one on record (renewal — or a
    /// clone): recorded with an event, for the gateway's clone policy to judge.
    pub certificate_changed: bool,
}

/// Fleet query filters; all optional, combined with AND.
#[derive(Clone, Debug, Default)]
pub struct DeviceFilter {
    pub status: Option<DeviceStatus>,
    pub ca_id: Option<String>,
    pub firmware_version: Option<String>,
    /// The measured image digest (hex, lower case).
    pub firmware_digest: Option<String>,
    pub integrity: Option<Integrity>,
    /// A label `key=value`.
    pub label: Option<(String, String)>,
    pub last_seen_after_ms: Option<i64>,
    pub last_seen_before_ms: Option<i64>,
    pub id_prefix: Option<String>,
}

/// One page of a keyset-paginated listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `after` for the next page; `None` on the last page.
    pub next_after: Option<String>,
}

/// Counts for dashboards.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FleetSummary {
    pub total: i64,
    pub by_status: BTreeMap<String, i64>,
    pub by_integrity: BTreeMap<String, i64>,
    /// The 20 most common firmware versions (`unknown` for none reported).
    pub by_firmware: BTreeMap<String, i64>,
    /// Devices per provisioning CA id.
    pub by_ca: BTreeMap<String, i64>,
    /// Devices per key algorithm (`unknown` for devices registered before it was recorded).
    pub by_key: BTreeMap<String, i64>,
}

const DEVICE_COLUMNS: &str = "id, ca_id, cert_der, cert_sha256, cert_serial, cert_not_after, cert_key, status, \
     status_changed_at, first_seen, last_seen, last_peer, tls_version, tls_suite, firmware_version, firmware_digest, integrity, \
     integrity_at, integrity_reason, connections";

fn device_from_row(r: &AnyRow) -> Result<DeviceRecord> {
    let corrupt = |what: &str| RegistryError::Invalid {
        what: "stored device",
        detail: format!("unknown {what}"),
    };
    let status: String = r.try_get("status")?;
    let integrity: String = r.try_get("integrity")?;
    Ok(DeviceRecord {
        id: r.try_get("id")?,
        ca_id: r.try_get("ca_id")?,
        cert_der: r.try_get("cert_der")?,
        cert_sha256: r.try_get("cert_sha256")?,
        cert_serial: r.try_get("cert_serial")?,
        cert_not_after_ms: r.try_get("cert_not_after")?,
        cert_key: r.try_get("cert_key")?,
        status: DeviceStatus::parse(&status).ok_or_else(|| corrupt("status"))?,
        status_changed_at_ms: r.try_get("status_changed_at")?,
        first_seen_ms: r.try_get("first_seen")?,
        last_seen_ms: r.try_get("last_seen")?,
        last_peer: r.try_get("last_peer")?,
        tls_version: r.try_get("tls_version")?,
        tls_suite: r.try_get("tls_suite")?,
        firmware_version: r.try_get("firmware_version")?,
        firmware_digest: r.try_get("firmware_digest")?,
        integrity: Integrity::parse(&integrity).ok_or_else(|| corrupt("integrity"))?,
        integrity_at_ms: r.try_get("integrity_at")?,
        integrity_reason: r.try_get("integrity_reason")?,
        connections: r.try_get("connections")?,
    })
}

/// The lifecycle: revoked is terminal; everything else may move anywhere else.
fn transition_allowed(from: DeviceStatus, to: DeviceStatus) -> bool {
    from != DeviceStatus::Revoked && from != to
}

impl Registry {
    /// Just-in-time registration and "seen" bookkeeping for one connection, in one transaction:
    /// creates the device (`active` if `auto_activate`, else `pending`) with a
    /// `device.registered` event when it is new, then records the sighting. Concurrent first
    /// connections of one device produce exactly one row and one event (the database decides).
    pub async fn register_or_touch(&self, s: &Sighting<'_>, auto_activate: bool, now_ms: i64) -> Result<Registration> {
        let status = initial_status(auto_activate);
        let cert_key = cert_key_of(s);
        let mut tx = self.begin_write().await?;
        // A new device's row is written whole, with this connection's sighting: a registration is
        // two statements and a commit (it was five: the reads and the update below only matter
        // for a device that already exists).
        let created = sqlx::query(
            "INSERT INTO devices (id, ca_id, cert_der, cert_sha256, cert_serial, cert_not_after, status, status_changed_at, \
             first_seen, last_seen, integrity, connections, cert_key, last_peer, tls_version, tls_suite) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $8, 'unknown', 1, $9, $10, $11, $12) ON CONFLICT (id) DO NOTHING",
        )
        .bind(s.device_id)
        .bind(s.ca_id)
        .bind(s.cert_der)
        .bind(s.cert_sha256)
        .bind(s.cert_serial)
        .bind(s.cert_not_after_ms)
        .bind(status.as_str().to_owned())
        .bind(now_ms)
        .bind(cert_key.clone())
        .bind(s.peer)
        .bind(s.tls_version)
        .bind(s.tls_suite)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if created {
            let event = NewEvent::new("device.registered", "jitr")
                .device(s.device_id)
                .ca(s.ca_id)
                .detail(serde_json::json!({ "status": status, "serial": s.cert_serial, "peer": s.peer }));
            events::insert(&mut tx, &event, now_ms).await?;
            tx.commit().await?;
            return Ok(Registration {
                device: new_device_record(s, status, cert_key, now_ms),
                created: true,
                certificate_changed: false,
            });
        }
        let (device, certificate_changed) = touch_existing(&mut tx, s, cert_key, now_ms).await?;
        tx.commit().await?;
        Ok(Registration {
            device,
            created,
            certificate_changed,
        })
    }

    pub async fn device(&self, id: &str) -> Result<DeviceRecord> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| RegistryError::not_found("device", id))?;
        let mut device = device_from_row(&row)?;
        // Connections admitted from the directory whose bookkeeping is not written yet.
        if let Some(p) = self.directory.pending_of(id) {
            p.apply_to(&mut device);
        }
        Ok(device)
    }

    /// Moves a device through its lifecycle, with a `device.status` event (who, why, from, to).
    /// `Conflict` for a forbidden transition (out of `revoked`, or to the same status).
    pub async fn set_device_status(
        &self,
        id: &str,
        to: DeviceStatus,
        actor: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<DeviceRecord> {
        let mut tx = self.begin_write().await?;
        let from: String = sqlx::query_scalar("SELECT status FROM devices WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| RegistryError::not_found("device", id))?;
        let from = DeviceStatus::parse(&from).ok_or_else(|| RegistryError::Invalid {
            what: "stored device",
            detail: "unknown status".into(),
        })?;
        if !transition_allowed(from, to) {
            return Err(RegistryError::Conflict {
                what: "device status",
                detail: format!("`{id}` cannot go from {} to {}", from.as_str(), to.as_str()),
            });
        }
        // Conditional on the status we read, so a concurrent change cannot be overwritten.
        let changed =
            sqlx::query("UPDATE devices SET status = $2, status_changed_at = $3 WHERE id = $1 AND status = $4")
                .bind(id)
                .bind(to.as_str())
                .bind(now_ms)
                .bind(from.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if changed == 0 {
            return Err(RegistryError::Conflict {
                what: "device status",
                detail: "changed concurrently; retry".into(),
            });
        }
        let event = NewEvent::new("device.status", actor)
            .device(id)
            .reason(reason)
            .detail(serde_json::json!({ "from": from, "to": to }));
        events::insert(&mut tx, &event, now_ms).await?;
        tx.commit_trust_changes(1).await?;
        self.directory.forget(id);
        self.device(id).await
    }

    /// Records an integrity verdict (attestation), with an event.
    pub async fn set_integrity(
        &self,
        id: &str,
        integrity: Integrity,
        reason: Option<&str>,
        actor: &str,
        now_ms: i64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let n =
            sqlx::query("UPDATE devices SET integrity = $2, integrity_at = $3, integrity_reason = $4 WHERE id = $1")
                .bind(id)
                .bind(integrity.as_str().to_owned())
                .bind(now_ms)
                .bind(reason)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if n == 0 {
            return Err(RegistryError::not_found("device", id));
        }
        let mut event = NewEvent::new("device.integrity", actor)
            .device(id)
            .detail(serde_json::json!({ "integrity": integrity }));
        if let Some(r) = reason {
            event = event.reason(r);
        }
        events::insert(&mut tx, &event, now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records the firmware a device reports (version, image digest hex).
    pub async fn set_firmware(&self, id: &str, version: &str, digest_hex: &str) -> Result<()> {
        let _turn = self.write_turn().await;
        let n = sqlx::query("UPDATE devices SET firmware_version = $2, firmware_digest = $3 WHERE id = $1")
            .bind(id)
            .bind(version)
            .bind(digest_hex)
            .execute(self.pool())
            .await?
            .rows_affected();
        if n == 0 {
            return Err(RegistryError::not_found("device", id));
        }
        Ok(())
    }

    /// Sets (or with `None`, removes) a device label.
    pub async fn set_label(&self, id: &str, key: &str, value: Option<&str>) -> Result<()> {
        let _turn = self.write_turn().await;
        self.device(id).await?;
        match value {
            Some(v) => {
                sqlx::query(
                    "INSERT INTO device_labels (device_id, key, value) VALUES ($1, $2, $3) \
                     ON CONFLICT (device_id, key) DO UPDATE SET value = excluded.value",
                )
                .bind(id)
                .bind(key)
                .bind(v)
                .execute(self.pool())
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM device_labels WHERE device_id = $1 AND key = $2")
                    .bind(id)
                    .bind(key)
                    .execute(self.pool())
                    .await?;
            }
        }
        Ok(())
    }

    /// Replaces all of a device's labels in one transaction, with a `device.labels` event.
    pub async fn set_labels(
        &self,
        id: &str,
        labels: &BTreeMap<String, String>,
        actor: &str,
        now_ms: i64,
    ) -> Result<BTreeMap<String, String>> {
        let mut tx = self.begin_write().await?;
        let exists: Option<String> = sqlx::query_scalar("SELECT id FROM devices WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(RegistryError::not_found("device", id));
        }
        sqlx::query("DELETE FROM device_labels WHERE device_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        for (key, value) in labels {
            sqlx::query("INSERT INTO device_labels (device_id, key, value) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(key)
                .bind(value)
                .execute(&mut *tx)
                .await?;
        }
        let event = NewEvent::new("device.labels", actor)
            .device(id)
            .detail(serde_json::json!({ "labels": labels }));
        events::insert(&mut tx, &event, now_ms).await?;
        tx.commit().await?;
        Ok(labels.clone())
    }

    pub async fn labels(&self, id: &str) -> Result<BTreeMap<String, String>> {
        let rows = sqlx::query("SELECT key, value FROM device_labels WHERE device_id = $1 ORDER BY key")
            .bind(id)
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("key")?, r.try_get("value")?)))
            .collect()
    }

    /// Lists devices matching `filter`, ordered by id, `limit` (1–1000) per page, after the id
    /// `after` (keyset pagination: constant cost per page at any depth).
    pub async fn list_devices(
        &self,
        filter: &DeviceFilter,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<DeviceRecord>> {
        let limit = limit.clamp(1, 1000);
        // Only the filters given become SQL, so each combination gets a plan that can use its
        // index (a catch-all `$n IS NULL OR …` defeats PostgreSQL's generic plans).
        let mut q = SqlBuilder::new(
            self.backend(),
            format!("SELECT {DEVICE_COLUMNS} FROM devices d WHERE id > "),
        );
        q.bind(after.unwrap_or("").to_owned());
        if let Some(status) = filter.status {
            q.push(" AND status = ").bind(status.as_str().to_owned());
        }
        if let Some(ca) = &filter.ca_id {
            q.push(" AND ca_id = ").bind(ca.clone());
        }
        if let Some(digest) = &filter.firmware_digest {
            q.push(" AND firmware_digest = ").bind(digest.to_ascii_lowercase());
        }
        if let Some(fw) = &filter.firmware_version {
            q.push(" AND firmware_version = ").bind(fw.clone());
        }
        if let Some(integrity) = filter.integrity {
            q.push(" AND integrity = ").bind(integrity.as_str().to_owned());
        }
        if let Some(t) = filter.last_seen_after_ms {
            q.push(" AND last_seen >= ").bind(t);
        }
        if let Some(t) = filter.last_seen_before_ms {
            q.push(" AND last_seen < ").bind(t);
        }
        if let Some(prefix) = &filter.id_prefix {
            q.push(" AND id >= ").bind(prefix.clone());
            q.push(" AND id < ").bind(prefix_upper_bound(prefix));
        }
        if let Some((key, value)) = &filter.label {
            q.push(" AND EXISTS (SELECT 1 FROM device_labels l WHERE l.device_id = d.id AND l.key = ")
                .bind(key.clone())
                .push(" AND l.value = ")
                .bind(value.clone())
                .push(")");
        }
        q.push(" ORDER BY id LIMIT ").bind(i64::from(limit) + 1);
        let rows = q.build()?.fetch_all(self.pool()).await?;
        let mut items = rows.iter().map(device_from_row).collect::<Result<Vec<_>>>()?;
        let next_after = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|d| d.id.clone())
        } else {
            None
        };
        Ok(Page { items, next_after })
    }

    /// Counts by status, integrity and firmware for dashboards. Read from `fleet_counts`, which
    /// database triggers keep exact (migration 0002): constant time at any fleet size.
    pub async fn fleet_summary(&self) -> Result<FleetSummary> {
        // Firmware digests are left out: their number grows with what devices report (see
        // `firmware_digest_counts`, which the audit reads).
        let rows = sqlx::query(
            "SELECT dimension, value, CAST(SUM(n) AS BIGINT) AS n FROM fleet_counts WHERE dimension <> 'digest' \
             GROUP BY dimension, value HAVING SUM(n) <> 0",
        )
        .fetch_all(self.pool())
        .await?;
        let mut summary = FleetSummary::default();
        let mut firmware = Vec::new();
        for r in rows {
            let dimension: String = r.try_get("dimension")?;
            let value: String = r.try_get("value")?;
            // (SUM of BIGINT is NUMERIC on PostgreSQL, hence the CAST above.)
            let n: i64 = r.try_get("n")?;
            match dimension.as_str() {
                "status" => {
                    summary.by_status.insert(value, n);
                }
                "integrity" => {
                    summary.by_integrity.insert(value, n);
                }
                "ca" => {
                    summary.by_ca.insert(value, n);
                }
                "key" => {
                    summary.by_key.insert(value, n);
                }
                "firmware" => firmware.push((value, n)),
                _ => {}
            }
        }
        firmware.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        summary.by_firmware = firmware.into_iter().take(20).collect();
        summary.total = summary.by_status.values().sum();
        Ok(summary)
    }
}

impl Registry {
    /// Devices per reported firmware image digest (`unknown`: none reported), from the
    /// trigger-maintained counters.
    pub async fn firmware_digest_counts(&self) -> Result<BTreeMap<String, i64>> {
        let rows = sqlx::query(
            "SELECT value, CAST(SUM(n) AS BIGINT) AS n FROM fleet_counts WHERE dimension = 'digest' \
             GROUP BY value HAVING SUM(n) <> 0",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("value")?, r.try_get("n")?)))
            .collect()
    }
}

/// The smallest string greater than every string starting with `prefix` (for a range scan).
fn prefix_upper_bound(prefix: &str) -> String {
    // Device ids are printable ASCII (verifier::x509::DeviceId), so appending the highest
    // code point below DEL bounds the range.
    format!("{prefix}\u{7f}")
}

impl Registry {
    /// Ids of every device in `status` (the gateway keeps revoked ones in memory to refuse them
    /// at the handshake).
    pub async fn device_ids_with_status(&self, status: DeviceStatus) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT id FROM devices WHERE status = $1")
            .bind(status.as_str())
            .fetch_all(self.pool())
            .await?)
    }

    /// Where the things a handshake depends on (CAs, revoked serials, CRLs, device status) stand:
    /// it changes whenever one of them does. Gateways poll it to learn of changes made by other
    /// processes.
    pub async fn trust_generation(&self) -> Result<TrustGeneration> {
        let mut conn = self.pool().acquire().await?;
        trust_generation_on(&mut conn).await
    }
}

/// The trust generation, read in one statement (one snapshot).
pub(crate) async fn trust_generation_on(conn: &mut sqlx::AnyConnection) -> Result<TrustGeneration> {
    let (changes, newest_event): (i64, i64) = sqlx::query_as(concat!(
        "SELECT (SELECT changes FROM trust_state WHERE id = 1), ",
        "(SELECT CAST(COALESCE(MAX(id), 0) AS BIGINT) FROM events WHERE kind IN ",
        trust_event_kinds!(),
        ")"
    ))
    .fetch_one(conn)
    .await?;
    Ok(TrustGeneration { changes, newest_event })
}

/// A point in the history of trust changes (CAs registered or revoked, serials revoked, CRLs
/// added, device status changes), as one snapshot of the database saw it.
///
/// `changes` counts the trust events committed so far: every transaction that writes them adds
/// their number as its last statement, so it grows with each such commit, in commit order.
/// `newest_event` is the highest trust event id then visible. The id alone would not do: an id
/// is taken when its row is inserted, not when its transaction commits, so on PostgreSQL a
/// revocation holding id 100 can commit after id 101 was seen, and the newest id never moves.
/// Ordered by `changes` first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct TrustGeneration {
    pub changes: i64,
    pub newest_event: i64,
}

impl Registry {
    /// Moves devices' `last_seen` forward (never back): the gateway reports traffic here every
    /// few seconds rather than per message. One statement per `LAST_SEEN_ROWS` devices (a
    /// statement per device held SQLite's write lock ~30 ms for 1,000 devices, and a
    /// registration waited behind it); when an interactive write waits, what is done so far
    /// commits and the lock passes on. Moving forward only, a retry after an error is harmless.
    pub async fn touch_last_seen(&self, seen: &[(String, i64)]) -> Result<()> {
        let mut rest = seen;
        while !rest.is_empty() {
            let mut tx = self.begin_bulk_write().await?;
            loop {
                let (chunk, tail) = rest.split_at(rest.len().min(LAST_SEEN_ROWS));
                let mut q = SqlBuilder::new(self.backend(), "WITH seen (id, at) AS (VALUES ");
                for (i, (id, at)) in chunk.iter().enumerate() {
                    q.push(if i == 0 { "(" } else { ", (" });
                    q.bind(id.clone()).push(", ");
                    q.bind(*at).push(")");
                }
                q.push(
                    ") UPDATE devices SET last_seen = seen.at FROM seen \
                     WHERE devices.id = seen.id AND devices.last_seen < seen.at",
                );
                q.build()?.persistent(false).execute(&mut *tx).await?;
                rest = tail;
                if rest.is_empty() || self.interactive_write_waiting() {
                    break;
                }
            }
            tx.commit().await?;
        }
        Ok(())
    }
}

/// Devices per `last_seen` statement (two parameters each).
const LAST_SEEN_ROWS: usize = 500;

/// The device key's algorithm, for the weak-key audit (the chain was validated, so it parses).
pub(crate) fn cert_key_of(s: &Sighting<'_>) -> Option<String> {
    verifier::x509::describe_certificate(s.cert_der).ok().map(|i| i.key)
}

/// The status a new device starts in.
pub(crate) fn initial_status(auto_activate: bool) -> DeviceStatus {
    if auto_activate {
        DeviceStatus::Active
    } else {
        DeviceStatus::Pending
    }
}

/// The row a registration writes for a new device, as [`device_from_row`] would read it back.
pub(crate) fn new_device_record(
    s: &Sighting<'_>,
    status: DeviceStatus,
    cert_key: Option<String>,
    now_ms: i64,
) -> DeviceRecord {
    DeviceRecord {
        id: s.device_id.to_owned(),
        ca_id: s.ca_id.to_owned(),
        cert_der: s.cert_der.to_vec(),
        cert_sha256: s.cert_sha256.to_owned(),
        cert_serial: s.cert_serial.to_owned(),
        cert_not_after_ms: s.cert_not_after_ms,
        cert_key,
        status,
        status_changed_at_ms: now_ms,
        first_seen_ms: now_ms,
        last_seen_ms: now_ms,
        last_peer: s.peer.map(str::to_owned),
        tls_version: s.tls_version.map(str::to_owned),
        tls_suite: s.tls_suite.map(str::to_owned),
        firmware_version: None,
        firmware_digest: None,
        integrity: Integrity::Unknown,
        integrity_at_ms: None,
        integrity_reason: None,
        connections: 1,
    }
}

/// Records a connection of a device that exists: a certificate change (with an event), the
/// sighting; returns the row and whether the certificate changed.
pub(crate) async fn touch_existing(
    tx: &mut WriteTx,
    s: &Sighting<'_>,
    cert_key: Option<String>,
    now_ms: i64,
) -> Result<(DeviceRecord, bool)> {
    let previous_cert: String = sqlx::query_scalar("SELECT cert_sha256 FROM devices WHERE id = $1")
        .bind(s.device_id)
        .fetch_one(&mut **tx)
        .await?;
    let certificate_changed = previous_cert != s.cert_sha256;
    if certificate_changed {
        let event = NewEvent::new("device.certificate_changed", "gateway")
            .device(s.device_id)
            .ca(s.ca_id)
            .detail(serde_json::json!({ "previous_sha256": previous_cert, "sha256": s.cert_sha256, "serial": s.cert_serial }));
        events::insert(tx, &event, now_ms).await?;
    }
    sqlx::query(
        "UPDATE devices SET last_seen = $2, connections = connections + 1, last_peer = $3, tls_version = $4, \
         tls_suite = $5, ca_id = $6, cert_der = $7, cert_sha256 = $8, cert_serial = $9, cert_not_after = $10, \
         cert_key = $11 WHERE id = $1",
    )
    .bind(s.device_id)
    .bind(now_ms)
    .bind(s.peer)
    .bind(s.tls_version)
    .bind(s.tls_suite)
    .bind(s.ca_id)
    .bind(s.cert_der)
    .bind(s.cert_sha256)
    .bind(s.cert_serial)
    .bind(s.cert_not_after_ms)
    .bind(cert_key)
    .execute(&mut **tx)
    .await?;
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"
    )))
    .bind(s.device_id)
    .fetch_one(&mut **tx)
    .await?;
    Ok((device_from_row(&row)?, certificate_changed))
}
