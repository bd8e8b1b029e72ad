//! The registry on both backends: migrations, CAs and the trust store, JITR under concurrency,
//! the device lifecycle, fleet queries, telemetry, sealed keys and their rotation, counters.
#![allow(clippy::unwrap_used)]

mod common;

use common::{NOW, TestDb};
use fleetward_test_support::{KeyKind, TestCa};
use registry::{
    DeviceFilter, DeviceStatus, EventFilter, Integrity, Kek, Keyring, NewCa, NewLorawanDevice, Registry, RegistryError,
    Sighting, Source, TelemetryMessage, TrustGeneration,
};
use verifier::Timestamp;
use verifier::challenge::DigestMode;
use verifier::x509::{ChainError, IdentitySource};

both!(
    migrations_from_empty,
    ca_registration_and_trust_store,
    revoking_a_ca_revokes_its_devices,
    jitr_concurrent_first_connections,
    device_lifecycle_and_events,
    fleet_queries_and_pagination,
    telemetry_batches_ranges_and_retention,
    telemetry_reads_merge_the_index_and_its_tail,
    sealed_keys_never_reach_the_database_in_clear,
    kek_rotation,
    counters_advance_once_under_concurrency,
    dev_nonce_replay,
    lorawan_abp_and_uplinks,
    lorawan_uplink_batches,
    sigfox_uplinks_and_sequence_numbers,
    sigfox_callbacks_and_downlinks,
    typed_errors,
    fleet_counts_stay_exact,
    commands_wait_for_offline_devices,
    challenges_are_single_use,
    appraisal_effects,
    firmware_references,
    api_tokens,
    gateway_helpers,
    operator_queries,
    audit_findings,
    directory_admits_known_devices_without_a_transaction,
    a_trust_change_committed_out_of_id_order_is_seen,
    grouped_registrations_answer_as_one_by_one_would,
    registrations_from_several_nodes_at_once,
    relay_outboxes_keep_what_jetstream_is_owed,
);

/// The trust events written so far (the kinds `trust_state.changes` counts).
const TRUST_EVENTS: &str = "SELECT COUNT(*) FROM events WHERE kind IN \
    ('ca.registered', 'ca.revoked', 'ca.serial_revoked', 'ca.crl_added', 'device.status')";

fn new_ca<'a>(ca: &'a TestCa, auto_activate: bool) -> NewCa<'a> {
    NewCa {
        cert_der: &ca.der,
        identity_source: IdentitySource::CommonName,
        identity_pattern: None,
        digest_mode: DigestMode::Direct,
        auto_activate,
        registered_by: "api:admin",
    }
}

/// Registers a device as the gateway would: verify its chain, then JITR.
async fn connect(r: &Registry, device_der: &[u8], now_ms: i64) -> registry::Registration {
    let store = r.trust_store().await.unwrap();
    let v = store
        .verify_device(device_der, &[], Timestamp::from_unix(now_ms / 1000))
        .unwrap();
    let ca = r.ca(&v.ca.sha256).await.unwrap();
    r.register_or_touch(
        &Sighting {
            device_id: v.device_id.as_str(),
            ca_id: &v.ca.sha256,
            cert_der: device_der,
            cert_sha256: &v.certificate.sha256,
            cert_serial: &v.certificate.serial,
            cert_not_after_ms: v.certificate.not_after.unix() * 1000,
            peer: Some("127.0.0.1:40000"),
            tls_version: Some("TLSv1.2"),
            tls_suite: Some("ECDHE-ECDSA-AES128-GCM-SHA256"),
        },
        ca.auto_activate,
        now_ms,
    )
    .await
    .unwrap()
}

async fn migrations_from_empty(db: &TestDb) {
    // Already migrated by open(); a second run applies nothing and every table is there, empty.
    assert_eq!(db.registry.migrate().await.unwrap(), 0);
    for table in [
        "provisioning_cas",
        "ca_revoked_serials",
        "ca_crls",
        "devices",
        "device_labels",
        "events",
        "telemetry",
        "pending_commands",
        "attestation_challenges",
        "attestation_results",
        "firmware_references",
        "api_tokens",
        "lorawan_devices",
        "lorawan_dev_nonces",
        "sigfox_devices",
        "settings",
        "lorawan_uplinks",
        "relay_outboxes",
    ] {
        assert_eq!(count(db, table).await, 0, "{table}");
    }
    // A second node opening the same database migrates nothing either.
    let again = db.reopen(common::keyring()).await;
    assert_eq!(again.migrate().await.unwrap(), 0);
    again.ping().await.unwrap();
}

async fn count(db: &TestDb, table: &str) -> i64 {
    db.raw_scalar(&format!("SELECT COUNT(*) FROM {table}")).await
}

async fn ca_registration_and_trust_store(db: &TestDb) {
    let r = &db.registry;
    let root = TestCa::stsafe_root("STSAFE CA");
    let ca = r.insert_ca(&new_ca(&root, true), NOW).await.unwrap();
    assert_eq!(ca.subject, "CN=STSAFE CA,O=STMicroelectronics,C=FR");
    assert!(matches!(
        r.insert_ca(&new_ca(&root, true), NOW).await,
        Err(RegistryError::Conflict { .. })
    ));
    assert_eq!(r.cas().await.unwrap().len(), 1);
    let events = r
        .events(
            &EventFilter {
                kind: Some("ca.registered".into()),
                ..Default::default()
            },
            10,
        )
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].actor, "api:admin");

    // The trust store built from the database validates the CA's devices with its policy.
    let device = root.issue_stsafe_device("eval3", &[0x02, 0x09, 0xAA]);
    let reg = connect(r, &device.der, NOW).await;
    assert_eq!(reg.device.id, "eval3-0209AA");
    assert_eq!(reg.device.status, DeviceStatus::Active);

    // A revoked serial takes effect in the next trust store.
    r.revoke_serial(&ca.id, "02:09:AA", "lost", "api:admin", NOW)
        .await
        .unwrap();
    let revoked = r
        .events(
            &EventFilter {
                kind: Some("ca.serial_revoked".into()),
                ..Default::default()
            },
            10,
        )
        .await
        .unwrap();
    // Stored in the same form the device certificate's `serial` is shown in.
    assert_eq!(
        revoked[0].detail.as_ref().unwrap()["serial"],
        reg.device.cert_serial.as_str()
    );
    assert_eq!(reg.device.cert_serial, "0209aa");
    let store = r.trust_store().await.unwrap();
    let err = store
        .verify_device(&device.der, &[], Timestamp::from_unix(NOW / 1000))
        .unwrap_err();
    assert_eq!(err.check(), "revoked");

    // CRLs are checked against the CA before they are stored.
    let other = TestCa::root(KeyKind::P256, "Other");
    let foreign_crl = other.crl(&[], "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z");
    assert!(matches!(
        r.add_crl(&ca.id, &foreign_crl, "api:admin", NOW).await,
        Err(RegistryError::Invalid { .. })
    ));
    let crl = root.crl(&[&[0x02, 0x09, 0xBB]], "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z");
    r.add_crl(&ca.id, &crl, "api:admin", NOW).await.unwrap();
    let listed = root.issue_stsafe_device("eval3", &[0x02, 0x09, 0xBB]);
    let err = r
        .trust_store()
        .await
        .unwrap()
        .verify_device(&listed.der, &[], Timestamp::from_unix(NOW / 1000))
        .unwrap_err();
    assert!(matches!(err, ChainError::Revoked { .. }), "{err:?}");
}

async fn revoking_a_ca_revokes_its_devices(db: &TestDb) {
    let r = &db.registry;
    let root = TestCa::root(KeyKind::P256, "Factory Root");
    let ca = r.insert_ca(&new_ca(&root, true), NOW).await.unwrap();
    let devices: Vec<_> = (0..5)
        .map(|i| root.issue_device(KeyKind::P256, &format!("dev-{i}")))
        .collect();
    for d in &devices {
        connect(r, &d.der, NOW).await;
    }
    r.set_device_status("dev-0", DeviceStatus::Quarantined, "api:op", "suspicious", NOW + 1)
        .await
        .unwrap();
    assert_eq!(
        r.revoke_ca(&ca.id, "api:admin", "key compromise", NOW + 2)
            .await
            .unwrap(),
        5
    );
    for i in 0..5 {
        assert_eq!(
            r.device(&format!("dev-{i}")).await.unwrap().status,
            DeviceStatus::Revoked
        );
    }
    // One event per device transition, plus the CA's.
    let per_device = r
        .events(
            &EventFilter {
                device_id: Some("dev-0".into()),
                kind: Some("device.status".into()),
                ..Default::default()
            },
            10,
        )
        .await
        .unwrap();
    assert_eq!(per_device.len(), 2);
    assert_eq!(per_device[1].detail.as_ref().unwrap()["from"], "quarantined");
    assert_eq!(per_device[1].reason.as_deref(), Some("key compromise"));
    let ca_events = r
        .events(
            &EventFilter {
                kind: Some("ca.revoked".into()),
                ..Default::default()
            },
            10,
        )
        .await
        .unwrap();
    assert_eq!(ca_events[0].detail.as_ref().unwrap()["devices_revoked"], 5);
    // Idempotent; and the trust store now names the revoked CA.
    assert_eq!(r.revoke_ca(&ca.id, "api:admin", "again", NOW + 3).await.unwrap(), 0);
    let err = r
        .trust_store()
        .await
        .unwrap()
        .verify_device(&devices[1].der, &[], Timestamp::from_unix(NOW / 1000))
        .unwrap_err();
    assert!(matches!(err, ChainError::CaRevoked { .. }), "{err:?}");
}

async fn jitr_concurrent_first_connections(db: &TestDb) {
    let r = &db.registry;
    let root = TestCa::root(KeyKind::P256, "Root");
    r.insert_ca(&new_ca(&root, false), NOW).await.unwrap();
    let device = root.issue_device(KeyKind::P256, "racer");
    // Two registry handles (two gateway nodes) and 24 simultaneous first connections.
    let other_node = db.reopen(common::keyring()).await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let reg = if i % 2 == 0 { r.clone() } else { other_node.clone() };
        let der = device.der.clone();
        tasks.push(tokio::spawn(async move { connect(&reg, &der, NOW + i).await }));
    }
    let mut created = 0;
    for t in tasks {
        let reg = t.await.unwrap();
        created += usize::from(reg.created);
        assert!(!reg.certificate_changed);
    }
    assert_eq!(created, 1, "exactly one connection creates the device");
    let d = r.device("racer").await.unwrap();
    assert_eq!(d.connections, 24);
    assert_eq!(d.status, DeviceStatus::Pending, "CA without auto-activate");
    let registered = r
        .events(
            &EventFilter {
                kind: Some("device.registered".into()),
                ..Default::default()
            },
            100,
        )
        .await
        .unwrap();
    assert_eq!(registered.len(), 1, "exactly one registration event");
    assert_eq!(count(db, "devices").await, 1);
}

async fn device_lifecycle_and_events(db: &TestDb) {
    let r = &db.registry;
    let root = TestCa::root(KeyKind::P256, "Root");
    r.insert_ca(&new_ca(&root, false), NOW).await.unwrap();
    let dev = root.issue_device(KeyKind::P256, "thermo-1");
    let reg = connect(r, &dev.der, NOW).await;
    assert!(reg.created);
    assert_eq!(reg.device.status, DeviceStatus::Pending);
    // A registration answers with the row it wrote, field for field.
    assert_eq!(reg.device, r.device("thermo-1").await.unwrap());
    assert_eq!(reg.device.connections, 1);
    let again = connect(r, &dev.der, NOW + 1).await;
    assert!(!again.created);
    assert_eq!(again.device, r.device("thermo-1").await.unwrap());
    assert_eq!((again.device.connections, again.device.last_seen_ms), (2, NOW + 1));
    assert_eq!(reg.device.tls_suite.as_deref(), Some("ECDHE-ECDSA-AES128-GCM-SHA256"));

    let d = r
        .set_device_status("thermo-1", DeviceStatus::Active, "api:op-1", "approved", NOW + 10)
        .await
        .unwrap();
    assert_eq!((d.status, d.status_changed_at_ms), (DeviceStatus::Active, NOW + 10));
    r.set_device_status(
        "thermo-1",
        DeviceStatus::Quarantined,
        "attestation",
        "firmware digest unknown",
        NOW + 20,
    )
    .await
    .unwrap();
    r.set_device_status("thermo-1", DeviceStatus::Active, "api:op-1", "re-attested", NOW + 30)
        .await
        .unwrap();
    assert!(matches!(
        r.set_device_status("thermo-1", DeviceStatus::Active, "api:op-1", "noop", NOW + 31)
            .await,
        Err(RegistryError::Conflict { .. })
    ));
    r.set_device_status(
        "thermo-1",
        DeviceStatus::Revoked,
        "api:admin",
        "decommissioned",
        NOW + 40,
    )
    .await
    .unwrap();
    assert!(matches!(
        r.set_device_status("thermo-1", DeviceStatus::Active, "api:admin", "undo", NOW + 50)
            .await,
        Err(RegistryError::Conflict { .. })
    ));
    let trail = r
        .events(
            &EventFilter {
                device_id: Some("thermo-1".into()),
                ..Default::default()
            },
            100,
        )
        .await
        .unwrap();
    let kinds: Vec<_> = trail.iter().map(|e| (e.kind.as_str(), e.actor.as_str())).collect();
    assert_eq!(
        kinds,
        [
            ("device.registered", "jitr"),
            ("device.status", "api:op-1"),
            ("device.status", "attestation"),
            ("device.status", "api:op-1"),
            ("device.status", "api:admin"),
        ]
    );
    assert_eq!(trail[2].reason.as_deref(), Some("firmware digest unknown"));
    assert_eq!(trail[4].detail.as_ref().unwrap()["to"], "revoked");

    // A reconnect with a different certificate under the same id is flagged, with an event.
    let renewed = root.issue_device(KeyKind::P256, "thermo-1");
    let reg = connect(r, &renewed.der, NOW + 60).await;
    assert!(reg.certificate_changed && !reg.created);
    assert_eq!(reg.device.connections, 3);

    r.set_integrity(
        "thermo-1",
        Integrity::Failed,
        Some("blocked firmware 1.2.0"),
        "attestation",
        NOW + 70,
    )
    .await
    .unwrap();
    r.set_firmware("thermo-1", "1.2.0", "ab".repeat(32).as_str())
        .await
        .unwrap();
    let d = r.device("thermo-1").await.unwrap();
    assert_eq!(
        (d.integrity, d.integrity_reason.as_deref()),
        (Integrity::Failed, Some("blocked firmware 1.2.0"))
    );
    assert!(matches!(r.device("nobody").await, Err(RegistryError::NotFound { .. })));
}

