//! Attestation over HTTP (devices that report through another channel, and operators), firmware
//! reference values and the CAs' attestation policies. The same `Attestor` serves the MQTT
//! topics, so both paths give one verdict for one answer.

use super::model::{
    AttestSent, AttestationHistory, AttestationItem, AttestationPolicyBody, AttestationPolicyView, ChallengeIssued,
    ChallengeRequest, ErrorBody, EvidenceRequest, EvidenceVerdict, Firmware, FirmwareList, FirmwareStatus, NewFirmware,
};
use super::{ADMIN, ApiError, ApiResult, Authorized, Json, OPERATOR, Path, VIEWER, rfc3339};
use crate::attestation::{AttestError, Issued, NotSent, Submission, Verdict, challenge_connected};
use crate::clock::now_ms;
use crate::http::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use registry::{AttestationPolicy, OnFailure};
use verifier::attestation::LifecycleState;

impl From<AttestError> for ApiError {
    fn from(e: AttestError) -> Self {
        match e {
            AttestError::UnknownDevice(id) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no device `{id}`"))
            }
            AttestError::Revoked(id) => ApiError::new(
                StatusCode::CONFLICT,
                "device_revoked",
                format!("device `{id}` is revoked; it cannot attest"),
            ),
            AttestError::BadRequest { code, message } => ApiError::bad_request(code, message),
            AttestError::Registry(e) => e.into(),
        }
    }
}

fn issued(i: Issued) -> ChallengeIssued {
    ChallengeIssued {
        device_id: i.device_id,
        nonce: i.nonce,
        expires_at: rfc3339(i.expires_at_ms),
    }
}

fn verdict(v: Verdict) -> EvidenceVerdict {
    EvidenceVerdict {
        device_id: v.device_id,
        format: v.format,
        result: v.result.into(),
        reason: v.reason,
        claim: v.claim,
        message: v.message,
        integrity: v.integrity.as_str().into(),
        status: v.status.as_str().into(),
        firmware_name: v.firmware_name,
        firmware_version: v.firmware_version,
        firmware_digest: v.firmware_digest,
    }
}

/// Issues a challenge for a device that answers through another channel.
#[utoipa::path(post, path = "/api/v1/attestation/challenge", tag = "attestation", request_body = ChallengeRequest,
    responses((status = 200, body = ChallengeIssued), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn challenge(
    State(state): State<AppState>,
    Authorized(_): Authorized<{ OPERATOR }>,
    Json(body): Json<ChallengeRequest>,
) -> ApiResult<axum::Json<ChallengeIssued>> {
    Ok(axum::Json(issued(state.attestor.challenge(&body.device_id).await?)))
}

/// Submits an answer: verified with the device's registered key, appraised against the
/// firmware reference values and the CA's policy. A refused answer is a `200` with
/// `"result": "failed"` and the failed check as `reason`; a request that cannot be read is a 400.
#[utoipa::path(post, path = "/api/v1/attestation/evidence", tag = "attestation", request_body = EvidenceRequest,
    responses((status = 200, body = EvidenceVerdict), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn evidence(
    State(state): State<AppState>,
    Authorized(_): Authorized<{ OPERATOR }>,
    Json(body): Json<EvidenceRequest>,
) -> ApiResult<axum::Json<EvidenceVerdict>> {
    let submission = Submission {
        device_id: body.device_id,
        nonce: body.nonce,
        format: body.format,
        signature_hex: body.signature_hex,
        token_b64: body.token_b64,
    };
    Ok(axum::Json(verdict(state.attestor.evidence(&submission).await?)))
}

/// Challenges a connected device now, over MQTT (`devices/{id}/attestation/challenge`).
/// `409 device_offline` if it is not connected to this node, `409 not_subscribed` if it does not
/// listen on its challenge topic.
#[utoipa::path(post, path = "/api/v1/devices/{id}/attest", tag = "attestation",
    params(("id" = String, Path, description = "device id")),
    responses((status = 202, body = AttestSent), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn attest(
    State(state): State<AppState>,
    Authorized(_): Authorized<{ OPERATOR }>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, axum::Json<AttestSent>)> {
    let device = state.registry.device(&id).await?;
    if device.status == registry::DeviceStatus::Revoked {
        return Err(AttestError::Revoked(id).into());
    }
    match challenge_connected(&state.hub, &id).await {
        Ok(i) => {
            let topic = format!("devices/{id}/attestation/challenge");
            Ok((
                StatusCode::ACCEPTED,
                axum::Json(AttestSent {
                    challenge: issued(i),
                    topic,
                }),
            ))
        }
        Err(NotSent::Offline) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "device_offline",
            format!(
                "device `{id}` is not connected to this node; challenge it through POST /api/v1/attestation/challenge"
            ),
        )),
        Err(NotSent::NotSubscribed) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_subscribed",
            format!("device `{id}` is connected but not subscribed to devices/{id}/attestation/challenge"),
        )),
        Err(NotSent::Unavailable) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the device's session could not issue the challenge; retry",
        )),
    }
}

