//! Provisioning CAs: registration with proof of possession, listing, revocation (cascading to
//! every device under the CA) and CRLs.

use super::model::{Ca, CaList, CaRevoked, CrlAccepted, CrlUpload, ErrorBody, Reason, RegisterCa, RegistrationCode};
use super::{ADMIN, ApiError, ApiResult, Authorized, Json, OptionalJson, Path, VIEWER, rfc3339};
use crate::clock::now_ms;
use crate::http::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use registry::{NewCa, NewEvent};
use verifier::Timestamp;
use verifier::x509::{self, RegistrationCode as Code};

/// A fresh registration code: 160 random bits.
fn fresh_code() -> ApiResult<String> {
    let mut random = [0u8; x509::REGISTRATION_CODE_BYTES];
    aws_lc_rs::rand::fill(&mut random).map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "no system randomness for a registration code",
        )
    })?;
    Ok(Code::from_random(random).as_str().to_owned())
}

async fn current_code(state: &AppState) -> ApiResult<String> {
    let fresh = fresh_code()?;
    Ok(state.registry.registration_code(move || fresh).await?)
}

/// Every registered CA with its device count (the API's list and the dashboard's CA page).
pub(crate) async fn all_with_counts(state: &AppState) -> ApiResult<Vec<Ca>> {
    with_count(state, state.registry.cas().await?).await
}

async fn with_count(state: &AppState, records: Vec<registry::CaRecord>) -> ApiResult<Vec<Ca>> {
    let summary = state.registry.fleet_summary().await?;
    Ok(records
        .iter()
        .map(|c| Ca::from_record(c, summary.by_ca.get(&c.id).copied().unwrap_or(0)))
        .collect())
}

async fn one(state: &AppState, id: &str) -> ApiResult<Ca> {
    let record = state.registry.ca(id).await?;
    Ok(with_count(state, vec![record]).await?.remove(0))
}

