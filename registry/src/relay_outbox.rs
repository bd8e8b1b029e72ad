//! JetStream outboxes: the stored telemetry a gateway's relay still owes the bus.
//!
//! The relay publishes what its gateway stored from memory, after the commit; the store is what
//! makes that durable. Each relay opens an outbox ([`Registry::open_relay_outbox`]) and from then
//! on every telemetry row this process stores carries the outbox's id. The relay records how far
//! it has published ([`Registry::relay_outbox_progress`], also its heartbeat), so what it had not
//! published when it died, or skipped while its buffer was full, can be read back
//! ([`Registry::relay_outbox_rows`]): by itself, or after its death by the relay that adopts the
//! outbox ([`Registry::claim_relay_outbox`]).

use crate::{Registry, Result, StoredMessage};
use sqlx::Row;
use std::sync::atomic::Ordering;

/// A relay's outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayOutbox {
    pub id: i64,
    /// The node whose relay opened it.
    pub node: String,
    /// Every row of the outbox with an id up to this one is in JetStream.
    pub published_through: i64,
}

impl Registry {
    /// Opens an outbox for `node`'s relay and stamps every telemetry row this process stores
    /// from now on with it. The rows stored before have no outbox: it starts published through
    /// the newest of them.
    pub async fn open_relay_outbox(&self, node: &str, now_ms: i64) -> Result<RelayOutbox> {
        let _turn = self.write_turn().await;
        let row = sqlx::query(
            "INSERT INTO relay_outboxes (node, published_through, alive_at) \
             VALUES ($1, (SELECT CAST(COALESCE(MAX(id), 0) AS BIGINT) FROM telemetry), $2) \
             RETURNING id, published_through",
        )
        .bind(node)
        .bind(now_ms)
        .fetch_one(self.pool())
        .await?;
        let outbox = RelayOutbox {
            id: row.try_get("id")?,
            node: node.to_owned(),
            published_through: row.try_get("published_through")?,
        };
        self.relay_outbox.store(outbox.id, Ordering::Release);
        Ok(outbox)
    }

    /// The outbox this process stamps on the telemetry it stores (0: none).
    pub fn relay_outbox(&self) -> i64 {
        self.relay_outbox.load(Ordering::Acquire)
    }

    /// Records that every row of `outbox` up to `published_through` is in JetStream (never
    /// moving back) and that its relay is alive at `alive_at_ms` (0: it stopped, and the outbox
    /// may be adopted at once).
    ///
    /// An outbox that is gone is recorded again, under its id: another node took this relay for
    /// dead (its records failed for longer than the adopters wait, a partition from the
    /// database, say), published the outbox and deleted it. The relay is alive and goes on
    /// stamping rows with it, so the outbox must stay adoptable should it die later.
    pub async fn relay_outbox_progress(
        &self,
        outbox: &RelayOutbox,
        published_through: i64,
        alive_at_ms: i64,
    ) -> Result<()> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "INSERT INTO relay_outboxes (id, node, published_through, alive_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET published_through = CASE \
             WHEN relay_outboxes.published_through > excluded.published_through \
             THEN relay_outboxes.published_through ELSE excluded.published_through END, \
             alive_at = excluded.alive_at",
        )
        .bind(outbox.id)
        .bind(&outbox.node)
        .bind(published_through)
        .bind(alive_at_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Takes over one outbox whose relay is gone: another outbox of `node` whose relay has not
    /// been alive since `started_ms` (when this node's relay started: it was this node's before
    /// a restart), or any whose relay has not been alive since `stale_before_ms`. Marks it alive
    /// at `now_ms` (the adopter keeps it so with [`Registry::relay_outbox_progress`]); of two
    /// adopters, one wins. `None` when there is none.
    pub async fn claim_relay_outbox(
        &self,
        own: i64,
        node: &str,
        started_ms: i64,
        stale_before_ms: i64,
        now_ms: i64,
    ) -> Result<Option<RelayOutbox>> {
        let candidates = sqlx::query(
            "SELECT id, node, published_through, alive_at FROM relay_outboxes \
             WHERE id <> $1 AND ((node = $2 AND alive_at < $3) OR alive_at < $4) ORDER BY id LIMIT 16",
        )
        .bind(own)
        .bind(node)
        .bind(started_ms)
        .bind(stale_before_ms)
        .fetch_all(self.pool())
        .await?;
        for r in &candidates {
            let id: i64 = r.try_get("id")?;
            let seen: i64 = r.try_get("alive_at")?;
            let _turn = self.write_turn().await;
            // Compare-and-set on the heartbeat: a relay that beat since, or an adopter that
            // claimed it first, leaves it unchanged.
            let claimed = sqlx::query("UPDATE relay_outboxes SET alive_at = $3 WHERE id = $1 AND alive_at = $2")
                .bind(id)
                .bind(seen)
                .bind(now_ms)
                .execute(self.pool())
                .await?
                .rows_affected()
                == 1;
            if claimed {
                return Ok(Some(RelayOutbox {
                    id,
                    node: r.try_get("node")?,
                    published_through: r.try_get("published_through")?,
                }));
            }
        }
        Ok(None)
    }

    /// The rows of `outbox` with an id above `after`, in id order, at most `limit` (capped at
    /// 10,000).
    pub async fn relay_outbox_rows(&self, outbox: i64, after: i64, limit: u32) -> Result<Vec<StoredMessage>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            stored_message_columns!(),
            " FROM telemetry WHERE id > $1 AND relay_outbox = $2 ORDER BY id LIMIT $3"
        ))
        .bind(after)
        .bind(outbox)
        .bind(i64::from(limit.min(10_000)))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(crate::telemetry::stored_from_row).collect()
    }

    /// Deletes an outbox whose rows are all in JetStream.
    pub async fn close_relay_outbox(&self, outbox: i64) -> Result<()> {
        let _turn = self.write_turn().await;
        sqlx::query("DELETE FROM relay_outboxes WHERE id = $1")
            .bind(outbox)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
