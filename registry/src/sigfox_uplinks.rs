//! Sigfox devices' state and accepted uplinks.
//!
//! A message is stored together with the device's sequence number, in one transaction: the
//! number advances by compare-and-swap from the value the caller judged the message against, so
//! two requests (or two nodes) carrying the same message cannot both store it. The loser learns
//! the number moved and judges again against the new one.

use crate::lpwan::hex_id;
use crate::{Registry, RegistryError, Result, Source, StoredMessage, TelemetryMessage};
use sqlx::Row;

/// An accepted Sigfox uplink to store.
#[derive(Clone, Debug)]
pub struct NewSigfoxUplink<'a> {
    /// 8 hex digits.
    pub device_id: &'a str,
    /// The 12-bit sequence number.
    pub seq_number: u16,
    pub payload: &'a [u8],
    /// `frame` (verified here with the NAK) or `callback` (from the Sigfox backend).
    pub source: &'a str,
    /// What came with it (station, rssi, snr, transmission, lost messages before it).
    pub detail: &'a serde_json::Value,
    /// Also publish the payload in the telemetry store under this topic, in the same transaction.
    pub topic: Option<&'a str>,
    /// When the Sigfox backend received it (unix seconds; callbacks only). With the device and
    /// the sequence number it names the message: a second store of the same one fails.
    pub sigfox_time: Option<i64>,
    /// Take the device's oldest queued downlink and record it as answered to this uplink.
    pub take_downlink: bool,
}

/// A stored Sigfox uplink.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SigfoxUplink {
    pub id: i64,
    pub device_id: String,
    pub seq_number: i64,
    pub payload: Vec<u8>,
    pub source: String,
    pub detail: serde_json::Value,
    pub received_at_ms: i64,
    /// When the Sigfox backend received it (unix seconds; callbacks only).
    pub sigfox_time: Option<i64>,
    /// The downlink (8 bytes) answered to it.
    pub downlink: Option<Vec<u8>>,
}

/// A Sigfox device (no key material).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SigfoxDeviceInfo {
    pub device_id: String,
    /// The last accepted sequence number (`None`: no message yet).
    pub last_seq: Option<i64>,
    /// Whether its NAK is held here (raw frames can be verified).
    pub has_nak: bool,
    /// `api` (provisioned) or `callback` (first heard of in a Sigfox backend callback).
    pub registered_via: String,
    /// The device encrypts its payloads (stored and reported as received, not decrypted).
    pub payload_encrypted: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// What storing became: the uplink's row id and the telemetry message published for it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredSigfoxUplink {
    pub id: i64,
    pub telemetry: Option<StoredMessage>,
    /// The downlink taken from the queue for it (with `take_downlink`), 8 bytes.
    pub downlink: Option<Vec<u8>>,
}

/// A downlink queued for (or answered to) a Sigfox device.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SigfoxDownlink {
    pub id: i64,
    pub device_id: String,
    /// 8 bytes.
    pub data: Vec<u8>,
    pub created_by: String,
    pub created_at_ms: i64,
    /// The uplink it was answered to (`None`: still queued).
    pub uplink_id: Option<i64>,
    pub sent_at_ms: Option<i64>,
}

/// Downlinks a device may have waiting at once.
pub const MAX_QUEUED_SIGFOX_DOWNLINKS: i64 = 32;

const UPLINK_COLUMNS: &str = "id, device_id, seq_number, payload, source, detail, received_at, sigfox_time, downlink";
const DEVICE_COLUMNS: &str = "device_id, last_seq, CAST(CASE WHEN nak IS NULL THEN 0 ELSE 1 END AS BIGINT) AS has_nak, registered_via, \
     payload_encrypted, created_at, updated_at";

