//! A small fleet for the demo and for tests: good devices that onboard and report, and bad
//! actors that each try one of the attacks fleetward exists to stop.

use crate::attest::{self, Firmware};
use crate::client::{Client, ClientError, ClientTls, ConnectOptions, ServerPacket, TlsProfile};
use crate::pki::{DeviceIdentity, PkiError, ProvisioningCa};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use time::OffsetDateTime;

/// Where the server is and how to trust it.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub server_ca_der: Vec<u8>,
    pub server_name: String,
}

/// What happened to one simulated device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActorReport {
    pub name: String,
    /// `None` for a good device; the attack tried otherwise.
    pub attack: Option<&'static str>,
    /// Did the server let it in (CONNACK 0 and its messages acknowledged)?
    pub admitted: bool,
    /// What the device saw.
    pub detail: String,
}

impl Target {
    fn tls(&self, identity: &DeviceIdentity, profile: TlsProfile, bind: Option<IpAddr>) -> ClientTls {
        ClientTls {
            server_ca_der: self.server_ca_der.clone(),
            server_name: self.server_name.clone(),
            profile,
            identity: Some((identity.chain(), identity.key_der.clone())),
            bind,
        }
    }
}

async fn onboard(
    target: &Target,
    identity: &DeviceIdentity,
    client_id: &str,
    profile: TlsProfile,
    bind: Option<IpAddr>,
) -> Result<(Client, u8), ClientError> {
    let mut client = Client::connect(target.addr, &target.tls(identity, profile, bind)).await?;
    let (_, code) = client
        .mqtt_connect(&ConnectOptions {
            client_id: client_id.to_owned(),
            keep_alive_secs: 30,
            clean_session: true,
            ..Default::default()
        })
        .await?;
    Ok((client, code))
}

fn describe(e: &ClientError) -> String {
    if e.is_tls_rejection() {
        format!("refused during the TLS handshake ({e})")
    } else {
        e.to_string()
    }
}

/// Waits for a PUBLISH on `topic` (acknowledging QoS 1 ones on the way).
pub(crate) async fn wait_publish(c: &mut Client, topic: &str) -> Result<bytes::Bytes, ClientError> {
    loop {
        match c.recv(std::time::Duration::from_secs(10)).await? {
            ServerPacket::Publish {
                topic: t,
                payload,
                qos,
                pkid,
            } => {
                if qos == 1 {
                    c.puback(pkid).await?;
                }
                if t == topic {
                    return Ok(payload);
                }
            }
            ServerPacket::Disconnect => return Err(ClientError::Closed),
            _ => {}
        }
    }
}

/// Answers the challenge fleetward sends after the device subscribes to its attestation topics
/// (with a signed measurement of `firmware`); returns the verdict fleetward publishes back.
pub async fn attest_once(
    c: &mut Client,
    identity: &DeviceIdentity,
    firmware: &Firmware,
) -> Result<serde_json::Value, ClientError> {
    let base = format!("devices/{}/attestation/", identity.id);
    let challenge = wait_publish(c, &format!("{base}challenge")).await?;
    let answer = attest::answer(identity, firmware, &challenge)
        .ok_or_else(|| ClientError::Protocol("the challenge is not the attestation JSON".into()))?;
    c.publish(&format!("{base}evidence"), &answer, 1).await?;
    let verdict = wait_publish(c, &format!("{base}result")).await?;
    serde_json::from_slice(&verdict).map_err(|e| ClientError::Protocol(format!("attestation result: {e}")))
}

/// A good device: connects, subscribes to its commands and attestation topics, answers the
/// challenge with a signed measurement of `firmware`, publishes `messages` telemetry readings at
/// QoS 1 (each acknowledged only once stored), disconnects.
pub async fn good_device(
    target: &Target,
    identity: &DeviceIdentity,
    profile: TlsProfile,
    messages: usize,
    firmware: &Firmware,
) -> ActorReport {
    let name = identity.id.clone();
    let result = async {
        let (mut c, code) = onboard(target, identity, &identity.id, profile, None).await?;
        if code != 0 {
            return Ok::<_, ClientError>((false, format!("CONNACK {code}")));
        }
        let (version, suite) = c.tls_parameters();
        c.subscribe(&[
            (&format!("devices/{}/commands/#", identity.id), 1),
            (&format!("devices/{}/attestation/#", identity.id), 1),
        ])
        .await?;
        let verdict = attest_once(&mut c, identity, firmware).await?;
        if verdict["result"] != "verified" {
            return Ok((false, format!("attestation failed: {}", verdict["reason"])));
        }
        for i in 0..messages {
            let payload = format!("{{\"seq\":{i},\"temperature_c\":{:.1}}}", 20.0 + (i % 7) as f64 * 0.5);
            c.publish(&format!("devices/{}/telemetry", identity.id), payload.as_bytes(), 1)
                .await?;
        }
        c.disconnect().await?;
        Ok((
            true,
            format!("onboarded over {version} {suite}; firmware attested; {messages} readings acknowledged"),
        ))
    }
    .await;
    match result {
        Ok((admitted, detail)) => ActorReport {
            name,
            attack: None,
            admitted,
            detail,
        },
        Err(e) => ActorReport {
            name,
            attack: None,
            admitted: false,
            detail: describe(&e),
        },
    }
}