/// A device's integrity and its latest appraisals.
#[utoipa::path(get, path = "/api/v1/devices/{id}/attestation", tag = "attestation",
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = AttestationHistory), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn history(
    State(state): State<AppState>,
    Authorized(_): Authorized<{ VIEWER }>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<AttestationHistory>> {
    let device = state.registry.device(&id).await?;
    let items = state.registry.attestation_history(&id, 50).await?;
    Ok(axum::Json(AttestationHistory {
        device_id: device.id,
        integrity: device.integrity.as_str().into(),
        integrity_at: device.integrity_at_ms.map(rfc3339),
        integrity_reason: device.integrity_reason,
        items: items
            .into_iter()
            .map(|r| AttestationItem {
                at: rfc3339(r.at_ms),
                format: r.format,
                result: r.result,
                reason: r.reason,
                firmware_name: r.firmware_name,
                firmware_version: r.firmware_version,
                firmware_digest: r.firmware_digest,
                claims: r.detail,
            })
            .collect(),
    }))
}

fn is_hex_of(s: &str, lens: &[usize]) -> bool {
    s.bytes().all(|b| b.is_ascii_hexdigit()) && s.len().is_multiple_of(2) && lens.contains(&(s.len() / 2))
}

fn printable(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && !s.chars().any(char::is_control)
}

/// Firmware reference values, each with how many devices last measured it.
pub(crate) async fn firmware_items(state: &AppState) -> ApiResult<Vec<Firmware>> {
    let counts = state.registry.firmware_digest_counts().await?;
    Ok(state
        .registry
        .firmware_references()
        .await?
        .into_iter()
        .map(|f| Firmware {
            devices: counts.get(&f.digest_hex).copied().unwrap_or(0),
            id: f.id,
            name: f.name,
            version: f.version,
            digest_hex: f.digest_hex,
            signer_id_hex: f.signer_id_hex,
            status: if f.status == "blocked" {
                FirmwareStatus::Blocked
            } else {
                FirmwareStatus::Allowed
            },
            created_at: rfc3339(f.created_at_ms),
            created_by: f.created_by,
        })
        .collect())
}

/// Adds a firmware reference value: an allowed image, or a blocked one.
#[utoipa::path(post, path = "/api/v1/firmware", tag = "firmware", request_body = NewFirmware,
    responses((status = 201, body = Firmware), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn add_firmware(
    State(state): State<AppState>,
    Authorized(caller): Authorized<{ ADMIN }>,
    Json(body): Json<NewFirmware>,
) -> ApiResult<(StatusCode, axum::Json<Firmware>)> {
    if !printable(&body.name) || !printable(&body.version) {
        return Err(ApiError::bad_request(
            "invalid",
            "name and version must be 1 to 64 characters of printable text",
        ));
    }
    let digest = body.digest_hex.trim().trim_start_matches("0x");
    if !is_hex_of(digest, &[32, 48, 64]) {
        return Err(ApiError::bad_request(
            "invalid",
            "digest_hex must be a SHA-256, SHA-384 or SHA-512 digest in hex (64, 96 or 128 digits)",
        ));
    }
    let signer = body.signer_id_hex.as_deref().map(|s| s.trim().trim_start_matches("0x"));
    if signer.is_some_and(|s| !is_hex_of(s, &(1..=64).collect::<Vec<_>>())) {
        return Err(ApiError::bad_request(
            "invalid",
            "signer_id_hex must be 1 to 64 bytes of hex",
        ));
    }
    let f = state
        .registry
        .add_firmware_reference(
            &body.name,
            &body.version,
            digest,
            signer,
            body.status == FirmwareStatus::Allowed,
            &caller.actor(),
            now_ms(),
        )
        .await?;
    let item = firmware_items(&state)
        .await?
        .into_iter()
        .find(|i| i.id == f.id)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "reference value vanished",
            )
        })?;
    Ok((StatusCode::CREATED, axum::Json(item)))
}

