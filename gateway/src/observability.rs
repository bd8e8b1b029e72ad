//! Logs, traces and metrics for operators.
//!
//! - **Logs** go to stderr as text or JSON lines (`observability.log_format`), filtered by
//!   `RUST_LOG`.
//! - **Traces**: with an OTLP endpoint (`observability.otlp_endpoint`, or the standard
//!   `OTEL_EXPORTER_OTLP_ENDPOINT`), the spans of target [`SPANS`] are exported over OTLP/HTTP:
//!   one per MQTT connection (`mqtt.connection`, with the device id once known), TLS handshake,
//!   registration, LoRaWAN uplink, Sigfox callback and API request. They use their own target
//!   so that the log filter does not create them: without an endpoint they cost nothing.
//! - **Metrics**: every counter of [`crate::stats::Stats`], the online devices, refusals by
//!   reason, the database probe's latency and the connect and handshake latency histograms
//!   (`fleetward.connect_duration` by `device`, `fleetward.tls_handshake_duration`), exported
//!   over OTLP every `observability.metrics_interval_secs` (and always on `/metrics` for
//!   Prometheus).
//!
//! Binaries call [`init`] (libraries never install a subscriber); the returned [`Guard`]
//! flushes what is buffered when dropped.

use crate::config::{LogFormat, ObservabilityConfig};
use crate::stats::Stats;
use anyhow::Context;
use opentelemetry::trace::TracerProvider;
use opentelemetry_otlp::WithExportConfig;
use std::sync::Arc;
use std::time::Duration;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The target of the spans exported as traces.
pub const SPANS: &str = "fleetward::otel";

/// Keeps the exporters alive; flushes them when dropped (at exit).
#[must_use = "dropping the guard stops the exporters"]
#[derive(Debug, Default)]
pub struct Guard {
    tracer: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    meter: Option<opentelemetry_sdk::metrics::SdkMeterProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(t) = self.tracer.take() {
            let _ = t.shutdown();
        }
        if let Some(m) = self.meter.take() {
            let _ = m.shutdown();
        }
    }
}

/// The OTLP endpoint in use: the configuration's, else `OTEL_EXPORTER_OTLP_ENDPOINT`.
pub fn otlp_endpoint(config: &ObservabilityConfig) -> Option<String> {
    config
        .otlp_endpoint
        .clone()
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .map(|e| e.trim_end_matches('/').to_owned())
        .filter(|e| !e.is_empty())
}

/// Installs the global subscriber: logs (text or JSON) and, with an OTLP endpoint, the trace
/// and metric exporters. `default_filter` applies when `RUST_LOG` is unset; `node` names this
/// gateway in the exported resource.
pub fn init(config: &ObservabilityConfig, default_filter: &str, node: Option<&str>) -> anyhow::Result<Guard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let logs = match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    let mut guard = Guard::default();
    let traces = match otlp_endpoint(config) {
        None => None,
        Some(endpoint) => {
            // The exporters' HTTP client is reqwest on rustls without a provider: ours serves
            // https:// collectors.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let resource = resource(config, node);
            let spans = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("{endpoint}/v1/traces"))
                .with_timeout(Duration::from_secs(10))
                .build()
                .with_context(|| format!("cannot export traces to {endpoint}"))?;
            let tracer_provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(spans)
                .with_resource(resource.clone())
                .build();
            let tracer = tracer_provider.tracer("fleetward");
            guard.tracer = Some(tracer_provider);
            let metrics = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_endpoint(format!("{endpoint}/v1/metrics"))
                .with_timeout(Duration::from_secs(10))
                .build()
                .with_context(|| format!("cannot export metrics to {endpoint}"))?;
            let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(metrics)
                .with_interval(Duration::from_secs(config.metrics_interval_secs.max(1)))
                .build();
            let meter_provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
                .with_reader(reader)
                .with_resource(resource)
                .build();
            opentelemetry::global::set_meter_provider(meter_provider.clone());
            guard.meter = Some(meter_provider);
            // Our spans, and the info events inside them (as span events).
            let which = tracing_subscriber::filter::Targets::new()
                .with_target(SPANS, tracing::Level::INFO)
                .with_target("gateway", tracing::Level::INFO);
            Some(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(which))
        }
    };
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .context("cannot install the log subscriber")?;
    Ok(guard)
}

