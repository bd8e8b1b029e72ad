//! The telemetry store: device messages written in batched transactions (the gateway
//! acknowledges QoS 1 only after the commit), read per device and time range, pruned by age
//! and by count per device.

use crate::sql::SqlBuilder;
use crate::{Registry, RegistryError, Result, WriteTx};
use serde::Serialize;
use sqlx::Row;

/// Where a message came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Mqtt,
    Lorawan,
    Sigfox,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Mqtt => "mqtt",
            Source::Lorawan => "lorawan",
            Source::Sigfox => "sigfox",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "mqtt" => Source::Mqtt,
            "lorawan" => Source::Lorawan,
            "sigfox" => Source::Sigfox,
            _ => return None,
        })
    }
}

/// A message to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TelemetryMessage {
    pub device_id: String,
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub source: Source,
    pub received_at_ms: i64,
}

impl TelemetryMessage {
    /// The message as stored under `id`.
    pub fn stored(self, id: i64) -> StoredMessage {
        StoredMessage {
            id,
            device_id: self.device_id,
            topic: self.topic,
            payload: self.payload,
            qos: self.qos,
            source: self.source,
            received_at_ms: self.received_at_ms,
        }
    }
}

/// A stored message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoredMessage {
    pub id: i64,
    pub device_id: String,
    pub topic: String,
    #[serde(with = "hex_bytes")]
    pub payload: Vec<u8>,
    pub qos: u8,
    pub source: Source,
    pub received_at_ms: i64,
}

mod hex_bytes {
    pub(super) fn serialize<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }
}

/// Which rows a retention pass looks at (compile-time names only: they are spliced into SQL).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Retention {
    pub(crate) table: &'static str,
    /// The time column compared with the age limit.
    pub(crate) time: &'static str,
    /// Whose rows are capped (the partition column).
    pub(crate) per: &'static str,
    /// `ORDER BY` ranking an owner's rows newest first.
    pub(crate) newest_first: &'static str,
    /// Where the owners' rows are ranked.
    pub(crate) ranked_from: RankedFrom,
}

/// The rows a retention pass ranks per owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RankedFrom {
    /// The table itself.
    Table,
    /// SQLite's `telemetry_by_device`, brought up to date first.
    TelemetryIndex,
}

/// Rows per INSERT statement: 7 parameters each stays far below SQLite's 32,766 and
/// PostgreSQL's 65,535 bind limits.
const ROWS_PER_STATEMENT: usize = 500;

/// Index entries written per transaction by [`Registry::index_telemetry`]: a part holds SQLite's
/// write lock for a few milliseconds.
const INDEX_PART_ROWS: usize = 4_096;

/// Rows per statement when a batch may yield SQLite's write lock between statements: one such
/// statement is the longest an interactive write waits for the telemetry writer.
pub(crate) const YIELD_ROWS: usize = 100;

impl Registry {
    /// Stores a batch in one transaction: when this returns `Ok`, every message is durable
    /// (SQLite `synchronous=FULL` / PostgreSQL commit). All or nothing.
    pub async fn store_telemetry(&self, batch: &[TelemetryMessage]) -> Result<()> {
        self.store_telemetry_returning_ids(batch).await.map(|_| ())
    }