async fn fleet_queries_and_pagination(db: &TestDb) {
    let r = &db.registry;
    let root = TestCa::root(KeyKind::P256, "Root");
    let ca = r.insert_ca(&new_ca(&root, true), NOW).await.unwrap();
    // 30 devices: firmware alternates, every third quarantined, some labelled, seen at varied times.
    let template = root.issue_device(KeyKind::P256, "template");
    for i in 0..30 {
        let id = format!("node-{i:03}");
        let sha = format!("{i:064x}");
        r.register_or_touch(
            &Sighting {
                device_id: &id,
                ca_id: &ca.id,
                cert_der: &template.der,
                cert_sha256: &sha,
                cert_serial: "01",
                cert_not_after_ms: NOW + 1_000_000,
                peer: None,
                tls_version: None,
                tls_suite: None,
            },
            true,
            NOW + i * 1000,
        )
        .await
        .unwrap();
        r.set_firmware(&id, if i % 2 == 0 { "1.0.0" } else { "1.1.0" }, "00")
            .await
            .unwrap();
        if i % 3 == 0 {
            r.set_device_status(&id, DeviceStatus::Quarantined, "test", "q", NOW)
                .await
                .unwrap();
        }
        if i < 5 {
            r.set_label(&id, "site", Some("lyon")).await.unwrap();
        }
    }
    let all = |f: DeviceFilter| async move {
        let mut ids = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = r.list_devices(&f, after.as_deref(), 7).await.unwrap();
            assert!(page.items.len() <= 7);
            ids.extend(page.items.iter().map(|d| d.id.clone()));
            match page.next_after {
                Some(a) => after = Some(a),
                None => break,
            }
        }
        ids
    };
    let every = all(DeviceFilter::default()).await;
    assert_eq!(every.len(), 30);
    assert!(
        every.windows(2).all(|w| w[0] < w[1]),
        "ordered, no duplicates across pages"
    );
    assert_eq!(
        all(DeviceFilter {
            status: Some(DeviceStatus::Quarantined),
            ..Default::default()
        })
        .await
        .len(),
        10
    );
    assert_eq!(
        all(DeviceFilter {
            firmware_version: Some("1.1.0".into()),
            ..Default::default()
        })
        .await
        .len(),
        15
    );
    let q_and_fw = all(DeviceFilter {
        status: Some(DeviceStatus::Quarantined),
        firmware_version: Some("1.0.0".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(q_and_fw, ["node-000", "node-006", "node-012", "node-018", "node-024"]);
    assert_eq!(
        all(DeviceFilter {
            label: Some(("site".into(), "lyon".into())),
            ..Default::default()
        })
        .await
        .len(),
        5
    );
    assert_eq!(
        all(DeviceFilter {
            id_prefix: Some("node-01".into()),
            ..Default::default()
        })
        .await
        .len(),
        10
    );
    assert_eq!(
        all(DeviceFilter {
            last_seen_after_ms: Some(NOW + 25_000),
            ..Default::default()
        })
        .await
        .len(),
        5
    );
    assert_eq!(
        all(DeviceFilter {
            ca_id: Some(ca.id.clone()),
            integrity: Some(Integrity::Unknown),
            ..Default::default()
        })
        .await
        .len(),
        30
    );
    assert_eq!(
        all(DeviceFilter {
            ca_id: Some("nope".into()),
            ..Default::default()
        })
        .await
        .len(),
        0
    );

    let s = r.fleet_summary().await.unwrap();
    assert_eq!(s.total, 30);
    assert_eq!(s.by_status["active"], 20);
    assert_eq!(s.by_status["quarantined"], 10);
    assert_eq!(s.by_integrity["unknown"], 30);
    assert_eq!(s.by_firmware["1.0.0"], 15);
    assert_eq!(r.labels("node-001").await.unwrap()["site"], "lyon");
}

fn msg(device: &str, i: i64) -> TelemetryMessage {
    TelemetryMessage {
        device_id: device.into(),
        topic: format!("devices/{device}/telemetry"),
        payload: format!("{{\"t\":{i}}}").into_bytes(),
        qos: 1,
        source: Source::Mqtt,
        received_at_ms: NOW + i,
    }
}

async fn telemetry_batches_ranges_and_retention(db: &TestDb) {
    let r = &db.registry;
    // 1,200 messages in one batch (several INSERT statements, one transaction).
    let batch: Vec<_> = (0..1200).map(|i| msg(if i % 2 == 0 { "a" } else { "b" }, i)).collect();
    r.store_telemetry(&batch).await.unwrap();
    let a = r.telemetry("a", NOW, NOW + 10_000, 10_000).await.unwrap();
    assert_eq!(a.len(), 600);
    assert_eq!(a[0].payload, b"{\"t\":0}");
    assert!(a.windows(2).all(|w| w[0].received_at_ms <= w[1].received_at_ms));
    let window = r.telemetry("b", NOW + 100, NOW + 200, 1000).await.unwrap();
    assert_eq!(window.len(), 50);
    assert_eq!(window[0].received_at_ms, NOW + 101);
    assert_eq!(window[0].topic, "devices/b/telemetry");

    // Retention: nothing older than 1000 ms before NOW+1200, then at most 100 per device.
    let deleted = r.prune_telemetry(1000, 100, NOW + 1200).await.unwrap();
    assert_eq!(deleted, 200 + 800);
    let a = r.telemetry("a", 0, i64::MAX, 10_000).await.unwrap();
    assert_eq!(a.len(), 100);
    assert_eq!(a.last().unwrap().received_at_ms, NOW + 1198, "the newest are kept");

    // The ids a batch is given are its rows', in order: after other rows, and after the table was
    // pruned empty (ids keep growing past every id ever given, so the store reads them back).
    for _ in 0..2 {
        let head = r.telemetry_head().await.unwrap();
        let batch: Vec<_> = (0..700)
            .map(|i| msg(if i % 3 == 0 { "c" } else { "d" }, 5000 + i))
            .collect();
        let ids = r.store_telemetry_returning_ids(&batch).await.unwrap();
        let stored = r.telemetry_after(head, 1000).await.unwrap();
        assert_eq!(stored.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
        assert!(
            stored
                .iter()
                .zip(&batch)
                .all(|(s, m)| s.payload == m.payload && s.device_id == m.device_id)
        );
        assert!(ids[0] > head, "ids only grow");
        r.prune_telemetry(0, 0, NOW + 100_000).await.unwrap();
        assert_eq!(r.telemetry_head().await.unwrap(), 0, "pruned empty");
    }
}

/// SQLite indexes telemetry per device in sorted batches behind the writers
/// (`Registry::index_telemetry`); a read merges the index with the rows above its mark. Whatever
/// the mark, a read gives what a plain index would: every row in range, in (received_at, id)
/// order, cut at the limit. PostgreSQL indexes row by row, and must answer the same.
async fn telemetry_reads_merge_the_index_and_its_tail(db: &TestDb) {
    let r = &db.registry;
    let sqlite = r.backend() == registry::Backend::Sqlite;
    let at = |device: &str, t: i64, n: i64| TelemetryMessage {
        received_at_ms: NOW + t,
        payload: format!("{n}").into_bytes(),
        ..msg(device, 0)
    };
    // Three rounds: e's rows at times 10, 20, 30 (each round also writes f), stored round by
    // round; a late row (time 5, received out of order) comes last.
    let mut expected = Vec::new();
    for round in 0..3 {
        let batch: Vec<_> = (0..4)
            .map(|i| at(if i % 2 == 0 { "e" } else { "f" }, (round + 1) * 10 + i, round * 4 + i))
            .collect();
        let ids = r.store_telemetry_returning_ids(&batch).await.unwrap();
        expected.extend(
            ids.iter()
                .zip(&batch)
                .filter(|(_, m)| m.device_id == "e")
                .map(|(id, m)| (*id, m.clone())),
        );
        if round == 0 {
            // The first round is indexed in chunks of 3 ids: 3, then the last 1, then nothing.
            assert_eq!(r.index_telemetry(3).await.unwrap(), if sqlite { 3 } else { 0 });
            assert_eq!(r.index_telemetry(3).await.unwrap(), if sqlite { 1 } else { 0 });
            assert_eq!(r.index_telemetry(3).await.unwrap(), 0, "caught up");
        }
    }
    if sqlite {
        // A pass cut short after a part committed leaves entries above the mark: they stay
        // unread (the rows above the mark come from the table), so nothing shows twice.
        let mark = db.raw_scalar("SELECT indexed_through FROM telemetry_index_state").await;
        db.raw_execute(&format!(
            "INSERT INTO telemetry_by_device SELECT device_id, received_at, id FROM telemetry WHERE id > {mark}"
        ))
        .await;
    }
    let late = at("e", 5, 99);
    let late_id = r
        .store_telemetry_returning_ids(std::slice::from_ref(&late))
        .await
        .unwrap()[0];
    expected.push((late_id, late));
    expected.sort_by_key(|(id, m)| (m.received_at_ms, *id));
    let want = |v: &[(i64, TelemetryMessage)]| -> Vec<(i64, Vec<u8>, i64)> {
        v.iter()
            .map(|(id, m)| (*id, m.payload.clone(), m.received_at_ms))
            .collect()
    };
    let got = |v: Vec<registry::StoredMessage>| -> Vec<(i64, Vec<u8>, i64)> {
        v.into_iter().map(|m| (m.id, m.payload, m.received_at_ms)).collect()
    };
    // The same answers with the mark after round 1, after round 2, and past everything.
    for step in 0..3 {
        assert_eq!(
            got(r.telemetry("e", 0, i64::MAX, 100).await.unwrap()),
            want(&expected),
            "step {step}"
        );
        // Limits cut the merged order: the late (tail) row first, then indexed rows.
        assert_eq!(
            got(r.telemetry("e", 0, i64::MAX, 2).await.unwrap()),
            want(&expected[..2]),
            "step {step}"
        );
        // A window by time applies to both parts.
        let window = r.telemetry("e", NOW + 12, NOW + 33, 100).await.unwrap();
        assert_eq!(
            window.iter().map(|m| m.received_at_ms - NOW).collect::<Vec<_>>(),
            [12, 20, 22, 30, 32],
            "step {step}"
        );
        assert!(r.telemetry("nobody", 0, i64::MAX, 100).await.unwrap().is_empty());
        r.index_telemetry(if step == 0 { 4 } else { 1_000 }).await.unwrap();
    }
    if sqlite {
        // Fully indexed: one index entry per row, and deleting a row (retention) deletes its entry.
        assert_eq!(
            db.raw_scalar("SELECT COUNT(*) FROM telemetry_by_device").await,
            db.raw_scalar("SELECT COUNT(*) FROM telemetry").await
        );
        assert_eq!(
            r.prune_telemetry(i64::MAX / 2, 1, NOW + 100).await.unwrap(),
            13 - 2,
            "e and f keep their newest"
        );
        assert_eq!(db.raw_scalar("SELECT COUNT(*) FROM telemetry_by_device").await, 2);
    } else {
        assert_eq!(
            r.prune_telemetry(i64::MAX / 2, 1, NOW + 100).await.unwrap(),
            13 - 2,
            "e and f keep their newest"
        );
    }
    let kept = r.telemetry("e", 0, i64::MAX, 100).await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].received_at_ms, NOW + 32, "the newest by time");

    // A pass over more rows than one part writes several parts; every row is indexed once.
    let batch: Vec<_> = (0..5000)
        .map(|i| at(["g", "h", "i"][i as usize % 3], 100 + i, i))
        .collect();
    r.store_telemetry(&batch).await.unwrap();
    assert_eq!(r.index_telemetry(10_000).await.unwrap(), if sqlite { 5000 } else { 0 });
    if sqlite {
        assert_eq!(db.raw_scalar("SELECT COUNT(*) FROM telemetry_by_device").await, 5002);
    }
    let h = r.telemetry("h", 0, i64::MAX, 10_000).await.unwrap();
    assert_eq!(h.len(), 1667);
    assert!(h.windows(2).all(|w| w[0].received_at_ms < w[1].received_at_ms));
}

async fn sealed_keys_never_reach_the_database_in_clear(db: &TestDb) {
    let r = &db.registry;
    let app_key = *b"\xA1APPKEY-PLAINTXT";
    let nwk_key = *b"\xB2NWKKEY-PLAINTXT";
    let nak = *b"\xC3SIGFOX-NAK-PLTX";
    let session = b"\xD4SESSION-KEYS-PLAINTEXT-0123456789";
    r.insert_lorawan_device(
        &NewLorawanDevice {
            dev_eui: "70B3D57ED0000001",
            join_eui: "70B3D57ED0000000",
            mac_version: "1.1",
            app_key: &app_key,
            nwk_key: Some(&nwk_key),
        },
        NOW,
    )
    .await
    .unwrap();
    r.set_lorawan_session("70B3D57ED0000001", "26011BDA", session, NOW)
        .await
        .unwrap();
    r.insert_sigfox_device("01A2B3C4", Some(&nak), NOW).await.unwrap();

    // They open again, through the registry.
    let keys = r.lorawan_root_keys("70b3d57ed0000001").await.unwrap();
    assert_eq!(&keys.app_key[..], &app_key);
    assert_eq!(keys.nwk_key.as_deref().map(|k| &k[..]), Some(&nwk_key[..]));
    assert!(!format!("{keys:?}").contains("PLAINTXT"));
    let (dev_eui, opened, f_cnt) = r.lorawan_session_by_addr("26011BDA").await.unwrap();
    assert_eq!(
        (dev_eui.as_str(), &opened[..], f_cnt),
        ("70B3D57ED0000001", &session[..], None)
    );
    assert_eq!(&r.sigfox_device("01A2B3C4").await.unwrap().nak.unwrap()[..], &nak);

    // …but their plaintext is nowhere in the database: not in a full dump of it…
    let dump = db.dump();
    assert!(
        dump.windows(16).any(|w| w == b"70B3D57ED0000001"),
        "the dump holds the data (the check can fail)"
    );
    for secret in [&app_key[..], &nwk_key[..], &nak[..], &session[..]] {
        let hex = hex::encode(secret);
        assert!(
            !dump.windows(secret.len()).any(|w| w == secret),
            "plaintext key bytes in the database"
        );
        assert!(
            !dump.windows(hex.len()).any(|w| w == hex.as_bytes()),
            "plaintext key (hex) in the database"
        );
    }
    if let Some(file) = &db.sqlite_file {
        // And not in the files on disk either (main database and write-ahead log).
        let mut bytes = std::fs::read(file).unwrap();
        bytes.extend(std::fs::read(file.with_extension("db-wal")).unwrap_or_default());
        for secret in [&app_key[..], &nwk_key[..], &nak[..], &session[..]] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret),
                "plaintext key in the SQLite files"
            );
        }
        // The check itself works: a non-secret string stored in clear is found.
        assert!(bytes.windows(16).any(|w| w == b"70B3D57ED0000001"));
    }
    // A different KEK cannot open them: the error says which KEK is missing.
    let stranger = db
        .reopen(Keyring::new(Kek::from_hex("other", &"77".repeat(32)).unwrap()))
        .await;
    let err = stranger.sigfox_device("01A2B3C4").await.unwrap_err();
    assert!(
        matches!(&err, RegistryError::Sealing { detail } if detail.contains("test-1")),
        "{err}"
    );
}