fn resource(config: &ObservabilityConfig, node: Option<&str>) -> opentelemetry_sdk::Resource {
    let mut attributes = vec![opentelemetry::KeyValue::new(
        "service.version",
        env!("CARGO_PKG_VERSION"),
    )];
    if let Some(node) = node {
        attributes.push(opentelemetry::KeyValue::new("service.instance.id", node.to_owned()));
    }
    opentelemetry_sdk::Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attributes(attributes)
        .build()
}

/// Registers the gateway's metrics with the global meter provider (the OTLP exporter [`init`]
/// installed): read each time it collects.
pub fn export_metrics(stats: Arc<Stats>, hub: Arc<crate::mqtt::hub::Hub>, registry: registry::Registry) {
    let meter = opentelemetry::global::meter("fleetward");
    for (name, help, _) in stats.describe() {
        let stats = stats.clone();
        meter
            .u64_observable_counter(format!("fleetward.{name}"))
            .with_description(help)
            .with_callback(move |o| {
                if let Some((_, _, v)) = stats.describe().into_iter().find(|(n, _, _)| *n == name) {
                    o.observe(v, &[]);
                }
            })
            .build();
    }
    {
        let stats = stats.clone();
        meter
            .u64_observable_counter("fleetward.rejections")
            .with_description("refusals (handshakes, CONNACKs, uplinks, callbacks) by the check that failed")
            .with_callback(move |o| {
                for (reason, n) in stats.rejections() {
                    o.observe(n, &[opentelemetry::KeyValue::new("reason", reason)]);
                }
            })
            .build();
    }
    // The latency histograms, with the buckets /metrics uses.
    let latency = |name: &'static str, description: &'static str| {
        meter
            .f64_histogram(name)
            .with_unit("s")
            .with_description(description)
            .with_boundaries(crate::stats::LatencyHistogram::bounds_secs())
            .build()
    };
    let connect = latency("fleetward.connect_duration", crate::stats::CONNECT_DURATION_HELP);
    stats
        .connect_new
        .export_to(connect.clone(), vec![opentelemetry::KeyValue::new("device", "new")]);
    stats
        .connect_known
        .export_to(connect, vec![opentelemetry::KeyValue::new("device", "known")]);
    let handshake = latency(
        "fleetward.tls_handshake_duration",
        crate::stats::HANDSHAKE_DURATION_HELP,
    );
    stats.handshake.export_to(handshake, Vec::new());
    // The bus's gauges, once the bus is joined (nothing is observed without NATS).
    let bus_gauge = |name: &'static str, description: &'static str, read: fn(&crate::bus::Bus) -> u64| {
        let hub = hub.clone();
        meter
            .u64_observable_gauge(name)
            .with_description(description)
            .with_callback(move |o| {
                if let Some(bus) = hub.bus() {
                    o.observe(read(bus), &[]);
                }
            })
            .build();
    };
    bus_gauge(
        "fleetward.bus.telemetry_backlog",
        "stored messages waiting in the JetStream relay's buffer",
        |bus| bus.telemetry_backlog() as u64,
    );
    bus_gauge(
        "fleetward.bus.telemetry_unpublished",
        "messages this node stored that JetStream has not acknowledged yet (the relay's buffer and what it deferred to the store)",
        crate::bus::Bus::telemetry_unpublished,
    );
    meter
        .u64_observable_gauge("fleetward.devices_online")
        .with_description("MQTT device sessions open now")
        .with_callback(move |o| o.observe(hub.online_devices() as u64, &[]))
        .build();
    meter
        .f64_observable_gauge("fleetward.db_probe_latency")
        .with_unit("s")
        .with_description("round trip of the database probe (SELECT 1 on its own connection)")
        .with_callback(move |o| {
            if let Some(d) = registry.probe_latency() {
                o.observe(d.as_secs_f64(), &[]);
            }
        })
        .build();
}
