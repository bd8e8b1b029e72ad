//! `fleetward demo`: a newcomer's first run. A fresh server on the embedded defaults, a
//! generated demo provisioning CA registered, then a simulated fleet (`sim-devices`) onboards
//! over real mutual TLS and MQTT — good devices and bad actors — and a summary shows who got in
//! and, from the server's own audit trail, why the others did not.

use crate::config::Config;
use crate::server::{self, Running};
use anyhow::{Context, Result};
use registry::{Event, EventFilter};
use sim_devices::attest::Firmware;
use sim_devices::fleet::{self, ActorReport, Target};
use sim_devices::pki::ProvisioningCa;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub data_dir: PathBuf,
    pub good_devices: usize,
    pub messages: usize,
    pub mqtt_listen: String,
    pub http_listen: String,
    pub lorawan_udp_listen: String,
}

/// What the demo did. The server keeps running until `running.shutdown()`.
#[derive(Debug)]
pub struct DemoReport {
    pub running: Running,
    pub actors: Vec<ActorReport>,
    /// Every good device got in, every bad actor was stopped or flagged.
    pub as_expected: bool,
}

/// The server-side reason recorded for a refused actor, from the event log.
fn server_view(events: &[Event], actor: &ActorReport) -> Option<String> {
    let wanted = match actor.name.as_str() {
        "counterfeit" => ("chain.rejected", "unknown_issuer"),
        "expired" => ("chain.rejected", "expired"),
        "impostor" => ("device.refused", "client_id_mismatch"),
        "trespasser" => ("device.acl_violation", ""),
        "clone" => ("device.clone_suspected", ""),
        "tampered-firmware" => ("attestation.failed", "firmware_unknown"),
        "lorawan-replay" => ("lorawan.uplink_rejected", "fcnt_replay"),
        "lorawan-forged" => ("lorawan.uplink_rejected", "mic_mismatch"),
        "lorawan-join-replay" => ("lorawan.join_refused", "dev_nonce_reused"),
        "sigfox-replay" => ("sigfox.callback_rejected", "seq_replay"),
        "sigfox-forged" => ("sigfox.frame_rejected", "ul_auth_mismatch"),
        _ => return None,
    };
    events
        .iter()
        .find(|e| {
            e.kind == wanted.0
                && (wanted.1.is_empty()
                    || e.detail.as_ref().and_then(|d| d.get("check")).and_then(|c| c.as_str()) == Some(wanted.1))
        })
        .map(|e| format!("{}: {}", e.kind, e.reason.clone().unwrap_or_default()))
}

/// Provisions the demo's LoRaWAN devices (root keys sealed in the registry), then runs them and
/// the radio-side attacks through a simulated gateway on the packet-forwarder port.
async fn lorawan_actors(running: &Running, messages: usize, out: &mut dyn Write) -> Result<Vec<ActorReport>> {
    let devices = sim_devices::lorawan_fleet::devices();
    for d in &devices {
        running
            .registry
            .insert_lorawan_device(
                &registry::NewLorawanDevice {
                    dev_eui: &hex::encode(d.dev_eui),
                    join_eui: &hex::encode(d.join_eui),
                    mac_version: d.mac_version,
                    app_key: &d.app_key,
                    nwk_key: (d.mac_version == "1.1").then_some(&d.nwk_key),
                },
                crate::clock::now_ms(),
            )
            .await
            .context("cannot provision the demo LoRaWAN devices")?;
    }
    writeln!(
        out,
        "5. {} LoRaWAN devices (STSAFE-A1LR: root keys in the SE and the join server) join through a\n   simulated gateway on udp://{} and report; then {} radio attacks…\n",
        devices.len(),
        running.lorawan_udp_addr,
        sim_devices::lorawan_fleet::ATTACKS.len()
    )?;
    out.flush()?;
    sim_devices::lorawan_fleet::run(running.lorawan_udp_addr, &devices, messages)
        .await
        .context("the simulated LoRaWAN gateway failed")
}

