//! OpenTelemetry export: `fleetward serve --otlp-endpoint` sends traces and metrics over
//! OTLP/HTTP (protobuf) to a collector. The collector here is a small HTTP server that decodes
//! what arrives with the OpenTelemetry protobuf definitions (`opentelemetry-proto`), so the test
//! checks the wire format a real collector reads: spans for the connection (with the device
//! id), the handshake, the registration and an API request; counters such as
//! `fleetward.handshakes_completed`; the connect and handshake latency histograms. Logs in JSON
//! lines are checked on the way.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;

use common::id_of;
use common::process::ServeProcess;
use fleetward_test_support::TestCa;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Default)]
struct Collected {
    traces: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
    content_types: Arc<Mutex<Vec<String>>>,
}

async fn collector() -> (String, Collected) {
    use axum::routing::post;
    let collected = Collected::default();
    let c1 = collected.clone();
    let c2 = collected.clone();
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                    if let Some(ct) = headers.get("content-type") {
                        c1.content_types.lock().unwrap().push(ct.to_str().unwrap().to_owned());
                    }
                    c1.traces
                        .lock()
                        .unwrap()
                        .push(ExportTraceServiceRequest::decode(body).expect("OTLP trace protobuf"));
                    ""
                },
            ),
        )
        .route(
            "/v1/metrics",
            post(move |body: axum::body::Bytes| async move {
                c2.metrics
                    .lock()
                    .unwrap()
                    .push(ExportMetricsServiceRequest::decode(body).expect("OTLP metrics protobuf"));
                ""
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}"), collected)
}

/// (span name, its string attributes) of everything collected so far.
fn spans(c: &Collected) -> Vec<(String, Vec<(String, String)>)> {
    let mut out = Vec::new();
    for req in c.traces.lock().unwrap().iter() {
        for rs in &req.resource_spans {
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    let attrs = s
                        .attributes
                        .iter()
                        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                            Value::StringValue(v) => Some((kv.key.clone(), v.clone())),
                            Value::IntValue(v) => Some((kv.key.clone(), v.to_string())),
                            _ => None,
                        })
                        .collect();
                    out.push((s.name.clone(), attrs));
                }
            }
        }
    }
    out
}

/// The latest data point of histogram `name` whose attributes include `attr` (if given): its
/// count and bucket boundaries. Cumulative temporality: the latest export holds the total.
fn histogram_point(c: &Collected, name: &str, attr: Option<(&str, &str)>) -> Option<(u64, Vec<f64>)> {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    let mut found = None;
    for req in c.metrics.lock().unwrap().iter() {
        for rm in &req.resource_metrics {
            for sm in &rm.scope_metrics {
                for m in sm.metrics.iter().filter(|m| m.name == name) {
                    let Some(Data::Histogram(h)) = &m.data else {
                        panic!("{name} is not a histogram: {:?}", m.data)
                    };
                    for p in &h.data_points {
                        let matches = attr.is_none_or(|(k, v)| {
                            p.attributes.iter().any(|kv| {
                                kv.key == k
                                    && matches!(kv.value.as_ref().and_then(|v| v.value.as_ref()),
                                                Some(Value::StringValue(s)) if s == v)
                            })
                        });
                        if matches {
                            found = Some((p.count, p.explicit_bounds.clone()));
                        }
                    }
                }
            }
        }
    }
    found
}

fn metric_names(c: &Collected) -> Vec<String> {
    let mut out = Vec::new();
    for req in c.metrics.lock().unwrap().iter() {
        for rm in &req.resource_metrics {
            for sm in &rm.scope_metrics {
                out.extend(sm.metrics.iter().map(|m| m.name.clone()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_and_metrics_reach_an_otlp_collector_and_logs_are_json() {
    let (endpoint, collected) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::stsafe_root("STM STSAFE-A OTLP TEST CA");
    let ca_pem = dir.path().join("ca.pem");
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    let config = dir.path().join("fleetward.toml");
    std::fs::write(
        &config,
        "[observability]\nmetrics_interval_secs = 1\nservice_name = \"fw-otlp-test\"\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let logs = dir.path().join("stderr.log");
    let args: Vec<String> = [
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--trust-ca",
        ca_pem.to_str().unwrap(),
        "--otlp-endpoint",
        &endpoint,
        "--log-format",
        "json",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let server = ServeProcess::start_logging_to("fleetward serve", &args, Some(&logs), "info");
    let token = server.token.clone().unwrap();

    // A device onboards and leaves (its connection span ends), an operator asks the API.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let server_ca_der = common::process::server_ca_der(&data);
    let device = ca.issue_stsafe_device("otlp", &[0x01]);
    let id = id_of(&device);
    let tls = common::process::device_tls(&server_ca_der, &device);
    let (mut c, code) = common::process::mqtt_session(server.mqtt, &tls, &id).await.unwrap();
    assert_eq!(code, 0);
    c.publish(&format!("devices/{id}/telemetry"), b"{\"t\":21}", 1)
        .await
        .unwrap();
    c.disconnect().await.unwrap();
    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/devices/{id}", server.http))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The batch exporter sends within its 5 s schedule; metrics every second.
    let deadline = Instant::now() + Duration::from_secs(30);
    let has = |name: &str, attr: Option<(&str, &str)>| {
        spans(&collected)
            .iter()
            .any(|(n, attrs)| n == name && attr.is_none_or(|(k, v)| attrs.iter().any(|(ak, av)| ak == k && av == v)))
    };
    loop {
        let done = has("mqtt.connection", Some(("device", &id)))
            && has("tls.handshake", None)
            && has("device.registration", Some(("device", &id)))
            && has("http.request", Some(("http.route", "/api/v1/devices/{id}")))
            && metric_names(&collected)
                .iter()
                .any(|m| m == "fleetward.handshakes_completed")
            && histogram_point(&collected, "fleetward.connect_duration", Some(("device", "new"))).is_some();
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not exported within 30 s; spans: {:?}; metrics: {:?}",
            spans(&collected).iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
            metric_names(&collected)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        has("http.request", Some(("http.response.status_code", "200"))),
        "{:?}",
        spans(&collected)
    );
    assert!(
        collected
            .content_types
            .lock()
            .unwrap()
            .iter()
            .all(|ct| ct == "application/x-protobuf")
    );
    let names = metric_names(&collected);
    for m in [
        "fleetward.devices_registered",
        "fleetward.devices_online",
        "fleetward.messages_stored",
    ] {
        assert!(names.iter().any(|n| n == m), "{m} not exported: {names:?}");
    }
    // The device's one connection, which registered it, in the connect latency histogram, with
    // the buckets /metrics uses; its handshake in the handshake histogram.
    let (count, bounds) = histogram_point(&collected, "fleetward.connect_duration", Some(("device", "new"))).unwrap();
    assert_eq!(count, 1);
    assert_eq!(bounds.len(), 20);
    assert_eq!((bounds[0], bounds[19]), (0.00025, 10.0));
    let (handshakes, _) = histogram_point(&collected, "fleetward.tls_handshake_duration", None).unwrap();
    assert!(handshakes >= 1, "{handshakes}");
    // The resource names the service.
    let service = collected.traces.lock().unwrap()[0].resource_spans[0]
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        });
    assert_eq!(service.as_deref(), Some("fw-otlp-test"));

    // Logs: one JSON object per line.
    drop(server);
    let text = std::fs::read_to_string(&logs).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v.get("level").is_some() && v.get("timestamp").is_some(), "{line}");
    }
}
