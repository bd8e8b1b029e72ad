//! LoRaWAN uplinks verified per second through the UDP path, in two measurements:
//!
//! 1. **Verification stage** (what the listener's receive loop does for each datagram, on one
//!    core, in process): decode the PUSH_DATA, then for each `rxpk` look the session up by DevAddr,
//!    check the MIC and frame counter, decrypt — against the server's own session table, warmed
//!    from its registry. No sockets, no storage.
//! 2. **End to end**: G simulated packet forwarders push the same kind of datagrams over
//!    loopback UDP (K `rxpk` each, up to W unacknowledged per forwarder; the server acknowledges
//!    on receipt, as the protocol asks). A frame counts once the server has verified it and
//!    committed it (with its telemetry message) to the registry: the run ends when the server's
//!    `lorawan_uplinks_accepted` counter, bumped after each commit, reaches every frame sent.
//!    Frames the server dropped because its writer fell behind (`lorawan_uplinks_overloaded`)
//!    fail the run.
//!
//! N ABP devices are provisioned in a real server's registry, whose session table is then loaded
//! as at a start. Rounds keep each device's counter order: round r carries frame r of every
//! device.
//!
//!     cargo run --release -p gateway --example lorawan_udp_bench -- \
//!         [--devices 10000] [--rounds 20] [--per-datagram 8] [--gateways 4] [--window 32] \
//!         [--database-url postgres://postgres@127.0.0.1:5432/test]
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::disallowed_methods)]

mod common;

use common::arg;
use gateway::lorawan::uplink::{Reception, Sessions, UplinkSettings, Verdict};
use sim_devices::lorawan::{DeviceSession, LorawanDevice, Rx, rxpk};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

fn session(i: u32) -> DeviceSession {
    let k = |tag: u8| {
        let mut key = [tag; 16];
        key[..4].copy_from_slice(&i.to_be_bytes());
        key
    };
    DeviceSession {
        dev_addr: (0x2600_0000 | i).to_be_bytes(),
        f_nwk_s_int_key: k(1),
        s_nwk_s_int_key: k(1),
        nwk_s_enc_key: k(1),
        app_s_key: k(2),
        fcnt_up: 0,
    }
}

/// Sends `datagrams` from one forwarder socket with at most `window` awaiting PUSH_ACK.
async fn pump(socket: Arc<UdpSocket>, server: std::net::SocketAddr, datagrams: Vec<(u16, Vec<u8>)>, window: usize) {
    let mut pending: HashSet<u16> = HashSet::new();
    let mut next = 0;
    let mut buf = [0u8; 64];
    while next < datagrams.len() || !pending.is_empty() {
        while next < datagrams.len() && pending.len() < window {
            let (token, d) = &datagrams[next];
            socket.send_to(d, server).await.unwrap();
            pending.insert(*token);
            next += 1;
        }
        match tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf)).await {
            Ok(Ok(n)) if n >= 4 && buf[3] == 0x01 => {
                pending.remove(&u16::from_be_bytes([buf[1], buf[2]]));
            }
            Ok(_) => {}
            Err(_) => panic!("{} PUSH_ACKs missing after 5 s", pending.len()),
        }
    }
}

/// One round's datagrams, per forwarder: (token, PUSH_DATA).
type Round = Vec<Vec<(u16, Vec<u8>)>>;

/// Decodes and verifies one round's datagrams as the receive loop does; the frames accepted.
async fn verify_round(
    sessions: &Sessions,
    settings: &UplinkSettings,
    registry: &registry::Registry,
    round: &[Vec<(u16, Vec<u8>)>],
) -> u64 {
    let mut accepted = 0u64;
    for (_, datagram) in round.iter().flatten() {
        let Ok(semtech_udp::Packet::PushData { gateway, rxpk, .. }) = semtech_udp::decode(datagram) else {
            panic!("a datagram of ours does not decode");
        };
        for rx in rxpk {
            let heard = Reception {
                gateway: gateway.to_string(),
                freq: rx.freq,
                datr: rx.datr,
                rssi: rx.rssi,
                lsnr: rx.lsnr,
                tmst: rx.tmst,
            };
            if let Verdict::Accepted(_) = sessions.verify(registry, settings, &rx.data, &heard).await {
                accepted += 1;
            }
        }
    }
    accepted
}