async fn kek_rotation(db: &TestDb) {
    let r = &db.registry;
    let nak = [0x42u8; 16];
    r.insert_sigfox_device("0000ABCD", Some(&nak), NOW).await.unwrap();
    r.insert_lorawan_device(
        &NewLorawanDevice {
            dev_eui: "0000000000000001",
            join_eui: "0000000000000000",
            mac_version: "1.0.3",
            app_key: &[7; 16],
            nwk_key: None,
        },
        NOW,
    )
    .await
    .unwrap();
    let new_kek = || Kek::from_hex("test-2", &"a7".repeat(32)).unwrap();
    let rotated = db
        .reopen(Keyring::new(new_kek()).with_previous(Kek::from_hex("test-1", &"5e".repeat(32)).unwrap()))
        .await;
    assert_eq!(rotated.rotate_keys().await.unwrap(), 2);
    assert_eq!(rotated.rotate_keys().await.unwrap(), 0, "idempotent");
    // Now the new KEK alone opens everything; the old one alone opens nothing.
    let only_new = db.reopen(Keyring::new(new_kek())).await;
    assert_eq!(
        &only_new.sigfox_device("0000ABCD").await.unwrap().nak.unwrap()[..],
        &nak
    );
    assert_eq!(
        &only_new.lorawan_root_keys("0000000000000001").await.unwrap().app_key[..],
        &[7; 16]
    );
    assert!(r.sigfox_device("0000ABCD").await.is_err());
}

async fn counters_advance_once_under_concurrency(db: &TestDb) {
    let r = &db.registry;
    r.insert_sigfox_device("0000BEEF", Some(&[1; 16]), NOW).await.unwrap();
    r.insert_lorawan_device(
        &NewLorawanDevice {
            dev_eui: "0000000000000002",
            join_eui: "0000000000000000",
            mac_version: "1.0.3",
            app_key: &[7; 16],
            nwk_key: None,
        },
        NOW,
    )
    .await
    .unwrap();
    // 32 handlers (on two nodes) accept "the same frame" at once: one wins.
    let other = db.reopen(common::keyring()).await;
    let mut tasks = Vec::new();
    for i in 0..32 {
        let reg = if i % 2 == 0 { r.clone() } else { other.clone() };
        tasks.push(tokio::spawn(async move {
            (
                reg.cas_sigfox_seq("0000BEEF", None, 17, NOW).await.unwrap(),
                reg.cas_lorawan_f_cnt_up("0000000000000002", None, 5, NOW)
                    .await
                    .unwrap(),
            )
        }));
    }
    let (mut sig, mut lora) = (0, 0);
    for t in tasks {
        let (s, l) = t.await.unwrap();
        sig += usize::from(s);
        lora += usize::from(l);
    }
    assert_eq!((sig, lora), (1, 1));
    assert_eq!(r.sigfox_device("0000BEEF").await.unwrap().last_seq, Some(17));
    // The next frame advances from 17; a stale reader (expects None) loses.
    assert!(r.cas_sigfox_seq("0000BEEF", Some(17), 18, NOW).await.unwrap());
    assert!(!r.cas_sigfox_seq("0000BEEF", None, 19, NOW).await.unwrap());
    assert!(!r.cas_sigfox_seq("0000BEEF", Some(17), 19, NOW).await.unwrap());

    // Downlink counters: 20 concurrent takers get 20 distinct values, 0..20.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let reg = if i % 2 == 0 { r.clone() } else { other.clone() };
        tasks.push(tokio::spawn(async move {
            reg.next_lorawan_f_cnt_down("0000000000000002", true, NOW)
                .await
                .unwrap()
        }));
    }
    let mut taken = Vec::new();
    for t in tasks {
        taken.push(t.await.unwrap());
    }
    taken.sort();
    assert_eq!(taken, (0..20).collect::<Vec<i64>>());
    assert_eq!(
        r.next_lorawan_f_cnt_down("0000000000000002", false, NOW).await.unwrap(),
        0,
        "AFCntDown is separate"
    );
}

