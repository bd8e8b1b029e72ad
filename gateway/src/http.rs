//! The HTTP side: health and readiness probes, Prometheus metrics, the operator API
//! ([`crate::api`]) and the dashboard ([`crate::dashboard`]).

use crate::eventlog::EventSink;
use crate::mqtt::hub::Hub;
use crate::stats::{CONNECT_DURATION_HELP, HANDSHAKE_DURATION_HELP, Stats};
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
    /// Challenges and evidence (shared with the MQTT sessions).
    pub attestor: Arc<crate::attestation::Attestor>,
    /// The LoRaWAN join server's settings and KEK.
    pub join_server: Arc<crate::lorawan::backend::JoinServerConfig>,
    /// The LoRaWAN uplink path's sessions (joins install them; provisioning invalidates them).
    pub lorawan_sessions: Arc<crate::lorawan::uplink::Sessions>,
    /// How Sigfox backend callbacks are authenticated and judged.
    pub sigfox: Arc<crate::sigfox::CallbackSettings>,
    /// How long a command waits for its device unless the request says otherwise.
    pub command_ttl_secs: u64,
}

/// Event streams open at once, per node.
pub const MAX_EVENT_STREAMS: usize = 256;

impl AppState {
    /// After a CA or device change made here: the next handshake sees it, and sessions of
    /// devices that may no longer connect are ended.
    pub async fn trust_changed(&self) {
        if let Err(e) = crate::server::apply_trust_change(&self.trust, &self.registry, &self.hub).await {
            // The 1-second poller retries; the change is in the registry already.
            tracing::warn!(error = %e, "trust store reload failed; the poller will retry");
        }
        if let Some(bus) = self.hub.bus() {
            bus.registry_changed(Vec::new(), true);
        }
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(crate::api::router())
        .merge(crate::dashboard::router())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), registry_outage))
        .route_layer(axum::middleware::from_fn(trace_request))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// One span per request, exported as a trace when OTLP is configured: method, route, status
