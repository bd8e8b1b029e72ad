//! Attestation: challenges out, evidence in, appraisal, and what the verdict does — the one
//! place both transports (MQTT topics, HTTP API) go through.
//!
//! The rules are `verifier::attestation` (pure); the state is the registry (single-use nonces,
//! results, integrity, the CA's policy). This module joins them: it issues a nonce, redeems it
//! exactly once, verifies the evidence with the device's *registered* certificate key, appraises
//! it against the firmware reference values and the CA's policy, and records the result (event,
//! integrity, quarantine or release) in one transaction. Nonce problems (unknown, replayed,
//! expired, another device's) fail the answer with a typed reason and an event but leave the
//! device's integrity alone: they say nothing about the device.

use crate::clock::now_ms;
use crate::mqtt::hub::{DeviceSignal, Hub};
use crate::mqtt::topic::DeviceScope;
use crate::stats::{Stats, inc};
use registry::{AttestationPolicy, AttestationResult, DeviceStatus, Integrity, RedeemOutcome, Registry, RegistryError};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use verifier::Timestamp;
use verifier::attestation::{
    AppraisalPolicy, Evidence, EvidenceFormat, LifecycleState, ReferenceStatus, ReferenceValue, appraise,
    verify_measurement, verify_psa_token,
};
use verifier::challenge::{Challenge, ChallengePolicy, DeviceKey, NONCE_LEN, Nonce, SignatureFormat};

/// How challenges are issued and verdicts kept fresh.
#[derive(Clone, Debug)]
pub struct AttestationSettings {
    pub challenge_lifetime: Duration,
    /// Re-challenge connected devices this often (`None`: on connect and on demand only).
    pub interval: Option<Duration>,
    pub sweep_interval: Duration,
}

impl Default for AttestationSettings {
    fn default() -> Self {
        AttestationSettings {
            challenge_lifetime: Duration::from_secs(60),
            interval: Some(Duration::from_secs(86_400)),
            sweep_interval: Duration::from_secs(60),
        }
    }
}

/// A challenge that was issued (and stored).
#[derive(Clone, Debug, Serialize)]
pub struct Issued {
    pub device_id: String,
    /// 32 bytes, hex.
    pub nonce: String,
    pub expires_at_ms: i64,
}

impl Issued {
    fn from(c: &Challenge) -> Self {
        Issued {
            device_id: c.device_id.clone(),
            nonce: c.nonce.to_hex(),
            expires_at_ms: c.expires_at.unix().saturating_mul(1000),
        }
    }

    /// The MQTT challenge payload: `{"device_id", "nonce", "expires_at"}`.
    pub fn payload(&self) -> Vec<u8> {
        serde_json::json!({
            "device_id": self.device_id,
            "nonce": self.nonce,
            "expires_at": crate::api::rfc3339(self.expires_at_ms),
        })
        .to_string()
        .into_bytes()
    }
}

/// Why an on-demand challenge could not be sent over MQTT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotSent {
    /// The device is not connected to this node.
    Offline,
    /// The device is connected but not subscribed to its challenge topic.
    NotSubscribed,
    /// The challenge could not be issued (the registry is unavailable), or the session did not
    /// answer in time.
    Unavailable,
}

/// Challenges a device connected to this node now: its session issues the nonce and publishes
/// it on the challenge topic. Waits up to 10 s for the session (the API and the dashboard's
/// "Attest now" both come through here).
pub async fn challenge_connected(hub: &Hub, device_id: &str) -> Result<Issued, NotSent> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if !hub.signal_device(device_id, DeviceSignal::Attest(tx)) {
        return Err(NotSent::Offline);
    }
    match tokio::time::timeout(Duration::from_secs(10), rx).await {
        Ok(Ok(sent)) => sent,
        _ => Err(NotSent::Unavailable),
    }
}

/// An evidence submission (the HTTP body; the MQTT payload is the same JSON).
#[derive(Clone, Debug, Default)]
pub struct Submission {
    pub device_id: String,
    pub nonce: String,
    pub format: String,
    pub signature_hex: Option<String>,
    pub token_b64: Option<String>,
}

/// The verdict on one answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub device_id: String,
    pub format: String,
    /// `verified` or `failed`.
    pub result: &'static str,
    /// The failed check (`replayed_nonce`, `bad_signature`, `firmware_blocked`, …).
    pub reason: Option<String>,
    /// The failed claim, where one did.
    pub claim: Option<String>,
    pub message: Option<String>,
    /// The device's integrity after this answer.
    pub integrity: Integrity,
    /// The device's status after this answer (the CA's policy may have changed it).
    pub status: DeviceStatus,
    pub firmware_name: Option<String>,
    pub firmware_version: Option<String>,
    pub firmware_digest: Option<String>,
}

