//! Sigfox backend callbacks (`POST /sigfox/callback`) end to end on a real server, as the
//! Sigfox cloud sends them (JSON from a device type's custom template, or a form): the shared
//! secret and the source address decide who may call, garbage is refused by name, the
//! backend's retries and other base stations' copies are stored once, the 12-bit sequence
//! number rolls over and replays are refused with an event, and queued downlinks are answered
//! `{"<device>": {"downlinkData": …}}` to the callback that asks for one (and again to its
//! retries).
#![allow(clippy::unwrap_used)]

mod common;

use common::{Server, check_of};
use serde_json::{Value, json};
use std::time::Duration;

const SECRET: &str = "callback-secret-for-tests-0123456789";
const OLD_SECRET: &str = "the-previous-secret-still-accepted";
const HEADER: &str = "x-callback-secret";

fn http() -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A server whose callback secrets are ours (two: a rotation in progress).
async fn start(tweak: impl FnOnce(&mut gateway::Config)) -> (Server, tempfile::TempDir) {
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("sigfox-callback.secret");
    std::fs::write(&file, format!("# rotation: both accepted\n{SECRET}\n\n{OLD_SECRET}\n")).unwrap();
    let server = common::start_with(&[], |c| {
        c.sigfox.callback_secret_file = Some(file);
        tweak(c);
    })
    .await;
    (server, secrets)
}

fn url(server: &Server) -> String {
    format!("http://{}/sigfox/callback", server.running.http_addr)
}

