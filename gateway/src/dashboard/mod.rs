//! The fleet integrity dashboard (server-rendered HTML).

use crate::http::AppState;
use axum::Router;

pub fn router() -> Router<AppState> {
    Router::new()
}
