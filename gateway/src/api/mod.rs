//! The operator API (`/api/v1`): bearer tokens with roles, JSON in and out, errors as
//! `{"error": code, "message": …}`, an OpenAPI 3 document at `/api/openapi.json`.
//!
//! Every extractor failure (bad JSON, oversize body, bad query, bad path) is turned into that
//! error shape with a 4xx status: hostile input never reaches a handler half-parsed and never
//! produces a 5xx. Authentication failures (401) and role refusals (403) are counted and
//! recorded as events.

pub(crate) mod attestation;
pub(crate) mod cas;
pub mod commands;
pub mod devices;
pub mod events;
pub mod fleet;
pub mod lorawan;
pub mod model;
pub mod openapi;
pub mod sigfox;
mod tokens;

use crate::clock::now_ms;
use crate::http::AppState;
use crate::stats::inc;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use model::ErrorBody;
use registry::{NewEvent, RegistryError, Role};
use serde::de::DeserializeOwned;
use std::net::SocketAddr;

/// Largest request body the API reads (a CA chain or a CRL fits comfortably).
pub const MAX_BODY: usize = 1024 * 1024;

pub fn router() -> Router<AppState> {
    let v1 = Router::new()
        .route("/cas/registration-code", get(cas::registration_code))
        .route("/cas", get(cas::list).post(cas::register))
        .route("/cas/{id}", get(cas::get_one))
        .route("/cas/{id}/revoke", post(cas::revoke))
        .route("/cas/{id}/crl", post(cas::upload_crl))
        .route(
            "/cas/{id}/attestation-policy",
            get(attestation::get_policy).put(attestation::put_policy),
        )
        .route("/attestation/challenge", post(attestation::challenge))
        .route("/attestation/evidence", post(attestation::evidence))
        .route("/devices/{id}/attest", post(attestation::attest))
        .route("/devices/{id}/attestation", get(attestation::history))
        .route(
            "/firmware",
            get(attestation::list_firmware).post(attestation::add_firmware),
        )
        .route("/lorawan/devices", get(lorawan::list).post(lorawan::add))
        .route("/lorawan/devices/{dev_eui}", get(lorawan::get_one))
        .route("/lorawan/devices/{dev_eui}/uplinks", get(lorawan::uplinks))
        .route("/sigfox/devices", get(sigfox::list).post(sigfox::add))
        .route("/sigfox/devices/{device_id}", get(sigfox::get_one))
        .route("/sigfox/devices/{device_id}/uplinks", get(sigfox::uplinks))
        .route(
            "/sigfox/devices/{device_id}/downlinks",
            get(sigfox::downlinks).post(sigfox::queue_downlink),
        )
        .route("/sigfox/frames", post(sigfox::frame))
        .route("/devices", get(devices::list))
        .route("/devices/{id}", get(devices::get_one))
        .route("/devices/{id}/activate", post(devices::activate))
        .route("/devices/{id}/quarantine", post(devices::quarantine))
        .route("/devices/{id}/revoke", post(devices::revoke))
        .route("/devices/{id}/labels", put(devices::put_labels))
        .route("/devices/{id}/commands", get(commands::pending).post(commands::queue))
        .route("/events", get(events::list))
        .route("/events/stream", get(events::stream))
        .route("/fleet/summary", get(fleet::summary))
        .route("/audit", get(fleet::audit))
        .route("/tokens", get(tokens::list).post(tokens::create))
        .route("/tokens/{id}/revoke", post(tokens::revoke));
    Router::new()
        .nest("/api/v1", v1)
        .route("/api/openapi.json", get(openapi::document))
        .route("/lorawan/join", post(crate::lorawan::backend::join_req))
        .route("/sigfox/callback", post(crate::sigfox::callback))
        .route("/api", get(not_found))
        .route("/api/{*rest}", axum::routing::any(not_found))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not support that method",
    )
}

/// An API error: a status and a JSON body `{"error": code, "message": …}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                error: code.into(),
                message: message.into(),
                check: None,
            },
        }
    }

    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// A refusal naming the verifier check that failed.
    pub fn with_check(mut self, check: &str) -> Self {
        self.body.check = Some(check.into());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match &e {
            RegistryError::NotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            RegistryError::Conflict { .. } => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            RegistryError::Invalid { .. } => ApiError::bad_request("invalid", e.to_string()),
            RegistryError::Unavailable { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string())
            }
            _ => {
                tracing::warn!(error = %e, "API request failed in the registry");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the registry failed; see the server log",
                )
            }
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A JSON body; every failure is a 400 (or 413 when too large) in the API's error shape.
/// The body is parsed whatever its Content-Type says (devices' tooling is not always tidy).
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(body_error)?;
        parse_json(&bytes).map(Json)
    }
}

