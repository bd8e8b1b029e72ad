//! The demo's LoRaWAN fleet: STSAFE-A1LR devices that join (OTAA, LoRaWAN 1.0.3 and 1.1) and
//! report through a simulated gateway, and what an attacker with a radio can try — replay a
//! recorded uplink, forge one, replay a recorded join-request.
//!
//! A LoRaWAN device cannot tell whether its frames were accepted (the gateway's PUSH_ACK only
//! says the datagram arrived), so each [`ActorReport`] here says what the device did; the
//! server's own records say what became of it.

use crate::fleet::ActorReport;
use crate::lorawan::{LorawanDevice, LorawanSimError, PacketForwarder, Rx};
use std::net::SocketAddr;
use std::time::Duration;

/// A device to provision on the server before [`run`]: root keys never leave the SE and the
/// join server.
#[derive(Clone)]
pub struct Provisioned {
    pub name: &'static str,
    pub dev_eui: [u8; 8],
    pub join_eui: [u8; 8],
    pub mac_version: &'static str,
    pub app_key: [u8; 16],
    pub nwk_key: [u8; 16],
}

impl std::fmt::Debug for Provisioned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioned")
            .field("name", &self.name)
            .field("dev_eui", &hex::encode_upper(self.dev_eui))
            .field("mac_version", &self.mac_version)
            .finish_non_exhaustive()
    }
}

fn random_key() -> [u8; 16] {
    let mut k = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut k);
    k
}

/// The demo's two LoRaWAN devices, with fresh root keys.
pub fn devices() -> Vec<Provisioned> {
    let join_eui = [0x70, 0xB3, 0xD5, 0x7E, 0xD0, 0x00, 0x00, 0x01];
    vec![
        Provisioned {
            name: "lorawan-1.0.3",
            dev_eui: [0x00, 0x80, 0xE1, 0x15, 0x00, 0x0A, 0x10, 0x03],
            join_eui,
            mac_version: "1.0.3",
            app_key: random_key(),
            nwk_key: random_key(),
        },
        Provisioned {
            name: "lorawan-1.1",
            dev_eui: [0x00, 0x80, 0xE1, 0x15, 0x00, 0x0A, 0x11, 0x00],
            join_eui,
            mac_version: "1.1",
            app_key: random_key(),
            nwk_key: random_key(),
        },
    ]
}

/// The attacks, by actor name: what each tries.
pub const ATTACKS: &[(&str, &str)] = &[
    ("lorawan-replay", "re-sends a recorded uplink of lorawan-1.0.3 later"),
    (
        "lorawan-forged",
        "sends a frame as lorawan-1.0.3 without its session key (MIC forged)",
    ),
    (
        "lorawan-join-replay",
        "re-sends lorawan-1.1's recorded join-request (DevNonce reused)",
    ),
];

/// Joins every device through one simulated gateway, sends `messages` uplinks each, then runs
/// the attacks.
pub async fn run(
    server: SocketAddr,
    provisioned: &[Provisioned],
    messages: usize,
) -> Result<Vec<ActorReport>, LorawanSimError> {
    let mut gateway = PacketForwarder::connect(server, [0xAA, 0x55, 0x5A, 0x00, 0x00, 0x00, 0xDE, 0x30]).await?;
    let mut reports = Vec::new();
    let mut recorded_uplink = None;
    let mut recorded_join = None;
    let mut first_device = None;
    for p in provisioned {
        let mut device = LorawanDevice::otaa(p.dev_eui, p.join_eui, p.app_key, p.nwk_key, p.mac_version == "1.1");
        let join_request = device.join_request()?;
        gateway.push(&[(join_request.clone(), Rx::default())]).await?;
        let joined = match gateway.downlink(Duration::from_secs(10)).await {
            Ok(down) => device.accept(&down.phy),
            Err(e) => Err(e),
        };
        let dev_addr = match joined {
            Ok(addr) => addr,
            Err(e) => {
                reports.push(ActorReport {
                    name: p.name.into(),
                    attack: None,
                    admitted: false,
                    detail: format!("join failed: {e}"),
                });
                continue;
            }
        };
        for i in 0..messages {
            let frame = device.uplink(2, format!("{{\"t\":{}}}", 20 + i).as_bytes())?;
            gateway.push(&[(frame.clone(), Rx::default())]).await?;
            recorded_uplink.get_or_insert(frame);
        }
        if p.mac_version == "1.1" {
            recorded_join = Some(join_request);
        }
        reports.push(ActorReport {
            name: p.name.into(),
            attack: None,
            admitted: true,
            detail: format!(
                "joined (DevAddr {}, LoRaWAN {}), {messages} uplinks through gateway {}",
                hex::encode_upper(dev_addr),
                p.mac_version,
                hex::encode_upper(gateway.eui)
            ),
        });
        first_device.get_or_insert(device);
    }
    // Past the de-duplication window, a copy is a replay, not another gateway's reception.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (name, attack) in ATTACKS {
        let frame = match *name {
            "lorawan-replay" => recorded_uplink.clone(),
            "lorawan-forged" => first_device.as_mut().and_then(|d| {
                let mut frame = d.uplink(2, b"{\"valve\":\"open\"}").ok()?;
                let n = frame.len();
                // Without NwkSKey an attacker can only guess the MIC.
                frame[n - 4..].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
                Some(frame)
            }),
            _ => recorded_join.clone(),
        };
        let Some(frame) = frame else { continue };
        gateway.push(&[(frame, Rx::default())]).await?;
        reports.push(ActorReport {
            name: (*name).into(),
            attack: Some(attack),
            admitted: false,
            detail: "frame sent; the gateway forwarded it (gateways cannot tell)".into(),
        });
    }
    Ok(reports)
}