/// The firmware reference values.
#[utoipa::path(get, path = "/api/v1/firmware", tag = "firmware",
    responses((status = 200, body = FirmwareList), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn list_firmware(
    State(state): State<AppState>,
    Authorized(_): Authorized<{ VIEWER }>,
) -> ApiResult<axum::Json<FirmwareList>> {
    Ok(axum::Json(FirmwareList {
        items: firmware_items(&state).await?,
        next_cursor: None,
    }))
}

fn policy_view(ca_id: String, p: AttestationPolicy) -> AttestationPolicyView {
    AttestationPolicyView {
        ca_id,
        on_failure: match p.on_failure {
            OnFailure::Quarantine => "quarantine".into(),
            OnFailure::Flag => "flag".into(),
        },
        allowed_lifecycles: p.allowed_lifecycles,
        freshness_secs: p.freshness_secs,
    }
}

/// A CA's attestation policy.
#[utoipa::path(get, path = "/api/v1/cas/{id}/attestation-policy", tag = "attestation",
    params(("id" = String, Path, description = "CA id")),
    responses((status = 200, body = AttestationPolicyView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn get_policy(
    State(state): State<AppState>,
    Authorized(_): Authorized<{ VIEWER }>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<AttestationPolicyView>> {
    let policy = state.registry.attestation_policy(&id).await?;
    Ok(axum::Json(policy_view(id, policy)))
}

/// Changes a CA's attestation policy (fields left out keep their current value).
#[utoipa::path(put, path = "/api/v1/cas/{id}/attestation-policy", tag = "attestation",
    params(("id" = String, Path, description = "CA id")), request_body = AttestationPolicyBody,
    responses((status = 200, body = AttestationPolicyView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn put_policy(
    State(state): State<AppState>,
    Authorized(caller): Authorized<{ ADMIN }>,
    Path(id): Path<String>,
    Json(body): Json<AttestationPolicyBody>,
) -> ApiResult<axum::Json<AttestationPolicyView>> {
    let mut policy = state.registry.attestation_policy(&id).await?;
    if let Some(f) = body.on_failure {
        policy.on_failure = match f.as_str() {
            "quarantine" => OnFailure::Quarantine,
            "flag" => OnFailure::Flag,
            other => {
                return Err(ApiError::bad_request(
                    "invalid",
                    format!("on_failure `{}` is not quarantine or flag", other.escape_debug()),
                ));
            }
        };
    }
    if let Some(states) = body.allowed_lifecycles {
        if let Some(bad) = states.iter().find(|s| LifecycleState::parse(s).is_none()) {
            return Err(ApiError::bad_request(
                "invalid",
                format!("`{}` is not a PSA lifecycle state", bad.escape_debug()),
            ));
        }
        policy.allowed_lifecycles = states;
    }
    if let Some(secs) = body.freshness_secs {
        if !(60..=365 * 86_400).contains(&secs) {
            return Err(ApiError::bad_request(
                "invalid",
                "freshness_secs must be between 60 and 31536000",
            ));
        }
        policy.freshness_secs = secs;
    }
    state
        .registry
        .set_attestation_policy(&id, &policy, &caller.actor(), now_ms())
        .await?;
    Ok(axum::Json(policy_view(id, policy)))
}