/// ABP provisioning, listing without keys, and uplinks stored once per (device, FCnt).
async fn lorawan_abp_and_uplinks(db: &TestDb) {
    use registry::{NewAbpDevice, NewLorawanUplink};
    let r = &db.registry;
    let keys = [9u8; registry::SESSION_KEYS_LEN];
    r.insert_lorawan_abp(
        &NewAbpDevice {
            dev_eui: "00000000000000a1",
            dev_addr: "26011bda",
            mac_version: "1.0.4",
            session_keys: &keys,
            f_cnt_up: Some(41),
            f_cnt_down: 7,
        },
        NOW,
    )
    .await
    .unwrap();
    // The DevAddr is taken: another ABP device cannot have it.
    assert!(matches!(
        r.insert_lorawan_abp(
            &NewAbpDevice {
                dev_eui: "00000000000000a2",
                dev_addr: "26011BDA",
                mac_version: "1.0.4",
                session_keys: &keys,
                f_cnt_up: None,
                f_cnt_down: 0,
            },
            NOW,
        )
        .await,
        Err(RegistryError::Conflict { .. })
    ));
    let info = r.lorawan_device("00000000000000A1").await.unwrap();
    assert_eq!(
        (
            info.activation.as_str(),
            info.dev_addr.as_deref(),
            info.f_cnt_up,
            info.n_f_cnt_down
        ),
        ("abp", Some("26011BDA"), Some(41), 7)
    );
    let (eui, opened, fcnt) = r.lorawan_session_by_addr("26011bda").await.unwrap();
    assert_eq!(
        (eui.as_str(), &opened[..], fcnt),
        ("00000000000000A1", &keys[..], Some(41))
    );
    assert_eq!(r.lorawan_devices(None, 10).await.unwrap().len(), 1);
    assert!(
        r.lorawan_devices(Some("00000000000000A1"), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let gateways = serde_json::json!([{ "gateway": "0102030405060708", "rssi": -35 }]);
    let up = NewLorawanUplink {
        dev_eui: "00000000000000a1",
        session: 0,
        topic: None,
        f_cnt: 42,
        f_port: Some(1),
        payload: b"hello",
        gateways: &gateways,
    };
    assert!(r.store_lorawan_uplink(&up, NOW).await.unwrap());
    assert!(
        !r.store_lorawan_uplink(&up, NOW + 1).await.unwrap(),
        "the same frame again"
    );
    let stored = r.lorawan_uplinks("00000000000000A1", 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!((stored[0].f_cnt, stored[0].payload.as_slice()), (42, &b"hello"[..]));
    assert_eq!(stored[0].gateways[0]["rssi"], -35);
}

async fn dev_nonce_replay(db: &TestDb) {
    let r = &db.registry;
    r.insert_lorawan_device(
        &NewLorawanDevice {
            dev_eui: "0000000000000003",
            join_eui: "0000000000000000",
            mac_version: "1.0.3",
            app_key: &[7; 16],
            nwk_key: None,
        },
        NOW,
    )
    .await
    .unwrap();
    assert!(r.record_dev_nonce("0000000000000003", 0x1234, NOW).await.unwrap());
    assert!(
        !r.record_dev_nonce("0000000000000003", 0x1234, NOW + 1).await.unwrap(),
        "replayed DevNonce"
    );
    assert!(r.record_dev_nonce("0000000000000003", 0x1235, NOW + 2).await.unwrap());
    // JoinNonces are handed out once each, from 0; 1.1 DevNonces must increase.
    assert_eq!(r.next_join_nonce("0000000000000003", NOW).await.unwrap(), 0);
    assert_eq!(r.next_join_nonce("0000000000000003", NOW).await.unwrap(), 1);
    assert!(r.advance_dev_nonce("0000000000000003", 5, NOW).await.unwrap());
    assert!(
        !r.advance_dev_nonce("0000000000000003", 5, NOW).await.unwrap(),
        "same DevNonce"
    );
    assert!(
        !r.advance_dev_nonce("0000000000000003", 4, NOW).await.unwrap(),
        "lower DevNonce"
    );
    assert!(r.advance_dev_nonce("0000000000000003", 6, NOW).await.unwrap());
    assert!(matches!(
        r.insert_lorawan_device(
            &NewLorawanDevice {
                dev_eui: "0000000000000003",
                join_eui: "0000000000000000",
                mac_version: "1.0.3",
                app_key: &[7; 16],
                nwk_key: None
            },
            NOW,
        )
        .await,
        Err(RegistryError::Conflict { .. })
    ));
    assert!(matches!(
        r.record_dev_nonce("not-hex", 1, NOW).await,
        Err(RegistryError::Invalid { .. })
    ));
}

async fn typed_errors(db: &TestDb) {
    let r = &db.registry;
    assert!(matches!(
        r.ca("f00").await,
        Err(RegistryError::NotFound {
            what: "provisioning CA",
            ..
        })
    ));
    assert!(matches!(
        r.sigfox_device("00000000").await,
        Err(RegistryError::NotFound { .. })
    ));
    let err = r
        .set_device_status("ghost", DeviceStatus::Active, "t", "t", NOW)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "device `ghost` not found");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn unreachable_database_is_a_retryable_error() {
    // Port 1 on loopback: nothing listens; the error is typed, retryable, and free of SQL.
    let err = Registry::open("postgres://postgres@127.0.0.1:1/none", common::keyring())
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("retry"), "{err}");
    assert!(matches!(
        Registry::open("mysql://x", common::keyring()).await,
        Err(RegistryError::Invalid { .. })
    ));
}

async fn fleet_counts_stay_exact(db: &TestDb) {
    let r = &db.registry;
    let root = TestCa::root(KeyKind::P256, "Root");
    let ca = r.insert_ca(&new_ca(&root, false), NOW).await.unwrap();
    for i in 0..12 {
        let d = root.issue_device(KeyKind::P256, &format!("c-{i:02}"));
        connect(r, &d.der, NOW).await;
        connect(r, &d.der, NOW + 1).await; // a reconnect changes no count
    }
    for i in 0..6 {
        r.set_device_status(&format!("c-{i:02}"), DeviceStatus::Active, "t", "approve", NOW)
            .await
            .unwrap();
        r.set_firmware(&format!("c-{i:02}"), "2.0.0", "00").await.unwrap();
    }
    r.set_integrity("c-00", Integrity::Failed, None, "t", NOW)
        .await
        .unwrap();
    r.set_firmware("c-00", "2.0.0", "11").await.unwrap(); // same version: no change
    r.set_firmware("c-01", "2.1.0", "22").await.unwrap();
    let before_revoke = r.fleet_summary().await.unwrap();
    assert_eq!(before_revoke.by_status["active"], 6);
    assert_eq!(before_revoke.by_status["pending"], 6);
    assert_eq!(before_revoke.by_firmware["2.0.0"], 5);
    assert_eq!(before_revoke.by_firmware["unknown"], 6);
    assert_eq!(before_revoke.by_integrity["failed"], 1);
    r.revoke_ca(&ca.id, "t", "compromised", NOW).await.unwrap();
    // After every kind of change, the maintained counts equal a fresh GROUP BY.
    let s = r.fleet_summary().await.unwrap();
    assert_eq!(s.total, 12);
    assert_eq!(s.by_status.len(), 1);
    assert_eq!(s.by_status["revoked"], 12);
    assert_eq!(s.by_ca[&ca.id], 12);
    let digests = r.firmware_digest_counts().await.unwrap();
    assert_eq!(s.by_key["ECDSA P-256"], 12);
    for (dimension, column) in [
        ("status", "status"),
        ("integrity", "integrity"),
        ("firmware", "COALESCE(firmware_version, 'unknown')"),
        ("ca", "ca_id"),
        ("key", "COALESCE(cert_key, 'unknown')"),
        ("digest", "COALESCE(firmware_digest, 'unknown')"),
    ] {
        let truth = db
            .raw_scalar(&format!("SELECT COUNT(DISTINCT {column}) FROM devices"))
            .await;
        let map = match dimension {
            "status" => &s.by_status,
            "integrity" => &s.by_integrity,
            "ca" => &s.by_ca,
            "key" => &s.by_key,
            "digest" => &digests,
            _ => &s.by_firmware,
        };
        assert_eq!(map.len() as i64, truth, "{dimension}");
        for (value, n) in map {
            let expected = db
                .raw_scalar(&format!("SELECT COUNT(*) FROM devices WHERE {column} = '{value}'"))
                .await;
            assert_eq!(*n, expected, "{dimension}={value}");
        }
    }
}

async fn commands_wait_for_offline_devices(db: &TestDb) {
    let r = &db.registry;
    let a = r
        .enqueue_command("dev-a", "devices/dev-a/commands/reboot", b"{}", 1, 60_000, NOW)
        .await
        .unwrap();
    let b = r
        .enqueue_command("dev-a", "devices/dev-a/commands/set", b"{\"t\":21}", 1, 1_000, NOW + 1)
        .await
        .unwrap();
    r.enqueue_command("dev-b", "devices/dev-b/commands/x", b"", 0, 60_000, NOW)
        .await
        .unwrap();
    let pending = r.pending_commands("dev-a", NOW + 10, 100).await.unwrap();
    assert_eq!(pending.iter().map(|c| c.id).collect::<Vec<_>>(), [a, b]);
    assert_eq!(pending[1].payload, b"{\"t\":21}");
    // The second expires; the first is delivered once.
    assert!(r.mark_command_delivered(a, NOW + 20).await.unwrap());
    assert!(!r.mark_command_delivered(a, NOW + 21).await.unwrap());
    assert!(r.pending_commands("dev-a", NOW + 2_000, 100).await.unwrap().is_empty());
    assert_eq!(r.prune_commands(0, NOW + 2_000).await.unwrap(), 2);
    assert_eq!(r.pending_commands("dev-b", NOW + 2_000, 100).await.unwrap().len(), 1);
}

async fn challenges_are_single_use(db: &TestDb) {
    use registry::RedeemOutcome;
    use verifier::challenge::{Challenge, ChallengePolicy, Nonce};
    let r = &db.registry;
    let t0 = Timestamp::from_unix(NOW / 1000);
    let c = Challenge::issue("dev-x", [0x42; 32], t0, &ChallengePolicy { lifetime_secs: 60 });
    r.store_challenge(&c).await.unwrap();
    // 16 concurrent answers with the same nonce: one is accepted.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let reg = r.clone();
        tasks.push(tokio::spawn(async move {
            reg.redeem_challenge("dev-x", &Nonce::from_bytes([0x42; 32]), NOW + 1000 + i)
                .await
                .unwrap()
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    assert_eq!(outcomes.iter().filter(|o| **o == RedeemOutcome::Redeemed).count(), 1);
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, RedeemOutcome::Redeemed | RedeemOutcome::AlreadyUsed))
    );
    // Another device presenting it, an unknown nonce, a late answer.
    assert_eq!(
        r.redeem_challenge("dev-y", &Nonce::from_bytes([0x42; 32]), NOW)
            .await
            .unwrap(),
        RedeemOutcome::OtherDevice {
            issued_to: "dev-x".into()
        }
    );
    assert_eq!(
        r.redeem_challenge("dev-x", &Nonce::from_bytes([0x43; 32]), NOW)
            .await
            .unwrap(),
        RedeemOutcome::Unknown
    );
    let late = Challenge::issue("dev-x", [0x44; 32], t0, &ChallengePolicy { lifetime_secs: 60 });
    r.store_challenge(&late).await.unwrap();
    assert_eq!(
        r.redeem_challenge("dev-x", &Nonce::from_bytes([0x44; 32]), NOW + 61_000)
            .await
            .unwrap(),
        RedeemOutcome::Expired
    );
    // Expired challenges are pruned.
    assert_eq!(r.prune_challenges(NOW + 61_000).await.unwrap(), 2);
}

/// Appraisals move integrity and, per the CA's policy, the device's status; key possession never
/// clears a failed firmware verdict; only the policy's own quarantine is lifted by attestation.
async fn appraisal_effects(db: &TestDb) {
    use registry::{AttestationPolicy, AttestationResult, OnFailure};
    let r = &db.registry;
    let root = TestCa::root(KeyKind::P256, "Appraisal CA");
    let ca = r.insert_ca(&new_ca(&root, true), NOW).await.unwrap();
    let dev = root.issue_device(KeyKind::P256, "eval3-0209A1");
    connect(r, &dev.der, NOW).await;
    let id = "eval3-0209A1";
    let policy = AttestationPolicy::default();
    let measured = |verified: bool, reason: Option<&'static str>| AttestationResult {
        device_id: id,
        format: "measurement",
        verified,
        reason,
        message: reason,
        firmware_name: Some("sensor-fw"),
        firmware_version: Some(if verified { "1.4.2" } else { "1.3.0" }),
        firmware_digest: Some(if verified { "d1d1" } else { "b0b0" }),
        affects_integrity: true,
        ..Default::default()
    };
    // A replayed answer says nothing about the device: integrity and status unchanged.
    let replay = AttestationResult {
        device_id: id,
        format: "measurement",
        reason: Some("replayed_nonce"),
        affects_integrity: false,
        ..Default::default()
    };
    let e = r.record_attestation(&replay, &policy, NOW + 1).await.unwrap();
    assert_eq!(
        (e.integrity, e.status, e.status_changed),
        (Integrity::Unknown, DeviceStatus::Active, None)
    );
    // Blocked firmware: failed, quarantined by the policy, the measured firmware recorded.
    let e = r
        .record_attestation(&measured(false, Some("firmware_blocked")), &policy, NOW + 2)
        .await
        .unwrap();
    assert_eq!(e.integrity, Integrity::Failed);
    assert_eq!(
        e.status_changed,
        Some((DeviceStatus::Active, DeviceStatus::Quarantined))
    );
    let d = r.device(id).await.unwrap();
    assert_eq!(
        (d.firmware_version.as_deref(), d.firmware_digest.as_deref()),
        (Some("1.3.0"), Some("b0b0"))
    );
    // A plain SE signature proves the key, not the firmware: the verdict stays failed.
    let se = AttestationResult {
        device_id: id,
        format: "se-signature",
        verified: true,
        affects_integrity: true,
        ..Default::default()
    };
    let e = r.record_attestation(&se, &policy, NOW + 3).await.unwrap();
    assert_eq!((e.integrity, e.status), (Integrity::Failed, DeviceStatus::Quarantined));
    // Good firmware: verified, and the policy's own quarantine is lifted.
    let e = r
        .record_attestation(&measured(true, None), &policy, NOW + 4)
        .await
        .unwrap();
    assert_eq!(e.integrity, Integrity::Verified);
    assert_eq!(
        e.status_changed,
        Some((DeviceStatus::Quarantined, DeviceStatus::Active))
    );
    // An operator's quarantine is not lifted by attestation.
    r.set_device_status(id, DeviceStatus::Quarantined, "api:ops", "inspection", NOW + 5)
        .await
        .unwrap();
    let e = r
        .record_attestation(&measured(true, None), &policy, NOW + 6)
        .await
        .unwrap();
    assert_eq!((e.status, e.status_changed), (DeviceStatus::Quarantined, None));
    r.set_device_status(id, DeviceStatus::Active, "api:ops", "inspected", NOW + 7)
        .await
        .unwrap();
    // Flag-only policy: failed, still active.
    let flag = AttestationPolicy {
        on_failure: OnFailure::Flag,
        ..Default::default()
    };
    r.set_attestation_policy(&ca.id, &flag, "api:admin", NOW + 8)
        .await
        .unwrap();
    assert_eq!(r.attestation_policy(&ca.id).await.unwrap(), flag);
    let e = r
        .record_attestation(&measured(false, Some("firmware_unknown")), &flag, NOW + 9)
        .await
        .unwrap();
    assert_eq!(
        (e.integrity, e.status, e.status_changed),
        (Integrity::Failed, DeviceStatus::Active, None)
    );
    let history = r.attestation_history(id, 10).await.unwrap();
    assert_eq!(history.len(), 6);
    assert_eq!(history[0].reason.as_deref(), Some("firmware_unknown"));
    let failed = r
        .events(
            &EventFilter {
                kind: Some("attestation.failed".into()),
                ..Default::default()
            },
            10,
        )
        .await
        .unwrap();
    assert_eq!(failed.len(), 3);
    // Freshness: a verdict older than the window becomes stale, once.
    r.record_attestation(&measured(true, None), &flag, NOW + 10)
        .await
        .unwrap();
    let window = i64::try_from(flag.freshness_secs).unwrap() * 1000;
    assert!(r.mark_stale(NOW + 10 + window, 100).await.unwrap().is_empty());
    assert_eq!(r.mark_stale(NOW + 11 + window, 100).await.unwrap(), [id]);
    assert!(r.mark_stale(NOW + 12 + window, 100).await.unwrap().is_empty());
    assert_eq!(r.device(id).await.unwrap().integrity, Integrity::Stale);
    // The policy's quarantines and releases count as trust changes, one per status event.
    assert_eq!(
        r.trust_generation().await.unwrap().changes,
        db.raw_scalar(TRUST_EVENTS).await
    );
}

async fn firmware_references(db: &TestDb) {
    let r = &db.registry;
    let digest = "AB".repeat(32);
    let f = r
        .add_firmware_reference("sensor-fw", "1.2.0", &digest, Some("0102"), true, "api:admin", NOW)
        .await
        .unwrap();
    assert_eq!(f.digest_hex, "ab".repeat(32));
    r.add_firmware_reference("sensor-fw", "1.1.0", &"cd".repeat(32), None, false, "api:admin", NOW)
        .await
        .unwrap();
    assert!(matches!(
        r.add_firmware_reference("sensor-fw", "1.2.0", &digest, None, true, "api:admin", NOW)
            .await,
        Err(RegistryError::Conflict { .. })
    ));
    assert!(matches!(
        r.add_firmware_reference("x", "1", "zz", None, true, "a", NOW).await,
        Err(RegistryError::Invalid { .. })
    ));
    let all = r.firmware_references().await.unwrap();
    assert_eq!(
        all.iter()
            .map(|f| (f.version.as_str(), f.status.as_str()))
            .collect::<Vec<_>>(),
        [("1.1.0", "blocked"), ("1.2.0", "allowed")]
    );
}

async fn api_tokens(db: &TestDb) {
    use registry::Role;
    let r = &db.registry;
    let t = r
        .create_token(Role::Operator, Some("ci"), "bootstrap", NOW)
        .await
        .unwrap();
    assert!(!format!("{t:?}").contains(t.secret.as_str()));
    let ok = r.authenticate_token(&t.secret, NOW + 5).await.unwrap().unwrap();
    assert_eq!((ok.role, ok.last_used_at_ms), (Role::Operator, Some(NOW + 5)));
    // Wrong secret with the right id, garbage, and the secret itself is not in the database.
    let forged = format!("fw_{}_{}", t.info.id, "0".repeat(64));
    assert!(r.authenticate_token(&forged, NOW).await.unwrap().is_none());
    assert!(r.authenticate_token("Bearer nonsense", NOW).await.unwrap().is_none());
    assert!(!db.dump().windows(t.secret.len()).any(|w| w == t.secret.as_bytes()));
    r.revoke_token(&t.info.id, NOW + 10).await.unwrap();
    assert!(r.authenticate_token(&t.secret, NOW + 11).await.unwrap().is_none());
    assert!(matches!(
        r.revoke_token("nope", NOW).await,
        Err(RegistryError::NotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dropping_every_connection_is_survived() {
    // The server kills every connection of the registry (as a restart or failover would): the
    // next calls get either a retryable error or a fresh connection — never a panic, never a
    // non-retryable error — and the registry recovers by itself. (How driver errors map to
    // `Unavailable` is unit-tested in src/error.rs.)
    let db = TestDb::postgres().await;
    let r = &db.registry;
    r.ping().await.unwrap();
    let name = db.url.rsplit('/').next().unwrap().to_owned();
    let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&common::admin_url())
        .await
        .unwrap();
    let killed: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT CAST(COUNT(pg_terminate_backend(pid)) AS BIGINT) FROM pg_stat_activity WHERE datname = '{name}'"
    )))
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(killed >= 1, "the registry had connections to kill");
    let mut recovered = false;
    for _ in 0..5 {
        match r.device("x").await {
            Err(RegistryError::NotFound { .. }) => {
                recovered = true;
                break;
            }
            Err(e) => assert!(e.is_retryable(), "an outage must be retryable, got {e:?}"),
            Ok(_) => unreachable!("no such device"),
        }
    }
    assert!(recovered, "the registry reconnects by itself");
}

/// What the gateway reads and writes on hot paths: stored ids in commit order, catch-up reads,
/// the trust generation, revoked ids, last-seen times.
async fn gateway_helpers(db: &TestDb) {
    let r = &db.registry;
    assert_eq!(r.telemetry_head().await.unwrap(), 0);
    let msg = |d: &str, n: u8| TelemetryMessage {
        device_id: d.into(),
        topic: format!("devices/{d}/telemetry"),
        payload: vec![n],
        qos: 1,
        source: Source::Mqtt,
        received_at_ms: NOW + i64::from(n),
    };
    let batch: Vec<_> = (0..5).map(|n| msg(if n % 2 == 0 { "a" } else { "b" }, n)).collect();
    let ids = r.store_telemetry_returning_ids(&batch).await.unwrap();
    assert_eq!(ids.len(), 5);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in batch order: {ids:?}");
    assert_eq!(r.telemetry_head().await.unwrap(), ids[4]);
    let after = r.telemetry_after(ids[1], 2).await.unwrap();
    assert_eq!(
        after.iter().map(|m| (m.id, m.payload[0])).collect::<Vec<_>>(),
        [(ids[2], 2), (ids[3], 3)]
    );

    let g0 = r.trust_generation().await.unwrap();
    let ca = TestCa::stsafe_root("Gen CA");
    let record = r.insert_ca(&new_ca(&ca, true), NOW).await.unwrap();
    let g1 = r.trust_generation().await.unwrap();
    assert!(g1 > g0);
    let dev = ca.issue_stsafe_device("eval3", &[0x01]);
    let reg = connect(r, &dev.der, NOW).await;
    assert_eq!(
        r.trust_generation().await.unwrap(),
        g1,
        "a registration is not a trust change"
    );
    r.set_device_status(&reg.device.id, DeviceStatus::Revoked, "test", "lost", NOW + 1)
        .await
        .unwrap();
    assert!(r.trust_generation().await.unwrap() > g1);
    assert_eq!(
        r.device_ids_with_status(DeviceStatus::Revoked).await.unwrap(),
        vec![reg.device.id.clone()]
    );
    assert!(
        r.device_ids_with_status(DeviceStatus::Pending)
            .await
            .unwrap()
            .is_empty()
    );

    r.touch_last_seen(&[(reg.device.id.clone(), NOW + 50_000), ("nobody".into(), NOW)])
        .await
        .unwrap();
    assert_eq!(r.device(&reg.device.id).await.unwrap().last_seen_ms, NOW + 50_000);
    r.touch_last_seen(&[(reg.device.id.clone(), NOW + 10)]).await.unwrap();
    assert_eq!(
        r.device(&reg.device.id).await.unwrap().last_seen_ms,
        NOW + 50_000,
        "never moves back"
    );
    // Many devices at once: statements of 500, the known device in the third one.
    let mut many: Vec<(String, i64)> = (0..1_100).map(|n| (format!("nobody-{n}"), NOW + 60_000)).collect();
    many.push((reg.device.id.clone(), NOW + 70_000));
    r.touch_last_seen(&many).await.unwrap();
    assert_eq!(r.device(&reg.device.id).await.unwrap().last_seen_ms, NOW + 70_000);

    // The batcher's entry point: with nobody waiting for the write lock, the whole batch.
    let batch: Vec<_> = (0..250u32)
        .map(|n| TelemetryMessage {
            device_id: "c".into(),
            topic: "devices/c/telemetry".into(),
            payload: n.to_be_bytes().to_vec(),
            qos: 1,
            source: Source::Mqtt,
            received_at_ms: NOW + i64::from(n),
        })
        .collect();
    let before = r.telemetry_head().await.unwrap();
    let ids = r.store_telemetry_prefix(&batch).await.unwrap();
    assert_eq!(ids.len(), 250);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let stored = r.telemetry_after(before, 1_000).await.unwrap();
    assert_eq!(stored.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
    assert!(stored.iter().zip(&batch).all(|(m, b)| m.payload == b.payload));
    let _ = record;
}

async fn operator_queries(db: &TestDb) {
    let r = &db.registry;
    // One registration code for the whole server, whoever asks first.
    let code = r.registration_code(|| "a".repeat(40)).await.unwrap();
    assert_eq!(code, "a".repeat(40));
    assert_eq!(r.registration_code(|| "b".repeat(40)).await.unwrap(), code);

    let root = TestCa::root(KeyKind::P256, "Root");
    r.insert_ca(&new_ca(&root, true), NOW).await.unwrap();
    let d = root.issue_device(KeyKind::P256, "ops-1");
    connect(r, &d.der, NOW).await;
    // Labels are replaced as a whole, with an event.
    let mut labels = std::collections::BTreeMap::new();
    labels.insert("site".to_owned(), "lyon".to_owned());
    labels.insert("line".to_owned(), "3".to_owned());
    r.set_labels("ops-1", &labels, "api:t", NOW + 1).await.unwrap();
    labels.remove("line");
    r.set_labels("ops-1", &labels, "api:t", NOW + 2).await.unwrap();
    assert_eq!(r.labels("ops-1").await.unwrap(), labels);
    assert!(matches!(
        r.set_labels("nope", &labels, "api:t", NOW).await,
        Err(RegistryError::NotFound { .. })
    ));
    // Event filters: a family, newest first with paging back, a time floor.
    let family = r
        .events(
            &EventFilter {
                kind: Some("device.".into()),
                ..Default::default()
            },
            100,
        )
        .await
        .unwrap();
    let kinds: Vec<&str> = family.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["device.registered", "device.labels", "device.labels"]);
    let newest = r
        .events(
            &EventFilter {
                newest_first: true,
                ..Default::default()
            },
            2,
        )
        .await
        .unwrap();
    assert_eq!(newest.len(), 2);
    assert!(newest[0].id > newest[1].id);
    let older = r
        .events(
            &EventFilter {
                newest_first: true,
                before_id: Some(newest[1].id),
                ..Default::default()
            },
            100,
        )
        .await
        .unwrap();
    assert!(older.iter().all(|e| e.id < newest[1].id));
    assert_eq!(
        older.len() + 2,
        r.events(&EventFilter::default(), 100).await.unwrap().len()
    );
    let since = r
        .events(
            &EventFilter {
                since_ms: Some(NOW + 2),
                ..Default::default()
            },
            100,
        )
        .await
        .unwrap();
    assert_eq!(since.len(), 1);
    // Onboarding over time, in buckets.
    let counts = r
        .event_counts(&["device.registered", "chain.rejected"], NOW - 3_600_000, 1)
        .await
        .unwrap();
    assert_eq!(counts.len(), 1);
    assert_eq!((counts[0].kind.as_str(), counts[0].count), ("device.registered", 1));
    assert_eq!(counts[0].bucket_ms, NOW / 3_600_000 * 3_600_000);
    // The hourly counters agree with the trail, also in buckets of several hours.
    for i in 0..5 {
        r.append_event(
            &registry::NewEvent::new("chain.rejected", "gateway"),
            NOW + i * 3_600_000,
        )
        .await
        .unwrap();
    }
    let rejected = r.event_counts(&["chain.rejected"], NOW - 86_400_000, 6).await.unwrap();
    assert_eq!(rejected.iter().map(|c| c.count).sum::<i64>(), 5);
    assert!(rejected.iter().all(|c| c.bucket_ms % (6 * 3_600_000) == 0));
    // The first start's admin token is made once per database.
    let first = r.bootstrap_admin_token(NOW).await.unwrap().unwrap();
    assert_eq!(first.info.role, registry::Role::Admin);
    assert!(r.bootstrap_admin_token(NOW + 1).await.unwrap().is_none());
    assert!(
        db.reopen(common::keyring())
            .await
            .bootstrap_admin_token(NOW + 2)
            .await
            .unwrap()
            .is_none()
    );
    // Token listing never shows a secret.
    let t = r
        .create_token(registry::Role::Viewer, None, "t", NOW + 3)
        .await
        .unwrap();
    let listed = r.tokens().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].id, t.info.id);
}