    /// A device's messages with `from_ms <= received_at < to_ms`, oldest first, at most `limit`
    /// (capped at 10,000).
    pub async fn telemetry(&self, device_id: &str, from_ms: i64, to_ms: i64, limit: u32) -> Result<Vec<StoredMessage>> {
        let sql = match self.backend() {
            // The sorted index up to its mark, merged with the unindexed tail above it (read by
            // id range: NOT INDEXED keeps the planner off `telemetry_time`). One statement, so
            // one snapshot: the mark and the index agree. Each arm is in (received_at, id) order,
            // so the merge stops at the limit.
            crate::Backend::Sqlite => concat!(
                "SELECT d.id, t.device_id, t.topic, t.payload, t.qos, t.source, d.received_at \
                 FROM telemetry_by_device d JOIN telemetry t ON t.id = d.id \
                 WHERE d.device_id = $1 AND d.received_at >= $2 AND d.received_at < $3 \
                 AND d.id <= (SELECT indexed_through FROM telemetry_index_state WHERE id = 1) \
                 UNION ALL SELECT ",
                stored_message_columns!(),
                " FROM telemetry NOT INDEXED \
                 WHERE id > (SELECT indexed_through FROM telemetry_index_state WHERE id = 1) \
                 AND device_id = $1 AND received_at >= $2 AND received_at < $3 \
                 ORDER BY 7, 1 LIMIT $4"
            ),
            crate::Backend::Postgres => concat!(
                "SELECT ",
                stored_message_columns!(),
                " FROM telemetry \
                 WHERE device_id = $1 AND received_at >= $2 AND received_at < $3 ORDER BY received_at, id LIMIT $4"
            ),
        };
        let rows = sqlx::query(sql)
            .bind(device_id)
            .bind(from_ms)
            .bind(to_ms)
            .bind(i64::from(limit.min(10_000)))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(stored_from_row).collect()
    }

    /// Retention: deletes messages older than `max_age_ms` and, per device, all but the newest
    /// `keep_per_device`. Returns how many were deleted.
    pub async fn prune_telemetry(&self, max_age_ms: i64, keep_per_device: u32, now_ms: i64) -> Result<u64> {
        self.prune(
            Retention {
                table: "telemetry",
                time: "received_at",
                per: "device_id",
                newest_first: "received_at DESC, id DESC",
                // SQLite's per-device keys are in `telemetry_by_device` (in key order: no sort).
                ranked_from: match self.backend() {
                    crate::Backend::Sqlite => RankedFrom::TelemetryIndex,
                    crate::Backend::Postgres => RankedFrom::Table,
                },
            },
            max_age_ms,
            keep_per_device,
            now_ms,
        )
        .await
    }

    /// Deletes a table's rows older than `now - max_age_ms`, then each owner's beyond its newest
    /// `keep` (ranked by `newest_first`), in one transaction; how many were deleted.
    pub(crate) async fn prune(&self, r: Retention, max_age_ms: i64, keep: u32, now_ms: i64) -> Result<u64> {
        let Retention {
            table,
            time,
            per,
            newest_first,
            ranked_from,
        } = r;
        let mut tx = self.begin_write().await?;
        if ranked_from == RankedFrom::TelemetryIndex {
            // Ranked from the index, which must then hold every row.
            catch_up_telemetry_index(&mut tx).await?;
        }
        let ranked = match ranked_from {
            RankedFrom::Table => table,
            RankedFrom::TelemetryIndex => "telemetry_by_device",
        };
        let by_age = sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE {time} < $1")))
            .bind(now_ms.saturating_sub(max_age_ms))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let by_count = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER \
             (PARTITION BY {per} ORDER BY {newest_first}) AS rank FROM {ranked}) ranked WHERE rank > $1)"
        )))
        .bind(i64::from(keep))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(by_age + by_count)
    }
}

