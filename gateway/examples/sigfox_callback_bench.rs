//! Sigfox backend callbacks handled per second, end to end: C concurrent HTTP/1.1 keep-alive
//! clients (the Sigfox cloud opens several) POST data callbacks for N devices, M messages each,
//! in sequence-number order per device. A callback counts once it is answered, which the server
//! does only after the message, its sequence number and its telemetry are committed. A second
//! phase replays 1 in 4 of them as the backend's retries (stored already: answered from the
//! registry, nothing written). Every answer must be 204; the stored count is checked.
//!
//!     cargo run --release -p gateway --example sigfox_callback_bench -- \
//!         [--devices 2000] [--messages 5] [--concurrency 32] \
//!         [--database-url postgres://postgres@127.0.0.1:5432/test]
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::disallowed_methods)]

mod common;

use common::{arg, stats};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET: &str = "sigfox-callback-bench-secret-0123456789";

fn body(device: u32, seq: u16, time: i64) -> String {
    serde_json::json!({ "device": format!("{device:08X}"), "time": time, "data": "0102030405060708",
        "seqNumber": seq, "ack": false, "duplicate": false, "station": "1E7A", "snr": 18.37,
        "rssi": -121.0 })
    .to_string()
}

/// Sends the callbacks of `devices`, round by round (each device's messages in order); returns
/// each callback's latency.
async fn client(
    http: reqwest::Client,
    url: Arc<String>,
    devices: Vec<u32>,
    messages: u16,
    time0: i64,
    every: usize,
) -> Vec<Duration> {
    let mut latencies = Vec::new();
    for m in 0..messages {
        for (i, &d) in devices.iter().enumerate() {
            if (i + usize::from(m)) % every != 0 {
                continue;
            }
            let started = Instant::now();
            let r = http
                .post(url.as_str())
                .header("x-callback-secret", SECRET)
                .header("content-type", "application/json")
                .body(body(d, m, time0 + i64::from(m) * 600))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 204, "{}", r.text().await.unwrap_or_default());
            latencies.push(started.elapsed());
        }
    }
    latencies
}

#[tokio::main]
async fn main() {
    let devices: u32 = arg("--devices", "2000").parse().unwrap();
    let messages: u16 = arg("--messages", "5").parse().unwrap();
    let concurrency: u32 = arg("--concurrency", "32").parse().unwrap();
    let url = arg("--database-url", "");
    let secrets = tempfile::tempdir().unwrap();
    let secret_file = secrets.path().join("secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let (running, _dir) = common::start_server(&url, |c| c.sigfox.callback_secret_file = Some(secret_file)).await;
    let target = Arc::new(format!("http://{}/sigfox/callback", running.http_addr));
    // Fresh ids per run (a shared PostgreSQL keeps earlier runs' devices).
    let base = (std::process::id() % 0xFF) << 24;
    let time0 = 1_764_590_000 + i64::from(std::process::id());
    println!(
        "{devices} devices × {messages} messages, {concurrency} clients ({})",
        if url.is_empty() { "SQLite" } else { "PostgreSQL" }
    );
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency as usize)
        .build()
        .unwrap();
    let phase = |every: usize| {
        let (http, target) = (http.clone(), target.clone());
        async move {
            let started = Instant::now();
            let tasks: Vec<_> = (0..concurrency)
                .map(|c| {
                    let mine: Vec<u32> = (0..devices)
                        .filter(|d| d % concurrency == c)
                        .map(|d| base | d)
                        .collect();
                    tokio::spawn(client(http.clone(), target.clone(), mine, messages, time0, every))
                })
                .collect();
            let mut latencies = Vec::new();
            for t in tasks {
                latencies.extend(t.await.unwrap());
            }
            (latencies, started.elapsed())
        }
    };
    let (latencies, elapsed) = phase(1).await;
    let n = latencies.len();
    let (p50, p95) = stats(latencies);
    println!(
        "new messages: {n} in {:.2} s = {:.0} callbacks/s stored (p50 {p50:.2} ms, p95 {p95:.2} ms)",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    let (latencies, elapsed) = phase(4).await;
    let retries = latencies.len();
    let (p50, p95) = stats(latencies);
    println!(
        "retries:      {retries} in {:.2} s = {:.0} callbacks/s answered (p50 {p50:.2} ms, p95 {p95:.2} ms)",
        elapsed.as_secs_f64(),
        retries as f64 / elapsed.as_secs_f64()
    );
    let s = running.stats.snapshot();
    assert_eq!(s.sigfox_callbacks_accepted, n as u64, "every new message stored once");
    assert_eq!(s.sigfox_callbacks_duplicate, retries as u64, "every retry recognised");
    assert_eq!(s.sigfox_callbacks_rejected, 0);
    println!("checked: {n} stored once, {retries} retries recognised, 0 refused");
}
