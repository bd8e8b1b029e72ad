//! The audit trail: filtered listing (newest first, cursor-paginated) and a live Server-Sent
//! Events stream that resumes from `Last-Event-ID`.

use super::model::{ErrorBody, EventItem, EventList};
use super::{ApiError, ApiResult, Authorized, Query, VIEWER, decode_cursor, encode_cursor, page_limit};
use crate::clock::now_ms;
use crate::http::AppState;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use registry::{EventFilter, Registry};
use serde::Deserialize;
use std::convert::Infallible;
use std::time::Duration;
use utoipa::IntoParams;

/// Oldest or newest first.
#[derive(Clone, Copy, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    Asc,
    #[default]
    Desc,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Only this device's events.
    pub device: Option<String>,
    /// Only this CA's events.
    pub ca: Option<String>,
    /// An exact kind (`device.status`) or a family ending in `.` (`device.`).
    pub kind: Option<String>,
    /// At or after: RFC 3339, unix seconds, or a duration ago (`24h`).
    pub since: Option<String>,
    /// `desc` (default, newest first) or `asc`.
    #[param(inline)]
    pub order: Option<Order>,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Page size, 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

impl EventQuery {
    pub fn filter(&self, now: i64) -> ApiResult<EventFilter> {
        let since_ms = match &self.since {
            None => None,
            Some(s) => Some(super::parse_time(s, now).ok_or_else(|| {
                ApiError::bad_request(
                    "bad_query",
                    "since must be RFC 3339, unix seconds, or a duration like 24h",
                )
            })?),
        };
        let newest_first = !matches!(self.order, Some(Order::Asc));
        let cursor = match &self.cursor {
            None => None,
            Some(c) => Some(
                decode_cursor(c)?
                    .parse::<i64>()
                    .map_err(|_| ApiError::bad_request("bad_cursor", "cursor is not one this API issued"))?,
            ),
        };
        Ok(EventFilter {
            device_id: self.device.clone().filter(|s| !s.is_empty()),
            ca_id: self.ca.clone().filter(|s| !s.is_empty()),
            kind: self.kind.clone().filter(|s| !s.is_empty()),
            after_id: if newest_first { None } else { cursor },
            before_id: if newest_first { cursor } else { None },
            since_ms,
            newest_first,
        })
    }
}

/// Lists events (newest first by default).
#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(EventQuery),
    responses((status = 200, body = EventList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn list(
    State(state): State<AppState>,
    Authorized(_): Authorized<{ VIEWER }>,
    Query(query): Query<EventQuery>,
) -> ApiResult<axum::Json<EventList>> {
    Ok(axum::Json(list_events(&state.registry, &query).await?))
}

pub async fn list_events(registry: &Registry, query: &EventQuery) -> ApiResult<EventList> {
    let filter = query.filter(now_ms())?;
    let limit = page_limit(query.limit, 100, 1000)?;
    let events = registry.events(&filter, limit).await?;
    let next_cursor = if events.len() == limit as usize {
        events.last().map(|e| encode_cursor(&e.id.to_string()))
    } else {
        None
    };
    Ok(EventList {
        items: events.iter().map(EventItem::from).collect(),
        next_cursor,
    })
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Only this device's events.
    pub device: Option<String>,
    /// An exact kind or a family ending in `.`.
    pub kind: Option<String>,
}

/// Live events as Server-Sent Events (`id:` is the event id; `data:` the event as JSON).
/// Reconnecting with `Last-Event-ID` resumes after that event; otherwise the stream starts with
/// events raised after the request.
#[utoipa::path(get, path = "/api/v1/events/stream", tag = "events", params(StreamQuery),
    responses((status = 200, description = "An endless text/event-stream", content_type = "text/event-stream", body = String),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn stream(
    State(state): State<AppState>,
    Authorized(_): Authorized<{ VIEWER }>,
    headers: HeaderMap,
    Query(query): Query<StreamQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    event_stream(&state, query.device, query.kind, resume).await
}

/// How often the stream looks for events written by other processes (CLI, other nodes, the
/// registry's own transactions); events raised in this process wake it at once.
const POLL: Duration = Duration::from_secs(1);

/// An SSE stream of the trail after `resume` (or after the current newest event).
pub async fn event_stream(
    state: &AppState,
    device: Option<String>,
    kind: Option<String>,
    resume: Option<i64>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>> + use<>>> {
    let slot = state.stream_slots.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!(
                "{} event streams are open on this node; retry later",
                crate::http::MAX_EVENT_STREAMS
            ),
        )
    })?;
    let registry = state.registry.clone();
    let start = match resume {
        Some(id) => id,
        None => registry
            .events(
                &EventFilter {
                    newest_first: true,
                    ..Default::default()
                },
                1,
            )
            .await?
            .first()
            .map_or(0, |e| e.id),
    };
    let wake = state.events.subscribe();
    let stop = state.shutdown.clone();
    let filter = EventFilter {
        device_id: device.filter(|s| !s.is_empty()),
        kind: kind.filter(|s| !s.is_empty()),
        ..Default::default()
    };
    // The slot travels with the stream and is released when the client goes away.
    let batches = stream::unfold(
        (start, wake, filter, registry, stop, slot),
        |(mut last, mut wake, filter, registry, mut stop, slot)| async move {
            loop {
                if *stop.borrow() {
                    return None;
                }
                let page = registry
                    .events(
                        &EventFilter {
                            after_id: Some(last),
                            ..filter.clone()
                        },
                        200,
                    )
                    .await;
                match page {
                    Ok(events) if !events.is_empty() => {
                        last = events.last().map_or(last, |e| e.id);
                        let out: Vec<Result<SseEvent, Infallible>> = events
                            .iter()
                            .map(|e| {
                                Ok(SseEvent::default()
                                    .id(e.id.to_string())
                                    .json_data(EventItem::from(e))
                                    .unwrap_or_default())
                            })
                            .collect();
                        return Some((stream::iter(out), (last, wake, filter, registry, stop, slot)));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "event stream: registry read failed; retrying"),
                }
                tokio::select! {
                    r = wake.recv() => {
                        if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                            // The server is shutting down.
                            return None;
                        }
                        // The event is written by the event writer just after it is raised.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    _ = tokio::time::sleep(POLL) => {}
                    // Open streams must not hold up a graceful shutdown.
                    _ = stop.changed() => return None,
                }
            }
        },
    )
    .flatten();
    Ok(Sse::new(batches).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
