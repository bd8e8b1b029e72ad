//! fleetward against an independent LoRaWAN implementation: the npm package `lora-packet` makes
//! and checks every LoRaWAN byte of three devices (OTAA 1.0.3, OTAA 1.1, ABP 1.0.4) behind three
//! packet forwarders written from the Semtech protocol text (`scripts/lorawan/lora_packet_device.js`).
//! The devices open fleetward's join-accepts (MIC, keys), their uplinks are stored once with every
//! gateway's reception and decrypted to what they sent, and each attack is refused by name:
//! replay, forged MIC, counter gap, reused DevNonce, garbage datagrams.
//! `.ci/run` installs the package (`npm ci` in scripts/lorawan) and sets FLEETWARD_REQUIRE_INTEROP=1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use common::check_of;
use registry::{EventFilter, NewAbpDevice, NewLorawanDevice};
use serde_json::{Value, json};
use std::path::PathBuf;

fn script_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/lorawan"))
}

fn lora_packet_available() -> bool {
    let ok = script_dir().join("node_modules/lora-packet").is_dir()
        && std::process::Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("FLEETWARD_REQUIRE_INTEROP").is_err(),
            "node or lora-packet missing (cd scripts/lorawan && npm ci)"
        );
        eprintln!("skipping: node or lora-packet not installed (cd scripts/lorawan && npm ci)");
    }
    ok
}

const APP_KEY: &str = "2b7e151628aed2a6abf7158809cf4f3c";
const NWK_KEY: &str = "000102030405060708090a0b0c0d0e0f";

fn key(h: &str) -> [u8; 16] {
    hex::decode(h).unwrap().try_into().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lora_packet_devices_join_and_send_through_packet_forwarders() {
    if !lora_packet_available() {
        return;
    }
    let server = common::start(&[]).await;
    let r = &server.running.registry;
    let devices = [("0004A30B001C0530", "1.0.3"), ("0004A30B001C0531", "1.1")];
    for (eui, version) in devices {
        r.insert_lorawan_device(
            &NewLorawanDevice {
                dev_eui: eui,
                join_eui: "70B3D57ED00001A6",
                mac_version: version,
                app_key: &key(APP_KEY),
                nwk_key: (version == "1.1").then(|| key(NWK_KEY)).as_ref(),
            },
            1,
        )
        .await
        .unwrap();
    }
    let (nwk_s_key, app_s_key) = ("11223344556677881122334455667788", "8877665544332211887766554433221f");
    let blob = gateway::lorawan::session_blob(&key(nwk_s_key), &key(nwk_s_key), &key(nwk_s_key), &key(app_s_key));
    r.insert_lorawan_abp(
        &NewAbpDevice {
            dev_eui: "0004A30B001C0532",
            dev_addr: "260B1234",
            mac_version: "1.0.4",
            session_keys: &blob,
            f_cnt_up: Some(65_533),
            f_cnt_down: 0,
        },
        1,
    )
    .await
    .unwrap();

    let scenario = json!({
        "server": server.running.lorawan_udp_addr.to_string(),
        "devices": [
            { "kind": "otaa", "version": "1.0", "dev_eui": devices[0].0, "join_eui": "70B3D57ED00001A6",
              "app_key": APP_KEY, "dev_nonce": 0x1234 },
            { "kind": "otaa", "version": "1.1", "dev_eui": devices[1].0, "join_eui": "70B3D57ED00001A6",
              "app_key": APP_KEY, "nwk_key": NWK_KEY, "dev_nonce": 3 },
            // An ABP device whose 32-bit counter crosses the 16-bit boundary on air.
            { "kind": "abp", "version": "1.0", "dev_eui": "0004A30B001C0532", "dev_addr": "260B1234",
              "nwk_s_key": nwk_s_key, "app_s_key": app_s_key, "fcnt": 65_534 },
        ],
    });
    let out = tokio::process::Command::new("node")
        .arg(script_dir().join("lora_packet_device.js"))
        .arg(scenario.to_string())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "the lora-packet device refused what fleetward sent:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    // PUSH_ACKs come on receipt; the last frames commit just after (bounded wait).
    for _ in 0..100 {
        if server.running.stats.snapshot().lorawan_uplinks_accepted >= 9 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    for (i, d) in report["devices"].as_array().unwrap().iter().enumerate() {
        let eui = d["dev_eui"].as_str().unwrap();
        let uplinks = r.lorawan_uplinks(eui, 10).await.unwrap();
        // Newest first: "third", "second", "hello" (the replay, forgery and far frame absent).
        let payloads: Vec<String> = uplinks
            .iter()
            .map(|u| String::from_utf8(u.payload.clone()).unwrap())
            .collect();
        assert_eq!(
            payloads,
            ["third", "second", &format!("hello from {eui}")],
            "device {i}: {d}"
        );
        let first = uplinks.last().unwrap();
        let mut heard: Vec<&str> = first
            .gateways
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["gateway"].as_str().unwrap())
            .collect();
        heard.sort_unstable();
        assert_eq!(
            heard,
            ["aa555a0000000001", "aa555a0000000002", "aa555a0000000003"],
            "one frame, three receptions"
        );
        let info = r.lorawan_device(eui).await.unwrap();
        assert_eq!(info.f_cnt_up, d["last_fcnt"].as_i64(), "device {i}");
        if d["kind"] == "otaa" {
            assert_eq!(info.dev_addr.as_deref(), d["dev_addr"].as_str());
            assert_eq!(info.join_nonce, d["join_nonce"].as_i64());
        }
        // Every attack on this device was refused, by name (events are written behind the
        // listener: bounded wait).
        let mut expected = vec!["fcnt_gap", "fcnt_replay", "mic_mismatch"];
        if d["kind"] == "otaa" {
            expected.push("dev_nonce_reused");
        }
        let mut refusals: Vec<String> = Vec::new();
        for _ in 0..100 {
            refusals = r
                .events(
                    &EventFilter {
                        device_id: Some(eui.to_owned()),
                        kind: Some("lorawan.".into()),
                        ..Default::default()
                    },
                    100,
                )
                .await
                .unwrap()
                .iter()
                .filter(|e| e.kind.ends_with("_refused") || e.kind.ends_with("_rejected"))
                .filter_map(check_of)
                .collect();
            if expected.iter().all(|check| refusals.iter().any(|c| c == check)) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        for check in expected {
            assert!(
                refusals.iter().any(|c| c == check),
                "device {i}: no `{check}` in {refusals:?}"
            );
        }
    }
    // The ABP device's counter went past 65,535: the 32-bit counter was reconstructed.
    let abp = r.lorawan_device("0004A30B001C0532").await.unwrap();
    assert!(abp.f_cnt_up.unwrap() > 65_535, "{abp:?}");
    let stats = server.running.stats.snapshot();
    assert_eq!(stats.lorawan_uplinks_accepted, 9, "{stats:?}");
    assert_eq!(stats.lorawan_joins_accepted, 2);
    assert!(stats.lorawan_datagrams_dropped >= 3, "{stats:?}");
}