impl Registry {
    /// Brings SQLite's per-device telemetry index (`telemetry_by_device`, see its migration) up
    /// to date by at most `max_ids` ids; how many ids it moved the mark by (fewer than
    /// `max_ids`: caught up). Nothing to do on PostgreSQL, whose index is kept row by row.
    ///
    /// The range's ids are sorted by device outside the write lock, from one snapshot, then
    /// written in parts of `INDEX_PART_ROWS` (4,096) rows, each its own transaction that yields to
    /// interactive writes like a telemetry batch: a registration waits for one part (a few
    /// dozen devices' leaves), never for the whole range, while each device's leaf is still
    /// written once for all of its rows in the range. Entries above the mark are not read
    /// until the part that moves the mark commits (reads take the rows above the mark from
    /// the table), so a pass cut short leaves nothing visible twice; a part inserts what is
    /// in the table when it commits, so a row deleted meanwhile leaves no entry behind.
    pub async fn index_telemetry(&self, max_ids: u32) -> Result<u64> {
        // Only SQLite has an index reader.
        let Some(reader) = self.index_reader.as_ref().filter(|_| max_ids > 0) else {
            return Ok(0);
        };
        // The range's ids in key order, as one text value: rows cross from SQLite's thread one
        // wake-up each, so thousands of them would cost more than the indexing saves.
        let (through, upto, sorted) = {
            let mut snapshot = reader.begin().await?;
            let (through, head): (i64, i64) = sqlx::query_as(
                "SELECT indexed_through, (SELECT CAST(COALESCE(MAX(id), 0) AS BIGINT) FROM telemetry) \
                 FROM telemetry_index_state WHERE id = 1",
            )
            .fetch_one(&mut *snapshot)
            .await?;
            if head <= through {
                return Ok(0);
            }
            let upto = head.min(through.saturating_add(i64::from(max_ids)));
            let sorted: Option<String> = sqlx::query_scalar(
                "SELECT group_concat(id, ',' ORDER BY device_id, received_at, id) FROM telemetry \
                 WHERE id > $1 AND id <= $2",
            )
            .bind(through)
            .bind(upto)
            .fetch_one(&mut *snapshot)
            .await?;
            (through, upto, sorted.unwrap_or_default())
        };
        let parts = id_list_parts(&sorted, INDEX_PART_ROWS);
        let last = parts.len() - 1;
        for (i, part) in parts.into_iter().enumerate() {
            let mut tx = self.begin_bulk_write().await?;
            // OR IGNORE: a range indexed twice (a pass cut short, or retention's catch-up in
            // between) is harmless.
            sqlx::query(
                "INSERT OR IGNORE INTO telemetry_by_device (device_id, received_at, id) \
                 SELECT device_id, received_at, id FROM telemetry WHERE id IN (SELECT value FROM json_each($1)) \
                 ORDER BY device_id, received_at, id",
            )
            .bind(format!("[{part}]"))
            .execute(&mut *tx)
            .await?;
            if i == last {
                // MAX: retention's catch-up may have moved the mark further meanwhile.
                sqlx::query("UPDATE telemetry_index_state SET indexed_through = MAX(indexed_through, $1) WHERE id = 1")
                    .bind(upto)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        }
        Ok(u64::try_from(upto - through).unwrap_or(0))
    }

    /// Stored messages with `id > after_id`, in id order, at most `limit` (capped at 10,000):
    /// how a backend subscriber that fell behind catches up from the durable store.
    pub async fn telemetry_after(&self, after_id: i64, limit: u32) -> Result<Vec<StoredMessage>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            stored_message_columns!(),
            " FROM telemetry WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(after_id)
        .bind(i64::from(limit.min(10_000)))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(stored_from_row).collect()
    }

