//! Cloud → device commands kept for offline devices, delivered when they reconnect (until they
//! expire).

use crate::{Registry, Result};
use serde::Serialize;
use sqlx::Row;

/// A command waiting for its device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PendingCommand {
    pub id: i64,
    pub device_id: String,
    pub topic: String,
    #[serde(skip)]
    pub payload: Vec<u8>,
    pub qos: u8,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

impl Registry {
    /// Queues a command; returns its id.
    pub async fn enqueue_command(
        &self,
        device_id: &str,
        topic: &str,
        payload: &[u8],
        qos: u8,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<i64> {
        let _turn = self.write_turn().await;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO pending_commands (device_id, topic, payload, qos, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(device_id)
        .bind(topic)
        .bind(payload)
        .bind(i64::from(qos))
        .bind(now_ms)
        .bind(now_ms.saturating_add(ttl_ms))
        .fetch_one(self.pool())
        .await?;
        Ok(id)
    }

    /// A device's undelivered, unexpired commands, oldest first.
    pub async fn pending_commands(&self, device_id: &str, now_ms: i64, limit: u32) -> Result<Vec<PendingCommand>> {
        let rows = sqlx::query(
            "SELECT id, device_id, topic, payload, qos, created_at, expires_at FROM pending_commands \
             WHERE device_id = $1 AND delivered_at IS NULL AND expires_at > $2 ORDER BY id LIMIT $3",
        )
        .bind(device_id)
        .bind(now_ms)
        .bind(i64::from(limit.min(1000)))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PendingCommand {
                    id: r.try_get("id")?,
                    device_id: r.try_get("device_id")?,
                    topic: r.try_get("topic")?,
                    payload: r.try_get("payload")?,
                    qos: u8::try_from(r.try_get::<i64, _>("qos")?).unwrap_or(0),
                    created_at_ms: r.try_get("created_at")?,
                    expires_at_ms: r.try_get("expires_at")?,
                })
            })
            .collect()
    }

    /// Marks a command delivered (QoS 1: after the device's PUBACK). `false` if it was already.
    pub async fn mark_command_delivered(&self, id: i64, now_ms: i64) -> Result<bool> {
        let _turn = self.write_turn().await;
        let n = sqlx::query("UPDATE pending_commands SET delivered_at = $2 WHERE id = $1 AND delivered_at IS NULL")
            .bind(id)
            .bind(now_ms)
            .execute(self.pool())
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Deletes expired and delivered commands older than `keep_ms`; returns how many.
    pub async fn prune_commands(&self, keep_ms: i64, now_ms: i64) -> Result<u64> {
        let _turn = self.write_turn().await;
        Ok(
            sqlx::query("DELETE FROM pending_commands WHERE expires_at <= $1 OR delivered_at < $2")
                .bind(now_ms)
                .bind(now_ms.saturating_sub(keep_ms))
                .execute(self.pool())
                .await?
                .rows_affected(),
        )
    }
}
