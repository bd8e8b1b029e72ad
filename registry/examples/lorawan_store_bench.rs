//! The LoRaWAN uplink store through `Registry::store_lorawan_uplinks`: one durable transaction
//! per batch holding each device's FCntUp, the uplink rows and their telemetry messages, on
//! SQLite (a temp file, WAL, synchronous=FULL) or PostgreSQL (a fresh database).
//!
//!     cargo run --release -p registry --example lorawan_store_bench -- \
//!         [--devices 10000] [--rounds 5] [--batch 10000] [--admin-url postgres://postgres@127.0.0.1:5432/postgres]
//!
//! Each round stores frame r of every device, `--batch` frames per commit, so every frame
//! advances its device's counter (the uplink path's common case).
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::disallowed_methods)]

use fleetward_test_support::bench::arg;

use registry::{Kek, Keyring, NewAbpDevice, NewLorawanUplink, Registry, UplinkOutcome};
use std::time::Instant;

async fn run(name: &str, r: &Registry, devices: u32, rounds: u32, batch: usize) {
    let keys = [7u8; registry::SESSION_KEYS_LEN];
    let euis: Vec<String> = (0..devices).map(|i| format!("00AB{:012X}", i)).collect();
    let topics: Vec<String> = euis.iter().map(|e| format!("devices/{e}/telemetry")).collect();
    for (i, eui) in euis.iter().enumerate() {
        r.insert_lorawan_abp(
            &NewAbpDevice {
                dev_eui: eui,
                dev_addr: &format!("{:08X}", 0x2600_0000 | i as u32),
                mac_version: "1.0.4",
                session_keys: &keys,
                f_cnt_up: None,
                f_cnt_down: 0,
            },
            0,
        )
        .await
        .unwrap();
    }
    let gateways = serde_json::json!([{ "gateway": "aa555a0000000003", "rssi": -35, "lsnr": 5.5,
        "freq": 868.1, "datr": "SF7BW125", "tmst": 1_000_000 }]);
    let payload = b"\x01\x02t=21.5;h=40";
    let mut rates = Vec::new();
    for round in 0..rounds {
        let frames: Vec<NewLorawanUplink<'_>> = euis
            .iter()
            .zip(&topics)
            .map(|(eui, topic)| NewLorawanUplink {
                dev_eui: eui,
                session: 0,
                f_cnt: round,
                f_port: Some(1),
                payload,
                gateways: &gateways,
                topic: Some(topic),
            })
            .collect();
        let t = Instant::now();
        for chunk in frames.chunks(batch) {
            let out = r.store_lorawan_uplinks(chunk, 1_795_000_000_000).await.unwrap();
            assert!(out.outcomes.iter().all(|o| *o == UplinkOutcome::Stored));
            assert_eq!(out.telemetry.len(), chunk.len());
        }
        let secs = t.elapsed().as_secs_f64();
        rates.push(f64::from(devices) / secs);
        println!(
            "{name:<8} round {round}: {:>7.0} uplinks/s ({:.1} µs per uplink, batches of {batch})",
            f64::from(devices) / secs,
            secs * 1e6 / f64::from(devices)
        );
    }
    rates.sort_by(f64::total_cmp);
    println!("{name:<8} median round: {:.0} uplinks/s", rates[rates.len() / 2]);
}

#[tokio::main]
async fn main() {
    let devices: u32 = arg("--devices", "10000").parse().unwrap();
    let rounds: u32 = arg("--rounds", "5").parse().unwrap();
    let batch: usize = arg("--batch", "10000").parse().unwrap();
    let admin = arg("--admin-url", "");
    let keys = || Keyring::new(Kek::generate("bench").unwrap());
    if admin.is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(&Registry::sqlite_url(dir.path()), keys()).await.unwrap();
        run("sqlite", &r, devices, rounds, batch).await;
        return;
    }
    sqlx::any::install_default_drivers();
    let (base, _) = admin.rsplit_once('/').unwrap();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin)
        .await
        .unwrap();
    for q in [
        "DROP DATABASE IF EXISTS fleetward_lorawan_store_bench WITH (FORCE)",
        "CREATE DATABASE fleetward_lorawan_store_bench",
    ] {
        sqlx::query(q).execute(&mut conn).await.unwrap();
    }
    let pg = Registry::open(&format!("{base}/fleetward_lorawan_store_bench"), keys())
        .await
        .unwrap();
    run("postgres", &pg, devices, rounds, batch).await;
    pg.close().await;
    sqlx::query("DROP DATABASE IF EXISTS fleetward_lorawan_store_bench WITH (FORCE)")
        .execute(&mut conn)
        .await
        .unwrap();
}