async fn audit_findings(db: &TestDb) {
    use fleetward_test_support::Spec;
    use registry::{AuditOptions, NewEvent, Severity};
    let r = &db.registry;
    let day = 86_400_000;
    let opts = AuditOptions::default();
    // An empty fleet has nothing to report, but every check ran.
    let empty = r.audit(&opts, NOW).await.unwrap();
    assert!(empty.findings.is_empty(), "{:?}", empty.findings);
    assert_eq!(empty.checks_run.len(), registry::AUDIT_CHECKS.len());

    let root = TestCa::root(KeyKind::P256, "Root");
    let ca = r.insert_ca(&new_ca(&root, true), NOW).await.unwrap();
    let weak_root = TestCa::root(KeyKind::Rsa2048, "Weak Root");
    let weak_ca = r.insert_ca(&new_ca(&weak_root, true), NOW).await.unwrap();
    let fine = root.issue_device(KeyKind::P256, "fine");
    let revoked_serial = root.issue_device(KeyKind::P256, "on-the-list");
    let weak = root.issue_device(KeyKind::Rsa2048, "weak");
    let soon = root.issue_device_with(
        KeyKind::P256,
        &[(fleetward_test_support::Dn::CommonName, "soon")],
        &Spec {
            not_after: "2026-12-01T00:00:00Z".into(),
            ..Spec::default()
        },
    );
    for d in [&fine, &revoked_serial, &weak, &soon] {
        connect(r, &d.der, NOW).await;
    }
    // A device seen long ago whose certificate has expired since.
    let stale = root.issue_device(KeyKind::P256, "stale");
    let v = verifier::x509::describe_certificate(&stale.der).unwrap();
    r.register_or_touch(
        &Sighting {
            device_id: "stale",
            ca_id: &ca.id,
            cert_der: &stale.der,
            cert_sha256: &v.sha256,
            cert_serial: &v.serial,
            cert_not_after_ms: NOW - day,
            peer: None,
            tls_version: None,
            tls_suite: None,
        },
        true,
        NOW - 10 * day,
    )
    .await
    .unwrap();
    let serial = verifier::x509::describe_certificate(&revoked_serial.der)
        .unwrap()
        .serial;
    r.revoke_serial(&ca.id, &serial, "key compromise", "t", NOW)
        .await
        .unwrap();
    r.append_event(&NewEvent::new("device.clone_suspected", "gateway").device("fine"), NOW)
        .await
        .unwrap();
    r.append_event(
        &NewEvent::new("device.refused", "gateway")
            .device("weak")
            .detail(serde_json::json!({ "check": "client_id_mismatch" })),
        NOW,
    )
    .await
    .unwrap();
    r.set_integrity("weak", Integrity::Failed, Some("bad signature"), "t", NOW)
        .await
        .unwrap();
    r.add_firmware_reference("app", "1.0", "aa", None, true, "t", NOW)
        .await
        .unwrap();
    r.add_firmware_reference("app", "0.9", "cc", None, false, "t", NOW)
        .await
        .unwrap();
    r.set_firmware("fine", "1.0", "aa").await.unwrap();
    r.set_firmware("soon", "1.1", "bb").await.unwrap();
    r.set_firmware("weak", "0.9", "cc").await.unwrap();

    let report = r.audit(&opts, NOW).await.unwrap();
    let find = |check: &str| {
        report
            .findings
            .iter()
            .find(|f| f.check == check)
            .unwrap_or_else(|| panic!("no `{check}` in {:#?}", report.findings))
    };
    let devices = |check: &str| find(check).affected_devices.clone();
    assert_eq!(devices("revoked_device_certificate_still_active"), ["on-the-list"]);
    assert_eq!(
        find("revoked_device_certificate_still_active").affected_cas,
        vec![ca.id.clone()]
    );
    assert_eq!(devices("device_certificate_shared"), ["fine"]);
    assert_eq!(devices("conflicting_client_ids"), ["weak"]);
    assert_eq!(devices("device_certificate_expired"), ["stale"]);
    assert_eq!(devices("device_certificate_expiring"), ["soon"]);
    assert_eq!(devices("device_certificate_key_quality"), ["weak"]);
    assert_eq!(
        find("ca_certificate_key_quality").affected_cas,
        vec![weak_ca.id.clone()]
    );
    assert_eq!(devices("attestation_failing"), ["weak"]);
    assert_eq!(find("attestation_never_passed").affected_count, 4);
    assert_eq!(devices("firmware_blocked"), ["weak"]);
    assert_eq!(devices("firmware_not_in_reference_set"), ["soon"]);
    assert_eq!(devices("devices_silent"), ["stale"]);
    assert!(
        report
            .findings
            .iter()
            .all(|f| !f.suggested_action.is_empty() && f.affected_count > 0)
    );
    // Most severe first.
    assert_eq!(report.findings[0].severity, Severity::Critical);
    assert!(report.findings.windows(2).all(|w| w[0].severity <= w[1].severity));

    // Revoking a device clears its findings; a revoked CA with devices left active is reported.
    r.set_device_status("on-the-list", DeviceStatus::Revoked, "t", "done", NOW)
        .await
        .unwrap();
    let report = r.audit(&opts, NOW).await.unwrap();
    assert!(
        !report
            .findings
            .iter()
            .any(|f| f.check == "revoked_device_certificate_still_active")
    );
    r.revoke_ca(&ca.id, "t", "rotate", NOW).await.unwrap();
    db.raw_execute("UPDATE devices SET status = 'active' WHERE id = 'fine'")
        .await;
    let report = r.audit(&opts, NOW).await.unwrap();
    let f = report
        .findings
        .iter()
        .find(|f| f.check == "revoked_ca_active_devices")
        .unwrap();
    assert_eq!(
        (f.affected_devices.as_slice(), f.affected_cas.as_slice()),
        (&["fine".to_owned()][..], &[ca.id.clone()][..])
    );
}

