//! Dashboard and API pages at fleet scale: starts a real server on the PostgreSQL database that
//! `fleet_bench --keep` seeded (1,000,000 devices, 1.1 million events), logs in like a browser
//! and times every dashboard page and the main API reads over HTTP (whole response body read).
//!
//!     cargo run --release -p registry --example fleet_bench -- --keep
//!     cargo run --release -p gateway --example dashboard_bench -- [--database-url URL] [--runs R]
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::disallowed_methods)]

use std::time::Instant;

mod common;

use common::{arg, stats};

#[tokio::main]
async fn main() {
    let url = arg("--database-url", "postgres://postgres@127.0.0.1:5432/fleetward_bench");
    let runs: usize = arg("--runs", "15").parse().unwrap();
    let (running, _dir) = common::start_server(&url, |_| {}).await;
    let token = running
        .registry
        .create_token(registry::Role::Admin, Some("bench"), "bench", 0)
        .await
        .unwrap()
        .secret
        .to_string();
    let base = format!("http://{}", running.http_addr);
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // Log in like a browser: the session cookie, then plain page loads.
    let login = http
        .post(format!("{base}/login"))
        .form(&[("token", token.as_str()), ("next", "/")])
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let summary = running.registry.fleet_summary().await.unwrap();
    println!("fleet: {} devices; {} runs per page\n", summary.total, runs);

    // A deep cursor: the device list's page after dev-00900000.
    let deep = hex::encode("dev-00900000");
    let pages: Vec<(&str, String, bool)> = vec![
        (
            "dashboard: overview (counts, charts, audit, refusals)",
            "/".into(),
            true,
        ),
        ("dashboard: devices, page 1", "/devices".into(), true),
        (
            "dashboard: devices, status=quarantined",
            "/devices?status=quarantined".into(),
            true,
        ),
        (
            "dashboard: devices, firmware=1.7.0 & integrity=failed",
            "/devices?firmware=1.7.0&integrity=failed".into(),
            true,
        ),
        (
            "dashboard: devices, label site=grenoble",
            "/devices?label=site%3Dgrenoble".into(),
            true,
        ),
        (
            "dashboard: devices, seen in the last hour",
            "/devices?seen_since=1h".into(),
            true,
        ),
        (
            "dashboard: devices, deep page (cursor)",
            format!("/devices?cursor={deep}"),
            true,
        ),
        ("dashboard: device detail", "/devices/dev-00500000".into(), true),
        ("dashboard: CAs", "/cas".into(), true),
        ("dashboard: audit", "/audit".into(), true),
        ("dashboard: live events (first 50)", "/events".into(), true),
        ("API: GET /api/v1/fleet/summary", "/api/v1/fleet/summary".into(), false),
        (
            "API: GET /api/v1/devices?limit=100",
            "/api/v1/devices?limit=100".into(),
            false,
        ),
        (
            "API: GET /api/v1/devices/{id}",
            "/api/v1/devices/dev-00500000".into(),
            false,
        ),
        (
            "API: GET /api/v1/events?limit=100",
            "/api/v1/events?limit=100".into(),
            false,
        ),
        ("API: GET /api/v1/audit", "/api/v1/audit".into(), false),
    ];
    println!("| page | median ms | p95 ms | bytes |\n|---|---:|---:|---:|");
    for (name, path, dashboard) in pages {
        let mut samples = Vec::new();
        let mut bytes = 0;
        for _ in 0..runs {
            let req = http.get(format!("{base}{path}"));
            let req = if dashboard {
                req.header("cookie", &cookie)
            } else {
                req.bearer_auth(&token)
            };
            let t = Instant::now();
            let response = req.send().await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
            bytes = response.bytes().await.unwrap().len();
            samples.push(t.elapsed());
        }
        let (median, p95) = stats(samples);
        println!("| {name} | {median:.1} | {p95:.1} | {bytes} |");
    }
    running.shutdown().await;
}