/// The registration code a CA's verification certificate must carry as its subject CN.
#[utoipa::path(get, path = "/api/v1/cas/registration-code", tag = "cas",
    responses((status = 200, body = RegistrationCode), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn registration_code(
    State(state): State<AppState>,
    Authorized(_): Authorized<{ ADMIN }>,
) -> ApiResult<axum::Json<RegistrationCode>> {
    Ok(axum::Json(RegistrationCode {
        registration_code: current_code(&state).await?,
    }))
}

/// Registers a provisioning CA. The verification certificate proves possession of the CA key.
#[utoipa::path(post, path = "/api/v1/cas", tag = "cas", request_body = RegisterCa,
    responses((status = 201, body = Ca), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn register(
    State(state): State<AppState>,
    Authorized(caller): Authorized<{ ADMIN }>,
    Json(body): Json<RegisterCa>,
) -> ApiResult<(StatusCode, axum::Json<Ca>)> {
    let first_cert = |pem: &str, what: &str| {
        x509::certificates_from_pem_or_der(pem.as_bytes())
            .ok()
            .and_then(|c| c.into_iter().next())
            .ok_or_else(|| ApiError::bad_request("bad_certificate", format!("{what} is not a PEM certificate")))
    };
    let ca_der = first_cert(&body.certificate_pem, "certificate_pem")?;
    let proof_der = first_cert(&body.verification_certificate_pem, "verification_certificate_pem")?;
    let code = current_code(&state).await?;
    let now = now_ms();
    let checked = x509::check_ca_registration(
        &ca_der,
        &proof_der,
        &Code::from_issued(&code),
        Timestamp::from_unix(now / 1000),
    );
    if let Err(e) = checked {
        state.events.emit(
            NewEvent::new("ca.rejected", &caller.actor())
                .reason(e.to_string())
                .detail(serde_json::to_value(&e).unwrap_or_default()),
        );
        return Err(ApiError::bad_request("ca_rejected", e.to_string()).with_check(e.check()));
    }
    let identity = body.identity.unwrap_or_default();
    let pattern = body.identity_pattern.as_deref().filter(|p| !p.is_empty());
    let record = state
        .registry
        .insert_ca(
            &NewCa {
                cert_der: &ca_der,
                identity_source: identity.source(),
                identity_pattern: pattern,
                digest_mode: body.digest_mode.unwrap_or_default().mode(),
                auto_activate: body.auto_activate.unwrap_or(true),
                registered_by: &caller.actor(),
            },
            now,
        )
        .await?;
    state.trust_changed().await;
    Ok((StatusCode::CREATED, axum::Json(one(&state, &record.id).await?)))
}

/// Every registered provisioning CA.
#[utoipa::path(get, path = "/api/v1/cas", tag = "cas",
    responses((status = 200, body = CaList), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn list(
    State(state): State<AppState>,
    Authorized(_): Authorized<{ VIEWER }>,
) -> ApiResult<axum::Json<CaList>> {
    let items = all_with_counts(&state).await?;
    Ok(axum::Json(CaList {
        items,
        next_cursor: None,
    }))
}

/// One provisioning CA.
#[utoipa::path(get, path = "/api/v1/cas/{id}", tag = "cas", params(("id" = String, Path, description = "CA id (SHA-256 of its certificate)")),
    responses((status = 200, body = Ca), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn get_one(
    State(state): State<AppState>,
    Authorized(_): Authorized<{ VIEWER }>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Ca>> {
    Ok(axum::Json(one(&state, &id).await?))
}

/// Revokes a CA and, in the same transaction, every device under it.
#[utoipa::path(post, path = "/api/v1/cas/{id}/revoke", tag = "cas", request_body(content = Option<Reason>),
    params(("id" = String, Path, description = "CA id")),
    responses((status = 200, body = CaRevoked), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn revoke(
    State(state): State<AppState>,
    Authorized(caller): Authorized<{ ADMIN }>,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<Reason>,
) -> ApiResult<axum::Json<CaRevoked>> {
    let reason = body.reason.unwrap_or_else(|| "revoked by an operator".into());
    let devices_revoked = state
        .registry
        .revoke_ca(&id, &caller.actor(), &reason, now_ms())
        .await?;
    state.trust_changed().await;
    Ok(axum::Json(CaRevoked {
        ca: one(&state, &id).await?,
        devices_revoked,
    }))
}

/// Adds a CRL issued by the CA (its signature is checked); listed devices are refused at the
/// next handshake.
#[utoipa::path(post, path = "/api/v1/cas/{id}/crl", tag = "cas", request_body = CrlUpload,
    params(("id" = String, Path, description = "CA id")),
    responses((status = 201, body = CrlAccepted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn upload_crl(
    State(state): State<AppState>,
    Authorized(caller): Authorized<{ ADMIN }>,
    Path(id): Path<String>,
    Json(body): Json<CrlUpload>,
) -> ApiResult<(StatusCode, axum::Json<CrlAccepted>)> {
    state.registry.ca(&id).await?;
    let der = x509::crls_from_pem_or_der(body.crl_pem.as_bytes())
        .ok()
        .and_then(|c| c.into_iter().next())
        .ok_or_else(|| ApiError::bad_request("bad_crl", "crl_pem is not a PEM X509 CRL"))?;
    let crl = x509::Crl::from_der(&der).map_err(|e| ApiError::bad_request("bad_crl", e.to_string()))?;
    let info = crl.info().clone();
    state.registry.add_crl(&id, &der, &caller.actor(), now_ms()).await?;
    state.trust_changed().await;
    Ok((
        StatusCode::CREATED,
        axum::Json(CrlAccepted {
            ca_id: id,
            this_update: rfc3339(info.this_update.unix().saturating_mul(1000)),
            next_update: rfc3339(info.next_update.unix().saturating_mul(1000)),
            revoked: info.revoked,
        }),
    ))
}