/// The uplink path's batches: counters advance with the frames in one transaction; a frame at or
/// below the stored counter is a replay (another node took it); each session numbers its own
/// frames; receptions heard later join the stored frame.
async fn lorawan_uplink_batches(db: &TestDb) {
    use registry::{NewAbpDevice, NewLorawanDevice, NewLorawanUplink, UplinkOutcome};
    let r = &db.registry;
    let keys = [7u8; registry::SESSION_KEYS_LEN];
    for (eui, addr) in [("00000000000000B1", "26000001"), ("00000000000000B2", "26000002")] {
        r.insert_lorawan_abp(
            &NewAbpDevice {
                dev_eui: eui,
                dev_addr: addr,
                mac_version: "1.0.3",
                session_keys: &keys,
                f_cnt_up: None,
                f_cnt_down: 0,
            },
            NOW,
        )
        .await
        .unwrap();
    }
    let gw = serde_json::json!([{ "gateway": "0102030405060708", "rssi": -40 }]);
    let up = |eui: &'static str, f_cnt: u32, payload: &'static [u8]| NewLorawanUplink {
        dev_eui: eui,
        session: 0,
        f_cnt,
        f_port: Some(2),
        payload,
        gateways: &gw,
        topic: None,
    };
    let stored = r
        .store_lorawan_uplinks(
            &[
                up("00000000000000b1", 0, b"a"),
                NewLorawanUplink {
                    topic: Some("devices/00000000000000B1/telemetry"),
                    ..up("00000000000000B1", 1, b"b")
                },
                up("00000000000000B2", 5, b"c"),
            ],
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(stored.outcomes, vec![UplinkOutcome::Stored; 3]);
    // The published one is in the telemetry store, committed with the frame.
    assert_eq!(stored.telemetry.len(), 1);
    let published = &stored.telemetry[0];
    assert_eq!(
        (
            published.device_id.as_str(),
            published.payload.as_slice(),
            published.source
        ),
        ("00000000000000B1", &b"b"[..], Source::Lorawan)
    );
    assert_eq!(r.telemetry_after(published.id - 1, 10).await.unwrap()[0], *published);
    assert_eq!(r.lorawan_device("00000000000000B1").await.unwrap().f_cnt_up, Some(1));
    assert_eq!(r.lorawan_device("00000000000000B2").await.unwrap().f_cnt_up, Some(5));
    // Another node already stored B1's frame 1: a batch holding it again is a replay; B2 moves on.
    let out = r
        .store_lorawan_uplinks(
            &[
                NewLorawanUplink {
                    topic: Some("devices/00000000000000B1/telemetry"),
                    ..up("00000000000000B1", 1, b"b")
                },
                up("00000000000000B2", 6, b"d"),
            ],
            NOW + 1,
        )
        .await
        .unwrap();
    assert_eq!(out.outcomes, vec![UplinkOutcome::Replayed, UplinkOutcome::Stored]);
    assert!(out.telemetry.is_empty(), "a replay is not published");
    assert_eq!(r.lorawan_uplinks("00000000000000B1", 10).await.unwrap().len(), 2);
    // Receptions heard after the frame was stored join it.
    assert!(
        r.add_lorawan_receptions(
            "00000000000000B2",
            0,
            6,
            &[serde_json::json!({ "gateway": "1111111111111111", "rssi": -90 })]
        )
        .await
        .unwrap()
    );
    assert!(!r.add_lorawan_receptions("00000000000000B2", 0, 99, &[]).await.unwrap());

    let latest = &r.lorawan_uplinks("00000000000000B2", 1).await.unwrap()[0];
    assert_eq!((latest.f_cnt, latest.payload.as_slice()), (6, &b"d"[..]));
    assert_eq!(latest.gateways.as_array().unwrap().len(), 2);
    assert_eq!(latest.gateways[1]["gateway"], "1111111111111111");
    // A frame already stored (by the single-frame path, which leaves the counter) is a
    // duplicate in a batch that advances the counter past it; the frame after it is stored and
    // published with the right store id.
    assert!(
        r.store_lorawan_uplink(&up("00000000000000B2", 7, b"e"), NOW)
            .await
            .unwrap()
    );
    let head = r.telemetry_head().await.unwrap();
    let out = r
        .store_lorawan_uplinks(
            &[
                up("00000000000000B2", 7, b"e"),
                NewLorawanUplink {
                    topic: Some("devices/00000000000000B2/telemetry"),
                    ..up("00000000000000B2", 8, b"f")
                },
            ],
            NOW + 2,
        )
        .await
        .unwrap();
    assert_eq!(out.outcomes, vec![UplinkOutcome::Duplicate, UplinkOutcome::Stored]);
    assert_eq!(out.telemetry.len(), 1);
    assert_eq!(r.telemetry_after(head, 10).await.unwrap(), out.telemetry);
    assert_eq!(r.lorawan_device("00000000000000B2").await.unwrap().f_cnt_up, Some(8));
    let out = r
        .store_lorawan_uplinks(&[up("00000000000000B2", 6, b"x")], NOW + 3)
        .await
        .unwrap();
    assert_eq!(out.outcomes, vec![UplinkOutcome::Replayed]);

    // OTAA: each join opens a session numbered by its JoinNonce; counters restart at 0 and the
    // new session's frame 0 is not taken for the old one's.
    r.insert_lorawan_device(
        &NewLorawanDevice {
            dev_eui: "00000000000000C1",
            join_eui: "0000000000000001",
            mac_version: "1.0.3",
            app_key: &[1; 16],
            nwk_key: None,
        },
        NOW,
    )
    .await
    .unwrap();
    let mut sessions = Vec::new();
    for addr in ["26000010", "26000011"] {
        r.next_join_nonce("00000000000000C1", NOW).await.unwrap();
        r.set_lorawan_session("00000000000000C1", addr, &keys, NOW)
            .await
            .unwrap();
        let s = r.lorawan_session(addr).await.unwrap();
        assert_eq!(
            (s.dev_eui.as_str(), s.mac_version.as_str(), s.f_cnt_up),
            ("00000000000000C1", "1.0.3", None)
        );
        let out = r
            .store_lorawan_uplinks(
                &[NewLorawanUplink {
                    session: s.session,
                    ..up("00000000000000C1", 0, b"first")
                }],
                NOW,
            )
            .await
            .unwrap();
        assert_eq!(out.outcomes, vec![UplinkOutcome::Stored], "session {}", s.session);
        sessions.push(s.session);
    }
    assert_eq!(sessions, vec![1, 2]);
    assert_eq!(r.lorawan_uplinks("00000000000000C1", 10).await.unwrap().len(), 2);
    // Retention: by age, then each device's newest N (newest = latest session, highest FCnt).
    assert_eq!(r.prune_lorawan_uplinks(86_400_000, 1, NOW).await.unwrap(), 5);
    let kept = r.lorawan_uplinks("00000000000000C1", 10).await.unwrap();
    assert_eq!((kept.len(), kept[0].session), (1, 2));
    assert_eq!(r.lorawan_uplinks("00000000000000B1", 10).await.unwrap()[0].f_cnt, 1);
    assert_eq!(
        r.prune_lorawan_uplinks(0, 100, NOW + 10).await.unwrap(),
        3,
        "all older than now"
    );
    assert!(
        matches!(r.lorawan_session("26000010").await, Err(RegistryError::NotFound { .. })),
        "the old DevAddr is released"
    );
    // The sessions, paged in DevAddr order (how the uplink path loads its table at start): every
    // device holding a DevAddr once, opened, with its counter and session number; the OTAA
    // device that has not joined is absent.
    r.insert_lorawan_device(
        &NewLorawanDevice {
            dev_eui: "00000000000000C2",
            join_eui: "0000000000000001",
            mac_version: "1.1",
            app_key: &[1; 16],
            nwk_key: Some(&[2; 16]),
        },
        NOW,
    )
    .await
    .unwrap();
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = r.lorawan_sessions_page(after.as_deref(), 2).await.unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(last.dev_addr.clone());
        paged.extend(
            page.into_iter()
                .map(|s| (s.dev_addr, s.dev_eui, s.f_cnt_up, s.session, s.session_keys.to_vec())),
        );
    }
    assert_eq!(
        paged,
        vec![
            ("26000001".into(), "00000000000000B1".into(), Some(1), 0, keys.to_vec()),
            ("26000002".into(), "00000000000000B2".into(), Some(8), 0, keys.to_vec()),
            ("26000011".into(), "00000000000000C1".into(), Some(0), 2, keys.to_vec()),
        ]
    );
    assert!(
        r.lorawan_sessions_page(Some("zz"), 2).await.is_err(),
        "a malformed cursor is refused"
    );
}

/// Sigfox: an uplink is stored with its device's sequence number, advanced by compare-and-swap
/// (a second request judged against the same number stores nothing), and published as
/// telemetry in the same transaction; devices list without their NAK.
async fn sigfox_uplinks_and_sequence_numbers(db: &TestDb) {
    use registry::NewSigfoxUplink;
    let r = &db.registry;
    r.insert_sigfox_device("004d33db", Some(&[0x47; 16]), NOW)
        .await
        .unwrap();
    r.insert_sigfox_device("01A2B3C4", Some(&[0x11; 16]), NOW)
        .await
        .unwrap();
    let detail = serde_json::json!({ "station": "1A2B", "rssi": -120.5 });
    let up = |seq: u16, payload: &'static [u8]| NewSigfoxUplink {
        device_id: "004D33DB",
        seq_number: seq,
        payload,
        source: "frame",
        detail: &detail,
        topic: Some("devices/004D33DB/telemetry"),
        sigfox_time: None,
        take_downlink: false,
    };
    let first = r
        .store_sigfox_uplink(&up(0xFFF, b"a"), None, NOW)
        .await
        .unwrap()
        .unwrap();
    let published = first.telemetry.unwrap();
    assert_eq!(
        (published.device_id.as_str(), published.source),
        ("004D33DB", Source::Sigfox)
    );
    assert_eq!(r.telemetry_after(published.id - 1, 1).await.unwrap()[0], published);
    // Judged against "no message yet" again: the number moved, nothing is stored.
    assert_eq!(r.store_sigfox_uplink(&up(0xFFF, b"a"), None, NOW).await.unwrap(), None);
    // Across the rollover.
    let second = r
        .store_sigfox_uplink(
            &NewSigfoxUplink {
                source: "callback",
                topic: None,
                ..up(0x000, b"b")
            },
            Some(0xFFF),
            NOW + 1,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.telemetry, None);
    assert_eq!(
        r.store_sigfox_uplink(&up(0x001, b"c"), Some(0xFFF), NOW).await.unwrap(),
        None
    );
    let info = r.sigfox_device_info("004d33db").await.unwrap();
    assert_eq!((info.device_id.as_str(), info.last_seq), ("004D33DB", Some(0)));
    let uplinks = r.sigfox_uplinks("004D33DB", 10).await.unwrap();
    assert_eq!(
        uplinks
            .iter()
            .map(|u| (u.seq_number, u.payload.as_slice(), u.source.as_str()))
            .collect::<Vec<_>>(),
        vec![(0, &b"b"[..], "callback"), (0xFFF, &b"a"[..], "frame")]
    );
    assert_eq!(uplinks[0].detail["station"], "1A2B");
    let listed = r.sigfox_devices(None, 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|d| d.device_id.as_str()).collect::<Vec<_>>(),
        ["004D33DB", "01A2B3C4"]
    );
    assert_eq!(r.sigfox_devices(Some("004D33DB"), 10).await.unwrap().len(), 1);
    // An unknown device stores nothing; a bad source is refused.
    assert_eq!(
        r.store_sigfox_uplink(
            &NewSigfoxUplink {
                device_id: "0BADBAD0",
                ..up(1, b"x")
            },
            None,
            NOW
        )
        .await
        .unwrap(),
        None
    );
    assert!(
        r.store_sigfox_uplink(
            &NewSigfoxUplink {
                source: "radio",
                ..up(1, b"x")
            },
            Some(0),
            NOW
        )
        .await
        .is_err()
    );
    assert!(matches!(
        r.sigfox_device_info("0BADBAD0").await,
        Err(RegistryError::NotFound { .. })
    ));
}

/// Sigfox callbacks: a device first heard of in a callback is registered without a NAK; one
/// message (device, sequence number, backend time) is stored once even when the sequence
/// number's compare-and-swap would let it through; queued downlinks are answered in order, once,
/// and the queue is bounded.
async fn sigfox_callbacks_and_downlinks(db: &TestDb) {
    use registry::{MAX_QUEUED_SIGFOX_DOWNLINKS, NewSigfoxUplink};
    let r = &db.registry;
    assert!(r.register_sigfox_device_from_callback("00C0FFEE", NOW).await.unwrap());
    assert!(
        !r.register_sigfox_device_from_callback("00c0ffee", NOW).await.unwrap(),
        "once"
    );
    let info = r.sigfox_device_info("00C0FFEE").await.unwrap();
    assert_eq!(
        (info.has_nak, info.registered_via.as_str(), info.last_seq),
        (false, "callback", None)
    );
    assert!(r.sigfox_device("00C0FFEE").await.unwrap().nak.is_none());
    r.insert_sigfox_device("00000A11", Some(&[3; 16]), NOW).await.unwrap();
    let provisioned = r.sigfox_device_info("00000A11").await.unwrap();
    assert_eq!(
        (provisioned.has_nak, provisioned.registered_via.as_str()),
        (true, "api")
    );
    r.insert_sigfox_device("00000B22", None, NOW).await.unwrap();
    assert!(!r.sigfox_device_info("00000B22").await.unwrap().has_nak);

    // Two downlinks queued; an uplink that does not ask takes none.
    let d1 = r
        .queue_sigfox_downlink("00C0FFEE", &[1; 8], "api:t", NOW)
        .await
        .unwrap();
    r.queue_sigfox_downlink("00C0FFEE", &[2; 8], "api:t", NOW + 1)
        .await
        .unwrap();
    assert!(matches!(
        r.queue_sigfox_downlink("0BADBAD0", &[1; 8], "api:t", NOW).await,
        Err(RegistryError::NotFound { .. })
    ));
    let detail = serde_json::json!({});
    let up = |seq: u16, time: i64, take_downlink: bool| NewSigfoxUplink {
        device_id: "00C0FFEE",
        seq_number: seq,
        payload: b"\x01",
        source: "callback",
        detail: &detail,
        topic: None,
        sigfox_time: Some(time),
        take_downlink,
    };
    let a = r
        .store_sigfox_uplink(&up(7, 1000, false), None, NOW)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.downlink, None);
    let b = r
        .store_sigfox_uplink(&up(8, 1010, true), Some(7), NOW)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.downlink.as_deref(), Some(&[1u8; 8][..]), "the oldest first");
    // The same message again, even judged against a number that lets it through: not stored.
    assert_eq!(
        r.store_sigfox_uplink(&up(8, 1010, true), Some(8), NOW).await.unwrap(),
        None
    );
    assert_eq!(
        r.sigfox_device_info("00C0FFEE").await.unwrap().last_seq,
        Some(8),
        "rolled back"
    );
    let found = r.sigfox_uplink_by_message("00C0FFEE", 8, 1010).await.unwrap().unwrap();
    assert_eq!(
        (found.id, found.sigfox_time, found.downlink.as_deref()),
        (b.id, Some(1010), Some(&[1u8; 8][..]))
    );
    assert!(r.sigfox_uplink_by_message("00C0FFEE", 8, 1011).await.unwrap().is_none());
    let c = r
        .store_sigfox_uplink(&up(9, 1020, true), Some(8), NOW)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.downlink.as_deref(), Some(&[2u8; 8][..]));
    let d = r
        .store_sigfox_uplink(&up(10, 1030, true), Some(9), NOW)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.downlink, None, "the queue is empty");
    let listed = r.sigfox_downlinks("00C0FFEE", 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|x| (x.id, x.uplink_id)).collect::<Vec<_>>(),
        vec![(d1.id + 1, Some(c.id)), (d1.id, Some(b.id))]
    );
    // Bounded.
    for i in 0..MAX_QUEUED_SIGFOX_DOWNLINKS {
        r.queue_sigfox_downlink("00000A11", &[i as u8; 8], "api:t", NOW)
            .await
            .unwrap();
    }
    assert!(matches!(
        r.queue_sigfox_downlink("00000A11", &[0; 8], "api:t", NOW).await,
        Err(RegistryError::Conflict { .. })
    ));
}

