//! A device on Mbed TLS 2.28 (the C library STM32 firmware ships, through python-mbedtls):
//! TLS 1.2, ECDHE-ECDSA-AES128-GCM-SHA256, P-256 client certificate in the STSAFE profile, SNI,
//! a small `max_fragment_size` on the server; then MQTT CONNECT, QoS 1 PUBLISH, DISCONNECT.
//! (Refusals are checked with the rustls and mosquitto clients: python-mbedtls raises on a
//! close_notify that follows a refusal CONNACK before returning the CONNACK.)
//! `.ci/run` installs python-mbedtls and sets FLEETWARD_REQUIRE_INTEROP=1.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use common::{id_of, start_with};
use fleetward_test_support::TestCa;
use std::process::Command;

fn script() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/interop/mbedtls_device.py").to_owned()
}

fn available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import mbedtls"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("FLEETWARD_REQUIRE_INTEROP").is_err(),
            "python-mbedtls missing (pip install -r scripts/interop/requirements.txt)"
        );
        eprintln!("skipping: python-mbedtls not installed");
    }
    ok
}

async fn run_device(
    port: u16,
    server_ca: &std::path::Path,
    dir: &std::path::Path,
    id: &str,
    topic: &str,
) -> serde_json::Value {
    let mut cmd = Command::new("python3");
    cmd.arg(script())
        .args(["--port", &port.to_string(), "--server-ca"])
        .arg(server_ca)
        .arg("--cert")
        .arg(dir.join("dev.pem"))
        .arg("--key")
        .arg(dir.join("dev.key"))
        .args(["--client-id", id, "--topic", topic]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|_| panic!("{text} {}", String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mbedtls_tls12_device_onboards_and_publishes_at_qos1() {
    if !available() {
        return;
    }
    let ca = TestCa::stsafe_root("STM STSAFE-A TEST CA 01");
    let server = start_with(&[&ca], |c| c.tls.max_fragment_size = Some(1024)).await;
    let dir = server.dir.path();
    let device = ca.issue_stsafe_device("eval3", &[0x02, 0x09, 0xAB, 0xCD]);
    let id = id_of(&device);
    std::fs::write(dir.join("dev.pem"), device.pem()).unwrap();
    std::fs::write(dir.join("dev.key"), device.key.serialize_pem()).unwrap();
    let topic = format!("devices/{id}/telemetry");

    let r = run_device(server.addr().port(), &server.server_ca_path(), dir, &id, &topic).await;
    assert_eq!(r["error"], serde_json::Value::Null, "{r}");
    assert_eq!(r["connack"], 0, "{r}");
    assert_eq!(r["puback"], true, "{r}");
    assert!(
        r["cipher"]
            .as_str()
            .unwrap()
            .contains("ECDHE-ECDSA-WITH-AES-128-GCM-SHA256"),
        "{r}"
    );
    let record = server.running.registry.device(&id).await.unwrap();
    assert_eq!(record.tls_version.as_deref(), Some("TLSv1_2"));
    let stored = server.running.registry.telemetry(&id, 0, i64::MAX, 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].payload, b"hello from mbedtls");

    server.running.shutdown().await;
}
