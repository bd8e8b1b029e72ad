//! Appraisal: verified evidence against reference values (allowed and blocked firmware) and the
//! policy (allowed PSA lifecycle states).

use super::{AttestationError, Evidence, LifecycleState, SoftwareComponent};
use serde::Serialize;

/// Is a reference value known-good or explicitly blocked?
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceStatus {
    Allowed,
    Blocked,
}

/// A firmware reference value (`/api/v1/firmware`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferenceValue {
    pub name: String,
    pub version: String,
    /// The measurement value: the image digest.
    pub digest: Vec<u8>,
    /// If set, the image must also be signed by this signer.
    pub signer_id: Option<Vec<u8>>,
    pub status: ReferenceStatus,
}

/// What appraisal requires beyond reference values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppraisalPolicy {
    /// PSA security lifecycle states accepted. Default: `secured` only.
    pub allowed_lifecycles: Vec<LifecycleState>,
}

impl Default for AppraisalPolicy {
    fn default() -> Self {
        AppraisalPolicy {
            allowed_lifecycles: vec![LifecycleState::Secured],
        }
    }
}

/// A passed appraisal: the firmware the device is recorded as running (none for key
/// possession alone).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Appraised {
    pub firmware_name: Option<String>,
    pub firmware_version: Option<String>,
    pub firmware_digest_hex: Option<String>,
    /// Components checked against reference values.
    pub components: usize,
}

/// Component types naming the application image (the one recorded as "the firmware").
const APPLICATION_TYPES: [&str; 4] = ["NSPE", "App", "NS", "APP"];

/// Appraises verified `evidence`.
pub fn appraise(
    evidence: &Evidence,
    references: &[ReferenceValue],
    policy: &AppraisalPolicy,
) -> Result<Appraised, AttestationError> {
    if let Evidence::Psa(claims) = evidence
        && !policy.allowed_lifecycles.contains(&claims.lifecycle.state)
    {
        return Err(AttestationError::LifecycleNotAllowed {
            lifecycle: claims.lifecycle.to_string(),
            allowed: policy
                .allowed_lifecycles
                .iter()
                .map(|l| l.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let components = evidence.components();
    if matches!(evidence, Evidence::KeyPossession) {
        return Ok(Appraised {
            firmware_name: None,
            firmware_version: None,
            firmware_digest_hex: None,
            components: 0,
        });
    }
    if components.is_empty() {
        return Err(AttestationError::NoSoftwareMeasured);
    }
    let mut matched = Vec::with_capacity(components.len());
    for c in &components {
        matched.push(match_component(c, references)?);
    }
    let recorded = application_index(&components).unwrap_or(components.len() - 1);
    let (c, r) = (&components[recorded], matched[recorded]);
    Ok(Appraised {
        firmware_name: Some(r.name.clone()),
        firmware_version: Some(c.version.clone().unwrap_or_else(|| r.version.clone())),
        firmware_digest_hex: Some(hex::encode(&c.measurement_value)),
        components: components.len(),
    })
}

/// Which component is the application image (recorded as "the firmware"): the one typed
/// `NSPE`/`App`/`NS`, else the last one measured.
pub fn application_index(components: &[SoftwareComponent]) -> Option<usize> {
    components
        .iter()
        .position(|c| {
            c.measurement_type
                .as_deref()
                .is_some_and(|t| APPLICATION_TYPES.contains(&t))
        })
        .or_else(|| components.len().checked_sub(1))
}

fn label(c: &SoftwareComponent) -> String {
    c.measurement_type
        .clone()
        .unwrap_or_else(|| "(unnamed component)".into())
}

fn match_component<'r>(
    c: &SoftwareComponent,
    references: &'r [ReferenceValue],
) -> Result<&'r ReferenceValue, AttestationError> {
    let digest_hex = || hex::encode(&c.measurement_value);
    // Blocked wins: by digest, or by (name, version) for a version blocked as a whole.
    if let Some(b) = references.iter().find(|r| {
        r.status == ReferenceStatus::Blocked
            && (r.digest == c.measurement_value
                || (c.measurement_type.as_deref() == Some(r.name.as_str())
                    && c.version.as_deref() == Some(r.version.as_str())))
    }) {
        return Err(AttestationError::FirmwareBlocked {
            component: label(c),
            version: c.version.clone().unwrap_or_else(|| b.version.clone()),
            digest_hex: digest_hex(),
        });
    }
    let allowed: Vec<&ReferenceValue> = references
        .iter()
        .filter(|r| r.status == ReferenceStatus::Allowed && r.digest == c.measurement_value)
        .collect();
    if allowed.is_empty() {
        return Err(AttestationError::FirmwareUnknown {
            component: label(c),
            digest_hex: digest_hex(),
        });
    }
    let signed: Vec<&ReferenceValue> = allowed
        .iter()
        .copied()
        .filter(|r| match &r.signer_id {
            None => true,
            Some(expected) => c.signer_id.as_ref() == Some(expected),
        })
        .collect();
    if signed.is_empty() {
        let expected = allowed[0].signer_id.as_deref().map(hex::encode).unwrap_or_default();
        return Err(AttestationError::SignerMismatch {
            component: label(c),
            signer_id_hex: c
                .signer_id
                .as_deref()
                .map(hex::encode)
                .unwrap_or_else(|| "(none)".into()),
            expected_hex: expected,
        });
    }
    match &c.version {
        None => Ok(signed[0]),
        Some(v) => signed
            .iter()
            .copied()
            .find(|r| &r.version == v)
            .ok_or_else(|| AttestationError::VersionMismatch {
                component: label(c),
                claimed: v.clone(),
                reference: signed[0].version.clone(),
            }),
    }
}
