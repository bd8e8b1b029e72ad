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
}

/// A Sigfox device (no key material).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SigfoxDeviceInfo {
    pub device_id: String,
    /// The last accepted sequence number (`None`: no message yet).
    pub last_seq: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// What storing became: the uplink's row id and the telemetry message published for it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredSigfoxUplink {
    pub id: i64,
    pub telemetry: Option<StoredMessage>,
}

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
        let row_id: i64 = sqlx::query_scalar(
            "INSERT INTO sigfox_uplinks (device_id, seq_number, payload, source, detail, received_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(&id)
        .bind(i64::from(u.seq_number))
        .bind(u.payload)
        .bind(u.source)
        .bind(u.detail.to_string())
        .bind(now_ms)
        .fetch_one(&mut *tx)
        .await?;
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
        Ok(Some(StoredSigfoxUplink { id: row_id, telemetry }))
    }

    /// Sigfox devices by id, after `after`.
    pub async fn sigfox_devices(&self, after: Option<&str>, limit: u32) -> Result<Vec<SigfoxDeviceInfo>> {
        let rows = sqlx::query(
            "SELECT device_id, last_seq, created_at, updated_at FROM sigfox_devices \
             WHERE device_id > $1 ORDER BY device_id LIMIT $2",
        )
        .bind(after.unwrap_or("").to_ascii_uppercase())
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(sigfox_info).collect()
    }

    /// One Sigfox device (no key material).
    pub async fn sigfox_device_info(&self, device_id: &str) -> Result<SigfoxDeviceInfo> {
        let id = hex_id("Sigfox device id", device_id, 4)?;
        let row =
            sqlx::query("SELECT device_id, last_seq, created_at, updated_at FROM sigfox_devices WHERE device_id = $1")
                .bind(&id)
                .fetch_optional(self.pool())
                .await?
                .ok_or_else(|| RegistryError::not_found("Sigfox device", &id))?;
        sigfox_info(&row)
    }

    /// A device's latest accepted uplinks, newest first.
    pub async fn sigfox_uplinks(&self, device_id: &str, limit: u32) -> Result<Vec<SigfoxUplink>> {
        let id = hex_id("Sigfox device id", device_id, 4)?;
        let rows = sqlx::query(
            "SELECT id, device_id, seq_number, payload, source, detail, received_at FROM sigfox_uplinks \
             WHERE device_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(&id)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
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
                })
            })
            .collect()
    }
}

fn sigfox_info(r: &sqlx::any::AnyRow) -> Result<SigfoxDeviceInfo> {
    Ok(SigfoxDeviceInfo {
        device_id: r.try_get("device_id")?,
        last_seq: r.try_get("last_seq")?,
        created_at_ms: r.try_get("created_at")?,
        updated_at_ms: r.try_get("updated_at")?,
    })
}
