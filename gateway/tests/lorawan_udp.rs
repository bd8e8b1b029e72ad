//! The packet-forwarder path end to end: simulated gateways (`sim_devices::lorawan`) speak the
//! Semtech UDP protocol to a real server on loopback. OTAA joins come back as PULL_RESP
//! join-accepts the device can open; uplinks are acknowledged on receipt (as the protocol asks),
//! then verified, stored, decrypted and listed by the API with every gateway that heard them; replays, forged MICs, counter jumps,
//! reused DevNonces, unknown DevAddrs and garbage datagrams are refused with their check named.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Server, check_of};
use registry::NewLorawanDevice;
use serde_json::Value;
use sim_devices::lorawan::{DeviceSession, LorawanDevice, PacketForwarder, Radio, Rx};
use std::time::Duration;

const APP_KEY: [u8; 16] = *b"fleetward-appkey";
const NWK_KEY: [u8; 16] = *b"fleetward-nwkkey";

async fn provision_otaa(server: &Server, dev_eui: [u8; 8], version: &str) {
    server
        .running
        .registry
        .insert_lorawan_device(
            &NewLorawanDevice {
                dev_eui: &hex::encode(dev_eui),
                join_eui: "70B3D57ED0000000",
                mac_version: version,
                app_key: &APP_KEY,
                nwk_key: (version == "1.1").then_some(&NWK_KEY),
            },
            1,
        )
        .await
        .unwrap();
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::new()
}

