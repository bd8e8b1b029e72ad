//! A fleet personalized by `sim-devices pki init` (root → intermediate → devices, as PEM files)
//! onboards on first connection with only the root registered: through our own device client,
//! and through Debian's `mosquitto_pub` reading the very files the command wrote.
#![allow(clippy::unwrap_used)]

mod common;

use sim_devices::client::{Client, ClientTls, TlsProfile};
use sim_devices::pki_dir::{InitOptions, init, load};
use std::process::{Command, Stdio};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sim_devices_pki_onboards_through_its_intermediate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let opts = InitOptions {
        devices: 3,
        intermediate: true,
        ..InitOptions::default()
    };
    init(&pki, &opts, time::OffsetDateTime::now_utc(), |_| {}).unwrap();
    let ca = pki.join("ca.pem");
    let server = common::start_with(&[], |c| c.trust_ca.push(ca)).await;
    let identities = load(&pki).unwrap();
    let (first, rest) = identities.split_first().unwrap();
    for identity in rest {
        let tls = ClientTls {
            server_ca_der: server.server_ca_der.clone(),
            server_name: "localhost".into(),
            profile: TlsProfile::Stm32Tls12,
            identity: Some((identity.chain(), identity.key_der.clone())),
            bind: None,
        };
        let mut client = Client::connect(server.addr(), &tls).await.unwrap();
        let (_, code) = client.mqtt_connect(&common::options(&identity.id)).await.unwrap();
        assert_eq!(code, 0, "{}", identity.id);
        client
            .publish(&format!("devices/{}/telemetry", identity.id), b"{\"t\":21}", 1)
            .await
            .unwrap();
        let device = server.running.registry.device(&identity.id).await.unwrap();
        assert_eq!(device.id, identity.id);
    }
    // A real client with the files as written.
    if Command::new("mosquitto_pub").arg("--help").output().is_err() {
        assert!(
            std::env::var("FLEETWARD_REQUIRE_INTEROP").is_err(),
            "mosquitto_pub not installed (apt-get install mosquitto-clients)"
        );
        return;
    }
    let id = first.id.clone();
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &server.addr().port().to_string(), "--cafile"])
        .arg(server.server_ca_path())
        .arg("--cert")
        .arg(pki.join("devices").join(format!("{id}.pem")))
        .arg("--key")
        .arg(pki.join("devices").join(format!("{id}.key")))
        .args([
            "-i",
            &id,
            "-t",
            &format!("devices/{id}/telemetry"),
            "-q",
            "1",
            "-m",
            "hello",
        ]);
    let out = tokio::task::spawn_blocking(move || cmd.stdin(Stdio::null()).output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(server.running.registry.device(&id).await.unwrap().id, id);
}
