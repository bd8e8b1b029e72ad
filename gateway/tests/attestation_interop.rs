//! Attestation against an independent implementation: `scripts/attestation/attester.py` builds
//! signed measurements and PSA tokens (RFC 9783 and legacy claim keys) with Python pycose +
//! cbor2, SE-style answers with pyca/cryptography, and speaks MQTT with paho-mqtt over mutual
//! TLS. Every verdict is checked: verified, tampered signature, wrong nonce, replayed nonce,
//! expired nonce, another device's nonce, unknown firmware digest, blocked version, debug
//! lifecycle, quarantine by policy and release on good evidence, on-demand challenges.
//! `.ci/run` installs the Python packages and sets FLEETWARD_REQUIRE_INTEROP=1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use common::{id_of, start_with};
use fleetward_test_support::TestCa;
use serde_json::{Value, json};
use sim_devices::client::TlsProfile;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

fn script() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/attestation/attester.py").to_owned()
}

fn available() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import pycose, cbor2, paho.mqtt, cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("FLEETWARD_REQUIRE_INTEROP").is_err(),
            "pycose/cbor2/paho-mqtt missing (pip install -r scripts/attestation/requirements.txt)"
        );
        eprintln!("skipping: pycose, cbor2 or paho-mqtt not installed");
    }
    ok
}

const GOOD: &str = "5e4d2f9c0b7a1e3d6c8b9a0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445";