/// The demo's Sigfox devices (STSAFE-A1SX): one whose raw frames are verified here with its NAK,
/// one reporting through the Sigfox cloud's callbacks; then a replayed callback and a forged
/// frame. Everything goes through the server's HTTP endpoints, as a receiver and the Sigfox cloud
/// would send it.
async fn sigfox_actors(running: &Running, messages: usize, out: &mut dyn Write) -> Result<Vec<ActorReport>> {
    use sim_devices::sigfox::SigfoxDevice;
    writeln!(
        out,
        "6. 2 Sigfox devices (STSAFE-A1SX: device id and NAK in the SE) report — raw frames verified\n   with the NAK, and callbacks from the Sigfox cloud; then 2 Sigfox attacks…\n"
    )?;
    let base = format!("http://{}", running.http_addr);
    let token = running
        .registry
        .create_token(
            registry::Role::Operator,
            Some("demo Sigfox receiver"),
            "demo",
            crate::clock::now_ms(),
        )
        .await?;
    let secret_text = std::fs::read_to_string(&running.sigfox.secret_file)?;
    let secret = secret_text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .context("the Sigfox callback secret file is empty")?
        .to_owned();
    // Plain HTTP on loopback; reqwest's TLS stack still wants a process-wide provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let http = reqwest::Client::new();
    let frame = |hex: String| {
        http.post(format!("{base}/api/v1/sigfox/frames"))
            .bearer_auth(token.secret.as_str())
            .json(&serde_json::json!({ "frame_hex": hex }))
            .send()
    };
    let callback = |body: &serde_json::Value| {
        http.post(format!("{base}/sigfox/callback"))
            .header(running.sigfox.header(), secret.as_str())
            .json(body)
            .send()
    };
    let nak = [0x5Du8; 16];
    running
        .registry
        .insert_sigfox_device(&format!("{:08X}", 0x00DE_0001u32), Some(&nak), crate::clock::now_ms())
        .await
        .context("cannot provision the demo Sigfox device")?;
    let mut reports = Vec::new();

    // Raw frames: every message on air three times; the first copy counts.
    let mut device = SigfoxDevice::new(0x00DE_0001, nak, 0xFFE);
    let mut accepted = 0;
    for m in 0..messages {
        let copies = device.send(format!("t={}", 20 + m).as_bytes(), false)?;
        for (i, copy) in copies.into_iter().enumerate() {
            let v: serde_json::Value = frame(hex::encode(copy)).await?.json().await?;
            if i == 0 && v["accepted"] == true {
                accepted += 1;
            }
        }
    }
    reports.push(ActorReport {
        name: "sigfox-frames".into(),
        attack: None,
        admitted: accepted == messages,
        detail: format!("{accepted}/{messages} messages verified (UL-AUTH, CRC, sequence across 0xFFF → 0x000)"),
    });

    // Through the Sigfox cloud.
    let mut cloud_device = SigfoxDevice::new(0x00DE_0002, [0x6E; 16], 0x010);
    let time0 = crate::clock::now_ms() / 1000;
    let mut last_body = None;
    let mut answered = 0;
    for m in 0..messages {
        let body = cloud_device.send_via_backend(format!("h={}", 40 + m).as_bytes(), false, time0 + m as i64)?;
        if callback(&body).await?.status() == reqwest::StatusCode::NO_CONTENT {
            answered += 1;
        }
        last_body = Some(body);
    }
    reports.push(ActorReport {
        name: "sigfox-callbacks".into(),
        attack: None,
        admitted: answered == messages,
        detail: format!("{answered}/{messages} callbacks stored (shared secret, sequence numbers)"),
    });

    // A replay: the last callback's sequence number again, with a new time.
    let mut replay = last_body.context("no Sigfox callback sent")?;
    replay["time"] = serde_json::json!(time0 + 3600);
    let status = callback(&replay).await?.status();
    reports.push(ActorReport {
        name: "sigfox-replay".into(),
        attack: Some("replays a Sigfox callback's sequence number"),
        admitted: status.is_success(),
        detail: format!("HTTP {}", status.as_u16()),
    });

    // A forged frame: the right device id, a guessed NAK.
    let mut forger = SigfoxDevice::new(0x00DE_0001, [0u8; 16], device.next_seq);
    let [forged, ..] = forger.send(b"open", false)?;
    let v: serde_json::Value = frame(hex::encode(forged)).await?.json().await?;
    reports.push(ActorReport {
        name: "sigfox-forged".into(),
        attack: Some("forges a Sigfox frame without the NAK"),
        admitted: v["accepted"] == true,
        detail: format!(
            "accepted: {}, check: {}",
            v["accepted"],
            v["check"].as_str().unwrap_or("-")
        ),
    });
    Ok(reports)
}

