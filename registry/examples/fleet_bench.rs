//! Fleet queries at scale: seeds N devices (default 1,000,000) in a fresh PostgreSQL database
//! and times the dashboard summary and filtered pages through the registry API.
//!
//!     cargo run --release -p registry --example fleet_bench -- [--devices N] [--runs R] [--admin-url URL] [--keep]
//!
//! The database `fleetward_bench` on the admin URL's server is dropped and recreated; with
//! `--keep` it stays for `cargo run --release -p gateway --example dashboard_bench`, which times
//! the dashboard and API pages on it. Besides devices it seeds what the dashboard and audit read:
//! one `device.registered` event per device over the last 24 h, 100,000 refused handshakes,
//! clone and client-id events, certificates expiring or expired.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::disallowed_methods)]

use fleetward_test_support::bench::arg;

use fleetward_test_support::{KeyKind, TestCa};
use registry::{DeviceFilter, DeviceStatus, Integrity, Kek, Keyring, NewCa, Registry};
use std::time::{Duration, Instant};
use verifier::challenge::DigestMode;
use verifier::x509::IdentitySource;

fn stats(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (
        ms(samples[samples.len() / 2]),
        ms(samples[(samples.len() * 95 / 100).min(samples.len() - 1)]),
    )
}

#[tokio::main]
async fn main() {
    let devices: i64 = arg("--devices", "1000000").parse().unwrap();
    let keep = std::env::args().any(|a| a == "--keep");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let runs: usize = arg("--runs", "25").parse().unwrap();
    let admin = arg("--admin-url", "postgres://postgres@127.0.0.1:5432/postgres");
    let (base, _) = admin.rsplit_once('/').unwrap();
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin)
        .await
        .unwrap();
    sqlx::query("DROP DATABASE IF EXISTS fleetward_bench WITH (FORCE)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE fleetward_bench")
        .execute(&mut conn)
        .await
        .unwrap();
    let url = format!("{base}/fleetward_bench");
    let r = Registry::open(&url, Keyring::new(Kek::generate("bench").unwrap()))
        .await
        .unwrap();

    let root = TestCa::root(KeyKind::P256, "Bench Root");
    let ca = r
        .insert_ca(
            &NewCa {
                cert_der: &root.der,
                identity_source: IdentitySource::CommonName,
                identity_pattern: None,
                digest_mode: DigestMode::Direct,
                auto_activate: true,
                registered_by: "bench",
            },
            0,
        )
        .await
        .unwrap();
    let device_der = root.issue_device(KeyKind::P256, "template").der;

    // Seed server-side: statuses 4:1:1 active/pending/quarantined (+ 1 in 100 revoked),
    // 12 firmware versions, integrity spread, last_seen over 30 days, a site label on 10 %.
    let t0 = Instant::now();
    let mut db = <sqlx::AnyConnection as sqlx::Connection>::connect(&url).await.unwrap();
    let chunk = 200_000i64;
    let mut start = 1;
    while start <= devices {
        let end = (start + chunk - 1).min(devices);
        sqlx::query(
            "INSERT INTO devices (id, ca_id, cert_der, cert_sha256, cert_serial, cert_not_after, cert_key, status, \
             status_changed_at, first_seen, last_seen, firmware_version, firmware_digest, integrity, connections) \
             SELECT 'dev-' || lpad(g::text, 8, '0'), $1, $2, md5(g::text) || md5((g + 1)::text), to_hex(g), \
                    CASE WHEN g % 200 = 0 THEN $5 - 86400000 WHEN g % 100 = 0 THEN $5 + 864000000 ELSE 2000000000000 END, \
                    'ECDSA P-256', \
                    CASE WHEN g % 100 = 0 THEN 'revoked' ELSE (ARRAY['active','active','active','active','pending','quarantined'])[1 + g % 6] END, \
                    $5 - 2592000000, $5 - 2592000000, $5 - (g % 2592000) * 1000, \
                    '1.' || (g % 12)::text || '.0', md5('1.' || (g % 12)::text || '.0'), \
                    (ARRAY['verified','verified','verified','unknown','failed','stale'])[1 + (g / 7) % 6], 1 \
             FROM generate_series($3::bigint, $4::bigint) g",
        )
        .bind(&ca.id)
        .bind(&device_der)
        .bind(start)
        .bind(end)
        .bind(now_ms)
        .execute(&mut db)
        .await
        .unwrap();
        start = end + 1;
    }
    sqlx::query(
        "INSERT INTO device_labels (device_id, key, value) SELECT 'dev-' || lpad(g::text, 8, '0'), 'site', \
         (ARRAY['lyon','paris','grenoble','nice'])[1 + g % 4] FROM generate_series(1, $1::bigint) g WHERE g % 10 = 0",
    )
    .bind(devices)
    .execute(&mut db)
    .await
    .unwrap();
    // The audit trail the dashboard charts and the audit read: every registration in the last
    // 24 h (the onboarding chart's worst case), refused handshakes, clones, client-id conflicts.
    for (sql, n) in [
        (
            "INSERT INTO events (at, kind, actor, device_id, ca_id, detail) SELECT $1 - (g % 86400) * 1000, \
             'device.registered', 'jitr', 'dev-' || lpad(g::text, 8, '0'), $2, '{}' FROM generate_series(1, $3::bigint) g",
            devices,
        ),
        (
            "INSERT INTO events (at, kind, actor, reason, detail) SELECT $1 - (g % 86400) * 1000, 'chain.rejected', \
             'gateway', 'unknown issuer', '{\"check\":\"unknown_issuer\"}' FROM generate_series(1, $3::bigint) g \
             WHERE $2 <> ''",
            devices / 10,
        ),
        (
            "INSERT INTO events (at, kind, actor, device_id, detail) SELECT $1 - g * 1000, 'device.clone_suspected', \
             'gateway', 'dev-' || lpad((g * 97)::text, 8, '0'), '{}' FROM generate_series(1, $3::bigint) g WHERE $2 <> ''",
            devices / 1000,
        ),
        (
            "INSERT INTO events (at, kind, actor, device_id, detail) SELECT $1 - g * 1000, 'device.refused', 'gateway', \
             'dev-' || lpad((g * 89)::text, 8, '0'), '{\"check\":\"client_id_mismatch\"}' FROM generate_series(1, $3::bigint) g \
             WHERE $2 <> ''",
            devices / 1000,
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now_ms)
            .bind(&ca.id)
            .bind(n)
            .execute(&mut db)
            .await
            .unwrap();
    }
    sqlx::query("ANALYZE").execute(&mut db).await.unwrap();
    println!("seeded {devices} devices in {:.1} s", t0.elapsed().as_secs_f64());

    let summary = r.fleet_summary().await.unwrap();
    assert_eq!(summary.total, devices);
    let mut samples = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        r.fleet_summary().await.unwrap();
        samples.push(t.elapsed());
    }
    let (median, p95) = stats(samples);
    println!(
        "{:<58} median {median:7.2} ms  p95 {p95:7.2} ms",
        "fleet_summary (by status, integrity, top firmware)"
    );

    let cases: Vec<(&str, DeviceFilter, Option<&str>)> = vec![
        ("page 1, no filter", DeviceFilter::default(), None),
        (
            "status=quarantined",
            DeviceFilter {
                status: Some(DeviceStatus::Quarantined),
                ..Default::default()
            },
            None,
        ),
        (
            "firmware=1.7.0 AND integrity=failed",
            DeviceFilter {
                firmware_version: Some("1.7.0".into()),
                integrity: Some(Integrity::Failed),
                ..Default::default()
            },
            None,
        ),
        (
            "label site=grenoble",
            DeviceFilter {
                label: Some(("site".into(), "grenoble".into())),
                ..Default::default()
            },
            None,
        ),
        (
            "id prefix dev-0042",
            DeviceFilter {
                id_prefix: Some("dev-0042".into()),
                ..Default::default()
            },
            None,
        ),
        (
            "last seen in the last hour",
            DeviceFilter {
                last_seen_after_ms: Some(now_ms - 3_600_000),
                ..Default::default()
            },
            None,
        ),
        (
            "status=active, deep page (after dev-00900000)",
            DeviceFilter {
                status: Some(DeviceStatus::Active),
                ..Default::default()
            },
            Some("dev-00900000"),
        ),
    ];
    for (name, filter, after) in cases {
        let first = r.list_devices(&filter, after, 100).await.unwrap();
        assert!(!first.items.is_empty(), "{name}: empty page");
        let mut samples = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            r.list_devices(&filter, after, 100).await.unwrap();
            samples.push(t.elapsed());
        }
        let (median, p95) = stats(samples);
        println!(
            "{:<58} median {median:7.2} ms  p95 {p95:7.2} ms  ({} rows)",
            format!("list_devices 100: {name}"),
            first.items.len()
        );
    }
    let mut samples = Vec::new();
    for _ in 0..runs.min(10) {
        let t = Instant::now();
        r.audit(&registry::AuditOptions::default(), now_ms).await.unwrap();
        samples.push(t.elapsed());
    }
    let (median, p95) = stats(samples);
    println!("{:<58} median {median:7.2} ms  p95 {p95:7.2} ms", "audit (15 checks)");
    r.close().await;
    if keep {
        println!("kept {url} (drop it with: psql {admin} -c 'DROP DATABASE fleetward_bench')");
        return;
    }
    sqlx::query("DROP DATABASE IF EXISTS fleetward_bench WITH (FORCE)")
        .execute(&mut conn)
        .await
        .unwrap();
}
