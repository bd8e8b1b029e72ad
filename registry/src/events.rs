//! The audit trail: append-only events (who, when, what, why). Nothing updates or deletes them.

use crate::{Registry, Result};
use serde::Serialize;
use sqlx::Row;

/// An event to record.
#[derive(Clone, Debug, Default)]
pub struct NewEvent {
    /// Dotted kind, e.g. `device.registered`, `device.status`, `ca.revoked`, `chain.rejected`.
    pub kind: String,
    /// Who: `jitr`, `api:<token id>`, `gateway`, `system`, …
    pub actor: String,
    pub device_id: Option<String>,
    pub ca_id: Option<String>,
    /// Why, for people (e.g. the typed rejection's message).
    pub reason: Option<String>,
    /// Structured details (JSON), e.g. a rejection serialized with its `check`.
    pub detail: Option<serde_json::Value>,
}

impl NewEvent {
    pub fn new(kind: &str, actor: &str) -> Self {
        NewEvent {
            kind: kind.into(),
            actor: actor.into(),
            ..Default::default()
        }
    }

    pub fn device(mut self, id: &str) -> Self {
        self.device_id = Some(id.into());
        self
    }

    pub fn ca(mut self, id: &str) -> Self {
        self.ca_id = Some(id.into());
        self
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(detail);
        self
    }
}

/// A recorded event.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    pub id: i64,
    pub at_ms: i64,
    pub kind: String,
    pub actor: String,
    pub device_id: Option<String>,
    pub ca_id: Option<String>,
    pub reason: Option<String>,
    pub detail: Option<serde_json::Value>,
}

/// Which events to list (newest first unless `after_id` pages forward).
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub device_id: Option<String>,
    pub kind: Option<String>,
    /// Only events with a greater id (for tailing the trail).
    pub after_id: Option<i64>,
}

pub(crate) async fn insert(tx: &mut sqlx::AnyConnection, e: &NewEvent, now_ms: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO events (at, kind, actor, device_id, ca_id, reason, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(now_ms)
    .bind(&e.kind)
    .bind(&e.actor)
    .bind(e.device_id.as_deref())
    .bind(e.ca_id.as_deref())
    .bind(e.reason.as_deref())
    .bind(e.detail.as_ref().map(|d| d.to_string()))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

impl Registry {
    /// Appends one event.
    pub async fn append_event(&self, event: &NewEvent, now_ms: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        insert(&mut tx, event, now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Lists events, oldest first, at most `limit` (capped at 1000).
    pub async fn events(&self, filter: &EventFilter, limit: u32) -> Result<Vec<Event>> {
        let rows = sqlx::query(
            "SELECT id, at, kind, actor, device_id, ca_id, reason, detail FROM events \
             WHERE ($1 IS NULL OR device_id = $1) AND ($2 IS NULL OR kind = $2) AND id > $3 \
             ORDER BY id LIMIT $4",
        )
        .bind(filter.device_id.as_deref())
        .bind(filter.kind.as_deref())
        .bind(filter.after_id.unwrap_or(0))
        .bind(i64::from(limit.min(1000)))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Event {
                    id: r.try_get("id")?,
                    at_ms: r.try_get("at")?,
                    kind: r.try_get("kind")?,
                    actor: r.try_get("actor")?,
                    device_id: r.try_get("device_id")?,
                    ca_id: r.try_get("ca_id")?,
                    reason: r.try_get("reason")?,
                    detail: r
                        .try_get::<Option<String>, _>("detail")?
                        .and_then(|d| serde_json::from_str(&d).ok()),
                })
            })
            .collect()
    }
}
