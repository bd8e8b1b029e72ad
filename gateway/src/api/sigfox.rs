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
use crate::sigfox::Judged;
use crate::stats::inc;
use axum::extract::State;
use axum::http::StatusCode;
use registry::{NewEvent, RegistryError, SigfoxDeviceInfo};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use verifier::sigfox::{SigfoxError, Uplink, parse_uplink_hex};
use zeroize::Zeroizing;

/// `POST /api/v1/sigfox/devices`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSigfoxDevice {
    /// 8 hex digits, as Sigfox prints it (`004D33DB`).
    pub device_id: String,
    /// The device's network authentication key: 32 hex digits. Sealed at rest, never returned.
    /// Absent: a device served through the Sigfox backend's callbacks only (its raw frames
    /// cannot be verified here).
    pub nak: Option<String>,
    /// The device encrypts its payloads. Sigfox's payload encryption is not publicly specified:
    /// such payloads are stored and reported as received, marked `payload_encrypted`.
    #[serde(default)]
    pub payload_encrypted: bool,
}

/// A Sigfox device (no key material, ever).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SigfoxDevice {
    pub device_id: String,
    /// The last accepted sequence number (absent: none yet).
    pub last_seq_number: Option<i64>,
    /// Whether its NAK is held (raw frames can be verified).
    pub has_nak: bool,
    /// `api` (provisioned) or `callback` (first heard of in a Sigfox backend callback).
    pub registered_via: String,
    /// Its payloads are encrypted (reported as received, not decrypted).
    pub payload_encrypted: bool,
    pub created_at: String,
    pub updated_at: String,
}

impl SigfoxDevice {
    fn from(d: SigfoxDeviceInfo) -> Self {
        SigfoxDevice {
            device_id: d.device_id,
            last_seq_number: d.last_seq,
            has_nak: d.has_nak,
            registered_via: d.registered_via,
            payload_encrypted: d.payload_encrypted,
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
    /// When the Sigfox backend received it (callbacks: their `time`).
    pub time: Option<String>,
    /// The downlink answered to it (16 hex digits).
    pub downlink_hex: Option<String>,
    /// The payload is encrypted by the device (`payload_hex` is the ciphertext as received).
    pub payload_encrypted: bool,
    /// What came with it: transmission, lost messages before it, station, rssi, snr.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// `POST /api/v1/sigfox/devices/{device_id}/downlinks`: 8 bytes for the device, answered to
/// its next callback that asks for a downlink (`ack`).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSigfoxDownlink {
    /// 16 hex digits.
    pub data_hex: String,
}

/// A downlink: queued, or sent (answered to a callback).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SigfoxDownlinkItem {
    pub id: i64,
    pub data_hex: String,
    /// `queued` or `sent`.
    pub status: String,
    pub created_by: String,
    pub created_at: String,
    pub sent_at: Option<String>,
}

impl SigfoxDownlinkItem {
    fn from(d: registry::SigfoxDownlink) -> Self {
        SigfoxDownlinkItem {
            id: d.id,
            data_hex: hex::encode_upper(&d.data),
            status: if d.uplink_id.is_some() { "sent" } else { "queued" }.into(),
            created_by: d.created_by,
            created_at: rfc3339(d.created_at_ms),
            sent_at: d.sent_at_ms.map(rfc3339),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SigfoxDownlinkList {
    pub items: Vec<SigfoxDownlinkItem>,
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
    /// The device encrypts its payloads: `payload_hex` is the ciphertext (Sigfox's scheme is
    /// not public, so it is not decrypted).
    pub payload_encrypted: Option<bool>,
    /// Sequence numbers skipped since the previous accepted message (messages lost on the way).
    pub lost: Option<u16>,
    /// The frame asked for a downlink (BF) and one was queued: its payload (16 hex digits)…
    pub downlink_hex: Option<String>,
    /// …and the downlink frame to transmit to the device (15 bytes after the downlink preamble
    /// and frame type, DL-AUTH under the NAK, error-correction coded and whitened), 30 hex digits.
    pub downlink_frame_hex: Option<String>,
}

fn device_id_param(raw: &str) -> ApiResult<String> {
    Ok(hex::encode_upper(super::hex_bytes("device_id", raw, 4)?))
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
    let nak = match &body.nak {
        Some(hex) => {
            let nak = Zeroizing::new(super::hex_bytes("nak", hex, 16)?);
            let mut key = Zeroizing::new([0u8; 16]);
            key.copy_from_slice(&nak);
            Some(key)
        }
        None => None,
    };
    state
        .registry
        .insert_sigfox_device_with(&device_id, nak.as_deref(), body.payload_encrypted, now_ms())
        .await?;
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
                time: u.sigfox_time.and_then(|t| t.checked_mul(1000)).map(rfc3339),
                downlink_hex: u.downlink.map(hex::encode_upper),
                payload_encrypted: u.detail["payload_encrypted"] == true,
                detail: u.detail,
            })
            .collect(),
    }))
}

