//! Commands to devices through the API: queued in the registry (delivered when the device is
//! subscribed to `devices/{id}/commands/#`, now or when it reconnects, until they expire), and
//! the session holding the device woken at once, on this node or, over the bus, on another.

use super::model::ErrorBody;
use super::{ApiError, ApiResult, Authorized, Json, OPERATOR, Path, VIEWER, rfc3339};
use crate::clock::now_ms;
use crate::http::AppState;
use crate::stats::inc;
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine;
use registry::NewEvent;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Longest command payload accepted (a device's MQTT buffer is small).
pub const MAX_COMMAND_PAYLOAD: usize = 64 * 1024;
/// Longest a command may wait for its device.
const MAX_TTL_SECS: u64 = 30 * 86_400;

/// A command for a device. The payload is `payload` (UTF-8 text) or `payload_base64` (bytes).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCommand {
    /// Appended to `devices/{id}/commands/`: `reboot`, `config/set`. 1–128 characters, no MQTT
    /// wildcards, no empty levels.
    pub name: String,
    #[serde(default)]
    pub payload: Option<String>,
    #[serde(default)]
    pub payload_base64: Option<String>,
    /// 0 or 1 (default 1: the device acknowledges it, and it is marked delivered then).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// How long it waits for the device (default: the server's `mqtt.command_ttl_secs`).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

fn default_qos() -> u8 {
    1
}

/// A command waiting for (or delivered to) its device.
#[derive(Debug, Serialize, ToSchema)]
pub struct Command {
    pub id: i64,
    pub device_id: String,
    pub topic: String,
    pub qos: u8,
    pub payload_bytes: usize,
    pub created_at: String,
    pub expires_at: String,
}

/// Commands waiting for a device.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandList {
    pub commands: Vec<Command>,
}

fn check_name(name: &str) -> ApiResult<()> {
    let ok = (1..=128).contains(&name.len())
        && !name.split('/').any(str::is_empty)
        && name
            .chars()
            .all(|c| !c.is_control() && !matches!(c, '+' | '#' | '*' | '>' | ' '));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "bad_command_name",
            "name must be 1-128 characters without spaces, MQTT wildcards (+ #), `*`, `>` or empty levels",
        ))
    }
}

/// Queues a command for a device; the node holding its connection delivers it at once.
#[utoipa::path(post, path = "/api/v1/devices/{id}/commands", tag = "devices", request_body = NewCommand,
    params(("id" = String, Path, description = "Device id")),
    responses((status = 202, body = Command), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn queue(
    State(state): State<AppState>,
    Authorized(caller): Authorized<{ OPERATOR }>,
    Path(id): Path<String>,
    Json(body): Json<NewCommand>,
) -> ApiResult<(StatusCode, axum::Json<Command>)> {
    check_name(&body.name)?;
    if body.qos > 1 {
        return Err(ApiError::bad_request("bad_qos", "qos must be 0 or 1"));
    }
    let payload = match (&body.payload, &body.payload_base64) {
        (Some(text), None) => text.as_bytes().to_vec(),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| ApiError::bad_request("bad_payload", "payload_base64 is not base64"))?,
        (None, None) => Vec::new(),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "bad_payload",
                "give payload or payload_base64, not both",
            ));
        }
    };
    if payload.len() > MAX_COMMAND_PAYLOAD {
        return Err(ApiError::bad_request(
            "bad_payload",
            format!("a command payload is at most {MAX_COMMAND_PAYLOAD} bytes"),
        ));
    }
    let ttl_secs = body.ttl_secs.unwrap_or(state.command_ttl_secs);
    if !(1..=MAX_TTL_SECS).contains(&ttl_secs) {
        return Err(ApiError::bad_request(
            "bad_ttl",
            format!("ttl_secs must be 1..={MAX_TTL_SECS}"),
        ));
    }
    let device = state.registry.device(&id).await?;
    if device.status == registry::DeviceStatus::Revoked {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "device_revoked",
            format!("device `{id}` is revoked: it can never receive a command"),
        ));
    }
    let topic = format!("devices/{id}/commands/{}", body.name);
    let now = now_ms();
    let ttl_ms = i64::try_from(ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let command_id = state
        .registry
        .enqueue_command(&id, &topic, &payload, body.qos, ttl_ms, now)
        .await?;
    inc(&state.stats.commands_queued);
    // The payload is not recorded: it may carry the operator's secrets.
    state.events.emit(
        NewEvent::new("device.command_queued", &caller.actor())
            .device(&id)
            .detail(serde_json::json!({
                "command_id": command_id, "topic": topic, "qos": body.qos, "payload_bytes": payload.len(),
            })),
    );
    state.hub.command_queued(&id, command_id);
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(Command {
            id: command_id,
            device_id: id,
            topic,
            qos: body.qos,
            payload_bytes: payload.len(),
            created_at: rfc3339(now),
            expires_at: rfc3339(now.saturating_add(ttl_ms)),
        }),
    ))
}

/// Commands still waiting for a device (undelivered, unexpired), oldest first.
#[utoipa::path(get, path = "/api/v1/devices/{id}/commands", tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses((status = 200, body = CommandList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn pending(
    State(state): State<AppState>,
    Authorized(_caller): Authorized<{ VIEWER }>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<CommandList>> {
    state.registry.device(&id).await?;
    let commands = state
        .registry
        .pending_commands(&id, now_ms(), 1000)
        .await?
        .into_iter()
        .map(|c| Command {
            id: c.id,
            payload_bytes: c.payload.len(),
            device_id: c.device_id,
            topic: c.topic,
            qos: c.qos,
            created_at: rfc3339(c.created_at_ms),
            expires_at: rfc3339(c.expires_at_ms),
        })
        .collect();
    Ok(axum::Json(CommandList { commands }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_names_are_topic_levels_without_wildcards() {
        for good in ["reboot", "config/set", "ota.start", "a-b_c"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/reboot",
            "reboot/",
            "a//b",
            "+",
            "a/#",
            "a b",
            "x>",
            "x*",
            &"a".repeat(129),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