impl Registry {
    /// Stores an accepted uplink and advances the device's sequence number from `expected` (what
    /// the caller judged the message against; `None`: no message yet) to its own, publishing the
    /// payload as telemetry if `topic` is set, all in one transaction. `Ok(None)` if the stored
    /// number is no longer `expected` (another request took a message first): nothing is stored.
    pub async fn store_sigfox_uplink(
        &self,
        u: &NewSigfoxUplink<'_>,
        expected: Option<i64>,
        now_ms: i64,
    ) -> Result<Option<StoredSigfoxUplink>> {
        let id = hex_id("Sigfox device id", u.device_id, 4)?;
        if u.source != "frame" && u.source != "callback" {
            return Err(RegistryError::Invalid {
                what: "Sigfox uplink",
                detail: "source must be frame or callback".into(),
            });
        }
        let mut tx = self.begin_write().await?;
        let advanced = match expected {
            None => sqlx::query(
                "UPDATE sigfox_devices SET last_seq = $1, updated_at = $2 WHERE device_id = $3 AND last_seq IS NULL",
            )
            .bind(i64::from(u.seq_number))
            .bind(now_ms)
            .bind(&id)
            .execute(&mut *tx)
            .await?,
            Some(last) => {
                sqlx::query(
                    "UPDATE sigfox_devices SET last_seq = $1, updated_at = $2 WHERE device_id = $3 AND last_seq = $4",
                )
                .bind(i64::from(u.seq_number))
                .bind(now_ms)
                .bind(&id)
                .bind(last)
                .execute(&mut *tx)
                .await?
            }
        }
        .rows_affected();
        if advanced != 1 {
            return Ok(None);
        }
        // The device's row is locked by the update above: its queue cannot move under us.
        let downlink: Option<(i64, Vec<u8>)> = if u.take_downlink {
            let row = sqlx::query(
                "SELECT id, data FROM sigfox_downlinks WHERE device_id = $1 AND uplink_id IS NULL ORDER BY id LIMIT 1",
            )
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await?;
            match row {
                Some(r) => Some((r.try_get("id")?, r.try_get("data")?)),
                None => None,
            }
        } else {
            None
        };
        let inserted = sqlx::query_scalar::<_, i64>(
            "INSERT INTO sigfox_uplinks (device_id, seq_number, payload, source, detail, received_at, sigfox_time, \
             downlink) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(&id)
        .bind(i64::from(u.seq_number))
        .bind(u.payload)
        .bind(u.source)
        .bind(u.detail.to_string())
        .bind(now_ms)
        .bind(u.sigfox_time)
        .bind(downlink.as_ref().map(|(_, d)| d.clone()))
        .fetch_one(&mut *tx)
        .await
        .map_err(RegistryError::from);
        let row_id = match inserted {
            Ok(id) => id,
            // The same message, stored by a request that raced this one: the caller finds it.
            Err(RegistryError::Conflict { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        if let Some((downlink_id, _)) = &downlink {
            sqlx::query("UPDATE sigfox_downlinks SET uplink_id = $1, sent_at = $2 WHERE id = $3")
                .bind(row_id)
                .bind(now_ms)
                .bind(downlink_id)
                .execute(&mut *tx)
                .await?;
        }
        let telemetry = match u.topic {
            Some(topic) => {
                let message = TelemetryMessage {
                    device_id: id.clone(),
                    topic: topic.to_owned(),
                    payload: u.payload.to_vec(),
                    qos: 0,
                    source: Source::Sigfox,
                    received_at_ms: now_ms,
                };
                let ids = self.insert_telemetry(&mut tx, std::slice::from_ref(&message)).await?;
                ids.first().map(|&i| message.stored(i))
            }
            None => None,
        };
        tx.commit().await?;
        Ok(Some(StoredSigfoxUplink {
            id: row_id,
            telemetry,
            downlink: downlink.map(|(_, d)| d),
        }))
    }

    /// Sigfox devices by id, after `after`.
    pub async fn sigfox_devices(&self, after: Option<&str>, limit: u32) -> Result<Vec<SigfoxDeviceInfo>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DEVICE_COLUMNS} FROM sigfox_devices WHERE device_id > $1 ORDER BY device_id LIMIT $2"
        )))
        .bind(after.unwrap_or("").to_ascii_uppercase())
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(sigfox_info).collect()
    }

    /// One Sigfox device (no key material).
    pub async fn sigfox_device_info(&self, device_id: &str) -> Result<SigfoxDeviceInfo> {
        let id = hex_id("Sigfox device id", device_id, 4)?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DEVICE_COLUMNS} FROM sigfox_devices WHERE device_id = $1"
        )))
        .bind(&id)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| RegistryError::not_found("Sigfox device", &id))?;
        sigfox_info(&row)
    }

    /// A device's latest accepted uplinks, newest first.
    pub async fn sigfox_uplinks(&self, device_id: &str, limit: u32) -> Result<Vec<SigfoxUplink>> {
        let id = hex_id("Sigfox device id", device_id, 4)?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {UPLINK_COLUMNS} FROM sigfox_uplinks WHERE device_id = $1 ORDER BY id DESC LIMIT $2"
        )))
        .bind(&id)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(sigfox_uplink).collect()
    }

    /// The stored message a callback names (device, sequence number, backend time), if any.
    pub async fn sigfox_uplink_by_message(
        &self,
        device_id: &str,
        seq_number: u16,
        sigfox_time: i64,
    ) -> Result<Option<SigfoxUplink>> {
        let id = hex_id("Sigfox device id", device_id, 4)?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {UPLINK_COLUMNS} FROM sigfox_uplinks WHERE device_id = $1 AND seq_number = $2 AND sigfox_time = $3"
        )))
        .bind(&id)
        .bind(i64::from(seq_number))
        .bind(sigfox_time)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(sigfox_uplink).transpose()
    }

    /// Queues a downlink (8 bytes) for a device: answered to its next callback that asks for
    /// one. `Conflict` if [`MAX_QUEUED_SIGFOX_DOWNLINKS`] wait already.
    pub async fn queue_sigfox_downlink(
        &self,
        device_id: &str,
        data: &[u8; 8],
        created_by: &str,
        now_ms: i64,
    ) -> Result<SigfoxDownlink> {
        let id = hex_id("Sigfox device id", device_id, 4)?;
        let mut tx = self.begin_write().await?;
        // Locks the device's row (PostgreSQL), so two requests cannot both pass the bound.
        let known = sqlx::query("UPDATE sigfox_devices SET updated_at = updated_at WHERE device_id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if known == 0 {
            return Err(RegistryError::not_found("Sigfox device", &id));
        }
        let waiting: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM sigfox_downlinks WHERE device_id = $1 AND uplink_id IS NULL")
                .bind(&id)
                .fetch_one(&mut *tx)
                .await?;
        if waiting >= MAX_QUEUED_SIGFOX_DOWNLINKS {
            return Err(RegistryError::Conflict {
                what: "Sigfox downlink",
                detail: format!("{waiting} downlinks already wait for {id}"),
            });
        }
        let row_id: i64 = sqlx::query_scalar(
            "INSERT INTO sigfox_downlinks (device_id, data, created_by, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(&id)
        .bind(&data[..])
        .bind(created_by)
        .bind(now_ms)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(SigfoxDownlink {
            id: row_id,
            device_id: id,
            data: data.to_vec(),
            created_by: created_by.to_owned(),
            created_at_ms: now_ms,
            uplink_id: None,
            sent_at_ms: None,
        })
    }

    /// A device's latest downlinks (queued and answered), newest first.
    pub async fn sigfox_downlinks(&self, device_id: &str, limit: u32) -> Result<Vec<SigfoxDownlink>> {
        let id = hex_id("Sigfox device id", device_id, 4)?;
        let rows = sqlx::query(
            "SELECT id, device_id, data, created_by, created_at, uplink_id, sent_at FROM sigfox_downlinks \
             WHERE device_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(&id)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SigfoxDownlink {
                    id: r.try_get("id")?,
                    device_id: r.try_get("device_id")?,
                    data: r.try_get("data")?,
                    created_by: r.try_get("created_by")?,
                    created_at_ms: r.try_get("created_at")?,
                    uplink_id: r.try_get("uplink_id")?,
                    sent_at_ms: r.try_get("sent_at")?,
                })
            })
            .collect()
    }
}

