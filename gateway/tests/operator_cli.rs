//! The operator CLI end to end: the real `fleetward` binary against a running server —
//! `token create` offline, then `ca`, `device` and `audit` through the HTTP API.
#![allow(clippy::unwrap_used)]

mod common;

use common::start;
use fleetward_test_support::{KeyKind, TestCa};
use sim_devices::client::TlsProfile;
use std::process::Output;

async fn fleetward(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_fleetward"))
            .args(&args)
            .env_remove("FLEETWARD_TOKEN")
            .env_remove("FLEETWARD_SERVER")
            .env_remove("FLEETWARD_DATABASE_URL")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_cli_against_a_running_server() {
    let server = start(&[]).await;
    let data = server.dir.path().to_str().unwrap().to_owned();
    let url = format!("http://{}", server.running.http_addr);

    // Offline token creation prints the token and nothing else.
    let o = fleetward(vec![
        "token".into(),
        "create".into(),
        "--role".into(),
        "admin".into(),
        "--data-dir".into(),
        data.clone(),
    ])
    .await;
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    assert_eq!(out.lines().count(), 1, "{out}");
    let token = out.trim().to_owned();
    assert!(token.starts_with("fw_"));
    let o = fleetward(vec![
        "token".into(),
        "create".into(),
        "--role".into(),
        "root".into(),
        "--data-dir".into(),
        data.clone(),
    ])
    .await;
    assert_eq!(o.status.code(), Some(2));

    let api = |args: &[&str]| {
        let mut v: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        v.extend(["--server".into(), url.clone(), "--token".into(), token.clone()]);
        fleetward(v)
    };

    // A CA registered with its key: the verification certificate is made locally.
    let root = TestCa::root(KeyKind::P256, "CLI Provisioning CA");
    let ca_pem = server.dir.path().join("cli-ca.pem");
    let key_pem = server.dir.path().join("cli-ca.key");
    std::fs::write(&ca_pem, root.pem()).unwrap();
    std::fs::write(&key_pem, root.key.serialize_pem()).unwrap();
    let o = api(&[
        "ca",
        "add",
        "--certificate",
        ca_pem.to_str().unwrap(),
        "--ca-key",
        key_pem.to_str().unwrap(),
    ])
    .await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("registered "), "{}", text(&o));
    // Again: the server says it is already there (exit 2, the API's message).
    let o = api(&[
        "ca",
        "add",
        "--certificate",
        ca_pem.to_str().unwrap(),
        "--ca-key",
        key_pem.to_str().unwrap(),
    ])
    .await;
    assert!(!o.status.success());
    assert!(text(&o).contains("409 conflict"), "{}", text(&o));
    let o = api(&["ca", "list"]).await;
    assert!(text(&o).contains("CLI Provisioning CA"), "{}", text(&o));
    let code = api(&["ca", "registration-code"]).await;
    assert_eq!(String::from_utf8_lossy(&code.stdout).trim().len(), 40);

    // A device onboards; the CLI lists, shows, quarantines it.
    let d = root.issue_device(KeyKind::P256, "cli-dev-1");
    let (_c, code) = server.connect(&d, "cli-dev-1", TlsProfile::Tls13).await.unwrap();
    assert_eq!(code, 0);
    let o = api(&["device", "list"]).await;
    assert!(
        text(&o).contains("cli-dev-1") && text(&o).contains("active"),
        "{}",
        text(&o)
    );
    let o = api(&["device", "list", "-o", "json", "--status", "active"]).await;
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["items"][0]["id"], "cli-dev-1");
    let o = api(&["device", "show", "cli-dev-1"]).await;
    assert!(text(&o).contains("device.registered"), "{}", text(&o));
    assert!(text(&o).contains("CN=CLI Provisioning CA"), "{}", text(&o));
    let o = api(&["device", "quarantine", "cli-dev-1", "--reason", "suspicious"]).await;
    assert!(text(&o).contains("cli-dev-1 is now quarantined"), "{}", text(&o));
    let o = api(&["device", "activate", "cli-dev-1"]).await;
    assert!(text(&o).contains("is now active"), "{}", text(&o));
    let o = api(&["audit"]).await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("fleet audit at"), "{}", text(&o));
    assert!(text(&o).contains("attestation_never_passed"), "{}", text(&o));

    // Firmware reference values, and an on-demand challenge to a device that is not connected.
    let digest = "ab".repeat(32);
    let o = api(&[
        "firmware",
        "add",
        "--name",
        "sensor-fw",
        "--version",
        "1.4.2",
        "--digest",
        &digest,
    ])
    .await;
    assert!(o.status.success(), "{}", text(&o));
    let o = api(&[
        "firmware",
        "add",
        "--name",
        "sensor-fw",
        "--version",
        "1.3.0",
        "--digest",
        &"cd".repeat(32),
        "--blocked",
    ])
    .await;
    assert!(o.status.success(), "{}", text(&o));
    let o = api(&["firmware", "list"]).await;
    assert!(
        text(&o).contains("1.3.0") && text(&o).contains("blocked") && text(&o).contains(&digest),
        "{}",
        text(&o)
    );
    let o = api(&["firmware", "add", "--name", "x", "--version", "1", "--digest", "nothex"]).await;
    assert!(!o.status.success() && text(&o).contains("400 invalid"), "{}", text(&o));
    let o = api(&["device", "list", "-o", "json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let device_id = json["items"][0]["id"].as_str().unwrap().to_owned();
    let o = api(&["device", "attest", &device_id]).await;
    assert!(
        !o.status.success() && text(&o).contains("409 device_offline"),
        "{}",
        text(&o)
    );

    // The CA's revocation through the CLI cascades.
    let o = api(&["ca", "list", "-o", "json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = json["items"][0]["id"].as_str().unwrap().to_owned();
    let o = api(&["ca", "revoke", &id, "--reason", "rotated"]).await;
    assert!(text(&o).contains("and 1 device(s) under it"), "{}", text(&o));

    // Errors say what to do next.
    let o = fleetward(vec!["device".into(), "list".into(), "--server".into(), url.clone()]).await;
    assert!(!o.status.success());
    assert!(
        text(&o).contains("401 unauthorized") && text(&o).contains("fleetward token create"),
        "{}",
        text(&o)
    );
    let o = fleetward(vec![
        "device".into(),
        "list".into(),
        "--server".into(),
        "http://127.0.0.1:9".into(),
        "--token".into(),
        token.clone(),
    ])
    .await;
    assert!(!o.status.success());
    assert!(text(&o).contains("is `fleetward serve` running there?"), "{}", text(&o));
    let o = api(&["device", "show", "ghost"]).await;
    assert!(text(&o).contains("404 not_found"), "{}", text(&o));
}

/// `fleetward health` (the container image's health check) and `fleetward config check`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probe_and_config_check() {
    let server = start(&[]).await;
    let url = format!("http://{}", server.running.http_addr);
    let o = fleetward(vec!["health".into(), "--url".into(), url.clone()]).await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("/healthz: ok"), "{}", text(&o));
    let o = fleetward(vec!["health".into(), "--ready".into(), "--url".into(), url]).await;
    assert!(o.status.success(), "{}", text(&o));
    // Nobody there: exit 1, and the message says what to check.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let o = fleetward(vec!["health".into(), "--url".into(), dead]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("is fleetward serving there?"), "{}", text(&o));

    let config_check = |file: &std::path::Path| {
        fleetward(vec![
            "config".into(),
            "check".into(),
            "--config".into(),
            file.display().to_string(),
        ])
    };
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "nats_url = \"nats://127.0.0.1:4222\"\n[mqtt]\ndrain_secs = 20\n").unwrap();
    let o = config_check(&good).await;
    assert!(o.status.success(), "{}", text(&o));
    // Every problem at once, by name.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "node_name = \"a b\"\n[mqtt]\nlisten = \"nowhere\"\ndrain_secs = 9999\n",
    )
    .unwrap();
    let o = config_check(&bad).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    for problem in ["node_name", "mqtt.listen", "mqtt.drain_secs"] {
        assert!(text(&o).contains(problem), "{problem}: {}", text(&o));
    }
    // An unknown key is named.
    std::fs::write(&bad, "[nats]\ntelemetry_bufer = 5\n").unwrap();
    let o = config_check(&bad).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("telemetry_bufer"), "{}", text(&o));
}