/// A request the attestor cannot act on at all (HTTP 4xx; over MQTT, a failed result).
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("no device `{0}`")]
    UnknownDevice(String),
    #[error("device `{0}` is revoked")]
    Revoked(String),
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl AttestError {
    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        AttestError::BadRequest {
            code,
            message: message.into(),
        }
    }
}

/// Issues challenges and appraises evidence.
#[derive(Debug)]
pub struct Attestor {
    registry: Registry,
    hub: Arc<Hub>,
    stats: Arc<Stats>,
    pub settings: AttestationSettings,
}

impl Attestor {
    pub fn new(registry: Registry, hub: Arc<Hub>, stats: Arc<Stats>, settings: AttestationSettings) -> Self {
        Attestor {
            registry,
            hub,
            stats,
            settings,
        }
    }

    /// Issues and stores a fresh challenge for a registered, unrevoked device.
    pub async fn challenge(&self, device_id: &str) -> Result<Issued, AttestError> {
        let device = match self.registry.device(device_id).await {
            Ok(d) => d,
            Err(RegistryError::NotFound { .. }) => return Err(AttestError::UnknownDevice(device_id.into())),
            Err(e) => return Err(e.into()),
        };
        if device.status == DeviceStatus::Revoked {
            return Err(AttestError::Revoked(device_id.into()));
        }
        let mut random = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut random)
            .map_err(|_| AttestError::bad("no_randomness", "the system random generator failed"))?;
        let challenge = Challenge::issue(
            device_id,
            random,
            Timestamp::from_unix(now_ms() / 1000),
            &ChallengePolicy {
                lifetime_secs: self.settings.challenge_lifetime.as_secs(),
            },
        );
        self.registry.store_challenge(&challenge).await?;
        inc(&self.stats.challenges_issued);
        Ok(Issued::from(&challenge))
    }

    /// Verifies and appraises one answer, records the result and applies the CA's policy.
    pub async fn evidence(&self, s: &Submission) -> Result<Verdict, AttestError> {
        let format = EvidenceFormat::parse(&s.format).ok_or_else(|| {
            AttestError::bad(
                "unknown_format",
                format!(
                    "format `{}` is not one of se-signature, measurement, psa-token",
                    s.format.escape_debug()
                ),
            )
        })?;
        let nonce_bytes = decode_hex(&s.nonce)
            .filter(|b| b.len() == NONCE_LEN)
            .ok_or_else(|| AttestError::bad("bad_nonce", "nonce must be 64 hex digits (the 32-byte challenge)"))?;
        let nonce = Nonce::from_slice(&nonce_bytes).map_err(|e| AttestError::bad("bad_nonce", e.to_string()))?;
        // The evidence itself, decoded before the nonce is spent (a malformed request is the
        // caller's mistake, not an answer).
        let evidence_bytes = match format {
            EvidenceFormat::SeSignature => decode_hex(
                s.signature_hex
                    .as_deref()
                    .ok_or_else(|| AttestError::bad("missing_field", "se-signature needs `signature_hex`"))?,
            )
            .ok_or_else(|| AttestError::bad("bad_signature_hex", "`signature_hex` is not hex"))?,
            EvidenceFormat::Measurement | EvidenceFormat::PsaToken => {
                decode_base64(s.token_b64.as_deref().ok_or_else(|| {
                    AttestError::bad("missing_field", format!("{} needs `token_b64`", format.as_str()))
                })?)
                .ok_or_else(|| AttestError::bad("bad_token_b64", "`token_b64` is not base64"))?
            }
        };
        let device = match self.registry.device(&s.device_id).await {
            Ok(d) => d,
            Err(RegistryError::NotFound { .. }) => return Err(AttestError::UnknownDevice(s.device_id.clone())),
            Err(e) => return Err(e.into()),
        };
        if device.status == DeviceStatus::Revoked {
            return Err(AttestError::Revoked(s.device_id.clone()));
        }
        let policy = self.registry.attestation_policy(&device.ca_id).await?;
        let mut record = AttestationResult {
            device_id: &device.id,
            format: format.as_str(),
            ..Default::default()
        };

        // 1. The nonce: issued to this device, unused, unexpired. Spent now, whatever follows.
        let refused = match self.registry.redeem_challenge(&device.id, &nonce, now_ms()).await? {
            RedeemOutcome::Redeemed => None,
            RedeemOutcome::Unknown => Some(("unknown_nonce", "no challenge with this nonce was issued".to_owned())),
            RedeemOutcome::OtherDevice { issued_to } => Some((
                "wrong_device",
                format!("the nonce was issued to another device (`{issued_to}`)"),
            )),
            RedeemOutcome::AlreadyUsed => Some(("replayed_nonce", "the challenge was already answered".to_owned())),
            RedeemOutcome::Expired => Some(("expired_nonce", "the challenge expired before the answer".to_owned())),
        };
        if let Some((check, message)) = refused {
            record.reason = Some(check);
            record.claim = Some("nonce");
            record.message = Some(&message);
            record.affects_integrity = false;
            let effect = self.registry.record_attestation(&record, &policy, now_ms()).await?;
            inc(&self.stats.attestations_failed);
            tracing::info!(device = %device.id, check, "attestation answer refused");
            return Ok(verdict(&record, &effect));
        }

        // 2. The evidence, verified with the device's registered certificate key.
        let key = match DeviceKey::from_certificate_der(&device.cert_der) {
            Ok(k) => k,
            Err(e) => {
                let message = format!("the device's registered key cannot verify evidence: {e}");
                record.reason = Some("unsupported_key");
                record.message = Some(&message);
                record.affects_integrity = true;
                let effect = self.registry.record_attestation(&record, &policy, now_ms()).await?;
                inc(&self.stats.attestations_failed);
                return Ok(verdict(&record, &effect));
            }
        };
        let ca = self.registry.ca(&device.ca_id).await?;
        let verified = match format {
            EvidenceFormat::SeSignature => key
                .verify_challenge(nonce.as_bytes(), &evidence_bytes, SignatureFormat::Auto, ca.digest_mode)
                .map(|_| Evidence::KeyPossession)
                .map_err(|e| verifier::attestation::AttestationError::BadSignature { detail: e.to_string() }),
            EvidenceFormat::Measurement => {
                verify_measurement(&evidence_bytes, &key, nonce.as_bytes(), &device.id).map(Evidence::Measurement)
            }
            EvidenceFormat::PsaToken => verify_psa_token(&evidence_bytes, &key, nonce.as_bytes()).map(Evidence::Psa),
        };
        // 3. Appraisal against reference values and the CA's policy.
        let references = self.references().await?;
        let appraisal_policy = AppraisalPolicy {
            allowed_lifecycles: policy
                .allowed_lifecycles
                .iter()
                .filter_map(|l| LifecycleState::parse(l))
                .collect(),
        };
        let (outcome, evidence) = match verified {
            Ok(evidence) => (appraise(&evidence, &references, &appraisal_policy), Some(evidence)),
            Err(e) => (Err(e), None),
        };
        // The firmware the signed evidence measured is recorded either way: a device running a
        // blocked image is shown running it.
        let measured = evidence.as_ref().and_then(recorded_component);
        let detail = evidence.as_ref().and_then(|e| serde_json::to_value(e).ok());
        let message;
        match &outcome {
            Ok(a) => {
                record.verified = true;
                record.firmware_name = a.firmware_name.as_deref();
                record.firmware_version = a.firmware_version.as_deref();
                record.firmware_digest = a.firmware_digest_hex.as_deref();
            }
            Err(e) => {
                message = e.to_string();
                record.reason = Some(e.check());
                record.claim = e.claim();
                record.message = Some(&message);
                if let Some((name, version, digest)) = &measured {
                    record.firmware_name = Some(name);
                    record.firmware_version = Some(version);
                    record.firmware_digest = Some(digest);
                }
            }
        }
        record.affects_integrity = true;
        record.detail = detail;
        let effect = self.registry.record_attestation(&record, &policy, now_ms()).await?;
        if record.verified {
            inc(&self.stats.attestations_verified);
        } else {
            inc(&self.stats.attestations_failed);
        }
        tracing::info!(
            device = %device.id, format = format.as_str(), result = if record.verified { "verified" } else { "failed" },
            check = record.reason.unwrap_or(""), "attestation"
        );
        // A status the policy changed reaches a live MQTT session at once.
        if let Some((_, to)) = effect.status_changed {
            let scope = if to == DeviceStatus::Active {
                DeviceScope::Full
            } else {
                DeviceScope::AttestationOnly
            };
            if !self.hub.signal_device(&device.id, DeviceSignal::Scope(scope))
                && let Some(bus) = self.hub.bus()
            {
                // The session may be on another node (evidence sent through this node's API).
                bus.registry_changed(
                    vec![crate::bus::DeviceChange {
                        id: device.id.clone(),
                        status: to,
                        scope_only: true,
                    }],
                    false,
                );
            }
        }
        Ok(verdict(&record, &effect))
    }

    /// Records an answer that could not even be read (MQTT payload that is not the evidence
    /// JSON): a failed result and event, integrity untouched.
    pub async fn malformed(&self, device_id: &str, message: &str) -> Result<Verdict, AttestError> {
        let device = self.registry.device(device_id).await?;
        let policy = self.registry.attestation_policy(&device.ca_id).await?;
        let record = AttestationResult {
            device_id,
            format: "unknown",
            reason: Some("malformed_evidence"),
            message: Some(message),
            affects_integrity: false,
            ..Default::default()
        };
        let effect = self.registry.record_attestation(&record, &policy, now_ms()).await?;
        inc(&self.stats.attestations_failed);
        Ok(verdict(&record, &effect))
    }

    /// One sweep: stale verdicts, expired nonces.
    pub async fn sweep(&self) -> Result<usize, RegistryError> {
        let now = now_ms();
        let stale = self.registry.mark_stale(now, 1000).await?;
        crate::stats::add(&self.stats.attestations_stale, stale.len() as u64);
        let lifetime_ms = i64::try_from(self.settings.challenge_lifetime.as_millis()).unwrap_or(i64::MAX);
        // Keep answered and expired nonces a day, so a late replay is still recognised as one.
        self.registry
            .prune_challenges(now.saturating_sub(lifetime_ms).saturating_sub(86_400_000))
            .await?;
        Ok(stale.len())
    }

    async fn references(&self) -> Result<Vec<ReferenceValue>, RegistryError> {
        Ok(self
            .registry
            .firmware_references()
            .await?
            .into_iter()
            .filter_map(|r| {
                Some(ReferenceValue {
                    digest: hex::decode(&r.digest_hex).ok()?,
                    signer_id: match &r.signer_id_hex {
                        Some(s) => Some(hex::decode(s).ok()?),
                        None => None,
                    },
                    status: if r.status == "blocked" {
                        ReferenceStatus::Blocked
                    } else {
                        ReferenceStatus::Allowed
                    },
                    name: r.name,
                    version: r.version,
                })
            })
            .collect())
    }

    /// The CA policy the API shows for a CA.
    pub async fn policy(&self, ca_id: &str) -> Result<AttestationPolicy, RegistryError> {
        self.registry.attestation_policy(ca_id).await
    }
}

