//! The fleet integrity dashboard, served at `/`: server-rendered HTML (maud) with charts drawn
//! as SVG on the server. The only script is the live event feed's `EventSource`.
//!
//! Login exchanges an API token (POSTed in a form, never in a URL) for a session cookie
//! (`HttpOnly`, `SameSite=Strict`); the token stays on the server and is re-checked on every
//! request, so revoking it ends the session. Pages read through the same functions as the API.

mod charts;
mod pages;

use crate::api::{self, ApiError, Caller};
use crate::http::AppState;
use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::overview))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/devices", get(pages::devices))
        .route("/devices/{id}", get(pages::device))
        .route("/devices/{id}/action", post(pages::device_action))
        .route("/cas", get(pages::cas))
        .route("/firmware", get(pages::firmware))
        .route("/audit", get(pages::audit))
        .route("/events", get(pages::events))
        .route("/ui/events/stream", get(pages::live_events))
        .route("/static/app.css", get(pages::css))
        .route("/static/live.js", get(pages::live_js))
}

/// The session cookie's name.
const COOKIE: &str = "fw_session";
/// How long a dashboard session lasts.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most (oldest dropped first).
const MAX_SESSIONS: usize = 10_000;

struct Session {
    token: Zeroizing<String>,
    /// Sent with every form; a POST must carry it back.
    csrf: String,
    expires: Instant,
}

/// Dashboard sessions of this node (kept in memory; a restart logs everyone out).
#[derive(Default)]
pub struct Sessions {
    by_hash: Mutex<HashMap<String, Session>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

/// Sessions are looked up by the SHA-256 of their id, so the lookup's timing says nothing
/// about the id.
fn key(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

fn random_hex(bytes: usize) -> Option<String> {
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).ok()?;
    Some(hex::encode(buf))
}

impl Sessions {
    /// A new session holding `token`; its id (for the cookie).
    fn create(&self, token: &str) -> Option<String> {
        let id = random_hex(32)?;
        let csrf = random_hex(16)?;
        let mut map = crate::locks::lock(&self.by_hash);
        let now = crate::clock::monotonic();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            key(&id),
            Session {
                token: Zeroizing::new(token.to_owned()),
                csrf,
                expires: now + SESSION_TTL,
            },
        );
        Some(id)
    }

    fn get(&self, id: &str) -> Option<(Zeroizing<String>, String)> {
        let map = crate::locks::lock(&self.by_hash);
        let s = map.get(&key(id)).filter(|s| s.expires > crate::clock::monotonic())?;
        Some((s.token.clone(), s.csrf.clone()))
    }

    fn remove(&self, id: &str) {
        crate::locks::lock(&self.by_hash).remove(&key(id));
    }
}

/// The session id in a request's cookies.
fn session_id(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(&format!("{COOKIE}=")).map(str::to_owned))
}

/// A logged-in dashboard user.
#[derive(Debug)]
pub struct User {
    pub caller: Caller,
    pub csrf: String,
}

/// Not logged in (or the session's token was revoked): to the login page.
#[derive(Debug)]
pub struct LoginRedirect(String);

impl IntoResponse for LoginRedirect {
    fn into_response(self) -> Response {
        let next = if self.0.starts_with('/') && !self.0.starts_with("//") {
            self.0
        } else {
            "/".into()
        };
        let target = format!("/login?next={}", urlencode(&next));
        let mut r = Redirect::to(&target).into_response();
        r.headers_mut().insert(header::SET_COOKIE, clear_cookie());
        r
    }
}

pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("fw_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

impl FromRequestParts<AppState> for User {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let here = parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        let Some(id) = session_id(&parts.headers) else {
            return Err(LoginRedirect(here).into_response());
        };
        let Some((token, csrf)) = state.sessions.get(&id) else {
            return Err(LoginRedirect(here).into_response());
        };
        match api::authenticate(state, parts, Some(token.as_str())).await {
            Ok(caller) => Ok(User { caller, csrf }),
            Err(e) if e.status == StatusCode::UNAUTHORIZED => {
                state.sessions.remove(&id);
                Err(LoginRedirect(here).into_response())
            }
            Err(e) => Err(e.into_response()),
        }
    }
}

/// Security headers on every dashboard page.
fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// An API error shown as a page.
fn error_page(e: ApiError) -> Response {
    let status = e.status;
    let body = pages::message_page(status.as_str(), &e.body.message);
    secure((status, body).into_response())
}
