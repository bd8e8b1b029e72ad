//! PostgreSQL stops for 30 s under load, then comes back:
//! - devices the gateway already knows keep connecting, from its cache, for at most
//!   `cache_max_staleness_secs` after the database last answered;
//! - new devices are refused with a retryable reason (CONNACK 3, server unavailable);
//! - the API answers 503, `/readyz` 503, `/healthz` 200;
//! - nothing panics, and everything resumes when the database is back: registrations, the API,
//!   and the telemetry that waited (acknowledged only once stored).
//!
//! The test runs a PostgreSQL server of its own (see `common::process::PrivatePostgres`), so
//! stopping it disturbs no other test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    clippy::disallowed_methods
)]

mod common;

use common::process::{Database, PrivatePostgres};
use fleetward_test_support::{TestCa, TestDevice};
use sim_devices::client::TlsProfile;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const OUTAGE: Duration = Duration::from_secs(30);

/// CONNACK code of a fresh connection, or 255 when the connection failed before one.
async fn connack(server: &common::Server, device: &TestDevice) -> u8 {
    let id = common::id_of(device);
    match tokio::time::timeout(
        Duration::from_secs(20),
        server.connect(device, &id, TlsProfile::Stm32Tls12),
    )
    .await
    {
        Ok(Ok((c, code))) => {
            drop(c);
            code
        }
        Ok(Err(e)) => {
            eprintln!("{id}: {e}");
            255
        }
        Err(_) => 254,
    }
}

