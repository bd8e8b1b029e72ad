//! Accepted LoRaWAN uplinks: one row per frame — (device, session, FCnt) — however many gateways
//! heard it, with every reception kept beside it.
//!
//! The uplink path writes in batches: [`Registry::store_lorawan_uplinks`] advances each device's
//! FCntUp and inserts the frames in one transaction of a few statements, whatever the batch size.
//! The counter moves only forward (guarded by the lowest counter of the device's frames in the
//! batch), so of two gateway nodes that accepted the same frame from their own caches exactly one
//! stores it; the other learns it was a replay.

use crate::lpwan::hex_id;
use crate::sql::SqlBuilder;
use crate::telemetry::{IdTable, RankedFrom, Retention, max_id};
use crate::{Registry, RegistryError, Result, Source, StoredMessage, TelemetryMessage};
use sqlx::Row;
use std::collections::{BTreeMap, HashSet};

/// An accepted uplink to store.
#[derive(Clone, Debug)]
pub struct NewLorawanUplink<'a> {
    pub dev_eui: &'a str,
    /// The session the frame belongs to: the opening join's JoinNonce + 1 (0 for ABP).
    pub session: i64,
    pub f_cnt: u32,
    pub f_port: Option<u8>,
    /// Decrypted FRMPayload.
    pub payload: &'a [u8],
    /// The receptions: `[{gateway, rssi, lsnr, freq, datr, tmst}]`.
    pub gateways: &'a serde_json::Value,
    /// Also publish the payload in the telemetry store under this topic, in the same transaction
    /// ([`Registry::store_lorawan_uplinks`]; `None`: not published).
    pub topic: Option<&'a str>,
}

/// What a batch of uplinks became.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredUplinks {
    /// One per uplink, in the batch's order.
    pub outcomes: Vec<UplinkOutcome>,
    /// The telemetry messages published for the stored uplinks (with their store ids), for
    /// fan-out to subscribers.
    pub telemetry: Vec<StoredMessage>,
}

/// A stored uplink.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LorawanUplink {
    pub id: i64,
    pub dev_eui: String,
    pub session: i64,
    pub f_cnt: i64,
    pub f_port: Option<i64>,
    pub payload: Vec<u8>,
    pub gateways: serde_json::Value,
    pub received_at_ms: i64,
}

/// What became of one uplink of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UplinkOutcome {
    /// Stored, and the device's FCntUp advanced to it.
    Stored,
    /// The stored FCntUp is already at or past this frame (another node accepted it or a later
    /// one): a replay, not stored.
    Replayed,
    /// This very frame is already stored.
    Duplicate,
}

/// Rows per INSERT: 7 parameters each.
const ROWS_PER_STATEMENT: usize = 400;