/// A JSON body that may be absent (an empty body gives `T::default()`).
#[derive(Debug)]
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(body_error)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        parse_json(&bytes).map(OptionalJson)
    }
}

/// Every API body is a JSON object: serde would otherwise also build a struct from an array
/// (`[null, null]`), which the OpenAPI schema does not allow.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request("bad_json", format!("request body: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("bad_json", "request body must be a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| ApiError::bad_request("bad_json", format!("request body: {e}")))
}

fn body_error(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body exceeds {MAX_BODY} bytes"),
        )
    } else {
        ApiError::bad_request("bad_body", e.body_text())
    }
}

/// Query parameters; a malformed query is a 400.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e: QueryRejection| ApiError::bad_request("bad_query", e.body_text()))
    }
}

/// A path parameter; a malformed one is a 400.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e: PathRejection| ApiError::bad_request("bad_path", e.body_text()))
    }
}

/// The authenticated caller of an API request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub token_id: String,
    pub role: Role,
    method: String,
    path: String,
}

impl Caller {
    /// `api:<token id>`, the actor recorded in events.
    pub fn actor(&self) -> String {
        format!("api:{}", self.token_id)
    }

    /// Refuses (403, with an event) unless the caller's role is at least `needed`.
    pub fn require(&self, state: &AppState, needed: Role) -> ApiResult<()> {
        if self.role >= needed {
            return Ok(());
        }
        inc(&state.stats.api_forbidden);
        state.events.emit(
            NewEvent::new("api.forbidden", &self.actor())
                .reason(format!(
                    "{} {} needs role {}, token has {}",
                    self.method,
                    self.path,
                    needed.as_str(),
                    self.role.as_str()
                ))
                .detail(serde_json::json!({
                    "method": self.method, "path": self.path,
                    "needed": needed, "role": self.role,
                })),
        );
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this needs the {} role; the token has {}",
                needed.as_str(),
                self.role.as_str()
            ),
        ))
    }
}

/// Role levels for [`Authorized`].
pub const VIEWER: u8 = 0;
pub const OPERATOR: u8 = 1;
pub const ADMIN: u8 = 2;

/// A caller whose role is at least `MIN` ([`VIEWER`], [`OPERATOR`], [`ADMIN`]). Checked while
/// the request's head is extracted, before any body is read: a caller without the role gets
/// 403 whatever the body holds.
#[derive(Clone, Debug)]
pub struct Authorized<const MIN: u8>(pub Caller);

impl<const MIN: u8> FromRequestParts<AppState> for Authorized<MIN> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let needed = match MIN {
            ADMIN => Role::Admin,
            OPERATOR => Role::Operator,
            _ => Role::Viewer,
        };
        caller.require(state, needed)?;
        Ok(Authorized(caller))
    }
}

/// The bearer token of a request, if it carries one: `Authorization: Bearer fw_…`, or the bare
/// token (`Authorization: fw_…`), which network servers configured with a literal header value
/// (ChirpStack's join-server `authorization_header`, say) often send.
pub fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    match value.split_once(' ') {
        Some((scheme, token)) => scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()),
        None => value.starts_with("fw_").then_some(value),
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let presented = bearer(parts).map(str::to_owned);
        authenticate(state, parts, presented.as_deref()).await
    }
}

/// Checks a presented token (from the Authorization header or the dashboard's cookie).
pub async fn authenticate(state: &AppState, parts: &Parts, presented: Option<&str>) -> ApiResult<Caller> {
    let method = parts.method.to_string();
    let path = parts.uri.path().to_owned();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string());
    let refuse = |why: &str| {
        inc(&state.stats.api_unauthorized);
        state.events.emit(
            NewEvent::new("api.unauthorized", "api")
                .reason(format!("{method} {path}: {why}"))
                .detail(serde_json::json!({ "method": method, "path": path, "peer": peer })),
        );
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", why.to_owned())
    };
    let Some(token) = presented else {
        return Err(refuse("missing bearer token (Authorization: Bearer <token>)"));
    };
    match state.registry.authenticate_token(token, now_ms()).await? {
        Some(info) => Ok(Caller {
            token_id: info.id,
            role: info.role,
            method,
            path,
        }),
        None => Err(refuse("invalid or revoked token")),
    }
}

