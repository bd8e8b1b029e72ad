//! The HTTP side: health and readiness probes, Prometheus metrics, the operator API
//! ([`crate::api`]) and the dashboard ([`crate::dashboard`]).

use crate::eventlog::EventSink;
use crate::mqtt::hub::Hub;
use crate::stats::Stats;
use crate::trust::TrustState;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use registry::Registry;
use std::fmt::Write;
use std::sync::Arc;
use tokio::sync::watch;

/// Shared state of HTTP handlers.
#[derive(Clone, Debug)]
pub struct AppState {
    pub registry: Registry,
    pub stats: Arc<Stats>,
    pub hub: Arc<Hub>,
    pub trust: Arc<TrustState>,
    pub events: EventSink,
    /// Flips to `true` at shutdown (ends long-lived responses such as event streams).
    pub shutdown: watch::Receiver<bool>,
    /// Dashboard login sessions.
    pub sessions: Arc<crate::dashboard::Sessions>,
    /// Open event streams (each polls the registry); more are refused with 503.
    pub stream_slots: Arc<tokio::sync::Semaphore>,
}

/// Event streams open at once, per node.
pub const MAX_EVENT_STREAMS: usize = 256;

impl AppState {
    /// After a CA or device change made here: the next handshake sees it, and sessions of
    /// devices that may no longer connect are ended.
    pub async fn trust_changed(&self) {
        match self.trust.reload(&self.registry).await {
            Ok(_) => crate::server::close_revoked(&self.trust, &self.hub),
            // The 1-second poller retries; the change is in the registry already.
            Err(e) => tracing::warn!(error = %e, "trust store reload failed; the poller will retry"),
        }
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::api::router())
        .merge(crate::dashboard::router())
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.registry.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "registry unavailable\n"),
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut out = String::new();
    for (name, help, value) in state.stats.describe() {
        let _ = writeln!(out, "# HELP fleetward_{name}_total {help}");
        let _ = writeln!(out, "# TYPE fleetward_{name}_total counter");
        let _ = writeln!(out, "fleetward_{name}_total {value}");
    }
    let _ = writeln!(out, "# HELP fleetward_devices_online MQTT device sessions open now");
    let _ = writeln!(out, "# TYPE fleetward_devices_online gauge");
    let _ = writeln!(out, "fleetward_devices_online {}", state.hub.online_devices());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// Serves until `shutdown` flips.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState, mut shutdown: watch::Receiver<bool>) {
    let app = router(state);
    let result = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = shutdown.changed().await;
    })
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "HTTP server stopped");
    }
}
