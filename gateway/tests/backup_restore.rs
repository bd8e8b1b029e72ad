//! The backup and restore procedures of `docs/operations.md`, run as written against a running
//! `fleetward serve`: SQLite's online backup (`sqlite3 DB ".backup FILE"`) and PostgreSQL's
//! `pg_dump -Fc` / `pg_restore`. A server started on the restored database (same data directory,
//! so the same KEK and server certificate) has every device, `device.registered` event and
//! acknowledged message committed before the backup, nothing written after it, and the admin
//! token still works; the devices reconnect as known devices, and a Sigfox device's sealed key
//! opens with the KEK (its next frame verifies, a replay of its last one does not).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    clippy::disallowed_methods
)]

mod common;

use common::id_of;
use common::process::{Database, ServeProcess, device_tls as tls, get_all, scalar, serve_trusting, server_ca_der};
use fleetward_test_support::{TestCa, TestDevice};
use sim_devices::client::{Client, ConnectOptions};
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

/// Devices onboarded (each with acknowledged messages) before the backup.
const BEFORE: usize = 12;
/// Devices onboarded after the backup: the restore must not know them.
const AFTER: usize = 4;
const MESSAGES: usize = 3;

/// Connects `device`, publishes `messages` QoS 1 messages (each PUBACKed, so committed) and
/// disconnects.
async fn onboard(server: &ServeProcess, server_ca_der: &[u8], device: &TestDevice, messages: usize) {
    let id = id_of(device);
    let mut c = Client::connect(server.mqtt, &tls(server_ca_der, device))
        .await
        .unwrap_or_else(|e| panic!("{id}: {e}"));
    let (_, code) = c
        .mqtt_connect(&ConnectOptions {
            client_id: id.clone(),
            keep_alive_secs: 30,
            clean_session: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(code, 0, "{id}: CONNACK");
    for n in 0..messages {
        c.publish(
            &format!("devices/{id}/telemetry"),
            format!("{{\"n\":{n}}}").as_bytes(),
            1,
        )
        .await
        .unwrap();
    }
    c.disconnect().await.unwrap();
}

async fn post(
    http: &reqwest::Client,
    server: &ServeProcess,
    token: &str,
    path: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let response = http
        .post(format!("{}{path}", server.http))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    assert!(status.is_success(), "POST {path}: {status} {body}");
    body
}

/// A Sigfox frame's verdict from the operator API.
async fn sigfox_frame(http: &reqwest::Client, server: &ServeProcess, token: &str, frame: &[u8]) -> serde_json::Value {
    post(
        http,
        server,
        token,
        "/api/v1/sigfox/frames",
        serde_json::json!({ "frame_hex": hex::encode(frame) }),
    )
    .await
}

/// The `field` of every item of a paginated API list.
async fn ids_of(
    http: &reqwest::Client,
    server: &ServeProcess,
    token: &str,
    path: &str,
    field: &str,
) -> BTreeSet<String> {
    get_all(http, &server.http, token, path)
        .await
        .iter()
        .map(|d| d[field].as_str().unwrap().to_owned())
        .collect()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Where the backup is taken and put back.
enum Backend<'a> {
    Sqlite,
    Postgres { source: &'a Database, target: &'a Database },
}

async fn back_up_and_restore(backend: Backend<'_>) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::stsafe_root("STM STSAFE-A BACKUP TEST CA");
    let ca_pem = dir.path().join("ca.pem");
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    let data = dir.path().join("data");
    let devices: Vec<TestDevice> = (0..BEFORE + AFTER)
        .map(|i| ca.issue_stsafe_device("bkp", &[0x0B, i as u8]))
        .collect();
    let before: BTreeSet<String> = devices[..BEFORE].iter().map(id_of).collect();
    let source_url = match &backend {
        Backend::Sqlite => None,
        Backend::Postgres { source, .. } => Some(source.url.as_str()),
    };

    let first = serve_trusting(&data, source_url, &ca_pem);
    let token = first.token.clone().expect("first start prints an admin token");
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let server_ca_der = server_ca_der(&data);
    for d in &devices[..BEFORE] {
        onboard(&first, &server_ca_der, d, MESSAGES).await;
    }
    // A sealed key: a Sigfox device's NAK, and its first message.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let nak = [0x5A; 16];
    let mut sigfox = sim_devices::sigfox::SigfoxDevice::new(0x0B0B_0001, nak, 1);
    post(
        &http,
        &first,
        &token,
        "/api/v1/sigfox/devices",
        serde_json::json!({ "device_id": sigfox.device_id_hex(), "nak": hex::encode(nak) }),
    )
    .await;
    let [last_before, ..] = sigfox.send(b"\x01", false).unwrap();
    let verdict = sigfox_frame(&http, &first, &token, &last_before).await;
    assert_eq!(verdict["accepted"], true, "{verdict}");

    // The backup, taken while the server runs.
    let backup = dir.path().join("backup");
    match &backend {
        Backend::Sqlite => run(Command::new("sqlite3")
            .arg(data.join("fleetward.db"))
            .arg(format!(".backup {}", backup.display()))),
        Backend::Postgres { source, .. } => run(Command::new("pg_dump")
            .args(["-Fc", "-d", &source.url, "-f"])
            .arg(&backup)),
    }
    // Written after the backup: the restored registry must not have these.
    for d in &devices[BEFORE..] {
        onboard(&first, &server_ca_der, d, MESSAGES).await;
    }
    first.kill_9();

    // Restore as documented, then start on the restored database.
    let restored_url = match &backend {
        Backend::Sqlite => {
            for stale in ["fleetward.db", "fleetward.db-wal", "fleetward.db-shm"] {
                let _ = std::fs::remove_file(data.join(stale));
            }
            std::fs::copy(&backup, data.join("fleetward.db")).unwrap();
            registry::Registry::sqlite_url(&data)
        }
        Backend::Postgres { target, .. } => {
            run(Command::new("pg_restore").args(["-d", &target.url]).arg(&backup));
            target.url.clone()
        }
    };
    let second = serve_trusting(
        &data,
        matches!(backend, Backend::Postgres { .. }).then_some(restored_url.as_str()),
        &ca_pem,
    );
    assert!(second.token.is_none(), "the restored registry has the admin token");
    let listed = ids_of(&http, &second, &token, "/api/v1/devices", "id").await;
    assert_eq!(listed, before, "the restored devices are those backed up");
    let registered = ids_of(
        &http,
        &second,
        &token,
        "/api/v1/events?kind=device.registered",
        "device_id",
    )
    .await;
    assert_eq!(registered, before, "one registration event per restored device");
    let stored = scalar(
        &restored_url,
        "SELECT COUNT(*) FROM telemetry WHERE device_id LIKE 'bkp-%'",
    )
    .await;
    assert_eq!(
        stored,
        (BEFORE * MESSAGES) as i64,
        "every message acknowledged before the backup"
    );

    // The NAK opens with the KEK of the data directory, and the sequence number came back too.
    let [next, ..] = sigfox.send(b"\x02", false).unwrap();
    let verdict = sigfox_frame(&http, &second, &token, &next).await;
    assert_eq!(verdict["accepted"], true, "{verdict}");
    let verdict = sigfox_frame(&http, &second, &token, &last_before).await;
    assert_eq!(
        verdict["accepted"], false,
        "a replay of the last message before the backup: {verdict}"
    );

    // The devices carry on: the backed-up ones as known devices, the others register again.
    for d in &devices {
        onboard(&second, &server_ca_der, d, 1).await;
    }
    let listed = ids_of(&http, &second, &token, "/api/v1/devices", "id").await;
    assert_eq!(listed.len(), BEFORE + AFTER);
    let registered = get_all(&http, &second.http, &token, "/api/v1/events?kind=device.registered").await;
    assert_eq!(
        registered.len(),
        BEFORE + AFTER,
        "the backed-up devices were not registered twice"
    );
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_online_backup_restores_what_was_committed_before_it() {
    back_up_and_restore(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_dump_restores_what_was_committed_before_it() {
    let source = Database::create("fw_backup_src").await;
    let target = Database::create("fw_backup_dst").await;
    back_up_and_restore(Backend::Postgres {
        source: &source,
        target: &target,
    })
    .await;
    source.drop_now().await;
    target.drop_now().await;
}
