//! Sigfox key custody and raw-frame verification (`/api/v1/sigfox/…`).
//!
//! For operators who hold their devices' NAKs and receive raw uplink frames (private receivers,
//! test benches): a frame is parsed and its CRC checked, its UL-AUTH verified in constant time
//! with the device's NAK (sealed in the registry), its 12-bit sequence number checked across the
//! rollover, then stored and published as telemetry on `devices/{device_id}/telemetry`. A
//! refused frame gets `accepted: false` with the failed check, a counter and an event. NAKs go in
//! and never come out.

use super::model::ErrorBody;
use super::{
    ADMIN, ApiError, ApiResult, Authorized, Json, OPERATOR, Path, Query, VIEWER, decode_cursor, page_limit, rfc3339,
};
use crate::clock::now_ms;
use crate::http::AppState;
use crate::stats::inc;
use axum::extract::State;
use axum::http::StatusCode;
use registry::{NewEvent, NewSigfoxUplink, RegistryError, SigfoxDeviceInfo};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;
use verifier::sigfox::{DEFAULT_MAX_SEQ_GAP, Uplink, check_seq, parse_uplink_hex};
use zeroize::Zeroizing;

/// `POST /api/v1/sigfox/devices`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSigfoxDevice {
    /// 8 hex digits, as Sigfox prints it (`004D33DB`).
    pub device_id: String,
    /// The device's network authentication key: 32 hex digits. Sealed at rest, never returned.
    pub nak: String,
}

/// A Sigfox device (no key material, ever).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SigfoxDevice {
    pub device_id: String,
    /// The last accepted sequence number (absent: none yet).
    pub last_seq_number: Option<i64>,
    pub created_at: String,
    pub updated_at: String,
}

impl SigfoxDevice {
    fn from(d: SigfoxDeviceInfo) -> Self {
        SigfoxDevice {
            device_id: d.device_id,
            last_seq_number: d.last_seq,
            created_at: rfc3339(d.created_at_ms),
            updated_at: rfc3339(d.updated_at_ms),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SigfoxDeviceList {
    pub items: Vec<SigfoxDevice>,
    pub next_cursor: Option<String>,
}

/// One accepted uplink.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SigfoxUplinkItem {
    pub seq_number: i64,
    pub payload_hex: String,
    /// `frame` (verified here with the NAK) or `callback` (from the Sigfox backend).
    pub source: String,
    pub received_at: String,
    /// What came with it: transmission, lost messages before it, station, rssi, snr.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SigfoxUplinkList {
    pub items: Vec<SigfoxUplinkItem>,
}

/// `POST /api/v1/sigfox/frames`: a raw uplink frame in hex, from its flags and sequence number
/// (packet and CRC), from its frame type (an odd number of digits), or with its preamble.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FrameSubmission {
    pub frame_hex: String,
}

/// The verdict on a submitted frame.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct FrameVerdict {
    pub accepted: bool,
    /// Why it was refused (absent when accepted).
    pub reason: Option<String>,
    /// The failed check's stable name: `crc_mismatch`, `ul_auth_mismatch`, `seq_replay`,
    /// `unknown_device`, `duplicate`, … (absent when accepted).
    pub check: Option<String>,
    pub device_id: Option<String>,
    pub seq_number: Option<u16>,
    pub payload_hex: Option<String>,
    /// 0 for the first transmission, 1 and 2 for the replicas.
    pub transmission: Option<u8>,
    /// Sequence numbers skipped since the previous accepted message (messages lost on the way).
    pub lost: Option<u16>,
}

fn device_id_param(raw: &str) -> ApiResult<String> {
    match crate::lorawan::decode_hex(raw) {
        Some(b) if b.len() == 4 => Ok(hex::encode_upper(b)),
        _ => Err(ApiError::bad_request("invalid", "device_id must be 8 hex digits")),
    }
}

