//! `sim-devices attack`: the security regression suite. Each scenario tries one thing fleetward
//! exists to stop, states what fleetward must do, and checks that it did — from the attacker's
//! side (what came back on the wire) and, when the operator API is given, from the server's own
//! record (the event naming the failed check).
//!
//! Attackers use their own certificates where the attack allows it (issued by the PKI
//! directory's CA when its key is there), so running the suite does not quarantine or flag the
//! fleet's devices; the only fleet device named is the victim whose id is borrowed.

use crate::api::Api;
use crate::attest::{self, Firmware};
use crate::client::{Client, ClientError, ClientTls, ConnectOptions, TlsProfile};
use crate::fleet::{connack_meaning, wait_publish};
use crate::lorawan::{PacketForwarder, Rx};
use crate::lpwan;
use crate::pki::{DeviceIdentity, ProvisioningCa};
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use time::OffsetDateTime;

/// What an attack needs beyond the MQTT endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Needs {
    Mqtt,
    /// The PKI's issuing CA key (to make an expired certificate).
    IssuerKey,
    /// The operator API (to provision a Sigfox device).
    Api,
    /// The operator API and the packet-forwarder port.
    Lorawan,
}

/// One scenario.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub name: &'static str,
    /// What the attacker tries.
    pub attempt: &'static str,
    /// What fleetward must do.
    pub expect: &'static str,
    /// The event fleetward must record: kind and the failed check (`detail.check`; empty: any).
    pub event: (&'static str, &'static str),
    needs: Needs,
}

/// Every scenario, in the order `--scenario all` runs them.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "foreign-ca",
        attempt: "connect with a certificate from a CA fleetward does not know (a counterfeit factory)",
        expect: "refuse the TLS handshake",
        event: ("chain.rejected", "unknown_issuer"),
        needs: Needs::Mqtt,
    },
    Scenario {
        name: "expired-cert",
        attempt: "connect with a certificate of the registered CA that has expired",
        expect: "refuse the TLS handshake",
        event: ("chain.rejected", "expired"),
        needs: Needs::IssuerKey,
    },
    Scenario {
        name: "wrong-client-id",
        attempt: "connect with a valid certificate but another device's MQTT client id",
        expect: "refuse the MQTT session (CONNACK 2)",
        event: ("device.refused", "client_id_mismatch"),
        needs: Needs::Mqtt,
    },
    Scenario {
        name: "topic-trespass",
        attempt: "subscribe to another device's commands and publish on its telemetry topic",
        expect: "refuse the subscription (SUBACK 0x80) and drop the connection on the publish, unacknowledged",
        event: ("device.acl_violation", ""),
        needs: Needs::Mqtt,
    },
    Scenario {
        name: "cloned-cert",
        attempt: "use one device certificate and key from two places at once (127.0.0.1 and 127.0.0.2)",
        expect: "flag the clone, and never serve both copies at once",
        event: ("device.clone_suspected", ""),
        needs: Needs::Mqtt,
    },
    Scenario {
        name: "stale-attestation",
        attempt: "answer a new attestation challenge with the evidence recorded for an earlier one",
        expect: "fail the attestation (the nonce was already used)",
        event: ("attestation.failed", "replayed_nonce"),
        needs: Needs::Mqtt,
    },
    Scenario {
        name: "forged-attestation",
        attempt: "answer the attestation challenge with evidence signed by a key that is not the device's",
        expect: "fail the attestation (bad signature)",
        event: ("attestation.failed", "bad_signature"),
        needs: Needs::Mqtt,
    },
    Scenario {
        name: "lorawan-replay",
        attempt: "re-send a recorded LoRaWAN uplink through a gateway, later",
        expect: "drop the frame (frame counter replay), storing nothing",
        event: ("lorawan.uplink_rejected", "fcnt_replay"),
        needs: Needs::Lorawan,
    },
    Scenario {
        name: "lorawan-bad-mic",
        attempt: "send a LoRaWAN uplink as a joined device without its session key (guessed MIC)",
        expect: "drop the frame (MIC mismatch), storing nothing",
        event: ("lorawan.uplink_rejected", "mic_mismatch"),
        needs: Needs::Lorawan,
    },
    Scenario {
        name: "lorawan-devnonce-reuse",
        attempt: "re-send a device's recorded join-request (its DevNonce again)",
        expect: "refuse the join: no join-accept",
        event: ("lorawan.join_refused", "dev_nonce_reused"),
        needs: Needs::Lorawan,
    },
    Scenario {
        name: "sigfox-replay",
        attempt: "re-send a recorded Sigfox frame after the device has moved on (an old sequence number)",
        expect: "refuse the frame (sequence replay)",
        event: ("sigfox.frame_rejected", "seq_replay"),
        needs: Needs::Api,
    },
];