    /// The newest stored message's id (0 when empty).
    pub async fn telemetry_head(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT CAST(COALESCE(MAX(id), 0) AS BIGINT) FROM telemetry")
                .fetch_one(self.pool())
                .await?,
        )
    }

    /// Like [`Registry::store_telemetry`], returning the ids given to the messages, in order.
    pub async fn store_telemetry_returning_ids(&self, batch: &[TelemetryMessage]) -> Result<Vec<i64>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_bulk_write().await?;
        let ids = self.insert_telemetry(&mut tx, batch).await?;
        tx.commit().await?;
        Ok(ids)
    }

    /// Stores a prefix of `batch` in one transaction and returns its ids, in order: all of it,
    /// unless an interactive write (a device's registration, an operator's action) starts
    /// waiting for SQLite's write lock, in which case the rows inserted so far (at least one
    /// statement's, `YIELD_ROWS` or the whole batch if smaller) commit and the lock passes on. A registration then waits for one
    /// statement and a commit, not for a whole batch (measured: 6–13 ms behind 500-message
    /// batches under a 50k msg/s flood). All or nothing for the prefix it reports; the caller
    /// stores the rest with the next call.
    pub async fn store_telemetry_prefix(&self, batch: &[TelemetryMessage]) -> Result<Vec<i64>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_bulk_write().await?;
        let ids = self
            .insert_telemetry_until(&mut tx, batch, YIELD_ROWS, || self.interactive_write_waiting())
            .await?;
        tx.commit().await?;
        Ok(ids)
    }

    /// Inserts telemetry inside the caller's transaction; the ids in the batch's order.
    pub(crate) async fn insert_telemetry(&self, tx: &mut WriteTx, batch: &[TelemetryMessage]) -> Result<Vec<i64>> {
        self.insert_telemetry_until(tx, batch, ROWS_PER_STATEMENT, || false)
            .await
    }

    /// Inserts `batch` in statements of `rows`, stopping after a statement when `stop()` says
    /// so; the ids of the rows inserted (a prefix of the batch), in order.
    ///
    /// On SQLite no row comes back in the common case: sqlx hands each returned row from its
    /// worker thread to the caller through a channel, a thread wake-up per row, which measured as
    /// the largest cost of a batch (perf, 10,000-row batches). The writer holds SQLite's only
    /// write lock, and an AUTOINCREMENT table gives new rows ids above every id it ever gave,
    /// so when `MAX(id)` grew by exactly the number of rows inserted, those rows hold those ids,
    /// in VALUES order. Otherwise (older rows pruned to empty, say) the ids are read back.
    async fn insert_telemetry_until(
        &self,
        tx: &mut WriteTx,
        batch: &[TelemetryMessage],
        rows: usize,
        stop: impl Fn() -> bool,
    ) -> Result<Vec<i64>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let sqlite = self.backend() == crate::Backend::Sqlite;
        let before = if sqlite {
            Some(max_id(tx, IdTable::Telemetry).await?)
        } else {
            None
        };
        let mut ids = Vec::with_capacity(batch.len());
        let mut inserted = 0;
        // The JetStream outbox the rows belong to (0: none), read once so that one batch is in
        // one outbox.
        let outbox = self.relay_outbox();
        for chunk in batch.chunks(rows.clamp(1, ROWS_PER_STATEMENT)) {
            let mut q = SqlBuilder::new(
                self.backend(),
                "INSERT INTO telemetry (device_id, topic, payload, qos, source, received_at, relay_outbox) VALUES ",
            );
            for (i, m) in chunk.iter().enumerate() {
                q.push(if i == 0 { "(" } else { ", (" });
                q.bind(m.device_id.clone()).push(", ");
                q.bind(m.topic.clone()).push(", ");
                q.bind(m.payload.clone()).push(", ");
                q.bind(i64::from(m.qos)).push(", ");
                q.bind(m.source.as_str().to_owned()).push(", ");
                q.bind(m.received_at_ms).push(", ");
                q.bind(outbox).push(")");
            }
            inserted += chunk.len();
            if sqlite {
                q.build()?.execute(&mut **tx).await?;
            } else {
                q.push(" RETURNING id");
                let rows = q.build()?.fetch_all(&mut **tx).await?;
                let mut chunk_ids = rows
                    .iter()
                    .map(|r| r.try_get::<i64, _>(0))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                // Both engines assign ids in VALUES order within one statement; sorting makes
                // the pairing independent of the order RETURNING reports them in.
                chunk_ids.sort_unstable();
                ids.extend(chunk_ids);
            }
            if stop() {
                break;
            }
        }
        if let Some(before) = before {
            ids = new_telemetry_ids(tx, before, inserted).await?;
        }
        Ok(ids)
    }
}