/// A verified device's facts, owned (a `Sighting` borrows them).
#[derive(Clone)]
struct Verified {
    id: String,
    ca: String,
    der: Vec<u8>,
    sha256: String,
    serial: String,
    not_after_ms: i64,
}

async fn verified(r: &Registry, der: &[u8]) -> Verified {
    let v = r
        .trust_store()
        .await
        .unwrap()
        .verify_device(der, &[], Timestamp::from_unix(NOW / 1000))
        .unwrap();
    Verified {
        id: v.device_id.as_str().to_owned(),
        ca: v.ca.sha256.clone(),
        der: der.to_vec(),
        sha256: v.certificate.sha256.clone(),
        serial: v.certificate.serial.clone(),
        not_after_ms: v.certificate.not_after.unix() * 1000,
    }
}

impl Verified {
    fn sighting<'a>(&'a self, peer: &'a str) -> Sighting<'a> {
        Sighting {
            device_id: &self.id,
            ca_id: &self.ca,
            cert_der: &self.der,
            cert_sha256: &self.sha256,
            cert_serial: &self.serial,
            cert_not_after_ms: self.not_after_ms,
            peer: Some(peer),
            tls_version: Some("TLSv1.3"),
            tls_suite: Some("TLS13_AES_128_GCM_SHA256"),
        }
    }
}

/// The device directory: a known device reconnects from memory, its bookkeeping is written in
/// bulk, and a status change (by this process or another) sends it back through a transaction.
async fn directory_admits_known_devices_without_a_transaction(db: &TestDb) {
    let r = &db.registry;
    let root = TestCa::root(KeyKind::P256, "Directory CA");
    r.insert_ca(&new_ca(&root, true), NOW).await.unwrap();
    let dev = verified(r, &root.issue_device(KeyKind::P256, "dir-1").der).await;

    let first = r.admit(&dev.sighting("10.0.0.1:1"), true, NOW).await.unwrap();
    assert!(first.created && !first.from_directory);
    assert_eq!(first.status, DeviceStatus::Active);
    for (i, peer) in ["10.0.0.2:2", "10.0.0.3:3"].iter().enumerate() {
        let again = r.admit_known(&dev.sighting(peer), NOW + 10 + i as i64).unwrap();
        assert!(again.from_directory && !again.created && !again.certificate_changed);
        assert_eq!(again.status, DeviceStatus::Active);
    }
    // Not written yet, but the device's record already shows it.
    assert_eq!(r.directory_size(), (1, 1));
    let stored: i64 = db
        .raw_scalar("SELECT connections FROM devices WHERE id = 'dir-1'")
        .await;
    assert_eq!(stored, 1);
    let d = r.device("dir-1").await.unwrap();
    assert_eq!((d.connections, d.last_seen_ms), (3, NOW + 11));
    assert_eq!(d.last_peer.as_deref(), Some("10.0.0.3:3"));
    assert_eq!(r.flush_sightings().await.unwrap(), 1);
    assert_eq!(r.flush_sightings().await.unwrap(), 0);
    assert_eq!(r.directory_size(), (1, 0));
    let d = r.device("dir-1").await.unwrap();
    assert_eq!((d.connections, d.last_seen_ms), (3, NOW + 11));
    assert_eq!(d.last_peer.as_deref(), Some("10.0.0.3:3"));
    assert_eq!(d.tls_suite.as_deref(), Some("TLS13_AES_128_GCM_SHA256"));
    // last_seen never moves back (traffic may have moved it further meanwhile).
    r.touch_last_seen(&[("dir-1".into(), NOW + 5_000)]).await.unwrap();
    r.admit_known(&dev.sighting("10.0.0.4:4"), NOW + 20).unwrap();
    r.flush_sightings().await.unwrap();
    let d = r.device("dir-1").await.unwrap();
    assert_eq!((d.connections, d.last_seen_ms), (4, NOW + 5_000));
    assert_eq!(d.last_peer.as_deref(), Some("10.0.0.4:4"));

    // Another certificate under the same name misses: a transaction records the change.
    let renewed = verified(r, &root.issue_device(KeyKind::P256, "dir-1").der).await;
    assert!(r.admit_known(&renewed.sighting("10.0.0.5:5"), NOW + 30).is_none());
    let changed = r.admit(&renewed.sighting("10.0.0.5:5"), true, NOW + 30).await.unwrap();
    assert!(changed.certificate_changed && !changed.from_directory);
    assert!(
        r.admit_known(&dev.sighting("10.0.0.1:1"), NOW + 31).is_none(),
        "the old certificate no longer passes"
    );
    assert!(r.admit_known(&renewed.sighting("10.0.0.5:5"), NOW + 32).is_some());

    // A status change in this process is seen by the very next connection.
    r.set_device_status("dir-1", DeviceStatus::Quarantined, "api:op", "check", NOW + 40)
        .await
        .unwrap();
    assert!(r.admit_known(&renewed.sighting("10.0.0.5:5"), NOW + 41).is_none());
    let q = r.admit(&renewed.sighting("10.0.0.5:5"), true, NOW + 41).await.unwrap();
    assert_eq!((q.status, q.from_directory), (DeviceStatus::Quarantined, false));
    assert_eq!(
        r.admit_known(&renewed.sighting("10.0.0.5:5"), NOW + 42)
            .map(|a| a.status),
        Some(DeviceStatus::Quarantined)
    );

    // A change by another process (the CLI, another node) is seen once the gateway's poll
    // reports the trust generation it last saw.
    let other = db.reopen(common::keyring()).await;
    let seen = r.trust_generation().await.unwrap();
    other
        .set_device_status("dir-1", DeviceStatus::Active, "cli", "released", NOW + 50)
        .await
        .unwrap();
    assert_eq!(
        r.admit_known(&renewed.sighting("10.0.0.5:5"), NOW + 51)
            .map(|a| a.status),
        Some(DeviceStatus::Quarantined),
        "stale until the poll"
    );
    r.forget_changes_since(seen).await.unwrap();
    assert!(r.admit_known(&renewed.sighting("10.0.0.5:5"), NOW + 52).is_none());
    let a = r.admit(&renewed.sighting("10.0.0.5:5"), true, NOW + 52).await.unwrap();
    assert_eq!(a.status, DeviceStatus::Active);

    // Revoking the CA forgets every device.
    let seen = r.trust_generation().await.unwrap();
    r.revoke_ca(&dev.ca, "api:admin", "compromised", NOW + 60)
        .await
        .unwrap();
    assert_eq!(r.directory_size().0, 0);
    assert!(r.trust_generation().await.unwrap() > seen);
    r.flush_sightings().await.unwrap();
    let d = r.device("dir-1").await.unwrap();
    assert_eq!(d.connections, 10, "every connection counted once: {d:?}");
    other.close().await;
}

/// Another process's trust change is seen by the next poll even when it commits after a later
/// one (PostgreSQL takes an event's id at INSERT, not at COMMIT). The race is forced: a deferred
/// trigger holds one revocation's COMMIT for 1.5 s after its event has its id; a second status
/// change starts meanwhile, and the gateway's poll runs while the first still commits. Newest
/// event ids alone missed it: the second change's id was seen, the revocation committed below
/// it, and no later poll noticed. Also: the count of trust changes stays equal to the trust
/// events written (CA registration and revocation, status changes, attestation quarantine), and
/// a count that disagrees with the events found makes the directory forget everything.
async fn a_trust_change_committed_out_of_id_order_is_seen(db: &TestDb) {
    let r = &db.registry;
    let root = TestCa::root(KeyKind::P256, "Order CA");
    r.insert_ca(&new_ca(&root, true), NOW).await.unwrap();
    // What the gateway's trust snapshot was built at (a CA change forgets every device).
    let seen = r.forget_changes_since(TrustGeneration::default()).await.unwrap();
    assert_eq!(seen, r.trust_generation().await.unwrap());
    let (a, b, c) = (
        verified(r, &root.issue_device(KeyKind::P256, "order-a").der).await,
        verified(r, &root.issue_device(KeyKind::P256, "order-b").der).await,
        verified(r, &root.issue_device(KeyKind::P256, "order-c").der).await,
    );
    for d in [&a, &b, &c] {
        r.admit(&d.sighting("10.0.0.1:1"), true, NOW).await.unwrap();
    }
    assert_eq!(r.directory_size().0, 3);
    let known = |d: &Verified| r.admit_known(&d.sighting("10.0.0.1:1"), NOW + 1).is_some();
    let other = db.reopen(common::keyring()).await;
    let third = db.reopen(common::keyring()).await;

    if db.sqlite_file.is_none() {
        db.raw_execute(
            "CREATE FUNCTION slow_commit() RETURNS trigger AS $$ \
             BEGIN PERFORM pg_sleep(1.5); RETURN NULL; END $$ LANGUAGE plpgsql",
        )
        .await;
        db.raw_execute(
            "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON events \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.reason = 'slow commit') \
             EXECUTE FUNCTION slow_commit()",
        )
        .await;
        // A status change by another process, in the background.
        let change = |node: &Registry, id: &'static str, to, reason: &'static str, at| {
            let node = node.clone();
            tokio::spawn(async move { node.set_device_status(id, to, "cli", reason, at).await })
        };
        let pause = || tokio::time::sleep(std::time::Duration::from_millis(300));
        let slow = change(&other, "order-a", DeviceStatus::Revoked, "slow commit", NOW + 2);
        pause().await;
        let fast = change(&third, "order-b", DeviceStatus::Quarantined, "fast", NOW + 3);
        pause().await;
        // The gateway's poll, while the revocation is still committing.
        let polled = r.forget_changes_since(seen).await.unwrap();
        let revoked_then = r.device_ids_with_status(DeviceStatus::Revoked).await.unwrap();
        slow.await.unwrap().unwrap();
        fast.await.unwrap().unwrap();
        let after = r.trust_generation().await.unwrap();
        assert!(
            after != polled || revoked_then.contains(&"order-a".to_owned()),
            "the poll saw {polled:?} without the revocation, and the generation did not move after it \
             committed ({after:?})"
        );
        r.forget_changes_since(polled).await.unwrap();
        assert!(!known(&a) && !known(&b), "both changed devices forgotten");
        assert!(known(&c), "one by one: the unchanged device is still known");
        db.raw_execute("DROP TRIGGER slow_commit ON events").await;
    } else {
        other
            .set_device_status("order-a", DeviceStatus::Revoked, "cli", "revoked", NOW + 2)
            .await
            .unwrap();
        third
            .set_device_status("order-b", DeviceStatus::Quarantined, "cli", "quarantined", NOW + 3)
            .await
            .unwrap();
        assert!(r.trust_generation().await.unwrap() > seen);
        r.forget_changes_since(seen).await.unwrap();
        assert!(!known(&a) && !known(&b) && known(&c));
    }

    // A counted change not found past the newest id seen (a late commit): everything goes.
    r.admit(&b.sighting("10.0.0.1:1"), true, NOW + 4).await.unwrap();
    assert!(known(&b) && known(&c));
    let now = r.trust_generation().await.unwrap();
    let missed_one = TrustGeneration {
        changes: now.changes - 1,
        newest_event: now.newest_event,
    };
    assert_eq!(r.forget_changes_since(missed_one).await.unwrap(), now);
    assert_eq!(r.directory_size().0, 0);

    // Every kind of trust change is counted, once per event.
    r.revoke_serial(&a.ca, "0badc0de", "lost", "api:admin", NOW + 5)
        .await
        .unwrap();
    r.revoke_ca(&a.ca, "api:admin", "compromised", NOW + 6).await.unwrap();
    let counted = db.raw_scalar("SELECT changes FROM trust_state").await;
    assert_eq!(counted, db.raw_scalar(TRUST_EVENTS).await);
    assert_eq!(r.trust_generation().await.unwrap().changes, counted);
    other.close().await;
    third.close().await;
}