/// Provisions a Sigfox device's NAK (admin): sealed at rest, never returned.
#[utoipa::path(post, path = "/api/v1/sigfox/devices", tag = "sigfox", request_body = NewSigfoxDevice,
    responses((status = 201, body = SigfoxDevice), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn add(
    State(state): State<AppState>,
    Authorized(caller): Authorized<{ ADMIN }>,
    Json(body): Json<NewSigfoxDevice>,
) -> ApiResult<(StatusCode, axum::Json<SigfoxDevice>)> {
    let device_id = device_id_param(&body.device_id)?;
    let nak = Zeroizing::new(crate::lorawan::decode_hex(&body.nak).unwrap_or_default());
    let nak: Zeroizing<[u8; 16]> = Zeroizing::new(
        nak.as_slice()
            .try_into()
            .map_err(|_| ApiError::bad_request("invalid", "nak must be 32 hex digits"))?,
    );
    state.registry.insert_sigfox_device(&device_id, &nak, now_ms()).await?;
    state.events.emit(
        NewEvent::new("sigfox.device_added", &caller.actor()).detail(serde_json::json!({ "device_id": device_id })),
    );
    let device = state.registry.sigfox_device_info(&device_id).await?;
    Ok((StatusCode::CREATED, axum::Json(SigfoxDevice::from(device))))
}

/// Sigfox devices, by id.
#[utoipa::path(get, path = "/api/v1/sigfox/devices", tag = "sigfox", params(super::ListQuery),
    responses((status = 200, body = SigfoxDeviceList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn list(
    State(state): State<AppState>,
    Authorized(_): Authorized<{ VIEWER }>,
    Query(q): Query<super::ListQuery>,
) -> ApiResult<axum::Json<SigfoxDeviceList>> {
    let limit = page_limit(q.limit, 100, 1000)?;
    let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let items = state.registry.sigfox_devices(after.as_deref(), limit + 1).await?;
    let (items, next_cursor) = super::page(items, limit, |d| &d.device_id);
    Ok(axum::Json(SigfoxDeviceList {
        items: items.into_iter().map(SigfoxDevice::from).collect(),
        next_cursor,
    }))
}

/// One Sigfox device.
#[utoipa::path(get, path = "/api/v1/sigfox/devices/{device_id}", tag = "sigfox",
    params(("device_id" = String, Path, description = "Sigfox device id, 8 hex digits")),
    responses((status = 200, body = SigfoxDevice), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn get_one(
    State(state): State<AppState>,
    Authorized(_): Authorized<{ VIEWER }>,
    Path(device_id): Path<String>,
) -> ApiResult<axum::Json<SigfoxDevice>> {
    let device_id = device_id_param(&device_id)?;
    Ok(axum::Json(SigfoxDevice::from(
        state.registry.sigfox_device_info(&device_id).await?,
    )))
}

/// A device's latest accepted uplinks, newest first.
#[utoipa::path(get, path = "/api/v1/sigfox/devices/{device_id}/uplinks", tag = "sigfox",
    params(("device_id" = String, Path, description = "Sigfox device id, 8 hex digits")),
    responses((status = 200, body = SigfoxUplinkList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn uplinks(
    State(state): State<AppState>,
    Authorized(_): Authorized<{ VIEWER }>,
    Path(device_id): Path<String>,
) -> ApiResult<axum::Json<SigfoxUplinkList>> {
    let device_id = device_id_param(&device_id)?;
    state.registry.sigfox_device_info(&device_id).await?;
    let items = state.registry.sigfox_uplinks(&device_id, 100).await?;
    Ok(axum::Json(SigfoxUplinkList {
        items: items
            .into_iter()
            .map(|u| SigfoxUplinkItem {
                seq_number: u.seq_number,
                payload_hex: hex::encode(&u.payload),
                source: u.source,
                received_at: rfc3339(u.received_at_ms),
                detail: u.detail,
            })
            .collect(),
    }))
}

/// Verifies a raw uplink frame with its device's NAK and, if it passes every check, stores it
/// and publishes its payload. A refused frame is answered `accepted: false` with the check.
#[utoipa::path(post, path = "/api/v1/sigfox/frames", tag = "sigfox", request_body = FrameSubmission,
    responses((status = 200, body = FrameVerdict), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn frame(
    State(state): State<AppState>,
    Authorized(caller): Authorized<{ OPERATOR }>,
    Json(body): Json<FrameSubmission>,
) -> ApiResult<axum::Json<FrameVerdict>> {
    let up = match parse_uplink_hex(&body.frame_hex) {
        Ok(up) => up,
        Err(e) => {
            return Ok(axum::Json(refuse(
                &state,
                &caller.actor(),
                None,
                e.check(),
                e.to_string(),
            )));
        }
    };
    let device_id = up.device_id_hex();
    let (nak, mut last) = match state.registry.sigfox_device(&device_id).await {
        Ok(found) => found,
        Err(RegistryError::NotFound { .. }) => {
            let reason = format!("no Sigfox device {device_id} is provisioned (its NAK is needed to verify the frame)");
            return Ok(axum::Json(refuse(
                &state,
                &caller.actor(),
                Some(&up),
                "unknown_device",
                reason,
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let nak: Zeroizing<[u8; 16]> = Zeroizing::new(nak.as_slice().try_into().map_err(|_| {
        ApiError::from(RegistryError::Sealing {
            detail: "the stored NAK is not 16 bytes".into(),
        })
    })?);
    if let Err(e) = up.verify(&nak) {
        return Ok(axum::Json(refuse(
            &state,
            &caller.actor(),
            Some(&up),
            e.check(),
            e.to_string(),
        )));
    }
    // Judged against the stored number, stored only if it is still that number: a concurrent
    // request carrying the same message loses, reads the new number, and is judged again.
    for _ in 0..3 {
        let lost = match check_seq(last.map(|l| l as u16), up.seq_number, DEFAULT_MAX_SEQ_GAP) {
            Ok(lost) => lost,
            Err(e) => {
                if last == Some(i64::from(up.seq_number)) && is_last_message(&state, &device_id, &up).await? {
                    inc(&state.stats.sigfox_frames_duplicate);
                    return Ok(axum::Json(FrameVerdict {
                        check: Some("duplicate".into()),
                        reason: Some(format!(
                            "message {} was already accepted (this is a further transmission of it)",
                            up.seq_number
                        )),
                        ..verdict(&up, false)
                    }));
                }
                return Ok(axum::Json(refuse(
                    &state,
                    &caller.actor(),
                    Some(&up),
                    e.check(),
                    e.to_string(),
                )));
            }
        };
        let detail = serde_json::json!({ "transmission": up.replica, "lost": lost, "bit": up.bit,
            "downlink_requested": up.downlink_requested });
        let topic = format!("devices/{device_id}/telemetry");
        let stored = state
            .registry
            .store_sigfox_uplink(
                &NewSigfoxUplink {
                    device_id: &device_id,
                    seq_number: up.seq_number,
                    payload: &up.payload,
                    source: "frame",
                    detail: &detail,
                    topic: Some(&topic),
                },
                last,
                now_ms(),
            )
            .await?;
        let Some(stored) = stored else {
            last = state.registry.sigfox_device_info(&device_id).await?.last_seq;
            continue;
        };
        inc(&state.stats.sigfox_frames_accepted);
        if lost > 0 {
            crate::stats::add(&state.stats.sigfox_messages_lost, u64::from(lost));
            state.events.emit(
                NewEvent::new("sigfox.sequence_gap", "sigfox")
                    .device(&device_id)
                    .reason(format!(
                        "{lost} messages missing before sequence number {}",
                        up.seq_number
                    ))
                    .detail(serde_json::json!({ "lost": lost, "seq_number": up.seq_number, "last": last })),
            );
        }
        if let Some(message) = stored.telemetry {
            state.hub.fan_out(&[Arc::new(message)]);
        }
        return Ok(axum::Json(FrameVerdict {
            lost: Some(lost),
            ..verdict(&up, true)
        }));
    }
    Err(ApiError::from(RegistryError::Unavailable {
        detail: "the device's sequence number kept moving".into(),
    }))
}

/// Whether `up` carries the same payload as the device's last stored message (a further
/// transmission of it rather than a replay of an older one).
async fn is_last_message(state: &AppState, device_id: &str, up: &Uplink) -> ApiResult<bool> {
    let newest = state.registry.sigfox_uplinks(device_id, 1).await?;
    Ok(newest.first().is_some_and(|u| u.payload == up.payload))
}

fn verdict(up: &Uplink, accepted: bool) -> FrameVerdict {
    FrameVerdict {
        accepted,
        device_id: Some(up.device_id_hex()),
        seq_number: Some(up.seq_number),
        payload_hex: Some(hex::encode(&up.payload)),
        transmission: Some(up.replica),
        ..FrameVerdict::default()
    }
}

/// A refused frame: counted, an event naming the check, and the verdict.
fn refuse(state: &AppState, actor: &str, up: Option<&Uplink>, check: &str, reason: String) -> FrameVerdict {
    inc(&state.stats.sigfox_frames_rejected);
    let device_id = up.map(Uplink::device_id_hex);
    let mut event = NewEvent::new("sigfox.frame_rejected", actor)
        .reason(reason.clone())
        .detail(serde_json::json!({ "check": check, "device_id": device_id, "seq_number": up.map(|u| u.seq_number) }));
    if let Some(id) = &device_id {
        event = event.device(id);
    }
    state.events.emit(event);
    let mut v = up.map_or_else(FrameVerdict::default, |u| verdict(u, false));
    v.check = Some(check.to_owned());
    v.reason = Some(reason);
    v
}