/// A table whose rows are numbered by an AUTOINCREMENT id.
#[derive(Clone, Copy, Debug)]
pub(crate) enum IdTable {
    Telemetry,
    LorawanUplinks,
}

impl IdTable {
    fn max_sql(self) -> &'static str {
        match self {
            IdTable::Telemetry => "SELECT CAST(COALESCE(MAX(id), 0) AS BIGINT) FROM telemetry",
            IdTable::LorawanUplinks => "SELECT CAST(COALESCE(MAX(id), 0) AS BIGINT) FROM lorawan_uplinks",
        }
    }
}

/// The largest id of `table` (0 when empty), inside the caller's transaction.
pub(crate) async fn max_id(tx: &mut WriteTx, table: IdTable) -> Result<i64> {
    Ok(sqlx::query_scalar(table.max_sql()).fetch_one(&mut **tx).await?)
}

/// A comma-separated id list cut into lists of at most `n` ids, in order; one empty list when
/// there is none (the pass still moves the mark).
fn id_list_parts(list: &str, n: usize) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = list;
    while !rest.is_empty() {
        match rest.match_indices(',').nth(n.max(1) - 1) {
            Some((at, _)) => {
                parts.push(&rest[..at]);
                rest = &rest[at + 1..];
            }
            None => {
                parts.push(rest);
                rest = "";
            }
        }
    }
    if parts.is_empty() {
        parts.push("");
    }
    parts
}

