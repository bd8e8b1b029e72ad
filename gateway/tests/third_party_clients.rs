//! Real third-party MQTT clients against the endpoint: Debian's `mosquitto_pub`/`mosquitto_sub`
//! (OpenSSL TLS with a client certificate; MQTT 3.1.1 and 5), and `openssl s_client -reconnect`
//! offering its sessions back. `.ci/run` installs them and sets FLEETWARD_REQUIRE_INTEROP=1, so in
//! CI a missing client fails instead of skipping.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use common::{id_of, start};
use fleetward_test_support::TestCa;
use registry::Role;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn available() -> bool {
    let found = Command::new("mosquitto_pub").arg("--help").output().is_ok();
    if !found {
        assert!(
            std::env::var("FLEETWARD_REQUIRE_INTEROP").is_err(),
            "mosquitto_pub not installed (apt-get install mosquitto-clients)"
        );
        eprintln!("skipping: mosquitto-clients not installed");
    }
    found
}

async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.stdin(Stdio::null()).output().unwrap())
        .await
        .unwrap()
}

fn tls_args(cmd: &mut Command, port: u16, ca: &Path) {
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "--cafile"])
        .arg(ca);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_publish_with_a_client_certificate_and_subscribe_with_a_token() {
    if !available() {
        return;
    }
    let ca = TestCa::stsafe_root("STM STSAFE-A TEST CA 01");
    let server = start(&[&ca]).await;
    let dir = server.dir.path();
    let device = ca.issue_stsafe_device("eval3", &[0x02, 0x09, 0x12, 0x34]);
    let id = id_of(&device);
    std::fs::write(dir.join("dev.pem"), device.pem()).unwrap();
    std::fs::write(dir.join("dev.key"), device.key.serialize_pem()).unwrap();
    let token = server
        .running
        .registry
        .create_token(Role::Operator, None, "test", 1)
        .await
        .unwrap();
    let port = server.addr().port();
    let server_ca = server.server_ca_path();

    // A backend application: mosquitto_sub, MQTT 5, API token, wildcard, no client certificate.
    let mut sub = Command::new("mosquitto_sub");
    tls_args(&mut sub, port, &server_ca);
    sub.args(["-V", "mqttv5", "-u", "token", "-P", &token.secret, "-i", "ops-sub"])
        .args(["-t", "devices/+/telemetry", "-q", "1", "-C", "3", "-W", "20", "-v"]);
    let sub = tokio::task::spawn_blocking(move || sub.stdin(Stdio::null()).output().unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;

    // The device: mosquitto_pub over TLS 1.2 with the STM32 cipher suite, QoS 1, MQTT 3.1.1 …
    let publish = |version: &str, tls: &[&str], message: &str| {
        let mut cmd = Command::new("mosquitto_pub");
        tls_args(&mut cmd, port, &server_ca);
        cmd.arg("--cert")
            .arg(dir.join("dev.pem"))
            .arg("--key")
            .arg(dir.join("dev.key"));
        cmd.args(tls)
            .args(["-V", version, "-i", &id, "-t", &format!("devices/{id}/telemetry")]);
        cmd.args(["-q", "1", "-m", message]);
        cmd
    };
    let out = run(publish(
        "mqttv311",
        &["--tls-version", "tlsv1.2", "--ciphers", "ECDHE-ECDSA-AES128-GCM-SHA256"],
        "one",
    ))
    .await;
    assert!(
        out.status.success(),
        "mosquitto_pub (3.1.1, TLS 1.2): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // … and MQTT 5 over TLS 1.3.
    let out = run(publish("mqttv5", &["--tls-version", "tlsv1.3"], "two")).await;
    assert!(
        out.status.success(),
        "mosquitto_pub (5, TLS 1.3): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(publish("mqttv5", &[], "three")).await;
    assert!(out.status.success());

    let sub = sub.await.unwrap();
    let got = String::from_utf8_lossy(&sub.stdout);
    assert!(
        sub.status.success(),
        "mosquitto_sub: {got} {}",
        String::from_utf8_lossy(&sub.stderr)
    );
    let topic = format!("devices/{id}/telemetry");
    assert_eq!(
        got.lines().collect::<Vec<_>>(),
        vec![format!("{topic} one"), format!("{topic} two"), format!("{topic} three")]
    );
    let stored = server.running.registry.telemetry(&id, 0, i64::MAX, 10).await.unwrap();
    assert_eq!(stored.len(), 3);

    // A wrong client id is refused with "identifier rejected".
    let mut wrong = Command::new("mosquitto_pub");
    tls_args(&mut wrong, port, &server_ca);
    wrong
        .arg("--cert")
        .arg(dir.join("dev.pem"))
        .arg("--key")
        .arg(dir.join("dev.key"));
    wrong.args(["-V", "mqttv311", "-i", "not-me", "-t", &topic, "-q", "1", "-m", "x"]);
    let out = run(wrong).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("identifier rejected"), "{err}");

    // A certificate from another CA fails in the handshake.
    let foreign = TestCa::stsafe_root("Counterfeit CA");
    let fake = foreign.issue_stsafe_device("eval3", &[0x01]);
    std::fs::write(dir.join("fake.pem"), fake.pem()).unwrap();
    std::fs::write(dir.join("fake.key"), fake.key.serialize_pem()).unwrap();
    let mut counterfeit = Command::new("mosquitto_pub");
    tls_args(&mut counterfeit, port, &server_ca);
    counterfeit
        .arg("--cert")
        .arg(dir.join("fake.pem"))
        .arg("--key")
        .arg(dir.join("fake.key"));
    counterfeit.args([
        "-V",
        "mqttv311",
        "-i",
        &id_of(&fake),
        "-t",
        "devices/x/telemetry",
        "-q",
        "1",
        "-m",
        "x",
    ]);
    let out = run(counterfeit).await;
    assert!(!out.status.success(), "a counterfeit device got in");
    server.running.shutdown().await;
}

/// OpenSSL's `s_client -reconnect` (a first connection, then five that offer its session) finds
/// nothing to resume: every connection, TLS 1.2 and 1.3, is a full handshake with the device's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_reconnects_are_full_handshakes_never_resumed_sessions() {
    if Command::new("openssl").arg("version").output().is_err() {
        assert!(
            std::env::var("FLEETWARD_REQUIRE_INTEROP").is_err(),
            "openssl not installed (apt-get install openssl)"
        );
        eprintln!("skipping: openssl not installed");
        return;
    }
    let ca = TestCa::stsafe_root("STM STSAFE-A TEST CA 01");
    let server = start(&[&ca]).await;
    let dir = server.dir.path();
    let device = ca.issue_stsafe_device("eval3", &[0x02, 0x09, 0x56, 0x78]);
    std::fs::write(dir.join("dev.pem"), device.pem()).unwrap();
    std::fs::write(dir.join("dev.key"), device.key.serialize_pem()).unwrap();
    for version in ["-tls1_2", "-tls1_3"] {
        let mut cmd = Command::new("openssl");
        cmd.args([
            "s_client",
            "-connect",
            &server.addr().to_string(),
            "-servername",
            "localhost",
        ])
        .arg("-CAfile")
        .arg(server.server_ca_path())
        .arg("-cert")
        .arg(dir.join("dev.pem"))
        .arg("-key")
        .arg(dir.join("dev.key"))
        .args([version, "-reconnect", "-verify_return_error"]);
        let out = run(cmd).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let new = stdout.lines().filter(|l| l.starts_with("New, TLS")).count();
        let reused = stdout.lines().filter(|l| l.starts_with("Reused, TLS")).count();
        assert_eq!(
            (new, reused),
            (6, 0),
            "{version}: six full handshakes, none resumed\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    server.running.shutdown().await;
}