/// Registrations committed together: each gets the answer `register_or_touch` would give, with
/// the same rows and events, also for duplicates within a batch, known devices, a renewed
/// certificate, and a registration that cannot be written (it fails alone).
async fn grouped_registrations_answer_as_one_by_one_would(db: &TestDb) {
    let r = &db.registry;
    let root = TestCa::root(KeyKind::P256, "Group CA");
    r.insert_ca(&new_ca(&root, true), NOW).await.unwrap();
    let known = verified(r, &root.issue_device(KeyKind::P256, "known-1").der).await;
    r.register_or_touch(&known.sighting("10.0.0.1:1"), true, NOW)
        .await
        .unwrap();
    let renewed = verified(r, &root.issue_device(KeyKind::P256, "known-1").der).await;

    let mut devices = Vec::new();
    for i in 0..150 {
        devices.push(verified(r, &root.issue_device(KeyKind::P256, &format!("group-{i}")).der).await);
    }
    let twin = verified(r, &root.issue_device(KeyKind::P256, "twin").der).await;
    // A CA id that is not registered: its row breaks the batch's foreign key.
    let mut orphan = verified(r, &root.issue_device(KeyKind::P256, "orphan").der).await;
    orphan.ca = "00".repeat(32);

    let mut work: Vec<(&Verified, &str)> = devices.iter().map(|d| (d, "10.1.0.1:1")).collect();
    work.extend([(&twin, "10.2.0.1:1"), (&twin, "10.2.0.2:2"), (&twin, "10.2.0.3:3")]);
    work.push((&known, "10.0.0.2:2"));
    work.push((&orphan, "10.3.0.1:1"));
    work.push((&renewed, "10.0.0.3:3"));
    // All at once, as connections arriving together would.
    let tasks: Vec<_> = work
        .iter()
        .map(|(d, peer)| {
            let (r, d, peer) = (r.clone(), (*d).clone(), peer.to_string());
            tokio::spawn(async move { r.register_grouped(&d.sighting(&peer), true, NOW + 100).await })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }

    let mut created = std::collections::HashMap::<String, usize>::new();
    for ((d, _), answer) in work.iter().zip(&answers) {
        if d.id == "orphan" {
            assert!(answer.is_err(), "the orphan cannot be written: {answer:?}");
            continue;
        }
        let reg = answer.as_ref().unwrap();
        assert_eq!(reg.device.id, d.id);
        assert_eq!(reg.device.status, DeviceStatus::Active);
        *created.entry(d.id.clone()).or_default() += usize::from(reg.created);
        if reg.created {
            assert_eq!(reg.device.connections, 1);
            assert_eq!(reg.device.cert_sha256, d.sha256);
        }
    }
    assert!(
        devices.iter().all(|d| created[&d.id] == 1),
        "every new device created once"
    );
    assert_eq!(
        created["twin"], 1,
        "three first connections of one device: one creates it"
    );
    assert_eq!(created["known-1"], 0);
    let renewal = answers.last().unwrap().as_ref().unwrap();
    assert!(renewal.certificate_changed && !renewal.created);

    // What was stored is what was answered.
    for d in devices.iter().take(5) {
        let stored = r.device(&d.id).await.unwrap();
        assert_eq!(stored.connections, 1);
        assert_eq!(stored.last_peer.as_deref(), Some("10.1.0.1:1"));
        assert_eq!(stored.cert_key.as_deref(), Some("ECDSA P-256"));
    }
    assert_eq!(r.device("twin").await.unwrap().connections, 3);
    assert_eq!(r.device("known-1").await.unwrap().connections, 3);
    assert!(matches!(r.device("orphan").await, Err(RegistryError::NotFound { .. })));
    let events = |kind: &str| EventFilter {
        kind: Some(kind.into()),
        ..Default::default()
    };
    let registered = r.events(&events("device.registered"), 1000).await.unwrap();
    assert_eq!(registered.len(), 1 + 150 + 1, "one event per device created");
    let e = registered
        .iter()
        .find(|e| e.device_id.as_deref() == Some("group-7"))
        .unwrap();
    assert_eq!(e.actor, "jitr");
    assert_eq!(e.detail.as_ref().unwrap()["status"], "active");
    assert_eq!(e.detail.as_ref().unwrap()["peer"], "10.1.0.1:1");
    assert_eq!(
        r.events(&events("device.certificate_changed"), 10).await.unwrap().len(),
        1
    );
    assert_eq!(count(db, "devices").await, 1 + 150 + 1);
}

/// Four nodes on one database registering 1,200 new devices at once, as gateways do when a
/// fleet comes up: every device is registered once, the fleet counters are exact, and on
/// PostgreSQL no transaction deadlocked. Each node has its own CA and its registrations come in
/// waves of different sizes, so the transactions' counter rows overlap in varying sets (before
/// the counter triggers locked rows in one order, six gateways onboarding 100,000 devices hit
/// 106 deadlocks in 80 s).
async fn registrations_from_several_nodes_at_once(db: &TestDb) {
    const NODES: usize = 4;
    const PER_NODE: usize = 300;
    const WAVES: [usize; 6] = [1, 2, 5, 13, 1, 38];
    let r = &db.registry;
    let deadlocks = || async {
        if db.sqlite_file.is_some() {
            return 0;
        }
        db.raw_scalar("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
            .await
    };
    let deadlocks_before = deadlocks().await;
    let mut nodes = vec![r.clone()];
    for _ in 1..NODES {
        nodes.push(db.reopen(common::keyring()).await);
    }
    let mut fleets = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        let root = TestCa::root(KeyKind::P256, &format!("Node {n} CA"));
        r.insert_ca(&new_ca(&root, true), NOW).await.unwrap();
        let mut devices = Vec::new();
        for i in 0..PER_NODE {
            // Ids end in every character, so registrations touch every counter shard.
            devices.push(verified(r, &root.issue_device(KeyKind::P256, &format!("node{n}-{i:x}")).der).await);
        }
        fleets.push((node.clone(), devices, n));
    }
    let runs: Vec<_> = fleets
        .into_iter()
        .map(|(node, devices, n)| {
            tokio::spawn(async move {
                let mut left = devices.into_iter().enumerate().peekable();
                let mut wave = 0;
                while left.peek().is_some() {
                    let tasks: Vec<_> = left
                        .by_ref()
                        .take(WAVES[(wave + n) % WAVES.len()])
                        .map(|(i, d)| {
                            let node = node.clone();
                            tokio::spawn(async move {
                                node.register_grouped(&d.sighting(&format!("10.{n}.0.1:{i}")), true, NOW)
                                    .await
                            })
                        })
                        .collect();
                    for t in tasks {
                        let reg = t.await.unwrap().unwrap();
                        assert!(reg.created, "{} created", reg.device.id);
                    }
                    wave += 1;
                }
            })
        })
        .collect();
    for run in runs {
        run.await.unwrap();
    }
    assert_eq!(count(db, "devices").await, (NODES * PER_NODE) as i64);
    let summary = r.fleet_summary().await.unwrap();
    assert_eq!(summary.total, (NODES * PER_NODE) as i64, "{summary:?}");
    if db.sqlite_file.is_none() {
        // A backend reports its deadlocks to the statistics when it exits: close the pools.
        for node in nodes.drain(..) {
            node.close().await;
        }
        let mut seen = 0;
        for _ in 0..20 {
            seen = deadlocks().await - deadlocks_before;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(seen, 0, "deadlocks between the nodes' registration transactions");
    }
}

/// A SQLite database written before the per-device telemetry index moved to
/// `telemetry_by_device` (migration 10) keeps its messages readable by device: the migration
/// indexes every existing row and sets the mark past them.
#[tokio::test]
async fn sqlite_upgrade_indexes_existing_telemetry() {
    let dir = tempfile::tempdir().unwrap();
    let url = Registry::sqlite_url(dir.path());
    sqlx::any::install_default_drivers();
    let dir_of = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"));
    let mut before = sqlx::migrate::Migrator::new(dir_of).await.unwrap();
    before.migrations = before
        .migrations
        .iter()
        .filter(|m| m.version < 10)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    {
        let opts: sqlx::sqlite::SqliteConnectOptions = url
            .parse::<sqlx::sqlite::SqliteConnectOptions>()
            .unwrap()
            .create_if_missing(true);
        let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&opts)
            .await
            .unwrap();
        before.run(&mut conn).await.unwrap();
        for (i, device) in ["u", "v", "u", "u"].iter().enumerate() {
            sqlx::query(
                "INSERT INTO telemetry (device_id, topic, payload, qos, source, received_at) VALUES ($1, 't', x'00', 1, 'mqtt', $2)",
            )
            .bind(device)
            .bind(NOW + 10 - i as i64)
            .execute(&mut conn)
            .await
            .unwrap();
        }
    }
    let r = Registry::open(&url, common::keyring()).await.unwrap();
    assert_eq!(
        r.index_telemetry(100).await.unwrap(),
        0,
        "the migration indexed everything"
    );
    let u = r.telemetry("u", 0, i64::MAX, 10).await.unwrap();
    assert_eq!(u.iter().map(|m| m.received_at_ms - NOW).collect::<Vec<_>>(), [7, 8, 10]);
    r.close().await;
}

/// A relay's outbox: the rows stored after it opened carry it, its progress never moves back, and
/// when its relay is gone (same node restarted, or not alive for a while) exactly one other relay
/// claims it and reads back what it still owes.
async fn relay_outboxes_keep_what_jetstream_is_owed(db: &TestDb) {
    let r = &db.registry;
    r.store_telemetry(&[msg("before", 0)]).await.unwrap();
    let head = r.telemetry_head().await.unwrap();
    // Node "a"'s relay: opens its outbox, past the rows stored before.
    let a = r.open_relay_outbox("a", NOW).await.unwrap();
    assert_eq!(a.published_through, head);
    assert_eq!(r.relay_outbox(), a.id);
    let ids = r
        .store_telemetry_returning_ids(&(1..=5).map(|i| msg("x", i)).collect::<Vec<_>>())
        .await
        .unwrap();
    let owed = r.relay_outbox_rows(a.id, a.published_through, 100).await.unwrap();
    assert_eq!(
        owed.iter().map(|m| m.id).collect::<Vec<_>>(),
        ids,
        "the earlier row is in no outbox"
    );
    assert_eq!(owed[0].payload, msg("x", 1).payload);
    r.relay_outbox_progress(&a, ids[1], NOW + 1000).await.unwrap();
    r.relay_outbox_progress(&a, ids[0], NOW + 2000).await.unwrap();
    assert_eq!(
        db.raw_scalar(&format!(
            "SELECT published_through FROM relay_outboxes WHERE id = {}",
            a.id
        ))
        .await,
        ids[1],
        "progress never moves back"
    );
    assert_eq!(
        r.relay_outbox_rows(a.id, ids[1], 2).await.unwrap().len(),
        2,
        "the limit holds"
    );

    // Another process (node "b") opens its own; "a"'s relay is alive (beat at NOW + 2000).
    let other = db.reopen(common::keyring()).await;
    let b = other.open_relay_outbox("b", NOW + 2000).await.unwrap();
    assert_ne!(b.id, a.id);
    let stale_before = NOW + 2000 - 30_000;
    // What `other`'s relay (outbox `own`, of `node`, started at `started`) adopts at `at`.
    let claim = |own: i64, node: &'static str, started: i64, at: i64| {
        other.claim_relay_outbox(own, node, started, stale_before, at)
    };
    assert_eq!(claim(b.id, "b", NOW + 2000, NOW + 2500).await.unwrap(), None);
    // Another relay named "a", started at NOW + 1500 while "a"'s was beating (two nodes given one
    // name): it may not take a live relay's outbox.
    assert_eq!(claim(b.id, "a", NOW + 1500, NOW + 2500).await.unwrap(), None);
    // "a" restarted under the same name: its new relay claims the old outbox at once.
    let a2 = other.open_relay_outbox("a", NOW + 3000).await.unwrap();
    let claimed = claim(a2.id, "a", NOW + 3000, NOW + 3000)
        .await
        .unwrap()
        .expect("the same node's old outbox");
    assert_eq!(
        claimed,
        registry::RelayOutbox {
            id: a.id,
            node: "a".into(),
            published_through: ids[1]
        }
    );
    // Nothing else to adopt: "b"'s relay is alive, and the claim refreshed "a"'s.
    assert_eq!(claim(a2.id, "a", NOW + 3000, NOW + 3000).await.unwrap(), None);
    // "b" stops cleanly (alive_at 0): any relay may adopt it at once; of two, one does.
    other.relay_outbox_progress(&b, 0, 0).await.unwrap();
    let (x, y) = tokio::join!(
        r.claim_relay_outbox(a.id, "c", NOW, stale_before, NOW + 4000),
        other.claim_relay_outbox(a2.id, "d", NOW, stale_before, NOW + 4000)
    );
    let winners: Vec<_> = [x.unwrap(), y.unwrap()].into_iter().flatten().collect();
    assert_eq!(winners.len(), 1, "one adopter: {winners:?}");
    assert_eq!(winners[0].id, b.id);
    // "a"'s old outbox published by its adopter: deleted.
    r.close_relay_outbox(a.id).await.unwrap();
    // A relay silent past the stale limit is adopted too.
    let later = NOW + 3000 + 30_001;
    let stale = r
        .claim_relay_outbox(b.id, "e", NOW, later - 30_000, later)
        .await
        .unwrap()
        .expect("a2 has not beaten since NOW + 3000");
    assert_eq!(stale.id, a2.id);
    // Published and deleted.
    for o in [b.id, a2.id] {
        r.close_relay_outbox(o).await.unwrap();
    }
    assert_eq!(count(db, "relay_outboxes").await, 0);
    // a2's relay was alive after all (cut off from the database for longer than the adopters
    // wait): its next record brings its outbox back, under its id, so it stays adoptable.
    other.relay_outbox_progress(&a2, ids[1], later + 500).await.unwrap();
    let back = r
        .claim_relay_outbox(b.id, "e", NOW, later + 501, later + 501)
        .await
        .unwrap()
        .expect("the outbox recorded again");
    assert_eq!(
        back,
        registry::RelayOutbox {
            id: a2.id,
            node: "a".into(),
            published_through: ids[1]
        }
    );
    r.close_relay_outbox(a2.id).await.unwrap();
    assert_eq!(count(db, "relay_outboxes").await, 0);
    other.close().await;
}
