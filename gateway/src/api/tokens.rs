//! API tokens (admin only): create (the secret is shown once), list, revoke.

use super::model::{CreateToken, CreatedToken, ErrorBody, Token, TokenList};
use super::{ADMIN, ApiResult, Authorized, Json, Path};
use crate::clock::now_ms;
use crate::http::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use registry::NewEvent;

/// Creates a token; the response carries its secret, which is never shown again.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = CreateToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn create(
    State(state): State<AppState>,
    Authorized(caller): Authorized<{ ADMIN }>,
    Json(body): Json<CreateToken>,
) -> ApiResult<(StatusCode, axum::Json<CreatedToken>)> {
    let role = body.role.role();
    let t = state
        .registry
        .create_token(role, body.description.as_deref(), &caller.actor(), now_ms())
        .await?;
    state.events.emit(
        NewEvent::new("token.created", &caller.actor())
            .detail(serde_json::json!({ "token_id": t.info.id, "role": role })),
    );
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedToken {
            info: Token::from(&t.info),
            token: t.secret.to_string(),
        }),
    ))
}

/// Every token's metadata (never a secret).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    responses((status = 200, body = TokenList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn list(
    State(state): State<AppState>,
    Authorized(_): Authorized<{ ADMIN }>,
) -> ApiResult<axum::Json<TokenList>> {
    let items = state.registry.tokens().await?.iter().map(Token::from).collect();
    Ok(axum::Json(TokenList {
        items,
        next_cursor: None,
    }))
}

/// Revokes a token: it stops working at once.
#[utoipa::path(post, path = "/api/v1/tokens/{id}/revoke", tag = "tokens",
    params(("id" = String, Path, description = "Token id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn revoke(
    State(state): State<AppState>,
    Authorized(caller): Authorized<{ ADMIN }>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.registry.revoke_token(&id, now_ms()).await?;
    state
        .events
        .emit(NewEvent::new("token.revoked", &caller.actor()).detail(serde_json::json!({ "token_id": id })));
    Ok(StatusCode::NO_CONTENT)
}
