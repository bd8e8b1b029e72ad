//! Telemetry store throughput through `Registry::store_telemetry` (one durable transaction per
//! batch), on SQLite (a temp file, WAL, synchronous=FULL) and PostgreSQL (a fresh database).
//!
//!     cargo run --release -p registry --example telemetry_bench -- [--messages N] [--admin-url URL]
//!
//! Target (registry issue): ≥ 50,000 messages/s on both backends.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::disallowed_methods)]

use fleetward_test_support::bench::arg;

use registry::{Kek, Keyring, Registry, Source, TelemetryMessage};
use std::time::Instant;

/// One run per batch size, each on a fresh, empty database (`fresh` makes one).
async fn run<F, Fut>(name: &str, fresh: F, total: usize)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Registry>,
{
    for batch in [100usize, 500, 1000] {
        let r = fresh().await;
        let messages: Vec<TelemetryMessage> = (0..total)
            .map(|i| TelemetryMessage {
                device_id: format!("dev-{:05}", i % 1000),
                topic: format!("devices/dev-{:05}/telemetry", i % 1000),
                payload: format!("{{\"temperature\":{}.5,\"seq\":{i}}}", i % 40).into_bytes(),
                qos: 1,
                source: Source::Mqtt,
                received_at_ms: 1_795_000_000_000 + i as i64,
            })
            .collect();
        let t = Instant::now();
        for chunk in messages.chunks(batch) {
            r.store_telemetry(chunk).await.unwrap();
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{name:<10} batch {batch:>5}: {:>8.0} messages/s ({total} messages, {:.1} ms per committed batch)",
            total as f64 / secs,
            secs * 1000.0 / (total / batch) as f64
        );
    }
}

#[tokio::main]
async fn main() {
    let total: usize = arg("--messages", "100000").parse().unwrap();
    let admin = arg("--admin-url", "postgres://postgres@127.0.0.1:5432/postgres");
    let keys = || Keyring::new(Kek::generate("bench").unwrap());

    let dirs = std::sync::Mutex::new(Vec::new());
    let fresh_sqlite = || async {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(&Registry::sqlite_url(dir.path()), keys()).await.unwrap();
        dirs.lock().unwrap().push(dir);
        r
    };
    run("sqlite", fresh_sqlite, total).await;

    sqlx::any::install_default_drivers();
    let (base, _) = admin.rsplit_once('/').unwrap();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin)
        .await
        .unwrap();
    sqlx::query("DROP DATABASE IF EXISTS fleetward_telemetry_bench WITH (FORCE)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE fleetward_telemetry_bench")
        .execute(&mut conn)
        .await
        .unwrap();
    let pg = Registry::open(&format!("{base}/fleetward_telemetry_bench"), keys())
        .await
        .unwrap();
    let pg_url = format!("{base}/fleetward_telemetry_bench");
    let fresh_pg = || async {
        let mut c = <sqlx::AnyConnection as sqlx::Connection>::connect(&pg_url)
            .await
            .unwrap();
        sqlx::query("TRUNCATE telemetry").execute(&mut c).await.unwrap();
        pg.clone()
    };
    run("postgres", fresh_pg, total).await;
    pg.close().await;
    sqlx::query("DROP DATABASE IF EXISTS fleetward_telemetry_bench WITH (FORCE)")
        .execute(&mut conn)
        .await
        .unwrap();
}
