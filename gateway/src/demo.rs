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
