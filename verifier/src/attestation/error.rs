//! Why evidence was refused: one variant per check, each with a stable name and, where a claim
//! failed, the claim's name.

use crate::challenge::SignatureError;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "check", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AttestationError {
    #[error("token is {len} bytes; the limit is {max}")]
    TooLarge { len: usize, max: usize },
    #[error("token is not a COSE_Sign1 structure: {detail}")]
    MalformedToken { detail: String },
    #[error("COSE_Sign1 has no payload (detached payloads are not accepted)")]
    MissingPayload,
    #[error("COSE algorithm {alg} is not accepted for a {curve} device key (ES256 for P-256, ES384 for P-384)")]
    UnsupportedAlgorithm {
        alg: String,
        curve: crate::challenge::Curve,
    },
    #[error("signature does not verify with the device's registered key: {detail}")]
    BadSignature { detail: String },
    #[error("claims are not a CBOR map: {detail}")]
    MalformedClaims { detail: String },
    #[error("claim `{claim}` is missing")]
    MissingClaim { claim: &'static str },
    #[error("claim `{claim}` is malformed: {detail}")]
    InvalidClaim { claim: &'static str, detail: String },
    #[error("the token's nonce is not the challenge issued")]
    NonceMismatch,
    #[error("profile `{profile}` is not a PSA attestation profile this verifier knows")]
    UnknownProfile { profile: String },
    #[error("claim `device_id` names `{claimed}`, not the device `{device_id}`")]
    DeviceMismatch { claimed: String, device_id: String },
    #[error("security lifecycle {lifecycle} is not allowed (allowed: {allowed})")]
    LifecycleNotAllowed { lifecycle: String, allowed: String },
    #[error("firmware {component} with digest {digest_hex} is not a known reference value")]
    FirmwareUnknown { component: String, digest_hex: String },
    #[error("firmware {component} ({version}) with digest {digest_hex} is blocked")]
    FirmwareBlocked {
        component: String,
        version: String,
        digest_hex: String,
    },
    #[error("firmware {component} is signed by {signer_id_hex}, not the reference signer {expected_hex}")]
    SignerMismatch {
        component: String,
        signer_id_hex: String,
        expected_hex: String,
    },
    #[error("firmware {component} claims version {claimed}, but its digest is the reference for version {reference}")]
    VersionMismatch {
        component: String,
        claimed: String,
        reference: String,
    },
    #[error("the token measures no software components")]
    NoSoftwareMeasured,
}

impl AttestationError {
    /// A stable name for the failed check (the API's `reason`).
    pub fn check(&self) -> &'static str {
        match self {
            AttestationError::TooLarge { .. } => "token_too_large",
            AttestationError::MalformedToken { .. } => "malformed_token",
            AttestationError::MissingPayload => "missing_payload",
            AttestationError::UnsupportedAlgorithm { .. } => "unsupported_algorithm",
            AttestationError::BadSignature { .. } => "bad_signature",
            AttestationError::MalformedClaims { .. } => "malformed_claims",
            AttestationError::MissingClaim { .. } => "missing_claim",
            AttestationError::InvalidClaim { .. } => "invalid_claim",
            AttestationError::NonceMismatch => "nonce_mismatch",
            AttestationError::UnknownProfile { .. } => "unknown_profile",
            AttestationError::DeviceMismatch { .. } => "device_mismatch",
            AttestationError::LifecycleNotAllowed { .. } => "lifecycle_not_allowed",
            AttestationError::FirmwareUnknown { .. } => "firmware_unknown",
            AttestationError::FirmwareBlocked { .. } => "firmware_blocked",
            AttestationError::SignerMismatch { .. } => "signer_mismatch",
            AttestationError::VersionMismatch { .. } => "version_mismatch",
            AttestationError::NoSoftwareMeasured => "no_software_measured",
        }
    }

    /// The claim that failed, where one did.
    pub fn claim(&self) -> Option<&'static str> {
        match self {
            AttestationError::MissingClaim { claim } | AttestationError::InvalidClaim { claim, .. } => Some(claim),
            AttestationError::NonceMismatch => Some("nonce"),
            AttestationError::UnknownProfile { .. } => Some("profile"),
            AttestationError::DeviceMismatch { .. } => Some("device_id"),
            AttestationError::LifecycleNotAllowed { .. } => Some("security_lifecycle"),
            AttestationError::FirmwareUnknown { .. }
            | AttestationError::FirmwareBlocked { .. }
            | AttestationError::NoSoftwareMeasured => Some("measurement_value"),
            AttestationError::SignerMismatch { .. } => Some("signer_id"),
            AttestationError::VersionMismatch { .. } => Some("version"),
            _ => None,
        }
    }

    pub(crate) fn bad_signature(e: &SignatureError) -> Self {
        AttestationError::BadSignature { detail: e.to_string() }
    }

    pub(crate) fn invalid(claim: &'static str, detail: impl Into<String>) -> Self {
        AttestationError::InvalidClaim {
            claim,
            detail: detail.into(),
        }
    }
}
