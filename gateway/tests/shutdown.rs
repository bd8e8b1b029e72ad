//! Graceful shutdown with `mqtt.drain_secs`: device sessions end spread over the drain period
//! (so that a fleet reconnects to the other replicas without a storm), each with a DISCONNECT
//! or a close, and every acknowledged message is stored.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;

use fleetward_test_support::TestCa;
use sim_devices::client::{ClientError, ServerPacket, TlsProfile};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_spreads_the_end_of_sessions_over_the_drain_period() {
    const DEVICES: usize = 150;
    let ca = TestCa::stsafe_root("STM STSAFE-A DRAIN CA");
    let server = common::start_with(&[&ca], |c| c.mqtt.drain_secs = 2).await;
    let mut clients = Vec::new();
    for i in 0..DEVICES {
        let d = ca.issue_stsafe_device("drain", &[(i >> 8) as u8, i as u8]);
        let id = common::id_of(&d);
        let (mut c, code) = server.connect(&d, &id, TlsProfile::Tls13).await.unwrap();
        assert_eq!(code, 0);
        c.publish(&format!("devices/{id}/telemetry"), b"before", 1)
            .await
            .unwrap();
        clients.push(c);
    }
    let started = Instant::now();
    let watchers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                loop {
                    match c.recv(Duration::from_secs(10)).await {
                        Ok(ServerPacket::Disconnect) | Err(ClientError::Closed) | Err(ClientError::Io(_)) => {
                            return Some(started.elapsed());
                        }
                        Ok(_) => continue,
                        Err(_) => return None,
                    }
                }
            })
        })
        .collect();
    let registry = server.running.registry.clone();
    server.running.shutdown().await;
    let mut ended = Vec::new();
    for w in watchers {
        ended.push(w.await.unwrap().expect("every session ends"));
    }
    ended.sort();
    let (first, last) = (ended[0], ended[ended.len() - 1]);
    assert!(
        last - first >= Duration::from_millis(1500),
        "sessions ended between {first:?} and {last:?}: not spread over 2 s"
    );
    assert!(last < Duration::from_secs(5), "the drain took {last:?}");
    // The first tenth ended well before the last tenth.
    assert!(ended[DEVICES / 10] + Duration::from_millis(800) < ended[DEVICES * 9 / 10]);
    drop(registry);
}
