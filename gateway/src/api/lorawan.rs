//! LoRaWAN key custody (`/api/v1/lorawan/devices`): OTAA devices (root keys, sealed; they join
//! through fleetward's join server) and ABP devices (DevAddr + session keys, sealed), their state
//! and their accepted uplinks. Key material goes in and never comes out.

use super::model::ErrorBody;
use super::{ADMIN, ApiError, ApiResult, Authorized, Json, Path, Query, VIEWER, decode_cursor, page_limit, rfc3339};
use crate::clock::now_ms;
use crate::http::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use registry::{LorawanDeviceInfo, NewAbpDevice, NewEvent, NewLorawanDevice};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use verifier::lorawan::MacVersion;
use zeroize::Zeroizing;

/// `POST /api/v1/lorawan/devices`: OTAA (`join_eui`, `app_key`, and `nwk_key` for 1.1) or ABP
/// (`dev_addr`, session keys, counters). Keys and EUIs in hex (an `0x` prefix is accepted).
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewLorawan {
    pub dev_eui: String,
    /// `1.0.2`, `1.0.3`, `1.0.4` or `1.1`.
    pub mac_version: String,
    #[serde(default)]
    pub join_eui: Option<String>,
    #[serde(default)]
    pub app_key: Option<String>,
    /// LoRaWAN 1.1 OTAA only.
    #[serde(default)]
    pub nwk_key: Option<String>,
    /// ABP: the device's address (its presence makes the device ABP).
    #[serde(default)]
    pub dev_addr: Option<String>,
    /// ABP, LoRaWAN 1.0.x.
    #[serde(default)]
    pub nwk_s_key: Option<String>,
    /// ABP, LoRaWAN 1.1.
    #[serde(default)]
    pub f_nwk_s_int_key: Option<String>,
    #[serde(default)]
    pub s_nwk_s_int_key: Option<String>,
    #[serde(default)]
    pub nwk_s_enc_key: Option<String>,
    /// ABP.
    #[serde(default)]
    pub app_s_key: Option<String>,
    /// ABP: the last uplink counter the device used (absent: none yet).
    #[serde(default)]
    pub fcnt_up: Option<u32>,
    /// ABP: the next downlink counter.
    #[serde(default)]
    pub fcnt_down: Option<u32>,
}