/// Queues a downlink (operator): answered to the device's next callback that asks for one.
#[utoipa::path(post, path = "/api/v1/sigfox/devices/{device_id}/downlinks", tag = "sigfox",
    params(("device_id" = String, Path, description = "Sigfox device id, 8 hex digits")),
    request_body = NewSigfoxDownlink,
    responses((status = 201, body = SigfoxDownlinkItem), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn queue_downlink(
    State(state): State<AppState>,
    Authorized(caller): Authorized<{ OPERATOR }>,
    Path(device_id): Path<String>,
    Json(body): Json<NewSigfoxDownlink>,
) -> ApiResult<(StatusCode, axum::Json<SigfoxDownlinkItem>)> {
    let device_id = device_id_param(&device_id)?;
    let data: [u8; 8] = crate::lorawan::decode_hex(&body.data_hex)
        .and_then(|d| d.try_into().ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid",
                "data_hex must be 16 hex digits (a Sigfox downlink is 8 bytes)",
            )
        })?;
    let queued = state
        .registry
        .queue_sigfox_downlink(&device_id, &data, &caller.actor(), now_ms())
        .await?;
    state.events.emit(
        NewEvent::new("sigfox.downlink_queued", &caller.actor())
            .device(&device_id)
            .detail(serde_json::json!({ "downlink_id": queued.id })),
    );
    Ok((StatusCode::CREATED, axum::Json(SigfoxDownlinkItem::from(queued))))
}

/// A device's latest downlinks (queued and sent), newest first.
#[utoipa::path(get, path = "/api/v1/sigfox/devices/{device_id}/downlinks", tag = "sigfox",
    params(("device_id" = String, Path, description = "Sigfox device id, 8 hex digits")),
    responses((status = 200, body = SigfoxDownlinkList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn downlinks(
    State(state): State<AppState>,
    Authorized(_): Authorized<{ VIEWER }>,
    Path(device_id): Path<String>,
) -> ApiResult<axum::Json<SigfoxDownlinkList>> {
    let device_id = device_id_param(&device_id)?;
    state.registry.sigfox_device_info(&device_id).await?;
    let items = state.registry.sigfox_downlinks(&device_id, 100).await?;
    Ok(axum::Json(SigfoxDownlinkList {
        items: items.into_iter().map(SigfoxDownlinkItem::from).collect(),
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
    let (nak, last, payload_encrypted) = match state.registry.sigfox_device(&device_id).await {
        Ok(found) => (found.nak, found.last_seq, found.payload_encrypted),
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
    let Some(nak) = nak else {
        let reason = format!(
            "Sigfox device {device_id} is served through callbacks only: provision its NAK to verify raw frames"
        );
        return Ok(axum::Json(refuse(&state, &caller.actor(), Some(&up), "no_nak", reason)));
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
    let message = crate::sigfox::Message {
        device_id: &device_id,
        seq_number: up.seq_number,
        payload: &up.payload,
        source: "frame",
        sigfox_time: None,
        take_downlink: up.downlink_requested,
        max_seq_gap: state.sigfox.max_seq_gap,
    };
    let detail = |lost: u16| {
        serde_json::json!({ "transmission": up.replica, "lost": lost, "bit": up.bit,
            "downlink_requested": up.downlink_requested, "payload_encrypted": payload_encrypted })
    };
    match crate::sigfox::store_in_sequence(&state, &message, last, detail).await? {
        Judged::Stored { lost, stored } => {
            inc(&state.stats.sigfox_frames_accepted);
            if stored.downlink.is_some() {
                inc(&state.stats.sigfox_downlinks_sent);
            }
            Ok(axum::Json(FrameVerdict {
                lost: Some(lost),
                payload_encrypted: Some(payload_encrypted),
                ..with_downlink(verdict(&up, true), &up, &nak, stored.downlink.as_deref())
            }))
        }
        Judged::Behind(e) => {
            // The same number as the last message (the one it was judged against, carried by
            // the refusal), with its payload: a further transmission.
            let same_number = matches!(e, SigfoxError::SeqReplay { last, got } if last == got);
            if same_number && let Some(stored) = last_message(&state, &device_id, &up).await? {
                inc(&state.stats.sigfox_frames_duplicate);
                // The downlink answered to the first transmission is given again.
                let v = with_downlink(verdict(&up, false), &up, &nak, stored.downlink.as_deref());
                return Ok(axum::Json(FrameVerdict {
                    check: Some("duplicate".into()),
                    reason: Some(format!(
                        "message {} was already accepted (this is a further transmission of it)",
                        up.seq_number
                    )),
                    ..v
                }));
            }
            Ok(axum::Json(refuse(
                &state,
                &caller.actor(),
                Some(&up),
                e.check(),
                e.to_string(),
            )))
        }
        // Raw frames carry no backend time, so none is found stored before.
        Judged::StoredBefore(_) => Err(ApiError::from(RegistryError::Unavailable {
            detail: "unexpected stored message for a raw frame".into(),
        })),
    }
}

/// The device's last stored message if `up` carries its payload (a further transmission of it
/// rather than a replay of an older one).
async fn last_message(state: &AppState, device_id: &str, up: &Uplink) -> ApiResult<Option<registry::SigfoxUplink>> {
    let newest = state.registry.sigfox_uplinks(device_id, 1).await?;
    Ok(newest.into_iter().next().filter(|u| u.payload == up.payload))
}

/// Adds the downlink answered to `up` (8 bytes) and its frame, built for the device.
fn with_downlink(mut v: FrameVerdict, up: &Uplink, nak: &[u8; 16], downlink: Option<&[u8]>) -> FrameVerdict {
    if let Some(data) = downlink.and_then(|d| <[u8; 8]>::try_from(d).ok()) {
        let frame = verifier::sigfox::downlink::encode_downlink(nak, up.device_id, up.seq_number, &data);
        v.downlink_hex = Some(hex::encode_upper(data));
        v.downlink_frame_hex = Some(hex::encode_upper(frame));
    }
    v
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
    state.stats.rejected(check);
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