/// How many uplinks the server stored for the demo LoRaWAN device called `name`.
async fn lorawan_stored(running: &Running, name: &str) -> usize {
    let Some(d) = sim_devices::lorawan_fleet::devices()
        .into_iter()
        .find(|d| d.name == name)
    else {
        return 0;
    };
    running
        .registry
        .lorawan_uplinks(&hex::encode(d.dev_eui), 1000)
        .await
        .map(|u| u.len())
        .unwrap_or(0)
}

pub async fn run(opts: &DemoOptions, out: &mut dyn Write) -> Result<DemoReport> {
    writeln!(
        out,
        "fleetward demo — a simulated STSAFE fleet against a fresh server\n"
    )?;
    std::fs::create_dir_all(&opts.data_dir).with_context(|| format!("cannot create {}", opts.data_dir.display()))?;
    let now = time::OffsetDateTime::now_utc();
    let ca = ProvisioningCa::generate("fleetward demo provisioning CA", now)?;
    let ca_path = opts.data_dir.join("demo-provisioning-ca.pem");
    std::fs::write(&ca_path, ca.pem())?;

    let mut config = Config {
        data_dir: opts.data_dir.clone(),
        ..Config::default()
    };
    config.mqtt.listen = opts.mqtt_listen.clone();
    config.http.listen = opts.http_listen.clone();
    config.lorawan.udp_listen = opts.lorawan_udp_listen.clone();
    config.trust_ca = vec![ca_path.clone()];
    let running = server::start(config).await?;
    writeln!(
        out,
        "1. server up: MQTT/TLS on {}, HTTP on http://{}",
        running.mqtt_addr, running.http_addr
    )?;
    writeln!(out, "   data in {}", opts.data_dir.display())?;
    writeln!(out, "2. demo provisioning CA registered ({})", ca_path.display())?;
    // The good firmware image is a known-good reference value; anything else fails appraisal.
    let firmware = Firmware::demo();
    running
        .registry
        .add_firmware_reference(
            &firmware.name,
            &firmware.version,
            &firmware.digest_hex(),
            Some(&firmware.signer_id_hex()),
            true,
            "demo",
            crate::clock::now_ms(),
        )
        .await
        .context("cannot register the demo firmware reference value")?;
    writeln!(
        out,
        "3. firmware {} {} registered as a known-good reference value (SHA-256 {}…)",
        firmware.name,
        firmware.version,
        &firmware.digest_hex()[..16]
    )?;
    writeln!(
        out,
        "4. {} devices onboard (just-in-time registration, TLS 1.2 ECDHE-ECDSA-AES128-GCM-SHA256 and TLS 1.3)\n   and attest their firmware; then 6 bad actors try their luck…\n",
        opts.good_devices
    )?;
    out.flush()?;

    let server_ca = running
        .server_ca
        .clone()
        .context("demo uses the generated server identity")?;
    let pem = std::fs::read(&server_ca)?;
    let server_ca_der = verifier::x509::certificates_from_pem_or_der(&pem)?
        .into_iter()
        .next()
        .context("server CA file is empty")?;
    let target = Target {
        addr: running.mqtt_addr,
        server_ca_der: server_ca_der.to_vec(),
        server_name: "localhost".into(),
    };
    let mut actors = fleet::run(&target, &ca, opts.good_devices, opts.messages, &firmware).await?;
    actors.extend(lorawan_actors(&running, opts.messages, out).await?);
    actors.extend(sigfox_actors(&running, opts.messages, out).await?);
    // Let the event writer catch up before reading the audit trail.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut as_expected = true;
    let events = running
        .registry
        .events(&EventFilter::default(), 500)
        .await
        .unwrap_or_default();
    writeln!(out, "{:<28} {:<9} what happened", "device", "verdict")?;
    writeln!(out, "{}", "-".repeat(100))?;
    // The audit trail (read above), once for every actor's server-side view.
    for a in &mut actors {
        let flagged = server_view(&events, a);
        if a.name.starts_with("lorawan-") {
            // A LoRaWAN device cannot see whether its frames were accepted; the server's records say.
            a.admitted = match a.attack {
                None => lorawan_stored(&running, &a.name).await >= opts.messages,
                Some(_) => flagged.is_none(),
            };
        }
        let verdict = match (a.attack, a.admitted) {
            (None, true) => "IN",
            (None, false) => "FAILED",
            (Some(_), false) => "STOPPED",
            (Some(_), true) if a.name == "clone" && flagged.is_some() => "FLAGGED",
            (Some(_), true) => "GOT IN",
        };
        if matches!(verdict, "FAILED" | "GOT IN") {
            as_expected = false;
        }
        writeln!(out, "{:<28} {:<9} {}", a.name, verdict, a.detail)?;
        if let Some(attack) = a.attack {
            writeln!(out, "{:<38} attack: {attack}", "")?;
        }
        if let Some(view) = flagged {
            writeln!(out, "{:<38} server: {view}", "")?;
        }
    }
    let summary = running.registry.fleet_summary().await?;
    let stats = running.stats.snapshot();
    writeln!(out)?;
    writeln!(
        out,
        "fleet: {} devices registered {:?}; {} readings stored, {} QoS 1 acknowledgements (each after its commit)",
        summary.total, summary.by_status, stats.messages_stored, stats.pubacks_sent
    )?;
    writeln!(
        out,
        "refusals: {} certificate chains, {} CONNECTs, {} topic violations, {} clone suspicions",
        stats.chains_rejected, stats.sessions_refused, stats.acl_violations, stats.clones_suspected
    )?;
    writeln!(
        out,
        "attestation: {} challenges, {} verified, {} failed; integrity {:?}",
        stats.challenges_issued, stats.attestations_verified, stats.attestations_failed, summary.by_integrity
    )?;
    writeln!(
        out,
        "lorawan: {} joins, {} uplinks verified (MIC, frame counter) and stored; frames refused: {}, join-requests refused: {}",
        stats.lorawan_joins_accepted,
        stats.lorawan_uplinks_accepted,
        stats.lorawan_uplinks_rejected,
        stats.lorawan_joins_refused
    )?;
    writeln!(
        out,
        "sigfox: {} frames verified (UL-AUTH with the NAK), {} callbacks stored; frames refused: {}, callbacks refused: {}",
        stats.sigfox_frames_accepted,
        stats.sigfox_callbacks_accepted,
        stats.sigfox_frames_rejected,
        stats.sigfox_callbacks_rejected
    )?;
    writeln!(out, "metrics: http://{}/metrics", running.http_addr)?;
    writeln!(out)?;
    writeln!(
        out,
        "dashboard: http://{}/  (the demo fleet, its audit findings and the refused bad actors)",
        running.http_addr
    )?;
    if let Some(token) = &running.initial_admin_token {
        writeln!(
            out,
            "admin token (log in with it; also for the API and CLI): {}",
            token.as_str()
        )?;
    }
    writeln!(
        out,
        "{}",
        if as_expected {
            "\nall as expected."
        } else {
            "\nSOMETHING UNEXPECTED HAPPENED (see above)."
        }
    )?;
    out.flush()?;
    Ok(DemoReport {
        running,
        actors,
        as_expected,
    })
}