/// The component recorded as "the firmware" of verified evidence: (name, version, digest hex).
fn recorded_component(e: &Evidence) -> Option<(String, String, String)> {
    let components = e.components();
    let c = &components[verifier::attestation::application_index(&components)?];
    Some((
        c.measurement_type.clone().unwrap_or_else(|| "firmware".into()),
        c.version.clone().unwrap_or_else(|| "unknown".into()),
        hex::encode(&c.measurement_value),
    ))
}

fn verdict(r: &AttestationResult<'_>, effect: &registry::AppraisalEffect) -> Verdict {
    Verdict {
        device_id: r.device_id.to_owned(),
        format: r.format.to_owned(),
        result: if r.verified { "verified" } else { "failed" },
        reason: r.reason.map(str::to_owned),
        claim: r.claim.map(str::to_owned),
        message: r.message.map(str::to_owned),
        integrity: effect.integrity,
        status: effect.status,
        firmware_name: r.firmware_name.map(str::to_owned),
        firmware_version: r.firmware_version.map(str::to_owned),
        firmware_digest: r.firmware_digest.map(str::to_owned),
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    let s = s.strip_prefix("0x").unwrap_or(s);
    hex::decode(s).ok()
}

/// Standard or URL-safe base64, padded or not (firmware encoders differ).
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let s: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let s = s.trim_end_matches('=');
    STANDARD_NO_PAD.decode(s).or_else(|_| URL_SAFE_NO_PAD.decode(s)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_variants_and_hex_prefixes() {
        assert_eq!(decode_base64("0g==").as_deref(), Some(&[0xd2][..]));
        assert_eq!(decode_base64("0g").as_deref(), Some(&[0xd2][..]));
        assert_eq!(decode_base64("-_8").as_deref(), Some(&[0xfb, 0xff][..]));
        assert_eq!(decode_base64("+/8=").as_deref(), Some(&[0xfb, 0xff][..]));
        assert_eq!(decode_base64("*"), None);
        assert_eq!(decode_hex("0xAbCd").as_deref(), Some(&[0xab, 0xcd][..]));
        assert_eq!(decode_hex("abc"), None);
    }
}