#[tokio::main]
async fn main() {
    let devices: u32 = arg("--devices", "10000").parse().unwrap();
    let rounds: usize = arg("--rounds", "20").parse().unwrap();
    let per_datagram: usize = arg("--per-datagram", "8").parse().unwrap();
    let gateways: usize = arg("--gateways", "4").parse().unwrap();
    let window: usize = arg("--window", "32").parse().unwrap();
    let url = arg("--database-url", "");
    // A round's datagrams fit in the writer's queue: the run measures how fast frames are
    // verified through the sockets and how fast the store drains them, without shedding.
    let uplink_queue = arg("--uplink-queue", "16384").parse().unwrap();
    let (running, _dir) = common::start_server(&url, |c| c.lorawan.uplink_queue = uplink_queue).await;
    let r = &running.registry;
    let run_tag = (std::process::id() % 0xff) << 24;
    println!(
        "provisioning {devices} ABP devices ({})",
        if url.is_empty() { "SQLite" } else { "PostgreSQL" }
    );
    let mut fleet = Vec::with_capacity(devices as usize);
    for i in 0..devices {
        let s = session(i);
        let blob =
            gateway::lorawan::session_blob(&s.f_nwk_s_int_key, &s.s_nwk_s_int_key, &s.nwk_s_enc_key, &s.app_s_key);
        let dev_eui = (u64::from(run_tag | i) | 0x00AB_0000_0000_0000).to_be_bytes();
        r.insert_lorawan_abp(
            &registry::NewAbpDevice {
                dev_eui: &hex::encode(dev_eui),
                dev_addr: &hex::encode(s.dev_addr),
                mac_version: "1.0.4",
                session_keys: &blob,
                f_cnt_up: None,
                f_cnt_down: 0,
            },
            0,
        )
        .await
        .unwrap();
        fleet.push(LorawanDevice::abp(dev_eui, s, false));
    }
    // Frames, round by round, packed into PUSH_DATA datagrams spread over the forwarders.
    let sockets: Vec<Arc<UdpSocket>> = {
        let mut v = Vec::new();
        for _ in 0..gateways {
            v.push(Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()));
        }
        v
    };
    let payload = b"\x01\x02t=21.5;h=40";
    let mut token = 0u16;
    let mut plan: Vec<Round> = Vec::new();
    for _ in 0..=rounds {
        let frames: Vec<Vec<u8>> = fleet.iter_mut().map(|d| d.uplink(1, payload).unwrap()).collect();
        let mut per_gw: Vec<Vec<(u16, Vec<u8>)>> = vec![Vec::new(); gateways];
        for (n, chunk) in frames.chunks(per_datagram).enumerate() {
            token = token.wrapping_add(1);
            let g = n % gateways;
            let eui = [0xAA, 0x55, 0x5A, 0, 0, 0, 0, g as u8];
            let mut d = vec![2, (token >> 8) as u8, token as u8, 0x00];
            d.extend_from_slice(&eui);
            let rx: Vec<serde_json::Value> = chunk.iter().map(|f| rxpk(f, &Rx::default())).collect();
            d.extend_from_slice(serde_json::json!({ "rxpk": rx }).to_string().as_bytes());
            per_gw[g].push((token, d));
        }
        plan.push(per_gw);
    }
    // 1. The verification stage, on this thread, against a session table of its own (so the
    // server's table stays cold for the end-to-end run), warmed by round 0.
    let sessions = Sessions::default();
    let settings = UplinkSettings::default();
    let t = Instant::now();
    let loaded = sessions.preload(r).await.unwrap();
    println!(
        "session table loaded from the registry (as at a start): {loaded} sessions in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(loaded, devices as usize);
    assert_eq!(
        verify_round(&sessions, &settings, r, &plan[0]).await,
        u64::from(devices)
    );
    let mut stage_rates = Vec::new();
    for round in &plan[1..] {
        let t = Instant::now();
        assert_eq!(
            verify_round(&sessions, &settings, r, round).await,
            u64::from(devices),
            "every frame verifies"
        );
        stage_rates.push(f64::from(devices) / t.elapsed().as_secs_f64());
    }
    stage_rates.sort_by(f64::total_cmp);
    println!(
        "verification stage (one core: decode PUSH_DATA, session lookup, MIC, FCnt, decrypt): \
         median round {:.0} uplinks/s ({:.2} µs per uplink; min {:.0}/s, max {:.0}/s)",
        stage_rates[stage_rates.len() / 2],
        1e6 / stage_rates[stage_rates.len() / 2],
        stage_rates[0],
        stage_rates[stage_rates.len() - 1],
    );
    drop(sessions);

    // 2. End to end through the server.
    let server = running.lorawan_udp_addr;
    let run_round = |round: Round| {
        let sockets = sockets.clone();
        async move {
            let tasks: Vec<_> = round
                .into_iter()
                .zip(sockets)
                .map(|(datagrams, s)| tokio::spawn(pump(s, server, datagrams, window)))
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        }
    };
    let mut plan = plan.into_iter();
    // The server loads its sessions as it does at start; round 0 is reported apart.
    running.lorawan_sessions.preload(r).await.unwrap();
    let stored = |n: u64| {
        let stats = running.stats.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while {
                let s = stats.snapshot();
                s.lorawan_uplinks_accepted + s.lorawan_uplinks_overloaded < n
            } {
                assert!(
                    Instant::now() < deadline,
                    "frames not stored within 120 s: {:?}",
                    stats.snapshot()
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    let base = running.stats.snapshot().lorawan_uplinks_accepted;
    let started = Instant::now();
    run_round(plan.next().unwrap()).await;
    stored(base + u64::from(devices)).await;
    let warm = started.elapsed();
    let before = running.stats.snapshot();
    let expected = u64::from(devices) * rounds as u64;
    let started = Instant::now();
    for round in plan {
        run_round(round).await;
    }
    let received = started.elapsed();
    stored(before.lorawan_uplinks_accepted + before.lorawan_uplinks_overloaded + expected).await;
    let elapsed = started.elapsed();
    let after = running.stats.snapshot();
    let accepted = after.lorawan_uplinks_accepted - before.lorawan_uplinks_accepted;
    let rejected = after.lorawan_uplinks_rejected - before.lorawan_uplinks_rejected;
    let overloaded = after.lorawan_uplinks_overloaded - before.lorawan_uplinks_overloaded;
    println!(
        "first round: {devices} uplinks stored in {:.2} s ({:.0}/s)",
        warm.as_secs_f64(),
        f64::from(devices) / warm.as_secs_f64()
    );
    println!(
        "{accepted} uplinks verified and stored in {:.2} s: {:.0} uplinks/s end to end \
         (all sent and acknowledged in {:.2} s, {:.0}/s; the last commit {:.0} ms later) \
         ({rounds} rounds × {devices} devices, {per_datagram} per datagram, {gateways} forwarders, window {window}); \
         rejected {rejected}, dropped by overload {overloaded}",
        elapsed.as_secs_f64(),
        accepted as f64 / elapsed.as_secs_f64(),
        received.as_secs_f64(),
        expected as f64 / received.as_secs_f64(),
        (elapsed - received).as_secs_f64() * 1e3,
    );
    assert_eq!(accepted, expected, "every frame verified and stored");
    assert_eq!(rejected, 0);
    assert_eq!(overloaded, 0, "the writer fell behind");
    running.shutdown().await;
}
