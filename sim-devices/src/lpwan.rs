//! LoRaWAN and Sigfox devices in a `sim-devices run`: provisioned through the operator API with
//! fresh root keys, then one uplink each per interval until the deadline. What the server stored
//! is read back from the API at the end: a LoRaWAN gateway cannot tell whether its frames were
//! accepted.

use crate::api::Api;
use crate::lorawan::{LorawanDevice, PacketForwarder, Rx};
use crate::report::LpwanCounts;
use crate::run::Live;
use crate::sigfox::SigfoxDevice;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    let _ = aws_lc_rs::rand::fill(&mut b);
    b
}

/// The join EUI of the simulated fleet's join server.
pub const JOIN_EUI: [u8; 8] = [0x70, 0xB3, 0xD5, 0x7E, 0xD0, 0x00, 0x00, 0x01];

/// A new OTAA LoRaWAN 1.0.3 device, registered on the server (its AppKey sealed there).
pub async fn provision_lorawan(api: &Api) -> Result<LorawanDevice, crate::api::ApiError> {
    let tail: [u8; 4] = random();
    let dev_eui = [0x00, 0x80, 0xE1, 0x15, tail[0], tail[1], tail[2], tail[3]];
    let app_key: [u8; 16] = random();
    api.post(
        "/api/v1/lorawan/devices",
        &json!({
            "dev_eui": hex::encode_upper(dev_eui),
            "join_eui": hex::encode_upper(JOIN_EUI),
            "mac_version": "1.0.3",
            "app_key": hex::encode_upper(app_key),
        }),
    )
    .await?;
    Ok(LorawanDevice::otaa(dev_eui, JOIN_EUI, app_key, app_key, false))
}

/// A new Sigfox device with a NAK, registered on the server.
pub async fn provision_sigfox(api: &Api) -> Result<SigfoxDevice, crate::api::ApiError> {
    let id: [u8; 3] = random();
    let device_id = u32::from_be_bytes([0x00, id[0] | 0x80, id[1], id[2]]);
    let nak: [u8; 16] = random();
    api.post(
        "/api/v1/sigfox/devices",
        &json!({ "device_id": format!("{device_id:08X}"), "nak": hex::encode_upper(nak) }),
    )
    .await?;
    Ok(SigfoxDevice::new(device_id, nak, 0))
}

/// Whose turn it is to send: each of `devices` once per `interval`, spread evenly over it, until
/// the deadline.
struct Turns {
    devices: usize,
    step: Duration,
    next: Instant,
    deadline: Instant,
    n: u32,
}

impl Turns {
    fn new(devices: usize, interval: Duration, deadline: Instant) -> Self {
        Turns {
            devices,
            step: interval.div_f64(devices.max(1) as f64),
            next: Instant::now(),
            deadline,
            n: 0,
        }
    }

    /// Waits for the next turn: (device index, turns so far), or `None` at the deadline.
    async fn next(&mut self) -> Option<(usize, u32)> {
        if self.devices == 0 || self.next >= self.deadline {
            return None;
        }
        tokio::time::sleep_until(self.next).await;
        self.next += self.step;
        let i = self.n as usize % self.devices;
        self.n = self.n.wrapping_add(1);
        Some((i, self.n))
    }
}

/// `n` LoRaWAN devices join through one simulated gateway, then send an uplink each per
/// `interval` (spread over it) until `deadline`.
pub async fn lorawan_devices(
    api: &Api,
    udp: SocketAddr,
    n: usize,
    interval: Duration,
    deadline: Instant,
    live: &Live,
) -> LpwanCounts {
    let mut counts = LpwanCounts {
        devices: n as u64,
        ..Default::default()
    };
    let mut gw_eui: [u8; 8] = random();
    gw_eui[..3].copy_from_slice(&[0xAA, 0x55, 0x5A]);
    let mut gateway = match PacketForwarder::connect(udp, gw_eui).await {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(error = %e, "the simulated LoRaWAN gateway could not reach the server");
            return counts;
        }
    };
    let mut devices = Vec::new();
    for _ in 0..n {
        if Instant::now() >= deadline {
            break;
        }
        let mut device = match provision_lorawan(api).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot provision a LoRaWAN device");
                continue;
            }
        };
        let joined = async {
            let request = device.join_request()?;
            gateway.push(&[(request, Rx::default())]).await?;
            let accept = gateway.downlink(Duration::from_secs(10)).await?;
            device.accept(&accept.phy)
        }
        .await;
        match joined {
            Ok(_) => devices.push(device),
            Err(e) => tracing::warn!(error = %e, "a LoRaWAN join failed"),
        }
    }
    counts.ready = devices.len() as u64;
    let mut turns = Turns::new(devices.len(), interval, deadline);
    while let Some((i, reading)) = turns.next().await {
        let Ok(frame) = devices[i].uplink(2, format!("{{\"t\":{}}}", 20 + reading % 10).as_bytes()) else {
            continue;
        };
        if gateway.push(&[(frame, Rx::default())]).await.is_ok() {
            counts.uplinks_sent += 1;
            live.lpwan_uplinks.fetch_add(1, Ordering::Relaxed);
        }
    }
    // What the server kept.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for d in &devices {
        let path = format!("/api/v1/lorawan/devices/{}/uplinks", hex::encode_upper(d.dev_eui));
        if let Ok(items) = api.list(&path, 1_000_000).await {
            counts.uplinks_accepted += items.len() as u64;
        }
    }
    counts
}

/// `n` Sigfox devices send a message each per `interval` (its first transmission as a receiver
/// captured it) until `deadline`; the server's verdict says whether it was accepted.
pub async fn sigfox_devices(api: &Api, n: usize, interval: Duration, deadline: Instant, live: &Live) -> LpwanCounts {
    let mut counts = LpwanCounts {
        devices: n as u64,
        ..Default::default()
    };
    let mut devices = Vec::new();
    for _ in 0..n {
        match provision_sigfox(api).await {
            Ok(d) => devices.push(d),
            Err(e) => tracing::warn!(error = %e, "cannot provision a Sigfox device"),
        }
    }
    counts.ready = devices.len() as u64;
    let mut turns = Turns::new(devices.len(), interval, deadline);
    while let Some((i, reading)) = turns.next().await {
        let Ok([first, ..]) = devices[i].send(&reading.to_be_bytes(), false) else {
            continue;
        };
        counts.uplinks_sent += 1;
        live.lpwan_uplinks.fetch_add(1, Ordering::Relaxed);
        if let Ok(v) = api
            .post("/api/v1/sigfox/frames", &json!({ "frame_hex": hex::encode(first) }))
            .await
            && v["accepted"] == true
        {
            counts.uplinks_accepted += 1;
        }
    }
    counts
}
