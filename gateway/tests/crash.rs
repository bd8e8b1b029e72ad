//! `kill -9` of a gateway in the middle of an onboarding storm, on SQLite and on PostgreSQL.
//! After a restart on the same database:
//! - no device that was told it was registered (CONNACK 0) is lost;
//! - none is duplicated, and the event trail agrees with the devices: one `device.registered`
//!   event per device, none for a device that is not there;
//! - every device of the storm onboards on its next try, and the totals add up.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    clippy::disallowed_methods
)]

mod common;

use common::id_of;
use common::process::{Database, device_tls as tls, get_all, mqtt_session, serve_trusting, server_ca_der};
use fleetward_test_support::{TestCa, TestDevice};
use sim_devices::client::ClientTls;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const DEVICES: usize = 400;
const CONCURRENCY: usize = 48;
/// The gateway is killed once this many devices were told they are registered.
const KILL_AFTER: usize = 120;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_an_onboarding_storm_loses_and_duplicates_nothing_on_sqlite() {
    storm_kill_restart(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_an_onboarding_storm_loses_and_duplicates_nothing_on_postgresql() {
    let db = Database::create("fw_crash").await;
    storm_kill_restart(Some(&db.url)).await;
    db.drop_now().await;
}

/// TLS + CONNECT; true when the gateway answered CONNACK 0 (the device is registered).
async fn onboard(addr: std::net::SocketAddr, tls: &ClientTls, id: &str) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(20), mqtt_session(addr, tls, id)).await,
        Ok(Ok((_, 0)))
    )
}

async fn storm_kill_restart(db: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::stsafe_root("STM STSAFE-A CRASH TEST CA");
    let ca_pem = dir.path().join("ca.pem");
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    let data = dir.path().join("data");
    let devices: Vec<TestDevice> = (0..DEVICES)
        .map(|i| ca.issue_stsafe_device("crash", &[(i >> 8) as u8, i as u8]))
        .collect();
    let ids: Vec<String> = devices.iter().map(id_of).collect();

    let first = serve_trusting(&data, db, &ca_pem);
    let token = first.token.clone().expect("first start prints an admin token");
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let server_ca_der = server_ca_der(&data);

    // The storm: CONCURRENCY devices at a time; the gateway is killed mid-way.
    let acked: Arc<std::sync::Mutex<BTreeSet<String>>> = Arc::default();
    let next = Arc::new(AtomicUsize::new(0));
    let devices = Arc::new(devices);
    let ids = Arc::new(ids);
    let (killed_tx, killed_rx) = tokio::sync::watch::channel(false);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (acked, next, devices, ids, ca_der) = (
            acked.clone(),
            next.clone(),
            devices.clone(),
            ids.clone(),
            server_ca_der.clone(),
        );
        let addr = first.mqtt;
        let killed = killed_rx.clone();
        workers.spawn(async move {
            loop {
                if *killed.borrow() {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= DEVICES {
                    return;
                }
                if onboard(addr, &tls(&ca_der, &devices[i]), &ids[i]).await && !*killed.borrow() {
                    acked.lock().unwrap().insert(ids[i].clone());
                }
            }
        });
    }
    while acked.lock().unwrap().len() < KILL_AFTER {
        assert!(!workers.is_empty(), "the storm ended before the kill");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill_9();
    let _ = killed_tx.send(true);
    while workers.join_next().await.is_some() {}
    let acked_before_kill = acked.lock().unwrap().clone();
    let attempted = next.load(Ordering::Relaxed).min(DEVICES);
    eprintln!(
        "killed with {} of {attempted} attempted devices told they are registered",
        acked_before_kill.len()
    );

    // Restart on the same database.
    let second = serve_trusting(&data, db, &ca_pem);
    assert!(second.token.is_none(), "the restart finds the admin token");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let check_trail = |devices: &[serde_json::Value], events: &[serde_json::Value]| {
        let listed: BTreeSet<String> = devices.iter().map(|d| d["id"].as_str().unwrap().to_owned()).collect();
        assert_eq!(listed.len(), devices.len(), "a device listed twice");
        let mut registered: BTreeMap<String, usize> = BTreeMap::new();
        for e in events {
            *registered
                .entry(e["device_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        let twice: Vec<_> = registered.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "registered twice in the trail: {twice:?}");
        let trail: BTreeSet<String> = registered.into_keys().collect();
        assert_eq!(trail, listed, "the trail's registrations and the devices differ");
        listed
    };
    let devices_now = get_all(&http, &second.http, &token, "/api/v1/devices").await;
    let events_now = get_all(&http, &second.http, &token, "/api/v1/events?kind=device.registered").await;
    let listed = check_trail(&devices_now, &events_now);
    let lost: Vec<_> = acked_before_kill.difference(&listed).collect();
    assert!(lost.is_empty(), "told registered, then lost by the kill: {lost:?}");
    eprintln!(
        "after the restart: {} devices registered ({} acknowledged before the kill)",
        listed.len(),
        acked_before_kill.len()
    );

    // Every device onboards now (the rest register, the others are recognised).
    let mut tries = tokio::task::JoinSet::new();
    for (i, id) in ids.iter().enumerate() {
        let (devices, ca_der, id) = (devices.clone(), server_ca_der.clone(), id.clone());
        let addr = second.mqtt;
        tries.spawn(async move { (id.clone(), onboard(addr, &tls(&ca_der, &devices[i]), &id).await) });
        if tries.len() >= CONCURRENCY {
            let (id, ok) = tries.join_next().await.unwrap().unwrap();
            assert!(ok, "{id} does not onboard after the restart");
        }
    }
    while let Some(r) = tries.join_next().await {
        let (id, ok) = r.unwrap();
        assert!(ok, "{id} does not onboard after the restart");
    }
    let devices_end = get_all(&http, &second.http, &token, "/api/v1/devices").await;
    let events_end = get_all(&http, &second.http, &token, "/api/v1/events?kind=device.registered").await;
    let listed = check_trail(&devices_end, &events_end);
    assert_eq!(listed.len(), DEVICES);
    assert_eq!(listed, ids.iter().cloned().collect::<BTreeSet<_>>());
    drop(second);
}
