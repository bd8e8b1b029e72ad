//! Two `fleetward serve` processes on different loopback ports, sharing this machine's
//! PostgreSQL and NATS JetStream, act as one deployment:
//!
//! - a device onboarded on node A is known on B (and reconnects there without registering again,
//!   its session on A taken over);
//! - a revocation made through B's API ends the device's session on A within 1 s;
//! - a command sent through A's API reaches a device connected to B;
//! - telemetry stored by both nodes lands in JetStream once per message;
//! - one certificate used on both nodes from two addresses is caught as a clone.
//!
//! Needs PostgreSQL (`FLEETWARD_TEST_POSTGRES`, default the local server) and NATS with
//! JetStream (`FLEETWARD_TEST_NATS`, default nats://127.0.0.1:4222); `.ci/run` starts both.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    clippy::disallowed_methods
)]

mod common;

use common::id_of;
use common::process::{Database, ServeProcess};
use fleetward_test_support::{TestCa, TestDevice};
use futures_util::StreamExt;
use sim_devices::client::{Client, ClientError, ClientTls, ConnectOptions, ServerPacket, TlsProfile};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const STREAM: &str = "FLEETWARD_TELEMETRY";

fn nats_url() -> String {
    std::env::var("FLEETWARD_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A node of the two: `fleetward serve` on the shared database and NATS.
fn node(
    name: &str,
    data: &Path,
    db: &str,
    kek: &Path,
    ca: &Path,
    tls_from: Option<&Path>,
    pool: Option<u32>,
) -> ServeProcess {
    let mut args: Vec<String> = [
        "--data-dir",
        data.to_str().unwrap(),
        "--database-url",
        db,
        "--nats-url",
        &nats_url(),
        "--node-name",
        name,
        "--trust-ca",
        ca.to_str().unwrap(),
        "--kek-file",
        kek.to_str().unwrap(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    if let Some(n) = pool {
        args.extend(["--database-max-connections".into(), n.to_string()]);
    }
    if let Some(dir) = tls_from {
        // Both nodes present one server certificate (as behind one load balancer).
        args.extend([
            "--tls-cert".into(),
            dir.join("tls/server.pem").display().to_string(),
            "--tls-key".into(),
            dir.join("tls/server.key").display().to_string(),
        ]);
    }
    ServeProcess::start(name, &args)
}

type Node = ServeProcess;

struct Fleet {
    a: Node,
    b: Node,
    token: String,
    server_ca_der: Vec<u8>,
    ca: TestCa,
    http: reqwest::Client,
}

impl Fleet {
    fn tls(&self, device: &TestDevice, bind: Option<&str>) -> ClientTls {
        ClientTls {
            server_ca_der: self.server_ca_der.clone(),
            server_name: "localhost".into(),
            profile: TlsProfile::Tls13,
            identity: Some((vec![device.der.clone()], device.key.serialize_der())),
            bind: bind.map(|b| b.parse().unwrap()),
        }
    }

    async fn connect(&self, node: &Node, device: &TestDevice, bind: Option<&str>) -> Client {
        let mut c = Client::connect(node.mqtt, &self.tls(device, bind)).await.unwrap();
        let opts = ConnectOptions {
            client_id: id_of(device),
            keep_alive_secs: 30,
            clean_session: true,
            ..Default::default()
        };
        assert_eq!(c.mqtt_connect(&opts).await.unwrap().1, 0, "CONNACK accepted");
        c
    }

    async fn api(
        &self,
        node: &Node,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", node.http))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    async fn metric(&self, node: &Node, name: &str) -> u64 {
        let text = self
            .http
            .get(format!("{}/metrics", node.http))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        common::series_value(&text, name).unwrap_or_else(|| panic!("metric {name} missing"))
    }
}

/// Waits until the server ends the session (DISCONNECT or EOF); how long it took.
async fn until_closed(c: &mut Client, within: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let left = within.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(format!("still connected after {within:?}"));
        }
        match c.recv(left).await {
            Ok(ServerPacket::Disconnect) | Err(ClientError::Closed) | Err(ClientError::Io(_)) => {
                return Ok(started.elapsed());
            }
            Err(ClientError::Timeout(_)) => return Err(format!("still connected after {within:?}")),
            Ok(_) => continue,
            Err(e) => {
                eprintln!("session ended with {e}");
                return Ok(started.elapsed());
            }
        }
    }
}

async fn fresh_stream(js: &async_nats::jetstream::Context) {
    // A stream left by an earlier run holds the subjects; start from an empty one.
    let _ = js.delete_stream(STREAM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_postgresql_and_nats_act_as_one() {
    let nats = async_nats::connect(nats_url()).await.unwrap_or_else(|e| {
        panic!(
            "NATS with JetStream at {} is required for this test (.ci/run starts it): {e}",
            nats_url()
        )
    });
    let js = async_nats::jetstream::new(nats.clone());
    fresh_stream(&js).await;
    let db = Database::create("fw_scale_out").await;

    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::stsafe_root("STM STSAFE-A SCALE-OUT TEST CA");
    let ca_pem = dir.path().join("ca.pem");
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    let kek = dir.path().join("kek");
    std::fs::write(&kek, format!("test-1 {}\n", "42".repeat(32))).unwrap();
    let (data_a, data_b): (PathBuf, PathBuf) = (dir.path().join("a"), dir.path().join("b"));

    let a = node("node-a", &data_a, &db.url, &kek, &ca_pem, None, None);
    // B runs with a smaller pool (many nodes on one PostgreSQL).
    let b = node("node-b", &data_b, &db.url, &kek, &ca_pem, Some(&data_a), Some(5));
    assert!(
        b.token.is_none(),
        "the second node finds the first node's admin token in the database"
    );
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let pem = std::fs::read(data_a.join("tls/server-ca.pem")).unwrap();
    let server_ca_der = verifier::x509::certificates_from_pem_or_der(&pem).unwrap()[0].to_vec();
    let fleet = Fleet {
        token: a.token.clone().expect("first start prints an admin token"),
        a,
        b,
        server_ca_der,
        ca,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    };
    // Both nodes see each other before the checks (heartbeats every 2 s).
    tokio::time::sleep(Duration::from_millis(500)).await;

    onboarded_on_a_is_known_on_b(&fleet).await;
    revoked_through_b_is_kicked_off_a_within_a_second(&fleet).await;
    a_ca_registered_through_b_is_trusted_by_a_within_a_second(&fleet).await;
    command_through_a_reaches_a_device_on_b(&fleet).await;
    telemetry_from_both_nodes_lands_once_in_jetstream(&fleet, &js).await;
    a_certificate_on_both_nodes_from_two_addresses_is_a_clone(&fleet).await;

    // Each node's pool keeps to its configured size after all of the above.
    assert_eq!(fleet.metric(&fleet.a, "fleetward_db_pool_max_connections").await, 16);
    assert_eq!(fleet.metric(&fleet.b, "fleetward_db_pool_max_connections").await, 5);
    assert!(fleet.metric(&fleet.b, "fleetward_db_pool_connections").await <= 5);
    let on_server = db
        .admin_scalar(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND backend_type = 'client backend'",
            db.name
        ))
        .await;
    assert!(
        on_server <= 16 + 1 + 5 + 1,
        "{on_server} connections to the database: more than two pools and two probes"
    );

    drop(fleet);
    let _ = js.delete_stream(STREAM).await;
    db.drop_now().await;
}

async fn onboarded_on_a_is_known_on_b(f: &Fleet) {
    let device = f.ca.issue_stsafe_device("scale", &[0x01]);
    let id = id_of(&device);
    let mut on_a = f.connect(&f.a, &device, None).await;
    let (status, body) = f
        .api(&f.b, reqwest::Method::GET, &format!("/api/v1/devices/{id}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "active", "{body}");
    assert_eq!(f.metric(&f.a, "fleetward_devices_registered_total").await, 1);

    // It moves to B (a load balancer's choice): no second registration, and the session on A
    // is taken over.
    let _on_b = f.connect(&f.b, &device, None).await;
    let took = until_closed(&mut on_a, Duration::from_secs(3))
        .await
        .expect("the session on A ends when the device connects to B");
    eprintln!("cross-node takeover in {took:?}");
    assert_eq!(f.metric(&f.b, "fleetward_devices_registered_total").await, 0);
    assert_eq!(f.metric(&f.a, "fleetward_bus_remote_takeovers_total").await, 1);
}

async fn revoked_through_b_is_kicked_off_a_within_a_second(f: &Fleet) {
    let device = f.ca.issue_stsafe_device("scale", &[0x02]);
    let id = id_of(&device);
    let mut on_a = f.connect(&f.a, &device, None).await;
    let started = Instant::now();
    let (status, body) = f
        .api(
            &f.b,
            reqwest::Method::POST,
            &format!("/api/v1/devices/{id}/revoke"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let took = until_closed(&mut on_a, Duration::from_secs(1))
        .await
        .expect("revoked through B, the device is off A within 1 s");
    eprintln!(
        "revocation on B ended the session on A {:?} after the request ({took:?} after its answer)",
        started.elapsed()
    );
    assert!(started.elapsed() <= Duration::from_secs(1), "{:?}", started.elapsed());
    // And A refuses it from now on.
    let refused = Client::connect(f.a.mqtt, &f.tls(&device, None)).await;
    match refused {
        Err(e) => assert!(e.is_tls_rejection(), "{e}"),
        Ok(mut c) => {
            let r = c
                .mqtt_connect(&ConnectOptions {
                    client_id: id.clone(),
                    keep_alive_secs: 30,
                    clean_session: true,
                    ..Default::default()
                })
                .await;
            assert!(r.is_err() || r.as_ref().is_ok_and(|(_, code)| *code != 0), "{r:?}");
        }
    }
}

async fn a_ca_registered_through_b_is_trusted_by_a_within_a_second(f: &Fleet) {
    let new_ca = TestCa::stsafe_root("STM STSAFE-A SCALE-OUT SECOND CA");
    let (_, code) = f
        .api(&f.b, reqwest::Method::GET, "/api/v1/cas/registration-code", None)
        .await;
    let code = code["registration_code"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let (status, body) = f
        .api(
            &f.b,
            reqwest::Method::POST,
            "/api/v1/cas",
            Some(serde_json::json!({
                "certificate_pem": new_ca.pem(),
                "verification_certificate_pem":
                    fleetward_test_support::pem_encode("CERTIFICATE", &new_ca.verification_certificate(&code)),
                "auto_activate": true,
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // A device of the new CA onboards on A, within a second of the registration on B.
    let device = new_ca.issue_stsafe_device("scale-ca2", &[0x01]);
    let id = id_of(&device);
    let mut last;
    let accepted_after = loop {
        let attempt = async {
            let mut c = Client::connect(f.a.mqtt, &f.tls(&device, None)).await.ok()?;
            let opts = ConnectOptions {
                client_id: id.clone(),
                keep_alive_secs: 30,
                clean_session: true,
                ..Default::default()
            };
            c.mqtt_connect(&opts).await.ok().map(|(_, code)| code)
        };
        match attempt.await {
            Some(0) => break started.elapsed(),
            other => last = format!("{other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "A does not trust the CA registered through B after 1 s (last attempt: {last})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("a CA registered through B was trusted by A {accepted_after:?} after the request");
}

async fn command_through_a_reaches_a_device_on_b(f: &Fleet) {
    let device = f.ca.issue_stsafe_device("scale", &[0x03]);
    let id = id_of(&device);
    let mut on_b = f.connect(&f.b, &device, None).await;
    assert_eq!(
        on_b.subscribe(&[(&format!("devices/{id}/commands/#"), 1)])
            .await
            .unwrap(),
        vec![1]
    );
    let started = Instant::now();
    let (status, body) = f
        .api(
            &f.a,
            reqwest::Method::POST,
            &format!("/api/v1/devices/{id}/commands"),
            Some(serde_json::json!({"name": "valve/close", "payload": "now", "qos": 1})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["topic"], format!("devices/{id}/commands/valve/close"));
    loop {
        match on_b
            .recv(Duration::from_secs(3))
            .await
            .expect("the command arrives on B")
        {
            ServerPacket::Publish {
                topic,
                payload,
                qos,
                pkid,
            } => {
                assert_eq!(topic, format!("devices/{id}/commands/valve/close"));
                assert_eq!(&payload[..], b"now");
                assert_eq!(qos, 1);
                on_b.puback(pkid).await.unwrap();
                break;
            }
            _ => continue,
        }
    }
    eprintln!("command through A reached the device on B in {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert!(f.metric(&f.a, "fleetward_bus_commands_relayed_total").await >= 1);
    assert!(f.metric(&f.b, "fleetward_bus_remote_commands_total").await >= 1);
    // Delivered: nothing is left waiting.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (_, list) = f
            .api(
                &f.b,
                reqwest::Method::GET,
                &format!("/api/v1/devices/{id}/commands"),
                None,
            )
            .await;
        if list["commands"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the command stays pending after its PUBACK: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn telemetry_from_both_nodes_lands_once_in_jetstream(f: &Fleet, js: &async_nats::jetstream::Context) {
    const PER_DEVICE: usize = 200;
    let on_a = f.ca.issue_stsafe_device("scale", &[0x04]);
    let on_b = f.ca.issue_stsafe_device("scale", &[0x05]);
    let mut expected = BTreeMap::new();
    let mut writers = Vec::new();
    for (node, device) in [(&f.a, &on_a), (&f.b, &on_b)] {
        let id = id_of(device);
        expected.insert(id.clone(), PER_DEVICE);
        let mut c = f.connect(node, device, None).await;
        writers.push(tokio::spawn(async move {
            for i in 0..PER_DEVICE {
                c.publish(&format!("devices/{id}/telemetry"), format!("{i}").as_bytes(), 1)
                    .await
                    .unwrap();
            }
            c
        }));
    }
    let mut clients = Vec::new();
    for w in writers {
        clients.push(w.await.unwrap());
    }

    // Every acknowledged message, once, from the stream.
    let stream = js
        .get_stream(STREAM)
        .await
        .expect("the nodes created the telemetry stream");
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut duplicates = Vec::new();
    let mut messages = consumer.messages().await.unwrap();
    let total: usize = expected.values().sum();
    let mut counted = 0;
    let deadline = Instant::now() + Duration::from_secs(15);
    while counted < total {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(m)) = tokio::time::timeout(left, messages.next()).await else {
            break;
        };
        let m = m.unwrap();
        let Some(device) = m.subject.as_str().strip_prefix("fleetward.telemetry.") else {
            continue;
        };
        if !expected.contains_key(device) {
            continue;
        }
        let headers = m.headers.clone().expect("headers");
        assert_eq!(headers.get("Fleetward-Device").map(|v| v.as_str()), Some(device));
        assert_eq!(
            headers.get("Fleetward-Topic").map(|v| v.as_str().to_owned()),
            Some(format!("devices/{device}/telemetry"))
        );
        assert!(headers.get("Nats-Msg-Id").is_some());
        let payload = String::from_utf8(m.payload.to_vec()).unwrap();
        if !seen.entry(device.to_owned()).or_default().insert(payload.clone()) {
            duplicates.push((device.to_owned(), payload));
        }
        counted += 1;
    }
    // A little longer: nothing more may arrive.
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), messages.next()).await {
        let m = m.unwrap();
        if let Some(device) = m.subject.as_str().strip_prefix("fleetward.telemetry.")
            && expected.contains_key(device)
        {
            duplicates.push((device.to_owned(), String::from_utf8_lossy(&m.payload).into_owned()));
        }
    }
    assert!(duplicates.is_empty(), "messages in JetStream twice: {duplicates:?}");
    for (device, n) in &expected {
        let got = seen.get(device).map_or(0, BTreeSet::len);
        assert_eq!(got, *n, "{device}: {got} of {n} acknowledged messages in JetStream");
    }
    let published = f.metric(&f.a, "fleetward_bus_telemetry_published_total").await
        + f.metric(&f.b, "fleetward_bus_telemetry_published_total").await;
    assert_eq!(published as usize, total);
    drop(clients);
}

async fn a_certificate_on_both_nodes_from_two_addresses_is_a_clone(f: &Fleet) {
    let device = f.ca.issue_stsafe_device("scale", &[0x06]);
    let id = id_of(&device);
    let mut first = f.connect(&f.a, &device, Some("127.0.0.1")).await;
    // Let A's announcement reach B.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _second = f.connect(&f.b, &device, Some("127.0.0.2")).await;
    // Policy `allow` (the default): recorded, and the newer connection takes over.
    until_closed(&mut first, Duration::from_secs(3))
        .await
        .expect("the first session ends");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = f
            .api(
                &f.a,
                reqwest::Method::GET,
                &format!("/api/v1/events?kind=device.clone_suspected&device={id}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let events = body["items"].as_array().cloned().unwrap_or_default();
        if let Some(e) = events.first() {
            let detail = e["detail"].to_string();
            assert!(detail.contains("127.0.0.1") && detail.contains("127.0.0.2"), "{detail}");
            assert_eq!(events.len(), 1, "one suspicion, raised by one node: {body}");
            break;
        }
        assert!(Instant::now() < deadline, "no clone suspicion recorded: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(f.metric(&f.b, "fleetward_clones_suspected_total").await, 1);
}
