//! Devices: filtered, cursor-paginated listing; detail with chain and recent events; lifecycle
//! actions; labels.

use super::model::{ChainLink, Device, DeviceDetail, DeviceList, ErrorBody, EventItem, Labels, Reason};
use super::{
    ApiError, ApiResult, Authorized, Caller, Json, OPERATOR, OptionalJson, Path, Query, VIEWER, decode_cursor,
    encode_cursor, page_limit,
};
use crate::clock::now_ms;
use crate::http::AppState;
use crate::mqtt::codec::DisconnectReason;
use crate::mqtt::hub::DeviceSignal;
use axum::extract::State;
use registry::{DeviceFilter, DeviceStatus, EventFilter, Integrity, Role};
use serde::Deserialize;
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

/// Device lifecycle states.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusParam {
    Pending,
    Active,
    Quarantined,
    Revoked,
}

/// Integrity verdicts.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IntegrityParam {
    Unknown,
    Verified,
    Failed,
    Stale,
}

/// Filters (combined with AND) and paging for the device list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceQuery {
    /// Lifecycle status.
    #[param(inline)]
    pub status: Option<StatusParam>,
    /// Provisioning CA id.
    pub ca: Option<String>,
    /// Firmware version (`unknown`: none reported).
    pub firmware: Option<String>,
    /// Measured firmware image digest (hex).
    pub firmware_digest: Option<String>,
    /// Integrity verdict.
    #[param(inline)]
    pub integrity: Option<IntegrityParam>,
    /// A label, `key=value`.
    pub label: Option<String>,
    /// Seen at or after: RFC 3339, unix seconds, or a duration ago (`24h`, `7d`).
    pub seen_since: Option<String>,
    /// Device id prefix.
    pub q: Option<String>,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Page size, 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

impl DeviceQuery {
    pub fn filter(&self, now: i64) -> ApiResult<DeviceFilter> {
        let label = match &self.label {
            None => None,
            Some(l) => {
                let (k, v) = l
                    .split_once('=')
                    .ok_or_else(|| ApiError::bad_request("bad_query", "label must be key=value"))?;
                Some((k.to_owned(), v.to_owned()))
            }
        };
        let last_seen_after_ms = match &self.seen_since {
            None => None,
            Some(s) => Some(super::parse_time(s, now).ok_or_else(|| {
                ApiError::bad_request(
                    "bad_query",
                    "seen_since must be RFC 3339, unix seconds, or a duration like 24h",
                )
            })?),
        };
        Ok(DeviceFilter {
            status: self.status.map(|s| match s {
                StatusParam::Pending => DeviceStatus::Pending,
                StatusParam::Active => DeviceStatus::Active,
                StatusParam::Quarantined => DeviceStatus::Quarantined,
                StatusParam::Revoked => DeviceStatus::Revoked,
            }),
            ca_id: self.ca.clone().filter(|s| !s.is_empty()),
            firmware_version: self.firmware.clone().filter(|s| !s.is_empty()),
            firmware_digest: self.firmware_digest.clone().filter(|s| !s.is_empty()),
            integrity: self.integrity.map(|i| match i {
                IntegrityParam::Unknown => Integrity::Unknown,
                IntegrityParam::Verified => Integrity::Verified,
                IntegrityParam::Failed => Integrity::Failed,
                IntegrityParam::Stale => Integrity::Stale,
            }),
            label,
            last_seen_after_ms,
            last_seen_before_ms: None,
            id_prefix: self.q.clone().filter(|s| !s.is_empty()),
        })
    }
}