/// `bytes` bytes in hex (an optional `0x` prefix, either case), or a 400 naming the field.
pub(crate) fn hex_bytes(name: &str, value: &str, bytes: usize) -> ApiResult<Vec<u8>> {
    match crate::lorawan::decode_hex(value) {
        Some(b) if b.len() == bytes => Ok(b),
        _ => Err(ApiError::bad_request(
            "invalid",
            format!("{name} must be {} hex digits", bytes * 2),
        )),
    }
}

/// Unix milliseconds as RFC 3339 (UTC, millisecond precision).
pub fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    t.format(&format).unwrap_or_default()
}

/// A point in time from a query: RFC 3339, unix seconds, or a duration ago (`90s`, `15m`,
/// `24h`, `7d`).
pub fn parse_time(s: &str, now_ms: i64) -> Option<i64> {
    let s = s.trim();
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok();
    }
    if let Ok(secs) = s.parse::<i64>() {
        return secs.checked_mul(1000);
    }
    parse_duration_ms(s).map(|d| now_ms.saturating_sub(d))
}

/// `90s`, `15m`, `24h`, `7d` in milliseconds.
pub fn parse_duration_ms(s: &str) -> Option<i64> {
    let unit = s.chars().last()?;
    let n: i64 = s[..s.len() - unit.len_utf8()].parse().ok().filter(|n| *n >= 0)?;
    let scale = match unit {
        's' => 1000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// Opaque pagination cursors (hex of the last key; clients must not build them).
pub fn encode_cursor(key: &str) -> String {
    hex::encode(key.as_bytes())
}

/// Query parameters of a keyset-paginated list.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    pub cursor: Option<String>,
    /// 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Cuts a page fetched with `limit + 1` rows to `limit`; the next page's cursor (the last
/// item's `key`) when there was more.
pub fn page<T>(mut items: Vec<T>, limit: u32, key: impl Fn(&T) -> &str) -> (Vec<T>, Option<String>) {
    if items.len() > limit as usize {
        items.truncate(limit as usize);
        let next = items.last().map(|i| encode_cursor(key(i)));
        (items, next)
    } else {
        (items, None)
    }
}

pub fn decode_cursor(cursor: &str) -> ApiResult<String> {
    hex::decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| ApiError::bad_request("bad_cursor", "cursor is not one this API issued"))
}

/// `limit` from a query, 1..=max (default `default`).
pub fn page_limit(limit: Option<u32>, default: u32, max: u32) -> ApiResult<u32> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request("bad_query", format!("limit must be 1..={max}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
        assert_eq!(parse_time("2026-11-18T11:06:40.123Z", 0), Some(1_795_000_000_123));
        assert_eq!(parse_time("1795000000", 0), Some(1_795_000_000_000));
        assert_eq!(parse_time("24h", 100_000_000), Some(100_000_000 - 86_400_000));
        assert_eq!(parse_time("7d", 0), Some(-7 * 86_400_000));
        for bad in ["", "h", "-5m", "5y", "tomorrow", "2026-13-01"] {
            assert_eq!(parse_time(bad, 0), None, "{bad}");
        }
        assert_eq!(parse_duration_ms("9999999999999999999d"), None);
    }

    proptest::proptest! {
        /// Hostile query strings: never a panic, and cursors round-trip.
        #[test]
        fn query_parsers_never_panic(s in ".{0,64}", n in proptest::prelude::any::<i64>()) {
            let _ = parse_time(&s, n);
            let _ = parse_duration_ms(&s);
            let _ = decode_cursor(&s);
            proptest::prop_assert_eq!(decode_cursor(&encode_cursor(&s)).ok(), Some(s.clone()));
            let _ = rfc3339(n);
        }
    }

    #[test]
    fn cursors() {
        assert_eq!(decode_cursor(&encode_cursor("dev-1")).unwrap(), "dev-1");
        assert!(decode_cursor("zz").is_err());
        assert!(decode_cursor("ff").is_err());
    }
}
