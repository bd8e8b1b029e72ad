//! NATS goes away under a running gateway: devices are still served (connect, register, publish,
//! PUBACK after the registry's commit), and no stored message is lost from the bus: what the
//! relay's buffer had no room for is counted as deferred, named by a `bus.telemetry_deferred`
//! event, and published from the store when NATS is back; every stored message reaches
//! JetStream once.
//!
//! NATS up but slower than the devices: they are slowed, and nothing is deferred.
//!
//! A gateway killed (`kill -9`) while its relay owes JetStream messages: its next start adopts
//! the outbox and publishes them, once each.
//!
//! The tests run their own `nats-server` (JetStream, store in a temporary directory) on a free
//! loopback port; the first kills it with SIGKILL and starts it again on the same port and
//! store. The machine's shared NATS is not touched.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    clippy::disallowed_methods
)]

mod common;

use fleetward_test_support::TestCa;
use futures_util::StreamExt;
use sim_devices::client::TlsProfile;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const STREAM: &str = "FW_BUS_FAULTS";

struct NatsServer {
    child: Child,
}

impl NatsServer {
    fn start(port: u16, store: &Path) -> NatsServer {
        let binary = std::env::var("FLEETWARD_TEST_NATS_SERVER").unwrap_or_else(|_| "/usr/sbin/nats-server".into());
        let child = Command::new(&binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{binary} is required for this test (.ci/run installs nats-server): {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        NatsServer { child }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A nats-server of the test's own on a free port: its store (to start it again on), port and URL.
fn own_nats() -> (tempfile::TempDir, u16, String, NatsServer) {
    let store = tempfile::tempdir().unwrap();
    let port = free_port();
    let nats = NatsServer::start(port, store.path());
    (store, port, format!("nats://127.0.0.1:{port}"), nats)
}

/// A gateway trusting `ca` whose bus is the NATS at `url`, relaying telemetry to `stream`
/// through a buffer of `buffer` messages.
async fn gateway_on(url: &str, ca: &TestCa, node: &str, stream: &str, buffer: usize) -> common::Server {
    common::start_with(&[ca], |c| {
        c.nats_url = Some(url.to_owned());
        c.node_name = Some(node.to_owned());
        c.nats.telemetry_stream = stream.to_owned();
        c.nats.telemetry_buffer = buffer;
    })
    .await
}

async fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_devices_are_served_and_no_stored_message_is_silently_lost() {
    let (store, port, url, nats) = own_nats();
    let ca = TestCa::stsafe_root("STM STSAFE-A BUS FAULT CA");
    // A buffer of 50: small, so that an outage overflows it.
    let server = gateway_on(&url, &ca, "faulty", STREAM, 50).await;
    let stats = server.running.stats.clone();
    let bus = server.running.hub.bus().cloned().expect("the bus is configured");

    // NATS up: every message reaches JetStream.
    let device = ca.issue_stsafe_device("bus", &[0x01]);
    let id = common::id_of(&device);
    let topic = format!("devices/{id}/telemetry");
    let (mut c, code) = server.connect(&device, &id, TlsProfile::Tls13).await.unwrap();
    assert_eq!(code, 0);
    let mut sent = 0usize;
    for _ in 0..20 {
        c.publish(&topic, sent.to_string().as_bytes(), 1).await.unwrap();
        sent += 1;
    }
    wait_for("20 messages in JetStream", Duration::from_secs(10), || {
        stats.snapshot().bus_telemetry_published == 20
    })
    .await;

    // NATS killed: devices are still served, and every QoS 1 message is still acknowledged
    // (after the registry's commit).
    nats.kill();
    wait_for("the gateway notices NATS is gone", Duration::from_secs(10), || {
        !bus.connected()
    })
    .await;
    for _ in 0..400 {
        c.publish(&topic, sent.to_string().as_bytes(), 1).await.unwrap();
        sent += 1;
    }
    let newcomer = ca.issue_stsafe_device("bus", &[0x02]);
    let newcomer_id = common::id_of(&newcomer);
    let (mut n, code) = server
        .connect(&newcomer, &newcomer_id, TlsProfile::Stm32Tls12)
        .await
        .unwrap();
    assert_eq!(code, 0, "a new device registers while NATS is down");
    n.publish(&format!("devices/{newcomer_id}/telemetry"), b"newcomer", 1)
        .await
        .unwrap();
    let stored = server.running.registry.telemetry_after(0, 10_000).await.unwrap().len();
    assert_eq!(stored, sent + 1, "everything acknowledged is in the telemetry store");
    wait_for("the overflow is counted", Duration::from_secs(10), || {
        stats.snapshot().bus_telemetry_deferred > 0
    })
    .await;
    // What JetStream is owed is a gauge: the deferred messages count, not only the buffer's 50.
    let owed = (sent + 1 - 20) as u64;
    assert_eq!(unpublished(&server).await, owed);
    assert_eq!(bus.telemetry_backlog(), 50);

    // NATS back on the same port and store: what waited in the buffer, and what the store kept
    // when the buffer was full, is published.
    let _nats = NatsServer::start(port, store.path());
    wait_for("the gateway reconnects", Duration::from_secs(20), || bus.connected()).await;
    let total = sent + 1;
    wait_for("the backlog is published", Duration::from_secs(30), || {
        stats.snapshot().bus_telemetry_published >= total as u64
    })
    .await;
    let s = stats.snapshot();
    assert_eq!(unpublished(&server).await, 0, "JetStream is owed nothing");
    eprintln!(
        "published {} (de-duplicated retries {}), deferred to the store {}, read from the store {} of {total}; retries {}",
        s.bus_telemetry_published,
        s.bus_telemetry_duplicates,
        s.bus_telemetry_deferred,
        s.bus_telemetry_from_store,
        s.bus_publish_retries
    );
    assert!(
        s.bus_telemetry_from_store >= s.bus_telemetry_deferred,
        "every deferred message was read back from the store"
    );

    // The stream holds every stored message, once.
    let all: BTreeSet<i64> = server
        .running
        .registry
        .telemetry_after(0, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(all.len(), total);
    let (ids, duplicates) = stream_ids(&url, STREAM).await;
    assert_eq!(duplicates, 0, "a stored message twice in JetStream");
    assert_eq!(ids, all, "the stream holds exactly the stored messages");
    assert_eq!(ids.len() as u64, s.bus_telemetry_published - s.bus_telemetry_duplicates);

    // The deferral was reported: events whose ranges hold every deferred message.
    let deadline = Instant::now() + Duration::from_secs(10);
    let reported = loop {
        let mut reported = 0u64;
        for e in server
            .running
            .registry
            .events(
                &registry::EventFilter {
                    kind: Some("bus.telemetry_deferred".into()),
                    ..Default::default()
                },
                1000,
            )
            .await
            .unwrap()
        {
            let d = e.detail.unwrap();
            let (first, last) = (
                d["first_stored_id"].as_i64().unwrap(),
                d["last_stored_id"].as_i64().unwrap(),
            );
            assert!(first <= last && all.contains(&first) && all.contains(&last));
            reported += d["messages"].as_u64().unwrap();
        }
        if reported >= s.bus_telemetry_deferred || Instant::now() > deadline {
            break reported;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        reported, s.bus_telemetry_deferred,
        "every deferred message is in a reported range"
    );
    server.running.shutdown().await;
}

/// `fleetward_bus_telemetry_unpublished` from the server's `/metrics`.
async fn unpublished(server: &common::Server) -> u64 {
    common::series_value(&server.metrics().await, "fleetward_bus_telemetry_unpublished").expect("the gauge is exposed")
}

/// The stored ids in `stream` (its `Fleetward-Stored-Id` headers), and how many came twice.
async fn stream_ids(url: &str, stream: &str) -> (BTreeSet<i64>, usize) {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(stream).await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut ids = BTreeSet::new();
    let mut duplicates = 0;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(1), messages.next()).await {
        let m = m.unwrap();
        let stored_id: i64 = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Fleetward-Stored-Id"))
            .expect("stored id header")
            .as_str()
            .parse()
            .unwrap();
        if !ids.insert(stored_id) {
            duplicates += 1;
        }
    }
    (ids, duplicates)
}

/// NATS up but the relay's buffer far smaller than what the devices have in flight: the
/// telemetry writer waits for room (and commits no more than the buffer holds at once), so the
/// devices are slowed and every message reaches JetStream from the buffer; none is deferred.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_slower_than_the_devices_slows_them_and_drops_nothing() {
    const STREAM: &str = "FW_BUS_BACKPRESSURE";
    const DEVICES: usize = 16;
    const IN_FLIGHT: usize = 40;
    let (_store, _port, url, _nats) = own_nats();
    let ca = TestCa::stsafe_root("STM STSAFE-A BUS PRESSURE CA");
    // 640 messages in flight at once against room for 50.
    let server = gateway_on(&url, &ca, "pressed", STREAM, 50).await;
    let stats = server.running.stats.clone();
    let bus = server.running.hub.bus().cloned().expect("the bus is configured");
    wait_for("the gateway connects to NATS", Duration::from_secs(10), || {
        bus.connected()
    })
    .await;

    let devices: Vec<_> = (0..DEVICES)
        .map(|i| ca.issue_stsafe_device("press", &[0x10, i as u8]))
        .collect();
    let mut clients = Vec::new();
    for d in &devices {
        let id = common::id_of(d);
        let (c, code) = server.connect(d, &id, TlsProfile::Tls13).await.unwrap();
        assert_eq!(code, 0);
        clients.push((c, format!("devices/{id}/telemetry")));
    }
    // Every device writes its whole window before waiting for a single PUBACK.
    let started = Instant::now();
    futures_util::future::join_all(clients.iter_mut().map(|(c, topic)| async move {
        let mut pkids = Vec::with_capacity(IN_FLIGHT);
        for n in 0..IN_FLIGHT {
            pkids.push(c.publish_nowait(topic, n.to_string().as_bytes(), 1).await.unwrap());
        }
        for pkid in pkids {
            c.wait_puback(pkid, Duration::from_secs(30)).await.unwrap();
        }
    }))
    .await;
    let total = (DEVICES * IN_FLIGHT) as u64;
    eprintln!("{total} messages acknowledged in {:?}", started.elapsed());
    wait_for("every message is published", Duration::from_secs(30), || {
        let s = stats.snapshot();
        s.bus_telemetry_published + s.bus_telemetry_deferred >= total
    })
    .await;
    let s = stats.snapshot();
    assert_eq!(
        s.bus_telemetry_deferred, 0,
        "the relay's buffer overflowed into the store while NATS was up"
    );
    assert_eq!(s.bus_telemetry_published, total);

    // The stream holds each stored message once.
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(STREAM).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, total);
    let stored: BTreeSet<i64> = server
        .running
        .registry
        .telemetry_after(0, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(stored.len() as u64, total);
    server.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_owing_jetstream_messages_publishes_them_at_its_restart_on_sqlite() {
    killed_relay_restart(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_owing_jetstream_messages_publishes_them_at_its_restart_on_postgresql() {
    let db = common::process::Database::create("fw_relay_kill").await;
    killed_relay_restart(Some(&db.url)).await;
    db.drop_now().await;
}

/// `fleetward serve` processes on their own NATS: JetStream is frozen (SIGSTOP) while devices
/// publish, so the relay owes it messages (in its buffer of 50, and past it in the store); the
/// gateway is killed with SIGKILL and JetStream thawed. The restarted gateway (same node name)
/// adopts the dead relay's outbox: every stored message ends up in the stream, once.
async fn killed_relay_restart(db: Option<&str>) {
    use common::process::{ServeProcess, device_tls, mqtt_session, server_ca_der};
    const STREAM: &str = "FW_RELAY_KILL";
    const MESSAGES: usize = 300;
    let (_store, _port, url, nats) = own_nats();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::stsafe_root("STM STSAFE-A RELAY KILL CA");
    let ca_pem = dir.path().join("ca.pem");
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    let config = dir.path().join("fleetward.toml");
    std::fs::write(
        &config,
        format!("[nats]\ntelemetry_stream = \"{STREAM}\"\ntelemetry_buffer = 50\n"),
    )
    .unwrap();
    let data = dir.path().join("data");
    let mut args: Vec<String> = [
        "--config",
        &config.display().to_string(),
        "--data-dir",
        &data.display().to_string(),
        "--trust-ca",
        &ca_pem.display().to_string(),
        "--nats-url",
        &url,
        "--node-name",
        "gw-killed",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(db) = db {
        args.extend(["--database-url".into(), db.to_owned()]);
    }
    let first = ServeProcess::start("fleetward serve (first)", &args);
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let device = ca.issue_stsafe_device("relay", &[0x21]);
    let id = common::id_of(&device);
    let topic = format!("devices/{id}/telemetry");
    let tls = device_tls(&server_ca_der(&data), &device);
    let connect = async |addr| {
        let (c, code) = mqtt_session(addr, &tls, &id).await.unwrap();
        assert_eq!(code, 0);
        c
    };
    let mut c = connect(first.mqtt).await;
    // Some through a working JetStream first (the outbox's progress moves past them).
    for n in 0..20 {
        c.publish(&topic, format!("{n}").as_bytes(), 1).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // JetStream frozen: every publish is still acknowledged after the registry's commit.
    signal(&nats, "STOP");
    for n in 20..MESSAGES {
        c.publish(&topic, format!("{n}").as_bytes(), 1).await.unwrap();
    }
    first.kill_9();
    signal(&nats, "CONT");

    let database = db.map_or_else(|| registry::Registry::sqlite_url(&data), str::to_owned);
    let stored = stored_ids(&database).await;
    assert_eq!(stored.len(), MESSAGES, "every acknowledged message is in the store");
    let (before, duplicates) = stream_ids(&url, STREAM).await;
    assert_eq!(duplicates, 0);
    let owed = stored.difference(&before).count();
    eprintln!("killed owing JetStream {owed} of {MESSAGES} stored messages");
    assert!(owed > 0, "the kill left nothing unpublished: the test proves nothing");

    // The restart adopts the dead relay's outbox and publishes what it owed.
    let second = ServeProcess::start("fleetward serve (restart)", &args);
    let deadline = Instant::now() + Duration::from_secs(30);
    let ids = loop {
        let (ids, duplicates) = stream_ids(&url, STREAM).await;
        assert_eq!(duplicates, 0, "a stored message twice in JetStream");
        if ids.len() >= MESSAGES || Instant::now() > deadline {
            break ids;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(ids, stored, "the stream holds exactly the stored messages");
    // The adoption is on record, and the dead relay's outbox is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::process::scalar(
        &database,
        "SELECT COUNT(*) FROM events WHERE kind = 'bus.outbox_adopted'",
    )
    .await
        < 1
    {
        assert!(Instant::now() < deadline, "no bus.outbox_adopted event");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        common::process::scalar(&database, "SELECT COUNT(*) FROM relay_outboxes").await,
        1,
        "only the live relay's outbox is left"
    );
    // Devices keep publishing through the restarted gateway, live.
    let mut c = connect(second.mqtt).await;
    c.publish(&topic, b"after", 1).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ids, _) = stream_ids(&url, STREAM).await;
        if ids.len() > MESSAGES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a message after the restart did not reach JetStream"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(second);
}

/// Sends `SIG{name}` to the test's nats-server.
fn signal(nats: &NatsServer, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), nats.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} failed");
}

/// The ids in the telemetry store at `url`.
async fn stored_ids(url: &str) -> BTreeSet<i64> {
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(url).await.unwrap();
    sqlx::query_scalar::<_, i64>("SELECT id FROM telemetry")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .collect()
}