/// POSTs a JSON callback with `secret`; the status and the body (JSON, or null when empty).
async fn post_json(server: &Server, secret: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = http().post(url(server)).json(body);
    if let Some(secret) = secret {
        req = req.header(HEADER, secret);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post_raw(server: &Server, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let r = http()
        .post(url(server))
        .header(HEADER, SECRET)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A data callback as a device type's custom JSON template writes it.
fn message(device: &str, seq: u16, time: i64, data: &str, ack: bool) -> Value {
    json!({ "device": device, "time": time, "data": data, "seqNumber": seq, "ack": ack,
        "duplicate": false, "snr": "18.37", "rssi": "-121.00", "station": "1E7A", "avgSnr": 30.2,
        "deviceTypeId": "5f2a0c6b8e2a4b0001c0ffee" })
}

async fn uplinks(server: &Server, device: &str) -> Vec<Value> {
    let (status, body) = server
        .api(
            reqwest::Method::GET,
            &format!("/api/v1/sigfox/devices/{device}/uplinks"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_are_authenticated_deduplicated_and_in_sequence() {
    let (server, _secrets) = start(|_| {}).await;
    let t0 = 1_764_590_000;

    // Who may call: the secret, in the header, exactly (either of the two).
    let first = message("4D33DB", 4094, t0, "0102", false);
    let (status, body) = post_json(&server, None, &first).await;
    assert_eq!(
        (status, body["check"].as_str()),
        (401, Some("secret_missing")),
        "{body}"
    );
    for wrong in [
        "callback-secret-for-tests-012345678",
        "callback-secret-for-tests-01234567899",
        "",
        "x",
    ] {
        let (status, body) = post_json(&server, Some(wrong), &first).await;
        assert_eq!(
            (status, body["check"].as_str()),
            (401, Some("secret_mismatch")),
            "{wrong}: {body}"
        );
    }
    assert!(
        server
            .running
            .registry
            .sigfox_devices(None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Garbage: 400, naming the check; nothing stored.
    let garbage: Vec<(&str, Vec<u8>, &str)> = vec![
        ("application/json", b"{not json".to_vec(), "not_json"),
        ("application/json", b"[1,2,3]".to_vec(), "not_json"),
        (
            "application/json",
            br#"{"device":"4D33DB","time":1,"data":"00"}"#.to_vec(),
            "missing_field",
        ),
        (
            "application/json",
            br#"{"device":"4D33DB","time":1,"data":"00","seqNumber":4096}"#.to_vec(),
            "invalid_field",
        ),
        (
            "application/json",
            br#"{"device":"4D33DB","time":1,"data":"0g","seqNumber":1}"#.to_vec(),
            "invalid_field",
        ),
        (
            "application/json",
            br#"{"device":"NOTHEX","time":1,"data":"00","seqNumber":1}"#.to_vec(),
            "invalid_field",
        ),
        (
            "application/x-www-form-urlencoded",
            b"device=4D33DB&device=1&time=1&data=00&seqNumber=1".to_vec(),
            "repeated_field",
        ),
        ("application/json", vec![b' '; 20_000], "body_too_large"),
    ];
    for (content_type, body, check) in garbage {
        let (status, answer) = post_raw(&server, content_type, body).await;
        assert_eq!((status, answer["check"].as_str()), (400, Some(check)), "{answer}");
    }
    assert!(
        server
            .running
            .registry
            .sigfox_devices(None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // The first callback of a device not known yet registers it (no NAK: the Sigfox cloud
    // verified the message); its short id is padded to 8 digits.
    let (status, body) = post_json(&server, Some(SECRET), &first).await;
    assert_eq!((status, &body), (204, &Value::Null));
    let (_, device) = server
        .api(reqwest::Method::GET, "/api/v1/sigfox/devices/004D33DB", None)
        .await;
    assert_eq!(
        (
            device["registered_via"].as_str(),
            device["has_nak"].as_bool(),
            device["last_seq_number"].as_i64()
        ),
        (Some("callback"), Some(false), Some(4094)),
        "{device}"
    );
    server
        .wait_event("sigfox.device_added", |e| e.device_id.as_deref() == Some("004D33DB"))
        .await;

    // The backend's retries (after 1, 2, 4 minutes), another base station's copy, and a burst of
    // racing retries: all answered 2xx, one message stored.
    let (status, _) = post_json(&server, Some(OLD_SECRET), &first).await;
    assert_eq!(status, 204);
    let mut copy = first.clone();
    copy["duplicate"] = json!(true);
    copy["station"] = json!("2F01");
    assert_eq!(post_json(&server, Some(SECRET), &copy).await.0, 204);
    let racing = message("4D33DB", 4095, t0 + 600, "0a0b0c", false);
    let answers = futures_util::future::join_all((0..8).map(|_| post_json(&server, Some(SECRET), &racing))).await;
    assert!(answers.iter().all(|(s, _)| *s == 204), "{answers:?}");
    let stored = uplinks(&server, "004D33DB").await;
    assert_eq!(
        stored
            .iter()
            .map(|u| u["seq_number"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [4095, 4094]
    );
    assert_eq!(stored[1]["payload_hex"], "0102");
    assert_eq!(stored[1]["source"], "callback");
    assert_eq!(stored[1]["detail"]["station"], "1E7A", "the first copy's metadata");
    assert_eq!(stored[1]["time"], "2025-12-01T11:53:20.000Z");

    // Across the rollover, as a form (a device type's POST form callback).
    let form = format!(
        "device=004D33DB&time={}&data=cafe&seqNumber=0&ack=false&station=1E7A&rssi=-119.5",
        t0 + 1200
    );
    let (status, body) = post_raw(&server, "application/x-www-form-urlencoded", form.into_bytes()).await;
    assert_eq!(status, 204, "{body}");

    // A replay: a number already passed, with another time. Refused, with an event.
    let replay = message("4D33DB", 4095, t0 + 1300, "0a0b0c", false);
    let (status, body) = post_json(&server, Some(SECRET), &replay).await;
    assert_eq!((status, body["check"].as_str()), (409, Some("seq_replay")), "{body}");
    let event = server
        .wait_event("sigfox.callback_rejected", |e| {
            check_of(e).as_deref() == Some("seq_replay")
        })
        .await;
    assert_eq!(event.device_id.as_deref(), Some("004D33DB"));
    // …while a late retry of a stored message is still answered as the first time.
    assert_eq!(post_json(&server, Some(SECRET), &first).await.0, 204);

    // A gap: messages 1 to 4 never arrived.
    assert_eq!(
        post_json(&server, Some(SECRET), &message("004D33DB", 5, t0 + 1800, "", false))
            .await
            .0,
        204
    );
    let gap = server.wait_event("sigfox.sequence_gap", |_| true).await;
    assert_eq!(gap.detail.as_ref().unwrap()["lost"], 4);

    // Downlinks: queued through the API, answered to the first callback asking for one (ack),
    // again to its retries, and to no other.
    let (status, queued) = server
        .api(
            reqwest::Method::POST,
            "/api/v1/sigfox/devices/004D33DB/downlinks",
            Some(json!({ "data_hex": "0102030405060708" })),
        )
        .await;
    assert_eq!((status, queued["status"].as_str()), (201, Some("queued")), "{queued}");
    for bad in ["01020304", "zz02030405060708", ""] {
        let (status, _) = server
            .api(
                reqwest::Method::POST,
                "/api/v1/sigfox/devices/004D33DB/downlinks",
                Some(json!({ "data_hex": bad })),
            )
            .await;
        assert_eq!(status, 400, "{bad}");
    }
    let no_ack = message("4D33DB", 6, t0 + 2400, "01", false);
    assert_eq!(
        post_json(&server, Some(SECRET), &no_ack).await.0,
        204,
        "not asked: kept queued"
    );
    let asking = message("4D33DB", 7, t0 + 3000, "02", true);
    let expected = json!({ "4D33DB": { "downlinkData": "0102030405060708" } });
    assert_eq!(post_json(&server, Some(SECRET), &asking).await, (200, expected.clone()));
    assert_eq!(
        post_json(&server, Some(SECRET), &asking).await,
        (200, expected),
        "a retry gets the same answer"
    );
    let again = message("4D33DB", 8, t0 + 3600, "03", true);
    assert_eq!(
        post_json(&server, Some(SECRET), &again).await.0,
        204,
        "the queue is empty"
    );
    let (_, listed) = server
        .api(reqwest::Method::GET, "/api/v1/sigfox/devices/004D33DB/downlinks", None)
        .await;
    assert_eq!(listed["items"][0]["status"], "sent", "{listed}");
    let stored = uplinks(&server, "004D33DB").await;
    assert_eq!(stored[1]["seq_number"], 7);
    assert_eq!(stored[1]["downlink_hex"], "0102030405060708");
    assert_eq!(stored.len(), 7);

    // A callback-only device's raw frames cannot be verified: there is no NAK.
    let frame = verifier::sigfox::encode_uplink(
        &[0; 16],
        0x004D_33DB,
        9,
        verifier::sigfox::Payload::Bytes(b"x"),
        false,
        0,
    )
    .unwrap();
    let (_, verdict) = server
        .api(
            reqwest::Method::POST,
            "/api/v1/sigfox/frames",
            Some(json!({ "frame_hex": hex::encode(frame) })),
        )
        .await;
    assert_eq!(verdict["check"], "no_nak", "{verdict}");

    // Published as telemetry, counted.
    let telemetry = server.running.registry.telemetry_after(0, 100).await.unwrap();
    assert_eq!(
        telemetry
            .iter()
            .filter(|m| m.topic == "devices/004D33DB/telemetry")
            .count(),
        7
    );
    let stats = server.running.stats.snapshot();
    assert_eq!(stats.sigfox_callbacks_accepted, 7);
    assert_eq!(stats.sigfox_callbacks_duplicate, 11);
    assert_eq!(stats.sigfox_callbacks_rejected, 1 + 4 + 8 + 1);
    assert_eq!(stats.sigfox_downlinks_sent, 1);
    assert_eq!(stats.sigfox_messages_lost, 4);
    for check in ["secret_missing", "secret_mismatch", "not_json", "body_too_large"] {
        server
            .wait_event("sigfox.callback_rejected", |e| check_of(e).as_deref() == Some(check))
            .await;
    }
    // On the dashboard's overview: the refusals chart counts them (the event writer is
    // asynchronous, so it is polled, bounded).
    let mut refused = 0;
    for _ in 0..100 {
        let (_, summary) = server.api(reqwest::Method::GET, "/api/v1/fleet/summary", None).await;
        refused = summary["sigfox_refusals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["count"].as_i64().unwrap())
            .sum::<i64>();
        if refused == 15 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(refused, 14 + 1, "the callbacks and the no_nak frame");
    // No secret in the trail.
    let trail = serde_json::to_string(
        &server
            .running
            .registry
            .events(&Default::default(), 10_000)
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(!trail.contains(SECRET) && !trail.contains("callback-secret-for-tests"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_addresses_and_unknown_devices_can_be_refused() {
    let (server, _secrets) = start(|c| {
        c.sigfox.callback_allow = vec!["127.0.0.2/32".into(), "10.0.0.0/8".into()];
        c.sigfox.unknown_devices = gateway::config::UnknownSigfoxDevices::Refuse;
    })
    .await;
    let body = message("00C0FFEE", 1, 1_764_590_000, "00", false);
    // From 127.0.0.1: not allowed, even with the secret.
    let (status, answer) = post_json(&server, Some(SECRET), &body).await;
    assert_eq!(
        (status, answer["check"].as_str()),
        (403, Some("source_not_allowed")),
        "{answer}"
    );
    // From 127.0.0.2: allowed; the device is unknown and unknown devices are refused.
    let from_allowed = reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let send = || async {
        let r = from_allowed
            .post(url(&server))
            .header(HEADER, SECRET)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
    };
    let (status, answer) = send().await;
    assert_eq!(
        (status, answer["check"].as_str()),
        (404, Some("unknown_device")),
        "{answer}"
    );
    // Provisioned through the API (without a NAK): accepted.
    let (status, _) = server
        .api(
            reqwest::Method::POST,
            "/api/v1/sigfox/devices",
            Some(json!({ "device_id": "00C0FFEE" })),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(send().await.0, 204);
    server
        .wait_event("sigfox.callback_rejected", |e| {
            check_of(e).as_deref() == Some("source_not_allowed")
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_is_generated_when_none_is_configured() {
    let server = common::start(&[]).await;
    let file = server.running.data_dir.join("sigfox-callback.secret");
    let secret = std::fs::read_to_string(&file).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let body = message("01020304", 1, 1_764_590_000, "00", false);
    assert_eq!(post_json(&server, Some(secret.trim()), &body).await.0, 204);
    assert_eq!(post_json(&server, Some("a-guess-of-the-secret"), &body).await.0, 401);
    // A simulated device through the simulated Sigfox cloud, across the rollover.
    let mut device = sim_devices::sigfox::SigfoxDevice::new(0x0102_0305, [9; 16], 0xFFE);
    for (i, payload) in [&b"a"[..], b"bc", b""].into_iter().enumerate() {
        let body = device
            .send_via_backend(payload, false, 1_764_590_000 + 600 * i as i64)
            .unwrap();
        assert_eq!(post_json(&server, Some(secret.trim()), &body).await.0, 204);
    }
    let listed = server.running.registry.sigfox_uplinks("01020305", 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|u| u.seq_number).collect::<Vec<_>>(),
        [0, 0xFFF, 0xFFE]
    );
}

/// With `[http] tls`, callbacks (and the API) are served over HTTPS with the server certificate:
/// a client trusting the server CA gets through; plain HTTP gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_over_https() {
    let (server, _secrets) = start(|c| c.http.tls = true).await;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let ca = std::fs::read(server.server_ca_path()).unwrap();
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let port = server.running.http_addr.port();
    let r = https
        .post(format!("https://localhost:{port}/sigfox/callback"))
        .header(HEADER, SECRET)
        .json(&message("00C0FFEE", 1, 1_764_590_000, "00", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = https
        .post(format!("https://localhost:{port}/sigfox/callback"))
        .json(&message("00C0FFEE", 2, 1_764_590_600, "00", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        http()
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_err(),
        "plain HTTP is not served"
    );
}

/// Telemetry from MQTT devices and from Sigfox callbacks, stored at the same time by different
/// writers, reaches a subscribed backend application once each. A backend session's cursor is
/// the highest stored id it has seen, so a message fanned out after a later id would be skipped
/// live: every writer commits and fans out under the hub's store turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_stored_concurrently_by_mqtt_and_sigfox_reaches_a_backend_once_each() {
    telemetry_from_concurrent_writers_reaches_a_backend_once_each(None).await;
}

/// The same on PostgreSQL, where ids come from a sequence at insert time and commits of
/// concurrent writers can land in any order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_stored_concurrently_reaches_a_backend_once_each_on_postgresql_too() {
    let db = common::process::Database::create("fw_gw_order").await;
    telemetry_from_concurrent_writers_reaches_a_backend_once_each(Some(db.url.clone())).await;
    db.drop_now().await;
}

async fn telemetry_from_concurrent_writers_reaches_a_backend_once_each(database_url: Option<String>) {
    use sim_devices::client::{Client, ConnectOptions, ServerPacket, TlsProfile};
    const DEVICES: usize = 4;
    const PER_DEVICE: usize = 100;
    const SIGFOX_DEVICES: u16 = 8;
    const PER_SIGFOX: u16 = 30;
    let expected = DEVICES * PER_DEVICE + usize::from(SIGFOX_DEVICES * PER_SIGFOX);

    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("sigfox-callback.secret");
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    let ca = fleetward_test_support::TestCa::stsafe_root("STM STSAFE-A TEST CA 01");
    let server = std::sync::Arc::new(
        common::start_with(&[&ca], |c| {
            c.sigfox.callback_secret_file = Some(file);
            c.database_url = database_url;
        })
        .await,
    );
    let token = server
        .running
        .registry
        .create_token(registry::Role::Operator, Some("app"), "test", 1)
        .await
        .unwrap();
    let mut app = Client::connect(server.addr(), &server.tls(None, TlsProfile::Tls13))
        .await
        .unwrap();
    let login = ConnectOptions {
        username: Some("token".into()),
        password: Some(token.secret.to_string()),
        ..common::options("ops-app")
    };
    assert_eq!(app.mqtt_connect(&login).await.unwrap().1, 0);
    assert_eq!(app.subscribe(&[("devices/+/telemetry", 1)]).await.unwrap(), vec![1]);

    let mut writers = tokio::task::JoinSet::new();
    for d in 0..DEVICES {
        let device = ca.issue_stsafe_device("order", &[0x70, d as u8]);
        let server = server.clone();
        writers.spawn(async move {
            let id = common::id_of(&device);
            let (mut c, code) = server.connect(&device, &id, TlsProfile::Stm32Tls12).await.unwrap();
            assert_eq!(code, 0);
            for i in 0..PER_DEVICE {
                c.publish(
                    &format!("devices/{id}/telemetry"),
                    format!("mqtt-{d}-{i}").as_bytes(),
                    1,
                )
                .await
                .unwrap();
            }
        });
    }
    for s in 0..SIGFOX_DEVICES {
        let server = server.clone();
        writers.spawn(async move {
            for seq in 1..=PER_SIGFOX {
                let body = message(
                    &format!("5A{s:04X}"),
                    seq,
                    1_764_590_000 + i64::from(seq),
                    &format!("{s:02x}{seq:04x}"),
                    false,
                );
                assert_eq!(post_json(&server, Some(SECRET), &body).await.0, 204);
            }
        });
    }

    // The application reads (and acknowledges) while the writers write.
    let mut got = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < expected && tokio::time::Instant::now() < deadline {
        match app.recv(Duration::from_secs(10)).await {
            Ok(ServerPacket::Publish {
                topic,
                payload,
                qos,
                pkid,
            }) => {
                if qos == 1 {
                    app.puback(pkid).await.unwrap();
                }
                *got.entry((topic, payload.to_vec())).or_insert(0u32) += 1;
            }
            Ok(_) => {}
            Err(e) => panic!(
                "the application stopped receiving after {} of {expected}: {e}",
                got.len()
            ),
        }
    }
    writers.join_all().await;
    let stored = server.running.registry.telemetry_after(0, 10_000).await.unwrap().len();
    assert_eq!(stored, expected, "every message stored once");
    assert_eq!(got.len(), expected, "every stored message reached the application");
    assert!(got.values().all(|n| *n == 1), "none twice");
    assert_eq!(
        server
            .running
            .stats
            .fan_out_out_of_order
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "stored messages were fanned out in id order"
    );
    match std::sync::Arc::try_unwrap(server) {
        Ok(server) => server.running.shutdown().await,
        Err(_) => panic!("the writers still hold the server"),
    }
}
