//! Attestation evidence: what a device sends to prove it holds its key *now* and runs firmware
//! we trust, and the rules it is appraised by.
//!
//! Three formats, each bound to a fresh challenge nonce (see [`crate::challenge`]):
//!
//! 1. **`se-signature`**: the secure element's ECDSA signature over the nonce
//!    ([`crate::challenge::DeviceKey::verify_challenge`]): proof of possession only.
//! 2. **`measurement`**: fleetward's signed firmware measurement, a COSE_Sign1 (RFC 9052)
//!    over a small CBOR map ([`measurement`]), signed by the device key.
//! 3. **`psa-token`**: the PSA Initial Attestation Token (RFC 9783), as TF-M emits it
//!    ([`psa`]); legacy `PSA_IOT_PROFILE_1` claim keys and the current ones.
//!
//! Verification ([`verify_measurement`], [`verify_psa_token`]) checks, in this order: the
//! COSE structure, the algorithm against the device key, the signature, then the claims
//! (the nonce in constant time). Appraisal ([`appraise`]) matches the measured software against
//! reference values and the PSA lifecycle against the allowed states. Every refusal is an
//! [`AttestationError`] naming the failed check and, where there is one, the claim.

mod appraisal;
mod cbor;
mod cose;
mod error;
pub mod measurement;
pub mod psa;

pub use appraisal::{AppraisalPolicy, Appraised, ReferenceStatus, ReferenceValue, application_index, appraise};
pub use error::AttestationError;
pub use measurement::{MeasurementReport, verify_measurement};
pub use psa::{Lifecycle, LifecycleState, PsaClaims, PsaProfile, verify_psa_token};

use serde::Serialize;

/// Largest token accepted, in bytes. TF-M's tokens are well under 1 KiB; the bound keeps a
/// hostile length prefix from costing more than a small allocation.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The evidence formats (the `format` field of an evidence submission).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum EvidenceFormat {
    #[serde(rename = "se-signature")]
    SeSignature,
    #[serde(rename = "measurement")]
    Measurement,
    #[serde(rename = "psa-token")]
    PsaToken,
}

impl EvidenceFormat {
    pub const ALL: [EvidenceFormat; 3] = [
        EvidenceFormat::SeSignature,
        EvidenceFormat::Measurement,
        EvidenceFormat::PsaToken,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EvidenceFormat::SeSignature => "se-signature",
            EvidenceFormat::Measurement => "measurement",
            EvidenceFormat::PsaToken => "psa-token",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == s)
    }

    /// Does this format measure firmware (as opposed to proving key possession only)?
    pub fn measures_firmware(self) -> bool {
        !matches!(self, EvidenceFormat::SeSignature)
    }
}

/// One measured software component, in the PSA model (a signed firmware measurement is a
/// single component).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SoftwareComponent {
    /// What the component is (`BL`, `PRoT`, `ARoT`, `App`, or a firmware name).
    pub measurement_type: Option<String>,
    /// The measurement (the image digest), hex.
    #[serde(serialize_with = "ser_hex")]
    pub measurement_value: Vec<u8>,
    pub version: Option<String>,
    /// Hash of the key that signed the image, hex.
    #[serde(serialize_with = "ser_opt_hex")]
    pub signer_id: Option<Vec<u8>>,
    /// The hash algorithm of the measurement (e.g. `sha-256`).
    pub measurement_desc: Option<String>,
}

fn ser_hex<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(v))
}

fn ser_opt_hex<S: serde::Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_str(&hex::encode(v)),
        None => s.serialize_none(),
    }
}

/// What verified evidence says about a device, ready for appraisal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "format")]
pub enum Evidence {
    /// Possession of the device key, nothing about firmware.
    #[serde(rename = "se-signature")]
    KeyPossession,
    #[serde(rename = "measurement")]
    Measurement(MeasurementReport),
    #[serde(rename = "psa-token")]
    Psa(PsaClaims),
}

impl Evidence {
    pub fn format(&self) -> EvidenceFormat {
        match self {
            Evidence::KeyPossession => EvidenceFormat::SeSignature,
            Evidence::Measurement(_) => EvidenceFormat::Measurement,
            Evidence::Psa(_) => EvidenceFormat::PsaToken,
        }
    }

    /// The measured software components (empty for key possession).
    pub fn components(&self) -> Vec<SoftwareComponent> {
        match self {
            Evidence::KeyPossession => Vec::new(),
            Evidence::Measurement(m) => vec![m.component()],
            Evidence::Psa(p) => p.software_components.clone(),
        }
    }
}