async fn post(http: &reqwest::Client, base: &str, token: &str, path: &str, body: Value) -> (u16, Value) {
    let r = http
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pycose_tokens_and_paho_mqtt_are_appraised() {
    if !available() {
        return;
    }
    let ca = TestCa::stsafe_root("STM STSAFE-A TEST CA 01");
    let server = start_with(&[&ca], |c| {
        c.attestation.challenge_lifetime_secs = 5;
    })
    .await;
    let dir = server.dir.path();
    let token = server
        .running
        .initial_admin_token
        .as_ref()
        .expect("first start has a token")
        .as_str()
        .to_owned();
    let base = format!("http://{}", server.running.http_addr);
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let http = reqwest::Client::new();

    // Reference values: the good image (with its signer), a blocked version, the bootloader.
    let (status, good) = post(
        &http,
        &base,
        &token,
        "/api/v1/firmware",
        json!({"name": "sensor-fw", "version": "1.4.2", "digest_hex": GOOD, "signer_id_hex": "51".repeat(32), "status": "allowed"}),
    )
    .await;
    assert_eq!(status, 201, "{good}");
    assert_eq!(good["digest_hex"], GOOD);
    for body in [
        json!({"name": "sensor-fw", "version": "1.3.0", "digest_hex": "b0".repeat(32), "status": "blocked"}),
        json!({"name": "BL", "version": "0.2.0", "digest_hex": "b1".repeat(32), "status": "allowed"}),
    ] {
        assert_eq!(post(&http, &base, &token, "/api/v1/firmware", body).await.0, 201);
    }
    let (status, bad) = post(
        &http,
        &base,
        &token,
        "/api/v1/firmware",
        json!({"name": "x", "version": "1", "digest_hex": "zz"}),
    )
    .await;
    assert_eq!((status, bad["error"].as_str()), (400, Some("invalid")));
    let list: Value = http
        .get(format!("{base}/api/v1/firmware"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 3, "{list}");

    let a = ca.issue_stsafe_device("eval3", &[0x02, 0x09, 0xA7, 0x01]);
    let b = ca.issue_stsafe_device("eval3", &[0x02, 0x09, 0xA7, 0x02]);
    let (a_id, b_id) = (id_of(&a), id_of(&b));
    std::fs::write(dir.join("a.pem"), a.pem()).unwrap();
    std::fs::write(dir.join("a.key"), a.key.serialize_pem()).unwrap();
    // Device B onboards (its nonce is the "foreign" one later).
    let (client_b, code) = server.connect(&b, &b_id, TlsProfile::Tls13).await.unwrap();
    assert_eq!(code, 0);
    client_b.disconnect().await.unwrap();

    // --- MQTT: paho-mqtt over mutual TLS, challenge on subscribe, on demand, results. ---
    let mut child = tokio::process::Command::new("python3")
        .arg(script())
        .args(["--mode", "mqtt", "--device-id", &a_id, "--good-digest", GOOD])
        .arg("--key")
        .arg(dir.join("a.key"))
        .arg("--cert")
        .arg(dir.join("a.pem"))
        .arg("--server-ca")
        .arg(server.server_ca_path())
        .args(["--mqtt-port", &server.addr().port().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut mqtt = Value::Null;
    let run = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
            if v["ready_for_attest"] == true {
                let (status, sent) = post(
                    &http,
                    &base,
                    &token,
                    &format!("/api/v1/devices/{a_id}/attest"),
                    json!({}),
                )
                .await;
                assert_eq!(status, 202, "{sent}");
                assert_eq!(sent["topic"], format!("devices/{a_id}/attestation/challenge"));
                assert_eq!(sent["nonce"].as_str().unwrap().len(), 64);
            } else {
                mqtt = v;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("MQTT attester finished");
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(mqtt["challenge"]["nonce"].as_str().unwrap().len(), 64, "{mqtt}");
    assert_eq!(mqtt["first"]["result"], "verified", "{mqtt}");
    assert_eq!(mqtt["first"]["integrity"], "verified", "{mqtt}");
    assert_eq!(mqtt["first"]["firmware_version"], "1.4.2", "{mqtt}");
    assert_eq!(mqtt["replay"]["reason"], "replayed_nonce", "{mqtt}");
    assert_eq!(
        mqtt["replay"]["integrity"], "verified",
        "a replay says nothing about the device: {mqtt}"
    );
    assert_eq!(mqtt["garbage"]["reason"], "malformed_evidence", "{mqtt}");
    assert_eq!(mqtt["tampered"]["reason"], "firmware_unknown", "{mqtt}");
    assert_eq!(mqtt["tampered"]["claim"], "measurement_value", "{mqtt}");
    assert_eq!(mqtt["tampered"]["status"], "quarantined", "{mqtt}");
    let device = server.running.registry.device(&a_id).await.unwrap();
    assert_eq!(device.status.as_str(), "quarantined");
    // The device is shown running what it measured.
    assert_eq!(
        device.firmware_digest.as_deref(),
        Some(verifier_digest_hex(b"evil").as_str())
    );

    // --- HTTP: every evidence format and every refusal. ---
    let out = tokio::process::Command::new("python3")
        .arg(script())
        .args(["--mode", "http", "--device-id", &a_id, "--good-digest", GOOD])
        .arg("--key")
        .arg(dir.join("a.key"))
        .args(["--api", &base, "--token", &token, "--other-device", &b_id])
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let expect = |step: &str, result: &str, reason: Option<&str>, integrity: &str, status: &str| {
        let s = &r[step];
        assert_eq!(s["http"], 200, "{step}: {s}");
        assert_eq!(s["device_id"], a_id.as_str(), "{step}: {s}");
        assert_eq!(s["result"], result, "{step}: {s}");
        assert_eq!(s["reason"].as_str(), reason, "{step}: {s}");
        assert_eq!(s["integrity"], integrity, "{step}: {s}");
        assert_eq!(s["status"], status, "{step}: {s}");
    };
    // Quarantined by the MQTT step; released by the first good measurement.
    expect("measurement_good", "verified", None, "verified", "active");
    expect(
        "measurement_replayed",
        "failed",
        Some("replayed_nonce"),
        "verified",
        "active",
    );
    expect(
        "measurement_tampered_signature",
        "failed",
        Some("bad_signature"),
        "failed",
        "quarantined",
    );
    expect(
        "measurement_wrong_nonce",
        "failed",
        Some("nonce_mismatch"),
        "failed",
        "quarantined",
    );
    expect(
        "measurement_unknown_firmware",
        "failed",
        Some("firmware_unknown"),
        "failed",
        "quarantined",
    );
    expect("measurement_recovers", "verified", None, "verified", "active");
    expect(
        "measurement_blocked_version",
        "failed",
        Some("firmware_blocked"),
        "failed",
        "quarantined",
    );
    expect("psa_current_good", "verified", None, "verified", "active");
    assert_eq!(r["psa_current_good"]["firmware_version"], "1.4.2");
    expect("psa_legacy_good", "verified", None, "verified", "active");
    expect(
        "psa_debug_lifecycle",
        "failed",
        Some("lifecycle_not_allowed"),
        "failed",
        "quarantined",
    );
    assert_eq!(r["psa_debug_lifecycle"]["claim"], "security_lifecycle");
    expect(
        "psa_legacy_wrong_nonce",
        "failed",
        Some("nonce_mismatch"),
        "failed",
        "quarantined",
    );
    // Key possession is proven, but it does not clear a failed firmware verdict.
    expect("se_signature_raw", "verified", None, "failed", "quarantined");
    expect("se_signature_der", "verified", None, "failed", "quarantined");
    expect(
        "se_signature_tampered",
        "failed",
        Some("bad_signature"),
        "failed",
        "quarantined",
    );
    expect("foreign_nonce", "failed", Some("wrong_device"), "failed", "quarantined");
    expect(
        "measurement_expired",
        "failed",
        Some("expired_nonce"),
        "failed",
        "quarantined",
    );
    assert_eq!(r["bad_format"]["http"], 400, "{}", r["bad_format"]);
    assert_eq!(r["bad_format"]["error"], "unknown_format");

    // The trail: every answer is an event; the device's history is served.
    let history: Value = http
        .get(format!("{base}/api/v1/devices/{a_id}/attestation"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["integrity"], "failed", "{history}");
    assert!(history["items"].as_array().unwrap().len() >= 20, "{history}");
    assert!(server.count_events("attestation.failed").await >= 12);
    assert!(server.count_events("attestation.verified").await >= 6);
    server.running.shutdown().await;
}

fn verifier_digest_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