async fn status(http: &reqwest::Client, url: String, token: &str) -> u16 {
    http.get(url)
        .bearer_auth(token)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_down_for_30_s_under_load() {
    let panics = Arc::new(AtomicU64::new(0));
    {
        let panics = panics.clone();
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            panics.fetch_add(1, Ordering::Relaxed);
            default(info);
        }));
    }
    let pg = PrivatePostgres::start();
    let ca = TestCa::stsafe_root("STM STSAFE-A OUTAGE TEST CA");
    let server = common::start_with(&[&ca], |c| c.database_url = Some(pg.url.clone())).await;
    // A second node on the same database that trusts its cache for 5 s only.
    let strict = common::start_with(&[&ca], |c| {
        c.database_url = Some(pg.url.clone());
        c.cache_max_staleness_secs = 5;
    })
    .await;
    let token = server
        .running
        .registry
        .create_token(registry::Role::Viewer, Some("outage"), "test", 1)
        .await
        .unwrap()
        .secret
        .to_string();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let api = format!("http://{}", server.running.http_addr);

    // Known devices: onboarded once on each node.
    let known = ca.issue_stsafe_device("outage", &[0x01]);
    let known_strict = ca.issue_stsafe_device("outage", &[0x02]);
    assert_eq!(connack(&server, &known).await, 0);
    assert_eq!(connack(&strict, &known_strict).await, 0);

    // Load: devices publishing QoS 1 all along; acknowledgements are counted.
    let acked = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut load = Vec::new();
    for i in 0..4u8 {
        let d = ca.issue_stsafe_device("outage-load", &[i]);
        let id = common::id_of(&d);
        let (mut c, code) = server.connect(&d, &id, TlsProfile::Tls13).await.unwrap();
        assert_eq!(code, 0);
        let (acked, stop) = (acked.clone(), stop_rx.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !*stop.borrow() {
                let pkid = c
                    .publish_nowait(&format!("devices/{id}/telemetry"), n.to_string().as_bytes(), 1)
                    .await
                    .unwrap();
                // No PUBACK while the store is down: the message waits (and the device with it).
                c.wait_puback(pkid, Duration::from_secs(120)).await.unwrap();
                acked.fetch_add(1, Ordering::Relaxed);
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            c
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(acked.load(Ordering::Relaxed) > 0);

    // The database goes away.
    pg.stop();
    let down = Instant::now();
    eprintln!("PostgreSQL stopped");
    let acked_at_stop = acked.load(Ordering::Relaxed);

    // A new device: refused, retryably.
    let newcomer = ca.issue_stsafe_device("outage", &[0x03]);
    let t = Instant::now();
    assert_eq!(
        connack(&server, &newcomer).await,
        3,
        "new device: CONNACK 3 (server unavailable)"
    );
    eprintln!("new device refused in {:?}", t.elapsed());
    // The API: 503; readiness 503; liveness 200.
    let t = Instant::now();
    assert_eq!(status(&http, format!("{api}/api/v1/devices"), &token).await, 503);
    eprintln!("API answered 503 in {:?}", t.elapsed());
    assert_eq!(status(&http, format!("{api}/readyz"), &token).await, 503);
    assert_eq!(status(&http, format!("{api}/healthz"), &token).await, 200);

    // Known devices keep connecting all through the outage on the first node; on the strict
    // node only within its 5 s.
    let mut strict_refused_after = None;
    while down.elapsed() < OUTAGE {
        let t = Instant::now();
        assert_eq!(
            connack(&server, &known).await,
            0,
            "a known device is refused {:?} into the outage",
            down.elapsed()
        );
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "a cached admission took {:?}",
            t.elapsed()
        );
        let code = connack(&strict, &known_strict).await;
        let at = down.elapsed();
        match code {
            0 => assert!(
                at <= Duration::from_secs(5 + 2),
                "admitted from a cache {at:?} old (limit 5 s)"
            ),
            3 => {
                strict_refused_after.get_or_insert(at);
            }
            other => panic!("strict node: CONNACK {other}"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let strict_refused_after = strict_refused_after.expect("the strict node stops trusting its cache");
    eprintln!("strict node refused known devices from {strict_refused_after:?} into the outage");
    assert!(
        strict_refused_after >= Duration::from_secs(4),
        "{strict_refused_after:?}"
    );
    assert_eq!(
        acked.load(Ordering::Relaxed),
        acked_at_stop,
        "nothing is acknowledged while the store is down"
    );

    // The database is back: everything resumes.
    pg.start_again();
    let back = Instant::now();
    eprintln!("PostgreSQL started again");
    let deadline = back + Duration::from_secs(30);
    loop {
        if connack(&server, &newcomer).await == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "registrations do not resume");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("registrations resumed {:?} after the database", back.elapsed());
    loop {
        if status(&http, format!("{api}/api/v1/devices"), &token).await == 200
            && status(&http, format!("{api}/readyz"), &token).await == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "the API does not resume");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    loop {
        if connack(&strict, &known_strict).await == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the strict node does not admit again");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let resumed = acked.load(Ordering::Relaxed);
    loop {
        if acked.load(Ordering::Relaxed) > resumed + 20 {
            break;
        }
        assert!(Instant::now() < deadline, "telemetry does not resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(true);
    let mut clients = Vec::new();
    for l in load {
        clients.push(l.await.unwrap());
    }
    // Every acknowledged message is stored.
    let stored = server.running.registry.telemetry_after(0, 10_000).await.unwrap();
    let acked_total = acked.load(Ordering::Relaxed) as usize;
    assert!(
        stored.len() >= acked_total,
        "{} stored, {acked_total} acknowledged",
        stored.len()
    );
    assert_eq!(panics.load(Ordering::Relaxed), 0, "something panicked");
    drop(clients);
    strict.running.shutdown().await;
    server.running.shutdown().await;
}

/// A database that answers but is slow to take a registration (here: a table lock held by
/// another session) gets new devices refused with CONNACK 3 after
/// `mqtt.registration_timeout_secs`, before their own CONNACK timeout; the registration still
/// lands once the lock is gone, and the device's retry then connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_stuck_behind_a_lock_is_refused_in_time() {
    let db = Database::create("fw_registration_timeout").await;
    let ca = TestCa::stsafe_root("STM STSAFE-A SLOW DATABASE CA");
    let server = common::start_with(&[&ca], |c| {
        c.database_url = Some(db.url.clone());
        c.mqtt.registration_timeout_secs = 2;
    })
    .await;
    let known = ca.issue_stsafe_device("slow", &[0x01]);
    assert_eq!(connack(&server, &known).await, 0);

    let mut lock = <sqlx::AnyConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    for sql in ["BEGIN", "LOCK TABLE devices IN ACCESS EXCLUSIVE MODE"] {
        sqlx::query(sql).execute(&mut lock).await.unwrap();
    }
    let fresh = ca.issue_stsafe_device("slow", &[0x02]);
    let started = Instant::now();
    assert_eq!(connack(&server, &fresh).await, 3, "server unavailable: retry later");
    let took = started.elapsed();
    assert!(
        (Duration::from_secs(2)..Duration::from_secs(6)).contains(&took),
        "refused after {took:?}"
    );
    assert_eq!(server.running.stats.registrations_timed_out.load(Ordering::Relaxed), 1);
    // A device this node knows does not wait on the lock.
    let started = Instant::now();
    assert_eq!(connack(&server, &known).await, 0);
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());

    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    let id = common::id_of(&fresh);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.running.registry.device(&id).await.is_err() {
        assert!(Instant::now() < deadline, "the timed-out registration never landed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(connack(&server, &fresh).await, 0, "the retry connects");
    drop(server);
    db.drop_now().await;
}