async fn api_get(server: &Server, path: &str) -> Value {
    let token = server.running.initial_admin_token.as_ref().unwrap();
    let r = http()
        .get(format!("http://{}{path}", server.running.http_addr))
        .bearer_auth(token.as_str())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

/// The device's stored uplinks through the API, once at least `n` are listed (bounded wait: the
/// PUSH_ACK is sent on receipt, the commit follows).
async fn uplinks_listed(server: &Server, eui: &str, n: usize) -> Value {
    let mut listed = Value::Null;
    for _ in 0..100 {
        listed = api_get(server, &format!("/api/v1/lorawan/devices/{eui}/uplinks")).await;
        if listed["items"].as_array().is_some_and(|i| i.len() >= n) {
            return listed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {n} uplinks stored for {eui}: {listed}");
}

/// The registry's stored uplinks of a device, once at least `n` are there (bounded wait).
async fn uplinks_stored(server: &Server, eui: &str, n: usize) -> Vec<registry::LorawanUplink> {
    for _ in 0..100 {
        let stored = server.running.registry.lorawan_uplinks(eui, 10).await.unwrap();
        if stored.len() >= n {
            return stored;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {n} uplinks stored for {eui}");
}

/// How the in-process verifier tests say a frame was heard.
fn reception() -> gateway::lorawan::uplink::Reception {
    gateway::lorawan::uplink::Reception {
        gateway: "0101010101010101".into(),
        freq: 868.1,
        datr: "SF7BW125".into(),
        rssi: Some(-50),
        lsnr: Some(5.0),
        tmst: 1,
    }
}

/// Provisions an ABP device (LoRaWAN 1.0.4) in the registry with `session`'s keys; the device.
async fn provision_abp(
    server: &Server,
    dev_eui: [u8; 8],
    session: DeviceSession,
    f_cnt_up: Option<u32>,
) -> LorawanDevice {
    let blob = gateway::lorawan::session_blob(
        &session.f_nwk_s_int_key,
        &session.s_nwk_s_int_key,
        &session.nwk_s_enc_key,
        &session.app_s_key,
    );
    server
        .running
        .registry
        .insert_lorawan_abp(
            &registry::NewAbpDevice {
                dev_eui: &hex::encode(dev_eui),
                dev_addr: &hex::encode(session.dev_addr),
                mac_version: "1.0.4",
                session_keys: &blob,
                f_cnt_up,
                f_cnt_down: 0,
            },
            1,
        )
        .await
        .unwrap();
    LorawanDevice::abp(dev_eui, session, false)
}

/// Joins over UDP: join-request in PUSH_DATA, join-accept back in PULL_RESP on the gateway that
/// heard it, timed for RX1 (tmst + 5 s), opened by the device.
async fn join(fwd: &mut PacketForwarder, device: &mut LorawanDevice) -> [u8; 4] {
    let jr = device.join_request().unwrap();
    fwd.push(&[(jr, Rx::default())]).await.unwrap();
    let down = fwd.downlink(Duration::from_secs(10)).await.unwrap();
    assert_eq!(down.txpk["tmst"], 1_000_000 + 5_000_000, "{}", down.txpk);
    assert_eq!(down.txpk["ipol"], true);
    assert_eq!(down.txpk["freq"], 868.1);
    device.accept(&down.phy).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otaa_join_uplinks_duplicates_and_refusals() {
    let server = common::start(&[]).await;
    let udp = server.running.lorawan_udp_addr;
    let dev_eui = [0x00, 0x80, 0xE1, 0x15, 0x00, 0x00, 0x00, 0x01];
    provision_otaa(&server, dev_eui, "1.0.3").await;
    let mut device = LorawanDevice::otaa(
        dev_eui,
        [0x70, 0xB3, 0xD5, 0x7E, 0xD0, 0, 0, 0],
        APP_KEY,
        NWK_KEY,
        false,
    );
    let mut gw1 = PacketForwarder::connect(udp, [1; 8]).await.unwrap();
    let mut gw2 = PacketForwarder::connect(udp, [2; 8]).await.unwrap();
    let mut gw3 = PacketForwarder::connect(udp, [3; 8]).await.unwrap();

    let dev_addr = join(&mut gw1, &mut device).await;
    let eui = hex::encode_upper(dev_eui);
    server
        .wait_event("lorawan.join_accepted", |e| e.device_id.as_deref() == Some(&eui))
        .await;

    // An uplink heard by three gateways: one frame stored, three receptions. Each PUSH_ACK comes
    // on receipt; the frame is listed once its batch committed.
    let up0 = device.uplink(2, b"temp=21.5").unwrap();
    let rx = |rssi| Rx { rssi, ..Rx::default() };
    let (t1, d1) = gw1.push_datagram(&[(up0.clone(), rx(-40))]);
    let (t2, d2) = gw2.push_datagram(&[(up0.clone(), rx(-80))]);
    let (t3, d3) = gw3.push_datagram(&[(up0.clone(), rx(-110))]);
    gw1.send_raw(&d1).await.unwrap();
    gw2.send_raw(&d2).await.unwrap();
    gw3.send_raw(&d3).await.unwrap();
    gw1.wait_push_ack(t1).await.unwrap();
    let listed = uplinks_listed(&server, &eui, 1).await;
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{listed}");
    assert_eq!(items[0]["fcnt"], 0);
    assert_eq!(items[0]["fport"], 2);
    assert_eq!(items[0]["payload_hex"], hex::encode(b"temp=21.5"));
    assert!(items[0]["received_at"].as_str().unwrap().ends_with('Z'));
    gw2.wait_push_ack(t2).await.unwrap();
    gw3.wait_push_ack(t3).await.unwrap();
    // The other receptions join the stored frame (in the same batch, or added after it).
    let mut gateways = Vec::new();
    for _ in 0..50 {
        let listed = api_get(&server, &format!("/api/v1/lorawan/devices/{eui}/uplinks")).await;
        gateways = listed["items"][0]["gateways"].as_array().unwrap().clone();
        if gateways.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut heard: Vec<&str> = gateways.iter().map(|g| g["gateway"].as_str().unwrap()).collect();
    heard.sort_unstable();
    assert_eq!(heard, ["0101010101010101", "0202020202020202", "0303030303030303"]);
    assert!(gateways.iter().any(|g| g["rssi"] == -110));

    // The next frames; then the same frame again after the de-duplication window: a replay.
    let up1 = device.uplink(2, b"temp=21.7").unwrap();
    gw1.push(&[(up1.clone(), Rx::default())]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw2.push(&[(up1.clone(), Rx::default())]).await.unwrap();
    let replay = server
        .wait_event("lorawan.uplink_rejected", |e| {
            check_of(e).as_deref() == Some("fcnt_replay")
        })
        .await;
    assert_eq!(replay.device_id.as_deref(), Some(eui.as_str()));
    // An older frame (counter below the last) is a replay too, not a bad MIC.
    gw1.push(&[(up0.clone(), Rx::default())]).await.unwrap();

    // A forged frame: one payload bit flipped; its MIC fails.
    let mut forged = device.uplink(2, b"open-valve").unwrap();
    let n = forged.len();
    forged[n - 5] ^= 0x01;
    gw1.push(&[(forged, Rx::default())]).await.unwrap();
    server
        .wait_event("lorawan.uplink_rejected", |e| {
            check_of(e).as_deref() == Some("mic_mismatch")
        })
        .await;

    // A counter jump past MAX_FCNT_GAP is refused; the device's counter stays.
    device.session.as_mut().unwrap().fcnt_up += 20_000;
    let far = device.uplink(2, b"late").unwrap();
    gw1.push(&[(far, Rx::default())]).await.unwrap();
    server
        .wait_event("lorawan.uplink_rejected", |e| {
            check_of(e).as_deref() == Some("fcnt_gap")
        })
        .await;
    // The forged frame consumed counter 2 on the device; 3 is next and is accepted.
    device.session.as_mut().unwrap().fcnt_up = 3;
    let up3 = device.uplink(2, b"temp=22.0").unwrap();
    gw1.push(&[(up3, Rx::default())]).await.unwrap();
    let listed = uplinks_listed(&server, &eui, 3).await;
    let fcnts: Vec<i64> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["fcnt"].as_i64().unwrap())
        .collect();
    assert_eq!(fcnts, [3, 1, 0], "newest first; forged, replayed and far frames absent");

    // An unknown DevAddr: refused, named.
    let mut stranger = LorawanDevice::abp(
        [9; 8],
        DeviceSession {
            dev_addr: [0x26, 0x0B, 0xAD, 0x01],
            f_nwk_s_int_key: [5; 16],
            s_nwk_s_int_key: [5; 16],
            nwk_s_enc_key: [5; 16],
            app_s_key: [6; 16],
            fcnt_up: 0,
        },
        false,
    );
    gw1.push(&[(stranger.uplink(1, b"hi").unwrap(), Rx::default())])
        .await
        .unwrap();
    server
        .wait_event("lorawan.uplink_rejected", |e| {
            check_of(e).as_deref() == Some("unknown_dev_addr")
        })
        .await;

    // The same DevNonce again: the join is refused, no join-accept goes out.
    let reused = device.join_request_with_nonce(0).unwrap();
    gw1.push(&[(reused, Rx::default())]).await.unwrap();
    server
        .wait_event("lorawan.join_refused", |e| {
            check_of(e).as_deref() == Some("dev_nonce_reused")
        })
        .await;
    assert!(gw1.downlink(Duration::from_millis(500)).await.is_err());

    // Garbage datagrams: dropped, counted, and the listener keeps serving.
    for junk in [
        &b""[..],
        b"\x02",
        b"\x07\x00\x00\x00",
        b"\x02\x01\x02\x00\x01\x01\x01\x01\x01\x01\x01\x01{{{",
    ] {
        gw1.send_raw(junk).await.unwrap();
    }
    let up4 = device.uplink(2, b"still here").unwrap();
    gw1.push(&[(up4, Rx::default())]).await.unwrap();
    uplinks_listed(&server, &eui, 4).await;
    let stats = server.running.stats.snapshot();
    assert!(stats.lorawan_datagrams_dropped >= 3, "{stats:?}");
    assert_eq!(stats.lorawan_uplinks_accepted, 4, "{stats:?}");
    assert!(stats.lorawan_uplinks_duplicate >= 2, "{stats:?}");
    assert_eq!(stats.lorawan_downlinks_sent, 1);
    assert_eq!(
        server.running.registry.lorawan_device(&eui).await.unwrap().f_cnt_up,
        Some(4)
    );
    let _ = dev_addr;

    // The refusals are on the fleet summary and the dashboard's overview.
    let summary = api_get(&server, "/api/v1/fleet/summary").await;
    let refused: i64 = summary["lorawan_refusals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_i64().unwrap())
        .sum();
    assert!(refused >= 6, "{summary}");
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = format!("http://{}", server.running.http_addr);
    let token = server.running.initial_admin_token.as_ref().unwrap();
    let login = browser
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
    let page = browser
        .get(format!("{base}/"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("LoRaWAN refusals (24 h)"),
        "overview has the LoRaWAN panel"
    );
    assert!(
        page.contains("lorawan.uplink_rejected"),
        "recent refusals list the forged frames"
    );
}

/// LoRaWAN 1.1: join with NwkKey/JSIntKey, uplinks whose MIC covers the data rate and channel
/// (SF9 on 867.5 MHz: DR3, channel 5), encrypted FOpts; a frame claiming another channel fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lorawan_1_1_uplinks_bind_data_rate_and_channel() {
    let server = common::start(&[]).await;
    let dev_eui = [0x00, 0x80, 0xE1, 0x15, 0x00, 0x00, 0x01, 0x01];
    provision_otaa(&server, dev_eui, "1.1").await;
    let mut device = LorawanDevice::otaa(dev_eui, [0x70, 0xB3, 0xD5, 0x7E, 0xD0, 0, 0, 0], APP_KEY, NWK_KEY, true);
    let mut gw = PacketForwarder::connect(server.running.lorawan_udp_addr, [7; 8])
        .await
        .unwrap();
    join(&mut gw, &mut device).await;
    let radio = Radio {
        freq: 867.5,
        datr: "SF9BW125",
        tx_dr: 3,
        tx_ch: 5,
    };
    let rx = Rx { radio, ..Rx::default() };
    // A MAC-command frame on FPort 0 (encrypted with NwkSEncKey): stored, not published.
    let mac_only = device.uplink_with(0, &[0x02], &[], false, radio).unwrap();
    gw.push(&[(mac_only, rx.clone())]).await.unwrap();
    let eui = hex::encode_upper(dev_eui);
    let stored = uplinks_stored(&server, &eui, 1).await;
    assert_eq!(
        (stored.len(), stored[0].f_port, stored[0].payload.as_slice()),
        (1, Some(0), &[0x02][..])
    );
    assert_eq!(
        server.running.registry.telemetry_head().await.unwrap(),
        0,
        "not application data"
    );
    // LinkCheckReq (0x02) and DevStatusAns (0x06, battery 0xff, margin 0x10) in FOpts.
    let up = device
        .uplink_with(10, b"\x01\x02\x03", &[0x02, 0x06, 0xff, 0x10], true, radio)
        .unwrap();
    gw.push(&[(up, rx.clone())]).await.unwrap();
    let uplinks = uplinks_stored(&server, &eui, 2).await;
    assert_eq!(uplinks.len(), 2);
    assert_eq!(uplinks[0].payload, b"\x01\x02\x03");
    // Application data is published as telemetry, on the device's topic.
    let published = server.running.registry.telemetry_after(0, 10).await.unwrap();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].topic, format!("devices/{eui}/telemetry"));
    assert_eq!(published[0].payload, b"\x01\x02\x03");
    // The same bytes reported on another channel: the MIC binds TxCh, so it fails.
    let up = device.uplink_with(10, b"\x04", &[], false, radio).unwrap();
    let elsewhere = Rx {
        radio: Radio { freq: 868.3, ..radio },
        ..rx
    };
    gw.push(&[(up, elsewhere)]).await.unwrap();
    server
        .wait_event("lorawan.uplink_rejected", |e| {
            check_of(e).as_deref() == Some("mic_mismatch")
        })
        .await;
}

/// An ABP device provisioned through the API is served at once (a DevAddr found unknown before
/// is asked for again after provisioning).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abp_devices_provisioned_through_the_api() {
    let server = common::start(&[]).await;
    let session = DeviceSession {
        dev_addr: [0x26, 0x01, 0x1B, 0xDA],
        f_nwk_s_int_key: [0x11; 16],
        s_nwk_s_int_key: [0x11; 16],
        nwk_s_enc_key: [0x11; 16],
        app_s_key: [0x22; 16],
        fcnt_up: 10,
    };
    let mut device = LorawanDevice::abp([0xAB; 8], session, false);
    let mut gw = PacketForwarder::connect(server.running.lorawan_udp_addr, [4; 8])
        .await
        .unwrap();
    gw.push(&[(device.uplink(1, b"early").unwrap(), Rx::default())])
        .await
        .unwrap();
    server
        .wait_event("lorawan.uplink_rejected", |e| {
            check_of(e).as_deref() == Some("unknown_dev_addr")
        })
        .await;
    let token = server.running.initial_admin_token.as_ref().unwrap();
    let r = http()
        .post(format!("http://{}/api/v1/lorawan/devices", server.running.http_addr))
        .bearer_auth(token.as_str())
        .json(&serde_json::json!({
            "dev_eui": "ABABABABABABABAB", "dev_addr": "26011BDA", "mac_version": "1.0.4",
            "nwk_s_key": hex::encode([0x11; 16]), "app_s_key": hex::encode([0x22; 16]),
            "fcnt_up": 10, "fcnt_down": 0,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    // Counter 11 (10 was the provisioned last one; the device's "early" frame used 10).
    gw.push(&[(device.uplink(1, b"hello").unwrap(), Rx::default())])
        .await
        .unwrap();
    let listed = uplinks_listed(&server, "ABABABABABABABAB", 1).await;
    assert_eq!(listed["items"][0]["payload_hex"], hex::encode(b"hello"));
    assert_eq!(listed["items"][0]["fcnt"], 11);
}

/// A flood of frames from forged DevAddrs: each is refused, registry look-ups stay within their
/// budget, and what is remembered as unknown stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_dev_addr_floods_are_bounded() {
    use gateway::lorawan::uplink::{Sessions, UplinkSettings, Verdict};
    let server = common::start(&[]).await;
    let sessions = Sessions::default();
    let settings = UplinkSettings {
        lookups_per_sec: 20.0,
        max_unknown: 8,
        ..UplinkSettings::default()
    };
    let heard = reception();
    let mut checks = std::collections::BTreeMap::new();
    for i in 0..200u32 {
        let mut forger = LorawanDevice::abp(
            [0xEE; 8],
            DeviceSession {
                dev_addr: (0x2700_0000 | i).to_be_bytes(),
                f_nwk_s_int_key: [1; 16],
                s_nwk_s_int_key: [1; 16],
                nwk_s_enc_key: [1; 16],
                app_s_key: [2; 16],
                fcnt_up: 0,
            },
            false,
        );
        let frame = forger.uplink(1, b"x").unwrap();
        match sessions
            .verify(&server.running.registry, &settings, &frame, &heard)
            .await
        {
            Verdict::Rejected(r) => *checks.entry(r.check).or_insert(0) += 1,
            other => panic!("a forged address was not refused: {other:?}"),
        }
        assert!(sessions.remembered_unknown() <= 8);
    }
    // The burst allows about 20 look-ups; the rest are refused without asking the registry.
    let throttled = checks.get("lookup_throttled").copied().unwrap_or(0);
    assert!(throttled >= 150, "{checks:?}");
    assert_eq!(checks.values().sum::<i32>(), 200);
    assert!(sessions.is_empty());
}

/// At start the uplink path loads every stored session: a restarted server serves its fleet from
/// memory at once, without the per-address look-ups whose budget is meant for forged DevAddrs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_sessions_are_loaded_at_start() {
    use gateway::lorawan::uplink::{Sessions, UplinkSettings, Verdict};
    let server = common::start(&[]).await;
    let registry = &server.running.registry;
    let mut devices = Vec::new();
    for i in 0..5u8 {
        let session = DeviceSession {
            dev_addr: [0x26, 0x0C, 0x00, i],
            f_nwk_s_int_key: [i; 16],
            s_nwk_s_int_key: [i; 16],
            nwk_s_enc_key: [i; 16],
            app_s_key: [0x40 | i; 16],
            fcnt_up: 7,
        };
        let dev_eui = [0xC0, 0, 0, 0, 0, 0, 0, i];
        devices.push(provision_abp(&server, dev_eui, session, Some(6)).await);
    }
    let sessions = Sessions::default();
    assert_eq!(sessions.preload(registry).await.unwrap(), 5);
    assert_eq!(sessions.len(), 5);
    // No look-up budget at all: every frame is judged from memory.
    let settings = UplinkSettings {
        lookups_per_sec: 0.0,
        ..UplinkSettings::default()
    };
    let heard = reception();
    for device in &mut devices {
        let frame = device.uplink(1, b"after restart").unwrap();
        match sessions.verify(registry, &settings, &frame, &heard).await {
            Verdict::Accepted(a) => assert_eq!((a.fcnt, a.payload.as_slice()), (7, &b"after restart"[..])),
            other => panic!("not served from the loaded table: {other:?}"),
        }
    }
    // The stored counter was loaded too: frame 6 again is a replay, not a fresh frame.
    let mut replayer = devices.remove(0);
    replayer.session.as_mut().unwrap().fcnt_up = 6;
    let old = replayer.uplink(1, b"old").unwrap();
    match sessions.verify(registry, &settings, &old, &heard).await {
        Verdict::Rejected(r) => assert_eq!(r.check, "fcnt_replay"),
        other => panic!("a replay was not refused: {other:?}"),
    }
    // Loading again keeps what is held (its counters moved on): nothing is replaced.
    assert_eq!(sessions.preload(registry).await.unwrap(), 0);
}

/// A burst the uplink writer cannot take: every datagram is still acknowledged on receipt, the
/// frames past the writer's queue are dropped before verification, counted and reported, and
/// every frame is either stored or counted as dropped, none lost silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_the_writer_queue_is_shed_and_counted() {
    let server = common::start_with(&[], |c| c.lorawan.uplink_queue = 1).await;
    let registry = &server.running.registry;
    let mut devices = Vec::new();
    for i in 0..100u32 {
        let session = DeviceSession {
            dev_addr: (0x260D_0000 | i).to_be_bytes(),
            f_nwk_s_int_key: [3; 16],
            s_nwk_s_int_key: [3; 16],
            nwk_s_enc_key: [3; 16],
            app_s_key: [4; 16],
            fcnt_up: 0,
        };
        let dev_eui = (0xC1_0000_0000_0000u64 | u64::from(i)).to_be_bytes();
        devices.push(provision_abp(&server, dev_eui, session, None).await);
    }
    server.running.lorawan_sessions.preload(registry).await.unwrap();
    let mut gw = PacketForwarder::connect(server.running.lorawan_udp_addr, [5; 8])
        .await
        .unwrap();
    // 400 frames, 8 to a datagram, sent back to back: the first datagram's commit (an fsync)
    // takes longer than receiving the rest.
    let mut tokens = Vec::new();
    let mut frames = Vec::new();
    for round in 0..4 {
        for d in &mut devices {
            frames.push((d.uplink(1, format!("r{round}").as_bytes()).unwrap(), Rx::default()));
        }
    }
    for chunk in frames.chunks(8) {
        let (token, datagram) = gw.push_datagram(chunk);
        gw.send_raw(&datagram).await.unwrap();
        tokens.push(token);
    }
    for token in tokens {
        gw.wait_push_ack(token).await.unwrap();
    }
    let mut stats = server.running.stats.snapshot();
    for _ in 0..100 {
        if stats.lorawan_uplinks_accepted + stats.lorawan_uplinks_overloaded == 400 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        stats = server.running.stats.snapshot();
    }
    assert_eq!(
        stats.lorawan_uplinks_accepted + stats.lorawan_uplinks_overloaded,
        400,
        "every frame stored or counted as dropped: {stats:?}"
    );
    assert!(stats.lorawan_uplinks_overloaded > 0, "{stats:?}");
    assert_eq!(
        stats.lorawan_uplinks_rejected, 0,
        "a shed frame is not judged: {stats:?}"
    );
    let event = server
        .wait_event("lorawan.datagram_dropped", |e| {
            check_of(e).as_deref() == Some("overloaded")
        })
        .await;
    assert!(event.detail.as_ref().unwrap()["frames"].as_u64().unwrap() >= 1);
    // What was counted as accepted is what is stored.
    let mut stored = 0;
    for d in &devices {
        let eui = hex::encode_upper(d.dev_eui);
        stored += registry.lorawan_uplinks(&eui, 10).await.unwrap().len() as u64;
    }
    assert_eq!(stored, stats.lorawan_uplinks_accepted);
}