/// Lists devices matching the filters, ordered by id.
#[utoipa::path(get, path = "/api/v1/devices", tag = "devices", params(DeviceQuery),
    responses((status = 200, body = DeviceList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn list(
    State(state): State<AppState>,
    Authorized(_): Authorized<{ VIEWER }>,
    Query(query): Query<DeviceQuery>,
) -> ApiResult<axum::Json<DeviceList>> {
    Ok(axum::Json(list_devices(&state, &query).await?))
}

/// The device list as the API returns it (also used by the dashboard).
pub async fn list_devices(state: &AppState, query: &DeviceQuery) -> ApiResult<DeviceList> {
    let filter = query.filter(now_ms())?;
    let after = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let limit = page_limit(query.limit, 100, 1000)?;
    let page = state.registry.list_devices(&filter, after.as_deref(), limit).await?;
    Ok(DeviceList {
        items: page
            .items
            .iter()
            .map(|d| Device::from_record(d, state.hub.device_online(&d.id)))
            .collect(),
        next_cursor: page.next_after.as_deref().map(encode_cursor),
    })
}

fn link(der: &[u8]) -> Option<ChainLink> {
    let info = verifier::x509::describe_certificate(der).ok()?;
    Some(ChainLink {
        subject: info.subject,
        issuer: info.issuer,
        serial: info.serial,
        not_before: super::rfc3339(info.not_before.unix().saturating_mul(1000)),
        not_after: super::rfc3339(info.not_after.unix().saturating_mul(1000)),
        key: info.key,
        sha256: info.sha256,
    })
}

/// A device with its labels, chain and recent events (also used by the dashboard).
pub async fn device_detail(state: &AppState, id: &str) -> ApiResult<DeviceDetail> {
    let d = state.registry.device(id).await?;
    let labels = state.registry.labels(id).await?;
    let mut chain: Vec<ChainLink> = link(&d.cert_der).into_iter().collect();
    if let Ok(ca) = state.registry.ca(&d.ca_id).await {
        chain.extend(link(&ca.cert_der));
    }
    let events = state
        .registry
        .events(
            &EventFilter {
                device_id: Some(id.to_owned()),
                newest_first: true,
                ..Default::default()
            },
            50,
        )
        .await?;
    Ok(DeviceDetail {
        device: Device::from_record(&d, state.hub.device_online(id)),
        labels,
        chain,
        certificate_pem: sim_devices::pki::pem("CERTIFICATE", &d.cert_der),
        recent_events: events.iter().map(EventItem::from).collect(),
    })
}

/// One device, with labels, certificate chain and its 50 most recent events.
#[utoipa::path(get, path = "/api/v1/devices/{id}", tag = "devices", params(("id" = String, Path, description = "Device id")),
    responses((status = 200, body = DeviceDetail), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn get_one(
    State(state): State<AppState>,
    Authorized(_): Authorized<{ VIEWER }>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<DeviceDetail>> {
    Ok(axum::Json(device_detail(&state, &id).await?))
}

/// Moves a device to `to` and makes the gateway act on it at once.
pub async fn set_status(
    state: &AppState,
    caller: &Caller,
    id: &str,
    to: DeviceStatus,
    reason: Option<String>,
) -> ApiResult<Device> {
    caller.require(state, Role::Operator)?;
    let reason = reason
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| format!("{} by an operator", to.as_str()));
    let d = state
        .registry
        .set_device_status(id, to, &caller.actor(), &reason, now_ms())
        .await?;
    match to {
        DeviceStatus::Revoked => {
            state.trust.note_revoked(id);
            state
                .hub
                .signal_device(id, DeviceSignal::Close(DisconnectReason::NotAuthorized));
        }
        // A session opened with more rights than the new status allows is ended; the device
        // reconnects into its new scope (quarantined: attestation topics only).
        DeviceStatus::Quarantined | DeviceStatus::Pending => {
            state
                .hub
                .signal_device(id, DeviceSignal::Close(DisconnectReason::NotAuthorized));
        }
        DeviceStatus::Active => {}
    }
    if let Some(bus) = state.hub.bus() {
        // A session of the device on another node ends there too.
        bus.registry_changed(
            vec![crate::bus::DeviceChange {
                id: id.to_owned(),
                status: to,
                scope_only: false,
            }],
            to == DeviceStatus::Revoked,
        );
    }
    Ok(Device::from_record(&d, state.hub.device_online(id)))
}

macro_rules! action {
    ($name:ident, $status:expr, $path:literal, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "devices", request_body(content = Option<Reason>),
            params(("id" = String, Path, description = "Device id")),
            responses((status = 200, body = Device), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
                (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
            security(("bearer" = [])))]
        pub(super) async fn $name(
            State(state): State<AppState>,
            Authorized(caller): Authorized<{ OPERATOR }>,
            Path(id): Path<String>,
            OptionalJson(body): OptionalJson<Reason>,
        ) -> ApiResult<axum::Json<Device>> {
            Ok(axum::Json(set_status(&state, &caller, &id, $status, body.reason).await?))
        }
    };
}

action!(
    activate,
    DeviceStatus::Active,
    "/api/v1/devices/{id}/activate",
    "Activates a pending or quarantined device."
);
action!(
    quarantine,
    DeviceStatus::Quarantined,
    "/api/v1/devices/{id}/quarantine",
    "Quarantines a device: it may connect only to attest."
);
action!(
    revoke,
    DeviceStatus::Revoked,
    "/api/v1/devices/{id}/revoke",
    "Revokes a device (terminal): its session ends and every later handshake is refused."
);

/// Label keys: 1–63 of `A–Z a–z 0–9 . _ - /`; values up to 255 characters; 64 labels at most.
fn check_labels(labels: &BTreeMap<String, String>) -> ApiResult<()> {
    if labels.len() > 64 {
        return Err(ApiError::bad_request("bad_labels", "at most 64 labels per device"));
    }
    for (k, v) in labels {
        let key_ok = (1..=63).contains(&k.len())
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
        if !key_ok {
            return Err(ApiError::bad_request(
                "bad_labels",
                format!(
                    "label key `{}` must be 1-63 characters of A-Z a-z 0-9 . _ - /",
                    k.escape_debug()
                ),
            ));
        }
        if v.chars().count() > 255 || v.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "bad_labels",
                format!("label `{k}` value must be at most 255 printable characters"),
            ));
        }
    }
    Ok(())
}

/// Replaces all of a device's labels.
#[utoipa::path(put, path = "/api/v1/devices/{id}/labels", tag = "devices", request_body = Labels,
    params(("id" = String, Path, description = "Device id")),
    responses((status = 200, body = Labels), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn put_labels(
    State(state): State<AppState>,
    Authorized(caller): Authorized<{ OPERATOR }>,
    Path(id): Path<String>,
    Json(body): Json<Labels>,
) -> ApiResult<axum::Json<Labels>> {
    check_labels(&body.labels)?;
    let labels = state
        .registry
        .set_labels(&id, &body.labels, &caller.actor(), now_ms())
        .await?;
    Ok(axum::Json(Labels { labels }))
}