/// Where the attacks go and with what.
#[derive(Clone, Debug)]
pub struct AttackTarget {
    pub gateway: SocketAddr,
    pub server_name: String,
    pub server_ca_der: Vec<u8>,
    /// The fleet's devices (the victims whose ids are borrowed).
    pub devices: Vec<DeviceIdentity>,
    /// The PKI's issuing CA, when its key is at hand.
    pub issuer: Option<std::sync::Arc<ProvisioningCa>>,
    pub api: Option<Api>,
    pub lorawan_udp: Option<SocketAddr>,
    pub firmware: Firmware,
}

/// How a scenario ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// fleetward did what it must.
    Stopped,
    /// The attack got through (or the server kept no record of it).
    NotStopped,
    /// Not run: what it needs was not given.
    Skipped,
}

/// A scenario's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub scenario: &'static str,
    pub attempt: &'static str,
    pub expect: &'static str,
    pub verdict: Verdict,
    /// What the attacker saw.
    pub observed: String,
    /// The server's record (`kind: reason`), when the API was given.
    pub server_event: Option<String>,
}

/// Looks a scenario up by name.
pub fn scenario(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

/// Runs `scenarios` one after the other.
pub async fn run(target: &AttackTarget, scenarios: &[&'static Scenario]) -> Vec<Outcome> {
    let mut out = Vec::new();
    for s in scenarios {
        out.push(run_one(target, s).await);
    }
    out
}

/// What the attacker saw: `Ok(true)` refused as expected, `Ok(false)` let through.
type Seen = Result<(bool, String), String>;

async fn run_one(target: &AttackTarget, s: &'static Scenario) -> Outcome {
    let skipped = |why: &str| Outcome {
        scenario: s.name,
        attempt: s.attempt,
        expect: s.expect,
        verdict: Verdict::Skipped,
        observed: why.to_owned(),
        server_event: None,
    };
    match s.needs {
        Needs::IssuerKey if target.issuer.is_none() => {
            return skipped("needs the PKI's CA key (DIR/ca.key or DIR/intermediate.key)");
        }
        Needs::Api if target.api.is_none() => return skipped("needs the operator API (--api and --token)"),
        Needs::Lorawan if target.api.is_none() || target.lorawan_udp.is_none() => {
            return skipped("needs the operator API (--api, --token) and the packet-forwarder port (--lorawan)");
        }
        _ => {}
    }
    let since = OffsetDateTime::now_utc().unix_timestamp() - 1;
    let seen: Result<(Seen, Option<String>), String> = async {
        Ok(match s.name {
            "foreign-ca" => (foreign_ca(target).await, None),
            "expired-cert" => (expired(target).await, None),
            "wrong-client-id" => {
                let attacker = attacker(target, 0x01)?;
                (wrong_client_id(target, &attacker).await, Some(attacker.id))
            }
            "topic-trespass" => {
                let attacker = attacker(target, 0x02)?;
                (trespass(target, &attacker).await, Some(attacker.id))
            }
            "cloned-cert" => {
                let attacker = attacker(target, 0x03)?;
                (cloned(target, &attacker).await, Some(attacker.id))
            }
            "stale-attestation" | "forged-attestation" => {
                let attacker = attacker(target, if s.name == "stale-attestation" { 0x04 } else { 0x05 })?;
                (
                    attestation(target, &attacker, s.name == "forged-attestation").await,
                    Some(attacker.id),
                )
            }
            "lorawan-replay" | "lorawan-bad-mic" | "lorawan-devnonce-reuse" => lorawan(target, s.name).await,
            "sigfox-replay" => sigfox_replay(target).await,
            other => (Err(format!("no scenario `{other}`")), None),
        })
    }
    .await;
    let (seen, device) = match seen {
        Ok(v) => v,
        Err(e) => (Err(e), None),
    };
    let (refused, observed) = match seen {
        Ok(v) => v,
        Err(e) => (false, format!("the scenario could not run: {e}")),
    };
    // The server's own record.
    let (recorded, server_event) = match &target.api {
        Some(api) if refused => match server_record(api, s, since, device.as_deref()).await {
            Ok(Some(e)) => (true, Some(e)),
            Ok(None) => (
                false,
                Some(format!("no `{}` event{} recorded", s.event.0, check_text(s))),
            ),
            Err(e) => (false, Some(format!("cannot read the events: {e}"))),
        },
        _ => (true, None),
    };
    Outcome {
        scenario: s.name,
        attempt: s.attempt,
        expect: s.expect,
        verdict: if refused && recorded {
            Verdict::Stopped
        } else {
            Verdict::NotStopped
        },
        observed,
        server_event,
    }
}

fn check_text(s: &Scenario) -> String {
    if s.event.1.is_empty() {
        String::new()
    } else {
        format!(" with check `{}`", s.event.1)
    }
}

/// The event this scenario must have left (polled for up to 3 s: some are written after the
/// answer).
async fn server_record(
    api: &Api,
    s: &Scenario,
    since: i64,
    device: Option<&str>,
) -> Result<Option<String>, crate::api::ApiError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let events = api.events(s.event.0, since).await?;
        let found = events.iter().find(|e| {
            let check_ok = s.event.1.is_empty()
                || e["detail"]["check"].as_str() == Some(s.event.1)
                || e["reason"].as_str().is_some_and(|r| r.contains(s.event.1));
            let device_ok = device.is_none_or(|d| {
                e["device_id"].as_str().is_some_and(|x| x.eq_ignore_ascii_case(d))
                    || e["detail"]
                        .to_string()
                        .to_ascii_lowercase()
                        .contains(&d.to_ascii_lowercase())
            });
            check_ok && device_ok
        });
        if let Some(e) = found {
            return Ok(Some(format!(
                "{}: {}",
                e["kind"].as_str().unwrap_or_default(),
                e["reason"].as_str().unwrap_or_default()
            )));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An attacker's own device identity: issued by the PKI's CA when its key is at hand (so the
/// fleet's devices are left alone), else the last device of the fleet.
fn attacker(target: &AttackTarget, n: u8) -> Result<DeviceIdentity, String> {
    if let Some(ca) = &target.issuer {
        let now = OffsetDateTime::now_utc();
        let mut serial = [0u8; 11];
        let _ = aws_lc_rs::rand::fill(&mut serial);
        serial[0] = 0x02;
        serial[1] = 0x09;
        serial[10] = n;
        return ca
            .issue(
                "eval3",
                &serial,
                now - time::Duration::days(1),
                now + time::Duration::days(365),
            )
            .map_err(|e| e.to_string());
    }
    target
        .devices
        .last()
        .cloned()
        .ok_or_else(|| "the PKI directory has no devices".to_owned())
}

/// The device whose id an attacker borrows.
fn victim(target: &AttackTarget) -> String {
    target
        .devices
        .first()
        .map(|d| d.id.clone())
        .unwrap_or_else(|| "eval3-0209B0846159E43952010F".into())
}

fn tls(target: &AttackTarget, identity: &DeviceIdentity, profile: TlsProfile, bind: Option<IpAddr>) -> ClientTls {
    ClientTls {
        server_ca_der: target.server_ca_der.clone(),
        server_name: target.server_name.clone(),
        profile,
        identity: Some((identity.chain(), identity.key_der.clone())),
        bind,
    }
}

fn options(client_id: &str) -> ConnectOptions {
    ConnectOptions {
        client_id: client_id.to_owned(),
        keep_alive_secs: 30,
        clean_session: true,
        ..Default::default()
    }
}

/// Connects and sends CONNECT; `Ok(code)` with the client, or the error.
async fn session(
    target: &AttackTarget,
    identity: &DeviceIdentity,
    client_id: &str,
    profile: TlsProfile,
    bind: Option<IpAddr>,
) -> Result<(Client, u8), ClientError> {
    let mut c = Client::connect(target.gateway, &tls(target, identity, profile, bind)).await?;
    let (_, code) = c.mqtt_connect(&options(client_id)).await?;
    Ok((c, code))
}

/// A certificate attack: refused if the handshake or the connection fails before CONNACK 0.
async fn refused_at_handshake(target: &AttackTarget, identity: &DeviceIdentity) -> Seen {
    match session(target, identity, &identity.id, TlsProfile::Stm32Tls12, None).await {
        Ok((_, 0)) => Ok((false, "handshake completed and CONNACK 0: the device is in".into())),
        Ok((_, code)) => Ok((true, format!("CONNACK {code} ({})", connack_meaning(code)))),
        Err(e) if e.is_tls_rejection() || matches!(e, ClientError::Closed) => {
            Ok((true, format!("TLS handshake refused ({e})")))
        }
        Err(e) => Err(e.to_string()),
    }
}

async fn foreign_ca(target: &AttackTarget) -> Seen {
    let now = OffsetDateTime::now_utc();
    let foreign = ProvisioningCa::generate("Counterfeit Provisioning CA", now).map_err(|e| e.to_string())?;
    let mut serial = [0u8; 11];
    let _ = aws_lc_rs::rand::fill(&mut serial);
    serial[0] = 0x02;
    let d = foreign
        .issue(
            "eval3",
            &serial,
            now - time::Duration::days(1),
            now + time::Duration::days(365),
        )
        .map_err(|e| e.to_string())?;
    refused_at_handshake(target, &d).await
}

async fn expired(target: &AttackTarget) -> Seen {
    let ca = target.issuer.as_ref().ok_or("no issuer key")?;
    let now = OffsetDateTime::now_utc();
    let mut serial = [0u8; 11];
    let _ = aws_lc_rs::rand::fill(&mut serial);
    serial[0] = 0x02;
    let d = ca
        .issue(
            "eval3",
            &serial,
            now - time::Duration::days(730),
            now - time::Duration::days(1),
        )
        .map_err(|e| e.to_string())?;
    refused_at_handshake(target, &d).await
}

async fn wrong_client_id(target: &AttackTarget, attacker: &DeviceIdentity) -> Seen {
    let victim = victim(target);
    match session(target, attacker, &victim, TlsProfile::Tls13, None).await {
        Ok((_, 0)) => Ok((false, format!("CONNACK 0 as `{victim}`: the impostor is in"))),
        Ok((_, code)) => Ok((
            code == 2,
            format!("CONNACK {code} ({}) when claiming `{victim}`", connack_meaning(code)),
        )),
        Err(e) => Ok((true, format!("refused before CONNACK ({e})"))),
    }
}

async fn trespass(target: &AttackTarget, attacker: &DeviceIdentity) -> Seen {
    let victim = victim(target);
    let (mut c, code) = session(target, attacker, &attacker.id, TlsProfile::Stm32Tls12, None)
        .await
        .map_err(|e| format!("the attacker's own device could not connect: {e}"))?;
    if code != 0 {
        return Err(format!("the attacker's own device got CONNACK {code}"));
    }
    let codes = c
        .subscribe(&[(&format!("devices/{victim}/commands/#"), 1)])
        .await
        .map_err(|e| e.to_string())?;
    let sub_refused = codes.first() == Some(&0x80);
    let published = c
        .publish(&format!("devices/{victim}/telemetry"), b"{\"spoofed\":true}", 1)
        .await;
    let pub_refused = published.is_err();
    Ok((
        sub_refused && pub_refused,
        format!(
            "SUBACK {:#04x} for `devices/{victim}/commands/#`; publish on its telemetry: {}",
            codes.first().copied().unwrap_or(0xFF),
            match published {
                Ok(()) => "ACKNOWLEDGED".to_owned(),
                Err(e) => format!("not acknowledged, {e}"),
            }
        ),
    ))
}

async fn cloned(target: &AttackTarget, attacker: &DeviceIdentity) -> Seen {
    let local = target.gateway.ip().is_loopback();
    let here = local.then_some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let there = local.then_some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    let (mut first, code) = session(target, attacker, &attacker.id, TlsProfile::Stm32Tls12, here)
        .await
        .map_err(|e| format!("the genuine copy could not connect: {e}"))?;
    if code != 0 {
        return Err(format!("the genuine copy got CONNACK {code}"));
    }
    let topic = format!("devices/{}/telemetry", attacker.id);
    let second = session(target, attacker, &attacker.id, TlsProfile::Tls13, there).await;
    let mut second = match second {
        Ok((c, 0)) => Some(c),
        Ok((_, code)) => {
            return Ok((
                true,
                format!("the second copy got CONNACK {code} ({})", connack_meaning(code)),
            ));
        }
        Err(e) => return Ok((true, format!("the second copy was refused ({e})"))),
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let first_ok = first.publish(&topic, b"{\"copy\":1}", 1).await.is_ok();
    let second_ok = match second.as_mut() {
        Some(c) => c.publish(&topic, b"{\"copy\":2}", 1).await.is_ok(),
        None => false,
    };
    let served = usize::from(first_ok) + usize::from(second_ok);
    Ok((
        served <= 1,
        format!(
            "both copies connected; telemetry acknowledged on {served} of 2 (first copy {}, second copy {})",
            if first_ok { "served" } else { "cut off" },
            if second_ok { "served" } else { "cut off" }
        ),
    ))
}

/// Connects, subscribes to the attestation topics, returns the challenge's payload.
async fn challenged(target: &AttackTarget, attacker: &DeviceIdentity) -> Result<(Client, bytes::Bytes), String> {
    let (mut c, code) = session(target, attacker, &attacker.id, TlsProfile::Tls13, None)
        .await
        .map_err(|e| format!("the device could not connect: {e}"))?;
    if code != 0 {
        return Err(format!("the device got CONNACK {code}"));
    }
    let base = format!("devices/{}/attestation/", attacker.id);
    c.subscribe(&[(&format!("{base}#"), 1)])
        .await
        .map_err(|e| e.to_string())?;
    let challenge = wait_publish(&mut c, &format!("{base}challenge"))
        .await
        .map_err(|e| format!("no attestation challenge came: {e}"))?;
    Ok((c, challenge))
}

async fn attestation(target: &AttackTarget, attacker: &DeviceIdentity, forged: bool) -> Seen {
    let base = format!("devices/{}/attestation/", attacker.id);
    let (mut c, challenge) = challenged(target, attacker).await?;
    let evidence = if forged {
        // The right claims and nonce, signed by a key that is not the secure element's.
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        let impostor = DeviceIdentity {
            key_der: other.serialize_der(),
            ..attacker.clone()
        };
        attest::answer(&impostor, &target.firmware, &challenge).ok_or("the challenge is not attestation JSON")?
    } else {
        // Record an honest answer to this challenge, then present it for the next one.
        let recorded =
            attest::answer(attacker, &target.firmware, &challenge).ok_or("the challenge is not attestation JSON")?;
        c.publish(&format!("{base}evidence"), &recorded, 1)
            .await
            .map_err(|e| e.to_string())?;
        let _ = wait_publish(&mut c, &format!("{base}result"))
            .await
            .map_err(|e| format!("no verdict for the honest answer: {e}"))?;
        let _ = c.disconnect().await;
        let (again, _) = challenged(target, attacker).await?;
        c = again;
        recorded
    };
    c.publish(&format!("{base}evidence"), &evidence, 1)
        .await
        .map_err(|e| e.to_string())?;
    let verdict = wait_publish(&mut c, &format!("{base}result"))
        .await
        .map_err(|e| format!("no verdict: {e}"))?;
    let v: serde_json::Value = serde_json::from_slice(&verdict).unwrap_or_default();
    let result = v["result"].as_str().unwrap_or("?");
    let _ = c.disconnect().await;
    Ok((
        result != "verified",
        format!(
            "attestation result `{result}` ({})",
            v["reason"].as_str().unwrap_or("no reason given")
        ),
    ))
}

/// The three radio-side attacks on a freshly provisioned, joined OTAA device.
async fn lorawan(target: &AttackTarget, name: &str) -> (Seen, Option<String>) {
    let (Some(api), Some(udp)) = (&target.api, target.lorawan_udp) else {
        return (Err("no API or packet-forwarder address".into()), None);
    };
    let result = async {
        let mut device = lpwan::provision_lorawan(api).await.map_err(|e| e.to_string())?;
        let dev_eui = hex::encode_upper(device.dev_eui);
        let mut eui = [0u8; 8];
        let _ = aws_lc_rs::rand::fill(&mut eui);
        let mut gw = PacketForwarder::connect(udp, eui).await.map_err(|e| e.to_string())?;
        let join = device.join_request().map_err(|e| e.to_string())?;
        gw.push(&[(join.clone(), Rx::default())])
            .await
            .map_err(|e| e.to_string())?;
        let accept = gw
            .downlink(Duration::from_secs(10))
            .await
            .map_err(|e| format!("the genuine join got no join-accept: {e}"))?;
        device.accept(&accept.phy).map_err(|e| e.to_string())?;
        let recorded = device.uplink(2, b"{\"t\":21}").map_err(|e| e.to_string())?;
        gw.push(&[(recorded.clone(), Rx::default())])
            .await
            .map_err(|e| e.to_string())?;
        // Past the de-duplication window a copy is a replay, not another gateway's reception.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let path = format!("/api/v1/lorawan/devices/{dev_eui}/uplinks");
        let before = api.list(&path, 1000).await.map_err(|e| e.to_string())?.len();
        let seen = match name {
            "lorawan-devnonce-reuse" => {
                gw.push(&[(join, Rx::default())]).await.map_err(|e| e.to_string())?;
                match gw.downlink(Duration::from_millis(1500)).await {
                    Ok(_) => (
                        false,
                        "the replayed join-request was ANSWERED with a join-accept".to_owned(),
                    ),
                    Err(_) => (true, "the replayed join-request got no join-accept".to_owned()),
                }
            }
            _ => {
                let frame = if name == "lorawan-replay" {
                    recorded
                } else {
                    let mut f = device.uplink(2, b"{\"valve\":\"open\"}").map_err(|e| e.to_string())?;
                    let n = f.len();
                    f[n - 4..].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
                    f
                };
                gw.push(&[(frame, Rx::default())]).await.map_err(|e| e.to_string())?;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let after = api.list(&path, 1000).await.map_err(|e| e.to_string())?.len();
                (
                    after == before,
                    format!(
                        "the gateway forwarded the frame; the server stored {} uplinks for it",
                        after - before.min(after)
                    ),
                )
            }
        };
        Ok::<_, String>((seen, dev_eui))
    }
    .await;
    match result {
        Ok((seen, dev_eui)) => (Ok(seen), Some(dev_eui)),
        Err(e) => (Err(e), None),
    }
}

async fn sigfox_replay(target: &AttackTarget) -> (Seen, Option<String>) {
    let Some(api) = &target.api else {
        return (Err("no API".into()), None);
    };
    let result = async {
        let mut device = lpwan::provision_sigfox(api).await.map_err(|e| e.to_string())?;
        let id = device.device_id_hex();
        let send = |frame: Vec<u8>| async move {
            api.post(
                "/api/v1/sigfox/frames",
                &serde_json::json!({ "frame_hex": hex::encode(frame) }),
            )
            .await
            .map_err(|e| e.to_string())
        };
        let [recorded, ..] = device.send(b"\x01\x02", false).map_err(|e| e.to_string())?;
        let first = send(recorded.clone()).await?;
        if first["accepted"] != true {
            return Err(format!("the genuine message was refused: {first}"));
        }
        let [next, ..] = device.send(b"\x01\x03", false).map_err(|e| e.to_string())?;
        send(next).await?;
        let replay = send(recorded).await?;
        let accepted = replay["accepted"] == true;
        Ok((
            (
                !accepted,
                if accepted {
                    "the replayed frame was ACCEPTED".to_owned()
                } else {
                    format!(
                        "refused: {} ({})",
                        replay["check"].as_str().unwrap_or("?"),
                        replay["reason"].as_str().unwrap_or("")
                    )
                },
            ),
            id,
        ))
    }
    .await;
    match result {
        Ok((seen, id)) => (Ok(seen), Some(id)),
        Err(e) => (Err(e), None),
    }
}

/// The outcomes as text, one line per scenario, then the tally.
pub fn to_text(outcomes: &[Outcome]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for o in outcomes {
        let mark = match o.verdict {
            Verdict::Stopped => "STOPPED    ",
            Verdict::NotStopped => "NOT STOPPED",
            Verdict::Skipped => "skipped    ",
        };
        let _ = writeln!(s, "{mark}  {:<24} {}", o.scenario, o.attempt);
        let _ = writeln!(s, "{:13}{:<24} must: {}", "", "", o.expect);
        let _ = writeln!(s, "{:13}{:<24} saw:  {}", "", "", o.observed);
        if let Some(e) = &o.server_event {
            let _ = writeln!(s, "{:13}{:<24} server: {e}", "", "");
        }
    }
    let run: Vec<_> = outcomes.iter().filter(|o| o.verdict != Verdict::Skipped).collect();
    let stopped = run.iter().filter(|o| o.verdict == Verdict::Stopped).count();
    let skipped = outcomes.len() - run.len();
    let _ = write!(s, "{stopped} of {} attacks stopped", run.len());
    if skipped > 0 {
        let _ = write!(s, " ({skipped} skipped: see above for what they need)");
    }
    s.push('\n');
    s
}