impl Registry {
    /// Stores an accepted uplink once per (device, session, FCnt), without touching the counter;
    /// `false` if that frame is already stored.
    pub async fn store_lorawan_uplink(&self, u: &NewLorawanUplink<'_>, now_ms: i64) -> Result<bool> {
        let _turn = self.write_turn().await;
        let dev_eui = hex_id("DevEUI", u.dev_eui, 8)?;
        let n = sqlx::query(
            "INSERT INTO lorawan_uplinks (dev_eui, session, f_cnt, f_port, payload, gateways, received_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (dev_eui, session, f_cnt) DO NOTHING",
        )
        .bind(&dev_eui)
        .bind(u.session)
        .bind(i64::from(u.f_cnt))
        .bind(u.f_port.map(i64::from))
        .bind(u.payload)
        .bind(u.gateways.to_string())
        .bind(now_ms)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Stores a batch of accepted uplinks, advances their devices' FCntUp and publishes the
    /// stored ones' payloads as telemetry, in one transaction: when this returns, every `Stored`
    /// frame and its telemetry message are durable. A device's frames in one batch must be in
    /// increasing FCnt order (the uplink path's cache guarantees it).
    pub async fn store_lorawan_uplinks(&self, batch: &[NewLorawanUplink<'_>], now_ms: i64) -> Result<StoredUplinks> {
        if batch.is_empty() {
            return Ok(StoredUplinks {
                outcomes: Vec::new(),
                telemetry: Vec::new(),
            });
        }
        let euis = batch
            .iter()
            .map(|u| hex_id("DevEUI", u.dev_eui, 8))
            .collect::<Result<Vec<_>>>()?;
        // Per device: the lowest and highest counter of its frames here.
        let mut range: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        for (u, eui) in batch.iter().zip(&euis) {
            let f = i64::from(u.f_cnt);
            let r = range.entry(eui.as_str()).or_insert((f, f));
            r.0 = r.0.min(f);
            r.1 = r.1.max(f);
        }
        // On SQLite nothing comes back in the common case (see `insert_telemetry` for why rows
        // are costly there); PostgreSQL reports outcomes with RETURNING, which also keeps two
        // nodes' concurrent batches exact under READ COMMITTED.
        let sqlite = self.backend() == crate::Backend::Sqlite;
        let mut tx = self.begin_bulk_write().await?;
        let mut advanced: HashSet<String> = HashSet::with_capacity(range.len());
        let devices: Vec<(&str, (i64, i64))> = range.into_iter().collect();
        let values = |q: &mut SqlBuilder, chunk: &[(&str, (i64, i64))]| {
            for (i, (eui, (lo, hi))) in chunk.iter().enumerate() {
                q.push(if i == 0 { "(" } else { ", (" });
                q.bind(eui.to_string()).push(", ");
                q.bind(*lo).push(", ");
                q.bind(*hi).push(")");
            }
        };
        for chunk in devices.chunks(ROWS_PER_STATEMENT) {
            let mut stale: HashSet<String> = HashSet::new();
            if sqlite {
                // The devices that will not advance (a replay, or gone): normally none. This
                // transaction holds SQLite's write lock, so the update below sees the same rows.
                let mut q = SqlBuilder::new(self.backend(), "WITH v (e, lo, hi) AS (VALUES ");
                values(&mut q, chunk);
                q.push(
                    ") SELECT v.e FROM v LEFT JOIN lorawan_devices d ON d.dev_eui = v.e \
                     WHERE d.dev_eui IS NULL OR d.f_cnt_up >= v.lo",
                );
                for row in q.build()?.fetch_all(&mut *tx).await? {
                    stale.insert(row.try_get::<String, _>(0)?);
                }
            }
            let mut q = SqlBuilder::new(self.backend(), "WITH v (e, lo, hi) AS (VALUES ");
            values(&mut q, chunk);
            q.push(") UPDATE lorawan_devices SET f_cnt_up = v.hi, updated_at = ");
            q.bind(now_ms);
            q.push(
                " FROM v WHERE lorawan_devices.dev_eui = v.e \
                 AND (lorawan_devices.f_cnt_up IS NULL OR lorawan_devices.f_cnt_up < v.lo)",
            );
            if sqlite {
                let n = q.build()?.execute(&mut *tx).await?.rows_affected();
                let expected = chunk.len() - stale.len();
                if n != expected as u64 {
                    return Err(RegistryError::Invalid {
                        what: "LoRaWAN uplink batch",
                        detail: format!("{n} counters advanced where {expected} were expected"),
                    });
                }
                advanced.extend(
                    chunk
                        .iter()
                        .map(|(e, _)| *e)
                        .filter(|e| !stale.contains(*e))
                        .map(str::to_owned),
                );
                continue;
            }
            q.push(" RETURNING lorawan_devices.dev_eui");
            for row in q.build()?.fetch_all(&mut *tx).await? {
                advanced.insert(row.try_get::<String, _>(0)?);
            }
        }
        let mut stored: HashSet<(String, i64)> = HashSet::with_capacity(batch.len());
        let fresh: Vec<(&NewLorawanUplink<'_>, &String)> = batch
            .iter()
            .zip(&euis)
            .filter(|(_, eui)| advanced.contains(eui.as_str()))
            .collect();
        let before = if sqlite {
            Some(max_id(&mut tx, IdTable::LorawanUplinks).await?)
        } else {
            None
        };
        let mut inserted = 0u64;
        for chunk in fresh.chunks(ROWS_PER_STATEMENT) {
            let mut q = SqlBuilder::new(
                self.backend(),
                "INSERT INTO lorawan_uplinks (dev_eui, session, f_cnt, f_port, payload, gateways, received_at) VALUES ",
            );
            for (i, (u, eui)) in chunk.iter().enumerate() {
                q.push(if i == 0 { "(" } else { ", (" });
                q.bind(eui.to_string()).push(", ");
                q.bind(u.session).push(", ");
                q.bind(i64::from(u.f_cnt)).push(", ");
                q.bind(u.f_port.map(i64::from)).push(", ");
                q.bind(u.payload.to_vec()).push(", ");
                q.bind(u.gateways.to_string()).push(", ");
                q.bind(now_ms).push(")");
            }
            q.push(" ON CONFLICT (dev_eui, session, f_cnt) DO NOTHING");
            if sqlite {
                inserted += q.build()?.execute(&mut *tx).await?.rows_affected();
                continue;
            }
            q.push(" RETURNING dev_eui, f_cnt");
            for row in q.build()?.fetch_all(&mut *tx).await? {
                stored.insert((row.try_get(0)?, row.try_get(1)?));
            }
        }
        if let Some(before) = before {
            if inserted == fresh.len() as u64 {
                stored.extend(fresh.iter().map(|(u, eui)| ((*eui).clone(), i64::from(u.f_cnt))));
            } else {
                // Some frames were already stored: the rows this batch added tell which.
                for row in sqlx::query("SELECT dev_eui, f_cnt FROM lorawan_uplinks WHERE id > $1")
                    .bind(before)
                    .fetch_all(&mut *tx)
                    .await?
                {
                    stored.insert((row.try_get(0)?, row.try_get(1)?));
                }
            }
        }
        let outcomes: Vec<UplinkOutcome> = batch
            .iter()
            .zip(euis)
            .map(|(u, eui)| {
                if !advanced.contains(&eui) {
                    UplinkOutcome::Replayed
                } else if stored.contains(&(eui, i64::from(u.f_cnt))) {
                    UplinkOutcome::Stored
                } else {
                    UplinkOutcome::Duplicate
                }
            })
            .collect();
        let messages: Vec<TelemetryMessage> = batch
            .iter()
            .zip(&outcomes)
            .filter_map(|(u, o)| {
                let topic = u.topic.filter(|_| *o == UplinkOutcome::Stored)?;
                Some(TelemetryMessage {
                    device_id: u.dev_eui.to_ascii_uppercase(),
                    topic: topic.to_owned(),
                    payload: u.payload.to_vec(),
                    qos: 0,
                    source: Source::Lorawan,
                    received_at_ms: now_ms,
                })
            })
            .collect();
        let ids = self.insert_telemetry(&mut tx, &messages).await?;
        tx.commit().await?;
        let telemetry = messages.into_iter().zip(ids).map(|(m, id)| m.stored(id)).collect();
        Ok(StoredUplinks { outcomes, telemetry })
    }

    /// Adds receptions (gateways that heard a frame after it was stored) to a stored uplink.
    /// `false` if that frame is not stored.
    pub async fn add_lorawan_receptions(
        &self,
        dev_eui: &str,
        session: i64,
        f_cnt: u32,
        receptions: &[serde_json::Value],
    ) -> Result<bool> {
        let dev_eui = hex_id("DevEUI", dev_eui, 8)?;
        let mut tx = self.begin_write().await?;
        let row =
            sqlx::query("SELECT id, gateways FROM lorawan_uplinks WHERE dev_eui = $1 AND session = $2 AND f_cnt = $3")
                .bind(&dev_eui)
                .bind(session)
                .bind(i64::from(f_cnt))
                .fetch_optional(&mut *tx)
                .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        let id: i64 = row.try_get("id")?;
        let text: String = row.try_get("gateways")?;
        let mut gateways = match serde_json::from_str(&text) {
            Ok(serde_json::Value::Array(a)) => a,
            _ => Vec::new(),
        };
        gateways.extend(receptions.iter().cloned());
        sqlx::query("UPDATE lorawan_uplinks SET gateways = $1 WHERE id = $2")
            .bind(serde_json::Value::Array(gateways).to_string())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Retention: deletes uplinks received before `now - max_age_ms`, and each device's beyond its
    /// newest `keep_per_device`. Returns how many were deleted.
    pub async fn prune_lorawan_uplinks(&self, max_age_ms: i64, keep_per_device: u32, now_ms: i64) -> Result<u64> {
        self.prune(
            Retention {
                table: "lorawan_uplinks",
                time: "received_at",
                per: "dev_eui",
                newest_first: "session DESC, f_cnt DESC",
                ranked_from: RankedFrom::Table,
            },
            max_age_ms,
            keep_per_device,
            now_ms,
        )
        .await
    }

    /// A device's latest uplinks, newest first (by session, then frame counter: the frame order).
    pub async fn lorawan_uplinks(&self, dev_eui: &str, limit: u32) -> Result<Vec<LorawanUplink>> {
        let dev_eui = hex_id("DevEUI", dev_eui, 8)?;
        let rows = sqlx::query(
            "SELECT id, dev_eui, session, f_cnt, f_port, payload, gateways, received_at FROM lorawan_uplinks \
             WHERE dev_eui = $1 ORDER BY session DESC, f_cnt DESC LIMIT $2",
        )
        .bind(&dev_eui)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let gateways: String = r.try_get("gateways")?;
                Ok(LorawanUplink {
                    id: r.try_get("id")?,
                    dev_eui: r.try_get("dev_eui")?,
                    session: r.try_get("session")?,
                    f_cnt: r.try_get("f_cnt")?,
                    f_port: r.try_get("f_port")?,
                    payload: r.try_get("payload")?,
                    gateways: serde_json::from_str(&gateways).unwrap_or(serde_json::Value::Null),
                    received_at_ms: r.try_get("received_at")?,
                })
            })
            .collect()
    }
}
