//! The audit trail: append-only events (who, when, what, why). Nothing updates or deletes them.

use crate::sql::SqlBuilder;
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

/// Which events to list. Oldest first (tailing the trail with `after_id`) unless
/// `newest_first` (browsing back with `before_id`).
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub device_id: Option<String>,
    pub ca_id: Option<String>,
    /// An exact kind (`device.status`) or, ending in `.`, a family (`device.`).
    pub kind: Option<String>,
    /// Only events with a greater id (for tailing the trail).
    pub after_id: Option<i64>,
    /// Only events with a smaller id (for paging back).
    pub before_id: Option<i64>,
    /// Only events at or after this time.
    pub since_ms: Option<i64>,
    pub newest_first: bool,
}

const HOUR_MS: i64 = 3_600_000;

/// The event kinds whose hourly counts are kept (for rates over time).
pub const RATE_KINDS: &[&str] = &[
    "device.registered",
    "chain.rejected",
    "device.refused",
    "device.acl_violation",
    "device.clone_suspected",
    "api.unauthorized",
    "api.forbidden",
    "attestation.verified",
    "attestation.failed",
    "attestation.stale",
    "lorawan.uplink_rejected",
    "lorawan.join_refused",
    "lorawan.join_accepted",
];

/// How many events of one kind fell into one time bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventCount {
    /// Start of the bucket, unix milliseconds.
    pub bucket_ms: i64,
    pub kind: String,
    pub count: i64,
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

    /// Lists events matching `filter`, at most `limit` (capped at 1000).
    pub async fn events(&self, filter: &EventFilter, limit: u32) -> Result<Vec<Event>> {
        // Only the filters given become SQL, so each combination can use its index.
        let mut q = SqlBuilder::new(
            self.backend(),
            "SELECT id, at, kind, actor, device_id, ca_id, reason, detail FROM events WHERE id > ",
        );
        q.bind(filter.after_id.unwrap_or(0));
        if let Some(before) = filter.before_id {
            q.push(" AND id < ").bind(before);
        }
        if let Some(device) = &filter.device_id {
            q.push(" AND device_id = ").bind(device.clone());
        }
        if let Some(ca) = &filter.ca_id {
            q.push(" AND ca_id = ").bind(ca.clone());
        }
        match filter.kind.as_deref() {
            Some(family) if family.ends_with('.') => {
                q.push(" AND kind >= ").bind(family.to_owned());
                q.push(" AND kind < ").bind(format!("{family}\u{7f}"));
            }
            Some(kind) => {
                q.push(" AND kind = ").bind(kind.to_owned());
            }
            None => {}
        }
        if let Some(since) = filter.since_ms {
            q.push(" AND at >= ").bind(since);
        }
        q.push(if filter.newest_first {
            " ORDER BY id DESC LIMIT "
        } else {
            " ORDER BY id LIMIT "
        })
        .bind(i64::from(limit.clamp(1, 1000)));
        let rows = q.build()?.fetch_all(self.pool()).await?;
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

    /// Counts of events of `kinds` since `since_ms` (rounded down to the hour), per bucket of
    /// `bucket_hours` hours, for rates over time. Read from `event_hourly`, which a trigger keeps
    /// (migration 0003) for the kinds in [`RATE_KINDS`]; other kinds count zero.
    pub async fn event_counts(&self, kinds: &[&str], since_ms: i64, bucket_hours: i64) -> Result<Vec<EventCount>> {
        let bucket_ms = bucket_hours.max(1) * HOUR_MS;
        let since = since_ms.div_euclid(HOUR_MS) * HOUR_MS;
        let mut out = Vec::new();
        for kind in kinds {
            let rows = sqlx::query(
                "SELECT CAST((hour / $3) * $3 AS BIGINT) AS bucket, CAST(SUM(n) AS BIGINT) AS n FROM event_hourly \
                 WHERE kind = $1 AND hour >= $2 GROUP BY 1 ORDER BY 1",
            )
            .bind(*kind)
            .bind(since)
            .bind(bucket_ms)
            .fetch_all(self.pool())
            .await?;
            for r in rows {
                out.push(EventCount {
                    bucket_ms: r.try_get("bucket")?,
                    kind: (*kind).to_owned(),
                    count: r.try_get("n")?,
                });
            }
        }
        out.sort_by(|a, b| a.bucket_ms.cmp(&b.bucket_ms).then_with(|| a.kind.cmp(&b.kind)));
        Ok(out)
    }
}
