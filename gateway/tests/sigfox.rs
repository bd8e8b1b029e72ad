//! Sigfox key custody and raw-frame verification through the operator API, end to end on a real
//! server: frames captured from a real device (public vectors, its NAK provisioned) are accepted
//! with their sequence numbers across the 12-bit rollover, published as telemetry and listed;
//! further transmissions, replays, forgeries, unknown devices and garbage are refused by name,
//! counted, and recorded as events.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Server, check_of};
use serde_json::{Value, json};
use verifier::sigfox::{Payload, crc16, encode_uplink};

const NAK: &str = "479e4480fd7596d45b0122fd282db3cf";

fn http() -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::new()
}

async fn submit(server: &Server, frame_hex: &str) -> Value {
    let (status, verdict) = server
        .api(
            reqwest::Method::POST,
            "/api/v1/sigfox/frames",
            Some(json!({ "frame_hex": frame_hex })),
        )
        .await;
    assert_eq!(status, 200, "{verdict}");
    verdict
}

/// A captured packet (flags..UL-AUTH) with its CRC appended, in hex: what a receiver prints.
fn with_crc(packet_hex: &str) -> String {
    let packet = hex::decode(packet_hex).unwrap();
    format!("{packet_hex}{:04x}", crc16(&packet))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_frames_verified_with_the_nak() {
    let server = common::start(&[]).await;
    let post = reqwest::Method::POST;
    // Key custody: the NAK goes in, never comes out; bad input is refused.
    let (status, device) = server
        .api(
            post.clone(),
            "/api/v1/sigfox/devices",
            Some(json!({ "device_id": "004d33db", "nak": NAK })),
        )
        .await;
    assert_eq!(status, 201, "{device}");
    assert_eq!(device["device_id"], "004D33DB");
    assert!(device["last_seq_number"].is_null());
    assert!(!device.to_string().contains(NAK), "the NAK is never returned");
    for bad in [
        json!({ "device_id": "004D33DB", "nak": NAK }),
        json!({ "device_id": "004D33", "nak": NAK }),
        json!({ "device_id": "01020304", "nak": "0011" }),
    ] {
        let (status, body) = server.api(post.clone(), "/api/v1/sigfox/devices", Some(bad)).await;
        assert!(status == 409 || status == 400, "{status} {body}");
    }

    // A frame captured off the air (preamble and all): sequence number 0xA23.
    let v = submit(&server, "aaaaa35f0a23db334d00deadbeef9a54ad20").await;
    assert_eq!(v["accepted"], true, "{v}");
    assert_eq!(
        (v["seq_number"].as_u64(), v["payload_hex"].as_str()),
        (Some(2595), Some("deadbeef"))
    );
    assert_eq!(v["device_id"], "004D33DB");
    // renard's captures, later: 0x0BD is 1,690 numbers on, across the rollover.
    let v = submit(&server, &with_crc("40bddb334d0048656c6c6f20576f726c64f42eb4")).await;
    assert_eq!(v["accepted"], true, "{v}");
    assert_eq!((v["seq_number"].as_u64(), v["lost"].as_u64()), (Some(0xBD), Some(1689)));
    assert_eq!(v["payload_hex"], hex::encode("Hello World"));
    // 0x0BB is behind it: a replay. 0x0CE and 0x0D0 move on.
    let v = submit(&server, &with_crc("40bbdb334d0048656c6c6f20576f726c64417081")).await;
    assert_eq!(
        (v["accepted"].as_bool(), v["check"].as_str()),
        (Some(false), Some("seq_replay")),
        "{v}"
    );
    for (packet, lost) in [
        ("40cedb334d0048656c6c6f20576f726c642f4c1e", 16),
        ("40d0db334d0048656c6c6f20576f726c64396caa", 1),
    ] {
        let v = submit(&server, &with_crc(packet)).await;
        assert_eq!(
            (v["accepted"].as_bool(), v["lost"].as_u64()),
            (Some(true), Some(lost)),
            "{v}"
        );
    }
    // The same message again (a replica in the air, or a resubmission): a duplicate, not stored.
    let v = submit(&server, &with_crc("40d0db334d0048656c6c6f20576f726c64396caa")).await;
    assert_eq!(
        (v["accepted"].as_bool(), v["check"].as_str()),
        (Some(false), Some("duplicate")),
        "{v}"
    );

    // A forger who flips a payload bit and recomputes the CRC cannot make the UL-AUTH.
    let mut forged = hex::decode("40d1db334d0048656c6c6f20576f726c64396caa").unwrap();
    forged[8] ^= 0x01;
    let v = submit(&server, &with_crc(&hex::encode(&forged))).await;
    assert_eq!(
        (v["accepted"].as_bool(), v["check"].as_str()),
        (Some(false), Some("ul_auth_mismatch")),
        "{v}"
    );
    // A bit flipped in transit: the CRC.
    let mut damaged = with_crc("40d1db334d0048656c6c6f20576f726c64396caa").into_bytes();
    damaged[10] = if damaged[10] == b'0' { b'1' } else { b'0' };
    let v = submit(&server, std::str::from_utf8(&damaged).unwrap()).await;
    assert_eq!(v["check"], "crc_mismatch", "{v}");
    // Another device, not provisioned; garbage.
    let stranger = encode_uplink(&[1; 16], 0x0BAD_F00D, 1, Payload::Bytes(b"hi"), false, 0).unwrap();
    let v = submit(&server, &hex::encode(stranger)).await;
    assert_eq!(
        (v["check"].as_str(), v["device_id"].as_str()),
        (Some("unknown_device"), Some("0BADF00D"))
    );
    assert_eq!(submit(&server, "not a frame").await["check"], "not_hex");
    let (status, _) = server
        .api(post.clone(), "/api/v1/sigfox/frames", Some(json!({ "frame": "00" })))
        .await;
    assert_eq!(status, 400, "an unknown field is a bad request");

    // The second transmission of a new message is accepted as that message; its first
    // transmission then is a duplicate.
    let nak: [u8; 16] = hex::decode(NAK).unwrap().try_into().unwrap();
    let second = encode_uplink(&nak, 0x004D_33DB, 0x0D5, Payload::Bytes(b"\x01\x02\x03"), true, 1).unwrap();
    let v = submit(&server, &hex::encode(second)).await;
    assert_eq!(
        (v["accepted"].as_bool(), v["transmission"].as_u64()),
        (Some(true), Some(1)),
        "{v}"
    );
    let first = encode_uplink(&nak, 0x004D_33DB, 0x0D5, Payload::Bytes(b"\x01\x02\x03"), true, 0).unwrap();
    assert_eq!(submit(&server, &hex::encode(first)).await["check"], "duplicate");

    // What was accepted is listed, newest first, and was published as telemetry.
    let (status, listed) = server
        .api(reqwest::Method::GET, "/api/v1/sigfox/devices/004D33DB/uplinks", None)
        .await;
    assert_eq!(status, 200);
    let items = listed["items"].as_array().unwrap();
    let seqs: Vec<u64> = items.iter().map(|i| i["seq_number"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [0x0D5, 0x0D0, 0x0CE, 0x0BD, 0xA23], "{listed}");
    assert_eq!(items[0]["source"], "frame");
    assert_eq!(items[0]["payload_hex"], "010203");
    assert!(items[0]["received_at"].as_str().unwrap().ends_with('Z'));
    let (_, device) = server
        .api(reqwest::Method::GET, "/api/v1/sigfox/devices/004D33DB", None)
        .await;
    assert_eq!(device["last_seq_number"], 0x0D5);
    let published = server.running.registry.telemetry_after(0, 100).await.unwrap();
    assert_eq!(published.len(), 5);
    assert!(
        published
            .iter()
            .all(|m| m.source == registry::Source::Sigfox && m.topic == "devices/004D33DB/telemetry")
    );

    // Counted, and each refusal is an event naming its check.
    let stats = server.running.stats.snapshot();
    assert_eq!(
        (
            stats.sigfox_frames_accepted,
            stats.sigfox_frames_duplicate,
            stats.sigfox_messages_lost
        ),
        (5, 2, 1689 + 16 + 1 + 4)
    );
    assert_eq!(stats.sigfox_frames_rejected, 5, "{stats:?}");
    for check in [
        "seq_replay",
        "ul_auth_mismatch",
        "crc_mismatch",
        "unknown_device",
        "not_hex",
    ] {
        server
            .wait_event("sigfox.frame_rejected", |e| check_of(e).as_deref() == Some(check))
            .await;
    }
    server.wait_event("sigfox.sequence_gap", |_| true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_numbers_roll_over_and_viewers_cannot_submit() {
    let server = common::start(&[]).await;
    let nak = [0x33u8; 16];
    let (status, _) = server
        .api(
            reqwest::Method::POST,
            "/api/v1/sigfox/devices",
            Some(json!({ "device_id": "01A2B3C4", "nak": hex::encode(nak) })),
        )
        .await;
    assert_eq!(status, 201);
    for (seq, accepted, check) in [
        (0xFFE, true, None),
        (0xFFF, true, None),
        (0x000, true, None),
        (0xFFF, false, Some("seq_replay")),
    ] {
        let frame = encode_uplink(&nak, 0x01A2_B3C4, seq, Payload::Bit(seq % 2 == 0), false, 2).unwrap();
        let v = submit(&server, &hex::encode(frame)).await;
        assert_eq!(
            (v["accepted"].as_bool(), v["check"].as_str()),
            (Some(accepted), check),
            "{seq:#x}: {v}"
        );
    }
    // A simulated device (sim-devices): each message on air three times; the first copy counts,
    // the other two are duplicates.
    let mut device = sim_devices::sigfox::SigfoxDevice::new(0x01A2_B3C4, nak, 0x001);
    for message in [&b"t=21.5"[..], b"t=21.7", b""] {
        let [first, second, third] = device.send(message, false).unwrap();
        assert_eq!(submit(&server, &hex::encode(first)).await["accepted"], true);
        for copy in [second, third] {
            assert_eq!(submit(&server, &hex::encode(copy)).await["check"], "duplicate");
        }
    }
    let listed = server.running.registry.sigfox_uplinks("01A2B3C4", 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|u| u.seq_number).collect::<Vec<_>>(),
        [0x003, 0x002, 0x001, 0x000, 0xFFF, 0xFFE]
    );
    // A viewer token may list, not submit.
    let viewer = server
        .running
        .registry
        .create_token(registry::Role::Viewer, Some("sigfox viewer"), "test", 1)
        .await
        .unwrap();
    let r = http()
        .post(format!("http://{}/api/v1/sigfox/frames", server.running.http_addr))
        .bearer_auth(viewer.secret.as_str())
        .json(&json!({ "frame_hex": "00" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

/// A raw frame asking for a downlink (BF) takes the device's queued downlink: the verdict
/// carries the downlink frame, authenticated (DL-AUTH) under the NAK, which the simulated
/// device checks as the real one would; its other transmissions get the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downlinks_answer_frames_that_ask_for_one() {
    let server = common::start(&[]).await;
    let nak = [0x5Cu8; 16];
    let post = reqwest::Method::POST;
    let (status, _) = server
        .api(
            post.clone(),
            "/api/v1/sigfox/devices",
            Some(json!({ "device_id": "00ABCDEF", "nak": hex::encode(nak), "payload_encrypted": true })),
        )
        .await;
    assert_eq!(status, 201);
    let (status, queued) = server
        .api(
            post.clone(),
            "/api/v1/sigfox/devices/00ABCDEF/downlinks",
            Some(json!({ "data_hex": "cafe0000beef0001" })),
        )
        .await;
    assert_eq!((status, queued["status"].as_str()), (201, Some("queued")), "{queued}");
    let mut device = sim_devices::sigfox::SigfoxDevice::new(0x00AB_CDEF, nak, 0x7FE);
    // Not asking: the downlink waits.
    let [first, ..] = device.send(b"no", false).unwrap();
    let v = submit(&server, &hex::encode(first)).await;
    assert_eq!(
        (v["accepted"].as_bool(), v["downlink_frame_hex"].as_str()),
        (Some(true), None),
        "{v}"
    );
    // Asking: answered, in all three transmissions' verdicts.
    let frames = device.send(b"ask", true).unwrap();
    let mut answers = Vec::new();
    for frame in frames {
        let v = submit(&server, &hex::encode(frame)).await;
        assert_eq!(v["downlink_hex"], "CAFE0000BEEF0001", "{v}");
        answers.push(v["downlink_frame_hex"].as_str().unwrap().to_owned());
    }
    assert!(answers.iter().all(|a| *a == answers[0]));
    let frame = hex::decode(&answers[0]).unwrap();
    assert_eq!(frame.len(), 15);
    assert_eq!(
        device.receive_downlink(&frame).unwrap(),
        [0xCA, 0xFE, 0, 0, 0xBE, 0xEF, 0, 1]
    );
    // Sent once: the next request finds the queue empty.
    let [next, ..] = device.send(b"again", true).unwrap();
    let v = submit(&server, &hex::encode(next)).await;
    assert_eq!(
        (v["accepted"].as_bool(), v["downlink_frame_hex"].as_str()),
        (Some(true), None),
        "{v}"
    );
    let (_, listed) = server
        .api(reqwest::Method::GET, "/api/v1/sigfox/devices/00ABCDEF/downlinks", None)
        .await;
    assert_eq!(listed["items"][0]["status"], "sent", "{listed}");
    assert_eq!(server.running.stats.snapshot().sigfox_downlinks_sent, 1);
    let (_, uplinks) = server
        .api(reqwest::Method::GET, "/api/v1/sigfox/devices/00ABCDEF/uplinks", None)
        .await;
    assert!(
        uplinks["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["payload_encrypted"] == true),
        "{uplinks}"
    );
    assert_eq!(uplinks["items"][1]["downlink_hex"], "CAFE0000BEEF0001");
}