/// Runs the demo fleet: `good` devices under `ca` running `firmware`, then the bad actors.
/// Reports in order.
pub async fn run(
    target: &Target,
    ca: &ProvisioningCa,
    good: usize,
    messages: usize,
    firmware: &Firmware,
) -> Result<Vec<ActorReport>, PkiError> {
    let now = OffsetDateTime::now_utc();
    let year = time::Duration::days(365);
    let mut devices = Vec::new();
    for i in 0..good {
        let serial = [
            0x02,
            0x09,
            0xB0,
            0x84,
            0x61,
            0x59,
            0xE4,
            0x39,
            0x52,
            0x01,
            0x40 + i as u8,
        ];
        devices.push(ca.issue("eval3", &serial, now - year, now + year * 20)?);
    }
    let mut reports = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, d) in devices.iter().enumerate() {
        let (t, d, fw) = (target.clone(), d.clone(), firmware.clone());
        let profile = if i % 2 == 0 {
            TlsProfile::Stm32Tls12
        } else {
            TlsProfile::Tls13
        };
        tasks.spawn(async move { (i, good_device(&t, &d, profile, messages, &fw).await) });
    }
    let mut good_reports: Vec<(usize, ActorReport)> = tasks.join_all().await;
    good_reports.sort_by_key(|(i, _)| *i);
    reports.extend(good_reports.into_iter().map(|(_, r)| r));

    // Bad actors.
    let foreign = ProvisioningCa::generate("Counterfeit Provisioning CA", now)?;
    let counterfeit = foreign.issue("eval3", &[0x02, 0x09, 0xFF, 0x00, 0x00, 0x01], now - year, now + year)?;
    reports.push(
        attack(
            target,
            "counterfeit",
            "certificate from an unregistered CA",
            &counterfeit,
            &counterfeit.id,
        )
        .await,
    );

    let expired = ca.issue(
        "eval3",
        &[0x02, 0x09, 0xEE, 0x00, 0x00, 0x02],
        now - year * 3,
        now - year,
    )?;
    reports.push(attack(target, "expired", "expired device certificate", &expired, &expired.id).await);

    let impostor = ca.issue("eval3", &[0x02, 0x09, 0xDD, 0x00, 0x00, 0x03], now - year, now + year)?;
    let other_id = devices
        .first()
        .map(|d| d.id.clone())
        .unwrap_or_else(|| "someone-else".into());
    reports.push(
        attack(
            target,
            "impostor",
            "MQTT client id of another device",
            &impostor,
            &other_id,
        )
        .await,
    );

    let trespasser = ca.issue("eval3", &[0x02, 0x09, 0xCC, 0x00, 0x00, 0x04], now - year, now + year)?;
    reports.push(trespass(target, &trespasser, &other_id).await);

    if let Some(original) = devices.first() {
        reports.push(clone(target, original).await);
    }

    let tampered = ca.issue("eval3", &[0x02, 0x09, 0xBB, 0x00, 0x00, 0x05], now - year, now + year)?;
    reports.push(tampered_firmware(target, &tampered, &firmware.tampered()).await);
    Ok(reports)
}