/// (and the device, where a handler names one).
async fn trace_request(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("", |p| p.as_str())
        .to_owned();
    let span = tracing::info_span!(
        target: crate::observability::SPANS,
        "http.request",
        http.request.method = %request.method(),
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        device = tracing::field::Empty,
    );
    let response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// While the registry's database is unreachable (its probe says so), every route that needs it
/// answers 503 at once instead of waiting for the pool's timeout.
async fn registry_outage(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if state.registry.unreachable() {
        let mut response = crate::api::ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the fleet registry's database is unreachable; retry later",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, axum::http::HeaderValue::from_static("5"));
        return response;
    }
    next.run(request).await
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.registry.unreachable() {
        return (StatusCode::SERVICE_UNAVAILABLE, "registry unavailable\n");
    }
    match tokio::time::timeout(std::time::Duration::from_secs(2), state.registry.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "registry unavailable\n"),
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut out = String::new();
    for (name, help, value) in state.stats.describe() {
        let _ = writeln!(out, "# HELP fleetward_{name}_total {help}");
        let _ = writeln!(out, "# TYPE fleetward_{name}_total counter");
        let _ = writeln!(out, "fleetward_{name}_total {value}");
    }
    let connect = "fleetward_connect_duration_seconds";
    let _ = writeln!(out, "# HELP {connect} {CONNECT_DURATION_HELP}");
    let _ = writeln!(out, "# TYPE {connect} histogram");
    state.stats.connect_new.render(&mut out, connect, "device=\"new\"");
    state.stats.connect_known.render(&mut out, connect, "device=\"known\"");
    let handshake = "fleetward_tls_handshake_duration_seconds";
    let _ = writeln!(out, "# HELP {handshake} {HANDSHAKE_DURATION_HELP}");
    let _ = writeln!(out, "# TYPE {handshake} histogram");
    state.stats.handshake.render(&mut out, handshake, "");
    gauge(
        &mut out,
        "fleetward_devices_online",
        "MQTT device sessions open now",
        state.hub.online_devices(),
    );
    let _ = writeln!(
        out,
        "# HELP fleetward_rejections_total refusals (handshakes, CONNACKs, uplinks, callbacks) by the check that failed"
    );
    let _ = writeln!(out, "# TYPE fleetward_rejections_total counter");
    for (reason, n) in state.stats.rejections() {
        let _ = writeln!(
            out,
            "fleetward_rejections_total{{reason=\"{}\"}} {n}",
            reason.escape_default()
        );
    }
    if let Some(d) = state.registry.probe_latency() {
        gauge(
            &mut out,
            "fleetward_db_probe_seconds",
            "round trip of the database probe (SELECT 1 on its own connection)",
            format_args!("{:.6}", d.as_secs_f64()),
        );
    }
    gauge(
        &mut out,
        "fleetward_db_reachable",
        "1 while the database probe gets answers",
        u8::from(!state.registry.unreachable()),
    );
    let (open, idle, max) = state.registry.pool_stats();
    gauge(
        &mut out,
        "fleetward_db_pool_connections",
        "database connections this node has open (its probe's not counted)",
        open,
    );
    gauge(
        &mut out,
        "fleetward_db_pool_idle",
        "open database connections not in use",
        idle,
    );
    gauge(
        &mut out,
        "fleetward_db_pool_max_connections",
        "the most database connections this node opens (database_max_connections)",
        max,
    );
    if let Some(bus) = state.hub.bus() {
        gauge(
            &mut out,
            "fleetward_bus_connected",
            "1 while the connection to NATS is up",
            u8::from(bus.connected()),
        );
        gauge(
            &mut out,
            "fleetward_bus_telemetry_backlog",
            "stored messages waiting for JetStream",
            bus.telemetry_backlog(),
        );
        gauge(
            &mut out,
            "fleetward_bus_telemetry_unpublished",
            "messages this node stored that JetStream has not acknowledged yet (the relay's buffer and what it deferred to the store)",
            bus.telemetry_unpublished(),
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// One gauge in the Prometheus text format: its HELP, its TYPE and its value.
fn gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    let _ = writeln!(out, "{name} {value}");
}

/// Longest wait for a request's headers (slowloris), and for open connections at shutdown.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// HTTP connections open at once; more are closed on accept.
pub const MAX_HTTP_CONNECTIONS: usize = 4096;

/// Serves until `shutdown` flips. Our own accept loop rather than `axum::serve`, which sets no
/// header-read timeout: a client that trickles its headers is dropped after 10 s, and the number
/// of open connections is bounded.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut shutdown: watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    let app = router(state);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HTTP_CONNECTIONS));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let builder = Arc::new(builder.http1_only());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = tower::ServiceExt::map_request(
            app.clone(),
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                req.map(axum::body::Body::new)
            },
        );
        let (builder, watcher, acceptor) = (builder.clone(), graceful.watcher(), acceptor.clone());
        tokio::spawn(async move {
            match acceptor {
                // The handshake runs here, not in the accept loop, bounded like a request's head.
                Some(acceptor) => match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => serve_connection(&builder, watcher, tls, service).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "HTTPS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "HTTPS handshake timed out"),
                },
                None => serve_connection(&builder, watcher, stream, service).await,
            }
            drop(permit);
        });
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(HEADER_READ_TIMEOUT) => tracing::warn!("HTTP connections still open at shutdown; closing them"),
    }
}

/// Serves one connection (plain or TLS) until it closes or the server shuts down.
async fn serve_connection<IO, S>(
    builder: &hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    io: IO,
    service: S,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let connection = builder
        .serve_connection_with_upgrades(
            hyper_util::rt::TokioIo::new(io),
            hyper_util::service::TowerToHyperService::new(service),
        )
        .into_owned();
    let _ = watcher.watch(connection).await;
}
