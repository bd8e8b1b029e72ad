//! `sim-devices run` and `sim-devices attack` (through the library, as the binary calls them)
//! against a real server: a PKI as `pki init` writes it, a short mixed fleet (MQTT with
//! attestation and a backend consumer, LoRaWAN, Sigfox), then every attack scenario, each of
//! which must be stopped and leave the server's record. `scripts/sim/smoke.sh` does the same
//! with the two binaries as separate processes (`.ci/run`).
#![allow(clippy::unwrap_used)]

mod common;

use sim_devices::attack::{self, AttackTarget, Verdict};
use sim_devices::attest::Firmware;
use sim_devices::client::{Client, ClientTls, Connector, TlsProfile};
use sim_devices::run::{Consumer, Live, LpwanOptions, Mode, ProfileChoice, Rate, RunOptions};
use std::sync::Arc;
use std::time::Duration;

struct Setup {
    server: common::Server,
    pki: std::path::PathBuf,
    token: String,
    api: String,
}

async fn setup(devices: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let opts = sim_devices::pki_dir::InitOptions {
        devices,
        intermediate: true,
        ..Default::default()
    };
    sim_devices::pki_dir::init(&pki, &opts, time::OffsetDateTime::now_utc(), |_| {}).unwrap();
    let ca = pki.join("ca.pem");
    let server = common::start_with(&[], |c| {
        c.trust_ca.push(ca);
        // Every device here connects from 127.0.0.1, and the handshake mode reconnects at over
        // 1,000/s on a fast machine: the default per-address limit would drop some connections
        // before their handshake, errors that are not the ones these tests count.
        c.mqtt.per_ip_connection_rate = 100_000.0;
    })
    .await;
    // Keep the PKI alive with the server's directory.
    let kept = server.dir.path().join("pki");
    std::fs::rename(&pki, &kept).unwrap();
    let token = server
        .running
        .registry
        .create_token(registry::Role::Admin, Some("sim"), "test", 1)
        .await
        .unwrap();
    let fw = Firmware::demo();
    server
        .running
        .registry
        .add_firmware_reference(
            &fw.name,
            &fw.version,
            &fw.digest_hex(),
            Some(&fw.signer_id_hex()),
            true,
            "test",
            1,
        )
        .await
        .unwrap();
    let api = format!("http://{}", server.running.http_addr);
    Setup {
        server,
        pki: kept,
        token: token.secret.to_string(),
        api,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_fleet_runs_clean_and_every_acknowledged_message_is_delivered() {
    let s = setup(24).await;
    let identities = sim_devices::pki_dir::load(&s.pki).unwrap();
    let opts = RunOptions {
        gateway: s.server.addr(),
        server_name: "localhost".into(),
        server_ca_der: s.server.server_ca_der.clone(),
        identities,
        mode: Mode::Telemetry,
        profile: ProfileChoice::Mixed,
        rate: Rate::PerSecond(96.0),
        duration: Duration::from_secs(4),
        qos: 1,
        window: 2,
        payload_bytes: 96,
        connect_rate: Some(200.0),
        attest: true,
        firmware: Firmware::demo(),
        binds: vec![],
        consumer: Some(Consumer::Token(s.token.clone())),
        gateway_pid: None,
        keep_alive_secs: 30,
        lpwan: Some(LpwanOptions {
            api: s.api.clone(),
            token: s.token.clone(),
            lorawan_udp: Some(s.server.running.lorawan_udp_addr),
            lorawan_devices: 2,
            sigfox_devices: 2,
            interval: Duration::from_millis(500),
        }),
    };
    let report = sim_devices::run::run(opts, Arc::new(Live::default())).await;
    let text = report.to_text();
    assert!(report.errors.is_empty(), "{text}");
    assert_eq!(report.connects_ok, 24, "{text}");
    assert_eq!(report.connected_at_end, 24, "{text}");
    assert_eq!(report.attestations_verified, 24, "{text}");
    assert_eq!(report.attestations_failed, 0, "{text}");
    // ~96 msg/s for ~4 s, less the first interval's spread.
    assert!(report.messages_acked >= 250, "{text}");
    assert_eq!(report.messages_acked, report.messages_sent, "{text}");
    assert_eq!(report.messages_delivered, Some(report.messages_acked), "{text}");
    let stored = s.server.running.registry.telemetry_head().await.unwrap();
    assert!(stored >= report.messages_acked as i64, "{stored} stored, {text}");
    for p in [&report.handshake_ms, &report.connect_ms, &report.publish_ack_ms] {
        let p = p.unwrap();
        assert!(
            p.p50 > 0.0 && p.p50 <= p.p90 && p.p90 <= p.p99 && p.p99 <= p.max,
            "{text}"
        );
    }
    assert_eq!(report.handshake_ms.unwrap().count, 24, "{text}");
    let lorawan = report.lorawan.clone().unwrap();
    assert_eq!(lorawan.ready, 2, "{text}");
    assert!(lorawan.uplinks_sent >= 4, "{text}");
    assert_eq!(lorawan.uplinks_accepted, lorawan.uplinks_sent, "{text}");
    let sigfox = report.sigfox.clone().unwrap();
    assert_eq!(sigfox.ready, 2, "{text}");
    assert!(sigfox.uplinks_sent >= 4, "{text}");
    assert_eq!(sigfox.uplinks_accepted, sigfox.uplinks_sent, "{text}");
    // The gateway is this process here: its CPU and memory are read from /proc.
    if std::path::Path::new("/proc/self/stat").exists() {
        let gw = report.gateway.clone().unwrap();
        assert_eq!(gw.pid, std::process::id());
        assert!(gw.rss_peak_kib > 0, "{text}");
    }
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    for field in [
        "connects_per_s",
        "handshake_ms",
        "publish_ack_ms",
        "messages_per_s",
        "errors",
        "gateway",
    ] {
        assert!(json.get(field).is_some(), "{field} in {json}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_mode_makes_full_handshakes_and_counts_refusals_by_kind() {
    let s = setup(4).await;
    let identities = sim_devices::pki_dir::load(&s.pki).unwrap();
    // One device the server refuses: onboarded, then revoked before the run.
    let revoked = identities.last().unwrap().clone();
    let tls = |d: &sim_devices::pki::DeviceIdentity| ClientTls {
        server_ca_der: s.server.server_ca_der.clone(),
        server_name: "localhost".into(),
        profile: TlsProfile::Tls13,
        identity: Some((d.chain(), d.key_der.clone())),
        bind: None,
    };
    let mut c = Client::connect(s.server.addr(), &tls(&revoked)).await.unwrap();
    assert_eq!(c.mqtt_connect(&common::options(&revoked.id)).await.unwrap().1, 0);
    c.disconnect().await.unwrap();
    let (status, body) = s
        .server
        .api(
            reqwest::Method::POST,
            &format!("/api/v1/devices/{}/revoke", revoked.id),
            Some(serde_json::json!({"reason": "stolen"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // A device keeps no session tickets: a second connection is a full handshake too.
    let connector = Connector::new(&tls(&identities[0])).unwrap();
    for _ in 0..2 {
        let c = connector.connect(s.server.addr()).await.unwrap();
        assert!(!c.resumed());
    }
    let opts = RunOptions {
        gateway: s.server.addr(),
        server_name: "localhost".into(),
        server_ca_der: s.server.server_ca_der.clone(),
        identities: identities.clone(),
        mode: Mode::Handshakes,
        profile: ProfileChoice::Tls13,
        rate: Rate::Max,
        duration: Duration::from_secs(2),
        qos: 1,
        window: 1,
        payload_bytes: 64,
        connect_rate: None,
        attest: false,
        firmware: Firmware::demo(),
        binds: vec![],
        consumer: None,
        gateway_pid: None,
        keep_alive_secs: 30,
        lpwan: None,
    };
    let report = sim_devices::run::run(opts, Arc::new(Live::default())).await;
    let text = report.to_text();
    assert!(report.connects_ok >= 30, "{text}");
    assert_eq!(report.handshake_ms.unwrap().count, report.connects_ok, "{text}");
    assert_eq!(report.connect_ms.unwrap().count, report.connects_ok, "{text}");
    // The revoked device's attempts, and nothing else, are counted as TLS refusals.
    assert_eq!(report.errors.len(), 1, "{text}");
    let (kind, n) = report.errors.iter().next().unwrap();
    assert!(kind.starts_with("tls: "), "{text}");
    assert!(
        *n >= 1 && *n == report.connects_attempted - report.connects_ok,
        "{text}"
    );
    assert_eq!(report.connected_at_end, 0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_is_stopped_and_recorded_by_the_server() {
    let s = setup(3).await;
    let target = AttackTarget {
        gateway: s.server.addr(),
        server_name: "localhost".into(),
        server_ca_der: s.server.server_ca_der.clone(),
        devices: sim_devices::pki_dir::load(&s.pki).unwrap(),
        issuer: sim_devices::pki_dir::load_issuer(&s.pki).unwrap().map(Arc::new),
        api: Some(sim_devices::api::Api::new(&s.api, &s.token).unwrap()),
        lorawan_udp: Some(s.server.running.lorawan_udp_addr),
        firmware: Firmware::demo(),
    };
    let all: Vec<_> = attack::SCENARIOS.iter().collect();
    let outcomes = attack::run(&target, &all).await;
    let text = attack::to_text(&outcomes);
    assert_eq!(outcomes.len(), 11, "{text}");
    for o in &outcomes {
        assert_eq!(o.verdict, Verdict::Stopped, "{text}");
        assert!(o.server_event.is_some(), "{text}");
    }
    assert!(text.ends_with("11 of 11 attacks stopped\n"), "{text}");

    // Without the API and the CA key, what needs them is skipped, not failed; the rest is
    // judged from the wire alone.
    let bare = AttackTarget {
        api: None,
        issuer: None,
        lorawan_udp: None,
        ..target
    };
    let outcomes = attack::run(&bare, &all).await;
    let text = attack::to_text(&outcomes);
    let skipped: Vec<_> = outcomes
        .iter()
        .filter(|o| o.verdict == Verdict::Skipped)
        .map(|o| o.scenario)
        .collect();
    assert_eq!(
        skipped,
        [
            "expired-cert",
            "lorawan-replay",
            "lorawan-bad-mic",
            "lorawan-devnonce-reuse",
            "sigfox-replay"
        ],
        "{text}"
    );
    assert!(
        outcomes
            .iter()
            .all(|o| o.verdict != Verdict::NotStopped && o.server_event.is_none()),
        "{text}"
    );
}
