//! The MQTT/TLS endpoint end to end, on loopback, with real TLS clients (rustls limited to
//! what STM32 + mbedTLS speak, and TLS 1.3): just-in-time registration, run-time trust
//! changes, every bad actor refused with the right code and event, durable QoS 1, backend
//! subscribers and commands, and a slow-loris handshake flood.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;

use common::{check_of, id_of, options, start, start_with};
use fleetward_test_support::{Dn, KeyKind, Spec, TestCa};
use registry::{DeviceStatus, Role};
use sim_devices::client::{Client, ClientError, ConnectOptions, ServerPacket, TlsProfile};
use std::time::Duration;

fn stsafe_fleet() -> TestCa {
    TestCa::stsafe_root("STM STSAFE-A TEST CA 01")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stm32_tls12_device_registers_in_its_first_connection_and_qos1_is_stored_before_puback() {
    let ca = stsafe_fleet();
    let server = start(&[&ca]).await;
    let device = ca.issue_stsafe_device(
        "eval3",
        &[0x02, 0x09, 0xB0, 0x84, 0x61, 0x59, 0xE4, 0x39, 0x52, 0x01, 0x39],
    );
    let id = id_of(&device);
    assert_eq!(id, "eval3-0209B0846159E439520139");

    let (mut client, code) = server.connect(&device, &id, TlsProfile::Stm32Tls12).await.unwrap();
    assert_eq!(code, 0, "CONNACK accepted");
    let (version, suite) = client.tls_parameters();
    assert_eq!(version, "TLSv1_2");
    assert_eq!(suite, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256");

    // Registered during this very connection, before any reconnect.
    let record = server.running.registry.device(&id).await.unwrap();
    assert_eq!(record.status, DeviceStatus::Active);
    assert_eq!(
        record.tls_suite.as_deref(),
        Some("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256")
    );
    assert_eq!(server.count_events("device.registered").await, 1);

    for i in 0..20 {
        client
            .publish(
                &format!("devices/{id}/telemetry"),
                format!("{{\"n\":{i}}}").as_bytes(),
                1,
            )
            .await
            .unwrap();
        // The PUBACK arrived: the message must already be in the store.
        let stored = server.running.registry.telemetry(&id, 0, i64::MAX, 100).await.unwrap();
        assert_eq!(stored.len(), i + 1, "PUBACK before the commit");
    }
    client
        .publish(&format!("devices/{id}/telemetry"), b"qos0", 0)
        .await
        .unwrap();
    client.ping().await.unwrap();
    client.disconnect().await.unwrap();

    // Second connection: known device, no second registration.
    let (client, code) = server.connect(&device, &id, TlsProfile::Tls13).await.unwrap();
    assert_eq!(code, 0);
    assert_eq!(client.tls_parameters().0, "TLSv1_3");
    client.disconnect().await.unwrap();
    assert_eq!(server.count_events("device.registered").await, 1);
    let record = server.running.registry.device(&id).await.unwrap();
    assert_eq!(record.connections, 2);
    assert_eq!(record.tls_version.as_deref(), Some("TLSv1_3"));
    // Each connection's latency, accept to CONNACK, is in the histogram of its kind: the first
    // (which registered the device) under device="new", the second under "known".
    let metrics = server.metrics().await;
    let value = |series: &str| -> f64 {
        common::series_value(&metrics, series).unwrap_or_else(|| panic!("no {series} in /metrics:\n{metrics}"))
    };
    let h = "fleetward_connect_duration_seconds";
    for kind in ["new", "known"] {
        assert_eq!(value(&format!("{h}_count{{device=\"{kind}\"}}")), 1.0, "{kind}");
        assert_eq!(value(&format!("{h}_bucket{{device=\"{kind}\",le=\"+Inf\"}}")), 1.0);
        let took = value(&format!("{h}_sum{{device=\"{kind}\"}}"));
        assert!(took > 0.0 && took < 10.0, "{kind}: {took} s");
    }
    assert!(metrics.contains(&format!("# TYPE {h} histogram")));
    assert_eq!(value("fleetward_tls_handshake_duration_seconds_count"), 2.0);
    // The QoS 0 message has no acknowledgement to wait for: it is stored by the next batch.
    let mut stored = 0;
    for _ in 0..100 {
        stored = server
            .running
            .registry
            .telemetry(&id, 0, i64::MAX, 100)
            .await
            .unwrap()
            .len();
        if stored == 21 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stored, 21);
    server.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_client_id_is_given_the_device_id() {
    let ca = stsafe_fleet();
    let server = start(&[&ca]).await;
    let device = ca.issue_stsafe_device("spl2", &[0x01, 0x02, 0x03]);
    let (client, code) = server.connect(&device, "", TlsProfile::Tls13).await.unwrap();
    assert_eq!(code, 0);
    client.disconnect().await.unwrap();
    server.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_registered_at_run_time_is_trusted_by_the_next_handshake_and_a_revoked_one_is_not() {
    let ca = stsafe_fleet();
    let server = start(&[]).await;
    let device = ca.issue_stsafe_device("eval3", &[0x0A, 0x0B]);
    let id = id_of(&device);

    let refused = server.connect(&device, &id, TlsProfile::Stm32Tls12).await;
    assert!(matches!(&refused, Err(e) if e.is_tls_rejection()), "{refused:?}");
    let e = server
        .wait_event("chain.rejected", |e| check_of(e).as_deref() == Some("unknown_issuer"))
        .await;
    assert!(e.reason.unwrap().contains("not a registered provisioning CA"));

    // Registered by another process (the registry directly): picked up by polling, no restart.
    let registry = &server.running.registry;
    let record = registry
        .insert_ca(
            &registry::NewCa {
                cert_der: &ca.der,
                identity_source: verifier::x509::IdentitySource::CommonName,
                identity_pattern: None,
                digest_mode: verifier::challenge::DigestMode::Direct,
                auto_activate: true,
                registered_by: "test",
            },
            1,
        )
        .await
        .unwrap();
    let mut admitted = false;
    for _ in 0..60 {
        if let Ok((c, 0)) = server.connect(&device, &id, TlsProfile::Stm32Tls12).await {
            c.disconnect().await.unwrap();
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(admitted, "CA registered at run time was not trusted within 6 s");

    // Revoked in-process: the very next handshake fails, and the device is revoked too (even
    // though, reconnecting, it now passes on a cached verdict).
    let (c, _) = server.connect(&device, &id, TlsProfile::Tls13).await.unwrap();
    c.disconnect().await.unwrap();
    let (mut online, _) = server.connect(&device, &id, TlsProfile::Tls13).await.unwrap();
    assert!(server.running.stats.snapshot().chain_verdicts_reused >= 1);
    registry
        .revoke_ca(&record.id, "test", "key compromise", 2)
        .await
        .unwrap();
    server.running.registry_changed().await.unwrap();
    let refused = server.connect(&device, &id, TlsProfile::Stm32Tls12).await;
    assert!(matches!(&refused, Err(e) if e.is_tls_rejection()), "{refused:?}");
    // The session that was online is closed by the server.
    let end = online.recv(Duration::from_secs(5)).await;
    assert!(
        matches!(
            end,
            Err(ClientError::Closed) | Ok(ServerPacket::Disconnect) | Err(ClientError::Io(_))
        ),
        "{end:?}"
    );
    assert_eq!(registry.device(&id).await.unwrap().status, DeviceStatus::Revoked);
    server.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_actors_are_refused_with_the_right_code_and_event() {
    let ca = stsafe_fleet();
    let server = start(&[&ca]).await;

    // Foreign CA.
    let foreign = TestCa::stsafe_root("Counterfeit CA");
    let fake = foreign.issue_stsafe_device("eval3", &[0x66]);
    let r = server.connect(&fake, &id_of(&fake), TlsProfile::Stm32Tls12).await;
    assert!(matches!(&r, Err(e) if e.is_tls_rejection()), "{r:?}");
    server
        .wait_event("chain.rejected", |e| check_of(e).as_deref() == Some("unknown_issuer"))
        .await;

    // Expired certificate.
    let expired = ca.issue_device_with(
        KeyKind::P256,
        &[(Dn::CommonName, "expired-device")],
        &Spec {
            not_before: "2020-01-01T00:00:00Z".into(),
            not_after: "2021-01-01T00:00:00Z".into(),
            ..Spec::default()
        },
    );
    let r = server.connect(&expired, "expired-device", TlsProfile::Tls13).await;
    assert!(matches!(&r, Err(e) if e.is_tls_rejection()), "{r:?}");
    server
        .wait_event("chain.rejected", |e| check_of(e).as_deref() == Some("expired"))
        .await;

    // Wrong client id.
    let device = ca.issue_stsafe_device("eval3", &[0x01]);
    let (_, code) = server
        .connect(&device, "someone-else", TlsProfile::Stm32Tls12)
        .await
        .unwrap();
    assert_eq!(code, 2, "client identifier not valid");
    server
        .wait_event("device.refused", |e| {
            check_of(e).as_deref() == Some("client_id_mismatch")
        })
        .await;

    // Topic trespass: subscribe refused, publish disconnects.
    let id = id_of(&device);
    let (mut c, code) = server.connect(&device, &id, TlsProfile::Stm32Tls12).await.unwrap();
    assert_eq!(code, 0);
    assert_eq!(
        c.subscribe(&[
            ("devices/other/commands/#", 1),
            (&format!("devices/{id}/commands/#"), 1)
        ])
        .await
        .unwrap(),
        vec![0x80, 1]
    );
    assert_eq!(
        c.subscribe(&[("devices/+/telemetry", 0), ("#", 0)]).await.unwrap(),
        vec![0x80, 0x80]
    );
    let r = c.publish("devices/other/telemetry", b"spoof", 1).await;
    assert!(r.is_err(), "trespassing publish must end the session: {r:?}");
    server
        .wait_event("device.acl_violation", |e| {
            e.detail.as_ref().unwrap()["action"] == "publish"
        })
        .await;
    assert!(
        server
            .running
            .registry
            .telemetry("other", 0, i64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Will outside the subtree.
    let mut c = Client::connect(server.addr(), &server.tls(Some(&device), TlsProfile::Tls13))
        .await
        .unwrap();
    let (_, code) = c
        .mqtt_connect(&ConnectOptions {
            will: Some(("devices/other/status".into(), b"gone".to_vec(), 0)),
            ..options(&id)
        })
        .await
        .unwrap();
    assert_eq!(code, 5);

    // Revoked device: refused at the handshake.
    server
        .running
        .registry
        .set_device_status(&id, DeviceStatus::Revoked, "test", "stolen", 5)
        .await
        .unwrap();
    server.running.registry_changed().await.unwrap();
    let r = server.connect(&device, &id, TlsProfile::Stm32Tls12).await;
    assert!(matches!(&r, Err(e) if e.is_tls_rejection()), "{r:?}");
    server
        .wait_event("device.refused", |e| check_of(e).as_deref() == Some("device_revoked"))
        .await;

    // No certificate and no token.
    let mut anon = Client::connect(server.addr(), &server.tls(None, TlsProfile::Tls13))
        .await
        .unwrap();
    let (_, code) = anon.mqtt_connect(&options("anon")).await.unwrap();
    assert_eq!(code, 5);
    server.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_devices_are_told_not_authorized_and_quarantined_ones_may_only_attest() {
    let ca = stsafe_fleet();
    let dir = tempfile::tempdir().unwrap();
    let server = start(&[]).await;
    drop(dir);
    let registry = &server.running.registry;
    registry
        .insert_ca(
            &registry::NewCa {
                cert_der: &ca.der,
                identity_source: verifier::x509::IdentitySource::CommonName,
                identity_pattern: None,
                digest_mode: verifier::challenge::DigestMode::Direct,
                auto_activate: false,
                registered_by: "test",
            },
            1,
        )
        .await
        .unwrap();
    server.running.registry_changed().await.unwrap();
    let device = ca.issue_stsafe_device("eval3", &[0x07]);
    let id = id_of(&device);
    let (_, code) = server.connect(&device, &id, TlsProfile::Stm32Tls12).await.unwrap();
    assert_eq!(code, 5, "pending → not authorized");
    assert_eq!(registry.device(&id).await.unwrap().status, DeviceStatus::Pending);
    server
        .wait_event("device.refused", |e| check_of(e).as_deref() == Some("device_pending"))
        .await;

    registry
        .set_device_status(&id, DeviceStatus::Quarantined, "test", "integrity", 2)
        .await
        .unwrap();
    let (mut c, code) = server.connect(&device, &id, TlsProfile::Tls13).await.unwrap();
    assert_eq!(code, 0, "quarantined devices may connect");
    assert_eq!(
        c.subscribe(&[
            (&format!("devices/{id}/attestation/challenge"), 1),
            (&format!("devices/{id}/commands/#"), 1)
        ])
        .await
        .unwrap(),
        vec![1, 0x80]
    );
    c.publish(&format!("devices/{id}/attestation/evidence"), b"evidence", 1)
        .await
        .unwrap();
    assert!(c.publish(&format!("devices/{id}/telemetry"), b"x", 1).await.is_err());
    server.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_connections_of_one_device_make_one_registration() {
    let ca = stsafe_fleet();
    let server = start(&[&ca]).await;
    let device = ca.issue_stsafe_device("eval3", &[0x42]);
    let id = id_of(&device);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..12 {
        let tls = server.tls(
            Some(&device),
            if i % 2 == 0 {
                TlsProfile::Stm32Tls12
            } else {
                TlsProfile::Tls13
            },
        );
        let (addr, id) = (server.addr(), id.clone());
        tasks.spawn(async move {
            let mut c = Client::connect(addr, &tls).await.unwrap();
            c.mqtt_connect(&options(&id)).await.map(|(_, code)| code)
        });
    }
    let mut accepted = 0;
    for r in tasks.join_all().await {
        // Each either got in or was taken over by a sibling right after its CONNACK.
        if let Ok(0) = r {
            accepted += 1;
        }
    }
    assert!(accepted >= 1);
    assert_eq!(server.count_events("device.registered").await, 1);
    assert_eq!(server.running.registry.device(&id).await.unwrap().connections, 12);
    server.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_are_flagged_and_the_refuse_policy_keeps_the_first_connection() {
    let ca = stsafe_fleet();
    let server = start_with(&[&ca], |c| c.mqtt.clone_policy = gateway::mqtt::ClonePolicy::Refuse).await;
    let device = ca.issue_stsafe_device("eval3", &[0x11]);
    let id = id_of(&device);
    let mut here = server.tls(Some(&device), TlsProfile::Stm32Tls12);
    here.bind = Some("127.0.0.1".parse().unwrap());
    let mut there = server.tls(Some(&device), TlsProfile::Tls13);
    there.bind = Some("127.0.0.2".parse().unwrap());
    let mut first = Client::connect(server.addr(), &here).await.unwrap();
    assert_eq!(first.mqtt_connect(&options(&id)).await.unwrap().1, 0);
    let mut second = Client::connect(server.addr(), &there).await.unwrap();
    assert_eq!(
        second.mqtt_connect(&options(&id)).await.unwrap().1,
        5,
        "second copy refused"
    );
    let e = server.wait_event("device.clone_suspected", |_| true).await;
    assert_eq!(e.device_id.as_deref(), Some(id.as_str()));
    assert_eq!(e.detail.as_ref().unwrap()["policy"], "refused");
    first.ping().await.expect("the first connection is untouched");

    // Same address reconnecting (a device rebooting) is an ordinary takeover, not a clone.
    let mut again = Client::connect(server.addr(), &here).await.unwrap();
    assert_eq!(again.mqtt_connect(&options(&id)).await.unwrap().1, 0);
    server.wait_event("device.session_taken_over", |_| true).await;
    assert_eq!(server.count_events("device.clone_suspected").await, 1);
    server.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_applications_subscribe_with_wildcards_and_command_devices_even_offline() {
    let ca = stsafe_fleet();
    let server = start(&[&ca]).await;
    let registry = &server.running.registry;
    let token = registry
        .create_token(Role::Operator, Some("app"), "test", 1)
        .await
        .unwrap();
    let viewer = registry.create_token(Role::Viewer, None, "test", 1).await.unwrap();

    // Wrong token / viewer role / no token.
    for (pw, want) in [("fw_nope_nope", 4u8), (viewer.secret.as_str(), 5)] {
        let mut app = Client::connect(server.addr(), &server.tls(None, TlsProfile::Tls13))
            .await
            .unwrap();
        let (_, code) = app
            .mqtt_connect(&ConnectOptions {
                username: Some("token".into()),
                password: Some(pw.into()),
                ..options("app")
            })
            .await
            .unwrap();
        assert_eq!(code, want);
    }

    let mut app = Client::connect(server.addr(), &server.tls(None, TlsProfile::Tls13))
        .await
        .unwrap();
    let (_, code) = app
        .mqtt_connect(&ConnectOptions {
            username: Some("token".into()),
            password: Some(token.secret.to_string()),
            ..options("ops-app")
        })
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert_eq!(
        app.subscribe(&[("devices/+/telemetry", 1), ("elsewhere/#", 0)])
            .await
            .unwrap(),
        vec![1, 0x80]
    );

    // A command for a device that has never connected waits in the registry.
    let device = ca.issue_stsafe_device("eval3", &[0x55]);
    let id = id_of(&device);
    app.publish(&format!("devices/{id}/commands/reboot"), b"{\"delay\":5}", 1)
        .await
        .unwrap();

    let (mut dev, code) = server.connect(&device, &id, TlsProfile::Stm32Tls12).await.unwrap();
    assert_eq!(code, 0);
    dev.subscribe(&[(&format!("devices/{id}/commands/#"), 1)])
        .await
        .unwrap();
    match dev.recv(Duration::from_secs(5)).await.unwrap() {
        ServerPacket::Publish {
            topic,
            payload,
            qos,
            pkid,
        } => {
            assert_eq!(topic, format!("devices/{id}/commands/reboot"));
            assert_eq!(&payload[..], b"{\"delay\":5}");
            assert_eq!(qos, 1);
            dev.puback(pkid).await.unwrap();
        }
        other => panic!("expected the command, got {other:?}"),
    }
    // And a command while online arrives at once.
    app.publish(&format!("devices/{id}/commands/led"), b"on", 1)
        .await
        .unwrap();
    match dev.recv(Duration::from_secs(5)).await.unwrap() {
        ServerPacket::Publish { topic, pkid, .. } => {
            assert!(topic.ends_with("/commands/led"));
            dev.puback(pkid).await.unwrap();
        }
        other => panic!("expected the command, got {other:?}"),
    }
    dev.ping().await.unwrap();
    assert!(
        registry.pending_commands(&id, 3, 10).await.unwrap().is_empty(),
        "both delivered"
    );

    // Device telemetry reaches the application.
    dev.publish(&format!("devices/{id}/telemetry"), b"21.5", 1)
        .await
        .unwrap();
    match app.recv(Duration::from_secs(5)).await.unwrap() {
        ServerPacket::Publish {
            topic,
            payload,
            qos,
            pkid,
        } => {
            assert_eq!(topic, format!("devices/{id}/telemetry"));
            assert_eq!(&payload[..], b"21.5");
            assert_eq!(qos, 1);
            app.puback(pkid).await.unwrap();
        }
        other => panic!("expected telemetry, got {other:?}"),
    }
    // Applications publish only commands.
    assert!(app.publish("devices/x/telemetry", b"forged", 1).await.is_err());
    server.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_backend_session_resumes_where_it_left_off() {
    let ca = stsafe_fleet();
    let server = start(&[&ca]).await;
    let token = server
        .running
        .registry
        .create_token(Role::Admin, None, "test", 1)
        .await
        .unwrap();
    let login = |clean| ConnectOptions {
        username: Some("token".into()),
        password: Some(token.secret.to_string()),
        clean_session: clean,
        ..options("durable-app")
    };
    let mut app = Client::connect(server.addr(), &server.tls(None, TlsProfile::Tls13))
        .await
        .unwrap();
    app.mqtt_connect(&login(false)).await.unwrap();
    app.subscribe(&[("devices/#", 1)]).await.unwrap();
    app.disconnect().await.unwrap();

    let device = ca.issue_stsafe_device("eval3", &[0x77]);
    let id = id_of(&device);
    let (mut dev, _) = server.connect(&device, &id, TlsProfile::Stm32Tls12).await.unwrap();
    for i in 0..30 {
        dev.publish(&format!("devices/{id}/telemetry"), format!("{i}").as_bytes(), 1)
            .await
            .unwrap();
    }
    let mut app = Client::connect(server.addr(), &server.tls(None, TlsProfile::Tls13))
        .await
        .unwrap();
    let (present, code) = app.mqtt_connect(&login(false)).await.unwrap();
    assert_eq!((present, code), (true, 0));
    for i in 0..30 {
        match app.recv(Duration::from_secs(5)).await.unwrap() {
            ServerPacket::Publish { payload, pkid, .. } => {
                assert_eq!(payload, format!("{i}").as_bytes());
                app.puback(pkid).await.unwrap();
            }
            other => panic!("{other:?}"),
        }
    }
    server.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_idle_tcp_connections_do_not_delay_a_real_device() {
    let ca = stsafe_fleet();
    let server = start_with(&[&ca], |c| c.mqtt.handshake_timeout_secs = 30).await;
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(tokio::net::TcpStream::connect(server.addr()).await.unwrap());
    }
    let device = ca.issue_stsafe_device("eval3", &[0x99]);
    let id = id_of(&device);
    let started = std::time::Instant::now();
    let (c, code) = server.connect(&device, &id, TlsProfile::Stm32Tls12).await.unwrap();
    let took = started.elapsed();
    assert_eq!(code, 0);
    assert!(
        took < Duration::from_millis(1000),
        "connect took {took:?} behind 200 idle sockets"
    );
    c.disconnect().await.unwrap();
    drop(idle);
    server.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_are_dropped_after_the_timeout() {
    let ca = stsafe_fleet();
    let server = start_with(&[&ca], |c| c.mqtt.handshake_timeout_secs = 1).await;
    let mut s = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut s, &mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "server should close a silent handshake: {read:?}"
    );
    assert_eq!(server.running.stats.snapshot().handshakes_timed_out, 1);
    server.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_revoked_by_another_process_is_disconnected_and_refused() {
    let ca = stsafe_fleet();
    let server = start(&[&ca]).await;
    let device = ca.issue_stsafe_device("eval3", &[0x5A]);
    let id = id_of(&device);
    // Reconnects: from the second handshake on the chain's verdict is reused; revocation must
    // still count from the next handshake.
    for _ in 0..2 {
        let (c, code) = server.connect(&device, &id, TlsProfile::Stm32Tls12).await.unwrap();
        assert_eq!(code, 0);
        c.disconnect().await.unwrap();
    }
    let (mut online, code) = server.connect(&device, &id, TlsProfile::Stm32Tls12).await.unwrap();
    assert_eq!(code, 0);
    assert!(server.running.stats.snapshot().chain_verdicts_reused >= 1);
    // The registry changes behind the server's back (another node, the CLI): no notification.
    server
        .running
        .registry
        .set_device_status(&id, DeviceStatus::Revoked, "operator", "stolen", 10)
        .await
        .unwrap();
    let end = online.recv(Duration::from_secs(5)).await;
    assert!(
        matches!(
            end,
            Err(ClientError::Closed) | Ok(ServerPacket::Disconnect) | Err(ClientError::Io(_))
        ),
        "{end:?}"
    );
    let refused = server.connect(&device, &id, TlsProfile::Tls13).await;
    assert!(matches!(&refused, Err(e) if e.is_tls_rejection()), "{refused:?}");
    server.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_dropped_at_one_and_a_half_keep_alives_and_their_will_is_published() {
    let ca = stsafe_fleet();
    let server = start(&[&ca]).await;
    let device = ca.issue_stsafe_device("eval3", &[0x3C]);
    let id = id_of(&device);
    let mut c = Client::connect(server.addr(), &server.tls(Some(&device), TlsProfile::Stm32Tls12))
        .await
        .unwrap();
    let will_topic = format!("devices/{id}/status");
    let (_, code) = c
        .mqtt_connect(&ConnectOptions {
            keep_alive_secs: 1,
            will: Some((will_topic.clone(), b"offline".to_vec(), 1)),
            ..options(&id)
        })
        .await
        .unwrap();
    assert_eq!(code, 0);
    let started = std::time::Instant::now();
    // Silence: the server must close after ~1.5 s (not before 1 s, well before 5 s).
    let end = c.recv(Duration::from_secs(5)).await;
    let waited = started.elapsed();
    assert!(
        matches!(end, Err(ClientError::Closed) | Err(ClientError::Io(_))),
        "{end:?}"
    );
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(4),
        "closed after {waited:?}"
    );
    assert_eq!(server.running.stats.snapshot().keepalive_timeouts, 1);
    // The will was published (stored like any message of the device).
    let mut stored = Vec::new();
    for _ in 0..50 {
        stored = server.running.registry.telemetry(&id, 0, i64::MAX, 10).await.unwrap();
        if !stored.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (stored[0].topic.as_str(), stored[0].payload.as_slice()),
        (will_topic.as_str(), &b"offline"[..])
    );

    // A clean DISCONNECT publishes no will.
    let mut c = Client::connect(server.addr(), &server.tls(Some(&device), TlsProfile::Tls13))
        .await
        .unwrap();
    c.mqtt_connect(&ConnectOptions {
        will: Some((will_topic.clone(), b"offline".to_vec(), 0)),
        ..options(&id)
    })
    .await
    .unwrap();
    c.disconnect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        server
            .running
            .registry
            .telemetry(&id, 0, i64::MAX, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    server.running.shutdown().await;
}

/// The gateway resumes no TLS session: a device whose TLS stack keeps sessions (TLS 1.2 session
/// ids and tickets, TLS 1.3 tickets) still makes a full handshake on every connection, so every
/// connection proves possession of the key in its secure element.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_is_a_full_handshake_even_for_clients_that_keep_sessions() {
    use rustls::client::Resumption;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let ca = stsafe_fleet();
    let server = start(&[&ca]).await;
    let device = ca.issue_stsafe_device("resume", &[0x52]);
    let id = id_of(&device);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(server.server_ca_der.clone())).unwrap();
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut config = rustls::ClientConfig::builder_with_protocol_versions(&[version])
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(
                vec![CertificateDer::from(device.der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(device.key.serialize_der())),
            )
            .unwrap();
        // What a client that wants to resume keeps (rustls' default, stated).
        config.resumption = Resumption::in_memory_sessions(16);
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        for attempt in 0..3 {
            let tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
            let mut tls = connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap();
            let (_, conn) = tls.get_ref();
            assert_eq!(
                conn.handshake_kind(),
                Some(rustls::HandshakeKind::Full),
                "{version:?}, connection {attempt}"
            );
            // MQTT 3.1.1 CONNECT (clean session, keep-alive 30 s) and its CONNACK: the client
            // reads everything the server sent after the handshake (TLS 1.3 tickets included).
            let mut connect = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x1e];
            connect.extend_from_slice(&(id.len() as u16).to_be_bytes());
            connect.extend_from_slice(id.as_bytes());
            let mut packet = vec![0x10, connect.len() as u8];
            packet.extend_from_slice(&connect);
            tls.write_all(&packet).await.unwrap();
            let mut connack = [0u8; 4];
            tls.read_exact(&mut connack).await.unwrap();
            assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "{version:?}, connection {attempt}");
            let _ = tls.write_all(&[0xe0, 0x00]).await;
            let _ = tls.shutdown().await;
        }
    }
    server.running.shutdown().await;
}