/// Indexes every telemetry row above the mark, in key order, and moves the mark to `MAX(id)`,
/// inside the caller's SQLite write transaction (which holds the only write lock, so every id
/// up to `MAX(id)` is committed).
async fn catch_up_telemetry_index(tx: &mut WriteTx) -> Result<()> {
    // OR IGNORE: entries an indexing pass left above the mark are already there.
    sqlx::query(
        "INSERT OR IGNORE INTO telemetry_by_device (device_id, received_at, id) \
         SELECT device_id, received_at, id FROM telemetry \
         WHERE id > (SELECT indexed_through FROM telemetry_index_state WHERE id = 1) \
         ORDER BY device_id, received_at, id",
    )
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE telemetry_index_state \
         SET indexed_through = MAX(indexed_through, (SELECT COALESCE(MAX(id), 0) FROM telemetry)) WHERE id = 1",
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The ids of the `n` telemetry rows just inserted (SQLite, under the write lock), in order:
/// `before + 1 ..= before + n` when `MAX(id)` moved by exactly `n`, else read back.
async fn new_telemetry_ids(tx: &mut WriteTx, before: i64, n: usize) -> Result<Vec<i64>> {
    let after = max_id(tx, IdTable::Telemetry).await?;
    if after - before == n as i64 {
        return Ok((before + 1..=after).collect());
    }
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM telemetry WHERE id > $1 ORDER BY id")
        .bind(before)
        .fetch_all(&mut **tx)
        .await?;
    if ids.len() != n {
        return Err(RegistryError::Invalid {
            what: "telemetry insert",
            detail: format!("{n} rows inserted, {} found", ids.len()),
        });
    }
    Ok(ids)
}

pub(crate) fn stored_from_row(r: &sqlx::any::AnyRow) -> Result<StoredMessage> {
    let source: String = r.try_get("source")?;
    Ok(StoredMessage {
        id: r.try_get("id")?,
        device_id: r.try_get("device_id")?,
        topic: r.try_get("topic")?,
        payload: r.try_get("payload")?,
        qos: u8::try_from(r.try_get::<i64, _>("qos")?).unwrap_or(0),
        source: Source::parse(&source).ok_or_else(|| RegistryError::Invalid {
            what: "stored message",
            detail: "unknown source".into(),
        })?,
        received_at_ms: r.try_get("received_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CHECKPOINT_EVERY;
    use crate::seal::{Kek, Keyring};
    use std::sync::atomic::Ordering;

    #[test]
    fn id_lists_are_cut_at_commas() {
        assert_eq!(id_list_parts("", 2), [""]);
        assert_eq!(id_list_parts("7", 2), ["7"]);
        assert_eq!(id_list_parts("1,2", 2), ["1,2"]);
        assert_eq!(id_list_parts("1,2,3,4,5", 2), ["1,2", "3,4", "5"]);
        assert_eq!(id_list_parts("10,20,30", 1), ["10", "20", "30"]);
        assert_eq!(id_list_parts("10,20,30", 0), ["10", "20", "30"]);
    }

    fn message(n: usize) -> TelemetryMessage {
        TelemetryMessage {
            device_id: format!("dev-{}", n % 7),
            topic: "devices/x/telemetry".into(),
            payload: n.to_be_bytes().to_vec(),
            qos: 1,
            source: Source::Mqtt,
            received_at_ms: 1_700_000_000_000 + n as i64,
        }
    }

    #[tokio::test]
    async fn a_waiting_registration_cuts_a_batch_short_and_the_rest_follows() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keyring::new(Kek::generate("t").unwrap());
        let r = Registry::open(&Registry::sqlite_url(dir.path()), keys).await.unwrap();
        let batch: Vec<_> = (0..250).map(message).collect();

        // Nobody waiting: the whole batch in one transaction.
        let all = r.store_telemetry_prefix(&batch).await.unwrap();
        assert_eq!(all.len(), 250);

        // An interactive writer starts waiting while the batch waits for its turn (another
        // bulk write holds it): once the batch has the lock, one statement's rows commit.
        let queue = r.write_queue.clone().unwrap();
        let turn = queue.lock.clone().lock_owned().await;
        let store = tokio::spawn({
            let (r, batch) = (r.clone(), batch.clone());
            async move { r.store_telemetry_prefix(&batch).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        queue.interactive_waiting.fetch_add(1, Ordering::AcqRel);
        drop(turn);
        let head = store.await.unwrap().unwrap();
        queue.interactive_waiting.fetch_sub(1, Ordering::AcqRel);
        assert_eq!(head.len(), YIELD_ROWS, "stopped after one statement");
        // The batch order is the id order, and the rest continues after it.
        let rest = r.store_telemetry_prefix(&batch[head.len()..]).await.unwrap();
        assert_eq!(rest.len(), 250 - YIELD_ROWS);
        let ids: Vec<i64> = head.iter().chain(&rest).copied().collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(ids[0] > all[249]);
        let stored = r.telemetry_after(all[249], 1_000).await.unwrap();
        assert_eq!(stored.len(), 250);
        for (m, id) in stored.iter().zip(&ids) {
            assert_eq!(m.id, *id);
        }
        for (m, original) in stored.iter().zip(&batch) {
            assert_eq!(m.payload, original.payload, "each id names its own message");
        }
    }

    #[tokio::test]
    async fn the_background_checkpoint_copies_the_wal_into_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keyring::new(Kek::generate("t").unwrap());
        let r = Registry::open(&Registry::sqlite_url(dir.path()), keys).await.unwrap();
        let db = dir.path().join("fleetward.db");
        // Let the checkpoint of the migrations pass, then write.
        tokio::time::sleep(CHECKPOINT_EVERY * 2).await;
        let before = std::fs::metadata(&db).unwrap().len();
        let batch: Vec<_> = (0..2_000).map(message).collect();
        r.store_telemetry(&batch).await.unwrap();
        assert_eq!(
            std::fs::metadata(&db).unwrap().len(),
            before,
            "commits write the WAL only (no automatic checkpoint)"
        );
        tokio::time::sleep(CHECKPOINT_EVERY * 3).await;
        assert!(
            std::fs::metadata(&db).unwrap().len() > before,
            "the checkpointer copied the new pages into the database file"
        );
        r.close().await;
    }
}