/// A LoRaWAN device (no key material, ever).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct LorawanDevice {
    pub dev_eui: String,
    pub join_eui: String,
    pub mac_version: String,
    /// `otaa` or `abp`.
    pub activation: String,
    pub dev_addr: Option<String>,
    /// The last accepted uplink counter.
    pub fcnt_up: Option<i64>,
    /// The next network downlink counter.
    pub fcnt_down: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl LorawanDevice {
    fn from(d: LorawanDeviceInfo) -> Self {
        LorawanDevice {
            dev_eui: d.dev_eui,
            join_eui: d.join_eui,
            mac_version: d.mac_version,
            activation: d.activation,
            dev_addr: d.dev_addr,
            fcnt_up: d.f_cnt_up,
            fcnt_down: d.n_f_cnt_down,
            created_at: rfc3339(d.created_at_ms),
            updated_at: rfc3339(d.updated_at_ms),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct LorawanDeviceList {
    pub items: Vec<LorawanDevice>,
    pub next_cursor: Option<String>,
}

/// One accepted uplink.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct LorawanUplinkItem {
    pub fcnt: i64,
    pub fport: Option<i64>,
    /// The decrypted FRMPayload, hex.
    pub payload_hex: String,
    /// Every gateway reception of this frame: `gateway`, `rssi`, `lsnr`, `freq`, `datr`, `tmst`.
    #[schema(value_type = Vec<Object>)]
    pub gateways: serde_json::Value,
    pub received_at: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct LorawanUplinkList {
    pub items: Vec<LorawanUplinkItem>,
}

fn key16(name: &str, value: Option<&str>) -> ApiResult<Zeroizing<[u8; 16]>> {
    let value = value.ok_or_else(|| ApiError::bad_request("invalid", format!("{name} is required")))?;
    let bytes = Zeroizing::new(super::hex_bytes(name, value, 16)?);
    let mut key = Zeroizing::new([0u8; 16]);
    key.copy_from_slice(&bytes);
    Ok(key)
}

/// Provisions a LoRaWAN device (admin): its keys are sealed at rest and never returned.
#[utoipa::path(post, path = "/api/v1/lorawan/devices", tag = "lorawan", request_body = NewLorawan,
    responses((status = 201, body = LorawanDevice), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn add(
    State(state): State<AppState>,
    Authorized(caller): Authorized<{ ADMIN }>,
    Json(body): Json<NewLorawan>,
) -> ApiResult<(StatusCode, axum::Json<LorawanDevice>)> {
    let dev_eui = hex::encode_upper(super::hex_bytes("dev_eui", &body.dev_eui, 8)?);
    let version = MacVersion::parse(body.mac_version.trim())
        .ok_or_else(|| ApiError::bad_request("invalid", "mac_version must be 1.0.2, 1.0.3, 1.0.4 or 1.1"))?;
    let activation = if let Some(dev_addr) = &body.dev_addr {
        let dev_addr = hex::encode_upper(super::hex_bytes("dev_addr", dev_addr, 4)?);
        if body.app_key.is_some() || body.nwk_key.is_some() {
            return Err(ApiError::bad_request(
                "invalid",
                "an ABP device (dev_addr) has session keys, not app_key/nwk_key",
            ));
        }
        let app_s = key16("app_s_key", body.app_s_key.as_deref())?;
        let (f, s, e) = if version.is_1_1() {
            (
                key16("f_nwk_s_int_key", body.f_nwk_s_int_key.as_deref())?,
                key16("s_nwk_s_int_key", body.s_nwk_s_int_key.as_deref())?,
                key16("nwk_s_enc_key", body.nwk_s_enc_key.as_deref())?,
            )
        } else {
            let k = key16("nwk_s_key", body.nwk_s_key.as_deref())?;
            (k.clone(), k.clone(), k)
        };
        let blob = crate::lorawan::session_blob(&f, &s, &e, &app_s);
        state
            .registry
            .insert_lorawan_abp(
                &NewAbpDevice {
                    dev_eui: &dev_eui,
                    dev_addr: &dev_addr,
                    mac_version: version.as_str(),
                    session_keys: &blob,
                    f_cnt_up: body.fcnt_up,
                    f_cnt_down: body.fcnt_down.unwrap_or(0),
                },
                now_ms(),
            )
            .await?;
        // An uplink may have found this DevAddr unknown a moment ago: ask the registry again.
        if let Ok(addr) = <[u8; 4]>::try_from(hex::decode(&dev_addr).unwrap_or_default()) {
            state.lorawan_sessions.forget(addr);
        }
        "abp"
    } else {
        let join_eui = hex::encode_upper(super::hex_bytes(
            "join_eui",
            body.join_eui.as_deref().ok_or_else(|| {
                ApiError::bad_request("invalid", "an OTAA device needs join_eui (or dev_addr for ABP)")
            })?,
            8,
        )?);
        let app_key = key16("app_key", body.app_key.as_deref())?;
        let nwk_key = match (version.is_1_1(), body.nwk_key.as_deref()) {
            (true, k) => Some(key16("nwk_key", k)?),
            (false, None) => None,
            (false, Some(_)) => {
                return Err(ApiError::bad_request(
                    "invalid",
                    "nwk_key is a LoRaWAN 1.1 key; LoRaWAN 1.0.x devices have only app_key",
                ));
            }
        };
        state
            .registry
            .insert_lorawan_device(
                &NewLorawanDevice {
                    dev_eui: &dev_eui,
                    join_eui: &join_eui,
                    mac_version: version.as_str(),
                    app_key: &app_key,
                    nwk_key: nwk_key.as_deref(),
                },
                now_ms(),
            )
            .await?;
        "otaa"
    };
    state.events.emit(
        NewEvent::new("lorawan.device_added", &caller.actor()).detail(
            serde_json::json!({ "dev_eui": dev_eui, "mac_version": version.as_str(), "activation": activation }),
        ),
    );
    let device = state.registry.lorawan_device(&dev_eui).await?;
    Ok((StatusCode::CREATED, axum::Json(LorawanDevice::from(device))))
}

/// LoRaWAN devices, by DevEUI.
#[utoipa::path(get, path = "/api/v1/lorawan/devices", tag = "lorawan", params(super::ListQuery),
    responses((status = 200, body = LorawanDeviceList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn list(
    State(state): State<AppState>,
    Authorized(_): Authorized<{ VIEWER }>,
    Query(q): Query<super::ListQuery>,
) -> ApiResult<axum::Json<LorawanDeviceList>> {
    let limit = page_limit(q.limit, 100, 1000)?;
    let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let items = state.registry.lorawan_devices(after.as_deref(), limit + 1).await?;
    let (items, next_cursor) = super::page(items, limit, |d| &d.dev_eui);
    Ok(axum::Json(LorawanDeviceList {
        items: items.into_iter().map(LorawanDevice::from).collect(),
        next_cursor,
    }))
}

fn dev_eui_param(raw: &str) -> ApiResult<String> {
    Ok(hex::encode_upper(super::hex_bytes("dev_eui", raw, 8)?))
}

/// One LoRaWAN device.
#[utoipa::path(get, path = "/api/v1/lorawan/devices/{dev_eui}", tag = "lorawan",
    params(("dev_eui" = String, Path, description = "DevEUI, hex")),
    responses((status = 200, body = LorawanDevice), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn get_one(
    State(state): State<AppState>,
    Authorized(_): Authorized<{ VIEWER }>,
    Path(dev_eui): Path<String>,
) -> ApiResult<axum::Json<LorawanDevice>> {
    let dev_eui = dev_eui_param(&dev_eui)?;
    Ok(axum::Json(LorawanDevice::from(
        state.registry.lorawan_device(&dev_eui).await?,
    )))
}

/// A device's latest accepted uplinks (each once, with every gateway that heard it).
#[utoipa::path(get, path = "/api/v1/lorawan/devices/{dev_eui}/uplinks", tag = "lorawan",
    params(("dev_eui" = String, Path, description = "DevEUI, hex")),
    responses((status = 200, body = LorawanUplinkList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn uplinks(
    State(state): State<AppState>,
    Authorized(_): Authorized<{ VIEWER }>,
    Path(dev_eui): Path<String>,
) -> ApiResult<axum::Json<LorawanUplinkList>> {
    let dev_eui = dev_eui_param(&dev_eui)?;
    state.registry.lorawan_device(&dev_eui).await?;
    let items = state.registry.lorawan_uplinks(&dev_eui, 100).await?;
    Ok(axum::Json(LorawanUplinkList {
        items: items
            .into_iter()
            .map(|u| LorawanUplinkItem {
                fcnt: u.f_cnt,
                fport: u.f_port,
                payload_hex: hex::encode(&u.payload),
                gateways: u.gateways,
                received_at: rfc3339(u.received_at_ms),
            })
            .collect(),
    }))
}