/// A genuine device (valid certificate, real key) running modified firmware: it attests
/// honestly, fails appraisal, is quarantined, and its telemetry is refused.
async fn tampered_firmware(target: &Target, identity: &DeviceIdentity, firmware: &Firmware) -> ActorReport {
    let outcome = async {
        let (mut c, code) = onboard(target, identity, &identity.id, TlsProfile::Stm32Tls12, None).await?;
        if code != 0 {
            return Ok::<_, ClientError>((false, format!("CONNACK {code}")));
        }
        c.subscribe(&[(&format!("devices/{}/attestation/#", identity.id), 1)])
            .await?;
        let verdict = attest_once(&mut c, identity, firmware).await?;
        let summary = format!(
            "attestation {} ({}), device {}",
            verdict["result"].as_str().unwrap_or("?"),
            verdict["reason"].as_str().unwrap_or("-"),
            verdict["status"].as_str().unwrap_or("?"),
        );
        match c
            .publish(&format!("devices/{}/telemetry", identity.id), b"{\"t\":1}", 1)
            .await
        {
            Ok(()) => Ok((true, format!("{summary}; telemetry acknowledged!"))),
            Err(_) => Ok((
                verdict["result"] == "verified",
                format!("{summary}; telemetry refused (disconnected)"),
            )),
        }
    }
    .await;
    let (admitted, detail) = outcome.unwrap_or_else(|e| (false, describe(&e)));
    ActorReport {
        name: "tampered-firmware".into(),
        attack: Some("genuine device running a modified firmware image"),
        admitted,
        detail,
    }
}

async fn attack(
    target: &Target,
    name: &str,
    what: &'static str,
    identity: &DeviceIdentity,
    client_id: &str,
) -> ActorReport {
    let (admitted, detail) = match onboard(target, identity, client_id, TlsProfile::Stm32Tls12, None).await {
        Ok((c, 0)) => {
            let _ = c.disconnect().await;
            (true, "CONNACK 0 (accepted!)".to_owned())
        }
        Ok((_, code)) => (false, format!("CONNACK {code} ({})", connack_meaning(code))),
        Err(e) => (false, describe(&e)),
    };
    ActorReport {
        name: name.to_owned(),
        attack: Some(what),
        admitted,
        detail,
    }
}

async fn trespass(target: &Target, identity: &DeviceIdentity, victim: &str) -> ActorReport {
    let outcome = async {
        let (mut c, code) = onboard(target, identity, &identity.id, TlsProfile::Tls13, None).await?;
        if code != 0 {
            return Ok::<_, ClientError>((false, format!("CONNACK {code}")));
        }
        let codes = c.subscribe(&[(&format!("devices/{victim}/commands/#"), 1)]).await?;
        let sub = if codes.first() == Some(&0x80) {
            "subscription refused (SUBACK 0x80)"
        } else {
            "subscription granted!"
        };
        match c
            .publish(&format!("devices/{victim}/telemetry"), b"{\"spoofed\":true}", 1)
            .await
        {
            Ok(()) => Ok((true, format!("{sub}; spoofed publish acknowledged!"))),
            Err(_) => Ok((false, format!("{sub}; disconnected at the spoofed publish"))),
        }
    }
    .await;
    let (admitted, detail) = outcome.unwrap_or_else(|e| (false, describe(&e)));
    ActorReport {
        name: "trespasser".into(),
        attack: Some("publish and subscribe under another device's topics"),
        admitted,
        detail,
    }
}

async fn clone(target: &Target, original: &DeviceIdentity) -> ActorReport {
    let outcome = async {
        let (genuine, code) = onboard(
            target,
            original,
            &original.id,
            TlsProfile::Stm32Tls12,
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        )
        .await?;
        if code != 0 {
            return Ok::<_, ClientError>((false, format!("the genuine device got CONNACK {code}")));
        }
        let elsewhere = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let (mut cloned, code) = onboard(target, original, &original.id, TlsProfile::Tls13, Some(elsewhere)).await?;
        drop(genuine);
        if code != 0 {
            return Ok((
                false,
                format!("second copy refused: CONNACK {code} ({})", connack_meaning(code)),
            ));
        }
        // Under the default policy the copy gets in, but the server flags the certificate.
        let _ = cloned.ping().await;
        let _ = cloned.disconnect().await;
        Ok((
            true,
            "second copy connected from 127.0.0.2 while the genuine device was online".to_owned(),
        ))
    }
    .await;
    let (admitted, detail) = outcome.unwrap_or_else(|e| (false, describe(&e)));
    ActorReport {
        name: "clone".into(),
        attack: Some("the same certificate from two places at once"),
        admitted,
        detail,
    }
}

/// What a CONNACK return code means (MQTT 3.1.1).
pub fn connack_meaning(code: u8) -> &'static str {
    match code {
        0 => "accepted",
        1 => "unacceptable protocol version",
        2 => "client identifier not valid",
        3 => "server unavailable",
        4 => "bad user name or password",
        5 => "not authorized",
        _ => "unknown",
    }
}