fn sigfox_uplink(r: &sqlx::any::AnyRow) -> Result<SigfoxUplink> {
    let detail: Option<String> = r.try_get("detail")?;
    Ok(SigfoxUplink {
        id: r.try_get("id")?,
        device_id: r.try_get("device_id")?,
        seq_number: r.try_get("seq_number")?,
        payload: r.try_get("payload")?,
        source: r.try_get("source")?,
        detail: detail
            .and_then(|d| serde_json::from_str(&d).ok())
            .unwrap_or(serde_json::Value::Null),
        received_at_ms: r.try_get("received_at")?,
        sigfox_time: r.try_get("sigfox_time")?,
        downlink: r.try_get("downlink")?,
    })
}

fn sigfox_info(r: &sqlx::any::AnyRow) -> Result<SigfoxDeviceInfo> {
    Ok(SigfoxDeviceInfo {
        device_id: r.try_get("device_id")?,
        last_seq: r.try_get("last_seq")?,
        has_nak: r.try_get::<i64, _>("has_nak")? != 0,
        registered_via: r.try_get("registered_via")?,
        payload_encrypted: r.try_get::<i64, _>("payload_encrypted")? != 0,
        created_at_ms: r.try_get("created_at")?,
        updated_at_ms: r.try_get("updated_at")?,
    })
}
