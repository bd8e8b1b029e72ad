//! The fleet at a glance (counts and rates over time) and the fleet audit.

use super::model::{Audit, AuditFinding, Bucket, ErrorBody, FleetSummary};
use super::{ApiError, ApiResult, Authorized, Query, VIEWER, parse_duration_ms, rfc3339};
use crate::clock::now_ms;
use crate::http::AppState;
use axum::extract::State;
use registry::AuditOptions;
use serde::Deserialize;
use utoipa::IntoParams;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SummaryQuery {
    /// How far back the rates go, in whole days: `1d` (or `24h`) … `90d`; default `24h`.
    /// 24 buckets.
    #[param(pattern = "^[0-9]{1,2}d$|^[0-9]{2,4}h$")]
    pub window: Option<String>,
}

/// Event kinds that count as a refused connection.
pub const REJECTION_KINDS: &[&str] = &["chain.rejected", "device.refused"];

/// Event kinds counted as refused LoRaWAN traffic (forged, replayed or unknown frames; joins).
pub const LORAWAN_REFUSAL_KINDS: &[&str] = &["lorawan.uplink_rejected", "lorawan.join_refused"];

/// Event kinds of Sigfox frames and callbacks refused.
pub const SIGFOX_REFUSAL_KINDS: &[&str] = &["sigfox.frame_rejected", "sigfox.callback_rejected"];

/// Counts by status, integrity, firmware and CA; onboarding and rejection rates over time.
#[utoipa::path(get, path = "/api/v1/fleet/summary", tag = "fleet", params(SummaryQuery),
    responses((status = 200, body = FleetSummary), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn summary(
    State(state): State<AppState>,
    Authorized(_): Authorized<{ VIEWER }>,
    Query(query): Query<SummaryQuery>,
) -> ApiResult<axum::Json<FleetSummary>> {
    Ok(axum::Json(fleet_summary(&state, query.window.as_deref()).await?))
}

pub async fn fleet_summary(state: &AppState, window: Option<&str>) -> ApiResult<FleetSummary> {
    let window_ms = match window {
        None => 86_400_000,
        Some(w) => parse_duration_ms(w)
            .filter(|ms| (86_400_000..=90 * 86_400_000).contains(ms) && ms % 86_400_000 == 0)
            .ok_or_else(|| {
                ApiError::bad_request("bad_query", "window must be whole days from 1d to 90d, like 24h or 7d")
            })?,
    };
    // Whole hours per bucket: the registry keeps hourly counts.
    let bucket_hours = window_ms / 24 / 3_600_000;
    let bucket_ms = bucket_hours * 3_600_000;
    let now = now_ms();
    // 24 whole buckets ending with the current one.
    let first = (now / bucket_ms - 23) * bucket_ms;
    let s = state.registry.fleet_summary().await?;
    let mut kinds = vec!["device.registered"];
    kinds.extend(REJECTION_KINDS);
    kinds.extend(LORAWAN_REFUSAL_KINDS);
    kinds.extend(SIGFOX_REFUSAL_KINDS);
    let counts = state.registry.event_counts(&kinds, first, bucket_hours).await?;
    let series = |wanted: &[&str]| -> Vec<Bucket> {
        (0..24)
            .map(|i| {
                let start = first + i * bucket_ms;
                Bucket {
                    start: rfc3339(start),
                    count: counts
                        .iter()
                        .filter(|c| c.bucket_ms == start && wanted.contains(&c.kind.as_str()))
                        .map(|c| c.count)
                        .sum(),
                }
            })
            .collect()
    };
    Ok(FleetSummary {
        total: s.total,
        online: state.hub.online_devices(),
        by_status: s.by_status,
        by_integrity: s.by_integrity,
        by_firmware: s.by_firmware,
        by_ca: s.by_ca,
        since: rfc3339(first),
        bucket_seconds: bucket_ms / 1000,
        onboarding: series(&["device.registered"]),
        rejections: series(REJECTION_KINDS),
        lorawan_refusals: series(LORAWAN_REFUSAL_KINDS),
        sigfox_refusals: series(SIGFOX_REFUSAL_KINDS),
    })
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Report active devices silent for this many days (default 7).
    #[param(minimum = 1, maximum = 3650)]
    pub silent_days: Option<u32>,
    /// Report certificates expiring within this many days (default 30).
    #[param(minimum = 1, maximum = 3650)]
    pub expiry_days: Option<u32>,
    /// Device ids listed per finding, 1–1000 (default 20).
    #[param(minimum = 1, maximum = 1000)]
    pub sample: Option<u32>,
}

/// Fleet audit findings, most severe first, each with affected devices and a suggested action.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = Audit), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn audit(
    State(state): State<AppState>,
    Authorized(_): Authorized<{ VIEWER }>,
    Query(query): Query<AuditQuery>,
) -> ApiResult<axum::Json<Audit>> {
    Ok(axum::Json(run_audit(&state, &query).await?))
}

pub async fn run_audit(state: &AppState, query: &AuditQuery) -> ApiResult<Audit> {
    let in_range = |v: Option<u32>, default: u32, max: u32, name: &str| match v {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request("bad_query", format!("{name} must be 1..={max}"))),
    };
    let opts = AuditOptions {
        silent_days: i64::from(in_range(query.silent_days, 7, 3650, "silent_days")?),
        expiry_warning_days: i64::from(in_range(query.expiry_days, 30, 3650, "expiry_days")?),
        sample: in_range(query.sample, 20, 1000, "sample")?,
        ..AuditOptions::default()
    };
    let report = state.registry.audit(&opts, now_ms()).await?;
    Ok(Audit {
        generated_at: rfc3339(report.generated_at_ms),
        checks_run: report.checks_run.iter().map(|c| (*c).to_owned()).collect(),
        findings: report.findings.iter().map(AuditFinding::from).collect(),
    })
}
